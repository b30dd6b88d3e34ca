//! Random layer stacks over a small name space (files, directories, symlinks to names near and
//! far, hardlinks, whiteouts, opaque markers, up to three layers), extracted by the agent's
//! unpacker and by `umoci raw unpack`, the reference: the agent's layers merged by a real
//! overlay mount must give umoci's tree, or both must refuse the stack. Each layer above the
//! bottom is also extracted as it would stream in (its lower layers unknown) and settled: that
//! must give the same layer directory, or ask to be extracted again.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use common::images::{Blob, image_with, layer_of};
use common::reference::{Overlay, umoci_unpack};
use common::tarball::{Entry, dir, fifo, file, hardlink, opaque, symlink, tar, whiteout};
use kci_pull_agent::layers::extract::{ExtractError, Limits, Lowers, extract};
use kci_pull_agent::layers::settle::settle;
use proptest::prelude::*;

const NAMES: &[&str] = &["a", "b", "c"];
const TARGETS: &[&str] = &["a", "b", "a/b", "/c", "../a", "nowhere/x", "c/../b"];

#[derive(Clone, Debug)]
enum Op {
    File(String, u8, u32),
    Dir(String, u32, u32),
    Symlink(String, &'static str),
    Hardlink(String, String),
    Whiteout(String),
    Opaque(String),
    Root(u32, u32),
    Fifo(String),
}

fn path() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(NAMES), 1..=3).prop_map(|p| p.join("/"))
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (path(), 0u8..3, prop::sample::select(&[0o644u32, 0o600, 0o755][..]))
            .prop_map(|(p, c, m)| Op::File(p, c, m)),
        3 => (path(), prop::sample::select(&[0o755u32, 0o700, 0o750][..]), 0u32..2)
            .prop_map(|(p, m, o)| Op::Dir(p, m, o * 7)),
        2 => (path(), prop::sample::select(TARGETS)).prop_map(|(p, t)| Op::Symlink(p, t)),
        1 => (path(), path()).prop_map(|(p, t)| Op::Hardlink(p, t)),
        2 => path().prop_map(Op::Whiteout),
        1 => path().prop_map(Op::Opaque),
        1 => (prop::sample::select(&[0o755u32, 0o750, 0o711][..]), 0u32..2)
            .prop_map(|(m, o)| Op::Root(m, o * 9)),
        1 => path().prop_map(Op::Fifo),
    ]
}

fn entry(op: &Op) -> Entry {
    match op {
        Op::File(p, c, m) => file(p, &[b'0' + c; 3]).mode(*m),
        Op::Dir(p, m, o) => dir(p).mode(*m).owner(*o, *o),
        Op::Symlink(p, t) => symlink(p, t),
        Op::Hardlink(p, t) => hardlink(p, t),
        Op::Whiteout(p) => whiteout(p),
        Op::Opaque(p) => opaque(p),
        Op::Root(m, o) => dir("./").mode(*m).owner(*o, *o),
        Op::Fifo(p) => fifo(p).mode(0o640),
    }
}

/// Per path (the root as "."): type, mode, owner, content, link target; directories' mtimes
/// left out (SPEC §8).
fn describe(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let rel = match p.strip_prefix(root).unwrap().to_string_lossy().as_ref() {
            "" => ".".to_string(),
            r => r.to_string(),
        };
        let Ok(m) = fs::symlink_metadata(&p) else {
            out.insert(rel, "listed, but lstat finds nothing".into());
            continue;
        };
        let ft = m.file_type();
        let what = if ft.is_dir() {
            for e in fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
            "dir".to_string()
        } else if ft.is_symlink() {
            format!("link->{}", fs::read_link(&p).unwrap().display())
        } else if ft.is_file() {
            format!("file {:?}", fs::read(&p).unwrap())
        } else {
            format!("special {:o} rdev={}", m.mode() & 0o170000, m.rdev())
        };
        out.insert(
            rel,
            format!(
                "{what} mode={:o} owner={}:{}",
                m.mode() & 0o7777,
                m.uid(),
                m.gid()
            ),
        );
    }
    out
}

