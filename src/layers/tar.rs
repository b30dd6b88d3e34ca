//! A streaming reader of tar archives (V7, USTAR, PAX, GNU), written to read layers exactly as
//! Go's `archive/tar` reads them (the reader behind containerd, Docker and umoci), so that a
//! layer never means one thing to us and another to them, and so that every piece of metadata
//! it keeps in memory is bounded.
//!
//! - Meta headers (GNU long names `L`/`K`, PAX `x`/`g`, a PAX 1.0 sparse map) hold at most
//!   [`MAX_META`] bytes: a larger one is an error before anything is read into memory.
//! - Header-only types (links, directories, devices, FIFOs) have no data, whatever their size
//!   field says (Go's `isHeaderOnlyType`: no entry can be smuggled in such a "body").
//! - PAX records override the header (`path`, `linkpath`, `size`, `uid`, `gid`, `mtime` with
//!   nanoseconds, `SCHILY.xattr.*` with names kept as bytes); a later `x` replaces an earlier
//!   one; global `g` headers are read and ignored (as containerd does).
//! - Numbers in octal or base-256 (negative ones too), checksums signed or unsigned.
//! - Sparse files (old GNU `S`, PAX 0.0, 0.1 and 1.0) come with their map, validated as Go
//!   validates it, and with the sum of their data segments equal to the data that follows.
//! - One zero block followed by anything but another is an error (as in Go); so is a header
//!   whose checksum is wrong.

use std::io::{self, Read};

use super::tarfields::{
    BLOCK, Format, Raw, bad, cstr, numeric, padding, parse_pax, pax_int, pax_time,
    read_block_or_eof, read_full, skip,
};

/// The most bytes a meta header (a long name, PAX records, a sparse map) may hold: Go's
/// `maxSpecialFileSize`.
pub const MAX_META: u64 = 1 << 20;

/// What an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// `0`, NUL (without a trailing `/`), `7` (contiguous), and old GNU sparse `S`.
    File,
    HardLink,
    Symlink,
    Char,
    Block,
    Dir,
    Fifo,
    /// Any other type flag (GNU dump directories, volume labels, ...).
    Other(u8),
}

/// A sparse file: the data segments `(offset, length)` in ascending order, and the file's
/// real size. The entry's data is the segments' bytes, back to back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sparse {
    pub map: Vec<(u64, u64)>,
    pub real_size: u64,
}

/// One entry's header, with its PAX and GNU meta headers applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub path: Vec<u8>,
    pub link: Vec<u8>,
    pub kind: Kind,
    /// Permission bits, setuid/setgid/sticky included.
    pub mode: u32,
    pub uid: i64,
    pub gid: i64,
    /// Seconds since the epoch (negative before it) and nanoseconds (always `0..1e9`).
    pub mtime: (i64, u32),
    pub dev_major: u32,
    pub dev_minor: u32,
    /// `SCHILY.xattr.*` records: names and values as bytes, each name once (the last wins).
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
    pub sparse: Option<Sparse>,
    /// Bytes of data that follow the header (for a sparse file: the segments' bytes).
    pub size: u64,
}

/// A reader that counts the bytes read through it.
struct Counted<R> {
    r: R,
    n: u64,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.r.read(buf)?;
        self.n += n as u64;
        Ok(n)
    }
}

/// A tar stream read entry by entry.
pub struct Archive<R> {
    r: Counted<R>,
    /// Data bytes of the current entry not read yet.
    remaining: u64,
    /// Padding after the current entry's data.
    pad: u64,
    ended: bool,
}

impl<R: Read> Archive<R> {
    pub fn new(r: R) -> Archive<R> {
        Archive {
            r: Counted { r, n: 0 },
            remaining: 0,
            pad: 0,
            ended: false,
        }
    }

    /// The underlying reader (what follows the end of the archive is still in it).
    pub fn into_inner(self) -> R {
        self.r.r
    }

    /// Bytes of the stream read so far.
    pub fn position(&self) -> u64 {
        self.r.n
    }

