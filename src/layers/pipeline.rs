//! Decompression on a thread of its own, ahead of extraction: a gzip layer is one serial
//! stream, so the only way to use a second core for one layer is to inflate (and hash the
//! diff_id) on one thread while the other creates the files. The two are joined by a bounded
//! queue of chunks: memory stays at a few MiB whatever the layer's size, and a slow file
//! system slows the decompression (and so the download) instead of growing a buffer.

use std::io::{self, Read};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, SyncSender};

use super::decompress::{Compression, DiffReader};
use crate::oci::Digest;

/// Bytes handed over at once: large enough that the queue costs nothing per byte, small
/// enough that extraction starts as soon as the first files arrive.
const CHUNK: usize = 256 * 1024;
/// Chunks decompressed ahead of extraction.
const AHEAD: usize = 8;

/// What the decompressing side sends: data, or the error that ended the stream (kept as the
/// original `io::Error`, so a cause such as a restarted download can still be recognised).
type Piece = io::Result<Vec<u8>>;

/// Runs `consume` on the uncompressed stream of `blob` while another thread decompresses it
/// and hashes it for its diff_id. Returns what `consume` returned, with the diff_id and size
/// of the whole stream once `consume` succeeded and the rest of the stream was read (trailing
/// data counts towards the diff_id).
pub(super) fn decompress_ahead<R, T, E>(
    blob: R,
    compression: Compression,
    max_size: u64,
    consume: impl FnOnce(&mut Chunks) -> Result<T, E>,
) -> Result<(T, io::Result<(Digest, u64)>), E>
where
    R: Read + Send,
{
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let (tx, rx) = std::sync::mpsc::sync_channel(AHEAD);
        let (back_tx, back_rx) = std::sync::mpsc::channel();
        let stop = &stop;
        let producer = std::thread::Builder::new()
            .name("kci-inflate".into())
            .spawn_scoped(s, move || {
                produce(blob, compression, max_size, tx, back_rx, stop)
            });
        // No thread to be had: the consumer's first read fails with the reason.
        let (producer, failed) = match producer {
            Ok(p) => (Some(p), None),
            Err(e) => (None, Some(e)),
        };
        let mut chunks = Chunks {
            rx,
            back: back_tx,
            cur: Vec::new(),
            pos: 0,
            done: false,
            failed,
            stop,
        };
        let out = consume(&mut chunks);
        let out = match out {
            Ok(out) => out,
            Err(e) => {
                // Dropping `chunks` tells the producer to stop; the scope waits for it.
                drop(chunks);
                return Err(e);
            }
        };
        let rest = io::copy(&mut chunks, &mut io::sink());
        drop(chunks);
        let digest = match (rest, producer.map(|p| p.join())) {
            (Err(e), _) => Err(e),
            (Ok(_), None) => Err(io::Error::other("cannot start the inflate thread")),
            (Ok(_), Some(Ok(Some(d)))) => Ok(d),
            (Ok(_), Some(Ok(None))) => Err(io::Error::other("the inflate thread stopped early")),
            (Ok(_), Some(Err(panic))) => Err(io::Error::other(format!(
                "the inflate thread panicked ({}); this is a bug, please report it",
                super::outcome::panic_message(&*panic)
            ))),
        };
        Ok((out, digest))
    })
}

/// The decompressing side: fills chunks until the end of the stream, an error, or until the
/// consumer is gone. Returns the diff_id and size when the whole stream was read.
fn produce<R: Read>(
    blob: R,
    compression: Compression,
    max_size: u64,
    tx: SyncSender<Piece>,
    back: Receiver<Vec<u8>>,
    stop: &AtomicBool,
) -> Option<(Digest, u64)> {
    let stream = match compression.reader(blob) {
        Ok(s) => s,
        Err(e) => {
            let _ = tx.send(Err(e));
            return None;
        }
    };
    let mut diff = DiffReader::new(stream, max_size);
    loop {
        let mut buf = back.try_recv().unwrap_or_default();
        buf.resize(CHUNK, 0);
        let mut n = 0;
        let mut failed = None;
        while n < CHUNK {
            if stop.load(Ordering::Relaxed) {
                return None;
            }
            match diff.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    failed = Some(e);
                    break;
                }
            }
        }
        buf.truncate(n);
        if n > 0 && tx.send(Ok(buf)).is_err() {
            return None;
        }
        if let Some(e) = failed {
            let _ = tx.send(Err(e));
            return None;
        }
        if n < CHUNK {
            break;
        }
    }
    diff.finish().ok()
}

