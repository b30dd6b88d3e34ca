//! Unpacking layers while they download (SPEC §8), against the real registry: the layer
//! directories, merged with overlayfs, give the same tree as `umoci raw unpack` of the same
//! image; a wrong diff_id commits nothing; layers are shared, present images are not unpacked
//! again, `--no-unpack` unpacks nothing.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use common::fault::FaultEnv;
use common::images::{Blob, Image, image_with, sha256};
use common::reference::{Overlay, umoci_unpack};
use common::tarball::{chardev, dir, fifo, file, hardlink, opaque, symlink, tar, whiteout};
use common::{Pull, pull_report};

const GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
const TAR: &str = "application/vnd.oci.image.layer.v1.tar";

fn layer(tar: Vec<u8>, media_type: &str) -> Blob {
    let bytes = match media_type {
        GZIP => {
            let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            gz.write_all(&tar).unwrap();
            gz.finish().unwrap()
        }
        ZSTD => zstd::stream::encode_all(&tar[..], 3).unwrap(),
        _ => tar.clone(),
    };
    let mut b = Blob::new(bytes, media_type);
    b.diff_id = sha256(&tar);
    b
}

/// Three layers (gzip, zstd, plain tar) with every kind of entry, whiteouts and an opaque
/// directory.
fn rich_image() -> Image {
    rich_image_as(&[GZIP, ZSTD, TAR])
}

/// The same layer contents with the given compressions (umoci 0.4 reads no zstd, so its copy
/// of the image has the zstd layer as gzip: the same diff_id, the same tree).
fn rich_image_as(media_types: &[&str; 3]) -> Image {
    let long = format!("deep/{}/{}", "d".repeat(120), "f".repeat(150));
    let l0 = tar(&[
        dir("etc"),
        file("etc/a", b"alpha"),
        file("etc/b", b"beta"),
        hardlink("etc/a2", "etc/a"),
        file("etc/h1", b"one inode"),
        hardlink("etc/h2", "etc/h1"),
        dir("opt"),
        dir("opt/keep"),
        file("opt/keep/x", b"kept below"),
        dir("usr"),
        dir("usr/bin"),
        file("usr/bin/tool", b"\x7fELF tool")
            .mode(0o4755)
            .owner(1000, 1000),
        symlink("bin", "usr/bin"),
        symlink("abs", "/etc/a").owner(1000, 1001),
        dir("tmp").mode(0o1777),
        fifo("run-fifo"),
        chardev("dev-null", 1, 3),
        file("tagged", b"x").xattr("user.origin", b"layer0"),
        file("empty", b""),
        dir("deep"),
        file(&long, b"long name"),
        dir("donn\u{e9}es"),
        file("donn\u{e9}es/\u{fc}.txt", b"utf-8"),
        file("owned", b"o").owner(1234, 5678).mode(0o640),
        dir("srv").mode(0o700).owner(7, 7),
    ]);
    let l1 = tar(&[
        whiteout("etc/b"),
        dir("opt"),
        opaque("opt"),
        file("opt/new", b"above"),
        file("etc/a", b"alpha, changed"),
        // A directory this layer does not list: it keeps the lower layer's attributes
        // (recorded while streaming, given once the lower layer is there).
        file("srv/x", b"under a 0700 directory"),
    ]);
    // A hardlink to a lower layer's file: a copy (overlayfs cannot link across layers); this
    // layer is unpacked again from its blob once the layers below are there.
    let l2 = tar(&[
        file("etc/c", b"gamma"),
        whiteout("usr/bin/tool"),
        hardlink("etc/h-copy", "etc/h1"),
    ]);
    image_with(
        vec![
            layer(l0, media_types[0]),
            layer(l1, media_types[1]),
            layer(l2, media_types[2]),
        ],
        "amd64",
        false,
    )
}

