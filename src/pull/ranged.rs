//! Large blobs over parallel `Range` requests (SPEC §13): a blob larger than the chunk size
//! whose stream proves slow (`blob.rs` hands it over), or one an earlier run left in chunks, is
//! cut in chunks fetched by up to `--layer-connections` workers (each holding a download slot
//! of the run while it fetches), every chunk written in place at its offset in
//! `ingest/<hex>.chunks`. One writer thread writes what arrives, records complete chunks in
//! the map (a later run fetches only the others), and hashes and feeds the unpack in order as
//! the contiguous prefix grows: bytes that arrive in order go straight from memory, the rest
//! is read back from the file once the chunks before it are complete. Memory stays bounded
//! by the batches in flight, whatever the blob's size; the digest of the whole blob is
//! verified before it is committed.
//!
//! Each chunk is retried and resumed on its own (its own `Range`), under the run's retry,
//! low-speed and deadline rules. A registry that does not say `Accept-Ranges: bytes`, or that
//! answers a chunk's `Range` with the whole blob, is used as one stream.

use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

use bytes::Bytes;
use reqwest::header::{ACCEPT_RANGES, CONTENT_RANGE, HeaderMap, HeaderValue, RANGE};
use reqwest::{Method, StatusCode, Url};
use tokio::sync::mpsc;

use super::retry::{Failure, redact};
use super::session::Session;
use super::{Chunking, PullError, Why, join_all};
use crate::layers::store::Staging;
use crate::layers::stream::StreamUnpack;
use crate::layers::{UnpackError, Unpacked};
use crate::oci::manifest::Descriptor;
use crate::store::Store;

/// Bytes gathered from one connection before they go to the writer thread.
const WRITE_BATCH: usize = 512 << 10;
/// Batches queued for the writer thread (over all connections of the blob): 8 MiB.
const QUEUE: usize = 16;
/// Read back from the file at a time, when a later chunk joins the prefix.
const READ_BACK: usize = 1 << 20;

/// What the connections tell the writer thread.
enum Msg {
    /// Bytes of chunk `chunk` at `offset` of the blob (in order within the chunk).
    Data {
        chunk: usize,
        offset: u64,
        batch: Vec<Bytes>,
    },
    /// Chunk `chunk` is complete.
    Done(usize),
}

/// The blob's chunks: `size` bytes cut every `chunk` bytes.
#[derive(Clone, Copy)]
struct Cuts {
    size: u64,
    chunk: u64,
}

impl Cuts {
    fn count(self) -> usize {
        self.size.div_ceil(self.chunk) as usize
    }
    /// The bytes `start..end` of chunk `i`.
    fn range(self, i: usize) -> (u64, u64) {
        let start = i as u64 * self.chunk;
        (start, (start + self.chunk).min(self.size))
    }
    fn len(self, i: usize) -> u64 {
        let (s, e) = self.range(i);
        e - s
    }
}

/// The writer thread's side: the file, what each chunk has on disk, the hash and the unpack
/// of the contiguous prefix.
struct Prefix {
    file: std::fs::File,
    map: std::fs::File,
    cuts: Cuts,
    /// Bytes on disk from each chunk's start.
    got: Vec<u64>,
    /// The first chunk not complete.
    first_open: usize,
    /// Bytes hashed and fed so far (a prefix of the blob).
    fed: u64,
    hasher: crate::oci::digest::Hasher,
    sink: Option<StreamUnpack>,
    buf: Vec<u8>,
}

impl Prefix {
    /// Where the contiguous prefix on disk ends.
    fn end(&mut self) -> u64 {
        while self.first_open < self.got.len()
            && self.got[self.first_open] == self.cuts.len(self.first_open)
        {
            self.first_open += 1;
        }
        match self.first_open {
            i if i == self.got.len() => self.cuts.size,
            i => self.cuts.range(i).0 + self.got[i],
        }
    }

    fn take(&mut self, batch: &[Bytes]) {
        for b in batch {
            self.hasher.update(b);
        }
        if let Some(s) = self.sink.as_mut() {
            s.feed(batch);
        }
    }

    /// Hashes and feeds what the file holds up to the prefix's end.
    fn catch_up(&mut self) -> std::io::Result<()> {
        let end = self.end();
        while self.fed < end {
            let n = ((end - self.fed) as usize).min(READ_BACK);
            let mut buf = std::mem::take(&mut self.buf);
            self.file.read_exact_at(&mut buf[..n], self.fed)?;
            self.take(&[Bytes::copy_from_slice(&buf[..n])]);
            self.buf = buf;
            self.fed += n as u64;
        }
        Ok(())
    }

