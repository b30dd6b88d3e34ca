//! What a `privileged` container gets beyond capabilities (containerd's `WithHostDevices`,
//! `WithAllDevicesAllowed`, and a writable `/sys`).

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use oci_spec::runtime::{LinuxDevice, LinuxDeviceCgroup, LinuxDeviceType, Spec};

/// The instance's devices under `dir` as containerd lists the host's: every character and block
/// device, links not followed, without `pts`, `shm`, `fd`, `mqueue`, `.lxc`, `.lxd-mounts`,
/// `.udev` and `console`; sorted by path, so a rerun writes the same list.
pub fn host_devices(dir: &Path) -> Vec<LinuxDevice> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let path = e.path();
        let name = e.file_name();
        let Ok(m) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        let t = m.file_type();
        if t.is_dir() {
            if !["pts", "shm", "fd", "mqueue", ".lxc", ".lxd-mounts", ".udev"]
                .iter()
                .any(|n| name == *n)
            {
                out.extend(host_devices(&path));
            }
            continue;
        }
        let typ = if t.is_char_device() {
            LinuxDeviceType::C
        } else if t.is_block_device() {
            LinuxDeviceType::B
        } else {
            continue;
        };
        if name == "console" {
            continue;
        }
        let rdev = m.rdev();
        let mut d = LinuxDevice::default();
        d.set_path(path);
        d.set_typ(typ);
        d.set_major(libc::major(rdev) as i64);
        d.set_minor(libc::minor(rdev) as i64);
        d.set_file_mode(Some(m.mode() & 0o777));
        d.set_uid(Some(m.uid()));
        d.set_gid(Some(m.gid()));
        out.push(d);
    }
    out.sort_by(|a, b| a.path().cmp(b.path()));
    out
}

/// Makes `spec` privileged as containerd makes it: every device of the instance, all devices
/// allowed in the device cgroup, `/sys` and its cgroup mount writable.
pub fn privileged(spec: &mut Spec) {
    if let Some(linux) = spec.linux_mut().as_mut() {
        linux.set_devices(Some(host_devices(Path::new("/dev"))));
        let mut res = linux.resources().clone().unwrap_or_default();
        let mut all = LinuxDeviceCgroup::default();
        all.set_allow(true);
        all.set_access(Some("rwm".into()));
        res.set_devices(Some(vec![all]));
        linux.set_resources(Some(res));
    }
    for m in spec.mounts_mut().iter_mut().flatten() {
        if matches!(m.typ().as_deref(), Some("sysfs") | Some("cgroup")) {
            let options = m
                .options()
                .clone()
                .unwrap_or_default()
                .into_iter()
                .map(|o| if o == "ro" { "rw".to_string() } else { o })
                .collect();
            m.set_options(Some(options));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_devices_are_the_instances_own() {
        let devs = host_devices(Path::new("/dev"));
        let null = devs
            .iter()
            .find(|d| d.path() == Path::new("/dev/null"))
            .expect("/dev/null is listed");
        assert_eq!(
            (null.typ(), null.major(), null.minor()),
            (LinuxDeviceType::C, 1, 3)
        );
        assert!(
            devs.iter()
                .all(|d| !d.path().starts_with("/dev/pts") && d.path() != Path::new("/dev/console"))
        );
        assert!(devs.windows(2).all(|w| w[0].path() < w[1].path()));
    }
}
