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
use super::unpack::{Marks, Unpacking, plan_layers, unpack_image};
use super::{PullError, Shared, Why, join_all, on_store};
use crate::cache::{Cache, CachedImage};
use crate::config::ImageRequest;
use crate::layers::{LayerPlan, LayerTarget, Lowers};
use crate::oci::Digest;
use crate::oci::manifest::{self, Descriptor, Document};
use crate::oci::platform;
use crate::report::Status;
use crate::store::{REF_NAME, RESOLVED, resolved_of};

/// What the registry says the image is: its manifest (chosen from an index for the
/// platform), the index it came from, its config and layers, and the hosts to fetch from.
struct Resolved {
    /// The digest the reference resolved to (the index's for a multi-platform image).
    top_digest: Digest,
    /// The manifest, and its descriptor as the store's index entry will hold it.
    manifest: Vec<u8>,
    desc: Descriptor,
    /// The index it was chosen from, stored with it.
    index: Option<Vec<u8>>,
    config: Descriptor,
    layers: Vec<Descriptor>,
    /// The hosts that may serve its content (mirrors, then the origin).
    hosts: Arc<Vec<Arc<Session>>>,
}

/// What became of an image that did not fail.
pub(super) struct Outcome {
    pub status: Status,
    pub digest: Digest,
    /// Its layers, unless `--no-unpack`.
    pub layers: Option<Unpacking>,
    /// The image cache its manifest and config came from.
    pub cache: Option<String>,
    /// What the operator should know (the cache's record used for an unreachable registry).
    pub warning: Option<String>,
}

impl Outcome {
    fn of(status: Status, digest: Digest, layers: Option<Unpacking>) -> Outcome {
        Outcome {
            status,
            digest,
            layers,
            cache: None,
            warning: None,
        }
    }
}

pub(super) async fn pull_image(
    shared: &Shared,
    req: &ImageRequest,
    bytes: &AtomicU64,
    served: &Mutex<Served>,
    prog: &ImageProgress,
    marks: &Marks,
) -> Result<Outcome, PullError> {
    let name = req.reference.to_string();
    let (stored, complete) = on_store(shared, {
        let name = name.clone();
        let layers = shared.layers.clone();
        move |store| {
            let stored = store.find_ref(&name)?;
            let complete = stored.as_ref().is_some_and(|d| match &layers {
                Some(l) => store.is_complete_with(&d.digest, &|c| l.is_cached(c)),
                None => store.is_complete(&d.digest),
            });
            Ok::<_, std::io::Error>((stored, complete))
        }
    })
    .await?
    .map_err(|e| {
        PullError::Store(Why {
            message: format!("cannot read the store's index: {e}"),
            hint: Some("run the store check, or move index.json aside".into()),
        })
    })?;
    // Of the platform asked for (an image picked from an index records its platform).
    let of_platform = |d: &Descriptor| {
        d.platform.is_none()
            || platform::choose(std::slice::from_ref(d), &shared.platform).is_some()
    };
    // Usable as is: complete, and of the platform.
    let stored_ok = stored.as_ref().filter(|d| complete && of_platform(d));
    // A cache's image, when layers are unpacked (caches hold unpacked layers), of the
    // platform, with every layer at hand (a cache missing one is used for the others only).
    let cached = shared.layers.as_ref().and_then(|layers| {
        shared.caches.image(&name).filter(|(_, i)| {
            of_platform(&i.desc) && i.chains.iter().all(|c| layers.find(c).is_some())
        })
    });
    // Pinned by digest and already complete: nothing to ask the registry.
    if let Some(d) = &req.reference.digest {
        if let Some(s) = stored_ok
            && resolved_of(s) == Some(d.as_str())
        {
            return present(shared, s, marks).await;
        }
        if let Some((cache, image)) = cached
            && image.resolved == *d
        {
            return from_cache(shared, &name, cache, image, marks, None).await;
        }
    }
    let hosts = endpoints(shared, &req.reference.registry).await?;
    // A tag whose registry digest is the one stored or cached: present. A registry that
    // cannot say (unreachable, failing) leaves the cache's record of the tag, with a warning.
    if req.reference.digest.is_none() && (stored_ok.is_some() || cached.is_some()) {
        match head_digest(req, &hosts).await {
            Ok(Some(head)) => {
                if let Some(s) = stored_ok
                    && Some(head.as_str()) == resolved_of(s)
                {
                    return present(shared, s, marks).await;
                }
                if let Some((cache, image)) = cached
                    && image.resolved == head
                {
                    return from_cache(shared, &name, cache, image, marks, None).await;
                }
            }
            Err(e) if cached.is_some() => {
                let (cache, image) = cached.expect("checked");
                let warning = format!(
                    "the registry did not answer for the tag of {name} ({e}); using the image \
                     cache's record of it, {} (cache {})",
                    image.resolved,
                    cache.source.display()
                );
                tracing::warn!(image = %req.image, "{warning}");
                return from_cache(shared, &name, cache, image, marks, Some(warning)).await;
            }
            _ => {}
        }
    }
    let r = resolve(shared, req, hosts, bytes, served).await?;
    marks.manifest();
    fetch(shared, req, &r, bytes, served, prog).await?;
    marks.last_byte();
    let status = match &stored {
        Some(s) if s.digest == r.desc.digest => Status::Present,
        _ => Status::Pulled,
    };
    let (digest, layers) = commit(shared, &name, r, marks).await?;
    Ok(Outcome::of(status, digest, layers))
}

