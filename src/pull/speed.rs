//! The low-speed limit (`--low-speed-limit`, `--low-speed-time`, with curl's meaning): a body
//! that arrives slower than the limit, on average over the whole window, fails like a reset.
//! The read timeout only catches silence; a registry that trickles a few bytes a second
//! would otherwise hold a boot forever.

use std::time::Duration;

use reqwest::Response;
use tokio::time::Instant;

use super::retry::Failure;

pub struct LowSpeed {
    limit: u64,
    window: Duration,
    start: Instant,
    bytes: u64,
    /// Fires at the end of the current window; one timer per window, not one per chunk.
    /// (Made on first use: a timer needs the runtime.)
    timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
}

impl LowSpeed {
    /// `limit` bytes per second over `window`; a limit of 0 never fails.
    pub fn new(limit: u64, window: Duration) -> LowSpeed {
        LowSpeed {
            limit,
            window,
            start: Instant::now(),
            bytes: 0,
            timer: None,
        }
    }

    /// Counts `n` bytes that arrived at `now`; an error once a whole window passed below the
    /// limit. A window that reached the limit starts the next one.
    fn account(&mut self, now: Instant, n: u64) -> Result<(), String> {
        self.bytes += n;
        let elapsed = now.saturating_duration_since(self.start);
        if self.limit == 0 || elapsed < self.window {
            return Ok(());
        }
        let need = (self.limit as f64 * elapsed.as_secs_f64()) as u64;
        if self.bytes < need {
            return Err(format!(
                "the transfer was slower than the low-speed limit of {} bytes/s for {} s ({} bytes in {:.1} s); see --low-speed-limit and --low-speed-time",
                self.limit,
                self.window.as_secs(),
                self.bytes,
                elapsed.as_secs_f64()
            ));
        }
        self.start = now;
        self.bytes = 0;
        Ok(())
    }

    /// The next chunk of `resp`, or a retryable failure when the transfer is too slow (checked
    /// when a chunk arrives and at the end of every window, so a trickle is caught on time).
    pub async fn chunk(&mut self, resp: &mut Response) -> Result<Option<bytes::Bytes>, ChunkError> {
        if self.limit == 0 {
            return resp.chunk().await.map_err(ChunkError::Network);
        }
        loop {
            let window_end = self.start + self.window;
            let timer = self
                .timer
                .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(window_end)));
            if timer.deadline() != window_end {
                timer.as_mut().reset(window_end);
            }
            tokio::select! {
                biased;
                next = resp.chunk() => {
                    return match next {
                        Ok(Some(b)) => {
                            self.account(Instant::now(), b.len() as u64)
                                .map_err(ChunkError::TooSlow)?;
                            Ok(Some(b))
                        }
                        Ok(None) => Ok(None),
                        Err(e) => Err(ChunkError::Network(e)),
                    };
                }
                () = timer.as_mut() => {
                    self.account(Instant::now(), 0).map_err(ChunkError::TooSlow)?;
                }
            }
        }
    }
}

/// Why [`LowSpeed::chunk`] gave no chunk.
pub enum ChunkError {
    Network(reqwest::Error),
    TooSlow(String),
}

impl ChunkError {
    /// As a failure of one attempt: both kinds are worth another try, resuming the body.
    pub fn into_failure(self, what: &str) -> Failure {
        let message = match self {
            ChunkError::Network(e) => format!("{what}: {}", super::retry::describe(&e)),
            ChunkError::TooSlow(m) => format!("{what}: {m}"),
        };
        Failure::Retry {
            message,
            after: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trickle_fails_after_one_window_and_a_fast_body_never() {
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut slow = LowSpeed::new(1024, Duration::from_secs(30));
        slow.start = t0;
        for i in 1..30 {
            assert!(slow.account(t0 + s * i, 256).is_ok(), "second {i}");
        }
        let e = slow.account(t0 + s * 30, 256).unwrap_err();
        assert!(e.contains("1024 bytes/s for 30 s"), "{e}");

        let mut fast = LowSpeed::new(1024, Duration::from_secs(30));
        fast.start = t0;
        for i in 1..200 {
            assert!(fast.account(t0 + s * i, 4096).is_ok());
        }
        // A burst at the start of a window does not carry over into the next one.
        let mut burst = LowSpeed::new(1024, Duration::from_secs(2));
        burst.start = t0;
        assert!(burst.account(t0 + s * 2, 1 << 20).is_ok());
        assert!(burst.account(t0 + s * 4, 0).is_err());
        let mut off = LowSpeed::new(0, Duration::from_secs(1));
        off.start = t0;
        assert!(off.account(t0 + s * 100, 0).is_ok());
    }
}
