//! Name resolution for pulls, from `<root>/etc/hosts` and `<root>/etc/resolv.conf` as they are
//! *now* (after `network` wrote them), whatever the process's own `/etc` says.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use hickory_resolver::TokioResolver;
use hickory_resolver::config::ResolveHosts;
use hickory_resolver::net::runtime::TokioRuntimeProvider;

/// A name that could not be resolved: a type of its own, so that a failed request is known to
/// be a resolution failure by its kind, never by searching the text of the error (which holds
/// the URL, and an image may be called `coredns/coredns`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ResolveError {
    pub name: String,
    pub message: String,
}

/// Hosts-file entries first (in file order), then DNS with the resolv.conf settings.
pub struct RootResolver {
    hosts: HashMap<String, Vec<IpAddr>>,
    dns: Result<TokioResolver, String>,
}

/// Parses a hosts file into name -> addresses, in file order.
pub fn parse_hosts(text: &str) -> HashMap<String, Vec<IpAddr>> {
    let mut map: HashMap<String, Vec<IpAddr>> = HashMap::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("");
        let mut fields = line.split_whitespace();
        let Some(addr) = fields.next() else { continue };
        let addr = addr.split('%').next().unwrap_or(addr);
        let Ok(ip) = addr.parse::<IpAddr>() else {
            continue;
        };
        for name in fields {
            let list = map.entry(name.to_ascii_lowercase()).or_default();
            if !list.contains(&ip) {
                list.push(ip);
            }
        }
    }
    map
}

impl RootResolver {
    /// Reads the two files under `root`. A missing or unusable resolv.conf is remembered and
    /// reported when a name that is not in the hosts file has to be looked up.
    pub fn from_root(root: &Path) -> RootResolver {
        let hosts_text = std::fs::read_to_string(root.join("etc/hosts")).unwrap_or_default();
        let resolv_path = root.join("etc/resolv.conf");
        let dns = match std::fs::read(&resolv_path) {
            Ok(bytes) => match hickory_resolver::system_conf::parse_resolv_conf(bytes) {
                Ok((config, mut opts)) => {
                    opts.use_hosts_file = ResolveHosts::Never;
                    // Fail a lookup well within the connect timeout, so that the error says
                    // "cannot resolve" rather than "timed out".
                    opts.timeout = opts.timeout.min(std::time::Duration::from_secs(3));
                    opts.attempts = opts.attempts.clamp(1, 2);
                    let mut b =
                        TokioResolver::builder_with_config(config, TokioRuntimeProvider::default());
                    *b.options_mut() = opts;
                    b.build().map_err(|e| e.to_string())
                }
                Err(e) => Err(format!("{}: {e}", resolv_path.display())),
            },
            Err(e) => Err(format!("cannot read {}: {e}", resolv_path.display())),
        };
        RootResolver {
            hosts: parse_hosts(&hosts_text),
            dns,
        }
    }

    /// The host aliases this run was given (flag, annotation or environment) resolve names
    /// first, whether or not they were written into the hosts file (`pull`, `prepare` and
    /// `explain` write no network files).
    pub fn with_aliases<'a>(
        mut self,
        aliases: impl IntoIterator<Item = (&'a IpAddr, &'a [String])>,
    ) -> RootResolver {
        let mut given: HashMap<String, Vec<IpAddr>> = HashMap::new();
        for (ip, names) in aliases {
            for n in names {
                let list = given.entry(n.to_ascii_lowercase()).or_default();
                if !list.contains(ip) {
                    list.push(*ip);
                }
            }
        }
        for (name, ips) in given {
            let list = self.hosts.entry(name).or_default();
            list.retain(|ip| !ips.contains(ip));
            list.splice(0..0, ips);
        }
        self
    }

    pub async fn lookup(&self, name: &str) -> Result<Vec<IpAddr>, ResolveError> {
        let fail = |message: String| ResolveError {
            name: name.to_string(),
            message,
        };
        let key = name.trim_end_matches('.').to_ascii_lowercase();
        if let Some(ips) = self.hosts.get(&key) {
            return Ok(ips.clone());
        }
        if key == "localhost" {
            return Ok(vec![
                IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(Ipv6Addr::LOCALHOST),
            ]);
        }
        let dns = self.dns.as_ref().map_err(|e| {
            fail(format!(
                "{name} is not in the hosts file and DNS is unavailable ({e})"
            ))
        })?;
        let found = dns
            .lookup_ip(name)
            .await
            .map_err(|e| fail(format!("cannot resolve {name}: {}", dns_words(&e))))?;
        let ips: Vec<IpAddr> = found.iter().collect();
        if ips.is_empty() {
            return Err(fail(format!("cannot resolve {name}: no addresses")));
        }
        Ok(ips)
    }
}

