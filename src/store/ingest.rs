//! Writing a blob as it arrives: hashed and written on a blocking thread, large blobs with
//! `O_DIRECT` from aligned staging buffers.

use std::fs::File;
use std::io::{self, ErrorKind, Seek, Write};
use std::sync::mpsc;

use crate::fsutil::{DIRECT_ALIGN, set_direct};
use crate::oci::{Algorithm, Digest, Hasher};

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
    hasher: Hasher,
    alg: Algorithm,
    /// Bytes handed to the file, or to the direct writer (staged bytes not included).
    written: u64,
    /// Bytes already handed to the kernel for write-back (buffered mode).
    flushed: u64,
    /// Direct mode: the staging buffers and the thread that writes them.
    direct: Option<Direct>,
}

pub(super) struct Stage {
    /// `DIRECT_ALIGN` bytes larger than `DIRECT_CHUNK`, so that an aligned window of
    /// `DIRECT_CHUNK` bytes exists inside it.
    buf: Vec<u8>,
    /// Offset of the aligned window in `buf`.
    start: usize,
    /// Bytes staged in the window.
    pub(super) fill: usize,
}

impl Stage {
    pub(super) fn new() -> Stage {
        let buf = vec![0u8; DIRECT_CHUNK + DIRECT_ALIGN];
        let start = buf.as_ptr().align_offset(DIRECT_ALIGN);
        Stage {
            buf,
            start,
            fill: 0,
        }
    }
    pub(super) fn window(&mut self) -> &mut [u8] {
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
pub(super) const DIRECT_CHUNK: usize = 1 << 20;

impl IngestFile {
    /// Hashes with `alg` what is written to `file` (new and empty). `direct`: write with
    /// `O_DIRECT` if the file system allows it ([`super::Store::direct_for`]).
    pub fn new(file: File, alg: Algorithm, direct: bool) -> io::Result<IngestFile> {
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
            hasher: alg.hasher(),
            alg,
            written: 0,
            flushed: 0,
            direct,
        })
    }

    /// Continues a kept partial file (written through the page cache): [`IngestFile::replay`]
    /// hashes what it holds before anything is appended.
    pub fn resume(file: File, alg: Algorithm) -> io::Result<IngestFile> {
        let len = file.metadata()?.len();
        Ok(IngestFile {
            file,
            hasher: alg.hasher(),
            alg,
            written: len,
            flushed: len,
            direct: None,
        })
    }

    /// Bytes already in the file (a resumed one; 0 for a new file).
    pub fn len(&self) -> u64 {
        self.written
    }

    pub fn is_empty(&self) -> bool {
        self.written == 0
    }

    /// Reads back what a resumed file holds, hashing it and handing each chunk to `each` (the
    /// layer's unpack), then positions the file at its end.
    pub fn replay(&mut self, mut each: impl FnMut(&[u8])) -> io::Result<()> {
        use std::io::Read;
        self.hasher = self.alg.hasher();
        self.file.rewind()?;
        let mut buf = vec![0u8; 1 << 20];
        let mut left = self.written;
        while left > 0 {
            let n = self.file.read(&mut buf[..(left.min(1 << 20) as usize)])?;
            if n == 0 {
                return Err(io::Error::from(ErrorKind::UnexpectedEof));
            }
            self.hasher.update(&buf[..n]);
            each(&buf[..n]);
            left -= n as u64;
        }
        self.file.seek(io::SeekFrom::End(0))?;
        Ok(())
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
        self.hasher = self.alg.hasher();
        self.written = 0;
        self.flushed = 0;
        Ok(())
    }

    /// Writes what is staged and closes the file; the hash of what it holds and its length:
    /// for a download that goes on in chunks (SPEC §13), which opens the file again.
    pub fn into_parts(mut self) -> io::Result<(Hasher, u64)> {
        if let Some(mut d) = self.direct.take() {
            self.written += d.submit(self.written)? as u64;
            d.drain()?;
            d.stop();
        }
        Ok((self.hasher, self.written))
    }

