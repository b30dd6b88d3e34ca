//! The image store: an OCI image layout (`oci-layout`, `index.json`, `blobs/<alg>/<hex>`).
//!
//! Blobs stream into `ingest/` while they are hashed and are renamed into `blobs/` only after
//! their size and digest match, so every file under `blobs/` is verified content.
//! `index.json` is replaced atomically. An exclusive lock (`.lock`) keeps two runs apart.

use std::fs::{self, File, OpenOptions};
use std::io::{self, ErrorKind, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc;

use ring::digest;
use serde_json::{Value, json};

use crate::netfiles::atomic::write_file;
use crate::pull::manifest::{Descriptor, OCI_INDEX};

pub const REF_NAME: &str = "org.opencontainers.image.ref.name";
/// What the reference resolved to at the registry (the index for a multi-platform image):
/// lets a later pull of a tag decide "present" from a HEAD request alone.
pub const RESOLVED: &str = "com.ksyun.kci.resolved-digest";

/// Checks that `d` is `sha256:<64 hex>` or `sha512:<128 hex>` (lower case): digests come from
/// registries and become file names, so nothing else may pass.
pub fn check_digest(d: &str) -> Result<(), String> {
    let ok = match d.split_once(':') {
        Some(("sha256", hex)) => hex.len() == 64,
        Some(("sha512", hex)) => hex.len() == 128,
        _ => false,
    } && d.split_once(':').is_some_and(|(_, h)| {
        h.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "invalid digest {d:?} (expected sha256:<64 hex> or sha512:<128 hex>)"
        ))
    }
}

/// A streaming hash for a digest's algorithm.
pub fn hasher_for(d: &str) -> digest::Context {
    if d.starts_with("sha512:") {
        digest::Context::new(&digest::SHA512)
    } else {
        digest::Context::new(&digest::SHA256)
    }
}

