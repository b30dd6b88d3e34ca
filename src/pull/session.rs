//! One registry's session: the distribution API over the transport the policy chose, with
//! redirects (credentials only for the registry's own origin), retries and capped bodies.
//! Authentication is in [`super::auth`], blobs in [`super::blob`].

use std::sync::Arc;

use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue};
use reqwest::{Method, Response, StatusCode, Url};

use super::auth::Auth;
use super::body::read_capped;
pub use super::conn::{Conn, MAX_ERROR_BODY, OnwardError};
use super::retry::{Failure, redact};
use super::{PullError, Why};
use crate::config::auth::Credentials;
use crate::oci::Digest;
use crate::oci::manifest::{ACCEPT, MAX_MANIFEST};
use crate::registry::endpoints::Endpoint;
use crate::registry::transport::Transports;

/// One endpoint as a pull uses it: its connection and its authentication.
pub struct Session {
    pub conn: Conn,
    auth: Auth,
    /// Whether the host serves blobs in ranges (SPEC §13): 0 not known yet, 1 yes, 2 no.
    pub(super) ranges: std::sync::atomic::AtomicU8,
}

impl std::ops::Deref for Session {
    type Target = Conn;
    fn deref(&self) -> &Conn {
        &self.conn
    }
}

impl Session {
    /// Whether the host serves blobs in ranges, once known.
    pub(super) fn ranges(&self) -> Option<bool> {
        match self.ranges.load(std::sync::atomic::Ordering::Relaxed) {
            1 => Some(true),
            2 => Some(false),
            _ => None,
        }
    }

    /// Learns whether the host serves blobs in ranges (a refusal is final for the run).
    pub(super) fn set_ranges(&self, yes: bool) {
        use std::sync::atomic::Ordering;
        if yes {
            let _ = self
                .ranges
                .compare_exchange(0, 1, Ordering::Relaxed, Ordering::Relaxed);
        } else {
            self.ranges.store(2, Ordering::Relaxed);
        }
    }

    /// A session with one endpoint, over the client its transport calls for.
    pub fn new(
        endpoint: Endpoint,
        transports: Arc<Transports>,
        creds: Option<Credentials>,
    ) -> Result<Session, PullError> {
        Ok(Session {
            conn: Conn::new(endpoint, transports)?,
            auth: Auth::new(creds),
            ranges: std::sync::atomic::AtomicU8::new(0),
        })
    }

    /// A GET (or HEAD) on the registry with authentication; on 401 the token is refreshed once.
    pub(super) async fn get(
        &self,
        method: Method,
        repo: &str,
        url: Url,
        headers: HeaderMap,
    ) -> Result<Response, Failure> {
        let mut refreshed = false;
        loop {
            let auth = self.auth.authorization(&self.conn, repo, refreshed).await?;
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
                    self.auth.learn(resp.headers()).await;
                } else {
                    tracing::debug!(host = %redact(resp.url()), "ignoring the challenge of a host reached by a redirect");
                }
                refreshed = true;
                continue;
            }
            return Ok(resp);
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
                return Err(Failure::Fatal(PullError::WrongContent(Why {
                    message: format!("{url}: the registry says the manifest is {c} but its content is {actual}", url = redact(&url)),
                    hint: Some("the registry or something between it and this instance altered the content".into()),
                })));
            }
            Ok((body, ct))
        })
        .await
    }
}
