//! Layers: from a layer blob's bytes to a directory in the overlayfs format (SPEC §8).
//! `decompress` turns the blob into its tar stream and hashes it (the diff_id); `extract`
//! writes the entries safely into the layer's `fs/`.

pub mod attrs;
pub mod cached;
pub mod decompress;
pub mod extract;
mod files;
mod links;
pub mod lower;
mod merged;
mod outcome;
mod pipeline;
pub mod settle;
pub mod store;
pub mod stream;
pub mod tar;
mod tarfields;
mod top;
mod unflushed;
mod whiteouts;

use std::io::Read;
use std::path::{Path, PathBuf};

use crate::oci::Digest;
use crate::oci::manifest::Descriptor;
pub use decompress::{Compression, DiffReader, MediaTypeError};
pub use extract::{ExtractError, Extracted, Limits, Lowers};
pub use outcome::stop_all;
use store::{LayerJson, LayerStore, Staging};

/// What the image config says of a layer: where it goes in the layer store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerPlan {
    pub chain_id: Digest,
    pub parent: Option<Digest>,
    pub diff_id: Digest,
    /// The chain IDs of the layers below, top first.
    pub below: Vec<Digest>,
}

/// A layer that streamed in before the layers below it were committed, waiting for them to
/// be settled ([`settle::settle`]) and committed.
pub struct Staged {
    staging: Staging,
    desc: Descriptor,
    unpacked: Unpacked,
    plan: LayerPlan,
}

/// Layers streamed in and waiting for the layers below them, by chain ID.
pub type StagedLayers = std::sync::Mutex<std::collections::HashMap<Digest, Staged>>;

/// Where a layer blob is unpacked: the layer store, its plan, the size limit.
pub struct LayerTarget<'a> {
    pub layers: &'a LayerStore,
    pub plan: LayerPlan,
    pub max_size: u64,
    /// The layers below, when known (unpacking from a stored blob, bottom-up).
    pub lowers: Lowers,
    /// Chain IDs committed in this run (for the report).
    pub committed: &'a std::sync::Mutex<std::collections::HashSet<Digest>>,
    /// Where a streamed layer waits for the layers below it.
    pub staged: &'a StagedLayers,
}

impl LayerTarget<'_> {
    /// The `fs/` directories of the layers below, top first, if they are all committed.
    fn lower_dirs(&self) -> Option<Vec<PathBuf>> {
        self.plan
            .below
            .iter()
            .map(|c| self.layers.find(c).map(|f| f.fs()))
            .collect()
    }

    /// Commits what was unpacked into `staging` from the verified blob `desc`, if its diff_id
    /// is the one the image config names. A layer streamed in before the layers below it
    /// were committed waits for them ([`LayerTarget::settle_staged`]). A stream cut short by
    /// a restarted download, or a layer that needs its lower layers to be extracted right, is
    /// not an error: the caller unpacks it from the stored blob instead.
    pub fn commit(
        &self,
        desc: &Descriptor,
        staging: Staging,
        result: Result<Unpacked, UnpackError>,
    ) -> Result<(), UnpackError> {
        let u = match result {
            Err(e) if stream::StreamUnpack::was_restarted(&e) => return Ok(()),
            Err(UnpackError::Extract(ExtractError::NeedsLowers(why))) => {
                tracing::debug!(chain_id = %self.plan.chain_id, "{why}");
                return Ok(());
            }
            r => r?,
        };
        if u.diff_id != self.plan.diff_id {
            return Err(UnpackError::DiffId {
                expected: self.plan.diff_id.clone(),
                actual: u.diff_id,
            });
        }
        self.settle_and_commit(desc, staging, u).map(|_| ())
    }

    /// Settles the layer waiting in `staged` now that the layers below it are committed, and
    /// commits it. `false`: it was not committed (it must be unpacked from its blob).
    pub fn settle_staged(&self, staged: Staged) -> Result<bool, UnpackError> {
        self.settle_and_commit(&staged.desc, staged.staging, staged.unpacked)
    }

    /// Commits the layer; one streamed in before the layers below it were committed is
    /// settled against them first, or waits for them in `staged` (`false`, as when it must
    /// be unpacked again from its blob).
    fn settle_and_commit(
        &self,
        desc: &Descriptor,
        staging: Staging,
        u: Unpacked,
    ) -> Result<bool, UnpackError> {
        if let Some(assumed) = &u.extracted.assumed {
            let Some(lowers) = self.lower_dirs() else {
                let waiting = Staged {
                    staging,
                    desc: desc.clone(),
                    unpacked: u,
                    plan: self.plan.clone(),
                };
                let mut staged = self.staged.lock().expect("poisoned");
                staged.insert(self.plan.chain_id.clone(), waiting);
                return Ok(false);
            };
            if let Some(why) =
                settle::settle(&staging.fs, &lowers, assumed).map_err(UnpackError::Decompress)?
            {
                tracing::debug!(chain_id = %self.plan.chain_id, "unpacked again: {why}");
                return Ok(false);
            }
        }
        let json = LayerJson {
            digest: desc.digest.clone(),
            diff_id: u.diff_id,
            chain_id: self.plan.chain_id.clone(),
            parent: self.plan.parent.clone(),
            size: u.size,
            media_type: desc.media_type.clone(),
            unflushed_boot: None,
        };
        self.layers
            .commit(staging, &json)
            .map_err(UnpackError::Decompress)?;
        tracing::debug!(
            chain_id = %self.plan.chain_id,
            blob = %desc.digest,
            bytes = json.size,
            entries = u.extracted.entries,
            "layer committed"
        );
        self.committed
            .lock()
            .expect("poisoned")
            .insert(self.plan.chain_id.clone());
        self.commit_waiting();
        Ok(true)
    }

    /// Settles and commits the layers that waited for this one (each in turn lets those
    /// waiting for it go), while other layers still download: their commits overlap the
    /// rest of the pull instead of queueing at its end. One that cannot be settled is left
    /// to be unpacked from its blob.
    fn commit_waiting(&self) {
        let waiting: Vec<Staged> = {
            let mut staged = self.staged.lock().expect("poisoned");
            let keys: Vec<Digest> = staged
                .iter()
                .filter(|(_, s)| s.plan.parent.as_ref() == Some(&self.plan.chain_id))
                .map(|(k, _)| k.clone())
                .collect();
            keys.iter().filter_map(|k| staged.remove(k)).collect()
        };
        for s in waiting {
            let above = LayerTarget {
                plan: s.plan.clone(),
                lowers: Lowers::Unknown,
                ..*self
            };
            if let Err(e) = above.settle_and_commit(&s.desc, s.staging, s.unpacked) {
                tracing::debug!(chain_id = %s.plan.chain_id, "not settled now: {e}");
            }
        }
    }

    /// Unpacks the layer from its stored blob (already downloaded and verified).
    pub fn unpack_blob<R: Read + Send>(
        &self,
        desc: &Descriptor,
        blob: R,
    ) -> Result<(), UnpackError> {
        let staging = self.layers.stage().map_err(UnpackError::Decompress)?;
        let result = unpack(
            blob,
            &desc.media_type,
            &staging.fs,
            self.lowers.clone(),
            self.max_size,
            &self.layers.limits(),
            Some(&self.plan.diff_id),
        );
        self.commit(desc, staging, result)
    }
}

