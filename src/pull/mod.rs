//! Pulling images into the store: every image concurrently, the blobs of an image
//! concurrently (bounded by one semaphore for the whole run), each blob fetched once per run.

mod auth;
mod blob;
mod body;
mod conn;
mod hosts;
mod image;
pub mod progress;
mod ranged;
pub mod retry;
pub mod session;
pub mod speed;
pub mod stop;
mod unpack;

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tokio::sync::{Mutex, OnceCell, Semaphore};

use crate::config::auth::AuthFile;
use crate::config::{Config, ImageRequest};
use crate::layers::store::LayerStore;
use crate::oci::Digest;
use crate::oci::platform::Platform;
use crate::registry::host::RegistryHost;
use crate::registry::mirrors::Mirror;
use crate::registry::policy::Policy;
use crate::registry::resolver::RootResolver;
use crate::registry::transport::{NetOptions, Transports};
use crate::report::{ImageReport, Status};
use crate::store::Store;
use hosts::Served;
use image::pull_image;
use session::Session;

/// Why an image failed, by kind, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PullError {
    /// The registry, a mirror or the network between (a status, a reset, a redirect, a body).
    Registry(Why),
    /// The registry's TLS certificate was not accepted.
    Certificate(Why),
    /// The registry's name could not be resolved.
    Resolve(Why),
    /// Content that does not match its digest, its size or what the manifest says.
    WrongContent(Why),
    /// A downloaded blob whose digest did not match: downloaded once more from scratch.
    Mismatch(Why),
    /// The image store or the layer store cannot be read or written.
    Store(Why),
    /// A layer that cannot be unpacked.
    Layer(Why),
    /// The run's `--deadline` passed before the image was complete.
    Deadline,
    /// SIGINT or SIGTERM stopped the run before the image was complete.
    Stopped(&'static str),
}

/// What went wrong, and what an operator can do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Why {
    pub message: String,
    pub hint: Option<String>,
}

impl PullError {
    /// A failure of the registry or the network without a hint.
    fn new(message: impl Into<String>) -> Self {
        PullError::Registry(Why {
            message: message.into(),
            hint: None,
        })
    }

    /// The same error with its words changed by `f` (a deadline's and a signal's stay).
    fn map_why(self, f: impl FnOnce(Why) -> Why) -> PullError {
        use PullError as E;
        match self {
            E::Registry(w) => E::Registry(f(w)),
            E::Certificate(w) => E::Certificate(f(w)),
            E::Resolve(w) => E::Resolve(f(w)),
            E::WrongContent(w) => E::WrongContent(f(w)),
            E::Mismatch(w) => E::Mismatch(f(w)),
            E::Store(w) => E::Store(f(w)),
            E::Layer(w) => E::Layer(f(w)),
            other => other,
        }
    }

    /// The store or the layer store at `dir` could not be written: said with what to check.
    fn disk(message: impl Into<String>, dir: &std::path::Path) -> PullError {
        PullError::Store(Why {
            message: message.into(),
            hint: Some(format!(
                "check free space and permissions of {}",
                dir.display()
            )),
        })
    }

    /// A blob's writer thread that ended in a panic.
    fn writer_failed(e: tokio::task::JoinError) -> PullError {
        PullError::Store(Why {
            message: format!("blob writer failed: {e}"),
            hint: None,
        })
    }

    fn why(&self) -> Option<&Why> {
        match self {
            PullError::Registry(w)
            | PullError::Certificate(w)
            | PullError::Resolve(w)
            | PullError::WrongContent(w)
            | PullError::Mismatch(w)
            | PullError::Store(w)
            | PullError::Layer(w) => Some(w),
            PullError::Deadline | PullError::Stopped(_) => None,
        }
    }

    /// What went wrong.
    pub fn message(&self) -> String {
        match self {
            PullError::Deadline => "the deadline of this run (--deadline) passed before the \
                                    image was complete; what was downloaded is discarded"
                .into(),
            PullError::Stopped(signal) => format!(
                "stopped by {signal} before the image was complete; completed blobs and layers \
                 are kept, a partial blob is kept for a Range resume"
            ),
            other => other.why().map(|w| w.message.clone()).unwrap_or_default(),
        }
    }

    /// What to do about it.
    pub fn hint(&self) -> Option<String> {
        match self {
            PullError::Deadline => Some(
                "find out why the registry is slow (the warnings above), or raise --deadline \
                 (and TimeoutStartSec= of the systemd unit with it)"
                    .into(),
            ),
            PullError::Stopped(_) => {
                Some("run the same command again: it fetches only what is missing".into())
            }
            other => other.why().and_then(|w| w.hint.clone()),
        }
    }
}