/// An image found present: its layers unpacked if they are not.
async fn present(shared: &Shared, d: &Descriptor, marks: &Marks) -> Result<Outcome, PullError> {
    marks.manifest();
    let layers = unpack_image(shared, &d.digest).await?;
    marks.committed(layers.is_some());
    Ok(Outcome::of(Status::Present, d.digest.clone(), layers))
}

/// An image a cache holds: its manifest and config (verified when the cache was read) put
/// in the store and named in `index.json`; its layers are the cache's, used in place (any the
/// cache lacks are unpacked from the store's blobs, or the image fails).
async fn from_cache(
    shared: &Shared,
    name: &str,
    cache: &Cache,
    image: &CachedImage,
    marks: &Marks,
    warning: Option<String>,
) -> Result<Outcome, PullError> {
    marks.manifest();
    let mut docs = vec![
        (image.desc.digest.clone(), image.manifest.clone()),
        (image.config.digest.clone(), image.config_bytes.clone()),
    ];
    if let Some(index) = &image.index {
        docs.push((image.resolved.clone(), index.clone()));
    }
    let desc = named(image.desc.clone(), name, &image.resolved);
    let root = shared.store.root().to_path_buf();
    {
        let _g = shared.index.lock().await;
        let (entry, name) = (desc.clone(), name.to_string());
        on_store(shared, move |store| {
            let mut wrote = false;
            for (d, b) in &docs {
                if !store.has_blob(d, b.len() as u64) {
                    store.put_small(d, b)?;
                    wrote = true;
                }
            }
            if wrote {
                store.sync_blobs()?;
            }
            if store.find_ref(&name)?.as_ref() != Some(&entry) {
                store.set_refs(std::slice::from_ref(&entry))?;
            }
            Ok::<_, std::io::Error>(())
        })
        .await?
        .map_err(|e| {
            PullError::disk(
                format!("cannot store the cached image's manifest and config: {e}"),
                &root,
            )
        })?;
    }
    let layers = unpack_image(shared, &desc.digest).await?;
    marks.committed(layers.is_some());
    Ok(Outcome {
        cache: Some(cache.source.display().to_string()),
        warning,
        ..Outcome::of(Status::Present, desc.digest, layers)
    })
}

/// `desc` as the store's index names it: the reference, and the digest it resolved to.
fn named(mut desc: Descriptor, name: &str, resolved: &Digest) -> Descriptor {
    let mut ann = serde_json::Map::new();
    ann.insert(REF_NAME.into(), Value::from(name.to_string()));
    ann.insert(RESOLVED.into(), Value::from(resolved.to_string()));
    desc.annotations = Some(ann);
    desc
}

/// The digest the registry gives for the reference's tag (a HEAD): `None` if it answers
/// without one, an error if no host answers.
async fn head_digest(
    req: &ImageRequest,
    hosts: &[Arc<Session>],
) -> Result<Option<Digest>, PullError> {
    let resolvers: Vec<Arc<Session>> = hosts
        .iter()
        .filter(|s| s.endpoint.resolves())
        .cloned()
        .collect();
    let tag = req.reference.tag.clone().unwrap_or_else(|| "latest".into());
    let r = &req.reference;
    first_ok(&resolvers, "HEAD manifest", async |e: &Session| {
        e.head_manifest(&r.repository, &tag).await
    })
    .await
    .map(|(head, _)| head)
}

