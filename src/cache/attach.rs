//! Where a cache's tree is: a directory is used as it is; an EROFS image file or block
//! device is mounted read-only at `<root>/run/kci/caches/<id>` (`<id>`: from its path), with
//! `<id>.json` saying which file or device is mounted there. A later run finds the same one
//! mounted and uses it; another file at that path (a rotated cache) is mounted in its place.
//!
//! Files are mounted directly where the kernel reads EROFS from files (Linux 6.12+), else
//! through a read-only loop device that goes away with the mount (`LO_FLAGS_AUTOCLEAR`).

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use rustix::mount::MountFlags;
use serde_json::json;

/// `<root>/run/kci/caches` (SPEC §12, [`super::CACHES`]): the agent's runtime directory
/// (systemd's `RuntimeDirectory=kci`) and the caches' directory in it, never a link.
const RUN: &str = "run/kci";
const DIR: &str = "caches";
use crate::fsutil;
use crate::fsutil::atomic::under_root;
use crate::fsutil::mounts::{is_mounted, unmount};
use crate::oci::Digest;

/// The directory holding the cache's tree for `source`: the directory itself, or where the
/// image is mounted under `root`.
pub(super) fn place(root: &Path, source: &Path) -> Result<PathBuf, String> {
    let meta = std::fs::metadata(source).map_err(|e| format!("cannot read it: {e}"))?;
    let canon = std::fs::canonicalize(source).map_err(|e| format!("cannot resolve it: {e}"))?;
    let ty = meta.file_type();
    if !ty.is_dir() && !ty.is_file() && !ty.is_block_device() {
        return Err("it is not an EROFS image file, a block device or a directory".into());
    }
    // The agent's own directory: no link in it is followed (the unit's sandbox can write
    // /run/kci, and mount-bundles mounts outside it: a planted link must not move a mount).
    let parent = under_root(root, RUN);
    let caches = parent.join(DIR);
    std::fs::create_dir_all(&parent)
        .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    let caches_fd = fsutil::open_dir(&parent)
        .and_then(|p| fsutil::open_subdir(p.as_fd(), DIR, true, &caches))
        .map_err(|e| e.to_string())?;
    // Two runs attaching at once take turns.
    let _lock = fsutil::open_rw_create(caches_fd.as_fd(), ".lock")
        .and_then(|f| f.lock().map(|_| f))
        .map_err(|e| format!("cannot lock {}: {e}", caches.join(".lock").display()))?;
    let digest = Digest::sha256(canon.as_os_str().as_encoded_bytes());
    let id = &digest.hex()[..16];
    let (mnt, record) = (caches.join(id), format!("{id}.json"));
    let write_record = |identity: &serde_json::Value| {
        let bytes = serde_json::to_vec_pretty(identity).unwrap_or_default();
        fsutil::replace(caches_fd.as_fd(), &record, &bytes, 0o644)
            .map_err(|e| format!("cannot write {}: {e}", caches.join(&record).display()))
    };
    if ty.is_dir() {
        write_record(&json!({"source": canon.display().to_string(), "kind": "directory"}))?;
        return Ok(canon);
    }
    // What is mounted: this file (or device) as it is now; a file replaced at the same path
    // is another inode.
    let identity = json!({
        "source": canon.display().to_string(),
        "kind": if ty.is_file() { "file" } else { "block" },
        "dev": meta.dev(),
        "ino": meta.ino(),
        "rdev": meta.rdev(),
        "size": meta.len(),
        "mtime_ns": meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
    });
    if is_mounted(&mnt) {
        let mounted =
            fsutil::read_file(caches_fd.as_fd(), &record, 64 << 10, &caches.join(&record))
                .ok()
                .flatten()
                .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok());
        if mounted.as_ref() == Some(&identity) {
            return Ok(mnt);
        }
        // Another file, or one changed since: what runs on the old mount keeps it.
        unmount(&mnt).map_err(|e| format!("cannot unmount the stale {}: {e}", mnt.display()))?;
    }
    let target =
        fsutil::open_subdir(caches_fd.as_fd(), id, true, &mnt).map_err(|e| e.to_string())?;
    // Mounted on the directory just opened (never through a link put there meanwhile).
    let on = PathBuf::from(format!("/proc/self/fd/{}", target.as_raw_fd()));
    mount_erofs(&canon, &on, ty.is_file())
        .map_err(|e| e.replace(&on.display().to_string(), &mnt.display().to_string()))?;
    write_record(&identity)?;
    Ok(mnt)
}

