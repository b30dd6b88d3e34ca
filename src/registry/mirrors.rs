//! containerd-style `hosts.toml` files: mirrors and pull-through caches tried before the origin.
//!
//! `<root>/etc/kci/certs.d/<host[:port]>/hosts.toml` (the directory named with the exact
//! registry), else `<root>/etc/kci/certs.d/_default/hosts.toml`. Each `[host."URL"]` table is
//! a mirror, tried in file order; the origin comes last and is reached as the pod's annotation
//! lists say. A mirror is reached exactly as its URL (`http://` or `https://`) and
//! `skip_verify` say: the file is explicit configuration, like the lists.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use reqwest::Url;

use super::host::RegistryHost;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirror {
    /// Scheme, host and port of the mirror.
    pub url: Url,
    /// The API root, e.g. `/v2` (or the URL's own path with `override_path`).
    pub api_prefix: String,
    /// May resolve tags to digests (`resolve`); otherwise used only for content by digest.
    pub resolve: bool,
    pub pull: bool,
    pub skip_verify: bool,
    /// Extra CA files for a verified mirror.
    pub ca: Vec<PathBuf>,
    /// The URL's path is the API root as is (no `/v2` appended).
    pub override_path: bool,
    /// The port as written in hosts.toml, when `url` dropped it as the scheme's default.
    pub written_port: Option<u16>,
    /// Extra request headers for this mirror (`[host."URL".header]`), e.g. Dragonfly's
    /// `X-Dragonfly-Registry`.
    pub headers: Vec<(String, String)>,
}

impl Mirror {
    /// `host[:port]` of the mirror, for credentials and messages: the port as written in
    /// hosts.toml, even the scheme's default (`https://m:443` is `m:443`, port-exact).
    pub fn authority(&self) -> String {
        let host = self.url.host_str().unwrap_or("");
        match self.url.port().or(self.written_port) {
            Some(p) => format!("{host}:{p}"),
            None => host.to_string(),
        }
    }
}

/// The port written in a URL's text, even the scheme's default (which `Url` drops).
fn written_port(text: &str) -> Option<u16> {
    let rest = text.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit('@').next()?;
    let port = match authority.rfind(']') {
        Some(i) => authority[i + 1..].strip_prefix(':')?,
        None => authority.rsplit_once(':')?.1,
    };
    port.parse().ok()
}

/// A hosts.toml that cannot be used, naming the file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: {detail}", path.display())]
pub struct MirrorsError {
    pub path: PathBuf,
    pub detail: String,
}

/// The hosts file that applies to `registry`, if any: its path and its mirrors.
pub fn load(
    root: &Path,
    registry: &RegistryHost,
) -> Result<Option<(PathBuf, Vec<Mirror>)>, MirrorsError> {
    let base = root.join(super::CERTS_D);
    for dir in [base.join(registry.to_string()), base.join("_default")] {
        let path = dir.join("hosts.toml");
        let fail = |detail: String| MirrorsError {
            path: path.clone(),
            detail,
        };
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let mirrors = parse(&text, &dir).map_err(fail)?;
                check_server(&text, registry).map_err(fail)?;
                return Ok(Some((path, mirrors)));
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(fail(format!("cannot read it: {e}"))),
        }
    }
    Ok(None)
}

/// A hosts.toml as containerd reads it, in the keys the agent honours; anything else is
/// refused by name (`client`, `dial_timeout`: not supported; other keys: unknown).
#[derive(Deserialize)]
struct HostsFile {
    server: Option<String>,
    /// `[host."URL"]` tables, in file order.
    host: Option<toml::map::Map<String, toml::Value>>,
    /// Keys the agent does not know: refused by name.
    #[serde(flatten)]
    other: toml::map::Map<String, toml::Value>,
}

#[derive(Deserialize)]
struct HostTable {
    capabilities: Option<OneOrMany>,
    skip_verify: Option<bool>,
    ca: Option<OneOrMany>,
    override_path: Option<bool>,
    header: Option<toml::map::Map<String, toml::Value>>,
    #[serde(flatten)]
    other: toml::map::Map<String, toml::Value>,
}

/// A string, or an array of strings (containerd accepts both).
#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn list(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

/// A key the agent does not honour, refused by name (`at`: where it is).
fn unknown_key(other: &toml::map::Map<String, toml::Value>, at: &str) -> Result<(), String> {
    match other.keys().next().map(String::as_str) {
        None => Ok(()),
        Some(key @ ("client" | "dial_timeout")) => Err(format!(
            "{at}{key} is not supported by kci-pull-agent; remove it"
        )),
        Some(key) => Err(format!(
            "{at}unknown key {key:?} (expected server and [host.\"URL\"] tables of \
             capabilities, skip_verify, ca, override_path, header)"
        )),
    }
}

