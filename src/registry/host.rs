//! A registry's exact identity: host and optional port, as the Docker reference grammar
//! spells it. Two registries are the same only if host and port are both equal; no port is
//! not `:443` nor `:80`.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

/// Docker Hub's canonical registry name, and the host that serves its API.
pub const DOCKER_HUB: &str = "docker.io";
pub const DOCKER_HUB_API: &str = "registry-1.docker.io";
/// An alias Docker folds into `docker.io`.
const DOCKER_HUB_LEGACY: &str = "index.docker.io";

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Host {
    /// A DNS name, lower-cased.
    Name(String),
    V4(Ipv4Addr),
    V6(Ipv6Addr),
}

/// A normalised `host[:port]`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RegistryHost {
    pub host: Host,
    pub port: Option<u16>,
}

impl fmt::Display for Host {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Host::Name(n) => f.write_str(n),
            Host::V4(a) => write!(f, "{a}"),
            Host::V6(a) => write!(f, "[{a}]"),
        }
    }
}

impl fmt::Display for RegistryHost {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.host)?;
        if let Some(p) = self.port {
            write!(f, ":{p}")?;
        }
        Ok(())
    }
}

impl RegistryHost {
    /// Parses a registry as it appears in an image reference or a list entry, with nothing
    /// around it: `name`, `name:port`, `a.b.c.d[:port]`, `[v6][:port]`. The host is
    /// case-insensitive and stored lower-cased; IPv6 is stored canonically; `index.docker.io`
    /// is Docker Hub.
    pub fn parse(s: &str) -> Result<RegistryHost, String> {
        if s.is_empty() {
            return Err("the registry is empty".into());
        }
        let (host_part, port_part) = if let Some(rest) = s.strip_prefix('[') {
            let end = rest
                .find(']')
                .ok_or_else(|| format!("{s:?} opens '[' without a closing ']'"))?;
            let addr = &rest[..end];
            let after = &rest[end + 1..];
            let v6: Ipv6Addr = addr.parse().map_err(|_| {
                format!("{addr:?} inside [...] is not an IPv6 address (zones are not allowed)")
            })?;
            let port = match after {
                "" => None,
                p => Some(p.strip_prefix(':').ok_or_else(|| {
                    format!("unexpected {p:?} after the IPv6 address; write [addr]:port")
                })?),
            };
            return Ok(RegistryHost {
                host: Host::V6(v6),
                port: port.map(parse_port).transpose()?,
            });
        } else {
            match s.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (s, None),
            }
        };
        if port_part.is_some_and(|p| p.contains(':')) || host_part.parse::<Ipv6Addr>().is_ok() {
            return Err(format!(
                "{s:?} looks like a bare IPv6 address; write it as [addr] or [addr]:port"
            ));
        }
        let port = port_part.map(parse_port).transpose()?;
        let host = match host_part.parse::<Ipv4Addr>() {
            Ok(v4) => Host::V4(v4),
            Err(_) => {
                check_domain_name(host_part)?;
                let lower = host_part.to_ascii_lowercase();
                if lower == DOCKER_HUB_LEGACY && port.is_none() {
                    Host::Name(DOCKER_HUB.to_string())
                } else {
                    Host::Name(lower)
                }
            }
        };
        Ok(RegistryHost { host, port })
    }

    pub fn is_docker_hub(&self) -> bool {
        self.port.is_none() && self.host == Host::Name(DOCKER_HUB.to_string())
    }

    /// The `host[:port]` to connect to: Docker Hub's API lives at `registry-1.docker.io`.
    pub fn api_authority(&self) -> String {
        if self.is_docker_hub() {
            DOCKER_HUB_API.to_string()
        } else {
            self.to_string()
        }
    }

    /// Same host, any port: used only to explain near misses, never to match.
    pub fn same_host(&self, other: &RegistryHost) -> bool {
        self.host == other.host
    }
}

