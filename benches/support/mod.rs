//! What both benchmarks share: timing a command with its peak RSS, and medians.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Runs a command under GNU time, returning wall time and the command's peak RSS in KiB (of
/// the command and, for a shell, the largest of the processes it waited for).
/// (The command cannot be measured with wait4 from here: a child spawned by this large
/// process inherits its high-water mark until exec.)
pub fn timed(cmd: &mut Command) -> (Duration, u64) {
    let mut wrapped = Command::new("/usr/bin/time");
    wrapped
        .args(["-f", "KCI_CPU=%Us user %Ss system\nKCI_MAXRSS_KIB=%M"])
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in cmd.get_envs() {
        match v {
            Some(v) => wrapped.env(k, v),
            None => wrapped.env_remove(k),
        };
    }
    if let Some(dir) = cmd.get_current_dir() {
        wrapped.current_dir(dir);
    }
    let start = Instant::now();
    let out = wrapped
        .output()
        .expect("/usr/bin/time is missing: run scripts/setup.sh");
    let elapsed = start.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    // KCI_BENCH_LOG=FILE: every run's command, time and standard error, to read afterwards.
    if let Some(log) = std::env::var_os("KCI_BENCH_LOG") {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("KCI_BENCH_LOG is not writable");
        let _ = writeln!(f, "### {cmd:?}: {:.3} s\n{stderr}", elapsed.as_secs_f64());
    }
    assert!(out.status.success(), "{cmd:?} failed: {stderr}");
    let rss = stderr
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("KCI_MAXRSS_KIB="))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0);
    (elapsed, rss)
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

pub fn env_list(name: &str, default: &str) -> Vec<String> {
    std::env::var(name)
        .unwrap_or_else(|_| default.to_string())
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect()
}

pub fn env_runs(default: usize) -> usize {
    std::env::var("KCI_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Makes `root` a --root for the agent: the network files it reads and rewrites.
pub fn instance_root(root: &Path) {
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(root.join("etc/resolv.conf"), "nameserver 127.0.0.1\n").unwrap();
    std::fs::write(root.join("etc/hosts"), "127.0.0.1 localhost\n").unwrap();
}
