//! Property tests of the parsers and the merge rules.

use std::fs;
use std::net::IpAddr;
use std::path::Path;

use proptest::prelude::*;

use kci_pull_agent::config::dns::{DnsConfig, DnsOption, merge_dns, parse_dns_config};
use kci_pull_agent::config::hostalias::{HostsEntry, parse_host_aliases};
use kci_pull_agent::config::names::{check_dns1123_subdomain, check_search_domain};
use kci_pull_agent::config::pod::Pod;
use kci_pull_agent::config::{Config, Sources};
use kci_pull_agent::diag::{Notes, Origin};
use kci_pull_agent::netfiles::{self, hosts, resolv};
use kci_pull_agent::oci::platform::Platform;
use kci_pull_agent::registry::policy::{ListKind, Policy, RegistryList};
use kci_pull_agent::registry::reference::Reference;

fn hostname() -> impl Strategy<Value = String> {
    "[a-z0-9]([a-z0-9-]{0,6}[a-z0-9])?(\\.[a-z0-9]([a-z0-9-]{0,6}[a-z0-9])?){0,3}"
}

fn entries() -> impl Strategy<Value = Vec<HostsEntry>> {
    prop::collection::vec(
        (any::<IpAddr>(), prop::collection::vec(hostname(), 1..4)),
        0..5,
    )
    .prop_map(|v| {
        v.into_iter()
            .map(|(ip, hostnames)| HostsEntry { ip, hostnames })
            .collect()
    })
}

fn dns() -> impl Strategy<Value = DnsConfig> {
    (
        prop::collection::vec(any::<IpAddr>(), 0..7),
        prop::collection::vec(hostname(), 0..40),
        prop::collection::vec(
            ("[a-z][a-z0-9-]{0,8}", prop::option::of("[a-z0-9]{1,4}")),
            0..5,
        ),
    )
        .prop_map(|(nameservers, searches, options)| DnsConfig {
            nameservers,
            searches,
            options: options
                .into_iter()
                .map(|(name, value)| DnsOption { name, value })
                .collect(),
        })
}

/// Text of an existing file: printable lines, sometimes without a final newline.
fn file_text() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(
            prop_oneof![
                "[ -~\t]{0,40}",
                "nameserver [0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}",
                "search( [a-z]{1,8}\\.example){1,5}",
                "options( [a-z]{1,6}(:[0-9])?){1,3}",
                "# [ -~]{0,20}",
                "[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}\\.[0-9]{1,3}\t[a-z.]{1,12}",
            ],
            0..8,
        ),
        any::<bool>(),
    )
        .prop_map(|(lines, final_newline)| {
            let mut t = lines.join("\n");
            if final_newline && !t.is_empty() {
                t.push('\n');
            }
            t
        })
}

fn config(hosts: Vec<HostsEntry>, dns: DnsConfig) -> Config {
    Config {
        pod_name: None,
        hostname: None,
        pod_net: None,
        cluster: Default::default(),
        containers: Vec::new(),
        hosts,
        dns,
        policy: Policy::default(),
        images: Vec::new(),
        platform: Platform::host(),
        auth: Default::default(),
    }
}

fn root_with(hosts: &str, resolv: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir_all(dir.path().join("etc")).unwrap();
    fs::write(dir.path().join("etc/hosts"), hosts).unwrap();
    fs::write(dir.path().join("etc/resolv.conf"), resolv).unwrap();
    dir
}

fn network(root: &Path, cfg: &Config) {
    let plan = netfiles::plan(root, cfg, &mut Notes::default()).unwrap();
    netfiles::apply(&plan).unwrap();
}

