//! The layers below the one being extracted: looking a path up in them (beneath each layer,
//! following no link) and copying a file out of one (a hardlink overlayfs cannot make).

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;

use rustix::fs::{FileType, Mode, OFlags, ResolveFlags};

use super::extract::finish_fd;

/// What `rel` is in the lower layers, top first: the first layer that has the name decides
/// (a whiteout there means it is gone). Each lookup stays beneath that layer and follows no
/// symlink (`RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`): a link in a lower layer never leads a
/// lookup out of it.
pub(super) fn in_lowers(lowers: &[PathBuf], rel: &[&[u8]]) -> Option<(OwnedFd, rustix::fs::Stat)> {
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

/// A copy of a lower layer's regular file (`src`, an `O_PATH` handle found by [`in_lowers`])
/// at `name` in `dir`: content, owner, mode, `user.*` xattrs and mtime (a separate inode).
pub(super) fn copy_lower_file(
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

/// The content of the regular file `rel` as the merged layers show it (top layer first), read
/// beneath the layer that has it without following any link; `None` if no layer has it (or
/// it is not a regular file), or it is larger than `max`.
pub fn read_merged(lowers: &[PathBuf], rel: &str, max: u64) -> Option<Vec<u8>> {
    use std::io::Read;
    let parts: Vec<&[u8]> = rel
        .split('/')
        .filter(|c| !c.is_empty())
        .map(str::as_bytes)
        .collect();
    let (fd, st) = in_lowers(lowers, &parts)?;
    if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile || st.st_size as u64 > max {
        return None;
    }
    let proc = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&fd));
    let mut f = File::from(
        rustix::fs::open(
            proc.as_str(),
            OFlags::RDONLY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .ok()?,
    );
    let mut out = Vec::new();
    f.by_ref().take(max).read_to_end(&mut out).ok()?;
    Some(out)
}

/// Gives the directories `dirs` of the layer `fs` (relative paths it did not list) the mode
/// and owner of the same directories in the layers below (`lowers`, top first); a directory
/// no lower layer has keeps 0755 root:root. Each is opened beneath `fs`, following no link.
pub fn fix_implied_dirs(
    fs: &std::path::Path,
    lowers: &[PathBuf],
    dirs: &[String],
) -> io::Result<()> {
    let root = rustix::fs::open(
        fs,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    for rel in dirs {
        let parts: Vec<&[u8]> = rel
            .split('/')
            .filter(|c| !c.is_empty())
            .map(str::as_bytes)
            .collect();
        let Some((_, st)) = in_lowers(lowers, &parts) else {
            continue;
        };
        if FileType::from_raw_mode(st.st_mode) != FileType::Directory {
            continue;
        }
        let Ok(dir) = rustix::fs::openat2(
            &root,
            rel.as_str(),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
            ResolveFlags::BENEATH | ResolveFlags::NO_SYMLINKS | ResolveFlags::NO_MAGICLINKS,
        ) else {
            continue;
        };
        rustix::fs::fchown(
            &dir,
            Some(rustix::fs::Uid::from_raw(st.st_uid)),
            Some(rustix::fs::Gid::from_raw(st.st_gid)),
        )?;
        rustix::fs::fchmod(&dir, Mode::from_raw_mode(st.st_mode & 0o7777))?;
    }
    Ok(())
}
