//! A blob fetched in chunks (SPEC §13): written in place into `ingest/<hex>.chunks` (sized to
//! the blob at once, each chunk at its offset), with `ingest/<hex>.chunks.map` listing the
//! chunks complete so far. Both stay when a run ends without the blob (a deadline, a signal,
//! `kill -9`): the next run fetches only the chunks the map does not list, and hashes the
//! whole file again before it counts. The store's lock keeps two runs apart, so the names
//! need no claiming.
//!
//! The map is a hint, not a proof: a chunk it lists but the disk lost (a power cut before the
//! write-back) only makes the digest differ at the end, and the blob is fetched again.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsFd;

use super::placed::ChunkData;
use super::{FILE_MODE, Store, ctx};
use crate::fsutil;
use crate::oci::Digest;

/// The suffixes of a chunked blob's data and map in `ingest/`.
pub(super) const CHUNKS: &str = ".chunks";
pub(super) const MAP: &str = ".chunks.map";
/// The map's first line: format, blob size, chunk size.
const HEADER: &str = "kci-chunks 1";

/// A chunked blob being fetched: its data file, its map (a line per complete chunk, written
/// by the fetch), what is already there.
#[derive(Debug)]
pub struct Chunked<'a> {
    store: &'a Store,
    hex: String,
    pub file: File,
    map: File,
    /// The chunks the map lists as complete (what an earlier run fetched).
    pub done: Vec<bool>,
    /// Whether the store writes this blob with `O_DIRECT` ([`Store::direct_for`]).
    direct: bool,
}

impl Chunked<'_> {
    /// The data file as a writer thread writes and reads it, and the map (at its end: a line
    /// written there records a complete chunk).
    pub fn handles(&self) -> io::Result<(ChunkData, File)> {
        // Opened again: O_DIRECT is a flag of the open file, not of the descriptor.
        let direct = match self.direct {
            true => {
                let dir = self.store.ingest_dir()?;
                let f = fsutil::open_rw(dir, &format!("{}{CHUNKS}", self.hex))?;
                fsutil::set_direct(&f, true).ok().map(|_| f)
            }
            false => None,
        };
        let data = ChunkData::new(self.file.try_clone()?, direct);
        Ok((data, self.map.try_clone()?))
    }

    /// Moves the verified data into `blobs/` as `digest` (flushed first) and drops the map.
    pub fn commit(self, digest: &Digest) -> io::Result<()> {
        self.file.sync_all()?;
        let s = self.store;
        let dir = s.ingest_dir()?;
        fsutil::rename(
            dir,
            &format!("{}{CHUNKS}", self.hex),
            s.alg_dir(digest.algorithm())?,
            digest.hex(),
        )
        .map_err(ctx(&s.blob_path(digest), "cannot move blob to"))?;
        let _ = fsutil::remove(dir, &format!("{}{MAP}", self.hex));
        Ok(())
    }

    /// Removes the data and the map (content that did not match: nothing of it is kept).
    pub fn discard(self) {
        if let Ok(dir) = self.store.ingest_dir() {
            let _ = fsutil::remove(dir, &format!("{}{CHUNKS}", self.hex));
            let _ = fsutil::remove(dir, &format!("{}{MAP}", self.hex));
        }
    }
}

/// What a map says: the complete chunks, if it is a map of this blob cut in these chunks.
fn parse_map(text: &str, size: u64, chunk: u64, chunks: usize) -> Option<Vec<bool>> {
    let mut lines = text.lines();
    if lines.next()? != format!("{HEADER} {size} {chunk}") {
        return None;
    }
    let mut done = vec![false; chunks];
    // A line cut by a kill is ignored; so is anything that is not a chunk of this blob.
    for l in lines {
        if let Some(d) = l.parse::<usize>().ok().and_then(|i| done.get_mut(i)) {
            *d = true;
        }
    }
    Some(done)
}

/// Takes up `ingest/<hex>.chunks` holding the blob's first `upto` bytes (a stream that went on
/// in chunks): sized to the blob, a new map listing the chunks it holds whole.
pub(super) fn adopt<'a>(
    store: &'a Store,
    digest: &Digest,
    size: u64,
    chunk: u64,
    upto: u64,
) -> io::Result<Chunked<'a>> {
    let dir = store.ingest_dir()?;
    let hex = digest.hex().to_string();
    let (data, map) = (format!("{hex}{CHUNKS}"), format!("{hex}{MAP}"));
    let file = fsutil::open_rw(dir, &data)
        .map_err(ctx(&store.root.join("ingest").join(&data), "cannot open"))?;
    file.set_len(size)?;
    let _ = fsutil::remove(dir, &map);
    let mut map_file = fsutil::create_new(dir, &map, FILE_MODE)
        .and_then(|_| fsutil::open_rw(dir, &map))
        .map_err(ctx(&store.root.join("ingest").join(&map), "cannot create"))?;
    writeln!(map_file, "{HEADER} {size} {chunk}")?;
    let chunks = size.div_ceil(chunk) as usize;
    let mut done = vec![false; chunks];
    for (i, d) in done.iter_mut().enumerate() {
        if ((i as u64 + 1) * chunk).min(size) <= upto {
            *d = true;
            writeln!(map_file, "{i}")?;
        }
    }
    Ok(Chunked {
        store,
        hex,
        file,
        map: map_file,
        done,
        direct: store.direct_for(size),
    })
}

