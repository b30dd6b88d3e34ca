//! Faults injected between the agent and a real registry: every one is survived or turned
//! into a clear error, nothing unverified is stored, and credentials never leak.

mod common;

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use common::fault::{Fault, FaultEnv, FaultServer, rule};
use common::images::{Image, image};
use common::registry::Pki;
use common::{Root, verify_store};
use serde_json::Value;

fn env() -> FaultEnv {
    FaultEnv::start(
        image(41, &[200_000, 30_000], "amd64", false),
        &["fault/app"],
    )
}

fn pull(root: &Root, store: &Path, list: &str, reg: &str, extra: &[&str]) -> (i32, String, Value) {
    let image_ref = format!("{reg}/fault/app:v1");
    let mut args = vec![list, reg];
    args.extend_from_slice(extra);
    args.push(&image_ref);
    let p = common::pull_report(root, store, &args);
    (p.code, p.stderr, p.report)
}

fn blob_path(img: &Image) -> String {
    format!("/blobs/{}", img.layers[0].digest)
}

#[test]
fn bursts_of_503_and_429_are_retried_honouring_retry_after() {
    let e = env();
    let f = e.front(vec![
        rule(
            "/manifests/v1",
            Fault::Status {
                status: 503,
                retry_after: Some(1),
            },
            2,
        ),
        rule(
            &blob_path(&e.img),
            Fault::Status {
                status: 429,
                retry_after: None,
            },
            2,
        ),
    ]);
    let store = tempfile::tempdir().unwrap();
    let start = Instant::now();
    let (code, err, rep) = pull(&e.root, store.path(), "--http-registry", &f.addr(), &[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        start.elapsed() >= Duration::from_secs(2),
        "Retry-After: 1 was honoured twice"
    );
    assert_eq!(err.matches("retrying").count(), 4, "{err}");
    assert_eq!(rep["images"][0]["status"], "pulled");
    assert_eq!(verify_store(store.path()), 4);
}

#[test]
fn persistent_5xx_gives_up_with_an_explanation() {
    let e = env();
    let f = e.front(vec![rule(
        "/manifests/",
        Fault::Status {
            status: 502,
            retry_after: None,
        },
        100,
    )]);
    let store = tempfile::tempdir().unwrap();
    let (code, _, rep) = pull(&e.root, store.path(), "--http-registry", &f.addr(), &[]);
    assert_eq!(code, 4);
    let err = rep["images"][0]["error"].as_str().unwrap();
    assert!(
        err.contains("502") && err.contains("gave up after 5 attempts"),
        "{err}"
    );
}

#[test]
fn a_truncated_body_is_resumed_with_range() {
    let e = env();
    let f = e.front(vec![rule(
        &blob_path(&e.img),
        Fault::Truncate { after: 50_000 },
        2,
    )]);
    let store = tempfile::tempdir().unwrap();
    let (code, err, rep) = pull(&e.root, store.path(), "--http-registry", &f.addr(), &[]);
    assert_eq!(code, 0, "{err}");
    let ranges: Vec<String> = f.seen().iter().filter_map(|s| s.range.clone()).collect();
    assert_eq!(
        ranges,
        vec!["bytes=50000-", "bytes=100000-"],
        "resumed where each attempt stopped"
    );
    assert_eq!(
        rep["images"][0]["bytes"],
        e.img.blob_bytes() + e.img.manifest.bytes.len() as u64
    );
    assert_eq!(verify_store(store.path()), 4);
}

#[test]
fn a_stalled_body_hits_the_idle_timeout_and_is_retried() {
    let e = env();
    let f = e.front(vec![rule(
        &blob_path(&e.img),
        Fault::Stall {
            after: 20_000,
            pause: Duration::from_secs(20),
        },
        1,
    )]);
    let store = tempfile::tempdir().unwrap();
    let start = Instant::now();
    let (code, err, _) = pull(
        &e.root,
        store.path(),
        "--http-registry",
        &f.addr(),
        &["--read-timeout", "1"],
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "did not wait for the stalled server"
    );
    assert!(err.contains("retrying"), "{err}");
    assert_eq!(verify_store(store.path()), 4);
}

#[test]
fn a_body_larger_than_the_descriptor_is_cut_at_the_limit() {
    let e = env();
    let f = e.front(vec![rule(
        &blob_path(&e.img),
        Fault::Extra { extra: 4096 },
        100,
    )]);
    let store = tempfile::tempdir().unwrap();
    let (code, _, rep) = pull(&e.root, store.path(), "--http-registry", &f.addr(), &[]);
    assert_eq!(code, 4);
    let err = rep["images"][0]["error"].as_str().unwrap();
    assert!(err.contains("larger than its declared size"), "{err}");
    assert!(
        !store
            .path()
            .join("blobs/sha256")
            .join(&e.img.layers[0].digest[7..])
            .exists()
    );
    assert_eq!(
        fs::read_dir(store.path().join("ingest")).unwrap().count(),
        0
    );
    verify_store(store.path());
}

#[test]
fn corrupted_bytes_are_downloaded_again_once_then_refused() {
    let e = env();
    // Once: the second download is clean.
    let f = e.front(vec![rule(
        &blob_path(&e.img),
        Fault::Corrupt { offset: 1234 },
        1,
    )]);
    let store = tempfile::tempdir().unwrap();
    let (code, err, _) = pull(&e.root, store.path(), "--http-registry", &f.addr(), &[]);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("downloading it again"), "{err}");
    assert_eq!(verify_store(store.path()), 4);
    // Always: refused, nothing stored.
    let f = e.front(vec![rule(
        &blob_path(&e.img),
        Fault::Corrupt { offset: 1234 },
        100,
    )]);
    let store = tempfile::tempdir().unwrap();
    let (code, _, rep) = pull(&e.root, store.path(), "--http-registry", &f.addr(), &[]);
    assert_eq!(code, 4);
    assert!(
        rep["images"][0]["error"]
            .as_str()
            .unwrap()
            .contains("does not match")
    );
    assert!(
        !store
            .path()
            .join("blobs/sha256")
            .join(&e.img.layers[0].digest[7..])
            .exists()
    );
    assert!(
        !store.path().join("index.json").exists()
            || common::store_index(store.path())["manifests"]
                .as_array()
                .unwrap()
                .is_empty()
    );
}

