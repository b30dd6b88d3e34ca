//! Crafted layers for the extractor: the attacks of SPEC §8 and the overlay format.
use super::*;
use std::os::unix::fs::{FileTypeExt, MetadataExt};

/// A raw ustar header and its data, padded: crafted entries the `tar` writer would refuse.
pub fn entry(
    name: &[u8],
    typ: u8,
    data: &[u8],
    link: &[u8],
    mode: u32,
    ids: (u32, u32),
) -> Vec<u8> {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name);
    let octal = |h: &mut [u8; 512], at: usize, len: usize, v: u64| {
        let s = format!("{v:0w$o}\0", w = len - 1);
        h[at..at + len].copy_from_slice(s.as_bytes());
    };
    octal(&mut h, 100, 8, mode as u64);
    octal(&mut h, 108, 8, ids.0 as u64);
    octal(&mut h, 116, 8, ids.1 as u64);
    octal(&mut h, 124, 12, data.len() as u64);
    octal(&mut h, 136, 12, 1_700_000_000);
    h[156] = typ;
    h[157..157 + link.len()].copy_from_slice(link);
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|b| *b as u32).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let mut out = h.to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().div_ceil(512) * 512, 0);
    out
}

pub fn file(name: &str, data: &[u8]) -> Vec<u8> {
    entry(name.as_bytes(), b'0', data, b"", 0o644, (0, 0))
}
pub fn dir(name: &str) -> Vec<u8> {
    entry(name.as_bytes(), b'5', b"", b"", 0o755, (0, 0))
}
pub fn symlink(name: &str, target: &str) -> Vec<u8> {
    entry(name.as_bytes(), b'2', b"", target.as_bytes(), 0o777, (0, 0))
}
pub fn hardlink(name: &str, target: &str) -> Vec<u8> {
    entry(name.as_bytes(), b'1', b"", target.as_bytes(), 0o644, (0, 0))
}
/// A PAX extended header applying `records` to the next entry.
pub fn pax(records: &[(&str, &[u8])]) -> Vec<u8> {
    let mut data = Vec::new();
    for (k, v) in records {
        let body_len = k.len() + v.len() + 3;
        let mut len = body_len + 1;
        while format!("{len}").len() + body_len != len {
            len = format!("{len}").len() + body_len;
        }
        data.extend_from_slice(format!("{len} {k}=").as_bytes());
        data.extend_from_slice(v);
        data.push(b'\n');
    }
    entry(b"PaxHeader", b'x', &data, b"", 0o644, (0, 0))
}
pub fn tar(entries: &[Vec<u8>]) -> Vec<u8> {
    let mut out: Vec<u8> = entries.concat();
    out.extend_from_slice(&[0u8; 1024]);
    out
}

/// A layer root inside a sandbox directory, with a file beside it that must never change.
struct Sandbox {
    dir: tempfile::TempDir,
}
impl Sandbox {
    fn new() -> Sandbox {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("fs")).unwrap();
        std::fs::write(dir.path().join("outside"), "untouched").unwrap();
        Sandbox { dir }
    }
    fn fs(&self) -> PathBuf {
        self.dir.path().join("fs")
    }
    fn run(&self, layer: &[Vec<u8>]) -> Result<Extracted, ExtractError> {
        extract(
            &tar(layer)[..],
            &self.fs(),
            Lowers::Known(Vec::new()),
            &Limits::default(),
        )
        .map(|(x, _)| x)
    }
    /// Everything beside `fs/` is as it was.
    fn outside_untouched(&self) {
        let mut names: Vec<_> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, vec!["fs", "outside"]);
        assert_eq!(
            std::fs::read_to_string(self.dir.path().join("outside")).unwrap(),
            "untouched"
        );
    }
}

#[test]
fn dot_dot_and_absolute_names_stay_inside() {
    let s = Sandbox::new();
    s.run(&[
        file("../outside", b"evil"),
        file("../../../../etc/evil-abs", b"x"),
        file("/abs/evil", b"y"),
        file("a/../../b", b"z"),
    ])
    .unwrap();
    s.outside_untouched();
    assert_eq!(std::fs::read(s.fs().join("outside")).unwrap(), b"evil");
    assert!(s.fs().join("etc/evil-abs").is_file());
    assert!(s.fs().join("abs/evil").is_file());
    assert!(s.fs().join("b").is_file());
}

