//! The command line: every flag is defined and documented here, once.

use std::path::PathBuf;

use clap::{ArgAction, Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "kci-pull-agent",
    version = crate::report::AGENT_VERSION,
    about = "Writes a container instance's host aliases and DNS config, then pulls its images",
    long_about = "Runs inside a container instance (one VM per pod) at boot. Writes the pod's \
        injected host aliases into <root>/etc/hosts and its DNS config into \
        <root>/etc/resolv.conf, and decides per registry (matching host and port exactly) \
        whether to use plain HTTP (k8s.ksyun.com/kci-http-registry), HTTPS without \
        certificate verification (k8s.ksyun.com/kci-insecure-registry) or verified HTTPS.\n\n\
        Virtual-kubelet level settings come from the environment (KCI_HOST_ALIASES, \
        KCI_DNS_CONFIG); pod level settings from the annotations of --spec or the flags that \
        stand in for them. The pod level wins.\n\n\
        Exit codes: 0 success, 1 store-check found problems, 2 invalid input or usage \
        (nothing written), 3 a network file or the report could not be written, 4 an image \
        or a container failed, 130/143 stopped by SIGINT/SIGTERM (report written).",
    after_help = "Examples:\n  \
        kci-pull-agent boot                                  # the instance's boot flow \
        (/run/kci/pod.json)\n  \
        kci-pull-agent explain --spec pod.json               # which transport each image \
        gets, and why\n  \
        kci-pull-agent pull -v --report - reg.corp:5000/app:v1  # one pull by hand, report \
        on stdout\n  \
        kci-pull-agent images; kci-pull-agent df             # what the store holds"
)]
pub struct Cli {
    #[command(flatten)]
    pub common: Common,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Common options")]
pub struct Common {
    /// The pod as JSON (`kubectl get pod -o json`); its annotations and container images are
    /// used [boot's default: <root>/run/kci/pod.json].
    #[arg(long, global = true, value_name = "FILE")]
    pub spec: Option<PathBuf>,

    /// Pod-level host aliases, JSON array of HostAlias; replaces the
    /// k8s.ksyun.com/kci-host-aliases annotation.
    #[arg(long, global = true, value_name = "JSON")]
    pub host_aliases: Option<String>,

    /// Pod-level DNS config, JSON PodDNSConfig; replaces the k8s.ksyun.com/kci-dns-config
    /// annotation.
    #[arg(long, global = true, value_name = "JSON")]
    pub dns_config: Option<String>,

    /// Registries (host[:port], comma-separated, repeatable) pulled over plain HTTP; replaces
    /// the k8s.ksyun.com/kci-http-registry annotation. An empty value clears it.
    #[arg(long, global = true, value_name = "LIST")]
    pub http_registry: Option<Vec<String>>,

    /// Registries (host[:port], comma-separated, repeatable) pulled over HTTPS without
    /// certificate verification; replaces the k8s.ksyun.com/kci-insecure-registry annotation.
    #[arg(long, global = true, value_name = "LIST")]
    pub insecure_registry: Option<Vec<String>>,

    /// The cluster DNS service's addresses (comma-separated), as the kubelet's clusterDNS: the
    /// nameservers of a dnsPolicy ClusterFirst pod's resolv.conf (default: $KCI_CLUSTER_DNS;
    /// the domain is $KCI_CLUSTER_DOMAIN, default cluster.local).
    #[arg(long, global = true, value_name = "LIST")]
    pub cluster_dns: Option<String>,

    /// Registry credentials in Docker config.json form (default: $REGISTRY_AUTH_FILE).
    #[arg(long, global = true, value_name = "FILE")]
    pub auth_file: Option<PathBuf>,

    /// The file system root the network files and certs.d are under.
    #[arg(long, global = true, value_name = "DIR", default_value = "/")]
    pub root: PathBuf,

    /// The OCI image layout images are pulled into [default: <root>/var/lib/kci/images].
    #[arg(long, global = true, value_name = "DIR")]
    pub store: Option<PathBuf>,

    /// The platform to pick from multi-platform images: os/arch[/variant] (default: this
    /// machine's).
    #[arg(long, global = true, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<String>,

    /// Log format on stderr (json: one object per line, for the journal).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// More log detail (-v debug, -vv trace).
    #[arg(short, long, global = true, action = ArgAction::Count)]
    pub verbose: u8,

