//! Layers outside the layer store, read-only (image caches, SPEC §12): found by chain ID
//! and used in place as lower directories, never written, never copied.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use super::store::{LAYER_JSON, LayerJson, LayerStore, MAX_LAYER_JSON};
use crate::fsutil;
use crate::oci::{Algorithm, Digest};

/// Where a layer was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Place {
    /// The layer store.
    Store,
    /// A read-only layer directory of an image cache.
    Cache,
}

/// A layer found by its chain ID: its directory (holding `fs/`), its record, where.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub dir: PathBuf,
    pub json: LayerJson,
    pub place: Place,
}

impl Found {
    /// Its `fs/`: the overlay lower directory.
    pub fn fs(&self) -> PathBuf {
        self.dir.join("fs")
    }
}

impl LayerStore {
    /// Makes a read-only layer (read and checked with [`read_record`]) visible to
    /// [`LayerStore::find`]; the first one given for a chain ID stays.
    pub fn add_read_only(&mut self, dir: PathBuf, json: LayerJson) {
        self.read_only
            .entry(json.chain_id.clone())
            .or_insert((dir, json));
    }

    /// The layer of `chain_id`: from a read-only cache if one holds it (the fleet's copy,
    /// used in place), else from the layer store.
    pub fn find(&self, chain_id: &Digest) -> Option<Found> {
        if let Some((dir, json)) = self.read_only.get(chain_id) {
            return Some(Found {
                dir: dir.clone(),
                json: json.clone(),
                place: Place::Cache,
            });
        }
        self.get(chain_id).map(|json| Found {
            dir: self.layer_dir(chain_id),
            json,
            place: Place::Store,
        })
    }

    /// Whether a read-only cache holds `chain_id`.
    pub fn is_cached(&self, chain_id: &Digest) -> bool {
        self.read_only.contains_key(chain_id)
    }
}

/// The chain ID a layer record implies: its diff_id for a bottom layer, else
/// `sha256(parent + " " + diff_id)` (the OCI image spec's ChainID).
fn implied_chain(json: &LayerJson) -> Digest {
    match &json.parent {
        None => json.diff_id.clone(),
        Some(p) => Digest::of(
            Algorithm::Sha256,
            format!("{p} {}", json.diff_id).as_bytes(),
        ),
    }
}

/// Reads the record of the layer directory `dir` (named by its chain ID's hex) and checks it
/// against its directory: `layer.json` is a regular file that parses, names this chain ID,
/// whose parent and diff_id give it, and `fs/` is a directory (no link anywhere).
pub fn read_record(dir: &Path) -> Result<LayerJson, String> {
    let name = dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let named = Digest::parse(&format!("sha256:{name}"))
        .map_err(|_| format!("{} is not named by a chain ID", dir.display()))?;
    let fd = fsutil::open_dir(dir).map_err(|e| format!("cannot open {}: {e}", dir.display()))?;
    let shown = dir.join(LAYER_JSON);
    let bytes = fsutil::read_file(fd.as_fd(), LAYER_JSON, MAX_LAYER_JSON, &shown)
        .map_err(|e| format!("cannot read {}: {e}", shown.display()))?
        .ok_or_else(|| format!("{} is missing", shown.display()))?;
    let json: LayerJson = serde_json::from_slice(&bytes)
        .map_err(|e| format!("{} is not a layer record: {e}", shown.display()))?;
    if json.chain_id != named {
        return Err(format!(
            "{} names the chain ID {}, not its directory's",
            shown.display(),
            json.chain_id
        ));
    }
    let implied = implied_chain(&json);
    if implied != named {
        return Err(format!(
            "{}: its parent and diff_id give the chain ID {implied}, not {named}",
            shown.display()
        ));
    }
    fsutil::open_subdir(fd.as_fd(), "fs", false, &dir.join("fs"))
        .map_err(|e| format!("{}: {e}", dir.join("fs").display()))?;
    Ok(json)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(dir: &Path, json: &LayerJson) {
        std::fs::create_dir_all(dir.join("fs")).unwrap();
        std::fs::write(dir.join(LAYER_JSON), serde_json::to_vec(json).unwrap()).unwrap();
    }

    fn json(diff_id: &Digest, parent: Option<&Digest>) -> LayerJson {
        let mut j = LayerJson {
            digest: Digest::sha256(b"blob"),
            diff_id: diff_id.clone(),
            chain_id: diff_id.clone(),
            parent: parent.cloned(),
            size: 1,
            media_type: "application/vnd.oci.image.layer.v1.tar".into(),
            unflushed_boot: None,
        };
        j.chain_id = implied_chain(&j);
        j
    }

    /// A record is used only when it names its directory and its parent and diff_id give
    /// that name; a link in place of `fs/` or the record is refused.
    #[test]
    fn a_record_must_match_its_directory() {
        let t = tempfile::tempdir().unwrap();
        let base = json(&Digest::sha256(b"a"), None);
        let top = json(&Digest::sha256(b"b"), Some(&base.chain_id));
        let at = |j: &LayerJson| t.path().join(j.chain_id.hex());
        record(&at(&base), &base);
        record(&at(&top), &top);
        assert_eq!(read_record(&at(&base)).unwrap(), base);
        assert_eq!(read_record(&at(&top)).unwrap(), top);

        // Another diff_id under the same name: the chain no longer adds up.
        let mut lied = top.clone();
        lied.diff_id = Digest::sha256(b"c");
        record(&at(&top), &lied);
        let e = read_record(&at(&top)).unwrap_err();
        assert!(e.contains("give the chain ID"), "{e}");
        // A record of another layer copied here.
        record(&at(&top), &base);
        assert!(
            read_record(&at(&top))
                .unwrap_err()
                .contains("names the chain ID")
        );
        // A directory whose name is no chain ID.
        let odd = t.path().join("not-a-chain");
        record(&odd, &base);
        assert!(read_record(&odd).unwrap_err().contains("not named by"));
        // fs/ as a link to elsewhere.
        record(&at(&top), &top);
        std::fs::remove_dir(at(&top).join("fs")).unwrap();
        std::os::unix::fs::symlink("/etc", at(&top).join("fs")).unwrap();
        assert!(read_record(&at(&top)).is_err());
        // No record at all.
        std::fs::remove_file(at(&base).join(LAYER_JSON)).unwrap();
        assert!(read_record(&at(&base)).unwrap_err().contains("missing"));
    }
}
