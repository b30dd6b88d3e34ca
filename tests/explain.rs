//! `explain` through the built binary: the JSON contract of SPEC §6 and the port-exact policy.

mod common;

use common::{agent, run};
use serde_json::{Value, json};

fn explain(args: &[&str]) -> Vec<Value> {
    let mut full = vec!["explain", "--output", "json"];
    full.extend_from_slice(args);
    let r = run(&mut agent(&full));
    assert_eq!(r.code, 0, "{}", r.stderr);
    r.stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

#[test]
fn json_has_the_contract_keys_and_types() {
    let out = explain(&[
        "--http-registry",
        "192.168.1.10:5000",
        "--insecure-registry",
        "harbor.example.com",
        "192.168.1.10:5000/app:v1",
        "harbor.example.com/app:v1",
        "nginx",
    ]);
    assert_eq!(out.len(), 3);
    for o in &out {
        for key in [
            "image",
            "reference",
            "registry",
            "scheme",
            "tls_verify",
            "matched",
        ] {
            assert!(o.get(key).is_some(), "{key} missing in {o}");
        }
    }
    assert_eq!(out[0]["image"], "192.168.1.10:5000/app:v1");
    assert_eq!(out[0]["scheme"], "http");
    assert_eq!(out[0]["tls_verify"], Value::Null);
    assert_eq!(
        out[0]["matched"],
        json!({"list": "http", "entry": "192.168.1.10:5000"})
    );
    assert_eq!(out[1]["scheme"], "https");
    assert_eq!(out[1]["tls_verify"], false);
    assert_eq!(
        out[1]["matched"],
        json!({"list": "insecure", "entry": "harbor.example.com"})
    );
    assert_eq!(out[2]["reference"], "docker.io/library/nginx:latest");
    assert_eq!(out[2]["registry"], "docker.io");
    assert_eq!(out[2]["tls_verify"], true);
    assert_eq!(out[2]["matched"], Value::Null);
}

#[test]
fn adversarial_registries_never_match() {
    let lists = [
        "--http-registry",
        "harbor.example.com, [::1]:5000",
        "--insecure-registry",
        "10.0.0.5:5000",
    ];
    let unmatched = [
        "harbor.example.com.evil.io/app",
        "evil.io/harbor.example.com/app",
        "harbor.example.com:443/app",
        "harbor.example.com:80/app",
        "harbor.example.com:5000/app",
        "evilharbor.example.com/app",
        "[::1]/app",
        "[::2]:5000/app",
        "10.0.0.5/app",
        "10.0.0.50:5000/app",
        "localhost:5000/app",
    ];
    let mut args: Vec<&str> = lists.to_vec();
    args.extend(unmatched);
    for o in explain(&args) {
        assert_eq!(o["matched"], Value::Null, "{o}");
        assert_eq!(o["scheme"], "https", "{o}");
        assert_eq!(o["tls_verify"], true, "{o}");
    }
    let mut args: Vec<&str> = lists.to_vec();
    args.extend([
        "HARBOR.Example.com/app",
        "[0::1]:5000/app@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
        "10.0.0.5:5000/x/y:z",
    ]);
    let out = explain(&args);
    assert_eq!(out[0]["matched"]["entry"], "harbor.example.com");
    assert_eq!(out[1]["matched"]["entry"], "[::1]:5000");
    assert_eq!(
        out[1]["reference"],
        "[::1]:5000/app@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
    );
    assert_eq!(out[2]["matched"]["list"], "insecure");
}

#[test]
fn a_registry_in_both_lists_is_plain_http_with_a_warning() {
    let r = run(&mut agent(&[
        "explain",
        "--output",
        "json",
        "--http-registry",
        "reg.example.com:5000",
        "--insecure-registry",
        "reg.example.com:5000",
        "reg.example.com:5000/app",
    ]));
    assert_eq!(r.code, 0);
    let o: Value = serde_json::from_str(r.stdout.trim()).unwrap();
    assert_eq!(o["scheme"], "http");
    assert_eq!(o["matched"]["list"], "http");
    assert!(
        r.stderr.contains("WARN") && r.stderr.contains("both"),
        "{}",
        r.stderr
    );
}

#[test]
fn text_output_points_out_port_near_misses() {
    let r = run(&mut agent(&[
        "explain",
        "--insecure-registry",
        "harbor.example.com",
        "harbor.example.com:8443/app:v1",
    ]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stdout.contains("registry   harbor.example.com:8443"),
        "{}",
        r.stdout
    );
    assert!(r.stdout.contains("certificate verified"), "{}", r.stdout);
    assert!(r.stdout.contains("port-exact"), "{}", r.stdout);
}

#[test]
fn repeated_flags_accumulate_and_an_empty_flag_clears_the_annotation() {
    let out = explain(&[
        "--http-registry",
        "a.example",
        "--http-registry",
        "b.example:5000",
        "a.example/x",
        "b.example:5000/y",
    ]);
    assert!(out.iter().all(|o| o["scheme"] == "http"));
    let dir = tempfile::tempdir().unwrap();
    let pod = dir.path().join("pod.json");
    std::fs::write(
        &pod,
        r#"{"metadata":{"annotations":{"k8s.ksyun.com/kci-http-registry":"a.example"}},"spec":{"containers":[{"name":"c","image":"a.example/x"}]}}"#,
    )
    .unwrap();
    let p = pod.to_str().unwrap();
    assert_eq!(explain(&["--spec", p])[0]["scheme"], "http");
    assert_eq!(
        explain(&["--spec", p, "--http-registry", ""])[0]["scheme"],
        "https"
    );
}
