//! One image: resolve its reference (or find it present), fetch its manifests and blobs (each
//! blob once per run), store the manifests and make it visible in `index.json`. File work on
//! the store (reads of the index and manifests, fsyncs) runs on blocking threads, never on the
//! task that drives every download.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::Value;
use tokio::sync::Mutex;

use super::hosts::{Served, endpoints, first_ok};
use super::progress::ImageProgress;
use super::session::Session;
use super::{PullError, Shared, join_all};
use crate::config::ImageRequest;
use crate::layers::{LayerPlan, LayerTarget, Lowers, UnpackError};
use crate::oci;
use crate::oci::Digest;
use crate::oci::config::MAX_CONFIG;
use crate::oci::manifest::{self, Descriptor, Document};
use crate::oci::platform;
use crate::report::LayerReport;
use crate::report::Status;
use crate::store::{REF_NAME, RESOLVED, Store};

/// Runs file work on the store on a blocking thread: an fsync there stalls no download.
async fn on_store<T: Send + 'static>(
    shared: &Shared,
    f: impl FnOnce(&Store) -> T + Send + 'static,
) -> Result<T, PullError> {
    let store: Arc<Store> = shared.store.clone();
    tokio::task::spawn_blocking(move || f(&store))
        .await
        .map_err(|e| PullError::new(format!("a store task failed: {e}")))
}

fn resolved_of(d: &Descriptor) -> Option<&str> {
    d.annotations.as_ref()?.get(RESOLVED)?.as_str()
}

