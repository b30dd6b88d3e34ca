//! The per-registry transport policy: one function decides how a registry is reached, and
//! both `explain` and `pull` call it. A registry matches a list entry only if host and port are
//! both equal.

use std::fmt;

use super::host::RegistryHost;
use crate::diag::{InputError, Notes, Origin};

pub const HTTP_ANNOTATION: &str = "k8s.ksyun.com/kci-http-registry";
pub const INSECURE_ANNOTATION: &str = "k8s.ksyun.com/kci-insecure-registry";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListKind {
    Http,
    Insecure,
}

impl ListKind {
    /// The name used in `explain --output json` (`matched.list`).
    pub fn as_str(self) -> &'static str {
        match self {
            ListKind::Http => "http",
            ListKind::Insecure => "insecure",
        }
    }
    pub fn annotation(self) -> &'static str {
        match self {
            ListKind::Http => HTTP_ANNOTATION,
            ListKind::Insecure => INSECURE_ANNOTATION,
        }
    }
    fn short(self) -> &'static str {
        match self {
            ListKind::Http => "kci-http-registry",
            ListKind::Insecure => "kci-insecure-registry",
        }
    }
}

/// A parsed, de-duplicated registry list and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RegistryList {
    pub kind: ListKind,
    pub origin: Option<Origin>,
    pub entries: Vec<RegistryHost>,
}

impl RegistryList {
    pub fn empty(kind: ListKind) -> Self {
        RegistryList {
            kind,
            origin: None,
            entries: Vec::new(),
        }
    }

    /// Parses comma-separated lists (a flag may be repeated, so several values). Items are
    /// trimmed, empty items ignored; a pasted scheme or trailing `/` is tolerated with a
    /// warning; a path, wildcard or invalid port is an error naming the item.
    pub fn parse(
        kind: ListKind,
        values: &[String],
        origin: Origin,
        notes: &mut Notes,
    ) -> Result<Self, InputError> {
        let mut entries: Vec<RegistryHost> = Vec::new();
        for value in values {
            for item in value.split(',') {
                let item = item.trim();
                if item.is_empty() {
                    continue;
                }
                let host = parse_item(kind, item, &origin, notes).map_err(|why| {
                    InputError::new(origin.clone(), format!("entry {item:?}: {why}"))
                })?;
                if !entries.contains(&host) {
                    entries.push(host);
                }
            }
        }
        Ok(RegistryList {
            kind,
            origin: Some(origin),
            entries,
        })
    }
}

fn parse_item(
    kind: ListKind,
    item: &str,
    origin: &Origin,
    notes: &mut Notes,
) -> Result<RegistryHost, String> {
    let mut s = item;
    let lower = s.to_ascii_lowercase();
    for scheme in ["http://", "https://"] {
        if lower.starts_with(scheme) {
            s = &s[scheme.len()..];
            let meaning = match kind {
                ListKind::Http => "plain HTTP",
                ListKind::Insecure => "HTTPS without certificate verification",
            };
            notes.warn(format!(
                "{origin}: entry {item:?}: the scheme {scheme:?} is ignored; this list always \
                 means {meaning}; write just {:?}",
                s.trim_end_matches('/')
            ));
        }
    }
    if let Some((scheme, _)) = s.split_once("://") {
        return Err(format!(
            "unsupported scheme {scheme:?}; an entry is host[:port], e.g. 10.0.0.5:5000"
        ));
    }
    if s.ends_with('/') {
        s = s.trim_end_matches('/');
        notes.warn(format!(
            "{origin}: entry {item:?}: trailing '/' ignored; write just {s:?}"
        ));
    }
    if let Some(i) = s.find('/') {
        return Err(format!(
            "an entry is a registry host[:port] without a path, but this one has the path \
             {:?}; registries are matched as a whole, write {:?}",
            &s[i..],
            &s[..i]
        ));
    }
    if s.contains('*') {
        return Err(
            "wildcards are not supported; list each registry as host[:port] (matching is exact)"
                .into(),
        );
    }
    RegistryHost::parse(s)
}

