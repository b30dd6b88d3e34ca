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
use crate::oci::Digest;
use crate::oci::manifest::{self, Descriptor, Document};
use crate::oci::platform;
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
) -> Result<(Status, Digest), PullError> {
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
    prog.total.fetch_add(needed, Ordering::Relaxed);
    let results = join_all(
        blobs
            .iter()
            .map(|d| fetch_shared(shared, &all, &r.repository, d, served, prog))
            .collect(),
    )
    .await;
    for r in results {
        bytes.fetch_add(r?, Ordering::Relaxed);
    }

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
    prog: &ImageProgress,
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
                    e.fetch_blob(repo, d, &shared.store, &prog.done, &shared.downloads)
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
