//! Partial blobs in `ingest/`: written under an unpredictable name, moved into `blobs/` once
//! verified ([`Pending::commit`]), removed when dropped, or kept as `<hex>.resume` for the
//! next run when a signal stopped this one (SPEC §11).

use std::io::{self, ErrorKind};

use super::{FILE_MODE, IngestFile, Store, ctx};
use crate::fsutil;
use crate::oci::Digest;

/// A partial file in `ingest/`: moved into `blobs/` by [`Pending::commit`], removed when
/// dropped uncommitted.
#[derive(Debug)]
pub struct Pending<'a> {
    store: &'a Store,
    name: Option<String>,
}

impl Pending<'_> {
    /// Moves the verified file into `blobs/` as `digest`.
    pub fn commit(mut self, digest: &Digest) -> io::Result<()> {
        let Some(name) = self.name.take() else {
            return Ok(());
        };
        let s = self.store;
        let moved = s.ingest_dir().and_then(|from| {
            fsutil::rename(from, &name, s.alg_dir(digest.algorithm())?, digest.hex())
        });
        if moved.is_err() {
            s.discard(&name);
        }
        moved.map_err(ctx(&s.blob_path(digest), "cannot move blob to"))
    }
}

impl<'a> Pending<'a> {
    /// Goes on as a chunked download (SPEC §13): the file (holding the blob's first `upto`
    /// bytes) becomes `<hex>.chunks`, sized to the blob, with a map listing the chunks of
    /// `chunk` bytes it already holds whole.
    pub fn into_chunked(
        mut self,
        digest: &crate::oci::Digest,
        size: u64,
        chunk: u64,
        upto: u64,
    ) -> io::Result<super::Chunked<'a>> {
        let name = self.name.take().expect("not committed");
        let s = self.store;
        let dir = s.ingest_dir()?;
        let data = format!("{}{}", digest.hex(), super::chunked::CHUNKS);
        if let Err(e) = fsutil::rename(dir, &name, dir, &data) {
            s.discard(&name);
            return Err(e);
        }
        super::chunked::adopt(s, digest, size, chunk, upto)
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        let Some(name) = self.name.take() else {
            return;
        };
        // A run stopped by a signal keeps what it downloaded for the next run's `Range`.
        if KEEP_PARTIALS.load(std::sync::atomic::Ordering::SeqCst)
            && let Some(hex) = name.split('.').next()
            && let Ok(dir) = self.store.ingest_dir()
            && fsutil::rename(dir, &name, dir, &format!("{hex}{RESUME}")).is_ok()
        {
            return;
        }
        self.store.discard(&name);
    }
}

/// Set when the run is stopped (SIGINT/SIGTERM): partial blobs dropped from now on are kept
/// as `ingest/<hex>.resume` instead of being removed.
static KEEP_PARTIALS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The suffix of a kept partial blob in `ingest/`.
const RESUME: &str = ".resume";

/// Keep partial blobs dropped from now on (a stopped run), for the next run to resume.
pub fn keep_partials() {
    KEEP_PARTIALS.store(true, std::sync::atomic::Ordering::SeqCst);
}

/// Whether `name` in `ingest/` is a kept partial blob of a sha256 or sha512: `<hex>.resume`
/// (a stopped stream), or `<hex>.chunks` and `<hex>.chunks.map` (a chunked download).
pub(super) fn is_resume_name(name: &str) -> bool {
    [RESUME, super::chunked::CHUNKS, super::chunked::MAP]
        .iter()
        .filter_map(|suffix| name.strip_suffix(suffix))
        .any(|hex| {
            matches!(hex.len(), 64 | 128)
                && hex
                    .bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        })
}

impl Store {
    /// Creates a new partial file in `ingest/` for `digest`, under an unpredictable name.
    /// Returns the writer and its [`Pending`] entry: committed into `blobs/` once verified,
    /// removed when dropped otherwise (an error, a retry, a deadline).
    pub fn begin_ingest(
        &self,
        digest: &Digest,
        direct: bool,
    ) -> io::Result<(IngestFile, Pending<'_>)> {
        let dir = self.ingest_dir()?;
        // What a stopped run kept of this blob: claimed (renamed to a name of our own, so
        // two runs never share it) and continued, its bytes hashed again before they count.
        let kept = format!("{}{RESUME}", digest.hex());
        if fsutil::regular_file_size(dir, &kept).is_some() {
            let name = format!(
                "{}.{}.{}.partial",
                digest.hex(),
                std::process::id(),
                fsutil::random_hex()
            );
            if fsutil::rename(dir, &kept, dir, &name).is_ok() {
                let pending = Pending {
                    store: self,
                    name: Some(name.clone()),
                };
                let file = fsutil::open_rw(dir, &name)
                    .map_err(ctx(&self.root.join("ingest").join(&name), "cannot open"))?;
                return Ok((IngestFile::resume(file, digest.algorithm())?, pending));
            }
        }
        loop {
            let name = format!(
                "{}.{}.{}.partial",
                digest.hex(),
                std::process::id(),
                fsutil::random_hex()
            );
            match fsutil::create_new(dir, &name, FILE_MODE) {
                Ok(f) => {
                    let pending = Pending {
                        store: self,
                        name: Some(name),
                    };
                    return Ok((IngestFile::new(f, digest.algorithm(), direct)?, pending));
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(ctx(&self.root.join("ingest").join(&name), "cannot create")(
                        e,
                    ));
                }
            }
        }
    }

    /// Removes an ingest file that will not be committed.
    fn discard(&self, ingest_name: &str) {
        if let Ok(d) = self.ingest_dir() {
            let _ = fsutil::remove(d, ingest_name);
        }
    }
}
