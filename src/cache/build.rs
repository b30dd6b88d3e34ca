//! `cache build`: the images' manifests, configs and unpacked layers staged as the cache's
//! tree, then written as one EROFS image.
//!
//! The tree is staged next to the layer store (on its file system): every non-directory is
//! a hardlink (owner, mode, xattrs, 0/0 whiteout devices and times are the inode's, kept as
//! they are), directories are made again with their attributes. `mkfs.erofs` keeps all of
//! them (checked with erofs-utils 1.5: owners, setuid, nanosecond times, whiteouts,
//! `trusted.overlay.opaque`, `security.capability`), and never `--all-root`.

use std::ffi::OsStr;
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};
use serde_json::json;

use super::{FORMAT, RECORD};
use crate::fsutil;
use crate::layers::attrs::copy_attrs;
use crate::layers::store::LayerStore;
use crate::oci::Digest;
use crate::store::{REF_NAME, Store, resolved_of};

/// What a build wrote.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Built {
    pub images: usize,
    pub layers: usize,
    pub bytes: u64,
}

fn open_dir(dir: BorrowedFd<'_>, name: &OsStr) -> rustix::io::Result<std::os::fd::OwnedFd> {
    rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
}

/// A directory's owner, mode, time and every xattr, overlayfs's own included (an opaque
/// directory stays opaque in the cache: it is a layer's lower directory there too).
fn dir_attrs(from: BorrowedFd<'_>, to: BorrowedFd<'_>) -> rustix::io::Result<()> {
    let mut names = vec![0u8; 64 << 10];
    let n = rustix::fs::flistxattr(from, &mut names)?;
    for name in names[..n]
        .split(|b| *b == 0)
        .filter(|k| k.starts_with(b"trusted.overlay."))
    {
        let key = std::ffi::CString::new(name).map_err(|_| rustix::io::Errno::INVAL)?;
        let mut value = vec![0u8; 64 << 10];
        let len = rustix::fs::fgetxattr(from, key.as_c_str(), &mut value)?;
        rustix::fs::fsetxattr(
            to,
            key.as_c_str(),
            &value[..len],
            rustix::fs::XattrFlags::empty(),
        )?;
    }
    // Last: setting times is what the other changes would move.
    copy_attrs(from, to)
}

/// Makes `to` (a new directory) hold what `from` holds: directories made again with their
/// attributes, everything else hardlinked (never following a link).
fn replicate(from: BorrowedFd<'_>, to: BorrowedFd<'_>) -> rustix::io::Result<()> {
    for (name, ty) in fsutil::list(from)
        .map_err(|e| rustix::io::Errno::from_raw_os_error(e.raw_os_error().unwrap_or(libc::EIO)))?
    {
        let n = OsStr::new(&name);
        if ty == FileType::Directory {
            rustix::fs::mkdirat(to, n, Mode::from_raw_mode(0o700))?;
            let (src, dst) = (open_dir(from, n)?, open_dir(to, n)?);
            replicate(src.as_fd(), dst.as_fd())?;
            // After its contents: filling it changed its times.
            dir_attrs(src.as_fd(), dst.as_fd())?;
        } else {
            rustix::fs::linkat(from, n, to, n, AtFlags::empty())?;
        }
    }
    Ok(())
}

/// How a cache is built.
#[derive(Debug, Clone, Copy, Default)]
pub struct BuildOptions {
    /// The layer blobs too.
    pub with_blobs: bool,
    /// `mkfs.erofs -z` (`None`: the files as they are).
    pub compressor: Option<&'static str>,
}

/// Writes the cache of `refs` (normalised references, each in `store` with its layers in
/// `layers`) to `output` as an EROFS image.
pub fn build(
    store: &Store,
    layers: &LayerStore,
    refs: &[String],
    output: &Path,
    opts: BuildOptions,
) -> Result<Built, String> {
    let stage_parent = layers
        .root()
        .parent()
        .unwrap_or(layers.root())
        .to_path_buf();
    let stage = stage_parent.join(format!(".kci-cache-staging-{}", fsutil::random_hex()));
    let result = stage_tree(store, layers, refs, &stage, opts.with_blobs).and_then(|built| {
        mkfs(&stage, output, opts.compressor).map(|bytes| Built { bytes, ..built })
    });
    let _ = std::fs::remove_dir_all(&stage);
    result
}

