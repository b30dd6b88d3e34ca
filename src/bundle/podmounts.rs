//! What the pod mounts under its own directory (SPEC §10, "Shared by the pod"): one `/dev/shm`
//! tmpfs, the IPC namespace its containers share (pinned by a bind mount, as CRI-O's `pinns`
//! pins it), `emptyDir` volumes of `medium: Memory` as tmpfs, and every `subPath` bind-mounted
//! from a descriptor opened without following a link (as the kubelet does), so that a link a
//! container plants in a shared volume never leads a later mount out of it.
//!
//! `prepare` writes the plan to `<pod>/mounts.json`; `boot` applies it when it mounts, or
//! `mount-bundles` does (the systemd path), after checking every entry names a place of the
//! pod's own. A rerun leaves what is mounted alone.

use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};

use rustix::fs::{Mode, OFlags};
use serde::{Deserialize, Serialize};

use super::mount::is_mounted;
use crate::config::Config;
use crate::config::names::check_label;
use crate::config::pod::VolumeKind;
use crate::config::quantity::Quantity;

/// containerd's `/dev/shm` for a pod sandbox: 64 MiB.
pub const SHM_SIZE: u64 = 64 << 20;

/// One mount of the pod's, relative to its directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub enum PodMount {
    /// `ns/ipc`: a new IPC namespace, pinned.
    Ipc,
    /// A tmpfs at `target` (`shm` or `volumes/<name>`).
    Tmpfs {
        target: String,
        mode: u32,
        size: Option<u64>,
    },
    /// `subpaths/<container>/<index>`: `path` inside `volumes/<volume>`.
    Subpath {
        target: String,
        volume: String,
        path: String,
    },
}

/// Where the pod's IPC namespace is pinned.
pub fn ipc_pin(pod: &Path) -> PathBuf {
    pod.join("ns/ipc")
}

/// Where container `container`'s `index`-th volume mount with a `subPath` is bound.
pub fn subpath_target(container: &str, index: usize) -> String {
    format!("subpaths/{container}/{index}")
}

/// A `subPath` as the API server accepts it: relative, without `..`.
pub fn check_subpath(sub: &str) -> Result<(), String> {
    if sub.starts_with('/') || sub.split('/').any(|c| c == "..") || sub.contains('\0') {
        return Err(format!(
            "subPath {sub:?} must be relative and must not go up (..)"
        ));
    }
    Ok(())
}

/// The size of a `medium: Memory` emptyDir as the kubelet sizes it
/// (`calculateEmptyDirMemorySize`): the instance's memory, else the pod's memory limit when
/// every container has one, else `sizeLimit`, whichever is smallest and above 0.
fn memory_volume_size(cfg: &Config, size_limit: Option<&str>) -> Option<u64> {
    let mut size = crate::config::quantity::instance_memory()?;
    let limit = |c: &crate::config::pod::PodContainer| {
        c.resources
            .limits
            .get("memory")
            .and_then(|q| Quantity::parse(q))
            .map(|q| q.units())
    };
    let app: Option<u128> = cfg.containers.iter().filter(|c| !c.init).map(limit).sum();
    let init = cfg.containers.iter().filter(|c| c.init).map(limit).max();
    let pod = match (app, init) {
        (Some(a), Some(Some(i))) => Some(a.max(i)),
        (Some(a), None) => Some(a),
        _ => None,
    };
    for candidate in [pod, size_limit.and_then(Quantity::parse).map(|q| q.units())] {
        if let Some(c) = candidate
            && c > 0
            && c <= size
        {
            size = c;
        }
    }
    u64::try_from(size).ok()
}

/// The pod's mounts: its IPC namespace and `/dev/shm`, each memory-backed `emptyDir` once,
/// then each container's `subPath` mounts.
pub fn plan(cfg: &Config) -> Vec<PodMount> {
    let mut out = vec![
        PodMount::Ipc,
        PodMount::Tmpfs {
            target: "shm".into(),
            mode: 0o1777,
            size: Some(SHM_SIZE),
        },
    ];
    for c in &cfg.containers {
        for v in &c.volume_mounts {
            if let VolumeKind::EmptyDir {
                memory: true,
                size_limit,
            } = &v.kind
                && check_label(&v.volume).is_ok()
            {
                let target = format!("volumes/{}", v.volume);
                if !out
                    .iter()
                    .any(|m| matches!(m, PodMount::Tmpfs { target: t, .. } if *t == target))
                {
                    out.push(PodMount::Tmpfs {
                        target,
                        mode: 0o777,
                        size: memory_volume_size(cfg, size_limit.as_deref()),
                    });
                }
            }
        }
    }
    for c in cfg
        .containers
        .iter()
        .filter(|c| check_label(&c.name).is_ok())
    {
        for (i, v) in c.volume_mounts.iter().enumerate() {
            if let Some(sub) = &v.sub_path
                && check_subpath(sub).is_ok()
                && check_label(&v.volume).is_ok()
            {
                out.push(PodMount::Subpath {
                    target: subpath_target(&c.name, i),
                    volume: v.volume.clone(),
                    path: sub.clone(),
                });
            }
        }
    }
    out
}

