//! The network files under `--root`: planned purely from what is on disk and the config, then
//! applied with crash-safe writes.
//!
//! `/etc/hosts` carries one managed block; nothing else in it is touched.
//!
//! `/etc/resolv.conf` is regenerated from a *base* file plus the injected config. The base is
//! kept in `var/lib/kci/network/resolv.conf.base`; the agent recognises its own output by the
//! first line ([`resolv::HEADER`]). When the current file is not the agent's (first run, or a
//! DHCP client rewrote it since), the current file becomes the new base. The first base ever
//! seen is also kept as `resolv.conf.orig` for operators who want to undo the agent.
//!
//! A symlinked `resolv.conf` (systemd-resolved's stub) is read through, inside `--root`, and
//! replaced by a regular file: writing through the link would change a file another service
//! owns and regenerates. The link target is recorded in `resolv.conf.symlink`.

pub mod hosts;
pub mod resolv;

use std::fs;
use std::io::{self, ErrorKind};
use std::path::{Path, PathBuf};

use crate::config::Config;
use crate::diag::Notes;
use crate::fsutil::atomic::{self, WriteMode, resolve_in_root, write_file};

/// A network file (`/etc/hosts`, `/etc/resolv.conf`, or the agent's own state next to them)
/// could not be read or written. Exit code 3.
#[derive(Debug, thiserror::Error)]
#[error("{action} {}: {reason}", path.display())]
pub struct NetFileError {
    pub path: PathBuf,
    pub action: &'static str,
    pub reason: String,
    /// What the operator should do about it.
    pub hint: String,
}

pub const HOSTS: &str = "etc/hosts";
pub const RESOLV: &str = "etc/resolv.conf";
pub const STATE_DIR: &str = "var/lib/kci/network";
const BASE: &str = "resolv.conf.base";
const ORIG: &str = "resolv.conf.orig";
const WRITTEN: &str = "resolv.conf.written";
const SYMLINK: &str = "resolv.conf.symlink";

/// What will happen to one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FilePlan {
    /// The path under `--root`.
    pub path: PathBuf,
    /// Where an in-place write lands (the symlink target, or `path`).
    pub target: PathBuf,
    pub current: Option<String>,
    pub new: String,
    pub replaces_symlink: bool,
}

impl FilePlan {
    pub fn changed(&self) -> bool {
        self.current.as_deref() != Some(self.new.as_str())
    }
}

/// Everything `network` will write, computed before the first write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetPlan {
    /// `None`: the file is left alone (no aliases, and no file to remove a block from).
    pub hosts: Option<FilePlan>,
    /// `None`: no DNS config and the current file is not the agent's.
    pub resolv: Option<FilePlan>,
    /// Agent state files to write first (only those whose content changes).
    pub state: Vec<(PathBuf, String)>,
}

/// What happened to a network file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum FileAction {
    Unchanged,
    /// Replaced by rename.
    Written,
    /// Overwritten in place (a bind-mounted file).
    WrittenInPlace,
}

impl FileAction {
    pub fn as_str(self) -> &'static str {
        match self {
            FileAction::Unchanged => "unchanged",
            FileAction::Written => "written",
            FileAction::WrittenInPlace => "written-in-place",
        }
    }
}

/// The outcome for one file, for logs and the report.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FileResult {
    pub path: PathBuf,
    pub action: FileAction,
}

fn read_opt(path: &Path) -> Result<Option<String>, NetFileError> {
    match fs::read(path) {
        Ok(bytes) => Ok(Some(String::from_utf8_lossy(&bytes).into_owned())),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_error(path, "cannot read", &e)),
    }
}

fn io_error(path: &Path, action: &'static str, e: &io::Error) -> NetFileError {
    let hint = match e.kind() {
        ErrorKind::PermissionDenied | ErrorKind::ReadOnlyFilesystem => {
            "run as root, and under systemd check that ReadWritePaths= in \
             kci-pull-agent.service covers /etc/hosts, /etc/resolv.conf and /var/lib/kci"
        }
        ErrorKind::StorageFull | ErrorKind::QuotaExceeded => "free space on that file system",
        _ => "check the path and its permissions, then rerun",
    };
    NetFileError {
        path: path.to_path_buf(),
        action,
        reason: e.to_string(),
        hint: format!("{hint}; the network files were left as they were"),
    }
}

