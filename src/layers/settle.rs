//! Settling a layer that streamed in before the layers below it were committed: it was
//! extracted on its own, and what it assumed of the layers below ([`Assumed`], in memory and
//! bounded) is checked against them once they are known. Directories it did not list take
//! the attributes of the same directories below; whiteouts that hide nothing go; a layer whose
//! paths would have gone through a symlink of a lower layer is extracted again, with the lower
//! layers known (`Settled::Redo`).
//!
//! Also here: the tree operations on the top layer that the extraction needs (removing a
//! tree, removing the whiteouts under a directory made opaque, emulating an opaque root).

use std::collections::BTreeSet;
use std::ffi::{CStr, OsStr};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use rustix::io::Errno;

use super::attrs;
use super::lower::{open_roots, set_opaque};
use super::merged::{Cursor, Found, is_opaque, is_whiteout, kind, open_dir_at, stat_at};

/// Most bytes of path names an extraction keeps to check later; beyond, the layer waits for
/// the layers below it instead (and keeps nothing in memory).
const MAX_ASSUMED: usize = 16 << 20;

/// What a layer extracted without its lower layers assumed of them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Assumed {
    /// Directories the layer did not list, made where it had nothing (canonical paths).
    implied: BTreeSet<Vec<u8>>,
    /// Such directories made only to hold a whiteout or an opaque marker: if the layers
    /// below have no such directory, umoci makes none, and neither do we.
    whiteout_only: BTreeSet<Vec<u8>>,
    /// Whiteouts made: they go if the layers below have nothing of that name.
    whiteouts: BTreeSet<Vec<u8>>,
    /// Such directories the layer later listed or removed: entries went through them on the
    /// assumption that the layers below have no symlink there.
    checked: BTreeSet<Vec<u8>>,
    /// The layer lists its root (`./`), which then has the layer's own attributes.
    pub root_listed: bool,
    /// The layer made its root opaque.
    pub root_opaque: bool,
    bytes: usize,
}

/// `p` followed by a `/`: the start of what is beneath it (everything if `p` is the root).
fn beneath(p: &[u8]) -> Vec<u8> {
    let mut b = p.to_vec();
    if !b.is_empty() {
        b.push(b'/');
    }
    b
}

fn any_beneath(set: &BTreeSet<Vec<u8>>, p: &[u8]) -> bool {
    let b = beneath(p);
    set.range(b.clone()..)
        .next()
        .is_some_and(|k| k.starts_with(&b))
}

impl Assumed {
    pub(super) fn implied(&mut self, path: Vec<u8>, for_whiteout: bool) {
        self.bytes += path.len() + 48;
        if for_whiteout {
            self.whiteout_only.insert(path);
        } else {
            self.implied.insert(path);
        }
    }

    /// An entry's path went through `canon`: its directories made for whiteouts now hold more.
    pub(super) fn used(&mut self, canon: &[Vec<u8>]) {
        if self.whiteout_only.is_empty() {
            return;
        }
        for i in 0..canon.len() {
            let p = canon[..=i].join(&b'/');
            if self.whiteout_only.remove(&p) {
                self.implied.insert(p);
            }
        }
    }

    /// The layer lists the directory `p` after all: its attributes are its own.
    pub(super) fn listed(&mut self, p: &[u8]) {
        if self.implied.remove(p) || self.whiteout_only.remove(p) {
            self.checked.insert(p.to_vec());
        }
    }

    /// The layer removed `p` and everything beneath it.
    pub(super) fn removed(&mut self, p: &[u8]) {
        let b = beneath(p);
        for (set, keep) in [
            (&mut self.implied, true),
            (&mut self.whiteout_only, true),
            (&mut self.whiteouts, false),
        ] {
            let mut gone: Vec<Vec<u8>> = set
                .range(b.clone()..)
                .take_while(|k| k.starts_with(&b))
                .cloned()
                .collect();
            if set.contains(p) {
                gone.push(p.to_vec());
            }
            for k in gone {
                set.remove(&k);
                if keep {
                    self.checked.insert(k);
                }
            }
        }
    }

    pub(super) fn whiteout(&mut self, path: Vec<u8>) {
        self.bytes += path.len() + 48;
        self.whiteouts.insert(path);
    }

    /// Whether the directory `p` was made only to hold whiteouts.
    pub(super) fn made_for_whiteouts(&self, p: &[u8]) -> bool {
        self.whiteout_only.contains(p)
    }

    /// Whether a directory beneath `p` (anything if `p` is the root) was implied.
    pub(super) fn implied_under(&self, p: &[u8]) -> bool {
        any_beneath(&self.implied, p)
    }

    /// Whether an entry's path must be walked to keep the record right (directories made for
    /// whiteouts only are there).
    pub(super) fn needs_walk(&self) -> bool {
        !self.whiteout_only.is_empty()
    }

    pub fn is_empty(&self) -> bool {
        self.implied.is_empty() && self.whiteout_only.is_empty() && self.whiteouts.is_empty()
    }

    pub(super) fn too_big(&self) -> bool {
        self.bytes > MAX_ASSUMED
    }
}

