//! The differential corpus (SPEC §8): crafted layers, as real builders make them and as
//! attackers would, pulled from a real registry by the agent and unpacked by `umoci raw
//! unpack`. The agent's layer directories, merged by a real overlay mount, must give umoci's
//! tree: paths, types, modes, owners, contents, mtimes of everything but directories, link
//! targets, devices, every xattr, hardlink groups. Each case runs twice: layers unpacked while
//! they stream in (the layers below unknown, settled after), and unpacked from stored blobs
//! with the layers below known.
//!
//! The documented exceptions (SPEC §8, docs/decisions.md): directory mtimes; a hardlink to a
//! lower layer's file is a copy (`Links::Copied`); and a few layers umoci 0.4.7 refuses that
//! the agent unpacks as containerd and GNU tar do (`Expect::UmociRefuses`).

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::fault::FaultEnv;
use common::images::{Blob, Image, Pusher, block_on, image_with, layer_of};
use common::reference::{Overlay, umoci_unpack};
use common::tarball::{
    Entry, chardev, dir, fifo, file, gnu_long, hardlink, opaque, raw, record, symlink, tar,
    whiteout,
};
use common::{Pull, pull_report};

const TAR: &str = "application/vnd.oci.image.layer.v1.tar";
const GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Expect {
    /// The same tree.
    Same,
    /// Both refuse the image.
    BothRefuse,
    /// umoci 0.4.7 refuses it; the agent unpacks it (as containerd or GNU tar would).
    UmociRefuses,
}

/// Whether hardlink groups are compared whole, or a link to a lower layer's file is a copy.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Links {
    Same,
    Copied,
}

struct Case {
    name: &'static str,
    layers: Vec<Vec<u8>>,
    expect: Expect,
    links: Links,
}

fn case(name: &'static str, layers: Vec<Vec<Entry>>) -> Case {
    Case {
        name,
        layers: layers.iter().map(|l| tar(l)).collect(),
        expect: Expect::Same,
        links: Links::Same,
    }
}

impl Case {
    fn expect(mut self, e: Expect) -> Case {
        self.expect = e;
        self
    }
    fn copies(mut self) -> Case {
        self.links = Links::Copied;
        self
    }
}

/// A file's sparse copy as GNU tar writes it, in `format`.
fn sparse_layer(format: &[&str]) -> Vec<u8> {
    use std::os::unix::fs::FileExt;
    let src = tempfile::tempdir().unwrap();
    let f = fs::File::create(src.path().join("disk.img")).unwrap();
    f.write_all_at(b"start", 0).unwrap();
    f.write_all_at(b"middle", 3 << 20).unwrap();
    f.write_all_at(b"end", 9 << 20).unwrap();
    drop(f);
    let out = Command::new("tar")
        .args(["-S", "-c", "-f", "-", "--owner=0", "--group=0", "-C"])
        .arg(src.path())
        .args(format)
        .arg("disk.img")
        .output()
        .unwrap();
    assert!(out.status.success());
    out.stdout
}

/// A base with merged /usr, as Debian 12 and Fedora images have it.
fn merged_usr() -> Vec<Entry> {
    vec![
        dir("usr"),
        dir("usr/bin").mode(0o751).owner(0, 2),
        file("usr/bin/sh", b"#!shell").mode(0o755),
        dir("usr/lib64"),
        file("usr/lib64/libc.so", b"libc"),
        symlink("bin", "usr/bin"),
        symlink("lib64", "/usr/lib64"),
        dir("real"),
        file("real/file", b"r"),
        file("real/other", b"o"),
        symlink("lnk", "real"),
    ]
}

