//! The layer store (SPEC §8): `layers/sha256/<chain ID hex>/` holds a layer's `fs/` (overlay
//! format) and its `layer.json`. A layer is unpacked into a staging directory under
//! `layers/ingest/` and renamed into place only once the blob and the diff_id are verified;
//! staging directories of a killed run are removed when the store is next opened.
//!
//! Durability ([`LayerSync`]): by default a layer is committed without waiting for its files
//! to reach the disk, under a marker `unflushed.<boot id>` made durable first; `flush` (the
//! `flush-layers` command, run after boot off the pod's critical path) flushes the file system
//! and removes the marker. A store opened in a later boot that still has the marker of an
//! earlier one (a crash or power loss before the flush) drops the layers committed unflushed in
//! that boot: they may hold empty files. They are unpacked again from their stored blobs.

use std::fs::File;
use std::io::{self, ErrorKind};
use std::os::fd::{AsFd, OwnedFd};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::Limits;
use super::unflushed::{self, boot_id, drop_unflushed};
use crate::fsutil;
use crate::oci::Digest;

/// What `layers/sha256/<chain>/layer.json` says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerJson {
    /// The compressed blob's digest.
    pub digest: Digest,
    pub diff_id: Digest,
    pub chain_id: Digest,
    pub parent: Option<Digest>,
    /// Bytes of the uncompressed stream.
    pub size: u64,
    #[serde(rename = "mediaType")]
    pub media_type: String,
    /// The boot (`/proc/sys/kernel/random/boot_id`) in which the layer was committed without
    /// a flush; set by [`LayerStore::commit`].
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        rename = "unflushedBoot"
    )]
    pub unflushed_boot: Option<String>,
}

/// When a layer's files are flushed to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LayerSync {
    /// Committed at once under a durable `unflushed.<boot id>` marker; flushed by
    /// [`LayerStore::flush`]; dropped by a later boot if the flush never happened.
    #[default]
    Deferred,
    /// One `syncfs` before each layer is committed.
    Commit,
}

/// The `layer.json` of the layer directory `name` under `sha256/`, if it is there and parses.
/// A layer committed by an earlier version with `impliedDirs` still to fix (directories whose
/// attributes were to come from the layers below) counts as missing: it is unpacked again.
fn read_layer_json(sha256: &OwnedFd, name: &str, shown: &Path) -> Option<LayerJson> {
    let dir = fsutil::open_subdir(sha256.as_fd(), name, false, shown).ok()?;
    let bytes = fsutil::read_file(
        dir.as_fd(),
        LAYER_JSON,
        MAX_LAYER_JSON,
        Path::new(LAYER_JSON),
    )
    .ok()??;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    if v.get("impliedDirs")
        .is_some_and(|d| d.as_array().is_none_or(|a| !a.is_empty()))
    {
        return None;
    }
    serde_json::from_value(v).ok()
}

/// What `store-check` finds wrong in a layer store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerProblem {
    pub kind: LayerProblemKind,
    pub path: PathBuf,
    pub detail: String,
    /// Whether `--fix` removed it.
    pub fixed: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerProblemKind {
    /// A directory of `sha256/` whose `layer.json` is missing or disagrees with its name.
    BrokenLayer,
    /// A leftover of an interrupted unpack in `ingest/`.
    Leftover,
}

/// An open, locked layer store.
#[derive(Debug)]
pub struct LayerStore {
    pub(super) root: PathBuf,
    sha256: OwnedFd,
    pub(super) ingest: OwnedFd,
    pub(super) _lock: File,
    pub(super) root_fd: OwnedFd,
    pub(super) sync: LayerSync,
    /// Whether large files are written with `O_DIRECT` ([`LayerStore::limits`]).
    direct_io: bool,
    /// Whether this handle made sure of the boot's marker already.
    pub(super) marked: std::sync::atomic::AtomicBool,
    /// Layers of image caches by chain ID (their directory and record), used in place
    /// ([`LayerStore::find`] in `cached.rs`).
    pub(super) read_only: std::collections::HashMap<Digest, (PathBuf, LayerJson)>,
}

/// A layer being unpacked: its `fs/` to extract into. Dropped without [`LayerStore::commit`],
/// the staging directory is removed.
#[derive(Debug)]
pub struct Staging {
    /// `ingest/<name>`.
    dir: PathBuf,
    name: Option<String>,
    pub fs: PathBuf,
}

