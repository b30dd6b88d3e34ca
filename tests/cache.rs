//! `cache build` (SPEC §12, the building side): a pulled image's manifests, configs and
//! unpacked layers written as one EROFS image whose tree mirrors the agent's stores, every
//! owner, mode, time, xattr and whiteout kept.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::busybox::{Runc, boot_pod, busybox_image_with};
use common::fault::FaultEnv;
use common::images::{image_with, image_with_config, layer_of};
use common::reference::describe_tree;
use common::tarball::{chardev, dir, file, opaque, symlink, tar, whiteout};
use common::{Root, agent, mounts_at, run};

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
    // `cache build` with `extra` flags into `name`, mounted read-only at `name`.mnt (a
    // file-backed EROFS mount; unmounted by the root's guard); the file and the mount.
    let build_and_mount = |name: &str, extra: &[&str]| {
        let out = e.root.file(name);
        let mut args = vec!["cache", "build", "--root", e.root.arg(), "--http-registry"];
        args.extend_from_slice(&[&reg, "--output", out.to_str().unwrap()]);
        args.extend_from_slice(extra);
        args.push(&image);
        let r = run(&mut agent(&args));
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert!(r.stderr.contains("cache written"), "{}", r.stderr);
        let mnt = e.root.file(&format!("{name}.mnt"));
        fs::create_dir_all(&mnt).unwrap();
        let m = Command::new("mount")
            .args(["-t", "erofs", "-o", "ro"])
            .arg(&out)
            .arg(&mnt)
            .output()
            .unwrap();
        assert!(m.status.success(), "{}", String::from_utf8_lossy(&m.stderr));
        (out, mnt)
    };
    let (out, mnt) = build_and_mount("cache.erofs", &[]);
    let before = fs::read(&out).unwrap();
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
    // Compressed (lz4hc), the same trees.
    let (_, mnt2) = build_and_mount("cache-lz4hc.erofs", &["--compression", "lz4hc"]);
    for c in &chains {
        assert_eq!(
            describe_tree(&mnt2.join("layers/sha256").join(c).join("fs"), true),
            describe_tree(&store_layers.join(c).join("fs"), true),
            "layer {c}, lz4hc"
        );
    }
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

/// The busybox image with a second layer over it that removes a file, makes a directory
/// opaque and adds a file: the base alone (`base`) and both (`app`).
fn busybox_two_layers() -> (common::images::Image, common::images::Image) {
    let run = serde_json::json!({"Entrypoint": ["/bin/sh", "-c"], "Env": ["PATH=/bin"]});
    let base = busybox_image_with(run.clone());
    let top = gz(&[
        whiteout("etc/group"),
        opaque("home"),
        file("home/top", b"from the top layer\n"),
        file("etc/app.conf", b"app=1\n").mode(0o640).owner(0, 1001),
    ]);
    let layers = vec![base.layers[0].clone(), top];
    (base, image_with_config(layers, "amd64", false, run))
}

/// `boot` of a one-container pod running `image` with `args` in `root` (KCI_IMAGE_CACHE
/// unset); the run and the report.
fn boot(
    root: &Root,
    reg: &str,
    image: &str,
    args: &str,
    extra: &[&str],
) -> (common::Run, serde_json::Value) {
    let pod = serde_json::json!({
        "metadata": {"name": "cached", "annotations": {"k8s.ksyun.com/kci-http-registry": reg}},
        "spec": {"containers": [{"name": "c", "image": image, "args": [args]}]},
    });
    assert!(
        std::env::var_os("KCI_IMAGE_CACHE").is_none(),
        "the tests give caches by flag"
    );
    boot_pod(root, &pod, extra)
}

/// A registry holding the two-layer `app` as `cache/app:v1` behind a front that counts
/// requests, and an image cache of it built through that front.
struct Fleet {
    e: FaultEnv,
    front: common::fault::FaultServer,
    reg: String,
    image: String,
    app: common::images::Image,
    cache_dir: tempfile::TempDir,
    cache: PathBuf,
}

impl Fleet {
    fn new() -> Fleet {
        let (_, app) = busybox_two_layers();
        let e = FaultEnv::start(app.clone(), &["cache/app"]);
        let front = e.front(Vec::new());
        let reg = front.addr();
        let image = format!("{reg}/cache/app:v1");
        let cache_dir = tempfile::tempdir().unwrap();
        let cache = cache_dir.path().join("fleet.erofs");
        build_cache(&reg, &[&image], &cache);
        Fleet {
            e,
            front,
            reg,
            image,
            app,
            cache_dir,
            cache,
        }
    }
}

