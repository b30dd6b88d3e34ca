//! `network` and input validation, driven through the built binary against temporary roots.

mod common;

use std::fs;
use std::os::unix::fs::{PermissionsExt, symlink};

use common::{Root, agent, run};

const HOSTS: &str = "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost\n";
const RESOLV: &str = "nameserver 10.1.0.2\nsearch ec2.internal\n";

fn network(root: &Root, args: &[&str]) -> common::Run {
    let mut full = vec!["network", "--root", root.arg()];
    full.extend_from_slice(args);
    run(&mut agent(&full))
}

#[test]
fn writes_both_files_and_reruns_are_byte_identical() {
    let root = Root::new(HOSTS, RESOLV);
    let args = [
        "--host-aliases",
        r#"[{"ip":"10.0.0.5","hostnames":["reg.example.com"]}]"#,
        "--dns-config",
        r#"{"nameservers":["10.0.0.53"],"searches":["corp.example"],"options":[{"name":"ndots","value":"2"}]}"#,
    ];
    let r = network(&root, &args);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let hosts = root.read("etc/hosts");
    assert!(hosts.contains("10.0.0.5\treg.example.com\n"), "{hosts}");
    assert!(hosts.ends_with(HOSTS), "existing lines kept: {hosts}");
    let resolv = root.read("etc/resolv.conf");
    let body: Vec<&str> = resolv.lines().filter(|l| !l.starts_with('#')).collect();
    assert_eq!(
        body,
        vec![
            "nameserver 10.0.0.53",
            "nameserver 10.1.0.2",
            "search corp.example ec2.internal",
            "options ndots:2"
        ]
    );
    for f in ["etc/hosts", "etc/resolv.conf"] {
        let mode = fs::metadata(root.file(f)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644, "{f}");
    }
    assert_eq!(root.read("var/lib/kci/network/resolv.conf.base"), RESOLV);
    assert_eq!(root.read("var/lib/kci/network/resolv.conf.orig"), RESOLV);

    let before = root.snapshot();
    let mtime = fs::metadata(root.file("etc/hosts"))
        .unwrap()
        .modified()
        .unwrap();
    let r = network(&root, &args);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(before, root.snapshot());
    assert_eq!(
        mtime,
        fs::metadata(root.file("etc/hosts"))
            .unwrap()
            .modified()
            .unwrap()
    );
}

