//! One registry's session: the distribution API over the transport the policy chose, with
//! authentication (anonymous, Basic, Bearer tokens), redirects, retries and resumable blobs.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine as _;
use reqwest::header::{
    AUTHORIZATION, CONTENT_RANGE, CONTENT_TYPE, HeaderMap, HeaderValue, LOCATION, RANGE,
    RETRY_AFTER, WWW_AUTHENTICATE,
};
use reqwest::{Client, Method, Response, StatusCode, Url};
use tokio::sync::mpsc;

use super::speed::LowSpeed;
use super::{Failure, PullError};
use crate::config::auth::Credentials;
use crate::oci::Digest;
use crate::oci::manifest::{ACCEPT, Descriptor, MAX_MANIFEST};
use crate::registry::policy::{Route, Transport};
use crate::registry::transport::Transports;
use crate::store::Store;

/// Retries after the first attempt, for transient failures (resets, timeouts, 5xx, 429).
pub const RETRIES: u32 = 4;
/// Retries for a mirror before the next host is tried.
pub const MIRROR_RETRIES: u32 = 1;
const MAX_REDIRECTS: usize = 10;
/// Largest error body read (SPEC §9).
pub const MAX_ERROR_BODY: u64 = 64 << 10;
/// Largest token response kept in memory (SPEC §9).
pub const MAX_TOKEN_BODY: u64 = 1 << 20;
/// Bytes gathered from the network before they are handed to the blob's writer thread.
const WRITE_BATCH: usize = 512 << 10;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Challenge {
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

pub struct Session {
    pub route: Route,
    /// `host[:port]` of this endpoint (the registry, or a mirror), for the report.
    pub label: String,
    /// May resolve tags (a mirror without the `resolve` capability serves digests only).
    pub resolve: bool,
    base: Url,
    /// API root: `/v2`, or a mirror's own path.
    prefix: String,
    /// `?ns=<registry>` on a mirror's requests, as containerd sends it.
    ns: Option<String>,
    /// Failed attempts to reach `/v2/`, and why a mirror was given up for this run.
    ping_failures: AtomicU64,
    unreachable: std::sync::OnceLock<String>,
    /// Extra headers sent to this endpoint (a mirror's hosts.toml `header` table).
    headers: HeaderMap,
    /// Retries after a transient failure: a mirror gets one, so that a dead mirror costs
    /// little before the next host is tried; the origin gets [`RETRIES`].
    retries: u32,
    client: Client,
    transports: Arc<Transports>,
    creds: Option<Credentials>,
    auth: tokio::sync::Mutex<AuthState>,
    /// Set once the warning about credentials sent without verified TLS was logged.
    warned_clear: std::sync::Once,
}

/// Back-off before retry `attempt` (1-based): 250 ms doubling, jittered, at most 8 s, or what
/// the server asked for in `Retry-After` (at most 60 s).
pub fn backoff(attempt: u32, retry_after: Option<Duration>) -> Duration {
    if let Some(d) = retry_after {
        return d.min(Duration::from_secs(60));
    }
    let base = 250u64 << (attempt.saturating_sub(1)).min(5);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos() as u64)
        .unwrap_or(0);
    let jitter = nanos % (base / 2 + 1);
    Duration::from_millis((base + jitter).min(8000))
}

fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    v.parse::<u64>().ok().map(Duration::from_secs)
}

/// A URL as it may appear in a message or the report: no user name or password, no query
/// (a presigned storage URL carries its signature there).
pub fn redact(u: &Url) -> String {
    let mut u = u.clone();
    let _ = u.set_username("");
    let _ = u.set_password(None);
    u.set_query(None);
    u.set_fragment(None);
    u.to_string()
}

/// [`redact`] for a URL held as text; text that is not a URL is shown as it is.
fn redact_str(u: &str) -> String {
    Url::parse(u)
        .map(|u| redact(&u))
        .unwrap_or_else(|_| u.to_string())
}

/// Every error in the chain of `e`, including what an `io::Error` wraps (its `source()` skips
/// the wrapped error itself).
fn causes<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> Vec<&'a (dyn std::error::Error + 'static)> {
    let mut out = Vec::new();
    let mut todo = vec![e];
    while let Some(err) = todo.pop() {
        if out.len() > 32 {
            break;
        }
        out.push(err);
        if let Some(inner) = err
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
        {
            todo.push(inner);
        }
        if let Some(next) = err.source() {
            todo.push(next);
        }
    }
    out
}

/// The whole error chain of a reqwest error, for messages (URLs redacted).
pub(crate) fn describe(e: &reqwest::Error) -> String {
    let mut s = e.to_string();
    if let Some(u) = e.url() {
        s = s.replace(u.as_str(), &redact(u));
    }
    for inner in causes(e).into_iter().skip(1) {
        let t = inner.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
    }
    s
}