/// What the comparison looks at, per path: type, mode, owner, size, content, link target,
/// device, user xattrs, regular-file mtime; and the hardlink groups.
fn describe(root: &Path) -> (BTreeMap<String, String>, Vec<Vec<String>>) {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let m = fs::symlink_metadata(&p).unwrap();
            let ft = m.file_type();
            let mut xattrs: Vec<String> = Vec::new();
            if !ft.is_symlink() {
                let mut names = vec![0u8; 4096];
                if let Ok(n) = rustix::fs::llistxattr(&p, &mut names) {
                    for name in names[..n].split(|b| *b == 0).filter(|n| !n.is_empty()) {
                        let name = String::from_utf8_lossy(name).into_owned();
                        if name.starts_with("user.") {
                            let mut v = vec![0u8; 4096];
                            let k = rustix::fs::lgetxattr(&p, name.as_str(), &mut v).unwrap();
                            xattrs.push(format!("{name}={}", String::from_utf8_lossy(&v[..k])));
                        }
                    }
                }
            }
            let what = if ft.is_dir() {
                stack.push(p.clone());
                "dir".to_string()
            } else if ft.is_symlink() {
                format!("link->{}", fs::read_link(&p).unwrap().display())
            } else if ft.is_file() {
                inodes.entry(m.ino()).or_default().push(rel.clone());
                format!(
                    "file {} {} mtime={}",
                    m.len(),
                    sha256(&fs::read(&p).unwrap()),
                    m.mtime()
                )
            } else if ft.is_fifo() {
                "fifo".into()
            } else if ft.is_char_device() {
                format!("chardev {}", m.rdev())
            } else {
                "other".into()
            };
            out.insert(
                rel,
                format!(
                    "{what} mode={:o} owner={}:{} {}",
                    m.mode() & 0o7777,
                    m.uid(),
                    m.gid(),
                    xattrs.join(",")
                ),
            );
        }
    }
    let groups = inodes.into_values().filter(|g| g.len() > 1).map(|mut g| {
        g.sort();
        g
    });
    (out, groups.collect())
}

/// `umoci raw unpack` of `img`.
fn umoci_tree(img: &Image, work: &Path) -> PathBuf {
    umoci_unpack(img, work).unwrap_or_else(|e| panic!("umoci: {e}"))
}

/// Layers the report says were unpacked in this run, over all its images.
fn unpacked_now(p: &Pull) -> usize {
    p.report["images"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|i| i["layers"].as_array().unwrap())
        .filter(|l| l["unpacked"] == true)
        .count()
}

fn pull(e: &FaultEnv, store: &Path, layers: &Path, image: &str, extra: &[&str]) -> Pull {
    let reg = e.registry.addr();
    let layers = layers.to_str().unwrap();
    let mut args = vec!["--http-registry", &reg, "--layers", layers];
    args.extend_from_slice(extra);
    args.push(image);
    pull_report(&e.root, store, &args)
}

