//! Large blobs over parallel `Range` requests (SPEC §13): a blob larger than the chunk size
//! whose stream proves slow (`blob.rs` hands it over), or one an earlier run left in chunks, is
//! cut in chunks fetched by up to `--layer-connections` connections (each holding a download
//! slot of the run while it fetches), every chunk written in place at its offset in
//! `ingest/<hex>.chunks`; once every chunk is started, a free connection takes the second half
//! of the piece with the most left (`board.rs`). One writer thread (`prefix.rs`) writes what
//! arrives, records complete chunks in the map (a later run fetches only the others), and
//! hashes and feeds the unpack in order as the contiguous prefix grows. Memory stays bounded
//! by the batches in flight, whatever the blob's size; the digest of the whole blob is
//! verified before it is committed.
//!
//! Each piece is retried and resumed on its own (its own `Range`), under the run's retry,
//! low-speed and deadline rules. A registry that does not say `Accept-Ranges: bytes`, or that
//! answers a chunk's `Range` with the whole blob, is used as one stream.

mod board;
mod prefix;

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

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
use board::{Board, Piece};
use prefix::{Cuts, Msg, Prefix};

/// Bytes gathered from one connection before they go to the writer thread.
const WRITE_BATCH: usize = 512 << 10;
/// Batches queued for the writer thread (over all connections of the blob): 8 MiB.
const QUEUE: usize = 16;

/// A layer's unpack and its outcome, when the blob is whole.
pub(super) type Unpack = Option<(Staging, Result<Unpacked, UnpackError>)>;

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
        // The stream counted its own bytes.
        let already: u64 = got.iter().sum::<u64>() - counted;
        progress.fetch_add(already, Ordering::Relaxed);
        let (file, map) = chunked.handles().map_err(store_error)?;
        let (staging, sink) = match unpack {
            Some((staging, sink)) => (Some(staging), Some(sink)),
            None => (None, None),
        };
        let todo: Vec<(usize, u64, u64)> = (0..cuts.count())
            .filter(|i| got[*i] < cuts.len(*i))
            .map(|i| {
                let (s, e) = cuts.range(i);
                (i, s + got[i], e)
            })
            .collect();
        let mut prefix = Prefix::new(file, map, cuts, &got, fed, hasher, sink);
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
            tracing::debug!(
                "chunked blob: {} of {} bytes hashed and fed; {}",
                prefix.fed,
                cuts.size,
                prefix.spent()
            );
            let complete = result.is_ok() && prefix.fed == end && end == cuts.size;
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
        let failed = AtomicBool::new(false);
        let network = AtomicU64::new(network);
        // As many connections as allowed: once the chunks are all started, they share the
        // rest of the pieces in flight.
        let connections = chunking.connections.max(1);
        let run = Chunks {
            session: self,
            repo,
            url: &url,
            desc,
            board: Mutex::new(Board::new(todo, connections)),
            failed: &failed,
            tx: &tx,
            progress,
            network: &network,
            slots,
        };
        let results = join_all((0..connections).map(|c| run.worker(c)).collect()).await;
        tracing::debug!(digest = %desc.digest, "every piece fetched");
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
    board: Mutex<Board>,
    /// Set by a connection that failed: the others take no new piece.
    failed: &'a AtomicBool,
    tx: &'a mpsc::Sender<Msg>,
    progress: &'a AtomicU64,
    network: &'a AtomicU64,
    slots: &'a tokio::sync::Semaphore,
}