fn base() -> Vec<Entry> {
    vec![
        dir("etc"),
        file("etc/passwd", b"root:x:0:0"),
        dir("w"),
        file("w/old", b"old"),
        dir("w/sub"),
        file("w/sub/deep", b"deep"),
        dir("o"),
        file("o/x", b"x"),
        file("o/y", b"y"),
        file("f", b"lower f"),
        dir("d"),
        file("d/lower", b"l"),
        dir("srv").mode(0o700).owner(7, 7),
        dir("srv/data").mode(0o750).owner(8, 8),
    ]
}

/// `n` bytes that differ from block to block (`seed` makes files differ).
fn big(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31) ^ (i >> 12) as u8 ^ seed)
        .collect()
}

fn corpus() -> Vec<Case> {
    let long = format!("long/{}/{}", "n".repeat(150), "m".repeat(150));
    let cap: &[u8] = &[
        1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    let mut site = vec![dir("site").mode(0o700).owner(5, 5)];
    let mut site_upper = Vec::new();
    for i in 0..2500 {
        site.push(dir(&format!("site/pkg{i}")).mode(0o750).owner(i, i));
        site_upper.push(file(&format!("site/pkg{i}/mod/__init__.py"), b""));
    }
    // A directory whose header claims a body holding a file: Go gives it none.
    let smuggled = {
        let inner = tar(&[file("smuggled", b"payload")]);
        let inner = inner[..inner.len() - 1024].to_vec();
        let mut d = tar(&[dir("box").patch(124, format!("{:011o}\0", inner.len()).as_bytes())]);
        d.truncate(512);
        d.extend_from_slice(&inner);
        raw(d)
    };
    vec![
        case(
            "every-kind",
            vec![vec![
                dir("etc"),
                file("etc/a", b"alpha"),
                hardlink("etc/a2", "etc/a"),
                symlink("etc/abs", "/etc/a").owner(1000, 1001),
                symlink("etc/rel", "a"),
                fifo("run-fifo").mode(0o640).owner(3, 4),
                chardev("dev-null", 1, 3),
                Entry {
                    kind: b'4',
                    dev: (7, 0),
                    ..file("blockdev", b"")
                },
                file("suid", b"s").mode(0o4755),
                file("sgid", b"s").mode(0o2711).owner(0, 50),
                dir("sticky").mode(0o1777),
                file("owned", b"o").owner(1234, 5678).mode(0o640),
                file("empty", b""),
            ]],
        ),
        case("unlisted-parents-2500", vec![site, site_upper]),
        // Files large enough to be written with O_DIRECT (8 MiB and more): with a buffered
        // tail or none, setuid and owned (attributes set after the data), with an xattr, a
        // hardlink to one, and one replaced by the layer above.
        case(
            "large-files",
            vec![
                vec![
                    dir("models"),
                    file("models/weights", &big(9 << 20, 1)).xattr("user.model", b"v1"),
                    hardlink("models/weights.link", "models/weights"),
                    file("models/exact", &big(8 << 20, 2))
                        .owner(1000, 1000)
                        .mode(0o4750),
                    file("models/replaced", &big((8 << 20) + 1, 3)),
                ],
                vec![file("models/replaced", &big((10 << 20) + 4097, 4)).mode(0o600)],
            ],
        ),
        case(
            "whiteout-then-directory",
            vec![base(), vec![whiteout("w"), dir("w"), file("w/new", b"n")]],
        ),
        case(
            "whiteout-then-implied-directory",
            vec![base(), vec![whiteout("w"), file("w/new", b"n")]],
        ),
        case(
            "file-then-directory",
            vec![base(), vec![file("w", b"f"), dir("w"), file("w/new", b"n")]],
        ),
        case(
            "whiteout-then-file",
            vec![base(), vec![whiteout("w"), file("w", b"now a file")]],
        ),
        case(
            "merged-usr-bin",
            vec![merged_usr(), vec![file("bin/foo", b"foo").mode(0o755)]],
        ),
        case(
            "merged-usr-absolute-link",
            vec![merged_usr(), vec![file("lib64/ld.so", b"ld")]],
        ),
        case(
            "merged-usr-listed-bin-replaces-the-link",
            vec![merged_usr(), vec![dir("bin"), file("bin/foo", b"foo")]],
        ),
        case(
            "whiteout-through-a-lower-symlink",
            vec![merged_usr(), vec![whiteout("lnk/file")]],
        ),
        case(
            "opaque-through-a-lower-symlink",
            vec![merged_usr(), vec![opaque("lnk"), file("lnk/new", b"n")]],
        ),
        case(
            "hardlink-through-a-lower-symlink",
            vec![merged_usr(), vec![hardlink("sh-copy", "bin/sh")]],
        )
        .copies(),
        case(
            "symlink-chain-across-layers",
            vec![
                merged_usr(),
                vec![symlink("b2", "bin"), file("b2/bar", b"bar")],
            ],
        ),
        case(
            "dangling-lower-symlink-as-parent",
            vec![
                vec![symlink("l", "nonexist/d")],
                vec![file("l/f", b"through a dangling link")],
            ],
        ),
        case(
            "lower-symlink-climbing-out",
            vec![
                vec![symlink("up", "../../..")],
                vec![file("up/escape", b"stays inside")],
            ],
        ),
        case(
            "symlink-loop",
            vec![
                vec![symlink("a", "b"), symlink("b", "a")],
                vec![file("a/x", b"")],
            ],
        )
        .expect(Expect::BothRefuse),
        case(
            "file-under-a-lower-file",
            vec![base(), vec![file("f/x", b"")]],
        )
        .expect(Expect::BothRefuse),
        case(
            "whiteout-of-nothing-below",
            vec![
                base(),
                vec![dir("d"), whiteout("d/never"), whiteout("nowhere/deep/x")],
            ],
        ),
        case(
            "whiteout-in-a-new-directory",
            vec![
                base(),
                vec![dir("new"), whiteout("new/x"), file("new/y", b"")],
            ],
        ),
        case(
            "whiteouts-inside-an-opaque-directory",
            vec![
                base(),
                vec![opaque("o"), whiteout("o/x"), file("o/z", b"z")],
            ],
        ),
        case(
            "whiteout-before-opaque",
            vec![
                base(),
                vec![whiteout("o/x"), opaque("o"), file("o/z", b"z")],
            ],
        ),
        case(
            "opaque-of-a-missing-directory",
            vec![base(), vec![opaque("ghost"), opaque("srv/ghost")]],
        ),
        case(
            "opaque-root",
            vec![base(), vec![file("./.wh..wh..opq", b""), file("new", b"n")]],
        ),
        case(
            "opaque-root-after-files",
            vec![
                base(),
                vec![
                    file("etc/mine", b"m"),
                    file(".wh..wh..opq", b""),
                    file("w/x", b""),
                ],
            ],
        ),
        case(
            "root-attributes-inherited",
            vec![
                vec![dir("./").mode(0o750).owner(1000, 1000), file("a", b"")],
                vec![file("b", b"")],
            ],
        ),
        case(
            "root-attributes-listed",
            vec![
                vec![dir("./").mode(0o750).owner(1000, 1000)],
                vec![dir(".").mode(0o711).owner(3, 3), file("b", b"")],
            ],
        ),
        case(
            "whiteout-of-own-file",
            vec![base(), vec![file("f", b"upper f"), whiteout("f")]],
        ),
        case(
            "whiteout-of-own-directory",
            vec![base(), vec![file("d/upper", b"u"), whiteout("d")]],
        ),
        case(
            "directory-replaced-by-file-same-layer",
            vec![base(), vec![file("n/a/b", b""), file("n", b"now a file")]],
        ),
        case(
            "directory-replaced-by-symlink-same-layer",
            vec![base(), vec![file("n/a/b", b""), symlink("n", "etc")]],
        ),
        case(
            "lower-directory-replaced-by-file",
            vec![base(), vec![file("d", b"a file")]],
        ),
        case(
            "lower-file-replaced-by-directory",
            vec![base(), vec![dir("f"), file("f/x", b"")]],
        ),
        case(
            "implied-directory-keeps-lower-attributes",
            vec![
                base(),
                vec![file("srv/data/x", b""), file("srv/new/y", b"")],
            ],
        ),
        case(
            "listed-directory-over-lower-one",
            vec![
                base(),
                vec![dir("srv").mode(0o755).owner(9, 9), file("srv/z", b"")],
            ],
        ),
        case(
            "pax-mtime-with-nanoseconds",
            vec![vec![
                file("t", b"").pax("mtime", b"1600000000.123456789"),
                symlink("ts", "t").pax("mtime", b"1500000000.5"),
            ]],
        ),
        case(
            "negative-mtimes",
            vec![vec![
                file("neg256", b"").patch(136, &[0xff; 12]),
                file("negpax", b"").pax("mtime", b"-86400.25"),
            ]],
        ),
        case(
            "long-names",
            vec![vec![
                dir("long"),
                file(&long, b"pax path"),
                gnu_long(
                    b'L',
                    "gnu/long/name/beyond/one/hundred/bytes/is/written/as/an/L/header/before/the/entry/itself",
                ),
                file("placeholder", b"gnu"),
                gnu_long(b'K', &"t".repeat(300)),
                symlink("long-target", "placeholder"),
            ]],
        ),
        case(
            "xattrs-of-every-kind",
            vec![vec![
                file("bin/ping", b"ping").xattr("security.capability", cap),
                file("bin/bin", b"").xattr("user.bin", b"\x00\xff\x01"),
                file("named", b"").xattr("user.\u{e9}t\u{e9}", b"utf8"),
                dir("tagged").xattr("trusted.dir", b"d"),
                symlink("sym", "named").xattr("trusted.sym", b"on a link"),
                file("many", b"")
                    .xattr("user.a", b"1")
                    .xattr("user.b", b"2")
                    .xattr("trusted.c", b"3"),
            ]],
        ),
        case(
            "hardlink-copy-keeps-capabilities",
            vec![
                vec![
                    file("bin/ping", b"ping")
                        .xattr("security.capability", cap)
                        .mode(0o755),
                ],
                vec![hardlink("usr/ping", "bin/ping")],
            ],
        )
        .copies(),
        case(
            "hardlink-to-a-whited-out-path",
            vec![base(), vec![whiteout("f"), hardlink("h", "f")]],
        )
        .expect(Expect::BothRefuse),
        case(
            "hardlink-within-the-layer-over-three-layers",
            vec![
                base(),
                vec![file("x/one", b"1"), hardlink("x/two", "x/one")],
                vec![hardlink("x/three", "x/one"), whiteout("x/one")],
            ],
        )
        .copies(),
        Case {
            name: "sparse-pax-1.0",
            layers: vec![sparse_layer(&["--format=pax", "--sparse-version=1.0"])],
            expect: Expect::Same,
            links: Links::Same,
        },
        Case {
            name: "sparse-pax-0.1",
            layers: vec![sparse_layer(&["--format=pax", "--sparse-version=0.1"])],
            expect: Expect::Same,
            links: Links::Same,
        },
        Case {
            name: "sparse-pax-0.0",
            layers: vec![sparse_layer(&["--format=pax", "--sparse-version=0.0"])],
            expect: Expect::Same,
            links: Links::Same,
        },
        Case {
            name: "sparse-old-gnu",
            layers: vec![sparse_layer(&["--format=gnu"])],
            expect: Expect::UmociRefuses,
            links: Links::Same,
        },
        case(
            "pax-global-header",
            vec![vec![
                Entry {
                    kind: b'g',
                    ..file(
                        "pax_global_header",
                        &record("comment", b"0123456789abcdef, as git archive writes"),
                    )
                },
                file("after", b"a"),
            ]],
        )
        .expect(Expect::UmociRefuses),
        case(
            "header-only-type-with-a-size",
            vec![vec![smuggled, file("after", b"ok")]],
        ),
        case(
            "names-with-dot-dot-and-slashes",
            vec![vec![
                file("a/../b", b"b"),
                file("/abs/x", b"x"),
                file("./c", b"c"),
                file("../../escape", b"e"),
            ]],
        ),
        case(
            "legacy-directory-type",
            vec![vec![
                Entry {
                    kind: 0,
                    ..dir("legacy/")
                },
                file("legacy/x", b""),
            ]],
        ),
        case(
            "duplicate-entries-last-wins",
            vec![vec![
                file("dup", b"first"),
                file("dup", b"second").mode(0o600),
                dir("dd").mode(0o700),
                dir("dd").mode(0o755).owner(4, 4),
            ]],
        ),
        case(
            "special-whiteouts-ignored",
            vec![
                base(),
                vec![file(".wh..wh.plnk/123", b""), file("etc/.wh..wh.aufs", b"")],
            ],
        ),
        case(
            "three-layers-whiteout-then-recreate",
            vec![
                base(),
                vec![whiteout("w"), whiteout("etc/passwd")],
                vec![file("w/again", b"a"), file("etc/passwd", b"new")],
            ],
        ),
        case(
            "overlay-xattrs-from-the-layer-are-not-applied",
            vec![
                base(),
                vec![
                    dir("o").xattr("trusted.overlay.opaque", b"y"),
                    file("o/new", b""),
                ],
            ],
        ),
        case("empty-layer", vec![base(), vec![]]),
        case(
            "unknown-entry-type",
            vec![vec![Entry {
                kind: b'V',
                ..file("volume-label", b"")
            }]],
        )
        .expect(Expect::BothRefuse),
    ]
}

fn describe(root: &Path) -> (BTreeMap<String, String>, Vec<Vec<String>>) {
    common::reference::describe_tree(root, false)
}

/// The layer directories of the image the report lists at `i`, top first (`None` if it
/// failed).
fn layer_dirs(p: &Pull, i: usize, layers: &Path) -> Option<Vec<PathBuf>> {
    let img = &p.report["images"][i];
    if img["status"] == "failed" {
        return None;
    }
    let mut dirs: Vec<PathBuf> = img["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let chain = l["chain_id"].as_str().unwrap();
            layers.join("sha256").join(&chain[7..]).join("fs")
        })
        .collect();
    dirs.reverse();
    Some(dirs)
}