/// Checks that every entry of a plan read back from disk names a place of the pod's own.
fn check(m: &PodMount) -> Result<(), String> {
    let volume = |t: &str| {
        t.strip_prefix("volumes/")
            .is_some_and(|v| check_label(v).is_ok())
    };
    let ok = match m {
        PodMount::Ipc => true,
        PodMount::Tmpfs { target, mode, .. } => {
            (target == "shm" || volume(target)) && *mode <= 0o7777
        }
        PodMount::Subpath {
            target,
            volume: v,
            path,
        } => {
            let mut parts = target.split('/');
            let shape = parts.next() == Some("subpaths")
                && parts.next().is_some_and(|c| check_label(c).is_ok())
                && parts
                    .next()
                    .is_some_and(|i| !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit()))
                && parts.next().is_none();
            shape && check_label(v).is_ok() && !path.is_empty() && check_subpath(path).is_ok()
        }
    };
    if ok {
        Ok(())
    } else {
        Err(format!("{m:?} is not a mount of the pod's own"))
    }
}

/// Writes the plan to `<pod>/mounts.json`.
pub fn write_plan(pod: &Path, plan: &[PodMount]) -> Result<(), String> {
    let file = pod.join("mounts.json");
    let mut bytes = serde_json::to_vec_pretty(plan).map_err(|e| e.to_string())?;
    bytes.push(b'\n');
    crate::fsutil::atomic::write_file(&file, &file, &bytes)
        .map(|_| ())
        .map_err(|e| format!("cannot write {}: {e}", file.display()))
}

/// Reads `<pod>/mounts.json` back, checked; `None` when there is none (no pod was prepared).
pub fn read_plan(pod: &Path) -> Result<Option<Vec<PodMount>>, String> {
    let file = pod.join("mounts.json");
    let bytes = match std::fs::read(&file) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", file.display())),
    };
    let plan: Vec<PodMount> = serde_json::from_slice(&bytes).map_err(|e| {
        format!(
            "{} is not the agent's pod mount plan ({e}); run `prepare` again",
            file.display()
        )
    })?;
    for m in &plan {
        check(m).map_err(|why| format!("{}: {why}", file.display()))?;
    }
    Ok(Some(plan))
}

/// Makes every mount of `plan` under `pod` that is not there yet. A `subPath` that cannot be
/// bound fails its container only: returned as (container, reason); anything else fails the
/// pod.
pub fn apply(pod: &Path, plan: &[PodMount]) -> Result<Vec<(String, String)>, String> {
    let mut failed = Vec::new();
    for m in plan {
        match m {
            PodMount::Ipc => pin_ipc(&ipc_pin(pod))
                .map_err(|e| format!("cannot pin the pod's IPC namespace: {e}"))?,
            PodMount::Tmpfs { target, mode, size } => {
                let at = pod.join(target);
                mount_tmpfs(&at, *mode, *size, target == "shm")
                    .map_err(|e| format!("cannot mount a tmpfs on {}: {e}", at.display()))?
            }
            PodMount::Subpath {
                target,
                volume,
                path,
            } => {
                if let Err(why) = bind_subpath(pod, target, volume, path) {
                    let container = target.split('/').nth(1).unwrap_or_default();
                    failed.push((container.to_string(), why));
                }
            }
        }
    }
    Ok(failed)
}

/// A new IPC namespace bind-mounted on `pin` (a thread of its own enters it, so the agent's
/// other threads keep theirs).
fn pin_ipc(pin: &Path) -> std::io::Result<()> {
    if is_mounted(pin) {
        return Ok(());
    }
    if let Some(dir) = pin.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(pin)?;
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: unshare(2) with CLONE_NEWIPC only changes this thread's namespaces.
            if unsafe { libc::unshare(libc::CLONE_NEWIPC) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            rustix::mount::mount_bind("/proc/thread-self/ns/ipc", pin).map_err(Into::into)
        })
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("the pinning thread panicked")))
    })
}

fn mount_tmpfs(at: &Path, mode: u32, size: Option<u64>, noexec: bool) -> std::io::Result<()> {
    use rustix::mount::MountFlags;
    std::fs::create_dir_all(at)?;
    if is_mounted(at) {
        return Ok(());
    }
    let mut flags = MountFlags::NOSUID | MountFlags::NODEV;
    if noexec {
        flags |= MountFlags::NOEXEC;
    }
    let mut data = format!("mode={mode:o}");
    if let Some(s) = size {
        data.push_str(&format!(",size={s}"));
    }
    let data = std::ffi::CString::new(data).map_err(std::io::Error::other)?;
    rustix::mount::mount("tmpfs", at, "tmpfs", flags, Some(data.as_c_str()))?;
    Ok(())
}

