//! Pulling, and what a pull leaves besides the store: the report, the summary, the
//! containers' bundles (SPEC §5, §8), under a runtime whose signal listener stops the run
//! cleanly (SPEC §11).

use std::path::Path;
use std::time::{Duration, Instant};

use tracing::info;

use super::Paths;
use std::sync::Arc;

use crate::cache::Caches;
use crate::cli::{Cli, LogFormat, PullTuning};
use crate::config::Config;
use crate::diag::{InputError, Origin};
use crate::error::Error;
use crate::fsutil::atomic::under_root;
use crate::pull::{self, PullOptions};
use crate::registry::mirrors::Mirror;
use crate::registry::transport::NetOptions;
use crate::report::{self, Status};

/// What a pull leaves besides the store: the report (with the network files of `boot`) and
/// the containers' bundles.
pub(super) struct Outputs<'a> {
    pub(super) report: Option<&'a Path>,
    pub(super) network: Option<serde_json::Value>,
    pub(super) bundles: Option<&'a crate::cli::BundleArgs>,
}

/// The image caches of a run (SPEC §12), mounted and read; none with `--no-unpack` (a cache
/// holds unpacked layers).
fn attach_caches(root: &Path, sources: &[std::path::PathBuf], unpack: bool) -> Caches {
    match (sources.is_empty(), unpack) {
        (true, _) => Caches::default(),
        (false, false) => {
            tracing::warn!(
                "the image caches are not used with --no-unpack: they hold unpacked layers, \
                 and this run stores blobs only"
            );
            Caches::default()
        }
        (false, true) => Caches::attach(root, sources),
    }
}

/// Prepares the bundles (SPEC §8) with the stores the pull just filled; a store that cannot
/// be opened fails every container with the reason.
fn prepare_bundles(
    run: &Paths,
    cfg: &Config,
    store: &Path,
    layers: &Path,
    images: &[crate::report::ImageReport],
    mount: bool,
    caches: &Caches,
) -> Vec<crate::bundle::ContainerReport> {
    let paths = crate::bundle::Paths {
        caches: caches.dirs(),
        ..crate::bundle::Paths::under(&run.root, mount)
    };
    let opened = crate::store::Store::open(store)
        .map_err(|e| format!("cannot open the image store: {e}"))
        .and_then(|s| {
            crate::layers::store::LayerStore::open(layers)
                .map(|mut l| {
                    caches.lend_layers(&mut l);
                    (s, l)
                })
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

/// The async runtime for pulls: two workers (the instances are small). When it ends, its
/// blocking work (blob writers, unpacks: stopped at their next entry by a deadline or a
/// signal) gets 5 s to finish; the run never waits longer for it.
struct Engine(Option<tokio::runtime::Runtime>);

impl Engine {
    fn start() -> Result<Engine, Error> {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map(|rt| Engine(Some(rt)))
            .map_err(Error::Engine)
    }

    fn rt(&self) -> &tokio::runtime::Runtime {
        self.0.as_ref().expect("running")
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        if let Some(rt) = self.0.take() {
            rt.shutdown_timeout(Duration::from_secs(5));
        }
    }
}

/// Pulls the configured images, writes the report (with `extra` sections), logs the summary,
/// and fails with exit code 4 if any image failed.
pub(super) fn pull_and_report(
    cli: &Cli,
    paths: &Paths,
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
    let caches = Arc::new(attach_caches(&paths.root, &paths.caches, !tuning.no_unpack));
    let opts = PullOptions {
        caches: caches.clone(),
        chunking: pull::Chunking {
            size: tuning.layer_chunk_size,
            connections: tuning.layer_connections as usize,
        },
        proxies,
        root: paths.root.clone(),
        store: paths.store.clone(),
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
                .unwrap_or_else(|| paths.default_layers.clone()),
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
    let engine = Engine::start()?;
    let rt = engine.rt();
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
            paths,
            cfg,
            &opts.store,
            &u.layers,
            &images,
            !b.no_mount,
            &caches,
        )),
        (Some(_), Some(_), Some(s)) if !cfg.containers.is_empty() => Some(
            cfg.containers
                .iter()
                .map(|c| crate::bundle::ContainerReport {
                    name: c.name.clone(),
                    image: c.image.clone(),
                    bundle: under_root(&paths.root, crate::bundle::BUNDLES)
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
