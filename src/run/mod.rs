//! The shell around the pure core: gathers input from the environment, files and flags, runs a
//! command, and logs what happened. Every default path is resolved once ([`Paths`]); each
//! command is one function.

mod inputs;
mod pull;
mod store;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use tracing::info;

use crate::cli::{CacheCommand, Cli, Command, OutputFormat, PullTuning};
use crate::config::Config;
use crate::diag::{InputError, Notes, Origin};
use crate::error::Error;
use crate::explain;
use crate::fsutil::atomic::under_root;
use crate::netfiles;
use crate::registry::host::RegistryHost;
use crate::registry::mirrors::Mirror;
use crate::report;
use inputs::{log_notes, sources};
use pull::{Outputs, pull_and_report};

const DEFAULT_SPEC: &str = "run/kci/pod.json";
const DEFAULT_STORE: &str = "var/lib/kci/images";
const DEFAULT_LAYERS: &str = "var/lib/kci/layers";
const DEFAULT_REPORT: &str = "run/kci/pull-report.json";

/// The paths of a run, resolved once from the flags and `--root` (what the commands use,
/// as ripgrep's `HiArgs` is to its flags).
pub struct Paths {
    pub root: PathBuf,
    /// `--store`, or `<root>/var/lib/kci/images`.
    pub store: PathBuf,
    /// `<root>/var/lib/kci/layers` (a command's `--layers` replaces it).
    pub default_layers: PathBuf,
    /// The pod: `--spec`, or for `boot` `<root>/run/kci/pod.json`.
    pub spec: Option<PathBuf>,
    /// The image caches: `--image-cache`, else `KCI_IMAGE_CACHE`, else those attached in
    /// this boot (for the commands that take caches).
    pub caches: Vec<PathBuf>,
}

impl Paths {
    fn resolve(cli: &Cli) -> Paths {
        let root = cli.common.root.clone();
        Paths {
            store: cli
                .common
                .store
                .clone()
                .unwrap_or_else(|| under_root(&root, DEFAULT_STORE)),
            default_layers: under_root(&root, DEFAULT_LAYERS),
            spec: match (&cli.common.spec, &cli.command) {
                (Some(p), _) => Some(p.clone()),
                (None, Command::Boot { .. }) => Some(root.join(DEFAULT_SPEC)),
                (None, _) => None,
            },
            caches: match &cli.command {
                Command::Pull { caches, .. }
                | Command::MountBundles { caches, .. }
                | Command::StoreCheck { caches, .. } => caches.sources(&root),
                Command::Boot { run } | Command::Prepare { run } => run.caches.sources(&root),
                _ => Vec::new(),
            },
            root,
        }
    }