/// A file that is not TOML, or a value of the wrong type.
fn toml_error(e: toml::de::Error, at: &str) -> String {
    format!("{at}invalid TOML: {}", e.message().trim())
}

/// `server` may only name the registry itself (its host and port, or Docker Hub's API host for
/// `docker.io`): the origin is reached as the pod's annotation lists say, so another server is
/// refused rather than silently ignored. A `_default` file's `server` is not checked.
fn check_server(text: &str, registry: &RegistryHost) -> Result<(), String> {
    let file: HostsFile = toml::from_str(text).map_err(|e| toml_error(e, ""))?;
    let Some(server) = file.server.as_deref() else {
        return Ok(());
    };
    let url = Url::parse(server).map_err(|e| format!("server {server:?}: not a URL ({e})"))?;
    let Some(host) = url.host_str() else {
        return Err(format!("server {server:?} has no host"));
    };
    // The same endpoint: the same host, and the same port once the scheme's default fills in
    // what is not written (`https://h:443` is `h:443`, and is `h` reached over HTTPS).
    let default = match url.scheme() {
        "http" => 80,
        _ => 443,
    };
    let port = url.port().unwrap_or(default);
    let same = RegistryHost::parse(host).is_ok_and(|h| {
        (h.host == registry.host && registry.port.unwrap_or(default) == port)
            || (registry.is_docker_hub() && host == "registry-1.docker.io" && url.port().is_none())
    });
    if same {
        Ok(())
    } else {
        Err(format!(
            "server {server:?} is not {registry}; the origin is reached as the pod's annotation \
             lists say, so list {server:?} as a [host.\"...\"] mirror instead"
        ))
    }
}

/// Parses a hosts file; relative `ca` paths are relative to `dir`.
pub fn parse(text: &str, dir: &Path) -> Result<Vec<Mirror>, String> {
    let file: HostsFile = toml::from_str(text).map_err(|e| toml_error(e, ""))?;
    unknown_key(&file.other, "")?;
    let mut out = Vec::new();
    for (url_text, cfg) in file.host.unwrap_or_default() {
        let at = format!("host {url_text:?}: ");
        let cfg: HostTable = cfg.try_into().map_err(|e| toml_error(e, &at))?;
        unknown_key(&cfg.other, &at)?;
        let url =
            Url::parse(&url_text).map_err(|e| format!("host {url_text:?}: not a URL ({e})"))?;
        if url.scheme() != "http" && url.scheme() != "https" {
            return Err(format!(
                "host {url_text:?}: the scheme must be http or https"
            ));
        }
        if url.host_str().is_none() || url.query().is_some() || url.fragment().is_some() {
            return Err(format!(
                "host {url_text:?}: expected scheme://host[:port][/path]"
            ));
        }
        let caps = cfg.capabilities.map(OneOrMany::list);
        for c in caps.iter().flatten() {
            if !matches!(c.as_str(), "pull" | "resolve" | "push") {
                return Err(format!("host {url_text:?}: unknown capability {c:?}"));
            }
        }
        let has = |c: &str| caps.as_ref().is_none_or(|cs| cs.iter().any(|x| x == c));
        let mut headers = Vec::new();
        for (name, values) in cfg.header.unwrap_or_default() {
            let valid_name =
                !name.is_empty() && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
            if !valid_name || name.eq_ignore_ascii_case("authorization") {
                return Err(format!("host {url_text:?}: header {name:?} is not allowed"));
            }
            let values: OneOrMany = values
                .try_into()
                .map_err(|_| format!("host {url_text:?}: header values must be strings"))?;
            for value in values.list() {
                if value.chars().any(|c| c.is_control()) {
                    return Err(format!(
                        "host {url_text:?}: header {name} has a control character"
                    ));
                }
                headers.push((name.clone(), value));
            }
        }
        let m = Mirror {
            written_port: written_port(&url_text),
            url: url.clone(),
            api_prefix: String::new(),
            resolve: has("resolve"),
            pull: has("pull"),
            skip_verify: cfg.skip_verify.unwrap_or(false),
            ca: cfg
                .ca
                .map(OneOrMany::list)
                .unwrap_or_default()
                .into_iter()
                .map(|p| {
                    let p = PathBuf::from(p);
                    if p.is_absolute() { p } else { dir.join(p) }
                })
                .collect(),
            override_path: cfg.override_path.unwrap_or(false),
            headers,
        };
        if m.skip_verify && url.scheme() == "http" {
            return Err(format!(
                "host {url_text:?}: skip_verify makes no sense for http://"
            ));
        }
        out.push(m.with_path());
    }
    Ok(out)
}

