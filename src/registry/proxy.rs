//! Proxies from the environment (SPEC §11): `https_proxy`/`HTTPS_PROXY` for `https://`,
//! `http_proxy`/`HTTP_PROXY` for `http://`, `all_proxy`/`ALL_PROXY` for both, `no_proxy`/
//! `NO_PROXY` for the exceptions (lower case first, as curl reads them). As Go's
//! `httpproxy` (containerd, Docker) does, loopback is never proxied, and neither is a host the
//! run has a host alias for: the alias says where that name is, which the proxy cannot know.

use reqwest::Url;

/// The environment's proxies, checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Proxies {
    pub http: Option<Url>,
    pub https: Option<Url>,
    /// `no_proxy` as written (comma-separated hosts, domains, `*`).
    pub no_proxy: String,
}

/// The first of `names` set to a non-empty value, with its name.
fn var(
    env: &dyn Fn(&str) -> Option<String>,
    names: &[&'static str],
) -> Option<(&'static str, String)> {
    names
        .iter()
        .find_map(|n| env(n).filter(|v| !v.trim().is_empty()).map(|v| (*n, v)))
}

impl Proxies {
    /// Reads the variables through `env`; a value that is not an `http://` or `https://` URL
    /// (a SOCKS proxy, a typo) is an error naming the variable.
    pub fn from(env: &dyn Fn(&str) -> Option<String>) -> Result<Proxies, (&'static str, String)> {
        let parse = |names: &[&'static str]| -> Result<Option<Url>, (&'static str, String)> {
            let Some((name, value)) = var(env, names) else {
                return Ok(None);
            };
            // curl and Go take a bare host:port as http://host:port.
            let text = if value.contains("://") {
                value.clone()
            } else {
                format!("http://{value}")
            };
            match Url::parse(&text) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host_str().is_some() => {
                    Ok(Some(u))
                }
                Ok(u) => Err((
                    name,
                    format!(
                        "{} proxies are not supported; give an http:// or https:// proxy, or \
                         unset {name}",
                        u.scheme()
                    ),
                )),
                Err(e) => Err((name, format!("not a proxy URL ({e})"))),
            }
        };
        let all = parse(&["all_proxy", "ALL_PROXY"])?;
        Ok(Proxies {
            http: parse(&["http_proxy", "HTTP_PROXY"])?.or(all.clone()),
            https: parse(&["https_proxy", "HTTPS_PROXY"])?.or(all),
            no_proxy: var(env, &["no_proxy", "NO_PROXY"])
                .map(|(_, v)| v)
                .unwrap_or_default(),
        })
    }

    pub fn is_empty(&self) -> bool {
        self.http.is_none() && self.https.is_none()
    }

    /// For the log: which proxy for which scheme, without credentials.
    pub fn describe(&self) -> String {
        let shown = |u: &Option<Url>| {
            u.as_ref().map_or_else(
                || "direct".to_string(),
                |u| {
                    let mut u = u.clone();
                    let _ = u.set_username("");
                    let _ = u.set_password(None);
                    u.to_string()
                },
            )
        };
        format!(
            "https via {}, http via {}; not proxied: loopback, aliased hosts{}",
            shown(&self.https),
            shown(&self.http),
            if self.no_proxy.is_empty() {
                String::new()
            } else {
                format!(", no_proxy {}", self.no_proxy)
            }
        )
    }

    /// The proxy of `url`, if it is to be proxied at all.
    pub fn for_url(&self, url: &Url, aliased: &[String]) -> Option<Url> {
        let proxy = match url.scheme() {
            "https" => self.https.clone()?,
            "http" => self.http.clone()?,
            _ => return None,
        };
        let host = url
            .host_str()?
            .trim_start_matches('[')
            .trim_end_matches(']');
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let loopback = host == "localhost"
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback());
        if loopback || aliased.iter().any(|a| a.eq_ignore_ascii_case(&host)) {
            return None;
        }
        let port = url.port_or_known_default();
        for entry in self.no_proxy.split([',', ' ']).map(str::trim) {
            if entry.is_empty() {
                continue;
            }
            if entry == "*" {
                return None;
            }
            let (name, want_port) = match entry.rsplit_once(':') {
                Some((n, p)) if !n.contains(':') || n.ends_with(']') => (n, p.parse::<u16>().ok()),
                _ => (entry, None),
            };
            if want_port.is_some() && want_port != port {
                continue;
            }
            let name = name
                .trim_start_matches('[')
                .trim_end_matches(']')
                .trim_start_matches('*')
                .trim_start_matches('.')
                .to_ascii_lowercase();
            if host == name || host.ends_with(&format!(".{name}")) {
                return None;
            }
            if let (Ok(net), Ok(ip)) = (
                name.parse::<std::net::IpAddr>(),
                host.parse::<std::net::IpAddr>(),
            ) && net == ip
            {
                return None;
            }
        }
        Some(proxy)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| pairs.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone())
    }

    #[test]
    fn variables_as_curl_and_go_read_them() {
        let p = Proxies::from(&env(&[
            ("HTTPS_PROXY", "http://upper:3128"),
            ("https_proxy", "http://lower:3128"),
            ("ALL_PROXY", "proxy.corp:8080"),
            ("NO_PROXY", "internal.corp, .svc,10.0.0.5,reg.corp:5000"),
        ]))
        .unwrap();
        assert_eq!(p.https.as_ref().unwrap().host_str(), Some("lower"));
        assert_eq!(p.http.as_ref().unwrap().as_str(), "http://proxy.corp:8080/");
        let url = |u: &str| Url::parse(u).unwrap();
        let via = |u: &str| {
            p.for_url(&url(u), &["alias.corp".into()])
                .map(|p| p.to_string())
        };
        assert_eq!(
            via("https://reg.example.com/v2/"),
            Some("http://lower:3128/".into())
        );
        assert_eq!(
            via("http://reg.example.com:5000/v2/"),
            Some("http://proxy.corp:8080/".into())
        );
        for direct in [
            "https://127.0.0.1:5000/v2/",
            "https://[::1]:5000/v2/",
            "https://localhost/v2/",
            "https://alias.corp/v2/",
            "https://internal.corp/v2/",
            "https://a.internal.corp/v2/",
            "https://x.svc/v2/",
            "https://10.0.0.5/v2/",
            "https://reg.corp:5000/v2/",
        ] {
            assert_eq!(via(direct), None, "{direct}");
        }
        assert!(via("https://reg.corp:5001/v2/").is_some());
        assert!(via("https://notinternal.corp/v2/").is_some());
        assert_eq!(
            Proxies::from(&env(&[("https_proxy", "http://p:1"), ("no_proxy", "*")]))
                .unwrap()
                .for_url(&url("https://x/"), &[]),
            None
        );
    }

    #[test]
    fn a_proxy_the_agent_cannot_use_is_refused_by_name() {
        let (name, why) = Proxies::from(&env(&[("ALL_PROXY", "socks5://p:1080")])).unwrap_err();
        assert_eq!(name, "ALL_PROXY");
        assert!(why.contains("socks5"), "{why}");
        assert!(Proxies::from(&env(&[])).unwrap().is_empty());
        assert!(
            Proxies::from(&env(&[("HTTPS_PROXY", "")]))
                .unwrap()
                .is_empty()
        );
    }
}
