//! Extracting one layer's tar stream into a directory, in the overlayfs format, safely and
//! with the semantics of the merged rootfs.
//!
//! Every entry's parent is resolved in the merged view of this layer over the layers below
//! ([`super::merged`]): symlinks of any layer are followed as the merged rootfs would follow
//! them (so `bin/foo` over a lower `bin -> usr/bin` is written as `usr/bin/foo`), a directory
//! only the lower layers have is copied up with its attributes, and nothing ever leaves the
//! layers. The entry itself is created with `*at` calls on its parent, never following a
//! link. Whiteouts apply to the lower layers only (OCI): one never removes what this layer
//! made, and one that would hide nothing is not made (overlayfs would list it).
//!
//! While a layer streams in before the layers below it are committed, they are unknown: the
//! layer is extracted on its own and what it assumed of them is kept ([`Assumed`]);
//! [`super::settle`] checks it once they are known, or the layer is extracted again.

use std::cell::{Cell, RefCell};
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use rustix::fs::{FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use super::attrs::{self, OVERLAY_PREFIX, Xattrs};
use super::lower::{self, Lookup, set_opaque};
use super::merged::{self, Cursor, Found, Make, is_whiteout, kind, stat_at};
use super::settle::{self, Assumed};
use super::tar::{Archive, Header, Kind};

/// Limits of one layer (SPEC §8); the uncompressed size is also enforced by the reader.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_entries: u64,
    /// Longest entry name or link target, in bytes.
    pub max_path: usize,
    /// Most bytes of extended attributes (names and values) per entry.
    pub max_xattrs: usize,
    /// Most bytes of the layer's stream and of the lower layers' files it copies, together.
    pub max_size: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_entries: 1_000_000,
            max_path: 4096,
            max_xattrs: 64 << 10,
            max_size: u64::MAX,
        }
    }
}

/// Why a layer could not be extracted. Nothing outside the layer root was touched either way.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    #[error("invalid tar stream: {0}")]
    Tar(io::Error),
    #[error("entry {name:?}: {why}")]
    Refused { name: String, why: String },
    #[error("entry {name:?}: {source}")]
    Io { name: String, source: io::Error },
    #[error("the layer has more than {0} entries")]
    TooManyEntries(u64),
    /// Streaming only: the layer cannot be extracted right without its lower layers.
    #[error("{0}: the layer is unpacked once the layers below it are")]
    NeedsLowers(String),
}

/// What an extraction wrote.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Extracted {
    pub entries: u64,
    /// Layer-supplied `trusted.overlay.*` xattrs that were dropped (warned about).
    pub dropped_overlay_xattrs: u64,
    /// Entries copied from a lower layer (hardlinks overlayfs cannot make across layers).
    pub copied_links: u64,
    /// Extracted with the lower layers unknown: what it assumed of them.
    pub assumed: Option<Assumed>,
}

const WHITEOUT: &[u8] = b".wh.";
const OPAQUE: &[u8] = b".wh..wh..opq";

/// An entry name as components inside the root: a leading `/` and `.` components dropped,
/// `..` taken inside the root (it never climbs above it), as umoci's `CleanPath` does.
fn components(raw: &[u8]) -> Vec<&[u8]> {
    let mut out: Vec<&[u8]> = Vec::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out
}

fn shown(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw).chars().take(300).collect()
}

/// The layers below the one being extracted, top first (their `fs/` directories), or
/// unknown while a layer streams in before its lower layers are committed.
#[derive(Debug, Clone, Default)]
pub enum Lowers {
    #[default]
    Unknown,
    Known(Vec<PathBuf>),
}

/// The layer root and the state of its extraction.
struct Root {
    fd: OwnedFd,
    /// The lower layers' roots, top first; `None` while they are unknown.
    lowers: Option<Vec<OwnedFd>>,
    assumed: RefCell<Assumed>,
    /// The layer made its root opaque: the lower layers are hidden from then on.
    root_hides: Cell<bool>,
    copied: Cell<u64>,
    copied_bytes: Cell<u64>,
    /// The directory the last regular file went into, by its raw parent path: sorted layers
    /// put many files in a row into one directory. Only regular files that take a fresh name
    /// use it; any other entry forgets it, so it never outlives a change of the tree.
    last_dir: RefCell<Option<LastDir>>,
    /// File contents pass through here, so that a file is written in whole chunks.
    buf: RefCell<Vec<u8>>,
}

/// A directory by its raw path in the layer, open, and whether it is setgid.
type LastDir = (Vec<u8>, Rc<OwnedFd>, bool);

