//! `pull` against real `docker-registry` instances on loopback: every transport, every auth
//! scheme, both manifest formats, platform selection, dedup, and the refusals.

mod common;

use std::fs;
use std::path::Path;

use common::images::{Pusher, block_on, image, image_with, index, layer};
use common::registry::{Front, Pki, Registry, htpasswd};
use common::{Root, agent, run, store_index, verify_store};
use serde_json::Value;

/// A registry storage with a plain-HTTP front the tests push through.
struct Seeded {
    storage: tempfile::TempDir,
    push: Registry,
}

impl Seeded {
    fn new() -> Seeded {
        let storage = tempfile::tempdir().unwrap();
        let push = Registry::start(storage.path(), &Front::default());
        Seeded { storage, push }
    }
    fn front(&self, front: &Front) -> Registry {
        Registry::start(self.storage.path(), front)
    }
    fn pusher(&self) -> Pusher {
        Pusher::new(&self.push.addr())
    }
}

fn pull(root: &Root, store: &Path, args: &[&str]) -> common::Pull {
    common::pull_report(root, store, args)
}

fn new_root() -> Root {
    Root::new("127.0.0.1\tlocalhost\n", "nameserver 127.0.0.1\n")
}

#[test]
fn http_pull_stores_verified_blobs_and_a_second_pull_is_present() {
    let s = Seeded::new();
    let img = image(1, &[300_000, 1_000, 70_000], "amd64", false);
    block_on(s.pusher().image("test/app", "v1", &img));
    let root = new_root();
    let store = tempfile::tempdir().unwrap();
    let reg = s.push.addr();
    let image_ref = format!("{reg}/test/app:v1");

    let p = pull(&root, store.path(), &["--http-registry", &reg, &image_ref]);
    assert_eq!(p.code, 0, "{}", p.stderr);
    let r = &p.report["images"][0];
    assert_eq!(r["status"], "pulled", "{}", p.report);
    assert_eq!(r["image"], image_ref.as_str());
    assert_eq!(r["reference"], image_ref.as_str());
    assert_eq!(r["registry"], reg.as_str());
    assert_eq!(r["transport"], "http");
    assert_eq!(r["digest"], img.manifest.digest.as_str());
    assert_eq!(r["error"], Value::Null);
    assert_eq!(
        r["bytes"],
        img.blob_bytes() + img.manifest.bytes.len() as u64
    );
    assert!(r["seconds"].as_f64().unwrap() >= 0.0);

    assert_eq!(verify_store(store.path()), 5, "config, 3 layers, manifest");
    let idx = store_index(store.path());
    let m = &idx["manifests"][0];
    assert_eq!(
        m["annotations"]["org.opencontainers.image.ref.name"],
        image_ref.as_str()
    );
    assert_eq!(m["digest"], img.manifest.digest.as_str());
    assert_eq!(m["mediaType"], common::images::OCI_MANIFEST);
    // The manifest is stored byte for byte as served.
    let hex = &img.manifest.digest[7..];
    assert_eq!(
        fs::read(store.path().join("blobs/sha256").join(hex)).unwrap(),
        img.manifest.bytes
    );
    assert!(store.path().join("oci-layout").exists());
    assert_eq!(
        fs::read_dir(store.path().join("ingest")).unwrap().count(),
        0
    );

    let again = pull(&root, store.path(), &["--http-registry", &reg, &image_ref]);
    assert_eq!(again.code, 0, "{}", again.stderr);
    assert_eq!(again.report["images"][0]["status"], "present");
    assert_eq!(again.report["images"][0]["bytes"], 0);

    // The tag moves: the reference changes in the store.
    let img2 = image(2, &[10_000], "amd64", false);
    block_on(s.pusher().image("test/app", "v1", &img2));
    let moved = pull(&root, store.path(), &["--http-registry", &reg, &image_ref]);
    assert_eq!(moved.code, 0, "{}", moved.stderr);
    assert_eq!(moved.report["images"][0]["status"], "pulled");
    assert_eq!(
        moved.report["images"][0]["digest"],
        img2.manifest.digest.as_str()
    );
    assert_eq!(
        store_index(store.path())["manifests"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // Pinned by digest: present without asking the registry again.
    let pinned = format!("{reg}/test/app@{}", img2.manifest.digest);
    let p = pull(&root, store.path(), &["--http-registry", &reg, &pinned]);
    assert_eq!(p.code, 0, "{}", p.stderr);
    assert_eq!(
        p.report["images"][0]["status"], "pulled",
        "new reference name in the store"
    );
    let p = pull(&root, store.path(), &["--http-registry", &reg, &pinned]);
    assert_eq!(p.report["images"][0]["status"], "present");
}

#[test]
fn an_unlisted_http_registry_is_never_downgraded() {
    let s = Seeded::new();
    let img = image(3, &[1000], "amd64", false);
    block_on(s.pusher().image("test/app", "v1", &img));
    let root = new_root();
    let store = tempfile::tempdir().unwrap();
    let reg = s.push.addr();
    let image_ref = format!("{reg}/test/app:v1");
    for args in [
        vec![image_ref.as_str()],
        // Port-exact: the host without the port, or another port, does not match.
        vec!["--http-registry", "127.0.0.1", image_ref.as_str()],
        vec!["--http-registry", "127.0.0.1:1", image_ref.as_str()],
    ] {
        let p = pull(&root, store.path(), &args);
        assert_eq!(p.code, 4, "{args:?}: {}", p.stderr);
        let r = &p.report["images"][0];
        assert_eq!(r["status"], "failed");
        assert_eq!(r["transport"], "https");
        let err = r["error"].as_str().unwrap();
        assert!(err.contains("kci-http-registry"), "{err}");
        assert!(
            s.push.requests().contains("PUT /v2/test/app/manifests/v1"),
            "the access log is read"
        );
        assert!(
            !s.push.requests().contains("GET /v2/"),
            "no request reached the registry over HTTP"
        );
    }
    let p = pull(
        &root,
        store.path(),
        &["--http-registry", "127.0.0.1", &image_ref],
    );
    assert!(
        p.report["images"][0]["error"]
            .as_str()
            .unwrap()
            .contains("port-exact"),
        "{}",
        p.report
    );
    assert_eq!(verify_store(store.path()), 0);
}

#[test]
fn self_signed_https_through_a_host_alias_listed_as_insecure() {
    let s = Seeded::new();
    let img = image(4, &[50_000, 2_000], "amd64", false);
    block_on(s.pusher().image("team/web", "1.0", &img));
    let pki = Pki::new();
    let tls = pki.self_signed("selfsigned", &["selfsigned.registry.test"]);
    let front = s.front(&Front {
        tls: Some(tls),
        ..Default::default()
    });
    let root = new_root();
    let store = tempfile::tempdir().unwrap();
    // The alias comes from the network files, written by the agent itself.
    let r = run(&mut agent(&[
        "network",
        "--root",
        root.arg(),
        "--host-aliases",
        r#"[{"ip":"127.0.0.1","hostnames":["selfsigned.registry.test"]}]"#,
    ]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let reg = format!("selfsigned.registry.test:{}", front.port);
    let image_ref = format!("{reg}/team/web:1.0");

    let p = pull(
        &root,
        store.path(),
        &["--insecure-registry", &reg, &image_ref],
    );
    assert_eq!(p.code, 0, "{}", p.stderr);
    assert_eq!(p.report["images"][0]["transport"], "https-insecure");
    assert_eq!(p.report["images"][0]["status"], "pulled");
    assert_eq!(verify_store(store.path()), 4);

    // Not listed (or listed without its port): verified, and the certificate is refused.
    let store2 = tempfile::tempdir().unwrap();
    for args in [
        vec![image_ref.as_str()],
        vec![
            "--insecure-registry",
            "selfsigned.registry.test",
            image_ref.as_str(),
        ],
    ] {
        let p = pull(&root, store2.path(), &args);
        assert_eq!(p.code, 4, "{}", p.stderr);
        let err = p.report["images"][0]["error"].as_str().unwrap();
        assert!(err.contains("certificate"), "{err}");
        assert!(err.contains("kci-insecure-registry"), "{err}");
        if args.len() > 1 {
            assert!(
                err.contains("port-exact"),
                "the near miss is pointed out: {err}"
            );
        }
    }
    assert_eq!(verify_store(store2.path()), 0);
}

#[test]
fn ca_signed_https_with_basic_auth_and_the_ca_in_certs_d() {
    let s = Seeded::new();
    let img = image(5, &[40_000], "amd64", true);
    block_on(s.pusher().image("secure/app", "v2", &img));
    let pki = Pki::new();
    let tls = pki.leaf("auth", &["auth.registry.test"]);
    let hp = htpasswd(&pki.dir, "alice", "s3cret");
    let front = s.front(&Front {
        tls: Some(tls),
        htpasswd: Some(hp),
        ..Default::default()
    });
    let root = Root::new(
        "127.0.0.1\tlocalhost\n127.0.0.1\tauth.registry.test\n",
        "nameserver 127.0.0.1\n",
    );
    let reg = format!("auth.registry.test:{}", front.port);
    let image_ref = format!("{reg}/secure/app:v2");
    let auth = root.file("auth.json");
    fs::write(
        &auth,
        format!(r#"{{"auths":{{"{reg}":{{"username":"alice","password":"s3cret"}}}}}}"#),
    )
    .unwrap();
    let auth_arg = auth.to_str().unwrap();

    // Without the CA: the certificate is not trusted.
    let store = tempfile::tempdir().unwrap();
    let p = pull(&root, store.path(), &["--auth-file", auth_arg, &image_ref]);
    assert_eq!(p.code, 4);
    let err = p.report["images"][0]["error"].as_str().unwrap();
    assert!(err.contains("certs.d") && err.contains(&reg), "{err}");

    let certs = root.file(&format!("etc/kci/certs.d/{reg}"));
    fs::create_dir_all(&certs).unwrap();
    fs::write(certs.join("ca.crt"), &pki.ca_pem).unwrap();

    // With the CA but no credentials: 401, explained.
    let p = pull(&root, store.path(), &[&image_ref]);
    assert_eq!(p.code, 4);
    let err = p.report["images"][0]["error"].as_str().unwrap();
    assert!(err.contains("401") && err.contains("auth file"), "{err}");

    let p = pull(&root, store.path(), &["--auth-file", auth_arg, &image_ref]);
    assert_eq!(p.code, 0, "{}", p.stderr);
    assert_eq!(p.report["images"][0]["transport"], "https");
    assert_eq!(
        p.report["images"][0]["digest"],
        img.manifest.digest.as_str()
    );
    assert_eq!(
        store_index(store.path())["manifests"][0]["mediaType"],
        common::images::DOCKER_MANIFEST
    );

    // REGISTRY_AUTH_FILE works as well.
    let store2 = tempfile::tempdir().unwrap();
    let mut cmd = agent(&[
        "pull",
        "--root",
        root.arg(),
        "--store",
        store2.path().to_str().unwrap(),
        &image_ref,
    ]);
    cmd.env("REGISTRY_AUTH_FILE", auth_arg);
    let r = run(&mut cmd);
    assert_eq!(r.code, 0, "{}", r.stderr);
}

#[test]
fn bearer_token_auth() {
    let s = Seeded::new();
    let img = image(6, &[20_000, 30_000], "amd64", false);
    block_on(s.pusher().image("tok/app", "v1", &img));
    let tokens = common::token::TokenServer::start("bob", "hunter2");
    let front = s.front(&Front {
        token: Some((
            tokens.realm(),
            common::token::SERVICE.into(),
            common::token::ISSUER.into(),
            tokens.bundle.clone(),
        )),
        ..Default::default()
    });
    let root = new_root();
    let reg = front.addr();
    let image_ref = format!("{reg}/tok/app:v1");
    let auth = root.file("auth.json");
    fs::write(
        &auth,
        format!(
            r#"{{"auths":{{"{reg}":{{"auth":"{}"}}}}}}"#,
            base64_encode("bob:hunter2")
        ),
    )
    .unwrap();

    let store = tempfile::tempdir().unwrap();
    let p = pull(&root, store.path(), &["--http-registry", &reg, &image_ref]);
    assert_eq!(p.code, 4, "no credentials: the token service refuses");
    assert!(tokens.refused.load(std::sync::atomic::Ordering::SeqCst) >= 1);

    let p = pull(
        &root,
        store.path(),
        &[
            "--http-registry",
            &reg,
            "--auth-file",
            auth.to_str().unwrap(),
            &image_ref,
        ],
    );
    assert_eq!(p.code, 0, "{}", p.stderr);
    assert_eq!(p.report["images"][0]["status"], "pulled");
    assert!(tokens.issued.load(std::sync::atomic::Ordering::SeqCst) >= 1);
    assert_eq!(verify_store(store.path()), 4);
}

fn base64_encode(s: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(s)
}

#[test]
fn platform_selection_from_an_index_and_a_docker_manifest_list() {
    let s = Seeded::new();
    let amd = image(7, &[11_000, 12_000], "amd64", false);
    let arm = image(8, &[13_000], "arm64", false);
    let arm7 = image(9, &[14_000], "arm", false);
    let idx = index(
        &[
            (&amd, "amd64", None),
            (&arm, "arm64", Some("v8")),
            (&arm7, "arm", Some("v7")),
        ],
        false,
    );
    block_on(
        s.pusher()
            .index("multi/app", "latest", &[&amd, &arm, &arm7], &idx),
    );
    let damd = image(10, &[15_000], "amd64", true);
    let darm = image(11, &[16_000], "arm64", true);
    let list = index(&[(&damd, "amd64", None), (&darm, "arm64", None)], true);
    block_on(
        s.pusher()
            .index("multi/docker", "latest", &[&damd, &darm], &list),
    );
    let root = new_root();
    let reg = s.push.addr();

    let store = tempfile::tempdir().unwrap();
    let oci_ref = format!("{reg}/multi/app:latest");
    let docker_ref = format!("{reg}/multi/docker");
    let p = pull(
        &root,
        store.path(),
        &[
            "--http-registry",
            &reg,
            "--platform",
            "linux/arm64",
            &oci_ref,
            &docker_ref,
        ],
    );
    assert_eq!(p.code, 0, "{}", p.stderr);
    assert_eq!(
        p.report["images"][0]["digest"],
        arm.manifest.digest.as_str()
    );
    assert_eq!(
        p.report["images"][1]["digest"],
        darm.manifest.digest.as_str()
    );
    let idx_json = store_index(store.path());
    // Images finish in any order; find each entry by its reference name.
    let entry = |name: &str| {
        idx_json["manifests"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["annotations"]["org.opencontainers.image.ref.name"] == name)
            .cloned()
            .unwrap()
    };
    let oci = entry(&oci_ref);
    assert_eq!(oci["platform"]["architecture"], "arm64");
    assert_eq!(oci["platform"]["variant"], "v8");
    let docker = entry(&format!("{docker_ref}:latest"));
    assert_eq!(docker["platform"]["architecture"], "arm64");
    assert_eq!(docker["mediaType"], common::images::DOCKER_MANIFEST);
    // Only the chosen platform's blobs were fetched.
    for b in amd.blobs().chain(arm7.blobs()).chain(damd.blobs()) {
        assert!(
            !store
                .path()
                .join("blobs/sha256")
                .join(&b.digest[7..])
                .exists()
        );
    }
    for b in arm.blobs().chain(darm.blobs()) {
        assert!(
            store
                .path()
                .join("blobs/sha256")
                .join(&b.digest[7..])
                .exists()
        );
    }

    let store = tempfile::tempdir().unwrap();
    let p = pull(
        &root,
        store.path(),
        &[
            "--http-registry",
            &reg,
            "--platform",
            "linux/arm/v7",
            &oci_ref,
        ],
    );
    assert_eq!(
        p.report["images"][0]["digest"],
        arm7.manifest.digest.as_str(),
        "{}",
        p.stderr
    );
    let p = pull(
        &root,
        store.path(),
        &[
            "--http-registry",
            &reg,
            "--platform",
            "linux/s390x",
            &oci_ref,
        ],
    );
    assert_eq!(p.code, 4);
    let err = p.report["images"][0]["error"].as_str().unwrap();
    assert!(
        err.contains("linux/s390x") && err.contains("linux/arm64/v8"),
        "{err}"
    );
}

#[test]
fn a_layer_shared_by_two_images_is_fetched_once() {
    let s = Seeded::new();
    let base = layer(100, 200_000, false);
    let a = image_with(vec![base.clone(), layer(101, 5_000, false)], "amd64", false);
    let b = image_with(vec![base.clone(), layer(102, 6_000, false)], "amd64", false);
    block_on(async {
        s.pusher().image("dedup/a", "v1", &a).await;
        s.pusher().image("dedup/b", "v1", &b).await;
    });
    let root = new_root();
    let store = tempfile::tempdir().unwrap();
    let reg = s.push.addr();
    let p = pull(
        &root,
        store.path(),
        &[
            "--http-registry",
            &reg,
            &format!("{reg}/dedup/a:v1"),
            &format!("{reg}/dedup/b:v1"),
        ],
    );
    assert_eq!(p.code, 0, "{}", p.stderr);
    let total = p.report["totals"]["bytes"].as_u64().unwrap();
    let unique = a.blob_bytes() + b.blob_bytes() - base.bytes.len() as u64
        + (a.manifest.bytes.len() + b.manifest.bytes.len()) as u64;
    assert_eq!(total, unique, "the shared layer crossed the network once");
    let log = s.push.requests();
    let gets = log.matches("\"GET /v2/dedup/").count();
    let base_gets = log
        .lines()
        .filter(|l| l.contains(&base.digest) && l.contains("\"GET "))
        .count();
    assert!(gets > 0);
    assert_eq!(base_gets, 1, "one GET of the shared blob");
}

#[test]
fn wrong_bytes_from_the_registry_are_rejected_and_nothing_is_stored() {
    let s = Seeded::new();
    let img = image(12, &[64_000, 1_000], "amd64", false);
    let good = image(13, &[2_000], "amd64", false);
    block_on(async {
        s.pusher().image("bad/app", "v1", &img).await;
        s.pusher().image("good/app", "v1", &good).await;
    });
    // Corrupt the first layer inside the registry's storage (same size, other bytes).
    let hex = &img.layers[0].digest[7..];
    let data = s.storage.path().join(format!(
        "docker/registry/v2/blobs/sha256/{}/{hex}/data",
        &hex[..2]
    ));
    let mut bytes = fs::read(&data).unwrap();
    bytes[1000] ^= 0xff;
    fs::write(&data, bytes).unwrap();

    let root = new_root();
    let store = tempfile::tempdir().unwrap();
    let reg = s.push.addr();
    let p = pull(
        &root,
        store.path(),
        &[
            "--http-registry",
            &reg,
            &format!("{reg}/bad/app:v1"),
            &format!("{reg}/good/app:v1"),
        ],
    );
    assert_eq!(p.code, 4, "{}", p.stderr);
    let bad = &p.report["images"][0];
    assert_eq!(bad["status"], "failed");
    assert!(
        bad["error"].as_str().unwrap().contains("does not match"),
        "{bad}"
    );
    assert_eq!(
        p.report["images"][1]["status"], "pulled",
        "the other image is unaffected"
    );
    assert!(!store.path().join("blobs/sha256").join(hex).exists());
    let idx = store_index(store.path());
    let names: Vec<&str> = idx["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            m["annotations"]["org.opencontainers.image.ref.name"]
                .as_str()
                .unwrap()
        })
        .collect();
    assert_eq!(names, vec![format!("{reg}/good/app:v1")]);
    verify_store(store.path());
    assert_eq!(
        fs::read_dir(store.path().join("ingest")).unwrap().count(),
        0
    );

    // A pinned digest that does not exist is a clear 404.
    let missing = format!("{reg}/good/app@sha256:{}", "0".repeat(64));
    let p = pull(&root, store.path(), &["--http-registry", &reg, &missing]);
    assert_eq!(p.code, 4);
    assert!(
        p.report["images"][0]["error"]
            .as_str()
            .unwrap()
            .contains("404"),
        "{}",
        p.report
    );
}

#[test]
fn a_connection_reset_mid_blob_is_resumed_with_range_and_verified() {
    let s = Seeded::new();
    let img = image(14, &[3_000_000], "amd64", false);
    block_on(s.pusher().image("resume/app", "v1", &img));
    // Cut twice: 1 MB into the blob, then again 1 MB into the resumed response.
    let proxy = common::proxy::Proxy::start(&s.push.addr(), 1_000_000, 2);
    let root = new_root();
    let store = tempfile::tempdir().unwrap();
    let reg = proxy.addr();
    let p = pull(
        &root,
        store.path(),
        &["--http-registry", &reg, &format!("{reg}/resume/app:v1")],
    );
    assert_eq!(p.code, 0, "{}", p.stderr);
    assert_eq!(proxy.cuts.load(std::sync::atomic::Ordering::SeqCst), 2);
    assert!(p.stderr.contains("retrying"), "{}", p.stderr);
    // Resumed, not restarted: every byte crossed the network once.
    assert_eq!(
        p.report["images"][0]["bytes"],
        img.blob_bytes() + img.manifest.bytes.len() as u64
    );
    assert_eq!(verify_store(store.path()), 3);
}

#[test]
fn the_store_is_readable_by_skopeo() {
    let s = Seeded::new();
    let img = image(15, &[5_000], "amd64", false);
    block_on(s.pusher().image("interop/app", "v1", &img));
    let root = new_root();
    let store = tempfile::tempdir().unwrap();
    let reg = s.push.addr();
    let image_ref = format!("{reg}/interop/app:v1");
    assert_eq!(
        pull(&root, store.path(), &["--http-registry", &reg, &image_ref]).code,
        0
    );
    let out = std::process::Command::new("skopeo")
        .args([
            "inspect",
            "--raw",
            &format!("oci:{}:{image_ref}", store.path().display()),
        ])
        .output()
        .expect("skopeo is missing: run scripts/setup.sh");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(out.stdout, img.manifest.bytes);
}

#[test]
fn an_ipv6_registry_in_brackets_is_matched_and_pulled() {
    let s = Seeded::new();
    let img = image(16, &[7_000], "amd64", false);
    block_on(s.pusher().image("v6/app", "v1", &img));
    let v6 = s.front(&Front {
        ipv6: true,
        ..Default::default()
    });
    let root = new_root();
    let store = tempfile::tempdir().unwrap();
    let reg = v6.addr();
    assert!(reg.starts_with("[::1]:"));
    let image_ref = format!("{reg}/v6/app:v1");
    // Listed with another spelling of the same address: still the same registry.
    let listed = reg.replace("[::1]", "[0:0:0:0:0:0:0:1]");
    let p = pull(
        &root,
        store.path(),
        &["--http-registry", &listed, &image_ref],
    );
    assert_eq!(p.code, 0, "{}", p.stderr);
    assert_eq!(p.report["images"][0]["registry"], reg.as_str());
    assert_eq!(p.report["images"][0]["transport"], "http");
    assert_eq!(verify_store(store.path()), 3);
}

/// A report that cannot be written is exit 3 when every image was pulled (it was exit 4, as
/// if an image had failed), and exit 4 when an image failed too.
#[test]
fn a_report_that_cannot_be_written_is_exit_3_unless_an_image_failed() {
    let s = Seeded::new();
    let img = image(91, &[10_000], "amd64", false);
    block_on(s.pusher().image("report/app", "v1", &img));
    let root = new_root();
    let store = tempfile::tempdir().unwrap();
    let reg = s.push.addr();
    fs::write(root.file("not-a-dir"), "").unwrap();
    let report = root.file("not-a-dir/report.json");
    let run_with = |image: &str| {
        run(&mut agent(&[
            "pull",
            "--root",
            root.arg(),
            "--store",
            store.path().to_str().unwrap(),
            "--report",
            report.to_str().unwrap(),
            "--http-registry",
            &reg,
            image,
        ]))
    };
    let r = run_with(&format!("{reg}/report/app:v1"));
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(r.stderr.contains("cannot write the report"), "{}", r.stderr);
    assert!(r.stderr.contains("every image was pulled"), "{}", r.stderr);
    assert_eq!(verify_store(store.path()), 3, "the image itself was pulled");
    let r = run_with(&format!("{reg}/report/app:missing"));
    assert_eq!(r.code, 4, "{}", r.stderr);
    assert!(r.stderr.contains("cannot write the report"), "{}", r.stderr);
}

/// `openssl req -x509` as an operator makes a self-signed certificate for a self-built registry
/// (`CA:TRUE`, OpenSSL's default), in `<path>.crt` / `<path>.key`.
fn openssl_self_signed(
    path: &std::path::Path,
    host: &str,
) -> (std::path::PathBuf, std::path::PathBuf) {
    let (crt, key) = (path.with_extension("crt"), path.with_extension("key"));
    let out = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30", "-keyout",
        ])
        .arg(&key)
        .arg("-out")
        .arg(&crt)
        .args([
            "-subj",
            &format!("/CN={host}"),
            "-addext",
            &format!("subjectAltName=DNS:{host}"),
        ])
        .output()
        .expect("openssl is missing: run scripts/setup.sh");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::process::Command::new("openssl")
        .args(["x509", "-noout", "-text", "-in"])
        .arg(&crt)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&text.stdout).contains("CA:TRUE"));
    (crt, key)
}