fn stage_tree(
    store: &Store,
    layers: &LayerStore,
    refs: &[String],
    stage: &Path,
    with_blobs: bool,
) -> Result<Built, String> {
    let io = |what: &str, p: &Path| {
        let (what, p) = (what.to_string(), p.to_path_buf());
        move |e: io::Error| format!("{what} {}: {e}", p.display())
    };
    let blobs = stage.join("images/blobs/sha256");
    let chains_dir = stage.join("layers/sha256");
    for d in [&blobs, &chains_dir] {
        std::fs::create_dir_all(d).map_err(io("cannot create", d))?;
    }
    std::fs::write(
        stage.join("images/oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .map_err(io("cannot write", &stage.join("images/oci-layout")))?;
    let all = store.refs().map_err(|e| e.to_string())?;
    let mut entries = Vec::new();
    let mut listed = Vec::new();
    let mut chains_done: Vec<Digest> = Vec::new();
    let link_blob = |d: &Digest| -> Result<(), String> {
        let to = blobs.join(d.hex());
        if to.exists() {
            return Ok(());
        }
        std::fs::hard_link(store.blob_path(d), &to).map_err(io("cannot link", &to))
    };
    for r in refs {
        let (_, desc) = all
            .iter()
            .find(|(name, _)| name == r)
            .ok_or_else(|| format!("{r} is not in the store {}", store.root().display()))?;
        let needed = store.manifest_blobs(&desc.digest).ok_or_else(|| {
            format!("the manifest of {r} is missing or corrupt in the store; pull it again")
        })?;
        let (config, layer_descs) = needed.split_first().expect("a manifest has a config");
        link_blob(&desc.digest)?;
        if let Some(resolved) = resolved_of(desc)
            .and_then(|s| Digest::parse(s).ok())
            .filter(|d| store.blob_path(d).exists())
        {
            link_blob(&resolved)?;
        }
        link_blob(&config.digest)?;
        if with_blobs {
            for l in layer_descs {
                link_blob(&l.digest)?;
            }
        }
        let chains = store
            .chain_ids(&config.digest, layer_descs.len())
            .ok_or_else(|| {
                format!(
                    "the config of {r} is missing, unreadable or does not describe its layers; \
                     pull it again"
                )
            })?;
        for chain in chains {
            if chains_done.contains(&chain) {
                continue;
            }
            if layers.get(&chain).is_none() {
                return Err(format!(
                    "layer {chain} of {r} is not in the layer store; pull it without --no-unpack"
                ));
            }
            let from = layers.layer_dir(&chain);
            let to = chains_dir.join(chain.hex());
            std::fs::create_dir(&to).map_err(io("cannot create", &to))?;
            let (src, dst) = (
                fsutil::open_dir(&from).map_err(io("cannot open", &from))?,
                fsutil::open_dir(&to).map_err(io("cannot open", &to))?,
            );
            replicate(src.as_fd(), dst.as_fd())
                .and_then(|_| dir_attrs(src.as_fd(), dst.as_fd()))
                .map_err(|e| format!("cannot stage layer {chain}: {e}"))?;
            chains_done.push(chain);
        }
        let mut entry = serde_json::to_value(desc).map_err(|e| e.to_string())?;
        entry["annotations"][REF_NAME] = json!(r);
        entries.push(entry);
        listed.push(json!({"reference": r, "digest": desc.digest.to_string()}));
    }
    let index = json!({"schemaVersion": 2, "mediaType": crate::oci::manifest::OCI_INDEX, "manifests": entries});
    std::fs::write(
        stage.join("images/index.json"),
        serde_json::to_vec_pretty(&index).unwrap_or_default(),
    )
    .map_err(io("cannot write", &stage.join("images/index.json")))?;
    let record = json!({
        "format": FORMAT,
        "agent_version": crate::report::AGENT_VERSION,
        "images": listed,
    });
    std::fs::write(
        stage.join(RECORD),
        serde_json::to_vec_pretty(&record).unwrap_or_default(),
    )
    .map_err(io("cannot write", &stage.join(RECORD)))?;
    Ok(Built {
        images: refs.len(),
        layers: chains_done.len(),
        bytes: 0,
    })
}

/// `mkfs.erofs` of `tree` into `output` (through a temporary file: a failed build leaves
/// nothing half-written at `output`); its size.
fn mkfs(tree: &Path, output: &Path, compressor: Option<&str>) -> Result<u64, String> {
    let tmp: PathBuf = output.with_file_name(format!(
        ".{}.kci-tmp-{}",
        output
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
        fsutil::random_hex()
    ));
    // Every xattr, each file's own time; never --all-root or -T (owners and times matter).
    let mut mkfs = std::process::Command::new("mkfs.erofs");
    mkfs.args(["-x1", "--preserve-mtime", "--quiet"]);
    if let Some(z) = compressor {
        mkfs.arg(format!("-z{z}"));
    }
    let out = mkfs.arg(&tmp).arg(tree).output().map_err(|e| {
        format!("cannot run mkfs.erofs ({e}); install erofs-utils (scripts/setup.sh does)")
    })?;
    if !out.status.success() {
        let _ = std::fs::remove_file(&tmp);
        return Err(format!(
            "mkfs.erofs failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    std::fs::rename(&tmp, output).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        format!("cannot write {}: {e}", output.display())
    })?;
    std::fs::metadata(output)
        .map(|m| m.len())
        .map_err(|e| format!("cannot read {}: {e}", output.display()))
}