impl Mirror {
    fn with_path(mut self) -> Mirror {
        let path = self.url.path().trim_end_matches('/').to_string();
        self.api_prefix = if self.override_path || path.ends_with("/v2") {
            path
        } else {
            format!("{path}/v2")
        };
        self.url.set_path("/");
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_containerd_hosts_files() {
        let m = parse(
            r#"
server = "https://registry-1.docker.io"

[host."http://10.0.0.5:5000"]
  capabilities = ["pull", "resolve"]

[host."https://mirror.example.com/proxy/docker"]
  capabilities = ["pull"]
  ca = "mirror-ca.crt"

[host."https://harbor.example.com/v2/proxy-cache"]
  override_path = true
  skip_verify = true
  [host."https://harbor.example.com/v2/proxy-cache".header]
    X-Dragonfly-Registry = ["https://index.docker.io"]
"#,
            Path::new("/etc/kci/certs.d/docker.io"),
        )
        .unwrap();
        assert_eq!(m.len(), 3);
        assert_eq!(m[0].url.as_str(), "http://10.0.0.5:5000/");
        assert_eq!(m[0].api_prefix, "/v2");
        assert!(m[0].resolve && m[0].pull);
        assert_eq!(m[0].authority(), "10.0.0.5:5000");
        assert_eq!(m[1].api_prefix, "/proxy/docker/v2");
        assert!(!m[1].resolve);
        assert_eq!(
            m[1].ca,
            vec![PathBuf::from("/etc/kci/certs.d/docker.io/mirror-ca.crt")]
        );
        assert_eq!(m[2].api_prefix, "/v2/proxy-cache");
        assert!(m[2].skip_verify);
        assert_eq!(
            m[2].headers,
            vec![(
                "X-Dragonfly-Registry".to_string(),
                "https://index.docker.io".to_string()
            )]
        );
    }

    #[test]
    fn server_may_only_name_the_registry() {
        let reg = |s: &str| RegistryHost::parse(s).unwrap();
        assert!(
            check_server(
                "server = \"https://registry-1.docker.io\"",
                &reg("docker.io")
            )
            .is_ok()
        );
        assert!(check_server("server = \"https://docker.io\"", &reg("docker.io")).is_ok());
        assert!(
            check_server(
                "server = \"https://reg.example.com:5000\"",
                &reg("reg.example.com:5000")
            )
            .is_ok()
        );
        assert!(check_server("", &reg("reg.example.com")).is_ok());
        let err = check_server(
            "server = \"https://other.example.com\"",
            &reg("reg.example.com"),
        )
        .unwrap_err();
        assert!(err.contains("mirror instead"), "{err}");
        // The same endpoint spelled with the scheme's default port.
        assert!(
            check_server(
                "server = \"https://reg.example.com:443\"",
                &reg("reg.example.com")
            )
            .is_ok()
        );
        assert!(
            check_server(
                "server = \"https://reg.example.com:8443\"",
                &reg("reg.example.com")
            )
            .is_err()
        );
        // Written with the default port on both sides, or on one: the same endpoint.
        assert!(check_server("server = \"https://h.example:443\"", &reg("h.example:443")).is_ok());
        assert!(check_server("server = \"https://h.example\"", &reg("h.example:443")).is_ok());
        assert!(check_server("server = \"http://h.example:80\"", &reg("h.example:80")).is_ok());
        assert!(check_server("server = \"https://h.example\"", &reg("h.example:80")).is_err());
        assert_eq!(written_port("https://m.example:443/v2"), Some(443));
        assert_eq!(written_port("https://[::1]:443"), Some(443));
        assert_eq!(written_port("https://[::1]"), None);
        assert_eq!(written_port("https://m.example"), None);
    }

    #[test]
    fn rejects_what_it_cannot_honour() {
        for (text, want) in [
            ("[host.\"ftp://x\"]\n", "scheme"),
            ("[host.\"not a url\"]\n", "not a URL"),
            ("[host.\"http://x\"]\nskip_verify = true\n", "skip_verify"),
            (
                "[host.\"https://x\"]\ncapabilities = [\"fly\"]\n",
                "capability",
            ),
            (
                "[host.\"https://x\"]\nclient = \"c.pem\"\n",
                "not supported",
            ),
            ("[host.\"https://x\"]\nsurprise = 1\n", "unknown key"),
            ("mirrors = 1\n", "unknown key"),
            ("[host\n", "invalid TOML"),
        ] {
            let err = parse(text, Path::new("/d")).expect_err(text);
            assert!(err.contains(want), "{text}: {err}");
        }
    }
}
