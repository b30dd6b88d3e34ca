//! Mirrors from containerd-style hosts.toml files, with a real `docker-registry` in proxy mode
//! (a pull-through cache) in front of a real origin.

mod common;

use std::fs;
use std::path::Path;

use common::images::{Pusher, block_on, image};
use common::registry::{Front, Registry};
use common::{Root, agent, run, verify_store};
use serde_json::Value;

fn hosts_toml(root: &Root, registry: &str, body: &str) {
    let dir = root.file(&format!("etc/kci/certs.d/{registry}"));
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join("hosts.toml"), body).unwrap();
}

fn pull(root: &Root, store: &Path, args: &[&str]) -> (i32, String, Value) {
    let p = common::pull_report(root, store, args);
    (p.code, p.stderr, p.report)
}

#[test]
fn pull_through_a_cache_then_from_the_warm_cache_then_fall_back_to_the_origin() {
    let origin_storage = tempfile::tempdir().unwrap();
    let origin = Registry::start(origin_storage.path(), &Front::default());
    let origin_port = origin.port;
    let img = image(31, &[100_000, 20_000], "amd64", false);
    block_on(Pusher::new(&origin.addr()).image("mirrored/app", "v1", &img));
    let cache_storage = tempfile::tempdir().unwrap();
    let cache = Registry::start(
        cache_storage.path(),
        &Front {
            proxy_of: Some(format!("http://{}", origin.addr())),
            ..Default::default()
        },
    );
    let root = Root::new("127.0.0.1 localhost\n", "nameserver 127.0.0.1\n");
    let reg = origin.addr();
    hosts_toml(
        &root,
        &reg,
        &format!(
            "[host.\"http://{}\"]\n  capabilities = [\"pull\", \"resolve\"]\n",
            cache.addr()
        ),
    );
    let image_ref = format!("{reg}/mirrored/app:v1");

    // explain shows the ordered hosts.
    let r = run(&mut agent(&[
        "explain",
        "--root",
        root.arg(),
        "--output",
        "json",
        "--http-registry",
        &reg,
        &image_ref,
    ]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let e: Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(e["hosts"][0]["url"], format!("http://{}/v2", cache.addr()));
    assert_eq!(e["hosts"][0]["role"], "mirror");
    assert_eq!(e["hosts"][1]["role"], "origin");

    // 1. Through the cache.
    let s1 = tempfile::tempdir().unwrap();
    let (code, err, rep) = pull(&root, s1.path(), &["--http-registry", &reg, &image_ref]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        rep["images"][0]["served_by"],
        cache.addr().as_str(),
        "{rep}"
    );
    assert_eq!(rep["images"][0]["registry"], reg.as_str());
    assert!(
        cache.requests().contains("GET /v2/mirrored/app/blobs/"),
        "the cache served the blobs"
    );
    assert!(
        cache.requests().contains("ns="),
        "mirrors get ?ns=<registry>"
    );

    // 2. The origin is down: the warm cache serves alone. (distribution's proxy stores what
    // it served in the background: wait until every blob is in its storage first.)
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    for b in img.blobs() {
        let hex = &b.digest[7..];
        let data = cache_storage.path().join(format!(
            "docker/registry/v2/blobs/sha256/{}/{hex}/data",
            &hex[..2]
        ));
        while fs::metadata(&data).map(|m| m.len()).unwrap_or(0) != b.bytes.len() as u64 {
            assert!(
                std::time::Instant::now() < deadline,
                "the cache never stored {}",
                b.digest
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    drop(origin);
    let s2 = tempfile::tempdir().unwrap();
    let (code, err, rep) = pull(
        &root,
        s2.path(),
        &[
            "--http-registry",
            &reg,
            &format!("{reg}/mirrored/app@{}", img.manifest.digest),
        ],
    );
    assert_eq!(code, 0, "{err}");
    assert_eq!(rep["images"][0]["served_by"], cache.addr().as_str());
    assert_eq!(verify_store(s2.path()), 4);

    // 3. The cache is down, the origin is back: fall back to the origin.
    drop(cache);
    let origin = Registry::start(
        origin_storage.path(),
        &Front {
            port: Some(origin_port),
            ..Default::default()
        },
    );
    let s3 = tempfile::tempdir().unwrap();
    let (code, err, rep) = pull(&root, s3.path(), &["--http-registry", &reg, &image_ref]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(
        rep["images"][0]["served_by"],
        origin.addr().as_str(),
        "{rep}"
    );
    // The dead mirror is given up once, not retried for every blob.
    assert_eq!(
        err.matches("is unreachable; the next host is used").count(),
        1,
        "{err}"
    );
    assert!(!err.contains("trying the next host"), "{err}");
    assert_eq!(verify_store(s3.path()), 4);
}

#[test]
fn a_lying_mirror_is_caught_and_the_origin_used_instead() {
    let origin_storage = tempfile::tempdir().unwrap();
    let origin = Registry::start(origin_storage.path(), &Front::default());
    let img = image(32, &[80_000, 5_000], "amd64", false);
    block_on(Pusher::new(&origin.addr()).image("lie/app", "v1", &img));
    // The "mirror" has the same image, but one layer's bytes are altered in its storage.
    let liar_storage = tempfile::tempdir().unwrap();
    let liar = Registry::start(liar_storage.path(), &Front::default());
    block_on(Pusher::new(&liar.addr()).image("lie/app", "v1", &img));
    let hex = &img.layers[0].digest[7..];
    let data = liar_storage.path().join(format!(
        "docker/registry/v2/blobs/sha256/{}/{hex}/data",
        &hex[..2]
    ));
    let mut bytes = fs::read(&data).unwrap();
    bytes[500] ^= 0x55;
    fs::write(&data, bytes).unwrap();

    let root = Root::new("127.0.0.1 localhost\n", "nameserver 127.0.0.1\n");
    let reg = origin.addr();
    // A mirror without "resolve": tags come from the origin, content from the mirror first.
    hosts_toml(
        &root,
        &reg,
        &format!(
            "[host.\"http://{}\"]\n  capabilities = [\"pull\"]\n",
            liar.addr()
        ),
    );
    let store = tempfile::tempdir().unwrap();
    let (code, err, rep) = pull(
        &root,
        store.path(),
        &["--http-registry", &reg, &format!("{reg}/lie/app:v1")],
    );
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("does not match"), "the lie was noticed: {err}");
    assert_eq!(
        verify_store(store.path()),
        4,
        "only verified content stored"
    );
    assert!(
        !liar.requests().contains("GET /v2/lie/app/manifests/v1"),
        "no tag resolution on a pull-only mirror"
    );
    assert!(
        liar.requests()
            .contains(&format!("GET /v2/lie/app/blobs/{}", img.layers[0].digest))
    );
    assert_eq!(rep["images"][0]["status"], "pulled");
}

#[test]
fn a_malformed_hosts_toml_is_exit_2_naming_the_file() {
    let root = Root::new("", "");
    hosts_toml(&root, "reg.example.com:5000", "[host.\"ftp://x\"]\n");
    let r = run(&mut agent(&[
        "explain",
        "--root",
        root.arg(),
        "reg.example.com:5000/app",
    ]));
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("reg.example.com:5000/hosts.toml"),
        "{}",
        r.stderr
    );
    let before = root.snapshot();
    let r = run(&mut agent(&[
        "pull",
        "--root",
        root.arg(),
        "reg.example.com:5000/app",
    ]));
    assert_eq!(r.code, 2);
    assert_eq!(before, root.snapshot());
}
