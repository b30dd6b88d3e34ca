//! Crash-safe file replacement, and symlinks resolved inside `--root`.

use std::fs::{self, OpenOptions};
use std::io::{self, ErrorKind, Write};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

/// Mode of every file the agent writes.
pub const MODE: u32 = 0o644;

/// How a file was replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WriteMode {
    /// Temporary file, fsync, rename, fsync of the directory: readers see old or new.
    Renamed,
    /// The file could not be replaced by rename (a bind mount gives `EBUSY`, a read-only
    /// directory with a writable bind-mounted file `EROFS`): overwritten in place with one
    /// write, then truncated and fsynced.
    InPlace,
}

/// Writes `content` to `path` crash-safely (see [`WriteMode`]). `in_place_target` is where an
/// in-place write goes when rename is impossible: the symlink target when `path` is a symlink.
pub fn write_file(path: &Path, in_place_target: &Path, content: &[u8]) -> io::Result<WriteMode> {
    write_with(path, in_place_target, content, |from, to| {
        fs::rename(from, to)
    })
}

/// Errors that mean "this path cannot be replaced by a rename", not "this cannot be written".
fn needs_in_place(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        ErrorKind::ResourceBusy
            | ErrorKind::CrossesDevices
            | ErrorKind::ReadOnlyFilesystem
            | ErrorKind::PermissionDenied
    )
}

