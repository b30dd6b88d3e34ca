//! Image caches (SPEC §12): the images' manifests, configs and unpacked layers of another
//! instance, shipped as one read-only EROFS image (or a directory of the same tree), so that
//! an instance is ready without pulling. The tree mirrors the agent's own stores:
//!
//! ```text
//! kci-cache.json                    what the cache holds (format, agent, images)
//! images/                           an OCI layout: index.json with the cached references,
//!                                   blobs/ with their manifests, configs (layers: --with-blobs)
//! layers/sha256/<chain>/            each layer as the layer store keeps it (layer.json, fs/)
//! ```
//!
//! `build` writes one; [`Caches::attach`] mounts and reads the ones a run is given. A cache is
//! never written: its layers are lower directories of the containers' overlays as they are.
//! What can be checked is checked when it is read ([`tree`]); the files of its layers are
//! trusted as the disk the platform ships them on (docs/caches.md).

mod attach;
mod build;
mod tree;

pub use attach::attached;
use std::path::{Path, PathBuf};

pub use build::{BuildOptions, Built, build};

use crate::layers::store::{LayerJson, LayerStore};
use crate::oci::Digest;
use crate::oci::manifest::Descriptor;

/// The cache's format, in its `kci-cache.json`.
pub const FORMAT: u32 = 1;
/// The record at the top of a cache's tree.
pub const RECORD: &str = "kci-cache.json";
/// Where image files and devices are mounted, under `--root`.
pub const CACHES: &str = "run/kci/caches";
/// The variable that lists caches (comma-separated) when no `--image-cache` is given.
pub const ENV: &str = "KCI_IMAGE_CACHE";

/// One cache, read and checked.
#[derive(Debug)]
pub struct Cache {
    /// What the operator gave (`--image-cache`, `KCI_IMAGE_CACHE`).
    pub source: PathBuf,
    /// The top of its tree: the mount point, or the directory given.
    pub dir: PathBuf,
    pub images: Vec<CachedImage>,
    /// Every layer record (each checked against its directory).
    pub layers: Vec<LayerJson>,
}

impl Cache {
    /// The directory of a layer of this cache.
    pub fn layer_dir(&self, chain: &Digest) -> PathBuf {
        self.dir.join("layers/sha256").join(chain.hex())
    }
}

/// An image of a cache, its documents verified against their digests.
#[derive(Debug)]
pub struct CachedImage {
    pub reference: String,
    /// Its entry of the cache's `index.json` (annotations: the reference, the resolved digest).
    pub desc: Descriptor,
    /// The digest its reference resolved to (an index's, for a multi-platform image).
    pub resolved: Digest,
    pub manifest: Vec<u8>,
    /// The index it was chosen from, if the cache holds it.
    pub index: Option<Vec<u8>>,
    pub config: Descriptor,
    pub config_bytes: Vec<u8>,
    pub layers: Vec<Descriptor>,
    /// Its layers' chain IDs, bottom first.
    pub chains: Vec<Digest>,
}

/// The caches of a run, in the order given (the first that holds something serves it).
#[derive(Debug, Default)]
pub struct Caches {
    pub caches: Vec<Cache>,
}

/// The caches a run is given: the `--image-cache` flags, else `KCI_IMAGE_CACHE`, else the
/// caches attached under `root` in this boot (so that a command run by hand sees what `boot`
/// used).
pub fn sources(flags: &[PathBuf], env: Option<String>, root: &Path) -> Vec<PathBuf> {
    if !flags.is_empty() {
        return flags.to_vec();
    }
    let listed: Vec<PathBuf> = env
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .collect();
    if listed.is_empty() {
        attached(root)
            .into_iter()
            .map(|(source, _)| source)
            .collect()
    } else {
        listed
    }
}

impl Caches {
    /// Mounts (if they are images) and reads the caches `sources`. One that cannot be used is
    /// said with why, and left out: its images are pulled.
    pub fn attach(root: &Path, sources: &[PathBuf]) -> Caches {
        let mut caches = Vec::new();
        for (source, opened) in Caches::open_each(root, sources) {
            match opened {
                Ok(cache) => {
                    tracing::info!(
                        cache = %source.display(),
                        images = cache.images.len(),
                        layers = cache.layers.len(),
                        "image cache {} ({} image(s), {} layer(s)) at {}",
                        source.display(),
                        cache.images.len(),
                        cache.layers.len(),
                        cache.dir.display()
                    );
                    caches.push(cache);
                }
                Err(why) => tracing::warn!(
                    cache = %source.display(),
                    "image cache {} is not used: {why}; what it would have served is pulled",
                    source.display()
                ),
            }
        }
        Caches { caches }
    }

    /// Each of `sources` mounted (if it is an image) and read, or why it cannot be used.
    pub fn open_each(root: &Path, sources: &[PathBuf]) -> Vec<(PathBuf, Result<Cache, String>)> {
        sources
            .iter()
            .map(|s| {
                let opened = attach::place(root, s).and_then(|dir| tree::open(s, &dir));
                (s.clone(), opened)
            })
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.caches.is_empty()
    }

    /// The first cache's image of `reference` (normalised).
    pub fn image(&self, reference: &str) -> Option<(&Cache, &CachedImage)> {
        self.caches.iter().find_map(|c| {
            c.images
                .iter()
                .find(|i| i.reference == reference)
                .map(|i| (c, i))
        })
    }

    /// A config the caches hold, verified (`None` if none does).
    pub fn config(&self, digest: &Digest) -> Option<&[u8]> {
        self.caches
            .iter()
            .flat_map(|c| &c.images)
            .find(|i| i.config.digest == *digest)
            .map(|i| i.config_bytes.as_slice())
    }

    /// Makes every cached layer visible to `layers` ([`LayerStore::find`]), used in place.
    pub fn lend_layers(&self, layers: &mut LayerStore) {
        for c in &self.caches {
            for json in &c.layers {
                layers.add_read_only(c.layer_dir(&json.chain_id), json.clone());
            }
        }
    }

    /// The top of each cache's tree.
    pub fn dirs(&self) -> Vec<PathBuf> {
        self.caches.iter().map(|c| c.dir.clone()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_win_over_the_variable_which_wins_over_the_attached() {
        let root = tempfile::tempdir().unwrap();
        let env = Some(" /a.erofs, ,/dev/vdb ".to_string());
        assert_eq!(
            sources(&[], env.clone(), root.path()),
            vec![PathBuf::from("/a.erofs"), PathBuf::from("/dev/vdb")]
        );
        assert_eq!(
            sources(&[PathBuf::from("/c")], env, root.path()),
            vec![PathBuf::from("/c")]
        );
        assert!(sources(&[], None, root.path()).is_empty());
        // A directory attached by an earlier run of this boot is found by its record.
        let dir = root.path().join("cache-dir");
        std::fs::create_dir(&dir).unwrap();
        attach::place(root.path(), &dir).unwrap();
        assert_eq!(
            sources(&[], Some(String::new()), root.path()),
            vec![dir.canonicalize().unwrap()]
        );
    }
}
