//! The shell around the pure core: gathers input from the environment, files and flags, runs a
//! command, and logs what happened.

use std::io::Write;

use tracing::{info, warn};

use std::path::{Path, PathBuf};

use crate::cli::{Cli, Command, Common, LogFormat, OutputFormat, PullTuning};
use crate::config::{Config, ENV_DNS_CONFIG, ENV_HOST_ALIASES, Sources};
use crate::diag::{InputError, Notes, Origin};
use crate::error::Error;
use crate::explain;
use crate::fsutil::atomic::under_root;
use crate::netfiles;
use crate::pull::{self, PullOptions};
use crate::registry::mirrors::Mirror;
use crate::registry::transport::NetOptions;
use crate::report::{self, Status};
use std::time::{Duration, Instant};

/// Prepares the bundles (SPEC §8) with the stores the pull just filled; a store that cannot
/// be opened fails every container with the reason.
fn prepare_bundles(
    cli: &Cli,
    cfg: &Config,
    store: &Path,
    layers: &Path,
    images: &[crate::report::ImageReport],
    mount: bool,
) -> Vec<crate::bundle::ContainerReport> {
    let paths = crate::bundle::Paths::under(&cli.common.root, mount);
    let opened = crate::store::Store::open(store)
        .map_err(|e| format!("cannot open the image store: {e}"))
        .and_then(|s| {
            crate::layers::store::LayerStore::open(layers)
                .map(|l| (s, l))
                .map_err(|e| format!("cannot open the layer store: {e}"))
        });
    match opened {
        Ok((s, l)) => crate::bundle::prepare(cfg, &s, &l, images, &paths),
        Err(why) => cfg
            .containers
            .iter()
            .map(|c| crate::bundle::ContainerReport {
                name: c.name.clone(),
                image: c.image.clone(),
                bundle: paths.bundles.join(&c.name).display().to_string(),
                status: "failed",
                error: Some(why.clone()),
                unresolved: c.skipped_env.clone(),
            })
            .collect(),
    }
}