/// `cache build` of `images` through `reg` into `out`, from a root of its own.
fn build_cache(reg: &str, images: &[&str], out: &Path) {
    let builder = Root::new("127.0.0.1\tlocalhost\n", "nameserver 127.0.0.1\n");
    let mut args = vec![
        "cache",
        "build",
        "--root",
        builder.arg(),
        "--http-registry",
        reg,
        "--output",
        out.to_str().unwrap(),
    ];
    args.extend_from_slice(images);
    let r = run(&mut agent(&args));
    assert_eq!(r.code, 0, "{}", r.stderr);
}

/// The blobs (by digest) requested through a front after its first `from` requests.
fn blobs_seen(front: &common::fault::FaultServer, from: usize) -> Vec<String> {
    front
        .seen()
        .iter()
        .skip(from)
        .filter_map(|s| s.path.split("/blobs/").nth(1).map(str::to_string))
        .collect()
}

/// `runc run` of the pod's container `c` in `root` (deleted again); its stdout.
fn run_c(root: &Root, name: &str) -> String {
    Runc::new(root.file("runc-state")).run(&root.file("run/kci/bundles/c"), name)
}

/// The `from` of each layer of the report's first image.
fn layer_froms(rep: &serde_json::Value) -> Vec<String> {
    rep["images"][0]["layers"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|l| l["from"].as_str().unwrap_or("?").to_string())
        .collect()
}

