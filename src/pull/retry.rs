//! What a failed request was, whether it is worth another try, and how it is told: transport
//! errors classified by the types in their chain (never by their text), statuses turned into
//! retries or explained errors (quoting the registry's own error body), back-off, and URLs
//! redacted for messages.

use std::time::Duration;

use reqwest::header::{HeaderMap, RETRY_AFTER};
use reqwest::{StatusCode, Url};

use super::{PullError, Why};
use crate::registry::policy::{Route, Transport};

/// Retries after the first attempt, for transient failures (resets, timeouts, 5xx, 429).
pub const RETRIES: u32 = 4;
/// Retries for a mirror before the next host is tried.
pub const MIRROR_RETRIES: u32 = 1;

/// The outcome of one attempt at a request.
#[derive(Debug)]
pub enum Failure {
    /// Worth another try (reset, timeout, 5xx, 429, too slow), after `after` if the server
    /// said so.
    Retry {
        message: String,
        after: Option<Duration>,
    },
    Fatal(PullError),
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

pub(super) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
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
pub(super) fn redact_str(u: &str) -> String {
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
    let mut certificate = None;
    for inner in causes(e).into_iter().skip(1) {
        let t = inner.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        if let Some(rustls::Error::InvalidCertificate(c)) = inner.downcast_ref::<rustls::Error>() {
            certificate = Some((t, c.clone()));
        }
    }
    // The TLS library names certificate problems by their Rust names; say them in words.
    if let Some((text, c)) = certificate {
        s = s.replace(&text, &certificate_words(&c));
    }
    s
}

/// A refused certificate, in words (with the TLS library's name for it, to search for).
fn certificate_words(c: &rustls::CertificateError) -> String {
    use rustls::CertificateError as C;
    let (what, name) = match c {
        C::UnknownIssuer => (
            "its certificate is signed by an authority this instance does not trust",
            "UnknownIssuer",
        ),
        C::NotValidForName | C::NotValidForNameContext { .. } => (
            "its certificate is not issued for this host name",
            "NotValidForName",
        ),
        C::Expired | C::ExpiredContext { .. } => ("its certificate has expired", "Expired"),
        C::NotValidYet | C::NotValidYetContext { .. } => (
            "its certificate is not valid yet (check this instance's clock)",
            "NotValidYet",
        ),
        C::Revoked => ("its certificate is revoked", "Revoked"),
        C::BadSignature => (
            "its certificate's signature does not verify",
            "BadSignature",
        ),
        C::BadEncoding => ("its certificate is not a valid certificate", "BadEncoding"),
        C::InvalidPurpose | C::InvalidPurposeContext { .. } => {
            ("its certificate is not for a TLS server", "InvalidPurpose")
        }
        C::Other(o) => {
            return format!(
                "the registry's certificate was refused ({o}; a registry's own self-signed \
                 certificate is trusted when it is in its certs.d directory)"
            );
        }
        _ => ("its certificate was refused", "other"),
    };
    format!("invalid peer certificate: {what} ({name})")
}

/// What a transport failure is, decided by the types in its chain, never by its text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TransportKind {
    /// The server's certificate was not accepted.
    Certificate,
    /// The TLS handshake got something that is not TLS (a plain-HTTP server).
    NotTls,
    /// The host name could not be resolved.
    Resolve,
    /// Anything else (refused, reset, closed, timed out): worth another try.
    Transient,
}

pub(super) fn transport_kind(e: &reqwest::Error) -> TransportKind {
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

/// The `errors` of a distribution error body (`{"errors":[{"code","message"}]}`), as one
/// printable line of at most 300 characters.
pub(super) fn registry_says(body: &[u8]) -> Option<String> {
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
pub(super) fn status_failure(
    status: StatusCode,
    headers: &HeaderMap,
    what: &str,
    route: &Route,
) -> Failure {
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
            "the registry may expect HTTPS: remove {reg} from {}",
            route
                .matched
                .as_ref()
                .map_or_else(|| "k8s.ksyun.com/kci-http-registry".into(), |m| m.source())
        ),
        _ => format!("see the registry's logs for {reg}"),
    };
    Failure::Fatal(PullError::Registry(Why {
        message: format!("{what}: {status}"),
        hint: Some(hint),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

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
