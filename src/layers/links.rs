//! Hardlinks: to an entry of the layer, a link; to one only a lower layer has, a copy
//! (overlayfs cannot link across layers).

use std::ffi::OsStr;
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;

use rustix::fs::FileType;
use rustix::io::Errno;

use super::lower;
use super::merged::{Found, is_whiteout, kind};
use super::outcome::{ExtractError, Limits, child_path, components, io_err, refused, shown};
use super::tar::Header;
use super::top::{Root, replace_at};

/// A hardlink: to an entry of this layer, a link; to one only a lower layer has, a copy
/// (overlayfs cannot link across layers), counted against the layer's size.
pub(super) fn hardlink(
    root: &mut Root,
    parent: &[&[u8]],
    leaf: &[u8],
    h: &Header,
    name: &str,
    limits: &Limits,
    position: u64,
) -> Result<(), ExtractError> {
    let err = io_err(name);
    let tparts = components(&h.link);
    let Some((tleaf, tparent)) = tparts.split_last() else {
        return Err(refused(name, "a hardlink to the layer root or to nothing"));
    };
    let nowhere = || {
        refused(
            name,
            format!(
                "a hardlink to {:?}, which is not a file of this layer or of the layers \
                 below it",
                shown(&h.link)
            ),
        )
    };
    let cur = match root.walk_lookup(tparent) {
        Ok(Some(c)) => c,
        Ok(None) | Err(Errno::NOTDIR | Errno::NOENT | Errno::LOOP) if root.lowers.is_some() => {
            return Err(nowhere());
        }
        Ok(None) | Err(Errno::NOTDIR | Errno::NOENT | Errno::LOOP) => {
            return Err(ExtractError::NeedsLowers(format!(
                "{name:?} links to a lower layer"
            )));
        }
        Err(e) => return Err(err(e)),
    };
    match cur.find(tleaf).map_err(&err)? {
        Found::Top(st) if is_whiteout(&st) => Err(refused(
            name,
            format!(
                "a hardlink to {:?}, which this layer deleted",
                shown(&h.link)
            ),
        )),
        Found::Top(st) if kind(&st) == FileType::Directory => Err(refused(
            name,
            format!("a hardlink to the directory {:?}", shown(&h.link)),
        )),
        Found::Top(_) => {
            let tdir =
                rustix::io::dup(cur.top.as_ref().expect("found in the top layer")).map_err(&err)?;
            let dir = replace_at(root, parent, leaf).map_err(&err)?;
            // linkat without AT_SYMLINK_FOLLOW links the entry itself, never what it points to.
            rustix::fs::linkat(
                &tdir,
                OsStr::from_bytes(tleaf),
                &dir,
                OsStr::from_bytes(leaf),
                rustix::fs::AtFlags::empty(),
            )
            .map_err(&err)
        }
        Found::Lower(..) if root.lowers.is_none() => unreachable!("no lower layers are known"),
        Found::Lower(i, st) => {
            // The entry's own path is cleared before the link is made (as umoci does): a
            // target beneath it is gone by then.
            let target = child_path(&cur.path(), tleaf);
            let entry = root
                .walk_lookup(parent)
                .ok()
                .flatten()
                .map(|c| child_path(&c.path(), leaf));
            if let Some(entry) = entry
                && (target == entry || target.starts_with(&child_path(&entry, b"")))
            {
                return Err(refused(
                    name,
                    format!("a hardlink to {:?}, which it replaces", shown(&h.link)),
                ));
            }
            if kind(&st) == FileType::Directory {
                return Err(refused(
                    name,
                    format!("a hardlink to the directory {:?}", shown(&h.link)),
                ));
            }
            let size = if kind(&st) == FileType::RegularFile {
                st.st_size as u64
            } else {
                0
            };
            if root.copied_bytes + size > limits.max_size.saturating_sub(position) {
                return Err(refused(
                    name,
                    format!(
                        "its copy of {:?} of a lower layer takes the layer past its size limit \
                         ({} bytes; --max-layer-size)",
                        shown(&h.link),
                        limits.max_size
                    ),
                ));
            }
            let dir = replace_at(root, parent, leaf).map_err(&err)?;
            let n = lower::copy_lower(
                cur.lowers[i].as_fd(),
                tleaf,
                &st,
                dir.as_fd(),
                OsStr::from_bytes(leaf),
            )
            .map_err(|source| ExtractError::Io {
                name: name.to_string(),
                source,
            })?;
            root.copied_bytes += n;
            root.copied += 1;
            Ok(())
        }
        Found::Absent if root.lowers.is_none() => Err(ExtractError::NeedsLowers(format!(
            "{name:?} links to a lower layer"
        ))),
        Found::Absent => Err(nowhere()),
    }
}
