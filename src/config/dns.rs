//! Kubernetes PodDNSConfig: parsing, validation, and the two-level merge.

use std::net::IpAddr;

use serde::Deserialize;

use super::names::{check_search_domain, search_key, smuggled_char};
use crate::diag::{InputError, Origin};

/// Kubernetes limits (`validatePodDNSConfig`), also the resolver's `MAXNS`.
pub const MAX_NAMESERVERS: usize = 3;
pub const MAX_SEARCHES: usize = 32;
pub const MAX_SEARCH_CHARS: usize = 2048;

/// One resolver option, `name` or `name:value`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsOption {
    pub name: String,
    pub value: Option<String>,
}

impl std::fmt::Display for DnsOption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.value {
            Some(v) => write!(f, "{}:{v}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// A validated DNS config (one level, or both merged).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DnsConfig {
    pub nameservers: Vec<IpAddr>,
    pub searches: Vec<String>,
    pub options: Vec<DnsOption>,
}

impl DnsConfig {
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty() && self.searches.is_empty() && self.options.is_empty()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DnsConfigJson {
    nameservers: Option<Vec<String>>,
    searches: Option<Vec<String>>,
    options: Option<Vec<DnsOptionJson>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DnsOptionJson {
    name: Option<String>,
    value: Option<String>,
}

/// Parses and validates a PodDNSConfig JSON object. Empty text is an empty config.
pub fn parse_dns_config(text: &str, origin: &Origin) -> Result<DnsConfig, InputError> {
    if text.trim().is_empty() {
        return Ok(DnsConfig::default());
    }
    let err = |detail: String| InputError::new(origin.clone(), detail);
    let raw: DnsConfigJson = serde_json::from_str(text).map_err(|e| {
        err(format!(
            "not a JSON PodDNSConfig object ({e}); expected {{\"nameservers\":[\"10.0.0.2\"],\
             \"searches\":[\"corp.example\"],\"options\":[{{\"name\":\"ndots\",\"value\":\"2\"}}]}}"
        ))
    })?;

    let nameservers_raw = raw.nameservers.unwrap_or_default();
    if nameservers_raw.len() > MAX_NAMESERVERS {
        return Err(err(format!(
            "{} nameservers given; Kubernetes allows at most {MAX_NAMESERVERS}",
            nameservers_raw.len()
        )));
    }
    let nameservers = nameservers_raw
        .iter()
        .map(|s| {
            s.parse::<IpAddr>()
                .map_err(|_| err(format!("nameserver {s:?} is not an IP address")))
        })
        .collect::<Result<Vec<_>, _>>()?;

    let searches = raw.searches.unwrap_or_default();
    if searches.len() > MAX_SEARCHES {
        return Err(err(format!(
            "{} search domains given; Kubernetes allows at most {MAX_SEARCHES}",
            searches.len()
        )));
    }
    for s in &searches {
        check_search_domain(s).map_err(|why| err(format!("search domain {s:?} {why}")))?;
    }
    let joined = searches.join(" ").len();
    if joined > MAX_SEARCH_CHARS {
        return Err(err(format!(
            "search domains total {joined} characters; Kubernetes allows at most \
             {MAX_SEARCH_CHARS}"
        )));
    }

    let mut options = Vec::new();
    for (i, o) in raw.options.unwrap_or_default().into_iter().enumerate() {
        let name = o.name.unwrap_or_default();
        if name.is_empty() {
            return Err(err(format!("option {i} has an empty name")));
        }
        if let Some(what) =
            smuggled_char(&name).or_else(|| name.contains(':').then(|| "':'".into()))
        {
            return Err(err(format!("option name {name:?} contains {what}")));
        }
        // Kubernetes writes `name` for an absent or empty value, `name:value` otherwise.
        let value = o.value.filter(|v| !v.is_empty());
        if let Some(v) = &value
            && let Some(what) = smuggled_char(v)
        {
            return Err(err(format!("value {v:?} of option {name} contains {what}")));
        }
        options.push(DnsOption { name, value });
    }
    Ok(DnsConfig {
        nameservers,
        searches,
        options,
    })
}

/// Merges two levels: entries of `first` come first and win on conflict. Nameservers and
/// search domains appear once; options are merged by name. No limits are applied here: the
/// merged list is capped when it is combined with the base `resolv.conf`.
pub fn merge_dns(first: &DnsConfig, second: &DnsConfig) -> DnsConfig {
    let mut out = DnsConfig::default();
    for ns in first.nameservers.iter().chain(&second.nameservers) {
        if !out.nameservers.contains(ns) {
            out.nameservers.push(*ns);
        }
    }
    for s in first.searches.iter().chain(&second.searches) {
        if !out.searches.iter().any(|o| search_key(o) == search_key(s)) {
            out.searches.push(s.clone());
        }
    }
    for o in first.options.iter().chain(&second.options) {
        if !out.options.iter().any(|x| x.name == o.name) {
            out.options.push(o.clone());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const O: Origin = Origin::Env("KCI_DNS_CONFIG");

    fn parse(text: &str) -> Result<DnsConfig, InputError> {
        parse_dns_config(text, &O)
    }

    #[test]
    fn parses_the_spec_example() {
        let c = parse(
            r#"{"nameservers":["1.1.1.1"],"searches":["corp.example"],"options":[{"name":"ndots","value":"2"},{"name":"rotate"}]}"#,
        )
        .unwrap();
        assert_eq!(c.nameservers, vec!["1.1.1.1".parse::<IpAddr>().unwrap()]);
        assert_eq!(c.searches, vec!["corp.example"]);
        assert_eq!(
            c.options.iter().map(|o| o.to_string()).collect::<Vec<_>>(),
            vec!["ndots:2", "rotate"]
        );
        assert_eq!(parse("{}").unwrap(), DnsConfig::default());
        assert_eq!(parse("").unwrap(), DnsConfig::default());
        let empty_value = parse(r#"{"options":[{"name":"edns0","value":""}]}"#).unwrap();
        assert_eq!(empty_value.options[0].to_string(), "edns0");
    }

    #[test]
    fn rejects_what_kubernetes_rejects() {
        let long_search = vec![format!("{}.example", "a".repeat(60)); 32]
            .iter()
            .map(|s| format!("{s:?}"))
            .collect::<Vec<_>>()
            .join(",");
        let many_searches = (0..33)
            .map(|i| format!("\"d{i}.example\""))
            .collect::<Vec<_>>()
            .join(",");
        let cases = [
            ("[]", "not a JSON PodDNSConfig"),
            (r#"{"nameservers":"1.1.1.1"}"#, "invalid type"),
            (
                r#"{"nameservers":["dns.google"]}"#,
                "\"dns.google\" is not an IP",
            ),
            (
                r#"{"nameservers":["1.1.1.1","1.0.0.1","8.8.8.8","9.9.9.9"]}"#,
                "4 nameservers",
            ),
            (r#"{"searches":["Corp.example"]}"#, "upper-case"),
            (
                r#"{"searches":["corp.example\nnameserver 6.6.6.6"]}"#,
                "newline",
            ),
            (r#"{"searches":["a b"]}"#, "whitespace"),
            (r#"{"searches":[""]}"#, "empty"),
            (r#"{"options":[{"value":"2"}]}"#, "empty name"),
            (r#"{"options":[{"name":""}]}"#, "empty name"),
            (r#"{"options":[{"name":"nd ots"}]}"#, "whitespace"),
            (r#"{"options":[{"name":"ndots:3"}]}"#, "':'"),
            (
                r#"{"options":[{"name":"ndots","value":"2\nnameserver 6.6.6.6"}]}"#,
                "newline",
            ),
            (
                r#"{"options":[{"name":"ndots","value":2}]}"#,
                "invalid type",
            ),
            (
                r#"{"nameserver":["1.1.1.1"]}"#,
                "unknown field `nameserver`",
            ),
        ];
        for (text, want) in cases {
            let msg = parse(text).expect_err(text).to_string();
            assert!(msg.contains("KCI_DNS_CONFIG"), "{msg}");
            assert!(msg.contains(want), "{text}: {msg}");
        }
        let msg = parse(&format!(r#"{{"searches":[{many_searches}]}}"#))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("33 search domains"), "{msg}");
        let msg = parse(&format!(r#"{{"searches":[{long_search}]}}"#))
            .unwrap_err()
            .to_string();
        assert!(msg.contains("2048"), "{msg}");
    }

    #[test]
    fn merge_first_level_wins() {
        let pod = parse(
            r#"{"nameservers":["10.0.0.2"],"searches":["pod.example"],"options":[{"name":"ndots","value":"2"}]}"#,
        )
        .unwrap();
        let vk = parse(
            r#"{"nameservers":["10.0.0.3","10.0.0.2"],"searches":["vk.example","pod.example."],"options":[{"name":"ndots","value":"5"},{"name":"rotate"}]}"#,
        )
        .unwrap();
        let m = merge_dns(&pod, &vk);
        assert_eq!(
            m.nameservers,
            vec![
                "10.0.0.2".parse::<IpAddr>().unwrap(),
                "10.0.0.3".parse().unwrap()
            ]
        );
        assert_eq!(m.searches, vec!["pod.example", "vk.example"]);
        assert_eq!(
            m.options.iter().map(|o| o.to_string()).collect::<Vec<_>>(),
            vec!["ndots:2", "rotate"]
        );
    }
}