/// The largest piece of a file written at once (a write that ends inside a block makes the
/// kernel zero the rest of it first).
const WRITE_CHUNK: usize = 1 << 20;

/// Creates what an entry's path needs in the top layer: a missing directory (0755 root:root,
/// recorded while the lowers are unknown), a directory over a whiteout of this layer (fresh
/// and opaque: what was below is gone), a copy of a directory only the lowers have.
struct Create<'a> {
    root: &'a Root,
    /// The path serves a whiteout or an opaque marker only (umoci makes nothing for them).
    for_whiteout: bool,
}

impl Make for Create<'_> {
    fn missing(
        &mut self,
        parent: &Cursor,
        name: &[u8],
        whiteout: bool,
    ) -> Result<Option<OwnedFd>, Errno> {
        // Deleted by this layer (or beneath such a name): nothing beneath it to hide, no
        // directory to make.
        let Some(top) = parent
            .top
            .as_ref()
            .filter(|_| !(whiteout && self.for_whiteout))
        else {
            return Ok(None);
        };
        let n = OsStr::from_bytes(name);
        if whiteout {
            rustix::fs::unlinkat(top, n, rustix::fs::AtFlags::empty())?;
        }
        rustix::fs::mkdirat(top, n, Mode::from_raw_mode(0o700))?;
        let d = merged::open_dir_at(top.as_fd(), name)?;
        attrs::finish_fd(d.as_fd(), 0, 0, 0o755, &[], now())?;
        if whiteout {
            set_opaque(d.as_fd())?;
        } else if self.for_whiteout || (self.root.lowers.is_none() && !parent.hides) {
            // Made for a whiteout (it goes if that one hides nothing), or with attributes
            // still to come from the layers below.
            self.root
                .assumed
                .borrow_mut()
                .implied(child_path(&parent.path(), name), self.for_whiteout);
        }
        Ok(Some(d))
    }

    fn copy_up(
        &mut self,
        parent: &Cursor,
        name: &[u8],
        lower: BorrowedFd<'_>,
    ) -> Result<Option<OwnedFd>, Errno> {
        let top = parent
            .top
            .as_ref()
            .expect("the top layer has every parent it walks");
        rustix::fs::mkdirat(top, OsStr::from_bytes(name), Mode::from_raw_mode(0o700))?;
        let d = merged::open_dir_at(top.as_fd(), name)?;
        attrs::copy_attrs(lower, d.as_fd())?;
        if self.for_whiteout {
            // Not this layer's own directory (umoci makes none): it goes if its whiteouts
            // all end up hiding nothing, and a later whiteout of it deletes it.
            self.root
                .assumed
                .borrow_mut()
                .implied(child_path(&parent.path(), name), true);
        }
        Ok(Some(d))
    }
}

fn now() -> (i64, u32) {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    (t.as_secs() as i64, t.subsec_nanos())
}

impl Root {
    fn root_cursor(&self) -> Result<Cursor, Errno> {
        let lowers: &[OwnedFd] = self.lowers.as_deref().unwrap_or(&[]);
        Cursor::root(
            Some(rustix::io::dup(&self.fd)?),
            lowers,
            self.root_hides.get(),
        )
    }

    /// Walks `path` in the merged view, creating what it needs in the top layer.
    fn walk_create(&self, path: &[&[u8]]) -> Result<Cursor, Errno> {
        let mut make = Create {
            root: self,
            for_whiteout: false,
        };
        let cur = self
            .make_path(path, &mut make)?
            .expect("creating walks never stop");
        self.assumed.borrow_mut().used(&cur.canon);
        Ok(cur)
    }

    /// Resolves `path` first without making anything (a missing name, `..` after it and a
    /// symlink to nowhere are taken by name, as filepath-securejoin takes them), then makes
    /// the directories of the canonical path only: nothing is made on the way (umoci's
    /// `MkdirAll` of the `SecureJoin`ed path).
    fn make_path(&self, path: &[&[u8]], make: &mut Create<'_>) -> Result<Option<Cursor>, Errno> {
        let root = || self.root_cursor();
        let canon = merged::walk_to(&root, path, &mut Lookup)?.canon;
        let parts: Vec<&[u8]> = canon.iter().map(Vec::as_slice).collect();
        merged::walk(&root, &parts, make)
    }

    /// Walks `path` for a whiteout or an opaque marker, making the directories it needs in
    /// the top layer; `None` if the path goes through something this layer deleted or through
    /// a file of it: there is nothing there to hide.
    fn walk_for_whiteout(&self, path: &[&[u8]]) -> Result<Option<Cursor>, Errno> {
        let mut make = Create {
            root: self,
            for_whiteout: true,
        };
        match self.make_path(path, &mut make) {
            Err(Errno::NOTDIR) => Ok(None),
            r => r,
        }
    }

