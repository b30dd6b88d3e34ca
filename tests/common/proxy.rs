//! A TCP proxy in front of a real registry that can cut a connection part-way through a
//! response, to exercise retries and `Range` resumption.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

pub struct Proxy {
    pub port: u16,
    /// Connections cut so far.
    pub cuts: Arc<AtomicUsize>,
}

impl Proxy {
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Forwards to `upstream`; the first `cuts_wanted` connections that send more than
    /// `cut_after` bytes towards the client are closed at that point.
    pub fn start(upstream: &str, cut_after: u64, cuts_wanted: usize) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let cuts = Arc::new(AtomicUsize::new(0));
        let c2 = cuts.clone();
        forward(listener, upstream, move |server, client| {
            let cuts = c2.clone();
            let sent = Arc::new(AtomicU64::new(0));
            let (mut s_read, mut c_write) = (server, client);
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let n = match s_read.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let before = sent.fetch_add(n as u64, Ordering::SeqCst);
                if before + n as u64 > cut_after && cuts.load(Ordering::SeqCst) < cuts_wanted {
                    cuts.fetch_add(1, Ordering::SeqCst);
                    let keep = cut_after.saturating_sub(before) as usize;
                    let _ = c_write.write_all(&buf[..keep.min(n)]);
                    let _ = c_write.shutdown(Shutdown::Both);
                    let _ = s_read.shutdown(Shutdown::Both);
                    return;
                }
                if c_write.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            let _ = c_write.shutdown(Shutdown::Write);
        });
        Proxy { port, cuts }
    }
}

/// A link of `bytes_per_sec` between `upstream` and the proxy's clients: every byte towards
/// the clients, over all connections together, waits for its turn on one shared budget, as on
/// a slow network in front of a registry.
pub struct Throttle {
    pub port: u16,
}

impl Throttle {
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn start(upstream: &str, bytes_per_sec: u64) -> Throttle {
        Throttle {
            port: link(upstream, None, bytes_per_sec, 16 * 1024),
        }
    }
}

/// A link that caps each connection at `per_conn` bytes a second and all of them together at
/// `total`, as a CDN or an object store in front of a registry does.
pub struct ConnThrottle {
    pub port: u16,
}

impl ConnThrottle {
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    pub fn start(upstream: &str, per_conn: u64, total: u64) -> ConnThrottle {
        ConnThrottle {
            port: link(upstream, Some(per_conn), total, 64 * 1024),
        }
    }
}

/// A proxy to `upstream` whose bytes towards the clients go at most `per_conn` a second on
/// each connection and `total` over all of them, read `buf` bytes at a time; its port.
fn link(upstream: &str, per_conn: Option<u64>, total: u64, buf: usize) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // The instant the link is free again (bytes already granted, spread at the rate).
    let shared = Arc::new(std::sync::Mutex::new(std::time::Instant::now()));
    forward(listener, upstream, move |server, client| {
        let _ = client.set_nodelay(true);
        let (mut s_read, mut c_write) = (server, client);
        let mut bytes = vec![0u8; buf];
        let mut own = std::time::Instant::now();
        let spread =
            |n: usize, rate: u64| std::time::Duration::from_secs_f64(n as f64 / rate as f64);
        loop {
            let n = match s_read.read(&mut bytes) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            let now = std::time::Instant::now();
            let mut due = {
                let mut free_at = shared.lock().unwrap();
                *free_at = (*free_at).max(now) + spread(n, total);
                *free_at
            };
            if let Some(rate) = per_conn {
                own = own.max(now) + spread(n, rate);
                due = due.max(own);
            }
            if let Some(wait) = due.checked_duration_since(std::time::Instant::now()) {
                std::thread::sleep(wait);
            }
            if c_write.write_all(&bytes[..n]).is_err() {
                break;
            }
        }
        let _ = c_write.shutdown(Shutdown::Write);
    });
    port
}

/// Accepts connections on `listener`, connects each to `upstream`, copies what the client
/// sends to the server on a thread of its own, and runs `respond(server, client)` on another
/// to carry the server's bytes back.
fn forward(
    listener: TcpListener,
    upstream: &str,
    respond: impl Fn(TcpStream, TcpStream) + Send + Sync + 'static,
) {
    let upstream = upstream.to_string();
    let respond = Arc::new(respond);
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            let Ok(server) = TcpStream::connect(&upstream) else {
                continue;
            };
            let (mut c_read, mut s_write) =
                (client.try_clone().unwrap(), server.try_clone().unwrap());
            std::thread::spawn(move || {
                let _ = std::io::copy(&mut c_read, &mut s_write);
                let _ = s_write.shutdown(Shutdown::Write);
            });
            let respond = respond.clone();
            std::thread::spawn(move || respond(server, client));
        }
    });
}
