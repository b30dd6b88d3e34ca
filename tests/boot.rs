//! `boot` end to end against real registries, and the systemd unit.

mod common;

use std::fs;

use common::images::{Pusher, block_on, image};
use common::registry::{Front, Pki, Registry};
use common::{Root, agent, run, verify_store};
use serde_json::{Value, json};

/// An HTTP registry and a self-signed HTTPS registry on one storage, seeded with two images.
struct Demo {
    _storage: tempfile::TempDir,
    http: Registry,
    tls: Registry,
    _pki: Pki,
}

fn demo() -> Demo {
    let storage = tempfile::tempdir().unwrap();
    let http = Registry::start(storage.path(), &Front::default());
    let pki = Pki::new();
    let cert = pki.self_signed("demo", &["demo-registry.internal"]);
    let tls = Registry::start(
        storage.path(),
        &Front {
            tls: Some(cert),
            ..Default::default()
        },
    );
    block_on(async {
        let p = Pusher::new(&http.addr());
        p.image("demo/init", "v1", &image(21, &[20_000], "amd64", false))
            .await;
        p.image(
            "demo/app",
            "v1",
            &image(22, &[40_000, 3_000], "amd64", true),
        )
        .await;
    });
    Demo {
        _storage: storage,
        http,
        tls,
        _pki: pki,
    }
}

fn pod(d: &Demo, app_tag: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "demo", "namespace": "default", "annotations": {
            "k8s.ksyun.com/kci-host-aliases": json!([{"ip": "127.0.0.1", "hostnames": ["demo-registry.internal"]}]).to_string(),
            "k8s.ksyun.com/kci-dns-config": json!({"searches": ["demo.internal"], "options": [{"name": "ndots", "value": "2"}]}).to_string(),
            "k8s.ksyun.com/kci-http-registry": d.http.addr(),
            "k8s.ksyun.com/kci-insecure-registry": format!("demo-registry.internal:{}", d.tls.port),
        }},
        "spec": {
            "initContainers": [{"name": "init", "image": format!("{}/demo/init:v1", d.http.addr())}],
            "containers": [
                {"name": "app", "image": format!("demo-registry.internal:{}/demo/app:{app_tag}", d.tls.port)},
                {"name": "app-again", "image": format!("demo-registry.internal:{}/demo/app:{app_tag}", d.tls.port)},
            ],
            "ephemeralContainers": [{"name": "debug", "image": format!("{}/demo/init:v1", d.http.addr())}],
        }
    })
}