#[test]
fn crafted_layers_merge_like_umoci_raw_unpack_streamed_and_from_stored_blobs() {
    let cases = corpus();
    assert!(cases.len() >= 40, "{} cases", cases.len());
    let images: Vec<Image> = cases
        .iter()
        .map(|c| {
            let layers = c.layers.iter().map(|l| layer_of(l, TAR)).collect();
            image_with(layers, "amd64", false)
        })
        .collect();
    let e = FaultEnv::start(images[0].clone(), &[]);
    let reg = e.registry.addr();
    block_on(async {
        let p = Pusher::new(&reg);
        for (c, img) in cases.iter().zip(&images) {
            p.image(&format!("corpus/{}", c.name), "v1", img).await;
        }
    });
    let refs: Vec<String> = cases
        .iter()
        .map(|c| format!("{reg}/corpus/{}:v1", c.name))
        .collect();
    let work = tempfile::tempdir().unwrap();
    // Streamed: every layer unpacks while it downloads.
    let (store, streamed) = (work.path().join("store"), work.path().join("streamed"));
    let mut args = vec![
        "--http-registry",
        &reg,
        "--layers",
        streamed.to_str().unwrap(),
    ];
    args.extend(refs.iter().map(String::as_str));
    let first = pull_report(&e.root, &store, &args);
    // From stored blobs: downloaded without unpacking, then unpacked bottom-up.
    let (store2, known) = (work.path().join("store2"), work.path().join("known"));
    let mut args = vec!["--http-registry", &reg, "--no-unpack"];
    args.extend(refs.iter().map(String::as_str));
    let p = pull_report(&e.root, &store2, &args);
    let fetched = p.report["images"].as_array().unwrap();
    assert!(
        fetched.iter().all(|i| i["status"] != "failed"),
        "{}",
        p.stderr
    );
    let mut args = vec!["--http-registry", &reg, "--layers", known.to_str().unwrap()];
    args.extend(refs.iter().map(String::as_str));
    let second = pull_report(&e.root, &store2, &args);

    let mut failures = Vec::new();
    let mut compared = 0;
    for (i, (c, img)) in cases.iter().zip(&images).enumerate() {
        let dir = work.path().join(c.name);
        let theirs = umoci_unpack(img, &dir);
        for (mode, p, layers) in [
            ("streamed", &first, &streamed),
            ("from blobs", &second, &known),
        ] {
            let ours = layer_dirs(p, i, layers);
            let what = format!("{} ({mode})", c.name);
            match (c.expect, &ours, &theirs) {
                (Expect::BothRefuse, None, Err(_)) => continue,
                (Expect::UmociRefuses, Some(_), Err(_)) => {}
                (Expect::Same, Some(_), Ok(_)) => {}
                (want, ours, theirs) => {
                    failures.push(format!(
                        "{what}: expected {want:?}; agent: {}; umoci: {}",
                        match ours {
                            Some(_) => "unpacked".to_string(),
                            None => format!("failed: {}", p.report["images"][i]["error"]),
                        },
                        match theirs {
                            Ok(_) => "unpacked".to_string(),
                            Err(e) => format!("failed: {}", e.trim()),
                        }
                    ));
                    continue;
                }
            }
            let Ok(theirs) = &theirs else { continue };
            let mount = Overlay::mount(
                ours.as_ref().unwrap(),
                &dir.join(format!("merged-{i}-{}", mode.len())),
            );
            let (ours_tree, our_links) = describe(&mount.0);
            let (their_tree, their_links) = describe(theirs);
            drop(mount);
            compared += 1;
            eprintln!("{what}: {} paths compared", their_tree.len());
            if ours_tree != their_tree {
                let keys: std::collections::BTreeSet<&String> =
                    ours_tree.keys().chain(their_tree.keys()).collect();
                let diff: Vec<String> = keys
                    .into_iter()
                    .filter(|k| ours_tree.get(*k) != their_tree.get(*k))
                    .take(8)
                    .map(|k| {
                        format!(
                            "  {k}:\n    agent: {:?}\n    umoci: {:?}",
                            ours_tree.get(k),
                            their_tree.get(k)
                        )
                    })
                    .collect();
                failures.push(format!("{what}: trees differ\n{}", diff.join("\n")));
            } else if c.links == Links::Same && our_links != their_links {
                failures.push(format!(
                    "{what}: hardlink groups differ: {our_links:?} vs {their_links:?}"
                ));
            }
        }
    }
    assert!(compared >= 2 * 40, "only {compared} trees compared");
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}\n\nstreamed stderr:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n"),
        first.stderr
    );
}