pub(crate) fn write_with(
    path: &Path,
    in_place_target: &Path,
    content: &[u8],
    rename: impl Fn(&Path, &Path) -> io::Result<()>,
) -> io::Result<WriteMode> {
    // A bare file name has the empty path as its parent: that is the current directory.
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    // Exclusive, never through a link, under a name nobody can guess in advance.
    let created = crate::fsutil::open_dir(dir)
        .and_then(|d| crate::fsutil::create_temp(std::os::fd::AsFd::as_fd(&d), &name, MODE));
    let (mut file, tmp) = match created {
        Ok((f, tmp)) => (f, dir.join(tmp)),
        Err(e) if needs_in_place(&e) && in_place_target.exists() => {
            write_in_place(in_place_target, content)?;
            return Ok(WriteMode::InPlace);
        }
        Err(e) => return Err(e),
    };
    let result = (|| {
        file.write_all(content)?;
        file.set_permissions(fs::Permissions::from_mode(MODE))?;
        file.sync_all()
    })();
    drop(file);
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    match rename(&tmp, path) {
        Ok(()) => {
            // Make the rename itself durable.
            fs::File::open(dir)?.sync_all()?;
            Ok(WriteMode::Renamed)
        }
        Err(e) if needs_in_place(&e) && in_place_target.exists() => {
            let _ = fs::remove_file(&tmp);
            write_in_place(in_place_target, content)?;
            Ok(WriteMode::InPlace)
        }
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

fn write_in_place(path: &Path, content: &[u8]) -> io::Result<()> {
    let file = OpenOptions::new().write(true).open(path)?;
    // One positioned write of the whole content, then cut the old tail: a reader sees the old
    // file, the new one, or (between the two calls) the new content followed by old bytes.
    file.write_all_at(content, 0)?;
    file.set_len(content.len() as u64)?;
    // A bind-mounted file may belong to a file system that refuses chmod; the content matters.
    let _ = file.set_permissions(fs::Permissions::from_mode(MODE));
    file.sync_all()
}

/// Removes temporary files (`.NAME.kci-tmp-PID-RANDOM`) left in `dir` by a run that was
/// killed before its rename. A file whose process is still alive is left alone (it may be
/// another run writing right now). Errors are ignored: leftovers are untidy, not harmful.
pub fn remove_stale_temps(dir: &Path) {
    if let Ok(d) = crate::fsutil::open_dir(dir) {
        crate::fsutil::remove_stale_temps(std::os::fd::AsFd::as_fd(&d));
    }
}

/// Follows symlinks at `root/rel` the way a chroot into `root` would, one component at a time
/// (a link in a parent directory is resolved too, never followed out of `root` by the kernel):
/// absolute targets are taken relative to `root`, and `..` never climbs above it. Returns the
/// final path (which may not exist; none of its components below `root` is a link when this
/// returns) and whether the last component of `root/rel` itself was a symlink.
pub fn resolve_in_root(root: &Path, rel: &Path) -> io::Result<(PathBuf, bool)> {
    let was_link =
        fs::symlink_metadata(parent_in_root(root, rel)?).is_ok_and(|m| m.file_type().is_symlink());
    Ok((walk_in_root(root, rel)?, was_link))
}

fn walk_in_root(root: &Path, rel: &Path) -> io::Result<PathBuf> {
    // Components still to walk: a name, or `None` for `..`.
    let owned = |c: Component<'_>| -> Option<Option<std::ffi::OsString>> {
        match c {
            Component::Normal(n) => Some(Some(n.to_os_string())),
            Component::ParentDir => Some(None),
            _ => None,
        }
    };
    let mut todo: std::collections::VecDeque<Option<std::ffi::OsString>> =
        rel.components().filter_map(owned).collect();
    let mut inside: Vec<std::ffi::OsString> = Vec::new();
    let mut links = 0;
    while let Some(c) = todo.pop_front() {
        let Some(n) = c else {
            inside.pop();
            continue;
        };
        inside.push(n);
        let path = join(root, &inside);
        if fs::symlink_metadata(&path).is_ok_and(|m| m.file_type().is_symlink()) {
            links += 1;
            if links > 40 {
                return Err(io::Error::other(format!(
                    "too many levels of symbolic links at {}",
                    root.join(rel).display()
                )));
            }
            let target = fs::read_link(&path)?;
            inside.pop();
            if target.is_absolute() {
                inside.clear();
            }
            for c in target.components().rev().filter_map(owned) {
                todo.push_front(c);
            }
        }
    }
    Ok(join(root, &inside))
}

/// A path under `--root` with every link on the way resolved inside the root
/// ([`resolve_in_root`]), so that a link planted there never leads a write out of it; the
/// plain join if it cannot be resolved (a loop), which then fails where it is used.
pub fn under_root(root: &Path, rel: &str) -> PathBuf {
    resolve_in_root(root, Path::new(rel))
        .map(|(p, _)| p)
        .unwrap_or_else(|_| root.join(rel))
}

/// `root/rel` with its parent directory resolved inside `root` ([`resolve_in_root`]): the path
/// to write `rel` at without following a link in one of its directories out of `root`.
pub fn parent_in_root(root: &Path, rel: &Path) -> io::Result<PathBuf> {
    let (Some(parent), Some(name)) = (rel.parent(), rel.file_name()) else {
        return Ok(root.join(rel));
    };
    Ok(walk_in_root(root, parent)?.join(name))
}

fn join(root: &Path, inside: &[std::ffi::OsString]) -> PathBuf {
    let mut p = root.to_path_buf();
    for c in inside {
        p.push(c);
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn replaces_with_mode_0644_and_leaves_no_temp() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("hosts");
        fs::write(&p, "old").unwrap();
        fs::set_permissions(&p, fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(write_file(&p, &p, b"new\n").unwrap(), WriteMode::Renamed);
        assert_eq!(fs::read_to_string(&p).unwrap(), "new\n");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o644
        );
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn stale_temporary_files_are_removed_live_ones_kept() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        fs::write(d.join(".hosts.kci-tmp-999999999"), "dead").unwrap();
        let live = format!(".hosts.kci-tmp-{}", std::process::id());
        fs::write(d.join(&live), "mine").unwrap();
        fs::write(d.join("hosts"), "kept").unwrap();
        remove_stale_temps(d);
        let mut names: Vec<String> = fs::read_dir(d)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, vec![live, "hosts".to_string()]);
    }

    #[test]
    fn falls_back_to_in_place_when_rename_is_busy() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("resolv.conf");
        fs::write(&p, "a much longer old content that must not survive\n").unwrap();
        let busy = |_: &Path, _: &Path| Err(io::Error::from(ErrorKind::ResourceBusy));
        assert_eq!(
            write_with(&p, &p, b"short\n", busy).unwrap(),
            WriteMode::InPlace
        );
        assert_eq!(fs::read_to_string(&p).unwrap(), "short\n");
        assert_eq!(
            fs::read_dir(dir.path()).unwrap().count(),
            1,
            "temp file removed"
        );
    }

    #[test]
    fn other_rename_errors_are_reported_and_nothing_changes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("hosts");
        fs::write(&p, "old").unwrap();
        let broken = |_: &Path, _: &Path| Err(io::Error::from(ErrorKind::StorageFull));
        assert!(write_with(&p, &p, b"new", broken).is_err());
        assert_eq!(fs::read_to_string(&p).unwrap(), "old");
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);
    }

    #[test]
    fn symlinks_resolve_inside_root() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        fs::create_dir_all(r.join("etc")).unwrap();
        fs::create_dir_all(r.join("run/systemd/resolve")).unwrap();
        fs::write(
            r.join("run/systemd/resolve/stub-resolv.conf"),
            "nameserver 127.0.0.53\n",
        )
        .unwrap();
        symlink(
            "/run/systemd/resolve/stub-resolv.conf",
            r.join("etc/resolv.conf"),
        )
        .unwrap();
        let (p, link) = resolve_in_root(r, Path::new("etc/resolv.conf")).unwrap();
        assert!(link);
        assert_eq!(p, r.join("run/systemd/resolve/stub-resolv.conf"));

        symlink(
            "../../../../../../run/systemd/resolve/stub-resolv.conf",
            r.join("etc/rel"),
        )
        .unwrap();
        let (p, _) = resolve_in_root(r, Path::new("etc/rel")).unwrap();
        assert_eq!(p, r.join("run/systemd/resolve/stub-resolv.conf"));

        symlink("loop", r.join("etc/loop")).unwrap();
        assert!(resolve_in_root(r, Path::new("etc/loop")).is_err());

        let (p, link) = resolve_in_root(r, Path::new("etc/hosts")).unwrap();
        assert_eq!((p, link), (r.join("etc/hosts"), false));
    }

    /// SPEC §9: a link in a parent directory (`etc` -> the machine's `/etc`) is resolved inside
    /// the root too; before, only the last component was checked and the machine's own
    /// `/etc/hosts` was the path written.
    #[test]
    fn links_in_parent_directories_stay_inside_root() {
        let root = tempfile::tempdir().unwrap();
        let r = root.path();
        fs::create_dir_all(r.join("real/etc")).unwrap();
        symlink("/real/etc", r.join("etc")).unwrap();
        let (p, link) = resolve_in_root(r, Path::new("etc/hosts")).unwrap();
        assert_eq!((p, link), (r.join("real/etc/hosts"), false));
        assert_eq!(
            parent_in_root(r, Path::new("etc/hosts")).unwrap(),
            r.join("real/etc/hosts")
        );
        fs::create_dir_all(r.join("var/lib")).unwrap();
        symlink("../../../../../../../etc", r.join("var/lib/kci")).unwrap();
        let (p, _) = resolve_in_root(r, Path::new("var/lib/kci/network")).unwrap();
        assert_eq!(p, r.join("real/etc/network"));
        // A link to the machine's /etc by its own name loops inside the root: an error.
        let other = tempfile::tempdir().unwrap();
        symlink("/etc", other.path().join("etc")).unwrap();
        assert!(resolve_in_root(other.path(), Path::new("etc/hosts")).is_err());
    }
}
