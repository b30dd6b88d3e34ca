//! Writing a file's contents: in whole chunks, sparse files with their holes; and who new
//! files belong to.

use std::fs::File;
use std::io::{self, Read};

use super::tar::Sparse;

/// The largest piece of a file written at once (a write that ends inside a block makes the
/// kernel zero the rest of it first).
pub(super) const WRITE_CHUNK: usize = 1 << 20;

/// Copies a file's contents from `from` into `file` in chunks of `WRITE_CHUNK` bytes: each
/// `write` but the last covers whole blocks.
pub(super) fn write_contents(
    from: &mut impl Read,
    file: &File,
    buf: &mut Vec<u8>,
) -> io::Result<()> {
    use std::io::Write;
    if buf.len() < WRITE_CHUNK {
        buf.resize(WRITE_CHUNK, 0);
    }
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
            return Ok(());
        }
        (&*file).write_all(&buf[..n])?;
        if n < buf.len() {
            return Ok(());
        }
    }
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
