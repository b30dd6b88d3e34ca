//! An HTTP/1.1 fault injector in front of a real registry: it forwards each request upstream
//! (one connection per request) and, for requests whose path contains a pattern, misbehaves on
//! demand: error statuses, truncated or stalled bodies, bodies larger than the blob, corrupted
//! bytes, redirects, a dropped connection, a 401 naming a realm of its choosing, a streaming
//! body that never ends, a trickle. It can also demand Basic credentials and serve over TLS.
//! It records every request with its Authorization header.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Clone, Debug)]
pub enum Fault {
    /// Answer `status` (with `Retry-After: retry_after` if given) instead of forwarding.
    Status {
        status: u16,
        retry_after: Option<u32>,
    },
    /// Send the headers (full Content-Length) and only `after` bytes of the body, then close.
    Truncate { after: usize },
    /// Send `after` bytes, then go silent for `pause`, then close.
    Stall { after: usize, pause: Duration },
    /// Append `extra` bytes to the body (and to Content-Length).
    Extra { extra: usize },
    /// Flip a byte of the body at `offset`.
    Corrupt { offset: usize },
    /// Redirect (307) to `base` + the same path and query.
    Redirect { base: String },
    /// Read the request and close the connection without a response.
    Drop,
    /// Answer 401 with `WWW-Authenticate: Bearer realm="<realm>"`.
    Unauthorized { realm: String },
    /// Answer `status` with a chunked body of `0x20` bytes that never ends (until `limit`
    /// bytes or the client goes away). The bytes sent are counted in
    /// [`FaultServer::bomb_sent`].
    Bomb { status: u16, limit: u64 },
    /// Forward, but send the body `bytes_per_sec` bytes at a time, once a second.
    Trickle { bytes_per_sec: usize },
    /// Forward, with the response header `name` set to `value` (replacing the registry's).
    Header { name: String, value: String },
    /// Forward without the request's `Range` header: the whole body comes back with 200, as
    /// from a server that ignores ranges.
    IgnoreRange,
}

#[derive(Clone, Debug)]
pub struct Rule {
    pub path_contains: String,
    pub fault: Fault,
    /// How many matching requests get the fault (then they are forwarded normally).
    pub times: usize,
}

#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub authorization: Option<String>,
    pub range: Option<String>,
    /// When the request arrived (to order requests seen by different servers).
    pub at: std::time::Instant,
}

pub struct FaultServer {
    pub port: u16,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    pub bomb_sent: Arc<std::sync::atomic::AtomicU64>,
    rules: Arc<Mutex<Vec<Rule>>>,
}

impl FaultServer {
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts in front of `upstream` (a plain-HTTP registry front). `basic`: demand these
    /// Basic credentials on every request. `tls`: serve HTTPS with this certificate and key.
    pub fn start(
        upstream: &str,
        rules: Vec<Rule>,
        basic: Option<(&str, &str)>,
        tls: Option<(std::path::PathBuf, std::path::PathBuf)>,
    ) -> FaultServer {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let bomb_sent = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let rules = Arc::new(Mutex::new(rules));
        let shared_rules = rules.clone();
        let upstream = upstream.to_string();
        let want_auth = basic.map(|(u, p)| {
            use base64::Engine as _;
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
            )
        });
        let tls_config = tls.map(|(cert, key)| {
            use rustls::pki_types::pem::PemObject;
            let _ = rustls::crypto::ring::default_provider().install_default();
            let certs = rustls::pki_types::CertificateDer::pem_file_iter(&cert)
                .unwrap()
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = rustls::pki_types::PrivateKeyDer::from_pem_file(&key).unwrap();
            Arc::new(
                rustls::ServerConfig::builder()
                    .with_no_client_auth()
                    .with_single_cert(certs, key)
                    .unwrap(),
            )
        });
        let s2 = seen.clone();
        let b2 = bomb_sent.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { continue };
                let bomb = b2.clone();
                let (seen, rules, upstream, want_auth, tls) = (
                    s2.clone(),
                    shared_rules.clone(),
                    upstream.clone(),
                    want_auth.clone(),
                    tls_config.clone(),
                );
                std::thread::spawn(move || {
                    let result = match tls {
                        Some(cfg) => {
                            let server = rustls::ServerConnection::new(cfg).unwrap();
                            let stream = rustls::StreamOwned::new(server, conn);
                            serve(
                                stream,
                                &seen,
                                &rules,
                                &upstream,
                                want_auth.as_deref(),
                                &bomb,
                            )
                        }
                        None => serve(conn, &seen, &rules, &upstream, want_auth.as_deref(), &bomb),
                    };
                    let _ = result;
                });
            }
        });
        FaultServer {
            port,
            seen,
            bomb_sent,
            rules,
        }
    }

    /// Adds a rule, after the others (for faults that name this server's own address).
    pub fn add_rule(&self, rule: Rule) {
        self.rules.lock().unwrap().push(rule);
    }

    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// Serves requests on one client connection until it closes.