impl fmt::Display for PullError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message())?;
        if let Some(h) = self.hint() {
            write!(f, "; hint: {h}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PullError {}

#[derive(Debug, Clone)]
pub struct PullOptions {
    pub root: PathBuf,
    pub store: PathBuf,
    pub platform: Platform,
    /// Blob downloads in flight at once, over all images.
    pub max_concurrent_downloads: usize,
    pub net: NetOptions,
    /// Draw a progress bar per image on stderr when it is a terminal.
    pub progress: bool,
    /// Mirrors per registry, from the hosts.toml files (see [`load_mirrors`]).
    pub mirrors: HashMap<RegistryHost, Vec<Mirror>>,
    /// Write large blobs with `O_DIRECT` (off: through the page cache).
    pub direct_io: bool,
    /// When the run ends (`--deadline`): images not complete by then fail.
    pub deadline: Option<Instant>,
    /// Unpack layers into this layer store (`None`: `--no-unpack`).
    pub unpack: Option<UnpackOptions>,
    /// The environment's proxies (SPEC §11).
    pub proxies: crate::registry::proxy::Proxies,
    /// The image caches of the run (SPEC §12): their layers are used in place.
    pub caches: Arc<crate::cache::Caches>,
    /// How large blobs are fetched (SPEC §13).
    pub chunking: Chunking,
}

/// Large blobs in chunks over parallel Range requests (SPEC §13).
#[derive(Debug, Clone, Copy)]
pub struct Chunking {
    /// Blobs larger than this are fetched in chunks of this size.
    pub size: u64,
    /// Connections for one blob (1: one stream).
    pub connections: usize,
}

/// Where and how layers are unpacked.
#[derive(Debug, Clone)]
pub struct UnpackOptions {
    pub layers: PathBuf,
    pub max_layer_size: u64,
    /// When the layers' files are flushed to disk (`--layer-sync`).
    pub sync: crate::layers::store::LayerSync,
}

/// Reads the hosts.toml of every registry of `cfg` under `root`: errors name the file, and are
/// found before anything is written.
pub fn load_mirrors(
    root: &std::path::Path,
    cfg: &Config,
) -> Result<HashMap<RegistryHost, Vec<Mirror>>, crate::registry::mirrors::MirrorsError> {
    let mut out = HashMap::new();
    for req in &cfg.images {
        let reg = &req.reference.registry;
        if out.contains_key(reg) {
            continue;
        }
        let mirrors = crate::registry::mirrors::load(root, reg)?
            .map(|(_, m)| m)
            .unwrap_or_default();
        out.insert(reg.clone(), mirrors);
    }
    Ok(out)
}

impl Shared {
    fn mirrors(&self, registry: &RegistryHost) -> Vec<Mirror> {
        self.mirrors.get(registry).cloned().unwrap_or_default()
    }
}

struct Shared {
    /// `--root`, for the endpoints' CA directories.
    root: std::path::PathBuf,
    progress: Arc<progress::Progress>,
    store: Arc<Store>,
    transports: Arc<Transports>,
    policy: Policy,
    auth: AuthFile,
    platform: Platform,
    sessions: Mutex<HashMap<RegistryHost, Arc<Vec<Arc<Session>>>>>,
    /// The mirrors of each registry (validated before the pull started).
    mirrors: HashMap<RegistryHost, Vec<Mirror>>,
    inflight: std::sync::Mutex<HashMap<Digest, Arc<OnceCell<()>>>>,
    downloads: Semaphore,
    index: Mutex<()>,
    deadline: Option<Instant>,
    /// The layer store, unless `--no-unpack`.
    layers: Option<Arc<LayerStore>>,
    max_layer_size: u64,
    /// Layers being unpacked from a stored blob, by chain ID: each once per run.
    unpacking: std::sync::Mutex<HashMap<Digest, Arc<OnceCell<()>>>>,
    /// Chain IDs committed in this run.
    committed: Arc<std::sync::Mutex<std::collections::HashSet<Digest>>>,
    /// Layers streamed in before the layers below them were committed.
    staged: Arc<crate::layers::StagedLayers>,
    /// The image caches (their layers are lent to `layers`).
    caches: Arc<crate::cache::Caches>,
    /// Blobs fetched from a registry in this run (the report's `from`).
    fetched: std::sync::Mutex<std::collections::HashSet<Digest>>,
    chunking: Chunking,
}

/// Pulls every image of `cfg`; one failure does not stop the others.
pub async fn pull_all(cfg: &Config, auth: &AuthFile, opts: &PullOptions) -> Vec<ImageReport> {
    let started = Instant::now();
    let store_root = opts.store.clone();
    let direct_io = opts.direct_io;
    let open = move || {
        Store::open(&store_root).map(|mut s| {
            s.set_direct_io(direct_io);
            s
        })
    };
    let store = match tokio::task::spawn_blocking(open).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            return failed_all(cfg, &format!("cannot open the image store: {e}"), started);
        }
        Err(e) => return failed_all(cfg, &format!("cannot open the image store: {e}"), started),
    };
    let layers = match opts.unpack.clone() {
        None => None,
        Some(u) => match tokio::task::spawn_blocking({
            let caches = opts.caches.clone();
            move || {
                LayerStore::open(&u.layers).map(|mut l| {
                    l.set_sync(u.sync);
                    l.set_direct_io(direct_io);
                    caches.lend_layers(&mut l);
                    l
                })
            }
        })
        .await
        {
            Ok(Ok(l)) => Some(Arc::new(l)),
            Ok(Err(e)) => {
                return failed_all(cfg, &format!("cannot open the layer store: {e}"), started);
            }
            Err(e) => {
                return failed_all(cfg, &format!("cannot open the layer store: {e}"), started);
            }
        },
    };
    let resolver = Arc::new(
        RootResolver::from_root(&opts.root)
            .with_aliases(cfg.hosts.iter().map(|h| (&h.ip, h.hostnames.as_slice()))),
    );
    let shared = Arc::new(Shared {
        root: opts.root.clone(),
        progress: Arc::new(progress::Progress::new(opts.progress)),
        store: Arc::new(store),
        transports: Arc::new(Transports::with_proxies(
            resolver,
            opts.net,
            opts.proxies.clone(),
            cfg.hosts
                .iter()
                .flat_map(|h| h.hostnames.iter().cloned())
                .collect(),
        )),
        policy: cfg.policy.clone(),
        auth: auth.clone(),
        platform: opts.platform.clone(),
        sessions: Mutex::new(HashMap::new()),
        mirrors: opts.mirrors.clone(),
        inflight: std::sync::Mutex::new(HashMap::new()),
        downloads: Semaphore::new(opts.max_concurrent_downloads.max(1)),
        index: Mutex::new(()),
        deadline: opts.deadline,
        layers,
        max_layer_size: opts.unpack.as_ref().map_or(u64::MAX, |u| u.max_layer_size),
        unpacking: std::sync::Mutex::new(HashMap::new()),
        committed: Arc::new(std::sync::Mutex::new(std::collections::HashSet::new())),
        staged: Default::default(),
        caches: opts.caches.clone(),
        fetched: Default::default(),
        chunking: opts.chunking,
    });
    // All images on this task: their time goes to the network (connection tasks) and to the
    // blob writer threads, so no spawning is needed to overlap them.
    let all = join_all(
        cfg.images
            .iter()
            .map(|req| pull_one(&shared, req))
            .collect(),
    );
    // At the deadline every extraction still running stops at its next entry: the images
    // fail then, and the run must not wait for their layers to finish unpacking.
    if let Some(at) = opts.deadline {
        tokio::spawn(async move {
            tokio::time::sleep_until(at.into()).await;
            crate::layers::stop_all();
        });
    }
    shared.progress.tick_until(all).await
}

