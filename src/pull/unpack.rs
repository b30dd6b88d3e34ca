//! An image's layers in the layer store: planned from its config (diff_ids, chain IDs),
//! unpacked from stored blobs when they did not unpack while downloading, reported; and the
//! milestones of an image's pull.

use super::{PullError, Shared, Why, on_store};
use crate::layers::cached::Place;
use crate::layers::{LayerPlan, LayerTarget, Lowers, UnpackError};
use crate::oci;
use crate::oci::Digest;
use crate::oci::config::MAX_CONFIG;
use crate::oci::manifest::Descriptor;
use crate::report::LayerReport;

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
    pub(super) fn manifest(&self) {
        self.mark(0);
    }
    pub(super) fn last_byte(&self) {
        self.mark(1);
    }
    pub(super) fn committed(&self, unpacked: bool) {
        if unpacked {
            self.mark(2);
        }
    }
    /// (manifest, last byte, last layer committed).
    pub(super) fn get(&self) -> [Option<f64>; 3] {
        *self.at.lock().expect("poisoned")
    }
}

/// What unpacking gave an image: its layers (bottom first) and the bytes unpacked now.
pub(super) struct Unpacking {
    pub layers: Vec<LayerReport>,
    pub unpacked_bytes: u64,
}

/// The layer plans of an image from its stored config: diff_ids and chain IDs.
pub(super) async fn plan_layers(
    shared: &Shared,
    config: &Descriptor,
    layers: usize,
) -> Result<Vec<LayerPlan>, PullError> {
    let digest = config.digest.clone();
    let bytes = on_store(shared, move |store| store.read_blob(&digest, MAX_CONFIG))
        .await?
        .map_err(|e| {
            PullError::Store(Why {
                message: format!("cannot read the image config: {e}"),
                hint: None,
            })
        })?;
    let diff_ids = oci::config::diff_ids(&bytes, layers).map_err(|e| {
        PullError::WrongContent(Why {
            message: e.to_string(),
            hint: Some("the image's config does not describe its layers; push it again".into()),
        })
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
pub(super) async fn unpack_image(
    shared: &Shared,
    manifest: &Digest,
) -> Result<Option<Unpacking>, PullError> {
    let Some(layer_store) = &shared.layers else {
        return Ok(None);
    };
    let digest = manifest.clone();
    let blobs = on_store(shared, move |store| store.manifest_blobs(&digest))
        .await?
        .ok_or_else(|| {
            PullError::Store(Why {
                message: format!("the stored manifest {manifest} is unreadable"),
                hint: Some("run store-check --fix, then pull again".into()),
            })
        })?;
    let (config, layers) = blobs.split_first().expect("a manifest has a config");
    let plans = plan_layers(shared, config, layers.len()).await?;
    for (i, (desc, plan)) in layers.iter().zip(&plans).enumerate() {
        // Bottom-up: every layer below is committed (or cached) by now.
        let lowers: Vec<std::path::PathBuf> = plans[..i]
            .iter()
            .rev()
            .map(|p| match layer_store.find(&p.chain_id) {
                Some(found) => found.fs(),
                None => layer_store.layer_dir(&p.chain_id).join("fs"),
            })
            .collect();
        if layer_store.find(&plan.chain_id).is_some() {
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
                if layers.find(&plan.chain_id).is_some() {
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
            .map_err(|e| {
                PullError::Layer(Why {
                    message: format!("an unpack task failed: {e}"),
                    hint: None,
                })
            })?
            .map_err(|e| layer_error(&shown, &e))
        })
        .await?;
    }
    let committed = shared.committed.lock().expect("poisoned").clone();
    let fetched = shared.fetched.lock().expect("poisoned").clone();
    let mut out = Unpacking {
        layers: Vec::new(),
        unpacked_bytes: 0,
    };
    for (plan, desc) in plans.iter().zip(layers) {
        let found = layer_store.find(&plan.chain_id).ok_or_else(|| {
            PullError::Store(Why {
                message: format!("layer {} is missing from the layer store", plan.chain_id),
                hint: Some("run store-check, then pull again".into()),
            })
        })?;
        let json = found.json;
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
            from: match found.place {
                Place::Cache => "cache",
                Place::Store if fetched.contains(&desc.digest) => "registry",
                Place::Store => "store",
            },
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
    PullError::Layer(Why {
        message: format!("layer {digest}: {e}"),
        hint: Some(hint.into()),
    })
}
