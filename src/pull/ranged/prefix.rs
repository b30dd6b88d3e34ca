//! The writer thread of a chunked blob: writes what the connections bring in place, records
//! complete chunks in the map, and hashes and feeds the unpack in order as the contiguous
//! prefix grows: bytes that arrive in order go straight from memory, the rest is read back
//! from the file once everything before it is there.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::layers::stream::StreamUnpack;
use crate::store::ChunkData;

/// Read back from the file at a time, when later bytes join the prefix.
const READ_BACK: usize = 1 << 20;

/// What the connections tell the writer thread.
pub(super) enum Msg {
    /// Bytes of piece `key` (of chunk `chunk`) at `offset` of the blob (in order within the
    /// piece).
    Data {
        chunk: usize,
        key: usize,
        offset: u64,
        batch: Vec<Bytes>,
    },
    /// Piece `key` ended (complete, or cut short by a failure).
    Done(usize),
}

/// The blob's chunks: `size` bytes cut every `chunk` bytes.
#[derive(Clone, Copy)]
pub(super) struct Cuts {
    pub size: u64,
    pub chunk: u64,
}

impl Cuts {
    pub fn count(self) -> usize {
        self.size.div_ceil(self.chunk) as usize
    }
    /// The bytes `start..end` of chunk `i`.
    pub fn range(self, i: usize) -> (u64, u64) {
        let start = i as u64 * self.chunk;
        (start, (start + self.chunk).min(self.size))
    }
    pub fn len(self, i: usize) -> u64 {
        let (s, e) = self.range(i);
        e - s
    }
}

/// The writer thread's side: the file, what each chunk has on disk, the hash and the unpack
/// of the contiguous prefix.
pub(super) struct Prefix {
    file: ChunkData,
    map: std::fs::File,
    cuts: Cuts,
    /// The byte ranges of each chunk on disk, sorted and merged.
    on_disk: Vec<Vec<(u64, u64)>>,
    /// Chunks the map lists.
    recorded: Vec<bool>,
    /// The pieces being written: their chunk and first byte.
    pieces: HashMap<usize, (usize, u64)>,
    /// The first chunk not complete.
    first_open: usize,
    /// Bytes hashed and fed so far (a prefix of the blob).
    pub fed: u64,
    pub hasher: crate::oci::Hasher,
    pub sink: Option<StreamUnpack>,
    /// Where the writer's time went, for the debug log: writing, hashing, feeding (waiting
    /// for the unpack), reading back.
    spent: [Duration; 4],
}

