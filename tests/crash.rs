//! Crash consistency: `kill -9` at many points of a pull, then the store is checked and the
//! pull rerun; and `store-check` finds and removes corruption.

mod common;

use std::fs;
use std::time::Duration;

use common::images::{Pusher, block_on, image};
use common::registry::{Front, Registry};
use common::{Root, agent, run, store_index, verify_store};
use serde_json::Value;

fn problems(root: &Root, store: &std::path::Path, fix: bool) -> (i32, Vec<Value>) {
    let mut args = vec![
        "store-check",
        "--root",
        root.arg(),
        "--store",
        store.to_str().unwrap(),
        "--output",
        "json",
    ];
    if fix {
        args.push("--fix");
    }
    let r = run(&mut agent(&args));
    let list = r
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (r.code, list)
}

#[test]
fn kill_9_at_many_points_of_a_pull_leaves_a_consistent_store() {
    let storage = tempfile::tempdir().unwrap();
    let reg = Registry::start(storage.path(), &Front::default());
    let img = image(
        51,
        &[8_000_000, 6_000_000, 4_000_000, 2_000_000, 500_000],
        "amd64",
        false,
    );
    block_on(Pusher::new(&reg.addr()).image("crash/app", "v1", &img));
    let root = Root::new("127.0.0.1 localhost\n", "nameserver 127.0.0.1\n");
    let image_ref = format!("{}/crash/app:v1", reg.addr());
    let mut kills = 0;
    for delay_ms in [1u64, 3, 6, 10, 15, 20, 30, 40, 60, 80, 120, 160, 250] {
        let store = tempfile::tempdir().unwrap();
        let s = store.path().to_str().unwrap();
        let mut child = agent(&[
            "pull",
            "-q",
            "--root",
            root.arg(),
            "--store",
            s,
            "--http-registry",
            &reg.addr(),
            &image_ref,
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        if child.try_wait().unwrap().is_none() {
            kills += 1;
        }
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();

        // Whatever the moment: every blob matches its digest, index.json lists only complete
        // images; only leftovers of the interrupted download may remain.
        verify_store(store.path());
        if store.path().join("oci-layout").exists() {
            let (_, found) = problems(&root, store.path(), false);
            for p in &found {
                assert_eq!(
                    p["kind"], "stray-file",
                    "after a kill at {delay_ms} ms: {p}"
                );
            }
        }
        if store.path().join("index.json").exists() {
            let idx = store_index(store.path());
            for m in idx["manifests"].as_array().unwrap() {
                assert_eq!(m["digest"], img.manifest.digest.as_str());
            }
        }
        // The rerun completes and leaves a clean store.
        let r = run(&mut agent(&[
            "pull",
            "-q",
            "--root",
            root.arg(),
            "--store",
            s,
            "--http-registry",
            &reg.addr(),
            &image_ref,
        ]));
        assert_eq!(
            r.code, 0,
            "rerun after a kill at {delay_ms} ms: {}",
            r.stderr
        );
        let (code, found) = problems(&root, store.path(), false);
        assert_eq!((code, found.len()), (0, 0), "{found:?}");
        assert_eq!(verify_store(store.path()), 7);
    }
    assert!(
        kills >= 5,
        "only {kills} kills landed during a pull; the image is too small"
    );
}

#[test]
fn store_check_finds_corruption_and_fix_removes_it() {
    let storage = tempfile::tempdir().unwrap();
    let reg = Registry::start(storage.path(), &Front::default());
    let img = image(52, &[30_000, 4_000], "amd64", false);
    block_on(Pusher::new(&reg.addr()).image("check/app", "v1", &img));
    let root = Root::new("127.0.0.1 localhost\n", "nameserver 127.0.0.1\n");
    let store = tempfile::tempdir().unwrap();
    let s = store.path().to_str().unwrap();
    let image_ref = format!("{}/check/app:v1", reg.addr());
    let pull = || {
        run(&mut agent(&[
            "pull",
            "-q",
            "--root",
            root.arg(),
            "--store",
            s,
            "--http-registry",
            &reg.addr(),
            &image_ref,
        ]))
    };
    assert_eq!(pull().code, 0);
    assert_eq!(problems(&root, store.path(), false), (0, vec![]));

    // Flip a byte of a layer on disk (same size: a pull's quick check would not notice), and
    // leave a temporary file of an interrupted write.
    let blob = store
        .path()
        .join("blobs/sha256")
        .join(&img.layers[0].digest[7..]);
    let mut bytes = fs::read(&blob).unwrap();
    bytes[10] ^= 1;
    fs::write(&blob, bytes).unwrap();
    // A temporary file of a killed write and a file that is not a blob at all: both reported,
    // and removed only by --fix.
    let temp = store.path().join(".index.json.kci-tmp-999999999");
    fs::write(&temp, b"{").unwrap();
    fs::write(store.path().join("blobs/sha256/not-a-digest"), b"?").unwrap();

    let (code, found) = problems(&root, store.path(), false);
    assert_eq!(code, 1);
    assert!(temp.exists(), "store-check without --fix changes nothing");
    let mut kinds: Vec<&str> = found.iter().map(|p| p["kind"].as_str().unwrap()).collect();
    kinds.sort();
    assert_eq!(
        kinds,
        vec![
            "corrupt-blob",
            "incomplete-image",
            "stray-file",
            "stray-file"
        ],
        "{found:?}"
    );
    let (code, found) = problems(&root, store.path(), true);
    assert_eq!(code, 0, "{found:?}");
    assert!(!temp.exists(), "--fix removes the temporary file");
    assert!(found.iter().all(|p| p["fixed"] == true));
    assert!(!blob.exists());
    assert!(
        store_index(store.path())["manifests"]
            .as_array()
            .unwrap()
            .is_empty()
    );

    // A pull brings the image back.
    let r = pull();
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(blob.exists());
    assert_eq!(problems(&root, store.path(), false), (0, vec![]));
}

#[test]
fn two_pulls_on_the_same_store_at_once_both_finish() {
    let storage = tempfile::tempdir().unwrap();
    let reg = Registry::start(storage.path(), &Front::default());
    let a = image(53, &[3_000_000, 1_000_000], "amd64", false);
    let b = image(54, &[2_000_000], "amd64", false);
    block_on(async {
        let p = Pusher::new(&reg.addr());
        p.image("both/a", "v1", &a).await;
        p.image("both/b", "v1", &b).await;
    });
    let root = Root::new("127.0.0.1 localhost\n", "nameserver 127.0.0.1\n");
    let store = tempfile::tempdir().unwrap();
    let s = store.path().to_str().unwrap();
    let refs = [
        format!("{}/both/a:v1", reg.addr()),
        format!("{}/both/b:v1", reg.addr()),
    ];
    let children: Vec<_> = (0..2)
        .map(|i| {
            agent(&[
                "pull",
                "-q",
                "--root",
                root.arg(),
                "--store",
                s,
                "--http-registry",
                &reg.addr(),
                &refs[0],
                &refs[i],
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
        })
        .collect();
    for c in children {
        let out = c.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(verify_store(store.path()), 4 + 3);
    assert_eq!(
        store_index(store.path())["manifests"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(problems(&root, store.path(), false), (0, vec![]));
}

/// A full disk: a 1 MiB tmpfs as the store, in a private mount namespace (as root).
#[test]
fn a_full_disk_is_a_clear_error_and_leaves_no_partial_blob() {
    if std::env::var_os("KCI_SKIP_MOUNT_TESTS").is_some() {
        return;
    }
    let storage = tempfile::tempdir().unwrap();
    let reg = Registry::start(storage.path(), &Front::default());
    let img = image(55, &[3_000_000], "amd64", false);
    block_on(Pusher::new(&reg.addr()).image("full/app", "v1", &img));
    let root = Root::new("127.0.0.1 localhost\n", "nameserver 127.0.0.1\n");
    let store = tempfile::tempdir().unwrap();
    let s = store.path().to_str().unwrap();
    let report = root.file("report.json");
    let script = format!(
        "mount -t tmpfs -o size=1m tmpfs {s} || exit 90; \
         {bin} pull -q --root {r} --store {s} --report {rep} --http-registry {reg} {reg}/full/app:v1; echo rc=$?; \
         find {s} -type f -printf '%s %p\\n'",
        bin = common::bin(),
        r = root.arg(),
        rep = report.display(),
        reg = reg.addr(),
    );
    let out = run(std::process::Command::new("unshare").args(["-m", "sh", "-c", &script]));
    assert!(
        !out.stderr.contains("Operation not permitted"),
        "needs root: {}",
        out.stderr
    );
    assert_eq!(out.code, 0, "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("rc=4"),
        "{}\n{}",
        out.stdout,
        out.stderr
    );
    let rep: Value = serde_json::from_slice(&fs::read(&report).unwrap()).unwrap();
    let err = rep["images"][0]["error"].as_str().unwrap();
    assert!(
        err.contains("No space left on device") && err.contains("free space"),
        "{err}"
    );
    // The files left on the full tmpfs (listed before the namespace goes): no part of the
    // layer, not in blobs/ and not in ingest/.
    assert!(out.stdout.contains("oci-layout"), "{}", out.stdout);
    assert!(
        !out.stdout.contains(&img.layers[0].digest[7..]),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains("/ingest/"), "{}", out.stdout);
}

/// `kill -9` at many points of `network`: each file is always the old one or the new one.
#[test]
fn kill_9_during_the_network_file_writes_leaves_old_or_new_files() {
    let old_hosts = "127.0.0.1 localhost\n";
    let old_resolv = "nameserver 10.1.0.2\n";
    // A large input, so that the run takes long enough to be interrupted.
    let aliases: Vec<Value> = (0..2000)
        .map(|i| serde_json::json!({"ip": format!("10.{}.{}.{}", i / 65536, (i / 256) % 256, i % 256), "hostnames": [format!("h{i}.example.com")]}))
        .collect();
    let aliases = serde_json::to_string(&aliases).unwrap();
    let dns = r#"{"nameservers":["10.0.0.53"],"searches":["corp.example"]}"#;
    // The expected new files, from an uninterrupted run.
    let reference = Root::new(old_hosts, old_resolv);
    let r = run(&mut agent(&[
        "network",
        "--root",
        reference.arg(),
        "--host-aliases",
        &aliases,
        "--dns-config",
        dns,
    ]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let (new_hosts, new_resolv) = (
        reference.read("etc/hosts"),
        reference.read("etc/resolv.conf"),
    );
    let mut interrupted = 0;
    for delay_us in (0..40).map(|i| i * 150) {
        let root = Root::new(old_hosts, old_resolv);
        let mut child = agent(&[
            "network",
            "--root",
            root.arg(),
            "--host-aliases",
            &aliases,
            "--dns-config",
            dns,
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
        std::thread::sleep(Duration::from_micros(delay_us));
        let _ = child.kill();
        let status = child.wait().unwrap();
        if !status.success() {
            interrupted += 1;
        }
        let hosts = root.read("etc/hosts");
        let resolv = root.read("etc/resolv.conf");
        assert!(
            hosts == old_hosts || hosts == new_hosts,
            "hosts half-written after {delay_us} us"
        );
        assert!(
            resolv == old_resolv || resolv == new_resolv,
            "resolv.conf half-written after {delay_us} us"
        );
        // And a rerun always completes the job.
        let r = run(&mut agent(&[
            "network",
            "--root",
            root.arg(),
            "--host-aliases",
            &aliases,
            "--dns-config",
            dns,
        ]));
        assert_eq!(r.code, 0, "{}", r.stderr);
        assert_eq!(
            (root.read("etc/hosts"), root.read("etc/resolv.conf")),
            (new_hosts.clone(), new_resolv.clone())
        );

        // No temporary file survives the rerun.
        for dir in ["etc", "var/lib/kci/network"] {
            for e in fs::read_dir(root.file(dir)).into_iter().flatten().flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                assert!(
                    !name.contains(".kci-tmp-"),
                    "{dir}/{name} left after {delay_us} us"
                );
            }
        }
    }
    assert!(
        interrupted >= 10,
        "only {interrupted} runs were interrupted"
    );
}
