//! Authentication with one registry: its challenge (learnt once per run, and only from its own
//! origin), Basic credentials, Bearer tokens by scope.

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use base64::Engine as _;
use reqwest::header::{HeaderMap, WWW_AUTHENTICATE};
use reqwest::{Method, StatusCode, Url};

use super::body::{log_request, read_capped};
use super::conn::Conn;
use super::retry::{Failure, redact, redact_str};
use super::{PullError, Why};
use crate::config::auth::Credentials;
use crate::registry::endpoints::Role;
use crate::registry::policy::Transport;

/// Largest token response kept in memory (SPEC §9).
pub const MAX_TOKEN_BODY: u64 = 1 << 20;

#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Challenge {
    Anonymous,
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
    },
}

#[derive(Default)]
struct AuthState {
    challenge: Option<Challenge>,
    /// Bearer tokens by scope.
    tokens: HashMap<String, String>,
}

/// How one endpoint is authenticated with: its credentials, its challenge, its tokens.
pub(super) struct Auth {
    creds: Option<Credentials>,
    state: tokio::sync::Mutex<AuthState>,
    /// Set once the warning about credentials sent without verified TLS was logged.
    warned_clear: std::sync::Once,
}

impl Auth {
    pub(super) fn new(creds: Option<Credentials>) -> Auth {
        Auth {
            creds,
            state: Default::default(),
            warned_clear: std::sync::Once::new(),
        }
    }

    /// A new challenge the registry's own origin sent with a 401 (a token that expired, a
    /// scope that changed).
    pub(super) async fn learn(&self, headers: &HeaderMap) {
        if let Some(c) = parse_challenge(headers) {
            self.state.lock().await.challenge = Some(c);
        }
    }

    /// Logs, once per registry, that the auth file's credentials go out without verified TLS:
    /// the lists allow it, but an operator should know.
    fn warn_clear_credentials(&self, label: &str, how: &str) {
        self.warned_clear.call_once(|| {
            tracing::warn!(
                registry = %label,
                "credentials for {label} are sent over {how}, as the registry lists ask: anyone \
                 on the path can read them; use verified HTTPS for registries that need \
                 credentials"
            );
        });
    }

    /// Learns how the registry authenticates (`GET /v2/`), once per run.
    async fn challenge(&self, conn: &Conn) -> Result<Challenge, Failure> {
        if let Some(c) = &self.state.lock().await.challenge {
            return Ok(c.clone());
        }
        if let Some(why) = conn.unreachable.get() {
            return Err(Failure::Fatal(PullError::Registry(Why {
                message: format!("{} is unreachable ({why})", conn.label),
                hint: None,
            })));
        }
        let resp = match conn
            .send(Method::GET, conn.url("/"), HeaderMap::new(), None)
            .await
        {
            Ok(r) => r,
            Err(Failure::Retry { message, after }) => {
                // A mirror that cannot be reached is given up for the rest of the run after
                // its retries, instead of being tried again for every blob.
                let failures = conn.ping_failures.fetch_add(1, Ordering::Relaxed) + 1;
                if conn.endpoint.role != Role::Origin && failures > u64::from(conn.retries) {
                    if conn.unreachable.set(message.clone()).is_ok() {
                        tracing::warn!(
                            host = %conn.label,
                            "mirror {} is unreachable; the next host is used for the rest of this run",
                            conn.label
                        );
                    }
                    return Err(Failure::Fatal(PullError::Registry(Why {
                        message: format!("{} is unreachable ({message})", conn.label),
                        hint: None,
                    })));
                }
                return Err(Failure::Retry { message, after });
            }
            Err(e) => return Err(e),
        };
        let c = match resp.status() {
            s if s.is_success() => Challenge::Anonymous,
            // Only the registry's own origin may name a token realm (SPEC §9).
            StatusCode::UNAUTHORIZED if !conn.same_origin(resp.url()) => {
                return Err(Failure::Fatal(PullError::Registry(Why {
                    message: format!(
                        "{} redirected GET /v2/ to {}, which asks for authentication; \
                         credentials are only sent to the registry itself",
                        conn.label,
                        redact(resp.url())
                    ),
                    hint: Some(format!("fix the configuration of {}", conn.label)),
                })));
            }
            StatusCode::UNAUTHORIZED => parse_challenge(resp.headers()).ok_or_else(|| {
                Failure::Fatal(PullError::Registry(Why {
                    message: format!(
                        "{} answered 401 without a usable WWW-Authenticate challenge",
                        conn.route().registry
                    ),
                    hint: None,
                }))
            })?,
            _ => {
                let what = format!("GET {}", redact(&conn.url("/")));
                return Err(conn.failure_of(resp, &what).await);
            }
        };
        self.state.lock().await.challenge = Some(c.clone());
        Ok(c)
    }

