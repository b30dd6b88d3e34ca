//! From a layer blob's bytes to its tar stream: the decompressor its media type calls for,
//! and a reader that hashes the uncompressed stream (the diff_id) and stops at the size limit.

use std::io::{self, Read};

use crate::oci::{Algorithm, Digest, Hasher};

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

/// Why a layer's media type cannot be unpacked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MediaTypeError {
    #[error(
        "layer media type {0:?} is non-distributable (foreign); such layers are not pulled or unpacked"
    )]
    NonDistributable(String),
    #[error(
        "layer media type {0:?} cannot be unpacked (supported: tar, tar+gzip, tar+zstd in their OCI and Docker names)"
    )]
    Unsupported(String),
}

impl Compression {
    /// The compression of a layer media type (OCI and Docker names).
    pub fn of_media_type(media_type: &str) -> Result<Compression, MediaTypeError> {
        if media_type.contains("nondistributable") || media_type.contains(".foreign.") {
            return Err(MediaTypeError::NonDistributable(media_type.to_string()));
        }
        match media_type {
            "application/vnd.oci.image.layer.v1.tar" => Ok(Compression::None),
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip" => Ok(Compression::Gzip),
            "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.docker.image.rootfs.diff.tar.zstd" => Ok(Compression::Zstd),
            other => Err(MediaTypeError::Unsupported(other.to_string())),
        }
    }

    /// A reader of the uncompressed stream of `compressed`.
    pub fn reader<'a, R: Read + 'a>(self, compressed: R) -> io::Result<Box<dyn Read + 'a>> {
        Ok(match self {
            Compression::None => Box::new(compressed),
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(compressed)),
            Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(compressed)?),
        })
    }
}

/// Passes the uncompressed stream through, hashing it (the diff_id) and counting it; more
/// than `max` bytes is an error (a decompression bomb stops there).
pub struct DiffReader<R> {
    inner: R,
    hasher: Option<Hasher>,
    read: u64,
    max: u64,
}

impl<R: Read> DiffReader<R> {
    pub fn new(inner: R, max: u64) -> DiffReader<R> {
        DiffReader {
            inner,
            hasher: Some(Algorithm::Sha256.hasher()),
            read: 0,
            max,
        }
    }

    /// Uncompressed bytes so far.
    pub fn size(&self) -> u64 {
        self.read
    }

    /// Reads what is left to the end (trailing data after the tar's end counts towards the
    /// diff_id) and returns the diff_id and the uncompressed size.
    pub fn finish(mut self) -> io::Result<(Digest, u64)> {
        io::copy(&mut self, &mut io::sink())?;
        let digest = self.hasher.take().expect("finished once").finish();
        Ok((digest, self.read))
    }
}

impl<R: Read> Read for DiffReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        if self.read > self.max {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "the layer unpacks to more than {} bytes (--max-layer-size)",
                    self.max
                ),
            ));
        }
        if let Some(h) = self.hasher.as_mut() {
            h.update(&buf[..n]);
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn media_types_and_compressions() {
        assert_eq!(
            Compression::of_media_type("application/vnd.docker.image.rootfs.diff.tar.gzip"),
            Ok(Compression::Gzip)
        );
        assert_eq!(
            Compression::of_media_type("application/vnd.oci.image.layer.v1.tar+zstd"),
            Ok(Compression::Zstd)
        );
        assert!(matches!(
            Compression::of_media_type(
                "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            ),
            Err(MediaTypeError::NonDistributable(_))
        ));
        assert!(matches!(
            Compression::of_media_type("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip"),
            Err(MediaTypeError::NonDistributable(_))
        ));
        let e = Compression::of_media_type("application/x-lz4").unwrap_err();
        assert!(e.to_string().contains("application/x-lz4"), "{e}");

        let data = b"hello layer".repeat(1000);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        gz.write_all(&data).unwrap();
        let gz = gz.finish().unwrap();
        let zs = zstd::stream::encode_all(&data[..], 3).unwrap();
        for (c, bytes) in [
            (Compression::Gzip, gz),
            (Compression::Zstd, zs),
            (Compression::None, data.clone()),
        ] {
            let r = DiffReader::new(c.reader(&bytes[..]).unwrap(), 1 << 20);
            assert_eq!(
                r.finish().unwrap(),
                (Digest::sha256(&data), data.len() as u64)
            );
        }
    }

    #[test]
    fn a_bomb_stops_at_the_limit() {
        let zeros = vec![0u8; 10 << 20];
        let zs = zstd::stream::encode_all(&zeros[..], 3).unwrap();
        assert!(zs.len() < 10_000, "a real bomb: {} bytes", zs.len());
        let r = DiffReader::new(Compression::Zstd.reader(&zs[..]).unwrap(), 1 << 20);
        let e = r.finish().unwrap_err();
        assert!(e.to_string().contains("--max-layer-size"), "{e}");
    }
}
