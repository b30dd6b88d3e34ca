//! Mount points: whether a path is one, and unmounting (the bundles' overlays, the pod's
//! mounts, the image caches).

use std::io;
use std::path::Path;

use rustix::mount::UnmountFlags;

/// Whether `path` is a mount point (a line of `/proc/self/mountinfo` names it).
pub fn is_mounted(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.display().to_string();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .any(|m| unescape(m) == want)
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..=i + 3].iter().all(u8::is_ascii_digit) {
            let v = u8::from_str_radix(std::str::from_utf8(&b[i + 1..=i + 3]).unwrap_or("0"), 8);
            if let Ok(v) = v {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Unmounts `path` (lazily: a process still inside keeps its view; a link there is not
/// followed).
pub fn unmount(path: &Path) -> io::Result<()> {
    // Never through a link put in place of the mount point.
    rustix::mount::unmount(path, UnmountFlags::DETACH | UnmountFlags::NOFOLLOW)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_are_read_from_mountinfo() {
        assert_eq!(unescape("/a\\040b"), "/a b");
        assert!(is_mounted(Path::new("/")));
        assert!(!is_mounted(Path::new("/no/such/mount/point")));
    }
}
