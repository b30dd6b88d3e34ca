//! Kubernetes HostAlias lists: parsing, validation, and the two-level merge.

use std::collections::HashMap;
use std::net::IpAddr;

use serde::Deserialize;

use super::names::check_dns1123_subdomain;
use crate::diag::{InputError, Notes, Origin};

/// One validated HostAlias.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostAlias {
    pub ip: IpAddr,
    pub hostnames: Vec<String>,
}

/// One line of the managed hosts block: an address and the names that resolve to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostsEntry {
    pub ip: IpAddr,
    pub hostnames: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct HostAliasJson {
    ip: Option<String>,
    hostnames: Option<Vec<String>>,
}

/// Parses a JSON array of Kubernetes HostAlias objects and validates it as the API server would.
/// Empty (or all-whitespace) text is an empty list.
pub fn parse_host_aliases(text: &str, origin: &Origin) -> Result<Vec<HostAlias>, InputError> {
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    let raw: Vec<HostAliasJson> = serde_json::from_str(text).map_err(|e| {
        InputError::new(
            origin.clone(),
            format!(
                "not a JSON array of HostAlias objects ({e}); expected \
                 [{{\"ip\":\"10.0.0.5\",\"hostnames\":[\"reg.example.com\"]}}]"
            ),
        )
    })?;
    raw.into_iter()
        .enumerate()
        .map(|(i, alias)| {
            let ip_text = alias.ip.unwrap_or_default();
            let ip: IpAddr = ip_text.parse().map_err(|_| {
                InputError::new(
                    origin.clone(),
                    format!("entry {i}: ip {ip_text:?} is not a valid IPv4 or IPv6 address"),
                )
            })?;
            let hostnames = alias.hostnames.unwrap_or_default();
            for (j, name) in hostnames.iter().enumerate() {
                check_dns1123_subdomain(name).map_err(|why| {
                    InputError::new(
                        origin.clone(),
                        format!("entry {i} ({ip}): hostname {j} {name:?} {why}"),
                    )
                })?;
            }
            Ok(HostAlias { ip, hostnames })
        })
        .collect()
}

