//! The data file of a blob fetched in chunks as the fetch's writer thread writes and reads it
//! (SPEC §13): in place, each chunk's bytes staged in an aligned 1 MiB buffer and written with
//! `O_DIRECT`, as a large blob's single stream is (`ingest.rs`). In the VMs the agent runs in,
//! page-cache memory touched for the first time costs more than the disk (docs/performance.md:
//! 256 MiB written through the page cache took 1.3-2.2 s there, with `O_DIRECT` 0.15 s), and a
//! chunked blob is read back once its earlier chunks are complete: both go around the page
//! cache. What cannot go directly (a chunk resumed or handed over at an unaligned offset, a
//! chunk's last bytes, a file system that refuses direct I/O) is written through the page cache,
//! and a direct read of it sees it (the kernel writes such a range back before reading it).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

use super::ingest::{DIRECT_CHUNK, Stage, start_writeback};
use crate::fsutil::DIRECT_ALIGN;

/// The chunked data file's writer side: positional writes of many chunks at once, each with
/// its own staging buffer.
pub struct ChunkData {
    /// Buffered: unaligned pieces, the fallback, the flush before the commit.
    file: File,
    /// The same file opened again with `O_DIRECT`; `None` once direct I/O was refused.
    direct: Option<File>,
    /// A staging buffer per chunk being written: the chunk, the file offset of its first
    /// staged byte, the buffer.
    staged: Vec<(usize, u64, Stage)>,
    spare: Vec<Stage>,
    /// Aligned buffer for reading back.
    read: Stage,
}

impl ChunkData {
    /// `file` opened for reading and writing; `direct`: the same file opened again with
    /// `O_DIRECT` (`None`: through the page cache only).
    pub fn new(file: File, direct: Option<File>) -> ChunkData {
        ChunkData {
            file,
            direct,
            staged: Vec::new(),
            spare: Vec::new(),
            read: Stage::new(),
        }
    }

    /// Writes `data`, bytes of chunk `chunk` that start at `offset` of the blob (following
    /// what that chunk staged before). Returns where that chunk's bytes in the file now end:
    /// the rest stays staged until its buffer is full or [`ChunkData::flush`] is called.
    pub fn write<B: AsRef<[u8]>>(
        &mut self,
        chunk: usize,
        offset: u64,
        data: &[B],
    ) -> io::Result<u64> {
        let (mut at, mut stage) = match self.staged.iter().position(|(c, ..)| *c == chunk) {
            Some(p) => {
                let (_, at, stage) = self.staged.swap_remove(p);
                (at, stage)
            }
            None => (offset, self.spare.pop().unwrap_or_else(Stage::new)),
        };
        if at + stage.fill as u64 != offset {
            // Not where the staged bytes end (never sent so): those go out first.
            self.put(at, &mut stage)?;
            at = offset;
        }
        for d in data {
            let mut d = d.as_ref();
            while !d.is_empty() {
                // A buffer ends on an aligned offset: after an unaligned start, the next
                // buffers are whole aligned blocks.
                let cap = DIRECT_CHUNK - (at % DIRECT_ALIGN as u64) as usize;
                let fill = stage.fill;
                let n = d.len().min(cap - fill);
                stage.window()[fill..fill + n].copy_from_slice(&d[..n]);
                stage.fill += n;
                d = &d[n..];
                if stage.fill == cap {
                    self.put(at, &mut stage)?;
                    at += cap as u64;
                }
            }
        }
        self.staged.push((chunk, at, stage));
        Ok(at)
    }

    /// Writes what chunk `chunk` has staged; returns where its bytes in the file end (`None`
    /// if it had nothing staged).
    pub fn flush(&mut self, chunk: usize) -> io::Result<Option<u64>> {
        let Some(p) = self.staged.iter().position(|(c, ..)| *c == chunk) else {
            return Ok(None);
        };
        let (_, at, mut stage) = self.staged.swap_remove(p);
        let end = at + stage.fill as u64;
        self.put(at, &mut stage)?;
        self.spare.push(stage);
        Ok(Some(end))
    }