#[test]
fn the_overlay_merge_of_the_layers_equals_umoci_raw_unpack() {
    let img = rich_image();
    let e = FaultEnv::start(img.clone(), &["unpack/rich"]);
    let work = tempfile::tempdir().unwrap();
    let (store, layers) = (work.path().join("store"), work.path().join("layers"));
    let image = format!("{}/unpack/rich:v1", e.registry.addr());
    let p = pull(&e, &store, &layers, &image, &[]);
    assert_eq!(p.code, 0, "{}", p.stderr);
    let reported = p.report["images"][0]["layers"].as_array().unwrap().clone();
    assert_eq!(reported.len(), 3);
    let mut dirs: Vec<PathBuf> = Vec::new();
    for (l, blob) in reported.iter().zip(&img.layers) {
        assert_eq!(l["digest"], blob.digest.as_str());
        assert_eq!(l["diff_id"], blob.diff_id.as_str());
        assert_eq!(l["unpacked"], true);
        let chain = l["chain_id"].as_str().unwrap();
        let dir = layers.join("sha256").join(&chain[7..]);
        let json: serde_json::Value =
            serde_json::from_slice(&fs::read(dir.join("layer.json")).unwrap()).unwrap();
        assert_eq!(json["chain_id"], chain);
        dirs.push(dir.join("fs"));
    }
    // The overlay format itself: a whiteout is a 0/0 character device, opaque is an xattr.
    let wh = fs::symlink_metadata(dirs[1].join("etc/b")).unwrap();
    assert!(wh.file_type().is_char_device() && wh.rdev() == 0);
    let mut v = [0u8; 4];
    let n = rustix::fs::lgetxattr(
        dirs[1].join("opt").as_path(),
        "trusted.overlay.opaque",
        &mut v,
    )
    .unwrap();
    assert_eq!(&v[..n], b"y");
    assert_eq!(fs::read_dir(layers.join("ingest")).unwrap().count(), 0);

    dirs.reverse();
    let merged = Overlay::mount(&dirs, &work.path().join("merged"));
    let (ours, our_links) = describe(&merged.0);
    let (theirs, their_links) =
        describe(&umoci_tree(&rich_image_as(&[GZIP, GZIP, TAR]), work.path()));
    // Everything but directory mtimes (SPEC §8), which `describe` leaves out.
    assert_eq!(ours, theirs, "trees differ");
    // umoci links etc/h-copy to the lower file; in the layer store it is a copy (SPEC §8).
    let their_links: Vec<Vec<String>> = their_links
        .into_iter()
        .map(|g| g.into_iter().filter(|p| p != "etc/h-copy").collect())
        .collect();
    assert_eq!(our_links, their_links, "hardlink groups differ");
    assert!(
        ours["srv"].contains("mode=700 owner=7:7"),
        "{}",
        ours["srv"]
    );
    // The comparison saw what the layers hold (it would pass on two empty trees otherwise).
    assert!(ours.len() > 20, "{ours:#?}");
    assert!(
        ours["tagged"].contains("user.origin=layer0"),
        "{}",
        ours["tagged"]
    );
    assert!(ours["abs"].starts_with("link->/etc/a") && ours["abs"].contains("owner=1000:1001"));
    assert!(ours["run-fifo"].starts_with("fifo"));
    assert!(ours["dev-null"].starts_with(&format!("chardev {}", rustix::fs::makedev(1, 3))));
    assert!(ours["owned"].contains("mode=640 owner=1234:5678"));
    assert!(ours["tmp"].contains("mode=1777"));
    assert!(ours.keys().any(|k| k.len() > 255), "the long name");
    assert!(ours.contains_key("donn\u{e9}es/\u{fc}.txt"));
    assert!(
        !ours.contains_key("usr/bin/tool"),
        "whited out in the top layer"
    );
    assert!(ours.contains_key("opt/new") && !ours.contains_key("opt/keep"));
    assert!(!ours.contains_key("etc/b") && ours.contains_key("etc/c"));
}

#[test]
fn a_wrong_diff_id_fails_the_image_and_commits_nothing() {
    let good = rich_image();
    let mut bad_layers = good.layers.clone();
    bad_layers[1].diff_id = sha256(b"not this layer");
    let img = image_with(bad_layers, "amd64", false);
    let e = FaultEnv::start(img, &["unpack/bad"]);
    let work = tempfile::tempdir().unwrap();
    let (store, layers) = (work.path().join("store"), work.path().join("layers"));
    let p = pull(
        &e,
        &store,
        &layers,
        &format!("{}/unpack/bad:v1", e.registry.addr()),
        &[],
    );
    assert_eq!(p.code, 4, "{}", p.stderr);
    let err = p.report["images"][0]["error"].as_str().unwrap();
    assert!(err.contains("diff_id"), "{err}");
    // Each layer is verified on its own: the one whose diff_id is wrong is never committed
    // (the others may be, each under the chain ID the config gives it).
    for entry in fs::read_dir(layers.join("sha256")).unwrap() {
        let json: serde_json::Value =
            serde_json::from_slice(&fs::read(entry.unwrap().path().join("layer.json")).unwrap())
                .unwrap();
        assert_ne!(json["digest"], good.layers[1].digest.as_str());
    }
    assert_eq!(fs::read_dir(layers.join("ingest")).unwrap().count(), 0);
    assert!(
        !store.join("index.json").exists(),
        "the image is not made visible"
    );
}

