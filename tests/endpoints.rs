//! `explain` and `pull` take their endpoints from the same function: what `explain` prints
//! (hosts in order, scheme, certificate verification, near misses) is what `pull` does.

mod common;

use std::fs;

use common::fault::{Fault, FaultEnv, FaultServer, rule};
use common::images::image;
use common::registry::Pki;
use common::{Root, agent, pull_report, run};
use serde_json::Value;

fn explain(root: &Root, args: &[&str]) -> Value {
    let mut full = vec!["explain", "--root", root.arg(), "--output", "json"];
    full.extend_from_slice(args);
    let r = run(&mut agent(&full));
    assert_eq!(r.code, 0, "{}", r.stderr);
    serde_json::from_str(r.stdout.trim()).unwrap()
}

/// Mirrors then the origin: the hosts `explain` lists are the hosts `pull` contacts, in that
/// order.
#[test]
fn pull_contacts_the_hosts_explain_lists_in_its_order() {
    let e = FaultEnv::start(image(71, &[50_000], "amd64", false), &["agree/app"]);
    // A dead mirror (every request 503), a working one, and the origin behind a recorder.
    let dead = e.front(vec![rule(
        "/v2/",
        Fault::Status {
            status: 503,
            retry_after: None,
        },
        1000,
    )]);
    let good = e.front(vec![]);
    let origin = e.front(vec![]);
    let reg = origin.addr();
    let dir = e.root.file(&format!("etc/kci/certs.d/{reg}"));
    fs::create_dir_all(&dir).unwrap();
    fs::write(
        dir.join("hosts.toml"),
        format!(
            "[host.\"http://{}\"]\n[host.\"http://{}\"]\ncapabilities = [\"pull\"]\n",
            dead.addr(),
            good.addr()
        ),
    )
    .unwrap();
    let image_ref = format!("{reg}/agree/app:v1");
    let x = explain(&e.root, &["--http-registry", &reg, &image_ref]);
    let listed: Vec<String> = x["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["url"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        listed,
        vec![
            format!("http://{}/v2", dead.addr()),
            format!("http://{}/v2", good.addr()),
            format!("http://{reg}/v2"),
        ]
    );
    assert_eq!(x["hosts"][1]["capabilities"], serde_json::json!(["pull"]));

    let store = tempfile::tempdir().unwrap();
    let p = pull_report(
        &e.root,
        store.path(),
        &["--http-registry", &reg, &image_ref],
    );
    assert_eq!(p.code, 0, "{}", p.stderr);
    // The tag is resolved by a host allowed to (the dead mirror, then the origin: the good
    // mirror may not resolve), the blobs come from the first host that delivers them.
    let first = |f: &FaultServer| f.seen().first().map(|s| s.at);
    let (d, g, o) = (first(&dead), first(&good), first(&origin));
    assert!(d.is_some() && o.is_some(), "both resolvers were asked");
    assert!(d < o, "the mirror listed first was asked first");
    assert!(g.is_some(), "the blobs were asked of the second mirror");
    assert_eq!(p.report["images"][0]["served_by"], good.addr().as_str());
}

/// Plain, insecure, verified and a near miss: the scheme and verification `explain` prints are
/// what `pull` does, and the near miss `explain` notes is the hint of the pull's failure.
#[test]
fn scheme_verification_and_near_misses_agree() {
    let e = FaultEnv::start(image(72, &[20_000], "amd64", false), &["agree/app"]);
    let pki = Pki::new();
    let tls = FaultServer::start(
        &e.registry.addr(),
        vec![],
        None,
        Some(pki.self_signed("agree", &["127.0.0.1"])),
    );
    let plain = e.front(vec![]);
    let store = tempfile::tempdir().unwrap();
    let case = |list: &str, entry: &str, server: &FaultServer| {
        let image_ref = format!("{}/agree/app:v1", server.addr());
        let x = explain(&e.root, &[list, entry, &image_ref]);
        let before = server.seen().len();
        let p = pull_report(&e.root, store.path(), &[list, entry, &image_ref]);
        let served = server.seen().len() > before;
        (x, p, served)
    };

    // Plain HTTP: listed in kci-http-registry.
    let (x, p, served) = case("--http-registry", &plain.addr(), &plain);
    assert_eq!(
        (x["scheme"].as_str(), x["tls_verify"].is_null()),
        (Some("http"), true)
    );
    assert_eq!(p.code, 0, "{}", p.stderr);
    assert!(served);
    assert_eq!(p.report["images"][0]["transport"], "http");

    // HTTPS without verification: listed in kci-insecure-registry; a self-signed certificate
    // is accepted.
    let (x, p, served) = case("--insecure-registry", &tls.addr(), &tls);
    assert_eq!(
        (x["scheme"].as_str(), x["tls_verify"].as_bool()),
        (Some("https"), Some(false))
    );
    assert_eq!(p.code, 0, "{}", p.stderr);
    assert!(served);
    assert_eq!(p.report["images"][0]["transport"], "https-insecure");

    // Verified HTTPS, with a near miss: the insecure list names the host with another port.
    let near = format!("127.0.0.1:{}", tls.port.wrapping_add(1));
    let (x, p, served) = case("--insecure-registry", &near, &tls);
    assert_eq!(
        (x["scheme"].as_str(), x["tls_verify"].as_bool()),
        (Some("https"), Some(true))
    );
    let note = x["notes"][0].as_str().unwrap().to_string();
    assert!(note.contains("port-exact"), "{note}");
    assert_eq!(p.code, 4);
    assert!(!served, "no request went over an unverified connection");
    let err = p.report["images"][0]["error"].as_str().unwrap();
    assert!(err.contains("TLS certificate"), "{err}");
    assert!(
        err.contains(&note),
        "the pull's hint is explain's note: {err}"
    );
    assert_eq!(p.report["images"][0]["transport"], "https");
}