    /// Less log detail (-q warnings and errors only, -qq errors only).
    #[arg(short, long, global = true, action = ArgAction::Count, conflicts_with = "verbose")]
    pub quiet: u8,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The boot flow: validate everything, write the network files, pull every image of the
    /// pod (init containers, containers, ephemeral containers), write the report.
    #[command(
        after_help = "Example:\n  kci-pull-agent boot --root / --report /run/kci/pull-report.json\n  \
        kci-pull-agent boot --root /tmp/sandbox --spec pod.json --no-mount   # a dry sandbox"
    )]
    Boot {
        #[command(flatten)]
        run: PodRun,
    },
    /// Prepare the runtime bundles of the pod's containers (pulling what is missing), without
    /// touching the network files.
    #[command(
        after_help = "Example:\n  kci-pull-agent prepare --spec pod.json && runc run --bundle \
        /run/kci/bundles/app app"
    )]
    Prepare {
        #[command(flatten)]
        run: PodRun,
    },
    /// Write <root>/etc/hosts and <root>/etc/resolv.conf from the merged host aliases and DNS
    /// config.
    #[command(
        after_help = "Example:\n  kci-pull-agent network --dry-run --spec pod.json   # show the files, write nothing"
    )]
    Network {
        /// Print the files that would be written, and write nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Pull images (default: the images of --spec) into the store.
    #[command(
        after_help = "Example:\n  kci-pull-agent pull -v --http-registry 10.0.0.5:5000 10.0.0.5:5000/team/app:v1\n  \
        kci-pull-agent pull --report - --spec pod.json | jq .images"
    )]
    Pull {
        /// Images to pull (default: the images of --spec).
        #[arg(value_name = "IMAGE")]
        images: Vec<String>,
        /// Write the JSON report here.
        #[arg(long, value_name = "FILE")]
        report: Option<PathBuf>,
        #[command(flatten)]
        tuning: PullTuning,
        #[command(flatten)]
        caches: ImageCaches,
    },
    /// Mount the rootfs of every prepared bundle from its mounts.json (the systemd unit runs
    /// this outside the sandbox of `boot --no-mount`, so that the container runtime sees the
    /// mounts).
    MountBundles {
        /// The layer store the bundles' layers must come from (default
        /// <root>/var/lib/kci/layers).
        #[arg(long, value_name = "DIR")]
        layers: Option<std::path::PathBuf>,
        /// The caches `boot` was given (mounted here too: the bundles' layers may be theirs).
        #[command(flatten)]
        caches: ImageCaches,
    },
    /// Flush the layers unpacked so far to disk and clear the layer store's `unflushed` marker
    /// (after `boot` or `pull` with the default --layer-sync deferred; the systemd units run
    /// it once the pod is up).
    FlushLayers {
        /// The layer store (default <root>/var/lib/kci/layers).
        #[arg(long, value_name = "DIR")]
        layers: Option<std::path::PathBuf>,
    },
    /// Check the store: every blob hashes to its name, nothing half-written is left, every
    /// image in index.json is complete. Exit 0 if consistent, 1 if not.
    #[command(
        after_help = "Example:\n  kci-pull-agent store-check && kci-pull-agent store-check --fix"
    )]
    StoreCheck {
        /// Remove what is inconsistent (corrupt blobs, leftovers, index entries of incomplete
        /// images); complete images are never touched.
        #[arg(long)]
        fix: bool,
        /// The layer store to check as well (default <root>/var/lib/kci/layers).
        #[arg(long, value_name = "DIR")]
        layers: Option<std::path::PathBuf>,
        /// text, or json (one object per problem per line).
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
        /// Image caches to check too, read-only (their layers also complete the store's
        /// images).
        #[command(flatten)]
        caches: ImageCaches,
    },
    /// List the images in the store: reference, manifest digest, size, layers unpacked, the
    /// prepared bundles that use it.
    #[command(after_help = "Example:\n  kci-pull-agent images --output json | jq -r .reference")]
    Images {
        #[command(flatten)]
        view: StoreView,
    },
    /// Remove image references from the store (their blobs and layers go with the next
    /// `prune`, unless another image or a prepared bundle uses them).
    #[command(
        after_help = "Example:\n  kci-pull-agent rmi busybox reg.corp:5000/team/app:v1 && kci-pull-agent prune"
    )]
    Rmi {
        /// Images to remove, as pulled (normalised: `busybox` is docker.io/library/busybox:latest).
        #[arg(value_name = "IMAGE", required = true)]
        images: Vec<String>,
    },
    /// Remove the blobs and layers that no image of the store and no prepared bundle uses.
    #[command(
        after_help = "Example:\n  kci-pull-agent rmi old.corp/app:v1 && kci-pull-agent prune"
    )]
    Prune {
        #[command(flatten)]
        view: StoreView,
    },
    /// Show the space the image store and the layer store take, and what `prune` would free.
    #[command(after_help = "Example:\n  kci-pull-agent df --output json")]
    Df {
        #[command(flatten)]
        view: StoreView,
    },
    /// Image caches (SPEC §12).
    #[command(subcommand)]
    Cache(CacheCommand),
    /// Print a completion script for a shell (e.g. `kci-pull-agent completions bash >
    /// /etc/bash_completion.d/kci-pull-agent`).
    #[command(
        after_help = "Example:\n  kci-pull-agent completions bash > /etc/bash_completion.d/kci-pull-agent"
    )]
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Show, per image, the normalised reference, registry, transport and the list entry that
    /// matched.
    #[command(
        after_help = "Example:\n  kci-pull-agent explain --insecure-registry reg.corp:8443 reg.corp:8443/app:v1"
    )]
    Explain {
        /// Images to explain (default: the images of --spec).
        #[arg(value_name = "IMAGE")]
        images: Vec<String>,
        /// text, or json (one object per line).
        #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
    },
}