/// SPEC §12: an instance whose image is in the cache boots without a layer blob or a config
/// fetched (one HEAD for the tag), its rootfs is the uncached one, runc runs it, a rerun keeps
/// one mount of the cache, store-check accepts the store, and the cache file is unchanged.
#[test]
fn a_cached_image_boots_without_fetching_and_runs_as_the_uncached_one() {
    let Fleet {
        e: _e,
        front,
        reg,
        image,
        cache_dir: _cache_dir,
        cache,
        ..
    } = Fleet::new();
    let hash = common::images::sha256(&fs::read(&cache).unwrap());
    let show = "id -u; cat /home/top /etc/app.conf; ls /home; test -e /etc/group || echo no-group";

    // The same pod without the cache: the reference.
    let plain = Root::new("127.0.0.1\tlocalhost\n", "nameserver 127.0.0.1\n");
    let (r, _) = boot(&plain, &reg, &image, show, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let want = describe_tree(&plain.file("run/kci/bundles/c/rootfs"), false);

    let root = Root::new("127.0.0.1\tlocalhost\n", "nameserver 127.0.0.1\n");
    let boot_cached = || {
        let (r, rep) = boot(
            &root,
            &reg,
            &image,
            show,
            &["--image-cache", cache.to_str().unwrap()],
        );
        assert_eq!(r.code, 0, "{}", r.stderr);
        rep
    };
    let before = front.seen().len();
    let rep = boot_cached();
    // The registry's authentication challenge (GET /v2/), then the tag's HEAD: nothing else.
    let asked: Vec<String> = front.seen()[before..]
        .iter()
        .map(|s| format!("{} {}", s.method, s.path))
        .filter(|r| r != "GET /v2/")
        .collect();
    assert_eq!(
        asked,
        vec!["HEAD /v2/cache/app/manifests/v1"],
        "one HEAD, nothing else"
    );
    let img = &rep["images"][0];
    assert_eq!(img["status"], "present", "{rep}");
    assert_eq!(img["cache"], cache.to_str().unwrap());
    assert_eq!(layer_froms(&rep), vec!["cache", "cache"]);
    assert_eq!(img["unpacked_bytes"], 0);
    assert_eq!(rep["containers"][0]["status"], "ready", "{rep}");
    // Used in place: the bundle's layers are the mounted cache's, nothing was unpacked.
    let mounts = root.read("run/kci/bundles/c/mounts.json");
    assert!(mounts.contains("run/kci/caches/"), "{mounts}");
    let unpacked = fs::read_dir(root.file("var/lib/kci/layers/sha256"))
        .map(|d| d.count())
        .unwrap_or(0);
    assert_eq!(unpacked, 0, "no layer was unpacked into the layer store");
    assert_eq!(
        describe_tree(&root.file("run/kci/bundles/c/rootfs"), false),
        want
    );
    assert_eq!(
        run_c(&root, "cached"),
        "0\nfrom the top layer\napp=1\ntop\nno-group\n"
    );

    // Again: the same mount of the cache is used, not a second one.
    let rep = boot_cached();
    assert_eq!(layer_froms(&rep), vec!["cache", "cache"]);
    let caches: Vec<PathBuf> = fs::read_dir(root.file("run/kci/caches"))
        .unwrap()
        .map(|d| d.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(caches.len(), 1, "{caches:?}");
    assert_eq!(mounts_at(&caches[0]), 1);
    // By hand, without the flag: the caches of this boot complete the store's image.
    let r = run(agent(&["store-check", "--root", root.arg()]).env_remove("KCI_IMAGE_CACHE"));
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    let r = run(&mut agent(&[
        "images",
        "--root",
        root.arg(),
        "--output",
        "json",
    ]));
    assert!(r.stdout.contains("\"complete\":true"), "{}", r.stdout);
    drop(root);
    drop(plain);
    assert_eq!(
        common::images::sha256(&fs::read(&cache).unwrap()),
        hash,
        "the cache was written"
    );
}

/// An image that adds a layer over a cached base fetches that layer (and its own manifest
/// and config), and no blob of the base.
#[test]
fn an_image_over_a_cached_base_fetches_only_its_own_layer() {
    let (base, app) = busybox_two_layers();
    let e = FaultEnv::start(base.clone(), &["cache/base"]);
    common::images::block_on(async {
        common::images::Pusher::new(&e.registry.addr())
            .image("cache/app", "v1", &app)
            .await;
    });
    let front = e.front(Vec::new());
    let reg = front.addr();
    let cache_dir = tempfile::tempdir().unwrap();
    let cache = cache_dir.path().join("base.erofs");
    build_cache(&reg, &[&format!("{reg}/cache/base:v1")], &cache);

    let root = Root::new("127.0.0.1\tlocalhost\n", "nameserver 127.0.0.1\n");
    let before = front.seen().len();
    let image = format!("{reg}/cache/app:v1");
    let (r, rep) = boot(
        &root,
        &reg,
        &image,
        "cat /home/top; ls /bin/busybox",
        &["--image-cache", cache.to_str().unwrap()],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let mut fetched = blobs_seen(&front, before);
    fetched.sort();
    let mut want = vec![app.config.digest.clone(), app.layers[1].digest.clone()];
    want.sort();
    assert_eq!(fetched, want, "the config and the top layer only");
    assert_eq!(rep["images"][0]["status"], "pulled", "{rep}");
    assert_eq!(layer_froms(&rep), vec!["cache", "registry"]);
    assert_eq!(
        run_c(&root, "over-base"),
        "from the top layer\n/bin/busybox\n"
    );
}

/// The registry down at boot: the cache's record of the tag is used, with a warning in the
/// log and the report; the pod is ready.
#[test]
fn an_unreachable_registry_leaves_the_caches_record_of_the_tag() {
    let Fleet {
        e,
        front,
        reg,
        image,
        cache_dir: _cache_dir,
        cache,
        ..
    } = Fleet::new();
    drop(front);
    drop(e);

    let root = Root::new("127.0.0.1\tlocalhost\n", "nameserver 127.0.0.1\n");
    let started = std::time::Instant::now();
    let (r, rep) = boot(
        &root,
        &reg,
        &image,
        "cat /home/top",
        &["--image-cache", cache.to_str().unwrap()],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    // After the HEAD's retries (4.7 s here against a refused connection).
    assert!(started.elapsed() < std::time::Duration::from_secs(15));
    assert!(
        r.stderr.contains("did not answer") && r.stderr.contains("image cache's record"),
        "{}",
        r.stderr
    );
    let img = &rep["images"][0];
    assert_eq!(img["status"], "present", "{rep}");
    assert!(
        img["warning"].as_str().unwrap().contains("did not answer"),
        "{rep}"
    );
    assert_eq!(layer_froms(&rep), vec!["cache", "cache"]);
    assert_eq!(rep["containers"][0]["status"], "ready", "{rep}");
    assert_eq!(run_c(&root, "offline"), "from the top layer\n");
}

/// A directory holding a cache's tree is used as the image is; one whose layer record or
/// manifest was changed is not used at all (warned, the image pulled), and store-check says
/// what is wrong with it.
#[test]
fn a_tampered_cache_is_not_used() {
    let Fleet {
        e: _e,
        front,
        reg,
        image,
        app,
        cache_dir,
        cache,
        ..
    } = Fleet::new();
    // The same tree as a directory (every owner, xattr and whiteout copied).
    let mnt = cache_dir.path().join("mnt");
    let tree = cache_dir.path().join("tree");
    fs::create_dir(&mnt).unwrap();
    let ok = |c: &mut Command| {
        let o = c.output().unwrap();
        assert!(
            o.status.success(),
            "{c:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    };
    ok(Command::new("mount")
        .args(["-t", "erofs", "-o", "ro"])
        .arg(&cache)
        .arg(&mnt));
    let copied = Command::new("cp").arg("-a").arg(&mnt).arg(&tree).output();
    common::unmount_under(cache_dir.path());
    assert!(copied.unwrap().status.success());
    let dir_cache = tree.to_str().unwrap();

    // A fresh instance booted with the directory: its root, stderr, report, blobs fetched.
    let boot_fresh = || {
        let root = Root::new("127.0.0.1\tlocalhost\n", "nameserver 127.0.0.1\n");
        let before = front.seen().len();
        let (r, rep) = boot(
            &root,
            &reg,
            &image,
            "cat /home/top",
            &["--image-cache", dir_cache],
        );
        assert_eq!(r.code, 0, "{}", r.stderr);
        let fetched = blobs_seen(&front, before);
        (root, r.stderr, rep, fetched)
    };
    let (root, _, rep, fetched) = boot_fresh();
    assert_eq!(
        layer_froms(&rep),
        vec!["cache", "cache"],
        "a directory cache is used"
    );
    assert!(fetched.is_empty());
    assert!(
        root.read("run/kci/bundles/c/mounts.json")
            .contains(dir_cache)
    );

    // The top layer's record names another diff_id: the cache is not used.
    let chain = rep["images"][0]["layers"][1]["chain_id"]
        .as_str()
        .unwrap()
        .to_string();
    let record = tree
        .join("layers/sha256")
        .join(&chain[7..])
        .join("layer.json");
    let good = fs::read_to_string(&record).unwrap();
    let diff_id = app.layers[1].diff_id.clone();
    fs::write(&record, good.replace(&diff_id, &app.layers[0].diff_id)).unwrap();
    let (root, stderr, rep, fetched) = boot_fresh();
    assert!(
        stderr.contains("is not used") && stderr.contains("does not match its directory"),
        "{stderr}"
    );
    assert_eq!(layer_froms(&rep), vec!["registry", "registry"]);
    assert_eq!(fetched.len(), 3, "config and both layers pulled");
    assert!(
        !root
            .read("run/kci/bundles/c/mounts.json")
            .contains(dir_cache)
    );
    let r = run(&mut agent(&[
        "store-check",
        "--root",
        root.arg(),
        "--image-cache",
        dir_cache,
    ]));
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("bad-cache"), "{}", r.stdout);
    fs::write(&record, &good).unwrap();

    // A layer taken out of the cache: the cache serves the other, the image fetches the
    // missing one only; store-check says the cache's image lacks a layer.
    let layer_dir = record.parent().unwrap().to_path_buf();
    let aside = tree.join("aside");
    fs::rename(&layer_dir, &aside).unwrap();
    let (root, _, rep, fetched) = boot_fresh();
    assert_eq!(layer_froms(&rep), vec!["cache", "registry"]);
    assert_eq!(fetched, vec![app.layers[1].digest.clone()]);
    let r = run(&mut agent(&[
        "store-check",
        "--root",
        root.arg(),
        "--image-cache",
        dir_cache,
    ]));
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(
        r.stdout.contains("incomplete-image") && r.stdout.contains("image cache"),
        "{}",
        r.stdout
    );
    // The same layer as a link to its directory elsewhere: a lower directory reached
    // through a link is not taken; the cache is not used.
    std::os::unix::fs::symlink(&aside, &layer_dir).unwrap();
    let (_, stderr, rep, _) = boot_fresh();
    assert!(stderr.contains("is not a directory"), "{stderr}");
    assert_eq!(layer_froms(&rep), vec!["registry", "registry"]);
    fs::remove_file(&layer_dir).unwrap();
    fs::rename(&aside, &layer_dir).unwrap();

    // A manifest changed in place (its name kept): not used either.
    let index: serde_json::Value =
        serde_json::from_slice(&fs::read(tree.join("images/index.json")).unwrap()).unwrap();
    let manifest = tree.join("images/blobs/sha256").join(
        index["manifests"][0]["digest"]
            .as_str()
            .unwrap()
            .trim_start_matches("sha256:"),
    );
    let original = fs::read(&manifest).unwrap();
    // One byte more inside, the last one less: the same size, another digest.
    let mut changed = original.clone();
    let at = changed.iter().position(|b| *b == b'{').unwrap();
    changed.insert(at + 1, b' ');
    changed.pop();
    fs::write(&manifest, &changed).unwrap();
    let (_, stderr, rep, _) = boot_fresh();
    assert!(stderr.contains("does not match its digest"), "{stderr}");
    assert_eq!(layer_froms(&rep), vec!["registry", "registry"]);
    assert_eq!(fs::read(&manifest).unwrap(), changed, "never written");
}

/// A loop device over a file, detached when the test ends.
struct LoopDev(String);

impl LoopDev {
    fn over(file: &Path) -> LoopDev {
        let o = Command::new("losetup")
            .args(["--find", "--show", "--read-only"])
            .arg(file)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        LoopDev(String::from_utf8_lossy(&o.stdout).trim().to_string())
    }
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

/// The systemd path with a cache on a block device: `boot --no-mount` in a mount namespace of
/// its own (as the unit's sandbox) uses the cache there; `mount-bundles` (outside, given the
/// cache by KCI_IMAGE_CACHE as the unit's environment file gives it) mounts the cache where
/// the bundles are mounted, then the bundles; runc runs the container.
#[test]
fn the_systemd_path_mounts_the_cache_where_the_bundles_are_mounted() {
    let Fleet {
        e: _e,
        front: _front,
        reg,
        image,
        cache_dir: _cache_dir,
        cache,
        ..
    } = Fleet::new();
    let dev = LoopDev::over(&cache);
    let root = Root::new("127.0.0.1\tlocalhost\n", "nameserver 127.0.0.1\n");
    let pod = serde_json::json!({
        "metadata": {"name": "unit", "annotations": {"k8s.ksyun.com/kci-http-registry": reg}},
        "spec": {"containers": [{"name": "c", "image": image, "args": ["cat /home/top"]}]},
    });
    fs::create_dir_all(root.file("run/kci")).unwrap();
    fs::write(root.file("run/kci/pod.json"), pod.to_string()).unwrap();
    let r = run(Command::new("unshare")
        .args(["-m", "--propagation", "private"])
        .arg(common::bin())
        .args(["boot", "--root", root.arg(), "--no-mount"])
        .env("KCI_IMAGE_CACHE", &dev.0));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let rep: serde_json::Value =
        serde_json::from_slice(&fs::read(root.file("run/kci/pull-report.json")).unwrap()).unwrap();
    assert_eq!(layer_froms(&rep), vec!["cache", "cache"], "{rep}");
    let attached: Vec<PathBuf> = fs::read_dir(root.file("run/kci/caches"))
        .unwrap()
        .map(|d| d.unwrap().path())
        .filter(|p| p.is_dir())
        .collect();
    assert_eq!(attached.len(), 1);
    // boot's mounts stayed in its namespace.
    assert_eq!(mounts_at(&attached[0]), 0);
    assert_eq!(mounts_at(&root.file("run/kci/bundles/c/rootfs")), 0);

    let r = run(agent(&["mount-bundles", "--root", root.arg()]).env("KCI_IMAGE_CACHE", &dev.0));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(mounts_at(&attached[0]), 1);
    assert_eq!(mounts_at(&root.file("run/kci/bundles/c/rootfs")), 1);
    assert_eq!(run_c(&root, "unit"), "from the top layer\n");
    // Without the cache, mount-bundles cannot take the bundle's layers for the agent's.
    common::unmount_under(root.path());
    let r = run(&mut agent(&[
        "mount-bundles",
        "--root",
        root.arg(),
        "--image-cache",
        "/nonexistent",
    ]));
    assert_eq!(r.code, 4, "{}", r.stderr);
    assert!(r.stderr.contains("not a layer of"), "{}", r.stderr);
}

/// The unit's sandbox can write /run/kci, and mount-bundles mounts outside it: a link planted
/// where a cache is mounted (or as the caches' directory) is never followed. The cache is not
/// used (said), the image is pulled, nothing is mounted where the link points.
#[test]
fn a_planted_link_does_not_move_a_cache_mount() {
    let Fleet {
        e: _e,
        front: _front,
        reg,
        image,
        cache_dir,
        cache,
        ..
    } = Fleet::new();
    let canon = cache.canonicalize().unwrap();
    let id = &common::images::sha256(canon.as_os_str().as_encoded_bytes())[7..23];
    let elsewhere = cache_dir.path().join("elsewhere");
    for planted in [format!("run/kci/caches/{id}"), "run/kci/caches".to_string()] {
        let root = Root::new("127.0.0.1\tlocalhost\n", "nameserver 127.0.0.1\n");
        fs::create_dir_all(&elsewhere).unwrap();
        let link = root.file(&planted);
        fs::create_dir_all(link.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(&elsewhere, &link).unwrap();
        let (r, rep) = boot(
            &root,
            &reg,
            &image,
            "cat /home/top",
            &["--image-cache", cache.to_str().unwrap()],
        );
        assert_eq!(r.code, 0, "{planted}: {}", r.stderr);
        assert!(
            r.stderr.contains("is not used") && r.stderr.contains("symbolic link"),
            "{planted}: {}",
            r.stderr
        );
        assert!(link.is_symlink(), "{planted}: left for the operator to see");
        assert_eq!(layer_froms(&rep), vec!["registry", "registry"], "{planted}");
        assert_eq!(mounts_at(&elsewhere), 0, "{planted}");
        assert_eq!(
            fs::read_dir(&elsewhere).unwrap().count(),
            0,
            "{planted}: nothing written through the link"
        );
    }
}

/// `pull` and `prepare` take caches too: `pull` records the image in the store from the cache
/// (nothing fetched but the tag's HEAD), `prepare` makes the bundle on the cache's layers;
/// `KCI_IMAGE_CACHE` gives the cache when no flag does, and a flag wins over it.
#[test]
fn pull_and_prepare_use_caches_and_the_variable() {
    let Fleet {
        e: _e,
        front,
        reg,
        image,
        cache_dir: _cache_dir,
        cache,
        ..
    } = Fleet::new();
    let root = Root::new("127.0.0.1\tlocalhost\n", "nameserver 127.0.0.1\n");
    let store = root.file("var/lib/kci/images");
    let before = front.seen().len();
    let p = common::pull_report(
        &root,
        &store,
        &[
            "--http-registry",
            &reg,
            "--image-cache",
            cache.to_str().unwrap(),
            &image,
        ],
    );
    assert_eq!(p.code, 0, "{}", p.stderr);
    assert_eq!(layer_froms(&p.report), vec!["cache", "cache"]);
    assert!(blobs_seen(&front, before).is_empty());
    assert_eq!(
        common::store_index(&store)["manifests"][0]["annotations"]["org.opencontainers.image.ref.name"],
        image
    );

    // prepare, the cache given by the variable (a fresh root: nothing attached before).
    let root = Root::new("127.0.0.1\tlocalhost\n", "nameserver 127.0.0.1\n");
    let pod = serde_json::json!({
        "metadata": {"name": "p", "annotations": {"k8s.ksyun.com/kci-http-registry": reg}},
        "spec": {"containers": [{"name": "c", "image": image, "args": ["cat /home/top"]}]},
    });
    fs::write(root.file("pod.json"), pod.to_string()).unwrap();
    let prepare = |extra: &[&str]| {
        let mut args = vec!["prepare", "--root", root.arg(), "--spec"];
        let spec = root.file("pod.json");
        args.push(spec.to_str().unwrap());
        args.extend_from_slice(&["--report", "-"]);
        args.extend_from_slice(extra);
        let r = run(agent(&args).env("KCI_IMAGE_CACHE", cache.to_str().unwrap()));
        assert_eq!(r.code, 0, "{}", r.stderr);
        serde_json::from_str::<serde_json::Value>(&r.stdout).unwrap()
    };
    let rep = prepare(&[]);
    assert_eq!(layer_froms(&rep), vec!["cache", "cache"]);
    assert_eq!(run_c(&root, "prepared"), "from the top layer\n");
    // A flag naming no usable cache wins over the variable: the layers are fetched.
    let rep = prepare(&["--image-cache", "/nonexistent.erofs"]);
    assert_eq!(layer_froms(&rep), vec!["registry", "registry"]);
}