fn boot(root: &Root, pod: &Value, extra: &[&str]) -> common::Run {
    fs::create_dir_all(root.file("run/kci")).unwrap();
    fs::write(root.file("run/kci/pod.json"), pod.to_string()).unwrap();
    let mut args = vec!["boot", "--root", root.arg()];
    args.extend_from_slice(extra);
    let mut cmd = agent(&args);
    cmd.env("KCI_DNS_CONFIG", r#"{"nameservers":["10.0.0.53"]}"#);
    run(&mut cmd)
}

fn report(root: &Root) -> Value {
    serde_json::from_slice(&fs::read(root.file("run/kci/pull-report.json")).unwrap()).unwrap()
}

#[test]
fn boot_writes_the_network_files_then_pulls_every_image_through_them() {
    let d = demo();
    let root = Root::new("127.0.0.1\tlocalhost\n", "nameserver 127.0.0.1\n");
    let r = boot(&root, &pod(&d, "v1"), &["--log-format", "json"]);
    assert_eq!(r.code, 0, "{}", r.stderr);

    let hosts = root.read("etc/hosts");
    assert!(
        hosts.contains("127.0.0.1\tdemo-registry.internal\n"),
        "{hosts}"
    );
    let resolv = root.read("etc/resolv.conf");
    assert!(
        resolv.contains(
            "nameserver 10.0.0.53\nnameserver 127.0.0.1\nsearch demo.internal\noptions ndots:2\n"
        ),
        "{resolv}"
    );

    let rep = report(&root);
    let images = rep["images"].as_array().unwrap();
    assert_eq!(images.len(), 2, "distinct images only: {rep}");
    assert_eq!(images[0]["transport"], "http");
    assert_eq!(images[1]["transport"], "https-insecure");
    assert!(images.iter().all(|i| i["status"] == "pulled"), "{rep}");
    assert_eq!(rep["totals"]["failed"], 0);
    let files: Vec<&str> = rep["network"]["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["action"].as_str().unwrap())
        .collect();
    assert_eq!(files, vec!["written", "written"]);
    assert_eq!(
        verify_store(&root.file("var/lib/kci/images")),
        3 + 4,
        "two manifests, two configs, three layers"
    );

    // Journal-friendly logs: one JSON object per line, with the image fields.
    let lines: Vec<Value> = r
        .stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let pulled: Vec<&Value> = lines.iter().filter(|l| l["status"] == "pulled").collect();
    assert_eq!(pulled.len(), 2);
    for l in pulled {
        for k in [
            "level", "message", "image", "registry", "digest", "bytes", "duration",
        ] {
            assert!(l.get(k).is_some(), "{k} missing: {l}");
        }
    }
    let summary = lines.last().unwrap();
    assert!(
        summary["message"]
            .as_str()
            .unwrap()
            .contains("2 image(s): 2 pulled"),
        "{summary}"
    );

    // A second boot changes nothing and finds everything present.
    let r = boot(&root, &pod(&d, "v1"), &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let rep = report(&root);
    assert!(
        rep["images"]
            .as_array()
            .unwrap()
            .iter()
            .all(|i| i["status"] == "present"),
        "{rep}"
    );
    assert_eq!(rep["totals"]["bytes"], 0);
}

#[test]
fn a_missing_tag_fails_that_image_only_with_exit_4() {
    let d = demo();
    let root = Root::new("127.0.0.1\tlocalhost\n", "nameserver 127.0.0.1\n");
    let r = boot(&root, &pod(&d, "no-such-tag"), &[]);
    assert_eq!(r.code, 4, "{}", r.stderr);
    let rep = report(&root);
    let images = rep["images"].as_array().unwrap();
    assert_eq!(images[0]["status"], "pulled");
    assert_eq!(images[1]["status"], "failed");
    let err = images[1]["error"].as_str().unwrap();
    assert!(err.contains("no-such-tag") && err.contains("404"), "{err}");
    assert_eq!(rep["totals"]["failed"], 1);
    assert!(r.stderr.contains("1 failed"), "{}", r.stderr);
}

#[test]
fn a_bad_annotation_exits_2_and_touches_nothing() {
    let d = demo();
    let root = Root::new("127.0.0.1\tlocalhost\n", "nameserver 127.0.0.1\n");
    let mut p = pod(&d, "v1");
    p["metadata"]["annotations"]["k8s.ksyun.com/kci-insecure-registry"] =
        json!("demo-registry.internal:99999");
    fs::create_dir_all(root.file("run/kci")).unwrap();
    fs::write(root.file("run/kci/pod.json"), p.to_string()).unwrap();
    let before = root.snapshot();
    let r = run(&mut agent(&["boot", "--root", root.arg()]));
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("k8s.ksyun.com/kci-insecure-registry"),
        "{}",
        r.stderr
    );
    assert_eq!(
        before,
        root.snapshot(),
        "hosts, resolv.conf, store and report untouched"
    );
}

#[test]
fn boot_without_a_pod_file_exits_2() {
    let root = Root::new("", "");
    let r = run(&mut agent(&["boot", "--root", root.arg()]));
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("run/kci/pod.json"), "{}", r.stderr);
}

#[test]
fn the_systemd_unit_verifies() {
    let unit = fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/kci-pull-agent.service"
    ))
    .unwrap();
    for want in [
        "Type=oneshot",
        "RemainAfterExit=yes",
        "After=network-online.target",
        "EnvironmentFile=-/etc/kci/agent.env",
        "ProtectSystem=strict",
        "ReadWritePaths=/etc/hosts /etc/resolv.conf",
        // Mounts made inside the sandbox's mount namespace are invisible outside it.
        "--no-mount",
        "ExecStartPost=+/usr/bin/kci-pull-agent mount-bundles",
    ] {
        assert!(unit.contains(want), "{want}");
    }
    // The agent's own deadline ends the run (and writes the report) before systemd kills it.
    let number_after = |key: &str| -> u64 {
        let line = unit
            .lines()
            .find(|l| !l.starts_with('#') && l.contains(key))
            .unwrap_or_else(|| panic!("{key} in the unit"));
        let rest = &line[line.find(key).unwrap() + key.len()..];
        rest.trim_start_matches([' ', '='])
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let (deadline, timeout) = (number_after("--deadline"), number_after("TimeoutStartSec"));
    assert!(
        deadline + 30 <= timeout,
        "--deadline {deadline} must end well before TimeoutStartSec={timeout}"
    );
    verify_unit("kci-pull-agent.service");
}

