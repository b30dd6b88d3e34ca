//! Streaming a blob into the store: hashed and written on a blocking thread, capped at the
//! declared size, resumed with `Range` after a transient failure, verified before it is
//! committed into `blobs/`.

use std::sync::atomic::{AtomicU64, Ordering};

use reqwest::header::{CONTENT_RANGE, HeaderMap, HeaderValue, RANGE};
use reqwest::{Method, StatusCode};
use tokio::sync::mpsc;

use super::ranged::{Handoff, Start, Switch, Unpack, worth_chunking};
use super::retry::{Failure, redact};
use super::session::Session;
use super::{Chunking, PullError, Why};
use crate::layers::LayerTarget;
use crate::layers::store::Staging;
use crate::layers::stream::StreamUnpack;
use crate::oci::Digest;
use crate::oci::manifest::Descriptor;
use crate::store::Store;

/// How long a large blob's stream runs before it is judged: slower than one chunk by then, the
/// rest comes in chunks over parallel ranges (SPEC §13). A fast link never gets there.
const SWITCH_AFTER: std::time::Duration = std::time::Duration::from_millis(250);

/// Bytes gathered from the network before they are handed to the blob's writer thread.
const WRITE_BATCH: usize = 512 << 10;

impl Session {
    /// Streams a blob into the store: hashed and written on a blocking thread, capped at the
    /// declared size, resumed with `Range` after a transient failure, verified before it is
    /// renamed into `blobs/`. Returns the bytes received over the network.
    #[allow(clippy::too_many_arguments)]
    pub async fn fetch_blob(
        &self,
        repo: &str,
        desc: &Descriptor,
        store: &Store,
        progress: &AtomicU64,
        slots: &tokio::sync::Semaphore,
        target: Option<&LayerTarget<'_>>,
        chunking: Chunking,
    ) -> Result<u64, PullError> {
        let mut fresh_start_left = 1; // one full retry after a digest mismatch
        let store_error = |e: std::io::Error| PullError::disk(e.to_string(), store.root());
        loop {
            // A large blob, where the registry serves ranges, may go on in chunks: at once if
            // an earlier run left chunks of it, else when its stream proves slow.
            let ranged = worth_chunking(desc, chunking) && self.serves_ranges(repo, desc).await;
            // The layer unpacks while it downloads, into a staging directory that is
            // committed only once the blob and the diff_id are verified (dropped otherwise).
            let unpack = match target {
                Some(t) => Some(start_unpack(t, desc)?),
                None => None,
            };
            // The stream's outcome, or where the chunks start.
            let next = if ranged && store.has_chunks(&desc.digest) {
                Err(Start::Fresh(unpack))
            } else {
                // Dropped uncommitted (an error, a retry, a deadline), the partial file goes.
                let (file, pending) = store
                    .begin_ingest(&desc.digest, store.direct_for(desc.size))
                    .map_err(store_error)?;
                let switch = ranged.then_some(Switch {
                    after: SWITCH_AFTER,
                    chunk: chunking.size,
                });
                match self
                    .fetch_blob_once(repo, desc, file, progress, slots, unpack, switch)
                    .await
                {
                    Ok(Streamed::Whole(net, unpacked)) => Ok(pending
                        .commit(&desc.digest)
                        .map(|_| (net, unpacked))
                        .map_err(store_error)),
                    Ok(Streamed::Handed(h)) => {
                        tracing::debug!(digest = %desc.digest, "slow at {} of {} bytes: the rest in chunks", h.at, desc.size);
                        let chunked = pending
                            .into_chunked(&desc.digest, desc.size, chunking.size, h.at)
                            .map_err(store_error)?;
                        Err(Start::Handed(Box::new((chunked, h))))
                    }
                    Err(e) => Ok(Err(e)),
                }
            };
            let fetched = match next {
                Ok(streamed) => streamed,
                Err(start) => {
                    self.fetch_blob_ranged(repo, desc, store, progress, slots, start, chunking)
                        .await
                }
            };
            match fetched {
                Ok((net, unpacked)) => {
                    if let (Some(t), Some((staging, result))) = (target, unpacked) {
                        t.commit(desc, staging, result)
                            .map_err(|e| super::unpack::layer_error(&desc.digest, &e))?;
                    }
                    return Ok(net);
                }
                // The registry answered a range with the whole blob: one stream it is.
                Err(e) if ranged && self.ranges() == Some(false) => {
                    tracing::info!(digest = %desc.digest, "{}; fetching it as one stream", e.message());
                }
                Err(e) => {
                    if matches!(e, PullError::Mismatch(_)) && fresh_start_left > 0 {
                        fresh_start_left -= 1;
                        tracing::warn!(digest = %desc.digest, "{}; downloading it again", e.message());
                        continue;
                    }
                    return Err(e);
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    pub(super) async fn fetch_blob_once(
        &self,
        repo: &str,
        desc: &Descriptor,
        mut f: crate::store::IngestFile,
        progress: &AtomicU64,
        slots: &tokio::sync::Semaphore,
        unpack: Option<(Staging, StreamUnpack)>,
        switch: Option<Switch>,
    ) -> Result<Streamed, PullError> {
        let url = self.url(&format!("/{repo}/blobs/{}", desc.digest));
        // A download slot is held while bytes flow, not while the writer syncs the file:
        // the next download starts during this one's fsync.
        let slot = slots.acquire().await.map_err(|e| {
            PullError::Registry(Why {
                message: e.to_string(),
                hint: None,
            })
        })?;
        enum Msg {
            /// Consecutive chunks, sent together: one wake-up of the writer per batch.
            Data(Vec<bytes::Bytes>),
            Reset,
        }
        // At most 4 batches (2 MiB) queued per blob: the writer hashes while a second thread
        // writes (direct I/O), so a deeper queue only raised peak RSS (1 GB image: 38-56 MiB
        // with 8, 37-44 MiB with 4, at the same speed).
        let (tx, mut rx) = mpsc::channel::<Msg>(4);
        let size = desc.size;
        // What a stopped run kept of this blob: hashed (and unpacked) again from the disk,
        // then continued with `Range`. More than the blob's size is not a prefix of it.
        if f.len() > size {
            f.reset().map_err(|e| {
                PullError::Store(Why {
                    message: format!("cannot restart blob {}: {e}", desc.digest),
                    hint: None,
                })
            })?;
        }
        let resumed = f.len();
        if resumed > 0 {
            tracing::info!(digest = %desc.digest, "resuming at {resumed} of {size} bytes (kept by a stopped run)");
            progress.fetch_add(resumed, Ordering::Relaxed);
        }
        // Set when the stream hands the rest of the blob over to chunks (SPEC §13).
        let switched = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let handed = switched.clone();
        let writer = tokio::task::spawn_blocking(move || -> std::io::Result<Written> {
            // The staging directory belongs to the unpack: declared first, it is dropped
            // (removed) only after the unpack thread ended, whatever ends this job (the
            // download dropped by a deadline or a signal, an error).
            let (staging, mut sink) = match unpack {
                Some((staging, sink)) => (Some(staging), Some(sink)),
                None => (None, None),
            };
            if !f.is_empty() {
                f.replay(|chunk| {
                    if let Some(s) = sink.as_mut() {
                        s.feed(&[bytes::Bytes::copy_from_slice(chunk)]);
                    }
                })?;
            }
            while let Some(m) = rx.blocking_recv() {
                match m {
                    Msg::Data(batch) => {
                        f.write_batch(&batch)?;
                        if let Some(s) = sink.as_mut() {
                            s.feed(&batch);
                        }
                    }
                    Msg::Reset => {
                        f.reset()?;
                        if let Some(s) = sink.as_mut() {
                            s.restart();
                        }
                    }
                }
            }
            if handed.load(Ordering::SeqCst) {
                let (hasher, at) = f.into_parts()?;
                return Ok(Written::Handed(Handoff {
                    hasher,
                    at,
                    unpack: staging.zip(sink),
                    network: 0,
                }));
            }
            let written = f.finish()?;
            let unpacked = sink.map(StreamUnpack::finish);
            Ok(Written::Whole(written, staging.zip(unpacked)))
        });
        let mut body_started: Option<std::time::Instant> = None;
        let mut received: u64 = resumed;
        let mut network: u64 = 0;
        let writer_gone = || {
            Failure::Fatal(PullError::Registry(Why {
                message: "the blob writer stopped".into(),
                hint: None,
            }))
        };
        let streamed = self
            .retrying(&format!("blob {}", desc.digest), async || {
                let mut h = HeaderMap::new();
                if received > 0 {
                    h.insert(RANGE, HeaderValue::from_str(&format!("bytes={received}-")).expect("ascii"));
                }
                let mut resp = self.get(Method::GET, repo, url.clone(), h).await?;
                match resp.status() {
                    StatusCode::OK => {
                        if received > 0 {
                            tx.send(Msg::Reset).await.map_err(|_| writer_gone())?;
                            progress.fetch_sub(received, Ordering::Relaxed);
                            received = 0;
                        }
                    }
                    StatusCode::PARTIAL_CONTENT => {
                        let start = resp
                            .headers()
                            .get(CONTENT_RANGE)
                            .and_then(|v| v.to_str().ok())
                            .and_then(|v| v.strip_prefix("bytes "))
                            .and_then(|v| v.split('-').next())
                            .and_then(|v| v.parse::<u64>().ok());
                        if start != Some(received) {
                            tx.send(Msg::Reset).await.map_err(|_| writer_gone())?;
                            progress.fetch_sub(received, Ordering::Relaxed);
                            received = 0;
                            return Err(Failure::Retry { message: "the registry answered a Range request with another range".into(), after: None });
                        }
                    }
                    StatusCode::RANGE_NOT_SATISFIABLE if received == size => return Ok(()),
                    _ => return Err(self.failure_of(resp, &format!("GET {url}", url = redact(&url))).await),
                }
                let mut batch: Vec<bytes::Bytes> = Vec::new();
                let mut batch_len = 0usize;
                let mut speed = self.low_speed();
                loop {
                    body_started.get_or_insert_with(std::time::Instant::now);
                    match speed.chunk(&mut resp).await {
                        Ok(Some(b)) => {
                            if received + b.len() as u64 > size {
                                return Err(Failure::Fatal(PullError::WrongContent(Why {
                                    message: format!("blob {} is larger than its declared size of {size} bytes; the download was stopped at the limit", desc.digest),
                                    hint: Some("the registry serves content that does not match the manifest".into()),
                                })));
                            }
                            received += b.len() as u64;
                            progress.fetch_add(b.len() as u64, Ordering::Relaxed);
                            network += b.len() as u64;
                            batch_len += b.len();
                            batch.push(b);
                            if batch_len >= WRITE_BATCH {
                                tx.send(Msg::Data(std::mem::take(&mut batch))).await.map_err(|_| writer_gone())?;
                                batch_len = 0;
                            }
                            // A link slower than a chunk in the first moments: the rest comes
                            // in chunks over parallel ranges (SPEC §13).
                            if let Some(sw) = switch
                                && let Some(first) = body_started
                                && first.elapsed() >= sw.after
                                && received - resumed < sw.chunk
                                && size - received > sw.chunk
                            {
                                if !batch.is_empty() {
                                    tx.send(Msg::Data(std::mem::take(&mut batch))).await.map_err(|_| writer_gone())?;
                                }
                                switched.store(true, Ordering::SeqCst);
                                return Ok(());
                            }
                        }
                        Ok(None) => break,
                        Err(e) => {
                            // What arrived is a valid prefix: keep it, resume after it.
                            if !batch.is_empty() {
                                tx.send(Msg::Data(batch)).await.map_err(|_| writer_gone())?;
                            }
                            return Err(e.into_failure(&format!("download interrupted at {received} of {size} bytes")));
                        }
                    }
                }
                if !batch.is_empty() {
                    tx.send(Msg::Data(batch)).await.map_err(|_| writer_gone())?;
                }
                if received < size {
                    return Err(Failure::Retry { message: format!("body ended at {received} of {size} bytes"), after: None });
                }
                Ok(())
            })
            .await;
        drop(tx);
        drop(slot);
        let written = writer.await.map_err(PullError::writer_failed)?;
        let ((digest, n), unpacked) = match (streamed, written) {
            (Ok(()), Ok(Written::Whole(w, u))) => (w, u),
            (Ok(()), Ok(Written::Handed(h))) => {
                return Ok(Streamed::Handed(Handoff { network, ..h }));
            }
            (_, Err(io)) => {
                return Err(PullError::Store(Why {
                    message: format!("cannot write blob {}: {io}", desc.digest),
                    hint: Some("check free space and permissions of the store".into()),
                }));
            }
            (Err(e), Ok(_)) => return Err(e),
        };
        if digest != desc.digest || n != size {
            return Err(PullError::Mismatch(Why {
                message: format!(
                    "blob content does not match: expected {} ({size} bytes), got {digest} ({n} bytes)",
                    desc.digest
                ),
                hint: Some(format!(
                    "{} or something in between served wrong bytes; nothing was stored",
                    self.route().registry
                )),
            }));
        }
        Ok(Streamed::Whole(network, unpacked))
    }
}

/// What a one-stream fetch's writer thread ends with.
enum Written {
    Whole((Digest, u64), Unpack),
    Handed(Handoff),
}

/// How a one-stream fetch ended: the blob whole (bytes received, the unpack), or handed over
/// to chunks.
pub(super) enum Streamed {
    Whole(u64, Unpack),
    Handed(Handoff),
}

/// Starts the streaming unpack of `desc` into a new staging directory of `t`'s layer store.
fn start_unpack(
    t: &LayerTarget<'_>,
    desc: &Descriptor,
) -> Result<(Staging, StreamUnpack), PullError> {
    let staging = t.layers.stage().map_err(|e| {
        PullError::disk(
            format!("cannot stage layer {}: {e}", desc.digest),
            t.layers.root(),
        )
    })?;
    let sink = StreamUnpack::start(
        desc.media_type.clone(),
        staging.fs.clone(),
        t.max_size,
        t.layers.limits(),
    )
    .map_err(|e| {
        PullError::Layer(Why {
            message: format!("cannot start unpacking: {e}"),
            hint: None,
        })
    })?;
    Ok((staging, sink))
}