impl Drop for Staging {
    fn drop(&mut self) {
        if self.name.take().is_some() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

pub(super) const LAYER_JSON: &str = "layer.json";
/// The prefix in `ingest/` of a layer being removed by a prune.
const PRUNED: &str = "pruned-";
pub(super) const MAX_LAYER_JSON: u64 = 64 << 10;

impl LayerStore {
    /// Opens (creating if needed) the layer store at `root`, takes its lock and removes the
    /// staging directories of an interrupted run.
    pub fn open(root: &Path) -> io::Result<LayerStore> {
        if root.exists() && !root.is_dir() {
            return Err(io::Error::new(
                ErrorKind::NotADirectory,
                format!("{} is not a directory", root.display()),
            ));
        }
        std::fs::create_dir_all(root).map_err(|e| {
            io::Error::new(e.kind(), format!("cannot create {}: {e}", root.display()))
        })?;
        let root_fd = fsutil::open_dir(root)?;
        let lock = File::from(
            rustix::fs::openat(
                &root_fd,
                ".lock",
                rustix::fs::OFlags::RDWR
                    | rustix::fs::OFlags::CREATE
                    | rustix::fs::OFlags::NOFOLLOW
                    | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::from_raw_mode(0o600),
            )
            .map_err(io::Error::from)?,
        );
        lock.lock()?;
        let sha256 = fsutil::open_subdir(root_fd.as_fd(), "sha256", true, &root.join("sha256"))?;
        let ingest = fsutil::open_subdir(root_fd.as_fd(), "ingest", true, &root.join("ingest"))?;
        drop_unflushed(&root_fd, &sha256, &ingest, |name| {
            read_layer_json(&sha256, name, Path::new(name)).map(|j| j.unflushed_boot)
        })?;
        for (name, _) in fsutil::list(ingest.as_fd())? {
            let _ = std::fs::remove_dir_all(root.join("ingest").join(&name))
                .or_else(|_| fsutil::remove(ingest.as_fd(), &name));
        }
        Ok(LayerStore::with(root, root_fd, sha256, ingest, lock))
    }

    fn with(
        root: &Path,
        root_fd: OwnedFd,
        sha256: OwnedFd,
        ingest: OwnedFd,
        lock: File,
    ) -> LayerStore {
        LayerStore {
            root: root.to_path_buf(),
            sha256,
            ingest,
            _lock: lock,
            root_fd,
            sync: LayerSync::default(),
            direct_io: true,
            marked: Default::default(),
            read_only: Default::default(),
        }
    }

    /// Opens an existing layer store for `store-check`, changing nothing (`None` if there
    /// is none: no layer was ever unpacked there).
    pub fn open_existing(root: &Path) -> io::Result<Option<LayerStore>> {
        let root_fd = match fsutil::open_dir(root) {
            Ok(fd) => fd,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let lock = File::from(
            rustix::fs::openat(
                &root_fd,
                ".lock",
                rustix::fs::OFlags::RDONLY
                    | rustix::fs::OFlags::NOFOLLOW
                    | rustix::fs::OFlags::CLOEXEC,
                rustix::fs::Mode::empty(),
            )
            .map_err(io::Error::from)?,
        );
        lock.lock()?;
        let sha256 = fsutil::open_subdir(root_fd.as_fd(), "sha256", false, &root.join("sha256"))?;
        let ingest = fsutil::open_subdir(root_fd.as_fd(), "ingest", false, &root.join("ingest"))?;
        Ok(Some(LayerStore::with(root, root_fd, sha256, ingest, lock)))
    }

    /// Whether large files are written around the page cache (`--buffered-writes` turns it off).
    pub fn set_direct_io(&mut self, on: bool) {
        self.direct_io = on;
    }

    /// What an extraction into this store allows and how it writes.
    pub fn limits(&self) -> Limits {
        Limits {
            direct_io: self.direct_io,
            ..Limits::default()
        }
    }

    /// When layers' files are flushed to disk (deferred by default).
    pub fn set_sync(&mut self, sync: LayerSync) {
        self.sync = sync;
    }

    /// Flushes the store's file system and removes this boot's `unflushed` marker: every layer
    /// committed so far is durable. Returns whether there was anything to flush.
    pub fn flush(&self) -> io::Result<bool> {
        let flushed = unflushed::flush(&self.root_fd)?;
        if flushed {
            self.marked
                .store(false, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(flushed)
    }

    /// Makes sure this boot's marker is on disk before a layer is committed unflushed.
    fn mark(&self, boot: &str) -> io::Result<()> {
        use std::sync::atomic::Ordering;
        if self.marked.load(Ordering::Relaxed) {
            return Ok(());
        }
        unflushed::mark(&self.root_fd, &self.root, boot)?;
        self.marked.store(true, Ordering::Relaxed);
        Ok(())
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory of a committed layer.
    pub fn layer_dir(&self, chain_id: &Digest) -> PathBuf {
        self.root.join("sha256").join(chain_id.hex())
    }

    /// The layer of `chain_id`, if it is committed and its `layer.json` agrees with its name.
    pub fn get(&self, chain_id: &Digest) -> Option<LayerJson> {
        let json = read_layer_json(&self.sha256, chain_id.hex(), &self.layer_dir(chain_id))?;
        (json.chain_id == *chain_id).then_some(json)
    }

    /// Rewrites the `layer.json` of a committed layer.
    pub fn update(&self, json: &LayerJson) -> io::Result<()> {
        let dir = fsutil::open_subdir(
            self.sha256.as_fd(),
            json.chain_id.hex(),
            false,
            &self.layer_dir(&json.chain_id),
        )?;
        let mut bytes = serde_json::to_vec_pretty(json)?;
        bytes.push(b'\n');
        fsutil::replace(dir.as_fd(), LAYER_JSON, &bytes, 0o644)
    }

    /// A new staging directory with an empty `fs/`.
    pub fn stage(&self) -> io::Result<Staging> {
        let name = format!("{}-{}", std::process::id(), fsutil::random_hex());
        rustix::fs::mkdirat(
            &self.ingest,
            name.as_str(),
            rustix::fs::Mode::from_raw_mode(0o700),
        )
        .map_err(io::Error::from)?;
        let dir = self.root.join("ingest").join(&name);
        let fs = dir.join("fs");
        std::fs::create_dir(&fs)?;
        Ok(Staging {
            dir,
            name: Some(name),
            fs,
        })
    }

    /// Writes `layer.json` into the staging directory and renames it into place. If another
    /// run or image committed the same chain ID meanwhile, that one is kept; a broken layer
    /// directory of that name (no valid `layer.json`) is replaced.
    pub fn commit(&self, mut staging: Staging, json: &LayerJson) -> io::Result<()> {
        let Some(name) = staging.name.clone() else {
            return Ok(());
        };
        let dir = fsutil::open_subdir(self.ingest.as_fd(), &name, false, &staging.fs)?;
        let mut json = json.clone();
        json.unflushed_boot = None;
        let deferred = match (self.sync, boot_id()) {
            (LayerSync::Deferred, Some(boot)) => {
                self.mark(boot)?;
                json.unflushed_boot = Some(boot.to_string());
                true
            }
            _ => false,
        };
        // The layer's files reach the disk before the name that says the layer is complete:
        // without this, a power loss soon after a pull leaves a committed layer of empty files
        // that no later run re-checks (containerd#5854, where this flush is opt-in). One
        // syncfs costs far less than an fsync per file, and a crash before it leaves only a
        // staging directory, removed by the next run.
        if !deferred {
            rustix::fs::syncfs(&dir).map_err(io::Error::from)?;
        }
        let mut bytes = serde_json::to_vec_pretty(&json)?;
        bytes.push(b'\n');
        // Under the marker nothing needs flushing now: a crash before `flush-layers` drops
        // this boot's layers (and a layer.json lost to it leaves a directory that counts as
        // missing, replaced by the next commit). Flushing here only queued the layers'
        // commits behind each other's fsyncs.
        if deferred {
            fsutil::replace_unsynced(dir.as_fd(), LAYER_JSON, &bytes, 0o644)?;
        } else {
            fsutil::replace(dir.as_fd(), LAYER_JSON, &bytes, 0o644)?;
        }
        let mut replaced = false;
        loop {
            match fsutil::rename(
                self.ingest.as_fd(),
                &name,
                self.sha256.as_fd(),
                json.chain_id.hex(),
            ) {
                Ok(()) => {
                    staging.name = None;
                    return if deferred {
                        Ok(())
                    } else {
                        fsutil::sync_dir(self.sha256.as_fd())
                    };
                }
                // Already there (ENOTEMPTY/EEXIST): a good one stays and the staging copy is
                // dropped; a broken one is moved aside (removed with the staging leftovers).
                Err(e)
                    if matches!(e.raw_os_error(), Some(libc::ENOTEMPTY) | Some(libc::EEXIST)) =>
                {
                    if replaced || self.get(&json.chain_id).is_some() {
                        return Ok(());
                    }
                    let aside = format!("broken-{}-{}", json.chain_id.hex(), fsutil::random_hex());
                    fsutil::rename(
                        self.sha256.as_fd(),
                        json.chain_id.hex(),
                        self.ingest.as_fd(),
                        &aside,
                    )?;
                    let _ = std::fs::remove_dir_all(self.root.join("ingest").join(&aside));
                    replaced = true;
                }
                Err(e) => Err(e)?,
            }
        }
    }

    /// The chain IDs of the layer directories.
    pub fn chains(&self) -> io::Result<Vec<Digest>> {
        Ok(fsutil::list(self.sha256.as_fd())?
            .into_iter()
            .filter_map(|(name, _)| Digest::parse(&format!("sha256:{name}")).ok())
            .collect())
    }

    /// Removes a layer: moved out of `sha256/` in one rename (so a crash leaves either the
    /// layer or nothing of it there), then deleted from `ingest/` (a leftover of a crash is
    /// removed at the next open).
    pub fn remove(&self, chain_id: &Digest) -> io::Result<()> {
        let to = format!("{PRUNED}{}-{}", chain_id.hex(), fsutil::random_hex());
        fsutil::rename(
            self.sha256.as_fd(),
            chain_id.hex(),
            self.ingest.as_fd(),
            &to,
        )?;
        remove_tree(&self.root.join("ingest").join(&to))
    }

    /// Problems of the layer store, for `store-check`: a layer directory whose `layer.json`
    /// is missing or disagrees with its name, or a stray entry; with `fix`, removed.
    pub fn check(&self, fix: bool) -> io::Result<Vec<LayerProblem>> {
        let mut out = Vec::new();
        for (name, _) in fsutil::list(self.sha256.as_fd())? {
            let path = self.root.join("sha256").join(&name);
            let why = match Digest::parse(&format!("sha256:{name}")) {
                Err(_) => Some("not a chain ID".to_string()),
                Ok(d) if self.get(&d).is_none() => {
                    Some("layer.json is missing, invalid or names another chain ID".into())
                }
                Ok(_) => None,
            };
            if let Some(detail) = why {
                let fixed = fix && remove_tree(&path).is_ok();
                out.push(LayerProblem {
                    kind: LayerProblemKind::BrokenLayer,
                    path,
                    detail,
                    fixed,
                });
            }
        }
        for (name, _) in fsutil::list(self.ingest.as_fd())? {
            let path = self.root.join("ingest").join(&name);
            // A layer a prune had taken out of sha256/ when it was stopped: on its way out,
            // no longer part of the store.
            if name.starts_with(PRUNED) {
                if fix {
                    let _ = remove_tree(&path);
                }
                continue;
            }
            let fixed = fix && remove_tree(&path).is_ok();
            out.push(LayerProblem {
                kind: LayerProblemKind::Leftover,
                path,
                detail: "staging directory of an interrupted unpack".into(),
                fixed,
            });
        }
        Ok(out)
    }
}

/// Removes a directory tree or a file (never following a link: `remove_dir_all` does not).
fn remove_tree(path: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(path),
        Ok(_) => std::fs::remove_file(path),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::unflushed::MARKER;

    fn json(chain: &Digest) -> LayerJson {
        LayerJson {
            digest: Digest::sha256(b"blob"),
            diff_id: chain.clone(),
            chain_id: chain.clone(),
            parent: None,
            size: 3,
            media_type: "application/vnd.oci.image.layer.v1.tar".into(),
            unflushed_boot: None,
        }
    }

    /// What `get` gives, without the boot the store adds at commit.
    fn got(store: &LayerStore, chain: &Digest) -> Option<LayerJson> {
        store.get(chain).map(|j| LayerJson {
            unflushed_boot: None,
            ..j
        })
    }

    fn markers(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(MARKER))
            .collect()
    }

    /// The marker's name is predictable: a link there is not followed, a FIFO does not hang
    /// the commit; either is a clear error and the layer is not committed.
    #[test]
    fn a_link_or_a_fifo_in_place_of_the_marker_is_refused_without_waiting() {
        let boot = boot_id().expect("/proc/sys/kernel/random/boot_id");
        let victim = tempfile::tempdir().unwrap();
        let target = victim.path().join("target");
        for plant in ["symlink", "fifo"] {
            let dir = tempfile::tempdir().unwrap();
            let store = LayerStore::open(dir.path()).unwrap();
            let marker = dir.path().join(format!("{MARKER}{boot}"));
            match plant {
                "symlink" => std::os::unix::fs::symlink(&target, &marker).unwrap(),
                _ => rustix::fs::mknodat(
                    rustix::fs::CWD,
                    &marker,
                    rustix::fs::FileType::Fifo,
                    rustix::fs::Mode::from_raw_mode(0o600),
                    0,
                )
                .unwrap(),
            }
            let chain = Digest::sha256(plant.as_bytes());
            let s = store.stage().unwrap();
            let e = store.commit(s, &json(&chain)).unwrap_err();
            assert!(e.to_string().contains("unflushed."), "{plant}: {e}");
            assert!(store.get(&chain).is_none(), "{plant}: nothing committed");
            assert!(!target.exists(), "{plant}: the link was followed");
        }
        // Not a marker of ours under a marker's name: the store still opens.
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join(format!("{MARKER}0000-earlier"))).unwrap();
        LayerStore::open(dir.path()).unwrap();
    }

    #[test]
    fn layers_committed_unflushed_are_dropped_by_a_later_boot_unless_flushed_first() {
        let dir = tempfile::tempdir().unwrap();
        let boot = boot_id().expect("/proc/sys/kernel/random/boot_id");
        let (a, b) = (Digest::sha256(b"a"), Digest::sha256(b"b"));
        let commit = |store: &LayerStore, chain: &Digest| {
            let s = store.stage().unwrap();
            std::fs::write(s.fs.join("f"), "x").unwrap();
            store.commit(s, &json(chain)).unwrap();
        };
        // As if committed in an earlier boot that ended before any flush: the layer says so,
        // and so does that boot's marker.
        let pretend_earlier_boot = |store: &LayerStore, chain: &Digest| {
            let j = store.get(chain).unwrap();
            assert_eq!(j.unflushed_boot.as_deref(), Some(boot));
            store
                .update(&LayerJson {
                    unflushed_boot: Some("0000-earlier".into()),
                    ..j
                })
                .unwrap();
        };
        {
            let store = LayerStore::open(dir.path()).unwrap();
            commit(&store, &a);
            assert_eq!(markers(dir.path()), [format!("{MARKER}{boot}")]);
            pretend_earlier_boot(&store, &a);
            std::fs::rename(
                dir.path().join(format!("{MARKER}{boot}")),
                dir.path().join(format!("{MARKER}0000-earlier")),
            )
            .unwrap();
        }
        {
            let store = LayerStore::open(dir.path()).unwrap();
            assert!(store.get(&a).is_none(), "dropped: its files may be empty");
            assert!(!store.layer_dir(&a).exists());
            assert!(markers(dir.path()).is_empty());
            assert_eq!(
                std::fs::read_dir(dir.path().join("ingest"))
                    .unwrap()
                    .count(),
                0
            );
            // Flushed in its own boot: kept by a later one, whatever its layer.json says.
            commit(&store, &b);
            assert!(store.flush().unwrap(), "there was a layer to flush");
            assert!(markers(dir.path()).is_empty());
            assert!(!store.flush().unwrap(), "nothing left to flush");
            pretend_earlier_boot(&store, &b);
        }
        let mut store = LayerStore::open(dir.path()).unwrap();
        assert_eq!(got(&store, &b), Some(json(&b)));
        // Flushed before each commit: no marker, nothing to drop later.
        store.set_sync(LayerSync::Commit);
        commit(&store, &a);
        assert_eq!(store.get(&a), Some(json(&a)));
        assert!(markers(dir.path()).is_empty());
    }

    /// A layer directory whose layer.json cannot be trusted (an earlier version's with
    /// `impliedDirs` still to fix, or garbage) counts as missing and a commit replaces it; a
    /// store opened after a crash that came before the flush also drops one whose layer.json
    /// never reached the disk.
    #[test]
    fn untrusted_layer_dirs_are_replaced_or_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let (legacy, garbage) = (Digest::sha256(b"legacy"), Digest::sha256(b"garbage"));
        {
            let store = LayerStore::open(dir.path()).unwrap();
            let mut old = serde_json::to_value(json(&legacy)).unwrap();
            old["impliedDirs"] = serde_json::json!(["usr", "usr/lib"]);
            for (chain, text) in [
                (&legacy, old.to_string()),
                (&garbage, "{not json".to_string()),
            ] {
                std::fs::create_dir_all(store.layer_dir(chain).join("fs/stale")).unwrap();
                std::fs::write(store.layer_dir(chain).join("layer.json"), text).unwrap();
                assert!(store.get(chain).is_none(), "not trusted");
                let s = store.stage().unwrap();
                std::fs::write(s.fs.join("fresh"), "x").unwrap();
                store.commit(s, &json(chain)).unwrap();
                assert_eq!(got(&store, chain), Some(json(chain)));
                assert!(store.layer_dir(chain).join("fs/fresh").exists());
                assert!(!store.layer_dir(chain).join("fs/stale").exists());
            }
        }
        // A crash before flush-layers: an earlier boot's marker, and a layer directory whose
        // layer.json is empty (its data never reached the disk).
        let lost = Digest::sha256(b"lost");
        std::fs::write(dir.path().join(format!("{MARKER}0000-earlier")), "").unwrap();
        let lost_dir = dir.path().join("sha256").join(lost.hex());
        std::fs::create_dir_all(lost_dir.join("fs")).unwrap();
        std::fs::write(lost_dir.join("layer.json"), "").unwrap();
        let store = LayerStore::open(dir.path()).unwrap();
        assert!(!lost_dir.exists(), "dropped with the crash's layers");
        assert!(
            store.get(&legacy).is_some(),
            "a flushed-or-readable layer stays"
        );
    }

    #[test]
    fn stage_commit_get_and_leftovers() {
        let dir = tempfile::tempdir().unwrap();
        let chain = Digest::sha256(b"chain");
        {
            let store = LayerStore::open(dir.path()).unwrap();
            assert!(store.get(&chain).is_none());
            let s = store.stage().unwrap();
            std::fs::write(s.fs.join("f"), "x").unwrap();
            store.commit(s, &json(&chain)).unwrap();
            assert_eq!(got(&store, &chain), Some(json(&chain)));
            assert!(store.layer_dir(&chain).join("fs/f").is_file());
            // A second commit of the same chain keeps the first.
            let s = store.stage().unwrap();
            store.commit(s, &json(&chain)).unwrap();
            // Dropped staging is removed at once.
            let s = store.stage().unwrap();
            std::fs::write(s.fs.join("partial"), "x").unwrap();
            drop(s);
            assert_eq!(
                std::fs::read_dir(dir.path().join("ingest"))
                    .unwrap()
                    .count(),
                0
            );
            assert!(store.check(false).unwrap().is_empty());
        }
        // A killed run's staging directory is removed by the next open.
        std::fs::create_dir_all(dir.path().join("ingest/123-dead/fs/usr")).unwrap();
        let store = LayerStore::open(dir.path()).unwrap();
        assert_eq!(
            std::fs::read_dir(dir.path().join("ingest"))
                .unwrap()
                .count(),
            0
        );
        // A layer directory that lies about its chain is found, and removed with fix.
        let other = Digest::sha256(b"other");
        std::fs::create_dir_all(store.layer_dir(&other).join("fs")).unwrap();
        std::fs::write(
            store.layer_dir(&other).join("layer.json"),
            serde_json::to_vec(&json(&chain)).unwrap(),
        )
        .unwrap();
        let problems = store.check(false).unwrap();
        assert_eq!(problems.len(), 1);
        assert!(
            store.layer_dir(&other).exists(),
            "check without fix changes nothing"
        );
        assert!(store.check(true).unwrap()[0].fixed);
        assert!(!store.layer_dir(&other).exists());
        assert!(store.get(&chain).is_some(), "a good layer is never touched");
    }

    #[test]
    fn a_link_in_place_of_the_layer_stores_directories_is_refused() {
        for part in ["sha256", "ingest"] {
            let dir = tempfile::tempdir().unwrap();
            let victim = tempfile::tempdir().unwrap();
            std::fs::write(victim.path().join("keep"), "x").unwrap();
            std::os::unix::fs::symlink(victim.path(), dir.path().join(part)).unwrap();
            let e = LayerStore::open(dir.path()).unwrap_err();
            assert!(e.to_string().contains("symbolic link"), "{part}: {e}");
            assert!(victim.path().join("keep").exists());
        }
    }
}