#[test]
fn symlinks_never_lead_a_later_entry_outside() {
    // A link to the sandbox by its absolute name: inside the root that name loops back
    // through the link itself, or names nothing; either way a clear error, nothing outside.
    let s = Sandbox::new();
    let outside = s.dir.path().to_str().unwrap().to_string();
    let e = s
        .run(&[symlink("tmp", &outside), file("tmp/evil", b"1")])
        .unwrap_err();
    assert!(e.to_string().contains("tmp/evil"), "{e}");
    s.outside_untouched();

    // A link climbing with ".." is taken inside the root: "up/escape" is "escape".
    let s = Sandbox::new();
    s.run(&[
        symlink("up", "../../../../.."),
        file("up/escape", b"2"),
        symlink("rel", "../outside"),
        file("rel", b"replaces the link, not its target"),
        dir("real"),
        symlink("alias", "/real"),
        file("alias/through", b"3"),
    ])
    .unwrap();
    s.outside_untouched();
    assert!(s.fs().join("escape").is_file());
    assert!(s.fs().join("rel").symlink_metadata().unwrap().is_file());
    assert!(
        s.fs().join("real/through").is_file(),
        "an absolute link inside the root"
    );
}

#[test]
fn a_directory_replaced_by_a_symlink_is_not_written_through() {
    let s = Sandbox::new();
    let outside = s.dir.path().to_str().unwrap().to_string();
    let r = s.run(&[
        dir("d"),
        symlink("d", &outside),
        file("d/x", b"through the link?"),
    ]);
    assert!(r.is_err(), "{r:?}");
    s.outside_untouched();
    assert!(
        s.fs()
            .join("d")
            .symlink_metadata()
            .unwrap()
            .file_type()
            .is_symlink()
    );
}

#[test]
fn hardlinks_never_reach_outside() {
    for target in ["/etc/passwd", "../outside", "../../../../etc/passwd"] {
        let s = Sandbox::new();
        let e = s.run(&[hardlink("pw", target)]).unwrap_err();
        assert!(
            e.to_string().contains("not in this layer")
                || e.to_string().contains("not a file of this layer"),
            "{target}: {e}"
        );
        s.outside_untouched();
        assert!(!s.fs().join("pw").exists());
    }
    // Through a symlink inside the layer: resolved inside the root, still nothing outside.
    let s = Sandbox::new();
    let outside = s.dir.path().to_str().unwrap().to_string();
    let e = s
        .run(&[symlink("l", &outside), hardlink("pw", "l/outside")])
        .unwrap_err();
    assert!(e.to_string().contains("pw"), "{e}");
    s.outside_untouched();
    // Within the layer: one inode.
    let s = Sandbox::new();
    s.run(&[file("a", b"same"), hardlink("b", "a")]).unwrap();
    let (a, b) = (
        s.fs().join("a").metadata().unwrap(),
        s.fs().join("b").metadata().unwrap(),
    );
    assert_eq!((a.ino(), a.nlink()), (b.ino(), 2));
}

#[test]
fn whiteouts_become_overlay_whiteouts_and_never_escape() {
    let s = Sandbox::new();
    s.run(&[
        dir("d"),
        file("d/.wh.gone", b""),
        file("o/.wh..wh..opq", b""),
        file(".wh.top", b""),
    ])
    .unwrap();
    let w = s.fs().join("d/gone").symlink_metadata().unwrap();
    assert!(w.file_type().is_char_device() && w.rdev() == 0);
    assert!(
        s.fs()
            .join("top")
            .symlink_metadata()
            .unwrap()
            .file_type()
            .is_char_device()
    );
    let opq = rustix::fs::getxattr(s.fs().join("o").as_path(), OPAQUE_XATTR, &mut [0u8; 8]);
    assert_eq!(opq.ok(), Some(1));
    for bad in ["d/.wh..", "d/.wh...", ".wh."] {
        let s = Sandbox::new();
        let e = s.run(&[file(bad, b"")]).unwrap_err();
        assert!(e.to_string().contains("whiteout"), "{bad}: {e}");
        s.outside_untouched();
    }
}

