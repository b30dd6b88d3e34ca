//! The layers below the one being extracted: copying an entry out of one (a hardlink overlayfs
//! cannot make across layers) and reading a file as the merged layers show it.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use rustix::fs::{FileType, Mode, OFlags, Stat, XattrFlags};
use rustix::io::Errno;

use super::attrs::{self, Xattrs};
use super::merged::{self, Cursor, Found, Make};

/// The xattrs of `name` in `dir` (not opened, not followed), overlayfs's own left out.
fn xattrs_at(dir: BorrowedFd<'_>, name: &[u8]) -> Result<Xattrs, Errno> {
    let mut path = format!("/proc/self/fd/{}/", dir.as_raw_fd()).into_bytes();
    path.extend_from_slice(name);
    let path = OsStr::from_bytes(&path);
    attrs::collect_xattrs(
        |buf| rustix::fs::llistxattr(path, buf),
        |k, buf| rustix::fs::lgetxattr(path, k, buf),
    )
}

/// A copy of the lower layer's entry `name` in `from` (a file, symlink, FIFO or device; `st`
/// its stat) at `to_name` in `to`: content, owner, mode, every xattr (capabilities included)
/// and mtime, as a separate inode. Returns the bytes of content copied.
pub(super) fn copy_lower(
    from: BorrowedFd<'_>,
    name: &[u8],
    st: &Stat,
    to: BorrowedFd<'_>,
    to_name: &OsStr,
) -> io::Result<u64> {
    let mtime = (st.st_mtime, st.st_mtime_nsec as u32);
    let shown = String::from_utf8_lossy(name).into_owned();
    match merged::kind(st) {
        FileType::RegularFile => {
            let mut src = File::from(rustix::fs::openat(
                from,
                OsStr::from_bytes(name),
                OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?);
            let mut dst = File::from(rustix::fs::openat(
                to,
                to_name,
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            )?);
            let n = io::copy(&mut src, &mut dst)?;
            attrs::copy_attrs(src.as_fd(), dst.as_fd())?;
            Ok(n)
        }
        FileType::Symlink => {
            let target = rustix::fs::readlinkat(from, OsStr::from_bytes(name), Vec::new())?;
            rustix::fs::symlinkat(target.as_bytes(), to, to_name)?;
            attrs::chown_at(to, to_name, st.st_uid, st.st_gid)?;
            attrs::set_xattrs_at(to, to_name, &xattrs_at(from, name)?, &shown)?;
            attrs::mtime_at(to, to_name, mtime)?;
            Ok(0)
        }
        ft @ (FileType::Fifo | FileType::CharacterDevice | FileType::BlockDevice) => {
            rustix::fs::mknodat(to, to_name, ft, Mode::from_raw_mode(0o600), st.st_rdev)?;
            attrs::chown_at(to, to_name, st.st_uid, st.st_gid)?;
            rustix::fs::chmodat(
                to,
                to_name,
                Mode::from_raw_mode(st.st_mode & 0o7777),
                rustix::fs::AtFlags::empty(),
            )?;
            attrs::set_xattrs_at(to, to_name, &xattrs_at(from, name)?, &shown)?;
            attrs::mtime_at(to, to_name, mtime)?;
            Ok(0)
        }
        other => Err(io::Error::other(format!("cannot copy a {other:?}"))),
    }
}

/// Walks the merged lower layers only: nothing is ever created.
pub(super) struct Lookup;

impl Make for Lookup {
    fn missing(&mut self, _: &Cursor, _: &[u8], _: bool) -> Result<Option<OwnedFd>, Errno> {
        Ok(None)
    }
    fn copy_up(
        &mut self,
        _: &Cursor,
        _: &[u8],
        _: BorrowedFd<'_>,
    ) -> Result<Option<OwnedFd>, Errno> {
        Ok(None)
    }
}

/// Opens the roots of the layers `lowers` (their `fs/` directories, top first).
pub(super) fn open_roots(lowers: &[PathBuf]) -> io::Result<Vec<OwnedFd>> {
    lowers
        .iter()
        .map(|l| {
            rustix::fs::open(
                l,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| io::Error::new(io::Error::from(e).kind(), format!("{}: {e}", l.display())))
        })
        .collect()
}

/// The content of the regular file `rel` as the merged layers show it (top layer first),
/// symlinks followed as inside the container (never out of the layers); `None` if it is
/// missing, not a regular file, or larger than `max`.
pub fn read_merged(lowers: &[PathBuf], rel: &str, max: u64) -> Option<Vec<u8>> {
    use std::io::Read;
    let roots = open_roots(lowers).ok()?;
    let parts: Vec<&[u8]> = rel
        .split('/')
        .filter(|c| !c.is_empty())
        .map(str::as_bytes)
        .collect();
    let (leaf, parent) = parts.split_last()?;
    let root = || Cursor::root(None, &roots, false);
    let dir = merged::walk(&root, parent, &mut Lookup).ok()??;
    let Found::Lower(i, st) = dir.find(leaf).ok()? else {
        return None;
    };
    if merged::kind(&st) != FileType::RegularFile || st.st_size as u64 > max {
        return None;
    }
    let f = rustix::fs::openat(
        &dir.lowers[i],
        OsStr::from_bytes(leaf),
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .ok()?;
    let mut out = Vec::new();
    File::from(f).take(max).read_to_end(&mut out).ok()?;
    Some(out)
}

/// Sets the opaque xattr on an open directory of the top layer.
pub(super) fn set_opaque(dir: BorrowedFd<'_>) -> Result<(), Errno> {
    rustix::fs::fsetxattr(dir, merged::OPAQUE_XATTR, b"y", XattrFlags::empty())
}
