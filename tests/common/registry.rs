//! Real CNCF distribution registries (`docker-registry serve`) on free loopback ports, with
//! generated certificates, htpasswd and token auth; and a pusher that seeds them.

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// How a registry front is configured. Several fronts may share one storage directory: the
/// tests push through a plain one and pull through the one under test.
#[derive(Default, Clone)]
pub struct Front {
    pub tls: Option<(PathBuf, PathBuf)>,
    pub htpasswd: Option<PathBuf>,
    /// (realm, service, issuer, root certificate bundle)
    pub token: Option<(String, String, String, PathBuf)>,
    /// Pull-through cache of this upstream URL (distribution's proxy mode).
    pub proxy_of: Option<String>,
    /// A fixed port (to restart a registry where clients expect it); default: a free one.
    pub port: Option<u16>,
    /// Listen on [::1] instead of 127.0.0.1.
    pub ipv6: bool,
}

pub struct Registry {
    child: Child,
    ipv6: bool,
    _work: tempfile::TempDir,
    pub port: u16,
    pub storage: PathBuf,
    /// The access log (one line per request, on the registry's stdout).
    pub access_log: PathBuf,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Registry {
    pub fn addr(&self) -> String {
        if self.ipv6 {
            format!("[::1]:{}", self.port)
        } else {
            format!("127.0.0.1:{}", self.port)
        }
    }

    /// Starts `docker-registry serve` on 127.0.0.1 with `front` over `storage`.
    pub fn start(storage: &Path, front: &Front) -> Registry {
        assert!(
            Path::new("/usr/bin/docker-registry").exists(),
            "docker-registry is missing: run scripts/setup.sh (scripts/test.sh does)"
        );
        fs::create_dir_all(storage).unwrap();
        let work_dir = tempfile::Builder::new()
            .prefix("kci-reg")
            .tempdir()
            .unwrap();
        let work = work_dir.path().to_path_buf();
        let port = front.port.unwrap_or_else(free_port);
        let host = if front.ipv6 { "[::1]" } else { "127.0.0.1" };
        let mut cfg = format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: \"{host}:{port}\"\n  secret: kci-test-secret\n",
            storage.display()
        );
        if let Some((cert, key)) = &front.tls {
            cfg.push_str(&format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            ));
        }
        if let Some(up) = &front.proxy_of {
            cfg.push_str(&format!("proxy:\n  remoteurl: {up}\n"));
        }
        if let Some(h) = &front.htpasswd {
            cfg.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: kci-test\n    path: {}\n",
                h.display()
            ));
        }
        if let Some((realm, service, issuer, bundle)) = &front.token {
            cfg.push_str(&format!(
                "auth:\n  token:\n    realm: {realm}\n    service: {service}\n    issuer: {issuer}\n    rootcertbundle: {}\n",
                bundle.display()
            ));
        }
        let cfg_path = work.join("config.yml");
        fs::write(&cfg_path, cfg).unwrap();
        let log = work.join("registry.log");
        let child = Command::new("/usr/bin/docker-registry")
            .arg("serve")
            .arg(&cfg_path)
            .stdout(Stdio::from(fs::File::create(&log).unwrap()))
            .stderr(Stdio::from(
                fs::File::create(work.join("registry.err")).unwrap(),
            ))
            .spawn()
            .expect("start docker-registry");
        let deadline = Instant::now() + Duration::from_secs(15);
        let connect_to = if front.ipv6 { "::1" } else { "127.0.0.1" };
        while TcpStream::connect((connect_to, port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "docker-registry did not start: {}",
                fs::read_to_string(work.join("registry.err")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(30));
        }
        Registry {
            child,
            ipv6: front.ipv6,
            _work: work_dir,
            port,
            storage: storage.to_path_buf(),
            access_log: log,
        }
    }

    /// CPU time (user + system) the registry process has used so far, from `/proc/PID/stat`:
    /// the benchmark charges each pull with what it cost the registry.
    pub fn cpu_time(&self) -> Duration {
        let stat = fs::read_to_string(format!("/proc/{}/stat", self.child.id()))
            .expect("the registry process is gone");
        // Fields after the command name, which is in parentheses and may hold spaces.
        let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15 of the full line: 11 and 12 here.
        let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        Duration::from_micros(ticks * 1_000_000 / hz)
    }

    /// The registry's access log so far.
    pub fn requests(&self) -> String {
        fs::read_to_string(&self.access_log).unwrap_or_default()
    }
}

/// Certificates made at test time with rcgen.
pub struct Pki {
    _tmp: tempfile::TempDir,
    pub dir: PathBuf,
    ca: rcgen::Issuer<'static, rcgen::KeyPair>,
    pub ca_pem: String,
}

impl Pki {
    pub fn new() -> Pki {
        let tmp = tempfile::Builder::new()
            .prefix("kci-pki")
            .tempdir()
            .unwrap();
        let dir = tmp.path().to_path_buf();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "kci test CA");
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).unwrap();
        let ca_pem = cert.pem();
        fs::write(dir.join("ca.pem"), &ca_pem).unwrap();
        Pki {
            _tmp: tmp,
            dir,
            ca: rcgen::Issuer::new(params, key),
            ca_pem,
        }
    }

    /// A leaf signed by the CA for `names` (DNS names or IP addresses); returns (cert, key).
    pub fn leaf(&self, stem: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.signed_by(&key, &self.ca).unwrap();
        self.write_pair(stem, &cert, &key)
    }

    fn write_pair(
        &self,
        stem: &str,
        cert: &rcgen::Certificate,
        key: &rcgen::KeyPair,
    ) -> (PathBuf, PathBuf) {
        let (c, k) = (
            self.dir.join(format!("{stem}.pem")),
            self.dir.join(format!("{stem}.key")),
        );
        fs::write(&c, cert.pem()).unwrap();
        fs::write(&k, key.serialize_pem()).unwrap();
        (c, k)
    }

    /// A self-signed leaf (CA:FALSE) for `names`; returns (cert, key).
    pub fn self_signed(&self, stem: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params =
            rcgen::CertificateParams::new(names.iter().map(|s| s.to_string()).collect::<Vec<_>>())
                .unwrap();
        let cert = params.self_signed(&key).unwrap();
        self.write_pair(stem, &cert, &key)
    }
}

/// A bcrypt htpasswd file made with `htpasswd -B` (apache2-utils, installed by setup.sh).
pub fn htpasswd(dir: &Path, user: &str, pass: &str) -> PathBuf {
    let out = Command::new("htpasswd")
        .args(["-Bbn", user, pass])
        .output()
        .expect("htpasswd (apache2-utils) is missing: run scripts/setup.sh");
    assert!(out.status.success());
    let p = dir.join("htpasswd");
    fs::write(&p, out.stdout).unwrap();
    p
}
