//! Writing a file's contents: in whole chunks, sparse files with their holes; and who new
//! files belong to.

use std::fs::File;
use std::io::{self, Read};

use super::tar::Sparse;
use crate::fsutil::DIRECT_ALIGN;

/// The largest piece of a file written at once (a write that ends inside a block makes the
/// kernel zero the rest of it first).
pub(super) const WRITE_CHUNK: usize = 1 << 20;

/// Files at least this large are written with `O_DIRECT` (where the file system allows it):
/// in the VMs the agent runs in, page-cache memory touched for the first time costs more
/// than the disk (docs/performance.md), and a model's weights need not stay in the page cache
/// after they are unpacked. Smaller files, and every file's last partial piece, go through it.
pub(super) const DIRECT_MIN: u64 = 8 << 20;

/// Copies a file's contents (`size` bytes) from `from` into `file` in chunks of `WRITE_CHUNK`
/// bytes: each `write` but the last covers whole blocks; with `direct`, a large file's whole
/// chunks with `O_DIRECT` from an aligned buffer (see [`DIRECT_MIN`]).
pub(super) fn write_contents(
    from: &mut impl Read,
    file: &File,
    size: u64,
    direct: bool,
    buf: &mut Vec<u8>,
) -> io::Result<()> {
    use std::io::Write;
    if buf.len() < WRITE_CHUNK + DIRECT_ALIGN {
        buf.resize(WRITE_CHUNK + DIRECT_ALIGN, 0);
    }
    let at = buf.as_ptr().align_offset(DIRECT_ALIGN);
    let buf = &mut buf[at..at + WRITE_CHUNK];
    let mut direct = direct && size >= DIRECT_MIN && crate::fsutil::set_direct(file, true).is_ok();
    loop {
        let mut n = 0;
        while n < buf.len() {
            match from.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        if n == 0 {
            break;
        }
        let mut done = 0;
        if direct && n == WRITE_CHUNK {
            match (&*file).write(&buf[..n]) {
                Ok(k) => done = k,
                // Refused after all (an unaligned offset cannot happen: whole chunks only).
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
                Err(e) => return Err(e),
            }
        }
        if done < n {
            if direct {
                crate::fsutil::set_direct(file, false)?;
                direct = false;
            }
            (&*file).write_all(&buf[done..n])?;
        }
        if n < WRITE_CHUNK {
            break;
        }
    }
    if direct {
        // The descriptor outlives this copy (times, xattrs): back to ordinary I/O.
        crate::fsutil::set_direct(file, false)?;
    }
    Ok(())
}

/// Writes a sparse file's segments at their offsets (the holes stay holes) and sets its size.
pub(super) fn write_sparse(
    from: &mut impl Read,
    file: &File,
    sparse: &Sparse,
    buf: &mut Vec<u8>,
) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    if buf.len() < WRITE_CHUNK {
        buf.resize(WRITE_CHUNK, 0);
    }
    for (off, len) in &sparse.map {
        let mut done = 0u64;
        while done < *len {
            let want = (*len - done).min(buf.len() as u64) as usize;
            from.read_exact(&mut buf[..want])?;
            file.write_all_at(&buf[..want], off + done)?;
            done += want as u64;
        }
    }
    file.set_len(sparse.real_size)
}

/// Who new files belong to, and the umask they are created under.
pub(super) struct Creds {
    pub(super) uid: u32,
    pub(super) gid: u32,
    pub(super) umask: u32,
}

/// This process's file-system uid and gid and its umask, from `/proc/self/status` (read
/// once; `None` where it cannot be read, and then every file gets its chown and chmod).
pub(super) fn creds() -> Option<&'static Creds> {
    static CREDS: std::sync::OnceLock<Option<Creds>> = std::sync::OnceLock::new();
    CREDS
        .get_or_init(|| {
            let status = std::fs::read_to_string("/proc/self/status").ok()?;
            let field = |key: &str| status.lines().find_map(|l| l.strip_prefix(key));
            // "Uid:\treal\teffective\tsaved\tfilesystem": the last one creates files.
            let fs_id =
                |key: &str| -> Option<u32> { field(key)?.split_whitespace().nth(3)?.parse().ok() };
            Some(Creds {
                uid: fs_id("Uid:")?,
                gid: fs_id("Gid:")?,
                umask: u32::from_str_radix(field("Umask:")?.trim(), 8).ok()?,
            })
        })
        .as_ref()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// A large file written directly (whole chunks with O_DIRECT, its last piece through the
    /// page cache) holds its bytes, and its descriptor is ordinary again after; a reader that
    /// comes in odd pieces changes nothing; so does `direct: false`.
    #[test]
    fn a_large_file_written_directly_holds_its_bytes() {
        let size = DIRECT_MIN as usize + 3 * WRITE_CHUNK + 12_345;
        let data: Vec<u8> = (0..size)
            .map(|i| (i % 251) as u8 ^ (i >> 13) as u8)
            .collect();
        /// Gives at most 100,000 bytes per read.
        struct Odd<'a>(&'a [u8]);
        impl Read for Odd<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let n = buf.len().min(self.0.len()).min(100_000);
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        // A disk file system (O_DIRECT works there), beside the build.
        let base = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
        for direct in [true, false] {
            let dir = tempfile::tempdir_in(&base).unwrap();
            let path = dir.path().join("f");
            let file = File::create(&path).unwrap();
            let mut buf = Vec::new();
            write_contents(&mut Odd(&data), &file, size as u64, direct, &mut buf).unwrap();
            let flags = rustix::fs::fcntl_getfl(&file).unwrap();
            assert!(!flags.contains(rustix::fs::OFlags::DIRECT));
            drop(file);
            assert!(std::fs::read(&path).unwrap() == data, "direct: {direct}");
        }
    }
}