/// Runs `script` with bash; its stdout.
fn bash(script: &str) -> String {
    let out = Command::new("bash").arg("-c").arg(script).output().unwrap();
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Issue 20, item 4: a 1 MB gzip blob holding a 1 GiB GNU long name (or a 1 GiB PAX header)
/// is refused from the header's size field: the agent never holds it in memory.
#[test]
fn a_gibibyte_meta_header_is_refused_with_bounded_memory() {
    let work = tempfile::tempdir().unwrap();
    let mut images = Vec::new();
    for kind in [b'L', b'x'] {
        let header = tar(&[Entry {
            kind,
            ..file("././@LongLink", b"")
        }
        .patch(124, format!("{:011o}\0", 1u64 << 30).as_bytes())]);
        let (head, tail) = (work.path().join("head"), work.path().join("tail"));
        fs::write(&head, &header[..512]).unwrap();
        fs::write(&tail, tar(&[file("x", b"")])).unwrap();
        // The stream as an attacker sends it: the whole gibibyte, then an entry and the end.
        let stream = format!(
            "{{ cat {}; head -c {} /dev/zero; cat {}; }}",
            head.display(),
            1u64 << 30,
            tail.display()
        );
        let diff_id = bash(&format!("{stream} | sha256sum"));
        let blob = work.path().join("blob");
        bash(&format!("{stream} | pigz -9 > {}", blob.display()));
        let mut layer = Blob::new(fs::read(&blob).unwrap(), GZIP);
        assert!(layer.bytes.len() < 2 << 20, "{} bytes", layer.bytes.len());
        layer.diff_id = format!("sha256:{}", &diff_id[..64]);
        images.push(image_with(vec![layer], "amd64", false));
    }
    let e = FaultEnv::start(images[0].clone(), &["hostile/long-name"]);
    let reg = e.registry.addr();
    block_on(async {
        Pusher::new(&reg)
            .image("hostile/pax", "v1", &images[1])
            .await
    });
    for repo in ["hostile/long-name", "hostile/pax"] {
        let store = work.path().join(repo);
        let out = Command::new("/usr/bin/time")
            .args(["-f", "maxrss=%M"])
            .arg(common::bin())
            .args(["pull", "--root", e.root.arg(), "--store"])
            .arg(&store)
            .arg("--layers")
            .arg(store.join("layers"))
            .args(["--http-registry", &reg, &format!("{reg}/{repo}:v1")])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        let rss_kib: u64 = stderr
            .rsplit("maxrss=")
            .next()
            .and_then(|s| s.trim().parse().ok())
            .expect("GNU time's output");
        eprintln!(
            "{repo}: exit {:?}, peak RSS {} MiB",
            out.status.code(),
            rss_kib >> 10
        );
        assert!(rss_kib < 128 << 10, "{repo}: peak RSS {rss_kib} KiB");
        assert_ne!(out.status.code(), Some(0), "{repo}: {stderr}");
        assert!(stderr.contains("1048576"), "{repo}: {stderr}");
    }
}

/// Issue 20, item 5: 64 hardlinks to a 16 MiB file of the layer below would be 64 copies
/// (1 GiB on disk): they count against `--max-layer-size` with the layer's own bytes.
#[test]
fn copies_of_a_lower_file_count_against_the_max_layer_size() {
    let big = common::images::random_bytes(5, 16 << 20);
    let lower = tar(&[file("big", &big)]);
    let links: Vec<Entry> = (0..64).map(|i| hardlink(&format!("l{i}"), "big")).collect();
    let img = image_with(
        vec![layer_of(&lower, TAR), layer_of(&tar(&links), TAR)],
        "amd64",
        false,
    );
    let e = FaultEnv::start(img, &["hostile/links"]);
    let reg = e.registry.addr();
    let work = tempfile::tempdir().unwrap();
    let layers = work.path().join("layers");
    let p = pull_report(
        &e.root,
        &work.path().join("store"),
        &[
            "--http-registry",
            &reg,
            "--layers",
            layers.to_str().unwrap(),
            "--max-layer-size",
            "20971520",
            &format!("{reg}/hostile/links:v1"),
        ],
    );
    assert_ne!(p.code, 0, "{}", p.stderr);
    let err = p.report["images"][0]["error"].as_str().unwrap_or_default();
    assert!(err.contains("--max-layer-size"), "{err}");
    let used = bash(&format!("du -sb {} | cut -f1", layers.display()));
    let used: u64 = used.trim().parse().unwrap();
    assert!(used < 64 << 20, "{used} bytes left in the layer store");
}