pub fn finish_hex(ctx: digest::Context) -> String {
    let alg = if ctx.algorithm() == &digest::SHA512 {
        "sha512"
    } else {
        "sha256"
    };
    let d = ctx.finish();
    let mut s = String::with_capacity(7 + d.as_ref().len() * 2);
    s.push_str(alg);
    s.push(':');
    for b in d.as_ref() {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

pub fn sha256_of(bytes: &[u8]) -> String {
    let mut c = digest::Context::new(&digest::SHA256);
    c.update(bytes);
    finish_hex(c)
}

pub fn digest_of(bytes: &[u8], like: &str) -> String {
    let mut c = hasher_for(like);
    c.update(bytes);
    finish_hex(c)
}

/// An open, locked store.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    _lock: File,
    /// Whether large blobs are written with `O_DIRECT` (see [`IngestFile`]).
    direct_io: bool,
}

fn ctx(path: &Path, what: &str) -> impl FnOnce(io::Error) -> io::Error {
    let p = path.display().to_string();
    let what = what.to_string();
    move |e| io::Error::new(e.kind(), format!("{what} {p}: {e}"))
}

impl Store {
    /// Opens (creating if needed) the layout at `root` and takes its lock, waiting for another
    /// run that holds it. Leftovers of an interrupted run in `ingest/` are removed.
    pub fn open(root: &Path) -> io::Result<Store> {
        fs::create_dir_all(root.join("blobs/sha256")).map_err(ctx(root, "cannot create"))?;
        fs::create_dir_all(root.join("ingest")).map_err(ctx(root, "cannot create"))?;
        let lock_path = root.join(".lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(ctx(&lock_path, "cannot open"))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                tracing::info!(
                    store = %root.display(),
                    "another kci-pull-agent run holds the store lock; waiting for it"
                );
                lock.lock().map_err(ctx(&lock_path, "cannot lock"))?;
            }
            Err(fs::TryLockError::Error(e)) => return Err(ctx(&lock_path, "cannot lock")(e)),
        }
        let layout = root.join("oci-layout");
        if !layout.exists() {
            write_file(&layout, &layout, br#"{"imageLayoutVersion":"1.0.0"}"#)
                .map_err(ctx(&layout, "cannot write"))?;
        }
        for e in fs::read_dir(root.join("ingest"))?.flatten() {
            let _ = fs::remove_file(e.path());
        }
        // Temporary files of writes interrupted before their rename (oci-layout, index.json,
        // manifests).
        crate::netfiles::atomic::remove_stale_temps(root);
        for alg in fs::read_dir(root.join("blobs"))?.flatten() {
            crate::netfiles::atomic::remove_stale_temps(&alg.path());
        }
        Ok(Store {
            root: root.to_path_buf(),
            _lock: lock,
            direct_io: true,
        })
    }

    /// Chooses between direct writes of large blobs (the default) and writes through the page
    /// cache (`--buffered-writes`).
    pub fn set_direct_io(&mut self, on: bool) {
        self.direct_io = on;
    }

    /// Whether a blob of `size` bytes is to be written with `O_DIRECT`.
    pub fn direct_for(&self, size: u64) -> bool {
        self.direct_io && size >= DIRECT_CHUNK as u64
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn blob_path(&self, digest: &str) -> PathBuf {
        let (alg, hex) = digest.split_once(':').unwrap_or(("sha256", digest));
        self.root.join("blobs").join(alg).join(hex)
    }

    /// Whether a verified blob of that digest and size is present.
    pub fn has_blob(&self, digest: &str, size: u64) -> bool {
        fs::metadata(self.blob_path(digest)).is_ok_and(|m| m.is_file() && m.len() == size)
    }

    pub fn ingest_path(&self, digest: &str) -> PathBuf {
        let hex = digest.split_once(':').map_or(digest, |(_, h)| h);
        self.root
            .join("ingest")
            .join(format!("{hex}.{}.partial", std::process::id()))
    }

    /// Moves a verified ingest file into `blobs/`.
    pub fn commit(&self, ingest: &Path, digest: &str) -> io::Result<()> {
        let dest = self.blob_path(digest);
        if let Some(dir) = dest.parent() {
            fs::create_dir_all(dir)?;
        }
        fs::rename(ingest, &dest).map_err(ctx(&dest, "cannot move blob to"))
    }

    /// Stores a small blob held in memory (a manifest), after checking its digest.
    pub fn put_small(&self, digest: &str, bytes: &[u8]) -> io::Result<()> {
        if self.has_blob(digest, bytes.len() as u64) {
            return Ok(());
        }
        // Through ingest/ like any blob: nothing but complete, verified blobs under blobs/.
        let path = self.ingest_path(digest);
        let mut f = IngestFile::create(&path, digest, false)?;
        f.write(bytes)?;
        let (actual, _) = f.finish()?;
        if actual != digest {
            let _ = fs::remove_file(&path);
            return Err(io::Error::new(
                ErrorKind::InvalidData,
                format!("refusing to store {digest}: content does not match"),
            ));
        }
        self.commit(&path, digest)
    }

    pub fn read_blob(&self, digest: &str) -> io::Result<Vec<u8>> {
        fs::read(self.blob_path(digest))
    }

    /// The config and layers of the image manifest stored as `digest`, if that blob is present,
    /// intact, and an image manifest.
    pub fn manifest_blobs(&self, digest: &str) -> Option<Vec<Descriptor>> {
        let bytes = self.read_blob(digest).ok()?;
        if digest_of(&bytes, digest) != digest {
            return None;
        }
        match crate::pull::manifest::parse(&bytes, None).ok()? {
            crate::pull::manifest::Document::Manifest { config, layers, .. } => {
                Some(std::iter::once(*config).chain(layers).collect())
            }
            _ => None,
        }
    }

    /// Whether the manifest `digest` and every blob it references are present.
    pub fn is_complete(&self, digest: &str) -> bool {
        self.manifest_blobs(digest)
            .is_some_and(|blobs| blobs.iter().all(|d| self.has_blob(&d.digest, d.size)))
    }

    /// Makes the renames into `blobs/` durable.
    pub fn sync_blobs(&self) -> io::Result<()> {
        for dir in fs::read_dir(self.root.join("blobs"))?.flatten() {
            File::open(dir.path())?.sync_all()?;
        }
        Ok(())
    }

    fn read_index(&self) -> io::Result<Value> {
        let path = self.root.join("index.json");
        match fs::read(&path) {
            Ok(bytes) => {
                let v: Value = serde_json::from_slice(&bytes).map_err(|e| {
                    io::Error::new(
                        ErrorKind::InvalidData,
                        format!(
                            "{} is not valid JSON ({e}); move it aside to start a fresh index",
                            path.display()
                        ),
                    )
                })?;
                if !v.get("manifests").is_some_and(Value::is_array) {
                    return Err(io::Error::new(
                        ErrorKind::InvalidData,
                        format!("{} has no manifests array", path.display()),
                    ));
                }
                Ok(v)
            }
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(json!({
                "schemaVersion": 2,
                "mediaType": OCI_INDEX,
                "manifests": [],
            })),
            Err(e) => Err(ctx(&path, "cannot read")(e)),
        }
    }

    /// The descriptor stored for a reference name.
    pub fn find_ref(&self, name: &str) -> io::Result<Option<Descriptor>> {
        let index = self.read_index()?;
        let found = index["manifests"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| m["annotations"][REF_NAME] == name)
            .cloned();
        Ok(found.and_then(|m| serde_json::from_value(m).ok()))
    }

    /// Replaces (or adds) the descriptor of each reference in `index.json`, in one atomic write.
    pub fn set_refs(&self, descriptors: &[Descriptor]) -> io::Result<()> {
        if descriptors.is_empty() {
            return Ok(());
        }
        let mut index = self.read_index()?;
        let manifests = index["manifests"].as_array_mut().expect("checked");
        for d in descriptors {
            let name = d
                .annotations
                .as_ref()
                .and_then(|a| a.get(REF_NAME))
                .cloned()
                .unwrap_or(Value::Null);
            let value = serde_json::to_value(d)?;
            match manifests
                .iter_mut()
                .find(|m| m["annotations"][REF_NAME] == name)
            {
                Some(slot) => *slot = value,
                None => manifests.push(value),
            }
        }
        let mut bytes = serde_json::to_vec_pretty(&index)?;
        bytes.push(b'\n');
        let path = self.root.join("index.json");
        write_file(&path, &path, &bytes)
            .map(|_| ())
            .map_err(ctx(&path, "cannot write"))
    }
}

/// Receives a blob's bytes on a blocking thread: hashes and writes them, so the network task
/// only moves buffers. `reset` starts over (a registry that ignored a `Range` request).
///
/// A large blob is written with `O_DIRECT` from aligned 1 MiB staging buffers: the bytes go from
/// those buffers to the disk without passing through the page cache (see `docs/performance.md`
/// for why, measured). A second thread per blob does the direct writes, so the disk works on
/// one buffer while this thread hashes and fills the other. Where the file system refuses
/// direct I/O, the file falls back to ordinary buffered writes.
pub struct IngestFile {
    file: File,
    hasher: digest::Context,
    like: String,
    /// Bytes handed to the file, or to the direct writer (staged bytes not included).
    written: u64,
    /// Bytes already handed to the kernel for write-back (buffered mode).
    flushed: u64,
    /// Direct mode: the staging buffers and the thread that writes them.
    direct: Option<Direct>,
}

struct Stage {
    /// `DIRECT_ALIGN` bytes larger than `DIRECT_CHUNK`, so that an aligned window of
    /// `DIRECT_CHUNK` bytes exists inside it.
    buf: Vec<u8>,
    /// Offset of the aligned window in `buf`.
    start: usize,
    /// Bytes staged in the window.
    fill: usize,
}

impl Stage {
    fn new() -> Stage {
        let buf = vec![0u8; DIRECT_CHUNK + DIRECT_ALIGN];
        let start = buf.as_ptr().align_offset(DIRECT_ALIGN);
        Stage {
            buf,
            start,
            fill: 0,
        }
    }
    fn window(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.start + DIRECT_CHUNK]
    }
}