/// The async runtime for pulls: two workers (the instances are small).
fn runtime() -> Result<tokio::runtime::Runtime, Error> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(Error::Engine)
}

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
pub fn sources(
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

pub fn log_notes(notes: &Notes) {
    for w in &notes.warnings {
        warn!("{w}");
    }
    for i in &notes.infos {
        info!("{i}");
    }
}

/// Runs the command; the caller maps the error to an exit code.
/// Where the pod is read from: `--spec`, or for `boot` `<root>/run/kci/pod.json`.
fn spec_path(cli: &Cli) -> Option<PathBuf> {
    match (&cli.common.spec, &cli.command) {
        (Some(p), _) => Some(p.clone()),
        (None, Command::Boot { .. }) => Some(cli.common.root.join(DEFAULT_SPEC)),
        (None, _) => None,
    }
}

/// The store: `--store`, or `<root>/var/lib/kci/images`.
pub fn store_path(common: &Common) -> PathBuf {
    common
        .store
        .clone()
        .unwrap_or_else(|| under_root(&common.root, DEFAULT_STORE))
}

const DEFAULT_SPEC: &str = "run/kci/pod.json";
const DEFAULT_STORE: &str = "var/lib/kci/images";
const DEFAULT_LAYERS: &str = "var/lib/kci/layers";
const DEFAULT_REPORT: &str = "run/kci/pull-report.json";

/// Runs the command; the caller maps the error to an exit code.
pub fn run(cli: &Cli) -> Result<(), Error> {
    // --deadline counts from here: the whole command, network files included.
    let started_at = Instant::now();
    report::mark_start();
    // A root that is not there is a typo or a missing disk: nothing is created under it.
    if !cli.common.root.is_dir() {
        return Err(InputError::new(
            Origin::Flag("--root"),
            format!(
                "{} is not a directory; give the instance's root (default /) or create it first",
                cli.common.root.display()
            ),
        )
        .into());
    }
    // The store by hand and the shell: no pod, no network.
    match &cli.command {
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(*shell, &mut cmd, "kci-pull-agent", &mut std::io::stdout());
            return Ok(());
        }
        Command::Images { layers, output }
        | Command::Prune { layers, output }
        | Command::Df { layers, output } => {
            let layers = layers
                .clone()
                .unwrap_or_else(|| under_root(&cli.common.root, DEFAULT_LAYERS));
            return crate::manage::command(
                &cli.command,
                &store_path(&cli.common),
                &layers,
                &crate::bundle::Paths::under(&cli.common.root, false),
                *output,
            );
        }
        Command::Rmi { .. } => {
            let layers = under_root(&cli.common.root, DEFAULT_LAYERS);
            return crate::manage::command(
                &cli.command,
                &store_path(&cli.common),
                &layers,
                &crate::bundle::Paths::under(&cli.common.root, false),
                OutputFormat::Text,
            );
        }
        _ => {}
    }
    let images: &[String] = match &cli.command {
        Command::Explain { images, .. } | Command::Pull { images, .. } => images,
        Command::Images { .. }
        | Command::Rmi { .. }
        | Command::Prune { .. }
        | Command::Df { .. }
        | Command::Completions { .. } => &[],
        Command::Network { .. }
        | Command::Boot { .. }
        | Command::Prepare { .. }
        | Command::MountBundles { .. }
        | Command::FlushLayers { .. }
        | Command::StoreCheck { .. } => &[],
    };
    let src = sources(&cli.common, spec_path(cli), images)?;
    let (cfg, notes) = Config::load(&src)?;
    log_notes(&notes);
    let root = &cli.common.root;
    // The mirrors of every registry involved, from <root>/etc/kci/certs.d/*/hosts.toml.
    let mirrors = match &cli.command {
        Command::Network { .. }
        | Command::StoreCheck { .. }
        | Command::MountBundles { .. }
        | Command::FlushLayers { .. }
        | Command::Images { .. }
        | Command::Rmi { .. }
        | Command::Prune { .. }
        | Command::Df { .. }
        | Command::Completions { .. } => Default::default(),
        _ => pull::load_mirrors(root, &cfg)?,
    };
    match &cli.command {
        Command::Network { dry_run } => {
            let plan = plan_network(root, &cfg)?;
            if *dry_run {
                let mut stdout = std::io::stdout().lock();
                let _ = stdout.write_all(netfiles::describe(&plan, root).as_bytes());
                let _ = stdout.flush();
            } else {
                apply_network(&plan)?;
            }
            Ok(())
        }
        Command::Pull { report, tuning, .. } => {
            if cfg.images.is_empty() {
                return Err(Error::Usage(
                    "no images to pull: give IMAGE arguments, or --spec with a pod that has \
                     containers"
                        .into(),
                ));
            }
            pull_and_report(
                cli,
                &cfg,
                mirrors,
                tuning,
                Outputs {
                    report: report.as_deref(),
                    network: None,
                    bundles: None,
                },
                started_at,
            )
        }
        Command::Boot {
            report,
            tuning,
            bundles,
        } => {
            // Everything was validated above; now the network files, then the images, which
            // resolve names through the files just written.
            let report_path = report
                .clone()
                .unwrap_or_else(|| under_root(root, DEFAULT_REPORT));
            let files = match plan_network(root, &cfg).and_then(|plan| apply_network(&plan)) {
                Ok(files) => files,
                Err(e) => {
                    // No pull without the network files; the report says why.
                    let network =
                        serde_json::json!({ "error": format!("{e}; hint: {}", e.hint()) });
                    let json = report::to_json(&[], 0.0, vec![("network", network)]);
                    if let Err(w) = report::write(&report_path, &json) {
                        tracing::error!("cannot write the report {}: {w}", report_path.display());
                    }
                    return Err(e);
                }
            };
            let network = serde_json::json!({ "files": files });
            pull_and_report(
                cli,
                &cfg,
                mirrors,
                tuning,
                Outputs {
                    report: Some(&report_path),
                    network: Some(network),
                    bundles: Some(bundles),
                },
                started_at,
            )
        }
        Command::Prepare {
            report,
            tuning,
            bundles,
        } => {
            if cfg.containers.is_empty() {
                return Err(Error::Usage(
                    "no containers to prepare: give --spec with a pod that has containers".into(),
                ));
            }
            if tuning.no_unpack {
                return Err(Error::Usage(
                    "prepare needs the layers unpacked: drop --no-unpack".into(),
                ));
            }
            pull_and_report(
                cli,
                &cfg,
                mirrors,
                tuning,
                Outputs {
                    report: report.as_deref(),
                    network: None,
                    bundles: Some(bundles),
                },
                started_at,
            )
        }
        Command::MountBundles { layers } => {
            let layers = layers
                .clone()
                .unwrap_or_else(|| under_root(root, DEFAULT_LAYERS));
            let paths = crate::bundle::Paths::under(root, true);
            let results = crate::bundle::mount_all(&paths, &layers);
            let failed = results.iter().filter(|(_, r)| r.is_err()).count();
            info!(bundles = results.len(), failed, "bundles mounted");
            if failed > 0 {
                return Err(Error::ContainersFailed {
                    failed,
                    total: results.len(),
                });
            }
            Ok(())
        }
        Command::FlushLayers { layers } => {
            let layers = layers
                .clone()
                .unwrap_or_else(|| under_root(root, DEFAULT_LAYERS));
            let flushed = match crate::layers::store::LayerStore::open_existing(&layers) {
                Ok(None) => Ok(false),
                Ok(Some(store)) => store.flush(),
                Err(e) => Err(e),
            }
            .map_err(|source| Error::Flush {
                path: layers.clone(),
                source,
            })?;
            info!(flushed, layers = %layers.display(), "layer store flushed");
            Ok(())
        }
        Command::StoreCheck {
            fix,
            output,
            layers,
        } => {
            let layers = layers
                .clone()
                .unwrap_or_else(|| under_root(root, DEFAULT_LAYERS));
            store_check(&store_path(&cli.common), &layers, *fix, *output)
        }
        Command::Images { .. }
        | Command::Rmi { .. }
        | Command::Prune { .. }
        | Command::Df { .. }
        | Command::Completions { .. } => unreachable!("handled above"),
        Command::Explain { output, .. } => {
            if cfg.images.is_empty() {
                return Err(Error::Usage(
                    "no images to explain: give IMAGE arguments, or --spec with a pod that has \
                     containers"
                        .into(),
                ));
            }
            let mut stdout = std::io::stdout().lock();
            for e in explain::explain(&cfg, &mirrors, root)? {
                let text = match output {
                    OutputFormat::Json => format!("{}\n", e.to_json()),
                    OutputFormat::Text => e.to_text(),
                };
                let _ = stdout.write_all(text.as_bytes());
            }
            let _ = stdout.flush();
            Ok(())
        }
    }
}

