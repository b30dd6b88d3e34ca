//! The fields of a tar header as Go's `archive/tar` reads them: the raw block (V7, USTAR,
//! GNU), numbers in octal or base-256, PAX records and times, and the reads that keep to
//! 512-byte blocks. [`super::tar`] builds entries from them.

use std::io::{self, Read};

pub(super) const BLOCK: usize = 512;

pub(super) fn bad(why: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, why.into())
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Format {
    V7,
    Ustar,
    Star,
    Gnu,
}

/// The fields of a header block.
pub(super) struct Raw {
    pub(super) name: Vec<u8>,
    pub(super) link: Vec<u8>,
    pub(super) mode: i64,
    pub(super) uid: i64,
    pub(super) gid: i64,
    pub(super) size: i64,
    pub(super) mtime: i64,
    pub(super) typeflag: u8,
    pub(super) dev_major: i64,
    pub(super) dev_minor: i64,
    pub(super) format: Format,
}

impl Raw {
    pub(super) fn parse(b: &[u8; BLOCK]) -> io::Result<Raw> {
        let stored =
            octal(&b[148..156]).map_err(|_| bad("a header with an unreadable checksum"))?;
        let (mut unsigned, mut signed) = (0i64, 0i64);
        for (i, c) in b.iter().enumerate() {
            let c = if (148..156).contains(&i) { b' ' } else { *c };
            unsigned += c as i64;
            signed += c as i8 as i64;
        }
        if stored != unsigned && stored != signed {
            return Err(bad(
                "a header whose checksum is wrong (not a tar stream, or corrupt)",
            ));
        }
        let format = match (&b[257..263], &b[263..265], &b[508..512]) {
            (b"ustar\0", _, b"tar\0") => Format::Star,
            (b"ustar\0", _, _) => Format::Ustar,
            (b"ustar ", b" \0", _) => Format::Gnu,
            _ => Format::V7,
        };
        let mut raw = Raw {
            name: cstr(&b[0..100]).to_vec(),
            link: cstr(&b[157..257]).to_vec(),
            mode: numeric(&b[100..108], "mode")?,
            uid: numeric(&b[108..116], "uid")?,
            gid: numeric(&b[116..124], "gid")?,
            size: numeric(&b[124..136], "size")?,
            mtime: numeric(&b[136..148], "mtime")?,
            typeflag: b[156],
            dev_major: 0,
            dev_minor: 0,
            format,
        };
        if format == Format::V7 {
            return Ok(raw);
        }
        raw.dev_major = numeric(&b[329..337], "device major")?;
        raw.dev_minor = numeric(&b[337..345], "device minor")?;
        let prefix: &[u8] = match format {
            Format::Ustar => cstr(&b[345..500]),
            Format::Star => cstr(&b[345..476]),
            // GNU has times where USTAR has its prefix; files of a Go older than 1.8 put a
            // prefix there, recognised as Go recognises it: the times do not parse, the
            // bytes are ASCII.
            _ => {
                let times_ok = numeric(&b[345..357], "atime").is_ok()
                    && numeric(&b[357..369], "ctime").is_ok();
                let p = cstr(&b[345..500]);
                if !times_ok && p.is_ascii() { p } else { &[] }
            }
        };
        if !prefix.is_empty() {
            let mut name = prefix.to_vec();
            name.push(b'/');
            name.extend_from_slice(&raw.name);
            raw.name = name;
        }
        Ok(raw)
    }

    pub(super) fn size_nonneg(&self) -> io::Result<u64> {
        u64::try_from(self.size).map_err(|_| bad(format!("a negative size ({})", self.size)))
    }
}

/// The bytes up to the first NUL.
pub(super) fn cstr(b: &[u8]) -> &[u8] {
    match b.iter().position(|c| *c == 0) {
        Some(i) => &b[..i],
        None => b,
    }
}

/// A numeric field: base-256 (two's complement, big-endian) when its first bit is set, else
/// octal padded with spaces and NULs.
pub(super) fn numeric(b: &[u8], what: &str) -> io::Result<i64> {
    if b.first().is_some_and(|c| c & 0x80 != 0) {
        let inv: u8 = if b[0] & 0x40 != 0 { 0xff } else { 0 };
        let mut x: u64 = 0;
        for (i, c) in b.iter().enumerate() {
            let mut c = c ^ inv;
            if i == 0 {
                c &= 0x7f;
            }
            if x >> 56 != 0 {
                return Err(bad(format!("the {what} field overflows")));
            }
            x = x << 8 | c as u64;
        }
        if x >> 63 != 0 {
            return Err(bad(format!("the {what} field overflows")));
        }
        return Ok(if inv == 0xff { !(x as i64) } else { x as i64 });
    }
    octal(b).map_err(|_| bad(format!("the {what} field is not a number")))
}