/// The caches attached under `root` in this boot (their records in `run/kci/caches/`): what
/// was given, and where its tree is.
pub fn attached(root: &Path) -> Vec<(PathBuf, PathBuf)> {
    let caches = under_root(root, RUN).join(DIR);
    let Ok(entries) = std::fs::read_dir(&caches) else {
        return Vec::new();
    };
    let mut out: Vec<(PathBuf, PathBuf)> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let id = name.strip_suffix(".json")?.to_string();
            let v: serde_json::Value =
                serde_json::from_slice(&std::fs::read(e.path()).ok()?).ok()?;
            let source = PathBuf::from(v["source"].as_str()?);
            let dir = match v["kind"].as_str() {
                Some("directory") => source.clone(),
                _ => caches.join(id),
            };
            source.exists().then_some((source, dir))
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Mounts the EROFS image `source` read-only on `target`; a file through a loop device
/// where the kernel cannot mount files.
fn mount_erofs(source: &Path, target: &Path, file: bool) -> Result<(), String> {
    let mount = |dev: &Path| {
        rustix::mount::mount(dev, target, "erofs", MountFlags::RDONLY, None)
            .map_err(io::Error::from)
    };
    let why = |e: io::Error| {
        let hint = match e.raw_os_error() {
            Some(libc::ENODEV) => " (this kernel has no EROFS: CONFIG_EROFS_FS)",
            Some(libc::EINVAL) => " (not an EROFS image: build it with `cache build`)",
            Some(libc::EPERM) => " (mounting needs CAP_SYS_ADMIN: run as root)",
            _ => "",
        };
        format!("cannot mount it on {}: {e}{hint}", target.display())
    };
    match mount(source) {
        Ok(()) => Ok(()),
        // Before Linux 6.12 EROFS mounts block devices only.
        Err(e) if file && e.raw_os_error() == Some(libc::ENOTBLK) => {
            let (dev, held) = loop_attach(source)
                .map_err(|e| format!("cannot attach it to a loop device: {e}"))?;
            // The loop device clears itself when its last user goes: ours until mounted.
            let r = mount(&dev).map_err(why);
            drop(held);
            r
        }
        Err(e) => Err(why(e)),
    }
}

const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LO_FLAGS_READ_ONLY: u32 = 1;
const LO_FLAGS_AUTOCLEAR: u32 = 4;

/// `struct loop_info64` of `<linux/loop.h>`.
#[repr(C)]
struct LoopInfo64 {
    device: u64,
    inode: u64,
    rdevice: u64,
    offset: u64,
    sizelimit: u64,
    number: u32,
    encrypt_type: u32,
    encrypt_key_size: u32,
    flags: u32,
    file_name: [u8; 64],
    crypt_name: [u8; 64],
    encrypt_key: [u8; 32],
    init: [u64; 2],
}

/// `struct loop_config` of `<linux/loop.h>` (`LOOP_CONFIGURE`, Linux 5.8).
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// Attaches `file` read-only to a free loop device that clears itself once unused; the
/// device and an open handle of it (the device stays while it is held).
pub(super) fn loop_attach(file: &Path) -> io::Result<(PathBuf, File)> {
    let ctl = File::options()
        .read(true)
        .write(true)
        .open("/dev/loop-control")?;
    let backing = File::open(file)?;
    let mut name = [0u8; 64];
    let shown = file.as_os_str().as_encoded_bytes();
    let n = shown.len().min(63);
    name[..n].copy_from_slice(&shown[..n]);
    // Another process may take the free device first: ask again.
    for _ in 0..16 {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a device number.
        let free = unsafe { libc::ioctl(ctl.as_raw_fd(), LOOP_CTL_GET_FREE as _) };
        if free < 0 {
            return Err(io::Error::last_os_error());
        }
        let dev = PathBuf::from(format!("/dev/loop{free}"));
        let held = File::options().read(true).open(&dev)?;
        let config = LoopConfig {
            fd: backing.as_raw_fd() as u32,
            block_size: 0,
            info: LoopInfo64 {
                device: 0,
                inode: 0,
                rdevice: 0,
                offset: 0,
                sizelimit: 0,
                number: 0,
                encrypt_type: 0,
                encrypt_key_size: 0,
                flags: LO_FLAGS_READ_ONLY | LO_FLAGS_AUTOCLEAR,
                file_name: name,
                crypt_name: [0; 64],
                encrypt_key: [0; 32],
                init: [0; 2],
            },
            reserved: [0; 8],
        };
        // SAFETY: `config` is a valid `struct loop_config` that outlives the call.
        let r = unsafe { libc::ioctl(held.as_raw_fd(), LOOP_CONFIGURE as _, &config) };
        if r == 0 {
            return Ok((dev, held));
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EBUSY) {
            return Err(e);
        }
    }
    Err(io::Error::other(
        "every free loop device was taken by another process",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The loop-device path of kernels before 6.12: the image is attached read-only, mounts,
    /// reads, and the device goes away with the mount.
    #[test]
    fn an_image_file_mounts_through_a_loop_device() {
        if !Path::new("/dev/loop-control").exists() || unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root and loop devices");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let tree = t.path().join("tree");
        std::fs::create_dir_all(tree.join("d")).unwrap();
        std::fs::write(tree.join("d/f"), b"cached").unwrap();
        let img = t.path().join("c.erofs");
        let out = std::process::Command::new("mkfs.erofs")
            .arg(&img)
            .arg(&tree)
            .output()
            .expect("mkfs.erofs (scripts/setup.sh installs erofs-utils)");
        assert!(out.status.success());
        let (dev, held) = loop_attach(&img).unwrap();
        let mnt = t.path().join("mnt");
        std::fs::create_dir(&mnt).unwrap();
        rustix::mount::mount(&dev, &mnt, "erofs", MountFlags::RDONLY, None).unwrap();
        drop(held);
        let read = std::fs::read(mnt.join("d/f"));
        let write = std::fs::write(mnt.join("d/g"), b"x");
        unmount(&mnt).unwrap();
        assert_eq!(read.unwrap(), b"cached");
        assert!(write.is_err(), "the cache is read-only");
        // Released with the mount (a detached unmount lets it go a little later).
        let backing = format!(
            "/sys/block/{}/loop/backing_file",
            dev.display().to_string().trim_start_matches("/dev/")
        );
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while Path::new(&backing).exists() && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(
            !Path::new(&backing).exists(),
            "{} still attached",
            dev.display()
        );
    }
}
