//! The reference the unpack tests compare with: `umoci raw unpack` of an image, and a
//! read-only overlay mount of the agent's layer directories.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::images::Image;

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
