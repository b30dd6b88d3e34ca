//! Hostile registries and hostile stores (SPEC §9): each test reproduces an attack or a
//! misbehaviour that an older build failed, through the built binary, against the real
//! registry with the fault injector in front of it.
//!
//! To see them fail on another build: `KCI_AGENT_BIN=/path/to/old/kci-pull-agent cargo test
//! --test hardening`.

mod common;

use std::fs;
use std::os::unix::fs::symlink;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::fault::{Fault, FaultEnv, FaultServer, rule};
use common::images::image;
use common::{Pull, Root, agent, pull_report, verify_store};

/// A real registry holding one small image under each of `repos`.
fn env(repos: &[&str]) -> FaultEnv {
    FaultEnv::start(image(61, &[300_000, 20_000], "amd64", false), repos)
}

/// `pull --http-registry REG EXTRA... REG/REPO:v1`, with a time limit so that a hang fails
/// the test instead of holding it.
fn pull(e: &FaultEnv, store: &Path, reg: &str, repo: &str, extra: &[&str]) -> (Pull, Duration) {
    let image = format!("{reg}/{repo}:v1");
    let mut args = vec!["--http-registry", reg];
    args.extend_from_slice(extra);
    args.push(&image);
    let t = Instant::now();
    let p = pull_report(&e.root, store, &args);
    (p, t.elapsed())
}