fn serve<S: Read + Write>(
    stream: S,
    seen: &Mutex<Vec<Seen>>,
    rules: &Mutex<Vec<Rule>>,
    upstream: &str,
    want_auth: Option<&str>,
    bomb_sent: &std::sync::atomic::AtomicU64,
) -> std::io::Result<()> {
    let mut reader = BufReader::new(stream);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut parts = line.split_whitespace();
        let method = parts.next().unwrap_or("").to_string();
        let target = parts.next().unwrap_or("").to_string();
        let mut headers: Vec<(String, String)> = Vec::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
                break;
            }
            if let Some((k, v)) = h.split_once(':') {
                headers.push((k.trim().to_string(), v.trim().to_string()));
            }
        }
        let header = |name: &str| {
            headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.clone())
        };
        seen.lock().unwrap().push(Seen {
            method: method.clone(),
            path: target.clone(),
            authorization: header("authorization"),
            range: header("range"),
            at: std::time::Instant::now(),
        });
        let out = reader.get_mut();
        if let Some(want) = want_auth
            && header("authorization").as_deref() != Some(want)
        {
            out.write_all(
                b"HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Basic realm=\"fault\"\r\nContent-Length: 0\r\n\r\n",
            )?;
            continue;
        }
        let fault = {
            let mut rules = rules.lock().unwrap();
            rules
                .iter_mut()
                .find(|r| r.times > 0 && target.contains(&r.path_contains))
                .map(|r| {
                    r.times -= 1;
                    r.fault.clone()
                })
        };
        match &fault {
            Some(Fault::Status {
                status,
                retry_after,
            }) => {
                let ra = retry_after
                    .map(|s| format!("Retry-After: {s}\r\n"))
                    .unwrap_or_default();
                write!(
                    out,
                    "HTTP/1.1 {status} Injected\r\n{ra}Content-Length: 0\r\n\r\n"
                )?;
                continue;
            }
            Some(Fault::Drop) => return Ok(()),
            Some(Fault::Unauthorized { realm }) => {
                write!(
                    out,
                    "HTTP/1.1 401 Unauthorized\r\nWWW-Authenticate: Bearer realm=\"{realm}\",service=\"fault\"\r\nContent-Length: 0\r\n\r\n"
                )?;
                continue;
            }
            Some(Fault::Bomb { status, limit }) => {
                write!(
                    out,
                    "HTTP/1.1 {status} Bomb\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                )?;
                let chunk = vec![b' '; 64 << 10];
                let mut sent = 0u64;
                while sent < *limit {
                    write!(out, "{:x}\r\n", chunk.len())?;
                    out.write_all(&chunk)?;
                    out.write_all(b"\r\n")?;
                    sent += chunk.len() as u64;
                    bomb_sent.fetch_add(chunk.len() as u64, std::sync::atomic::Ordering::SeqCst);
                }
                out.write_all(b"0\r\n\r\n")?;
                return Ok(());
            }
            Some(Fault::Redirect { base }) => {
                write!(
                    out,
                    "HTTP/1.1 307 Temporary Redirect\r\nLocation: {base}{target}\r\nContent-Length: 0\r\n\r\n"
                )?;
                continue;
            }
            _ => {}
        }
        // Forward upstream (no keep-alive there), read the whole response.
        let mut up = TcpStream::connect(upstream)?;
        let mut req =
            format!("{method} {target} HTTP/1.1\r\nHost: {upstream}\r\nConnection: close\r\n");
        for (k, v) in &headers {
            let dropped =
                matches!(fault, Some(Fault::IgnoreRange)) && k.eq_ignore_ascii_case("range");
            if !dropped
                && !matches!(
                    k.to_ascii_lowercase().as_str(),
                    "host" | "connection" | "authorization"
                )
            {
                req.push_str(&format!("{k}: {v}\r\n"));
            }
        }
        req.push_str("\r\n");
        up.write_all(req.as_bytes())?;
        let mut raw = Vec::new();
        up.read_to_end(&mut raw)?;
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|i| i + 4)
            .unwrap_or(raw.len());
        let (head, body) = raw.split_at(split);
        let head = String::from_utf8_lossy(head).to_string();
        let mut body = body.to_vec();
        // Rebuild the head: our own Content-Length, keep-alive towards the client.
        let mut lines = head.split("\r\n").filter(|l| !l.is_empty());
        let status_line = lines
            .next()
            .unwrap_or("HTTP/1.1 502 Bad Gateway")
            .to_string();
        let kept: Vec<&str> = lines
            .filter(|l| {
                let k = l.split(':').next().unwrap_or("").to_ascii_lowercase();
                !matches!(
                    k.as_str(),
                    "content-length" | "connection" | "transfer-encoding"
                )
            })
            .collect();
        let mut close_after = None;
        let mut pause = None;
        let mut trickle = None;
        match &fault {
            Some(Fault::Extra { extra }) => body.extend(std::iter::repeat_n(0x42u8, *extra)),
            Some(Fault::Corrupt { offset }) if *offset < body.len() => body[*offset] ^= 0xff,
            Some(Fault::Truncate { after }) => close_after = Some(*after),
            Some(Fault::Stall { after, pause: p }) => {
                close_after = Some(*after);
                pause = Some(*p);
            }
            Some(Fault::Trickle { bytes_per_sec }) => trickle = Some(*bytes_per_sec),
            _ => {}
        }
        let mut resp = format!("{status_line}\r\n");
        for l in kept {
            if let Some(Fault::Header { name, .. }) = &fault
                && l.split(':').next().unwrap_or("").eq_ignore_ascii_case(name)
            {
                continue;
            }
            resp.push_str(l);
            resp.push_str("\r\n");
        }
        if let Some(Fault::Header { name, value }) = &fault {
            resp.push_str(&format!("{name}: {value}\r\n"));
        }
        resp.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
        out.write_all(resp.as_bytes())?;
        if method == "HEAD" {
            continue;
        }
        if let Some(rate) = trickle {
            for piece in body.chunks(rate.max(1)) {
                out.write_all(piece)?;
                out.flush()?;
                std::thread::sleep(Duration::from_secs(1));
            }
            continue;
        }
        match close_after {
            Some(n) => {
                out.write_all(&body[..n.min(body.len())])?;
                out.flush()?;
                if let Some(p) = pause {
                    std::thread::sleep(p);
                }
                return Ok(());
            }
            None => out.write_all(&body)?,
        }
        out.flush()?;
    }
}

