//! Records the commit the agent is built from (`--version`, the report's `agent_version`):
//! `git rev-parse` when the source is a git checkout, else `KCI_COMMIT` from the environment
//! (a packager's), else "unknown".
use std::process::Command;

fn main() {
    let commit = Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|c| !c.is_empty())
        .or_else(|| std::env::var("KCI_COMMIT").ok())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=KCI_COMMIT={commit}");
    println!("cargo:rerun-if-env-changed=KCI_COMMIT");
    for f in [".git/HEAD", ".git/index"] {
        if std::path::Path::new(f).exists() {
            println!("cargo:rerun-if-changed={f}");
        }
    }
}