/// The directories of the merged view along a path, kept between paths that share a prefix.
struct Walker {
    stack: Vec<Cursor>,
}

impl Walker {
    /// The merged directory that holds `p` and `p`'s last component, walking only through
    /// directories of the top layer; `None` if the top layer has no such directory.
    fn parent_of<'p>(&mut self, p: &'p [u8]) -> Result<Option<(&Cursor, &'p [u8])>, Errno> {
        let parts: Vec<&[u8]> = p.split(|b| *b == b'/').collect();
        let (name, dirs) = parts.split_last().expect("split yields one part");
        let mut keep = 1;
        while keep < self.stack.len()
            && keep - 1 < dirs.len()
            && self.stack[keep].canon.last().map(Vec::as_slice) == Some(dirs[keep - 1])
        {
            keep += 1;
        }
        self.stack.truncate(keep);
        for d in &dirs[keep - 1..] {
            let cur = self.stack.last().expect("the root stays");
            let Some(top) = &cur.top else {
                return Ok(None);
            };
            let sub = match open_dir_at(top.as_fd(), d) {
                Ok(fd) => fd,
                Err(Errno::NOENT | Errno::NOTDIR | Errno::LOOP) => return Ok(None),
                Err(e) => return Err(e),
            };
            let next = cur.child(d, Some(sub))?;
            self.stack.push(next);
        }
        Ok(Some((self.stack.last().expect("the root stays"), name)))
    }
}

/// What the layers below have at `name` in the merged directory `cur` (`None`: nothing, or
/// hidden), and the directory they hold it in.
fn below(cur: &Cursor, name: &[u8]) -> Result<Option<(usize, rustix::fs::Stat)>, Errno> {
    if cur.hides {
        return Ok(None);
    }
    for (i, l) in cur.lowers.iter().enumerate() {
        if let Some(st) = stat_at(l.as_fd(), name)? {
            return Ok((!is_whiteout(&st)).then_some((i, st)));
        }
    }
    Ok(None)
}

/// Settles the layer at `fs` (streamed with its lower layers unknown) over `lowers` (their
/// `fs/` directories, top first). `Ok(Some(why))`: it must be extracted again, with its lower
/// layers known.
pub fn settle(fs: &Path, lowers: &[PathBuf], a: &Assumed) -> io::Result<Option<String>> {
    let top = rustix::fs::open(
        fs,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )?;
    let roots = open_roots(lowers)?;
    settle_open(top.as_fd(), &roots, a)
}

/// [`settle`] on the open top layer and lower layer roots.
pub(super) fn settle_open(
    top: BorrowedFd<'_>,
    roots: &[OwnedFd],
    a: &Assumed,
) -> io::Result<Option<String>> {
    let mut w = Walker {
        stack: vec![Cursor::root(
            Some(rustix::io::dup(top)?),
            roots,
            a.root_opaque,
        )?],
    };
    // Paths walked through directories since gone: a lower symlink there means the entries
    // went elsewhere.
    for p in &a.checked {
        if let Some(why) = lower_link_on(roots, p)? {
            return Ok(Some(why));
        }
    }
    let mut dirs: Vec<(&Vec<u8>, bool)> = a
        .implied
        .iter()
        .map(|p| (p, false))
        .chain(a.whiteout_only.iter().map(|p| (p, true)))
        .collect();
    dirs.sort();
    let mut unneeded = Vec::new();
    for (p, only_for_whiteouts) in dirs {
        let Some((cur, name)) = w.parent_of(p)? else {
            continue;
        };
        let Some(t) = cur.top.as_ref() else { continue };
        if !stat_at(t.as_fd(), name)?.is_some_and(|st| kind(&st) == FileType::Directory) {
            continue;
        }
        match below(cur, name)? {
            Some((i, st)) if kind(&st) == FileType::Directory => {
                let from = open_dir_at(cur.lowers[i].as_fd(), name)?;
                let to = open_dir_at(t.as_fd(), name)?;
                attrs::copy_attrs(from.as_fd(), to.as_fd())?;
                // A copy made only for whiteouts that all hid nothing goes too, unless it
                // is opaque: then it hides the lower directory's contents.
                if only_for_whiteouts && !is_opaque(to.as_fd()) {
                    unneeded.push(p);
                }
            }
            Some((_, st)) => {
                return Ok(Some(format!(
                    "{:?} is a {:?} in the layers below, not a directory",
                    String::from_utf8_lossy(p),
                    kind(&st)
                )));
            }
            None if only_for_whiteouts => unneeded.push(p),
            None => {}
        }
    }
    for p in &a.whiteouts {
        let Some((cur, name)) = w.parent_of(p)? else {
            continue;
        };
        let Some(t) = cur.top.as_ref() else { continue };
        if !stat_at(t.as_fd(), name)?.is_some_and(|st| is_whiteout(&st)) {
            continue;
        }
        if below(cur, name)?.is_none() {
            rustix::fs::unlinkat(t, OsStr::from_bytes(name), AtFlags::empty())?;
        }
    }
    drop(w);
    // Deepest first; one that holds anything (a whiteout that hides something) stays.
    for p in unneeded.iter().rev() {
        match rustix::fs::unlinkat(top, OsStr::from_bytes(p), AtFlags::REMOVEDIR) {
            Ok(()) | Err(Errno::NOTEMPTY | Errno::NOENT) => {}
            Err(e) => return Err(e.into()),
        }
    }
    if !a.root_listed {
        root_attrs(top, roots)?;
    }
    if a.root_opaque {
        hide_lower_root(top, roots)?;
    }
    Ok(None)
}