    /// Writes what is staged, fsyncs; returns the digest and size of what was written.
    pub fn finish(mut self) -> io::Result<(Digest, u64)> {
        if let Some(mut d) = self.direct.take() {
            self.written += d.submit(self.written)? as u64;
            d.drain()?;
            d.stop();
        }
        self.file.sync_all()?;
        Ok((self.hasher.finish(), self.written))
    }
}

/// Asks the kernel to start writing a range of the file to disk, without waiting for it
/// (`sync_file_range(SYNC_FILE_RANGE_WRITE)`). Durability still comes from the fsync at the
/// end; this only spreads the disk work over the download. Errors are ignored for the same
/// reason.
pub(super) fn start_writeback(file: &File, offset: u64, len: u64) {
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
    use std::fs;

    /// An ingest file in direct mode. A file system that refuses `O_DIRECT` (tmpfs) would make
    /// the direct tests pass without exercising the direct path: that fails loudly, unless
    /// `KCI_TEST_ALLOW_BUFFERED=1` says it is known (then the test says so and checks the
    /// buffered fallback instead).
    fn direct_ingest(p: &std::path::Path) -> IngestFile {
        let f = IngestFile::new(File::create(p).unwrap(), Algorithm::Sha256, true).unwrap();
        if f.direct.is_none() {
            let msg = format!(
                "the file system of {} refuses O_DIRECT: this test cannot check direct writes \
                 (set TMPDIR to a directory on ext4 or xfs)",
                p.display()
            );
            if std::env::var_os("KCI_TEST_ALLOW_BUFFERED").is_some() {
                eprintln!("WARNING: {msg}; checking the buffered fallback only");
            } else {
                panic!("{msg}, or set KCI_TEST_ALLOW_BUFFERED=1 to accept that");
            }
        }
        f
    }

    #[test]
    fn ingest_hashes_what_it_writes_and_can_start_over() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x");
        let want = Digest::sha256(b"hello");
        let mut f = IngestFile::new(File::create(&p).unwrap(), Algorithm::Sha256, false).unwrap();
        f.write(b"garbage").unwrap();
        f.reset().unwrap();
        f.write(b"h").unwrap();
        f.write_batch(&[&b"el"[..], &b""[..], &b"lo"[..]]).unwrap();
        assert_eq!(f.finish().unwrap(), (want.clone(), 5));
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
        let want = Digest::sha256(&blob);
        let mut f = direct_ingest(&p);
        f.write(&[0xee; DIRECT_CHUNK + 3]).unwrap();
        f.reset().unwrap();
        // Odd-sized pieces so that batches straddle the chunk boundaries.
        for piece in blob.chunks(300_001) {
            let (a, b) = piece.split_at(piece.len() / 3);
            f.write_batch(&[a, b]).unwrap();
        }
        assert_eq!(f.finish().unwrap(), (want.clone(), blob.len() as u64));
        assert_eq!(fs::read(&p).unwrap(), blob);
    }

    #[test]
    fn an_abandoned_direct_ingest_writes_nothing_after_it_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x");
        let first = vec![0xeeu8; DIRECT_CHUNK * 3];
        let mut f = direct_ingest(&p);
        f.write(&first).unwrap();
        drop(f);
        // A retry re-creates the same path: no write of the abandoned file may land in it.
        let blob = b"small and final".to_vec();
        let want = Digest::sha256(&blob);
        let mut g = direct_ingest(&p);
        g.write(&blob).unwrap();
        assert_eq!(g.finish().unwrap(), (want.clone(), blob.len() as u64));
        assert_eq!(fs::read(&p).unwrap(), blob);
    }

    #[test]
    fn direct_write_refused_mid_batch_finishes_buffered() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x");
        let blob: Vec<u8> = (0..DIRECT_CHUNK * 2 + 777)
            .map(|i| (i * 13 % 253) as u8)
            .collect();
        let want = Digest::sha256(&blob);
        let mut f = direct_ingest(&p);
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
        assert_eq!(f.finish().unwrap(), (want.clone(), blob.len() as u64));
        assert_eq!(fs::read(&p).unwrap(), blob);
    }
}