/// What a transport failure is, decided by the types in its chain, never by its text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TransportKind {
    /// The server's certificate was not accepted.
    Certificate,
    /// The TLS handshake got something that is not TLS (a plain-HTTP server).
    NotTls,
    /// The host name could not be resolved.
    Resolve,
    /// Anything else (refused, reset, closed, timed out): worth another try.
    Transient,
}

fn transport_kind(e: &reqwest::Error) -> TransportKind {
    for err in causes(e) {
        if let Some(tls) = err.downcast_ref::<rustls::Error>() {
            return match tls {
                rustls::Error::InvalidCertificate(_)
                | rustls::Error::NoCertificatesPresented
                | rustls::Error::UnsupportedNameType => TransportKind::Certificate,
                rustls::Error::InvalidMessage(_) => TransportKind::NotTls,
                _ => TransportKind::Transient,
            };
        }
        if err
            .downcast_ref::<crate::registry::resolver::ResolveError>()
            .is_some()
        {
            return TransportKind::Resolve;
        }
    }
    TransportKind::Transient
}

impl Session {
    pub fn new(
        route: Route,
        transports: Arc<Transports>,
        creds: Option<Credentials>,
    ) -> Result<Session, PullError> {
        let client = transports.for_route(&route).map_err(|e| PullError {
            message: e,
            hint: Some(format!(
                "fix or remove the CA files in {}",
                transports.certs_dir(&route.registry).display()
            )),
        })?;
        let base = Url::parse(&route.endpoint()).map_err(|e| PullError {
            message: format!("invalid endpoint {}: {e}", route.endpoint()),
            hint: None,
        })?;
        Ok(Session {
            label: route.registry.to_string(),
            resolve: true,
            prefix: "/v2".into(),
            ns: None,
            headers: HeaderMap::new(),
            ping_failures: AtomicU64::new(0),
            unreachable: std::sync::OnceLock::new(),
            retries: RETRIES,
            route,
            base,
            client,
            transports,
            creds,
            auth: tokio::sync::Mutex::new(AuthState::default()),
            warned_clear: std::sync::Once::new(),
        })
    }

    /// A session with a mirror of `registry`, reached exactly as its hosts.toml entry says.
    pub fn mirror(
        m: &crate::registry::mirrors::Mirror,
        registry: &crate::registry::host::RegistryHost,
        transports: Arc<Transports>,
        creds: Option<Credentials>,
    ) -> Result<Session, PullError> {
        let fail = |e: String| PullError {
            message: format!("mirror {}: {e}", m.url),
            hint: Some("fix the mirror's entry in hosts.toml".into()),
        };
        let host = crate::registry::host::RegistryHost::parse(&m.authority())
            .map_err(|e| fail(e.to_string()))?;
        let (client, transport) = match (m.url.scheme(), m.skip_verify) {
            ("http", _) => (transports.plain().map_err(fail)?, Transport::Http),
            (_, true) => (
                transports.insecure().map_err(fail)?,
                Transport::HttpsInsecure,
            ),
            _ => {
                let dir = transports.certs_dir(&host);
                (
                    transports.verified_with(Some(&dir), &m.ca).map_err(fail)?,
                    Transport::Https,
                )
            }
        };
        Ok(Session {
            route: Route {
                registry: host,
                transport,
                matched: None,
                notes: Vec::new(),
            },
            label: m.authority(),
            resolve: m.resolve,
            base: m.url.clone(),
            prefix: m.api_prefix.clone(),
            ns: Some(registry.to_string()),
            headers: {
                let mut h = HeaderMap::new();
                for (k, v) in &m.headers {
                    let name = reqwest::header::HeaderName::from_bytes(k.as_bytes())
                        .map_err(|e| fail(e.to_string()))?;
                    let value = HeaderValue::from_str(v).map_err(|e| fail(e.to_string()))?;
                    h.append(name, value);
                }
                h
            },
            ping_failures: AtomicU64::new(0),
            unreachable: std::sync::OnceLock::new(),
            retries: MIRROR_RETRIES,
            client,
            transports,
            creds,
            auth: tokio::sync::Mutex::new(AuthState::default()),
            warned_clear: std::sync::Once::new(),
        })
    }

    /// Logs, once per registry, that the auth file's credentials go out without verified TLS:
    /// the lists allow it, but an operator should know.
    fn warn_clear_credentials(&self, how: &str) {
        self.warned_clear.call_once(|| {
            tracing::warn!(
                registry = %self.label,
                "credentials for {} are sent over {how}, as the registry lists ask: anyone on \
                 the path can read them; use verified HTTPS for registries that need credentials",
                self.label
            );
        });
    }

