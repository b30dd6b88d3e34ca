//! Pulling images into the store: every image concurrently, the blobs of an image
//! concurrently (bounded by one semaphore for the whole run), each blob fetched once per run.

mod auth;
mod blob;
pub mod progress;
pub mod retry;
pub mod session;
pub mod speed;

use std::collections::HashMap;
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use serde_json::Value;
use tokio::sync::{Mutex, OnceCell, Semaphore};

use crate::config::auth::AuthFile;
use crate::config::{Config, ImageRequest};
use crate::oci::Digest;
use crate::oci::manifest::{self, Descriptor, Document};
use crate::oci::platform;
use crate::oci::platform::Platform;
use crate::registry::host::RegistryHost;
use crate::registry::mirrors::Mirror;
use crate::registry::policy::Policy;
use crate::registry::resolver::RootResolver;
use crate::registry::transport::{NetOptions, Transports};
use crate::report::{ImageReport, Status};
use crate::store::{REF_NAME, RESOLVED, Store};
use session::Session;

/// Why an image failed, and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullError {
    pub message: String,
    pub hint: Option<String>,
}

impl fmt::Display for PullError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if let Some(h) = &self.hint {
            write!(f, "; hint: {h}")?;
        }
        Ok(())
    }
}

impl PullError {
    fn new(message: impl Into<String>) -> Self {
        PullError {
            message: message.into(),
            hint: None,
        }
    }
}

#[derive(Debug, Clone)]
pub struct PullOptions {
    pub root: PathBuf,
    pub store: PathBuf,
    pub platform: Platform,
    /// Blob downloads in flight at once, over all images.
    pub max_concurrent_downloads: usize,
    pub net: NetOptions,
    /// Draw a progress line on stderr when it is a terminal.
    pub progress: bool,
    /// Mirrors per registry, from the hosts.toml files (see [`load_mirrors`]).
    pub mirrors: HashMap<RegistryHost, Vec<Mirror>>,
    /// Write large blobs with `O_DIRECT` (off: through the page cache).
    pub direct_io: bool,
    /// When the run ends (`--deadline`): images not complete by then fail.
    pub deadline: Option<Instant>,
}

/// Reads the hosts.toml of every registry of `cfg` under `root`: errors name the file, and are
/// found before anything is written.
pub fn load_mirrors(
    root: &std::path::Path,
    cfg: &Config,
) -> Result<HashMap<RegistryHost, Vec<Mirror>>, String> {
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
    store: Store,
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
    let resolver = Arc::new(RootResolver::from_root(&opts.root));
    let shared = Arc::new(Shared {
        root: opts.root.clone(),
        progress: Arc::new(progress::Progress::default()),
        store,
        transports: Arc::new(Transports::new(resolver, opts.net)),
        policy: cfg.policy.clone(),
        auth: auth.clone(),
        platform: opts.platform.clone(),
        sessions: Mutex::new(HashMap::new()),
        mirrors: opts.mirrors.clone(),
        inflight: std::sync::Mutex::new(HashMap::new()),
        downloads: Semaphore::new(opts.max_concurrent_downloads.max(1)),
        index: Mutex::new(()),
        deadline: opts.deadline,
    });
    // All images on this task: their time goes to the network (connection tasks) and to the
    // blob writer threads, so no spawning is needed to overlap them.
    join_all(
        cfg.images
            .iter()
            .map(|req| pull_one(&shared, req))
            .collect(),
    )
    .await
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
    }
}

fn failure_report(policy: &Policy, req: &ImageRequest, msg: &str, started: Instant) -> ImageReport {
    ImageReport {
        seconds: started.elapsed().as_secs_f64(),
        error: Some(msg.to_string()),
        ..new_report(policy, req)
    }
}

