//! A Docker-style token server for the registry tests: it issues the JWTs that Docker Hub,
//! GHCR and every `auth: token` registry use (ES256, signed by a key whose self-signed
//! certificate the registry trusts via `rootcertbundle`), after checking HTTP basic
//! credentials. The registry verifies them itself; the client does the real token dance.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use base64::Engine;

pub const ISSUER: &str = "skiff-test-issuer";
pub const SERVICE: &str = "skiff-test-registry";

pub struct TokenServer {
    /// http://127.0.0.1:PORT/token
    pub realm: String,
    /// PEM certificate for the registry's rootcertbundle.
    pub cert_pem: PathBuf,
    /// Tokens issued so far.
    pub issued: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

impl TokenServer {
    /// Serves tokens to `user`/`password` for any repository they ask about.
    pub fn start(dir: &Path, user: &str, password: &str) -> TokenServer {
        std::fs::create_dir_all(dir).unwrap();
        let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(vec![ISSUER.to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let cert_pem = dir.join("token-cert.pem");
        std::fs::write(&cert_pem, cert.pem()).unwrap();
        let rng = ring::rand::SystemRandom::new();
        let signer = ring::signature::EcdsaKeyPair::from_pkcs8(
            &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            &key.serialize_der(),
            &rng,
        )
        .unwrap();
        let x5c = base64::engine::general_purpose::STANDARD.encode(cert.der());
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let realm = format!("http://{}/token", listener.local_addr().unwrap());
        let expected = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        );
        let issued = Arc::new(AtomicUsize::new(0));
        let stop = Arc::new(AtomicBool::new(false));
        let (issued2, stop2) = (issued.clone(), stop.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                if stop2.load(Ordering::Relaxed) {
                    return;
                }
                let Ok(mut conn) = conn else { continue };
                let mut reader = BufReader::new(conn.try_clone().unwrap());
                let mut request_line = String::new();
                if reader.read_line(&mut request_line).is_err() {
                    continue;
                }
                let mut authorization = String::new();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some((k, v)) = line.split_once(':') {
                        if k.eq_ignore_ascii_case("authorization") {
                            authorization = v.trim().to_string();
                        }
                    }
                }
                let target = request_line.split(' ').nth(1).unwrap_or_default();
                let query = target.split_once('?').map(|(_, q)| q).unwrap_or_default();
                let scope = query
                    .split('&')
                    .find_map(|kv| kv.strip_prefix("scope="))
                    .map(|s| {
                        s.replace("%3A", ":")
                            .replace("%2F", "/")
                            .replace("%2C", ",")
                    })
                    .unwrap_or_default();
                if authorization != expected {
                    let body =
                        r#"{"errors":[{"code":"UNAUTHORIZED","message":"bad credentials"}]}"#;
                    let _ = write!(
                        conn,
                        "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    continue;
                }
                // scope = repository:NAME:ACTIONS
                let mut parts = scope.splitn(3, ':');
                let (kind, name, actions) = (
                    parts.next().unwrap_or_default(),
                    parts.next().unwrap_or_default(),
                    parts.next().unwrap_or_default(),
                );
                let now = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    .as_secs();
                let header = serde_json::json!({"typ": "JWT", "alg": "ES256", "x5c": [x5c]});
                let claims = serde_json::json!({
                    "iss": ISSUER, "sub": "test-user", "aud": SERVICE,
                    "exp": now + 300, "nbf": now - 10, "iat": now,
                    "jti": format!("t{}", issued2.fetch_add(1, Ordering::Relaxed)),
                    "access": [{"type": kind, "name": name,
                        "actions": actions.split(',').filter(|a| !a.is_empty()).collect::<Vec<_>>()}],
                });
                let signing_input = format!(
                    "{}.{}",
                    b64url(&serde_json::to_vec(&header).unwrap()),
                    b64url(&serde_json::to_vec(&claims).unwrap())
                );
                let sig = signer.sign(&rng, signing_input.as_bytes()).unwrap();
                let token = format!("{signing_input}.{}", b64url(sig.as_ref()));
                let body = serde_json::json!({"token": token, "access_token": token,
                    "expires_in": 300})
                .to_string();
                let _ = write!(
                    conn,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
            }
        });
        TokenServer {
            realm,
            cert_pem,
            issued,
            stop,
        }
    }

    /// The registry config section that makes a registry trust this server's tokens.
    pub fn registry_auth_config(&self) -> String {
        format!(
            "auth:\n  token:\n    realm: {}\n    service: {SERVICE}\n    issuer: {ISSUER}\n    rootcertbundle: {}\n",
            self.realm,
            self.cert_pem.display()
        )
    }

    pub fn tokens_issued(&self) -> usize {
        self.issued.load(Ordering::Relaxed)
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so the thread ends.
        let _ = std::net::TcpStream::connect(
            self.realm
                .trim_start_matches("http://")
                .trim_end_matches("/token"),
        );
    }
}
