//! A real OCI registry for the tests: Debian's `docker-registry` (CNCF distribution), started
//! on a free 127.0.0.1 port with its own storage, optionally behind htpasswd basic auth, and a
//! pusher that uploads images the tests build (through oci-client, as any registry client).

use std::fs;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use sha2::{Digest, Sha256};

use crate::wait_for;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";

pub struct Registry {
    child: Child,
    /// HOST:PORT.
    pub addr: String,
    pub root: PathBuf,
    log: PathBuf,
    pub auth: Option<(String, String)>,
}

/// A port nothing listens on now (for a test server to take).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// One image to push: gzipped layer tars (lowest first) and its config JSON.
pub struct TestImage {
    pub layers: Vec<Vec<u8>>,
    pub config: serde_json::Value,
}

impl TestImage {
    /// An image config for linux/`arch` with the given process settings.
    pub fn config(arch: &str, cmd: &[&str], env: &[&str], layers: &[Vec<u8>]) -> serde_json::Value {
        let diff_ids: Vec<String> = layers
            .iter()
            .map(|l| {
                let mut raw = Vec::new();
                flate2::read::GzDecoder::new(&l[..])
                    .read_to_end(&mut raw)
                    .unwrap();
                sha256(&raw)
            })
            .collect();
        serde_json::json!({
            "architecture": arch, "os": "linux",
            "config": {"Cmd": cmd, "Env": env},
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        })
    }

    /// The image's manifest bytes.
    pub fn manifest(&self) -> Vec<u8> {
        let config = serde_json::to_vec(&self.config).unwrap();
        let layers: Vec<serde_json::Value> = self
            .layers
            .iter()
            .map(|l| {
                serde_json::json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": sha256(l), "size": l.len()})
            })
            .collect();
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": sha256(&config), "size": config.len()},
            "layers": layers,
        }))
        .unwrap()
    }
}

impl Registry {
    /// Starts a registry storing under `dir`; with `auth`, every request needs that user
    /// (htpasswd basic auth).
    pub fn start(dir: &Path, auth: Option<(&str, &str)>) -> Registry {
        Self::start_with(dir, auth, None)
    }

    /// Starts a registry that accepts only tokens from `tokens` (Docker's token auth); the
    /// pusher gets them with `auth`.
    pub fn start_with_tokens(
        dir: &Path,
        auth: (&str, &str),
        tokens: &crate::token_server::TokenServer,
    ) -> Registry {
        Self::start_with(dir, Some(auth), Some(tokens.registry_auth_config()))
    }