    /// The next entry, skipping what is left of the current one; `None` at the end of the
    /// archive (two zero blocks, or the end of the stream at a header's place).
    pub fn next_entry(&mut self) -> io::Result<Option<Header>> {
        if self.ended {
            return Ok(None);
        }
        let mut pax: Option<Vec<(Vec<u8>, Vec<u8>)>> = None;
        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        loop {
            self.skip_rest()?;
            let Some(block) = self.read_header_block()? else {
                self.ended = true;
                if pax.is_some() || long_name.is_some() || long_link.is_some() {
                    return Err(bad("the archive ends after a meta header"));
                }
                return Ok(None);
            };
            let raw = Raw::parse(&block)?;
            match raw.typeflag {
                b'x' | b'g' => {
                    let size = raw.size_nonneg()?;
                    let data = self.read_meta(size, "PAX header")?;
                    let records = parse_pax(&data)?;
                    if raw.typeflag == b'x' {
                        pax = Some(records);
                    } else {
                        tracing::debug!("a PAX global header ignored");
                    }
                }
                b'L' | b'K' => {
                    let size = raw.size_nonneg()?;
                    let data = self.read_meta(size, "GNU long name")?;
                    let s = cstr(&data).to_vec();
                    if raw.typeflag == b'L' {
                        long_name = Some(s);
                    } else {
                        long_link = Some(s);
                    }
                }
                _ => {
                    return self
                        .finish_header(&block, raw, pax.take(), long_name, long_link)
                        .map(Some);
                }
            }
        }
    }