    /// The layer store: a command's `--layers`, else the default.
    fn layers(&self, flag: &Option<PathBuf>) -> PathBuf {
        flag.clone().unwrap_or_else(|| self.default_layers.clone())
    }
}

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
    let paths = Paths::resolve(cli);
    // The store by hand and the shell: no pod, no network.
    match &cli.command {
        Command::Completions { shell } => {
            let mut cmd = <Cli as clap::CommandFactory>::command();
            clap_complete::generate(*shell, &mut cmd, "kci-pull-agent", &mut std::io::stdout());
            return Ok(());
        }
        Command::Images { view } | Command::Prune { view } | Command::Df { view } => {
            return crate::manage::command(
                &cli.command,
                &paths.store,
                &paths.layers(&view.layers),
                &manage_paths(&paths.root),
                view.output,
            );
        }
        Command::Rmi { .. } => {
            return crate::manage::command(
                &cli.command,
                &paths.store,
                &paths.default_layers,
                &manage_paths(&paths.root),
                OutputFormat::Text,
            );
        }
        _ => {}
    }
    let images: &[String] = match &cli.command {
        Command::Explain { images, .. }
        | Command::Pull { images, .. }
        | Command::Cache(CacheCommand::Build { images, .. }) => images,
        _ => &[],
    };
    let src = sources(&cli.common, paths.spec.clone(), images)?;
    let (cfg, notes) = Config::load(&src)?;
    log_notes(&notes);
    let root = &paths.root;
    // The mirrors of every registry a command reaches, from <root>/etc/kci/certs.d/*/hosts.toml.
    let mirrors = match &cli.command {
        Command::Pull { .. }
        | Command::Boot { .. }
        | Command::Prepare { .. }
        | Command::Cache(_)
        | Command::Explain { .. } => crate::pull::load_mirrors(root, &cfg)?,
        _ => Default::default(),
    };
    let pulling = |report: Option<&Path>, network, bundles, tuning: &PullTuning| {
        pull_and_report(
            cli,
            &paths,
            &cfg,
            mirrors.clone(),
            tuning,
            Outputs {
                report,
                network,
                bundles,
            },
            started_at,
        )
    };
    match &cli.command {
        Command::Network { dry_run } => network(root, &cfg, *dry_run),
        Command::Pull { report, tuning, .. } => {
            if cfg.images.is_empty() {
                return Err(Error::Usage(
                    "no images to pull: give IMAGE arguments, or --spec with a pod that has \
                     containers"
                        .into(),
                ));
            }
            pulling(report.as_deref(), None, None, tuning)
        }
        Command::Boot { run } => boot(
            root,
            &cfg,
            run.report
                .clone()
                .unwrap_or_else(|| under_root(root, DEFAULT_REPORT)),
            |report, network| pulling(Some(report), Some(network), Some(&run.bundles), &run.tuning),
        ),
        Command::Prepare { run } => {
            prepare_checks(&cfg, &run.tuning)?;
            pulling(run.report.as_deref(), None, Some(&run.bundles), &run.tuning)
        }
        Command::MountBundles { layers, .. } => {
            mount_bundles(root, &paths.layers(layers), &paths.caches)
        }
        Command::FlushLayers { layers } => flush_layers(&paths.layers(layers)),
        Command::StoreCheck {
            fix,
            output,
            layers,
            ..
        } => store::store_check(
            root,
            &paths.store,
            &paths.layers(layers),
            &paths.caches,
            *fix,
            *output,
        ),
        Command::Explain { output, .. } => explain(root, &cfg, &mirrors, *output),
        Command::Cache(CacheCommand::Build {
            output,
            with_blobs,
            compression,
            tuning,
            ..
        }) => {
            if cfg.images.is_empty() {
                return Err(Error::Usage(
                    "no images to cache: give IMAGE arguments, or --spec with a pod that has \
                     containers"
                        .into(),
                ));
            }
            if tuning.no_unpack {
                return Err(Error::Usage(
                    "a cache holds unpacked layers: drop --no-unpack".into(),
                ));
            }
            pulling(None, None, None, tuning)?;
            cache_build(
                &paths,
                &cfg,
                &paths.layers(&tuning.layers),
                output,
                crate::cache::BuildOptions {
                    with_blobs: *with_blobs,
                    compressor: compression.compressor(),
                },
            )
        }
        Command::Images { .. }
        | Command::Rmi { .. }
        | Command::Prune { .. }
        | Command::Df { .. }
        | Command::Completions { .. } => unreachable!("handled above"),
    }
}

/// Where `images`, `rmi`, `prune` and `df` find the bundles, whose layers may be those of the
/// caches attached in this boot.
fn manage_paths(root: &Path) -> crate::bundle::Paths {
    crate::bundle::Paths {
        caches: crate::cache::attached(root)
            .into_iter()
            .map(|(_, dir)| dir)
            .collect(),
        ..crate::bundle::Paths::under(root, false)
    }
}