    /// The failure for an unexpected status: retried (429, 5xx), or explained, with what the
    /// registry's error body says (read up to 64 KiB, within 5 s).
    async fn failure_of(&self, mut resp: Response, what: &str) -> Failure {
        // Where the answer came from, when a redirect led elsewhere (blob storage).
        let redirected = !self.same_origin(resp.url());
        let what = if redirected {
            format!("{what} (redirected to {})", redact(resp.url()))
        } else {
            what.to_string()
        };
        let what = what.as_str();
        match status_failure(resp.status(), resp.headers(), what, &self.route) {
            Failure::Fatal(mut e) => {
                if redirected {
                    e.hint = Some(format!(
                        "the storage that {} redirects to refused the request: check the \
                         registry's storage configuration (its credentials are the registry's \
                         business, never the auth file's)",
                        self.label
                    ));
                }
                let body = tokio::time::timeout(
                    Duration::from_secs(5),
                    read_capped(&mut resp, MAX_ERROR_BODY, what, self.low_speed()),
                )
                .await;
                if let Ok(Ok(body)) = body
                    && let Some(said) = registry_says(&body)
                {
                    e.message.push_str(&format!(" (the registry says: {said})"));
                }
                Failure::Fatal(e)
            }
            retry => retry,
        }
    }

    /// A fresh low-speed check for one response body.
    fn low_speed(&self) -> LowSpeed {
        let o = self.transports.options();
        LowSpeed::new(o.low_speed_limit, o.low_speed_time)
    }

    /// Whether this endpoint was given up for the rest of the run.
    pub fn is_unreachable(&self) -> bool {
        self.unreachable.get().is_some()
    }

    /// The URL of an API path (`/` for the ping, `/<repo>/manifests/<ref>`, ...).
    fn url(&self, path: &str) -> Url {
        let mut u = self.base.clone();
        u.set_path(&format!("{}{path}", self.prefix));
        if let Some(ns) = &self.ns {
            u.query_pairs_mut().append_pair("ns", ns);
        }
        u
    }

    fn same_origin(&self, u: &Url) -> bool {
        u.scheme() == self.base.scheme()
            && u.host_str() == self.base.host_str()
            && u.port_or_known_default() == self.base.port_or_known_default()
    }

    /// Explains a transport-level failure to the operator: what went wrong and what to change.
    fn transport_failure(&self, url: &Url, e: &reqwest::Error) -> Failure {
        let text = describe(e);
        let reg = &self.route.registry;
        let certs = self.transports.certs_dir(reg);
        let near: Vec<&String> = self
            .route
            .notes
            .iter()
            .filter(|n| n.contains("port-exact"))
            .collect();
        let near = if near.is_empty() {
            String::new()
        } else {
            format!(
                " Note: {}",
                near.iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(" ")
            )
        };
        let kind = transport_kind(e);
        if kind == TransportKind::Certificate {
            return Failure::Fatal(PullError {
                message: format!(
                    "TLS certificate of {} not accepted: {text}",
                    url.authority()
                ),
                hint: Some(format!(
                    "put the registry's CA certificate in {}/ca.crt, or, to skip verification \
                     for this registry, list exactly {reg} in k8s.ksyun.com/kci-insecure-registry.{near}",
                    certs.display()
                )),
            });
        }
        if kind == TransportKind::NotTls && url.scheme() == "https" {
            return Failure::Fatal(PullError {
                message: format!("TLS handshake with {} failed: {text}", url.authority()),
                hint: Some(format!(
                    "the registry seems to speak plain HTTP; if that is intended, list exactly \
                     {reg} in k8s.ksyun.com/kci-http-registry (the agent never falls back to \
                     HTTP by itself).{near}"
                )),
            });
        }
        if kind == TransportKind::Resolve {
            return Failure::Fatal(PullError {
                message: format!("cannot resolve {}: {text}", url.host_str().unwrap_or("")),
                hint: Some(
                    "add a host alias (k8s.ksyun.com/kci-host-aliases or KCI_HOST_ALIASES) or a \
                     DNS config that resolves it"
                        .into(),
                ),
            });
        }
        Failure::Retry {
            message: format!(
                "{} {}: {text}",
                redact(e.url().unwrap_or(url)),
                if e.is_timeout() {
                    "timed out"
                } else {
                    "failed"
                }
            ),
            after: None,
        }
    }