#[test]
fn shared_layers_once_present_images_not_again_and_no_unpack() {
    let base = rich_image();
    let top = layer(tar(&[file("app/bin", b"app")]), GZIP);
    let a = image_with(base.layers.clone(), "amd64", false);
    let b = image_with(
        base.layers.iter().cloned().chain([top]).collect(),
        "amd64",
        false,
    );
    let e = FaultEnv::start(a.clone(), &["unpack/a"]);
    common::images::block_on(
        common::images::Pusher::new(&e.registry.addr()).image("unpack/b", "v1", &b),
    );
    let work = tempfile::tempdir().unwrap();
    let (store, layers) = (work.path().join("store"), work.path().join("layers"));
    let reg = e.registry.addr();
    let (ia, ib) = (format!("{reg}/unpack/a:v1"), format!("{reg}/unpack/b:v1"));
    let p = pull(&e, &store, &layers, &ia, &[&ib]);
    assert_eq!(p.code, 0, "{}", p.stderr);
    assert_eq!(
        fs::read_dir(layers.join("sha256")).unwrap().count(),
        4,
        "3 shared + 1"
    );
    // Each shared layer is reported by both images but unpacked once: 3 + 4 entries.
    assert_eq!(
        unpacked_now(&p),
        7,
        "both images report the layers unpacked in this run"
    );

    // Present: nothing fetched, nothing unpacked.
    let p = pull(&e, &store, &layers, &ia, &[&ib]);
    assert_eq!(p.code, 0, "{}", p.stderr);
    assert_eq!(p.report["images"][0]["status"], "present");
    assert_eq!(unpacked_now(&p), 0);
    assert_eq!(p.report["images"][1]["unpacked_bytes"], 0);

    // A layer removed from the layer store is unpacked again from the stored blob.
    // (The images are reported in the order given: b, then a.)
    let chain = p.report["images"][0]["layers"][3]["chain_id"]
        .as_str()
        .unwrap()
        .to_string();
    fs::remove_dir_all(layers.join("sha256").join(&chain[7..])).unwrap();
    let p = pull(&e, &store, &layers, &ib, &[]);
    assert_eq!(p.code, 0, "{}", p.stderr);
    assert_eq!(p.report["images"][0]["bytes"], 0, "nothing downloaded");
    assert_eq!(unpacked_now(&p), 1);

    // --no-unpack: blobs only.
    let store2 = work.path().join("store2");
    let layers2 = work.path().join("layers2");
    let p = pull(&e, &store2, &layers2, &ia, &["--no-unpack"]);
    assert_eq!(p.code, 0, "{}", p.stderr);
    assert!(!layers2.exists());
    assert!(p.report["images"][0].get("layers").is_none());
}

/// store-check covers the layer store: a layer whose layer.json lies, a staging directory of
/// a killed run; without --fix nothing changes, with --fix they go and good layers stay.
#[test]
fn store_check_covers_the_layer_store() {
    let img = rich_image();
    let e = FaultEnv::start(img, &["unpack/check"]);
    let work = tempfile::tempdir().unwrap();
    let (store, layers) = (work.path().join("store"), work.path().join("layers"));
    let image = format!("{}/unpack/check:v1", e.registry.addr());
    let p = pull(&e, &store, &layers, &image, &[]);
    assert_eq!(p.code, 0, "{}", p.stderr);
    let chain = p.report["images"][0]["layers"][0]["chain_id"]
        .as_str()
        .unwrap()
        .to_string();
    let broken = layers.join("sha256").join(&chain[7..]);
    fs::write(broken.join("layer.json"), "{}").unwrap();
    fs::create_dir_all(layers.join("ingest/999-dead/fs/etc")).unwrap();
    let check = |fix: bool| {
        let mut args = vec![
            "store-check",
            "--root",
            e.root.arg(),
            "--store",
            store.to_str().unwrap(),
            "--layers",
            layers.to_str().unwrap(),
            "--output",
            "json",
        ];
        if fix {
            args.push("--fix");
        }
        common::run(&mut common::agent(&args))
    };
    let r = check(false);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("broken-layer") && r.stdout.contains("999-dead"),
        "{}",
        r.stdout
    );
    assert!(
        broken.exists() && layers.join("ingest/999-dead").exists(),
        "looked only"
    );
    let r = check(true);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(!broken.exists() && !layers.join("ingest/999-dead").exists());
    assert_eq!(
        fs::read_dir(layers.join("sha256")).unwrap().count(),
        2,
        "good layers stay"
    );
    // The next pull unpacks the removed layer again.
    let p = pull(&e, &store, &layers, &image, &[]);
    assert_eq!(p.code, 0, "{}", p.stderr);
    assert_eq!(fs::read_dir(layers.join("sha256")).unwrap().count(), 3);
}