/// What a DNS failure means, in words (the resolver's own text carries its query as Rust
/// debug output, `Query { name: Name(...) }`, which must not reach an operator).
fn dns_words(e: &hickory_resolver::net::NetError) -> String {
    use hickory_resolver::net::NetError;
    if e.is_nx_domain() {
        return "the DNS servers of the instance's resolv.conf say no such name exists \
                (NXDOMAIN)"
            .into();
    }
    if e.is_no_records_found() {
        return "the DNS servers of the instance's resolv.conf have no address record for it"
            .into();
    }
    match e {
        NetError::Timeout => "the DNS servers of the instance's resolv.conf did not answer in \
                              time"
            .into(),
        NetError::NoConnections => "no DNS server of the instance's resolv.conf could be \
                                    reached"
            .into(),
        NetError::Io(io) => format!("DNS lookup failed: {io}"),
        other => {
            let text = other.to_string();
            match text.find(" Query {").or_else(|| text.find('{')) {
                Some(i) => format!(
                    "DNS lookup failed: {}",
                    text[..i].trim_end_matches([':', ' '])
                ),
                None => format!("DNS lookup failed: {text}"),
            }
        }
    }
}

/// Adapter for reqwest.
pub struct ReqwestResolver(pub Arc<RootResolver>);

impl reqwest::dns::Resolve for ReqwestResolver {
    fn resolve(&self, name: reqwest::dns::Name) -> reqwest::dns::Resolving {
        let r = self.0.clone();
        Box::pin(async move {
            let ips = r
                .lookup(name.as_str())
                .await
                .map_err(|e| -> Box<dyn std::error::Error + Send + Sync> { e.into() })?;
            let addrs: Vec<SocketAddr> = ips.into_iter().map(|ip| SocketAddr::new(ip, 0)).collect();
            Ok(Box::new(addrs.into_iter()) as reqwest::dns::Addrs)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hosts_lookup_keeps_file_order_and_ignores_comments() {
        let h = parse_hosts(
            "# c\n10.0.0.1\treg.example.com reg # alias\n10.0.0.2 reg.example.com\nbad line\n\
             fe80::1%eth0 ll.example\n",
        );
        assert_eq!(
            h["reg.example.com"],
            vec![
                "10.0.0.1".parse::<IpAddr>().unwrap(),
                "10.0.0.2".parse().unwrap()
            ]
        );
        assert_eq!(h["reg"].len(), 1);
        assert!(h.contains_key("ll.example"));
        assert!(!h.contains_key("alias"));
        assert!(!h.contains_key("line"));
    }

    #[tokio::test]
    async fn resolves_from_the_root_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/hosts"), "127.0.0.9 reg.test\n").unwrap();
        let r = RootResolver::from_root(dir.path());
        assert_eq!(
            r.lookup("REG.test.").await.unwrap(),
            vec!["127.0.0.9".parse::<IpAddr>().unwrap()]
        );
        let err = r.lookup("other.test").await.unwrap_err();
        assert!(err.message.contains("resolv.conf"), "{err}");
    }
}