#[test]
fn a_pax_size_that_disagrees_still_leaves_nothing_outside() {
    let s = Sandbox::new();
    // The PAX record says 0 bytes; the ustar header says 512 and carries, as data, a header
    // for "../../escape". Whichever size a parser believes, nothing lands outside.
    let hidden = file("../../escape", b"hidden");
    let mut smuggler = entry(b"carrier", b'0', &hidden, b"", 0o644, (0, 0));
    smuggler.truncate(512 + hidden.len());
    let _ = s.run(&[pax(&[("size", b"0")]), smuggler, file("after", b"ok")]);
    s.outside_untouched();
}

#[test]
fn overlay_format_modes_owners_devices_and_xattrs() {
    let s = Sandbox::new();
    let x = s
        .run(&[
            pax(&[
                ("SCHILY.xattr.user.note", b"kept"),
                ("SCHILY.xattr.trusted.overlay.opaque", b"y"),
            ]),
            entry(b"bin/su", b'0', b"#!", b"", 0o4755, (1000, 1001)),
            entry(b"tmp", b'5', b"", b"", 0o1777, (0, 0)),
            entry(b"fifo", b'6', b"", b"", 0o640, (7, 8)),
            entry(b"null", b'3', b"", b"", 0o666, (0, 0)),
            entry(b"link", b'2', b"", b"bin/su", 0o777, (1000, 1001)),
            file("empty", b""),
        ])
        .unwrap();
    assert_eq!(x.dropped_overlay_xattrs, 1);
    let su = s.fs().join("bin/su").metadata().unwrap();
    assert_eq!(
        (su.mode() & 0o7777, su.uid(), su.gid()),
        (0o4755, 1000, 1001)
    );
    assert_eq!(su.mtime(), 1_700_000_000);
    let mut buf = [0u8; 16];
    let n = rustix::fs::getxattr(s.fs().join("bin/su").as_path(), "user.note", &mut buf).unwrap();
    assert_eq!(&buf[..n], b"kept");
    assert!(
        rustix::fs::getxattr(
            s.fs().join("bin/su").as_path(),
            "trusted.overlay.opaque",
            &mut buf
        )
        .is_err()
    );
    assert_eq!(
        s.fs().join("tmp").metadata().unwrap().mode() & 0o7777,
        0o1777
    );
    let fifo = s.fs().join("fifo").symlink_metadata().unwrap();
    assert!(fifo.file_type().is_fifo() && fifo.uid() == 7 && fifo.mode() & 0o777 == 0o640);
    assert!(
        s.fs()
            .join("null")
            .symlink_metadata()
            .unwrap()
            .file_type()
            .is_char_device()
    );
    let l = s.fs().join("link").symlink_metadata().unwrap();
    assert!(
        l.file_type().is_symlink() && l.uid() == 1000,
        "owner set without following"
    );
    assert_eq!(
        std::fs::read_link(s.fs().join("link")).unwrap(),
        Path::new("bin/su")
    );
    assert_eq!(s.fs().join("empty").metadata().unwrap().len(), 0);
}

#[test]
fn long_names_and_limits() {
    let s = Sandbox::new();
    let long = format!("{}/{}", "d".repeat(200), "f".repeat(200));
    s.run(&[pax(&[("path", long.as_bytes())]), file("placeholder", b"x")])
        .unwrap();
    assert!(s.fs().join(&long).is_file());
    let s = Sandbox::new();
    let too_long = "a/".repeat(2100);
    let e = s
        .run(&[pax(&[("path", too_long.as_bytes())]), file("p", b"")])
        .unwrap_err();
    assert!(e.to_string().contains("longer than 4096"), "{e}");
    let s = Sandbox::new();
    let limits = Limits {
        max_entries: 2,
        ..Limits::default()
    };
    let e = extract(
        &tar(&[file("a", b""), file("b", b""), file("c", b"")])[..],
        &s.fs(),
        Lowers::Unknown,
        &limits,
    )
    .unwrap_err();
    assert!(matches!(e, ExtractError::TooManyEntries(2)));
    let s = Sandbox::new();
    let big = vec![b'v'; 70_000];
    let e = s
        .run(&[pax(&[("SCHILY.xattr.user.big", &big)]), file("x", b"")])
        .unwrap_err();
    assert!(e.to_string().contains("xattrs"), "{e}");
}

