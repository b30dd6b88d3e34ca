//! A tiny token server for distribution's `auth.token`: checks Basic credentials and issues
//! ES256 JWTs whose `x5c` certificate is the one in the registry's `rootcertbundle`.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};

pub struct TokenServer {
    _tmp: tempfile::TempDir,
    pub port: u16,
    pub bundle: PathBuf,
    pub issued: Arc<AtomicUsize>,
    pub refused: Arc<AtomicUsize>,
}

pub const ISSUER: &str = "kci-test-issuer";
pub const SERVICE: &str = "kci-test-registry";

impl TokenServer {
    pub fn realm(&self) -> String {
        format!("http://127.0.0.1:{}/token", self.port)
    }

    /// Serves tokens to `user:pass` (and refuses everybody else) until the process ends.
    pub fn start(user: &str, pass: &str) -> TokenServer {
        let tmp = tempfile::Builder::new()
            .prefix("kci-token")
            .tempdir()
            .unwrap();
        let dir = tmp.path().to_path_buf();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "kci token signer");
        let cert = params.self_signed(&key).unwrap();
        let bundle = dir.join("token-bundle.pem");
        std::fs::write(&bundle, cert.pem()).unwrap();
        let x5c = STANDARD.encode(cert.der().as_ref());
        let rng = ring::rand::SystemRandom::new();
        let signer = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &key.serialize_der(),
            &rng,
        )
        .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let issued = Arc::new(AtomicUsize::new(0));
        let refused = Arc::new(AtomicUsize::new(0));
        let (i2, r2) = (issued.clone(), refused.clone());
        let want = format!("Basic {}", STANDARD.encode(format!("{user}:{pass}")));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut request_line = String::new();
                if reader.read_line(&mut request_line).is_err() {
                    continue;
                }
                let mut authorization = None;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some((k, v)) = line.split_once(':')
                        && k.eq_ignore_ascii_case("authorization")
                    {
                        authorization = Some(v.trim().to_string());
                    }
                }
                let target = request_line.split_whitespace().nth(1).unwrap_or("");
                let query = target.split_once('?').map(|(_, q)| q).unwrap_or("");
                let scope = query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("scope="))
                    .map(|s| s.replace("%3A", ":").replace("%2F", "/"))
                    .unwrap_or_default();
                let repo = scope
                    .strip_prefix("repository:")
                    .and_then(|s| s.rsplit_once(':'))
                    .map(|(name, _)| name.to_string())
                    .unwrap_or_default();
                let response = if authorization.as_deref() == Some(want.as_str()) {
                    i2.fetch_add(1, Ordering::SeqCst);
                    let now = std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .unwrap()
                        .as_secs();
                    let header = serde_json::json!({"typ": "JWT", "alg": "ES256", "x5c": [x5c]});
                    let claims = serde_json::json!({
                        "iss": ISSUER, "sub": "kci", "aud": SERVICE,
                        "exp": now + 600, "nbf": now - 10, "iat": now, "jti": format!("{now}-{port}"),
                        "access": [{"type": "repository", "name": repo, "actions": ["pull"]}],
                    });
                    let signing_input = format!(
                        "{}.{}",
                        URL_SAFE_NO_PAD.encode(header.to_string()),
                        URL_SAFE_NO_PAD.encode(claims.to_string())
                    );
                    let sig = signer.sign(&rng, signing_input.as_bytes()).unwrap();
                    let token = format!("{signing_input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref()));
                    let body = serde_json::json!({"token": token, "expires_in": 600}).to_string();
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                } else {
                    r2.fetch_add(1, Ordering::SeqCst);
                    let body = r#"{"errors":[{"code":"UNAUTHORIZED"}]}"#;
                    format!(
                        "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    )
                };
                let _ = stream.write_all(response.as_bytes());
            }
        });
        TokenServer {
            _tmp: tmp,
            port,
            bundle,
            issued,
            refused,
        }
    }
}
