//! Pull throughput: the agent against `skopeo copy` and a `curl | tee | openssl dgst` streaming
//! baseline, on real `docker-registry` instances on loopback, in alternating runs. Prints MB/s
//! (10^6 bytes of config + layers per second), ratios from the same run, and peak RSS.
//!
//!   cargo bench --bench pull                      # every case, 5 runs each (3 for large)
//!   KCI_BENCH_CASES=medium,present cargo bench --bench pull
//!   KCI_BENCH_RUNS=9 cargo bench --bench pull
//!
//!   KCI_BENCH_BUFFERED=1 cargo bench --bench pull # also the agent with --buffered-writes
//!   KCI_BENCH_BASELINE=/path/to/older/kci-pull-agent cargo bench --bench pull # and that build,
//!                                                   # with and without unpacking
//!
//! Every case also times `curl -Z` into `/dev/null` (no hash, no disk: the floor a puller is read
//! against) and charges each pull with the CPU the registry spent serving it.
//!
//! Cases: `medium` (8 incompressible layers, ~190 MB, HTTP), `medium-tls` (the same over
//! self-signed HTTPS, insecure list), `large` (~1 GB, HTTP, with peak RSS), `many` (40 layers of
//! 256 KiB), `present` (a second pull of a present image). Needs docker-registry, skopeo, curl
//! and openssl: `scripts/setup.sh` installs them.

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::images::{Image, Pusher, block_on, image};
use common::registry::{Front, Pki, Registry};
use support::{env_list, env_runs, instance_root, median, timed};

const MB: f64 = 1e6;

struct Target {
    registry: String,
    tls: bool,
    repo: String,
    image: Image,
}

impl Target {
    fn reference(&self) -> String {
        format!("{}/{}:latest", self.registry, self.repo)
    }
    fn bytes(&self) -> u64 {
        self.image.blob_bytes()
    }
}

fn scratch(name: &str) -> PathBuf {
    // On the disk being measured (the project's target directory), not a tmpfs.
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("target/bench-scratch")
        .join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.parent().unwrap()).unwrap();
    dir
}

fn root() -> PathBuf {
    let r = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-scratch/root");
    instance_root(&r);
    r
}

fn agent_cmd(t: &Target, store: &Path) -> Command {
    agent_cmd_of(&common::bin(), t, store)
}

/// The agent built elsewhere (`KCI_BENCH_BASELINE`), in the same rounds: a change measured
/// against the build before it.
fn baseline_cmd(t: &Target, store: &Path) -> Command {
    let bin = std::env::var("KCI_BENCH_BASELINE").expect("set when this tool is listed");
    agent_cmd_of(&bin, t, store)
}

fn agent_cmd_of(bin: &str, t: &Target, store: &Path) -> Command {
    let mut c = Command::new(bin);
    let list = if t.tls {
        "--insecure-registry"
    } else {
        "--http-registry"
    };
    c.args(["pull", "-q", "--no-unpack", "--root"])
        .arg(root())
        .arg("--store")
        .arg(store)
        .args([list, &t.registry, &t.reference()]);
    c
}

/// The agent as it runs by default: every layer unpacked while it downloads (into a fresh
/// layer store each run), to see how much of the unpack hides under the download.
fn agent_unpack_cmd(t: &Target, store: &Path) -> Command {
    agent_unpack_cmd_of(&common::bin(), t, store)
}

/// The baseline build (`KCI_BENCH_BASELINE`) unpacking as well.
fn baseline_unpack_cmd(t: &Target, store: &Path) -> Command {
    let bin = std::env::var("KCI_BENCH_BASELINE").expect("set when this tool is listed");
    agent_unpack_cmd_of(&bin, t, store)
}

fn agent_unpack_cmd_of(bin: &str, t: &Target, store: &Path) -> Command {
    let mut c = Command::new(bin);
    let list = if t.tls {
        "--insecure-registry"
    } else {
        "--http-registry"
    };
    c.args(["pull", "-q", "--root"])
        .arg(root())
        .arg("--store")
        .arg(store)
        .arg("--layers")
        .arg(store.join("layers"))
        .args([list, &t.registry, &t.reference()]);
    c
}

