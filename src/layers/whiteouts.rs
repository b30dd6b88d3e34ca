//! Whiteouts and opaque markers: what of the layers below a layer hides. They apply to the
//! layers below only (OCI): what the layer itself made stays.

use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;

use rustix::fs::{FileType, Mode};
use rustix::io::Errno;

use super::attrs;
use super::merged::{self, Found, kind};
use super::outcome::{ExtractError, child_path, io_err, refused};
use super::settle;
use super::top::Root;

/// `.wh..wh..opq` in `parent`: the lower layers' contents of that directory are gone. Nothing
/// to do if the merged view has no such directory (umoci makes none).
pub(super) fn opaque_marker(
    root: &mut Root,
    parent: &[&[u8]],
    name: &str,
) -> Result<(), ExtractError> {
    let err = io_err(name);
    if parent.is_empty() {
        // overlayfs ignores an opaque layer root: the lower layers' names are hidden one by
        // one once they are known.
        if root.lowers.is_none() && root.assumed.implied_under(b"") {
            return Err(ExtractError::NeedsLowers(
                "the layer root is made opaque after directories were implied".into(),
            ));
        }
        if root.lowers.is_some() {
            settle::remove_whiteouts(root.fd.as_fd()).map_err(&err)?;
        }
        root.root_hides = true;
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
pub(super) fn whiteout(
    root: &mut Root,
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
                    .made_for_whiteouts(&child_path(&cur.path(), target)) =>
        {
            // A copy of the lower directory made only to hold whiteouts: the lower directory
            // is what goes.
            let top = cur.top.as_ref().expect("found in the top layer");
            settle::remove_tree(top.as_fd(), target).map_err(&err)?;
            root.assumed.removed(&child_path(&cur.path(), target));
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
        root.assumed.whiteout(child_path(&cur.path(), target));
    }
    Ok(())
}
