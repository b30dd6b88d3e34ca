//! File-system calls that never follow a symbolic link where the agent expects its own
//! directory or file: everything is reached from an open directory handle with `*at` calls and
//! `O_NOFOLLOW`, and temporary files are created exclusively under unpredictable names.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rustix::fs::{AtFlags, FileType, Mode, OFlags};

pub mod atomic;
pub mod mounts;

/// Marks a temporary file: `.NAME.kci-tmp-PID-RANDOM`.
pub const TEMP_MARK: &str = ".kci-tmp-";

fn errno(e: rustix::io::Errno) -> io::Error {
    io::Error::from(e)
}

/// 16 random hex digits from the system's generator.
pub fn random_hex() -> String {
    use ring::rand::SecureRandom as _;
    let mut b = [0u8; 8];
    // The system generator does not fail on Linux; a fallback still differs per call.
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        b = t.to_le_bytes();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The error for a name that should be the agent's own directory or file and is a symbolic
/// link (or another kind of file).
fn not_ours(path: &Path, what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!(
            "{} is a symbolic link or not a {what}; the agent never follows a link inside its \
             own directories: remove it (rm {}) and rerun",
            path.display(),
            path.display()
        ),
    )
}

/// Opens a directory (following links: the caller chose the path).
pub fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    rustix::fs::open(
        path,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(errno)
}

/// Opens the directory `name` inside `dir`, never through a symbolic link. With `create`, a
/// missing directory is made (mode 0755). `shown` names it in errors.
pub fn open_subdir(
    dir: BorrowedFd<'_>,
    name: &str,
    create: bool,
    shown: &Path,
) -> io::Result<OwnedFd> {
    if create {
        match rustix::fs::mkdirat(dir, name, Mode::from_raw_mode(0o755)) {
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => {
                return Err(io::Error::new(
                    io::Error::from(e).kind(),
                    format!("cannot create {}: {e}", shown.display()),
                ));
            }
        }
    }
    match rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    ) {
        Ok(fd) => Ok(fd),
        Err(rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR) => {
            Err(not_ours(shown, "directory"))
        }
        Err(e) => Err(io::Error::new(
            io::Error::from(e).kind(),
            format!("cannot open {}: {e}", shown.display()),
        )),
    }
}

/// Opens the regular file `name` in `dir` for reading, never through a symbolic link.
/// `Ok(None)` if it does not exist.
pub fn open_file(dir: BorrowedFd<'_>, name: &str, shown: &Path) -> io::Result<Option<File>> {
    match rustix::fs::openat(
        dir,
        name,
        OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC | OFlags::NONBLOCK,
        Mode::empty(),
    ) {
        Ok(fd) => {
            let st = rustix::fs::fstat(&fd).map_err(errno)?;
            if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile {
                return Err(not_ours(shown, "regular file"));
            }
            Ok(Some(File::from(fd)))
        }
        Err(rustix::io::Errno::NOENT) => Ok(None),
        Err(rustix::io::Errno::LOOP) => Err(not_ours(shown, "regular file")),
        Err(e) => Err(io::Error::new(
            io::Error::from(e).kind(),
            format!("cannot open {}: {e}", shown.display()),
        )),
    }
}

/// Reads the regular file `name` in `dir` whole, refusing links and anything larger than
/// `max` bytes. `Ok(None)` if it does not exist.
pub fn read_file(
    dir: BorrowedFd<'_>,
    name: &str,
    max: u64,
    shown: &Path,
) -> io::Result<Option<Vec<u8>>> {
    let Some(f) = open_file(dir, name, shown)? else {
        return Ok(None);
    };
    let mut out = Vec::new();
    f.take(max + 1).read_to_end(&mut out)?;
    if out.len() as u64 > max {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is larger than {max} bytes", shown.display()),
        ));
    }
    Ok(Some(out))
}

/// Size of `name` in `dir` if it is a regular file (not a link), else `None`.
pub fn regular_file_size(dir: BorrowedFd<'_>, name: &str) -> Option<u64> {
    let st = rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW).ok()?;
    (FileType::from_raw_mode(st.st_mode) == FileType::RegularFile).then_some(st.st_size as u64)
}