/// The agent with `--buffered-writes` (the page-cache write path), for `KCI_BENCH_BUFFERED=1`.
fn agent_buffered_cmd(t: &Target, store: &Path) -> Command {
    let mut c = agent_cmd(t, store);
    c.arg("--buffered-writes");
    c
}

fn skopeo_cmd(t: &Target, dest: &Path) -> Command {
    let mut c = Command::new("skopeo");
    c.args(["copy", "-q", "--src-tls-verify=false"])
        .arg(format!("docker://{}", t.reference()))
        .arg(format!("oci:{}:latest", dest.display()));
    c
}

/// 6 blobs at a time, each `curl | tee FILE | openssl dgst -sha256`, digests checked.
fn curl_cmd(t: &Target, dest: &Path) -> Command {
    std::fs::create_dir_all(dest).unwrap();
    let scheme = if t.tls { "https" } else { "http" };
    let mut script = String::from("set -e\nfail=0\n");
    for b in t.image.blobs() {
        let hex = &b.digest[7..];
        script.push_str(&format!(
            "while [ $(jobs -rp | wc -l) -ge 6 ]; do wait -n || fail=1; done\n\
             ( got=$(curl -sS -k --fail --noproxy '*' {scheme}://{}/v2/{}/blobs/{} | tee {}/{hex} | openssl dgst -sha256 -r); \
               [ \"${{got%% *}}\" = {hex} ] ) &\n",
            t.registry,
            t.repo,
            b.digest,
            dest.display()
        ));
    }
    script
        .push_str("while [ $(jobs -rp | wc -l) -gt 0 ]; do wait -n || fail=1; done\nexit $fail\n");
    let mut c = Command::new("bash");
    c.arg("-c").arg(script);
    c
}

/// Every blob with `curl -Z` (6 at a time, kept-alive connections) into `/dev/null`: no hash,
/// no file, no fsync. No puller can be much faster than this against the same registry, so it
/// is the floor the other figures are read against.
fn curl_null_cmd(t: &Target, _dest: &Path) -> Command {
    let scheme = if t.tls { "https" } else { "http" };
    let mut c = Command::new("curl");
    c.args([
        "-sS",
        "-k",
        "--fail",
        "--noproxy",
        "*",
        "-Z",
        "--parallel-immediate",
        "--parallel-max",
        "6",
    ]);
    for b in t.image.blobs() {
        c.arg(format!(
            "{scheme}://{}/v2/{}/blobs/{}",
            t.registry, t.repo, b.digest
        ))
        .args(["-o", "/dev/null"]);
    }
    c
}

const AGENT: &str = "kci-pull-agent";
const SKOPEO: &str = "skopeo copy";
const CURL_OPENSSL: &str = "curl|openssl x6";
const CURL_NULL: &str = "curl -> /dev/null x6 (floor)";

struct Row {
    case: String,
    tool: &'static str,
    mbps: f64,
    rss_mib: f64,
    /// Median wall seconds per pull.
    secs: f64,
    /// Median CPU the registry spent serving one pull, in ms.
    registry_ms: f64,
}

/// The row of `tool` in `case`, if that case was run.
fn row<'a>(rows: &'a [Row], case: &str, tool: &str) -> Option<&'a Row> {
    rows.iter().find(|r| r.case == case && r.tool == tool)
}

