//! Layers committed before their files reach the disk (`--layer-sync deferred`, SPEC §8):
//! a durable `unflushed.<boot id>` marker while they are not flushed, a flush to make them
//! durable, and at open the layers of an earlier boot that never flushed
//! dropped (their files' data may be lost to a crash).

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

use crate::fsutil;

pub(super) const MARKER: &str = "unflushed.";

/// This boot's identity, which changes with every boot (`None` without /proc: then every
/// layer is flushed before its commit).
pub(super) fn boot_id() -> Option<&'static str> {
    static ID: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    ID.get_or_init(|| {
        let id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
        let id = id.trim();
        (!id.is_empty() && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-'))
            .then(|| id.to_string())
    })
    .as_deref()
}

/// Flushes the file system of the store at `root` and removes this boot's marker: every
/// layer committed so far is durable. Returns whether there was anything to flush.
pub(super) fn flush(root: &OwnedFd) -> io::Result<bool> {
    let Some(boot) = boot_id() else {
        return Ok(false);
    };
    let name = format!("{MARKER}{boot}");
    match rustix::fs::statat(root, name.as_str(), rustix::fs::AtFlags::SYMLINK_NOFOLLOW) {
        Ok(_) => {}
        Err(rustix::io::Errno::NOENT) => return Ok(false),
        Err(e) => return Err(e.into()),
    }
    rustix::fs::syncfs(root).map_err(io::Error::from)?;
    fsutil::remove(root.as_fd(), &name)?;
    fsutil::sync_dir(root.as_fd())?;
    Ok(true)
}

/// Puts this boot's marker on disk (before a layer is committed unflushed). `shown` is the
/// store's path, for the error.
pub(super) fn mark(root: &OwnedFd, shown: &Path, boot: &str) -> io::Result<()> {
    let name = format!("{MARKER}{boot}");
    let refused = |why: String| {
        io::Error::other(format!(
            "cannot make the marker {}: {why}; remove it and rerun",
            shown.join(&name).display()
        ))
    };
    // Its name is predictable (the boot id is public): what is there already is never
    // followed (a link), nor waited on (a FIFO would block a plain open for writing).
    let fd = rustix::fs::openat(
        root,
        name.as_str(),
        rustix::fs::OFlags::WRONLY
            | rustix::fs::OFlags::CREATE
            | rustix::fs::OFlags::NOFOLLOW
            | rustix::fs::OFlags::NONBLOCK
            | rustix::fs::OFlags::CLOEXEC,
        rustix::fs::Mode::from_raw_mode(0o600),
    )
    .map_err(|e| refused(e.to_string()))?;
    let kind = rustix::fs::FileType::from_raw_mode(
        rustix::fs::fstat(&fd).map_err(io::Error::from)?.st_mode,
    );
    if kind != rustix::fs::FileType::RegularFile {
        return Err(refused(format!("it is a {kind:?}, not a regular file")));
    }
    drop(fd);
    fsutil::sync_dir(root.as_fd())
}

/// At open: the markers of earlier boots mean layers committed unflushed in those boots may
/// have lost their files' data to a crash; those layers are moved to `ingest/` (removed with
/// the other leftovers there), then the marker goes.
/// `unflushed_boot(name)` is the boot recorded in layer `name`'s `layer.json` (`None` when it
/// cannot be read: one that never reached the disk).
pub(super) fn drop_unflushed(
    root: &OwnedFd,
    sha256: &OwnedFd,
    ingest: &OwnedFd,
    unflushed_boot: impl Fn(&str) -> Option<Option<String>>,
) -> io::Result<()> {
    let stale: Vec<String> = fsutil::list(root.as_fd())?
        .into_iter()
        // Only the regular files we make: anything else under such a name is not ours, and
        // must not keep the store from opening.
        .filter(|(_, kind)| *kind == rustix::fs::FileType::RegularFile)
        .filter_map(|(name, _)| name.strip_prefix(MARKER).map(str::to_string))
        .filter(|b| Some(b.as_str()) != boot_id())
        .collect();
    if stale.is_empty() {
        return Ok(());
    }
    let mut dropped = 0;
    for (name, _) in fsutil::list(sha256.as_fd())? {
        // An unreadable layer.json after such a crash is one that never reached the disk.
        let lost = match unflushed_boot(&name) {
            Some(Some(b)) => stale.contains(&b),
            Some(None) => false,
            None => true,
        };
        if lost {
            let to = format!("dropped-{name}-{}", fsutil::random_hex());
            fsutil::rename(sha256.as_fd(), &name, ingest.as_fd(), &to)?;
            dropped += 1;
        }
    }
    fsutil::sync_dir(sha256.as_fd())?;
    for b in &stale {
        fsutil::remove(root.as_fd(), &format!("{MARKER}{b}"))?;
    }
    fsutil::sync_dir(root.as_fd())?;
    if dropped > 0 {
        tracing::warn!(
            layers = dropped,
            "layer store: {dropped} layer(s) were committed before a restart that came before \
             their files were flushed (no flush-layers ran); they are unpacked again from their blobs"
        );
    }
    Ok(())
}