/// The agent's layers, bottom first, or the error of the first layer that failed.
fn ours(tars: &[Vec<u8>], work: &Path) -> Result<Vec<PathBuf>, String> {
    let mut done: Vec<PathBuf> = Vec::new();
    for (i, t) in tars.iter().enumerate() {
        let lowers: Vec<PathBuf> = done.iter().rev().cloned().collect();
        let known = work.join(format!("known{i}"));
        fs::create_dir_all(&known).unwrap();
        extract(
            &t[..],
            &known,
            Lowers::Known(lowers.clone()),
            &Limits::default(),
        )
        .map_err(|e| format!("layer {i}: {e}"))?;
        let streamed = work.join(format!("streamed{i}"));
        fs::create_dir_all(&streamed).unwrap();
        match extract(&t[..], &streamed, Lowers::Unknown, &Limits::default()) {
            Ok((x, _)) => {
                let again = settle(&streamed, &lowers, &x.assumed.unwrap()).unwrap();
                if again.is_none() {
                    let (s, k) = (describe(&streamed), describe(&known));
                    if s != k {
                        return Err(format!(
                            "PANIC layer {i}: streamed and settled {s:#?}\nknown {k:#?}"
                        ));
                    }
                }
            }
            Err(ExtractError::NeedsLowers(_)) => {}
            Err(e) => return Err(format!("PANIC layer {i}: streamed: {e}, known: ok")),
        }
        done.push(known);
    }
    Ok(done)
}

fn umoci(tars: &[Vec<u8>], work: &Path) -> Result<PathBuf, String> {
    let layers: Vec<Blob> = tars
        .iter()
        .map(|t| layer_of(t, "application/vnd.oci.image.layer.v1.tar"))
        .collect();
    umoci_unpack(&image_with(layers, "amd64", false), work)
}

fn merged(dirs: &[PathBuf], at: &Path) -> BTreeMap<String, String> {
    let top_first: Vec<PathBuf> = dirs.iter().rev().cloned().collect();
    let mount = Overlay::mount(&top_first, at);
    describe(&mount.0)
}

/// Both refuse, or both unpack and the trees agree.
fn check(layers: &[Vec<Op>]) -> Result<(), String> {
    let tars: Vec<Vec<u8>> = layers
        .iter()
        .map(|l| tar(&l.iter().map(entry).collect::<Vec<_>>()))
        .collect();
    let work = tempfile::tempdir().unwrap();
    let theirs = umoci(&tars, work.path());
    let ours = ours(&tars, work.path());
    match (ours, theirs) {
        (Err(e), _) if e.starts_with("PANIC") => Err(e),
        (Err(_), Err(_)) => Ok(()),
        (Ok(_), Err(e)) => Err(format!("umoci refuses ({e}), the agent unpacks")),
        (Err(e), Ok(_)) => Err(format!("the agent refuses ({e}), umoci unpacks")),
        (Ok(dirs), Ok(rootfs)) => {
            let (a, b) = (
                merged(&dirs, &work.path().join("merged")),
                describe(&rootfs),
            );
            if a == b {
                return Ok(());
            }
            let keys: std::collections::BTreeSet<&String> = a.keys().chain(b.keys()).collect();
            let diff: Vec<String> = keys
                .into_iter()
                .filter(|k| a.get(*k) != b.get(*k))
                .map(|k| format!("{k}: agent {:?}, umoci {:?}", a.get(k), b.get(k)))
                .collect();
            Err(format!("trees differ:\n{}", diff.join("\n")))
        }
    }
}

proptest! {
    // PROPTEST_CASES=2000 for a longer search.
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|c| c.parse().ok()).unwrap_or(96),
        ..ProptestConfig::default()
    })]

    #[test]
    fn random_layer_stacks_merge_like_umoci(
        layers in prop::collection::vec(prop::collection::vec(op(), 0..7), 1..=3)
    ) {
        if let Err(e) = check(&layers) {
            prop_assert!(false, "{e}\nlayers: {layers:#?}");
        }
    }
}
