//! Extracting one layer's tar stream into a directory, in the overlayfs format, safely.
//!
//! Every entry's parent is resolved inside the layer root with `openat2(RESOLVE_IN_ROOT)`
//! (an absolute name, `..` or a symlink of the layer never leads outside it), and the entry
//! itself is created with `*at` calls on that parent, never following a link: ownership, modes,
//! times and xattrs are set on the open file or with `AT_SYMLINK_NOFOLLOW`. The `tar` crate is
//! used only to parse the stream.
//!
//! Overlay format: `.wh.NAME` becomes a character device 0/0 named `NAME`; `.wh..wh..opq`
//! sets `trusted.overlay.opaque=y` on its directory; a layer's own `trusted.overlay.*` xattrs
//! are never applied.

use std::borrow::Cow;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use rustix::fs::{
    AtFlags, FileType, Gid, Mode, OFlags, ResolveFlags, Timespec, Timestamps, Uid, XattrFlags,
};
use rustix::io::Errno;

use super::lower::{copy_lower_file, in_lowers};

/// Limits of one layer (SPEC §8); the uncompressed size is enforced by the reader.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_entries: u64,
    /// Longest entry name or link target, in bytes.
    pub max_path: usize,
    /// Most bytes of extended attributes (names and values) per entry.
    pub max_xattrs: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_entries: 1_000_000,
            max_path: 4096,
            max_xattrs: 64 << 10,
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
    /// Streaming only: the layer needs its lower layers (a hardlink to one of their files).
    #[error("entry {0:?} links to a file of a lower layer, which is not unpacked yet")]
    NeedsLowers(String),
}

/// What an extraction wrote.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Extracted {
    pub entries: u64,
    /// Layer-supplied `trusted.overlay.*` xattrs that were dropped (warned about).
    pub dropped_overlay_xattrs: u64,
    /// Directories the layer did not list, created while its lower layers were unknown
    /// (their attributes may have to come from a lower layer).
    pub implied_dirs: Vec<String>,
    /// Hardlinks to a lower layer's file, copied (overlayfs cannot link across layers).
    pub copied_links: u64,
}

const WHITEOUT: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";
const OPAQUE_XATTR: &str = "trusted.overlay.opaque";

/// An entry name as components inside the root: a leading `/` and `.` components dropped,
/// `..` taken inside the root (it never climbs above it), as a chroot would.
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
    /// Not known yet: a directory the layer does not list is recorded in
    /// [`Extracted::implied_dirs`], and a hardlink to a lower file is [`ExtractError::NeedsLowers`].
    #[default]
    Unknown,
    Known(Vec<PathBuf>),
}

/// The layer root and the operations on it.
struct Root {
    fd: OwnedFd,
    lowers: Lowers,
    implied: std::cell::RefCell<Vec<String>>,
    copied: std::cell::Cell<u64>,
    /// The directory the last regular file went into, by its path in the layer: sorted layers
    /// put many files in a row into one directory, and each lookup costs an `openat2` walk
    /// and a `close`. Only regular files that take a fresh name use it; any other entry, or a
    /// file that replaces something, forgets it, so it never outlives a change of the tree.
    last_dir: std::cell::RefCell<Option<LastDir>>,
    /// File contents pass through here, so that a file is written in whole chunks (one
    /// `write` for most files) rather than in the pieces the decompressor yields: a write
    /// that ends inside a block makes the kernel zero the rest of it first.
    buf: std::cell::RefCell<Vec<u8>>,
}

/// A directory by its path in the layer, open, and whether it is setgid.
type LastDir = (Vec<u8>, Rc<OwnedFd>, bool);

/// The largest piece of a file written at once.
const WRITE_CHUNK: usize = 1 << 20;

impl Root {
    /// The parent directory of a regular file (the cached one when it is the same path), and
    /// whether it is setgid (its new files take its group, not ours).
    fn file_parent(&self, path: &[&[u8]]) -> Result<(Rc<OwnedFd>, bool), Errno> {
        let joined = path.join(&b'/');
        if let Some((p, fd, setgid)) = &*self.last_dir.borrow()
            && *p == joined
        {
            return Ok((fd.clone(), *setgid));
        }
        let fd = Rc::new(self.parent(path)?);
        let setgid = rustix::fs::fstat(&*fd)?.st_mode & 0o2000 != 0;
        *self.last_dir.borrow_mut() = Some((joined, fd.clone(), setgid));
        Ok((fd, setgid))
    }