pub(super) fn octal(b: &[u8]) -> Result<i64, ()> {
    let trim = |c: &u8| *c == b' ' || *c == 0;
    let start = b.iter().position(|c| !trim(c)).unwrap_or(b.len());
    let end = b.iter().rposition(|c| !trim(c)).map_or(start, |i| i + 1);
    let digits = cstr(&b[start..end]);
    if digits.is_empty() {
        return Ok(0);
    }
    let mut x: u64 = 0;
    for d in digits {
        if !(b'0'..=b'7').contains(d) {
            return Err(());
        }
        x = x.checked_mul(8).ok_or(())? + (d - b'0') as u64;
    }
    Ok(x as i64)
}

/// A decimal PAX value (an optional sign and digits, as Go's `ParseInt`).
pub(super) fn pax_int(v: &[u8], what: &str) -> io::Result<i64> {
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or_else(|| bad(format!("the PAX {what} is not a number")))
}

/// A PAX time, `[-]seconds[.fraction]`, as Go's `parsePAXTime`: the fraction is cut at
/// nanoseconds; a negative time's fraction counts towards the past.
pub(super) fn pax_time(v: &[u8]) -> io::Result<(i64, u32)> {
    let (secs, frac) = match v.iter().position(|b| *b == b'.') {
        Some(i) => (&v[..i], &v[i + 1..]),
        None => (v, &[][..]),
    };
    let s = pax_int(secs, "mtime")?;
    if !frac.iter().all(u8::is_ascii_digit) {
        return Err(bad("the PAX mtime is not a number"));
    }
    let mut ns: u32 = 0;
    for i in 0..9 {
        ns = ns * 10 + frac.get(i).map_or(0, |d| (d - b'0') as u32);
    }
    if ns == 0 {
        return Ok((s, 0));
    }
    if secs.first() == Some(&b'-') {
        // -1.25 is 1.25 s before the epoch: -2 s + 0.75 s.
        return Ok((
            s.checked_sub(1)
                .ok_or_else(|| bad("the PAX mtime overflows"))?,
            1_000_000_000 - ns,
        ));
    }
    Ok((s, ns))
}

/// PAX records `"<len> <key>=<value>\n"`, validated as Go validates them. GNU sparse 0.0
/// offset/numbytes pairs become one `GNU.sparse.map` record (as 0.1 writes it).
pub(super) fn parse_pax(mut data: &[u8]) -> io::Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let mut sparse: Vec<Vec<u8>> = Vec::new();
    let invalid = || bad("an invalid PAX record");
    while !data.is_empty() {
        let sp = data.iter().position(|b| *b == b' ').ok_or_else(invalid)?;
        let n: usize = std::str::from_utf8(&data[..sp])
            .ok()
            .and_then(|s| s.parse().ok())
            .filter(|n| *n >= 5 && *n <= data.len() && *n > sp + 1)
            .ok_or_else(invalid)?;
        let rec = &data[sp + 1..n];
        data = &data[n..];
        let rec = rec.strip_suffix(b"\n").ok_or_else(invalid)?;
        let eq = rec.iter().position(|b| *b == b'=').ok_or_else(invalid)?;
        let (k, v) = (&rec[..eq], &rec[eq + 1..]);
        let nul_free = match k {
            b"path" | b"linkpath" | b"uname" | b"gname" => !v.contains(&0),
            _ => !k.contains(&0),
        };
        if k.is_empty() || !nul_free {
            return Err(invalid());
        }
        match k {
            b"GNU.sparse.offset" | b"GNU.sparse.numbytes" => {
                let expect: &[u8] = if sparse.len().is_multiple_of(2) {
                    b"GNU.sparse.offset"
                } else {
                    b"GNU.sparse.numbytes"
                };
                if k != expect || v.contains(&b',') {
                    return Err(invalid());
                }
                sparse.push(v.to_vec());
            }
            _ => out.push((k.to_vec(), v.to_vec())),
        }
    }
    if !sparse.is_empty() {
        out.push((b"GNU.sparse.map".to_vec(), sparse.join(&b","[..])));
    }
    Ok(out)
}

pub(super) fn padding(n: u64) -> u64 {
    (BLOCK as u64 - n % BLOCK as u64) % BLOCK as u64
}

pub(super) fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<()> {
    r.read_exact(buf).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the archive ends inside an entry",
            )
        } else {
            e
        }
    })
}

/// Reads a whole block; `false` if the stream ended before its first byte.
pub(super) fn read_block_or_eof(r: &mut impl Read, buf: &mut [u8; BLOCK]) -> io::Result<bool> {
    let mut n = 0;
    while n < BLOCK {
        match r.read(&mut buf[n..]) {
            Ok(0) if n == 0 => return Ok(false),
            Ok(0) => {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the archive ends inside a header",
                ));
            }
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

pub(super) fn skip(r: &mut impl Read, n: u64) -> io::Result<()> {
    let copied = io::copy(&mut r.take(n), &mut io::sink())?;
    if copied < n {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the archive ends inside an entry's data",
        ));
    }
    Ok(())
}
