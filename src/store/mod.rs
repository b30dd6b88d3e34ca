//! The image store: an OCI image layout (`oci-layout`, `index.json`, `blobs/<alg>/<hex>`).
//!
//! Blobs stream into `ingest/` while they are hashed and are renamed into `blobs/` only after
//! their size and digest match, so every file under `blobs/` is verified content.
//! `index.json` is replaced atomically. An exclusive lock (`.lock`) keeps two runs apart.
//!
//! The store on disk is not trusted (SPEC §9): every entry is reached from an open handle of
//! its directory without following a symbolic link (`blobs`, `blobs/sha256`, `ingest`,
//! `index.json`, the blobs themselves), temporary files are created exclusively under
//! unpredictable names, and every digest read back from `index.json` is validated before it
//! names a file.

mod check;
mod chunked;
mod index;
mod ingest;
mod partial;
mod placed;

use std::fs::File;
use std::io::{self, ErrorKind};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use crate::fsutil;
use crate::oci::manifest::{Descriptor, MAX_MANIFEST};
use crate::oci::{Algorithm, Digest};

pub use check::{Problem, ProblemKind};
pub use chunked::Chunked;
pub use index::{Entry, Index, REF_NAME, RESOLVED, resolved_of};
pub use ingest::IngestFile;
use partial::is_resume_name;
pub use partial::{Pending, keep_partials};
pub use placed::ChunkData;

/// Largest `index.json` read.
const MAX_INDEX: u64 = 64 << 20;
/// Mode of the store's files.
const FILE_MODE: u32 = 0o644;

/// An open, locked store.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    root_fd: OwnedFd,
    /// `blobs/sha256` and `blobs/sha512` (the latter only if present, in a check).
    sha256: Option<OwnedFd>,
    sha512: Option<OwnedFd>,
    ingest: Option<OwnedFd>,
    _lock: Option<File>,
    /// Whether large blobs are written with `O_DIRECT` (see [`IngestFile`]).
    direct_io: bool,
}

fn ctx(path: &Path, what: &str) -> impl FnOnce(io::Error) -> io::Error {
    let p = path.display().to_string();
    let what = what.to_string();
    move |e| io::Error::new(e.kind(), format!("{what} {p}: {e}"))
}

fn missing(path: &Path) -> io::Error {
    io::Error::new(
        ErrorKind::NotFound,
        format!("{} is missing", path.display()),
    )
}

impl Store {
    /// Opens (creating if needed) the layout at `root` and takes its lock, waiting for another
    /// run that holds it. Leftovers of an interrupted run in `ingest/` are removed.
    pub fn open(root: &Path) -> io::Result<Store> {
        if root.exists() && !root.is_dir() {
            return Err(io::Error::new(
                ErrorKind::NotADirectory,
                format!("{} is not a directory", root.display()),
            ));
        }
        std::fs::create_dir_all(root).map_err(ctx(root, "cannot create"))?;
        let root_fd = fsutil::open_dir(root).map_err(ctx(root, "cannot open"))?;
        let lock = Self::lock(root, root_fd.as_fd(), true)?;
        let blobs = fsutil::open_subdir(root_fd.as_fd(), "blobs", true, &root.join("blobs"))?;
        let sub = |alg: &str| {
            fsutil::open_subdir(blobs.as_fd(), alg, true, &root.join("blobs").join(alg))
        };
        let (sha256, sha512) = (sub("sha256")?, sub("sha512")?);
        let ingest = fsutil::open_subdir(root_fd.as_fd(), "ingest", true, &root.join("ingest"))?;
        if fsutil::regular_file_size(root_fd.as_fd(), "oci-layout").is_none() {
            fsutil::replace(
                root_fd.as_fd(),
                "oci-layout",
                br#"{"imageLayoutVersion":"1.0.0"}"#,
                FILE_MODE,
            )
            .map_err(ctx(&root.join("oci-layout"), "cannot write"))?;
        }
        // Partial blobs of an interrupted run (ours: we hold the lock), except those a
        // stopped run kept for a resume.
        for (name, ty) in fsutil::list(ingest.as_fd())? {
            let kept = ty == rustix::fs::FileType::RegularFile && is_resume_name(&name);
            if ty != rustix::fs::FileType::Directory && !kept {
                let _ = fsutil::remove(ingest.as_fd(), &name);
            }
        }
        // Temporary files of writes interrupted before their rename (oci-layout, index.json).
        fsutil::remove_stale_temps(root_fd.as_fd());
        Ok(Store {
            root: root.to_path_buf(),
            root_fd,
            sha256: Some(sha256),
            sha512: Some(sha512),
            ingest: Some(ingest),
            _lock: Some(lock),
            direct_io: true,
        })
    }

