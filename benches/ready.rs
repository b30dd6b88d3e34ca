//! Time to ready: from the first request to every layer of the image unpacked, for the agent
//! against what users would run instead, on the same registry, in alternating rounds:
//!
//! - a private `containerd` (own root, state and socket under the benchmark's file system, CRI
//!   disabled, overlayfs snapshotter; a fresh root every round) and `ctr image pull`, which
//!   fetches and unpacks into snapshots;
//! - `skopeo copy` into an OCI layout, then `umoci raw unpack`;
//! - the agent as it runs (unpacking while it downloads) and with `--no-unpack`;
//! - as a reference, `unpigz | tar -x` (or `zstd -dc | tar -x`) of the same layer blobs from
//!   local files, every layer at once: no download, no verification, no overlay conversion.
//!
//! Images are made of real files of this machine (`/usr/lib/python3*`, `/usr/include`, ...),
//! compressed with `pigz -6` (gzip's default level) or `zstd -3`, and cached under
//! `target/bench-images` (delete it to rebuild). Everything the tools write goes to a fresh
//! journaled ext4 on a loop device made for the run (this machine's own disk is ext4 without a
//! journal, where files created soon after many were deleted are several times slower to make).
//!
//!   cargo bench --bench ready                         # every case
//!   KCI_BENCH_CASES=real,boot KCI_BENCH_RUNS=7 cargo bench --bench ready
//!   KCI_BENCH_BASELINE=/path/to/older/kci-pull-agent KCI_BENCH_CASES=real cargo bench --bench ready
//!
//! With `KCI_BENCH_BASELINE`, the `real` and `throttled` cases also run that build of the agent
//! in the same alternating rounds: a change is measured against its baseline in one run.
//!
//! Cases: `real` (5 gzip layers), `real-zstd` (the same files, zstd), `throttled` (`real`
//! through a ~40 MB/s link), `large` (one ~1.8 GB layer), `boot` (a second `boot` of a pod
//! whose image is present and whose bundle is mounted), `cache` (the first `boot` of a fresh
//! instance with and without an image cache of the `real` image, SPEC §12), `big` (one
//! 256 MiB and one 1 GiB layer through a link of 25 MB/s per connection and 130 MB/s in all:
//! the agent's parallel ranged fetch against `--layer-connections 1` and `skopeo copy`, SPEC
//! §13; `big-256MiB` or `big-1GiB` for one of them). Needs root, containerd, skopeo, umoci,
//! pigz, zstd and e2fsprogs: `scripts/setup.sh` installs them.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::images::{Blob, Image, Pusher, block_on, image_with, sha256};
use common::proxy::{ConnThrottle, Throttle};
use common::registry::{Front, Registry};
use support::{env_list, env_runs, instance_root, median, timed};

const MB: f64 = 1e6;

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn sh(script: &str) -> Command {
    let mut c = Command::new("bash");
    c.args(["-c", &format!("set -euo pipefail\n{script}")]);
    c
}

/// Every mount point of this process, as /proc/self/mountinfo lists them.
fn mount_points() -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    info.lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(p.replace("\\040", " ")))
        .collect()
}

fn is_mount_point(dir: &Path) -> bool {
    mount_points().iter().any(|p| p == dir)
}

/// Every mount point strictly under `dir`, deepest first.
fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = mount_points()
        .into_iter()
        .filter(|p| p.starts_with(dir) && p != dir)
        .collect();
    out.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    out
}

fn unmount(p: &Path) {
    let ok = Command::new("umount")
        .arg(p)
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        let _ = Command::new("umount").arg("-l").arg(p).status();
    }
}

