//! `cache build` (SPEC §12, the building side): a pulled image's manifests, configs and
//! unpacked layers written as one EROFS image whose tree mirrors the agent's stores, every
//! owner, mode, time, xattr and whiteout kept.

mod common;

use std::fs;
use std::path::Path;
use std::process::Command;

use common::fault::FaultEnv;
use common::images::{image_with, layer_of};
use common::reference::describe_tree;
use common::tarball::{chardev, dir, file, opaque, symlink, tar, whiteout};
use common::{agent, run};

fn gz(entries: &[common::tarball::Entry]) -> common::images::Blob {
    layer_of(&tar(entries), "application/vnd.oci.image.layer.v1.tar")
}

#[test]
fn a_cache_holds_the_images_and_their_layers_as_the_stores_do() {
    let base = gz(&[
        dir("etc"),
        file("etc/passwd", b"root:x:0:0"),
        dir("srv").mode(0o750).owner(7, 8),
        file("srv/tool", b"#!/bin/sh")
            .mode(0o4755)
            .owner(1000, 1001),
        dir("o"),
        file("o/x", b"x"),
        symlink("link", "etc/passwd"),
        chardev("dev0", 1, 3),
    ]);
    let top = gz(&[whiteout("etc/passwd"), opaque("o"), file("o/y", b"y")]);
    let img = image_with(vec![base, top], "amd64", false);
    let e = FaultEnv::start(img, &["cache/app"]);
    let reg = e.registry.addr();
    let image = format!("{reg}/cache/app:v1");
    let out = e.root.file("cache.erofs");
    let r = run(&mut agent(&[
        "cache",
        "build",
        "--root",
        e.root.arg(),
        "--http-registry",
        &reg,
        "--output",
        out.to_str().unwrap(),
        &image,
    ]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("cache written"), "{}", r.stderr);
    let before = fs::read(&out).unwrap();

    // Mounted read-only (a file-backed EROFS mount; unmounted by the root's guard).
    let mnt = e.root.file("mnt");
    fs::create_dir_all(&mnt).unwrap();
    let m = Command::new("mount")
        .args(["-t", "erofs", "-o", "ro"])
        .arg(&out)
        .arg(&mnt)
        .output()
        .unwrap();
    assert!(m.status.success(), "{}", String::from_utf8_lossy(&m.stderr));
    let record: serde_json::Value =
        serde_json::from_slice(&fs::read(mnt.join("kci-cache.json")).unwrap()).unwrap();
    assert_eq!(record["format"], 1);
    assert_eq!(record["images"][0]["reference"], image);
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(mnt.join("images/index.json")).unwrap()).unwrap();
    let entry = &index["manifests"][0];
    assert_eq!(
        entry["annotations"]["org.opencontainers.image.ref.name"],
        image
    );
    let digest = entry["digest"]
        .as_str()
        .unwrap()
        .trim_start_matches("sha256:");
    // The manifest and config are there, verified by their names; no layer blob without
    // --with-blobs.
    let blobs: Vec<String> = fs::read_dir(mnt.join("images/blobs/sha256"))
        .unwrap()
        .map(|b| b.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(blobs.len(), 2, "{blobs:?}");
    for b in &blobs {
        let bytes = fs::read(mnt.join("images/blobs/sha256").join(b)).unwrap();
        assert_eq!(&common::images::sha256(&bytes)[7..], b.as_str());
    }
    assert!(blobs.iter().any(|b| b == digest));

    // Each layer as the layer store has it: every owner, mode, time, xattr (the opaque
    // marker included), whiteout and device.
    let store_layers = e.root.file("var/lib/kci/layers/sha256");
    let mut chains: Vec<String> = fs::read_dir(&store_layers)
        .unwrap()
        .map(|c| c.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    chains.sort();
    assert_eq!(chains.len(), 2);
    for c in &chains {
        let ours = describe_tree(&store_layers.join(c).join("fs"), true);
        let cached = describe_tree(&mnt.join("layers/sha256").join(c).join("fs"), true);
        assert_eq!(cached, ours, "layer {c}");
        assert_eq!(
            fs::read(mnt.join("layers/sha256").join(c).join("layer.json")).unwrap(),
            fs::read(store_layers.join(c).join("layer.json")).unwrap()
        );
    }
    let described = format!("{:?}", describe_tree(&mnt.join("layers/sha256"), true).0);
    assert!(described.contains("trusted.overlay.opaque"), "{described}");
    assert!(
        described.contains("mode=4755 owner=1000:1001"),
        "{described}"
    );
    common::unmount_under(e.root.path());
    assert!(
        fs::read(&out).unwrap() == before,
        "the cache file changed after use"
    );
    // Nothing of the staging tree is left.
    let left: Vec<_> = fs::read_dir(e.root.file("var/lib/kci"))
        .unwrap()
        .map(|d| d.unwrap().file_name())
        .filter(|n| n.to_string_lossy().contains("staging"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

/// A cache of an image that is not there fails with exit 3 and writes nothing.
#[test]
fn a_failed_build_writes_nothing() {
    let root = common::Root::new("127.0.0.1\tlocalhost\n", "nameserver 127.0.0.1\n");
    let out = root.file("cache.erofs");
    let r = run(&mut agent(&[
        "cache",
        "build",
        "--root",
        root.arg(),
        "--output",
        out.to_str().unwrap(),
        "--http-registry",
        "127.0.0.1:1",
        "127.0.0.1:1/none/here:v1",
    ]));
    assert_eq!(r.code, 4, "{}", r.stderr);
    assert!(!Path::new(&out).exists());
}