    /// Sends one request, following redirects: to any host, never from HTTPS to plain HTTP,
    /// and with credentials only for the registry itself.
    async fn send(
        &self,
        method: Method,
        url: Url,
        headers: HeaderMap,
        auth: Option<&str>,
    ) -> Result<Response, Failure> {
        let mut url = url;
        let mut client = self.client.clone();
        for _ in 0..=MAX_REDIRECTS {
            let mut req = client
                .request(method.clone(), url.clone())
                .headers(headers.clone());
            if self.same_origin(&url) {
                if let Some(a) = auth {
                    req = req.header(AUTHORIZATION, a);
                }
                for (k, v) in &self.headers {
                    req = req.header(k, v);
                }
            }
            let resp = req
                .send()
                .await
                .map_err(|e| self.transport_failure(&url, &e))?;
            if !resp.status().is_redirection() {
                return Ok(resp);
            }
            let Some(loc) = resp.headers().get(LOCATION).and_then(|v| v.to_str().ok()) else {
                return Ok(resp);
            };
            let next = url.join(loc).map_err(|e| {
                Failure::Fatal(PullError {
                    message: format!(
                        "{url} redirected to an invalid location {loc:?}: {e}",
                        url = redact(&url)
                    ),
                    hint: None,
                })
            })?;
            if url.scheme() == "https" && next.scheme() != "https" {
                return Err(Failure::Fatal(PullError {
                    message: format!("refused a redirect from HTTPS ({url}) to {next}", url = redact(&url), next = redact(&next)),
                    hint: Some("the registry or its storage redirects to plain HTTP; fix its configuration (the agent never downgrades)".into()),
                }));
            }
            client = if self.same_origin(&next) {
                self.client.clone()
            } else if next.scheme() == "https" {
                self.transports.verified(None).map_err(|e| {
                    Failure::Fatal(PullError {
                        message: e,
                        hint: None,
                    })
                })?
            } else if next.scheme() == "http" {
                self.transports.plain().map_err(|e| {
                    Failure::Fatal(PullError {
                        message: e,
                        hint: None,
                    })
                })?
            } else {
                return Err(Failure::Fatal(PullError {
                    message: format!("refused a redirect to {next}", next = redact(&next)),
                    hint: None,
                }));
            };
            tracing::debug!(from = %redact(&url), to = %redact(&next), "following redirect");
            url = next;
        }
        Err(Failure::Fatal(PullError {
            message: format!("too many redirects from {url}", url = redact(&url)),
            hint: None,
        }))
    }

    /// Learns how the registry authenticates (`GET /v2/`), once per run.
    async fn challenge(&self) -> Result<Challenge, Failure> {
        if let Some(c) = &self.auth.lock().await.challenge {
            return Ok(c.clone());
        }
        if let Some(why) = self.unreachable.get() {
            return Err(Failure::Fatal(PullError {
                message: format!("{} is unreachable ({why})", self.label),
                hint: None,
            }));
        }
        let resp = match self
            .send(Method::GET, self.url("/"), HeaderMap::new(), None)
            .await
        {
            Ok(r) => r,
            Err(Failure::Retry { message, after }) => {
                // A mirror that cannot be reached is given up for the rest of the run after
                // its retries, instead of being tried again for every blob.
                let failures = self.ping_failures.fetch_add(1, Ordering::Relaxed) + 1;
                if self.ns.is_some() && failures > u64::from(self.retries) {
                    if self.unreachable.set(message.clone()).is_ok() {
                        tracing::warn!(
                            host = %self.label,
                            "mirror {} is unreachable; the next host is used for the rest of this run",
                            self.label
                        );
                    }
                    return Err(Failure::Fatal(PullError {
                        message: format!("{} is unreachable ({message})", self.label),
                        hint: None,
                    }));
                }
                return Err(Failure::Retry { message, after });
            }
            Err(e) => return Err(e),
        };
        let c = match resp.status() {
            s if s.is_success() => Challenge::Anonymous,
            // Only the registry's own origin may name a token realm (SPEC §9).
            StatusCode::UNAUTHORIZED if !self.same_origin(resp.url()) => {
                return Err(Failure::Fatal(PullError {
                    message: format!(
                        "{} redirected GET /v2/ to {}, which asks for authentication; \
                         credentials are only sent to the registry itself",
                        self.label,
                        redact(resp.url())
                    ),
                    hint: Some(format!("fix the configuration of {}", self.label)),
                }));
            }
            StatusCode::UNAUTHORIZED => parse_challenge(resp.headers()).ok_or_else(|| {
                Failure::Fatal(PullError {
                    message: format!(
                        "{} answered 401 without a usable WWW-Authenticate challenge",
                        self.route.registry
                    ),
                    hint: None,
                })
            })?,
            _ => {
                let what = format!("GET {}", redact(&self.url("/")));
                return Err(self.failure_of(resp, &what).await);
            }
        };
        self.auth.lock().await.challenge = Some(c.clone());
        Ok(c)
    }

