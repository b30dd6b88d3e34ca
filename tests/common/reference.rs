//! The reference the unpack tests compare with: `umoci raw unpack` of an image, and a
//! read-only overlay mount of the agent's layer directories.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::images::{Image, sha256};

/// `umoci raw unpack` of `img` (from an OCI layout written for it under `work`): the rootfs,
/// or umoci's error.
pub fn umoci_unpack(img: &Image, work: &Path) -> Result<PathBuf, String> {
    let layout = work.join("layout");
    fs::create_dir_all(layout.join("blobs/sha256")).unwrap();
    fs::write(
        layout.join("oci-layout"),
        r#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    for b in img.blobs().chain(std::iter::once(&img.manifest)) {
        fs::write(layout.join("blobs/sha256").join(&b.digest[7..]), &b.bytes).unwrap();
    }
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [{
        "mediaType": img.manifest.media_type, "digest": img.manifest.digest,
        "size": img.manifest.bytes.len(),
        "annotations": {"org.opencontainers.image.ref.name": "ref"}}]});
    fs::write(layout.join("index.json"), index.to_string()).unwrap();
    let rootfs = work.join("umoci-rootfs");
    let out = Command::new("umoci")
        .args(["raw", "unpack", "--image"])
        .arg(format!("{}:ref", layout.display()))
        .arg(&rootfs)
        .output()
        .expect("umoci is missing: run scripts/setup.sh");
    if out.status.success() {
        Ok(rootfs)
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// A read-only overlay mount of layer directories, unmounted when dropped (even when the
/// test fails).
pub struct Overlay(pub PathBuf);

impl Overlay {
    pub fn mount(lower_top_first: &[PathBuf], at: &Path) -> Overlay {
        fs::create_dir_all(at).unwrap();
        let mut lowers: Vec<String> = lower_top_first
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        // overlayfs wants two lower directories at least without an upper one: an empty one
        // at the bottom changes nothing.
        let empty = at.with_extension("empty");
        fs::create_dir_all(&empty).unwrap();
        lowers.push(empty.display().to_string());
        let out = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o"])
            .arg(format!("lowerdir={}", lowers.join(":")))
            .arg(at)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "mount: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Overlay(at.to_path_buf())
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Per path (the root as "."): type, mode, owner, content, link target, device, every xattr
/// (overlayfs's own only with `overlay_xattrs`), and the mtime of everything but directories; and hardlink groups.
pub fn describe_tree(
    root: &Path,
    overlay_xattrs: bool,
) -> (BTreeMap<String, String>, Vec<Vec<String>>) {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let rel = match p.strip_prefix(root).unwrap().to_string_lossy().as_ref() {
            "" => ".".to_string(),
            r => r.to_string(),
        };
        // overlayfs lists a whiteout it cannot find in some directories: a difference.
        let Ok(m) = fs::symlink_metadata(&p) else {
            out.insert(rel, "listed, but lstat finds nothing".into());
            continue;
        };
        let mut names = vec![0u8; 65536];
        let mut xattrs = Vec::new();
        if let Ok(n) = rustix::fs::llistxattr(&p, &mut names) {
            for k in names[..n].split(|b| *b == 0).filter(|k| !k.is_empty()) {
                if !overlay_xattrs && k.starts_with(b"trusted.overlay.") {
                    continue;
                }
                let mut v = vec![0u8; 65536];
                let len =
                    rustix::fs::lgetxattr(&p, std::ffi::OsStr::from_bytes(k), &mut v).unwrap();
                xattrs.push(format!("{}={:?}", String::from_utf8_lossy(k), &v[..len]));
            }
        }
        xattrs.sort();
        let ft = m.file_type();
        let what = if ft.is_dir() {
            for e in fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
            "dir".to_string()
        } else {
            if !ft.is_symlink() {
                inodes.entry(m.ino()).or_default().push(rel.clone());
            }
            let kind = if ft.is_symlink() {
                format!("link->{}", fs::read_link(&p).unwrap().display())
            } else if ft.is_file() {
                format!("file {} {}", m.len(), sha256(&fs::read(&p).unwrap()))
            } else {
                format!("special {:o} rdev={}", m.mode() & 0o170000, m.rdev())
            };
            format!("{kind} mtime={}.{:09}", m.mtime(), m.mtime_nsec())
        };
        out.insert(
            rel,
            format!(
                "{what} mode={:o} owner={}:{} {}",
                m.mode() & 0o7777,
                m.uid(),
                m.gid(),
                xattrs.join(",")
            ),
        );
    }
    let groups = inodes.into_values().filter(|g| g.len() > 1).map(|mut g| {
        g.sort();
        g
    });
    (out, groups.collect())
}
