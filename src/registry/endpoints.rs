//! How a registry is reached: ONE function turns the policy's route and the instance's
//! mirrors into the ordered list of endpoints (mirrors first, then the origin), each with its
//! URL, transport, CA files and the key its credentials are looked up by. `explain` prints that
//! list and `pull` opens sessions from it; [`onward`] decides how a URL the registry points to
//! (a redirect, a token realm) may be reached.

use std::path::{Path, PathBuf};

use reqwest::Url;

use super::host::RegistryHost;
use super::mirrors::Mirror;
use super::policy::{Route, Transport};

use super::CERTS_D;

/// The configuration directory of `registry` under `root`.
pub fn certs_dir(root: &Path, registry: &RegistryHost) -> PathBuf {
    root.join(CERTS_D).join(registry.to_string())
}

/// Why a URL the registry pointed to may not be followed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("plain HTTP from a host reached over HTTPS")]
    Downgrade,
    #[error("the scheme {0:?} is not HTTP")]
    Scheme(String),
}

/// A mirror or origin URL that is not one.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}: {detail}")]
pub struct EndpointError {
    pub what: String,
    pub detail: String,
}

/// What an endpoint is to the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A mirror of `hosts.toml` with its capabilities: `resolve`, it may turn tags into
    /// digests; `pull`, as listed (shown by `explain`; a mirror is tried for content either way).
    Mirror { resolve: bool, pull: bool },
    /// The registry itself, reached as the pod's lists say.
    Origin,
}

/// One host an image may be fetched from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub role: Role,
    /// The decision for this host: the policy's route for the origin (with its matched entry
    /// and near misses), the hosts.toml entry's for a mirror.
    pub route: Route,
    /// `scheme://host[:port]` and any path of a mirror's URL.
    pub base: Url,
    /// The API root: `/v2`, or a mirror's own path.
    pub api_prefix: String,
    /// `?ns=<registry>` on a mirror's requests, as containerd sends it.
    pub ns: Option<String>,
    /// Extra CA files for verified HTTPS: the host's `certs.d` directory and a mirror's `ca`.
    pub ca_dir: Option<PathBuf>,
    pub ca_files: Vec<PathBuf>,
    /// Extra request headers (a mirror's `header` table).
    pub headers: Vec<(String, String)>,
}

impl Endpoint {
    /// `host[:port]` of this endpoint: the auth-file key its credentials are looked up by, and
    /// its name in the report (`served_by`).
    pub fn authority(&self) -> &RegistryHost {
        &self.route.registry
    }

    /// May resolve tags (the origin always; a mirror with the `resolve` capability).
    pub fn resolves(&self) -> bool {
        match self.role {
            Role::Origin => true,
            Role::Mirror { resolve, .. } => resolve,
        }
    }

    /// The API base URL, as shown by `explain` (`https://registry-1.docker.io/v2`).
    /// The origin keeps the port as the registry is written (`http://h:80/v2`).
    pub fn api_url(&self) -> String {
        let base = match self.role {
            Role::Origin => self.route.endpoint(),
            Role::Mirror { .. } => self.base.as_str().trim_end_matches('/').to_string(),
        };
        format!("{base}{}", self.api_prefix)
    }
}

/// THE answer to "how is this registry reached": its mirrors (in hosts.toml order, each
/// exactly as its entry says), then the origin (as the policy's `route` says).
pub fn endpoints(
    root: &Path,
    route: &Route,
    mirrors: &[Mirror],
) -> Result<Vec<Endpoint>, EndpointError> {
    let mut out = Vec::with_capacity(mirrors.len() + 1);
    for m in mirrors {
        let authority = RegistryHost::parse(&m.authority()).map_err(|detail| EndpointError {
            what: format!("mirror {}", m.url),
            detail,
        })?;
        let transport = match (m.url.scheme(), m.skip_verify) {
            ("http", _) => Transport::Http,
            (_, true) => Transport::HttpsInsecure,
            _ => Transport::Https,
        };
        out.push(Endpoint {
            role: Role::Mirror {
                resolve: m.resolve,
                pull: m.pull,
            },
            ca_dir: (transport == Transport::Https).then(|| certs_dir(root, &authority)),
            ca_files: m.ca.clone(),
            route: Route::direct(authority, transport),
            base: m.url.clone(),
            api_prefix: m.api_prefix.clone(),
            ns: Some(route.registry.to_string()),
            headers: m.headers.clone(),
        });
    }
    let base = Url::parse(&route.endpoint()).map_err(|e| EndpointError {
        what: format!("endpoint {}", route.endpoint()),
        detail: e.to_string(),
    })?;
    out.push(Endpoint {
        role: Role::Origin,
        ca_dir: (route.transport == Transport::Https).then(|| certs_dir(root, &route.registry)),
        ca_files: Vec::new(),
        route: route.clone(),
        base,
        api_prefix: "/v2".into(),
        ns: None,
        headers: Vec::new(),
    });
    Ok(out)
}

