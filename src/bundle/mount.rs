//! The overlay mount of a bundle's `rootfs/`: the image's layers as `lowerdir` (top first),
//! the container's own `upperdir` and `workdir`. Mounted with the new mount API, one
//! `lowerdir+` per layer (no limit from the one-page option string of `mount(2)`), falling
//! back to `mount(2)` on kernels without it.

use std::io;
use std::path::{Path, PathBuf};

use rustix::mount::{FsMountFlags, FsOpenFlags, MountAttrFlags, MountFlags, MoveMountFlags};

pub use crate::fsutil::mounts::{is_mounted, unmount};

/// An overlay mount: what `mounts.json` records and what is mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overlay {
    /// Top layer first.
    pub lower: Vec<PathBuf>,
    pub upper: PathBuf,
    pub work: PathBuf,
}

impl Overlay {
    /// The `mount(8)`-style options: `lowerdir=top:...:bottom`, `upperdir=`, `workdir=`.
    pub fn options(&self) -> Vec<String> {
        let lower: Vec<String> = self.lower.iter().map(|p| p.display().to_string()).collect();
        vec![
            format!("lowerdir={}", lower.join(":")),
            format!("upperdir={}", self.upper.display()),
            format!("workdir={}", self.work.display()),
        ]
    }

    /// `mounts.json`: `[{"type":"overlay","source":"overlay","options":[...]}]`.
    pub fn mounts_json(&self) -> serde_json::Value {
        serde_json::json!([{"type": "overlay", "source": "overlay", "options": self.options()}])
    }

    /// Mounts it on `target`.
    pub fn mount(&self, target: &Path) -> io::Result<()> {
        match self.mount_new_api(target) {
            Ok(()) => Ok(()),
            // Kernels before 6.5 know no `lowerdir+`: the one-string form, if it fits.
            Err(e) if e.raw_os_error() == Some(libc::EINVAL) => self.mount_legacy(target),
            Err(e) => Err(e),
        }
    }

    fn mount_new_api(&self, target: &Path) -> io::Result<()> {
        let fs = rustix::mount::fsopen("overlay", FsOpenFlags::FSOPEN_CLOEXEC)?;
        for l in &self.lower {
            rustix::mount::fsconfig_set_string(&fs, "lowerdir+", l.as_path())?;
        }
        rustix::mount::fsconfig_set_string(&fs, "upperdir", self.upper.as_path())?;
        rustix::mount::fsconfig_set_string(&fs, "workdir", self.work.as_path())?;
        rustix::mount::fsconfig_create(&fs)?;
        let mnt =
            rustix::mount::fsmount(&fs, FsMountFlags::FSMOUNT_CLOEXEC, MountAttrFlags::empty())?;
        rustix::mount::move_mount(
            &mnt,
            "",
            rustix::fs::CWD,
            target,
            MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH,
        )?;
        Ok(())
    }

    fn mount_legacy(&self, target: &Path) -> io::Result<()> {
        let data = self.options().join(",");
        if data.len() >= 4096 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "the overlay options are {} bytes, more than mount(2) takes on this kernel \
                     (it lacks lowerdir+, Linux 6.5)",
                    data.len()
                ),
            ));
        }
        let data = std::ffi::CString::new(data).map_err(|e| io::Error::other(e.to_string()))?;
        rustix::mount::mount(
            "overlay",
            target,
            "overlay",
            MountFlags::empty(),
            Some(data.as_c_str()),
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_and_mounts_json() {
        let o = Overlay {
            lower: vec!["/l/top".into(), "/l/bottom".into()],
            upper: "/c/upper".into(),
            work: "/c/work".into(),
        };
        assert_eq!(
            o.options(),
            vec![
                "lowerdir=/l/top:/l/bottom",
                "upperdir=/c/upper",
                "workdir=/c/work"
            ]
        );
        assert_eq!(o.mounts_json()[0]["type"], "overlay");
    }
}