/// `systemd-analyze verify` of one of the project's units, next to the others, without a
/// warning about it. systemd-analyze checks that ExecStart exists: the units are pointed at
/// the binary under test.
fn verify_unit(name: &str) {
    let dir = tempfile::tempdir().unwrap();
    for unit in ["kci-pull-agent.service", "kci-layer-flush.service"] {
        let text = fs::read_to_string(format!("{}/systemd/{unit}", env!("CARGO_MANIFEST_DIR")))
            .unwrap()
            .replace("/usr/bin/kci-pull-agent", &common::bin());
        fs::write(dir.path().join(unit), text).unwrap();
    }
    let out = std::process::Command::new("systemd-analyze")
        .arg("verify")
        .arg(dir.path().join(name))
        .output()
        .expect("systemd-analyze is missing: run scripts/setup.sh");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        !stderr.contains(&format!("{name}:")),
        "warnings about the unit: {stderr}"
    );
}

#[test]
fn the_layer_flush_unit_verifies_and_runs_after_boot() {
    let unit = fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/kci-layer-flush.service"
    ))
    .unwrap();
    for want in [
        "Type=oneshot",
        "After=kci-pull-agent.service",
        "ExecStart=/usr/bin/kci-pull-agent flush-layers",
        "StateDirectory=kci",
    ] {
        assert!(unit.contains(want), "{want}");
    }
    verify_unit("kci-layer-flush.service");
}

#[test]
fn a_network_file_that_cannot_be_written_is_exit_3_with_a_report() {
    let d = demo();
    // A hand-broken managed block: the agent refuses to guess and does not pull.
    let root = Root::new(
        "127.0.0.1\tlocalhost\n# BEGIN kci-pull-agent host aliases (managed; edits inside are lost)\n",
        "nameserver 127.0.0.1\n",
    );
    let r = boot(&root, &pod(&d, "v1"), &[]);
    assert_eq!(r.code, 3, "{}", r.stderr);
    let rep = report(&root);
    assert!(
        rep["network"]["error"]
            .as_str()
            .unwrap()
            .contains("not terminated"),
        "{rep}"
    );
    assert_eq!(rep["images"].as_array().unwrap().len(), 0);
    assert!(!root.file("var/lib/kci/images/index.json").exists());
}

#[test]
fn relative_paths_are_relative_to_the_working_directory() {
    let root = Root::new("127.0.0.1\tlocalhost\n", "nameserver 127.0.0.1\n");
    fs::write(
        root.file("pod.json"),
        json!({"metadata": {"annotations": {"k8s.ksyun.com/kci-host-aliases":
            json!([{"ip": "10.0.0.5", "hostnames": ["reg.example.com"]}]).to_string()}}})
        .to_string(),
    )
    .unwrap();
    let mut cmd = agent(&[
        "boot",
        "--root",
        ".",
        "--spec",
        "pod.json",
        "--report",
        "report.json",
        "--store",
        "store",
    ]);
    cmd.current_dir(root.path());
    let r = run(&mut cmd);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let rep: Value = serde_json::from_slice(&fs::read(root.file("report.json")).unwrap()).unwrap();
    assert_eq!(rep["totals"]["images"], 0);
    assert!(root.read("etc/hosts").contains("10.0.0.5\treg.example.com"));
}

/// SPEC §11: every command that takes `--root` and finds no such directory exits 2, naming the
/// flag, and creates nothing (before, `flush-layers` and `mount-bundles` exited 0).
#[test]
fn a_missing_root_is_exit_2_and_nothing_is_created() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("no-such-root");
    let m = missing.to_str().unwrap();
    for args in [
        vec!["boot", "--root", m],
        vec!["network", "--root", m],
        vec!["pull", "--root", m, "127.0.0.1:1/a/b:c"],
        vec!["prepare", "--root", m],
        vec!["mount-bundles", "--root", m],
        vec!["flush-layers", "--root", m],
        vec!["store-check", "--root", m],
        vec!["explain", "--root", m, "busybox"],
    ] {
        let r = run(&mut agent(&args));
        assert_eq!(r.code, 2, "{args:?}: {}", r.stderr);
        assert!(r.stderr.contains("--root"), "{args:?}: {}", r.stderr);
        assert!(!missing.exists(), "{args:?} created the root");
    }
}
