//! Attributes of the entries a layer makes: owner, mode, extended attributes and times, set
//! on an open file or relative to an open directory, never following a link.

use std::ffi::OsStr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;

use rustix::fs::{AtFlags, Gid, Mode, Timespec, Timestamps, Uid, XattrFlags};
use rustix::io::Errno;

/// Extended attributes: names and values as bytes.
pub type Xattrs = Vec<(Vec<u8>, Vec<u8>)>;

/// The prefix of overlayfs's own xattrs, never taken from a layer nor copied between layers.
pub const OVERLAY_PREFIX: &[u8] = b"trusted.overlay.";

/// A time as the layer gives it: seconds (negative before the epoch) and nanoseconds.
pub fn times(mtime: (i64, u32)) -> Timestamps {
    let t = Timespec {
        tv_sec: mtime.0,
        tv_nsec: mtime.1 as _,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

/// Sets `xattrs` on an open file or directory.
pub fn set_xattrs(fd: BorrowedFd<'_>, xattrs: &[(Vec<u8>, Vec<u8>)]) -> Result<(), Errno> {
    for (k, v) in xattrs {
        rustix::fs::fsetxattr(fd, OsStr::from_bytes(k), v, XattrFlags::empty())?;
    }
    Ok(())
}

/// Ownership, mode (after chown, which clears setuid/setgid), xattrs and mtime on an open
/// file or directory.
pub fn finish_fd(
    fd: BorrowedFd<'_>,
    uid: u32,
    gid: u32,
    mode: u32,
    xattrs: &[(Vec<u8>, Vec<u8>)],
    mtime: (i64, u32),
) -> Result<(), Errno> {
    rustix::fs::fchown(fd, Some(Uid::from_raw(uid)), Some(Gid::from_raw(gid)))?;
    rustix::fs::fchmod(fd, Mode::from_raw_mode(mode & 0o7777))?;
    set_xattrs(fd, xattrs)?;
    rustix::fs::futimens(fd, &times(mtime))
}

/// The xattrs of an open file or directory (overlayfs's own left out).
pub fn get_xattrs(fd: BorrowedFd<'_>) -> Result<Xattrs, Errno> {
    collect_xattrs(
        |buf| rustix::fs::flistxattr(fd, buf),
        |k, buf| rustix::fs::fgetxattr(fd, k, buf),
    )
}

/// The xattrs that `list` names and `get` reads, overlayfs's own left out.
pub fn collect_xattrs(
    list: impl Fn(&mut [u8]) -> Result<usize, Errno>,
    get: impl Fn(&OsStr, &mut [u8]) -> Result<usize, Errno>,
) -> Result<Xattrs, Errno> {
    // Most files have none or a few: a small buffer first, the largest list only if needed.
    let mut small = [0u8; 512];
    let mut large = Vec::new();
    let (names, n): (&[u8], usize) = match list(&mut small[..]) {
        Ok(n) => (&small, n),
        Err(Errno::NOTSUP) => return Ok(Vec::new()),
        Err(Errno::RANGE) => {
            large.resize(64 << 10, 0);
            let n = list(&mut large[..])?;
            (&large, n)
        }
        Err(e) => return Err(e),
    };
    let mut out = Vec::new();
    for k in names[..n].split(|b| *b == 0).filter(|k| !k.is_empty()) {
        if k.starts_with(OVERLAY_PREFIX) {
            continue;
        }
        let mut v = vec![0u8; 64 << 10];
        match get(OsStr::from_bytes(k), &mut v) {
            Ok(len) => out.push((k.to_vec(), v[..len].to_vec())),
            Err(Errno::NODATA) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(out)
}

/// Removes every xattr of an open directory but overlayfs's own (before a layer's entry
/// gives it its own).
pub fn clear_xattrs(fd: BorrowedFd<'_>) -> Result<(), Errno> {
    for (k, _) in get_xattrs(fd)? {
        match rustix::fs::fremovexattr(fd, OsStr::from_bytes(&k)) {
            Ok(()) | Err(Errno::NODATA) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Copies owner, mode, xattrs and mtime of the open `from` onto the open `to`.
pub fn copy_attrs(from: BorrowedFd<'_>, to: BorrowedFd<'_>) -> Result<(), Errno> {
    let st = rustix::fs::fstat(from)?;
    let xattrs = get_xattrs(from)?;
    finish_fd(
        to,
        st.st_uid,
        st.st_gid,
        st.st_mode,
        &xattrs,
        (st.st_mtime, st.st_mtime_nsec as u32),
    )
}

/// Sets the owner of `name` in `dir` without following it (a symlink keeps its target's owner).
pub fn chown_at(dir: BorrowedFd<'_>, name: &OsStr, uid: u32, gid: u32) -> Result<(), Errno> {
    rustix::fs::chownat(
        dir,
        name,
        Some(Uid::from_raw(uid)),
        Some(Gid::from_raw(gid)),
        AtFlags::SYMLINK_NOFOLLOW,
    )
}

/// Sets xattrs on `name` in `dir` without opening it (a symlink, a FIFO, a device) nor
/// following it: `lsetxattr` on the directory's `/proc/self/fd` entry and the name. A
/// symlink takes only `trusted.*` and `security.*` xattrs: others are skipped with a warning
/// (as containerd does).
pub fn set_xattrs_at(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    xattrs: &[(Vec<u8>, Vec<u8>)],
    shown: &str,
) -> Result<(), Errno> {
    if xattrs.is_empty() {
        return Ok(());
    }
    let mut path = format!("/proc/self/fd/{}/", dir.as_fd().as_raw_fd()).into_bytes();
    path.extend_from_slice(name.as_bytes());
    let path = OsStr::from_bytes(&path);
    for (k, v) in xattrs {
        match rustix::fs::lsetxattr(path, OsStr::from_bytes(k), v, XattrFlags::empty()) {
            Ok(()) => {}
            Err(e @ (Errno::PERM | Errno::NOTSUP)) => tracing::warn!(
                "layer entry {shown:?}: the xattr {} cannot be set on it ({e}); skipped",
                String::from_utf8_lossy(k)
            ),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Sets the mtime of `name` in `dir` without following it.
pub fn mtime_at(dir: BorrowedFd<'_>, name: &OsStr, mtime: (i64, u32)) -> Result<(), Errno> {
    rustix::fs::utimensat(dir, name, &times(mtime), AtFlags::SYMLINK_NOFOLLOW)
}
