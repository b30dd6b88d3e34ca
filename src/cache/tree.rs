//! Reading a cache's tree, trusting nothing that can be checked: `kci-cache.json` of a
//! known format; every image of `images/index.json` with its manifest, config (and the index
//! it was chosen from) hashing to their digests; every layer record naming its directory
//! (its parent and diff_id giving its chain ID) with an `fs/` directory. One thing wrong and
//! the cache is not used at all.

use std::os::fd::AsFd;
use std::path::Path;

use super::{Cache, CachedImage, FORMAT, RECORD};
use crate::fsutil;
use crate::layers::cached::read_record;
use crate::oci::manifest::{Document, MAX_MANIFEST};
use crate::oci::{Digest, config};
use crate::store::{Problem, Store, resolved_of};

/// Opens the tree at `dir` (of the cache given as `source`).
pub(super) fn open(source: &Path, dir: &Path) -> Result<Cache, String> {
    let fd = fsutil::open_dir(dir).map_err(|e| format!("cannot open {}: {e}", dir.display()))?;
    let shown = dir.join(RECORD);
    let bytes = fsutil::read_file(fd.as_fd(), RECORD, 1 << 20, &shown)
        .map_err(|e| format!("cannot read {}: {e}", shown.display()))?
        .ok_or_else(|| {
            format!(
                "it has no {RECORD}: not an image cache (`kci-pull-agent cache build` makes one)"
            )
        })?;
    let record: serde_json::Value = serde_json::from_slice(&bytes)
        .map_err(|e| format!("{} is not JSON: {e}", shown.display()))?;
    if record["format"].as_u64() != Some(FORMAT.into()) {
        return Err(format!(
            "its format is {}, this agent reads format {FORMAT}: build it with this version",
            record["format"]
        ));
    }
    let images = open_images(&dir.join("images"))?;
    // The layers' directories become lower directories as they are: no link on the way.
    let sha256 = dir.join("layers/sha256");
    let listed = match fsutil::open_subdir(fd.as_fd(), "layers", false, &dir.join("layers"))
        .and_then(|l| fsutil::open_subdir(l.as_fd(), "sha256", false, &sha256))
    {
        Ok(d) => {
            fsutil::list(d.as_fd()).map_err(|e| format!("cannot list {}: {e}", sha256.display()))?
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(e.to_string()),
    };
    let mut layers = Vec::new();
    for (name, ty) in listed {
        let at = sha256.join(&name);
        if ty != rustix::fs::FileType::Directory {
            return Err(format!(
                "its layer record does not match its directory: {} is not a directory",
                at.display()
            ));
        }
        let json = read_record(&at)
            .map_err(|why| format!("its layer record does not match its directory: {why}"))?;
        layers.push(json);
    }
    Ok(Cache {
        source: source.to_path_buf(),
        dir: dir.to_path_buf(),
        images,
        layers,
    })
}

/// Every image of the cache's OCI layout, its documents verified.
fn open_images(dir: &Path) -> Result<Vec<CachedImage>, String> {
    let store = Store::open_existing(dir).map_err(|e| e.to_string())?;
    let refs = store
        .refs()
        .map_err(|e| format!("cannot read {}: {e}", dir.join("index.json").display()))?;
    let mut out = Vec::new();
    for (reference, desc) in refs {
        let wrong = |what: &str| format!("the {what} of {reference} does not match its digest");
        let manifest = store
            .read_blob(&desc.digest, MAX_MANIFEST)
            .map_err(|e| format!("the manifest of {reference}: {e}"))?;
        if desc.digest.verify(&manifest).is_err() || manifest.len() as u64 != desc.size {
            return Err(wrong("manifest"));
        }
        let (config, layers) = match crate::oci::manifest::parse(&manifest, None) {
            Ok(Document::Manifest { config, layers, .. }) => (*config, layers),
            _ => {
                return Err(format!(
                    "the manifest of {reference} is not an image manifest"
                ));
            }
        };
        let config_bytes = store
            .read_blob(&config.digest, config::MAX_CONFIG)
            .map_err(|e| format!("the config of {reference}: {e}"))?;
        if config.digest.verify(&config_bytes).is_err() {
            return Err(wrong("config"));
        }
        let diff_ids = config::diff_ids(&config_bytes, layers.len())
            .map_err(|e| format!("the config of {reference}: {e}"))?;
        let resolved = match resolved_of(&desc) {
            None => desc.digest.clone(),
            Some(s) => {
                Digest::parse(s).map_err(|_| format!("the resolved digest of {reference}: {s}"))?
            }
        };
        // The index the manifest was chosen from, when the cache has it.
        let index = if resolved == desc.digest {
            None
        } else {
            match store.read_blob(&resolved, MAX_MANIFEST) {
                Ok(b) if resolved.verify(&b).is_ok() => Some(b),
                Ok(_) => return Err(wrong("index")),
                Err(_) => None,
            }
        };
        out.push(CachedImage {
            chains: config::chain_ids(&diff_ids),
            reference,
            desc,
            resolved,
            manifest,
            index,
            config,
            config_bytes,
            layers,
        });
    }
    Ok(out)
}

impl Cache {
    /// What `store-check` finds wrong in the cache beyond what reading it checks: a blob
    /// that does not hash to its name, an image whose layers the cache lacks. Nothing is
    /// changed (a cache is never written: rebuild it).
    pub fn check(&self) -> Result<Vec<Problem>, String> {
        let images = self.dir.join("images");
        let store = Store::open_existing(&images).map_err(|e| e.to_string())?;
        let chains: std::collections::HashSet<&Digest> =
            self.layers.iter().map(|l| &l.chain_id).collect();
        let mut problems = store
            .check(false, &|c| chains.contains(c))
            .map_err(|e| format!("cannot check {}: {e}", images.display()))?;
        for p in &mut problems {
            p.detail = format!(
                "{} (image cache {}: rebuild it)",
                p.detail,
                self.source.display()
            );
        }
        Ok(problems)
    }
}