fn failed_all(cfg: &Config, msg: &str, started: Instant) -> Vec<ImageReport> {
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
    let result = match shared.deadline {
        None => pull_image(shared, req, &bytes, &served).await,
        Some(at) => tokio::time::timeout_at(at.into(), pull_image(shared, req, &bytes, &served))
            .await
            .unwrap_or_else(|_| {
                Err(PullError {
                    message: "the deadline of this run (--deadline) passed before the image was \
                              complete; what was downloaded is discarded"
                        .into(),
                    hint: Some(
                        "find out why the registry is slow (the warnings above), or raise \
                         --deadline (and TimeoutStartSec= of the systemd unit with it)"
                            .into(),
                    ),
                })
            }),
    };
    if has_mirrors {
        report.served_by = served.lock().await.main();
    }
    match result {
        Ok((status, digest)) => {
            report.status = status;
            report.digest = Some(digest.to_string());
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
    shared.progress.images_done.fetch_add(1, Ordering::Relaxed);
    report.bytes = bytes.load(Ordering::Relaxed);
    report.seconds = started.elapsed().as_secs_f64();
    report
}

/// The endpoints of a registry in the order they are tried: the mirrors of its hosts.toml,
/// then the origin (reached as the policy says).
async fn endpoints(
    shared: &Shared,
    registry: &RegistryHost,
) -> Result<Arc<Vec<Arc<Session>>>, PullError> {
    let mut map = shared.sessions.lock().await;
    if let Some(s) = map.get(registry) {
        return Ok(s.clone());
    }
    let route = shared.policy.route(registry);
    let planned =
        crate::registry::endpoints::endpoints(&shared.root, &route, &shared.mirrors(registry))
            .map_err(|e| PullError {
                message: e,
                hint: Some("fix the registry's hosts.toml".into()),
            })?;
    let mut list = Vec::with_capacity(planned.len());
    for endpoint in planned {
        // Credentials by the endpoint's own host[:port], port-exact.
        let creds = shared.auth.lookup(endpoint.authority()).cloned();
        list.push(Arc::new(Session::new(
            endpoint,
            shared.transports.clone(),
            creds,
        )?));
    }
    let list = Arc::new(list);
    map.insert(registry.clone(), list.clone());
    Ok(list)
}

/// Runs `op` on each endpoint in turn until one succeeds; a failing mirror is logged and the
/// next one tried. Returns the value and the endpoint that produced it.
async fn first_ok<T>(
    list: &[Arc<Session>],
    what: &str,
    op: impl AsyncFn(&Session) -> Result<T, PullError>,
) -> Result<(T, Arc<Session>), PullError> {
    let mut last = None;
    for (i, s) in list.iter().enumerate() {
        if s.is_unreachable() && i + 1 < list.len() {
            continue;
        }
        match op(s).await {
            Ok(v) => return Ok((v, s.clone())),
            Err(e) => {
                if i + 1 < list.len() && !s.is_unreachable() {
                    tracing::warn!(host = %s.label, "{what} from {} failed ({e}); trying the next host", s.label);
                }
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or_else(|| PullError::new(format!("{what}: no host to try"))))
}

fn resolved_of(d: &Descriptor) -> Option<&str> {
    d.annotations.as_ref()?.get(RESOLVED)?.as_str()
}

async fn pull_image(
    shared: &Shared,
    req: &ImageRequest,
    bytes: &AtomicU64,
    served: &Mutex<Served>,
) -> Result<(Status, Digest), PullError> {
    let r = &req.reference;
    let name = r.to_string();
    let store = &shared.store;
    let stored = store.find_ref(&name).map_err(|e| PullError {
        message: format!("cannot read the store's index: {e}"),
        hint: Some("run the store check, or move index.json aside".into()),
    })?;
    // Usable as is: complete, and (for an image picked from an index) of the platform asked for.
    let stored_ok = stored.as_ref().filter(|d| {
        store.is_complete(&d.digest)
            && (d.platform.is_none()
                || platform::choose(std::slice::from_ref(*d), &shared.platform).is_some())
    });

    // Pinned by digest and already complete: nothing to ask the registry.
    if let (Some(d), Some(s)) = (&r.digest, stored_ok)
        && resolved_of(s) == Some(d.as_str())
    {
        return Ok((Status::Present, s.digest.clone()));
    }
    let all = endpoints(shared, &r.registry).await?;
    // Tags are resolved only by hosts allowed to; content addressed by digest comes from any.
    let resolvers: Vec<Arc<Session>> = all
        .iter()
        .filter(|s| s.endpoint.resolves())
        .cloned()
        .collect();
    let tag_or_digest = r
        .digest
        .as_ref()
        .map(Digest::to_string)
        .or_else(|| r.tag.clone())
        .unwrap_or_else(|| "latest".into());
    if r.digest.is_none()
        && let Some(s) = stored_ok
        && let Ok((Some(head), _)) = first_ok(&resolvers, "HEAD manifest", async |e: &Session| {
            e.head_manifest(&r.repository, &tag_or_digest).await
        })
        .await
        && Some(head.as_str()) == resolved_of(s)
    {
        return Ok((Status::Present, s.digest.clone()));
    }

    let list: &[Arc<Session>] = if r.digest.is_some() { &all } else { &resolvers };
    let ((top, ct), top_from) = first_ok(list, "manifest", async |e: &Session| {
        let (top, ct) = e.get_manifest(&r.repository, &tag_or_digest).await?;
        if let Some(d) = &r.digest
            && let Err(actual) = d.verify(&top)
        {
            return Err(PullError {
                message: format!("{} served {actual} for the manifest {d}", e.label),
                hint: Some("it served wrong content; nothing was stored".into()),
            });
        }
        Ok((top, ct))
    })
    .await?;
    bytes.fetch_add(top.len() as u64, Ordering::Relaxed);
    served.lock().await.add(&top_from.label, top.len() as u64);
    let top_digest = match &r.digest {
        Some(d) => d.clone(),
        None => Digest::sha256(&top),
    };
    let doc = manifest::parse(&top, ct.as_deref()).map_err(PullError::new)?;
    let (manifest_bytes, mut desc, index_bytes) = match doc {
        Document::Manifest { ref media_type, .. } => (
            top.clone(),
            Descriptor {
                media_type: media_type.clone(),
                digest: top_digest.clone(),
                size: top.len() as u64,
                platform: None,
                annotations: None,
                urls: None,
            },
            None,
        ),
        Document::Index { manifests, .. } => {
            let chosen =
                platform::choose(&manifests, &shared.platform).ok_or_else(|| PullError {
                    message: format!(
                        "no manifest for platform {} (the image offers {})",
                        shared.platform,
                        platform::offered(&manifests)
                    ),
                    hint: Some("choose another platform with --platform, or another image".into()),
                })?;
            let ((child, _), from) = first_ok(&all, "manifest", async |e: &Session| {
                let (child, ct) = e
                    .get_manifest(&r.repository, chosen.digest.as_str())
                    .await?;
                let actual = Digest::of(chosen.digest.algorithm(), &child);
                if actual != chosen.digest || child.len() as u64 != chosen.size {
                    return Err(PullError {
                        message: format!(
                            "{} served {actual} ({} bytes) for the manifest {} ({} bytes)",
                            e.label,
                            child.len(),
                            chosen.digest,
                            chosen.size
                        ),
                        hint: Some("it served wrong content; nothing was stored".into()),
                    });
                }
                Ok((child, ct))
            })
            .await?;
            bytes.fetch_add(child.len() as u64, Ordering::Relaxed);
            served.lock().await.add(&from.label, child.len() as u64);
            // The index entry (with its platform) becomes the store's descriptor; its
            // annotations, written for the index, give way to ours below.
            let mut d = chosen.clone();
            d.annotations = None;
            (child, d, Some(top.clone()))
        }
    };
    let child_ct = if index_bytes.is_some() {
        Some(desc.media_type.as_str())
    } else {
        ct.as_deref()
    };
    let (config, layers) =
        match manifest::parse(&manifest_bytes, child_ct).map_err(PullError::new)? {
            Document::Manifest { config, layers, .. } => (config, layers),
            Document::Index { .. } => {
                return Err(PullError::new(
                    "an index points to another index; nested indexes are not supported",
                ));
            }
        };

    // Blobs: concurrently, each once.
    let mut blobs: Vec<Descriptor> = Vec::new();
    for d in std::iter::once(*config).chain(layers) {
        if !blobs.iter().any(|b| b.digest == d.digest) {
            blobs.push(d);
        }
    }
    let needed: u64 = blobs
        .iter()
        .filter(|b| !store.has_blob(&b.digest, b.size))
        .map(|b| b.size)
        .sum();
    shared.progress.total.fetch_add(needed, Ordering::Relaxed);
    let results = join_all(
        blobs
            .iter()
            .map(|d| fetch_shared(shared, &all, &r.repository, d, served))
            .collect(),
    )
    .await;
    for r in results {
        bytes.fetch_add(r?, Ordering::Relaxed);
    }

    // Manifests, then the index entry that makes the image visible.
    let put = |d: &Digest, b: &[u8]| {
        store.put_small(d, b).map_err(|e| PullError {
            message: format!("cannot store manifest {d}: {e}"),
            hint: Some(format!(
                "check free space and permissions of {}",
                store.root().display()
            )),
        })
    };
    put(&desc.digest, &manifest_bytes)?;
    if let Some(ib) = &index_bytes {
        put(&top_digest, ib)?;
    }
    store
        .sync_blobs()
        .map_err(|e| PullError::new(format!("cannot sync the store: {e}")))?;
    let mut ann = serde_json::Map::new();
    ann.insert(REF_NAME.into(), Value::from(name.clone()));
    ann.insert(RESOLVED.into(), Value::from(top_digest.to_string()));
    desc.annotations = Some(ann);
    let status = match &stored {
        Some(s) if s.digest == desc.digest => Status::Present,
        _ => Status::Pulled,
    };
    {
        let _g = shared.index.lock().await;
        store
            .set_refs(std::slice::from_ref(&desc))
            .map_err(|e| PullError {
                message: format!("cannot update the store's index.json: {e}"),
                hint: Some(format!(
                    "check free space and permissions of {}",
                    store.root().display()
                )),
            })?;
    }
    Ok((status, desc.digest))
}

/// Fetches a blob unless it is present, from the first endpoint that delivers it intact;
/// concurrent requests for the same digest (from other images of this run) wait for the first
/// one instead of downloading it again.
async fn fetch_shared(
    shared: &Shared,
    endpoints: &[Arc<Session>],
    repo: &str,
    d: &Descriptor,
    served: &Mutex<Served>,
) -> Result<u64, PullError> {
    if shared.store.has_blob(&d.digest, d.size) {
        return Ok(0);
    }
    let cell = {
        let mut map = shared.inflight.lock().expect("poisoned");
        map.entry(d.digest.clone()).or_default().clone()
    };
    let fetched = AtomicU64::new(0);
    cell.get_or_try_init(|| async {
        if !shared.store.has_blob(&d.digest, d.size) {
            let (n, from) = first_ok(
                endpoints,
                &format!("blob {}", d.digest),
                async |e: &Session| {
                    e.fetch_blob(
                        repo,
                        d,
                        &shared.store,
                        &shared.progress.done,
                        &shared.downloads,
                    )
                    .await
                },
            )
            .await?;
            served.lock().await.add(&from.label, n);
            fetched.store(n, Ordering::Relaxed);
        }
        Ok::<(), PullError>(())
    })
    .await?;
    Ok(fetched.load(Ordering::Relaxed))
}

/// Bytes received per endpoint for one image: which host served it.
#[derive(Default)]
struct Served(Vec<(String, u64)>);

impl Served {
    fn add(&mut self, host: &str, n: u64) {
        match self.0.iter_mut().find(|(h, _)| h == host) {
            Some((_, b)) => *b += n,
            None => self.0.push((host.to_string(), n)),
        }
    }
    /// The host that delivered the most bytes.
    fn main(&self) -> Option<String> {
        self.0
            .iter()
            .max_by_key(|(_, b)| *b)
            .map(|(h, _)| h.clone())
    }
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