/// Fetches the reference's manifest (and, for an index, the one for the platform), each
/// verified, from the hosts allowed to resolve it.
async fn resolve(
    shared: &Shared,
    req: &ImageRequest,
    hosts: Arc<Vec<Arc<Session>>>,
    bytes: &AtomicU64,
    served: &Mutex<Served>,
) -> Result<Resolved, PullError> {
    let r = &req.reference;
    let tag_or_digest = r
        .digest
        .as_ref()
        .map(Digest::to_string)
        .or_else(|| r.tag.clone())
        .unwrap_or_else(|| "latest".into());
    // Tags are resolved only by hosts allowed to; content addressed by digest comes from any.
    let resolvers: Vec<Arc<Session>> = if r.digest.is_some() {
        hosts.to_vec()
    } else {
        hosts
            .iter()
            .filter(|s| s.endpoint.resolves())
            .cloned()
            .collect()
    };
    let ((top, ct), top_from) = first_ok(&resolvers, "manifest", async |e: &Session| {
        let (top, ct) = e.get_manifest(&r.repository, &tag_or_digest).await?;
        if let Some(d) = &r.digest
            && let Err(actual) = d.verify(&top)
        {
            return Err(PullError::WrongContent(Why {
                message: format!("{} served {actual} for the manifest {d}", e.label),
                hint: Some("it served wrong content; nothing was stored".into()),
            }));
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
    // Each document is parsed once.
    match manifest::parse(&top, ct.as_deref()).map_err(|e| {
        PullError::WrongContent(Why {
            message: e.to_string(),
            hint: None,
        })
    })? {
        Document::Manifest {
            media_type,
            config,
            layers,
        } => Ok(Resolved {
            desc: Descriptor {
                media_type,
                digest: top_digest.clone(),
                size: top.len() as u64,
                platform: None,
                annotations: None,
                urls: None,
            },
            top_digest,
            manifest: top,
            index: None,
            config: *config,
            layers,
            hosts,
        }),
        Document::Index { manifests, .. } => {
            let chosen = platform::choose(&manifests, &shared.platform).ok_or_else(|| {
                PullError::Registry(Why {
                    message: format!(
                        "no manifest for platform {} (the image offers {})",
                        shared.platform,
                        platform::offered(&manifests)
                    ),
                    hint: Some("choose another platform with --platform, or another image".into()),
                })
            })?;
            let ((child, _), from) = first_ok(&hosts, "manifest", async |e: &Session| {
                let (child, ct) = e
                    .get_manifest(&r.repository, chosen.digest.as_str())
                    .await?;
                let actual = Digest::of(chosen.digest.algorithm(), &child);
                if actual != chosen.digest || child.len() as u64 != chosen.size {
                    return Err(PullError::WrongContent(Why {
                        message: format!(
                            "{} served {actual} ({} bytes) for the manifest {} ({} bytes)",
                            e.label,
                            child.len(),
                            chosen.digest,
                            chosen.size
                        ),
                        hint: Some("it served wrong content; nothing was stored".into()),
                    }));
                }
                Ok((child, ct))
            })
            .await?;
            bytes.fetch_add(child.len() as u64, Ordering::Relaxed);
            served.lock().await.add(&from.label, child.len() as u64);
            let (config, layers) =
                match manifest::parse(&child, Some(&chosen.media_type)).map_err(|e| {
                    PullError::WrongContent(Why {
                        message: e.to_string(),
                        hint: None,
                    })
                })? {
                    Document::Manifest { config, layers, .. } => (*config, layers),
                    Document::Index { .. } => {
                        return Err(PullError::WrongContent(Why {
                            message: "an index points to another index; nested indexes are not \
                                      supported"
                                .into(),
                            hint: Some("push the image with a single-level index".into()),
                        }));
                    }
                };
            // The index entry (with its platform) becomes the store's descriptor; its
            // annotations, written for the index, give way to ours.
            let mut desc = chosen.clone();
            desc.annotations = None;
            Ok(Resolved {
                top_digest,
                manifest: child,
                desc,
                index: Some(top),
                config,
                layers,
                hosts,
            })
        }
    }
}

/// Fetches the config and every blob not in the store (each once per run), the layers
/// unpacking while they download.
async fn fetch(
    shared: &Shared,
    req: &ImageRequest,
    r: &Resolved,
    bytes: &AtomicU64,
    served: &Mutex<Served>,
    prog: &ImageProgress,
) -> Result<(), PullError> {
    let repo = &req.reference.repository;
    let store = &shared.store;
    let missing = |b: &Descriptor| !store.has_blob(&b.digest, b.size);
    // A config an image cache holds (verified when the cache was read) is not fetched.
    if missing(&r.config)
        && shared.layers.is_some()
        && let Some(config) = shared.caches.config(&r.config.digest)
    {
        let (digest, config) = (r.config.digest.clone(), config.to_vec());
        on_store(shared, move |store| store.put_small(&digest, &config))
            .await?
            .map_err(|e| {
                PullError::Store(Why {
                    message: format!("cannot store the config {}: {e}", r.config.digest),
                    hint: None,
                })
            })?;
    }
    if missing(&r.config) {
        prog.total.fetch_add(r.config.size, Ordering::Relaxed);
    }
    // Unpacking: the config first (it is small), for the layers' diff_ids; then every layer
    // unpacks while it downloads.
    let plans = match &shared.layers {
        None => None,
        Some(_) => {
            let n = fetch_shared(shared, &r.hosts, repo, &r.config, served, prog, None).await?;
            bytes.fetch_add(n, Ordering::Relaxed);
            let plans = plan_layers(shared, &r.config, r.layers.len()).await?;
            // Only for a bar: each check reads a layer.json.
            if let Some(store) = shared.layers.as_ref().filter(|_| prog.shown()) {
                let missing = plans
                    .iter()
                    .filter(|p| store.find(&p.chain_id).is_none())
                    .map(|p| p.chain_id.clone())
                    .collect();
                prog.unpacks(missing, shared.committed.clone());
            }
            Some(plans)
        }
    };
    // A layer an image cache holds is used in place: its blob is not fetched.
    let cached = |i: usize| {
        plans
            .as_ref()
            .zip(shared.layers.as_ref())
            .is_some_and(|(p, l)| l.is_cached(&p[i].chain_id))
    };
    let needed: u64 = r
        .layers
        .iter()
        .enumerate()
        .filter(|(i, b)| !cached(*i) && missing(b))
        .map(|(_, b)| b.size)
        .sum();
    prog.total.fetch_add(needed, Ordering::Relaxed);
    let mut blobs: Vec<(Descriptor, Option<LayerPlan>)> = Vec::new();
    let planned = r
        .layers
        .iter()
        .enumerate()
        .filter(|(i, _)| !cached(*i))
        .map(|(i, d)| (d.clone(), plans.as_ref().map(|p| p[i].clone())));
    for (d, plan) in std::iter::once((r.config.clone(), None)).chain(planned) {
        if !blobs.iter().any(|(b, _)| b.digest == d.digest) {
            blobs.push((d, plan));
        }
    }
    let results = join_all(
        blobs
            .iter()
            .map(|(d, plan)| fetch_shared(shared, &r.hosts, repo, d, served, prog, plan.clone()))
            .collect(),
    )
    .await;
    for n in results {
        bytes.fetch_add(n?, Ordering::Relaxed);
    }
    Ok(())
}

/// Stores the manifests, waits for what did not unpack while downloading (a blob already
/// stored, a restarted download), then makes the image visible in `index.json`.
async fn commit(
    shared: &Shared,
    name: &str,
    r: Resolved,
    marks: &Marks,
) -> Result<(Digest, Option<Unpacking>), PullError> {
    let root = shared.store.root().to_path_buf();
    let manifests: Vec<(Digest, Vec<u8>)> = std::iter::once((r.desc.digest.clone(), r.manifest))
        .chain(r.index.map(|ib| (r.top_digest.clone(), ib)))
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
    .map_err(|message| PullError::disk(message, &root))?;
    let desc = named(r.desc, name, &r.top_digest);
    let layers = unpack_image(shared, &desc.digest).await?;
    marks.committed(layers.is_some());
    {
        let _g = shared.index.lock().await;
        let entry = desc.clone();
        on_store(shared, move |store| {
            store.set_refs(std::slice::from_ref(&entry))
        })
        .await?
        .map_err(|e| {
            PullError::disk(format!("cannot update the store's index.json: {e}"), &root)
        })?;
    }
    Ok((desc.digest, layers))
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
        (Some(layers), Some(plan)) if layers.find(&plan.chain_id).is_none() => Some(LayerTarget {
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
                        shared.chunking,
                    )
                    .await
                },
            )
            .await?;
            served.lock().await.add(&from.label, n);
            fetched.store(n, Ordering::Relaxed);
            shared
                .fetched
                .lock()
                .expect("poisoned")
                .insert(d.digest.clone());
        }
        Ok::<(), PullError>(())
    })
    .await?;
    Ok(fetched.load(Ordering::Relaxed))
}