/// kill -9 in the middle of an unpack (the layer trickles in), at several moments: only a
/// staging directory is left, never a partial layer directory; the next run removes it and
/// succeeds.
#[test]
fn kill_9_mid_unpack_leaves_only_staging_and_the_rerun_succeeds() {
    use common::fault::{Fault, rule};
    let big = common::images::random_bytes(5, 3_000_000);
    let l0 = tar(&[file("first", b"1"), file("big", &big), file("last", b"2")]);
    let img = image_with(vec![layer(l0, TAR)], "amd64", false);
    let e = FaultEnv::start(img.clone(), &["unpack/kill"]);
    for delay_ms in [0u64, 1500, 4000] {
        let slow = e.front(vec![rule(
            &format!("/blobs/{}", img.layers[0].digest),
            Fault::Trickle {
                bytes_per_sec: 256 << 10,
            },
            1,
        )]);
        let work = tempfile::tempdir().unwrap();
        let (store, layers) = (work.path().join("store"), work.path().join("layers"));
        let image = format!("{}/unpack/kill:v1", slow.addr());
        let mut child = common::agent(&[
            "pull",
            "-q",
            "--root",
            e.root.arg(),
            "--store",
            store.to_str().unwrap(),
            "--layers",
            layers.to_str().unwrap(),
            "--http-registry",
            &slow.addr(),
            &image,
        ])
        .spawn()
        .unwrap();
        // The layer unpacks while it downloads: "first" shows in a staging directory long
        // before the trickle ends. Then a different moment in each round.
        let started = std::time::Instant::now();
        let staged = || {
            fs::read_dir(layers.join("ingest"))
                .map(|d| d.flatten().any(|s| s.path().join("fs/first").exists()))
                .unwrap_or(false)
        };
        while !staged() {
            assert!(started.elapsed().as_secs() < 20, "the unpack never started");
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        std::thread::sleep(std::time::Duration::from_millis(delay_ms));
        child.kill().unwrap();
        child.wait().unwrap();
        assert_eq!(
            fs::read_dir(layers.join("sha256")).unwrap().count(),
            0,
            "{delay_ms} ms: no partial layer"
        );
        let p = pull(
            &e,
            &store,
            &layers,
            &format!("{}/unpack/kill:v1", e.registry.addr()),
            &[],
        );
        assert_eq!(p.code, 0, "{delay_ms} ms: {}", p.stderr);
        assert_eq!(
            fs::read_dir(layers.join("ingest")).unwrap().count(),
            0,
            "staging removed"
        );
        let chain = p.report["images"][0]["layers"][0]["chain_id"]
            .as_str()
            .unwrap()
            .to_string();
        let fs_dir = layers.join("sha256").join(&chain[7..]).join("fs");
        assert_eq!(fs::read(fs_dir.join("big")).unwrap(), big);
        assert!(fs_dir.join("last").exists());
    }
}

/// A reset mid-layer is resumed with Range and the same stream goes on unpacking; a server
/// that then ignores Range (the download starts over) makes the layer unpack from the
/// verified blob instead. Either way the layer is right.
#[test]
fn resumed_and_restarted_downloads_still_unpack_the_layer() {
    use common::fault::{Fault, rule};
    let big = common::images::random_bytes(6, 600_000);
    let img = image_with(
        vec![layer(tar(&[file("big", &big), file("end", b"e")]), GZIP)],
        "amd64",
        false,
    );
    let e = FaultEnv::start(img.clone(), &["unpack/resume"]);
    let blob = format!("/blobs/{}", img.layers[0].digest);
    for (case, rules) in [
        (
            "resumed",
            vec![rule(&blob, Fault::Truncate { after: 200_000 }, 1)],
        ),
        (
            "restarted",
            vec![
                rule(&blob, Fault::Truncate { after: 200_000 }, 1),
                rule(&blob, Fault::IgnoreRange, 1),
            ],
        ),
    ] {
        let f = e.front(rules);
        let work = tempfile::tempdir().unwrap();
        let (store, layers) = (work.path().join("store"), work.path().join("layers"));
        let reg = f.addr();
        let image = format!("{reg}/unpack/resume:v1");
        let p = pull_report(
            &e.root,
            &store,
            &[
                "--http-registry",
                &reg,
                "--layers",
                layers.to_str().unwrap(),
                &image,
            ],
        );
        assert_eq!(p.code, 0, "{case}: {}", p.stderr);
        let ranges: Vec<_> = f.seen().iter().filter_map(|s| s.range.clone()).collect();
        assert_eq!(ranges.len(), 1, "{case}: {ranges:?}");
        let chain = p.report["images"][0]["layers"][0]["chain_id"]
            .as_str()
            .unwrap()
            .to_string();
        let fs_dir = layers.join("sha256").join(&chain[7..]).join("fs");
        assert_eq!(fs::read(fs_dir.join("big")).unwrap(), big, "{case}");
        assert_eq!(
            fs::read_dir(layers.join("ingest")).unwrap().count(),
            0,
            "{case}"
        );
    }
}

/// Real files, as GNU tar writes them: a few hundred files of /usr/share/doc (directories,
/// symlinks, long names) in a gzip layer, with a second layer that deletes some of them; the
/// overlay merge equals umoci's tree.
#[test]
fn a_layer_of_real_files_written_by_gnu_tar_merges_like_umoci() {
    let dirs: Vec<String> = fs::read_dir("/usr/share/doc")
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.is_ascii())
        .take(60)
        .collect();
    assert!(dirs.len() >= 10, "too few docs on this machine: {dirs:?}");
    let out = Command::new("tar")
        .args(["--format=pax", "-C", "/usr/share", "-cf", "-"])
        .args(dirs.iter().map(|d| format!("doc/{d}")))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let l0 = out.stdout;
    let l1 = tar(&[
        whiteout(&format!("doc/{}", dirs[0])),
        opaque(&format!("doc/{}", dirs[1])),
        file(&format!("doc/{}/replaced", dirs[1]), b"only this"),
    ]);
    let img = image_with(vec![layer(l0, GZIP), layer(l1, GZIP)], "amd64", false);
    let e = FaultEnv::start(img.clone(), &["unpack/real"]);
    let work = tempfile::tempdir().unwrap();
    let (store, layers) = (work.path().join("store"), work.path().join("layers"));
    let p = pull(
        &e,
        &store,
        &layers,
        &format!("{}/unpack/real:v1", e.registry.addr()),
        &[],
    );
    assert_eq!(p.code, 0, "{}", p.stderr);
    let mut dirs_fs: Vec<PathBuf> = p.report["images"][0]["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| {
            let c = l["chain_id"].as_str().unwrap();
            layers.join("sha256").join(&c[7..]).join("fs")
        })
        .collect();
    dirs_fs.reverse();
    let merged = Overlay::mount(&dirs_fs, &work.path().join("merged"));
    let (ours, our_links) = describe(&merged.0);
    let (theirs, their_links) = describe(&umoci_tree(&img, work.path()));
    assert!(ours.len() > 100, "{} entries", ours.len());
    assert_eq!(ours, theirs, "trees differ");
    assert_eq!(our_links, their_links);
    assert!(!ours.contains_key(&format!("doc/{}", dirs[0])));
}