/// The directory of `emptyDir` volume `name`, `<pod>/volumes/<name>`, made 0777 as the
/// kubelet makes it (a tmpfs of a memory volume is mounted on it first).
pub fn make_volume(pod: &Path, name: &str) -> Result<PathBuf, String> {
    use std::os::unix::fs::PermissionsExt;
    check_label(name).map_err(|why| format!("the volume name {name:?} {why}"))?;
    let vol = pod.join("volumes").join(name);
    if !vol.exists() {
        std::fs::create_dir_all(&vol)
            .and_then(|_| std::fs::set_permissions(&vol, std::fs::Permissions::from_mode(0o777)))
            .map_err(|e| format!("cannot create {}: {e}", vol.display()))?;
    }
    Ok(vol)
}

/// Opens `path` inside the volume one component at a time without following a link, making
/// missing directories (0755, as the kubelet's `doSafeMakeDir`), then bind-mounts what it
/// opened (through `/proc/self/fd`) on `target`.
fn bind_subpath(pod: &Path, target: &str, volume: &str, path: &str) -> Result<(), String> {
    let at = pod.join(target);
    if is_mounted(&at) {
        return Ok(());
    }
    let refused = |e: rustix::io::Errno| {
        format!(
            "volume {volume}: subPath {path:?} cannot be opened inside the volume ({e}: a link \
             or a file is on its way); the container is not given it"
        )
    };
    let dir_flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let vol = make_volume(pod, volume)?;
    let mut fd = rustix::fs::open(&vol, dir_flags, Mode::empty()).map_err(refused)?;
    let parts: Vec<&str> = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    for (i, part) in parts.iter().enumerate() {
        match rustix::fs::mkdirat(&fd, *part, Mode::from_raw_mode(0o755)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(refused(e)),
        }
        let last = i + 1 == parts.len();
        let flags = if last {
            OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC
        } else {
            dir_flags
        };
        fd = rustix::fs::openat(&fd, *part, flags, Mode::empty()).map_err(refused)?;
    }
    let kind = rustix::fs::fstat(&fd).map_err(refused)?.st_mode & libc::S_IFMT;
    let is_dir = match kind {
        libc::S_IFDIR => true,
        libc::S_IFREG => false,
        _ => return Err(refused(rustix::io::Errno::LOOP)),
    };
    // The mount point takes the kind of what it gets.
    let _ = std::fs::remove_file(&at);
    let _ = std::fs::remove_dir(&at);
    if let Some(parent) = at.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| format!("cannot create {}: {e}", parent.display()))?;
    }
    let made = if is_dir {
        std::fs::create_dir(&at)
    } else {
        std::fs::write(&at, b"")
    };
    made.map_err(|e| format!("cannot create {}: {e}", at.display()))?;
    let source = format!("/proc/self/fd/{}", fd.as_fd().as_raw_fd());
    rustix::mount::mount_bind(source.as_str(), &at)
        .map_err(|e| format!("cannot bind the subPath {path:?} on {}: {e}", at.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plan_read_back_must_name_the_pods_own_places() {
        let good = [
            PodMount::Ipc,
            PodMount::Tmpfs {
                target: "shm".into(),
                mode: 0o1777,
                size: Some(SHM_SIZE),
            },
            PodMount::Tmpfs {
                target: "volumes/cache".into(),
                mode: 0o777,
                size: None,
            },
            PodMount::Subpath {
                target: "subpaths/app/0".into(),
                volume: "data".into(),
                path: "a/b".into(),
            },
        ];
        for m in &good {
            check(m).unwrap();
        }
        let bad = [
            PodMount::Tmpfs {
                target: "../../etc".into(),
                mode: 0o777,
                size: None,
            },
            PodMount::Tmpfs {
                target: "volumes/a/b".into(),
                mode: 0o777,
                size: None,
            },
            PodMount::Subpath {
                target: "subpaths/app/0/../../x".into(),
                volume: "data".into(),
                path: "a".into(),
            },
            PodMount::Subpath {
                target: "subpaths/app/0".into(),
                volume: "data".into(),
                path: "../../etc".into(),
            },
            PodMount::Subpath {
                target: "subpaths/app/0".into(),
                volume: "data".into(),
                path: "/etc".into(),
            },
        ];
        for m in &bad {
            assert!(check(m).is_err(), "{m:?}");
        }
        for sub in ["..", "a/../..", "/abs", "a/.."] {
            assert!(check_subpath(sub).is_err(), "{sub}");
        }
        check_subpath("a/b/c").unwrap();
        check_subpath("a..b").unwrap();
    }
}
