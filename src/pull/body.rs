//! Bodies kept in memory (manifests, tokens, error pages), read with a cap, and the `-v`
//! line of each request.

use reqwest::{Method, Response, Url};

use super::retry::{Failure, describe, redact};
use super::speed::LowSpeed;
use super::{PullError, Why};

/// Reads a body that is kept in memory, refusing more than `max` bytes (by its
/// `Content-Length`, or as soon as more arrives).
pub(super) async fn read_capped(
    resp: &mut Response,
    max: u64,
    what: &str,
    mut speed: LowSpeed,
) -> Result<Vec<u8>, Failure> {
    let too_large = || {
        Failure::Fatal(PullError::WrongContent(Why {
            message: format!("{what} is larger than {max} bytes; it was not read"),
            hint: Some(
                "the server sends far more than such a response can be; check which server this is"
                    .into(),
            ),
        }))
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
/// One line per registry request at `-v`: method, URL (without credentials or query
/// secrets), status, the body's announced size, milliseconds to the response head.
pub(super) fn log_request(
    method: &Method,
    url: &Url,
    resp: &Result<Response, reqwest::Error>,
    sent: std::time::Instant,
) {
    let ms = sent.elapsed().as_millis();
    match resp {
        Ok(r) => tracing::debug!(
            "{method} {} -> {} {} bytes {ms} ms",
            redact(url),
            r.status().as_u16(),
            r.content_length()
                .map_or_else(|| "?".to_string(), |n| n.to_string()),
        ),
        Err(e) => tracing::debug!(
            "{method} {} -> failed after {ms} ms: {}",
            redact(url),
            describe(e)
        ),
    }
}
