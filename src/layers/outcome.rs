//! What extracting a layer takes and gives: its limits, its errors, what it wrote, and what
//! is known of the layers below it.

use std::io;
use std::path::PathBuf;

use rustix::io::Errno;

use super::settle::Assumed;

/// Limits of one layer (SPEC §8); the uncompressed size is also enforced by the reader. And
/// how its files are written.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Large files are written with `O_DIRECT` where the file system allows it (`files.rs`);
    /// off with `--buffered-writes`.
    pub direct_io: bool,
    pub max_entries: u64,
    /// Longest entry name or link target, in bytes.
    pub max_path: usize,
    /// Most bytes of extended attributes (names and values) per entry.
    pub max_xattrs: usize,
    /// Most bytes of the layer's stream and of the lower layers' files it copies, together.
    pub max_size: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            direct_io: true,
            max_entries: 1_000_000,
            max_path: 4096,
            max_xattrs: 64 << 10,
            max_size: u64::MAX,
        }
    }
}

/// Why a layer could not be extracted. Nothing outside the layer root was touched either way.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    #[error("invalid tar stream: {0}")]
    Tar(io::Error),
    #[error("entry {name:?}: {why}")]
    Refused { name: String, why: String },
    #[error("entry {name:?}: {source}")]
    Io { name: String, source: io::Error },
    #[error("the layer has more than {0} entries")]
    TooManyEntries(u64),
    /// Streaming only: the layer cannot be extracted right without its lower layers.
    #[error("{0}: the layer is unpacked once the layers below it are")]
    NeedsLowers(String),
    /// The run was stopped (SIGINT/SIGTERM): the layer is left unfinished, not committed.
    #[error("stopped before the layer was complete")]
    Stopped,
}

/// Set when the run is stopped: every extraction stops at its next entry.
static STOP: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Stops every extraction at its next entry (a signal ended the run).
pub fn stop_all() {
    STOP.store(true, std::sync::atomic::Ordering::SeqCst);
}

pub(super) fn stopped() -> bool {
    STOP.load(std::sync::atomic::Ordering::Relaxed)
}

/// What an extraction wrote.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Extracted {
    pub entries: u64,
    /// Layer-supplied `trusted.overlay.*` xattrs that were dropped (warned about).
    pub dropped_overlay_xattrs: u64,
    /// Entries copied from a lower layer (hardlinks overlayfs cannot make across layers).
    pub copied_links: u64,
    /// Extracted with the lower layers unknown: what it assumed of them.
    pub assumed: Option<Assumed>,
}

/// The layers below the one being extracted, top first (their `fs/` directories), or
/// unknown while a layer streams in before its lower layers are committed.
#[derive(Debug, Clone, Default)]
pub enum Lowers {
    #[default]
    Unknown,
    Known(Vec<PathBuf>),
}

/// An entry's name as messages show it (at most 300 characters).
pub(super) fn shown(raw: &[u8]) -> String {
    String::from_utf8_lossy(raw).chars().take(300).collect()
}

pub(super) fn io_err(name: &str) -> impl Fn(Errno) -> ExtractError + '_ {
    move |e| ExtractError::Io {
        name: name.to_string(),
        source: e.into(),
    }
}

pub(super) fn refused(name: &str, why: impl Into<String>) -> ExtractError {
    ExtractError::Refused {
        name: name.to_string(),
        why: why.into(),
    }
}

/// `dir/name`, or `name` in the root.
pub(super) fn child_path(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = dir.to_vec();
    if !p.is_empty() {
        p.push(b'/');
    }
    p.extend_from_slice(name);
    p
}

/// An entry name as components inside the root: a leading `/` and `.` components dropped,
/// `..` taken inside the root (it never climbs above it), as umoci's `CleanPath` does.
pub(super) fn components(raw: &[u8]) -> Vec<&[u8]> {
    let mut out: Vec<&[u8]> = Vec::new();
    for c in raw.split(|b| *b == b'/') {
        match c {
            b"" | b"." => {}
            b".." => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    out
}

/// What a panicked thread said, for the error that replaces it (every thread of the unpack
/// ends in an error, never in a panic re-raised elsewhere).
pub(super) fn panic_message(p: &(dyn std::any::Any + Send)) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into())
}