/// What `cache` does.
#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// Pull the images (default: those of --spec) and write their manifests, configs and
    /// unpacked layers as one EROFS image, to ship as a disk snapshot or a file.
    #[command(
        after_help = "Example:\n  kci-pull-agent cache build --output /srv/kci-cache.erofs --spec pod.json"
    )]
    Build {
        /// The EROFS image to write (replaced atomically).
        #[arg(long, value_name = "FILE")]
        output: PathBuf,
        /// Add the layer blobs too (by default only their unpacked trees).
        #[arg(long)]
        with_blobs: bool,
        /// Compress the image's files (lz4hc: about half the size, decompressed by the kernel
        /// as containers read them; none: the fastest reads, the largest image).
        #[arg(long, value_enum, value_name = "HOW", default_value_t = CacheCompression::None)]
        compression: CacheCompression,
        /// Images to cache (default: the images of --spec).
        #[arg(value_name = "IMAGE")]
        images: Vec<String>,
        #[command(flatten)]
        tuning: PullTuning,
    },
}

/// How `cache build` compresses the EROFS image (`mkfs.erofs -z`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CacheCompression {
    None,
    Lz4,
    Lz4hc,
}

impl CacheCompression {
    /// The `mkfs.erofs -z` compressor.
    pub fn compressor(self) -> Option<&'static str> {
        match self {
            CacheCompression::None => None,
            CacheCompression::Lz4 => Some("lz4"),
            CacheCompression::Lz4hc => Some("lz4hc"),
        }
    }
}

/// Which stores `images`, `prune` and `df` look at, and how they print.
#[derive(Debug, Clone, Args)]
pub struct StoreView {
    /// The layer store (default <root>/var/lib/kci/layers).
    #[arg(long, value_name = "DIR")]
    pub layers: Option<std::path::PathBuf>,
    /// text, or json (`images`: one object per image per line; `prune`, `df`: one object).
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
}

/// What `boot` and `prepare` take: where the report goes, the pull's knobs, the bundles'.
#[derive(Debug, Clone, Args)]
pub struct PodRun {
    /// Write the JSON report here [boot's default: <root>/run/kci/pull-report.json; prepare
    /// writes none unless asked].
    #[arg(long, value_name = "FILE")]
    pub report: Option<PathBuf>,
    #[command(flatten)]
    pub tuning: PullTuning,
    #[command(flatten)]
    pub caches: ImageCaches,
    #[command(flatten)]
    pub bundles: BundleArgs,
}