    fn handle(&mut self, m: Msg) -> std::io::Result<()> {
        match m {
            Msg::Data {
                chunk,
                offset,
                batch,
            } => {
                let mut at = offset;
                for b in &batch {
                    self.file.write_all_at(b, at)?;
                    at += b.len() as u64;
                }
                // The disk works while the network delivers: the fsync before the commit has
                // little left to write.
                crate::store::start_writeback(&self.file, offset, at - offset);
                self.got[chunk] = at - self.cuts.range(chunk).0;
                // In order: hashed and fed from memory, not read back.
                if offset == self.fed {
                    self.take(&batch);
                    self.fed = at;
                }
                self.catch_up()
            }
            Msg::Done(i) => {
                use std::io::Write;
                writeln!(self.map, "{i}")
            }
        }
    }
}

type Unpack = Option<(Staging, Result<Unpacked, UnpackError>)>;

/// Where a chunked fetch starts.
pub(super) enum Start<'a> {
    /// From what an earlier run left (or nothing), with a fresh unpack.
    Fresh(Option<(Staging, StreamUnpack)>),
    /// From a stream that proved slow: its file (now the chunked data), its hash and unpack.
    Handed(Box<(crate::store::Chunked<'a>, Handoff)>),
}

/// A stream handed over to chunks: the hash of the blob's first `at` bytes (written to its
/// partial file), the unpack fed with them, the bytes received.
pub(super) struct Handoff {
    pub hasher: crate::oci::Hasher,
    pub at: u64,
    pub unpack: Option<(Staging, StreamUnpack)>,
    pub network: u64,
}

/// When a stream hands the rest of its blob over to chunks: if, `after` its body started, it
/// has brought less than one `chunk` and more than one is left.
#[derive(Debug, Clone, Copy)]
pub(super) struct Switch {
    pub after: std::time::Duration,
    pub chunk: u64,
}

impl Session {
    /// Whether this registry serves `Range` requests for blobs: `Accept-Ranges: bytes` on the
    /// blob's `HEAD` (asked once per host and run; a failed question is asked again later).
    pub(super) async fn serves_ranges(&self, repo: &str, desc: &Descriptor) -> bool {
        if let Some(known) = self.ranges() {
            return known;
        }
        let url = self.url(&format!("/{repo}/blobs/{}", desc.digest));
        match self.get(Method::HEAD, repo, url, HeaderMap::new()).await {
            Ok(resp) if resp.status().is_success() => {
                let yes = resp
                    .headers()
                    .get(ACCEPT_RANGES)
                    .and_then(|v| v.to_str().ok())
                    .is_some_and(|v| v.eq_ignore_ascii_case("bytes"));
                if !yes {
                    tracing::info!(host = %self.label, "{} does not say Accept-Ranges: bytes; large blobs come in one stream", self.label);
                }
                self.set_ranges(yes);
                yes
            }
            _ => false,
        }
    }

    /// Fetches `desc` in chunks over parallel `Range` requests into the store's ingest,
    /// feeding `unpack` in order; verified, then committed into `blobs/`. Returns the bytes
    /// received over the network and the unpack's outcome. If the registry answers a chunk's
    /// `Range` with the whole blob, the session learns it ([`Session::ranges`]) and an error
    /// is returned: the caller fetches the blob as one stream.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn fetch_blob_ranged(
        &self,
        repo: &str,
        desc: &Descriptor,
        store: &Store,
        progress: &AtomicU64,
        slots: &tokio::sync::Semaphore,
        start: Start<'_>,
        chunking: Chunking,
    ) -> Result<(u64, Unpack), PullError> {
        let store_error =
            |e: std::io::Error| PullError::disk(format!("blob {}: {e}", desc.digest), store.root());
        let cuts = Cuts {
            size: desc.size,
            chunk: chunking.size,
        };
        // The blob's own download slot, as a single stream holds one.
        let slot = slots
            .acquire()
            .await
            .map_err(|e| PullError::new(e.to_string()))?;
        // What is on disk: the chunks an earlier run completed, or the stream's first bytes.
        let (chunked, got, fed, hasher, unpack, counted, network) = match start {
            Start::Fresh(unpack) => {
                let chunked = store
                    .begin_chunked(&desc.digest, cuts.size, cuts.chunk)
                    .map_err(store_error)?;
                let got: Vec<u64> = (0..cuts.count())
                    .map(|i| if chunked.done[i] { cuts.len(i) } else { 0 })
                    .collect();
                let hasher = desc.digest.algorithm().hasher();
                (chunked, got, 0, hasher, unpack, 0, 0)
            }
            Start::Handed(handed) => {
                let (chunked, h) = *handed;
                let got: Vec<u64> = (0..cuts.count())
                    .map(|i| {
                        let (s, e) = cuts.range(i);
                        h.at.clamp(s, e) - s
                    })
                    .collect();
                (chunked, got, h.at, h.hasher, h.unpack, h.at, h.network)
            }
        };
        let pending: Vec<usize> = (0..cuts.count())
            .filter(|i| got[*i] < cuts.len(*i))
            .collect();
        // The stream counted its own bytes.
        let already: u64 = got.iter().sum::<u64>() - counted;
        progress.fetch_add(already, Ordering::Relaxed);
        let (file, map) = chunked.handles().map_err(store_error)?;
        let (staging, sink) = match unpack {
            Some((staging, sink)) => (Some(staging), Some(sink)),
            None => (None, None),
        };
        let initial = got.clone();
        let mut prefix = Prefix {
            file,
            map,
            cuts,
            got,
            first_open: 0,
            fed,
            hasher,
            sink,
            buf: vec![0u8; READ_BACK],
        };
        let (tx, mut rx) = mpsc::channel::<Msg>(QUEUE);
        let writer = tokio::task::spawn_blocking(move || {
            // The staging directory belongs to the unpack: dropped only after it ended.
            let staging = staging;
            let result = prefix.catch_up().and_then(|_| {
                while let Some(m) = rx.blocking_recv() {
                    prefix.handle(m)?;
                }
                Ok(())
            });
            let end = prefix.end();
            let complete = result.is_ok() && prefix.fed == end && end == prefix.cuts.size;
            let unpacked = prefix.sink.take().map(|s| match complete {
                true => s.finish(),
                // Dropped: its thread is stopped and joined before the staging goes.
                false => Err(UnpackError::Decompress(std::io::Error::other(
                    "the blob is not complete",
                ))),
            });
            result.map(|_| ((prefix.hasher.finish(), prefix.fed), staging.zip(unpacked)))
        });
        let url = self.url(&format!("/{repo}/blobs/{}", desc.digest));
        let next = AtomicUsize::new(0);
        let failed = AtomicBool::new(false);
        let network = AtomicU64::new(network);
        let workers = chunking.connections.min(pending.len()).max(1);
        let run = Chunks {
            session: self,
            repo,
            url: &url,
            desc,
            cuts,
            pending: &pending,
            initial: &initial,
            next: &next,
            failed: &failed,
            tx: &tx,
            progress,
            network: &network,
            slots,
        };
        let results = join_all((0..workers).map(|w| run.worker(w == 0)).collect()).await;
        drop(tx);
        drop(slot);
        let written = writer.await.map_err(PullError::writer_failed)?;
        // A writer that failed (a full disk) is the cause of the connections' "writer stopped".
        let ((digest, n), unpacked) = match (written, results.into_iter().find_map(Result::err)) {
            (Err(io), _) => return Err(store_error(io)),
            (Ok(_), Some(e)) => {
                // Ranges refused: the blob comes again as one stream, from its start.
                if self.ranges() == Some(false) {
                    progress
                        .fetch_sub(already + network.load(Ordering::Relaxed), Ordering::Relaxed);
                    chunked.discard();
                }
                return Err(e);
            }
            (Ok(w), None) => w,
        };
        if digest != desc.digest || n != cuts.size {
            chunked.discard();
            return Err(PullError::Mismatch(Why {
                message: format!(
                    "blob content does not match: expected {} ({} bytes), got {digest} ({n} bytes)",
                    desc.digest, cuts.size
                ),
                hint: Some(format!(
                    "{} or something in between served wrong bytes; nothing was stored",
                    self.route().registry
                )),
            }));
        }
        chunked.commit(&desc.digest).map_err(store_error)?;
        Ok((network.load(Ordering::Relaxed), unpacked))
    }
}