/// The uncompressed stream as a `Read`, fed by the decompressing thread.
pub(super) struct Chunks<'a> {
    rx: Receiver<Piece>,
    /// Used chunks go back to the producer, so the same few buffers circulate.
    back: Sender<Vec<u8>>,
    cur: Vec<u8>,
    pos: usize,
    done: bool,
    /// An error to return before any data (no inflate thread could be started).
    failed: Option<io::Error>,
    stop: &'a AtomicBool,
}

impl Read for Chunks<'_> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        if let Some(e) = self.failed.take() {
            self.done = true;
            return Err(e);
        }
        loop {
            if self.pos < self.cur.len() {
                let n = (self.cur.len() - self.pos).min(out.len());
                out[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
                self.pos += n;
                return Ok(n);
            }
            if self.done || out.is_empty() {
                return Ok(0);
            }
            let used = std::mem::take(&mut self.cur);
            if used.capacity() > 0 {
                let _ = self.back.send(used);
            }
            self.pos = 0;
            match self.rx.recv() {
                Ok(Ok(buf)) => self.cur = buf,
                Ok(Err(e)) => {
                    self.done = true;
                    return Err(e);
                }
                Err(_) => {
                    self.done = true;
                    return Ok(0);
                }
            }
        }
    }
}

impl Drop for Chunks<'_> {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::tests::gzip;

    #[test]
    fn the_stream_arrives_whole_and_in_order_with_its_digest() {
        let data: Vec<u8> = (0..3 * CHUNK + 123).map(|i| (i * 7 % 251) as u8).collect();
        let blob = gzip(&data);
        let (got, digest) = decompress_ahead(&blob[..], Compression::Gzip, 1 << 30, |r| {
            // Reads of odd sizes, as the tar reader makes.
            let mut out = Vec::new();
            let mut buf = [0u8; 511];
            loop {
                let n = r.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                out.extend_from_slice(&buf[..n]);
            }
            Ok::<_, io::Error>(out)
        })
        .unwrap();
        assert_eq!(got, data);
        assert_eq!(digest.unwrap(), (Digest::sha256(&data), data.len() as u64));
    }

    #[test]
    fn data_left_unread_by_the_consumer_still_counts_for_the_digest() {
        let data = vec![5u8; CHUNK * 2];
        let blob = gzip(&data);
        let (_, digest) = decompress_ahead(&blob[..], Compression::Gzip, 1 << 30, |r| {
            let mut first = [0u8; 10];
            r.read_exact(&mut first)
        })
        .unwrap();
        assert_eq!(digest.unwrap(), (Digest::sha256(&data), data.len() as u64));
    }

    #[test]
    fn a_corrupt_stream_reaches_the_consumer_as_an_error_after_its_good_bytes() {
        let data = vec![9u8; CHUNK * 3];
        let mut blob = gzip(&data);
        let cut = blob.len() / 2;
        blob.truncate(cut);
        let e = decompress_ahead(&blob[..], Compression::Gzip, 1 << 30, |r| {
            let mut out = Vec::new();
            r.read_to_end(&mut out).map(|_| out.len())
        })
        .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}");
    }

    #[test]
    fn the_size_limit_stops_the_stream_and_a_failing_consumer_stops_the_producer() {
        let data = vec![0u8; 8 << 20];
        let blob = gzip(&data);
        let e = decompress_ahead(&blob[..], Compression::Gzip, 1 << 20, |r| {
            io::copy(r, &mut io::sink())
        })
        .unwrap_err();
        assert!(e.to_string().contains("--max-layer-size"), "{e}");
        // A consumer that gives up at once: the call returns its error (the producer, which
        // would otherwise fill the queue and wait, is told to stop).
        let e = decompress_ahead(&blob[..], Compression::Gzip, 1 << 30, |_| {
            Err::<(), _>("refused")
        })
        .unwrap_err();
        assert_eq!(e, "refused");
    }
}