/// Creates `name` in `dir` for writing: it must not exist, and a symbolic link there is not
/// followed (`O_CREAT|O_EXCL|O_NOFOLLOW`).
pub fn create_new(dir: BorrowedFd<'_>, name: &str, mode: u32) -> io::Result<File> {
    rustix::fs::openat(
        dir,
        name,
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(mode),
    )
    .map(File::from)
    .map_err(errno)
}

/// Alignment of direct I/O (memory, offset and length): covers 512-byte and 4 KiB sectors.
pub const DIRECT_ALIGN: usize = 4096;

/// Turns `O_DIRECT` on or off on an open file (a flag of the open file, shared by its
/// duplicated descriptors).
pub fn set_direct(file: &File, on: bool) -> io::Result<()> {
    let flags = rustix::fs::fcntl_getfl(file).map_err(errno)?;
    let flags = match on {
        true => flags | OFlags::DIRECT,
        false => flags - OFlags::DIRECT,
    };
    rustix::fs::fcntl_setfl(file, flags).map_err(errno)
}

/// Opens the regular file `name` in `dir` for reading and writing, never through a link.
pub fn open_rw(dir: BorrowedFd<'_>, name: &str) -> io::Result<File> {
    rustix::fs::openat(
        dir,
        name,
        OFlags::RDWR | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map(File::from)
    .map_err(errno)
}

/// Opens (creating, mode 0600) the regular file `name` in `dir` for reading and writing,
/// never through a symbolic link: a lock file.
pub fn open_rw_create(dir: BorrowedFd<'_>, name: &str) -> io::Result<File> {
    rustix::fs::openat(
        dir,
        name,
        OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::CLOEXEC,
        Mode::from_raw_mode(0o600),
    )
    .map(File::from)
    .map_err(errno)
}

/// A fresh temporary name for `name`: `.NAME.kci-tmp-PID-RANDOM`.
pub fn temp_name(name: &str) -> String {
    format!(".{name}{TEMP_MARK}{}-{}", std::process::id(), random_hex())
}

/// Creates a temporary file for `name` in `dir` (exclusive, unpredictable name).
pub fn create_temp(dir: BorrowedFd<'_>, name: &str, mode: u32) -> io::Result<(File, String)> {
    loop {
        let tmp = temp_name(name);
        match create_new(dir, &tmp, mode) {
            Ok(f) => return Ok((f, tmp)),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

pub fn rename(
    from_dir: BorrowedFd<'_>,
    from: &str,
    to_dir: BorrowedFd<'_>,
    to: &str,
) -> io::Result<()> {
    rustix::fs::renameat(from_dir, from, to_dir, to).map_err(errno)
}

/// Removes the entry `name` of `dir` (a link is removed, never followed).
pub fn remove(dir: BorrowedFd<'_>, name: &str) -> io::Result<()> {
    rustix::fs::unlinkat(dir, name, AtFlags::empty()).map_err(errno)
}

/// Makes the entries of a directory durable (after renames into it).
pub fn sync_dir(dir: BorrowedFd<'_>) -> io::Result<()> {
    rustix::fs::fsync(dir).map_err(errno)
}

/// What a directory holds: names with their types, without following anything.
pub fn list(dir: BorrowedFd<'_>) -> io::Result<Vec<(String, FileType)>> {
    let mut d = rustix::fs::Dir::read_from(dir).map_err(errno)?;
    let mut out = Vec::new();
    while let Some(e) = d.read() {
        let e = e.map_err(errno)?;
        let name = OsStr::from_bytes(e.file_name().to_bytes());
        if name == "." || name == ".." {
            continue;
        }
        let mut ty = e.file_type();
        if ty == FileType::Unknown {
            ty = rustix::fs::statat(dir, e.file_name(), AtFlags::SYMLINK_NOFOLLOW)
                .map(|s| FileType::from_raw_mode(s.st_mode))
                .unwrap_or(FileType::Unknown);
        }
        out.push((name.to_string_lossy().into_owned(), ty));
    }
    Ok(out)
}

/// Whether a temporary name (`.NAME.kci-tmp-PID[-RANDOM]`) belongs to a process that is gone.
pub fn is_stale_temp(name: &str) -> bool {
    let Some((_, rest)) = name.rsplit_once(TEMP_MARK) else {
        return false;
    };
    let pid = rest.split('-').next().unwrap_or("");
    !pid.parse::<u32>()
        .is_ok_and(|p| p == std::process::id() || Path::new("/proc").join(p.to_string()).exists())
}

/// Removes the temporary files of dead runs from `dir`. Errors are ignored: leftovers are
/// untidy, not harmful.
pub fn remove_stale_temps(dir: BorrowedFd<'_>) {
    for (name, ty) in list(dir).unwrap_or_default() {
        if ty != FileType::Directory && is_stale_temp(&name) {
            let _ = remove(dir, &name);
        }
    }
}

/// Replaces `name` in `dir` crash-safely: an exclusive temporary file, fsync, rename, fsync of
/// the directory. A link at `name` is replaced, never followed.
pub fn replace(dir: BorrowedFd<'_>, name: &str, content: &[u8], mode: u32) -> io::Result<()> {
    replace_with(dir, name, content, mode, true)
}

/// [`replace`] without any flush: for a file whose durability something else provides (a
/// layer committed under an `unflushed` marker).
pub fn replace_unsynced(
    dir: BorrowedFd<'_>,
    name: &str,
    content: &[u8],
    mode: u32,
) -> io::Result<()> {
    replace_with(dir, name, content, mode, false)
}

fn replace_with(
    dir: BorrowedFd<'_>,
    name: &str,
    content: &[u8],
    mode: u32,
    sync: bool,
) -> io::Result<()> {
    use std::io::Write;
    let (mut f, tmp) = create_temp(dir, name, mode)?;
    let written = (|| {
        f.write_all(content)?;
        rustix::fs::fchmod(f.as_fd(), Mode::from_raw_mode(mode)).map_err(errno)?;
        if sync { f.sync_all() } else { Ok(()) }
    })();
    drop(f);
    if let Err(e) = written.and_then(|()| rename(dir, &tmp, dir, name)) {
        let _ = remove(dir, &tmp);
        return Err(e);
    }
    if sync { sync_dir(dir) } else { Ok(()) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn links_are_refused_where_our_own_entries_are_expected() {
        let t = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), "x").unwrap();
        symlink(outside.path(), t.path().join("dirlink")).unwrap();
        symlink(outside.path().join("secret"), t.path().join("filelink")).unwrap();
        let root = open_dir(t.path()).unwrap();
        let e = open_subdir(root.as_fd(), "dirlink", true, &t.path().join("dirlink")).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        assert!(open_file(root.as_fd(), "filelink", Path::new("filelink")).is_err());
        assert!(create_new(root.as_fd(), "filelink", 0o644).is_err());
        replace(root.as_fd(), "filelink", b"new", 0o644).unwrap();
        assert_eq!(std::fs::read(outside.path().join("secret")).unwrap(), b"x");
        assert_eq!(std::fs::read(t.path().join("filelink")).unwrap(), b"new");
        remove(root.as_fd(), "dirlink").unwrap();
        assert!(outside.path().join("secret").exists());
    }

    #[test]
    fn temporary_names_are_unpredictable_and_stale_ones_recognised() {
        assert_ne!(temp_name("hosts"), temp_name("hosts"));
        assert!(
            temp_name("hosts").starts_with(&format!(".hosts{TEMP_MARK}{}-", std::process::id()))
        );
        assert!(!is_stale_temp(&temp_name("hosts")));
        assert!(is_stale_temp(".hosts.kci-tmp-999999999-0011"));
        assert!(is_stale_temp(".hosts.kci-tmp-999999999"));
        assert!(!is_stale_temp("hosts"));
    }
}