fn plan_network(root: &Path, cfg: &Config) -> Result<netfiles::NetPlan, Error> {
    let mut notes = Notes::default();
    let plan = netfiles::plan(root, cfg, &mut notes)?;
    log_notes(&notes);
    Ok(plan)
}

fn apply_network(plan: &netfiles::NetPlan) -> Result<Vec<netfiles::FileResult>, Error> {
    let results = netfiles::apply(plan)?;
    for r in &results {
        info!(path = %r.path.display(), action = r.action.as_str(), "network file");
    }
    Ok(results)
}

/// What a pull leaves besides the store: the report (with the network files of `boot`) and
/// the containers' bundles.
struct Outputs<'a> {
    report: Option<&'a Path>,
    network: Option<serde_json::Value>,
    bundles: Option<&'a crate::cli::BundleArgs>,
}

/// Pulls the configured images, writes the report (with `extra` sections), logs the summary,
/// and fails with exit code 4 if any image failed.
fn pull_and_report(
    cli: &Cli,
    cfg: &Config,
    mirrors: std::collections::HashMap<crate::registry::host::RegistryHost, Vec<Mirror>>,
    tuning: &PullTuning,
    out: Outputs<'_>,
    started_at: Instant,
) -> Result<(), Error> {
    let Outputs {
        report: report_path,
        network,
        bundles,
    } = out;
    let proxies = crate::registry::proxy::Proxies::from(&|name: &str| std::env::var(name).ok())
        .map_err(|(name, why)| InputError::new(Origin::Env(name), why))?;
    if !proxies.is_empty() {
        info!("proxies from the environment: {}", proxies.describe());
    }
    let opts = PullOptions {
        proxies,
        root: cli.common.root.clone(),
        store: store_path(&cli.common),
        platform: cfg.platform.clone(),
        max_concurrent_downloads: tuning.max_concurrent_downloads as usize,
        net: NetOptions {
            connect_timeout: Duration::from_secs(tuning.connect_timeout),
            read_timeout: Duration::from_secs(tuning.read_timeout),
            low_speed_limit: tuning.low_speed_limit,
            low_speed_time: Duration::from_secs(tuning.low_speed_time),
        },
        deadline: tuning.deadline.map(|s| started_at + Duration::from_secs(s)),
        progress: cli.common.log_format == LogFormat::Text && cli.common.quiet == 0,
        mirrors,
        direct_io: !tuning.buffered_writes,
        unpack: (!tuning.no_unpack).then(|| pull::UnpackOptions {
            layers: tuning
                .layers
                .clone()
                .unwrap_or_else(|| under_root(&cli.common.root, DEFAULT_LAYERS)),
            max_layer_size: tuning.max_layer_size,
            sync: match tuning.layer_sync {
                crate::cli::LayerSyncArg::Deferred => crate::layers::store::LayerSync::Deferred,
                crate::cli::LayerSyncArg::Commit => crate::layers::store::LayerSync::Commit,
            },
        }),
    };
    let started = Instant::now();
    // The runtime lives until the report is written: its signal listener turns SIGINT and
    // SIGTERM into a clean stop (SPEC §11) for the whole of it.
    let rt = runtime()?;
    let _entered = rt.enter();
    if let Err(e) = pull::stop::listen() {
        tracing::warn!("cannot listen for SIGINT and SIGTERM ({e}): they end the run at once");
    }
    let images = if cfg.images.is_empty() {
        Vec::new()
    } else {
        rt.block_on(pull::pull_all(cfg, &cfg.auth, &opts))
    };
    // The bundles of the pod's containers (boot and prepare), once the layers are there.
    let containers = match (bundles, &opts.unpack, pull::stop::requested()) {
        (Some(b), Some(u), None) if !cfg.containers.is_empty() => Some(prepare_bundles(
            cli,
            cfg,
            &opts.store,
            &u.layers,
            &images,
            !b.no_mount,
        )),
        (Some(_), Some(_), Some(s)) if !cfg.containers.is_empty() => Some(
            cfg.containers
                .iter()
                .map(|c| crate::bundle::ContainerReport {
                    name: c.name.clone(),
                    image: c.image.clone(),
                    bundle: under_root(&cli.common.root, crate::bundle::BUNDLES)
                        .join(&c.name)
                        .display()
                        .to_string(),
                    status: "failed",
                    error: Some(format!("not prepared: the run was stopped by {}", s.name())),
                    unresolved: c.skipped_env.clone(),
                })
                .collect(),
        ),
        _ => None,
    };
    let seconds = started.elapsed().as_secs_f64();
    let written = report_path.map(|path| {
        let mut extra = Vec::new();
        if let Some(n) = network {
            extra.push(("network", n));
        }
        if let Some(c) = &containers {
            extra.push(("containers", serde_json::to_value(c).unwrap_or_default()));
        }
        let json = report::to_json(&images, seconds, extra);
        report::write(path, &json).map_err(|source| Error::Report {
            path: path.to_path_buf(),
            source,
        })
    });
    let failed = images.iter().filter(|i| i.status == Status::Failed).count();
    let bytes: u64 = images.iter().map(|i| i.bytes).sum();
    let summary = report::summary(&images, seconds);
    if cli.common.log_format == LogFormat::Json {
        // Fields for the journal; a person at a terminal reads the sentence alone.
        info!(
            images = images.len(),
            failed,
            bytes,
            duration = seconds,
            "{summary}"
        );
    } else {
        info!("{summary}");
    }
    if let Some(s) = pull::stop::requested() {
        if let Some(Err(e)) = &written {
            tracing::error!("{e}");
        }
        return Err(Error::Stopped {
            signal: s.name(),
            code: s.exit_code(),
            failed,
            total: images.len(),
        });
    }
    let failed_containers = containers
        .iter()
        .flatten()
        .filter(|c| c.status != "ready")
        .count();
    if failed == 0 && failed_containers > 0 {
        if let Some(Err(e)) = &written {
            tracing::error!("{e}");
        }
        return Err(Error::ContainersFailed {
            failed: failed_containers,
            total: containers.map_or(0, |c| c.len()),
        });
    }
    match (failed, written) {
        (0, Some(Err(e))) => Err(e),
        (0, _) => Ok(()),
        (_, written) => {
            // The failed images decide the exit code; a report that is missing too is said.
            if let Some(Err(e)) = written {
                tracing::error!("{e}");
            }
            Err(Error::ImagesFailed {
                failed,
                total: images.len(),
            })
        }
    }
}