#[test]
fn new_input_leaves_no_stale_entries_and_empty_input_restores_the_originals() {
    let root = Root::new(HOSTS, RESOLV);
    let first = [
        "--host-aliases",
        r#"[{"ip":"10.0.0.5","hostnames":["old.example.com"]}]"#,
        "--dns-config",
        r#"{"nameservers":["10.0.0.53"],"searches":["old.example"],"options":[{"name":"rotate"}]}"#,
    ];
    assert_eq!(network(&root, &first).code, 0);
    let second = [
        "--host-aliases",
        r#"[{"ip":"10.0.0.6","hostnames":["new.example.com"]}]"#,
        "--dns-config",
        r#"{"nameservers":["10.0.0.54"]}"#,
    ];
    let r = network(&root, &second);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let hosts = root.read("etc/hosts");
    let resolv = root.read("etc/resolv.conf");
    for stale in ["old.example", "10.0.0.5\t", "10.0.0.53\n", "rotate"] {
        assert!(
            !hosts.contains(stale) && !resolv.contains(stale),
            "{stale}\n{hosts}\n{resolv}"
        );
    }
    assert!(resolv.contains("nameserver 10.0.0.54\nnameserver 10.1.0.2\nsearch ec2.internal\n"));

    // No aliases and no DNS config any more: both files are exactly what they were.
    let r = network(&root, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(root.read("etc/hosts"), HOSTS);
    assert_eq!(root.read("etc/resolv.conf"), RESOLV);
}

#[test]
fn a_resolv_conf_rewritten_by_someone_else_becomes_the_base() {
    let root = Root::new(HOSTS, RESOLV);
    let dns = ["--dns-config", r#"{"nameservers":["10.0.0.53"]}"#];
    assert_eq!(network(&root, &dns).code, 0);
    // A DHCP client renews its lease and writes its own file.
    let dhcp = "nameserver 10.9.0.2\nsearch new-vpc.internal\n";
    fs::write(root.file("etc/resolv.conf"), dhcp).unwrap();
    let r = network(&root, &dns);
    assert_eq!(r.code, 0, "{}", r.stderr);
    let resolv = root.read("etc/resolv.conf");
    assert!(
        resolv.contains("nameserver 10.0.0.53\nnameserver 10.9.0.2\nsearch new-vpc.internal\n"),
        "{resolv}"
    );
    assert!(!resolv.contains("10.1.0.2"));
    assert_eq!(root.read("var/lib/kci/network/resolv.conf.base"), dhcp);
    assert_eq!(
        root.read("var/lib/kci/network/resolv.conf.orig"),
        RESOLV,
        "the first original is kept"
    );
}

#[test]
fn dry_run_prints_and_writes_nothing() {
    let root = Root::new(HOSTS, RESOLV);
    let before = root.snapshot();
    let r = network(
        &root,
        &[
            "--dry-run",
            "--host-aliases",
            r#"[{"ip":"10.0.0.5","hostnames":["reg.example.com"]}]"#,
            "--dns-config",
            r#"{"nameservers":["10.0.0.53"]}"#,
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(before, root.snapshot());
    assert!(r.stdout.contains("etc/hosts (would write)"), "{}", r.stdout);
    assert!(r.stdout.contains("10.0.0.5\treg.example.com"));
    assert!(
        r.stdout
            .contains("nameserver 10.0.0.53\nnameserver 10.1.0.2")
    );
}

#[test]
fn invalid_input_exits_2_and_writes_nothing() {
    let pod_with = |key: &str, value: &str| {
        serde_json::json!({"metadata": {"annotations": {key: value}},
                           "spec": {"containers": [{"name": "a", "image": "nginx"}]}})
        .to_string()
    };
    // (environment, flags, pod file, what the error must name)
    type Case<'a> = (Vec<(&'a str, String)>, Vec<String>, Option<String>, &'a str);
    let cases: Vec<Case> = vec![
        (
            vec![("KCI_HOST_ALIASES", "{not json".into())],
            vec![],
            None,
            "environment variable KCI_HOST_ALIASES",
        ),
        (
            vec![("KCI_DNS_CONFIG", r#"{"nameservers":["8.8.8.8.8"]}"#.into())],
            vec![],
            None,
            "8.8.8.8.8",
        ),
        (
            vec![],
            vec![
                "--host-aliases".into(),
                r#"[{"ip":"10.0.0.1","hostnames":["ok.example","bad\n6.6.6.6 evil"]}]"#.into(),
            ],
            None,
            "newline",
        ),
        (
            vec![],
            vec![
                "--host-aliases".into(),
                r#"[{"ip":"10.0.0.1","hostnames":["bad#comment"]}]"#.into(),
            ],
            None,
            "'#'",
        ),
        (
            vec![],
            vec!["--dns-config".into(), r#"{"searches":["a b"]}"#.into()],
            None,
            "flag --dns-config",
        ),
        (
            vec![],
            vec!["--http-registry".into(), "reg.example.com/team".into()],
            None,
            "path",
        ),
        (
            vec![],
            vec!["--insecure-registry".into(), "reg.example.com:99999".into()],
            None,
            "port",
        ),
        (
            vec![],
            vec![],
            Some(pod_with(
                "k8s.ksyun.com/kci-host-aliases",
                r#"[{"ip":"x"}]"#,
            )),
            "annotation k8s.ksyun.com/kci-host-aliases",
        ),
        (
            vec![],
            vec![],
            Some(pod_with(
                "k8s.ksyun.com/kci-dns-config",
                r#"{"options":[{"name":""}]}"#,
            )),
            "annotation k8s.ksyun.com/kci-dns-config",
        ),
        (
            vec![],
            vec![],
            Some(pod_with(
                "k8s.ksyun.com/kci-http-registry",
                "ok.example, *.corp.example",
            )),
            "annotation k8s.ksyun.com/kci-http-registry",
        ),
        (
            vec![],
            vec![],
            Some(pod_with(
                "k8s.ksyun.com/kci-insecure-registry",
                "ok.example:443/x",
            )),
            "annotation k8s.ksyun.com/kci-insecure-registry",
        ),
        (
            vec![],
            vec![],
            Some(r#"{"spec":{"containers":[{"name":"a","image":"Upper/Case"}]}}"#.into()),
            "spec.containers[0] (a)",
        ),
        (vec![], vec![], Some("{\"metadata\": 7}".into()), "pod file"),
        (
            vec![],
            vec!["--platform".into(), "linux".into()],
            None,
            "--platform",
        ),
    ];
    for (env, flags, pod, want) in cases {
        let root = Root::new(HOSTS, RESOLV);
        let pod_path = root.file("pod.json");
        if let Some(p) = &pod {
            fs::write(&pod_path, p).unwrap();
        }
        // Valid values in the other inputs, so that the bad one is what stops the run.
        let mut args: Vec<String> = vec!["network".into(), "--root".into(), root.arg().into()];
        if pod.is_some() {
            args.extend(["--spec".into(), pod_path.to_str().unwrap().into()]);
        }
        args.extend(flags.clone());
        let before = root.snapshot();
        let mut cmd = agent(&args.iter().map(String::as_str).collect::<Vec<_>>());
        cmd.env(
            "KCI_HOST_ALIASES",
            r#"[{"ip":"10.0.0.9","hostnames":["vk.example"]}]"#,
        );
        cmd.env("KCI_DNS_CONFIG", r#"{"nameservers":["10.0.0.53"]}"#);
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
        let r = run(&mut cmd);
        assert_eq!(r.code, 2, "{env:?} {flags:?} {pod:?}: {}", r.stderr);
        assert!(r.stderr.contains(want), "want {want:?} in: {}", r.stderr);
        assert!(r.stderr.contains("nothing was written"), "{}", r.stderr);
        assert_eq!(before, root.snapshot(), "{env:?} {flags:?}: files changed");

        // explain validates the same input.
        args[0] = "explain".into();
        let mut cmd = agent(&args.iter().map(String::as_str).collect::<Vec<_>>());
        cmd.arg("busybox");
        cmd.envs(env.iter().map(|(k, v)| (k, v)));
        let r = run(&mut cmd);
        assert_eq!(r.code, 2, "explain {env:?} {flags:?}: {}", r.stderr);
    }
}

#[test]
fn missing_spec_file_and_usage_errors_exit_2() {
    let root = Root::new(HOSTS, RESOLV);
    let r = run(&mut agent(&[
        "network",
        "--root",
        root.arg(),
        "--spec",
        "/nonexistent/pod.json",
    ]));
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("/nonexistent/pod.json"), "{}", r.stderr);
    assert_eq!(run(&mut agent(&["network", "--bogus"])).code, 2);
    assert_eq!(run(&mut agent(&["frobnicate"])).code, 2);
    let r = run(&mut agent(&["explain"]));
    assert_eq!(r.code, 2);
    assert!(r.stderr.contains("no images"), "{}", r.stderr);
}

#[test]
fn a_hand_broken_managed_block_is_refused_with_exit_3() {
    let broken = "127.0.0.1 localhost\n# BEGIN kci-pull-agent host aliases (managed; edits inside are lost)\n10.0.0.1 x\n";
    let root = Root::new(broken, RESOLV);
    let before = root.snapshot();
    let r = network(
        &root,
        &[
            "--host-aliases",
            r#"[{"ip":"10.0.0.5","hostnames":["reg.example.com"]}]"#,
            "--dns-config",
            r#"{"nameservers":["10.0.0.53"]}"#,
        ],
    );
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(r.stderr.contains("not terminated"), "{}", r.stderr);
    assert_eq!(
        before,
        root.snapshot(),
        "resolv.conf must not be written either"
    );
}

#[test]
fn a_symlinked_resolv_conf_is_replaced_by_a_regular_file() {
    let root = Root::new(HOSTS, "");
    let stub_dir = root.file("run/systemd/resolve");
    fs::create_dir_all(&stub_dir).unwrap();
    let stub = "nameserver 127.0.0.53\noptions edns0 trust-ad\n";
    fs::write(stub_dir.join("stub-resolv.conf"), stub).unwrap();
    fs::remove_file(root.file("etc/resolv.conf")).unwrap();
    symlink(
        "/run/systemd/resolve/stub-resolv.conf",
        root.file("etc/resolv.conf"),
    )
    .unwrap();

    let r = network(&root, &["--dns-config", r#"{"nameservers":["10.0.0.53"]}"#]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("symlink"), "{}", r.stderr);
    let meta = fs::symlink_metadata(root.file("etc/resolv.conf")).unwrap();
    assert!(meta.file_type().is_file());
    let resolv = root.read("etc/resolv.conf");
    assert!(
        resolv.contains("nameserver 10.0.0.53\nnameserver 127.0.0.53\n"),
        "{resolv}"
    );
    assert!(resolv.contains("options edns0 trust-ad"), "{resolv}");
    assert_eq!(
        fs::read_to_string(stub_dir.join("stub-resolv.conf")).unwrap(),
        stub,
        "target untouched"
    );
    assert_eq!(
        root.read("var/lib/kci/network/resolv.conf.symlink"),
        "/run/systemd/resolve/stub-resolv.conf\n"
    );
}

#[test]
fn json_logs_are_one_object_per_line() {
    let root = Root::new(HOSTS, RESOLV);
    let r = network(
        &root,
        &[
            "--log-format",
            "json",
            "--http-registry",
            "http://reg.example.com",
            "--dns-config",
            r#"{"nameservers":["10.0.0.53"]}"#,
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    let lines: Vec<serde_json::Value> = r
        .stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    assert!(
        lines
            .iter()
            .any(|l| l["level"] == "WARN" && l["message"].as_str().unwrap().contains("scheme"))
    );
    let r = network(&root, &["--log-format", "json", "--dns-config", "[]"]);
    assert_eq!(r.code, 2);
    let last: serde_json::Value = serde_json::from_str(r.stderr.lines().last().unwrap()).unwrap();
    assert_eq!(last["level"], "ERROR");
    assert_eq!(last["exit_code"], 2);
}
