//! The top layer of an extraction (the layer being unpacked) in the merged view of the layers
//! below: walking an entry's path through it, making the directories the path needs, making
//! room for an entry, and what the layer assumed of the layers below while they were unknown.

use std::ffi::OsStr;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::rc::Rc;

use rustix::fs::{FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

use super::attrs;
use super::lower::{Lookup, set_opaque};
use super::merged::{self, Cursor, Make, kind, stat_at};
use super::outcome::{ExtractError, child_path, shown};
use super::settle::{self, Assumed};

/// The layer root and the state of its extraction.
pub(super) struct Root {
    pub(super) fd: OwnedFd,
    /// The lower layers' roots, top first; `None` while they are unknown.
    pub(super) lowers: Option<Vec<OwnedFd>>,
    pub(super) assumed: Assumed,
    /// The layer made its root opaque: the lower layers are hidden from then on.
    pub(super) root_hides: bool,
    pub(super) copied: u64,
    pub(super) copied_bytes: u64,
    /// The directory the last regular file went into, by its raw parent path: sorted layers
    /// put many files in a row into one directory. Only regular files that take a fresh name
    /// use it; any other entry forgets it, so it never outlives a change of the tree.
    pub(super) last_dir: Option<LastDir>,
    /// File contents pass through here, so that a file is written in whole chunks.
    pub(super) buf: Vec<u8>,
}

/// A directory by its raw path in the layer, open, and whether it is setgid.
type LastDir = (Vec<u8>, Rc<OwnedFd>, bool);

/// Creates what an entry's path needs in the top layer: a missing directory (0755 root:root,
/// recorded while the lowers are unknown), a directory over a whiteout of this layer (fresh
/// and opaque: what was below is gone), a copy of a directory only the lowers have.
struct Create<'a> {
    /// The lower layers are unknown (their attributes still to come).
    lowers_unknown: bool,
    assumed: &'a mut Assumed,
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
        } else if self.for_whiteout || (self.lowers_unknown && !parent.hides) {
            // Made for a whiteout (it goes if that one hides nothing), or with attributes
            // still to come from the layers below.
            self.assumed
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
            self.assumed.implied(child_path(&parent.path(), name), true);
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

/// A cursor at the root of the merged view of `fd` over `lowers`.
fn cursor(fd: &OwnedFd, lowers: Option<&[OwnedFd]>, hides: bool) -> Result<Cursor, Errno> {
    Cursor::root(Some(rustix::io::dup(fd)?), lowers.unwrap_or(&[]), hides)
}

impl Root {
    pub(super) fn root_cursor(&self) -> Result<Cursor, Errno> {
        cursor(&self.fd, self.lowers.as_deref(), self.root_hides)
    }

    /// Walks `path` in the merged view, creating what it needs in the top layer.
    pub(super) fn walk_create(&mut self, path: &[&[u8]]) -> Result<Cursor, Errno> {
        let cur = self
            .make_path(path, false)?
            .expect("creating walks never stop");
        self.assumed.used(&cur.canon);
        Ok(cur)
    }

    /// Resolves `path` first without making anything (a missing name, `..` after it and a
    /// symlink to nowhere are taken by name, as filepath-securejoin takes them), then makes
    /// the directories of the canonical path only: nothing is made on the way (umoci's
    /// `MkdirAll` of the `SecureJoin`ed path).
    fn make_path(&mut self, path: &[&[u8]], for_whiteout: bool) -> Result<Option<Cursor>, Errno> {
        let (fd, lowers, hides) = (&self.fd, self.lowers.as_deref(), self.root_hides);
        let root = || cursor(fd, lowers, hides);
        let canon = merged::walk_to(&root, path, &mut Lookup)?.canon;
        let parts: Vec<&[u8]> = canon.iter().map(Vec::as_slice).collect();
        let mut make = Create {
            lowers_unknown: lowers.is_none(),
            assumed: &mut self.assumed,
            for_whiteout,
        };
        merged::walk(&root, &parts, &mut make)
    }

    /// Walks `path` for a whiteout or an opaque marker, making the directories it needs in
    /// the top layer; `None` if the path goes through something this layer deleted or through
    /// a file of it: there is nothing there to hide.
    pub(super) fn walk_for_whiteout(&mut self, path: &[&[u8]]) -> Result<Option<Cursor>, Errno> {
        match self.make_path(path, true) {
            Err(Errno::NOTDIR) => Ok(None),
            r => r,
        }
    }

    /// Walks `path` in the merged view without creating anything: `None` if it is missing.
    pub(super) fn walk_lookup(&self, path: &[&[u8]]) -> Result<Option<Cursor>, Errno> {
        let root = || self.root_cursor();
        merged::walk(&root, path, &mut Lookup)
    }

    /// [`Root::entry_parent`] for a regular file, remembered for the next file of the same
    /// directory, and whether that directory is setgid.
    pub(super) fn entry_dir(&mut self, path: &[&[u8]]) -> Result<(Rc<OwnedFd>, bool), Errno> {
        let joined = path.join(&b'/');
        if let Some((p, fd, setgid)) = &self.last_dir
            && *p == joined
        {
            return Ok((fd.clone(), *setgid));
        }
        let fd = Rc::new(self.entry_parent(path)?.0);
        let setgid = rustix::fs::fstat(&*fd)?.st_mode & 0o2000 != 0;
        self.last_dir = Some((joined, fd.clone(), setgid));
        Ok((fd, setgid))
    }

    /// The top layer's directory for an entry in `parent` (fast when the kernel finds it in
    /// the top layer alone: then the merged view says the same), and its canonical path if
    /// it was walked.
    pub(super) fn entry_parent(
        &mut self,
        parent: &[&[u8]],
    ) -> Result<(OwnedFd, Option<Vec<u8>>), Errno> {
        // Directories made only for whiteouts must learn that an entry went through them:
        // then the walk is needed.
        if !self.assumed.needs_walk() {
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

    pub(super) fn open_in_top(&self, joined: &[u8]) -> Result<OwnedFd, Errno> {
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

    pub(super) fn forget_dir(&mut self) {
        self.last_dir = None;
    }

    /// Makes room for a non-directory entry at `name` in `dir` (the top layer's): whatever
    /// this layer has there goes, a directory with everything in it.
    /// `canon` gives its canonical path (asked for only if the record has paths to drop).
    pub(super) fn clear(
        &mut self,
        dir: BorrowedFd<'_>,
        name: &[u8],
        canon: impl FnOnce(&Root) -> Vec<u8>,
    ) -> Result<(), Errno> {
        match stat_at(dir, name)? {
            None => Ok(()),
            Some(st) if kind(&st) == FileType::Directory => {
                self.forget_dir();
                settle::remove_tree(dir, name)?;
                if !self.assumed.is_empty() {
                    let c = canon(self);
                    self.assumed.removed(&c);
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
    pub(super) fn make_opaque(
        &self,
        dir: BorrowedFd<'_>,
        canon: &[u8],
    ) -> Result<(), ExtractError> {
        let err = |e: Errno| ExtractError::Io {
            name: shown(canon),
            source: e.into(),
        };
        if self.lowers.is_none() {
            // What was recorded beneath took its attributes from the lower layers while they
            // were still visible: only an extraction that knows them gets that right.
            if self.assumed.implied_under(canon) {
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

/// The canonical path of `leaf` in the directory `parent` resolves to.
pub(super) fn canonical(root: &Root, parent: &[&[u8]], leaf: &[u8]) -> Vec<u8> {
    let p = root
        .walk_lookup(parent)
        .ok()
        .flatten()
        .map(|c| c.path())
        .unwrap_or_default();
    child_path(&p, leaf)
}

/// The top layer's directory for a new non-directory `leaf`, with room made for it.
pub(super) fn replace_at(root: &mut Root, parent: &[&[u8]], leaf: &[u8]) -> Result<OwnedFd, Errno> {
    let (dir, canon) = root.entry_parent(parent)?;
    let canon = canon.map(|c| child_path(&c, leaf));
    root.clear(dir.as_fd(), leaf, |r| {
        canon.unwrap_or_else(|| canonical(r, parent, leaf))
    })?;
    Ok(dir)
}
