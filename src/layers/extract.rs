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

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{FileType, Mode, OFlags};
use rustix::io::Errno;

use super::attrs::{self, OVERLAY_PREFIX, Xattrs};
use super::files::{creds, write_contents, write_sparse};
use super::links::hardlink;
use super::lower::{self, set_opaque};
use super::merged::{self, kind, stat_at};
use super::outcome::{child_path, components, io_err, refused, shown};
use super::settle;
use super::tar::{Archive, Header, Kind};
use super::top::{Root, canonical, replace_at};
use super::whiteouts::{opaque_marker, whiteout};

pub use super::outcome::{ExtractError, Extracted, Limits, Lowers};

const WHITEOUT: &[u8] = b".wh.";
const OPAQUE: &[u8] = b".wh..wh..opq";

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
    let mut root = Root {
        fd: root_fd,
        lowers,
        assumed: Default::default(),
        root_hides: false,
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
        if super::outcome::stopped() {
            return Err(ExtractError::Stopped);
        }
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
        match apply(&mut root, &mut archive, &h, &name, &xattrs, limits) {
            // Streamed, the layer may have refused an entry because of what it assumed of the
            // layers below (a directory made for a whiteout where they have a file): the
            // extraction that knows them has the last word.
            Err(ExtractError::Refused { name, why }) if root.lowers.is_none() => {
                return Err(ExtractError::NeedsLowers(format!("entry {name:?}: {why}")));
            }
            r => r?,
        }
        if root.copied_bytes + archive.position() > limits.max_size {
            return Err(ExtractError::Refused {
                name,
                why: format!(
                    "the layer and the files it copies from the layers below exceed {} bytes \
                     (--max-layer-size)",
                    limits.max_size
                ),
            });
        }
        if root.lowers.is_none() && root.assumed.too_big() {
            return Err(ExtractError::NeedsLowers(
                "too many directories and whiteouts to check later".into(),
            ));
        }
    }
    done.copied_links = root.copied;
    if let Some(l) = &root.lowers {
        // What was made only for whiteouts that hide nothing goes; an opaque root hides the
        // lower names one by one.
        let mut a = std::mem::take(&mut root.assumed);
        a.root_opaque = root.root_hides;
        a.root_listed = true; // given the lower root's attributes at the start, or its own
        settle::settle_open(root.fd.as_fd(), l, &a).map_err(|e| io_at(Path::new("."))(e))?;
    } else {
        let mut a = std::mem::take(&mut root.assumed);
        a.root_opaque = root.root_hides;
        done.assumed = Some(a);
    }
    Ok((done, archive.into_inner()))
}

fn apply<R: Read>(
    root: &mut Root,
    archive: &mut Archive<R>,
    h: &Header,
    name: &str,
    xattrs: &[(Vec<u8>, Vec<u8>)],
    limits: &Limits,
) -> Result<(), ExtractError> {
    // An owner no file can have (negative, beyond 32 bits, or -1, which chown reads as "leave
    // it") is refused, never truncated into another one (root, say).
    let id = |v: i64, what: &str| {
        u32::try_from(v)
            .ok()
            .filter(|id| *id != u32::MAX)
            .ok_or_else(|| refused(name, format!("{what} {v} is not a valid owner")))
    };
    let (uid, gid) = (id(h.uid, "uid")?, id(h.gid, "gid")?);
    let parts = components(&h.path);
    let err = io_err(name);

    // The root directory itself ("./"): only its attributes.
    let Some((leaf, parent)) = parts.split_last() else {
        if h.kind == Kind::Dir {
            root.assumed.root_listed = true;
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
    let e = Entry {
        h,
        name,
        xattrs,
        uid,
        gid,
        parent,
        leaf,
    };
    match h.kind {
        Kind::Dir => directory(root, &e),
        Kind::File => file(root, &e, archive, limits),
        Kind::Symlink => symlink(root, &e, limits),
        Kind::HardLink => hardlink(root, parent, leaf, h, name, limits, archive.position()),
        Kind::Char | Kind::Block | Kind::Fifo => special(root, &e),
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

/// One entry of the layer, resolved by [`apply`]: its header, the name errors show, its
/// checked owner, and where it goes (the components of its directory, its own name).
struct Entry<'a> {
    h: &'a Header,
    name: &'a str,
    xattrs: &'a [(Vec<u8>, Vec<u8>)],
    uid: u32,
    gid: u32,
    parent: &'a [&'a [u8]],
    leaf: &'a [u8],
}

impl Entry<'_> {
    fn leaf_name(&self) -> &OsStr {
        OsStr::from_bytes(self.leaf)
    }

    fn err(&self) -> impl Fn(Errno) -> ExtractError + '_ {
        io_err(self.name)
    }

    /// A failure to reach the entry's directory: refused when the layer's own paths lead
    /// nowhere, an I/O error otherwise.
    fn walk_err(&self) -> impl Fn(Errno) -> ExtractError + '_ {
        move |e: Errno| match e {
            Errno::NOTDIR | Errno::LOOP | Errno::NOENT => refused(
                self.name,
                format!("its directory cannot be made inside the layer ({e})"),
            ),
            e => io_err(self.name)(e),
        }
    }
}