fn files(root: &Path) -> (String, String) {
    (
        fs::read_to_string(root.join("etc/hosts")).unwrap(),
        fs::read_to_string(root.join("etc/resolv.conf")).unwrap(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Applying the network config twice equals applying it once, and applying A then B equals
    /// applying B alone: nothing from A is left behind.
    #[test]
    fn network_apply_is_idempotent_and_leaves_nothing_stale(
        base_hosts in file_text(), base_resolv in file_text(),
        a_hosts in entries(), a_dns in dns(), b_hosts in entries(), b_dns in dns(),
    ) {
        let a = config(a_hosts, a_dns);
        let b = config(b_hosts, b_dns);

        let r1 = root_with(&base_hosts, &base_resolv);
        network(r1.path(), &a);
        let once = files(r1.path());
        network(r1.path(), &a);
        prop_assert_eq!(&once, &files(r1.path()));
        network(r1.path(), &b);
        let a_then_b = files(r1.path());

        let r2 = root_with(&base_hosts, &base_resolv);
        network(r2.path(), &b);
        prop_assert_eq!(a_then_b, files(r2.path()));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn hosts_render_is_idempotent_and_reversible(base in file_text(), e in entries()) {
        let mut notes = Notes::default();
        let once = hosts::render(&base, &e, &mut notes).unwrap();
        prop_assert_eq!(&hosts::render(&once, &e, &mut notes).unwrap(), &once);
        let removed = hosts::render(&once, &[], &mut notes).unwrap();
        prop_assert_eq!(removed, base);
    }

    /// The merged resolv.conf never has more than 3 nameservers or 32 search domains, however
    /// many each level and the base bring.
    #[test]
    fn merged_resolv_conf_respects_the_limits(base in file_text(), pod in dns(), vk in dns()) {
        let merged = merge_dns(&pod, &vk);
        let out = resolv::render(&resolv::parse(&base), &merged, "base", &mut Notes::default());
        let parsed = resolv::parse(&out);
        prop_assert!(parsed.nameservers.len() <= 3);
        prop_assert!(out.lines().filter(|l| l.starts_with("nameserver")).count() <= 3);
        prop_assert!(parsed.searches.len() <= 32);
        prop_assert!(parsed.searches.join(" ").len() <= 2048);
        prop_assert!(out.lines().filter(|l| l.starts_with("search")).count() <= 1);
        // Injected servers come first.
        let want: Vec<String> = merged.nameservers.iter().take(3).map(|i| i.to_string()).collect();
        prop_assert_eq!(&parsed.nameservers[..want.len()], &want[..]);
    }

    /// Whatever strings arrive as hostnames, search domains or options, anything accepted
    /// lands in the files as valid DNS names on exactly the lines expected: no injection.
    #[test]
    fn every_accepted_name_is_a_valid_dns_name(
        names in prop::collection::vec(prop_oneof![hostname(), any::<String>(), "[a-zA-Z0-9.#\n\t -]{0,12}"], 1..5),
        opt in prop_oneof!["[a-z]{1,6}", any::<String>()],
    ) {
        let json = serde_json::json!([{"ip": "10.0.0.1", "hostnames": names}]).to_string();
        if let Ok(aliases) = parse_host_aliases(&json, &Origin::Env("KCI_HOST_ALIASES")) {
            let e: Vec<HostsEntry> = aliases.into_iter().map(|a| HostsEntry { ip: a.ip, hostnames: a.hostnames }).collect();
            let block = hosts::block(&e);
            prop_assert_eq!(block.lines().count(), 3);
            for name in block.lines().nth(1).unwrap().split('\t').skip(1) {
                prop_assert!(check_dns1123_subdomain(name).is_ok(), "{:?}", name);
            }
        }
        let json = serde_json::json!({"searches": names, "options": [{"name": opt}]}).to_string();
        if let Ok(cfg) = parse_dns_config(&json, &Origin::Env("KCI_DNS_CONFIG")) {
            let out = resolv::render(&resolv::ResolvConf::default(), &cfg, "base", &mut Notes::default());
            let body: Vec<&str> = out.lines().filter(|l| !l.starts_with('#')).collect();
            prop_assert_eq!(body.len(), 2, "{}", out);
            for name in body[0].split(' ').skip(1) {
                prop_assert!(check_search_domain(name).is_ok(), "{:?}", name);
            }
            prop_assert_eq!(body[1].split(' ').count(), 2);
        }
    }

    /// The parsers of hostile input never panic.
    #[test]
    fn parsers_never_panic(s in any::<String>(), t in "[\\[\\]a-zA-Z0-9:./@_#-]{0,40}") {
        for input in [&s, &t] {
            let _ = Reference::parse(input);
            let _ = RegistryList::parse(ListKind::Http, std::slice::from_ref(input), Origin::Flag("--http-registry"), &mut Notes::default());
            let _ = parse_host_aliases(input, &Origin::Env("KCI_HOST_ALIASES"));
            let _ = parse_dns_config(input, &Origin::Env("KCI_DNS_CONFIG"));
            let _ = Pod::parse(input, Path::new("pod.json"), None);
            let _ = resolv::parse(input);
            let _ = hosts::render(input, &[], &mut Notes::default());
            let _ = Config::load(&Sources { images: vec![input.clone()], flag_insecure_registry: Some(vec![input.clone()]), ..Default::default() });
        }
    }

    /// A normalised reference parses to itself.
    #[test]
    fn normalised_references_are_fixed_points(t in "([a-z0-9]{1,5}(\\.[a-z]{1,4})?(:[1-9][0-9]{0,3})?/)?[a-z0-9]{1,6}(/[a-z0-9]{1,6}){0,2}(:[a-zA-Z0-9_][a-zA-Z0-9_.-]{0,8})?") {
        if let Ok(r) = Reference::parse(&t) {
            prop_assert_eq!(Reference::parse(&r.to_string()), Ok(r));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    /// Manifests from a hostile registry: parsing never panics, and a manifest is accepted
    /// exactly when its digests are real ones: a digest that could escape the store directory
    /// never is. (The document's media type is a valid one, so that parsing reaches the
    /// digests; a random media type is refused before them, which once made this test unable
    /// to fail.)
    #[test]
    fn manifest_parsing_never_panics(
        bytes in prop::collection::vec(any::<u8>(), 0..300),
        digest in prop_oneof![
            "[a-z0-9:./]{0,80}",
            "sha256:[0-9a-f]{64}",
            "sha512:[0-9a-f]{128}",
            "sha(256|384|512):[0-9a-f./]{62,130}",
        ],
        media in "[a-z./+-]{0,60}",
        size in any::<i64>(),
        docker in any::<bool>(),
    ) {
        use kci_pull_agent::oci::manifest::{DOCKER_MANIFEST, Document, OCI_MANIFEST, parse};
        let _ = parse(&bytes, None);
        let media_type = if docker { DOCKER_MANIFEST } else { OCI_MANIFEST };
        let doc = serde_json::json!({"schemaVersion": 2, "mediaType": media_type,
            "config": {"mediaType": "x", "digest": digest, "size": size},
            "layers": [{"mediaType": "y", "digest": digest, "size": size}]}).to_string();
        let valid = |d: &str| {
            let hex = |h: &str, n: usize| h.len() == n && h.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
            d.strip_prefix("sha256:").is_some_and(|h| hex(h, 64)) || d.strip_prefix("sha512:").is_some_and(|h| hex(h, 128))
        };
        let parsed = parse(doc.as_bytes(), None);
        match &parsed {
            Ok(Document::Manifest { config, layers, .. }) => {
                for d in std::iter::once(&**config).chain(layers) {
                    prop_assert!(valid(d.digest.as_str()), "accepted {:?}", d.digest);
                    prop_assert!(!d.digest.as_str().contains('/') && !d.digest.as_str().contains(".."));
                }
            }
            Ok(other) => prop_assert!(false, "not a manifest: {other:?}"),
            Err(e) => prop_assert!(!valid(&digest) || size < 0, "refused {digest:?} (size {size}): {e}"),
        }
        let idx = serde_json::json!({"schemaVersion": 2, "manifests": [{"mediaType": media, "digest": digest, "size": size,
            "platform": {"os": "linux", "architecture": media}}]}).to_string();
        let _ = parse(idx.as_bytes(), None);
    }
}