/// Plans the new hosts and resolv.conf for `cfg` under `root`.
pub fn plan(root: &Path, cfg: &Config, notes: &mut Notes) -> Result<NetPlan, NetFileError> {
    // Every path below has its directories resolved inside the root: a link there (`etc` ->
    // `/etc`) never leads a write out of it.
    let in_root = |rel: &str| {
        let shown = root.join(rel);
        atomic::parent_in_root(root, Path::new(rel))
            .map_err(|e| io_error(&shown, "cannot resolve", &e))
    };
    let state_dir = atomic::resolve_in_root(root, Path::new(STATE_DIR))
        .map_err(|e| io_error(&root.join(STATE_DIR), "cannot resolve", &e))?
        .0;
    let mut state = Vec::new();

    // hosts
    let hosts_path = in_root(HOSTS)?;
    let (hosts_target, hosts_link) = resolve_in_root(root, Path::new(HOSTS))
        .map_err(|e| io_error(&hosts_path, "cannot resolve", &e))?;
    let hosts_current = read_opt(&hosts_target)?;
    if hosts_link && !cfg.hosts.is_empty() {
        notes.warn(format!(
            "{} is a symlink; it is replaced by a regular file with the same lines",
            hosts_path.display()
        ));
    }
    let hosts = match &hosts_current {
        None if cfg.hosts.is_empty() => None,
        current => {
            let text = current.as_deref().unwrap_or("");
            let new = hosts::render(text, &cfg.hosts, notes).map_err(|why| NetFileError {
                path: hosts_path.clone(),
                action: "refusing to edit",
                reason: why,
                hint: format!(
                    "the kci-pull-agent block was edited by hand; delete the lines from {:?} to \
                     {:?} (or the stray marker) and rerun",
                    hosts::BEGIN,
                    hosts::END
                ),
            })?;
            Some(FilePlan {
                path: hosts_path,
                target: hosts_target,
                current: current.clone(),
                new,
                replaces_symlink: hosts_link,
            })
        }
    };

    // resolv.conf
    let resolv_path = in_root(RESOLV)?;
    let (resolv_target, resolv_link) = resolve_in_root(root, Path::new(RESOLV))
        .map_err(|e| io_error(&resolv_path, "cannot resolve", &e))?;
    let current = read_opt(&resolv_target)?;
    let stored_base = read_opt(&state_dir.join(BASE))?;
    let ours = current.as_deref().is_some_and(resolv::is_generated);
    let base_text = if ours {
        let written = read_opt(&state_dir.join(WRITTEN))?;
        if written.is_some() && written != current {
            notes.warn(format!(
                "{} was edited since kci-pull-agent wrote it; those edits are replaced. To \
                 change the base, edit /{STATE_DIR}/{BASE}",
                resolv_path.display()
            ));
        }
        match &stored_base {
            Some(b) => b.clone(),
            None => {
                notes.warn(format!(
                    "{} was written by kci-pull-agent but its base /{STATE_DIR}/{BASE} is \
                     missing; using the current file as the base, so entries injected by an \
                     earlier run may remain",
                    resolv_path.display()
                ));
                current.clone().unwrap_or_default()
            }
        }
    } else {
        current.clone().unwrap_or_default()
    };
    let resolv = if cfg.dns.is_empty() && !ours {
        None
    } else {
        let new = if cfg.dns.is_empty() {
            // Nothing injected any more: give the base back, unchanged.
            base_text.clone()
        } else {
            let base_file = format!("/{STATE_DIR}/{BASE}");
            resolv::render(&resolv::parse(&base_text), &cfg.dns, &base_file, notes)
        };
        if !ours {
            if stored_base.as_deref() != Some(base_text.as_str()) {
                if stored_base.is_some() {
                    notes.info(format!(
                        "{} changed since the agent's last write (a DHCP client?); it is the \
                         new base",
                        resolv_path.display()
                    ));
                }
                state.push((state_dir.join(BASE), base_text.clone()));
            }
            if read_opt(&state_dir.join(ORIG))?.is_none() {
                state.push((state_dir.join(ORIG), base_text.clone()));
            }
        }
        if resolv_link {
            let link = fs::read_link(&resolv_path)
                .map(|t| format!("{}\n", t.display()))
                .unwrap_or_default();
            notes.warn(format!(
                "{} is a symlink to {}; it is replaced by a regular file (target recorded in \
                 /{STATE_DIR}/{SYMLINK})",
                resolv_path.display(),
                link.trim_end()
            ));
            state.push((state_dir.join(SYMLINK), link));
        }
        if read_opt(&state_dir.join(WRITTEN))?.as_deref() != Some(new.as_str()) {
            state.push((state_dir.join(WRITTEN), new.clone()));
        }
        Some(FilePlan {
            path: resolv_path,
            target: resolv_target,
            current,
            new,
            replaces_symlink: resolv_link,
        })
    };
    Ok(NetPlan {
        hosts,
        resolv,
        state,
    })
}

