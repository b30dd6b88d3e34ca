//! Random sequences of tar entries (files, directories, hardlinks, whiteouts, opaque markers,
//! duplicates) in one or two layers, extracted by the agent and merged by a real overlay
//! mount, against an in-memory model of the OCI layer semantics: later entries replace
//! earlier ones, whiteouts and opaque markers hide what the layers below have (never what
//! their own layer made; a directory made only to hold them is not the layer's own), a path
//! implies its parent directory, a hardlink copies what it points to or is refused when that
//! is not a file (or was deleted by its layer and not made again). (`props_unpack.rs` checks
//! the same extractor against umoci, the reference; this checks it against the rules as
//! written. Writing the model, its first two drafts were wrong where the extractor and umoci
//! agree: a hardlink to a name the layer deleted and made again, and a whiteout after an
//! opaque marker.)

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use common::reference::Overlay;
use common::tarball::{Entry, dir, file, hardlink, opaque, tar, whiteout};
use kci_pull_agent::layers::extract::{Limits, Lowers, extract};
use proptest::prelude::*;

/// Directory names and leaf names never overlap: a path's parent is always a directory.
const DIRS: &[&str] = &["d", "e"];
const LEAVES: &[&str] = &["a", "b", "c"];

#[derive(Clone, Debug)]
enum Op {
    File(String, u8),
    Dir(String),
    Hardlink(String, String),
    Whiteout(String),
    Opaque(String),
}

fn leaf_path() -> impl Strategy<Value = String> {
    (
        prop::option::of(prop::sample::select(DIRS)),
        prop::sample::select(LEAVES),
    )
        .prop_map(|(d, l)| match d {
            Some(d) => format!("{d}/{l}"),
            None => l.to_string(),
        })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (leaf_path(), 0u8..3).prop_map(|(p, c)| Op::File(p, c)),
        2 => prop::sample::select(DIRS).prop_map(|d| Op::Dir(d.to_string())),
        1 => (leaf_path(), leaf_path())
            .prop_filter("not itself", |(p, t)| p != t)
            .prop_map(|(p, t)| Op::Hardlink(p, t)),
        2 => prop_oneof![leaf_path(), prop::sample::select(DIRS).prop_map(str::to_string)]
            .prop_map(Op::Whiteout),
        1 => prop::sample::select(DIRS).prop_map(|d| Op::Opaque(d.to_string())),
    ]
}

fn entry(op: &Op) -> Entry {
    match op {
        Op::File(p, c) => file(p, &[b'0' + c; 3]),
        Op::Dir(p) => dir(p),
        Op::Hardlink(p, t) => hardlink(p, t),
        Op::Whiteout(p) => whiteout(p),
        Op::Opaque(p) => opaque(p),
    }
}

/// What the merged view shows at a path: a directory, or a file's contents.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Node {
    Dir,
    File(Vec<u8>),
}

type Tree = BTreeMap<String, Node>;

fn parent(p: &str) -> Option<&str> {
    p.rsplit_once('/').map(|(d, _)| d)
}

/// Removes `p` and everything beneath it.
fn remove_tree(t: &mut Tree, p: &str) {
    let under = format!("{p}/");
    t.retain(|k, _| k != p && !k.starts_with(&under));
}

/// One layer over the merged view `below`: the new merged view, or `None` if the layer is
/// refused (a hardlink to what is not a file).
fn apply_layer(below: &Tree, ops: &[Op]) -> Option<Tree> {
    let mut lower = below.clone();
    // What this layer itself makes (whiteouts never touch it).
    let mut own: Tree = Tree::new();
    let mut deleted: Vec<String> = Vec::new();
    let visible = |own: &Tree, lower: &Tree, p: &str| own.get(p).or(lower.get(p)).cloned();
    for op in ops {
        match op {
            Op::File(p, c) => {
                if let Some(d) = parent(p) {
                    own.insert(d.to_string(), Node::Dir);
                }
                own.insert(p.clone(), Node::File(vec![b'0' + c; 3]));
            }
            Op::Dir(p) => {
                own.insert(p.clone(), Node::Dir);
            }
            Op::Hardlink(p, t) => {
                // What this layer made is linked to; what it deleted of the layers below
                // (and did not make again) is gone.
                if !own.contains_key(t.as_str())
                    && deleted
                        .iter()
                        .any(|d| t == d || t.starts_with(&format!("{d}/")))
                {
                    return None;
                }
                let Some(Node::File(content)) = visible(&own, &lower, t) else {
                    return None;
                };
                if let Some(d) = parent(p) {
                    own.insert(d.to_string(), Node::Dir);
                }
                own.insert(p.clone(), Node::File(content));
            }
            Op::Whiteout(p) => {
                remove_tree(&mut lower, p);
                deleted.push(p.clone());
            }
            Op::Opaque(d) => {
                // The lower contents of d are gone; d stays where it is (a copy made only to
                // hold the marker is not this layer's own: a later whiteout deletes it).
                let under = format!("{d}/");
                lower.retain(|k, _| !k.starts_with(&under));
            }
        }
    }
    let mut merged = lower;
    for (p, n) in own {
        merged.insert(p, n);
    }
    Some(merged)
}

/// The merged view the agent's layers give, read through a real overlay mount.
fn read_tree(root: &Path) -> Tree {
    let mut out = Tree::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        for e in fs::read_dir(&p).unwrap() {
            let e = e.unwrap();
            let rel = e
                .path()
                .strip_prefix(root)
                .unwrap()
                .to_string_lossy()
                .into_owned();
            let ft = e.file_type().unwrap();
            if ft.is_dir() {
                out.insert(rel, Node::Dir);
                stack.push(e.path());
            } else {
                out.insert(rel, Node::File(fs::read(e.path()).unwrap()));
            }
        }
    }
    out
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(96),
        ..ProptestConfig::default()
    })]

    #[test]
    fn layers_merge_as_the_model_says(
        layers in prop::collection::vec(prop::collection::vec(op(), 1..8), 1..=2)
    ) {
        let work = tempfile::tempdir().unwrap();
        let mut want = Some(Tree::new());
        let mut done: Vec<PathBuf> = Vec::new();
        let mut refused = false;
        for (i, ops) in layers.iter().enumerate() {
            want = want.and_then(|below| apply_layer(&below, ops));
            let layer = tar(&ops.iter().map(entry).collect::<Vec<_>>());
            let dir = work.path().join(format!("layer{i}"));
            fs::create_dir_all(&dir).unwrap();
            let lowers: Vec<PathBuf> = done.iter().rev().cloned().collect();
            match extract(&layer[..], &dir, Lowers::Known(lowers), &Limits::default()) {
                Ok(_) => done.push(dir),
                Err(e) => {
                    prop_assert!(want.is_none(), "layer {i} refused ({e}), the model accepts it: {layers:?}");
                    refused = true;
                    break;
                }
            }
        }
        if !refused {
            let Some(want) = want else {
                return Err(TestCaseError::fail(format!("the model refuses, the agent accepted: {layers:?}")));
            };
            let top_first: Vec<PathBuf> = done.iter().rev().cloned().collect();
            let at = work.path().join("merged");
            let mount = Overlay::mount(&top_first, &at);
            let got = read_tree(&mount.0);
            prop_assert_eq!(got, want, "layers {:?}", layers);
        }
    }
}