    fn forget_dir(&self) {
        self.last_dir.borrow_mut().take();
    }

    /// Opens the directory `path` of a parent, resolved inside the root (`RESOLVE_IN_ROOT`:
    /// symlinks are followed as if the root were `/`; no magic links).
    fn open_dir(&self, path: &[&[u8]]) -> Result<OwnedFd, Errno> {
        if path.is_empty() {
            return rustix::io::dup(&self.fd);
        }
        let joined = path.join(&b'/');
        rustix::fs::openat2(
            &self.fd,
            OsStr::from_bytes(&joined),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS,
        )
    }

    /// The parent directory of an entry, creating missing directories (0755, root:root).
    fn parent(&self, path: &[&[u8]]) -> Result<OwnedFd, Errno> {
        match self.open_dir(path) {
            Ok(fd) => return Ok(fd),
            Err(Errno::NOENT) => {}
            Err(e) => return Err(e),
        }
        // Create the missing tail, one component at a time, each resolved inside the root.
        let mut fd = rustix::io::dup(&self.fd)?;
        for i in 0..path.len() {
            fd = match self.open_dir(&path[..=i]) {
                Ok(next) => next,
                Err(Errno::NOENT) => {
                    let name = OsStr::from_bytes(path[i]);
                    match rustix::fs::mkdirat(&fd, name, Mode::from_raw_mode(0o755)) {
                        Ok(()) | Err(Errno::EXIST) => {}
                        Err(e) => return Err(e),
                    }
                    let dir = rustix::fs::openat(
                        &fd,
                        name,
                        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                        Mode::empty(),
                    )?;
                    // A directory the layer does not list takes the attributes of the same
                    // directory in the lower layers, else 0755 root:root.
                    match &self.lowers {
                        Lowers::Known(lowers) => {
                            if let Some((_, st)) = in_lowers(lowers, &path[..=i])
                                && FileType::from_raw_mode(st.st_mode) == FileType::Directory
                            {
                                rustix::fs::fchown(
                                    &dir,
                                    Some(Uid::from_raw(st.st_uid)),
                                    Some(Gid::from_raw(st.st_gid)),
                                )?;
                                rustix::fs::fchmod(&dir, Mode::from_raw_mode(st.st_mode & 0o7777))?;
                            }
                        }
                        Lowers::Unknown => self
                            .implied
                            .borrow_mut()
                            .push(String::from_utf8_lossy(&path[..=i].join(&b'/')).into_owned()),
                    }
                    dir
                }
                Err(e) => return Err(e),
            };
        }
        Ok(fd)
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

/// What is at `name` in `dir`, without following it.
fn kind_at(dir: BorrowedFd<'_>, name: &OsStr) -> Option<FileType> {
    rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)
        .ok()
        .map(|s| FileType::from_raw_mode(s.st_mode))
}

/// Makes room for a new entry at `name`: an existing non-directory is removed; an existing
/// directory is kept when `keep_dir` (a directory entry over a directory), else removed if
/// empty.
fn clear(dir: BorrowedFd<'_>, name: &OsStr, keep_dir: bool) -> Result<bool, Errno> {
    match kind_at(dir, name) {
        None => Ok(false),
        Some(FileType::Directory) if keep_dir => Ok(true),
        Some(FileType::Directory) => {
            rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR)?;
            Ok(false)
        }
        Some(_) => {
            rustix::fs::unlinkat(dir, name, AtFlags::empty())?;
            Ok(false)
        }
    }
}

/// Sets the owner of `name` in `dir` without following it (a symlink keeps its target's owner).
fn chown_at(dir: BorrowedFd<'_>, name: &OsStr, uid: u32, gid: u32) -> Result<(), Errno> {
    rustix::fs::chownat(
        dir,
        name,
        Some(Uid::from_raw(uid)),
        Some(Gid::from_raw(gid)),
        AtFlags::SYMLINK_NOFOLLOW,
    )
}