/// `cache build`, once its images are pulled: the EROFS image of them.
fn cache_build(
    paths: &Paths,
    cfg: &Config,
    layers: &Path,
    output: &Path,
    opts: crate::cache::BuildOptions,
) -> Result<(), Error> {
    let store = crate::store::Store::open(&paths.store)
        .map_err(|e| Error::Cache(format!("cannot open the image store: {e}")))?;
    let layers = crate::layers::store::LayerStore::open(layers)
        .map_err(|e| Error::Cache(format!("cannot open the layer store: {e}")))?;
    let refs: Vec<String> = cfg.images.iter().map(|i| i.reference.to_string()).collect();
    let built = crate::cache::build(&store, &layers, &refs, output, opts).map_err(Error::Cache)?;
    info!(
        images = built.images,
        layers = built.layers,
        bytes = built.bytes,
        "cache written to {} ({} image(s), {} layer(s), {:.1} MB)",
        output.display(),
        built.images,
        built.layers,
        built.bytes as f64 / 1e6
    );
    Ok(())
}

/// `network`: the files, or with `--dry-run` what they would be.
fn network(root: &Path, cfg: &Config, dry_run: bool) -> Result<(), Error> {
    let plan = plan_network(root, cfg)?;
    if dry_run {
        let mut stdout = std::io::stdout().lock();
        let _ = stdout.write_all(netfiles::describe(&plan, root).as_bytes());
        let _ = stdout.flush();
    } else {
        apply_network(&plan)?;
    }
    Ok(())
}

/// `boot`: everything was validated; the network files, then the images (which resolve
/// names through the files just written). Without the network files there is no pull: the
/// report says why.
fn boot(
    root: &Path,
    cfg: &Config,
    report_path: PathBuf,
    pull: impl FnOnce(&Path, serde_json::Value) -> Result<(), Error>,
) -> Result<(), Error> {
    match plan_network(root, cfg).and_then(|plan| apply_network(&plan)) {
        Ok(files) => pull(&report_path, serde_json::json!({ "files": files })),
        Err(e) => {
            let network = serde_json::json!({ "error": format!("{e}; hint: {}", e.hint()) });
            let json = report::to_json(&[], 0.0, vec![("network", network)]);
            if let Err(w) = report::write(&report_path, &json) {
                tracing::error!("cannot write the report {}: {w}", report_path.display());
            }
            Err(e)
        }
    }
}

/// What `prepare` needs before it pulls.
fn prepare_checks(cfg: &Config, tuning: &PullTuning) -> Result<(), Error> {
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
    Ok(())
}

/// `mount-bundles`: the image caches (the bundles' layers may be theirs), the pod's own
/// mounts, then every bundle's rootfs.
fn mount_bundles(root: &Path, layers: &Path, caches: &[PathBuf]) -> Result<(), Error> {
    let caches = crate::cache::Caches::attach(root, caches);
    let paths = crate::bundle::Paths {
        caches: caches.dirs(),
        ..crate::bundle::Paths::under(root, true)
    };
    let results = crate::bundle::mount_all(&paths, layers);
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

/// `flush-layers`: the layers unpacked so far made durable, the marker cleared.
fn flush_layers(layers: &Path) -> Result<(), Error> {
    let flushed = match crate::layers::store::LayerStore::open_existing(layers) {
        Ok(None) => Ok(false),
        Ok(Some(store)) => store.flush(),
        Err(e) => Err(e),
    }
    .map_err(|source| Error::Flush {
        path: layers.to_path_buf(),
        source,
    })?;
    info!(flushed, layers = %layers.display(), "layer store flushed");
    Ok(())
}

/// `explain`: per image, where it is fetched from and why.
fn explain(
    root: &Path,
    cfg: &Config,
    mirrors: &std::collections::HashMap<RegistryHost, Vec<Mirror>>,
    output: OutputFormat,
) -> Result<(), Error> {
    if cfg.images.is_empty() {
        return Err(Error::Usage(
            "no images to explain: give IMAGE arguments, or --spec with a pod that has \
             containers"
                .into(),
        ));
    }
    let mut stdout = std::io::stdout().lock();
    for e in explain::explain(cfg, mirrors, root)? {
        let text = match output {
            OutputFormat::Json => format!("{}\n", e.to_json()),
            OutputFormat::Text => e.to_text(),
        };
        let _ = stdout.write_all(text.as_bytes());
    }
    let _ = stdout.flush();
    Ok(())
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