/// The chunks of one blob and the connections that fetch them.
struct Chunks<'a> {
    session: &'a Session,
    repo: &'a str,
    url: &'a Url,
    desc: &'a Descriptor,
    cuts: Cuts,
    /// The chunks to fetch, in order; `next` indexes it.
    pending: &'a [usize],
    /// What each chunk has on disk already (from its start).
    initial: &'a [u64],
    next: &'a AtomicUsize,
    /// Set by a connection that failed: the others take no new chunk.
    failed: &'a AtomicBool,
    tx: &'a mpsc::Sender<Msg>,
    progress: &'a AtomicU64,
    network: &'a AtomicU64,
    slots: &'a tokio::sync::Semaphore,
}

impl Chunks<'_> {
    /// One connection: takes the next chunk in order until none is left. The first uses the
    /// blob's own slot, the others one of the run's each while they fetch.
    async fn worker(&self, first: bool) -> Result<(), PullError> {
        loop {
            if self.failed.load(Ordering::Relaxed) {
                return Ok(());
            }
            let k = self.next.fetch_add(1, Ordering::Relaxed);
            let Some(&i) = self.pending.get(k) else {
                return Ok(());
            };
            let _slot = match first {
                true => None,
                false => Some(
                    self.slots
                        .acquire()
                        .await
                        .map_err(|e| PullError::new(e.to_string()))?,
                ),
            };
            if let Err(e) = self.fetch(i).await {
                self.failed.store(true, Ordering::Relaxed);
                return Err(e);
            }
        }
    }

    /// Chunk `i`, resumed on its own after a transient failure.
    async fn fetch(&self, i: usize) -> Result<(), PullError> {
        let s = self.session;
        let (start, end) = self.cuts.range(i);
        let len = end - start;
        let size = self.cuts.size;
        let digest = &self.desc.digest;
        let gone = || {
            Failure::Fatal(PullError::Registry(Why {
                message: "the blob writer stopped".into(),
                hint: None,
            }))
        };
        let mut got: u64 = self.initial[i];
        s.retrying(&format!("blob {digest} bytes {start}-{}", end - 1), async || {
            let from = start + got;
            let mut h = HeaderMap::new();
            h.insert(RANGE, HeaderValue::from_str(&format!("bytes={from}-{}", end - 1)).expect("ascii"));
            let mut resp = s.get(Method::GET, self.repo, self.url.clone(), h).await?;
            match resp.status() {
                StatusCode::PARTIAL_CONTENT => {
                    let said = resp.headers().get(CONTENT_RANGE).and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
                    if said != format!("bytes {from}-{}/{size}", end - 1) && said != format!("bytes {from}-{}/*", end - 1) {
                        return Err(Failure::Retry {
                            message: format!("asked for bytes {from}-{}, the registry answered Content-Range {said:?}", end - 1),
                            after: None,
                        });
                    }
                }
                StatusCode::OK => {
                    s.set_ranges(false);
                    return Err(Failure::Fatal(PullError::Registry(Why {
                        message: format!("{} answered a Range request with the whole blob", s.label),
                        hint: None,
                    })));
                }
                _ => return Err(s.failure_of(resp, &format!("GET {} (bytes {from}-{})", redact(self.url), end - 1)).await),
            }
            let mut batch: Vec<Bytes> = Vec::new();
            let (mut batch_len, mut at) = (0usize, from);
            let mut speed = s.low_speed();
            loop {
                match speed.chunk(&mut resp).await {
                    Ok(Some(b)) => {
                        if got + b.len() as u64 > len {
                            return Err(Failure::Fatal(PullError::WrongContent(Why {
                                message: format!("blob {digest}: the registry sent more than the bytes {start}-{} asked for", end - 1),
                                hint: Some("the registry serves content that does not match the manifest".into()),
                            })));
                        }
                        got += b.len() as u64;
                        self.progress.fetch_add(b.len() as u64, Ordering::Relaxed);
                        self.network.fetch_add(b.len() as u64, Ordering::Relaxed);
                        batch_len += b.len();
                        batch.push(b);
                        if batch_len >= WRITE_BATCH {
                            let offset = at;
                            at += batch_len as u64;
                            batch_len = 0;
                            self.tx.send(Msg::Data { chunk: i, offset, batch: std::mem::take(&mut batch) }).await.map_err(|_| gone())?;
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        // What arrived is valid: kept, the chunk resumes after it.
                        if !batch.is_empty() {
                            self.tx.send(Msg::Data { chunk: i, offset: at, batch }).await.map_err(|_| gone())?;
                        }
                        return Err(e.into_failure(&format!("chunk interrupted at {} of bytes {start}-{}", start + got, end - 1)));
                    }
                }
            }
            if !batch.is_empty() {
                self.tx.send(Msg::Data { chunk: i, offset: at, batch }).await.map_err(|_| gone())?;
            }
            if got < len {
                return Err(Failure::Retry { message: format!("chunk body ended at {} of bytes {start}-{}", start + got, end - 1), after: None });
            }
            Ok(())
        })
        .await?;
        self.tx
            .send(Msg::Done(i))
            .await
            .map_err(|_| PullError::new("the blob writer stopped"))
    }
}

/// Whether `digest` is worth fetching in chunks with `chunking`.
pub(super) fn worth_chunking(desc: &Descriptor, chunking: Chunking) -> bool {
    chunking.connections > 1 && desc.size > chunking.size
}