    /// The `Authorization` value for a repository, fetching a token if needed.
    pub(super) async fn authorization(
        &self,
        conn: &Conn,
        repo: &str,
        refresh: bool,
    ) -> Result<Option<String>, Failure> {
        match self.challenge(conn).await? {
            Challenge::Anonymous => Ok(None),
            Challenge::Basic => Ok(self.creds.as_ref().map(|c| {
                match conn.route().transport {
                    Transport::Http => self.warn_clear_credentials(&conn.label, "plain HTTP"),
                    Transport::HttpsInsecure => self.warn_clear_credentials(
                        &conn.label,
                        "HTTPS without certificate verification",
                    ),
                    Transport::Https => {}
                }
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD
                        .encode(format!("{}:{}", c.username, c.password))
                )
            })),
            Challenge::Bearer { realm, service } => {
                let scope = format!("repository:{repo}:pull");
                if !refresh && let Some(t) = self.state.lock().await.tokens.get(&scope) {
                    return Ok(Some(format!("Bearer {t}")));
                }
                let token = self
                    .fetch_token(conn, &realm, service.as_deref(), &scope)
                    .await?;
                self.state.lock().await.tokens.insert(scope, token.clone());
                Ok(Some(format!("Bearer {token}")))
            }
        }
    }

    async fn fetch_token(
        &self,
        conn: &Conn,
        realm: &str,
        service: Option<&str>,
        scope: &str,
    ) -> Result<String, Failure> {
        let fatal = |m: String, h: Option<String>| {
            Failure::Fatal(PullError::Registry(Why {
                message: m,
                hint: h,
            }))
        };
        let mut url = Url::parse(realm)
            .map_err(|e| fatal(format!("invalid token realm {realm:?}: {e}"), None))?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(s) = service {
                q.append_pair("service", s);
            }
            q.append_pair("scope", scope);
        }
        // A realm named by the registry's own origin (the only challenge that counts), reached
        // as onward() allows: never plain HTTP for a registry reached over HTTPS.
        let (client, _) = conn
            .onward_client(conn.route().transport, &url)
            .map_err(|why| {
                fatal(
                    format!(
                        "refused the token realm {realm}: {why}",
                        realm = redact_str(realm)
                    ),
                    Some("the registry's token service must use HTTPS".into()),
                )
            })?;
        let mut req = client.get(url.clone());
        if let Some(c) = &self.creds {
            if url.scheme() == "http" {
                self.warn_clear_credentials(&conn.label, "plain HTTP");
            } else if conn.same_origin(&url) && conn.route().transport == Transport::HttpsInsecure {
                self.warn_clear_credentials(&conn.label, "HTTPS without certificate verification");
            }
            req = req.basic_auth(&c.username, Some(&c.password));
        }
        let sent = std::time::Instant::now();
        let resp = req.send().await;
        log_request(&reqwest::Method::GET, &url, &resp, sent);
        let resp = resp.map_err(|e| conn.transport_failure(&url, &e))?;
        if !resp.status().is_success() {
            let what = format!("token request to {realm}", realm = redact_str(realm));
            return Err(conn.failure_of(resp, &what).await);
        }
        let mut resp = resp;
        let body = read_capped(
            &mut resp,
            MAX_TOKEN_BODY,
            &format!("the token response of {}", redact(&url)),
            conn.low_speed(),
        )
        .await?;
        #[derive(serde::Deserialize)]
        struct Tok {
            token: Option<String>,
            access_token: Option<String>,
        }
        let t: Tok = serde_json::from_slice(&body).map_err(|e| {
            fatal(
                format!(
                    "token service {realm} sent invalid JSON: {e}",
                    realm = redact_str(realm)
                ),
                None,
            )
        })?;
        t.token
            .or(t.access_token)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                fatal(
                    format!(
                        "token service {realm} sent no token",
                        realm = redact_str(realm)
                    ),
                    None,
                )
            })
    }
}

pub(super) fn parse_challenge(headers: &HeaderMap) -> Option<Challenge> {
    let mut basic = false;
    for v in headers.get_all(WWW_AUTHENTICATE) {
        let Ok(text) = v.to_str() else { continue };
        let Ok(challenges) = http_auth::parse_challenges(text) else {
            continue;
        };
        for c in challenges {
            if c.scheme.eq_ignore_ascii_case("bearer") {
                let param = |name: &str| {
                    c.params
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case(name))
                        .map(|(_, v)| v.to_unescaped())
                };
                if let Some(realm) = param("realm") {
                    return Some(Challenge::Bearer {
                        realm,
                        service: param("service"),
                    });
                }
            } else if c.scheme.eq_ignore_ascii_case("basic") {
                basic = true;
            }
        }
    }
    basic.then_some(Challenge::Basic)
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    pub(super) fn challenges() {
        let mut h = HeaderMap::new();
        h.append(WWW_AUTHENTICATE, HeaderValue::from_static(r#"Bearer realm="https://auth.example/token",service="reg",scope="repository:a:pull""#));
        assert_eq!(
            parse_challenge(&h),
            Some(Challenge::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("reg".into())
            })
        );
        let mut h = HeaderMap::new();
        h.append(
            WWW_AUTHENTICATE,
            HeaderValue::from_static(r#"Basic realm="registry""#),
        );
        assert_eq!(parse_challenge(&h), Some(Challenge::Basic));
        assert_eq!(parse_challenge(&HeaderMap::new()), None);
    }
}