    /// Walks `path` in the merged view without creating anything: `None` if it is missing.
    fn walk_lookup(&self, path: &[&[u8]]) -> Result<Option<Cursor>, Errno> {
        let root = || self.root_cursor();
        merged::walk(&root, path, &mut Lookup)
    }

    /// The top layer's directory at `path` for a new entry (fast: the kernel resolves it in
    /// the top layer alone when every component is there, which is then what the merged view
    /// says too), and whether it is setgid.
    fn entry_dir(&self, path: &[&[u8]]) -> Result<(Rc<OwnedFd>, bool), Errno> {
        let joined = path.join(&b'/');
        if let Some((p, fd, setgid)) = &*self.last_dir.borrow()
            && *p == joined
        {
            return Ok((fd.clone(), *setgid));
        }
        // Directories made only for whiteouts must learn that an entry went through them:
        // then the walk is needed.
        let fast = if !self.assumed.borrow().needs_walk() {
            self.open_in_top(&joined)
        } else {
            Err(Errno::NOENT)
        };
        let fd = match fast {
            Ok(fd) => fd,
            Err(Errno::NOENT | Errno::NOTDIR) => self.walk_create(path)?.top.expect("created"),
            Err(e) => return Err(e),
        };
        let fd = Rc::new(fd);
        let setgid = rustix::fs::fstat(&*fd)?.st_mode & 0o2000 != 0;
        *self.last_dir.borrow_mut() = Some((joined, fd.clone(), setgid));
        Ok((fd, setgid))
    }

    /// The top layer's directory for an entry in `parent` (fast when the kernel finds it in
    /// the top layer alone: then the merged view says the same), and its canonical path if
    /// it was walked.
    fn entry_parent(&self, parent: &[&[u8]]) -> Result<(OwnedFd, Option<Vec<u8>>), Errno> {
        if !self.assumed.borrow().needs_walk() {
            match self.open_in_top(&parent.join(&b'/')) {
                Ok(fd) => return Ok((fd, None)),
                Err(Errno::NOENT | Errno::NOTDIR) => {}
                Err(e) => return Err(e),
            }
        }
        let cur = self.walk_create(parent)?;
        let path = cur.path();
        Ok((cur.top.expect("created"), Some(path)))
    }

    fn open_in_top(&self, joined: &[u8]) -> Result<OwnedFd, Errno> {
        if joined.is_empty() {
            return rustix::io::dup(&self.fd);
        }
        rustix::fs::openat2(
            &self.fd,
            OsStr::from_bytes(joined),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        )
    }

    fn forget_dir(&self) {
        self.last_dir.borrow_mut().take();
    }

    /// Makes room for a non-directory entry at `name` in `dir` (the top layer's): whatever
    /// this layer has there goes, a directory with everything in it.
    /// `canon` gives its canonical path (asked for only if the record has paths to drop).
    fn clear(
        &self,
        dir: BorrowedFd<'_>,
        name: &[u8],
        canon: &dyn Fn() -> Vec<u8>,
    ) -> Result<(), Errno> {
        match stat_at(dir, name)? {
            None => Ok(()),
            Some(st) if kind(&st) == FileType::Directory => {
                self.forget_dir();
                settle::remove_tree(dir, name)?;
                if !self.assumed.borrow().is_empty() {
                    let c = canon();
                    self.assumed.borrow_mut().removed(&c);
                }
                Ok(())
            }
            Some(_) => {
                rustix::fs::unlinkat(dir, OsStr::from_bytes(name), rustix::fs::AtFlags::empty())
            }
        }
    }

    /// Makes the top layer's directory `dir` at `canon` opaque (everything below it in the
    /// lower layers is gone).
    fn make_opaque(&self, dir: BorrowedFd<'_>, canon: &[u8]) -> Result<(), ExtractError> {
        let err = |e: Errno| ExtractError::Io {
            name: shown(canon),
            source: e.into(),
        };
        if self.lowers.is_none() {
            // What was recorded beneath took its attributes from the lower layers while they
            // were still visible: only an extraction that knows them gets that right.
            if self.assumed.borrow().implied_under(canon) {
                return Err(ExtractError::NeedsLowers(format!(
                    "{:?} is made opaque after directories beneath it were implied",
                    shown(canon)
                )));
            }
        } else {
            // Whiteouts beneath now hide nothing; overlayfs would list them.
            settle::remove_whiteouts(dir).map_err(err)?;
        }
        set_opaque(dir).map_err(err)
    }
}

