//! Layer tarballs entry by entry, including what the `tar` writer refuses (names with `..`,
//! whiteouts, devices), for the unpack tests.

/// One tar entry (with a PAX header before it when it has xattrs or a long name).
pub struct Entry {
    pub name: String,
    pub kind: u8,
    pub data: Vec<u8>,
    pub link: String,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub dev: (u32, u32),
    pub xattrs: Vec<(String, Vec<u8>)>,
    /// Other PAX records (`mtime`, ...), in the PAX header before the entry.
    pub pax: Vec<(String, Vec<u8>)>,
    /// Header bytes to overwrite (offset, bytes), the checksum fixed after.
    pub patches: Vec<(usize, Vec<u8>)>,
    /// Written verbatim instead of a header and data.
    pub raw: Option<Vec<u8>>,
}

fn base(name: &str, kind: u8, mode: u32) -> Entry {
    Entry {
        name: name.into(),
        kind,
        data: Vec::new(),
        link: String::new(),
        mode,
        uid: 0,
        gid: 0,
        dev: (0, 0),
        xattrs: Vec::new(),
        pax: Vec::new(),
        patches: Vec::new(),
        raw: None,
    }
}

pub fn file(name: &str, data: &[u8]) -> Entry {
    Entry {
        data: data.to_vec(),
        ..base(name, b'0', 0o644)
    }
}
pub fn dir(name: &str) -> Entry {
    base(name, b'5', 0o755)
}
pub fn symlink(name: &str, target: &str) -> Entry {
    Entry {
        link: target.into(),
        ..base(name, b'2', 0o777)
    }
}
pub fn hardlink(name: &str, target: &str) -> Entry {
    Entry {
        link: target.into(),
        ..base(name, b'1', 0o644)
    }
}
pub fn fifo(name: &str) -> Entry {
    base(name, b'6', 0o600)
}
pub fn chardev(name: &str, major: u32, minor: u32) -> Entry {
    Entry {
        dev: (major, minor),
        ..base(name, b'3', 0o666)
    }
}
/// `.wh.NAME` in the directory of `path` (an AUFS whiteout, as images carry them).
pub fn whiteout(path: &str) -> Entry {
    let (dir, name) = path.rsplit_once('/').map_or(("", path), |(d, n)| (d, n));
    let wh = if dir.is_empty() {
        format!(".wh.{name}")
    } else {
        format!("{dir}/.wh.{name}")
    };
    file(&wh, b"")
}
pub fn opaque(dir: &str) -> Entry {
    file(&format!("{dir}/.wh..wh..opq"), b"")
}

impl Entry {
    pub fn mode(mut self, mode: u32) -> Entry {
        self.mode = mode;
        self
    }
    pub fn owner(mut self, uid: u32, gid: u32) -> Entry {
        self.uid = uid;
        self.gid = gid;
        self
    }
    pub fn xattr(mut self, k: &str, v: &[u8]) -> Entry {
        self.xattrs.push((k.into(), v.to_vec()));
        self
    }
    pub fn pax(mut self, k: &str, v: &[u8]) -> Entry {
        self.pax.push((k.into(), v.to_vec()));
        self
    }
    /// Overwrites header bytes at `at` (the checksum is fixed after).
    pub fn patch(mut self, at: usize, bytes: &[u8]) -> Entry {
        self.patches.push((at, bytes.to_vec()));
        self
    }
}

/// Bytes written into the stream as they are (crafted headers).
pub fn raw(bytes: Vec<u8>) -> Entry {
    Entry {
        raw: Some(bytes),
        ..base("", 0, 0)
    }
}

/// A GNU long name (`L`) or long link (`K`) meta header for the next entry.
pub fn gnu_long(kind: u8, value: &str) -> Entry {
    let mut data = value.as_bytes().to_vec();
    data.push(0);
    let e = Entry {
        data: data.clone(),
        ..base("././@LongLink", kind, 0o644)
    };
    let mut out = header(b"././@LongLink", kind, data.len(), &e, b"").to_vec();
    out.extend_from_slice(&data);
    pad(&mut out);
    raw(out)
}

fn header(name: &[u8], kind: u8, size: usize, e: &Entry, link: &[u8]) -> [u8; 512] {
    let mut h = [0u8; 512];
    let n = name.len().min(100);
    h[..n].copy_from_slice(&name[..n]);
    let octal = |h: &mut [u8; 512], at: usize, len: usize, v: u64| {
        let s = format!("{v:0w$o}\0", w = len - 1);
        h[at..at + len].copy_from_slice(s.as_bytes());
    };
    octal(&mut h, 100, 8, e.mode as u64);
    octal(&mut h, 108, 8, e.uid as u64);
    octal(&mut h, 116, 8, e.gid as u64);
    octal(&mut h, 124, 12, size as u64);
    octal(&mut h, 136, 12, 1_700_000_000);
    h[156] = kind;
    let l = link.len().min(100);
    h[157..157 + l].copy_from_slice(&link[..l]);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    octal(&mut h, 329, 8, e.dev.0 as u64);
    octal(&mut h, 337, 8, e.dev.1 as u64);
    checksum(&mut h);
    h
}

fn checksum(h: &mut [u8; 512]) {
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|b| *b as u32).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
}

fn pad(out: &mut Vec<u8>) {
    out.resize(out.len().div_ceil(512) * 512, 0);
}

/// One PAX record, `"<len> <key>=<value>\n"`.
pub fn record(k: &str, v: &[u8]) -> Vec<u8> {
    let body = k.len() + v.len() + 3;
    let mut len = body + 1;
    while format!("{len}").len() + body != len {
        len = format!("{len}").len() + body;
    }
    let mut r = format!("{len} {k}=").into_bytes();
    r.extend_from_slice(v);
    r.push(b'\n');
    r
}

/// The tar stream of `entries`, ended by two zero blocks.
pub fn tar(entries: &[Entry]) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        if let Some(r) = &e.raw {
            out.extend_from_slice(r);
            continue;
        }
        let mut pax = Vec::new();
        if e.name.len() > 100 {
            pax.extend(record("path", e.name.as_bytes()));
        }
        if e.link.len() > 100 {
            pax.extend(record("linkpath", e.link.as_bytes()));
        }
        for (k, v) in &e.xattrs {
            pax.extend(record(&format!("SCHILY.xattr.{k}"), v));
        }
        for (k, v) in &e.pax {
            pax.extend(record(k, v));
        }
        if !pax.is_empty() {
            out.extend_from_slice(&header(b"PaxHeader", b'x', pax.len(), e, b""));
            out.extend_from_slice(&pax);
            pad(&mut out);
        }
        let mut h = header(
            e.name.as_bytes(),
            e.kind,
            e.data.len(),
            e,
            e.link.as_bytes(),
        );
        for (at, bytes) in &e.patches {
            h[*at..*at + bytes.len()].copy_from_slice(bytes);
        }
        checksum(&mut h);
        out.extend_from_slice(&h);
        out.extend_from_slice(&e.data);
        pad(&mut out);
    }
    out.extend_from_slice(&[0u8; 1024]);
    out
}
