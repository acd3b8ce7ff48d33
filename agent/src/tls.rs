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

/// The cluster CA certificate (PEM), once the agent has joined a TLS controller.
pub fn ca_pem(data_dir: &Path) -> Option<Vec<u8>> {
    std::fs::read(pki(data_dir).join("ca.crt")).ok()
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
    let csr = csr_for(&key)?;
    let tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(&ca_pem));
    let channel = endpoint(controller, Some(&tls))
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
    let ca = dir.join("ca.crt");
    write_private(&ca, &resp.ca_pem).map_err(|e| format!("{}: {e}", ca.display()))?;
    store_node_cert(data_dir, &key, &resp)
}

/// Writes a node key + certificate and when it was issued / expires. New names first, then
/// renames, the certificate last (its presence means "joined"): a crash leaves the old pair
/// or the new one.
fn store_node_cert(
    data_dir: &Path,
    key: &rcgen::KeyPair,
    resp: &pb::JoinResponse,
) -> Result<(), String> {
    let dir = pki(data_dir);
    let io = |p: &Path, e: std::io::Error| format!("{}: {e}", p.display());
    let (crt, k, meta) = (
        dir.join("node.crt"),
        dir.join("node.key"),
        dir.join("node.meta"),
    );
    let tmp = |p: &Path| {
        let mut s = p.as_os_str().to_owned();
        s.push(".new");
        PathBuf::from(s)
    };
    write_private(&tmp(&k), &key.serialize_pem()).map_err(|e| io(&k, e))?;
    write_private(&tmp(&crt), &resp.cert_pem).map_err(|e| io(&crt, e))?;
    let times = format!("{} {}", resp.issued_ms, resp.expires_ms);
    write_private(&tmp(&meta), &times).map_err(|e| io(&meta, e))?;
    for p in [&k, &meta, &crt] {
        std::fs::rename(tmp(p), p).map_err(|e| io(p, e))?;
    }
    Ok(())
}

fn csr_for(key: &rcgen::KeyPair) -> Result<String, String> {
    rcgen::CertificateParams::new(Vec::<String>::new())
        .and_then(|p| p.serialize_request(key))
        .and_then(|r| r.pem())
        .map_err(|e| format!("making the CSR: {e}"))
}

/// When the current node certificate should be renewed: after two thirds of its life.
pub fn renew_at_ms(data_dir: &Path) -> Option<i64> {
    let text = std::fs::read_to_string(pki(data_dir).join("node.meta")).ok()?;
    let mut f = text.split_whitespace().map(|v| v.parse::<i64>().ok());
    let (issued, expires) = (f.next()??, f.next()??);
    Some(issued + (expires - issued) * 2 / 3)
}

/// Renews the node certificate with a new key, authenticated by the current certificate.
pub async fn renew(
    controller: &str,
    data_dir: &Path,
    current: &ClientTlsConfig,
) -> Result<ClientTlsConfig, String> {
    let key = rcgen::KeyPair::generate().map_err(|e| format!("making the node key: {e}"))?;
    let csr = csr_for(&key)?;
    let channel = endpoint(controller, Some(current))
        .map_err(|e| format!("--controller: {e}"))?
        .connect()
        .await
        .map_err(|e| format!("connecting to {controller}: {e}"))?;
    let resp = pb::agent_channel_client::AgentChannelClient::new(channel)
        .renew(pb::RenewRequest { csr_pem: csr })
        .await
        .map_err(|s| format!("renewing: {}", s.message()))?
        .into_inner();
    store_node_cert(data_dir, &key, &resp)?;
    client_config(data_dir).ok_or_else(|| "the renewed certificate is unreadable".into())
}

/// How the agent reaches the controller (with TLS for an https:// controller). HTTP/2 pings
/// every 2 s, unanswered for 4 s, end a connection that a cut cable left open: TCP would keep
/// retransmitting into it for minutes, and after the cable is back its backed-off timer can
/// hold the next heartbeat past the node timeout. A new connection goes through at once.
/// A client of the agent channel on a connection of its own (not the session's): what logs
/// and execs stream on, so their data never holds up the task reports.
pub async fn own_connection(
    controller: &str,
    tls: Option<&tonic::transport::ClientTlsConfig>,
) -> Result<
    skiff_proto::v1::agent_channel_client::AgentChannelClient<tonic::transport::Channel>,
    tonic::transport::Error,
> {
    let channel = endpoint(controller, tls)?.connect().await?;
    Ok(skiff_proto::v1::agent_channel_client::AgentChannelClient::new(channel))
}

pub fn endpoint(
    controller: &str,
    tls: Option<&tonic::transport::ClientTlsConfig>,
) -> Result<tonic::transport::Endpoint, tonic::transport::Error> {
    let mut e = tonic::transport::Endpoint::from_shared(controller.to_string())?
        .connect_timeout(std::time::Duration::from_secs(5))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(std::time::Duration::from_secs(2))
        .keep_alive_timeout(std::time::Duration::from_secs(4))
        .keep_alive_while_idle(true);
    if let (true, Some(tls)) = (controller.starts_with("https://"), tls) {
        e = e.tls_config(tls.clone())?;
    }
    Ok(e)
}