#[test]
fn lower_layers_give_implied_directories_and_hardlink_copies() {
    let lower = tempfile::tempdir().unwrap();
    std::fs::create_dir(lower.path().join("etc")).unwrap();
    rustix::fs::chown(
        lower.path().join("etc").as_path(),
        Some(Uid::from_raw(5)),
        Some(Gid::from_raw(6)),
    )
    .unwrap();
    std::fs::set_permissions(
        lower.path().join("etc"),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    std::fs::create_dir(lower.path().join("data")).unwrap();
    std::fs::write(lower.path().join("data/f"), b"lower content").unwrap();
    rustix::fs::setxattr(
        lower.path().join("data/f").as_path(),
        "user.k",
        b"v",
        XattrFlags::empty(),
    )
    .unwrap();
    let layer = tar(&[file("etc/x", b"x"), hardlink("copy", "data/f")]);

    // Streaming, lowers unknown: the link cannot be made yet.
    let s = Sandbox::new();
    let e = extract(&layer[..], &s.fs(), Lowers::Unknown, &Limits::default()).unwrap_err();
    assert!(matches!(e, ExtractError::NeedsLowers(_)), "{e}");

    let s = Sandbox::new();
    let (x, _) = extract(
        &layer[..],
        &s.fs(),
        Lowers::Known(vec![lower.path().to_path_buf()]),
        &Limits::default(),
    )
    .unwrap();
    assert_eq!(x.copied_links, 1);
    let etc = s.fs().join("etc").metadata().unwrap();
    assert_eq!((etc.mode() & 0o7777, etc.uid(), etc.gid()), (0o700, 5, 6));
    assert_eq!(
        std::fs::read(s.fs().join("copy")).unwrap(),
        b"lower content"
    );
    let mut v = [0u8; 4];
    let n = rustix::fs::getxattr(s.fs().join("copy").as_path(), "user.k", &mut v).unwrap();
    assert_eq!(&v[..n], b"v");
    assert_ne!(
        s.fs().join("copy").metadata().unwrap().ino(),
        lower.path().join("data/f").metadata().unwrap().ino(),
        "a copy, not a link across layers"
    );
    // Not in the lowers either: refused, nothing created.
    let s = Sandbox::new();
    let e = extract(
        &tar(&[hardlink("x", "nowhere")])[..],
        &s.fs(),
        Lowers::Known(vec![lower.path().to_path_buf()]),
        &Limits::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("not a file of this layer"), "{e}");
    // Implied directories are recorded while the lowers are unknown.
    let s = Sandbox::new();
    let (x, _) = extract(
        &tar(&[file("a/b/c", b"")])[..],
        &s.fs(),
        Lowers::Unknown,
        &Limits::default(),
    )
    .unwrap();
    assert_eq!(x.implied_dirs, vec!["a".to_string(), "a/b".to_string()]);
}

#[test]
fn files_get_their_own_owner_and_mode_in_a_setgid_directory_and_under_any_umask() {
    // Files of the process's own uid and gid skip chown and chmod when nothing would change
    // them; a setgid directory (its new files take its group) and modes the umask would cut
    // must still end as the layer says.
    let s = Sandbox::new();
    s.run(&[
        entry(b"shared", b'5', b"", b"", 0o2775, (0, 1234)),
        entry(b"shared/mine", b'0', b"x", b"", 0o644, (0, 0)),
        entry(b"shared/grouped", b'0', b"x", b"", 0o664, (0, 1234)),
        entry(b"open", b'0', b"x", b"", 0o666, (0, 0)),
        entry(b"plain", b'0', b"x", b"", 0o640, (0, 0)),
        entry(b"setgid", b'0', b"x", b"", 0o2755, (0, 0)),
    ])
    .unwrap();
    let meta = |p: &str| {
        let m = s.fs().join(p).metadata().unwrap();
        (m.mode() & 0o7777, m.uid(), m.gid())
    };
    assert_eq!(meta("shared"), (0o2775, 0, 1234));
    assert_eq!(
        meta("shared/mine"),
        (0o644, 0, 0),
        "not the directory's group"
    );
    assert_eq!(meta("shared/grouped"), (0o664, 0, 1234));
    assert_eq!(
        meta("open"),
        (0o666, 0, 0),
        "group and other write survive the umask"
    );
    assert_eq!(meta("plain"), (0o640, 0, 0));
    assert_eq!(meta("setgid"), (0o2755, 0, 0));
}
