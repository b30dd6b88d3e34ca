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

use rustix::fs::{
    AtFlags, FileType, Gid, Mode, OFlags, ResolveFlags, Timespec, Timestamps, Uid, XattrFlags,
};
use rustix::io::Errno;

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
}

/// What `rel` is in the lower layers, top first: the first layer that has the name decides
/// (a whiteout there means it is gone). Each lookup stays beneath that layer and follows no
/// symlink (`RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`): a link in a lower layer never leads a
/// lookup out of it.
fn in_lowers(lowers: &[PathBuf], rel: &[&[u8]]) -> Option<(OwnedFd, rustix::fs::Stat)> {
    let rel: PathBuf = rel.iter().map(|c| OsStr::from_bytes(c)).collect();
    for lower in lowers {
        let Ok(dir) = rustix::fs::open(
            lower,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        ) else {
            continue;
        };
        let Ok(fd) = rustix::fs::openat2(
            &dir,
            rel.as_path(),
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
        ) else {
            continue;
        };
        let Ok(st) = rustix::fs::fstat(&fd) else {
            continue;
        };
        if FileType::from_raw_mode(st.st_mode) == FileType::CharacterDevice && st.st_rdev == 0 {
            return None; // whited out
        }
        return Some((fd, st));
    }
    None
}

impl Root {
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

/// A copy of a lower layer's regular file (`src`, an `O_PATH` handle found by [`in_lowers`])
/// at `name` in `dir`: content, owner, mode, `user.*` xattrs and mtime (a separate inode).
fn copy_lower_file(
    src: BorrowedFd<'_>,
    st: &rustix::fs::Stat,
    dir: BorrowedFd<'_>,
    name: &OsStr,
) -> io::Result<()> {
    // Reopened for reading through the handle itself (its /proc/self/fd entry): nothing is
    // resolved again by name.
    let proc = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&src));
    let mut from = File::from(rustix::fs::open(
        proc.as_str(),
        OFlags::RDONLY | OFlags::CLOEXEC,
        Mode::empty(),
    )?);
    let mut to = File::from(rustix::fs::openat(
        dir,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )?);
    io::copy(&mut from, &mut to)?;
    let mut xattrs = Vec::new();
    let mut names = vec![0u8; 64 << 10];
    if let Ok(n) = rustix::fs::flistxattr(&from, &mut names) {
        for k in names[..n]
            .split(|b| *b == 0)
            .filter(|k| k.starts_with(b"user."))
        {
            let mut v = vec![0u8; 64 << 10];
            if let Ok(len) = rustix::fs::fgetxattr(&from, OsStr::from_bytes(k), &mut v) {
                xattrs.push((String::from_utf8_lossy(k).into_owned(), v[..len].to_vec()));
            }
        }
    }
    finish_fd(
        to.as_fd(),
        st.st_uid,
        st.st_gid,
        st.st_mode,
        &xattrs,
        st.st_mtime.max(0) as u64,
    )?;
    Ok(())
}

