//! Registry credentials in Docker `config.json` form (`--auth-file`, `REGISTRY_AUTH_FILE`),
//! keyed by the exact registry `host[:port]`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use serde::Deserialize;

use crate::diag::{InputError, Notes, Origin};
use crate::registry::host::{DOCKER_HUB, Host, RegistryHost};

#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Credentials({}, <redacted>)", self.username)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthFile {
    pub path: Option<PathBuf>,
    pub entries: Vec<(RegistryHost, Credentials)>,
}

impl AuthFile {
    /// The credentials for exactly this registry (Docker Hub's names, `docker.io`,
    /// `registry-1.docker.io` and `index.docker.io`, are one registry).
    pub fn lookup(&self, registry: &RegistryHost) -> Option<&Credentials> {
        let registry = hub_alias(registry.clone());
        self.entries
            .iter()
            .find(|(r, _)| *r == registry)
            .map(|(_, c)| c)
    }
}

#[derive(Deserialize)]
struct ConfigJson {
    auths: Option<BTreeMap<String, EntryJson>>,
    #[serde(rename = "credHelpers")]
    cred_helpers: Option<serde_json::Value>,
    #[serde(rename = "credsStore")]
    creds_store: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct EntryJson {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
    identitytoken: Option<String>,
}

/// A key of `auths`: `host[:port]`, possibly written as a URL
/// (`https://index.docker.io/v1/`). Docker Hub's aliases all mean `docker.io`.
fn parse_key(key: &str) -> Result<RegistryHost, String> {
    let mut k = key.trim();
    for scheme in ["https://", "http://"] {
        if let Some(rest) = k.strip_prefix(scheme) {
            k = rest;
        }
    }
    let k = k.split('/').next().unwrap_or("");
    Ok(hub_alias(RegistryHost::parse(k)?))
}

/// Docker Hub's other names, without a port, as `docker.io`.
fn hub_alias(mut host: RegistryHost) -> RegistryHost {
    if host.port.is_none()
        && matches!(&host.host, Host::Name(n) if n == "registry-1.docker.io" || n == "index.docker.io")
    {
        host.host = Host::Name(DOCKER_HUB.to_string());
    }
    host
}

pub fn parse_auth_file(text: &str, path: &Path, notes: &mut Notes) -> Result<AuthFile, InputError> {
    let origin = Origin::AuthFile(path.to_path_buf());
    let err = |d: String| InputError::new(origin.clone(), d);
    // serde's message may quote the offending value, which may be a secret: only its place.
    let raw: ConfigJson = serde_json::from_str(text).map_err(|e| {
        err(format!(
            "not a Docker config.json auth file ({} at line {} column {})",
            match e.classify() {
                serde_json::error::Category::Syntax | serde_json::error::Category::Eof =>
                    "invalid JSON",
                _ => "an unexpected value or type",
            },
            e.line(),
            e.column()
        ))
    })?;
    if raw.cred_helpers.is_some() || raw.creds_store.is_some() {
        notes.warn(format!(
            "{}: credHelpers and credsStore are not supported; only \"auths\" entries are used",
            path.display()
        ));
    }
    let mut entries = Vec::new();
    for (key, e) in raw.auths.unwrap_or_default() {
        let registry = parse_key(&key).map_err(|why| err(format!("auths key {key:?}: {why}")))?;
        let creds = match (e.auth.filter(|a| !a.is_empty()), e.username, e.password) {
            (Some(auth), _, _) => {
                let decoded = base64::engine::general_purpose::STANDARD
                    .decode(auth.trim())
                    .map_err(|_| err(format!("auths {key:?}: \"auth\" is not base64")))?;
                let decoded = String::from_utf8(decoded)
                    .map_err(|_| err(format!("auths {key:?}: \"auth\" is not UTF-8")))?;
                let (u, p) = decoded.split_once(':').ok_or_else(|| {
                    err(format!(
                        "auths {key:?}: \"auth\" must be base64 of user:password"
                    ))
                })?;
                Credentials {
                    username: u.to_string(),
                    password: p.to_string(),
                }
            }
            (None, Some(username), Some(password)) => Credentials { username, password },
            _ if e.identitytoken.is_some() => {
                notes.warn(format!(
                    "{}: auths {key:?} has only an identitytoken, which is not supported; ignored",
                    path.display()
                ));
                continue;
            }
            _ => {
                return Err(err(format!(
                    "auths {key:?} has neither \"auth\" nor \"username\" and \"password\""
                )));
            }
        };
        if entries.iter().any(|(r, _)| *r == registry) {
            notes.warn(format!(
                "{}: more than one entry for {registry}; the first is used",
                path.display()
            ));
            continue;
        }
        entries.push((registry, creds));
    }
    Ok(AuthFile {
        path: Some(path.to_path_buf()),
        entries,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<AuthFile, InputError> {
        parse_auth_file(text, Path::new("auth.json"), &mut Notes::default())
    }

    #[test]
    fn reads_docker_config_forms() {
        let f = parse(
            r#"{"auths":{
                "https://index.docker.io/v1/":{"auth":"dTE6cDE="},
                "reg.example.com:5000":{"username":"u2","password":"p:2"},
                "Harbor.Example.com":{"auth":"dTM6cDM6eA=="}}}"#,
        )
        .unwrap();
        let get = |s: &str| {
            f.lookup(
                &crate::registry::reference::Reference::parse(s)
                    .unwrap()
                    .registry,
            )
            .map(|c| (c.username.clone(), c.password.clone()))
        };
        assert_eq!(get("nginx"), Some(("u1".into(), "p1".into())));
        assert_eq!(
            get("registry-1.docker.io/library/nginx"),
            Some(("u1".into(), "p1".into())),
            "Docker Hub's API name is Docker Hub"
        );
        assert_eq!(get("registry-1.docker.io:443/library/nginx"), None);
        assert_eq!(
            get("reg.example.com:5000/a"),
            Some(("u2".into(), "p:2".into()))
        );
        assert_eq!(get("reg.example.com/a"), None, "port-exact");
        assert_eq!(
            get("harbor.example.com/a"),
            Some(("u3".into(), "p3:x".into()))
        );
        assert!(
            !format!("{:?}", f).contains("p1"),
            "passwords never in Debug output"
        );
    }

    #[test]
    fn rejects_malformed_files() {
        for (text, want) in [
            ("[]", "not a Docker config.json"),
            (r#"{"auths":{"reg":{"auth":"!!!"}}}"#, "base64"),
            (r#"{"auths":{"reg":{"auth":"dXNlcg=="}}}"#, "user:password"),
            (r#"{"auths":{"reg":{}}}"#, "neither"),
            (
                r#"{"auths":{"reg:0":{"username":"a","password":"b"}}}"#,
                "port",
            ),
        ] {
            let msg = parse(text).expect_err(text).to_string();
            assert!(
                msg.contains("auth.json") && msg.contains(want),
                "{text}: {msg}"
            );
        }
        // Values are never echoed: a password in the wrong place stays out of the message.
        for text in [
            r#"{"auths":{"reg":"c2VjcmV0LXZhbHVl"}}"#,
            r#"{"auths":{"reg":{"username":"u","password":12345678}}}"#,
            r#"{"auths":{"reg":{"username":"u","password":"s3cret-value" }"#,
        ] {
            let msg = parse(text).expect_err(text).to_string();
            assert!(
                !msg.contains("c2VjcmV0") && !msg.contains("12345678") && !msg.contains("s3cret"),
                "{msg}"
            );
            assert!(msg.contains("line 1"), "{msg}");
        }
        let mut notes = Notes::default();
        let f = parse_auth_file(r#"{"credsStore":"desktop"}"#, Path::new("a"), &mut notes).unwrap();
        assert!(f.entries.is_empty());
        assert_eq!(notes.warnings.len(), 1);
    }
}