/// Why a layer was not unpacked.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    #[error(transparent)]
    MediaType(#[from] MediaTypeError),
    #[error("cannot decompress the layer: {0}")]
    Decompress(std::io::Error),
    #[error(transparent)]
    Extract(#[from] ExtractError),
    #[error("the layer's diff_id is {actual}, but the image config says {expected}")]
    DiffId { expected: Digest, actual: Digest },
}

/// A layer unpacked into a directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unpacked {
    pub diff_id: Digest,
    /// Bytes of the uncompressed stream.
    pub size: u64,
    pub extracted: Extracted,
}

/// Unpacks the layer blob read from `blob` (of `media_type`) into `fs`, an empty directory,
/// checking its diff_id against `expected` when given. The whole uncompressed stream is read
/// (trailing data included) before the diff_id is compared.
pub fn unpack<R: Read + Send>(
    blob: R,
    media_type: &str,
    fs: &Path,
    lowers: Lowers,
    max_size: u64,
    limits: &Limits,
    expected: Option<&Digest>,
) -> Result<Unpacked, UnpackError> {
    let compression = Compression::of_media_type(media_type)?;
    let limits = Limits {
        max_size: max_size.min(limits.max_size),
        ..*limits
    };
    let (extracted, digest) = pipeline::decompress_ahead(blob, compression, max_size, |stream| {
        extract::extract(stream, fs, lowers, &limits).map(|(extracted, _)| extracted)
    })?;
    let (diff_id, size) = digest.map_err(UnpackError::Decompress)?;
    if let Some(want) = expected
        && *want != diff_id
    {
        return Err(UnpackError::DiffId {
            expected: want.clone(),
            actual: diff_id,
        });
    }
    Ok(Unpacked {
        diff_id,
        size,
        extracted,
    })
}

#[cfg(test)]
mod tests {
    use super::extract::tests::{file, tar};
    use super::*;
    use std::io::Write;

    /// A gzip stream of `data` (also for the tests of the submodules).
    pub(super) fn gzip(data: &[u8]) -> Vec<u8> {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(data).unwrap();
        gz.finish().unwrap()
    }

    #[test]
    fn the_diff_id_covers_the_whole_stream_and_is_checked() {
        let mut layer = tar(&[file("a", b"hello")]);
        layer.extend_from_slice(b"trailing bytes after the end of the archive");
        let blob = gzip(&layer);
        let gz = "application/vnd.oci.image.layer.v1.tar+gzip";
        let dir = tempfile::tempdir().unwrap();
        let u = unpack(
            &blob[..],
            gz,
            dir.path(),
            Lowers::Unknown,
            1 << 20,
            &Limits::default(),
            None,
        )
        .unwrap();
        assert_eq!(u.diff_id, Digest::sha256(&layer), "trailing data is hashed");
        assert_eq!(u.size, layer.len() as u64);
        assert_eq!(std::fs::read(dir.path().join("a")).unwrap(), b"hello");

        let other = Digest::sha256(b"something else");
        let dir = tempfile::tempdir().unwrap();
        let e = unpack(
            &blob[..],
            gz,
            dir.path(),
            Lowers::Unknown,
            1 << 20,
            &Limits::default(),
            Some(&other),
        )
        .unwrap_err();
        assert!(matches!(e, UnpackError::DiffId { .. }), "{e}");
    }

    #[test]
    fn a_gzip_bomb_stops_at_the_max_layer_size() {
        let bomb = gzip(&tar(&[file("zeros", &vec![0u8; 8 << 20])]));
        let dir = tempfile::tempdir().unwrap();
        let e = unpack(
            &bomb[..],
            "application/vnd.docker.image.rootfs.diff.tar.gzip",
            dir.path(),
            Lowers::Unknown,
            1 << 20,
            &Limits::default(),
            None,
        )
        .unwrap_err();
        assert!(e.to_string().contains("--max-layer-size"), "{e}");
        let e = unpack(
            &bomb[..],
            "application/x-rar",
            dir.path(),
            Lowers::Unknown,
            1 << 20,
            &Limits::default(),
            None,
        )
        .unwrap_err();
        assert!(e.to_string().contains("application/x-rar"), "{e}");
    }
}