/// The direct-write side of an [`IngestFile`]: the buffer being filled, a spare one, and a
/// writer thread that takes full buffers with their file offsets and hands them back empty.
/// All writes of the file go through that thread while it runs (positional writes, so no
/// file position is shared).
struct Direct {
    filling: Stage,
    spare: Option<Stage>,
    /// Buffers sent to the writer thread and not yet handed back.
    in_flight: usize,
    jobs: Option<mpsc::SyncSender<(Stage, u64)>>,
    done: mpsc::Receiver<io::Result<Stage>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Number of staging buffers per blob: one filled while the other is written.
const DIRECT_STAGES: usize = 2;

impl Direct {
    fn start(file: &File) -> io::Result<Direct> {
        let file = file.try_clone()?;
        let (jobs, job_rx) = mpsc::sync_channel::<(Stage, u64)>(DIRECT_STAGES);
        let (done_tx, done) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("kci-direct-write".into())
            .spawn(move || {
                let mut direct = true;
                for (mut stage, offset) in job_rx {
                    let r = write_stage(&file, &mut stage, offset, &mut direct).map(|()| {
                        stage.fill = 0;
                        stage
                    });
                    if done_tx.send(r).is_err() {
                        return;
                    }
                }
            })?;
        Ok(Direct {
            filling: Stage::new(),
            spare: Some(Stage::new()),
            in_flight: 0,
            jobs: Some(jobs),
            done,
            thread: Some(thread),
        })
    }

