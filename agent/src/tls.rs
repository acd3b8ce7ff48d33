//! The agent's side of cluster TLS: `skiff agent --join` trades a one-time join token and a
//! certificate signing request for a node certificate — the private key is made here and
//! never leaves — and every later connection presents that certificate (mutual TLS).
//! Files: `<data>/pki/ca.crt`, `node.crt`, `node.key` (0600).

use std::path::{Path, PathBuf};

use base64::Engine;
use skiff_proto::v1 as pb;
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

const PREFIX: &str = "skiffjoin:";

fn pki(data_dir: &Path) -> PathBuf {
    data_dir.join("pki")
}

/// Whether this agent already holds a node certificate.
pub fn joined(data_dir: &Path) -> bool {
    pki(data_dir).join("node.crt").exists()
}

/// TLS settings for connections to the controller: the cluster CA, and the node certificate
/// once the agent has one. None without a CA (a plaintext controller).
pub fn client_config(data_dir: &Path) -> Option<ClientTlsConfig> {
    let dir = pki(data_dir);
    let ca = std::fs::read_to_string(dir.join("ca.crt")).ok()?;
    let mut cfg = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
    if let (Ok(cert), Ok(key)) = (
        std::fs::read_to_string(dir.join("node.crt")),
        std::fs::read_to_string(dir.join("node.key")),
    ) {
        cfg = cfg.identity(Identity::from_pem(cert, key));
    }
    Some(cfg)
}

fn write_private(path: &Path, data: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(data.as_bytes())?;
    f.sync_all()
}

/// Joins the cluster: verifies the controller against the CA in the join string, sends a CSR
/// for a key made here, and stores the node certificate it gets back.
pub async fn join(
    controller: &str,
    data_dir: &Path,
    node_id: &str,
    join: &str,
) -> Result<(), String> {
    let bad = || {
        "--join: not a join string (skiff tokens create --role join prints one: skiffjoin:…)"
            .to_string()
    };
    let rest = join.trim().strip_prefix(PREFIX).ok_or_else(bad)?;
    let (token, ca_b64) = rest.rsplit_once(':').ok_or_else(bad)?;
    let ca_pem = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(ca_b64)
        .ok()
        .and_then(|b| String::from_utf8(b).ok())
        .ok_or_else(bad)?;
    if !controller.starts_with("https://") {
        return Err(format!(
            "--controller: {controller} is not https://; a TLS controller is needed to join"
        ));
    }
    let key = rcgen::KeyPair::generate().map_err(|e| format!("making the node key: {e}"))?;
    let csr = rcgen::CertificateParams::new(Vec::<String>::new())
        .and_then(|p| p.serialize_request(&key))
        .and_then(|r| r.pem())
        .map_err(|e| format!("making the CSR: {e}"))?;
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&ca_pem));
    let channel = crate::connection::endpoint(controller, Some(&tls))
        .map_err(|e| format!("--controller: {e}"))?
        .connect()
        .await
        .map_err(|e| {
            format!(
                "connecting to {controller}: {}",
                crate::images::error_chain(&e)
            )
        })?;
    let resp = pb::agent_channel_client::AgentChannelClient::new(channel)
        .join(pb::JoinRequest {
            token: token.to_string(),
            node_id: node_id.to_string(),
            csr_pem: csr,
        })
        .await
        .map_err(|s| format!("joining: {}", s.message()))?
        .into_inner();
    let dir = pki(data_dir);
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let io = |p: &Path, e: std::io::Error| format!("{}: {e}", p.display());
    let (ca, crt, k) = (
        dir.join("ca.crt"),
        dir.join("node.crt"),
        dir.join("node.key"),
    );
    write_private(&k, &key.serialize_pem()).map_err(|e| io(&k, e))?;
    write_private(&ca, &resp.ca_pem).map_err(|e| io(&ca, e))?;
    // Last: its presence means "joined".
    write_private(&crt, &resp.cert_pem).map_err(|e| io(&crt, e))?;
    Ok(())
}
