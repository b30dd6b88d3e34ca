//! Helpers for the integration tests: run the built binary against a temporary root.
#![allow(dead_code)]

pub mod busybox;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The agent under test: the binary of this build, or `KCI_AGENT_BIN` (to run the same tests
/// against another build, e.g. to show that a test fails on an older one).
pub fn bin() -> String {
    std::env::var("KCI_AGENT_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_kci-pull-agent").to_string())
}

/// A command for the agent with a clean environment: no VK-level variables leak in from the
/// machine running the tests.
pub fn agent(args: &[&str]) -> Command {
    let mut c = Command::new(bin());
    c.args(args)
        .env_remove("KCI_HOST_ALIASES")
        .env_remove("KCI_DNS_CONFIG")
        .env_remove("KCI_CLUSTER_DNS")
        .env_remove("KCI_CLUSTER_DOMAIN")
        .env_remove("REGISTRY_AUTH_FILE")
        .env_remove("NO_COLOR");
    for p in ["http_proxy", "https_proxy", "all_proxy", "no_proxy"] {
        c.env_remove(p).env_remove(p.to_ascii_uppercase());
    }
    c
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

pub fn run(cmd: &mut Command) -> Run {
    let Output {
        status,
        stdout,
        stderr,
    } = cmd.output().expect("run kci-pull-agent");
    Run {
        code: status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

/// A temporary root with `etc/hosts` and `etc/resolv.conf`.
pub struct Root {
    pub dir: tempfile::TempDir,
}

/// Every mount a test made under its root (a bundle's rootfs, say) goes with it, even when
/// the test fails.
impl Drop for Root {
    fn drop(&mut self) {
        unmount_under(self.dir.path());
    }
}

/// The lines of `/proc/self/mountinfo` whose mount point is `at`.
pub fn mounts_at(at: &Path) -> usize {
    let want = at.display().to_string();
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.split(' ').nth(4) == Some(want.as_str()))
        .count()
}

/// Unmounts (lazily) everything mounted under `dir`, deepest first.
pub fn unmount_under(dir: &Path) {
    let Ok(info) = fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let prefix = format!("{}/", dir.display());
    let mut targets: Vec<&str> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| m.starts_with(&prefix))
        .collect();
    targets.sort_by_key(|t| std::cmp::Reverse(t.len()));
    for t in targets {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(t)
            .status();
    }
}

impl Root {
    pub fn new(hosts: &str, resolv: &str) -> Root {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("etc")).unwrap();
        fs::write(dir.path().join("etc/hosts"), hosts).unwrap();
        fs::write(dir.path().join("etc/resolv.conf"), resolv).unwrap();
        Root { dir }
    }
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
    pub fn arg(&self) -> &str {
        self.dir.path().to_str().unwrap()
    }
    pub fn file(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
    pub fn read(&self, rel: &str) -> String {
        fs::read_to_string(self.file(rel)).unwrap()
    }
    /// Every file under the root with its content, for "nothing changed" checks.
    pub fn snapshot(&self) -> Vec<(PathBuf, Vec<u8>)> {
        let mut out = Vec::new();
        walk(self.path(), &mut out);
        out.sort();
        out
    }
}

fn walk(dir: &Path, out: &mut Vec<(PathBuf, Vec<u8>)>) {
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        let m = fs::symlink_metadata(&p).unwrap();
        if m.is_dir() {
            out.push((p.clone(), Vec::new()));
            walk(&p, out);
        } else if m.file_type().is_symlink() {
            out.push((
                p.clone(),
                fs::read_link(&p)
                    .unwrap()
                    .into_os_string()
                    .into_encoded_bytes(),
            ));
        } else {
            out.push((p.clone(), fs::read(&p).unwrap()));
        }
    }
}

/// Parses a systemd `EnvironmentFile` the simple way the test data uses it: `KEY=value` or
/// `KEY='value'`, `#` comments.
pub fn parse_env_file(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with(';'))
        .map(|l| {
            let (k, v) = l.split_once('=').expect("KEY=value");
            let v = v
                .strip_prefix('\'')
                .and_then(|v| v.strip_suffix('\''))
                .unwrap_or(v);
            (k.to_string(), v.to_string())
        })
        .collect()
}

pub mod fault;
pub mod images;
pub mod proxy;
pub mod reference;
pub mod registry;
pub mod tarball;
pub mod token;

/// Every blob under `store/blobs/sha256` hashes to its name; returns how many there are.
pub fn verify_store(store: &Path) -> usize {
    let dir = store.join("blobs/sha256");
    let mut n = 0;
    if let Ok(entries) = fs::read_dir(&dir) {
        for e in entries {
            let p = e.unwrap().path();
            let want = format!("sha256:{}", p.file_name().unwrap().to_str().unwrap());
            assert_eq!(
                images::sha256(&fs::read(&p).unwrap()),
                want,
                "corrupt blob in store"
            );
            n += 1;
        }
    }
    n
}

/// The `index.json` of a store.
pub fn store_index(store: &Path) -> serde_json::Value {
    serde_json::from_slice(&fs::read(store.join("index.json")).unwrap()).unwrap()
}

/// The outcome of a `pull` with its report.
pub struct Pull {
    pub code: i32,
    pub stderr: String,
    /// The report (`null` if none was written).
    pub report: serde_json::Value,
}

/// Runs `pull --root ROOT --store STORE --report ROOT/report.json ARGS...` and reads the report.
pub fn pull_report(root: &Root, store: &Path, args: &[&str]) -> Pull {
    let report = root.file("report.json");
    let _ = fs::remove_file(&report);
    let mut full = vec![
        "pull",
        "--root",
        root.arg(),
        "--store",
        store.to_str().unwrap(),
        "--report",
        report.to_str().unwrap(),
    ];
    full.extend_from_slice(args);
    let r = run(&mut agent(&full));
    Pull {
        code: r.code,
        stderr: r.stderr,
        report: fs::read(&report)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or(serde_json::Value::Null),
    }
}
