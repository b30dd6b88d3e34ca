//! Unpacking a layer while it downloads: the blob writer hands each batch of bytes to a
//! [`StreamUnpack`] as well, whose thread decompresses and extracts them as they come. A
//! download that restarts from byte 0 (a registry that ignored `Range`) ends the stream with
//! [`Restarted`]; the caller then unpacks from the verified blob instead.

use std::collections::VecDeque;
use std::io::{self, Read};
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;

use bytes::Bytes;

use super::{Limits, Lowers, UnpackError, Unpacked, unpack};

/// Batches queued for the unpacker: a slow unpack slows the download instead of growing
/// memory.
const QUEUE: usize = 8;

enum Feed {
    Data(Vec<Bytes>),
    Restart,
}

/// The stream was cut because the download started over; nothing of it is usable.
#[derive(Debug, thiserror::Error)]
#[error("the download started over")]
pub struct Restarted;

/// A layer being unpacked on its own thread from the bytes fed to it.
pub struct StreamUnpack {
    tx: Option<SyncSender<Feed>>,
    thread: Option<JoinHandle<Result<Unpacked, UnpackError>>>,
}

impl StreamUnpack {
    /// Starts unpacking a blob of `media_type` into `fs` (empty).
    pub fn start(
        media_type: String,
        fs: PathBuf,
        max_size: u64,
        limits: Limits,
    ) -> io::Result<StreamUnpack> {
        let (tx, rx) = sync_channel(QUEUE);
        let thread = std::thread::Builder::new()
            .name("kci-unpack".into())
            .spawn(move || {
                let reader = ChannelReader {
                    rx,
                    queue: VecDeque::new(),
                };
                unpack(
                    reader,
                    &media_type,
                    &fs,
                    Lowers::Unknown,
                    max_size,
                    &limits,
                    None,
                )
            })?;
        Ok(StreamUnpack {
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Hands the next bytes of the blob over (blocking while the unpacker is behind). Once the
    /// unpacker stopped (an error), the bytes are dropped: the error comes from `finish`.
    pub fn feed(&mut self, batch: &[Bytes]) {
        if let Some(tx) = &self.tx
            && tx.send(Feed::Data(batch.to_vec())).is_err()
        {
            self.tx = None;
        }
    }

    /// The download starts over from byte 0: this stream is abandoned.
    pub fn restart(&mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(Feed::Restart);
        }
    }

    /// Ends the stream (the blob is complete) and waits for the unpacker.
    pub fn finish(mut self) -> Result<Unpacked, UnpackError> {
        self.tx = None;
        match self.thread.take().map(JoinHandle::join) {
            Some(Ok(r)) => r,
            Some(Err(panic)) => Err(UnpackError::Decompress(io::Error::other(format!(
                "the unpack thread panicked ({}); this is a bug, please report it",
                super::outcome::panic_message(&*panic)
            )))),
            None => Err(UnpackError::Decompress(io::Error::other(
                "the unpack thread stopped",
            ))),
        }
    }

    /// Whether the stream was abandoned because the download started over.
    pub fn was_restarted(e: &UnpackError) -> bool {
        let source: &(dyn std::error::Error + 'static) = e;
        let mut cur = Some(source);
        while let Some(err) = cur {
            if let Some(io) = err.downcast_ref::<io::Error>()
                && io.get_ref().is_some_and(|inner| inner.is::<Restarted>())
            {
                return true;
            }
            cur = err.source();
        }
        false
    }
}

impl Drop for StreamUnpack {
    /// Never leaves the thread writing into a staging directory that is being removed.
    fn drop(&mut self) {
        self.restart();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The fed bytes as a `Read`: end of stream when the feeder is done, an error on restart.
struct ChannelReader {
    rx: Receiver<Feed>,
    queue: VecDeque<Bytes>,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            if let Some(front) = self.queue.front_mut() {
                let n = front.len().min(buf.len());
                buf[..n].copy_from_slice(&front[..n]);
                let _ = front.split_to(n);
                if front.is_empty() {
                    self.queue.pop_front();
                }
                if n > 0 {
                    return Ok(n);
                }
                continue;
            }
            match self.rx.recv() {
                Ok(Feed::Data(batch)) => self.queue.extend(batch),
                Ok(Feed::Restart) => return Err(io::Error::other(Restarted)),
                Err(_) => return Ok(0),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::extract::tests::{file, tar};
    use crate::oci::Digest;

    const TAR: &str = "application/vnd.oci.image.layer.v1.tar";

    #[test]
    fn bytes_fed_in_pieces_unpack_like_a_whole_stream() {
        let layer = tar(&[file("a/b", b"streamed"), file("c", &[7u8; 100_000])]);
        let dir = tempfile::tempdir().unwrap();
        let mut s = StreamUnpack::start(
            TAR.into(),
            dir.path().to_path_buf(),
            1 << 30,
            Limits::default(),
        )
        .unwrap();
        for piece in layer.chunks(777) {
            s.feed(&[Bytes::copy_from_slice(piece), Bytes::new()]);
        }
        let u = s.finish().unwrap();
        assert_eq!(u.diff_id, Digest::sha256(&layer));
        assert_eq!(std::fs::read(dir.path().join("a/b")).unwrap(), b"streamed");
    }

    #[test]
    fn a_restart_abandons_the_stream() {
        let layer = tar(&[file("a", &[1u8; 50_000])]);
        let dir = tempfile::tempdir().unwrap();
        let mut s = StreamUnpack::start(
            TAR.into(),
            dir.path().to_path_buf(),
            1 << 30,
            Limits::default(),
        )
        .unwrap();
        s.feed(&[Bytes::copy_from_slice(&layer[..1000])]);
        s.restart();
        let e = s.finish().unwrap_err();
        assert!(StreamUnpack::was_restarted(&e), "{e}");
    }
}