impl Store {
    /// Whether an earlier run left chunks of `digest` (its data file and map).
    pub fn has_chunks(&self, digest: &Digest) -> bool {
        self.ingest_dir().is_ok_and(|dir| {
            fsutil::regular_file_size(dir, &format!("{}{MAP}", digest.hex())).is_some()
                && fsutil::regular_file_size(dir, &format!("{}{CHUNKS}", digest.hex())).is_some()
        })
    }

    /// The chunked ingest of `digest` (`size` bytes cut in chunks of `chunk`): what an earlier
    /// run left of it (same size and chunking), or a new one sized to the blob.
    pub fn begin_chunked(&self, digest: &Digest, size: u64, chunk: u64) -> io::Result<Chunked<'_>> {
        let dir = self.ingest_dir()?;
        let hex = digest.hex().to_string();
        let (data, map) = (format!("{hex}{CHUNKS}"), format!("{hex}{MAP}"));
        let chunks = size.div_ceil(chunk) as usize;
        let shown = self.root.join("ingest").join(&map);
        let kept = match (
            fsutil::regular_file_size(dir, &data),
            fsutil::read_file(dir, &map, 1 << 20, &shown).ok().flatten(),
        ) {
            (Some(len), Some(text)) if len == size => {
                parse_map(&String::from_utf8_lossy(&text), size, chunk, chunks)
            }
            _ => None,
        };
        if let Some(done) = kept {
            let open = |name: &str| {
                fsutil::open_rw(dir, name)
                    .map_err(ctx(&self.root.join("ingest").join(name), "cannot open"))
            };
            let file = open(&data)?;
            let mut map = open(&map)?;
            use std::io::Seek;
            map.seek(io::SeekFrom::End(0))?;
            let n = done.iter().filter(|d| **d).count();
            if n > 0 {
                tracing::info!(
                    digest = %digest,
                    "resuming a chunked download: {n} of {chunks} chunks are on disk"
                );
            }
            return Ok(Chunked {
                store: self,
                hex,
                file,
                map,
                done,
                direct: self.direct_for(size),
            });
        }
        // Read back as the prefix grows: opened for reading and writing.
        let fresh = |name: &str| -> io::Result<File> {
            let _ = fsutil::remove(dir.as_fd(), name);
            fsutil::create_new(dir, name, FILE_MODE)
                .and_then(|_| fsutil::open_rw(dir, name))
                .map_err(ctx(&self.root.join("ingest").join(name), "cannot create"))
        };
        let file = fresh(&data)?;
        file.set_len(size)?;
        let mut map_file = fresh(&map)?;
        writeln!(map_file, "{HEADER} {size} {chunk}")?;
        Ok(Chunked {
            store: self,
            hex,
            file,
            map: map_file,
            done: vec![false; chunks],
            direct: self.direct_for(size),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_map_is_read_only_for_its_blob_and_chunking() {
        let text = format!("{HEADER} 100 40\n0\n2\n7\nx\n2");
        assert_eq!(parse_map(&text, 100, 40, 3), Some(vec![true, false, true]));
        assert_eq!(parse_map(&text, 101, 40, 3), None);
        assert_eq!(parse_map(&text, 100, 50, 2), None);
        assert_eq!(parse_map("garbage", 100, 40, 3), None);
    }

    /// What a run left is taken up by the next one: the data file keeps its bytes, the map
    /// its chunks; another chunking starts again; commit moves the data into blobs/.
    #[test]
    fn chunks_survive_the_run_and_commit_moves_the_blob() {
        use std::os::unix::fs::FileExt;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let bytes: Vec<u8> = (0..100u8).collect();
        let digest = Digest::sha256(&bytes);
        {
            let c = store.begin_chunked(&digest, 100, 40).unwrap();
            assert_eq!(c.done, vec![false; 3]);
            let (mut data, mut map) = c.handles().unwrap();
            data.write(1, 40, &[&bytes[40..80]]).unwrap();
            data.flush(1).unwrap();
            writeln!(map, "1").unwrap();
        }
        drop(store);
        // Opening the store again keeps them (they are not leftovers).
        let store = Store::open(dir.path()).unwrap();
        let c = store.begin_chunked(&digest, 100, 40).unwrap();
        assert_eq!(c.done, vec![false, true, false]);
        let mut back = vec![0u8; 40];
        c.file.read_exact_at(&mut back, 40).unwrap();
        assert_eq!(back, &bytes[40..80]);
        drop(c);
        assert!(store.check(false, &|_| false).unwrap().is_empty());
        let c = store.begin_chunked(&digest, 100, 50).unwrap();
        assert_eq!(c.done, vec![false, false], "another chunking starts again");
        c.file.write_all_at(&bytes, 0).unwrap();
        c.commit(&digest).unwrap();
        assert!(store.has_blob(&digest, 100));
        let ingest: Vec<_> = std::fs::read_dir(dir.path().join("ingest"))
            .unwrap()
            .collect();
        assert!(ingest.is_empty(), "{ingest:?}");
    }
}