    /// Writes a staging buffer at `at` and empties it: directly if it is aligned, else (or if
    /// direct I/O is refused) through the page cache.
    fn put(&mut self, at: u64, stage: &mut Stage) -> io::Result<()> {
        let len = stage.fill;
        let aligned = |v: u64| v.is_multiple_of(DIRECT_ALIGN as u64);
        let mut done = 0;
        if let Some(direct) = &self.direct
            && len > 0
            && aligned(at)
            && aligned(len as u64)
        {
            match direct.write_at(&stage.window()[..len], at) {
                Ok(n) => done = n,
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    tracing::debug!("direct I/O refused ({e}); chunks go through the page cache");
                    self.direct = None;
                }
                Err(e) => return Err(e),
            }
        }
        if done < len {
            self.file
                .write_all_at(&stage.window()[done..len], at + done as u64)?;
            // The disk works while the network delivers: the flush before the commit has
            // little left to write.
            start_writeback(&self.file, at + done as u64, (len - done) as u64);
        }
        stage.fill = 0;
        Ok(())
    }

    /// Reads up to `len` bytes at `offset` (at least one unless the file ends there), around
    /// the page cache where it can.
    pub fn read_at(&mut self, offset: u64, len: usize) -> io::Result<&[u8]> {
        let len = len.min(DIRECT_CHUNK - DIRECT_ALIGN);
        if let Some(direct) = &self.direct {
            let a = offset - offset % DIRECT_ALIGN as u64;
            let skip = (offset - a) as usize;
            let want = (skip + len).div_ceil(DIRECT_ALIGN) * DIRECT_ALIGN;
            let window = self.read.window();
            match read_some(direct, &mut window[..want], a) {
                Ok(got) if got > skip => {
                    let end = got.min(skip + len);
                    return Ok(&self.read.window()[skip..end]);
                }
                Ok(_) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    tracing::debug!("direct I/O refused ({e}); chunks go through the page cache");
                    self.direct = None;
                }
                Err(e) => return Err(e),
            }
        }
        let window = self.read.window();
        match read_some(&self.file, &mut window[..len], offset)? {
            0 if len > 0 => Err(io::ErrorKind::UnexpectedEof.into()),
            got => Ok(&self.read.window()[..got]),
        }
    }
}

/// Reads into `buf` at `offset` until it is full or the file ends; how many bytes came.
fn read_some(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match file.read_at(&mut buf[got..], offset + got as u64) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data_file(dir: &std::path::Path, size: u64, direct: bool) -> ChunkData {
        let path = dir.join("data");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        file.set_len(size).unwrap();
        let d = direct.then_some(()).and_then(|_| {
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(&path)
                .unwrap();
            crate::fsutil::set_direct(&f, true).ok().map(|_| f)
        });
        ChunkData::new(file, d)
    }

    /// Chunks written interleaved, in odd pieces, from unaligned starts (a handed-over stream,
    /// a resumed chunk), read back in odd pieces: the file holds the blob, directly or not.
    #[test]
    fn interleaved_chunks_land_in_place_and_read_back() {
        let size: u64 = 5 * 1024 * 1024 + 777;
        let chunk: u64 = 1024 * 1024 + 4096 * 3 + 5; // not aligned
        let blob: Vec<u8> = (0..size).map(|i| (i * 7 + i / 4093) as u8).collect();
        // /var/tmp: a disk file system; /dev/shm: tmpfs, which refuses O_DIRECT on older
        // kernels (the fallback).
        for (base, direct) in [("/var/tmp", true), ("/var/tmp", false), ("/dev/shm", true)] {
            let dir = tempfile::tempdir_in(base).unwrap();
            let mut d = data_file(dir.path(), size, direct);
            let chunks = size.div_ceil(chunk) as usize;
            // Chunk 0 starts where a stream stopped (unaligned); chunk 2 is a resumed one.
            let handed = 123_457u64;
            d.file.write_all_at(&blob[..handed as usize], 0).unwrap();
            let mut at: Vec<u64> = (0..chunks as u64).map(|i| i * chunk).collect();
            at[0] = handed;
            at[2] += 1_000;
            d.file
                .write_all_at(&blob[(2 * chunk) as usize..at[2] as usize], 2 * chunk)
                .unwrap();
            let mut piece = 1usize;
            let mut ends = vec![0u64; chunks];
            while (0..chunks).any(|i| at[i] < ((i as u64 + 1) * chunk).min(size)) {
                for i in (0..chunks).rev() {
                    let end = ((i as u64 + 1) * chunk).min(size);
                    let n = ((piece * 4099) as u64 % 300_000 + 1).min(end - at[i]);
                    if n == 0 {
                        continue;
                    }
                    let bytes = &blob[at[i] as usize..(at[i] + n) as usize];
                    let (a, b) = bytes.split_at(bytes.len() / 3);
                    ends[i] = d.write(i, at[i], &[a, b]).unwrap();
                    assert!(ends[i] <= at[i] + n);
                    at[i] += n;
                    piece += 1;
                }
            }
            for (i, e) in ends.iter_mut().enumerate() {
                if let Some(end) = d.flush(i).unwrap() {
                    *e = end;
                }
                assert_eq!(*e, ((i as u64 + 1) * chunk).min(size), "chunk {i}");
            }
            let mut back = Vec::new();
            let mut off = 0u64;
            while off < size {
                let got = d.read_at(off, 300_001).unwrap().to_vec();
                assert!(!got.is_empty());
                off += got.len() as u64;
                back.extend(got);
            }
            assert!(
                back == blob,
                "{base} direct={direct}: the file is not the blob"
            );
            assert!(matches!(
                d.read_at(size, 10).map(|b| b.len()),
                Err(_) | Ok(0)
            ));
        }
    }
}