fn parse_port(p: &str) -> Result<u16, String> {
    let invalid = || format!("port {p:?} is not a number from 1 to 65535");
    if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    if p.len() > 1 && p.starts_with('0') {
        return Err(format!(
            "port {p:?} has a leading zero; write {}",
            p.trim_start_matches('0')
        ));
    }
    match p.parse::<u16>() {
        Ok(n) if n > 0 => Ok(n),
        _ => Err(invalid()),
    }
}

/// The Docker reference grammar's domain name: labels of letters, digits and inner `-`,
/// separated by dots.
fn check_domain_name(h: &str) -> Result<(), String> {
    if h.is_empty() {
        return Err("the host is empty".into());
    }
    if h.len() > 253 {
        return Err(format!(
            "the host is {} characters long (at most 253)",
            h.len()
        ));
    }
    for label in h.split('.') {
        if label.is_empty() {
            return Err(format!("host {h:?} has an empty label"));
        }
        if let Some(c) = label
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || *c == '-'))
        {
            return Err(format!(
                "host {h:?} contains {c:?}; a registry host is letters, digits, '-' and '.'"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!(
                "host {h:?} has a label that starts or ends with '-'"
            ));
        }
        if label.len() > 63 {
            return Err(format!("host {h:?} has a label longer than 63 characters"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> String {
        match RegistryHost::parse(s) {
            Ok(h) => h.to_string(),
            Err(e) => format!("ERR {e}"),
        }
    }

    #[test]
    fn normalises() {
        let cases = [
            ("harbor.example.com", "harbor.example.com"),
            ("Harbor.Example.COM", "harbor.example.com"),
            ("harbor.example.com:8443", "harbor.example.com:8443"),
            ("192.168.1.10:5000", "192.168.1.10:5000"),
            ("localhost", "localhost"),
            ("localhost:5000", "localhost:5000"),
            ("[::1]", "[::1]"),
            ("[::1]:5000", "[::1]:5000"),
            ("[2001:DB8:0:0::1]:443", "[2001:db8::1]:443"),
            ("index.docker.io", "docker.io"),
            ("INDEX.docker.io", "docker.io"),
            ("index.docker.io:443", "index.docker.io:443"),
            ("registry-1.docker.io", "registry-1.docker.io"),
            ("reg:65535", "reg:65535"),
        ];
        for (input, want) in cases {
            assert_eq!(p(input), want, "{input}");
        }
    }

    #[test]
    fn rejects() {
        let cases = [
            ("", "empty"),
            ("reg:", "not a number"),
            ("reg:0", "not a number"),
            ("reg:65536", "not a number"),
            ("reg:80a", "not a number"),
            ("reg:-1", "not a number"),
            ("reg:05000", "leading zero"),
            ("::1", "bare IPv6"),
            ("fe80::1:5000", "bare IPv6"),
            ("[::1", "closing"),
            ("[fe80::1%eth0]:5000", "IPv6"),
            ("[::1]5000", "[addr]:port"),
            ("[1.2.3.4]", "IPv6"),
            ("reg_1.example", "'_'"),
            ("*.example.com", "'*'"),
            ("reg example", "' '"),
            ("reg\nexample", "'\\n'"),
            ("-reg.example", "'-'"),
            ("reg..example", "empty label"),
            ("reg.", "empty label"),
        ];
        for (input, want) in cases {
            let got = p(input);
            assert!(
                got.starts_with("ERR") && got.contains(want),
                "{input:?}: {got}"
            );
        }
    }

    #[test]
    fn port_is_part_of_identity() {
        let a = RegistryHost::parse("harbor.example.com").unwrap();
        let b = RegistryHost::parse("harbor.example.com:443").unwrap();
        assert_ne!(a, b);
        assert!(a.same_host(&b));
        assert_eq!(a.api_authority(), "harbor.example.com");
        assert_eq!(
            RegistryHost::parse("docker.io").unwrap().api_authority(),
            "registry-1.docker.io"
        );
    }
}
