//! A one-line progress display on an interactive terminal (stderr); nothing otherwise.

use std::io::{IsTerminal, Write};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

#[derive(Default)]
pub struct Progress {
    /// Bytes received so far.
    pub done: AtomicU64,
    /// Bytes known to be needed so far (grows as manifests are read).
    pub total: AtomicU64,
    pub images_done: AtomicUsize,
    pub images: AtomicUsize,
}

impl Progress {
    fn line(&self, elapsed: Duration) -> String {
        let done = self.done.load(Ordering::Relaxed) as f64 / 1e6;
        let total = self.total.load(Ordering::Relaxed) as f64 / 1e6;
        let rate = done / elapsed.as_secs_f64().max(0.001);
        format!(
            "pulling: {}/{} images, {done:.1}/{total:.1} MB, {rate:.1} MB/s",
            self.images_done.load(Ordering::Relaxed),
            self.images.load(Ordering::Relaxed),
        )
    }
}

/// Draws `progress` every 200 ms while the returned guard lives, if stderr is a terminal.
pub fn show(progress: Arc<Progress>, enabled: bool) -> Option<tokio::task::JoinHandle<()>> {
    if !enabled || !std::io::stderr().is_terminal() {
        return None;
    }
    let started = Instant::now();
    Some(tokio::spawn(async move {
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            let mut err = std::io::stderr().lock();
            let _ = write!(err, "\r\x1b[2K{}", progress.line(started.elapsed()));
            let _ = err.flush();
        }
    }))
}

/// Stops the display and clears its line.
pub fn hide(handle: Option<tokio::task::JoinHandle<()>>) {
    if let Some(h) = handle {
        h.abort();
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[2K");
        let _ = err.flush();
    }
}