/// How the agent talks to a registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// `http://`, no TLS.
    Http,
    /// `https://`, certificate and host name not verified.
    HttpsInsecure,
    /// `https://`, verified against the system roots plus `certs.d` CAs.
    Https,
}

impl Transport {
    /// The report's `transport` value.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Http => "http",
            Transport::HttpsInsecure => "https-insecure",
            Transport::Https => "https",
        }
    }
    pub fn scheme(self) -> &'static str {
        match self {
            Transport::Http => "http",
            Transport::HttpsInsecure | Transport::Https => "https",
        }
    }
    /// `None` for plain HTTP, where there is no TLS to verify.
    pub fn tls_verify(self) -> Option<bool> {
        match self {
            Transport::Http => None,
            Transport::HttpsInsecure => Some(false),
            Transport::Https => Some(true),
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The list entry that decided a route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Matched {
    pub list: ListKind,
    pub entry: RegistryHost,
    /// Where the list came from (a flag, an annotation), for hints.
    pub origin: Option<Origin>,
}

impl Matched {
    /// What an operator edits to change the list: the flag if it came from one, else the
    /// annotation.
    pub fn source(&self) -> String {
        match &self.origin {
            Some(Origin::Flag(f)) => (*f).to_string(),
            _ => self.list.annotation().to_string(),
        }
    }
}

/// Entries of a list with the registry's host but another port: they do not apply (matching
/// is port-exact), and an operator wondering why a list "does not work" should hear of them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NearMiss {
    pub list: ListKind,
    pub entries: Vec<RegistryHost>,
}

impl NearMiss {
    /// The sentence for `explain` and for error hints.
    pub fn explain(&self, registry: &RegistryHost) -> String {
        let listed: Vec<String> = self.entries.iter().map(|e| e.to_string()).collect();
        format!(
            "{} lists {}, which {} not match {registry}: matching is port-exact (no port is not \
             :443 or :80); add {registry} to the list if it should apply",
            self.list.short(),
            listed.join(" and "),
            if listed.len() == 1 { "does" } else { "do" }
        )
    }
}

/// The decision for one registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub registry: RegistryHost,
    pub transport: Transport,
    pub matched: Option<Matched>,
    /// Listed in both lists (plain HTTP wins).
    pub in_both: bool,
    /// Entries that name the same host with another port.
    pub near_misses: Vec<NearMiss>,
}

impl Route {
    /// A route decided by explicit configuration rather than the lists (a mirror).
    pub fn direct(registry: RegistryHost, transport: Transport) -> Route {
        Route {
            registry,
            transport,
            matched: None,
            in_both: false,
            near_misses: Vec::new(),
        }
    }

    /// Things an operator debugging this registry should know (overlaps, near misses).
    pub fn notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        if self.in_both {
            notes.push(format!(
                "{} is in both kci-http-registry and kci-insecure-registry; plain HTTP wins",
                self.registry
            ));
        }
        notes.extend(self.near_misses.iter().map(|n| n.explain(&self.registry)));
        notes
    }

    /// Base URL of the registry API, e.g. `https://registry-1.docker.io`.
    pub fn endpoint(&self) -> String {
        format!(
            "{}://{}",
            self.transport.scheme(),
            self.registry.api_authority()
        )
    }
}

/// Both lists, as given for this pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub http: RegistryList,
    pub insecure: RegistryList,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            http: RegistryList::empty(ListKind::Http),
            insecure: RegistryList::empty(ListKind::Insecure),
        }
    }
}

impl Policy {
    pub fn new(http: RegistryList, insecure: RegistryList, notes: &mut Notes) -> Self {
        for e in &http.entries {
            if insecure.entries.contains(e) {
                notes.warn(format!(
                    "registry {e} is listed in both kci-http-registry and \
                     kci-insecure-registry; it is pulled over plain HTTP"
                ));
            }
        }
        Policy { http, insecure }
    }