    /// Reads the current entry's data (for a sparse file: its segments' bytes, back to back).
    pub fn read_data(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        let want = buf
            .len()
            .min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let n = self.r.read(&mut buf[..want])?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the archive ends inside an entry's data",
            ));
        }
        self.remaining -= n as u64;
        Ok(n)
    }

    /// The current entry's data as a reader.
    pub fn data(&mut self) -> Data<'_, R> {
        Data(self)
    }

    fn skip_rest(&mut self) -> io::Result<()> {
        let n = self.remaining + self.pad;
        self.remaining = 0;
        self.pad = 0;
        skip(&mut self.r, n)
    }

    /// A header block, or `None` at the end of the archive.
    fn read_header_block(&mut self) -> io::Result<Option<[u8; BLOCK]>> {
        let mut block = [0u8; BLOCK];
        if !read_block_or_eof(&mut self.r, &mut block)? {
            return Ok(None);
        }
        if block.iter().all(|b| *b == 0) {
            let mut next = [0u8; BLOCK];
            if !read_block_or_eof(&mut self.r, &mut next)? || next.iter().all(|b| *b == 0) {
                return Ok(None);
            }
            return Err(bad(
                "a zero block followed by a header: entries after the end of the archive",
            ));
        }
        Ok(Some(block))
    }

    fn read_meta(&mut self, size: u64, what: &str) -> io::Result<Vec<u8>> {
        if size > MAX_META {
            return Err(bad(format!(
                "a {what} of {size} bytes (at most {MAX_META} are accepted)"
            )));
        }
        let mut data = vec![0u8; size as usize];
        read_full(&mut self.r, &mut data)?;
        skip(&mut self.r, padding(size))?;
        Ok(data)
    }

    fn finish_header(
        &mut self,
        block: &[u8; BLOCK],
        raw: Raw,
        pax: Option<Vec<(Vec<u8>, Vec<u8>)>>,
        long_name: Option<Vec<u8>>,
        long_link: Option<Vec<u8>>,
    ) -> io::Result<Header> {
        let mut h = Header {
            path: raw.name,
            link: raw.link,
            kind: Kind::File,
            mode: (raw.mode & 0o7777) as u32,
            uid: raw.uid,
            gid: raw.gid,
            mtime: (raw.mtime, 0),
            dev_major: raw.dev_major as u32,
            dev_minor: raw.dev_minor as u32,
            xattrs: Vec::new(),
            sparse: None,
            size: 0,
        };
        let mut size = raw.size;
        let pax = pax.unwrap_or_default();
        let get = |k: &str| {
            pax.iter()
                .rev()
                .find(|(key, _)| key == k.as_bytes())
                .map(|(_, v)| v.as_slice())
        };
        // PAX records override the header; an empty value keeps the header's.
        for (k, v) in &pax {
            if v.is_empty() {
                continue;
            }
            match k.as_slice() {
                b"path" => h.path = v.clone(),
                b"linkpath" => h.link = v.clone(),
                b"uid" => h.uid = pax_int(v, "uid")?,
                b"gid" => h.gid = pax_int(v, "gid")?,
                b"size" => size = pax_int(v, "size")?,
                b"mtime" => h.mtime = pax_time(v)?,
                k => {
                    if let Some(name) = k.strip_prefix(b"SCHILY.xattr.") {
                        h.xattrs.retain(|(n, _)| n != name);
                        h.xattrs.push((name.to_vec(), v.clone()));
                    }
                }
            }
        }
        if let Some(n) = long_name.filter(|n| !n.is_empty()) {
            h.path = n;
        }
        if let Some(l) = long_link.filter(|l| !l.is_empty()) {
            h.link = l;
        }
        h.kind = match raw.typeflag {
            b'0' | b'7' | b'S' => Kind::File,
            0 if h.path.ends_with(b"/") => Kind::Dir,
            0 => Kind::File,
            b'1' => Kind::HardLink,
            b'2' => Kind::Symlink,
            b'3' => Kind::Char,
            b'4' => Kind::Block,
            b'5' => Kind::Dir,
            b'6' => Kind::Fifo,
            other => Kind::Other(other),
        };
        if size < 0 {
            return Err(bad(format!("a negative size ({size})")));
        }
        // Header-only types carry no data, whatever their size field says.
        let data = match h.kind {
            Kind::HardLink | Kind::Symlink | Kind::Char | Kind::Block | Kind::Dir | Kind::Fifo => 0,
            _ => size as u64,
        };
        self.remaining = data;
        self.pad = padding(data);
        // Sparse files.
        let sparse = if raw.typeflag == b'S' {
            Some(self.old_gnu_sparse(block, &raw.format)?)
        } else {
            self.pax_sparse(&mut h, get)?
        };
        if let Some(s) = sparse {
            if h.kind != Kind::File {
                return Err(bad("a sparse map on an entry that is not a file"));
            }
            let mut end = 0u64;
            let mut total = 0u64;
            for (off, len) in &s.map {
                let stop = off
                    .checked_add(*len)
                    .filter(|stop| *stop <= s.real_size && *off >= end)
                    .ok_or_else(|| bad("a sparse map with overlapping or out-of-range data"))?;
                end = stop;
                total += len;
            }
            if total != self.remaining {
                return Err(bad(format!(
                    "a sparse map of {total} bytes of data, but {} bytes follow",
                    self.remaining
                )));
            }
            h.sparse = Some(s);
        }
        h.size = self.remaining;
        Ok(h)
    }

    fn old_gnu_sparse(&mut self, block: &[u8; BLOCK], format: &Format) -> io::Result<Sparse> {
        if *format != Format::Gnu {
            return Err(bad("an old GNU sparse entry that is not in the GNU format"));
        }
        let real_size = numeric(&block[483..495], "sparse real size")?;
        let real_size = u64::try_from(real_size).map_err(|_| bad("a negative sparse real size"))?;
        let mut map = Vec::new();
        let mut entries: Vec<u8> = block[386..482].to_vec();
        let mut extended = block[482] != 0;
        let mut blocks = 0u64;
        loop {
            for e in entries.chunks_exact(24) {
                if e[0] == 0 {
                    break;
                }
                let off = numeric(&e[..12], "sparse offset")?;
                let len = numeric(&e[12..], "sparse length")?;
                map.push((
                    u64::try_from(off).map_err(|_| bad("a negative sparse offset"))?,
                    u64::try_from(len).map_err(|_| bad("a negative sparse length"))?,
                ));
            }
            if !extended {
                break;
            }
            blocks += 1;
            if blocks * BLOCK as u64 > MAX_META {
                return Err(bad(format!(
                    "an old GNU sparse map of more than {MAX_META} bytes"
                )));
            }
            let mut ext = [0u8; BLOCK];
            read_full(&mut self.r, &mut ext)?;
            entries = ext[..504].to_vec();
            extended = ext[504] != 0;
        }
        Ok(Sparse { map, real_size })
    }

    /// The GNU sparse records of PAX (0.0, 0.1, 1.0), as Go reads them: `None` if the entry
    /// is not a sparse file (or of a version Go does not know).
    fn pax_sparse<'p>(
        &mut self,
        h: &mut Header,
        get: impl Fn(&str) -> Option<&'p [u8]>,
    ) -> io::Result<Option<Sparse>> {
        let major = get("GNU.sparse.major").unwrap_or_default();
        let minor = get("GNU.sparse.minor").unwrap_or_default();
        let map01 = get("GNU.sparse.map").unwrap_or_default();
        let is_1x0 = match (major, minor) {
            (b"0", b"0" | b"1") => false,
            (b"1", b"0") => true,
            (b"", b"") if !map01.is_empty() => false,
            _ => return Ok(None),
        };
        if let Some(name) = get("GNU.sparse.name").filter(|n| !n.is_empty()) {
            h.path = name.to_vec();
        }
        let real = get("GNU.sparse.size")
            .filter(|s| !s.is_empty())
            .or_else(|| get("GNU.sparse.realsize"))
            .filter(|s| !s.is_empty());
        let real_size = match real {
            Some(r) => u64::try_from(pax_int(r, "GNU.sparse.size")?)
                .map_err(|_| bad("a negative sparse size"))?,
            None => self.remaining,
        };
        let numbers: Vec<u64> = if is_1x0 {
            self.sparse_map_1x0()?
        } else {
            let n = pax_int(
                get("GNU.sparse.numblocks").unwrap_or_default(),
                "GNU.sparse.numblocks",
            )?;
            let parts: Vec<&[u8]> = if map01.is_empty() {
                Vec::new()
            } else {
                map01.split(|b| *b == b',').collect()
            };
            if n < 0 || parts.len() as u128 != 2 * n as u128 {
                return Err(bad("a sparse map whose size disagrees with its count"));
            }
            parts
                .iter()
                .map(|p| {
                    u64::try_from(pax_int(p, "GNU.sparse.map")?)
                        .map_err(|_| bad("a negative number in a sparse map"))
                })
                .collect::<io::Result<_>>()?
        };
        let map = numbers.chunks_exact(2).map(|p| (p[0], p[1])).collect();
        Ok(Some(Sparse { map, real_size }))
    }

    /// The sparse map of PAX 1.0 at the start of the data: decimal numbers each ended by a
    /// newline (the count, then offset and length pairs), in whole blocks.
    fn sparse_map_1x0(&mut self) -> io::Result<Vec<u64>> {
        let mut text: Vec<u8> = Vec::new();
        let mut numbers: Vec<u64> = Vec::new();
        let mut want: Option<u64> = None;
        let mut start = 0;
        loop {
            while let Some(nl) = text[start..].iter().position(|b| *b == b'\n') {
                let tok = &text[start..start + nl];
                start += nl + 1;
                let v = u64::try_from(pax_int(tok, "sparse map")?)
                    .map_err(|_| bad("a negative number in a sparse map"))?;
                match want {
                    None => {
                        want = Some(
                            v.checked_mul(2)
                                .ok_or_else(|| bad("a sparse map too large"))?,
                        )
                    }
                    Some(_) => numbers.push(v),
                }
                if want == Some(numbers.len() as u64) {
                    return Ok(numbers);
                }
            }
            if want == Some(numbers.len() as u64) {
                return Ok(numbers);
            }
            if text.len() as u64 + BLOCK as u64 > MAX_META {
                return Err(bad(format!("a sparse map of more than {MAX_META} bytes")));
            }
            if self.remaining < BLOCK as u64 {
                return Err(bad("a sparse map longer than the entry's data"));
            }
            let mut b = [0u8; BLOCK];
            read_full(&mut self.r, &mut b)?;
            self.remaining -= BLOCK as u64;
            self.pad = padding(self.remaining);
            text.extend_from_slice(&b);
        }
    }
}

/// The data of the current entry, as a reader.
pub struct Data<'a, R>(&'a mut Archive<R>);

impl<R: Read> Read for Data<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0.read_data(buf)
    }
}

#[cfg(test)]
#[path = "tar_tests.rs"]
mod tests;
