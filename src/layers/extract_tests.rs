//! Crafted layers for the extractor: the attacks of SPEC §8 and the overlay format.
use super::*;
use crate::layers::merged::OPAQUE_XATTR;
use rustix::fs::{Gid, Uid, XattrFlags};
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::PathBuf;

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

/// A directory replaced by a symlink to the sandbox's absolute name: later entries through it
/// go where that name is inside the layer (as umoci and the merged rootfs resolve it), never
/// outside.
#[test]
fn a_directory_replaced_by_a_symlink_is_not_written_through() {
    let s = Sandbox::new();
    let outside = s.dir.path().to_str().unwrap().to_string();
    s.run(&[
        dir("d"),
        symlink("d", &outside),
        file("d/x", b"through the link?"),
    ])
    .unwrap();
    s.outside_untouched();
    assert!(
        s.fs()
            .join("d")
            .symlink_metadata()
            .unwrap()
            .file_type()
            .is_symlink()
    );
    let inside = s.fs().join(outside.trim_start_matches('/')).join("x");
    assert_eq!(std::fs::read(inside).unwrap(), b"through the link?");
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
    let st = stack(&[
        &[file("d/gone", b""), file("o/x", b""), file("top", b"")],
        &[
            dir("d"),
            file("d/.wh.gone", b""),
            file("o/.wh..wh..opq", b""),
            file(".wh.top", b""),
            // Nothing of these names below: no whiteout, no directory made for one.
            file("d/.wh.never", b""),
            file("nowhere/deep/.wh.x", b""),
            file("nowhere2/.wh..wh..opq", b""),
        ],
    ]);
    let fs = st.top();
    let w = fs.join("d/gone").symlink_metadata().unwrap();
    assert!(w.file_type().is_char_device() && w.rdev() == 0);
    assert!(
        fs.join("top")
            .symlink_metadata()
            .unwrap()
            .file_type()
            .is_char_device()
    );
    assert_eq!(opaque(&fs.join("o")), Some(true));
    assert!(!fs.join("d/never").exists() && fs.join("d/never").symlink_metadata().is_err());
    assert!(fs.join("nowhere").symlink_metadata().is_err());
    assert!(fs.join("nowhere2").symlink_metadata().is_err());
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
    let a = x.assumed.expect("streamed");
    assert!(a.implied_under(b"") && a.implied_under(b"a") && !a.implied_under(b"a/b"));
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

/// The opaque flag of a directory of a layer (`None`: not a directory).
fn opaque(p: &Path) -> Option<bool> {
    let m = p.symlink_metadata().ok()?;
    if !m.is_dir() {
        return None;
    }
    let mut v = [0u8; 4];
    Some(matches!(
        rustix::fs::getxattr(p, OPAQUE_XATTR, &mut v),
        Ok(1) if v[0] == b'y'
    ))
}

/// Everything of a layer directory the merged view can show, per path (the root as "."):
/// type, mode, owner, content, link target, device, every xattr (overlay's own included),
/// non-directory mtimes.
pub fn describe_layer(root: &Path) -> std::collections::BTreeMap<String, String> {
    let mut out = std::collections::BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(p) = stack.pop() {
        let m = p.symlink_metadata().unwrap();
        let rel = match p.strip_prefix(root).unwrap().to_str().unwrap() {
            "" => ".".to_string(),
            r => r.to_string(),
        };
        let mut names = vec![0u8; 65536];
        let mut xattrs = Vec::new();
        if let Ok(n) = rustix::fs::llistxattr(&p, &mut names) {
            for k in names[..n].split(|b| *b == 0).filter(|k| !k.is_empty()) {
                let mut v = vec![0u8; 65536];
                let len = rustix::fs::lgetxattr(&p, OsStr::from_bytes(k), &mut v).unwrap();
                xattrs.push(format!("{}={:?}", String::from_utf8_lossy(k), &v[..len]));
            }
        }
        xattrs.sort();
        let ft = m.file_type();
        let what = if ft.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
            "dir".to_string()
        } else if ft.is_symlink() {
            format!(
                "link->{} mtime={}",
                std::fs::read_link(&p).unwrap().display(),
                m.mtime()
            )
        } else if ft.is_file() {
            format!(
                "file {:?} mtime={}.{}",
                std::fs::read(&p).unwrap(),
                m.mtime(),
                m.mtime_nsec()
            )
        } else {
            format!(
                "special {:o} rdev={} mtime={}",
                m.mode() & 0o170000,
                m.rdev(),
                m.mtime()
            )
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
    out
}

/// Layers extracted bottom-up with their lower layers known; each one above the bottom is
/// also extracted as it streams in (lower layers unknown) and settled over the same lower
/// layers: that must give the same layer, or ask to be extracted again.
struct Stack {
    _dir: tempfile::TempDir,
    layers: Vec<PathBuf>,
    /// Per layer: whether the streamed extraction had to be redone.
    redone: Vec<bool>,
}

impl Stack {
    fn top(&self) -> PathBuf {
        self.layers.last().unwrap().clone()
    }
}

fn try_stack(layers: &[&[Vec<u8>]]) -> Result<Stack, ExtractError> {
    let dir = tempfile::tempdir().unwrap();
    let mut done: Vec<PathBuf> = Vec::new();
    let mut redone = Vec::new();
    for (i, entries) in layers.iter().enumerate() {
        let layer = tar(entries);
        let lowers: Vec<PathBuf> = done.iter().rev().cloned().collect();
        let fs = dir.path().join(format!("known{i}"));
        std::fs::create_dir(&fs).unwrap();
        extract(
            &layer[..],
            &fs,
            Lowers::Known(lowers.clone()),
            &Limits::default(),
        )?;
        let streamed = dir.path().join(format!("streamed{i}"));
        std::fs::create_dir(&streamed).unwrap();
        let again = match extract(&layer[..], &streamed, Lowers::Unknown, &Limits::default()) {
            Ok((x, _)) => {
                let a = x.assumed.expect("streamed layers say what they assumed");
                crate::layers::settle::settle(&streamed, &lowers, &a)
                    .unwrap()
                    .is_some()
            }
            Err(ExtractError::NeedsLowers(_)) => true,
            Err(e) => panic!("layer {i}: known: ok, streamed: {e}"),
        };
        if !again {
            assert_eq!(
                describe_layer(&streamed),
                describe_layer(&fs),
                "layer {i}: streamed and settled differs from extracted with its lowers known"
            );
        }
        redone.push(again);
        done.push(fs);
    }
    Ok(Stack {
        _dir: dir,
        layers: done,
        redone,
    })
}

fn stack(layers: &[&[Vec<u8>]]) -> Stack {
    try_stack(layers).unwrap()
}

/// Issue 2: a whiteout, then the same directory again: the lower layer's contents must not
/// come back.
#[test]
fn a_whiteout_then_the_same_directory_again_hides_what_was_below() {
    for recreate in [
        vec![file(".wh.w", b""), dir("w"), file("w/new", b"n")],
        vec![file(".wh.w", b""), file("w/new", b"n")],
        vec![file("w", b"a file first"), dir("w"), file("w/new", b"n")],
    ] {
        let st = stack(&[
            &[dir("w"), file("w/old", b"o"), file("w/sub/deep", b"d")],
            &recreate,
        ]);
        let fs = st.top();
        assert_eq!(opaque(&fs.join("w")), Some(true), "{recreate:?}");
        assert_eq!(std::fs::read(fs.join("w/new")).unwrap(), b"n");
        let m = fs.join("w").metadata().unwrap();
        assert_eq!((m.uid(), m.gid()), (0, 0));
    }
}

fn lower_usr() -> Vec<Vec<u8>> {
    vec![
        entry(b"usr", b'5', b"", b"", 0o755, (0, 0)),
        entry(b"usr/bin", b'5', b"", b"", 0o751, (0, 2)),
        file("usr/bin/sh", b"shell"),
        entry(b"usr/lib64", b'5', b"", b"", 0o755, (0, 0)),
        symlink("bin", "usr/bin"),
        symlink("lib64", "/usr/lib64"),
        dir("real"),
        file("real/file", b"r"),
        symlink("lnk", "real"),
    ]
}

/// Issue 3: merged-/usr bases. An upper layer's `bin/foo` goes where `/bin` leads, and a
/// whiteout under a symlinked directory deletes what the link leads to.
#[test]
fn paths_go_through_the_lower_layers_symlinks() {
    let st = stack(&[
        &lower_usr(),
        &[
            file("bin/foo", b"foo"),
            file("lib64/ld.so", b"ld"),
            file("lnk/.wh.file", b""),
        ],
    ]);
    let fs = st.top();
    assert_eq!(std::fs::read(fs.join("usr/bin/foo")).unwrap(), b"foo");
    assert_eq!(std::fs::read(fs.join("usr/lib64/ld.so")).unwrap(), b"ld");
    assert!(
        fs.join("bin").symlink_metadata().is_err(),
        "no /bin in the upper layer"
    );
    assert!(fs.join("lib64").symlink_metadata().is_err());
    let m = fs.join("usr/bin").metadata().unwrap();
    assert_eq!(
        (m.mode() & 0o7777, m.gid()),
        (0o751, 2),
        "copied up with its attributes"
    );
    let w = fs.join("real/file").symlink_metadata().unwrap();
    assert!(w.file_type().is_char_device() && w.rdev() == 0);
    assert!(fs.join("lnk").symlink_metadata().is_err());
    assert_eq!(st.redone, [false, true], "the streamed layer is redone");
    // A file where the lower layers have a file on the path: refused, as umoci refuses it.
    let e = try_stack(&[&lower_usr(), &[file("usr/bin/sh/x", b"")]])
        .err()
        .unwrap();
    assert!(e.to_string().contains("usr/bin/sh/x"), "{e}");
}

/// Issue 5: copies of lower layers' files count against the size limit.
#[test]
fn copies_of_lower_files_count_against_the_size_limit() {
    let st = stack(&[&[file("big", &vec![7u8; 1 << 20])]]);
    let links: Vec<Vec<u8>> = (0..8).map(|i| hardlink(&format!("l{i}"), "big")).collect();
    let s = Sandbox::new();
    let limits = Limits {
        max_size: 4 << 20,
        ..Limits::default()
    };
    let e = extract(
        &tar(&links)[..],
        &s.fs(),
        Lowers::Known(vec![st.top()]),
        &limits,
    )
    .unwrap_err();
    assert!(e.to_string().contains("--max-layer-size"), "{e}");
    let s = Sandbox::new();
    let (x, _) = extract(
        &tar(&links[..3])[..],
        &s.fs(),
        Lowers::Known(vec![st.top()]),
        &limits,
    )
    .unwrap();
    assert_eq!(x.copied_links, 3);
}

/// Issue 6: sparse files as GNU tar writes them are extracted whole, holes as holes.
#[test]
fn sparse_files_are_extracted_whole_with_their_holes() {
    use std::os::unix::fs::FileExt;
    let src = tempfile::tempdir().unwrap();
    let f = std::fs::File::create(src.path().join("disk.img")).unwrap();
    f.write_all_at(b"head", 0).unwrap();
    f.write_all_at(b"tail", 64 << 20).unwrap();
    drop(f);
    let want = std::fs::read(src.path().join("disk.img")).unwrap();
    for format in [
        &["--format=gnu"][..],
        &["--format=pax", "--sparse-version=0.0"],
        &["--format=pax", "--sparse-version=0.1"],
        &["--format=pax", "--sparse-version=1.0"],
    ] {
        let out = std::process::Command::new("tar")
            .args(["-S", "-c", "-f", "-", "-C"])
            .arg(src.path())
            .args(format)
            .arg("disk.img")
            .output()
            .unwrap();
        assert!(out.status.success());
        let s = Sandbox::new();
        extract(
            &out.stdout[..],
            &s.fs(),
            Lowers::Known(Vec::new()),
            &Limits::default(),
        )
        .unwrap();
        let got = s.fs().join("disk.img");
        assert!(std::fs::read(&got).unwrap() == want, "{format:?}");
        let blocks = got.metadata().unwrap().blocks();
        assert!(
            blocks < 1024,
            "{format:?}: holes stay holes ({blocks} blocks)"
        );
        assert_eq!(
            std::fs::read_dir(s.fs()).unwrap().count(),
            1,
            "{format:?}: no GNUSparseFile.N directory"
        );
    }
}

/// Issue 8: an opaque marker at the layer root hides every lower name; an unlisted root keeps
/// the lower layer's attributes.
#[test]
fn an_opaque_root_hides_every_lower_name_and_the_root_keeps_its_attributes() {
    let st = stack(&[
        &[
            entry(b"./", b'5', b"", b"", 0o750, (1000, 1000)),
            file("a", b""),
            file("b/old", b""),
            file("c/old", b""),
        ],
        &[
            file("b/new", b"n"),
            file("./.wh..wh..opq", b""),
            file("c/x", b""),
        ],
    ]);
    let fs = st.top();
    let a = fs.join("a").symlink_metadata().unwrap();
    assert!(a.file_type().is_char_device() && a.rdev() == 0);
    assert_eq!(opaque(&fs.join("b")), Some(true));
    assert_eq!(opaque(&fs.join("c")), Some(true));
    let root = fs.metadata().unwrap();
    assert_eq!(
        (root.mode() & 0o7777, root.uid(), root.gid()),
        (0o750, 1000, 1000)
    );
}

/// Issue 9: whiteouts apply to the layers below only; a directory replaced by a file in the
/// same layer is replaced whole.
#[test]
fn whiteouts_of_what_the_same_layer_made_keep_it() {
    let st = stack(&[
        &[file("f", b"lower"), file("d/lower", b"")],
        &[
            file("f", b"upper"),
            file(".wh.f", b""),
            file("d/upper", b"u"),
            file(".wh.d", b""),
            file("e/a", b""),
            file("e/b/c", b""),
            symlink("e", "f"),
            file("g/x", b""),
            file("g", b"now a file"),
        ],
    ]);
    let fs = st.top();
    assert_eq!(std::fs::read(fs.join("f")).unwrap(), b"upper");
    assert_eq!(std::fs::read(fs.join("d/upper")).unwrap(), b"u");
    assert_eq!(
        opaque(&fs.join("d")),
        Some(true),
        "the lower d/lower is hidden"
    );
    assert_eq!(std::fs::read_link(fs.join("e")).unwrap(), Path::new("f"));
    assert_eq!(std::fs::read(fs.join("g")).unwrap(), b"now a file");
}

/// Issues 10-13: PAX and negative times, xattrs on every kind and by any name, cross-layer
/// copies with every xattr, a hardlink to what the layer deleted.
#[test]
fn times_xattrs_and_links_to_deleted_paths() {
    // A file capability: CAP_NET_RAW permitted (VFS_CAP_REVISION_2).
    let cap: &[u8] = &[
        1, 0, 0, 2, 0, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    let mut neg = file("neg", b"");
    neg[136..148].copy_from_slice(&[0xff; 12]);
    neg[148..156].copy_from_slice(b"        ");
    let sum: u32 = neg[..512].iter().map(|b| *b as u32).sum();
    neg[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let st = stack(&[
        &[
            pax(&[
                ("SCHILY.xattr.security.capability", cap),
                ("SCHILY.xattr.trusted.k", b"v"),
            ]),
            file("bin/ping", b"ping"),
            file("gone", b""),
        ],
        &[
            pax(&[("mtime", b"1600000000.5")]),
            file("t", b""),
            neg,
            pax(&[("SCHILY.xattr.trusted.l", b"on a link")]),
            symlink("sym", "t"),
            pax(&[("SCHILY.xattr.trusted.f", b"on a fifo")]),
            entry(b"fifo", b'6', b"", b"", 0o644, (0, 0)),
            pax(&[("SCHILY.xattr.user.\u{e9}t\u{e9}", b"utf8")]),
            file("named", b""),
            hardlink("ping2", "bin/ping"),
        ],
    ]);
    let fs = st.top();
    let t = fs.join("t").symlink_metadata().unwrap();
    assert_eq!((t.mtime(), t.mtime_nsec()), (1_600_000_000, 500_000_000));
    assert_eq!(fs.join("neg").symlink_metadata().unwrap().mtime(), -1);
    let get = |p: &str, k: &str| {
        let mut v = vec![0u8; 64];
        rustix::fs::lgetxattr(fs.join(p).as_path(), k, &mut v)
            .ok()
            .map(|n| v[..n].to_vec())
    };
    assert_eq!(get("sym", "trusted.l").as_deref(), Some(&b"on a link"[..]));
    assert_eq!(get("fifo", "trusted.f").as_deref(), Some(&b"on a fifo"[..]));
    assert_eq!(
        get("named", "user.\u{e9}t\u{e9}").as_deref(),
        Some(&b"utf8"[..])
    );
    assert_eq!(get("ping2", "security.capability").as_deref(), Some(cap));
    assert_eq!(get("ping2", "trusted.k").as_deref(), Some(&b"v"[..]));
    // A hardlink to a path the same layer whited out.
    let e = try_stack(&[
        &[file("gone", b"x")],
        &[file(".wh.gone", b""), hardlink("h", "gone")],
    ])
    .err()
    .unwrap();
    assert!(e.to_string().contains("deleted"), "{e}");
}

/// Issue 1: a layer listing files but not their many parent directories streams in, and its
/// directories take the lower layers' attributes when it is settled.
#[test]
fn many_unlisted_directories_are_settled_from_the_lower_layers() {
    let mut lower = vec![entry(b"site", b'5', b"", b"", 0o700, (7, 7))];
    let mut upper = Vec::new();
    for i in 0..2000 {
        lower.push(entry(
            format!("site/p{i}").as_bytes(),
            b'5',
            b"",
            b"",
            0o750,
            (i, i),
        ));
        upper.push(file(&format!("site/p{i}/mod{i}/init.py"), b""));
    }
    let st = stack(&[&lower, &upper]);
    assert_eq!(st.redone, [false, false]);
    let m = st.top().join("site/p1999").metadata().unwrap();
    assert_eq!((m.mode() & 0o7777, m.uid()), (0o750, 1999));
    let m = st.top().join("site/p1999/mod1999").metadata().unwrap();
    assert_eq!((m.mode() & 0o7777, m.uid()), (0o755, 0));
}

/// An owner beyond 32 bits, negative, or -1 (which chown reads as "leave it", so root would
/// stay the owner) is refused, never truncated; the largest real id is kept.
#[test]
fn owners_that_no_file_can_have_are_refused_not_truncated() {
    for (key, value) in [
        ("uid", "4294967296"),
        ("gid", "4294967296"),
        ("uid", "4294967295"),
        ("uid", "-1"),
        ("gid", "68719476736"),
    ] {
        let s = Sandbox::new();
        let e = s
            .run(&[pax(&[(key, value.as_bytes())]), file("f", b"x")])
            .unwrap_err();
        assert!(
            matches!(&e, ExtractError::Refused { name, .. } if name.contains('f')),
            "{key}={value}: {e}"
        );
        assert!(e.to_string().contains("not a valid owner"), "{e}");
        assert!(!s.fs().join("f").exists());
    }
    let s = Sandbox::new();
    s.run(&[
        pax(&[("uid", b"4294967294"), ("gid", b"65534")]),
        file("f", b"x"),
    ])
    .unwrap();
    let m = std::fs::metadata(s.fs().join("f")).unwrap();
    assert_eq!((m.uid(), m.gid()), (4294967294, 65534));
}