    fn writer_gone() -> io::Error {
        io::Error::other("the direct-write thread stopped")
    }

    /// Takes back one buffer from the writer thread, waiting for its write.
    fn reclaim(&mut self) -> io::Result<Stage> {
        if self.in_flight == 0 {
            // Only after a failed write lost its buffer: the blob is abandoned anyway.
            return Err(io::Error::other(
                "no staging buffer left after a failed write",
            ));
        }
        let r = self.done.recv().map_err(|_| Direct::writer_gone())?;
        self.in_flight -= 1;
        r
    }

    /// Sends the staged bytes (if any) to be written at `offset`; returns how many.
    fn submit(&mut self, offset: u64) -> io::Result<usize> {
        let len = self.filling.fill;
        if len == 0 {
            return Ok(0);
        }
        let next = match self.spare.take() {
            Some(s) => s,
            None => self.reclaim()?,
        };
        let full = std::mem::replace(&mut self.filling, next);
        let jobs = self.jobs.as_ref().ok_or_else(Direct::writer_gone)?;
        jobs.send((full, offset))
            .map_err(|_| Direct::writer_gone())?;
        self.in_flight += 1;
        Ok(len)
    }

    /// Waits until every buffer sent has been written.
    fn drain(&mut self) -> io::Result<()> {
        while self.in_flight > 0 {
            let s = self.reclaim()?;
            self.spare = Some(s);
        }
        Ok(())
    }

    /// Stops the writer thread after the writes already sent.
    fn stop(&mut self) {
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Direct {
    /// Never leaves the thread writing to a file that the caller may remove or re-create.
    fn drop(&mut self) {
        self.stop();
    }
}

/// Writes one staging buffer at `offset`: a full one with `O_DIRECT` while `direct` holds, the
/// tail (or everything, once direct I/O was refused or came back short) through the page cache.
fn write_stage(file: &File, stage: &mut Stage, offset: u64, direct: &mut bool) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let len = stage.fill;
    let data = &stage.window()[..len];
    let mut done = 0;
    if *direct && len == DIRECT_CHUNK {
        match file.write_at(data, offset) {
            Ok(n) => done = n,
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                tracing::debug!("direct I/O refused ({e}); writing through the page cache");
            }
            Err(e) => return Err(e),
        }
        if done == len {
            return Ok(());
        }
    }
    if *direct {
        set_direct(file, false)?;
        *direct = false;
    }
    file.write_all_at(&data[done..], offset + done as u64)?;
    start_writeback(file, offset, len as u64);
    Ok(())
}

/// Write-back is started every this many bytes, so that the final fsync has little left to do
/// and the disk works while the network delivers the rest.
const WRITEBACK_STEP: u64 = 8 << 20;
/// Size of one direct write; also the smallest blob written directly.
const DIRECT_CHUNK: usize = 1 << 20;
/// Alignment of direct writes (memory, offset and length): covers 512-byte and 4 KiB sectors.
const DIRECT_ALIGN: usize = 4096;

/// Turns `O_DIRECT` on or off on an open file.
fn set_direct(file: &File, on: bool) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    // SAFETY: fcntl on a valid descriptor with integer arguments.
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(io::Error::last_os_error());
    }
    let flags = if on {
        flags | libc::O_DIRECT
    } else {
        flags & !libc::O_DIRECT
    };
    // SAFETY: as above.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