impl Chunks<'_> {
    fn board(&self) -> std::sync::MutexGuard<'_, Board> {
        // A connection that panicked while holding it leaves a board still consistent.
        self.board.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Connection `c`: takes the next piece until none is left. The first uses the blob's own
    /// download slot, the others one of the run's each while they fetch.
    async fn worker(&self, c: usize) -> Result<(), PullError> {
        loop {
            let _slot = match c {
                0 => None,
                _ => Some(
                    self.slots
                        .acquire()
                        .await
                        .map_err(|e| PullError::new(e.to_string()))?,
                ),
            };
            if self.failed.load(Ordering::Relaxed) {
                return Ok(());
            }
            let Some(piece) = self.board().take(c) else {
                return Ok(());
            };
            let fetched = self.fetch(c, piece).await;
            self.board().finish(c);
            // What the piece staged goes to the file, complete or not.
            let told = self.tx.send(Msg::Done(piece.key)).await;
            if let Err(e) = fetched {
                self.failed.store(true, Ordering::Relaxed);
                return Err(e);
            }
            told.map_err(|_| PullError::new("the blob writer stopped"))?;
        }
    }

    /// The bytes of `piece` (up to where another connection may cut it), resumed on their own
    /// after a transient failure.
    async fn fetch(&self, c: usize, piece: Piece) -> Result<(), PullError> {
        let s = self.session;
        let size = self.desc.size;
        let digest = &self.desc.digest;
        let (chunk, key) = (piece.chunk, piece.key);
        let gone = || {
            Failure::Fatal(PullError::Registry(Why {
                message: "the blob writer stopped".into(),
                hint: None,
            }))
        };
        let label = format!("blob {digest} bytes {}-{}", piece.at, piece.end - 1);
        s.retrying(&label, async || {
            // Where the piece stands now: resumed after what arrived, ending where it was cut.
            let Some(Piece { at: from, end, .. }) = self.board().piece(c) else {
                return Ok(());
            };
            if from >= end {
                return Ok(());
            }
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
            // `sent`: where the batch starts; `got`: bytes of this answer.
            let (mut batch_len, mut sent, mut got) = (0usize, from, 0u64);
            let mut speed = s.low_speed();
            let send = async |batch: Vec<Bytes>, offset: u64| {
                self.tx.send(Msg::Data { chunk, key, offset, batch }).await.map_err(|_| gone())
            };
            loop {
                match speed.chunk(&mut resp).await {
                    Ok(Some(b)) => {
                        got += b.len() as u64;
                        if got > end - from {
                            return Err(Failure::Fatal(PullError::WrongContent(Why {
                                message: format!("blob {digest}: the registry sent more than the bytes {from}-{} asked for", end - 1),
                                hint: Some("the registry serves content that does not match the manifest".into()),
                            })));
                        }
                        // Bytes past where another connection cut the piece are not ours.
                        let own = self.board().advance(c, b.len() as u64) as usize;
                        let cut = own < b.len();
                        if own > 0 {
                            self.progress.fetch_add(own as u64, Ordering::Relaxed);
                            self.network.fetch_add(own as u64, Ordering::Relaxed);
                            batch_len += own;
                            batch.push(b.slice(..own));
                        }
                        let left = self.board().piece(c).is_some_and(|p| p.at < p.end);
                        if batch_len >= WRITE_BATCH || cut || !left {
                            let n = batch_len as u64;
                            if n > 0 {
                                send(std::mem::take(&mut batch), sent).await?;
                            }
                            sent += n;
                            batch_len = 0;
                        }
                        if !left {
                            // The piece is complete (the rest of the answer, if any, belongs to
                            // another connection: dropped with the connection).
                            return Ok(());
                        }
                    }
                    Ok(None) => break,
                    Err(e) => {
                        // What arrived is valid: kept, the piece resumes after it.
                        if !batch.is_empty() {
                            send(batch, sent).await?;
                        }
                        return Err(e.into_failure(&format!("piece interrupted at {} of bytes {from}-{}", from + got, end - 1)));
                    }
                }
            }
            if !batch.is_empty() {
                send(batch, sent).await?;
            }
            Err(Failure::Retry { message: format!("piece body ended at {} of bytes {from}-{}", from + got, end - 1), after: None })
        })
        .await
    }
}

/// Whether `digest` is worth fetching in chunks with `chunking`.
pub(super) fn worth_chunking(desc: &Descriptor, chunking: Chunking) -> bool {
    chunking.connections > 1 && desc.size > chunking.size
}
