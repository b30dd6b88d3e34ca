//! Diagnostics every layer uses: where an input came from ([`Origin`]), an invalid input
//! naming it ([`InputError`], exit 2), and the warnings of the pure parts ([`Notes`]). A
//! leaf: it imports nothing of the crate.

use std::fmt;
use std::path::PathBuf;

/// Where a piece of input came from. Printed in every error and warning about that input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A virtual-kubelet level environment variable (`KCI_HOST_ALIASES`, `KCI_DNS_CONFIG`).
    Env(&'static str),
    /// A pod annotation, read from the `--spec` file.
    Annotation { key: &'static str, spec: PathBuf },
    /// A command-line flag standing in for an annotation.
    Flag(&'static str),
    /// The `--spec` file itself (JSON syntax, structure, container images).
    Spec { path: PathBuf, field: String },
    /// An IMAGE argument on the command line.
    ImageArg,
    /// `--platform`.
    Platform,
    /// The registry auth file (`--auth-file` or `REGISTRY_AUTH_FILE`).
    AuthFile(PathBuf),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Env(var) => write!(f, "environment variable {var}"),
            Origin::Annotation { key, spec } => {
                write!(f, "annotation {key} (pod {})", spec.display())
            }
            Origin::Flag(flag) => write!(f, "flag {flag}"),
            Origin::Spec { path, field } if field.is_empty() => {
                write!(f, "pod file {}", path.display())
            }
            Origin::Spec { path, field } => write!(f, "{field} in pod file {}", path.display()),
            Origin::ImageArg => write!(f, "IMAGE argument"),
            Origin::Platform => write!(f, "flag --platform"),
            Origin::AuthFile(p) => write!(f, "auth file {}", p.display()),
        }
    }
}

/// Invalid input: bad JSON, a wrong type, a value Kubernetes would reject, a malformed image
/// reference or registry entry. Exit code 2; detected before anything is written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {origin}: {detail}")]
pub struct InputError {
    pub origin: Origin,
    pub detail: String,
}

impl InputError {
    pub fn new(origin: Origin, detail: impl Into<String>) -> Self {
        InputError {
            origin,
            detail: detail.into(),
        }
    }
}

/// Warnings collected by the pure parts of the agent; the shell logs them.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Notes {
    pub warnings: Vec<String>,
    pub infos: Vec<String>,
}

impl Notes {
    pub fn warn(&mut self, msg: impl Into<String>) {
        self.warnings.push(msg.into());
    }
    pub fn info(&mut self, msg: impl Into<String>) {
        self.infos.push(msg.into());
    }
    pub fn extend(&mut self, other: Notes) {
        self.warnings.extend(other.warnings);
        self.infos.extend(other.infos);
    }
}