    /// Opens an existing store for `store-check`, changing nothing: a path that is not a
    /// store is an error; missing parts are left for [`Store::check`] to report.
    pub fn open_existing(root: &Path) -> io::Result<Store> {
        let root_fd = fsutil::open_dir(root).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("there is no image store at {}: {e}", root.display()),
            )
        })?;
        let blobs = match fsutil::open_subdir(root_fd.as_fd(), "blobs", false, &root.join("blobs"))
        {
            Ok(b) => Some(b),
            Err(e) if e.kind() == ErrorKind::NotFound => None,
            Err(e) => return Err(e),
        };
        let has_layout = fsutil::regular_file_size(root_fd.as_fd(), "oci-layout").is_some();
        if blobs.is_none() && !has_layout {
            return Err(io::Error::new(
                ErrorKind::NotFound,
                format!(
                    "{} is not an image store (no oci-layout, no blobs/)",
                    root.display()
                ),
            ));
        }
        let opt = |dir: Option<BorrowedFd<'_>>, name: &str, shown: PathBuf| match dir {
            None => Ok(None),
            Some(d) => match fsutil::open_subdir(d, name, false, &shown) {
                Ok(fd) => Ok(Some(fd)),
                Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e),
            },
        };
        let b = blobs.as_ref().map(|b| b.as_fd());
        let sha256 = opt(b, "sha256", root.join("blobs/sha256"))?;
        let sha512 = opt(b, "sha512", root.join("blobs/sha512"))?;
        let ingest = opt(Some(root_fd.as_fd()), "ingest", root.join("ingest"))?;
        let lock = if fsutil::regular_file_size(root_fd.as_fd(), ".lock").is_some() {
            Some(Self::lock(root, root_fd.as_fd(), false)?)
        } else {
            None
        };
        Ok(Store {
            root: root.to_path_buf(),
            root_fd,
            sha256,
            sha512,
            ingest,
            _lock: lock,
            direct_io: false,
        })
    }

    /// Takes the store's lock (`.lock`, never through a link), waiting for another run.
    fn lock(root: &Path, dir: BorrowedFd<'_>, create: bool) -> io::Result<File> {
        let path = root.join(".lock");
        let mut flags =
            rustix::fs::OFlags::RDWR | rustix::fs::OFlags::NOFOLLOW | rustix::fs::OFlags::CLOEXEC;
        if create {
            flags |= rustix::fs::OFlags::CREATE;
        }
        let lock = File::from(
            rustix::fs::openat(dir, ".lock", flags, rustix::fs::Mode::from_raw_mode(0o600))
                .map_err(io::Error::from)
                .map_err(ctx(&path, "cannot open"))?,
        );
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                tracing::info!(
                    store = %root.display(),
                    "another kci-pull-agent run holds the store lock; waiting for it"
                );
                lock.lock().map_err(ctx(&path, "cannot lock"))?;
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(ctx(&path, "cannot lock")(e)),
        }
        Ok(lock)
    }

    /// Chooses between direct writes of large blobs (the default) and writes through the page
    /// cache (`--buffered-writes`).
    pub fn set_direct_io(&mut self, on: bool) {
        self.direct_io = on;
    }

    /// Whether a blob of `size` bytes is to be written with `O_DIRECT`.
    pub fn direct_for(&self, size: u64) -> bool {
        self.direct_io && size >= ingest::DIRECT_CHUNK as u64
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn alg_dir(&self, alg: Algorithm) -> io::Result<BorrowedFd<'_>> {
        let fd = match alg {
            Algorithm::Sha256 => &self.sha256,
            Algorithm::Sha512 => &self.sha512,
        };
        fd.as_ref()
            .map(|f| f.as_fd())
            .ok_or_else(|| missing(&self.root.join("blobs").join(alg.name())))
    }

    fn ingest_dir(&self) -> io::Result<BorrowedFd<'_>> {
        self.ingest
            .as_ref()
            .map(|f| f.as_fd())
            .ok_or_else(|| missing(&self.root.join("ingest")))
    }

    /// Where the blob of `digest` lives (for messages; the store is reached through handles).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root
            .join("blobs")
            .join(digest.algorithm().name())
            .join(digest.hex())
    }

    /// Whether a verified blob of that digest and size is present (a regular file, not a link).
    pub fn has_blob(&self, digest: &Digest, size: u64) -> bool {
        self.alg_dir(digest.algorithm())
            .ok()
            .and_then(|d| fsutil::regular_file_size(d, digest.hex()))
            == Some(size)
    }

    /// Stores a small blob held in memory (a manifest), after checking its digest.
    pub fn put_small(&self, digest: &Digest, bytes: &[u8]) -> io::Result<()> {
        if self.has_blob(digest, bytes.len() as u64) {
            return Ok(());
        }
        if let Err(actual) = digest.verify(bytes) {
            return Err(io::Error::new(
                ErrorKind::InvalidData,
                format!("refusing to store {digest}: the content is {actual}"),
            ));
        }
        // Through ingest/ like any blob: nothing but complete, verified blobs under blobs/.
        let (mut f, pending) = self.begin_ingest(digest, false)?;
        f.write(bytes)?;
        f.finish()?;
        pending.commit(digest)
    }

    /// Opens a stored blob for reading (never through a link).
    pub fn open_blob(&self, digest: &Digest) -> io::Result<File> {
        let path = self.blob_path(digest);
        fsutil::open_file(self.alg_dir(digest.algorithm())?, digest.hex(), &path)?
            .ok_or_else(|| missing(&path))
    }

    /// Reads a blob of at most `max` bytes (never through a link).
    pub fn read_blob(&self, digest: &Digest, max: u64) -> io::Result<Vec<u8>> {
        let path = self.blob_path(digest);
        fsutil::read_file(self.alg_dir(digest.algorithm())?, digest.hex(), max, &path)?
            .ok_or_else(|| missing(&path))
    }

    /// The config and layers of the image manifest stored as `digest`, if that blob is present,
    /// intact, and an image manifest.
    pub fn manifest_blobs(&self, digest: &Digest) -> Option<Vec<Descriptor>> {
        let bytes = self.read_blob(digest, MAX_MANIFEST).ok()?;
        digest.verify(&bytes).ok()?;
        match crate::oci::manifest::parse(&bytes, None).ok()? {
            crate::oci::manifest::Document::Manifest { config, layers, .. } => {
                Some(std::iter::once(*config).chain(layers).collect())
            }
            _ => None,
        }
    }

    /// The chain IDs of an image's layers (its directories in the layer store), from the
    /// diff_ids of its stored config `config`; `None` if the config is missing, unreadable
    /// or does not describe `layers` layers.
    pub fn chain_ids(&self, config: &Digest, layers: usize) -> Option<Vec<Digest>> {
        let bytes = self
            .read_blob(config, crate::oci::config::MAX_CONFIG)
            .ok()?;
        let diff_ids = crate::oci::config::diff_ids(&bytes, layers).ok()?;
        Some(crate::oci::config::chain_ids(&diff_ids))
    }

    /// Whether the manifest `digest` and every blob it references are present.
    pub fn is_complete(&self, digest: &Digest) -> bool {
        self.is_complete_with(digest, &|_| false)
    }

    /// Whether the manifest `digest`, its config and its layers are present: each layer's
    /// blob, or its unpacked layer where `cached` says (by chain ID) an image cache holds it.
    pub fn is_complete_with(&self, digest: &Digest, cached: &dyn Fn(&Digest) -> bool) -> bool {
        let Some(blobs) = self.manifest_blobs(digest) else {
            return false;
        };
        let (config, layers) = blobs.split_first().expect("a manifest has a config");
        if !self.has_blob(&config.digest, config.size) {
            return false;
        }
        let missing: Vec<usize> = (0..layers.len())
            .filter(|i| !self.has_blob(&layers[*i].digest, layers[*i].size))
            .collect();
        missing.is_empty()
            || self
                .chain_ids(&config.digest, layers.len())
                .is_some_and(|chains| missing.iter().all(|i| cached(&chains[*i])))
    }

    /// Makes the renames into `blobs/` durable.
    pub fn sync_blobs(&self) -> io::Result<()> {
        for d in [&self.sha256, &self.sha512].into_iter().flatten() {
            fsutil::sync_dir(d.as_fd())?;
        }
        Ok(())
    }

    /// The store's `index.json` (an empty index if there is none).
    pub(crate) fn read_index(&self) -> io::Result<Index> {
        let path = self.root.join("index.json");
        match fsutil::read_file(self.root_fd.as_fd(), "index.json", MAX_INDEX, &path)? {
            Some(bytes) => Index::parse(&bytes, &path),
            None => Ok(Index::empty()),
        }
    }

    /// The descriptor stored for a reference name. An entry that is not a valid descriptor
    /// (a digest that is not one, say) counts as absent: the pull replaces it.
    pub fn find_ref(&self, name: &str) -> io::Result<Option<Descriptor>> {
        Ok(self
            .read_index()?
            .find(name)
            .and_then(|e| match e.descriptor {
                Ok(d) => Some(d),
                Err(why) => {
                    tracing::warn!(
                        store = %self.root.display(),
                        "the index.json entry of {name} is invalid ({why}); it is replaced"
                    );
                    None
                }
            }))
    }

    /// Replaces (or adds) the descriptor of each reference in `index.json`, in one atomic write.
    pub fn set_refs(&self, descriptors: &[Descriptor]) -> io::Result<()> {
        if descriptors.is_empty() {
            return Ok(());
        }
        let mut index = self.read_index()?;
        for d in descriptors {
            index.set(d)?;
        }
        self.write_index(&index)
    }

    /// Every reference in `index.json` with its descriptor; an entry that is not a valid
    /// descriptor is an error (what it references cannot be known).
    pub fn refs(&self) -> io::Result<Vec<(String, Descriptor)>> {
        let mut out = Vec::new();
        for e in self.read_index()?.entries() {
            let name = e.name.unwrap_or_default();
            let d = e.descriptor.map_err(|why| {
                io::Error::new(
                    ErrorKind::InvalidData,
                    format!(
                        "{}: the entry {name:?} is not a valid descriptor ({why}); run store-check --fix",
                        self.root.join("index.json").display()
                    ),
                )
            })?;
            out.push((name, d));
        }
        Ok(out)
    }

    /// Removes these references from `index.json` in one atomic write (their blobs stay
    /// until a prune).
    pub fn remove_refs(&self, names: &[String]) -> io::Result<()> {
        let mut index = self.read_index()?;
        index.remove(names);
        self.write_index(&index)
    }

    /// Every blob in the store with its size (regular files with a digest's name only).
    pub fn blobs(&self) -> io::Result<Vec<(Digest, u64)>> {
        let mut out = Vec::new();
        for alg in [Algorithm::Sha256, Algorithm::Sha512] {
            let Ok(dir) = self.alg_dir(alg) else { continue };
            for (name, _) in fsutil::list(dir)? {
                if let (Ok(d), Some(size)) = (
                    Digest::parse(&format!("{}:{name}", alg.name())),
                    fsutil::regular_file_size(dir, &name),
                ) {
                    out.push((d, size));
                }
            }
        }
        Ok(out)
    }

    /// Removes one blob (an unlink: atomic, whatever happens around it).
    pub fn remove_blob(&self, digest: &Digest) -> io::Result<()> {
        fsutil::remove(self.alg_dir(digest.algorithm())?, digest.hex())
            .map_err(ctx(&self.blob_path(digest), "cannot remove"))
    }

    pub(crate) fn write_index(&self, index: &Index) -> io::Result<()> {
        fsutil::replace(
            self.root_fd.as_fd(),
            "index.json",
            &index.to_bytes(),
            FILE_MODE,
        )
        .map_err(ctx(&self.root.join("index.json"), "cannot write"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};
    use std::fs;

    fn desc(name: &str, n: u8) -> Descriptor {
        Descriptor {
            media_type: crate::oci::manifest::OCI_MANIFEST.into(),
            digest: Digest::parse(&format!("sha256:{}", format!("{n:02x}").repeat(32))).unwrap(),
            size: n as u64,
            platform: None,
            annotations: Some(
                [(REF_NAME.to_string(), Value::from(name))]
                    .into_iter()
                    .collect(),
            ),
            urls: None,
        }
    }

    #[test]
    fn index_refs_are_replaced_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .set_refs(&[desc("r/a:1", 1), desc("r/b:1", 2)])
            .unwrap();
        store.set_refs(&[desc("r/a:1", 3)]).unwrap();
        assert_eq!(store.find_ref("r/a:1").unwrap().unwrap().size, 3);
        assert_eq!(store.find_ref("r/b:1").unwrap().unwrap().size, 2);
        assert!(store.find_ref("r/c:1").unwrap().is_none());
        let index: Value =
            serde_json::from_slice(&fs::read(dir.path().join("index.json")).unwrap()).unwrap();
        assert_eq!(index["manifests"].as_array().unwrap().len(), 2);
        assert!(dir.path().join("oci-layout").exists());
    }

    /// SPEC §9: a digest read back from index.json is validated before it names a file. On
    /// the old store, this entry made the next pull read /dev/zero until it was killed.
    #[test]
    fn a_path_in_an_index_digest_is_never_followed() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let index = json!({"schemaVersion": 2, "manifests": [{
            "mediaType": crate::oci::manifest::OCI_MANIFEST,
            "digest": "sha256:../../../../../../../../dev/zero", "size": 1,
            "annotations": {REF_NAME: "r/a:1"}}]});
        fs::write(dir.path().join("index.json"), index.to_string()).unwrap();
        assert_eq!(store.find_ref("r/a:1").unwrap(), None);
        // The entry is replaced by the next pull of that name.
        store.set_refs(&[desc("r/a:1", 4)]).unwrap();
        assert_eq!(store.find_ref("r/a:1").unwrap().unwrap().size, 4);
    }

    /// SPEC §9: a link where the store expects its own directory is refused, never followed.
    #[test]
    fn links_in_place_of_the_stores_directories_are_refused() {
        for part in ["ingest", "blobs", "blobs/sha256"] {
            let dir = tempfile::tempdir().unwrap();
            let victim = tempfile::tempdir().unwrap();
            fs::write(victim.path().join("precious"), "keep").unwrap();
            let link = dir.path().join(part);
            fs::create_dir_all(link.parent().unwrap()).unwrap();
            std::os::unix::fs::symlink(victim.path(), &link).unwrap();
            let e = Store::open(dir.path()).unwrap_err();
            assert!(e.to_string().contains("symbolic link"), "{part}: {e}");
            assert_eq!(
                fs::read_dir(victim.path()).unwrap().count(),
                1,
                "{part}: the link's target was changed"
            );
        }
    }

    #[test]
    fn blobs_that_are_links_are_not_present() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let outside = dir.path().join("elsewhere");
        fs::write(&outside, "abc").unwrap();
        let d = Digest::sha256(b"abc");
        std::os::unix::fs::symlink(&outside, store.blob_path(&d)).unwrap();
        assert!(!store.has_blob(&d, 3));
        assert!(store.read_blob(&d, 100).is_err());
    }
}