fn auth_file(root: &Root, registry: &str) -> String {
    let auth = root.file("auth.json");
    fs::write(
        &auth,
        format!(r#"{{"auths":{{"{registry}":{{"username":"alice","password":"s3cret"}}}}}}"#),
    )
    .unwrap();
    auth.to_str().unwrap().to_string()
}

/// Runs the agent with `args`; kills it and fails if it is not done within `limit`.
fn run_within(args: &[&str], limit: Duration) -> (i32, String) {
    let mut child = agent(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            return (status.code().unwrap_or(-1), err);
        }
        if t.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the agent was still running after {limit:?}: {args:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Item 1: a connection closed before the response is retried whatever the image is called;
/// the error text (which holds the URL) once made `coredns/coredns` a DNS error and
/// `kube/x509-certificate-exporter` a certificate error, both fatal.
#[test]
fn a_dropped_connection_is_retried_whatever_the_image_is_called() {
    let repos = [
        "coredns/coredns",
        "kube/x509-certificate-exporter",
        "peer/small",
    ];
    let e = env(&repos);
    for repo in repos {
        let f = e.front(vec![
            rule("/manifests/v1", Fault::Drop, 1),
            rule(
                &format!("/blobs/{}", e.img.layers[0].digest),
                Fault::Drop,
                1,
            ),
        ]);
        let store = tempfile::tempdir().unwrap();
        let (p, _) = pull(&e, store.path(), &f.addr(), repo, &[]);
        assert_eq!(p.code, 0, "{repo}: {}", p.stderr);
        assert_eq!(p.report["images"][0]["status"], "pulled", "{repo}");
        assert!(p.stderr.contains("retrying"), "{repo}: {}", p.stderr);
        assert_eq!(verify_store(store.path()), 4, "{repo}");
    }
}

/// Item 2: registry R (Basic auth) redirects blobs to host S; S answers 401 with a Bearer realm
/// of its own. R's credentials must never reach S (an older build sent them to S's realm).
#[test]
fn a_realm_named_by_a_redirect_target_never_receives_the_credentials() {
    let e = env(&["fault/app"]);
    // The storage host answers every blob with a 401 naming a realm of its own.
    let storage = e.front(vec![]);
    storage.add_rule(rule(
        "/blobs/",
        Fault::Unauthorized {
            realm: format!("http://localhost:{}/token", storage.port),
        },
        1000,
    ));
    let registry = FaultServer::start(
        &e.registry.addr(),
        vec![rule(
            "/blobs/",
            Fault::Redirect {
                base: format!("http://localhost:{}", storage.port),
            },
            1000,
        )],
        Some(("alice", "s3cret")),
        None,
    );
    let auth = auth_file(&e.root, &registry.addr());
    let store = tempfile::tempdir().unwrap();
    let (p, _) = pull(
        &e,
        store.path(),
        &registry.addr(),
        "fault/app",
        &["--auth-file", &auth],
    );
    assert_eq!(p.code, 4, "the storage host refuses every blob");
    let seen = storage.seen();
    assert!(!seen.is_empty(), "the redirects reached the storage host");
    assert!(
        seen.iter().all(|s| s.authorization.is_none()),
        "credentials reached the redirect target: {seen:?}"
    );
    assert!(
        !seen.iter().any(|s| s.path.starts_with("/token")),
        "the redirect target's realm was asked for a token: {seen:?}"
    );
    assert!(
        registry.seen().iter().any(|s| s.authorization.is_some()),
        "the registry itself got the credentials"
    );
}

/// Item 3: a token realm that streams without end is cut off at 1 MiB (an older build read
/// it all into memory: 4.1 GiB RSS for 4 GiB).
#[test]
fn a_streaming_token_bomb_is_cut_off_at_one_mebibyte() {
    let e = env(&["fault/app"]);
    // The registry's own origin names the realm, which streams without end.
    let f = e.front(vec![rule(
        "/token",
        Fault::Bomb {
            status: 200,
            limit: 512 << 20,
        },
        10,
    )]);
    f.add_rule(rule(
        "/v2/",
        Fault::Unauthorized {
            realm: format!("http://{}/token", f.addr()),
        },
        1000,
    ));
    let store = tempfile::tempdir().unwrap();
    let (p, took) = pull(&e, store.path(), &f.addr(), "fault/app", &[]);
    assert_eq!(p.code, 4, "{}", p.stderr);
    let err = p.report["images"][0]["error"].as_str().unwrap_or("");
    assert!(err.contains("larger than 1048576 bytes"), "{err}");
    let sent = f.bomb_sent.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        sent < 64 << 20,
        "{sent} bytes of the token bomb were sent before the agent hung up"
    );
    assert!(took < Duration::from_secs(30), "{took:?}");
}

/// Item 4: a registry that trickles 256 bytes per second is given up after
/// --low-speed-time and the blob is resumed from where it stopped.
#[test]
fn a_trickling_blob_is_abandoned_after_the_low_speed_time_and_resumed() {
    let e = env(&["fault/app"]);
    let blob = format!("/blobs/{}", e.img.layers[0].digest);
    let f = e.front(vec![rule(&blob, Fault::Trickle { bytes_per_sec: 256 }, 1)]);
    let store = tempfile::tempdir().unwrap();
    let (p, took) = pull(
        &e,
        store.path(),
        &f.addr(),
        "fault/app",
        &["--low-speed-time", "3"],
    );
    assert_eq!(p.code, 0, "{}", p.stderr);
    assert!(p.stderr.contains("low-speed limit"), "{}", p.stderr);
    let resumed = f
        .seen()
        .iter()
        .filter(|s| s.path.contains(&blob))
        .filter_map(|s| s.range.clone())
        .collect::<Vec<_>>();
    assert_eq!(
        resumed.len(),
        1,
        "one Range request resumed it: {resumed:?}"
    );
    assert!(resumed[0].starts_with("bytes=") && resumed[0] != "bytes=0-");
    assert!(took < Duration::from_secs(20), "{took:?}");
    assert_eq!(verify_store(store.path()), 4);
}

/// Item 4: --deadline ends the run: the unfinished image is failed with a deadline error and
/// the report is written.
#[test]
fn the_deadline_ends_the_run_and_the_report_is_still_written() {
    let e = env(&["fault/app"]);
    let blob = format!("/blobs/{}", e.img.layers[0].digest);
    let f = e.front(vec![rule(
        &blob,
        Fault::Trickle {
            bytes_per_sec: 4096,
        },
        1000,
    )]);
    let store = tempfile::tempdir().unwrap();
    let (p, took) = pull(
        &e,
        store.path(),
        &f.addr(),
        "fault/app",
        &["--deadline", "3"],
    );
    assert_eq!(p.code, 4, "{}", p.stderr);
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert_eq!(p.report["images"][0]["status"], "failed");
    let err = p.report["images"][0]["error"].as_str().unwrap();
    assert!(err.contains("deadline"), "{err}");
    // Whatever was complete is verified; the image itself is not in the index.
    verify_store(store.path());
    assert!(!store.path().join("index.json").exists());
    assert!(
        !store
            .path()
            .join("blobs/sha256")
            .join(&e.img.layers[0].digest[7..])
            .exists(),
        "the unfinished layer is not a blob"
    );
    assert_eq!(
        fs::read_dir(store.path().join("ingest")).unwrap().count(),
        0,
        "the partial download is removed at once"
    );
}

/// Item 5: a symbolic link where the store expects its own directory is refused, never
/// followed (an older build deleted the files of ingest/'s target and wrote blobs into
/// blobs/sha256's target).
#[test]
fn links_planted_in_the_store_are_never_followed() {
    let e = env(&["fault/app"]);
    for part in ["ingest", "blobs/sha256"] {
        let store = tempfile::tempdir().unwrap();
        let victim = tempfile::tempdir().unwrap();
        fs::write(victim.path().join("precious"), "keep me").unwrap();
        let link = store.path().join(part);
        fs::create_dir_all(link.parent().unwrap()).unwrap();
        symlink(victim.path(), &link).unwrap();
        let (p, _) = pull(&e, store.path(), &e.registry.addr(), "fault/app", &[]);
        assert_eq!(p.code, 4, "{part}: {}", p.stderr);
        let err = p.report["images"][0]["error"].as_str().unwrap_or("");
        assert!(err.contains("symbolic link"), "{part}: {err}");
        let names: Vec<_> = fs::read_dir(victim.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec!["precious"], "{part}: the link's target changed");
    }
}

/// Item 5: a link at `<root>/etc` leads no write out of the root (only the last component
/// used to be checked, so `etc -> /elsewhere` wrote `/elsewhere/hosts`).
#[test]
fn a_linked_parent_directory_of_the_network_files_stays_inside_the_root() {
    let root = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    fs::write(outside.path().join("hosts"), "127.0.0.1 localhost\n").unwrap();
    fs::write(outside.path().join("resolv.conf"), "nameserver 10.9.9.9\n").unwrap();
    symlink(outside.path(), root.path().join("etc")).unwrap();
    let r = common::run(&mut agent(&[
        "network",
        "--root",
        root.path().to_str().unwrap(),
        "--host-aliases",
        r#"[{"ip":"10.1.2.3","hostnames":["reg.example.com"]}]"#,
        "--dns-config",
        r#"{"nameservers":["10.0.0.53"]}"#,
    ]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(
        fs::read_to_string(outside.path().join("hosts")).unwrap(),
        "127.0.0.1 localhost\n"
    );
    assert_eq!(
        fs::read_to_string(outside.path().join("resolv.conf")).unwrap(),
        "nameserver 10.9.9.9\n"
    );
    assert_eq!(fs::read_dir(outside.path()).unwrap().count(), 2);
    // The files went to the link's target as seen from inside the root.
    let inside = root.path().join(outside.path().strip_prefix("/").unwrap());
    assert!(
        fs::read_to_string(inside.join("hosts"))
            .unwrap()
            .contains("10.1.2.3\treg.example.com")
    );
}

/// Item 5: a temporary file name planted as a link next to the network files is never written
/// through (names are random and created with O_EXCL|O_NOFOLLOW).
#[test]
fn a_planted_temporary_name_is_never_written_through() {
    let root = Root::new("127.0.0.1 localhost\n", "nameserver 10.9.9.9\n");
    let target = root.file("victim");
    fs::write(&target, "untouched").unwrap();
    // The names an older build used for its temporary file (`.hosts.kci-tmp-PID`), for the
    // PIDs the agent will likely get: the next ones after the last one the kernel handed out.
    let last: u32 = fs::read_to_string("/proc/sys/kernel/ns_last_pid")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    for pid in last + 1..last + 3000 {
        let _ = symlink(&target, root.file(&format!("etc/.hosts.kci-tmp-{pid}")));
    }
    let r = common::run(&mut agent(&[
        "network",
        "--root",
        root.arg(),
        "--host-aliases",
        r#"[{"ip":"10.1.2.3","hostnames":["reg.example.com"]}]"#,
    ]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(fs::read_to_string(&target).unwrap(), "untouched");
    assert!(root.read("etc/hosts").contains("reg.example.com"));
}

/// Item 6: a digest read back from index.json is validated before it becomes a path (an
/// older build read /dev/zero until it was killed).
#[test]
fn a_path_smuggled_into_index_json_is_not_followed() {
    let e = env(&["fault/app"]);
    let store = tempfile::tempdir().unwrap();
    let reg = e.registry.addr();
    let name = format!("{reg}/fault/app:v1");
    fs::write(
        store.path().join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "digest": "sha256:../../../../../../../../../../dev/zero", "size": 1,
        "annotations": {"org.opencontainers.image.ref.name": name,
            "com.ksyun.kci.resolved-digest": e.img.manifest.digest}}]});
    fs::write(store.path().join("index.json"), index.to_string()).unwrap();
    let (code, err) = run_within(
        &[
            "pull",
            "--root",
            e.root.arg(),
            "--store",
            store.path().to_str().unwrap(),
            "--http-registry",
            &reg,
            &name,
        ],
        Duration::from_secs(30),
    );
    assert_eq!(code, 0, "{err}");
    let index = common::store_index(store.path());
    assert_eq!(index["manifests"][0]["digest"], e.img.manifest.digest);
}

/// Item 7: store-check without --fix changes nothing, and a mistyped --store is an error (an
/// older build emptied ingest/ and created an empty store it called consistent).
#[test]
fn store_check_only_looks_and_a_missing_store_is_an_error() {
    let e = env(&["fault/app"]);
    let store = tempfile::tempdir().unwrap();
    let (p, _) = pull(&e, store.path(), &e.registry.addr(), "fault/app", &[]);
    assert_eq!(p.code, 0, "{}", p.stderr);
    let partial = store.path().join("ingest/0123.99.partial");
    fs::write(&partial, "half a blob").unwrap();
    let s = store.path().to_str().unwrap();
    let check = |extra: &[&str]| {
        let mut args = vec!["store-check", "--root", e.root.arg(), "--store", s];
        args.extend_from_slice(extra);
        common::run(&mut agent(&args))
    };
    let r = check(&[]);
    assert_eq!(r.code, 1, "{}{}", r.stdout, r.stderr);
    assert!(r.stdout.contains("stray-file"), "{}", r.stdout);
    assert!(partial.exists(), "store-check without --fix removed a file");
    let r = check(&["--fix"]);
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    assert!(!partial.exists());

    let typo = store.path().with_extension("typo");
    let r = common::run(&mut agent(&[
        "store-check",
        "--root",
        e.root.arg(),
        "--store",
        typo.to_str().unwrap(),
    ]));
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("no image store"), "{}", r.stderr);
    assert!(
        !typo.exists(),
        "store-check created the store it was asked to check"
    );
}

/// Item 8: sha384 is refused at input, naming the algorithm (an older build accepted it and
/// then always failed with a false "served wrong content").
#[test]
fn a_sha384_reference_is_refused_at_input() {
    let root = Root::new("127.0.0.1 localhost\n", "nameserver 127.0.0.1\n");
    let image = format!("127.0.0.1:1/app@sha384:{}", "a".repeat(96));
    let store = root.file("store");
    let r = common::run(&mut agent(&[
        "pull",
        "--root",
        root.arg(),
        "--store",
        store.to_str().unwrap(),
        &image,
    ]));
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("sha384"), "{}", r.stderr);
    assert!(!store.exists(), "nothing is written for invalid input");
}

/// Item 9: credentials sent over plain HTTP (as the list asks) are logged once per registry.
#[test]
fn credentials_over_plain_http_are_warned_about_once() {
    let e = env(&["fault/app"]);
    let f = FaultServer::start(&e.registry.addr(), vec![], Some(("alice", "s3cret")), None);
    let auth = auth_file(&e.root, &f.addr());
    let store = tempfile::tempdir().unwrap();
    let (p, _) = pull(
        &e,
        store.path(),
        &f.addr(),
        "fault/app",
        &["--auth-file", &auth],
    );
    assert_eq!(p.code, 0, "{}", p.stderr);
    let warnings = p.stderr.matches("are sent over plain HTTP").count();
    assert_eq!(warnings, 1, "{}", p.stderr);
}

/// Error bodies are read for the operator (the registry's own words), but at most 64 KiB of
/// them: a 404 whose body never ends does not hold the pull.
#[test]
fn error_bodies_are_quoted_and_capped() {
    let e = env(&["fault/app"]);
    let store = tempfile::tempdir().unwrap();
    let reg = e.registry.addr();
    let p = pull_report(
        &e.root,
        store.path(),
        &["--http-registry", &reg, &format!("{reg}/fault/app:nope")],
    );
    assert_eq!(p.code, 4);
    let err = p.report["images"][0]["error"].as_str().unwrap();
    assert!(err.contains("the registry says: MANIFEST_UNKNOWN"), "{err}");

    let f = e.front(vec![rule(
        "/manifests/v1",
        Fault::Bomb {
            status: 404,
            limit: 512 << 20,
        },
        10,
    )]);
    let (p, took) = pull(&e, store.path(), &f.addr(), "fault/app", &[]);
    assert_eq!(p.code, 4, "{}", p.stderr);
    let sent = f.bomb_sent.load(std::sync::atomic::Ordering::SeqCst);
    assert!(sent < 64 << 20, "{sent} bytes of the error body were sent");
    assert!(took < Duration::from_secs(30), "{took:?}");
}

/// A `Docker-Content-Digest` that disagrees with the manifest's content is refused, and a
/// manifest that never ends is cut off at 8 MiB.
#[test]
fn a_lying_digest_header_and_an_endless_manifest_are_refused() {
    let e = env(&["fault/app"]);
    let f = e.front(vec![rule(
        "/manifests/v1",
        Fault::Header {
            name: "Docker-Content-Digest".into(),
            value: format!("sha256:{}", "0".repeat(64)),
        },
        10,
    )]);
    let store = tempfile::tempdir().unwrap();
    let (p, _) = pull(&e, store.path(), &f.addr(), "fault/app", &[]);
    assert_eq!(p.code, 4, "{}", p.stderr);
    let err = p.report["images"][0]["error"].as_str().unwrap();
    assert!(
        err.contains("the registry says the manifest is sha256:000"),
        "{err}"
    );

    let f = e.front(vec![rule(
        "/manifests/v1",
        Fault::Bomb {
            status: 200,
            limit: 512 << 20,
        },
        10,
    )]);
    let (p, _) = pull(&e, store.path(), &f.addr(), "fault/app", &[]);
    assert_eq!(p.code, 4, "{}", p.stderr);
    let err = p.report["images"][0]["error"].as_str().unwrap();
    assert!(err.contains("larger than 8388608 bytes"), "{err}");
    let sent = f.bomb_sent.load(std::sync::atomic::Ordering::SeqCst);
    assert!(sent < 64 << 20, "{sent} bytes of the manifest were sent");
    assert!(!store.path().join("index.json").exists());
}

/// A registry reached over HTTPS that names a plain-HTTP token realm gets no credentials
/// sent there: the realm is never contacted.
#[test]
fn a_plain_http_realm_of_an_https_registry_is_refused() {
    let e = env(&["fault/app"]);
    let realm = e.front(vec![]);
    let pki = common::registry::Pki::new();
    let tls = pki.self_signed("realm", &["127.0.0.1"]);
    let secure = FaultServer::start(
        &e.registry.addr(),
        vec![rule(
            "/v2/",
            Fault::Unauthorized {
                realm: format!("http://{}/token", realm.addr()),
            },
            1000,
        )],
        None,
        Some(tls),
    );
    let auth = auth_file(&e.root, &secure.addr());
    let store = tempfile::tempdir().unwrap();
    let image = format!("{}/fault/app:v1", secure.addr());
    let p = pull_report(
        &e.root,
        store.path(),
        &[
            "--insecure-registry",
            &secure.addr(),
            "--auth-file",
            &auth,
            &image,
        ],
    );
    assert_eq!(p.code, 4, "{}", p.stderr);
    let err = p.report["images"][0]["error"].as_str().unwrap();
    assert!(err.contains("refused the token realm"), "{err}");
    assert!(realm.seen().is_empty(), "{:?}", realm.seen());
}

/// URLs in errors and the report lose their user info and query string: a presigned storage
/// URL's signature stays out of logs and reports.
#[test]
fn presigned_urls_are_redacted_in_errors() {
    let e = env(&["fault/app"]);
    let storage = e.front(vec![rule(
        "X-Amz-Signature=SECRETSIG",
        Fault::Status {
            status: 403,
            retry_after: None,
        },
        1000,
    )]);
    let registry = e.front(vec![rule(
        "/blobs/",
        Fault::Redirect {
            base: format!(
                "http://bucketuser:BUCKETPASS@localhost:{}/bucket?X-Amz-Signature=SECRETSIG&k=",
                storage.port
            ),
        },
        1000,
    )]);
    let store = tempfile::tempdir().unwrap();
    let (p, _) = pull(&e, store.path(), &registry.addr(), "fault/app", &[]);
    assert_eq!(p.code, 4, "{}", p.stderr);
    assert!(!storage.seen().is_empty(), "the redirect was followed");
    let report = p.report.to_string();
    assert!(report.contains("/bucket"), "{report}");
    for secret in ["SECRETSIG", "BUCKETPASS", "bucketuser"] {
        assert!(!report.contains(secret), "{secret} in the report: {report}");
        assert!(
            !p.stderr.contains(secret),
            "{secret} in the log: {}",
            p.stderr
        );
    }
}
