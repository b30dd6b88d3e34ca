//! Progress on an interactive terminal: one bar per image with its bytes and rate, and its
//! layers unpacked so far (which go on after the last byte arrived), drawn on
//! stderr by `indicatif` (hidden by itself when stderr is not a terminal). Log lines written
//! while bars are shown go through [`LogWriter`], which lifts the bars, writes the line and
//! draws them again.

use std::collections::HashSet;
use std::io::{self, IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::oci::Digest;

/// The bars of this process, while a pull shows them (for [`LogWriter`]).
static BARS: OnceLock<MultiProgress> = OnceLock::new();

/// The progress of one image: bytes received and bytes known to be needed (known once its
/// manifest is read), mirrored into its bar by the ticker.
#[derive(Default)]
pub struct ImageProgress {
    pub done: AtomicU64,
    pub total: AtomicU64,
    /// The chain IDs this image has to unpack (set once its config is read) and the set of
    /// chain IDs committed so far in this run: the bar counts its layers ready.
    unpack: OnceLock<(Vec<Digest>, Committed)>,
    bar: OnceLock<ProgressBar>,
}

/// Chain IDs committed in this run (shared by every image).
pub type Committed = Arc<std::sync::Mutex<HashSet<Digest>>>;

impl ImageProgress {
    /// Whether this image has a bar (else nothing needs to be counted for it).
    pub fn shown(&self) -> bool {
        self.bar.get().is_some()
    }

    /// The layers (by chain ID) this image unpacks, counted as `committed` takes them in.
    pub fn unpacks(&self, chains: Vec<Digest>, committed: Committed) {
        let _ = self.unpack.set((chains, committed));
    }

    /// "unpacked N/M layers", once the image has layers to unpack.
    fn unpacked(&self) -> Option<String> {
        let (chains, committed) = self.unpack.get()?;
        if chains.is_empty() {
            return None;
        }
        let set = committed.lock().ok()?;
        let ready = chains.iter().filter(|c| set.contains(*c)).count();
        Some(format!("unpacked {ready}/{} layers", chains.len()))
    }

    /// Ends the image's bar with its outcome (`pulled`, `present`, `failed`).
    pub fn finish(&self, outcome: &str) {
        if let Some(bar) = self.bar.get() {
            sync(self, bar);
            let outcome = match self.unpacked() {
                Some(u) => format!("{outcome}, {u}"),
                None => outcome.to_string(),
            };
            bar.finish_with_message(outcome);
        }
    }
}

fn sync(p: &ImageProgress, bar: &ProgressBar) {
    let done = p.done.load(Ordering::Relaxed);
    bar.set_length(p.total.load(Ordering::Relaxed).max(done));
    bar.set_position(done);
    if !bar.is_finished()
        && let Some(m) = p.unpacked()
    {
        bar.set_message(m);
    }
}

/// The bars of one run (none when stderr is not a terminal or progress is off).
pub struct Progress {
    multi: Option<MultiProgress>,
    images: std::sync::Mutex<Vec<Arc<ImageProgress>>>,
}

impl Progress {
    /// Shows bars if `enabled` and stderr is a terminal.
    pub fn new(enabled: bool) -> Progress {
        let multi = (enabled && io::stderr().is_terminal()).then(|| {
            let m = MultiProgress::with_draw_target(ProgressDrawTarget::stderr_with_hz(10));
            let _ = BARS.set(m.clone());
            m
        });
        Progress {
            multi,
            images: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// The progress of one image, with a bar named `name` if bars are shown.
    pub fn image(&self, name: &str) -> Arc<ImageProgress> {
        let p = Arc::new(ImageProgress::default());
        if let Some(m) = &self.multi {
            let style = ProgressStyle::with_template(
                "{prefix} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
            let bar = m.add(ProgressBar::new(0).with_style(style));
            bar.set_prefix(name.to_string());
            let _ = p.bar.set(bar);
            self.images.lock().expect("poisoned").push(p.clone());
        }
        p
    }

    /// Mirrors the counters into the bars every 100 ms until `done` resolves.
    pub async fn tick_until<F: std::future::Future>(&self, done: F) -> F::Output {
        if self.multi.is_none() {
            return done.await;
        }
        let ticker = async {
            loop {
                tokio::time::sleep(Duration::from_millis(100)).await;
                for p in self.images.lock().expect("poisoned").iter() {
                    if let Some(bar) = p.bar.get()
                        && !bar.is_finished()
                    {
                        sync(p, bar);
                    }
                }
            }
        };
        tokio::select! {
            out = done => out,
            () = ticker => unreachable!("the ticker never ends"),
        }
    }
}

/// Takes the bars off the terminal (a run that ends at once, on a second signal).
pub fn clear() {
    if let Some(m) = BARS.get() {
        let _ = m.clear();
    }
}

/// Where log lines go: stderr, around the bars when they are shown.
#[derive(Default)]
pub struct LogWriter(Vec<u8>);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for LogWriter {
    fn drop(&mut self) {
        let line = std::mem::take(&mut self.0);
        let write = || {
            let mut err = io::stderr().lock();
            let _ = err.write_all(&line);
            let _ = err.flush();
        };
        match BARS.get() {
            Some(m) => m.suspend(write),
            None => write(),
        }
    }
}

/// A `tracing_subscriber` writer for [`LogWriter`]: one per event.
pub fn log_writer() -> LogWriter {
    LogWriter::default()
}