impl IngestFile {
    /// `direct`: write with `O_DIRECT` if the file system allows it ([`Store::direct_for`]).
    pub fn create(path: &Path, digest: &str, direct: bool) -> io::Result<IngestFile> {
        let file = File::create(path).map_err(ctx(path, "cannot create"))?;
        let direct = if direct && set_direct(&file, true).is_ok() {
            match Direct::start(&file) {
                Ok(d) => Some(d),
                Err(e) => {
                    tracing::debug!("no direct-write thread ({e}); writing through the page cache");
                    set_direct(&file, false)?;
                    None
                }
            }
        } else {
            None
        };
        Ok(IngestFile {
            file,
            hasher: hasher_for(digest),
            like: digest.to_string(),
            written: 0,
            flushed: 0,
            direct,
        })
    }

    pub fn write(&mut self, data: &[u8]) -> io::Result<()> {
        self.write_batch(&[data])
    }

    /// Hashes and writes consecutive chunks with as few system calls as possible: staged into
    /// whole aligned chunks in direct mode, one `writev` otherwise.
    pub fn write_batch<B: AsRef<[u8]>>(&mut self, chunks: &[B]) -> io::Result<()> {
        for c in chunks {
            self.hasher.update(c.as_ref());
        }
        let Some(d) = self.direct.as_mut() else {
            return self.write_buffered(chunks);
        };
        for c in chunks {
            let mut data = c.as_ref();
            while !data.is_empty() {
                let stage = &mut d.filling;
                let fill = stage.fill;
                let n = data.len().min(DIRECT_CHUNK - fill);
                stage.window()[fill..fill + n].copy_from_slice(&data[..n]);
                stage.fill += n;
                data = &data[n..];
                if stage.fill == DIRECT_CHUNK {
                    self.written += d.submit(self.written)? as u64;
                }
            }
        }
        Ok(())
    }

