//! The run's inputs from the environment and files: the [`Sources`] of the configuration,
//! and the notes its checks leave.

use tracing::{info, warn};

use std::path::PathBuf;

use crate::cli::Common;
use crate::config::{ENV_DNS_CONFIG, ENV_HOST_ALIASES, Sources};
use crate::diag::{InputError, Notes, Origin};
use crate::error::Error;
use crate::netfiles;

/// Reads an environment variable; unset and empty are the same (an `EnvironmentFile` line
/// `KCI_DNS_CONFIG=` means "none").
fn env_var(name: &'static str) -> Result<Option<String>, InputError> {
    match std::env::var(name) {
        Ok(v) if v.trim().is_empty() => Ok(None),
        Ok(v) => Ok(Some(v)),
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(std::env::VarError::NotUnicode(_)) => Err(InputError::new(
            Origin::Env(name),
            "the value is not valid UTF-8",
        )),
    }
}

/// Gathers every input of the command line into [`Sources`].
pub(super) fn sources(
    common: &Common,
    spec: Option<PathBuf>,
    images: &[String],
) -> Result<Sources, Error> {
    let spec = match &spec {
        Some(path) => {
            let text = std::fs::read_to_string(path).map_err(|e| {
                InputError::new(
                    Origin::Spec {
                        path: path.clone(),
                        field: String::new(),
                    },
                    format!("cannot read it: {e}"),
                )
            })?;
            Some((path.clone(), text))
        }
        None => None,
    };
    let auth_path = match &common.auth_file {
        Some(p) => Some(p.clone()),
        None => std::env::var_os("REGISTRY_AUTH_FILE")
            .filter(|v| !v.is_empty())
            .map(std::path::PathBuf::from),
    };
    let auth_file = match auth_path {
        Some(path) => {
            let text = std::fs::read_to_string(&path).map_err(|e| {
                InputError::new(
                    Origin::AuthFile(path.clone()),
                    format!("cannot read it: {e}"),
                )
            })?;
            Some((path, text))
        }
        None => None,
    };
    let instance_ip = spec
        .is_some()
        .then(netfiles::primary_address)
        .flatten()
        .map(|ip| ip.to_string());
    Ok(Sources {
        auth_file,
        env_host_aliases: env_var(ENV_HOST_ALIASES)?,
        env_dns_config: env_var(ENV_DNS_CONFIG)?,
        spec,
        flag_host_aliases: common.host_aliases.clone(),
        flag_dns_config: common.dns_config.clone(),
        flag_http_registry: common.http_registry.clone(),
        flag_insecure_registry: common.insecure_registry.clone(),
        images: images.to_vec(),
        platform: common.platform.clone(),
        flag_cluster_dns: common.cluster_dns.clone(),
        env_cluster_dns: env_var(crate::config::ENV_CLUSTER_DNS)?,
        env_cluster_domain: env_var(crate::config::ENV_CLUSTER_DOMAIN)?,
        instance_ip,
    })
}

pub(super) fn log_notes(notes: &Notes) {
    for w in &notes.warnings {
        warn!("{w}");
    }
    for i in &notes.infos {
        info!("{i}");
    }
}
