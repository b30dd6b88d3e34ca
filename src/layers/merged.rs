//! The merged view of a layer over the layers below it, as overlayfs shows it once they are
//! mounted: a name is what the topmost layer that has it says (a whiteout there: gone); a
//! directory merges with the same directory of the layers below until one of them has a
//! non-directory there or is opaque. Paths are walked through it one component at a time, a
//! symlink followed as if the merged tree were `/` (`..` never climbs above it), so that a
//! layer's `bin/sh` lands where the merged rootfs's `/bin/sh` is (`usr/bin/sh` under a merged
//! /usr), as umoci, containerd and Docker resolve it.
//!
//! Every directory is opened by one name relative to an open parent, never following a link
//! (`O_NOFOLLOW`): the walk never leaves the layers, whatever their links say.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use rustix::fs::{AtFlags, FileType, Mode, OFlags, Stat};
use rustix::io::Errno;

pub(super) const OPAQUE_XATTR: &str = "trusted.overlay.opaque";
/// Symlinks followed in one walk before it is a loop (the kernel's limit).
const MAX_LINKS: u32 = 40;

/// Whether `st` is an overlay whiteout (a character device 0/0).
pub(super) fn is_whiteout(st: &Stat) -> bool {
    FileType::from_raw_mode(st.st_mode) == FileType::CharacterDevice && st.st_rdev == 0
}

pub(super) fn kind(st: &Stat) -> FileType {
    FileType::from_raw_mode(st.st_mode)
}

/// Whether the open directory `dir` is opaque.
pub(super) fn is_opaque(dir: BorrowedFd<'_>) -> bool {
    let mut v = [0u8; 2];
    matches!(rustix::fs::fgetxattr(dir, OPAQUE_XATTR, &mut v), Ok(1) if v[0] == b'y')
}