fn store_check(path: &Path, layers: &Path, fix: bool, output: OutputFormat) -> Result<(), Error> {
    // Only looks (nothing is created or cleaned up) unless --fix is given.
    let store = crate::store::Store::open_existing(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            Error::Usage(format!(
                "{e}; check --store (default <root>/{DEFAULT_STORE})"
            ))
        } else {
            Error::Inconsistent(format!("cannot open the store {}: {e}", path.display()))
        }
    })?;
    let mut problems = store.check(fix).map_err(|e| {
        Error::Inconsistent(format!("cannot check the store {}: {e}", path.display()))
    })?;
    // The layer store too, if there is one.
    let layer_problems = crate::layers::store::LayerStore::open_existing(layers)
        .and_then(|l| l.map(|l| l.check(fix)).transpose())
        .map_err(|e| {
            Error::Inconsistent(format!(
                "cannot check the layer store {}: {e}",
                layers.display()
            ))
        })?;
    for (p, detail, fixed) in layer_problems.into_iter().flatten() {
        problems.push(crate::store::Problem {
            kind: if detail.starts_with("staging") {
                crate::store::ProblemKind::StrayFile
            } else {
                crate::store::ProblemKind::BrokenLayer
            },
            path: p.display().to_string(),
            detail,
            fixed,
        });
    }
    let mut stdout = std::io::stdout().lock();
    for p in &problems {
        let line = match output {
            OutputFormat::Json => serde_json::to_string(p).unwrap_or_default(),
            OutputFormat::Text => format!(
                "{}{}: {} ({})",
                if p.fixed { "fixed " } else { "" },
                p.kind,
                p.path,
                p.detail
            ),
        };
        let _ = writeln!(stdout, "{line}");
    }
    let open = problems.iter().filter(|p| !p.fixed).count();
    info!(store = %path.display(), problems = problems.len(), remaining = open, "store checked");
    if open > 0 {
        return Err(Error::Inconsistent(format!(
            "{open} problem(s) in the store {}",
            path.display()
        )));
    }
    Ok(())
}