fn throughput_case(name: &str, reg: &Registry, t: &Target, runs: usize, rows: &mut Vec<Row>) {
    type MakeCommand = fn(&Target, &Path) -> Command;
    let mut tools: Vec<(&'static str, MakeCommand)> = vec![
        (AGENT, agent_cmd),
        (SKOPEO, skopeo_cmd),
        (CURL_OPENSSL, curl_cmd),
        (CURL_NULL, curl_null_cmd),
        ("agent + unpack", agent_unpack_cmd),
    ];
    if std::env::var_os("KCI_BENCH_BUFFERED").is_some_and(|v| v == "1") {
        tools.push(("agent --buffered-writes", agent_buffered_cmd));
    }
    if std::env::var_os("KCI_BENCH_BASELINE").is_some() {
        tools.push((
            "kci-pull-agent, baseline build (KCI_BENCH_BASELINE)",
            baseline_cmd,
        ));
        tools.push(("agent + unpack, baseline build", baseline_unpack_cmd));
    }
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); tools.len()];
    let mut rss: Vec<u64> = vec![0; tools.len()];
    let mut reg_cpu: Vec<Vec<f64>> = vec![Vec::new(); tools.len()];
    // One warm-up round, then alternating rounds (the tool order rotates each round).
    for round in 0..=runs {
        for k in 0..tools.len() {
            let i = (k + round) % tools.len();
            let (tool, make) = &tools[i];
            let dest = scratch(&format!("{name}-{i}"));
            let cpu_before = reg.cpu_time();
            let (d, r) = timed(&mut make(t, &dest));
            let cpu = reg.cpu_time() - cpu_before;
            if round > 0 {
                times[i].push(d.as_secs_f64());
                rss[i] = rss[i].max(r);
                reg_cpu[i].push(cpu.as_secs_f64() * 1000.0);
            }
            eprintln!("  {name} round {round} {tool}: {:.3} s", d.as_secs_f64());
        }
    }
    for (i, (tool, _)) in tools.iter().enumerate() {
        let secs = median(times[i].clone());
        rows.push(Row {
            case: name.into(),
            tool,
            mbps: t.bytes() as f64 / MB / secs,
            rss_mib: rss[i] as f64 / 1024.0,
            secs,
            registry_ms: median(reg_cpu[i].clone()),
        });
    }
}

/// What the registry itself allows: serving a pull costs it CPU that no client can avoid (the
/// same requests, the same bytes), and it shares the machine's cores with the client. So no
/// pull can end sooner than the registry's CPU per pull spread over every core, however little
/// the client does; the `/dev/null` floor measures how close a client that does nothing gets.
fn registry_floor(case: &str, rows: &[Row]) -> String {
    let of = |tool: &str| row(rows, case, tool).expect("a tool of the case");
    let (agent, skopeo, null) = (of(AGENT), of(SKOPEO), of(CURL_NULL));
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1) as f64;
    let bound_s = agent.registry_ms / 1000.0 / cores;
    format!(
        "{case}: the registry spends a median {:.0} ms of CPU serving the agent's pull ({:.0} ms for \
         skopeo's, {:.0} ms for the /dev/null floor's, the same requests); on {cores} cores no \
         client finishes before {:.0} ms, so the best ratio any client can reach here is {:.2}x \
         skopeo ({:.0} ms). Measured: the floor (no hash, no disk) {:.0} ms = {:.2}x skopeo; \
         the agent {:.0} ms = {:.2}x skopeo, {:.2}x the floor's speed.",
        agent.registry_ms,
        skopeo.registry_ms,
        null.registry_ms,
        bound_s * 1000.0,
        skopeo.secs / bound_s,
        skopeo.secs * 1000.0,
        null.secs * 1000.0,
        skopeo.secs / null.secs,
        agent.secs * 1000.0,
        skopeo.secs / agent.secs,
        null.secs / agent.secs,
    )
}