/// A rule that gives `fault` to the first `times` requests whose path contains `path`.
pub fn rule(path: &str, fault: Fault, times: usize) -> Rule {
    Rule {
        path_contains: path.into(),
        fault,
        times,
    }
}

/// A real plain-HTTP registry holding `img` as `REPO:v1` for each of `repos`, and a root to
/// pull into: what every fault test starts from.
pub struct FaultEnv {
    _storage: tempfile::TempDir,
    pub registry: super::registry::Registry,
    pub img: super::images::Image,
    pub root: super::Root,
}

impl FaultEnv {
    /// A plain-HTTP fault injector in front of this registry.
    pub fn front(&self, rules: Vec<Rule>) -> FaultServer {
        FaultServer::start(&self.registry.addr(), rules, None, None)
    }

    pub fn start(img: super::images::Image, repos: &[&str]) -> FaultEnv {
        use super::images::{Pusher, block_on};
        let storage = tempfile::tempdir().unwrap();
        let registry =
            super::registry::Registry::start(storage.path(), &super::registry::Front::default());
        block_on(async {
            let p = Pusher::new(&registry.addr());
            for r in repos {
                p.image(r, "v1", &img).await;
            }
        });
        let root = super::Root::new("127.0.0.1\tlocalhost\n", "nameserver 127.0.0.1\n");
        FaultEnv {
            _storage: storage,
            registry,
            img,
            root,
        }
    }
}