    fn write_buffered<B: AsRef<[u8]>>(&mut self, chunks: &[B]) -> io::Result<()> {
        let mut slices: Vec<io::IoSlice<'_>> = chunks
            .iter()
            .map(|c| io::IoSlice::new(c.as_ref()))
            .collect();
        let mut rest: &mut [io::IoSlice<'_>] = &mut slices;
        while !rest.is_empty() {
            let n = self.file.write_vectored(rest)?;
            if n == 0 {
                return Err(io::Error::from(ErrorKind::WriteZero));
            }
            self.written += n as u64;
            io::IoSlice::advance_slices(&mut rest, n);
        }
        if self.written - self.flushed >= WRITEBACK_STEP {
            start_writeback(&self.file, self.flushed, self.written - self.flushed);
            self.flushed = self.written;
        }
        Ok(())
    }

    pub fn reset(&mut self) -> io::Result<()> {
        if let Some(d) = self.direct.as_mut() {
            d.drain()?;
            d.filling.fill = 0;
        }
        let f = &mut self.file;
        f.set_len(0)?;
        f.rewind()?;
        self.hasher = hasher_for(&self.like);
        self.written = 0;
        self.flushed = 0;
        Ok(())
    }

    /// Writes what is staged, fsyncs; returns the digest and size of what was written.
    pub fn finish(mut self) -> io::Result<(String, u64)> {
        if let Some(mut d) = self.direct.take() {
            self.written += d.submit(self.written)? as u64;
            d.drain()?;
            d.stop();
        }
        self.file.sync_all()?;
        Ok((finish_hex(self.hasher), self.written))
    }
}

/// Asks the kernel to start writing a range of the file to disk, without waiting for it
/// (`sync_file_range(SYNC_FILE_RANGE_WRITE)`). Durability still comes from the fsync at the
/// end; this only spreads the disk work over the download. Errors are ignored for the same
/// reason.
fn start_writeback(file: &File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: a valid open descriptor, plain integer arguments.
    unsafe {
        libc::sync_file_range(
            file.as_raw_fd(),
            offset as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WRITE,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digests_are_checked_before_they_become_paths() {
        assert!(check_digest(&format!("sha256:{}", "a".repeat(64))).is_ok());
        assert!(check_digest(&format!("sha512:{}", "0".repeat(128))).is_ok());
        for bad in [
            "sha256:../../etc/passwd".to_string(),
            format!("sha256:{}", "A".repeat(64)),
            format!("sha256:{}", "a".repeat(63)),
            format!("md5:{}", "a".repeat(32)),
            format!("sha256:{}/x", "a".repeat(62)),
            "".to_string(),
        ] {
            assert!(check_digest(&bad).is_err(), "{bad}");
        }
        assert_eq!(
            sha256_of(b"abc"),
            "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn index_refs_are_replaced_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let desc = |name: &str, n: u8| Descriptor {
            media_type: crate::pull::manifest::OCI_MANIFEST.into(),
            digest: format!("sha256:{}", format!("{n:02x}").repeat(32)),
            size: n as u64,
            platform: None,
            annotations: Some(
                [(REF_NAME.to_string(), Value::from(name))]
                    .into_iter()
                    .collect(),
            ),
            urls: None,
        };
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

    #[test]
    fn ingest_hashes_what_it_writes_and_can_start_over() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x");
        let want = sha256_of(b"hello");
        let mut f = IngestFile::create(&p, &want, false).unwrap();
        f.write(b"garbage").unwrap();
        f.reset().unwrap();
        f.write(b"h").unwrap();
        f.write_batch(&[&b"el"[..], &b""[..], &b"lo"[..]]).unwrap();
        assert_eq!(f.finish().unwrap(), (want, 5));
        assert_eq!(fs::read(&p).unwrap(), b"hello");
    }

    /// A large blob takes the direct path (where the file system allows it): whole aligned
    /// chunks, chunks split across batches, a reset in the middle and an unaligned tail must
    /// all come out byte for byte, with the right digest.
    #[test]
    fn large_ingest_keeps_every_byte_across_chunks_reset_and_tail() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x");
        let blob: Vec<u8> = (0..DIRECT_CHUNK * 3 + 12_345)
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let want = sha256_of(&blob);
        let mut f = IngestFile::create(&p, &want, true).unwrap();
        f.write(&[0xee; DIRECT_CHUNK + 3]).unwrap();
        f.reset().unwrap();
        // Odd-sized pieces so that batches straddle the chunk boundaries.
        for piece in blob.chunks(300_001) {
            let (a, b) = piece.split_at(piece.len() / 3);
            f.write_batch(&[a, b]).unwrap();
        }
        assert_eq!(f.finish().unwrap(), (want, blob.len() as u64));
        assert_eq!(fs::read(&p).unwrap(), blob);
    }

    #[test]
    fn an_abandoned_direct_ingest_writes_nothing_after_it_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x");
        let first = vec![0xeeu8; DIRECT_CHUNK * 3];
        let mut f = IngestFile::create(&p, &sha256_of(&first), true).unwrap();
        f.write(&first).unwrap();
        drop(f);
        // A retry re-creates the same path: no write of the abandoned file may land in it.
        let blob = b"small and final".to_vec();
        let want = sha256_of(&blob);
        let mut g = IngestFile::create(&p, &want, true).unwrap();
        g.write(&blob).unwrap();
        assert_eq!(g.finish().unwrap(), (want, blob.len() as u64));
        assert_eq!(fs::read(&p).unwrap(), blob);
    }

    #[test]
    fn direct_write_refused_mid_batch_finishes_buffered() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x");
        let blob: Vec<u8> = (0..DIRECT_CHUNK * 2 + 777)
            .map(|i| (i * 13 % 253) as u8)
            .collect();
        let want = sha256_of(&blob);
        let mut f = IngestFile::create(&p, &want, true).unwrap();
        // A misaligned window makes ext4/xfs refuse the first direct write with EINVAL, in
        // the middle of a batch whose later pieces must then go through the page cache.
        if let Some(d) = f.direct.as_mut() {
            d.filling.start += 1;
            if let Some(s) = d.spare.as_mut() {
                s.start += 1;
            }
        }
        let (a, rest) = blob.split_at(DIRECT_CHUNK + 5);
        let (b, c) = rest.split_at(DIRECT_CHUNK / 2);
        f.write_batch(&[a, b, c]).unwrap();
        assert_eq!(f.finish().unwrap(), (want, blob.len() as u64));
        assert_eq!(fs::read(&p).unwrap(), blob);
    }
}

/// One inconsistency found by [`Store::check`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Problem {
    /// `corrupt-blob`, `stray-file`, `incomplete-image`, `bad-index`.
    pub kind: &'static str,
    pub path: String,
    pub detail: String,
    /// Whether `--fix` removed it.
    pub fixed: bool,
}