/// Runs file work on the store on a blocking thread: an fsync there stalls no download.
async fn on_store<T: Send + 'static>(
    shared: &Shared,
    f: impl FnOnce(&Store) -> T + Send + 'static,
) -> Result<T, PullError> {
    let store: Arc<Store> = shared.store.clone();
    tokio::task::spawn_blocking(move || f(&store))
        .await
        .map_err(|e| {
            PullError::Store(Why {
                message: format!("a store task failed: {e}"),
                hint: None,
            })
        })
}

/// A report for `req` that has not succeeded (yet).
fn new_report(policy: &Policy, req: &ImageRequest) -> ImageReport {
    let route = policy.route(&req.reference.registry);
    ImageReport {
        image: req.image.clone(),
        reference: req.reference.to_string(),
        registry: route.registry.to_string(),
        transport: route.transport.as_str(),
        digest: None,
        bytes: 0,
        seconds: 0.0,
        status: Status::Failed,
        error: None,
        served_by: None,
        layers: None,
        unpacked_bytes: None,
        seconds_to_manifest: None,
        seconds_to_last_byte: None,
        seconds_to_committed: None,
        cache: None,
        warning: None,
    }
}

fn failure_report(policy: &Policy, req: &ImageRequest, msg: &str, started: Instant) -> ImageReport {
    ImageReport {
        seconds: started.elapsed().as_secs_f64(),
        error: Some(msg.to_string()),
        ..new_report(policy, req)
    }
}