fn main() {
    // `cargo bench` passes --bench; ignore arguments.
    let cases = env_list("KCI_BENCH_CASES", "medium,medium-tls,many,present,large");
    let runs = env_runs(5);
    let storage = tempfile::Builder::new()
        .prefix("kci-bench-registry")
        .tempdir_in(Path::new(env!("CARGO_MANIFEST_DIR")).join("target"))
        .unwrap();
    let http = Registry::start(storage.path(), &Front::default());
    let pki = Pki::new();
    let cert = pki.self_signed("bench", &["127.0.0.1", "localhost"]);
    let https = Registry::start(
        storage.path(),
        &Front {
            tls: Some(cert),
            ..Default::default()
        },
    );
    let pusher = Pusher::new(&http.addr());
    let mib = 1 << 20;
    let medium = image(
        500,
        &[
            64 * mib,
            48 * mib,
            32 * mib,
            16 * mib,
            8 * mib,
            16 * mib,
            8 * mib,
            8 * mib,
        ],
        "amd64",
        false,
    );
    let want = |c: &str| cases.iter().any(|x| x == c);
    block_on(pusher.image("bench/medium", "latest", &medium));
    let target = |reg: &Registry, tls: bool, repo: &str, img: &Image| Target {
        registry: reg.addr(),
        tls,
        repo: repo.into(),
        image: img.clone(),
    };
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    eprintln!(
        "host: {} cores; runs per case: {runs}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );

    if want("medium") {
        throughput_case(
            "medium",
            &http,
            &target(&http, false, "bench/medium", &medium),
            runs,
            &mut rows,
        );
    }
    if want("medium-tls") {
        throughput_case(
            "medium-tls",
            &https,
            &target(&https, true, "bench/medium", &medium),
            runs,
            &mut rows,
        );
    }
    if want("many") {
        let sizes = vec![256 * 1024; 40];
        let many = image(501, &sizes, "amd64", false);
        block_on(pusher.image("bench/many", "latest", &many));
        throughput_case(
            "many-40x256K",
            &http,
            &target(&http, false, "bench/many", &many),
            runs,
            &mut rows,
        );
        notes.push(registry_floor("many-40x256K", &rows));
    }
    if want("large") {
        let large = image(
            502,
            &[512 * mib, 256 * mib, 128 * mib, 64 * mib],
            "amd64",
            false,
        );
        block_on(pusher.image("bench/large", "latest", &large));
        throughput_case(
            "large",
            &http,
            &target(&http, false, "bench/large", &large),
            runs.min(3),
            &mut rows,
        );
    }
    if want("present") {
        // Alternating with one `curl` HEAD of the same manifest: the floor for any process that
        // asks the registry one question, so a slow machine shows in both figures.
        let t = target(&http, false, "bench/medium", &medium);
        // As boot runs it: with the layer store (every layer checked present, none unpacked).
        let store = scratch("present");
        timed(&mut agent_unpack_cmd(&t, &store));
        let n = runs.max(5) * 2 + 1;
        let (mut agent, mut curl) = (Vec::new(), Vec::new());
        for _ in 0..n {
            let report = store.with_extension("report.json");
            let mut c = agent_unpack_cmd(&t, &store);
            c.arg("--report").arg(&report);
            agent.push(timed(&mut c).0.as_secs_f64() * 1000.0);
            let r: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&report).unwrap()).unwrap();
            assert_eq!(r["images"][0]["status"], "present");
            assert_eq!(
                r["images"][0]["bytes"], 0,
                "a present image fetches nothing"
            );
            assert_eq!(r["images"][0]["unpacked_bytes"], 0, "nor unpacks anything");
            let mut head = Command::new("curl");
            head.args(["-sS", "--fail", "--noproxy", "*", "-o", "/dev/null", "-I", "-H"])
                .arg("Accept: application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json")
                .arg(format!("http://{}/v2/{}/manifests/latest", t.registry, t.repo));
            curl.push(timed(&mut head).0.as_secs_f64() * 1000.0);
        }
        let min = |v: &[f64]| v.iter().cloned().fold(f64::INFINITY, f64::min);
        notes.push(format!(
            "present: second pull of medium (already in the store and the layer store), {n} runs, 0 bytes fetched, nothing unpacked: \
             median {:.1} ms (min {:.1}); one curl HEAD of the manifest, same rounds: median {:.1} ms (min {:.1})",
            median(agent.clone()),
            min(&agent),
            median(curl.clone()),
            min(&curl),
        ));
    }

    println!(
        "\n| case | tool | MB/s (median) | vs skopeo | vs curl|openssl | peak RSS MiB | registry CPU ms/pull |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|");
    for r in &rows {
        let of = |tool: &str| row(&rows, &r.case, tool).map_or(f64::NAN, |x| x.mbps);
        println!(
            "| {} | {} | {:.0} | {:.2}x | {:.2}x | {:.0} | {:.0} |",
            r.case,
            r.tool,
            r.mbps,
            r.mbps / of(SKOPEO),
            r.mbps / of(CURL_OPENSSL),
            r.rss_mib,
            r.registry_ms
        );
    }
    for n in notes {
        println!("\n{n}");
    }
    drop((http, https));
    let _ =
        std::fs::remove_dir_all(Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench-scratch"));
}