/// Copies a file's contents from `from` into `file` in chunks of `WRITE_CHUNK` bytes: each
/// `write` but the last covers whole blocks.
fn write_contents(from: &mut impl Read, file: &File, buf: &mut Vec<u8>) -> io::Result<()> {
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
fn write_sparse(
    from: &mut impl Read,
    file: &File,
    sparse: &super::tar::Sparse,
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
struct Creds {
    uid: u32,
    gid: u32,
    umask: u32,
}

/// This process's file-system uid and gid and its umask, from `/proc/self/status` (read
/// once; `None` where it cannot be read, and then every file gets its chown and chmod).
fn creds() -> Option<&'static Creds> {
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

/// The xattrs of an entry, checked: overlayfs's own are dropped (with a warning), the rest
/// bounded in size.
fn xattrs_of(
    h: &Header,
    limits: &Limits,
    name: &str,
    dropped: &mut u64,
) -> Result<Xattrs, ExtractError> {
    let mut out = Vec::new();
    let mut total = 0usize;
    for (k, v) in &h.xattrs {
        if k.starts_with(OVERLAY_PREFIX) {
            *dropped += 1;
            tracing::warn!(
                "layer entry {name:?}: the xattr {} is not applied (overlay's own)",
                String::from_utf8_lossy(k)
            );
            continue;
        }
        total += k.len() + v.len();
        if total > limits.max_xattrs {
            return Err(ExtractError::Refused {
                name: name.to_string(),
                why: format!("more than {} bytes of xattrs", limits.max_xattrs),
            });
        }
        out.push((k.clone(), v.clone()));
    }
    Ok(out)
}

/// Extracts the tar stream `tar` into the directory `root` (the layer's `fs/`, empty), and
/// hands back the reader (whose rest still counts towards the diff_id).
pub fn extract<R: Read>(
    tar: R,
    root: &Path,
    lowers: Lowers,
    limits: &Limits,
) -> Result<(Extracted, R), ExtractError> {
    let io_at = |p: &Path| {
        let name = p.display().to_string();
        move |e: io::Error| ExtractError::Io { name, source: e }
    };
    let root_fd = rustix::fs::open(
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| io_at(root)(e.into()))?;
    let lowers = match lowers {
        Lowers::Unknown => None,
        Lowers::Known(l) => Some(lower::open_roots(&l).map_err(io_at(root))?),
    };
    let root = Root {
        fd: root_fd,
        lowers,
        assumed: Default::default(),
        root_hides: Cell::new(false),
        copied: Default::default(),
        copied_bytes: Default::default(),
        last_dir: Default::default(),
        buf: Default::default(),
    };
    // The root takes the lower layers' root attributes unless the layer lists it.
    if let Some(l) = &root.lowers {
        settle::root_attrs(root.fd.as_fd(), l).map_err(|e| io_at(Path::new("."))(e.into()))?;
    }
    let mut archive = Archive::new(tar);
    let mut done = Extracted::default();
    while let Some(h) = archive.next_entry().map_err(ExtractError::Tar)? {
        done.entries += 1;
        if done.entries > limits.max_entries {
            return Err(ExtractError::TooManyEntries(limits.max_entries));
        }
        let name = shown(&h.path);
        if h.path.len() > limits.max_path {
            return Err(ExtractError::Refused {
                name,
                why: format!("a name longer than {} bytes", limits.max_path),
            });
        }
        let xattrs = xattrs_of(&h, limits, &name, &mut done.dropped_overlay_xattrs)?;
        match apply(&root, &mut archive, &h, &name, &xattrs, limits) {
            // Streamed, the layer may have refused an entry because of what it assumed of the
            // layers below (a directory made for a whiteout where they have a file): the
            // extraction that knows them has the last word.
            Err(ExtractError::Refused { name, why }) if root.lowers.is_none() => {
                return Err(ExtractError::NeedsLowers(format!("entry {name:?}: {why}")));
            }
            r => r?,
        }
        if root.copied_bytes.get() + archive.position() > limits.max_size {
            return Err(ExtractError::Refused {
                name,
                why: format!(
                    "the layer and the files it copies from the layers below exceed {} bytes \
                     (--max-layer-size)",
                    limits.max_size
                ),
            });
        }
        if root.lowers.is_none() && root.assumed.borrow().too_big() {
            return Err(ExtractError::NeedsLowers(
                "too many directories and whiteouts to check later".into(),
            ));
        }
    }
    done.copied_links = root.copied.get();
    if let Some(l) = &root.lowers {
        // What was made only for whiteouts that hide nothing goes; an opaque root hides the
        // lower names one by one.
        let mut a = root.assumed.take();
        a.root_opaque = root.root_hides.get();
        a.root_listed = true; // given the lower root's attributes at the start, or its own
        settle::settle_open(root.fd.as_fd(), l, &a).map_err(|e| io_at(Path::new("."))(e))?;
    } else {
        let mut a = root.assumed.take();
        a.root_opaque = root.root_hides.get();
        done.assumed = Some(a);
    }
    Ok((done, archive.into_inner()))
}

fn io_err(name: &str) -> impl Fn(Errno) -> ExtractError + '_ {
    move |e| ExtractError::Io {
        name: name.to_string(),
        source: e.into(),
    }
}

fn refused(name: &str, why: impl Into<String>) -> ExtractError {
    ExtractError::Refused {
        name: name.to_string(),
        why: why.into(),
    }
}

fn apply<R: Read>(
    root: &Root,
    archive: &mut Archive<R>,
    h: &Header,
    name: &str,
    xattrs: &[(Vec<u8>, Vec<u8>)],
    limits: &Limits,
) -> Result<(), ExtractError> {
    let (uid, gid) = (h.uid as u32, h.gid as u32);
    let parts = components(&h.path);
    let err = io_err(name);
    let walk_err = |e: Errno| match e {
        Errno::NOTDIR | Errno::LOOP | Errno::NOENT => refused(
            name,
            format!("its directory cannot be made inside the layer ({e})"),
        ),
        e => err(e),
    };

    // The root directory itself ("./"): only its attributes.
    let Some((leaf, parent)) = parts.split_last() else {
        if h.kind == Kind::Dir {
            root.assumed.borrow_mut().root_listed = true;
            attrs::clear_xattrs(root.fd.as_fd()).map_err(&err)?;
            return attrs::finish_fd(root.fd.as_fd(), uid, gid, h.mode, xattrs, h.mtime)
                .map_err(&err);
        }
        return Err(refused(name, "names the layer root but is not a directory"));
    };

    // Whiteouts.
    if let Some(target) = leaf.strip_prefix(WHITEOUT) {
        root.forget_dir();
        if *leaf == OPAQUE {
            return opaque_marker(root, parent, name);
        }
        if target.starts_with(WHITEOUT) {
            tracing::debug!("layer entry {name:?}: special whiteout ignored");
            return Ok(());
        }
        if target.is_empty() || target == b"." || target == b".." {
            return Err(refused(name, "a whiteout of no file"));
        }
        return whiteout(root, parent, target, name, (uid, gid));
    }

    if !matches!(h.kind, Kind::File) {
        root.forget_dir();
    }
    let leaf_name = OsStr::from_bytes(leaf);
    match h.kind {
        Kind::Dir => {
            let (dir, canon) = root.entry_parent(parent).map_err(walk_err)?;
            let canon = canon.map(|c| child_path(&c, leaf));
            let mut fresh_opaque = false;
            let existed = match stat_at(dir.as_fd(), leaf).map_err(&err)? {
                Some(st) if kind(&st) == FileType::Directory => {
                    // Listed after all: its attributes are the layer's own.
                    if !root.assumed.borrow().is_empty() {
                        let c = canon.unwrap_or_else(|| canonical(root, parent, leaf));
                        root.assumed.borrow_mut().listed(&c);
                    }
                    true
                }
                Some(_) => {
                    // This layer put something else here (a whiteout, a file): whatever the
                    // lower layers had at this name is gone, so the directory is opaque.
                    rustix::fs::unlinkat(&dir, leaf_name, rustix::fs::AtFlags::empty())
                        .map_err(&err)?;
                    fresh_opaque = true;
                    false
                }
                None => false,
            };
            if !existed {
                rustix::fs::mkdirat(&dir, leaf_name, Mode::from_raw_mode(0o700)).map_err(&err)?;
            }
            let fd = merged::open_dir_at(dir.as_fd(), leaf).map_err(&err)?;
            if existed {
                // Its xattrs are the entry's own, not those it was copied up with.
                attrs::clear_xattrs(fd.as_fd()).map_err(&err)?;
            }
            attrs::finish_fd(fd.as_fd(), uid, gid, h.mode, xattrs, h.mtime).map_err(&err)?;
            if fresh_opaque {
                set_opaque(fd.as_fd()).map_err(&err)?;
            }
            Ok(())
        }
        Kind::File => {
            let (dir, parent_setgid) = root.entry_dir(parent).map_err(walk_err)?;
            // A file that is ours (our uid and gid, no setgid parent) with plain permissions
            // the umask leaves alone is created with its final mode: no chown, no chmod.
            let plain = creds().is_some_and(|c| {
                uid == c.uid
                    && gid == c.gid
                    && !parent_setgid
                    && h.mode & 0o7000 == 0
                    && h.mode & 0o777 & c.umask == 0
            });
            let create_mode = if plain { h.mode & 0o777 } else { 0o600 };
            let create = || {
                rustix::fs::openat(
                    &*dir,
                    leaf_name,
                    OFlags::WRONLY
                        | OFlags::CREATE
                        | OFlags::EXCL
                        | OFlags::NOFOLLOW
                        | OFlags::CLOEXEC,
                    Mode::from_raw_mode(create_mode),
                )
            };
            // Most names are new in their layer: try first, make room only when taken.
            let fd = match create() {
                Err(Errno::EXIST) => {
                    root.forget_dir();
                    root.clear(dir.as_fd(), leaf, &|| canonical(root, parent, leaf))
                        .map_err(&err)?;
                    create()
                }
                other => other,
            }
            .map_err(&err)?;
            let file = File::from(fd);
            let mut buf = root.buf.borrow_mut();
            let mut data = archive.data();
            let written = match &h.sparse {
                None => write_contents(&mut data, &file, &mut buf),
                Some(s) => write_sparse(&mut data, &file, s, &mut buf),
            };
            written.map_err(|source| ExtractError::Io {
                name: name.to_string(),
                source,
            })?;
            if plain {
                attrs::set_xattrs(file.as_fd(), xattrs).map_err(&err)?;
                rustix::fs::futimens(&file, &attrs::times(h.mtime)).map_err(&err)
            } else {
                attrs::finish_fd(file.as_fd(), uid, gid, h.mode, xattrs, h.mtime).map_err(&err)
            }
        }
        Kind::Symlink => {
            if h.link.is_empty() {
                return Err(refused(name, "a symlink without a target"));
            }
            if h.link.len() > limits.max_path {
                return Err(refused(
                    name,
                    format!("a link target longer than {} bytes", limits.max_path),
                ));
            }
            let dir = replace_at(root, parent, leaf).map_err(walk_err)?;
            // The target is stored verbatim: it is only ever followed inside the layers.
            rustix::fs::symlinkat(OsStr::from_bytes(&h.link), &dir, leaf_name).map_err(&err)?;
            attrs::chown_at(dir.as_fd(), leaf_name, uid, gid).map_err(&err)?;
            attrs::set_xattrs_at(dir.as_fd(), leaf_name, xattrs, name).map_err(&err)?;
            attrs::mtime_at(dir.as_fd(), leaf_name, h.mtime).map_err(&err)
        }
        Kind::HardLink => hardlink(root, parent, leaf, h, name, limits, archive.position()),
        Kind::Char | Kind::Block | Kind::Fifo => {
            let (ft, dev) = match h.kind {
                Kind::Char => (
                    FileType::CharacterDevice,
                    rustix::fs::makedev(h.dev_major, h.dev_minor),
                ),
                Kind::Block => (
                    FileType::BlockDevice,
                    rustix::fs::makedev(h.dev_major, h.dev_minor),
                ),
                _ => (FileType::Fifo, 0),
            };
            let dir = replace_at(root, parent, leaf).map_err(walk_err)?;
            rustix::fs::mknodat(&dir, leaf_name, ft, Mode::from_raw_mode(0o600), dev)
                .map_err(&err)?;
            attrs::chown_at(dir.as_fd(), leaf_name, uid, gid).map_err(&err)?;
            rustix::fs::chmodat(
                &dir,
                leaf_name,
                Mode::from_raw_mode(h.mode & 0o7777),
                rustix::fs::AtFlags::empty(),
            )
            .map_err(&err)?;
            attrs::set_xattrs_at(dir.as_fd(), leaf_name, xattrs, name).map_err(&err)?;
            attrs::mtime_at(dir.as_fd(), leaf_name, h.mtime).map_err(&err)
        }
        Kind::Other(t) => Err(refused(
            name,
            format!(
                "an entry of type {:?}, which no container runtime unpacks; rebuild the layer \
                 without it",
                t as char
            ),
        )),
    }
}

/// The canonical path of `leaf` in the directory `parent` resolves to.
fn canonical(root: &Root, parent: &[&[u8]], leaf: &[u8]) -> Vec<u8> {
    let p = root
        .walk_lookup(parent)
        .ok()
        .flatten()
        .map(|c| c.path())
        .unwrap_or_default();
    child_path(&p, leaf)
}

/// `dir/name`, or `name` in the root.
fn child_path(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = dir.to_vec();
    if !p.is_empty() {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

/// The top layer's directory for a new non-directory `leaf`, with room made for it.
fn replace_at(root: &Root, parent: &[&[u8]], leaf: &[u8]) -> Result<OwnedFd, Errno> {
    let (dir, canon) = root.entry_parent(parent)?;
    let canon = canon.map(|c| child_path(&c, leaf));
    root.clear(dir.as_fd(), leaf, &|| {
        canon
            .clone()
            .unwrap_or_else(|| canonical(root, parent, leaf))
    })?;
    Ok(dir)
}

/// `.wh..wh..opq` in `parent`: the lower layers' contents of that directory are gone. Nothing
/// to do if the merged view has no such directory (umoci makes none).
fn opaque_marker(root: &Root, parent: &[&[u8]], name: &str) -> Result<(), ExtractError> {
    let err = io_err(name);
    if parent.is_empty() {
        // overlayfs ignores an opaque layer root: the lower layers' names are hidden one by
        // one once they are known.
        if root.lowers.is_none() && root.assumed.borrow().implied_under(b"") {
            return Err(ExtractError::NeedsLowers(
                "the layer root is made opaque after directories were implied".into(),
            ));
        }
        if root.lowers.is_some() {
            settle::remove_whiteouts(root.fd.as_fd()).map_err(&err)?;
        }
        root.root_hides.set(true);
        return Ok(());
    }
    let cur = if root.lowers.is_some() {
        match root.walk_lookup(parent) {
            Ok(Some(_)) => root.walk_for_whiteout(parent),
            Ok(None) | Err(Errno::NOTDIR | Errno::NOENT) => return Ok(()),
            Err(e) => Err(e),
        }
    } else {
        root.walk_for_whiteout(parent)
    };
    let cur = cur.map_err(|e| refused(name, format!("its directory cannot be made ({e})")))?;
    let Some(cur) = cur else { return Ok(()) };
    let dir = cur.top.as_ref().expect("created");
    root.make_opaque(dir.as_fd(), &cur.path())
}

/// `.wh.NAME` in `parent`: NAME of the lower layers is gone. What this layer made stays (OCI:
/// whiteouts apply to the layers below); a directory of this layer becomes opaque.
fn whiteout(
    root: &Root,
    parent: &[&[u8]],
    target: &[u8],
    name: &str,
    (uid, gid): (u32, u32),
) -> Result<(), ExtractError> {
    let err = io_err(name);
    let cant = |e: Errno| refused(name, format!("its directory cannot be made ({e})"));
    let known = root.lowers.is_some();
    let cur = if known {
        match root.walk_lookup(parent) {
            Ok(Some(c)) => c,
            Ok(None) | Err(Errno::NOTDIR | Errno::NOENT) => return Ok(()),
            Err(e) => return Err(cant(e)),
        }
    } else {
        match root.walk_for_whiteout(parent).map_err(cant)? {
            Some(c) => c,
            None => return Ok(()),
        }
    };
    let found = cur.find(target).map_err(&err)?;
    let cur = match found {
        Found::Top(st)
            if kind(&st) == FileType::Directory
                && root
                    .assumed
                    .borrow()
                    .made_for_whiteouts(&child_path(&cur.path(), target)) =>
        {
            // A copy of the lower directory made only to hold whiteouts: the lower directory
            // is what goes.
            let top = cur.top.as_ref().expect("found in the top layer");
            settle::remove_tree(top.as_fd(), target).map_err(&err)?;
            root.assumed
                .borrow_mut()
                .removed(&child_path(&cur.path(), target));
            cur
        }
        Found::Top(st) if kind(&st) == FileType::Directory => {
            let top = cur.top.as_ref().expect("found in the top layer");
            let d = merged::open_dir_at(top.as_fd(), target).map_err(&err)?;
            return root.make_opaque(d.as_fd(), &child_path(&cur.path(), target));
        }
        Found::Top(_) => return Ok(()),
        Found::Lower(..) => match root.walk_for_whiteout(parent).map_err(cant)? {
            Some(c) => c,
            None => return Ok(()),
        },
        Found::Absent if known || cur.hides => return Ok(()),
        Found::Absent => cur,
    };
    let top = cur.top.as_ref().expect("created");
    let t = OsStr::from_bytes(target);
    rustix::fs::mknodat(
        top,
        t,
        FileType::CharacterDevice,
        Mode::from_raw_mode(0o000),
        rustix::fs::makedev(0, 0),
    )
    .map_err(&err)?;
    attrs::chown_at(top.as_fd(), t, uid, gid).map_err(&err)?;
    if !known {
        root.assumed
            .borrow_mut()
            .whiteout(child_path(&cur.path(), target));
    }
    Ok(())
}

/// A hardlink: to an entry of this layer, a link; to one only a lower layer has, a copy
/// (overlayfs cannot link across layers), counted against the layer's size.
fn hardlink(
    root: &Root,
    parent: &[&[u8]],
    leaf: &[u8],
    h: &Header,
    name: &str,
    limits: &Limits,
    position: u64,
) -> Result<(), ExtractError> {
    let err = io_err(name);
    let tparts = components(&h.link);
    let Some((tleaf, tparent)) = tparts.split_last() else {
        return Err(refused(name, "a hardlink to the layer root or to nothing"));
    };
    let nowhere = || {
        refused(
            name,
            format!(
                "a hardlink to {:?}, which is not a file of this layer or of the layers \
                 below it",
                shown(&h.link)
            ),
        )
    };
    let cur = match root.walk_lookup(tparent) {
        Ok(Some(c)) => c,
        Ok(None) | Err(Errno::NOTDIR | Errno::NOENT | Errno::LOOP) if root.lowers.is_some() => {
            return Err(nowhere());
        }
        Ok(None) | Err(Errno::NOTDIR | Errno::NOENT | Errno::LOOP) => {
            return Err(ExtractError::NeedsLowers(format!(
                "{name:?} links to a lower layer"
            )));
        }
        Err(e) => return Err(err(e)),
    };
    match cur.find(tleaf).map_err(&err)? {
        Found::Top(st) if is_whiteout(&st) => Err(refused(
            name,
            format!(
                "a hardlink to {:?}, which this layer deleted",
                shown(&h.link)
            ),
        )),
        Found::Top(st) if kind(&st) == FileType::Directory => Err(refused(
            name,
            format!("a hardlink to the directory {:?}", shown(&h.link)),
        )),
        Found::Top(_) => {
            let tdir =
                rustix::io::dup(cur.top.as_ref().expect("found in the top layer")).map_err(&err)?;
            let dir = replace_at(root, parent, leaf).map_err(&err)?;
            // linkat without AT_SYMLINK_FOLLOW links the entry itself, never what it points to.
            rustix::fs::linkat(
                &tdir,
                OsStr::from_bytes(tleaf),
                &dir,
                OsStr::from_bytes(leaf),
                rustix::fs::AtFlags::empty(),
            )
            .map_err(&err)
        }
        Found::Lower(..) if root.lowers.is_none() => unreachable!("no lower layers are known"),
        Found::Lower(i, st) => {
            // The entry's own path is cleared before the link is made (as umoci does): a
            // target beneath it is gone by then.
            let target = child_path(&cur.path(), tleaf);
            let entry = root
                .walk_lookup(parent)
                .ok()
                .flatten()
                .map(|c| child_path(&c.path(), leaf));
            if let Some(entry) = entry
                && (target == entry || target.starts_with(&child_path(&entry, b"")))
            {
                return Err(refused(
                    name,
                    format!("a hardlink to {:?}, which it replaces", shown(&h.link)),
                ));
            }
            if kind(&st) == FileType::Directory {
                return Err(refused(
                    name,
                    format!("a hardlink to the directory {:?}", shown(&h.link)),
                ));
            }
            let size = if kind(&st) == FileType::RegularFile {
                st.st_size as u64
            } else {
                0
            };
            if root.copied_bytes.get() + size > limits.max_size.saturating_sub(position) {
                return Err(refused(
                    name,
                    format!(
                        "its copy of {:?} of a lower layer takes the layer past its size limit \
                         ({} bytes; --max-layer-size)",
                        shown(&h.link),
                        limits.max_size
                    ),
                ));
            }
            let dir = replace_at(root, parent, leaf).map_err(&err)?;
            let n = lower::copy_lower(
                cur.lowers[i].as_fd(),
                tleaf,
                &st,
                dir.as_fd(),
                OsStr::from_bytes(leaf),
            )
            .map_err(|source| ExtractError::Io {
                name: name.to_string(),
                source,
            })?;
            root.copied_bytes.set(root.copied_bytes.get() + n);
            root.copied.set(root.copied.get() + 1);
            Ok(())
        }
        Found::Absent if root.lowers.is_none() => Err(ExtractError::NeedsLowers(format!(
            "{name:?} links to a lower layer"
        ))),
        Found::Absent => Err(nowhere()),
    }
}

#[cfg(test)]
#[path = "extract_tests.rs"]
pub(crate) mod tests;