/// Whether the merged lower layers have a symlink or a file on the path `p` (its directories
/// or itself), looked up without following links.
fn lower_link_on(roots: &[OwnedFd], p: &[u8]) -> Result<Option<String>, Errno> {
    let mut cur = Cursor::root(None, roots, false)?;
    for part in p.split(|b| *b == b'/') {
        match cur.find(part)? {
            Found::Lower(_, st) if kind(&st) == FileType::Directory => {
                cur = cur.child(part, None)?;
            }
            Found::Lower(_, st) => {
                return Ok(Some(format!(
                    "{:?} goes through a {:?} of the layers below",
                    String::from_utf8_lossy(p),
                    kind(&st)
                )));
            }
            _ => return Ok(None),
        }
    }
    Ok(None)
}

/// Gives the top layer's root the attributes of the root below it (the topmost lower layer's,
/// which took them the same way), or 0755 root:root with no xattrs for a bottom layer.
pub(super) fn root_attrs(top: BorrowedFd<'_>, lowers: &[OwnedFd]) -> Result<(), Errno> {
    attrs::clear_xattrs(top)?;
    match lowers.first() {
        Some(l) => attrs::copy_attrs(l.as_fd(), top),
        None => {
            rustix::fs::fchown(
                top,
                Some(rustix::fs::Uid::ROOT),
                Some(rustix::fs::Gid::ROOT),
            )?;
            rustix::fs::fchmod(top, Mode::from_raw_mode(0o755))
        }
    }
}

/// The names of a directory (`.` and `..` left out) and their types.
fn entries(dir: BorrowedFd<'_>) -> Result<Vec<(Vec<u8>, FileType)>, Errno> {
    let mut out = Vec::new();
    for e in rustix::fs::Dir::read_from(dir)? {
        let e = e?;
        let name: &CStr = e.file_name();
        let name = name.to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        out.push((name.to_vec(), e.file_type()));
    }
    Ok(out)
}

/// overlayfs ignores an opaque layer root, so a layer that makes its root opaque hides the
/// lower layers' names one by one: a whiteout for each name it does not have, its own
/// directories of those names made opaque.
pub(super) fn hide_lower_root(top: BorrowedFd<'_>, lowers: &[OwnedFd]) -> Result<(), Errno> {
    let mut seen: BTreeSet<Vec<u8>> = BTreeSet::new();
    let mut visible = Vec::new();
    for l in lowers {
        for (name, _) in entries(l.as_fd())? {
            if !seen.insert(name.clone()) {
                continue;
            }
            let st = stat_at(l.as_fd(), &name)?;
            if st.is_some_and(|st| !is_whiteout(&st)) {
                visible.push(name);
            }
        }
    }
    for name in visible {
        match stat_at(top, &name)? {
            None => {
                rustix::fs::mknodat(
                    top,
                    OsStr::from_bytes(&name),
                    FileType::CharacterDevice,
                    Mode::empty(),
                    rustix::fs::makedev(0, 0),
                )?;
            }
            Some(st) if kind(&st) == FileType::Directory => {
                let d = open_dir_at(top, &name)?;
                set_opaque(d.as_fd())?;
                remove_whiteouts(d.as_fd())?;
            }
            Some(_) => {}
        }
    }
    Ok(())
}

/// Removes every whiteout beneath the top layer's directory `dir` (they hide nothing once it
/// is opaque; overlayfs would list them).
pub(super) fn remove_whiteouts(dir: BorrowedFd<'_>) -> Result<(), Errno> {
    for (name, ft) in entries(dir)? {
        match ft {
            FileType::Directory => {
                let sub = open_dir_at(dir, &name)?;
                remove_whiteouts(sub.as_fd())?;
            }
            FileType::CharacterDevice
                if stat_at(dir, &name)?.is_some_and(|st| is_whiteout(&st)) =>
            {
                rustix::fs::unlinkat(dir, OsStr::from_bytes(&name), AtFlags::empty())?;
            }
            _ => {}
        }
    }
    Ok(())
}

/// Removes the directory `name` of `dir` with everything in it, never following a link.
pub(super) fn remove_tree(dir: BorrowedFd<'_>, name: &[u8]) -> Result<(), Errno> {
    let sub = open_dir_at(dir, name)?;
    for (n, ft) in entries(sub.as_fd())? {
        if ft == FileType::Directory {
            remove_tree(sub.as_fd(), &n)?;
        } else {
            rustix::fs::unlinkat(&sub, OsStr::from_bytes(&n), AtFlags::empty())?;
        }
    }
    drop(sub);
    rustix::fs::unlinkat(dir, OsStr::from_bytes(name), AtFlags::REMOVEDIR)
}