/// Ownership, mode (after chown, which clears setuid/setgid), xattrs and mtime on an open
/// file or directory.
fn finish_fd(
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
    let dir = root.parent(parent).map_err(|e| ExtractError::Refused {
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
            clear(dir.as_fd(), leaf_name, false).map_err(&err)?;
            let fd = rustix::fs::openat(
                &dir,
                leaf_name,
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            )
            .map_err(&err)?;
            let mut file = File::from(fd);
            io::copy(entry, &mut file).map_err(|source| ExtractError::Io {
                name: name.to_string(),
                source,
            })?;
            finish_fd(file.as_fd(), uid, gid, mode, xattrs, mtime).map_err(&err)
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
pub(crate) mod tests {
    use super::*;
    use std::os::unix::fs::{FileTypeExt, MetadataExt};

    /// A raw ustar header and its data, padded: crafted entries the `tar` writer would refuse.
    pub fn entry(
        name: &[u8],
        typ: u8,
        data: &[u8],
        link: &[u8],
        mode: u32,
        ids: (u32, u32),
    ) -> Vec<u8> {
        let mut h = [0u8; 512];
        h[..name.len()].copy_from_slice(name);
        let octal = |h: &mut [u8; 512], at: usize, len: usize, v: u64| {
            let s = format!("{v:0w$o}\0", w = len - 1);
            h[at..at + len].copy_from_slice(s.as_bytes());
        };
        octal(&mut h, 100, 8, mode as u64);
        octal(&mut h, 108, 8, ids.0 as u64);
        octal(&mut h, 116, 8, ids.1 as u64);
        octal(&mut h, 124, 12, data.len() as u64);
        octal(&mut h, 136, 12, 1_700_000_000);
        h[156] = typ;
        h[157..157 + link.len()].copy_from_slice(link);
        h[257..263].copy_from_slice(b"ustar\0");
        h[263..265].copy_from_slice(b"00");
        h[148..156].copy_from_slice(b"        ");
        let sum: u32 = h.iter().map(|b| *b as u32).sum();
        h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
        let mut out = h.to_vec();
        out.extend_from_slice(data);
        out.resize(out.len().div_ceil(512) * 512, 0);
        out
    }

    pub fn file(name: &str, data: &[u8]) -> Vec<u8> {
        entry(name.as_bytes(), b'0', data, b"", 0o644, (0, 0))
    }
    pub fn dir(name: &str) -> Vec<u8> {
        entry(name.as_bytes(), b'5', b"", b"", 0o755, (0, 0))
    }
    pub fn symlink(name: &str, target: &str) -> Vec<u8> {
        entry(name.as_bytes(), b'2', b"", target.as_bytes(), 0o777, (0, 0))
    }
    pub fn hardlink(name: &str, target: &str) -> Vec<u8> {
        entry(name.as_bytes(), b'1', b"", target.as_bytes(), 0o644, (0, 0))
    }
    /// A PAX extended header applying `records` to the next entry.
    pub fn pax(records: &[(&str, &[u8])]) -> Vec<u8> {
        let mut data = Vec::new();
        for (k, v) in records {
            let body_len = k.len() + v.len() + 3;
            let mut len = body_len + 1;
            while format!("{len}").len() + body_len != len {
                len = format!("{len}").len() + body_len;
            }
            data.extend_from_slice(format!("{len} {k}=").as_bytes());
            data.extend_from_slice(v);
            data.push(b'\n');
        }
        entry(b"PaxHeader", b'x', &data, b"", 0o644, (0, 0))
    }
    pub fn tar(entries: &[Vec<u8>]) -> Vec<u8> {
        let mut out: Vec<u8> = entries.concat();
        out.extend_from_slice(&[0u8; 1024]);
        out
    }

    /// A layer root inside a sandbox directory, with a file beside it that must never change.
    struct Sandbox {
        dir: tempfile::TempDir,
    }
    impl Sandbox {
        fn new() -> Sandbox {
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir(dir.path().join("fs")).unwrap();
            std::fs::write(dir.path().join("outside"), "untouched").unwrap();
            Sandbox { dir }
        }
        fn fs(&self) -> PathBuf {
            self.dir.path().join("fs")
        }
        fn run(&self, layer: &[Vec<u8>]) -> Result<Extracted, ExtractError> {
            extract(
                &tar(layer)[..],
                &self.fs(),
                Lowers::Known(Vec::new()),
                &Limits::default(),
            )
            .map(|(x, _)| x)
        }
        /// Everything beside `fs/` is as it was.
        fn outside_untouched(&self) {
            let mut names: Vec<_> = std::fs::read_dir(self.dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            assert_eq!(names, vec!["fs", "outside"]);
            assert_eq!(
                std::fs::read_to_string(self.dir.path().join("outside")).unwrap(),
                "untouched"
            );
        }
    }

    #[test]
    fn dot_dot_and_absolute_names_stay_inside() {
        let s = Sandbox::new();
        s.run(&[
            file("../outside", b"evil"),
            file("../../../../etc/evil-abs", b"x"),
            file("/abs/evil", b"y"),
            file("a/../../b", b"z"),
        ])
        .unwrap();
        s.outside_untouched();
        assert_eq!(std::fs::read(s.fs().join("outside")).unwrap(), b"evil");
        assert!(s.fs().join("etc/evil-abs").is_file());
        assert!(s.fs().join("abs/evil").is_file());
        assert!(s.fs().join("b").is_file());
    }

    #[test]
    fn symlinks_never_lead_a_later_entry_outside() {
        // A link to the sandbox by its absolute name: inside the root that name loops back
        // through the link itself, or names nothing; either way a clear error, nothing outside.
        let s = Sandbox::new();
        let outside = s.dir.path().to_str().unwrap().to_string();
        let e = s
            .run(&[symlink("tmp", &outside), file("tmp/evil", b"1")])
            .unwrap_err();
        assert!(e.to_string().contains("tmp/evil"), "{e}");
        s.outside_untouched();

        // A link climbing with ".." is taken inside the root: "up/escape" is "escape".
        let s = Sandbox::new();
        s.run(&[
            symlink("up", "../../../../.."),
            file("up/escape", b"2"),
            symlink("rel", "../outside"),
            file("rel", b"replaces the link, not its target"),
            dir("real"),
            symlink("alias", "/real"),
            file("alias/through", b"3"),
        ])
        .unwrap();
        s.outside_untouched();
        assert!(s.fs().join("escape").is_file());
        assert!(s.fs().join("rel").symlink_metadata().unwrap().is_file());
        assert!(
            s.fs().join("real/through").is_file(),
            "an absolute link inside the root"
        );
    }

    #[test]
    fn a_directory_replaced_by_a_symlink_is_not_written_through() {
        let s = Sandbox::new();
        let outside = s.dir.path().to_str().unwrap().to_string();
        let r = s.run(&[
            dir("d"),
            symlink("d", &outside),
            file("d/x", b"through the link?"),
        ]);
        assert!(r.is_err(), "{r:?}");
        s.outside_untouched();
        assert!(
            s.fs()
                .join("d")
                .symlink_metadata()
                .unwrap()
                .file_type()
                .is_symlink()
        );
    }

    #[test]
    fn hardlinks_never_reach_outside() {
        for target in ["/etc/passwd", "../outside", "../../../../etc/passwd"] {
            let s = Sandbox::new();
            let e = s.run(&[hardlink("pw", target)]).unwrap_err();
            assert!(
                e.to_string().contains("not in this layer")
                    || e.to_string().contains("not a file of this layer"),
                "{target}: {e}"
            );
            s.outside_untouched();
            assert!(!s.fs().join("pw").exists());
        }
        // Through a symlink inside the layer: resolved inside the root, still nothing outside.
        let s = Sandbox::new();
        let outside = s.dir.path().to_str().unwrap().to_string();
        let e = s
            .run(&[symlink("l", &outside), hardlink("pw", "l/outside")])
            .unwrap_err();
        assert!(e.to_string().contains("pw"), "{e}");
        s.outside_untouched();
        // Within the layer: one inode.
        let s = Sandbox::new();
        s.run(&[file("a", b"same"), hardlink("b", "a")]).unwrap();
        let (a, b) = (
            s.fs().join("a").metadata().unwrap(),
            s.fs().join("b").metadata().unwrap(),
        );
        assert_eq!((a.ino(), a.nlink()), (b.ino(), 2));
    }

    #[test]
    fn whiteouts_become_overlay_whiteouts_and_never_escape() {
        let s = Sandbox::new();
        s.run(&[
            dir("d"),
            file("d/.wh.gone", b""),
            file("o/.wh..wh..opq", b""),
            file(".wh.top", b""),
        ])
        .unwrap();
        let w = s.fs().join("d/gone").symlink_metadata().unwrap();
        assert!(w.file_type().is_char_device() && w.rdev() == 0);
        assert!(
            s.fs()
                .join("top")
                .symlink_metadata()
                .unwrap()
                .file_type()
                .is_char_device()
        );
        let opq = rustix::fs::getxattr(s.fs().join("o").as_path(), OPAQUE_XATTR, &mut [0u8; 8]);
        assert_eq!(opq.ok(), Some(1));
        for bad in ["d/.wh..", "d/.wh...", ".wh."] {
            let s = Sandbox::new();
            let e = s.run(&[file(bad, b"")]).unwrap_err();
            assert!(e.to_string().contains("whiteout"), "{bad}: {e}");
            s.outside_untouched();
        }
    }

    #[test]
    fn a_pax_size_that_disagrees_still_leaves_nothing_outside() {
        let s = Sandbox::new();
        // The PAX record says 0 bytes; the ustar header says 512 and carries, as data, a header
        // for "../../escape". Whichever size a parser believes, nothing lands outside.
        let hidden = file("../../escape", b"hidden");
        let mut smuggler = entry(b"carrier", b'0', &hidden, b"", 0o644, (0, 0));
        smuggler.truncate(512 + hidden.len());
        let _ = s.run(&[pax(&[("size", b"0")]), smuggler, file("after", b"ok")]);
        s.outside_untouched();
    }

    #[test]
    fn overlay_format_modes_owners_devices_and_xattrs() {
        let s = Sandbox::new();
        let x = s
            .run(&[
                pax(&[
                    ("SCHILY.xattr.user.note", b"kept"),
                    ("SCHILY.xattr.trusted.overlay.opaque", b"y"),
                ]),
                entry(b"bin/su", b'0', b"#!", b"", 0o4755, (1000, 1001)),
                entry(b"tmp", b'5', b"", b"", 0o1777, (0, 0)),
                entry(b"fifo", b'6', b"", b"", 0o640, (7, 8)),
                entry(b"null", b'3', b"", b"", 0o666, (0, 0)),
                entry(b"link", b'2', b"", b"bin/su", 0o777, (1000, 1001)),
                file("empty", b""),
            ])
            .unwrap();
        assert_eq!(x.dropped_overlay_xattrs, 1);
        let su = s.fs().join("bin/su").metadata().unwrap();
        assert_eq!(
            (su.mode() & 0o7777, su.uid(), su.gid()),
            (0o4755, 1000, 1001)
        );
        assert_eq!(su.mtime(), 1_700_000_000);
        let mut buf = [0u8; 16];
        let n =
            rustix::fs::getxattr(s.fs().join("bin/su").as_path(), "user.note", &mut buf).unwrap();
        assert_eq!(&buf[..n], b"kept");
        assert!(
            rustix::fs::getxattr(
                s.fs().join("bin/su").as_path(),
                "trusted.overlay.opaque",
                &mut buf
            )
            .is_err()
        );
        assert_eq!(
            s.fs().join("tmp").metadata().unwrap().mode() & 0o7777,
            0o1777
        );
        let fifo = s.fs().join("fifo").symlink_metadata().unwrap();
        assert!(fifo.file_type().is_fifo() && fifo.uid() == 7 && fifo.mode() & 0o777 == 0o640);
        assert!(
            s.fs()
                .join("null")
                .symlink_metadata()
                .unwrap()
                .file_type()
                .is_char_device()
        );
        let l = s.fs().join("link").symlink_metadata().unwrap();
        assert!(
            l.file_type().is_symlink() && l.uid() == 1000,
            "owner set without following"
        );
        assert_eq!(
            std::fs::read_link(s.fs().join("link")).unwrap(),
            Path::new("bin/su")
        );
        assert_eq!(s.fs().join("empty").metadata().unwrap().len(), 0);
    }

    #[test]
    fn long_names_and_limits() {
        let s = Sandbox::new();
        let long = format!("{}/{}", "d".repeat(200), "f".repeat(200));
        s.run(&[pax(&[("path", long.as_bytes())]), file("placeholder", b"x")])
            .unwrap();
        assert!(s.fs().join(&long).is_file());
        let s = Sandbox::new();
        let too_long = "a/".repeat(2100);
        let e = s
            .run(&[pax(&[("path", too_long.as_bytes())]), file("p", b"")])
            .unwrap_err();
        assert!(e.to_string().contains("longer than 4096"), "{e}");
        let s = Sandbox::new();
        let limits = Limits {
            max_entries: 2,
            ..Limits::default()
        };
        let e = extract(
            &tar(&[file("a", b""), file("b", b""), file("c", b"")])[..],
            &s.fs(),
            Lowers::Unknown,
            &limits,
        )
        .unwrap_err();
        assert!(matches!(e, ExtractError::TooManyEntries(2)));
        let s = Sandbox::new();
        let big = vec![b'v'; 70_000];
        let e = s
            .run(&[pax(&[("SCHILY.xattr.user.big", &big)]), file("x", b"")])
            .unwrap_err();
        assert!(e.to_string().contains("xattrs"), "{e}");
    }

    #[test]
    fn lower_layers_give_implied_directories_and_hardlink_copies() {
        let lower = tempfile::tempdir().unwrap();
        std::fs::create_dir(lower.path().join("etc")).unwrap();
        rustix::fs::chown(
            lower.path().join("etc").as_path(),
            Some(Uid::from_raw(5)),
            Some(Gid::from_raw(6)),
        )
        .unwrap();
        std::fs::set_permissions(
            lower.path().join("etc"),
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )
        .unwrap();
        std::fs::create_dir(lower.path().join("data")).unwrap();
        std::fs::write(lower.path().join("data/f"), b"lower content").unwrap();
        rustix::fs::setxattr(
            lower.path().join("data/f").as_path(),
            "user.k",
            b"v",
            XattrFlags::empty(),
        )
        .unwrap();
        let layer = tar(&[file("etc/x", b"x"), hardlink("copy", "data/f")]);

        // Streaming, lowers unknown: the link cannot be made yet.
        let s = Sandbox::new();
        let e = extract(&layer[..], &s.fs(), Lowers::Unknown, &Limits::default()).unwrap_err();
        assert!(matches!(e, ExtractError::NeedsLowers(_)), "{e}");

        let s = Sandbox::new();
        let (x, _) = extract(
            &layer[..],
            &s.fs(),
            Lowers::Known(vec![lower.path().to_path_buf()]),
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(x.copied_links, 1);
        let etc = s.fs().join("etc").metadata().unwrap();
        assert_eq!((etc.mode() & 0o7777, etc.uid(), etc.gid()), (0o700, 5, 6));
        assert_eq!(
            std::fs::read(s.fs().join("copy")).unwrap(),
            b"lower content"
        );
        let mut v = [0u8; 4];
        let n = rustix::fs::getxattr(s.fs().join("copy").as_path(), "user.k", &mut v).unwrap();
        assert_eq!(&v[..n], b"v");
        assert_ne!(
            s.fs().join("copy").metadata().unwrap().ino(),
            lower.path().join("data/f").metadata().unwrap().ino(),
            "a copy, not a link across layers"
        );
        // Not in the lowers either: refused, nothing created.
        let s = Sandbox::new();
        let e = extract(
            &tar(&[hardlink("x", "nowhere")])[..],
            &s.fs(),
            Lowers::Known(vec![lower.path().to_path_buf()]),
            &Limits::default(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("not a file of this layer"), "{e}");
        // Implied directories are recorded while the lowers are unknown.
        let s = Sandbox::new();
        let (x, _) = extract(
            &tar(&[file("a/b/c", b"")])[..],
            &s.fs(),
            Lowers::Unknown,
            &Limits::default(),
        )
        .unwrap();
        assert_eq!(x.implied_dirs, vec!["a".to_string(), "a/b".to_string()]);
    }
}