/// Writes the plan: agent state first, then hosts, then resolv.conf. Files whose content does
/// not change are not written at all.
pub fn apply(plan: &NetPlan) -> Result<Vec<FileResult>, NetFileError> {
    // Leftovers of a run killed between its temporary file and its rename.
    let dirs = plan
        .state
        .iter()
        .map(|(p, _)| p.as_path())
        .chain(
            [&plan.hosts, &plan.resolv]
                .into_iter()
                .flatten()
                .map(|f| f.path.as_path()),
        )
        .filter_map(Path::parent);
    let mut seen: Vec<&Path> = Vec::new();
    for d in dirs {
        if !seen.contains(&d) {
            atomic::remove_stale_temps(d);
            seen.push(d);
        }
    }
    for (path, content) in &plan.state {
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).map_err(|e| io_error(dir, "cannot create", &e))?;
        }
        write_file(path, path, content.as_bytes())
            .map_err(|e| io_error(path, "cannot write", &e))?;
    }
    let mut results = Vec::new();
    for file in [&plan.hosts, &plan.resolv].into_iter().flatten() {
        let action = if !file.changed() {
            FileAction::Unchanged
        } else {
            if let Some(dir) = file.path.parent() {
                fs::create_dir_all(dir).map_err(|e| io_error(dir, "cannot create", &e))?;
            }
            match write_file(&file.path, &file.target, file.new.as_bytes()) {
                Ok(WriteMode::Renamed) => FileAction::Written,
                Ok(WriteMode::InPlace) => FileAction::WrittenInPlace,
                Err(e) => return Err(io_error(&file.path, "cannot write", &e)),
            }
        };
        results.push(FileResult {
            path: file.path.clone(),
            action,
        });
    }
    Ok(results)
}

/// The `--dry-run` rendering: each file with what would happen to it, then its content.
pub fn describe(plan: &NetPlan, root: &Path) -> String {
    let mut out = String::new();
    for (rel, file) in [(HOSTS, &plan.hosts), (RESOLV, &plan.resolv)] {
        match file {
            None => out.push_str(&format!(
                "==> {} (left untouched: nothing to inject)\n",
                root.join(rel).display()
            )),
            Some(f) => {
                let what = if f.replaces_symlink && f.changed() {
                    "would replace the symlink with this content"
                } else if f.changed() {
                    "would write"
                } else {
                    "unchanged"
                };
                out.push_str(&format!("==> {} ({what})\n", f.path.display()));
                out.push_str(&f.new);
                if !f.new.is_empty() && !f.new.ends_with('\n') {
                    out.push('\n');
                }
            }
        }
    }
    out
}
/// The instance's primary address: the source address of its route out (IPv4 first; a UDP
/// socket's `connect` only looks the route up, nothing is sent).
pub fn primary_address() -> Option<std::net::IpAddr> {
    for (bind, to) in [("0.0.0.0:0", "192.0.2.1:9"), ("[::]:0", "[2001:db8::1]:9")] {
        let Ok(socket) = std::net::UdpSocket::bind(bind) else {
            continue;
        };
        if socket.connect(to).is_ok()
            && let Ok(a) = socket.local_addr()
            && !a.ip().is_unspecified()
            && !a.ip().is_loopback()
        {
            return Some(a.ip());
        }
    }
    None
}
