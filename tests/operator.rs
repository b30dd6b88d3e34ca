//! The operator's paths (SPEC §11), as someone at the terminal of an instance meets them: every
//! error on stderr, `--report -`, the report's timing keys, `-v` request lines, aliases in
//! every run, DNS errors in words.

mod common;

use std::fs;
use std::net::UdpSocket;

use common::fault::FaultEnv;
use common::images::image;
use common::{agent, pull_report, run};

/// `pull --store <a regular file>`: the reason is on stderr, not only in a report.
#[test]
fn a_store_that_cannot_be_opened_is_explained_on_stderr() {
    let e = FaultEnv::start(image(1, &[1_000], "amd64", false), &["op/a"]);
    let file = e.root.file("not-a-dir");
    fs::write(&file, b"").unwrap();
    let image = format!("{}/op/a:v1", e.registry.addr());
    let r = pull_report(
        &e.root,
        &file,
        &["--http-registry", &e.registry.addr(), &image],
    );
    assert_eq!(r.code, 4, "{}", r.stderr);
    assert!(
        r.stderr.contains("cannot open the image store")
            && r.stderr.contains("is not a directory")
            && r.stderr.contains("hint: --store"),
        "{}",
        r.stderr
    );
}

/// `--report -` writes the report, and only it, to stdout; `--report /dev/stdout` writes
/// through the link and leaves it a link. The report carries the agent's version, the run's
/// start and end (RFC 3339, UTC) and each image's milestones.
#[test]
fn the_report_on_stdout_with_version_times_and_milestones() {
    let e = FaultEnv::start(image(2, &[50_000, 2_000], "amd64", false), &["op/b"]);
    let reg = e.registry.addr();
    let image = format!("{reg}/op/b:v1");
    let store = e.root.file("store");
    let r = run(&mut agent(&[
        "pull",
        "--root",
        e.root.arg(),
        "--store",
        store.to_str().unwrap(),
        "--http-registry",
        &reg,
        "--report",
        "-",
        &image,
    ]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let rep: serde_json::Value = serde_json::from_str(&r.stdout).expect("stdout is the report");
    assert!(!e.root.file("-").exists(), "no file named -");
    let version = rep["agent_version"].as_str().unwrap();
    assert!(version.starts_with(env!("CARGO_PKG_VERSION")), "{version}");
    let stamp = |k: &str| rep[k].as_str().unwrap().to_string();
    for k in ["started_at", "finished_at"] {
        let t = stamp(k);
        assert!(
            t.len() == 24 && t.ends_with('Z') && &t[10..11] == "T",
            "{k}: {t}"
        );
    }
    assert!(stamp("started_at") <= stamp("finished_at"));
    let img = &rep["images"][0];
    let secs = |k: &str| img[k].as_f64().unwrap_or_else(|| panic!("{k}: {img}"));
    assert!(secs("seconds_to_manifest") <= secs("seconds_to_last_byte"));
    assert!(secs("seconds_to_last_byte") <= secs("seconds_to_committed"));
    assert!(secs("seconds_to_committed") <= secs("seconds"));
    // The same through /dev/stdout (a link to this process's pipe): written in place.
    let r = run(&mut agent(&[
        "pull",
        "--root",
        e.root.arg(),
        "--store",
        store.to_str().unwrap(),
        "--http-registry",
        &reg,
        "--report",
        "/dev/stdout",
        &image,
    ]));
    assert_eq!(r.code, 0, "{}", r.stderr);
    let rep: serde_json::Value = serde_json::from_str(&r.stdout).unwrap();
    assert_eq!(rep["images"][0]["status"], "present");
    assert!(
        fs::symlink_metadata("/dev/stdout")
            .unwrap()
            .file_type()
            .is_symlink()
    );
}

/// `-v` shows one line per registry request (method, URL, status, bytes, ms) and none of the
/// HTTP library's internals; `-vv` shows those.
#[test]
fn verbose_logs_one_line_per_registry_request() {
    let e = FaultEnv::start(image(3, &[20_000], "amd64", false), &["op/c"]);
    let reg = e.registry.addr();
    let image = format!("{reg}/op/c:v1");
    let store = e.root.file("store");
    let pull = |v: &str| {
        pull_report(
            &e.root,
            &store,
            &[v, "--http-registry", &reg, "--no-unpack", &image],
        )
    };
    let r = pull("-v");
    assert_eq!(r.code, 0, "{}", r.stderr);
    let lines: Vec<&str> = r.stderr.lines().filter(|l| l.contains(" -> ")).collect();
    let manifest = lines
        .iter()
        .find(|l| l.contains("GET http://") && l.contains("/v2/op/c/manifests/v1 -> 200 "))
        .unwrap_or_else(|| panic!("{}", r.stderr));
    assert!(
        manifest.contains(" bytes ") && manifest.trim_end().ends_with(" ms"),
        "{manifest}"
    );
    assert!(
        lines
            .iter()
            .filter(|l| l.contains("/blobs/sha256:"))
            .count()
            >= 2,
        "{}",
        r.stderr
    );
    assert!(
        !r.stderr.contains("pooling idle connection"),
        "{}",
        r.stderr
    );
    let _ = fs::remove_dir_all(&store);
    let r = pull("-vv");
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(r.stderr.contains("pooling idle connection"), "{}", r.stderr);
}

/// The host aliases a run is given resolve names in that run, also for `pull`, which writes
/// no network file; a name that nothing resolves gets a hint naming the flag.
#[test]
fn the_runs_host_aliases_resolve_names_without_the_hosts_file() {
    let e = FaultEnv::start(image(4, &[5_000], "amd64", false), &["op/d"]);
    let port = e.registry.addr().rsplit(':').next().unwrap().to_string();
    let reg = format!("only-alias.test:{port}");
    let store = e.root.file("store");
    let image = format!("{reg}/op/d:v1");
    let pull = |aliases: &str| {
        pull_report(
            &e.root,
            &store,
            &["--http-registry", &reg, "--host-aliases", aliases, &image],
        )
    };
    let r = pull(r#"[{"ip":"127.0.0.1","hostnames":["only-alias.test"]}]"#);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(!e.root.read("etc/hosts").contains("only-alias.test"));
    // Not aliased: DNS (here a server that knows no name) is asked, and the hint names the
    // flag the run used.
    let _dns = Nxdomain::start("127.0.0.80");
    fs::write(e.root.file("etc/resolv.conf"), "nameserver 127.0.0.80\n").unwrap();
    let r = pull(r#"[{"ip":"127.0.0.1","hostnames":["other.test"]}]"#);
    assert_eq!(r.code, 4, "{}", r.stderr);
    assert!(r.stderr.contains("--host-aliases"), "{}", r.stderr);
}

/// A DNS server that answers every query with NXDOMAIN, on a loopback address of its own.
struct Nxdomain {
    _thread: std::thread::JoinHandle<()>,
}

impl Nxdomain {
    fn start(ip: &str) -> Nxdomain {
        let socket = UdpSocket::bind((ip, 53)).expect("cannot bind a DNS port (root needed)");
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 512];
            while let Ok((n, from)) = socket.recv_from(&mut buf) {
                if n < 12 {
                    continue;
                }
                let mut answer = buf[..n].to_vec();
                // QR, the query's opcode and RD; RA; RCODE 3 (NXDOMAIN); no records.
                answer[2] = 0x80 | (buf[2] & 0x79);
                answer[3] = 0x80 | 3;
                answer[6..12].fill(0);
                let _ = socket.send_to(&answer, from);
            }
        });
        Nxdomain { _thread: thread }
    }
}

/// DNS errors are said in words; the resolver's debug text (`Query { name: ... }`) never
/// reaches a message.
#[test]
fn dns_errors_are_said_in_words() {
    let _dns = Nxdomain::start("127.0.0.79");
    let root = common::Root::new("127.0.0.1\tlocalhost\n", "nameserver 127.0.0.79\n");
    let store = root.file("store");
    let r = pull_report(&root, &store, &["no-such-registry.test:5000/a/b:c"]);
    assert_eq!(r.code, 4, "{}", r.stderr);
    assert!(
        r.stderr.contains("no such name exists (NXDOMAIN)"),
        "{}",
        r.stderr
    );
    assert!(
        !r.stderr.contains("Query {") && !r.stderr.contains("Name("),
        "{}",
        r.stderr
    );
}

/// A forward HTTP proxy for plain `http://` requests: it learns the target from the first
/// request's absolute URI, maps `*.proxied.test` to loopback (names only it knows) and forwards
/// the bytes (the registry accepts absolute-form requests). Records the targets it served.
struct HttpProxy {
    port: u16,
    targets: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl HttpProxy {
    fn start() -> HttpProxy {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let targets = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = targets.clone();
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let seen = seen.clone();
                std::thread::spawn(move || {
                    let mut client = client;
                    let mut head = Vec::new();
                    let mut byte = [0u8; 1];
                    while !head.ends_with(b"\r\n") {
                        if client.read(&mut byte).unwrap_or(0) == 0 {
                            return;
                        }
                        head.push(byte[0]);
                    }
                    let line = String::from_utf8_lossy(&head).into_owned();
                    // HTTPS: CONNECT host:port, then a tunnel to it.
                    if let Some(authority) = line
                        .strip_prefix("CONNECT ")
                        .and_then(|r| r.split_whitespace().next())
                    {
                        while !head.ends_with(b"\r\n\r\n") {
                            if client.read(&mut byte).unwrap_or(0) == 0 {
                                return;
                            }
                            head.push(byte[0]);
                        }
                        seen.lock().unwrap().push(format!("CONNECT {authority}"));
                        let port = authority.rsplit(':').next().unwrap_or("443");
                        let Ok(server) = std::net::TcpStream::connect((
                            "127.0.0.1",
                            port.parse::<u16>().unwrap_or(443),
                        )) else {
                            return;
                        };
                        client
                            .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                            .unwrap();
                        let (mut c2, mut s2) =
                            (client.try_clone().unwrap(), server.try_clone().unwrap());
                        std::thread::spawn(move || {
                            let _ = std::io::copy(&mut s2, &mut c2);
                            let _ = c2.shutdown(std::net::Shutdown::Both);
                        });
                        let mut server = server;
                        let _ = std::io::copy(&mut client, &mut server);
                        let _ = server.shutdown(std::net::Shutdown::Write);
                        return;
                    }
                    let Some(authority) = line
                        .split_whitespace()
                        .nth(1)
                        .and_then(|u| u.strip_prefix("http://"))
                        .and_then(|u| u.split('/').next())
                    else {
                        return;
                    };
                    seen.lock().unwrap().push(authority.to_string());
                    let port = authority.rsplit(':').next().unwrap_or("80");
                    let Ok(mut server) = std::net::TcpStream::connect((
                        "127.0.0.1",
                        port.parse::<u16>().unwrap_or(80),
                    )) else {
                        return;
                    };
                    server.write_all(&head).unwrap();
                    let (mut c2, mut s2) =
                        (client.try_clone().unwrap(), server.try_clone().unwrap());
                    std::thread::spawn(move || {
                        let _ = std::io::copy(&mut s2, &mut c2);
                        let _ = c2.shutdown(std::net::Shutdown::Both);
                    });
                    let _ = std::io::copy(&mut client, &mut server);
                    let _ = server.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        HttpProxy { port, targets }
    }
}

/// HTTP_PROXY is honoured (the registry's name is one only the proxy knows); a host the run
/// aliases goes direct; a proxy the agent cannot use is refused, naming the variable.
#[test]
fn proxies_from_the_environment_are_honoured_or_refused() {
    let e = FaultEnv::start(image(5, &[8_000], "amd64", false), &["op/e"]);
    let port = e.registry.addr().rsplit(':').next().unwrap().to_string();
    let reg = format!("reg.proxied.test:{port}");
    let image = format!("{reg}/op/e:v1");
    let proxy = HttpProxy::start();
    let _dns = Nxdomain::start("127.0.0.81");
    fs::write(e.root.file("etc/resolv.conf"), "nameserver 127.0.0.81\n").unwrap();
    let pull = |store: &str, env: &[(&str, String)], extra: &[&str]| {
        let store = e.root.file(store);
        let mut args = vec![
            "pull",
            "--root",
            e.root.arg(),
            "--store",
            store.to_str().unwrap(),
            "--http-registry",
            &reg,
        ];
        args.extend_from_slice(extra);
        args.push(&image);
        let mut cmd = agent(&args);
        for (k, v) in env {
            cmd.env(k, v);
        }
        run(&mut cmd)
    };
    let via = vec![("HTTP_PROXY", format!("http://127.0.0.1:{}", proxy.port))];
    let r = pull("s1", &via, &[]);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        r.stderr.contains("proxies from the environment"),
        "{}",
        r.stderr
    );
    assert!(
        proxy.targets.lock().unwrap().contains(&reg),
        "{:?}",
        proxy.targets
    );
    // Without the proxy the name does not resolve at all.
    let r = pull("s2", &[], &[]);
    assert_eq!(r.code, 4, "{}", r.stderr);
    // Aliased: direct, the proxy sees nothing more.
    let before = proxy.targets.lock().unwrap().len();
    let r = pull(
        "s3",
        &via,
        &[
            "--host-aliases",
            r#"[{"ip":"127.0.0.1","hostnames":["reg.proxied.test"]}]"#,
        ],
    );
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert_eq!(proxy.targets.lock().unwrap().len(), before);
    // A SOCKS proxy: refused before anything is fetched.
    let r = pull(
        "s4",
        &[("ALL_PROXY", "socks5://127.0.0.1:1080".to_string())],
        &[],
    );
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("ALL_PROXY") && r.stderr.contains("socks5"),
        "{}",
        r.stderr
    );
}

/// SIGINT and SIGTERM during a pull through a slow link: the run stops at once with 130 /
/// 143, says so on stderr, writes the report with the image failed naming the signal, keeps
/// the completed blob and the partial one; the next run fetches the rest with `Range` only.
#[test]
fn a_signal_stops_the_pull_cleanly_and_the_next_run_resumes() {
    use common::fault::{Fault, Rule};
    let img = image(6, &[3_000, 2_000_000], "amd64", false);
    let big = img.layers[1].digest.clone();
    let small = img.layers[0].digest.clone();
    let e = FaultEnv::start(img, &["op/sig"]);
    for (signal, code) in [("INT", 130), ("TERM", 143)] {
        let front = e.front(vec![Rule {
            path_contains: big.clone(),
            fault: Fault::Trickle {
                bytes_per_sec: 300_000,
            },
            times: 1,
        }]);
        let reg = front.addr();
        let image = format!("{reg}/op/sig:v1");
        let store = e.root.file(&format!("store-{signal}"));
        let report = e.root.file(&format!("report-{signal}.json"));
        let args = [
            "pull",
            "--root",
            e.root.arg(),
            "--store",
            store.to_str().unwrap(),
            "--http-registry",
            &reg,
            "--report",
            report.to_str().unwrap(),
            &image,
        ];
        let child = agent(&args)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        // Wait until part of the big blob is on disk (the small one is complete by then; bytes
        // reach the file in batches of 512 KiB).
        let ingest = store.join("ingest");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            let partial: u64 = fs::read_dir(&ingest)
                .map(|d| {
                    d.flatten()
                        .filter_map(|f| f.metadata().ok())
                        .map(|m| m.len())
                        .sum()
                })
                .unwrap_or(0);
            let small_done = store
                .join("blobs/sha256")
                .join(small.trim_start_matches("sha256:"))
                .exists();
            if partial > 0 && small_done {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let sent = std::time::Instant::now();
        let kill = std::process::Command::new("kill")
            .args([&format!("-{signal}"), &child.id().to_string()])
            .status()
            .unwrap();
        assert!(kill.success());
        let out = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            sent.elapsed() < std::time::Duration::from_secs(3),
            "SIG{signal} took {:?} to end the run",
            sent.elapsed()
        );
        assert_eq!(out.status.code(), Some(code), "{stderr}");
        assert!(
            stderr.contains(&format!("SIG{signal} received"))
                && stderr.contains(&format!("stopped by SIG{signal}")),
            "{stderr}"
        );
        let rep: serde_json::Value = serde_json::from_slice(&fs::read(&report).unwrap()).unwrap();
        assert_eq!(rep["images"][0]["status"], "failed");
        assert!(
            rep["images"][0]["error"]
                .as_str()
                .unwrap()
                .contains(&format!("stopped by SIG{signal}")),
            "{rep}"
        );
        let hex = |d: &str| d.trim_start_matches("sha256:").to_string();
        assert!(store.join("blobs/sha256").join(hex(&small)).exists());
        let kept = fs::metadata(ingest.join(format!("{}.resume", hex(&big))))
            .unwrap_or_else(|_| panic!("no partial blob kept: {stderr}"))
            .len();
        assert!(kept >= 100_000, "{kept}");

        // The next run: only the rest of the big blob, with Range; nothing else again.
        let before = front.seen.lock().unwrap().len();
        let r = run(&mut agent(&args));
        assert_eq!(r.code, 0, "{}", r.stderr);
        let seen = front.seen.lock().unwrap()[before..].to_vec();
        let blobs: Vec<_> = seen.iter().filter(|s| s.path.contains("/blobs/")).collect();
        assert!(
            blobs.iter().all(|s| !s.path.contains(&small)),
            "the completed blob is not fetched again: {blobs:?}"
        );
        let big_get = blobs
            .iter()
            .find(|s| s.path.contains(&big))
            .expect("the big blob is fetched");
        let range = big_get.range.clone().unwrap_or_default();
        let from: u64 = range
            .trim_start_matches("bytes=")
            .trim_end_matches('-')
            .parse()
            .unwrap_or(0);
        assert!(from >= 100_000, "resumed with {range:?}");
        assert_eq!(common::verify_store(&store), 4);
        assert!(fs::read_dir(&ingest).unwrap().next().is_none());
    }
}

/// `--deadline 2` while a 64 MB layer arrives slowly (in chunks over parallel ranges): the run
/// ends within 3 s of the deadline with exit 4 and a report naming the deadline; the next run
/// completes and leaves no staging directory or chunk file behind.
#[test]
fn a_deadline_ends_the_run_promptly_and_leaves_nothing_half_made() {
    use common::fault::{Fault, Rule};
    let img = image(7, &[64_000_000], "amd64", false);
    let big = img.layers[0].digest.clone();
    let e = FaultEnv::start(img, &["op/deadline"]);
    // The blob's HEAD and its four 16 MiB chunks, each at 4 MB/s.
    let front = e.front(vec![Rule {
        path_contains: big,
        fault: Fault::Trickle {
            bytes_per_sec: 4_000_000,
        },
        times: 5,
    }]);
    let reg = front.addr();
    let image = format!("{reg}/op/deadline:v1");
    let store = e.root.file("store");
    let report = e.root.file("report.json");
    let args = |deadline: &'static str| {
        vec![
            "pull".to_string(),
            "--root".into(),
            e.root.arg().into(),
            "--store".into(),
            store.to_str().unwrap().into(),
            "--http-registry".into(),
            reg.clone(),
            "--report".into(),
            report.to_str().unwrap().into(),
            "--deadline".into(),
            deadline.into(),
            image.clone(),
        ]
    };
    let started = std::time::Instant::now();
    let a = args("2");
    let r = run(&mut agent(
        &a.iter().map(String::as_str).collect::<Vec<_>>(),
    ));
    let took = started.elapsed();
    assert_eq!(r.code, 4, "{}", r.stderr);
    eprintln!("--deadline 2: the run ended after {took:?}");
    assert!(
        took < std::time::Duration::from_secs(5),
        "the run took {took:?}"
    );
    let rep: serde_json::Value = serde_json::from_slice(&fs::read(&report).unwrap()).unwrap();
    assert!(
        rep["images"][0]["error"]
            .as_str()
            .unwrap()
            .contains("deadline"),
        "{rep}"
    );
    // The next run (the registry at full speed now) completes; nothing half-made is left.
    let a = args("600");
    let r = run(&mut agent(
        &a.iter().map(String::as_str).collect::<Vec<_>>(),
    ));
    assert_eq!(r.code, 0, "{}", r.stderr);
    for dir in ["store/ingest", "var/lib/kci/layers/ingest"] {
        let left: Vec<_> = fs::read_dir(e.root.file(dir))
            .map(|d| d.flatten().map(|f| f.file_name()).collect())
            .unwrap_or_default();
        assert!(left.is_empty(), "{dir}: {left:?}");
    }
}

/// HTTPS_PROXY for an HTTPS registry: a CONNECT tunnel through the proxy, the registry's
/// name known only to the proxy, TLS end to end (here `kci-insecure-registry`: the
/// certificate is a self-signed one).
#[test]
fn https_goes_through_the_proxys_connect_tunnel() {
    let e = FaultEnv::start(image(8, &[6_000], "amd64", false), &["op/tls"]);
    let pki = common::registry::Pki::new();
    let tls = pki.self_signed("tunnel", &["reg.tunnel.test"]);
    let front = common::fault::FaultServer::start(&e.registry.addr(), vec![], None, Some(tls));
    let reg = format!("reg.tunnel.test:{}", front.port);
    let proxy = HttpProxy::start();
    let _dns = Nxdomain::start("127.0.0.82");
    fs::write(e.root.file("etc/resolv.conf"), "nameserver 127.0.0.82\n").unwrap();
    let store = e.root.file("store");
    let mut cmd = agent(&[
        "pull",
        "--root",
        e.root.arg(),
        "--store",
        store.to_str().unwrap(),
        "--insecure-registry",
        &reg,
        &format!("{reg}/op/tls:v1"),
    ]);
    cmd.env("HTTPS_PROXY", format!("http://127.0.0.1:{}", proxy.port));
    let r = run(&mut cmd);
    assert_eq!(r.code, 0, "{}", r.stderr);
    assert!(
        proxy
            .targets
            .lock()
            .unwrap()
            .contains(&format!("CONNECT {reg}")),
        "{:?}",
        proxy.targets
    );
    assert_eq!(common::verify_store(&store), 3);
}

/// A partial blob in `ingest/` is the store on disk, so it may lie (SPEC §9): a kept
/// `<hex>.resume` full of wrong bytes is hashed with the rest and downloaded again from
/// scratch when the digest does not match; a link under that name is never followed. The
/// image ends verified either way.
#[test]
fn a_lying_partial_blob_is_not_trusted() {
    let img = image(9, &[200_000], "amd64", false);
    let hex = img.layers[0]
        .digest
        .trim_start_matches("sha256:")
        .to_string();
    let e = FaultEnv::start(img, &["op/lie"]);
    let reg = e.registry.addr();
    for (name, plant) in [("garbage", 0), ("link", 1)] {
        let store = e.root.file(&format!("store-{name}"));
        let ingest = store.join("ingest");
        fs::create_dir_all(&ingest).unwrap();
        let kept = ingest.join(format!("{hex}.resume"));
        if plant == 0 {
            fs::write(&kept, vec![0x55u8; 50_000]).unwrap();
        } else {
            let secret = e.root.file("secret");
            fs::write(&secret, b"not the agent's").unwrap();
            std::os::unix::fs::symlink(&secret, &kept).unwrap();
        }
        let p = pull_report(
            &e.root,
            &store,
            &["--http-registry", &reg, &format!("{reg}/op/lie:v1")],
        );
        assert_eq!(p.code, 0, "{name}: {}", p.stderr);
        assert_eq!(common::verify_store(&store), 3, "{name}");
        assert!(
            !kept.exists() && fs::symlink_metadata(&kept).is_err(),
            "{name}"
        );
        assert_eq!(
            fs::read(e.root.file("secret")).ok(),
            (plant == 1).then(|| b"not the agent's".to_vec()),
            "{name}: the link's target is untouched"
        );
        if plant == 0 {
            // The wrong bytes were taken up, found out by the digest, and fetched again.
            assert!(
                p.stderr.contains("resuming at 50000") && p.stderr.contains("downloading it again"),
                "{}",
                p.stderr
            );
        }
    }
}