/// Opens the directory `name` in `dir` without following a link.
pub(super) fn open_dir_at(dir: BorrowedFd<'_>, name: &[u8]) -> Result<OwnedFd, Errno> {
    rustix::fs::openat(
        dir,
        OsStr::from_bytes(name),
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

pub(super) fn stat_at(dir: BorrowedFd<'_>, name: &[u8]) -> Result<Option<Stat>, Errno> {
    match rustix::fs::statat(dir, OsStr::from_bytes(name), AtFlags::SYMLINK_NOFOLLOW) {
        Ok(st) => Ok(Some(st)),
        Err(Errno::NOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

/// A directory of the merged view: its path, the top layer's directory there (if the top
/// layer has one), and the lower layers' directories that merge into it, top first.
pub(super) struct Cursor {
    pub canon: Vec<Vec<u8>>,
    pub top: Option<OwnedFd>,
    /// The lower layers are hidden here (an opaque directory of the top layer, here or above).
    pub hides: bool,
    pub lowers: Vec<OwnedFd>,
    /// `false`: a name that is nowhere, walked through by name only (as filepath-securejoin
    /// walks it: a later `..` may come back to what exists).
    pub exists: bool,
    /// A file was on the way to this name that is nowhere: walked through by name only too,
    /// but if the walk ends beneath it, that is `ENOTDIR`.
    blocked: bool,
}

/// What a name is in a directory of the merged view.
pub(super) enum Found {
    /// In the top layer (possibly a whiteout of it).
    Top(Stat),
    /// In a lower layer (`Cursor::lowers[i]`), not whited out above it.
    Lower(usize, Stat),
    Absent,
}

impl Cursor {
    /// The root of the merged view: the top layer's root over the lower layers' roots.
    pub fn root(top: Option<OwnedFd>, lowers: &[OwnedFd], hides: bool) -> Result<Cursor, Errno> {
        Ok(Cursor {
            exists: true,
            blocked: false,
            canon: Vec::new(),
            top,
            hides,
            lowers: if hides {
                Vec::new()
            } else {
                lowers
                    .iter()
                    .map(rustix::io::dup)
                    .collect::<Result<_, _>>()?
            },
        })
    }

    pub fn path(&self) -> Vec<u8> {
        self.canon.join(&b'/')
    }

    /// What `name` is here.
    pub fn find(&self, name: &[u8]) -> Result<Found, Errno> {
        if let Some(top) = &self.top
            && let Some(st) = stat_at(top.as_fd(), name)?
        {
            return Ok(Found::Top(st));
        }
        if self.hides {
            return Ok(Found::Absent);
        }
        for (i, l) in self.lowers.iter().enumerate() {
            if let Some(st) = stat_at(l.as_fd(), name)? {
                if is_whiteout(&st) {
                    return Ok(Found::Absent);
                }
                return Ok(Found::Lower(i, st));
            }
        }
        Ok(Found::Absent)
    }

    /// The lower layers' directories `name` that merge into a directory of that name here,
    /// starting at lower `from`: each that has a directory there, until one has something
    /// else (or is opaque there, itself included).
    fn merged_lowers(&self, name: &[u8], from: usize) -> Result<Vec<OwnedFd>, Errno> {
        let mut out = Vec::new();
        for l in &self.lowers[from..] {
            match stat_at(l.as_fd(), name)? {
                None => continue,
                Some(st) if kind(&st) == FileType::Directory => {
                    let d = open_dir_at(l.as_fd(), name)?;
                    let opaque = is_opaque(d.as_fd());
                    out.push(d);
                    if opaque {
                        break;
                    }
                }
                Some(_) => break,
            }
        }
        Ok(out)
    }

    /// A name beneath this directory that is nowhere (`blocked`: because a file is there).
    fn nowhere(&self, name: &[u8], blocked: bool) -> Cursor {
        let mut canon = self.canon.clone();
        canon.push(name.to_vec());
        Cursor {
            canon,
            top: None,
            hides: true,
            lowers: Vec::new(),
            exists: false,
            blocked: blocked || self.blocked,
        }
    }

    /// The directory `name` of this one, whose top-layer directory (if any) is `top`.
    pub fn child(&self, name: &[u8], top: Option<OwnedFd>) -> Result<Cursor, Errno> {
        let hides = self.hides || top.as_ref().is_some_and(|t| is_opaque(t.as_fd()));
        let lowers = if hides {
            Vec::new()
        } else {
            self.merged_lowers(name, 0)?
        };
        let mut canon = self.canon.clone();
        canon.push(name.to_vec());
        Ok(Cursor {
            canon,
            top,
            hides,
            lowers,
            exists: true,
            blocked: false,
        })
    }
}

/// One component of a walk: into a directory (or a name that is nowhere), or along a
/// symlink to its target.
enum Step {
    Into(Cursor),
    Link(std::ffi::CString),
}

/// What a walk does when a component is missing from the merged view (or is a whiteout of
/// the top layer), or is a directory of the lower layers only.
pub(super) trait Make {
    /// A directory to create in the top layer at `at` (in `parent`), where the merged view
    /// has none: `None` stops the walk (a lookup).
    fn missing(
        &mut self,
        parent: &Cursor,
        name: &[u8],
        whiteout: bool,
    ) -> Result<Option<OwnedFd>, Errno>;
    /// The top layer's copy of a directory that only the lower layers have (`lower` is the
    /// topmost), or `None` to walk on in the lower layers only.
    fn copy_up(
        &mut self,
        parent: &Cursor,
        name: &[u8],
        lower: BorrowedFd<'_>,
    ) -> Result<Option<OwnedFd>, Errno>;
}

/// Walks `parts` from the root of the merged view, following symlinks as the merged rootfs
/// would (an absolute target from the root again). Returns the directory reached, or `None`
/// if it is nowhere: `make` made nothing for a missing name (the walk goes on by name, as
/// filepath-securejoin does, so that `missing/..` comes back), or `ENOTDIR` if it ends
/// beneath a file. Too many links is `ELOOP`.
pub(super) fn walk(
    root: &dyn Fn() -> Result<Cursor, Errno>,
    parts: &[&[u8]],
    make: &mut dyn Make,
) -> Result<Option<Cursor>, Errno> {
    let cur = walk_to(root, parts, make)?;
    Ok(cur.exists.then_some(cur))
}

/// [`walk`], ending at a name that is nowhere too (`Cursor::exists` false): its canonical
/// path is what a directory made there would have.
pub(super) fn walk_to(
    root: &dyn Fn() -> Result<Cursor, Errno>,
    parts: &[&[u8]],
    make: &mut dyn Make,
) -> Result<Cursor, Errno> {
    let mut cur = root()?;
    let mut queue: std::collections::VecDeque<Vec<u8>> = parts.iter().map(|p| p.to_vec()).collect();
    // The chain of directories walked, so that ".." returns to the parent's cursor.
    let mut stack: Vec<Cursor> = Vec::new();
    let mut links = 0;
    while let Some(c) = queue.pop_front() {
        match c.as_slice() {
            b"" | b"." => continue,
            b".." => {
                // Never above the root.
                if let Some(parent) = stack.pop() {
                    cur = parent;
                }
                continue;
            }
            _ => {}
        }
        // Into a directory (or a name that is nowhere), or along a symlink.
        let step = match cur.find(&c)? {
            Found::Top(st) if kind(&st) == FileType::Directory => {
                let top = cur.top.as_ref().expect("found in the top layer");
                Step::Into(cur.child(&c, Some(open_dir_at(top.as_fd(), &c)?))?)
            }
            Found::Top(st) if kind(&st) == FileType::Symlink => {
                let top = cur.top.as_ref().expect("found in the top layer");
                Step::Link(rustix::fs::readlinkat(
                    top.as_fd(),
                    OsStr::from_bytes(&c),
                    Vec::new(),
                )?)
            }
            Found::Top(st) if is_whiteout(&st) => {
                Step::Into(match make.missing(&cur, &c, true)? {
                    Some(d) => cur.child(&c, Some(d))?,
                    None => cur.nowhere(&c, false),
                })
            }
            Found::Top(_) => Step::Into(cur.nowhere(&c, true)),
            Found::Lower(i, st) if kind(&st) == FileType::Directory => {
                let lower = open_dir_at(cur.lowers[i].as_fd(), &c)?;
                let top = make.copy_up(&cur, &c, lower.as_fd())?;
                let mut canon = cur.canon.clone();
                canon.push(c.clone());
                let mut lowers = vec![];
                if !is_opaque(lower.as_fd()) {
                    lowers = cur.merged_lowers(&c, i + 1)?;
                }
                lowers.insert(0, lower);
                Step::Into(Cursor {
                    canon,
                    top,
                    hides: cur.hides,
                    lowers,
                    exists: true,
                    blocked: false,
                })
            }
            Found::Lower(i, st) if kind(&st) == FileType::Symlink => Step::Link(
                rustix::fs::readlinkat(cur.lowers[i].as_fd(), OsStr::from_bytes(&c), Vec::new())?,
            ),
            Found::Lower(..) => Step::Into(cur.nowhere(&c, true)),
            Found::Absent => Step::Into(match make.missing(&cur, &c, false)? {
                Some(d) => cur.child(&c, Some(d))?,
                None => cur.nowhere(&c, false),
            }),
        };
        let target = match step {
            Step::Into(next) => {
                stack.push(std::mem::replace(&mut cur, next));
                continue;
            }
            Step::Link(link) => link.into_bytes(),
        };
        links += 1;
        if links > MAX_LINKS {
            return Err(Errno::LOOP);
        }
        let rest: Vec<Vec<u8>> = target
            .split(|b| *b == b'/')
            .filter(|p| !p.is_empty())
            .map(<[u8]>::to_vec)
            .collect();
        if target.first() == Some(&b'/') {
            cur = root()?;
            stack.clear();
        }
        for p in rest.into_iter().rev() {
            queue.push_front(p);
        }
    }
    if cur.blocked {
        return Err(Errno::NOTDIR);
    }
    Ok(cur)
}
