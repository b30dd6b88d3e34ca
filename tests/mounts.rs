//! The in-place fallback, with real mounts in a private mount namespace (`unshare -m`, as
//! root): a bind-mounted file cannot be replaced by rename (`EBUSY`), and under the systemd
//! unit's sandbox `/etc` is read-only while the two files are writable bind mounts.
//! Set `KCI_SKIP_MOUNT_TESTS=1` to skip them on a machine where unprivileged.

mod common;

use std::fs;
use std::process::Command;

use common::{Root, bin};

fn in_namespace(script: &str) -> Option<common::Run> {
    if std::env::var_os("KCI_SKIP_MOUNT_TESTS").is_some() {
        eprintln!("KCI_SKIP_MOUNT_TESTS is set: skipping");
        return None;
    }
    let mut cmd = Command::new("unshare");
    cmd.args(["-m", "sh", "-c", script])
        .env_remove("KCI_HOST_ALIASES")
        .env_remove("KCI_DNS_CONFIG");
    let r = common::run(&mut cmd);
    assert!(
        !r.stderr.contains("unshare failed") && !r.stderr.contains("Operation not permitted"),
        "mount namespaces are needed (run as root) or set KCI_SKIP_MOUNT_TESTS=1: {}",
        r.stderr
    );
    Some(r)
}

const ARGS: &str = r#"--host-aliases '[{"ip":"10.0.0.5","hostnames":["reg.example.com"]}]' --dns-config '{"nameservers":["10.0.0.53"]}'"#;

#[test]
fn bind_mounted_files_are_written_in_place() {
    let root = Root::new("127.0.0.1 localhost\n", "nameserver 10.1.0.2\n");
    let src = tempfile::tempdir().unwrap();
    fs::write(src.path().join("hosts"), "127.0.0.1 localhost\n").unwrap();
    fs::write(src.path().join("resolv"), "nameserver 10.1.0.2\n").unwrap();
    let r = root.arg();
    let s = src.path().to_str().unwrap();
    let script = format!(
        "set -e; mount --bind {s}/hosts {r}/etc/hosts; mount --bind {s}/resolv {r}/etc/resolv.conf; \
         {bin} network --root {r} {ARGS}",
        bin = bin()
    );
    let Some(out) = in_namespace(&script) else {
        return;
    };
    assert_eq!(out.code, 0, "{}", out.stderr);
    assert!(out.stderr.contains("written-in-place"), "{}", out.stderr);
    // The writes went through the bind mounts into the mounted files.
    let hosts = fs::read_to_string(src.path().join("hosts")).unwrap();
    assert!(hosts.contains("10.0.0.5\treg.example.com\n"), "{hosts}");
    let resolv = fs::read_to_string(src.path().join("resolv")).unwrap();
    assert!(
        resolv.contains("nameserver 10.0.0.53\nnameserver 10.1.0.2\n"),
        "{resolv}"
    );
    // No temporary file was left next to them.
    let names: Vec<_> = fs::read_dir(root.file("etc"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names.len(), 2, "{names:?}");
}

#[test]
fn read_only_etc_with_writable_files_like_the_systemd_sandbox() {
    let root = Root::new(
        "127.0.0.1 localhost\n",
        "nameserver 10.1.0.2\nsearch a.example\n",
    );
    let r = root.arg();
    let script = format!(
        "set -e; mount --bind {r}/etc {r}/etc; mount -o remount,bind,ro {r}/etc; \
         for f in hosts resolv.conf; do mount --bind {r}/etc/$f {r}/etc/$f; \
         mount -o remount,bind,rw {r}/etc/$f; done; \
         {bin} network --root {r} {ARGS}; {bin} network --root {r} {ARGS}",
        bin = bin()
    );
    let Some(out) = in_namespace(&script) else {
        return;
    };
    assert_eq!(out.code, 0, "{}", out.stderr);
    let hosts = root.read("etc/hosts");
    assert!(hosts.contains("10.0.0.5\treg.example.com\n"), "{hosts}");
    let resolv = root.read("etc/resolv.conf");
    assert!(
        resolv.ends_with("nameserver 10.0.0.53\nnameserver 10.1.0.2\nsearch a.example\n"),
        "{resolv}"
    );
    // The second run found nothing to change.
    assert_eq!(
        out.stderr.matches("\"written-in-place\"").count(),
        2,
        "{}",
        out.stderr
    );
    assert_eq!(
        out.stderr.matches("\"unchanged\"").count(),
        2,
        "{}",
        out.stderr
    );
}