/// Merges the pod-level and the virtual-kubelet-level aliases into hosts lines, one per address.
///
/// A hostname resolves to the pod-level address when both levels name it; within one level the
/// first address listed wins and the later one is reported. Addresses keep the order in which
/// they first appear (pod level first), names the order in which they were listed.
pub fn merge_host_aliases(
    pod: (&[HostAlias], &Origin),
    vk: (&[HostAlias], &Origin),
    notes: &mut Notes,
) -> Vec<HostsEntry> {
    let mut lines: Vec<HostsEntry> = Vec::new();
    // hostname -> (address, index of the level that set it)
    let mut owner: HashMap<String, (IpAddr, usize)> = HashMap::new();
    for (level, (aliases, origin)) in [pod, vk].into_iter().enumerate() {
        for alias in aliases {
            for name in &alias.hostnames {
                match owner.get(name) {
                    Some((ip, _)) if *ip == alias.ip => {}
                    Some((ip, l)) if *l == level => notes.warn(format!(
                        "{origin} lists hostname {name} under both {ip} and {}; keeping the \
                         first, {ip}",
                        alias.ip
                    )),
                    Some((ip, _)) => notes.info(format!(
                        "{origin} maps {name} to {}, but the pod level maps it to {ip}; the pod \
                         level wins",
                        alias.ip
                    )),
                    None => {
                        owner.insert(name.clone(), (alias.ip, level));
                        match lines.iter_mut().find(|l| l.ip == alias.ip) {
                            Some(line) => line.hostnames.push(name.clone()),
                            None => lines.push(HostsEntry {
                                ip: alias.ip,
                                hostnames: vec![name.clone()],
                            }),
                        }
                    }
                }
            }
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;

    const POD: Origin = Origin::Flag("--host-aliases");
    const VK: Origin = Origin::Env("KCI_HOST_ALIASES");

    fn parse(text: &str) -> Result<Vec<HostAlias>, InputError> {
        parse_host_aliases(text, &POD)
    }

    fn alias(ip: &str, names: &[&str]) -> HostAlias {
        HostAlias {
            ip: ip.parse().unwrap(),
            hostnames: names.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn parses_valid_lists() {
        assert_eq!(parse("").unwrap(), vec![]);
        assert_eq!(parse("  \n").unwrap(), vec![]);
        assert_eq!(parse("[]").unwrap(), vec![]);
        assert_eq!(
            parse(r#"[{"ip":"1.2.3.4","hostnames":["reg.example.com","r2"]},{"ip":"fd00::1","hostnames":["v6.example"]}]"#)
                .unwrap(),
            vec![
                alias("1.2.3.4", &["reg.example.com", "r2"]),
                alias("fd00::1", &["v6.example"])
            ]
        );
        assert_eq!(
            parse(r#"[{"ip":"1.2.3.4"}]"#).unwrap(),
            vec![alias("1.2.3.4", &[])]
        );
        assert_eq!(
            parse(r#"[{"ip":"1.2.3.4","hostnames":null}]"#).unwrap(),
            vec![alias("1.2.3.4", &[])]
        );
    }

    #[test]
    fn rejects_bad_input_naming_the_value() {
        let cases = [
            ("{", "not a JSON array"),
            (r#"{"ip":"1.2.3.4"}"#, "not a JSON array"),
            ("null", "not a JSON array"),
            (r#"[{"ip":1234,"hostnames":["a"]}]"#, "invalid type"),
            (r#"[{"ip":"1.2.3.4","hostnames":"a"}]"#, "invalid type"),
            (r#"[{"ip":"1.2.3.4","hostnames":[5]}]"#, "invalid type"),
            (
                r#"[{"ip":"1.2.3.4","hostname":["a"]}]"#,
                "unknown field `hostname`",
            ),
            (r#"[{"hostnames":["a"]}]"#, r#"ip """#),
            (r#"[{"ip":"1.2.3.256","hostnames":["a"]}]"#, "1.2.3.256"),
            (
                r#"[{"ip":"fe80::1%eth0","hostnames":["a"]}]"#,
                "fe80::1%eth0",
            ),
            (r#"[{"ip":" 1.2.3.4","hostnames":["a"]}]"#, "not a valid"),
            (
                r#"[{"ip":"1.2.3.4","hostnames":["Reg.Example"]}]"#,
                "upper-case",
            ),
            (
                r#"[{"ip":"1.2.3.4","hostnames":["reg\n6.6.6.6 bank.example"]}]"#,
                "newline",
            ),
            (r#"[{"ip":"1.2.3.4","hostnames":["reg#x"]}]"#, "'#'"),
            (r#"[{"ip":"1.2.3.4","hostnames":["a b"]}]"#, "whitespace"),
            (r#"[{"ip":"1.2.3.4","hostnames":[""]}]"#, "empty"),
            (r#"[{"ip":"1.2.3.4","hostnames":["a."]}]"#, "empty label"),
        ];
        for (text, want) in cases {
            let err = parse(text).expect_err(text);
            let msg = err.to_string();
            assert!(msg.contains("flag --host-aliases"), "{msg}");
            assert!(msg.contains(want), "{text}: {msg}");
        }
    }

    #[test]
    fn merge_pod_level_wins_and_lines_group_by_address() {
        let mut notes = Notes::default();
        let pod = [
            alias("10.0.0.1", &["reg.example.com"]),
            alias("10.0.0.2", &["mirror.example.com"]),
            alias("10.0.0.1", &["reg2.example.com"]),
        ];
        let vk = [
            alias("192.168.0.9", &["reg.example.com", "vk-only.example"]),
            alias("10.0.0.2", &["also-mirror"]),
        ];
        let lines = merge_host_aliases((&pod, &POD), (&vk, &VK), &mut notes);
        assert_eq!(
            lines,
            vec![
                HostsEntry {
                    ip: "10.0.0.1".parse().unwrap(),
                    hostnames: vec!["reg.example.com".into(), "reg2.example.com".into()]
                },
                HostsEntry {
                    ip: "10.0.0.2".parse().unwrap(),
                    hostnames: vec!["mirror.example.com".into(), "also-mirror".into()]
                },
                HostsEntry {
                    ip: "192.168.0.9".parse().unwrap(),
                    hostnames: vec!["vk-only.example".into()]
                },
            ]
        );
        assert!(notes.warnings.is_empty(), "{notes:?}");
        assert!(notes.infos[0].contains("pod level wins"), "{notes:?}");
    }

    #[test]
    fn merge_within_one_level_keeps_first_with_warning() {
        let mut notes = Notes::default();
        let vk = [
            alias("10.0.0.1", &["reg"]),
            alias("10.0.0.2", &["reg", "other"]),
            alias("10.0.0.1", &["reg"]),
        ];
        let lines = merge_host_aliases((&[], &POD), (&vk, &VK), &mut notes);
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].hostnames, vec!["reg"]);
        assert_eq!(lines[1].hostnames, vec!["other"]);
        assert_eq!(notes.warnings.len(), 1, "{notes:?}");
        assert!(notes.warnings[0].contains("KCI_HOST_ALIASES"));
        assert!(notes.warnings[0].contains("keeping the first, 10.0.0.1"));
    }

    #[test]
    fn merge_drops_addresses_without_names() {
        let mut notes = Notes::default();
        let pod = [alias("10.0.0.1", &[])];
        assert!(merge_host_aliases((&pod, &POD), (&[], &VK), &mut notes).is_empty());
    }
}