/// A directory: made (or kept, its attributes replaced), opaque when this layer had put
/// something else at its name.
fn directory(root: &mut Root, e: &Entry<'_>) -> Result<(), ExtractError> {
    let (dir, canon) = root.entry_parent(e.parent).map_err(e.walk_err())?;
    let canon = canon.map(|c| child_path(&c, e.leaf));
    let mut fresh_opaque = false;
    let existed = match stat_at(dir.as_fd(), e.leaf).map_err(e.err())? {
        Some(st) if kind(&st) == FileType::Directory => {
            // Listed after all: its attributes are the layer's own.
            if !root.assumed.is_empty() {
                let c = canon.unwrap_or_else(|| canonical(root, e.parent, e.leaf));
                root.assumed.listed(&c);
            }
            true
        }
        Some(_) => {
            // This layer put something else here (a whiteout, a file): whatever the
            // lower layers had at this name is gone, so the directory is opaque.
            rustix::fs::unlinkat(&dir, e.leaf_name(), rustix::fs::AtFlags::empty())
                .map_err(e.err())?;
            fresh_opaque = true;
            false
        }
        None => false,
    };
    if !existed {
        rustix::fs::mkdirat(&dir, e.leaf_name(), Mode::from_raw_mode(0o700)).map_err(e.err())?;
    }
    let fd = merged::open_dir_at(dir.as_fd(), e.leaf).map_err(e.err())?;
    if existed {
        // Its xattrs are the entry's own, not those it was copied up with.
        attrs::clear_xattrs(fd.as_fd()).map_err(e.err())?;
    }
    attrs::finish_fd(fd.as_fd(), e.uid, e.gid, e.h.mode, e.xattrs, e.h.mtime).map_err(e.err())?;
    if fresh_opaque {
        set_opaque(fd.as_fd()).map_err(e.err())?;
    }
    Ok(())
}

