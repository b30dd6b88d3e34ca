//! The HTTP side of one endpoint (a registry, or one of its mirrors): its client, URLs,
//! redirects as [`onward`] allows them, retries, and what a failure means. Authentication
//! is [`super::auth`]'s; a [`super::session::Session`] puts the two together.

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use reqwest::header::{AUTHORIZATION, HeaderMap, HeaderValue, LOCATION};
use reqwest::{Client, Method, Response, Url};

use super::body::{log_request, read_capped};
use super::retry::{
    Failure, MIRROR_RETRIES, RETRIES, TransportKind, backoff, describe, redact, registry_says,
    status_failure, transport_kind,
};
use super::speed::LowSpeed;
use super::{PullError, Why};
use crate::registry::endpoints::{Endpoint, Refused, Role, onward, same_origin};
use crate::registry::policy::{Route, Transport};
use crate::registry::transport::{TransportError, Transports};

const MAX_REDIRECTS: usize = 10;

/// Why a redirect or a token realm is not followed.
#[derive(Debug, thiserror::Error)]
pub enum OnwardError {
    #[error(transparent)]
    Refused(#[from] Refused),
    #[error(transparent)]
    Client(#[from] TransportError),
}
/// Largest error body read (SPEC §9).
pub const MAX_ERROR_BODY: u64 = 64 << 10;

pub struct Conn {
    /// How this host is reached ([`crate::registry::endpoints::endpoints`]).
    pub endpoint: Endpoint,
    /// `host[:port]` of this endpoint (the registry, or a mirror), for the report.
    pub label: String,
    /// Failed attempts to reach `/v2/`, and why a mirror was given up for this run.
    pub(super) ping_failures: AtomicU64,
    pub(super) unreachable: std::sync::OnceLock<String>,
    /// The endpoint's extra headers (a mirror's hosts.toml `header` table).
    pub(super) headers: HeaderMap,
    /// Retries after a transient failure: a mirror gets one, so that a dead mirror costs
    /// little before the next host is tried; the origin gets [`RETRIES`].
    pub(super) retries: u32,
    pub(super) client: Client,
    pub(super) transports: Arc<Transports>,
}

impl Conn {
    /// The connection to one endpoint, over the client its transport calls for.
    pub fn new(endpoint: Endpoint, transports: Arc<Transports>) -> Result<Conn, PullError> {
        let origin = endpoint.role == Role::Origin;
        let fail = |e: String| {
            PullError::Registry(Why {
                message: if origin {
                    e
                } else {
                    format!("mirror {}: {e}", endpoint.base)
                },
                hint: Some(match (&endpoint.ca_dir, origin) {
                    (_, false) => "fix the mirror's entry in hosts.toml".to_string(),
                    (Some(dir), true) => format!("fix or remove the CA files in {}", dir.display()),
                    (None, true) => "see the error above".to_string(),
                }),
            })
        };
        let client = transports
            .for_endpoint(&endpoint)
            .map_err(|e| fail(e.to_string()))?;
        let mut headers = HeaderMap::new();
        for (k, v) in &endpoint.headers {
            let name = reqwest::header::HeaderName::from_bytes(k.as_bytes())
                .map_err(|e| fail(e.to_string()))?;
            let value = HeaderValue::from_str(v).map_err(|e| fail(e.to_string()))?;
            headers.append(name, value);
        }
        Ok(Conn {
            label: endpoint.authority().to_string(),
            headers,
            ping_failures: AtomicU64::new(0),
            unreachable: std::sync::OnceLock::new(),
            // A mirror gets one retry, so that a dead mirror costs little before the next host.
            retries: if origin { RETRIES } else { MIRROR_RETRIES },
            endpoint,
            client,
            transports,
        })
    }

    /// The decision for this host (its transport, matched entry, near misses).
    pub fn route(&self) -> &Route {
        &self.endpoint.route
    }

    /// The client for a URL the registry pointed to, as [`onward`] allows it from `from`.
    pub(super) fn onward_client(
        &self,
        from: Transport,
        url: &Url,
    ) -> Result<(Client, Transport), OnwardError> {
        let t = onward(&self.endpoint, from, url)?;
        let client = if same_origin(&self.endpoint.base, url) {
            self.client.clone()
        } else {
            self.transports.onward(t)?
        };
        Ok((client, t))
    }

    /// The failure for an unexpected status: retried (429, 5xx), or explained, with what the
    /// registry's error body says (read up to 64 KiB, within 5 s).
    pub(super) async fn failure_of(&self, mut resp: Response, what: &str) -> Failure {
        // Where the answer came from, when a redirect led elsewhere (blob storage).
        let redirected = !self.same_origin(resp.url());
        let what = if redirected {
            format!("{what} (redirected to {})", redact(resp.url()))
        } else {
            what.to_string()
        };
        let what = what.as_str();
        match status_failure(resp.status(), resp.headers(), what, self.route()) {
            Failure::Fatal(mut e) => {
                if redirected {
                    let label = self.label.clone();
                    e = e.map_why(|w| Why {
                        hint: Some(format!(
                            "the storage that {label} redirects to refused the request: check \
                             the registry's storage configuration (its credentials are the \
                             registry's business, never the auth file's)"
                        )),
                        ..w
                    });
                }
                let body = tokio::time::timeout(
                    Duration::from_secs(5),
                    read_capped(&mut resp, MAX_ERROR_BODY, what, self.low_speed()),
                )
                .await;
                if let Ok(Ok(body)) = body
                    && let Some(said) = registry_says(&body)
                {
                    e = e.map_why(|w| Why {
                        message: format!("{} (the registry says: {said})", w.message),
                        ..w
                    });
                }
                Failure::Fatal(e)
            }
            retry => retry,
        }
    }

    /// A fresh low-speed check for one response body.
    pub(super) fn low_speed(&self) -> LowSpeed {
        let o = self.transports.options();
        LowSpeed::new(o.low_speed_limit, o.low_speed_time)
    }

    /// Whether this endpoint was given up for the rest of the run.
    pub fn is_unreachable(&self) -> bool {
        self.unreachable.get().is_some()
    }

    /// The URL of an API path (`/` for the ping, `/<repo>/manifests/<ref>`, ...).
    pub(super) fn url(&self, path: &str) -> Url {
        let mut u = self.endpoint.base.clone();
        u.set_path(&format!("{}{path}", self.endpoint.api_prefix));
        if let Some(ns) = &self.endpoint.ns {
            u.query_pairs_mut().append_pair("ns", ns);
        }
        u
    }

    pub(super) fn same_origin(&self, u: &Url) -> bool {
        same_origin(&self.endpoint.base, u)
    }

    /// Explains a transport-level failure to the operator: what went wrong and what to change.
    pub(super) fn transport_failure(&self, url: &Url, e: &reqwest::Error) -> Failure {
        let text = describe(e);
        let reg = &self.route().registry;
        let certs = self.endpoint.ca_dir.clone().unwrap_or_default();
        let near: Vec<String> = self
            .route()
            .near_misses
            .iter()
            .map(|n| n.explain(reg))
            .collect();
        let near = if near.is_empty() {
            String::new()
        } else {
            format!(" Note: {}", near.join(" "))
        };
        let kind = transport_kind(e);
        if kind == TransportKind::Certificate {
            return Failure::Fatal(PullError::Certificate(Why {
                message: format!(
                    "TLS certificate of {} not accepted: {text}",
                    url.authority()
                ),
                hint: Some(format!(
                    "put the registry's CA certificate in {}/ca.crt, or, to skip verification \
                     for this registry, list exactly {reg} in k8s.ksyun.com/kci-insecure-registry \
                     (or --insecure-registry).{near}",
                    certs.display()
                )),
            }));
        }
        if kind == TransportKind::NotTls && url.scheme() == "https" {
            return Failure::Fatal(PullError::Registry(Why {
                message: format!("TLS handshake with {} failed: {text}", url.authority()),
                hint: Some(format!(
                    "the registry seems to speak plain HTTP; if that is intended, list exactly \
                     {reg} in k8s.ksyun.com/kci-http-registry (the agent never falls back to \
                     HTTP by itself).{near}"
                )),
            }));
        }
        if kind == TransportKind::Resolve {
            return Failure::Fatal(PullError::Resolve(Why {
                message: format!("cannot resolve {}: {text}", url.host_str().unwrap_or("")),
                hint: Some(
                    "add a host alias for it (--host-aliases, the k8s.ksyun.com/kci-host-aliases \
                     annotation or KCI_HOST_ALIASES) or a DNS config that resolves it"
                        .into(),
                ),
            }));
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
    pub(super) async fn send(
        &self,
        method: Method,
        url: Url,
        headers: HeaderMap,
        auth: Option<&str>,
    ) -> Result<Response, Failure> {
        let mut url = url;
        let mut client = self.client.clone();
        // How the current hop is reached: a redirect never goes from HTTPS to plain HTTP.
        let mut hop = self.route().transport;
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
            let sent = std::time::Instant::now();
            let resp = req.send().await;
            log_request(&method, &url, &resp, sent);
            let resp = resp.map_err(|e| self.transport_failure(&url, &e))?;
            if !resp.status().is_redirection() {
                return Ok(resp);
            }
            let Some(loc) = resp.headers().get(LOCATION).and_then(|v| v.to_str().ok()) else {
                return Ok(resp);
            };
            let next = url.join(loc).map_err(|e| {
                Failure::Fatal(PullError::Registry(Why {
                    message: format!(
                        "{url} redirected to an invalid location {loc:?}: {e}",
                        url = redact(&url)
                    ),
                    hint: None,
                }))
            })?;
            let (next_client, next_transport) = self.onward_client(hop, &next).map_err(|why| {
                Failure::Fatal(PullError::Registry(Why {
                    message: format!(
                        "refused a redirect from {} ({url}) to {next}: {why}",
                        hop.scheme().to_ascii_uppercase(),
                        url = redact(&url),
                        next = redact(&next)
                    ),
                    hint: Some(
                        "the registry or its storage redirects where the agent may not \
                         follow (it never downgrades from HTTPS to plain HTTP); fix its \
                         configuration"
                            .into(),
                    ),
                }))
            })?;
            client = next_client;
            hop = next_transport;
            tracing::debug!(from = %redact(&url), to = %redact(&next), "following redirect");
            url = next;
        }
        Err(Failure::Fatal(PullError::Registry(Why {
            message: format!("too many redirects from {url}", url = redact(&url)),
            hint: None,
        })))
    }

    /// Runs `op` with retries on transient failures.
    pub(super) async fn retrying<T>(
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
                        return Err(PullError::Registry(Why {
                            message: format!(
                                "{what}: {message} (gave up after {} attempts)",
                                attempt
                            ),
                            hint: Some(format!(
                                "check that {} is reachable and healthy, then rerun",
                                self.route().registry
                            )),
                        }));
                    }
                    let wait = backoff(attempt, after);
                    tracing::warn!(registry = %self.route().registry, "{what}: {message}; retrying in {} ms", wait.as_millis());
                    tokio::time::sleep(wait).await;
                }
            }
        }
    }
}