/// SPEC §11, the seed scenario: a registry serving its own `openssl req -x509` certificate
/// (CA:TRUE), copied to `certs.d/<host:port>/ca.crt` as the hint says, is trusted (as curl
/// --cacert and Go trust it); without it, or with another self-signed certificate there, the
/// pull is refused and nothing is stored.
#[test]
fn a_registrys_own_ca_true_certificate_in_certs_d_is_trusted() {
    let s = Seeded::new();
    let img = image(6, &[30_000], "amd64", false);
    block_on(s.pusher().image("own/app", "v1", &img));
    let dir = tempfile::tempdir().unwrap();
    let (crt, key) = openssl_self_signed(&dir.path().join("reg"), "reg.test");
    let (other, _) = openssl_self_signed(&dir.path().join("other"), "reg.test");
    let front = s.front(&Front {
        tls: Some((crt.clone(), key)),
        ..Default::default()
    });
    let root = new_root();
    let reg = format!("reg.test:{}", front.port);
    let image_ref = format!("{reg}/own/app:v1");
    let aliases = r#"[{"ip":"127.0.0.1","hostnames":["reg.test"]}]"#;
    let r = run(&mut agent(&[
        "network",
        "--root",
        root.arg(),
        "--host-aliases",
        aliases,
    ]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    // curl, the reference, accepts it.
    let curl = std::process::Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(&crt)
        .args([
            "--resolve",
            &format!("{reg}:127.0.0.1"),
            &format!("https://{reg}/v2/"),
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&curl.stdout), "200");
    let certs = root.file(&format!("etc/kci/certs.d/{reg}"));
    fs::create_dir_all(&certs).unwrap();
    for anchor in [None, Some(&other)] {
        let _ = fs::remove_file(certs.join("ca.crt"));
        if let Some(a) = anchor {
            fs::copy(a, certs.join("ca.crt")).unwrap();
        }
        let store = tempfile::tempdir().unwrap();
        let p = pull(&root, store.path(), &[&image_ref]);
        assert_eq!(p.code, 4, "{anchor:?}: {}", p.stderr);
        let err = p.report["images"][0]["error"].as_str().unwrap();
        assert!(err.contains("certificate"), "{err}");
        // In words, not the TLS library's debug text.
        assert!(
            !err.contains("Other(") && !err.contains("OtherError"),
            "{err}"
        );
        eprintln!("{anchor:?}: {err}");
        assert_eq!(verify_store(store.path()), 0);
    }
    fs::copy(&crt, certs.join("ca.crt")).unwrap();
    let store = tempfile::tempdir().unwrap();
    let p = pull(&root, store.path(), &[&image_ref]);
    assert_eq!(p.code, 0, "{}", p.stderr);
    assert_eq!(p.report["images"][0]["transport"], "https");
    assert_eq!(p.report["images"][0]["status"], "pulled");
}