    /// The one routing decision: plain HTTP if the exact `host[:port]` is in the HTTP list,
    /// unverified HTTPS if it is in the insecure list, verified HTTPS otherwise.
    pub fn route(&self, registry: &RegistryHost) -> Route {
        let in_http = self.http.entries.contains(registry);
        let in_insecure = self.insecure.entries.contains(registry);
        let (transport, matched) = if in_http {
            (Transport::Http, Some(ListKind::Http))
        } else if in_insecure {
            (Transport::HttpsInsecure, Some(ListKind::Insecure))
        } else {
            (Transport::Https, None)
        };
        let near_misses = [&self.http, &self.insecure]
            .into_iter()
            .filter_map(|list| {
                let entries: Vec<RegistryHost> = list
                    .entries
                    .iter()
                    .filter(|e| *e != registry && e.same_host(registry))
                    .cloned()
                    .collect();
                (!entries.is_empty()).then_some(NearMiss {
                    list: list.kind,
                    entries,
                })
            })
            .collect();
        Route {
            registry: registry.clone(),
            transport,
            matched: matched.map(|list| Matched {
                list,
                entry: registry.clone(),
                origin: match list {
                    ListKind::Http => self.http.origin.clone(),
                    ListKind::Insecure => self.insecure.origin.clone(),
                },
            }),
            in_both: in_http && in_insecure,
            near_misses,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::reference::Reference;

    fn list(kind: ListKind, s: &str) -> (Result<RegistryList, InputError>, Notes) {
        let mut notes = Notes::default();
        let r = RegistryList::parse(
            kind,
            &[s.to_string()],
            Origin::Flag("--http-registry"),
            &mut notes,
        );
        (r, notes)
    }

    fn entries(s: &str) -> Vec<String> {
        list(ListKind::Http, s)
            .0
            .unwrap()
            .entries
            .iter()
            .map(|e| e.to_string())
            .collect()
    }

    #[test]
    fn list_items_are_trimmed_and_normalised() {
        assert_eq!(
            entries(" 192.168.1.10:5000 , ,Harbor.Example.com,[::1]:5000,harbor.example.com"),
            vec!["192.168.1.10:5000", "harbor.example.com", "[::1]:5000"]
        );
        assert!(entries("").is_empty());
        assert!(entries(" , ").is_empty());
        let (r, notes) = list(ListKind::Http, "http://reg.example.com:5000/");
        assert_eq!(r.unwrap().entries[0].to_string(), "reg.example.com:5000");
        assert_eq!(notes.warnings.len(), 2, "{notes:?}");
        let (r, notes) = list(ListKind::Insecure, "HTTPS://reg.example.com");
        assert_eq!(r.unwrap().entries[0].to_string(), "reg.example.com");
        assert!(notes.warnings[0].contains("scheme"), "{notes:?}");
    }

    #[test]
    fn list_errors_name_the_item() {
        let cases = [
            ("reg.example.com/library", "path \"/library\""),
            ("http://reg.example.com/v2/", "path"),
            ("reg.example.com:abc", "port"),
            ("reg.example.com:70000", "port"),
            ("reg.example.com:", "port"),
            ("*.example.com", "wildcards"),
            ("ftp://reg", "scheme"),
            ("::1", "IPv6"),
            ("reg\nexample", "'\\n'"),
            ("reg#1", "'#'"),
        ];
        for (input, want) in cases {
            let err = list(ListKind::Http, &format!("ok.example,{input}"))
                .0
                .expect_err(input);
            let msg = err.to_string();
            assert!(msg.contains("flag --http-registry"), "{msg}");
            assert!(msg.contains(&format!("{input:?}")), "{msg}");
            assert!(msg.contains(want), "{input:?}: {msg}");
        }
    }

    fn policy(http: &str, insecure: &str) -> (Policy, Notes) {
        let mut notes = Notes::default();
        let h = RegistryList::parse(
            ListKind::Http,
            &[http.into()],
            Origin::Flag("--http-registry"),
            &mut notes,
        )
        .unwrap();
        let i = RegistryList::parse(
            ListKind::Insecure,
            &[insecure.into()],
            Origin::Flag("--insecure-registry"),
            &mut notes,
        )
        .unwrap();
        let p = Policy::new(h, i, &mut notes);
        (p, notes)
    }

    fn route(p: &Policy, image: &str) -> (Transport, Option<String>) {
        let r = p.route(&Reference::parse(image).unwrap().registry);
        (
            r.transport,
            r.matched
                .map(|m| format!("{}:{}", m.list.as_str(), m.entry)),
        )
    }

    #[test]
    fn port_exact_matching_table() {
        use Transport::*;
        let (p, _) = policy(
            "192.168.1.10:5000,harbor.example.com,[::1]:5000,localhost:5000",
            "secure.example.com:8443,10.0.0.7,Mixed.Example.com",
        );
        let some = |s: &str| Some(s.to_string());
        let cases = [
            (
                "192.168.1.10:5000/app:v1",
                Http,
                some("http:192.168.1.10:5000"),
            ),
            ("192.168.1.10/app:v1", Https, None),
            ("192.168.1.10:5001/app:v1", Https, None),
            ("192.168.1.100:5000/app:v1", Https, None),
            (
                "harbor.example.com/app:v1",
                Http,
                some("http:harbor.example.com"),
            ),
            (
                "HARBOR.example.com/app:v1",
                Http,
                some("http:harbor.example.com"),
            ),
            ("harbor.example.com:8443/app:v1", Https, None),
            ("harbor.example.com:443/app:v1", Https, None),
            ("harbor.example.com:80/app:v1", Https, None),
            ("harbor.example.com.evil.io/app", Https, None),
            ("evil.io/harbor.example.com/app", Https, None),
            ("sub.harbor.example.com/app", Https, None),
            ("example.com/app", Https, None),
            ("[::1]:5000/app", Http, some("http:[::1]:5000")),
            ("[0:0::1]:5000/app", Http, some("http:[::1]:5000")),
            ("[::1]/app", Https, None),
            ("localhost:5000/app", Http, some("http:localhost:5000")),
            ("localhost/app", Https, None),
            (
                "secure.example.com:8443/app",
                HttpsInsecure,
                some("insecure:secure.example.com:8443"),
            ),
            ("secure.example.com/app", Https, None),
            ("10.0.0.7/app", HttpsInsecure, some("insecure:10.0.0.7")),
            ("10.0.0.7:443/app", Https, None),
            (
                "mixed.example.com/app",
                HttpsInsecure,
                some("insecure:mixed.example.com"),
            ),
            ("nginx", Https, None),
            ("docker.io/library/nginx", Https, None),
        ];
        for (image, transport, matched) in cases {
            assert_eq!(route(&p, image), (transport, matched), "{image}");
        }
    }

    #[test]
    fn both_lists_means_http_with_warning() {
        let (p, notes) = policy("reg.example.com:5000", "reg.example.com:5000");
        assert_eq!(notes.warnings.len(), 1);
        assert!(notes.warnings[0].contains("plain HTTP"));
        let r = p.route(&Reference::parse("reg.example.com:5000/a").unwrap().registry);
        assert_eq!(r.transport, Transport::Http);
        assert_eq!(r.matched.as_ref().unwrap().list, ListKind::Http);
        assert!(r.notes()[0].contains("both"));
    }

    #[test]
    fn near_misses_are_explained() {
        let (p, _) = policy("", "harbor.example.com");
        let r = p.route(
            &Reference::parse("harbor.example.com:8443/a")
                .unwrap()
                .registry,
        );
        assert_eq!(r.transport, Transport::Https);
        assert_eq!(r.notes().len(), 1);
        assert!(r.notes()[0].contains("port-exact"), "{:?}", r.notes());
        assert!(r.notes()[0].contains("kci-insecure-registry lists harbor.example.com"));
    }

    #[test]
    fn docker_hub_endpoint() {
        let (p, _) = policy("", "");
        let r = p.route(&Reference::parse("nginx").unwrap().registry);
        assert_eq!(r.endpoint(), "https://registry-1.docker.io");
        let r = p.route(&Reference::parse("[::1]:5000/a").unwrap().registry);
        assert_eq!(r.endpoint(), "https://[::1]:5000");
    }
}