#[test]
fn a_redirect_to_another_host_never_carries_the_credentials() {
    let e = env();
    // Blob storage on "another host": localhost instead of 127.0.0.1, another port.
    let storage_host = e.front(vec![]);
    let registry = FaultServer::start(
        &e.registry.addr(),
        vec![rule(
            "/blobs/",
            Fault::Redirect {
                base: format!("http://localhost:{}", storage_host.port),
            },
            100,
        )],
        Some(("alice", "s3cret")),
        None,
    );
    let auth = e.root.file("auth.json");
    fs::write(
        &auth,
        format!(
            r#"{{"auths":{{"{}":{{"username":"alice","password":"s3cret"}}}}}}"#,
            registry.addr()
        ),
    )
    .unwrap();
    let store = tempfile::tempdir().unwrap();
    let (code, err, _) = pull(
        &e.root,
        store.path(),
        "--http-registry",
        &registry.addr(),
        &["--auth-file", auth.to_str().unwrap()],
    );
    assert_eq!(code, 0, "{err}");
    let to_storage = storage_host.seen();
    assert!(
        to_storage.len() >= 3,
        "blobs came from the storage host: {to_storage:?}"
    );
    assert!(
        to_storage.iter().all(|s| s.authorization.is_none()),
        "{to_storage:?}"
    );
    assert!(
        registry.seen().iter().any(|s| s.authorization.is_some()),
        "the registry itself got the credentials"
    );
    assert_eq!(verify_store(store.path()), 4);
}

#[test]
fn a_redirect_from_https_to_plain_http_is_refused() {
    let e = env();
    let plain = e.front(vec![]);
    let pki = Pki::new();
    let tls = pki.self_signed("fault", &["127.0.0.1"]);
    let secure = FaultServer::start(
        &e.registry.addr(),
        vec![rule(
            "/blobs/",
            Fault::Redirect {
                base: format!("http://127.0.0.1:{}", plain.port),
            },
            100,
        )],
        None,
        Some(tls),
    );
    let store = tempfile::tempdir().unwrap();
    let (code, _, rep) = pull(
        &e.root,
        store.path(),
        "--insecure-registry",
        &secure.addr(),
        &[],
    );
    assert_eq!(code, 4);
    let err = rep["images"][0]["error"].as_str().unwrap();
    assert!(err.contains("refused a redirect from HTTPS"), "{err}");
    assert!(plain.seen().is_empty(), "nothing was sent over plain HTTP");
    assert_eq!(verify_store(store.path()), 0);
}