/// How `url`, named by the registry (a redirect's `Location`, a token realm), may be reached
/// from a request made over `from`: the endpoint's own origin as the endpoint is reached; any
/// other host over verified HTTPS (system roots), or over plain HTTP only when `from` was
/// plain HTTP itself. Never from HTTPS to plain HTTP. Credentials go only to the endpoint's
/// own origin (the caller decides that with [`same_origin`]).
pub fn onward(endpoint: &Endpoint, from: Transport, url: &Url) -> Result<Transport, Refused> {
    if same_origin(&endpoint.base, url) {
        return Ok(endpoint.route.transport);
    }
    match url.scheme() {
        "https" => Ok(Transport::Https),
        "http" if from == Transport::Http => Ok(Transport::Http),
        "http" => Err(Refused::Downgrade),
        other => Err(Refused::Scheme(other.to_string())),
    }
}

/// The same scheme, host and port.
pub fn same_origin(a: &Url, b: &Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::diag::{Notes, Origin};
    use crate::registry::policy::{ListKind, Policy, RegistryList};

    fn policy(http: &str, insecure: &str) -> Policy {
        let mut n = Notes::default();
        let mut list = |kind, v: &str| {
            RegistryList::parse(kind, &[v.to_string()], Origin::Flag("--x"), &mut n).unwrap()
        };
        let (h, i) = (
            list(ListKind::Http, http),
            list(ListKind::Insecure, insecure),
        );
        Policy::new(h, i, &mut Notes::default())
    }

    fn reg(s: &str) -> RegistryHost {
        RegistryHost::parse(s).unwrap()
    }

    #[test]
    fn plain_insecure_verified_and_mirrors_in_order() {
        let root = Path::new("/r");
        let p = policy("10.0.0.5:5000", "harbor.example.com");
        let e = endpoints(root, &p.route(&reg("10.0.0.5:5000")), &[]).unwrap();
        assert_eq!(e.len(), 1);
        assert_eq!(e[0].route.transport, Transport::Http);
        assert_eq!(e[0].api_url(), "http://10.0.0.5:5000/v2");
        assert_eq!(e[0].ca_dir, None);

        let e = endpoints(root, &p.route(&reg("harbor.example.com")), &[]).unwrap();
        assert_eq!(e[0].route.transport, Transport::HttpsInsecure);

        let e = endpoints(root, &p.route(&reg("harbor.example.com:8443")), &[]).unwrap();
        assert_eq!(e[0].route.transport, Transport::Https);
        assert_eq!(
            e[0].ca_dir.as_deref(),
            Some(Path::new("/r/etc/kci/certs.d/harbor.example.com:8443"))
        );
        assert_eq!(
            e[0].route.near_misses.len(),
            1,
            "the near miss travels as data"
        );

        let e = endpoints(root, &p.route(&reg("docker.io")), &[]).unwrap();
        assert_eq!(e[0].api_url(), "https://registry-1.docker.io/v2");

        let mirrors = crate::registry::mirrors::parse(
            "[host.\"http://10.0.0.9:5000\"]\ncapabilities = [\"pull\"]\n\
             [host.\"https://m.example:443\"]\n",
            Path::new("/r/etc/kci/certs.d/docker.io"),
        )
        .unwrap();
        let e = endpoints(root, &p.route(&reg("docker.io")), &mirrors).unwrap();
        let roles: Vec<_> = e
            .iter()
            .map(|x| (x.authority().to_string(), x.resolves()))
            .collect();
        assert_eq!(
            roles,
            vec![
                ("10.0.0.9:5000".into(), false),
                ("m.example:443".into(), true),
                ("docker.io".into(), true)
            ]
        );
        assert_eq!(e[0].route.transport, Transport::Http);
        assert_eq!(e[1].route.transport, Transport::Https);
        assert_eq!(e[0].ns.as_deref(), Some("docker.io"));
    }

    #[test]
    fn onward_never_downgrades() {
        let root = Path::new("/r");
        let p = policy("plain.example:5000", "");
        let http = &endpoints(root, &p.route(&reg("plain.example:5000")), &[]).unwrap()[0];
        let https = &endpoints(root, &p.route(&reg("secure.example")), &[]).unwrap()[0];
        let u = |s: &str| Url::parse(s).unwrap();
        assert_eq!(
            onward(http, Transport::Http, &u("http://storage.example/x")),
            Ok(Transport::Http)
        );
        assert_eq!(
            onward(http, Transport::Http, &u("https://storage.example/x")),
            Ok(Transport::Https)
        );
        assert_eq!(
            onward(https, Transport::Https, &u("http://storage.example/x")),
            Err(Refused::Downgrade)
        );
        // After a hop to HTTPS, plain HTTP is refused even for an HTTP registry.
        assert!(onward(http, Transport::Https, &u("http://storage.example/x")).is_err());
        assert_eq!(
            onward(https, Transport::Https, &u("https://secure.example/token")),
            Ok(Transport::Https)
        );
        assert!(onward(https, Transport::Https, &u("ftp://x/")).is_err());
        assert_eq!(
            onward(http, Transport::Http, &u("http://plain.example:5000/v2/x")),
            Ok(Transport::Http),
            "its own origin, as the policy says"
        );
    }
}
