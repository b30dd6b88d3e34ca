//! The shell around the pure core: gathers input from the environment, files and flags, runs a
//! command, and logs what happened.

use std::io::Write;

use tracing::{info, warn};

use crate::cli::{Cli, Command, Common, OutputFormat};
use crate::config::{Config, ENV_DNS_CONFIG, ENV_HOST_ALIASES, Sources};
use crate::error::{Error, InputError, Notes, Origin};
use crate::explain;
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
pub fn sources(common: &Common, images: &[String]) -> Result<Sources, Error> {
    let spec = match &common.spec {
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
    Ok(Sources {
        env_host_aliases: env_var(ENV_HOST_ALIASES)?,
        env_dns_config: env_var(ENV_DNS_CONFIG)?,
        spec,
        flag_host_aliases: common.host_aliases.clone(),
        flag_dns_config: common.dns_config.clone(),
        flag_http_registry: common.http_registry.clone(),
        flag_insecure_registry: common.insecure_registry.clone(),
        images: images.to_vec(),
        platform: common.platform.clone(),
    })
}

pub fn log_notes(notes: &Notes) {
    for w in &notes.warnings {
        warn!("{w}");
    }
    for i in &notes.infos {
        info!("{i}");
    }
}

/// Runs the command; the caller maps the error to an exit code.
pub fn run(cli: &Cli) -> Result<(), Error> {
    let images: &[String] = match &cli.command {
        Command::Explain { images, .. } => images,
        Command::Network { .. } => &[],
    };
    let src = sources(&cli.common, images)?;
    let (cfg, notes) = Config::load(&src)?;
    log_notes(&notes);
    let root = &cli.common.root;
    let mut stdout = std::io::stdout().lock();
    match &cli.command {
        Command::Network { dry_run } => {
            let mut notes = Notes::default();
            let plan = netfiles::plan(root, &cfg, &mut notes)?;
            log_notes(&notes);
            if *dry_run {
                let _ = stdout.write_all(netfiles::describe(&plan, root).as_bytes());
            } else {
                for r in netfiles::apply(&plan)? {
                    info!(path = %r.path.display(), action = r.action, "network file");
                }
            }
        }
        Command::Explain { output, .. } => {
            if cfg.images.is_empty() {
                return Err(Error::Usage(
                    "no images to explain: give IMAGE arguments, or --spec with a pod that has \
                     containers"
                        .into(),
                ));
            }
            for e in explain::explain(&cfg) {
                let text = match output {
                    OutputFormat::Json => format!("{}\n", e.to_json()),
                    OutputFormat::Text => e.to_text(root),
                };
                let _ = stdout.write_all(text.as_bytes());
            }
        }
    }
    let _ = stdout.flush();
    Ok(())
}