/// Removes a tree the tools wrote (unmounting whatever is mounted in it first).
fn clear(dir: &Path) {
    for m in mounts_under(dir) {
        unmount(&m);
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// A fresh journaled ext4 on a loop device, mounted for this run; unmounted, detached and
/// deleted on drop, also when the benchmark fails.
struct LoopFs {
    mnt: PathBuf,
    image: PathBuf,
    dev: String,
}

impl LoopFs {
    fn new(base: &Path, gib: u64) -> LoopFs {
        std::fs::create_dir_all(base).unwrap();
        let image = base.join("fs.img");
        let mnt = base.join("mnt");
        // A leftover of a run that was killed: its mounts (the file system itself last) and
        // its loop device, before anything is removed.
        for m in mounts_under(&mnt) {
            unmount(&m);
        }
        if is_mount_point(&mnt) {
            unmount(&mnt);
        }
        if let Ok(out) = Command::new("losetup").arg("-j").arg(&image).output() {
            for dev in String::from_utf8_lossy(&out.stdout).lines() {
                if let Some(dev) = dev.split(':').next() {
                    let _ = Command::new("losetup").args(["-d", dev]).status();
                }
            }
        }
        let _ = std::fs::remove_dir_all(&mnt);
        let _ = std::fs::remove_file(&image);
        std::fs::create_dir_all(&mnt).unwrap();
        let f = std::fs::File::create(&image).unwrap();
        f.set_len(gib << 30).unwrap();
        drop(f);
        run(Command::new("mkfs.ext4")
            .args(["-q", "-F", "-O", "has_journal"])
            .arg(&image));
        // Direct I/O to the backing file: the loop device then writes to the disk as an
        // instance's block device does, instead of into a second page cache.
        let out = Command::new("losetup")
            .args(["--find", "--show", "--direct-io=on"])
            .arg(&image)
            .output()
            .expect("losetup (util-linux) is missing");
        assert!(
            out.status.success(),
            "losetup: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let fs = LoopFs { mnt, image, dev };
        run(Command::new("mount").arg(&fs.dev).arg(&fs.mnt));
        fs
    }

    fn dir(&self, name: &str) -> PathBuf {
        let d = self.mnt.join(name);
        clear(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    /// Flushes what the last tool left (its writes, the deletion of its tree), outside the
    /// timed part, so that no tool pays for another's writeback.
    fn settle(&self) {
        let _ = Command::new("sync").arg("-f").arg(&self.mnt).status();
    }
}

impl Drop for LoopFs {
    fn drop(&mut self) {
        for m in mounts_under(&self.mnt) {
            unmount(&m);
        }
        unmount(&self.mnt);
        let _ = Command::new("losetup").args(["-d", &self.dev]).status();
        let _ = std::fs::remove_file(&self.image);
    }
}

/// A private containerd: its own config, root, state and socket under `dir`, CRI and every
/// snapshotter but overlayfs disabled. Stopped (and its temporary mounts removed) on drop.
struct Containerd {
    child: Child,
    dir: PathBuf,
}

impl Containerd {
    fn start(dir: &Path) -> Containerd {
        std::fs::create_dir_all(dir).unwrap();
        let d = dir.display();
        let config = format!(
            r#"version = 2
root = "{d}/root"
state = "{d}/state"
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.native"]
[grpc]
  address = "{d}/containerd.sock"
[ttrpc]
  address = "{d}/containerd.sock.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/opt"
"#
        );
        std::fs::write(dir.join("config.toml"), config).unwrap();
        let child = Command::new("containerd")
            .arg("--config")
            .arg(dir.join("config.toml"))
            .args(["--log-level", "error"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("containerd.log")).unwrap())
            .spawn()
            .expect("containerd is missing: run scripts/setup.sh");
        let c = Containerd {
            child,
            dir: dir.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !c
            .ctr()
            .arg("version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
        {
            assert!(
                Instant::now() < deadline,
                "containerd did not start: see {}",
                dir.join("containerd.log").display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        c
    }

    fn ctr(&self) -> Command {
        let mut c = Command::new("ctr");
        c.arg("--address")
            .arg(self.dir.join("containerd.sock"))
            .args(["-n", "bench"]);
        c
    }

    /// The daemon's peak RSS so far, in KiB (it does the pull's work, not `ctr`).
    fn peak_rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }

    fn snapshots(&self) -> PathBuf {
        self.dir
            .join("root/io.containerd.snapshotter.v1.overlayfs/snapshots")
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        clear(&self.dir);
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Comp {
    Gzip,
    Zstd,
}

impl Comp {
    fn ext(self) -> &'static str {
        match self {
            Comp::Gzip => "gz",
            Comp::Zstd => "zst",
        }
    }
    fn media_type(self) -> &'static str {
        match self {
            Comp::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
            Comp::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }
    fn decompressor(self) -> &'static str {
        match self {
            Comp::Gzip => "unpigz -c",
            Comp::Zstd => "zstd -dcq",
        }
    }
}

/// An image of real files, its layer blobs also kept as local files for the `tar` reference.
struct RealImage {
    image: Image,
    files: Vec<PathBuf>,
    /// Regular files and links in all layers together (no path is in two layers).
    entries: u64,
    unpacked: u64,
}

impl RealImage {
    fn bytes(&self) -> u64 {
        self.image.blob_bytes()
    }
}

/// Regular files, links and devices (not directories) under `dir`.
fn count_entries(dir: &Path) -> u64 {
    let mut n = 0;
    let Ok(rd) = std::fs::read_dir(dir) else {
        return 0;
    };
    for e in rd.flatten() {
        let t = e.file_type().unwrap();
        if t.is_dir() {
            n += count_entries(&e.path());
        } else {
            n += 1;
        }
    }
    n
}

/// The sum over `<parent>/*/fs` (layer directories of the agent's store, containerd snapshots).
fn count_layer_dirs(parent: &Path) -> u64 {
    std::fs::read_dir(parent)
        .map(|rd| {
            rd.flatten()
                .map(|e| count_entries(&e.path().join("fs")))
                .sum()
        })
        .unwrap_or(0)
}

/// Layers from real directories of this machine: each layer is a tar (GNU tar, sorted, with
/// its parent directories) of the listed paths that exist here, compressed with `comp`. Built
/// once and cached under `target/bench-images/<name>`.
fn real_image(name: &str, layers: &[&[&str]], comp: Comp) -> RealImage {
    let cache = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/bench-images")
        .join(name);
    std::fs::create_dir_all(&cache).unwrap();
    let mut blobs = Vec::new();
    let mut files = Vec::new();
    let mut unpacked = 0;
    let mut entries = 0;
    for (i, paths) in layers.iter().enumerate() {
        let paths: Vec<&str> = paths
            .iter()
            .copied()
            .filter(|p| Path::new("/").join(p).exists())
            .collect();
        assert!(!paths.is_empty(), "{name}: none of layer {i}'s paths exist");
        let spec = format!("{}\n{}\n", paths.join(" "), comp.ext());
        let blob = cache.join(format!("{i}.{}", comp.ext()));
        let meta = cache.join(format!("{i}.meta"));
        let fresh = std::fs::read_to_string(&meta).is_ok_and(|m| m.starts_with(&spec));
        if !fresh || !blob.exists() {
            let mut parents: Vec<String> = Vec::new();
            for p in &paths {
                let mut acc = String::new();
                let comps: Vec<&str> = p.split('/').collect();
                for c in &comps[..comps.len() - 1] {
                    if !acc.is_empty() {
                        acc.push('/');
                    }
                    acc.push_str(c);
                    if !parents.contains(&acc) {
                        parents.push(acc.clone());
                    }
                }
            }
            let tar = cache.join(format!("{i}.tar"));
            let compress = match comp {
                Comp::Gzip => "pigz -6 -n -c",
                Comp::Zstd => "zstd -3 -T0 -q -c",
            };
            eprintln!("building {name} layer {i}: {}", paths.join(" "));
            run(&mut sh(&format!(
                "tar -C / -cf {tar} --sort=name --no-recursion {parents} --recursion {paths}\n\
                 diff=$(sha256sum {tar} | cut -d' ' -f1)\n\
                 size=$(stat -c %s {tar})\n\
                 n=$(tar -tvf {tar} | grep -vc '^d')\n\
                 {compress} {tar} > {blob}.tmp && mv {blob}.tmp {blob}\n\
                 rm -f {tar}\n\
                 printf '%s%s %s %s\\n' '{spec}' \"$diff\" \"$size\" \"$n\" > {meta}",
                tar = tar.display(),
                parents = parents.join(" "),
                paths = paths.join(" "),
                blob = blob.display(),
                meta = meta.display(),
            )));
        }
        let m = std::fs::read_to_string(&meta).unwrap();
        let last: Vec<&str> = m.lines().last().unwrap().split(' ').collect();
        let bytes = std::fs::read(&blob).unwrap();
        blobs.push(Blob {
            digest: sha256(&bytes),
            bytes,
            media_type: comp.media_type().into(),
            diff_id: format!("sha256:{}", last[0]),
        });
        unpacked += last[1].parse::<u64>().unwrap();
        entries += last[2].parse::<u64>().unwrap();
        files.push(blob);
    }
    RealImage {
        image: image_with(blobs, "amd64", false),
        files,
        entries,
        unpacked,
    }
}

/// What one tool does in a round: a command to time, where its tree ends up, and how to
/// count the files of that tree.
struct Job {
    cmd: Command,
    /// Kept alive for the round (containerd).
    daemon: Option<Containerd>,
    count: Box<dyn Fn() -> u64>,
}

type MakeJob = Box<dyn Fn(&Path) -> Job>;

struct Tool {
    name: &'static str,
    make: MakeJob,
}

struct Row {
    case: String,
    tool: &'static str,
    secs: f64,
    mbps: f64,
    rss_mib: f64,
    files: u64,
    /// Median CPU the registry spent serving one run, in ms (the local tools: none).
    registry_ms: f64,
}

fn agent(
    bin: &str,
    registry: &str,
    reference: &str,
    dir: &Path,
    extra: &[&'static str],
) -> Command {
    let root = dir.join("root");
    instance_root(&root);
    let mut c = Command::new(bin);
    // With KCI_BENCH_LOG, the agent says what it does and when (read it there).
    let detail: &[&str] = match std::env::var_os("KCI_BENCH_LOG") {
        Some(_) => &["-v", "--log-format", "json"],
        None => &["-q"],
    };
    c.arg("pull")
        .args(detail)
        .arg("--root")
        .arg(&root)
        .arg("--store")
        .arg(dir.join("store"))
        .arg("--layers")
        .arg(dir.join("layers"))
        .args(["--http-registry", registry, reference])
        .args(extra);
    c
}

fn agent_tool(
    name: &'static str,
    registry: &str,
    reference: &str,
    extra: &'static [&'static str],
) -> Tool {
    agent_tool_of(common::bin(), name, registry, reference, extra)
}

/// The agent built elsewhere (`KCI_BENCH_BASELINE`), to measure a change in the same rounds.
fn agent_tool_of(
    bin: String,
    name: &'static str,
    registry: &str,
    reference: &str,
    extra: &'static [&'static str],
) -> Tool {
    let (registry, reference) = (registry.to_string(), reference.to_string());
    Tool {
        name,
        make: Box::new(move |dir: &Path| {
            let layers = dir.join("layers/sha256");
            Job {
                cmd: agent(&bin, &registry, &reference, dir, extra),
                daemon: None,
                count: Box::new(move || count_layer_dirs(&layers)),
            }
        }),
    }
}

fn containerd_tool(reference: &str) -> Tool {
    let reference = reference.to_string();
    Tool {
        name: CONTAINERD,
        make: Box::new(move |dir: &Path| {
            let d = Containerd::start(&dir.join("containerd"));
            let mut cmd = d.ctr();
            cmd.args(["image", "pull", "--plain-http", &reference]);
            let snaps = d.snapshots();
            Job {
                cmd,
                daemon: Some(d),
                count: Box::new(move || count_layer_dirs(&snaps)),
            }
        }),
    }
}

fn skopeo_umoci_tool(reference: &str) -> Tool {
    let reference = reference.to_string();
    Tool {
        name: SKOPEO_UMOCI,
        make: Box::new(move |dir: &Path| {
            let rootfs = dir.join("bundle");
            let cmd = sh(&format!(
                "skopeo copy -q --src-tls-verify=false docker://{reference} oci:{d}/oci:latest\n\
                 umoci raw unpack --image {d}/oci:latest {rootfs}",
                d = dir.display(),
                rootfs = rootfs.display()
            ));
            Job {
                cmd,
                daemon: None,
                count: Box::new(move || count_entries(&rootfs)),
            }
        }),
    }
}

/// `skopeo copy` into an OCI layout: the pull alone, nothing unpacked.
fn skopeo_tool(reference: &str) -> Tool {
    let reference = reference.to_string();
    Tool {
        name: SKOPEO_COPY,
        make: Box::new(move |dir: &Path| {
            let mut cmd = Command::new("skopeo");
            cmd.args(["copy", "-q", "--src-tls-verify=false"])
                .arg(format!("docker://{reference}"))
                .arg(format!("oci:{}/oci:latest", dir.display()));
            Job {
                cmd,
                daemon: None,
                count: Box::new(|| 0),
            }
        }),
    }
}

/// Every layer at once, each `DECOMPRESS FILE | tar -x` into its own directory; with `sync`,
/// then one `syncfs`, for a like-for-like comparison with the agent's durable commit.
fn tar_tool(img: &RealImage, comp: Comp, sync: bool) -> Tool {
    let files = img.files.clone();
    Tool {
        name: match (comp, sync) {
            (Comp::Gzip, false) => LOCAL_TAR,
            (Comp::Zstd, false) => LOCAL_ZSTD_TAR,
            (Comp::Gzip, true) => LOCAL_TAR_SYNC,
            (Comp::Zstd, true) => LOCAL_ZSTD_TAR_SYNC,
        },
        make: Box::new(move |dir: &Path| {
            let mut script = String::new();
            for (i, f) in files.iter().enumerate() {
                let into = dir.join(format!("{i}/fs"));
                std::fs::create_dir_all(&into).unwrap();
                script.push_str(&format!(
                    "( {} {} | tar -x -C {} ) &\n",
                    comp.decompressor(),
                    f.display(),
                    into.display()
                ));
            }
            script.push_str("for j in $(jobs -p); do wait $j; done\n");
            if sync {
                script.push_str(&format!("sync -f {}\n", dir.display()));
            }
            let d = dir.to_path_buf();
            Job {
                cmd: sh(&script),
                daemon: None,
                count: Box::new(move || count_layer_dirs(&d)),
            }
        }),
    }
}

const CONTAINERD: &str = "containerd (ctr pull)";
const SKOPEO_UMOCI: &str = "skopeo copy + umoci raw unpack";
const AGENT: &str = "kci-pull-agent";
const AGENT_NO_UNPACK: &str = "kci-pull-agent --no-unpack";
const AGENT_BASELINE: &str = "kci-pull-agent, baseline build (KCI_BENCH_BASELINE)";
const AGENT_COMMIT_SYNC: &str = "kci-pull-agent --layer-sync commit";
const NO_UNPACK: &[&str] = &["--no-unpack"];
const COMMIT_SYNC: &[&str] = &["--layer-sync", "commit"];
const LOCAL_TAR: &str = "local unpigz \\| tar -x (all layers at once)";
const LOCAL_ZSTD_TAR: &str = "local zstd -dc \\| tar -x (all layers at once)";
const LOCAL_TAR_SYNC: &str = "local unpigz \\| tar -x, then syncfs";
const LOCAL_ZSTD_TAR_SYNC: &str = "local zstd -dc \\| tar -x, then syncfs";
const UMOCI_LOCAL: &str = "umoci raw unpack (local layout)";
const AGENT_ONE_STREAM: &str = "kci-pull-agent --layer-connections 1";
const ONE_STREAM: &[&str] = &["--layer-connections", "1"];
const SKOPEO_COPY: &str = "skopeo copy (pull only)";

/// One warm-up round, then `runs` rounds in which every tool runs once, the order rotating.
/// Every tool starts from an empty directory on a settled file system; each tree's file count
/// must be the image's.
#[allow(clippy::too_many_arguments)]
fn compare(
    fs: &LoopFs,
    reg: &Registry,
    case: &str,
    bytes: u64,
    want_files: u64,
    tools: &[Tool],
    runs: usize,
    rows: &mut Vec<Row>,
) {
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); tools.len()];
    let mut rss = vec![0u64; tools.len()];
    let mut files = vec![0u64; tools.len()];
    let mut reg_cpu: Vec<Vec<f64>> = vec![Vec::new(); tools.len()];
    // The agent and its baseline build trade places every other round: a tool runs slower
    // right after another one's tree was deleted, and which tool comes first would otherwise
    // be a fixed part of their difference (an A/A run showed 9% with the same binary twice).
    let pair = (
        tools.iter().position(|t| t.name == AGENT),
        tools.iter().position(|t| t.name == AGENT_BASELINE),
    );
    for round in 0..=runs {
        let mut order: Vec<usize> = (0..tools.len())
            .map(|k| (k + round) % tools.len())
            .collect();
        if let (Some(a), Some(b)) = pair
            && round % 2 == 1
        {
            let (pa, pb) = (
                order.iter().position(|i| *i == a).unwrap(),
                order.iter().position(|i| *i == b).unwrap(),
            );
            order.swap(pa, pb);
        }
        for i in order {
            let tool = &tools[i];
            let dir = fs.dir(&format!("{case}-{i}"));
            let mut job = (tool.make)(&dir);
            fs.settle();
            let cpu_before = reg.cpu_time();
            let (d, r) = timed(&mut job.cmd);
            let cpu = reg.cpu_time() - cpu_before;
            let r = job.daemon.as_ref().map_or(r, |c| c.peak_rss_kib().max(r));
            let n = (job.count)();
            drop(job.daemon.take());
            eprintln!(
                "  {case} round {round} {}: {:.3} s, {n} files",
                tool.name.replace('\\', ""),
                d.as_secs_f64()
            );
            if tool.name != AGENT_NO_UNPACK && tool.name != SKOPEO_COPY {
                assert_eq!(
                    n, want_files,
                    "{case}: {} left {n} files, the image has {want_files}",
                    tool.name
                );
            }
            if round > 0 {
                times[i].push(d.as_secs_f64());
                rss[i] = rss[i].max(r);
                files[i] = n;
                reg_cpu[i].push(cpu.as_secs_f64() * 1000.0);
            }
            clear(&dir);
        }
    }
    for (i, tool) in tools.iter().enumerate() {
        let secs = median(times[i].clone());
        rows.push(Row {
            case: case.into(),
            tool: tool.name,
            secs,
            mbps: bytes as f64 / MB / secs,
            rss_mib: rss[i] as f64 / 1024.0,
            files: files[i],
            registry_ms: median(reg_cpu[i].clone()),
        });
    }
}

fn row<'a>(rows: &'a [Row], case: &str, tool: &str) -> Option<&'a Row> {
    rows.iter().find(|r| r.case == case && r.tool == tool)
}

const TABLE_HEAD: &str = "| case | tool | seconds (median) | MB/s of compressed input | vs containerd | vs skopeo+umoci | vs local tar | peak RSS MiB | files | registry CPU ms |\n|---|---|---:|---:|---:|---:|---:|---:|---:|---:|";

/// The rows of `case`, as soon as it is measured (a later case that fails loses nothing).
fn print_rows(rows: &[Row], case: &str) {
    let ratio = |r: &Row, tool: &str| {
        row(rows, case, tool).map_or("".to_string(), |x| format!("{:.2}x", x.secs / r.secs))
    };
    let tar = [LOCAL_TAR, LOCAL_ZSTD_TAR]
        .into_iter()
        .find(|t| row(rows, case, t).is_some())
        .unwrap_or(LOCAL_TAR);
    for r in rows.iter().filter(|r| r.case == case) {
        println!(
            "| {} | {} | {:.2} | {:.0} | {} | {} | {} | {:.0} | {} | {:.0} |",
            r.case,
            r.tool,
            r.secs,
            r.mbps,
            ratio(r, CONTAINERD),
            ratio(r, SKOPEO_UMOCI),
            ratio(r, tar),
            r.rss_mib,
            r.files,
            r.registry_ms
        );
    }
    use std::io::Write;
    let _ = std::io::stdout().flush();
}

fn version(cmd: &str) -> String {
    Command::new(cmd)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn main() {
    let cases = env_list(
        "KCI_BENCH_CASES",
        "real,real-zstd,throttled,large,boot,cache",
    );
    let want = |c: &str| cases.iter().any(|x| x == c);
    let runs = env_runs(5);
    let target = Path::new(env!("CARGO_MANIFEST_DIR")).join("target");
    let storage = tempfile::Builder::new()
        .prefix("kci-bench-registry")
        .tempdir_in(&target)
        .unwrap();
    let reg = Registry::start(storage.path(), &Front::default());
    let pusher = Pusher::new(&reg.addr());
    let fs = LoopFs::new(&target.join("bench-ready"), 24);
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    eprintln!(
        "host: {} cores; rounds per case: {runs} after a warm-up; file system: fresh ext4 (journal) on {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0),
        fs.dev
    );

    println!("{TABLE_HEAD}");
    println!(
        "(ratios: the other tool's seconds / this row's seconds; above 1 means this row is faster)\n"
    );
    // ~300 MB of real files in 5 layers: a base of data files, two of Python, C headers, and
    // Perl and icons (many small files).
    let real_layers: &[&[&str]] = &[
        &["usr/share/zoneinfo", "usr/share/i18n", "usr/share/mime"],
        &["usr/lib/python3.11"],
        &["usr/lib/python3"],
        &["usr/include"],
        &["usr/share/perl", "usr/share/icons"],
    ];
    let mut real_gzip = None;
    for (case, comp) in [("real", Comp::Gzip), ("real-zstd", Comp::Zstd)] {
        let needs_real = want("throttled") || want("boot") || want("cache");
        if !(want(case) || (case == "real" && needs_real)) {
            continue;
        }
        let img = real_image(case, real_layers, comp);
        let repo = format!("bench/{case}");
        block_on(pusher.image(&repo, "latest", &img.image));
        let reference = format!("{}/{repo}:latest", reg.addr());
        notes.push(format!(
            "{case}: {} layers, {:.1} MB compressed ({}), {:.1} MB and {} files unpacked",
            img.image.layers.len(),
            img.bytes() as f64 / MB,
            comp.ext(),
            img.unpacked as f64 / MB,
            img.entries
        ));
        if want(case) {
            let mut tools = vec![
                containerd_tool(&reference),
                agent_tool(AGENT, &reg.addr(), &reference, &[]),
                agent_tool(AGENT_COMMIT_SYNC, &reg.addr(), &reference, COMMIT_SYNC),
                agent_tool(AGENT_NO_UNPACK, &reg.addr(), &reference, NO_UNPACK),
                tar_tool(&img, comp, false),
                tar_tool(&img, comp, true),
            ];
            if let Ok(bin) = std::env::var("KCI_BENCH_BASELINE") {
                tools.insert(
                    2,
                    agent_tool_of(bin, AGENT_BASELINE, &reg.addr(), &reference, &[]),
                );
            }
            // umoci (0.4 in Debian 12) refuses zstd layers ("blob is not correct mediatype").
            if comp == Comp::Gzip {
                tools.insert(1, skopeo_umoci_tool(&reference));
            } else {
                notes.push(format!(
                    "{case}: no skopeo + umoci row: umoci {} cannot unpack zstd layers",
                    version("umoci")
                ));
            }
            compare(
                &fs,
                &reg,
                case,
                img.bytes(),
                img.entries,
                &tools,
                runs,
                &mut rows,
            );
            print_rows(&rows, case);
            // What the default leaves for later: flush-layers right after a pull.
            let mut flush = Vec::new();
            for _ in 0..3 {
                let dir = fs.dir(&format!("{case}-flush"));
                run(&mut agent(
                    &common::bin(),
                    &reg.addr(),
                    &reference,
                    &dir,
                    &[],
                ));
                let mut c = Command::new(common::bin());
                c.args(["flush-layers", "-q", "--root"])
                    .arg(dir.join("root"))
                    .arg("--layers")
                    .arg(dir.join("layers"));
                flush.push(timed(&mut c).0.as_secs_f64());
                clear(&dir);
                fs.settle();
            }
            notes.push(format!(
                "{case}: flush-layers right after the pull (what kci-layer-flush.service does once \
                 the pod is up, off its critical path): median {:.2} s of 3",
                median(flush)
            ));
        }
        if comp == Comp::Gzip {
            real_gzip = Some((img, reference));
        }
    }

    if want("throttled") {
        let (img, _) = real_gzip.as_ref().unwrap();
        let link = Throttle::start(&reg.addr(), 40_000_000);
        let reference = format!("{}/bench/real:latest", link.addr());
        let mut tools = vec![
            agent_tool(AGENT, &link.addr(), &reference, &[]),
            agent_tool(AGENT_NO_UNPACK, &link.addr(), &reference, NO_UNPACK),
        ];
        if let Ok(bin) = std::env::var("KCI_BENCH_BASELINE") {
            tools.push(agent_tool_of(
                bin,
                AGENT_BASELINE,
                &link.addr(),
                &reference,
                &[],
            ));
        }
        compare(
            &fs,
            &reg,
            "throttled-40MB/s",
            img.bytes(),
            img.entries,
            &tools,
            runs,
            &mut rows,
        );
        print_rows(&rows, "throttled-40MB/s");
    }

    if want("large") {
        let large_layer: &[&[&str]] = &[&[
            "usr/lib/x86_64-linux-gnu",
            "usr/lib/jvm",
            "usr/share/locale",
            "usr/share/doc",
            "usr/include",
            "usr/lib/gcc",
            "usr/lib/python3.11",
            "usr/lib/python3",
        ]];
        let img = real_image("large", large_layer, Comp::Gzip);
        block_on(pusher.image("bench/large", "latest", &img.image));
        let reference = format!("{}/bench/large:latest", reg.addr());
        notes.push(format!(
            "large: 1 layer, {:.1} MB compressed (gz), {:.1} MB and {} files unpacked",
            img.bytes() as f64 / MB,
            img.unpacked as f64 / MB,
            img.entries
        ));
        // umoci reads a local layout, made once outside the rounds.
        let layout = fs.dir("large-layout");
        run(Command::new("skopeo")
            .args(["copy", "-q", "--src-tls-verify=false"])
            .arg(format!("docker://{reference}"))
            .arg(format!("oci:{}:latest", layout.display())));
        let umoci = Tool {
            name: UMOCI_LOCAL,
            make: Box::new(move |dir: &Path| {
                let rootfs = dir.join("rootfs");
                let mut cmd = Command::new("umoci");
                cmd.args(["raw", "unpack", "--image"])
                    .arg(format!("{}:latest", layout.display()))
                    .arg(&rootfs);
                Job {
                    cmd,
                    daemon: None,
                    count: Box::new(move || count_entries(&rootfs)),
                }
            }),
        };
        let tools = vec![
            umoci,
            agent_tool(AGENT, &reg.addr(), &reference, &[]),
            agent_tool(AGENT_COMMIT_SYNC, &reg.addr(), &reference, COMMIT_SYNC),
            agent_tool(AGENT_NO_UNPACK, &reg.addr(), &reference, NO_UNPACK),
            tar_tool(&img, Comp::Gzip, false),
        ];
        compare(
            &fs,
            &reg,
            "large",
            img.bytes(),
            img.entries,
            &tools,
            runs.min(3),
            &mut rows,
        );
        print_rows(&rows, "large");
    }

    if want("boot") {
        let (_, reference) = real_gzip.as_ref().unwrap();
        let dir = fs.dir("boot");
        let root = dir.join("root");
        std::fs::create_dir_all(root.join("run/kci")).unwrap();
        instance_root(&root);
        let pod = serde_json::json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "bench", "namespace": "default", "annotations": {
                "k8s.ksyun.com/kci-http-registry": reg.addr(),
            }},
            "spec": {"containers": [{"name": "app", "image": reference, "command": ["/bin/true"]}]},
        });
        std::fs::write(
            root.join("run/kci/pod.json"),
            serde_json::to_vec_pretty(&pod).unwrap(),
        )
        .unwrap();
        let boot = || {
            let mut c = common::agent(&["boot", "-q", "--root"]);
            c.arg(&root);
            c
        };
        let (first, _) = timed(&mut boot());
        assert!(
            !mounts_under(&root).is_empty(),
            "the first boot mounted no bundle"
        );
        let mut again = Vec::new();
        let mut head = Vec::new();
        for _ in 0..(runs.max(5) * 2 + 1) {
            again.push(timed(&mut boot()).0.as_secs_f64() * 1000.0);
            let mut c = Command::new("curl");
            c.args([
                "-sS",
                "--fail",
                "--noproxy",
                "*",
                "-o",
                "/dev/null",
                "-I",
                "-H",
            ])
            .arg("Accept: application/vnd.oci.image.manifest.v1+json")
            .arg(format!(
                "http://{}/v2/bench/real/manifests/latest",
                reg.addr()
            ));
            head.push(timed(&mut c).0.as_secs_f64() * 1000.0);
        }
        notes.push(format!(
            "boot: first boot of a pod with the `real` image (pull, unpack, bundle, overlay mount) {:.2} s; \
             the second and later boots (image present, bundle mounted): median {:.1} ms, max {:.1} ms \
             over {} runs (target < 50 ms); one curl HEAD of the manifest, same rounds: median {:.1} ms",
            first.as_secs_f64(),
            median(again.clone()),
            again.iter().cloned().fold(0.0, f64::max),
            again.len(),
            median(head)
        ));
        clear(&dir);
    }

    if want("cache") {
        let (img, reference) = real_gzip.as_ref().unwrap();
        notes.push(cache_case(&fs, &reg, img, reference, runs));
    }

    // `big` is both sizes; `big-256MiB` or `big-1GiB` one of them.
    let bigs: Vec<_> = [
        ("big-256MiB", 41u64, 256usize << 20, runs.min(3)),
        ("big-1GiB", 42, 1 << 30, runs.min(2)),
    ]
    .into_iter()
    .filter(|(case, ..)| want("big") || want(case))
    .collect();
    if !bigs.is_empty() {
        let link = ConnThrottle::start(&reg.addr(), 25_000_000, 130_000_000);
        for (case, seed, size, rounds) in bigs {
            let img = image_with(
                vec![common::images::layer(seed, size, false)],
                "amd64",
                false,
            );
            let repo = format!("bench/{}", case.to_lowercase());
            block_on(pusher.image(&repo, "latest", &img));
            let reference = format!("{}/{repo}:latest", link.addr());
            let tools = vec![
                agent_tool(AGENT, &link.addr(), &reference, &[]),
                agent_tool(AGENT_ONE_STREAM, &link.addr(), &reference, ONE_STREAM),
                skopeo_tool(&reference),
            ];
            compare(
                &fs,
                &reg,
                case,
                img.blob_bytes(),
                1,
                &tools,
                rounds,
                &mut rows,
            );
            print_rows(&rows, case);
            let of = |tool: &str| row(&rows, case, tool);
            if let (Some(a), Some(one), Some(sk)) =
                (of(AGENT), of(AGENT_ONE_STREAM), of(SKOPEO_COPY))
            {
                notes.push(format!(
                    "{case}: one {:.0} MiB layer through 25 MB/s per connection (130 MB/s in all): \
                     the agent is ready in {:.2} s, {:.2}x faster than with --layer-connections 1 \
                     ({:.2} s) and {:.2}x faster than skopeo copy alone ({:.2} s; targets >= 4x \
                     both); peak RSS {:.0} MiB (target <= 128), one stream {:.0} MiB.",
                    img.blob_bytes() as f64 / (1 << 20) as f64,
                    a.secs,
                    one.secs / a.secs,
                    one.secs,
                    sk.secs / a.secs,
                    sk.secs,
                    a.rss_mib,
                    one.rss_mib
                ));
            }
        }
    }

    for (case, tar, tar_sync) in [
        ("real", LOCAL_TAR, LOCAL_TAR_SYNC),
        ("real-zstd", LOCAL_ZSTD_TAR, LOCAL_ZSTD_TAR_SYNC),
    ] {
        let of = |tool: &str| row(&rows, case, tool).map(|r| r.secs);
        if let (Some(a), Some(n), Some(t), Some(ts), Some(c)) = (
            of(AGENT),
            of(AGENT_COMMIT_SYNC),
            of(tar),
            of(tar_sync),
            of(CONTAINERD),
        ) {
            let u = of(SKOPEO_UMOCI).unwrap_or(f64::NAN);
            notes.push(format!(
                "{case}: the agent is ready in {a:.2} s: {:.2}x faster than containerd (target >= 4.0), \
                 skopeo + umoci: {} (target >= 3.5x faster), in {:.2}x the time of the local tar \
                 ({t:.2} s; target <= 1.0). With --layer-sync commit (every layer flushed to disk before \
                 its commit; the default defers the flush to flush-layers, after the pod started): \
                 {n:.2} s, {:.2}x containerd, {}, {:.2}x the time of the local tar + syncfs ({ts:.2} s).",
                c / a,
                if u.is_nan() { "no row".to_string() } else { format!("{:.2}x faster", u / a) },
                a / t,
                c / n,
                if u.is_nan() { "-".to_string() } else { format!("{:.2}x skopeo + umoci", u / n) },
                n / ts,
            ));
        }
    }
    if let (Some(a), Some(n)) = (
        row(&rows, "throttled-40MB/s", AGENT),
        row(&rows, "throttled-40MB/s", AGENT_NO_UNPACK),
    ) {
        notes.push(format!(
            "throttled: through a 40 MB/s link the agent is ready in {:.2} s, {:.3}x its --no-unpack time ({:.2} s; target <= 1.15x)",
            a.secs,
            a.secs / n.secs,
            n.secs
        ));
    }
    if let (Some(a), Some(u)) = (row(&rows, "large", AGENT), row(&rows, "large", UMOCI_LOCAL)) {
        notes.push(format!(
            "large: the agent (from the registry) takes {:.2}x the time of umoci raw unpack of a local layout (target <= 0.6x), peak RSS {:.0} MiB (target <= 128)",
            a.secs / u.secs,
            a.rss_mib
        ));
    }
    for n in notes {
        println!("\n{n}");
    }
    drop(fs);
    drop(reg);
}

/// SPEC §12: the first `boot` of a fresh instance whose pod runs the `real` image, without
/// and with an image cache of it (built once with `cache build`), in alternating rounds; the
/// cache's size against the compressed image.
fn cache_case(
    fs: &LoopFs,
    reg: &Registry,
    img: &RealImage,
    reference: &str,
    runs: usize,
) -> String {
    let built = fs.dir("cache-build");
    let cache = fs.dir("cache-file").join("real.erofs");
    std::fs::create_dir_all(cache.parent().unwrap()).unwrap();
    instance_root(&built);
    let mut c = common::agent(&["cache", "build", "-q", "--root"]);
    c.arg(&built)
        .args(["--http-registry", &reg.addr(), "--output"])
        .arg(&cache)
        .arg(reference);
    let (build_time, _) = timed(&mut c);
    let size = std::fs::metadata(&cache).unwrap().len();
    // The same, compressed (only its size is reported).
    let packed = cache.with_file_name("real-lz4hc.erofs");
    let mut c = common::agent(&["cache", "build", "-q", "--compression", "lz4hc", "--root"]);
    c.arg(&built)
        .args(["--http-registry", &reg.addr(), "--output"])
        .arg(&packed)
        .arg(reference);
    timed(&mut c);
    let packed_size = std::fs::metadata(&packed).unwrap().len();
    clear(&built);
    let pod = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "bench", "namespace": "default", "annotations": {
            "k8s.ksyun.com/kci-http-registry": reg.addr(),
        }},
        "spec": {"containers": [{"name": "app", "image": reference, "command": ["/bin/true"]}]},
    });
    let boot = |cached: bool| {
        let dir = fs.dir(if cached { "cache-on" } else { "cache-off" });
        let root = dir.join("root");
        instance_root(&root);
        std::fs::create_dir_all(root.join("run/kci")).unwrap();
        std::fs::write(root.join("run/kci/pod.json"), pod.to_string()).unwrap();
        let mut c = common::agent(&["boot", "-q", "--root"]);
        c.arg(&root).env_remove("KCI_IMAGE_CACHE");
        if cached {
            c.arg("--image-cache").arg(&cache);
        }
        let (t, _) = timed(&mut c);
        assert!(
            mounts_under(&root.join("run/kci/bundles")).len() == 1,
            "the boot mounted no bundle"
        );
        clear(&dir);
        fs.settle();
        t.as_secs_f64()
    };
    // A warm-up of each, then alternating rounds.
    boot(false);
    boot(true);
    let (mut off, mut on) = (Vec::new(), Vec::new());
    for _ in 0..runs.max(5) {
        off.push(boot(false));
        on.push(boot(true));
    }
    let (off_m, on_m) = (median(off), median(on.clone()));
    format!(
        "cache: first boot of a fresh instance (pod with the `real` image, bundle mounted): without \
         a cache {off_m:.3} s, with an image cache of it {:.1} ms (median of {}; max {:.1} ms): \
         {:.3}x (target <= 0.10). The cache: {:.1} MB EROFS for {:.1} MB compressed ({:.2}x; \
         {:.1} MB unpacked), built in {:.2} s by `cache build`; with --compression lz4hc \
         {:.1} MB ({:.2}x the compressed image).",
        on_m * 1000.0,
        on.len(),
        on.iter().cloned().fold(0.0, f64::max) * 1000.0,
        on_m / off_m,
        size as f64 / MB,
        img.bytes() as f64 / MB,
        size as f64 / img.bytes() as f64,
        img.unpacked as f64 / MB,
        build_time.as_secs_f64(),
        packed_size as f64 / MB,
        packed_size as f64 / img.bytes() as f64
    )
}