    fn start_with(dir: &Path, auth: Option<(&str, &str)>, token_cfg: Option<String>) -> Registry {
        let root = dir.join("storage");
        fs::create_dir_all(&root).unwrap();
        let port = free_port();
        let addr = format!("127.0.0.1:{port}");
        let auth_cfg = match (auth, token_cfg) {
            (_, Some(cfg)) => cfg,
            (Some((user, pass)), None) => {
                let hash = bcrypt::hash(pass, 4).unwrap();
                let htpasswd = dir.join("htpasswd");
                fs::write(&htpasswd, format!("{user}:{hash}\n")).unwrap();
                format!(
                    "auth:\n  htpasswd:\n    realm: skiff-test\n    path: {}\n",
                    htpasswd.display()
                )
            }
            (None, None) => String::new(),
        };
        let config = dir.join("config.yml");
        fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: info\n  accesslog:\n    disabled: false\n\
                 storage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\n\
                 http:\n  addr: {addr}\n{auth_cfg}",
                root.display()
            ),
        )
        .unwrap();
        let log = dir.join("registry.log");
        let out = fs::File::create(&log).unwrap();
        let child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("docker-registry (Debian's package, installed by scripts/test)");
        let reg = Registry {
            child,
            addr,
            root,
            log,
            auth: auth.map(|(u, p)| (u.to_string(), p.to_string())),
        };
        wait_for("the registry to answer", Duration::from_secs(20), || {
            reg.get_status("/v2/").filter(|s| *s == 200 || *s == 401)
        });
        reg
    }

    /// The HTTP status of a GET, or None if the registry is not answering yet.
    fn get_status(&self, path: &str) -> Option<u16> {
        let mut s = TcpStream::connect(&self.addr).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: {}\r\n\r\n", self.addr).ok()?;
        let mut head = [0u8; 12];
        s.read_exact(&mut head).ok()?;
        std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
    }

    fn client(&self) -> Client {
        // skiff links ring as its only crypto stack; reqwest panics without a provider set.
        let _ = rustls::crypto::ring::default_provider().install_default();
        Client::new(ClientConfig {
            protocol: ClientProtocol::Http,
            ..Default::default()
        })
    }

    /// A client authorised to push to `reference`'s repository.
    async fn push_client(&self, reference: &Reference) -> Client {
        let client = self.client();
        client
            .auth(reference, &self.auth(), RegistryOperation::Push)
            .await
            .unwrap();
        client
    }

    fn auth(&self) -> RegistryAuth {
        match &self.auth {
            Some((u, p)) => RegistryAuth::Basic(u.clone(), p.clone()),
            None => RegistryAuth::Anonymous,
        }
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    /// Pushes `image` as `repo:tag`; returns the manifest digest.
    pub fn push(&self, repo: &str, tag: &str, image: &TestImage) -> String {
        let manifest = image.manifest();
        let config = serde_json::to_vec(&image.config).unwrap();
        let reference: Reference = format!("{}/{repo}:{tag}", self.addr).parse().unwrap();
        Self::runtime().block_on(async {
            let client = self.push_client(&reference).await;
            for layer in &image.layers {
                client
                    .push_blob(&reference, layer.clone(), &sha256(layer))
                    .await
                    .unwrap();
            }
            client
                .push_blob(&reference, config.clone(), &sha256(&config))
                .await
                .unwrap();
            client
                .push_manifest_raw(
                    &reference,
                    manifest.clone(),
                    http::HeaderValue::from_static(OCI_MANIFEST),
                )
                .await
                .unwrap();
        });
        sha256(&manifest)
    }

    /// Pushes an index `repo:tag` over already-pushed manifests, one per (arch, image).
    pub fn push_index(&self, repo: &str, tag: &str, entries: &[(&str, &TestImage)]) -> String {
        let manifests: Vec<serde_json::Value> = entries
            .iter()
            .map(|(arch, img)| {
                let m = img.manifest();
                serde_json::json!({"mediaType": OCI_MANIFEST, "digest": sha256(&m), "size": m.len(),
                    "platform": {"architecture": arch, "os": "linux"}})
            })
            .collect();
        let index = serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests,
        }))
        .unwrap();
        let reference: Reference = format!("{}/{repo}:{tag}", self.addr).parse().unwrap();
        Self::runtime().block_on(async {
            self.push_client(&reference)
                .await
                .push_manifest_raw(
                    &reference,
                    index.clone(),
                    http::HeaderValue::from_static(OCI_INDEX),
                )
                .await
                .unwrap();
        });
        sha256(&index)
    }

    /// How many times a client fetched the blob `digest` (from the registry's access log).
    pub fn blob_fetches(&self, digest: &str) -> usize {
        let needle = format!("/blobs/{digest} ");
        fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("\"GET ") && l.contains(&needle) && l.contains("\" 20"))
            .count()
    }

    /// How many of those fetches were range requests answered 206 (a resumed download).
    pub fn blob_range_fetches(&self, digest: &str) -> usize {
        let needle = format!("/blobs/{digest} ");
        fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains("\"GET ") && l.contains(&needle) && l.contains("\" 206 "))
            .count()
    }

    /// Overwrites a stored blob with other bytes, as disk corruption or tampering would.
    pub fn corrupt_blob(&self, digest: &str) {
        let hex = digest.trim_start_matches("sha256:");
        let data = self
            .root
            .join("docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data");
        let mut bytes = fs::read(&data).unwrap();
        let n = bytes.len();
        bytes[n / 2] ^= 0xff;
        fs::write(&data, bytes).unwrap();
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