/// Every image failed for one reason (the store cannot be opened): said once on stderr, and
/// in each image's report.
fn failed_all(cfg: &Config, msg: &str, started: Instant) -> Vec<ImageReport> {
    tracing::error!(
        "{msg}; hint: --store (and --layers) must be directories the agent can create and \
         write (defaults under --root: var/lib/kci/images and var/lib/kci/layers)"
    );
    cfg.images
        .iter()
        .map(|req| failure_report(&cfg.policy, req, msg, started))
        .collect()
}

async fn pull_one(shared: &Shared, req: &ImageRequest) -> ImageReport {
    let started = Instant::now();
    let route = shared.policy.route(&req.reference.registry);
    let mut report = new_report(&shared.policy, req);
    let bytes = AtomicU64::new(0);
    let served = Mutex::new(Served::default());
    let has_mirrors = !shared.mirrors(&req.reference.registry).is_empty();
    let prog = shared.progress.image(&req.image);
    let marks = unpack::Marks::new(started);
    let work = async {
        match shared.deadline {
            None => pull_image(shared, req, &bytes, &served, &prog, &marks).await,
            Some(at) => tokio::time::timeout_at(
                at.into(),
                pull_image(shared, req, &bytes, &served, &prog, &marks),
            )
            .await
            .unwrap_or(Err(PullError::Deadline)),
        }
    };
    let result = tokio::select! {
        r = work => r,
        s = stop::wait() => Err(PullError::Stopped(s.name())),
    };
    if has_mirrors {
        report.served_by = served.lock().await.main();
    }
    match result {
        Ok(image::Outcome {
            status,
            digest,
            layers: unpacking,
            cache,
            warning,
        }) => {
            report.status = status;
            report.digest = Some(digest.to_string());
            report.cache = cache;
            report.warning = warning;
            if let Some(u) = unpacking {
                report.layers = Some(u.layers);
                report.unpacked_bytes = Some(u.unpacked_bytes);
            }
            tracing::info!(
                image = %req.image,
                registry = %report.registry,
                digest = report.digest.as_deref().unwrap_or(""),
                bytes = bytes.load(Ordering::Relaxed),
                duration = started.elapsed().as_secs_f64(),
                status = status.as_str(),
                "image {}", status.as_str()
            );
        }
        Err(e) => {
            let message = format!(
                "pulling {} from {} over {}: {e}",
                req.reference, route.registry, route.transport
            );
            tracing::error!(image = %req.image, registry = %report.registry, "{message}");
            report.error = Some(message);
        }
    }
    prog.finish(report.status.as_str());
    [
        report.seconds_to_manifest,
        report.seconds_to_last_byte,
        report.seconds_to_committed,
    ] = marks.get();
    report.bytes = bytes.load(Ordering::Relaxed);
    report.seconds = started.elapsed().as_secs_f64();
    report
}

/// Polls futures concurrently on the current task and returns their outputs in order. The
/// blob futures spend their time waiting on the network and on writer threads, so one task
/// drives them all; the download semaphore bounds how many are active.
async fn join_all<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut pending: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = pending.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut done = true;
        for (f, out) in pending.iter_mut().zip(outputs.iter_mut()) {
            if out.is_none() {
                match f.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *out = Some(v),
                    std::task::Poll::Pending => done = false,
                }
            }
        }
        if done {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    outputs
        .into_iter()
        .map(|o| o.expect("polled to completion"))
        .collect()
}

#[cfg(test)]
mod error_tests {
    use super::*;

    /// Every kind says what happened and what to do, in one line: the report's `error`.
    #[test]
    fn each_kind_has_a_message_and_a_hint() {
        let why = |m: &str, h: Option<&str>| Why {
            message: m.into(),
            hint: h.map(str::to_string),
        };
        let cases = [
            (PullError::Deadline, "--deadline", Some("raise --deadline")),
            (
                PullError::Stopped("SIGTERM"),
                "stopped by SIGTERM",
                Some("run the same command again"),
            ),
            (
                PullError::Certificate(why("bad cert", Some("put the CA"))),
                "bad cert",
                Some("put the CA"),
            ),
            (
                PullError::Mismatch(why("wrong bytes", None)),
                "wrong bytes",
                None,
            ),
        ];
        for (e, message, hint) in cases {
            assert!(e.message().contains(message), "{e}");
            match hint {
                Some(h) => {
                    assert!(e.hint().is_some_and(|x| x.contains(h)), "{e}");
                    assert!(
                        e.to_string()
                            .contains(&format!("; hint: {}", e.hint().unwrap()))
                    );
                }
                None => assert_eq!(e.to_string(), e.message()),
            }
        }
    }
}
