//! Stopping a run on SIGINT or SIGTERM (SPEC §11): the first signal ends the run as a deadline
//! does (unfinished images fail naming the signal, completed blobs and layers stay, a partial
//! blob is kept for a `Range` resume, the report is written, exit 130 or 143); a second one
//! exits at once.

use std::sync::atomic::{AtomicI32, Ordering};

use tokio::sync::Notify;

/// The signal that stopped the run (0: none).
static SIGNAL: AtomicI32 = AtomicI32::new(0);
static STOPPED: Notify = Notify::const_new();

/// A signal that stops a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Int,
    Term,
}

impl Signal {
    pub fn name(self) -> &'static str {
        match self {
            Signal::Int => "SIGINT",
            Signal::Term => "SIGTERM",
        }
    }

    /// 128 + the signal's number, as a shell reports a process it ended.
    pub fn exit_code(self) -> i32 {
        match self {
            Signal::Int => 130,
            Signal::Term => 143,
        }
    }

    fn number(self) -> i32 {
        self.exit_code() - 128
    }
}

/// The signal the run was asked to stop by, if any.
pub fn requested() -> Option<Signal> {
    match SIGNAL.load(Ordering::SeqCst) {
        2 => Some(Signal::Int),
        15 => Some(Signal::Term),
        _ => None,
    }
}

/// Asks the run to stop (what a signal does).
pub fn request(s: Signal) {
    crate::store::keep_partials();
    crate::layers::stop_all();
    SIGNAL.store(s.number(), Ordering::SeqCst);
    STOPPED.notify_waiters();
}

/// Resolves once the run is asked to stop.
pub async fn wait() -> Signal {
    loop {
        let notified = STOPPED.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if let Some(s) = requested() {
            return s;
        }
        notified.await;
    }
}

/// Listens for SIGINT and SIGTERM on the current runtime until the process ends.
pub fn listen() -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut int = signal(SignalKind::interrupt())?;
    let mut term = signal(SignalKind::terminate())?;
    tokio::spawn(async move {
        loop {
            let s = tokio::select! {
                _ = int.recv() => Signal::Int,
                _ = term.recv() => Signal::Term,
            };
            if requested().is_some() {
                super::progress::clear();
                eprintln!(
                    "kci-pull-agent: second signal ({}): exiting at once; completed blobs and \
                     layers are kept, no report is written",
                    s.name()
                );
                std::process::exit(s.exit_code());
            }
            tracing::warn!(
                "{} received: stopping; completed blobs and layers are kept (a second signal \
                 exits at once)",
                s.name()
            );
            request(s);
        }
    });
    Ok(())
}