/// The image caches a run uses (SPEC §12).
#[derive(Debug, Clone, Default, Args)]
pub struct ImageCaches {
    /// An image cache: an EROFS image file or block device (mounted read-only under
    /// <root>/run/kci/caches/) or a directory of the same tree, made by `cache build`. Its
    /// layers are used in place, only what it lacks is fetched. Repeatable [default:
    /// $KCI_IMAGE_CACHE, comma-separated; else the caches attached in this boot].
    #[arg(long = "image-cache", value_name = "PATH")]
    pub paths: Vec<PathBuf>,
}

impl ImageCaches {
    /// The flags, else `KCI_IMAGE_CACHE`, else the caches attached under `root`.
    pub fn sources(&self, root: &std::path::Path) -> Vec<PathBuf> {
        crate::cache::sources(&self.paths, std::env::var(crate::cache::ENV).ok(), root)
    }
}

/// How bundles are prepared.
#[derive(Debug, Clone, Args)]
pub struct BundleArgs {
    /// Write each bundle's config.json and mounts.json but do not mount its rootfs (for a
    /// runtime that mounts by itself).
    #[arg(long)]
    pub no_mount: bool,
}

/// Knobs of the pull engine.
#[derive(Debug, Clone, Args)]
pub struct PullTuning {
    /// Blob downloads in flight at once, over all images.
    #[arg(long, value_name = "N", default_value_t = 6, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub max_concurrent_downloads: u16,
    /// Seconds to wait for a TCP/TLS connection.
    #[arg(long, value_name = "SECONDS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub connect_timeout: u64,
    /// Seconds of silence after which a download is considered stalled and retried.
    #[arg(long, value_name = "SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub read_timeout: u64,
    /// A transfer slower than this many bytes per second for --low-speed-time seconds is
    /// treated like a reset: retried, resumed, then the image fails (curl's meaning; 0: off).
    #[arg(long, value_name = "BYTES", default_value_t = 1024)]
    pub low_speed_limit: u64,
    /// Seconds a transfer may stay below --low-speed-limit.
    #[arg(long, value_name = "SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub low_speed_time: u64,
    /// Ends the pulls of this run after this many seconds: unfinished images are failed with
    /// a deadline error and the report is still written (default: no deadline).
    #[arg(long, value_name = "SECONDS", value_parser = clap::value_parser!(u64).range(1..))]
    pub deadline: Option<u64>,
    /// Write blobs, and layer files of 8 MiB or more, through the page cache instead of with
    /// O_DIRECT. Direct writes are faster where guest memory is costly (microVMs); buffered
    /// writes leave the data cached for a reader that follows at once.
    #[arg(long)]
    pub buffered_writes: bool,
    /// A blob larger than this whose stream brings less than one chunk in its first 250 ms
    /// goes on in chunks of this many bytes over parallel Range requests, written in place and
    /// unpacked as its prefix grows (SPEC §13).
    #[arg(long, value_name = "BYTES", default_value_t = 16 << 20, value_parser = clap::value_parser!(u64).range((1 << 20)..))]
    pub layer_chunk_size: u64,
    /// Parallel Range requests for one large blob (1: one stream). All connections of the run
    /// together stay within --max-concurrent-downloads.
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub layer_connections: u16,
    /// Pull the blobs only: no layer is unpacked into the layer store.
    #[arg(long)]
    pub no_unpack: bool,
    /// The layer store (default <root>/var/lib/kci/layers).
    #[arg(long, value_name = "DIR")]
    pub layers: Option<std::path::PathBuf>,
    /// Largest uncompressed size of one layer; a layer that unpacks to more fails the image.
    #[arg(long, value_name = "BYTES", default_value_t = 32 << 30)]
    pub max_layer_size: u64,
    /// When unpacked layers reach the disk. deferred: committed at once under a durable
    /// marker, flushed later by `flush-layers` (the systemd units run it after boot); a later
    /// boot that finds the marker (a crash before the flush) unpacks those layers again from
    /// their blobs. commit: one syncfs before each layer is committed (slower by the time the
    /// disk takes to write the layers).
    #[arg(long, value_enum, value_name = "WHEN", default_value_t = LayerSyncArg::Deferred)]
    pub layer_sync: LayerSyncArg,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LayerSyncArg {
    Deferred,
    Commit,
}