impl Prefix {
    /// `initial[i]`: the bytes of chunk `i` on disk from its start (listed in the map if
    /// whole); `fed`: the bytes `hasher` and `sink` have had.
    pub fn new(
        file: ChunkData,
        map: std::fs::File,
        cuts: Cuts,
        initial: &[u64],
        fed: u64,
        hasher: crate::oci::Hasher,
        sink: Option<StreamUnpack>,
    ) -> Prefix {
        let on_disk = initial
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let s = cuts.range(i).0;
                if n > 0 { vec![(s, s + n)] } else { Vec::new() }
            })
            .collect();
        let recorded = initial
            .iter()
            .enumerate()
            .map(|(i, &n)| n == cuts.len(i))
            .collect();
        Prefix {
            file,
            map,
            cuts,
            on_disk,
            recorded,
            pieces: HashMap::new(),
            first_open: 0,
            fed,
            hasher,
            sink,
            spent: Default::default(),
        }
    }

    fn complete(&self, i: usize) -> bool {
        self.on_disk[i].first().copied() == Some(self.cuts.range(i))
    }

    /// Where the contiguous prefix on disk ends.
    pub fn end(&mut self) -> u64 {
        while self.first_open < self.on_disk.len() && self.complete(self.first_open) {
            self.first_open += 1;
        }
        let i = self.first_open;
        if i == self.on_disk.len() {
            return self.cuts.size;
        }
        let start = self.cuts.range(i).0;
        match self.on_disk[i].first() {
            Some(&(s, e)) if s == start => e,
            _ => start,
        }
    }

    /// Chunk `chunk` has the bytes `from..to` on disk.
    fn add(&mut self, chunk: usize, from: u64, to: u64) -> std::io::Result<()> {
        if to <= from {
            return Ok(());
        }
        let spans = &mut self.on_disk[chunk];
        spans.push((from, to));
        spans.sort_unstable();
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(spans.len());
        for &(s, e) in spans.iter() {
            match merged.last_mut() {
                Some(last) if s <= last.1 => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        *spans = merged;
        if !self.recorded[chunk] && self.complete(chunk) {
            use std::io::Write;
            self.recorded[chunk] = true;
            writeln!(self.map, "{chunk}")?;
            tracing::trace!("chunk {chunk} complete on disk");
        }
        Ok(())
    }

    fn take(&mut self, batch: &[Bytes]) {
        let t = Instant::now();
        for b in batch {
            self.hasher.update(b);
        }
        let t1 = Instant::now();
        self.spent[1] += t1 - t;
        if let Some(s) = self.sink.as_mut() {
            s.feed(batch);
        }
        self.spent[2] += t1.elapsed();
    }

    /// Hashes and feeds what the file holds up to the prefix's end.
    pub fn catch_up(&mut self) -> std::io::Result<()> {
        let end = self.end();
        while self.fed < end {
            let t = Instant::now();
            let n = ((end - self.fed) as usize).min(READ_BACK);
            let bytes = Bytes::copy_from_slice(self.file.read_at(self.fed, n)?);
            self.spent[3] += t.elapsed();
            self.fed += bytes.len() as u64;
            self.take(&[bytes]);
        }
        Ok(())
    }

    pub fn handle(&mut self, m: Msg) -> std::io::Result<()> {
        match m {
            Msg::Data {
                chunk,
                key,
                offset,
                batch,
            } => {
                let (_, from) = *self.pieces.entry(key).or_insert((chunk, offset));
                let t = Instant::now();
                let written = self.file.write(key, offset, &batch)?;
                self.spent[0] += t.elapsed();
                self.add(chunk, from, written)?;
                // In order: hashed and fed from memory, not read back.
                if offset == self.fed {
                    self.take(&batch);
                    self.fed += batch.iter().map(|b| b.len() as u64).sum::<u64>();
                }
            }
            Msg::Done(key) => {
                if let Some((chunk, from)) = self.pieces.remove(&key) {
                    let t = Instant::now();
                    let written = self.file.flush(key)?;
                    self.spent[0] += t.elapsed();
                    if let Some(written) = written {
                        self.add(chunk, from, written)?;
                    }
                }
            }
        }
        self.catch_up()
    }

    /// The debug log's account of the writer's time.
    pub fn spent(&self) -> String {
        let [w, h, f, r] = self.spent.map(|d| d.as_secs_f64());
        format!(
            "the writer spent {w:.3} s writing, {h:.3} s hashing, {f:.3} s feeding the unpack, \
             {r:.3} s reading back"
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;

    /// Pieces of every chunk (some chunks cut in two, as a free connection does) arrive in
    /// batches of odd sizes, interleaved in a different order per seed, after a stream that
    /// handed over inside chunk 0: the prefix hashes the whole blob exactly once, in order,
    /// and lists every chunk in the map once.
    #[test]
    fn pieces_in_any_order_hash_the_blob_once_in_order() {
        let size: u64 = 5 * 1024 * 1024 + 777;
        let cuts = Cuts {
            size,
            chunk: 1024 * 1024 + 4096 + 5,
        };
        let blob: Vec<u8> = (0..size).map(|i| (i * 13 + i / 1021) as u8).collect();
        let handed = 123_457u64;
        for seed in 1..=6u64 {
            let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let mut next = move |n: u64| {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng % n
            };
            let dir = tempfile::tempdir_in(env!("CARGO_MANIFEST_DIR")).unwrap();
            let rw = |name: &str| {
                std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(dir.path().join(name))
                    .unwrap()
            };
            let file = rw("data");
            file.set_len(size).unwrap();
            file.write_all_at(&blob[..handed as usize], 0).unwrap();
            let direct = std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(dir.path().join("data"))
                .ok()
                .filter(|f| crate::fsutil::set_direct(f, seed % 2 == 0).is_ok());
            let mut hasher = crate::oci::Algorithm::Sha256.hasher();
            hasher.update(&blob[..handed as usize]);
            let initial: Vec<u64> = (0..cuts.count())
                .map(|i| {
                    let (s, e) = cuts.range(i);
                    handed.clamp(s, e) - s
                })
                .collect();
            let mut prefix = Prefix::new(
                ChunkData::new(file, direct),
                rw("map"),
                cuts,
                &initial,
                handed,
                hasher,
                None,
            );
            // The pieces: (chunk, key, next byte, end); every other chunk cut in two.
            let mut pieces: Vec<(usize, usize, u64, u64)> = Vec::new();
            for (i, got) in initial.iter().enumerate() {
                let (s, e) = cuts.range(i);
                let from = s + got;
                let mid = from + (e - from) / 2;
                if i % 2 == 1 && mid > from {
                    pieces.push((i, pieces.len(), from, mid));
                    pieces.push((i, pieces.len(), mid, e));
                } else {
                    pieces.push((i, pieces.len(), from, e));
                }
            }
            while !pieces.is_empty() {
                let p = next(pieces.len() as u64) as usize;
                let (chunk, key, at, end) = pieces[p];
                let n = (next(300_000) + 1).min(end - at);
                let bytes = Bytes::copy_from_slice(&blob[at as usize..(at + n) as usize]);
                let (a, b) = (
                    bytes.slice(..bytes.len() / 2),
                    bytes.slice(bytes.len() / 2..),
                );
                prefix
                    .handle(Msg::Data {
                        chunk,
                        key,
                        offset: at,
                        batch: vec![a, b],
                    })
                    .unwrap();
                pieces[p].2 += n;
                if pieces[p].2 == end {
                    prefix.handle(Msg::Done(key)).unwrap();
                    pieces.swap_remove(p);
                }
            }
            assert_eq!(prefix.end(), size, "seed {seed}");
            assert_eq!(prefix.fed, size, "seed {seed}");
            let Prefix { hasher, .. } = prefix;
            assert_eq!(
                hasher.finish(),
                crate::oci::Digest::sha256(&blob),
                "seed {seed}"
            );
            let mut listed: Vec<usize> = std::fs::read_to_string(dir.path().join("map"))
                .unwrap()
                .lines()
                .map(|l| l.parse().unwrap())
                .collect();
            listed.sort();
            assert_eq!(listed, (0..cuts.count()).collect::<Vec<_>>(), "seed {seed}");
            assert!(std::fs::read(dir.path().join("data")).unwrap() == blob);
        }
    }
}