/// The names in the layer store's root that are `unflushed.<boot id>` markers.
fn unflushed_markers(layers: &Path) -> Vec<String> {
    fs::read_dir(layers)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("unflushed."))
        .collect()
}

/// Makes the layer store look as if its unflushed layers were committed in an earlier boot:
/// what a store looks like after a crash or power loss that came before `flush-layers`.
fn as_if_from_an_earlier_boot(layers: &Path) {
    for m in unflushed_markers(layers) {
        fs::rename(layers.join(&m), layers.join("unflushed.0000-earlier-boot")).unwrap();
    }
    for d in fs::read_dir(layers.join("sha256")).unwrap() {
        let path = d.unwrap().path().join("layer.json");
        let mut j: serde_json::Value = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        if j.get("unflushedBoot").is_some() {
            j["unflushedBoot"] = "0000-earlier-boot".into();
            fs::write(&path, serde_json::to_vec(&j).unwrap()).unwrap();
        }
    }
}

/// --layer-sync deferred (the default): layers are committed under a durable marker of this
/// boot and flushed later by `flush-layers`. A later boot that finds an earlier boot's marker
/// (the flush never ran: a crash) unpacks those layers again from the stored blobs, without a
/// download; once flushed, a layer is kept. With --layer-sync commit no marker is left.
#[test]
fn unflushed_layers_of_an_earlier_boot_are_unpacked_again_flushed_ones_are_kept() {
    let img = rich_image();
    let layer_count = img.layers.len();
    let e = FaultEnv::start(img, &["unpack/flush"]);
    let work = tempfile::tempdir().unwrap();
    let (store, layers) = (work.path().join("store"), work.path().join("layers"));
    let image = format!("{}/unpack/flush:v1", e.registry.addr());

    let p = pull(&e, &store, &layers, &image, &[]);
    assert_eq!(p.code, 0, "{}", p.stderr);
    assert_eq!(unflushed_markers(&layers).len(), 1, "this boot's marker");

    // A crash before the flush: the next run drops those layers and unpacks them again.
    as_if_from_an_earlier_boot(&layers);
    let p = pull(&e, &store, &layers, &image, &[]);
    assert_eq!(p.code, 0, "{}", p.stderr);
    assert_eq!(unpacked_now(&p), layer_count, "{}", p.report);
    assert_eq!(p.report["images"][0]["bytes"], 0, "from the stored blobs");
    assert!(p.stderr.contains("unpacked again"), "{}", p.stderr);
    assert_eq!(
        unflushed_markers(&layers),
        [format!(
            "unflushed.{}",
            fs::read_to_string("/proc/sys/kernel/random/boot_id")
                .unwrap()
                .trim()
        )]
    );

    let flush = |dir: &Path| {
        let r = common::run(&mut common::agent(&[
            "flush-layers",
            "--root",
            e.root.arg(),
            "--layers",
            dir.to_str().unwrap(),
        ]));
        assert_eq!(r.code, 0, "{}", r.stderr);
    };

    // Flushed: the marker goes, and a later boot keeps the layers.
    flush(&layers);
    assert!(unflushed_markers(&layers).is_empty());
    as_if_from_an_earlier_boot(&layers);
    let p = pull(&e, &store, &layers, &image, &[]);
    assert_eq!(p.code, 0, "{}", p.stderr);
    assert_eq!(unpacked_now(&p), 0, "flushed layers are kept");

    // --layer-sync commit: flushed before each commit, no marker.
    let layers2 = work.path().join("layers2");
    let p = pull(&e, &store, &layers2, &image, &["--layer-sync", "commit"]);
    assert_eq!(p.code, 0, "{}", p.stderr);
    assert_eq!(unpacked_now(&p), layer_count);
    assert!(unflushed_markers(&layers2).is_empty());
    // flush-layers with nothing to flush, or no layer store at all, succeeds.
    flush(&layers2);
    flush(&work.path().join("none"));
}