fn times(mtime: u64) -> Timestamps {
    let t = Timespec {
        tv_sec: mtime.min(i64::MAX as u64) as i64,
        tv_nsec: 0,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

/// Xattrs and mtime on an open file created with its final owner and mode.
fn finish_plain_fd(
    fd: BorrowedFd<'_>,
    xattrs: &[(String, Vec<u8>)],
    mtime: u64,
) -> Result<(), Errno> {
    for (k, v) in xattrs {
        rustix::fs::fsetxattr(fd, k.as_str(), v, XattrFlags::empty())?;
    }
    rustix::fs::futimens(fd, &times(mtime))
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

/// Ownership, mode (after chown, which clears setuid/setgid), xattrs and mtime on an open
/// file or directory.
pub(super) fn finish_fd(
    fd: BorrowedFd<'_>,
    uid: u32,
    gid: u32,
    mode: u32,
    xattrs: &[(String, Vec<u8>)],
    mtime: u64,
) -> Result<(), Errno> {
    rustix::fs::fchown(fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))?;
    rustix::fs::fchmod(fd, Mode::from_raw_mode(mode & 0o7777))?;
    for (k, v) in xattrs {
        rustix::fs::fsetxattr(fd, k.as_str(), v, XattrFlags::empty())?;
    }
    rustix::fs::futimens(fd, &times(mtime))
}

/// The xattrs of an entry from its PAX `SCHILY.xattr.*` records.
fn xattrs_of<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    limits: &Limits,
    name: &str,
    dropped: &mut u64,
) -> Result<Vec<(String, Vec<u8>)>, ExtractError> {
    let mut out = Vec::new();
    let mut total = 0usize;
    let Some(exts) = entry.pax_extensions().map_err(ExtractError::Tar)? else {
        return Ok(out);
    };
    for ext in exts {
        let ext = ext.map_err(ExtractError::Tar)?;
        let Some(key) = ext.key_bytes().strip_prefix(b"SCHILY.xattr.") else {
            continue;
        };
        let key = String::from_utf8_lossy(key).into_owned();
        if key.starts_with("trusted.overlay.") {
            *dropped += 1;
            tracing::warn!("layer entry {name:?}: the xattr {key} is not applied (overlay's own)");
            continue;
        }
        total += key.len() + ext.value_bytes().len();
        if total > limits.max_xattrs {
            return Err(ExtractError::Refused {
                name: name.to_string(),
                why: format!("more than {} bytes of xattrs", limits.max_xattrs),
            });
        }
        out.push((key, ext.value_bytes().to_vec()));
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
    let root_fd = rustix::fs::open(
        root,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(|e| ExtractError::Io {
        name: root.display().to_string(),
        source: e.into(),
    })?;
    extract_at(
        tar,
        Root {
            fd: root_fd,
            lowers,
            implied: Default::default(),
            copied: Default::default(),
            last_dir: Default::default(),
            buf: Default::default(),
        },
        limits,
    )
}

fn extract_at<R: Read>(
    tar: R,
    root: Root,
    limits: &Limits,
) -> Result<(Extracted, R), ExtractError> {
    let mut archive = tar::Archive::new(tar);
    let mut done = Extracted::default();
    for entry in archive.entries().map_err(ExtractError::Tar)? {
        let mut entry = entry.map_err(ExtractError::Tar)?;
        done.entries += 1;
        if done.entries > limits.max_entries {
            return Err(ExtractError::TooManyEntries(limits.max_entries));
        }
        let raw: Vec<u8> = entry.path_bytes().into_owned();
        let name = shown(&raw);
        if raw.len() > limits.max_path {
            return Err(ExtractError::Refused {
                name,
                why: format!("a name longer than {} bytes", limits.max_path),
            });
        }
        let xattrs = xattrs_of(&mut entry, limits, &name, &mut done.dropped_overlay_xattrs)?;
        apply(&root, &mut entry, &raw, &name, &xattrs, limits)?;
    }
    done.implied_dirs = root.implied.take();
    done.copied_links = root.copied.get();
    Ok((done, archive.into_inner()))
}

fn io_err(name: &str) -> impl Fn(Errno) -> ExtractError + '_ {
    move |e| ExtractError::Io {
        name: name.to_string(),
        source: e.into(),
    }
}

fn apply<R: Read>(
    root: &Root,
    entry: &mut tar::Entry<'_, R>,
    raw: &[u8],
    name: &str,
    xattrs: &[(String, Vec<u8>)],
    limits: &Limits,
) -> Result<(), ExtractError> {
    let header = entry.header().clone();
    let kind = header.entry_type();
    let mode = header.mode().map_err(ExtractError::Tar)?;
    let uid = header.uid().map_err(ExtractError::Tar)? as u32;
    let gid = header.gid().map_err(ExtractError::Tar)? as u32;
    let mtime = header.mtime().map_err(ExtractError::Tar)?;
    let parts = components(raw);
    let err = io_err(name);

    // The root directory itself ("./"): only its attributes.
    let Some((leaf, parent)) = parts.split_last() else {
        if kind.is_dir() {
            return finish_fd(root.fd.as_fd(), uid, gid, mode, xattrs, mtime).map_err(&err);
        }
        return Err(ExtractError::Refused {
            name: name.to_string(),
            why: "names the layer root but is not a directory".into(),
        });
    };
    let dir = if matches!(kind, tar::EntryType::Regular | tar::EntryType::Continuous) {
        root.file_parent(parent)
    } else {
        root.forget_dir();
        root.parent(parent).map(|d| (Rc::new(d), false))
    };
    let (dir, parent_setgid) = dir.map_err(|e| ExtractError::Refused {
        name: name.to_string(),
        why: format!("its directory cannot be opened inside the layer ({e})"),
    })?;
    let leaf_name = OsStr::from_bytes(leaf);

    // Whiteouts.
    if let Some(target) = leaf.strip_prefix(WHITEOUT.as_bytes()) {
        if *leaf == OPAQUE.as_bytes() {
            return rustix::fs::fsetxattr(&dir, OPAQUE_XATTR, b"y", XattrFlags::empty())
                .map_err(&err);
        }
        if target.starts_with(WHITEOUT.as_bytes()) {
            tracing::debug!("layer entry {name:?}: special whiteout ignored");
            return Ok(());
        }
        if target.is_empty() || target == b"." || target == b".." {
            return Err(ExtractError::Refused {
                name: name.to_string(),
                why: "a whiteout of no file".into(),
            });
        }
        let target = OsStr::from_bytes(target);
        clear(dir.as_fd(), target, false).map_err(&err)?;
        rustix::fs::mknodat(
            &dir,
            target,
            FileType::CharacterDevice,
            Mode::from_raw_mode(0o000),
            rustix::fs::makedev(0, 0),
        )
        .map_err(&err)?;
        return chown_at(dir.as_fd(), target, uid, gid).map_err(&err);
    }

    match kind {
        tar::EntryType::Directory => {
            // Listed after all: its attributes are the layer's own, not a lower layer's.
            let listed = String::from_utf8_lossy(&parts.join(&b'/')).into_owned();
            root.implied.borrow_mut().retain(|d| *d != listed);
            let exists = clear(dir.as_fd(), leaf_name, true).map_err(&err)?;
            if !exists {
                rustix::fs::mkdirat(&dir, leaf_name, Mode::from_raw_mode(0o700)).map_err(&err)?;
            }
            let fd = rustix::fs::openat(
                &dir,
                leaf_name,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(&err)?;
            finish_fd(fd.as_fd(), uid, gid, mode, xattrs, mtime).map_err(&err)
        }
        tar::EntryType::Regular | tar::EntryType::Continuous => {
            // A file that is ours (our uid and gid, no setgid parent) with plain permissions
            // the umask leaves alone is created with its final mode: no chown, no chmod (two
            // journaled inode updates per file). Anything else is created private and given
            // its owner, then its mode (chown clears setuid/setgid).
            let plain = creds().is_some_and(|c| {
                uid == c.uid
                    && gid == c.gid
                    && !parent_setgid
                    && mode & 0o7000 == 0
                    && mode & 0o777 & c.umask == 0
            });
            let create_mode = if plain { mode & 0o777 } else { 0o600 };
            let create = || {
                rustix::fs::openat(
                    &dir,
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
                    clear(dir.as_fd(), leaf_name, false).map_err(&err)?;
                    create()
                }
                other => other,
            }
            .map_err(&err)?;
            let file = File::from(fd);
            let mut buf = root.buf.borrow_mut();
            write_contents(entry, &file, &mut buf).map_err(|source| ExtractError::Io {
                name: name.to_string(),
                source,
            })?;
            if plain {
                finish_plain_fd(file.as_fd(), xattrs, mtime).map_err(&err)
            } else {
                finish_fd(file.as_fd(), uid, gid, mode, xattrs, mtime).map_err(&err)
            }
        }
        tar::EntryType::Symlink => {
            let target: Cow<'_, [u8]> =
                entry
                    .link_name_bytes()
                    .ok_or_else(|| ExtractError::Refused {
                        name: name.to_string(),
                        why: "a symlink without a target".into(),
                    })?;
            if target.len() > limits.max_path {
                return Err(ExtractError::Refused {
                    name: name.to_string(),
                    why: format!("a link target longer than {} bytes", limits.max_path),
                });
            }
            clear(dir.as_fd(), leaf_name, false).map_err(&err)?;
            // The target is stored verbatim: it is only ever followed inside the root.
            rustix::fs::symlinkat(OsStr::from_bytes(&target), &dir, leaf_name).map_err(&err)?;
            chown_at(dir.as_fd(), leaf_name, uid, gid).map_err(&err)?;
            rustix::fs::utimensat(&dir, leaf_name, &times(mtime), AtFlags::SYMLINK_NOFOLLOW)
                .map_err(&err)
        }
        tar::EntryType::Link => {
            let target = entry
                .link_name_bytes()
                .ok_or_else(|| ExtractError::Refused {
                    name: name.to_string(),
                    why: "a hardlink without a target".into(),
                })?
                .into_owned();
            let tparts = components(&target);
            let Some((tleaf, tparent)) = tparts.split_last() else {
                return Err(ExtractError::Refused {
                    name: name.to_string(),
                    why: "a hardlink to the layer root".into(),
                });
            };
            let tleaf_name = OsStr::from_bytes(tleaf);
            let in_layer = root
                .open_dir(tparent)
                .ok()
                .filter(|d| kind_at(d.as_fd(), tleaf_name).is_some());
            let Some(tdir) = in_layer else {
                // Not in this layer: a file of a lower layer gets copied (overlayfs cannot
                // link across layers), read only from inside that layer.
                let lowers = match &root.lowers {
                    Lowers::Known(l) => l,
                    Lowers::Unknown => return Err(ExtractError::NeedsLowers(name.to_string())),
                };
                let found = in_lowers(lowers, &tparts)
                    .filter(|(_, st)| FileType::from_raw_mode(st.st_mode) == FileType::RegularFile);
                let Some((src, st)) = found else {
                    return Err(ExtractError::Refused {
                        name: name.to_string(),
                        why: format!(
                            "a hardlink to {:?}, which is not a file of this layer or of the \
                             layers below it",
                            shown(&target)
                        ),
                    });
                };
                clear(dir.as_fd(), leaf_name, false).map_err(&err)?;
                copy_lower_file(src.as_fd(), &st, dir.as_fd(), leaf_name).map_err(|source| {
                    ExtractError::Io {
                        name: name.to_string(),
                        source,
                    }
                })?;
                root.copied.set(root.copied.get() + 1);
                return Ok(());
            };
            let tleaf = tleaf_name;
            if kind_at(tdir.as_fd(), tleaf) == Some(FileType::Directory) {
                return Err(ExtractError::Refused {
                    name: name.to_string(),
                    why: format!("a hardlink to the directory {:?}", shown(&target)),
                });
            }
            clear(dir.as_fd(), leaf_name, false).map_err(&err)?;
            // linkat without AT_SYMLINK_FOLLOW links the entry itself, never what it points to.
            rustix::fs::linkat(&tdir, tleaf, &dir, leaf_name, AtFlags::empty()).map_err(&err)
        }
        tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
            let (ft, dev) = match kind {
                tar::EntryType::Char | tar::EntryType::Block => {
                    let major = header.device_major().ok().flatten().unwrap_or(0);
                    let minor = header.device_minor().ok().flatten().unwrap_or(0);
                    let ft = if kind == tar::EntryType::Char {
                        FileType::CharacterDevice
                    } else {
                        FileType::BlockDevice
                    };
                    (ft, rustix::fs::makedev(major, minor))
                }
                _ => (FileType::Fifo, 0),
            };
            clear(dir.as_fd(), leaf_name, false).map_err(&err)?;
            rustix::fs::mknodat(&dir, leaf_name, ft, Mode::from_raw_mode(0o600), dev)
                .map_err(&err)?;
            chown_at(dir.as_fd(), leaf_name, uid, gid).map_err(&err)?;
            rustix::fs::chmodat(
                &dir,
                leaf_name,
                Mode::from_raw_mode(mode & 0o7777),
                AtFlags::empty(),
            )
            .map_err(&err)?;
            rustix::fs::utimensat(&dir, leaf_name, &times(mtime), AtFlags::SYMLINK_NOFOLLOW)
                .map_err(&err)
        }
        // PAX and GNU headers are consumed by the parser; anything else is not a file.
        other => {
            tracing::debug!("layer entry {name:?}: type {other:?} ignored");
            Ok(())
        }
    }
}

#[cfg(test)]
#[path = "extract_tests.rs"]
pub(crate) mod tests;