impl Store {
    /// Verifies the whole store: every blob hashes to its name, nothing stray is left in
    /// `ingest/` or as a temporary file, `index.json` parses and each of its images is complete.
    /// With `fix`, removes what is wrong (blobs, stray files, index entries of incomplete
    /// images); blobs of complete images are never touched.
    pub fn check(&self, fix: bool) -> io::Result<Vec<Problem>> {
        let mut problems = Vec::new();
        let mut corrupt: Vec<String> = Vec::new();
        let mut note = |kind, path: &Path, detail: String, remove: bool| {
            let fixed = fix && remove && fs::remove_file(path).is_ok();
            problems.push(Problem {
                kind,
                path: path.display().to_string(),
                detail,
                fixed,
            });
        };
        for alg_dir in fs::read_dir(self.root.join("blobs"))?.flatten() {
            let alg = alg_dir.file_name().to_string_lossy().into_owned();
            for e in fs::read_dir(alg_dir.path())?.flatten() {
                let p = e.path();
                let name = e.file_name().to_string_lossy().into_owned();
                let digest = format!("{alg}:{name}");
                if check_digest(&digest).is_err() {
                    note("stray-file", &p, "not a blob name".into(), true);
                    continue;
                }
                let mut f = File::open(&p)?;
                let mut ctx = hasher_for(&digest);
                let mut buf = vec![0u8; 1 << 20];
                loop {
                    let n = io::Read::read(&mut f, &mut buf)?;
                    if n == 0 {
                        break;
                    }
                    ctx.update(&buf[..n]);
                }
                let actual = finish_hex(ctx);
                if actual != digest {
                    note(
                        "corrupt-blob",
                        &p,
                        format!("content hashes to {actual}"),
                        true,
                    );
                    corrupt.push(digest);
                }
            }
        }
        for e in fs::read_dir(self.root.join("ingest"))?.flatten() {
            note(
                "stray-file",
                &e.path(),
                "left over from an interrupted pull".into(),
                true,
            );
        }
        for e in fs::read_dir(&self.root)?.flatten() {
            if e.file_name().to_string_lossy().contains(".kci-tmp-") {
                note(
                    "stray-file",
                    &e.path(),
                    "temporary file of an interrupted write".into(),
                    true,
                );
            }
        }
        let index = match self.read_index() {
            Ok(v) => v,
            Err(e) => {
                problems.push(Problem {
                    kind: "bad-index",
                    path: self.root.join("index.json").display().to_string(),
                    detail: e.to_string(),
                    fixed: false,
                });
                return Ok(problems);
            }
        };
        let mut incomplete = Vec::new();
        for m in index["manifests"].as_array().into_iter().flatten() {
            let name = m["annotations"][REF_NAME]
                .as_str()
                .unwrap_or("")
                .to_string();
            let ok = m["digest"].as_str().is_some_and(|d| {
                check_digest(d).is_ok()
                    && !corrupt.iter().any(|c| c == d)
                    && self.manifest_blobs(d).is_some_and(|blobs| {
                        blobs.iter().all(|x| {
                            self.has_blob(&x.digest, x.size) && !corrupt.contains(&x.digest)
                        })
                    })
            });
            if !ok {
                incomplete.push(name);
            }
        }
        if !incomplete.is_empty() {
            let fixed = fix && self.remove_refs(&incomplete).is_ok();
            for name in incomplete {
                problems.push(Problem {
                    kind: "incomplete-image",
                    path: self.root.join("index.json").display().to_string(),
                    detail: format!("{name:?}: its manifest or a blob is missing or corrupt"),
                    fixed,
                });
            }
        }
        Ok(problems)
    }

    fn remove_refs(&self, names: &[String]) -> io::Result<()> {
        let mut index = self.read_index()?;
        if let Some(list) = index["manifests"].as_array_mut() {
            list.retain(|m| {
                !names
                    .iter()
                    .any(|n| m["annotations"][REF_NAME].as_str() == Some(n.as_str()))
            });
        }
        let mut bytes = serde_json::to_vec_pretty(&index)?;
        bytes.push(b'\n');
        let path = self.root.join("index.json");
        write_file(&path, &path, &bytes).map(|_| ())
    }
}
