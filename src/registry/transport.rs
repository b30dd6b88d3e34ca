//! The three transports (plain HTTP, HTTPS without verification, verified HTTPS) as reqwest
//! clients over rustls with the ring provider, all resolving names through [`RootResolver`].

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use reqwest::Client;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use rustls::{ClientConfig, RootCertStore};

use super::endpoints::Endpoint;
use super::pinned::{Pinned, Verifier};
use super::policy::Transport;
use super::resolver::{ReqwestResolver, RootResolver};

/// Timeouts for every connection.
#[derive(Debug, Clone, Copy)]
pub struct NetOptions {
    pub connect_timeout: Duration,
    /// Longest silence while reading a response (a stalled body).
    pub read_timeout: Duration,
    /// A body slower than `low_speed_limit` bytes per second over `low_speed_time` fails like
    /// a reset (0: no limit).
    pub low_speed_limit: u64,
    pub low_speed_time: Duration,
}

impl Default for NetOptions {
    fn default() -> Self {
        NetOptions {
            connect_timeout: Duration::from_secs(10),
            read_timeout: Duration::from_secs(30),
            low_speed_limit: 1024,
            low_speed_time: Duration::from_secs(30),
        }
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Why a client could not be built: its CA files, or the TLS stack itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransportError {
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
    #[error("cannot configure TLS: {0}")]
    Tls(String),
    #[error("cannot read {}: {detail}", path.display())]
    Read { path: PathBuf, detail: String },
    #[error("{}: not a PEM certificate file: {detail}", path.display())]
    NotPem { path: PathBuf, detail: String },
    #[error("{}: no PEM certificate in it", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{}: not a usable CA certificate: {detail}", path.display())]
    BadCa { path: PathBuf, detail: String },
}

/// Builds and caches the clients of one run.
pub struct Transports {
    resolver: Arc<RootResolver>,
    opts: NetOptions,
    /// The environment's proxies, and the hosts never proxied because the run aliases them.
    proxies: super::proxy::Proxies,
    aliased: Arc<Vec<String>>,
    system_roots: OnceLock<Result<Arc<RootCertStore>, TransportError>>,
    plain: OnceLock<Result<Client, TransportError>>,
    insecure: OnceLock<Result<Client, TransportError>>,
    /// Verified clients: "" for the system roots alone, else the certs.d directory used.
    verified: Mutex<HashMap<PathBuf, Client>>,
}

impl Transports {
    pub fn options(&self) -> NetOptions {
        self.opts
    }

    pub fn new(resolver: Arc<RootResolver>, opts: NetOptions) -> Transports {
        Transports::with_proxies(resolver, opts, Default::default(), Vec::new())
    }

    /// As [`Transports::new`], through `proxies` except for loopback and `aliased` hosts.
    pub fn with_proxies(
        resolver: Arc<RootResolver>,
        opts: NetOptions,
        proxies: super::proxy::Proxies,
        aliased: Vec<String>,
    ) -> Transports {
        Transports {
            resolver,
            opts,
            proxies,
            aliased: Arc::new(aliased),
            system_roots: OnceLock::new(),
            plain: OnceLock::new(),
            insecure: OnceLock::new(),
            verified: Mutex::new(HashMap::new()),
        }
    }

    fn client(&self, tls: ClientConfig) -> Result<Client, TransportError> {
        let mut b = Client::builder().no_proxy();
        if !self.proxies.is_empty() {
            let (proxies, aliased) = (self.proxies.clone(), self.aliased.clone());
            b = b.proxy(reqwest::Proxy::custom(move |url| {
                proxies.for_url(url, &aliased)
            }));
        }
        b.tls_backend_preconfigured(tls)
            .dns_resolver(ReqwestResolver(self.resolver.clone()))
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(self.opts.connect_timeout)
            .read_timeout(self.opts.read_timeout)
            .http1_only()
            .tcp_nodelay(true)
            .pool_max_idle_per_host(16)
            .user_agent(concat!("kci-pull-agent/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| TransportError::Client(e.to_string()))
    }

    fn tls_with_roots(roots: RootCertStore) -> Result<ClientConfig, TransportError> {
        let mut c = ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TransportError::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_no_client_auth();
        c.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(c)
    }

    /// TLS checked by our [`Verifier`]: any certificate (`pinned` none), or webpki then a
    /// registry's own certificate.
    fn tls_with_verifier(
        p: Arc<CryptoProvider>,
        pinned: Option<Pinned>,
    ) -> Result<ClientConfig, TransportError> {
        let mut c = ClientConfig::builder_with_provider(p.clone())
            .with_safe_default_protocol_versions()
            .map_err(|e| TransportError::Tls(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Verifier {
                provider: p,
                pinned,
            }))
            .with_no_client_auth();
        c.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(c)
    }

    fn system_roots(&self) -> Result<Arc<RootCertStore>, TransportError> {
        self.system_roots
            .get_or_init(|| {
                let found = rustls_native_certs::load_native_certs();
                let mut roots = RootCertStore::empty();
                let (added, _ignored) = roots.add_parsable_certificates(found.certs);
                if added == 0 {
                    tracing::warn!(
                        errors = ?found.errors,
                        "no system CA certificates found; only certs.d CAs are trusted"
                    );
                }
                Ok(Arc::new(roots))
            })
            .clone()
    }

    /// Plain HTTP. Its TLS configuration trusts nothing: it is never used for `https://`.
    pub fn plain(&self) -> Result<Client, TransportError> {
        self.plain
            .get_or_init(|| self.client(Self::tls_with_roots(RootCertStore::empty())?))
            .clone()
    }

    /// HTTPS without certificate verification.
    pub fn insecure(&self) -> Result<Client, TransportError> {
        self.insecure
            .get_or_init(|| self.client(Self::tls_with_verifier(provider(), None)?))
            .clone()
    }

    /// Verified HTTPS with the system roots plus the `*.crt` files of `certs_dir` (if any).
    pub fn verified(&self, certs_dir: Option<&Path>) -> Result<Client, TransportError> {
        self.verified_with(certs_dir, &[])
    }

    /// Verified HTTPS with the system roots, the `*.crt` files of `certs_dir` and `ca_files`.
    pub fn verified_with(
        &self,
        certs_dir: Option<&Path>,
        ca_files: &[PathBuf],
    ) -> Result<Client, TransportError> {
        let mut extra = match certs_dir {
            Some(dir) => read_ca_dir(dir)?,
            None => Vec::new(),
        };
        for f in ca_files {
            extra.extend(read_ca_file(f)?.into_iter().map(|c| (f.clone(), c)));
        }
        let mut key: Vec<PathBuf> = extra.iter().map(|(p, _)| p.clone()).collect();
        key.dedup();
        let key = key
            .iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join("\n");
        let key = PathBuf::from(key);
        let mut cache = self.verified.lock().expect("poisoned");
        if let Some(c) = cache.get(&key) {
            return Ok(c.clone());
        }
        let mut roots = (*self.system_roots()?).clone();
        let anchors: Vec<CertificateDer<'static>> = extra.iter().map(|(_, c)| c.clone()).collect();
        for (path, cert) in extra {
            roots.add(cert).map_err(|e| TransportError::BadCa {
                path: path.clone(),
                detail: e.to_string(),
            })?;
        }
        let tls = if anchors.is_empty() {
            Self::tls_with_roots(roots)?
        } else {
            // A configured anchor presented by the server itself is accepted as Go and curl
            // accept it (a self-signed CA:TRUE certificate), nothing else more than webpki.
            let p = provider();
            let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
                Arc::new(roots),
                p.clone(),
            )
            .build()
            .map_err(|e| TransportError::Tls(e.to_string()))?;
            Self::tls_with_verifier(p, Some(Pinned { webpki, anchors }))?
        };
        let client = self.client(tls)?;
        cache.insert(key, client.clone());
        Ok(client)
    }

    /// The client for an endpoint, as [`super::endpoints::endpoints`] decided it.
    pub fn for_endpoint(&self, e: &Endpoint) -> Result<Client, TransportError> {
        match e.route.transport {
            Transport::Http => self.plain(),
            Transport::HttpsInsecure => self.insecure(),
            Transport::Https => self.verified_with(e.ca_dir.as_deref(), &e.ca_files),
        }
    }

    /// The client for a host the registry pointed to (a redirect, a token realm), once
    /// [`super::endpoints::onward`] allowed it: verified HTTPS with the system roots only.
    pub fn onward(&self, t: Transport) -> Result<Client, TransportError> {
        match t {
            Transport::Http => self.plain(),
            Transport::HttpsInsecure => self.insecure(),
            Transport::Https => self.verified(None),
        }
    }
}

/// Reads every `*.crt` (PEM, one or more certificates) of a certs.d directory. A missing
/// directory is no CA; an unreadable or malformed file is an error naming it.
fn read_ca_dir(dir: &Path) -> Result<Vec<(PathBuf, CertificateDer<'static>)>, TransportError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(TransportError::Read {
                path: dir.to_path_buf(),
                detail: e.to_string(),
            });
        }
    };
    let mut paths: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "crt"))
        .collect();
    paths.sort();
    let mut out = Vec::new();
    for p in paths {
        out.extend(read_ca_file(&p)?.into_iter().map(|c| (p.clone(), c)));
    }
    Ok(out)
}

/// The PEM certificates of one file; none is an error.
fn read_ca_file(p: &Path) -> Result<Vec<CertificateDer<'static>>, TransportError> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(p)
        .map_err(|e| TransportError::Read {
            path: p.to_path_buf(),
            detail: e.to_string(),
        })?
        .collect::<Result<_, _>>()
        .map_err(|e| TransportError::NotPem {
            path: p.to_path_buf(),
            detail: e.to_string(),
        })?;
    if certs.is_empty() {
        return Err(TransportError::NoCertificate {
            path: p.to_path_buf(),
        });
    }
    Ok(certs)
}
