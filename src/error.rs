//! The exit-code error of a command (SPEC §6): every failure a command can end with,
//! classified by exit code, with the line that tells an operator what to do next. The run
//! layer's: it wraps the errors of the layers below.

use std::path::PathBuf;

use crate::diag::InputError;
use crate::netfiles::NetFileError;

/// Top-level error of a command, classified by exit code.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Input(#[from] InputError),
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    NetFile(#[from] NetFileError),
    /// A configuration file under --root (a hosts.toml) is invalid. Exit code 2.
    #[error(transparent)]
    Mirrors(#[from] crate::registry::mirrors::MirrorsError),
    /// A mirror or registry URL that is not one. Exit code 2.
    #[error(transparent)]
    Endpoint(#[from] crate::registry::endpoints::EndpointError),
    /// `store-check` found problems it did not fix. Exit code 1.
    #[error("{0}")]
    Inconsistent(String),
    /// At least one image failed (each is explained in the log and the report). Exit code 4.
    #[error("{failed} of {total} image(s) failed to pull")]
    ImagesFailed { failed: usize, total: usize },
    /// Every image was pulled but a container's bundle could not be prepared. Exit code 4.
    #[error("{failed} of {total} container bundle(s) could not be prepared")]
    ContainersFailed { failed: usize, total: usize },
    /// `cache build` could not write its image. Exit code 3: a file the run must leave
    /// behind is missing.
    #[error("cannot build the cache: {0}")]
    Cache(String),
    /// SIGINT or SIGTERM stopped the run (SPEC §11). Exit code 130 or 143.
    #[error("stopped by {signal}: {failed} of {total} image(s) not complete")]
    Stopped {
        signal: &'static str,
        code: i32,
        failed: usize,
        total: usize,
    },
    /// The pull engine could not start (no async runtime). Exit code 4: nothing was pulled.
    #[error("cannot start the pull engine: {0}")]
    Engine(std::io::Error),
    /// `flush-layers` could not flush the layer store. Exit code 3, like a file the boot flow
    /// must leave behind.
    #[error("cannot flush the layer store {}: {source}", path.display())]
    Flush {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Every image was pulled but the report could not be written. Exit code 3, like a
    /// network file: a file the boot flow must leave behind is missing.
    #[error("cannot write the report {}: {source}", path.display())]
    Report {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl Error {
    /// Exit codes of SPEC §6.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Input(_) | Error::Usage(_) | Error::Mirrors(_) | Error::Endpoint(_) => 2,
            Error::NetFile(_) | Error::Report { .. } | Error::Flush { .. } | Error::Cache(_) => 3,
            Error::ImagesFailed { .. } | Error::Engine(_) | Error::ContainersFailed { .. } => 4,
            Error::Inconsistent(_) => 1,
            Error::Stopped { code, .. } => *code,
        }
    }

    /// A line telling the operator what to do next.
    pub fn hint(&self) -> String {
        match self {
            Error::Input(_) => {
                "fix the value named above and rerun; nothing was written".to_string()
            }
            Error::Usage(_) => "see `kci-pull-agent --help`; nothing was written".to_string(),
            Error::Mirrors(_) | Error::Endpoint(_) => {
                "fix the file named above and rerun; nothing was written".to_string()
            }
            Error::NetFile(e) => e.hint.clone(),
            Error::Inconsistent(_) => {
                "rerun with --fix to remove them, then pull again to restore the images".to_string()
            }
            Error::ImagesFailed { .. } => {
                "each failed image is explained above (and in the report, if one was asked for)"
                    .to_string()
            }
            Error::Engine(_) => "check the instance's memory and thread limits".to_string(),
            Error::Cache(_) => "check the free space where --output and the layer store are, \
                                and that mkfs.erofs (erofs-utils) is installed; nothing was \
                                written at --output"
                .to_string(),
            Error::Stopped { .. } => "run the same command again: completed blobs and layers \
                                      are kept, and a partial blob resumes where it stopped"
                .to_string(),
            Error::ContainersFailed { .. } => "each failed container is explained above and in \
                                               the report's containers section"
                .to_string(),
            Error::Flush { .. } => "the layers stay marked unflushed: if the instance \
                                    restarts before a flush succeeds they are unpacked again \
                                    from their blobs; check the disk (dmesg) and rerun"
                .to_string(),
            Error::Report { .. } => "every image was pulled (see above); make the report's \
                                     directory writable (under systemd, /run/kci is the unit's \
                                     RuntimeDirectory) or pass another --report"
                .to_string(),
        }
    }
}