pub(super) async fn pull_image(
    shared: &Shared,
    req: &ImageRequest,
    bytes: &AtomicU64,
    served: &Mutex<Served>,
    prog: &ImageProgress,
    marks: &Marks,
) -> Result<(Status, Digest, Option<Unpacking>), PullError> {
    let r = &req.reference;
    let name = r.to_string();
    let store = &shared.store;
    let (stored, complete) = on_store(shared, {
        let name = name.clone();
        move |store| {
            let stored = store.find_ref(&name)?;
            let complete = stored
                .as_ref()
                .is_some_and(|d| store.is_complete(&d.digest));
            Ok::<_, std::io::Error>((stored, complete))
        }
    })
    .await?
    .map_err(|e| PullError {
        message: format!("cannot read the store's index: {e}"),
        hint: Some("run the store check, or move index.json aside".into()),
    })?;
    // Usable as is: complete, and (for an image picked from an index) of the platform asked for.
    let stored_ok = stored.as_ref().filter(|d| {
        complete
            && (d.platform.is_none()
                || platform::choose(std::slice::from_ref(*d), &shared.platform).is_some())
    });

    // Pinned by digest and already complete: nothing to ask the registry.
    if let (Some(d), Some(s)) = (&r.digest, stored_ok)
        && resolved_of(s) == Some(d.as_str())
    {
        marks.manifest();
        let layers = unpack_image(shared, &s.digest).await?;
        marks.committed(layers.is_some());
        return Ok((Status::Present, s.digest.clone(), layers));
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
        marks.manifest();
        let layers = unpack_image(shared, &s.digest).await?;
        marks.committed(layers.is_some());
        return Ok((Status::Present, s.digest.clone(), layers));
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
    let doc = manifest::parse(&top, ct.as_deref()).map_err(|e| PullError::new(e.to_string()))?;
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
    marks.manifest();
    let child_ct = if index_bytes.is_some() {
        Some(desc.media_type.as_str())
    } else {
        ct.as_deref()
    };
    let (config, layers) = match manifest::parse(&manifest_bytes, child_ct)
        .map_err(|e| PullError::new(e.to_string()))?
    {
        Document::Manifest { config, layers, .. } => (config, layers),
        Document::Index { .. } => {
            return Err(PullError::new(
                "an index points to another index; nested indexes are not supported",
            ));
        }
    };

    // Blobs: concurrently, each once.
    let needed: u64 = std::iter::once(config.as_ref())
        .chain(&layers)
        .filter(|b| !store.has_blob(&b.digest, b.size))
        .map(|b| b.size)
        .sum();
    prog.total.fetch_add(needed, Ordering::Relaxed);
    // Unpacking: the config first (it is small), for the layers' diff_ids; then every layer
    // unpacks while it downloads.
    let plans = match &shared.layers {
        None => None,
        Some(_) => {
            let n = fetch_shared(shared, &all, &r.repository, &config, served, prog, None).await?;
            bytes.fetch_add(n, Ordering::Relaxed);
            let plans = plan_layers(shared, &config, layers.len()).await?;
            // Only for a bar: each check reads a layer.json.
            if let Some(store) = shared.layers.as_ref().filter(|_| prog.shown()) {
                let missing = plans
                    .iter()
                    .filter(|p| store.get(&p.chain_id).is_none())
                    .map(|p| p.chain_id.clone())
                    .collect();
                prog.unpacks(missing, shared.committed.clone());
            }
            Some(plans)
        }
    };
    let mut blobs: Vec<(Descriptor, Option<LayerPlan>)> = Vec::new();
    let planned = layers
        .iter()
        .enumerate()
        .map(|(i, d)| (d.clone(), plans.as_ref().map(|p| p[i].clone())));
    for (d, plan) in std::iter::once((*config, None)).chain(planned) {
        if !blobs.iter().any(|(b, _)| b.digest == d.digest) {
            blobs.push((d, plan));
        }
    }
    let results = join_all(
        blobs
            .iter()
            .map(|(d, plan)| {
                fetch_shared(shared, &all, &r.repository, d, served, prog, plan.clone())
            })
            .collect(),
    )
    .await;
    for r in results {
        bytes.fetch_add(r?, Ordering::Relaxed);
    }
    marks.last_byte();

    // Manifests, then the index entry that makes the image visible.
    let hint = Some(format!(
        "check free space and permissions of {}",
        store.root().display()
    ));
    let manifests: Vec<(Digest, Vec<u8>)> = std::iter::once((desc.digest.clone(), manifest_bytes))
        .chain(index_bytes.map(|ib| (top_digest.clone(), ib)))
        .collect();
    on_store(shared, move |store| {
        for (d, b) in &manifests {
            store
                .put_small(d, b)
                .map_err(|e| format!("cannot store manifest {d}: {e}"))?;
        }
        store
            .sync_blobs()
            .map_err(|e| format!("cannot sync the store: {e}"))
    })
    .await?
    .map_err(|message| PullError {
        message,
        hint: hint.clone(),
    })?;
    let mut ann = serde_json::Map::new();
    ann.insert(REF_NAME.into(), Value::from(name.clone()));
    ann.insert(RESOLVED.into(), Value::from(top_digest.to_string()));
    desc.annotations = Some(ann);
    let status = match &stored {
        Some(s) if s.digest == desc.digest => Status::Present,
        _ => Status::Pulled,
    };
    // What did not unpack while downloading (a blob already stored, a restarted download);
    // the image becomes visible in index.json only once its layers are ready.
    let layers = unpack_image(shared, &desc.digest).await?;
    marks.committed(layers.is_some());
    {
        let _g = shared.index.lock().await;
        let entry = desc.clone();
        on_store(shared, move |store| {
            store.set_refs(std::slice::from_ref(&entry))
        })
        .await?
        .map_err(|e| PullError {
            message: format!("cannot update the store's index.json: {e}"),
            hint,
        })?;
    }
    Ok((status, desc.digest, layers))
}

/// When an image reached its milestones, in seconds from its start (the report's
/// `seconds_to_manifest`, `seconds_to_last_byte`, `seconds_to_committed`).
pub(super) struct Marks {
    started: std::time::Instant,
    at: std::sync::Mutex<[Option<f64>; 3]>,
}

impl Marks {
    pub(super) fn new(started: std::time::Instant) -> Marks {
        Marks {
            started,
            at: std::sync::Mutex::new([None; 3]),
        }
    }
    fn mark(&self, i: usize) {
        self.at.lock().expect("poisoned")[i] = Some(self.started.elapsed().as_secs_f64());
    }
    fn manifest(&self) {
        self.mark(0);
    }
    fn last_byte(&self) {
        self.mark(1);
    }
    fn committed(&self, unpacked: bool) {
        if unpacked {
            self.mark(2);
        }
    }
    /// (manifest, last byte, last layer committed).
    pub(super) fn get(&self) -> [Option<f64>; 3] {
        *self.at.lock().expect("poisoned")
    }
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
    prog: &ImageProgress,
    plan: Option<LayerPlan>,
) -> Result<u64, PullError> {
    if shared.store.has_blob(&d.digest, d.size) {
        return Ok(0);
    }
    let cell = {
        let mut map = shared.inflight.lock().expect("poisoned");
        map.entry(d.digest.clone()).or_default().clone()
    };
    // Streamed into the layer store only if that layer is not there yet.
    let target = match (&shared.layers, plan) {
        (Some(layers), Some(plan)) if layers.get(&plan.chain_id).is_none() => Some(LayerTarget {
            layers,
            plan,
            max_size: shared.max_layer_size,
            lowers: Lowers::Unknown,
            committed: &shared.committed,
            staged: &shared.staged,
        }),
        _ => None,
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
                        &prog.done,
                        &shared.downloads,
                        target.as_ref(),
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

/// What unpacking gave an image: its layers (bottom first) and the bytes unpacked now.
pub(super) struct Unpacking {
    pub layers: Vec<LayerReport>,
    pub unpacked_bytes: u64,
}

/// The layer plans of an image from its stored config: diff_ids and chain IDs.
async fn plan_layers(
    shared: &Shared,
    config: &Descriptor,
    layers: usize,
) -> Result<Vec<LayerPlan>, PullError> {
    let digest = config.digest.clone();
    let bytes = on_store(shared, move |store| store.read_blob(&digest, MAX_CONFIG))
        .await?
        .map_err(|e| PullError::new(format!("cannot read the image config: {e}")))?;
    let diff_ids = oci::config::diff_ids(&bytes, layers).map_err(|e| PullError {
        message: e.to_string(),
        hint: Some("the image's config does not describe its layers; push it again".into()),
    })?;
    let chains = oci::config::chain_ids(&diff_ids);
    Ok(diff_ids
        .into_iter()
        .zip(&chains)
        .enumerate()
        .map(|(i, (diff_id, chain))| LayerPlan {
            chain_id: chain.clone(),
            parent: i.checked_sub(1).map(|p| chains[p].clone()),
            diff_id,
            below: chains[..i].iter().rev().cloned().collect(),
        })
        .collect())
}

/// Makes sure every layer of the stored image `manifest` is in the layer store, unpacking
/// from the stored blobs what is not (each chain ID once per run, on a blocking thread), and
/// reports the image's layers. `None` with `--no-unpack`.
async fn unpack_image(shared: &Shared, manifest: &Digest) -> Result<Option<Unpacking>, PullError> {
    let Some(layer_store) = &shared.layers else {
        return Ok(None);
    };
    let digest = manifest.clone();
    let blobs = on_store(shared, move |store| store.manifest_blobs(&digest))
        .await?
        .ok_or_else(|| PullError::new(format!("the stored manifest {manifest} is unreadable")))?;
    let (config, layers) = blobs.split_first().expect("a manifest has a config");
    let plans = plan_layers(shared, config, layers.len()).await?;
    for (i, (desc, plan)) in layers.iter().zip(&plans).enumerate() {
        // Bottom-up: every layer below is committed by now.
        let lowers: Vec<std::path::PathBuf> = plans[..i]
            .iter()
            .rev()
            .map(|p| layer_store.layer_dir(&p.chain_id).join("fs"))
            .collect();
        if layer_store.get(&plan.chain_id).is_some() {
            continue;
        }
        let cell = {
            let mut map = shared.unpacking.lock().expect("poisoned");
            map.entry(plan.chain_id.clone()).or_default().clone()
        };
        cell.get_or_try_init(|| async {
            let (store, layers, desc, plan) = (
                shared.store.clone(),
                layer_store.clone(),
                desc.clone(),
                plan.clone(),
            );
            let max_size = shared.max_layer_size;
            let committed = shared.committed.clone();
            let shown = desc.digest.clone();
            let staged = shared.staged.clone();
            tokio::task::spawn_blocking(move || {
                if layers.get(&plan.chain_id).is_some() {
                    return Ok(());
                }
                // Streamed in before the layers below it were committed: settled now.
                let waiting = staged.lock().expect("poisoned").remove(&plan.chain_id);
                let target = LayerTarget {
                    layers: &layers,
                    plan,
                    max_size,
                    lowers: Lowers::Known(lowers),
                    committed: &committed,
                    staged: &staged,
                };
                if let Some(s) = waiting
                    && target.settle_staged(s)?
                {
                    return Ok(());
                }
                let blob = store
                    .open_blob(&desc.digest)
                    .map_err(UnpackError::Decompress)?;
                target.unpack_blob(&desc, std::io::BufReader::with_capacity(1 << 20, blob))
            })
            .await
            .map_err(|e| PullError::new(format!("an unpack task failed: {e}")))?
            .map_err(|e| layer_error(&shown, &e))
        })
        .await?;
    }
    let committed = shared.committed.lock().expect("poisoned").clone();
    let mut out = Unpacking {
        layers: Vec::new(),
        unpacked_bytes: 0,
    };
    for plan in &plans {
        let json = layer_store.get(&plan.chain_id).ok_or_else(|| {
            PullError::new(format!(
                "layer {} is missing from the layer store",
                plan.chain_id
            ))
        })?;
        let unpacked = committed.contains(&plan.chain_id);
        if unpacked {
            out.unpacked_bytes += json.size;
        }
        out.layers.push(LayerReport {
            digest: json.digest.to_string(),
            diff_id: json.diff_id.to_string(),
            chain_id: json.chain_id.to_string(),
            size: json.size,
            unpacked,
        });
    }
    Ok(Some(out))
}

/// A layer that could not be unpacked, explained.
pub(super) fn layer_error(digest: &Digest, e: &UnpackError) -> PullError {
    let hint = match e {
        UnpackError::DiffId { .. } => {
            "the image's config and this layer disagree: the image is broken at the registry; \
             push it again"
        }
        UnpackError::MediaType(_) => "rebuild the image with tar, tar+gzip or tar+zstd layers",
        UnpackError::Extract(_) => {
            "the layer holds an entry that cannot be unpacked safely; nothing of it was kept"
        }
        UnpackError::Decompress(_) => {
            "the layer is corrupt or too large (--max-layer-size), or the layer store's disk \
             is full"
        }
    };
    PullError {
        message: format!("layer {digest}: {e}"),
        hint: Some(hint.into()),
    }
}