/// A regular file (sparse or not): created with its final mode when nothing needs changing
/// after, its contents streamed from the archive.
fn file<R: Read>(
    root: &mut Root,
    e: &Entry<'_>,
    archive: &mut Archive<R>,
    limits: &Limits,
) -> Result<(), ExtractError> {
    let (dir, parent_setgid) = root.entry_dir(e.parent).map_err(e.walk_err())?;
    // A file that is ours (our uid and gid, no setgid parent) with plain permissions
    // the umask leaves alone is created with its final mode: no chown, no chmod.
    let plain = creds().is_some_and(|c| {
        e.uid == c.uid
            && e.gid == c.gid
            && !parent_setgid
            && e.h.mode & 0o7000 == 0
            && e.h.mode & 0o777 & c.umask == 0
    });
    let create_mode = if plain { e.h.mode & 0o777 } else { 0o600 };
    let create = || {
        rustix::fs::openat(
            &*dir,
            e.leaf_name(),
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(create_mode),
        )
    };
    // Most names are new in their layer: try first, make room only when taken.
    let fd = match create() {
        Err(Errno::EXIST) => {
            root.forget_dir();
            root.clear(dir.as_fd(), e.leaf, |r| canonical(r, e.parent, e.leaf))
                .map_err(e.err())?;
            create()
        }
        other => other,
    }
    .map_err(e.err())?;
    let file = File::from(fd);
    let buf = &mut root.buf;
    let mut data = archive.data();
    let written = match &e.h.sparse {
        None => write_contents(&mut data, &file, e.h.size, limits.direct_io, buf),
        Some(s) => write_sparse(&mut data, &file, s, buf),
    };
    written.map_err(|source| ExtractError::Io {
        name: e.name.to_string(),
        source,
    })?;
    if plain {
        attrs::set_xattrs(file.as_fd(), e.xattrs).map_err(e.err())?;
        rustix::fs::futimens(&file, &attrs::times(e.h.mtime)).map_err(e.err())
    } else {
        attrs::finish_fd(file.as_fd(), e.uid, e.gid, e.h.mode, e.xattrs, e.h.mtime).map_err(e.err())
    }
}

/// A symbolic link, its target stored verbatim (only ever followed inside the layers).
fn symlink(root: &mut Root, e: &Entry<'_>, limits: &Limits) -> Result<(), ExtractError> {
    if e.h.link.is_empty() {
        return Err(refused(e.name, "a symlink without a target"));
    }
    if e.h.link.len() > limits.max_path {
        return Err(refused(
            e.name,
            format!("a link target longer than {} bytes", limits.max_path),
        ));
    }
    let dir = replace_at(root, e.parent, e.leaf).map_err(e.walk_err())?;
    // The target is stored verbatim: it is only ever followed inside the layers.
    rustix::fs::symlinkat(OsStr::from_bytes(&e.h.link), &dir, e.leaf_name()).map_err(e.err())?;
    attrs::chown_at(dir.as_fd(), e.leaf_name(), e.uid, e.gid).map_err(e.err())?;
    attrs::set_xattrs_at(dir.as_fd(), e.leaf_name(), e.xattrs, e.name).map_err(e.err())?;
    attrs::mtime_at(dir.as_fd(), e.leaf_name(), e.h.mtime).map_err(e.err())
}

/// A character or block device, or a FIFO.
fn special(root: &mut Root, e: &Entry<'_>) -> Result<(), ExtractError> {
    let (ft, dev) = match e.h.kind {
        Kind::Char => (
            FileType::CharacterDevice,
            rustix::fs::makedev(e.h.dev_major, e.h.dev_minor),
        ),
        Kind::Block => (
            FileType::BlockDevice,
            rustix::fs::makedev(e.h.dev_major, e.h.dev_minor),
        ),
        _ => (FileType::Fifo, 0),
    };
    let dir = replace_at(root, e.parent, e.leaf).map_err(e.walk_err())?;
    rustix::fs::mknodat(&dir, e.leaf_name(), ft, Mode::from_raw_mode(0o600), dev)
        .map_err(e.err())?;
    attrs::chown_at(dir.as_fd(), e.leaf_name(), e.uid, e.gid).map_err(e.err())?;
    rustix::fs::chmodat(
        &dir,
        e.leaf_name(),
        Mode::from_raw_mode(e.h.mode & 0o7777),
        rustix::fs::AtFlags::empty(),
    )
    .map_err(e.err())?;
    attrs::set_xattrs_at(dir.as_fd(), e.leaf_name(), e.xattrs, e.name).map_err(e.err())?;
    attrs::mtime_at(dir.as_fd(), e.leaf_name(), e.h.mtime).map_err(e.err())
}

#[cfg(test)]
#[path = "extract_tests.rs"]
pub(crate) mod tests;