    /// The `Authorization` value for a repository, fetching a token if needed.
    async fn authorization(&self, repo: &str, refresh: bool) -> Result<Option<String>, Failure> {
        match self.challenge().await? {
            Challenge::Anonymous => Ok(None),
            Challenge::Basic => Ok(self.creds.as_ref().map(|c| {
                match self.route.transport {
                    Transport::Http => self.warn_clear_credentials("plain HTTP"),
                    Transport::HttpsInsecure => {
                        self.warn_clear_credentials("HTTPS without certificate verification")
                    }
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
                if !refresh && let Some(t) = self.auth.lock().await.tokens.get(&scope) {
                    return Ok(Some(format!("Bearer {t}")));
                }
                let token = self.fetch_token(&realm, service.as_deref(), &scope).await?;
                self.auth.lock().await.tokens.insert(scope, token.clone());
                Ok(Some(format!("Bearer {token}")))
            }
        }
    }

    async fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scope: &str,
    ) -> Result<String, Failure> {
        let fatal = |m: String, h: Option<String>| {
            Failure::Fatal(PullError {
                message: m,
                hint: h,
            })
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
        let client = if self.same_origin(&url) {
            self.client.clone()
        } else if url.scheme() == "https" {
            self.transports.verified(None).map_err(|e| fatal(e, None))?
        } else if url.scheme() == "http" && self.route.transport == Transport::Http {
            self.transports.plain().map_err(|e| fatal(e, None))?
        } else {
            return Err(fatal(
                format!(
                    "refused the token realm {realm}: plain HTTP for a registry reached over HTTPS",
                    realm = redact_str(realm)
                ),
                Some("the registry's token service must use HTTPS".into()),
            ));
        };
        let mut req = client.get(url.clone());
        if let Some(c) = &self.creds {
            if url.scheme() == "http" {
                self.warn_clear_credentials("plain HTTP");
            } else if self.same_origin(&url) && self.route.transport == Transport::HttpsInsecure {
                self.warn_clear_credentials("HTTPS without certificate verification");
            }
            req = req.basic_auth(&c.username, Some(&c.password));
        }
        let resp = req
            .send()
            .await
            .map_err(|e| self.transport_failure(&url, &e))?;
        if !resp.status().is_success() {
            let what = format!("token request to {realm}", realm = redact_str(realm));
            return Err(self.failure_of(resp, &what).await);
        }
        let mut resp = resp;
        let body = read_capped(
            &mut resp,
            MAX_TOKEN_BODY,
            &format!("the token response of {}", redact(&url)),
            self.low_speed(),
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

    /// A GET (or HEAD) on the registry with authentication; on 401 the token is refreshed once.
    async fn get(
        &self,
        method: Method,
        repo: &str,
        url: Url,
        headers: HeaderMap,
    ) -> Result<Response, Failure> {
        let mut refreshed = false;
        loop {
            let auth = self.authorization(repo, refreshed).await?;
            let resp = self
                .send(
                    method.clone(),
                    url.clone(),
                    headers.clone(),
                    auth.as_deref(),
                )
                .await?;
            if resp.status() == StatusCode::UNAUTHORIZED && !refreshed {
                // A challenge counts only from the registry's own origin: a host reached by a
                // redirect (blob storage) must never name the realm that receives the
                // registry's credentials (SPEC §9).
                if self.same_origin(resp.url()) {
                    if let Some(c) = parse_challenge(resp.headers()) {
                        self.auth.lock().await.challenge = Some(c);
                    }
                } else {
                    tracing::debug!(host = %redact(resp.url()), "ignoring the challenge of a host reached by a redirect");
                }
                refreshed = true;
                continue;
            }
            return Ok(resp);
        }
    }

    /// Runs `op` with retries on transient failures.
    async fn retrying<T>(
        &self,
        what: &str,
        mut op: impl AsyncFnMut() -> Result<T, Failure>,
    ) -> Result<T, PullError> {
        let mut attempt = 0;
        loop {
            match op().await {
                Ok(v) => return Ok(v),
                Err(Failure::Fatal(e)) => return Err(e),
                Err(Failure::Retry { message, after }) => {
                    attempt += 1;
                    if attempt > self.retries {
                        return Err(PullError {
                            message: format!(
                                "{what}: {message} (gave up after {} attempts)",
                                attempt
                            ),
                            hint: Some(format!(
                                "check that {} is reachable and healthy, then rerun",
                                self.route.registry
                            )),
                        });
                    }
                    let wait = backoff(attempt, after);
                    tracing::warn!(registry = %self.route.registry, "{what}: {message}; retrying in {} ms", wait.as_millis());
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }

    /// `HEAD` of a manifest: its digest, if the registry says it (`Docker-Content-Digest`).
    pub async fn head_manifest(
        &self,
        repo: &str,
        reference: &str,
    ) -> Result<Option<Digest>, PullError> {
        let url = self.url(&format!("/{repo}/manifests/{reference}"));
        let mut h = HeaderMap::new();
        h.insert(reqwest::header::ACCEPT, HeaderValue::from_static(ACCEPT));
        self.retrying("HEAD manifest", async || {
            let resp = self.get(Method::HEAD, repo, url.clone(), h.clone()).await?;
            if !resp.status().is_success() {
                return Err(self
                    .failure_of(resp, &format!("HEAD {url}", url = redact(&url)))
                    .await);
            }
            Ok(resp
                .headers()
                .get("docker-content-digest")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| Digest::parse(v).ok()))
        })
        .await
    }

    /// GETs a manifest or index; returns its bytes and `Content-Type`. The caller verifies the
    /// digest; a `Docker-Content-Digest` that disagrees with the content is an error here.
    pub async fn get_manifest(
        &self,
        repo: &str,
        reference: &str,
    ) -> Result<(Vec<u8>, Option<String>), PullError> {
        let url = self.url(&format!("/{repo}/manifests/{reference}"));
        let mut h = HeaderMap::new();
        h.insert(reqwest::header::ACCEPT, HeaderValue::from_static(ACCEPT));
        self.retrying("GET manifest", async || {
            let mut resp = self.get(Method::GET, repo, url.clone(), h.clone()).await?;
            if !resp.status().is_success() {
                return Err(self.failure_of(resp, &format!("GET {url}", url = redact(&url))).await);
            }
            let ct = resp.headers().get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(str::to_string);
            let claimed = resp.headers().get("docker-content-digest").and_then(|v| v.to_str().ok()).map(str::to_string);
            let body = read_capped(&mut resp, MAX_MANIFEST, &format!("the manifest {}", redact(&url)), self.low_speed()).await?;
            if let Some(c) = claimed.and_then(|c| Digest::parse(&c).ok())
                && let Err(actual) = c.verify(&body)
            {
                return Err(Failure::Fatal(PullError {
                    message: format!("{url}: the registry says the manifest is {c} but its content is {actual}", url = redact(&url)),
                    hint: Some("the registry or something between it and this instance altered the content".into()),
                }));
            }
            Ok((body, ct))
        })
        .await
    }

    /// Streams a blob into the store: hashed and written on a blocking thread, capped at the
    /// declared size, resumed with `Range` after a transient failure, verified before it is
    /// renamed into `blobs/`. Returns the bytes received over the network.
    pub async fn fetch_blob(
        &self,
        repo: &str,
        desc: &Descriptor,
        store: &Store,
        progress: &AtomicU64,
        slots: &tokio::sync::Semaphore,
    ) -> Result<u64, PullError> {
        let mut fresh_start_left = 1; // one full retry after a digest mismatch
        let store_hint = || {
            Some(format!(
                "check free space and permissions of {}",
                store.root().display()
            ))
        };
        loop {
            // Dropped uncommitted (an error, a retry, a deadline), the partial file goes.
            let (file, pending) = store
                .begin_ingest(&desc.digest, store.direct_for(desc.size))
                .map_err(|e| PullError {
                    message: e.to_string(),
                    hint: store_hint(),
                })?;
            match self
                .fetch_blob_once(repo, desc, file, progress, slots)
                .await
            {
                Ok(net) => {
                    pending.commit(&desc.digest).map_err(|e| PullError {
                        message: e.to_string(),
                        hint: store_hint(),
                    })?;
                    return Ok(net);
                }
                Err((e, mismatch)) => {
                    if mismatch && fresh_start_left > 0 {
                        fresh_start_left -= 1;
                        tracing::warn!(digest = %desc.digest, "{}; downloading it again", e.message);
                        continue;
                    }
                    return Err(e);
                }
            }
        }
    }

    async fn fetch_blob_once(
        &self,
        repo: &str,
        desc: &Descriptor,
        mut f: crate::store::IngestFile,
        progress: &AtomicU64,
        slots: &tokio::sync::Semaphore,
    ) -> Result<u64, (PullError, bool)> {
        let url = self.url(&format!("/{repo}/blobs/{}", desc.digest));
        // A download slot is held while bytes flow, not while the writer syncs the file:
        // the next download starts during this one's fsync.
        let slot = slots.acquire().await.map_err(|e| {
            (
                PullError {
                    message: e.to_string(),
                    hint: None,
                },
                false,
            )
        })?;
        enum Msg {
            /// Consecutive chunks, sent together: one wake-up of the writer per batch.
            Data(Vec<bytes::Bytes>),
            Reset,
        }
        // At most 4 batches (2 MiB) queued per blob: the writer hashes while a second thread
        // writes (direct I/O), so a deeper queue only raised peak RSS (1 GB image: 38-56 MiB
        // with 8, 37-44 MiB with 4, at the same speed).
        let (tx, mut rx) = mpsc::channel::<Msg>(4);
        let size = desc.size;
        let writer = tokio::task::spawn_blocking(move || -> std::io::Result<(Digest, u64)> {
            while let Some(m) = rx.blocking_recv() {
                match m {
                    Msg::Data(batch) => f.write_batch(&batch)?,
                    Msg::Reset => f.reset()?,
                }
            }
            f.finish()
        });
        let mut received: u64 = 0;
        let mut network: u64 = 0;
        let writer_gone = || {
            Failure::Fatal(PullError {
                message: "the blob writer stopped".into(),
                hint: None,
            })
        };
        let streamed = self
            .retrying(&format!("blob {}", desc.digest), async || {
                let mut h = HeaderMap::new();
                if received > 0 {
                    h.insert(RANGE, HeaderValue::from_str(&format!("bytes={received}-")).expect("ascii"));
                }
                let mut resp = self.get(Method::GET, repo, url.clone(), h).await?;
                match resp.status() {
                    StatusCode::OK => {
                        if received > 0 {
                            tx.send(Msg::Reset).await.map_err(|_| writer_gone())?;
                            progress.fetch_sub(received, Ordering::Relaxed);
                            received = 0;
                        }
                    }
                    StatusCode::PARTIAL_CONTENT => {
                        let start = resp
                            .headers()
                            .get(CONTENT_RANGE)
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.strip_prefix("bytes "))
                            .and_then(|v| v.split('-').next())
                            .and_then(|v| v.parse::<u64>().ok());
                        if start != Some(received) {
                            tx.send(Msg::Reset).await.map_err(|_| writer_gone())?;
                            progress.fetch_sub(received, Ordering::Relaxed);
                            received = 0;
                            return Err(Failure::Retry { message: "the registry answered a Range request with another range".into(), after: None });
                        }
                    }
                    StatusCode::RANGE_NOT_SATISFIABLE if received == size => return Ok(()),
                    _ => return Err(self.failure_of(resp, &format!("GET {url}", url = redact(&url))).await),
                }
                let mut batch: Vec<bytes::Bytes> = Vec::new();
                let mut batch_len = 0usize;
                let mut speed = self.low_speed();
                loop {
                    match speed.chunk(&mut resp).await {
                        Ok(Some(b)) => {
                            if received + b.len() as u64 > size {
                                return Err(Failure::Fatal(PullError {
                                    message: format!("blob {} is larger than its declared size of {size} bytes; the download was stopped at the limit", desc.digest),
                                    hint: Some("the registry serves content that does not match the manifest".into()),
                                }));
                            }
                            received += b.len() as u64;
                            progress.fetch_add(b.len() as u64, Ordering::Relaxed);
                            network += b.len() as u64;
                            batch_len += b.len();
                            batch.push(b);
                            if batch_len >= WRITE_BATCH {
                                tx.send(Msg::Data(std::mem::take(&mut batch))).await.map_err(|_| writer_gone())?;
                                batch_len = 0;
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            // What arrived is a valid prefix: keep it, resume after it.
                            if !batch.is_empty() {
                                tx.send(Msg::Data(batch)).await.map_err(|_| writer_gone())?;
                            }
                            return Err(e.into_failure(&format!("download interrupted at {received} of {size} bytes")));
                        }
                    }
                }
                if !batch.is_empty() {
                    tx.send(Msg::Data(batch)).await.map_err(|_| writer_gone())?;
                }
                if received < size {
                    return Err(Failure::Retry { message: format!("body ended at {received} of {size} bytes"), after: None });
                }
                Ok(())
            })
            .await;
        drop(tx);
        drop(slot);
        let written = writer.await.map_err(|e| {
            (
                PullError {
                    message: format!("blob writer failed: {e}"),
                    hint: None,
                },
                false,
            )
        })?;
        let (digest, n) = match (streamed, written) {
            (Ok(()), Ok(v)) => v,
            (_, Err(io)) => {
                return Err((
                    PullError {
                        message: format!("cannot write blob {}: {io}", desc.digest),
                        hint: Some("check free space and permissions of the store".into()),
                    },
                    false,
                ));
            }
            (Err(e), Ok(_)) => return Err((e, false)),
        };
        if digest != desc.digest || n != size {
            return Err((
                PullError {
                    message: format!(
                        "blob content does not match: expected {} ({size} bytes), got {digest} ({n} bytes)",
                        desc.digest
                    ),
                    hint: Some(format!(
                        "{} or something in between served wrong bytes; nothing was stored",
                        self.route.registry
                    )),
                },
                true,
            ));
        }
        Ok(network)
    }
}

/// Reads a body that is kept in memory, refusing more than `max` bytes (by its
/// `Content-Length`, or as soon as more arrives).
async fn read_capped(
    resp: &mut Response,
    max: u64,
    what: &str,
    mut speed: LowSpeed,
) -> Result<Vec<u8>, Failure> {
    let too_large = || {
        Failure::Fatal(PullError {
            message: format!("{what} is larger than {max} bytes; it was not read"),
            hint: Some(
                "the server sends far more than such a response can be; check which server this is"
                    .into(),
            ),
        })
    };
    if resp.content_length().is_some_and(|n| n > max) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = speed
        .chunk(resp)
        .await
        .map_err(|e| e.into_failure(&format!("reading {what}")))?
    {
        if (body.len() + chunk.len()) as u64 > max {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

fn parse_challenge(headers: &HeaderMap) -> Option<Challenge> {
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

/// The `errors` of a distribution error body (`{"errors":[{"code","message"}]}`), as one
/// printable line of at most 300 characters.
fn registry_says(body: &[u8]) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Body {
        errors: Vec<Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        code: Option<String>,
        message: Option<String>,
    }
    let b: Body = serde_json::from_slice(body).ok()?;
    let text = b
        .errors
        .iter()
        .take(3)
        .map(|e| match (&e.code, &e.message) {
            (Some(c), Some(m)) => format!("{c}: {m}"),
            (Some(x), None) | (None, Some(x)) => x.clone(),
            (None, None) => String::new(),
        })
        .filter(|s| !s.is_empty())
        .collect::<Vec<_>>()
        .join("; ");
    let text: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(300)
        .collect();
    (!text.trim().is_empty()).then_some(text)
}

/// Turns an unexpected status into a retry (429, 5xx) or an explained error.
fn status_failure(status: StatusCode, headers: &HeaderMap, what: &str, route: &Route) -> Failure {
    if status == StatusCode::TOO_MANY_REQUESTS || status.is_server_error() {
        return Failure::Retry {
            message: format!("{what}: {status}"),
            after: retry_after(headers),
        };
    }
    let reg = &route.registry;
    let hint = match status {
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => format!(
            "check the credentials for exactly {reg} in the auth file (--auth-file or \
             REGISTRY_AUTH_FILE; keys are host[:port], port-exact) and that they may pull this \
             repository"
        ),
        StatusCode::NOT_FOUND => {
            "check the repository and tag or digest: the registry does not have them".to_string()
        }
        StatusCode::BAD_REQUEST if route.transport == Transport::Http => format!(
            "the registry may expect HTTPS: remove {reg} from k8s.ksyun.com/kci-http-registry"
        ),
        _ => format!("see the registry's logs for {reg}"),
    };
    Failure::Fatal(PullError {
        message: format!("{what}: {status}"),
        hint: Some(hint),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
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

    #[test]
    fn the_registrys_error_body_is_quoted_printable_and_short() {
        assert_eq!(
            registry_says(br#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown","detail":{}}]}"#),
            Some("MANIFEST_UNKNOWN: manifest unknown".into())
        );
        let long = format!(
            r#"{{"errors":[{{"code":"X","message":"a\nb{}"}}]}}"#,
            "c".repeat(1000)
        );
        let said = registry_says(long.as_bytes()).unwrap();
        assert!(said.len() <= 300 && !said.contains('\n'), "{said}");
        assert_eq!(registry_says(b"<html>nope</html>"), None);
        assert_eq!(registry_says(br#"{"errors":[]}"#), None);
    }

    #[test]
    fn backoff_grows_and_honours_retry_after() {
        assert!(backoff(1, None) >= Duration::from_millis(250));
        assert!(backoff(3, None) >= Duration::from_millis(1000));
        assert!(backoff(30, None) <= Duration::from_secs(8));
        assert_eq!(
            backoff(1, Some(Duration::from_secs(2))),
            Duration::from_secs(2)
        );
        assert_eq!(
            backoff(1, Some(Duration::from_secs(600))),
            Duration::from_secs(60)
        );
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_static("3"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
    }
}
