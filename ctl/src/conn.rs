//! The connection to the controller: its address in one spelling, the API token (and where
//! it came from), the cluster CA for https, and errors a person can act on.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use tonic::transport::Channel;

/// A connection to the controller that sends the caller's API token with every call.
pub type Conn = tonic::service::interceptor::InterceptedService<Channel, BearerToken>;

/// Adds `authorization: Bearer TOKEN` to each request.
#[derive(Clone)]
pub struct BearerToken(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for BearerToken {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// Where the CLI keeps tokens: `$XDG_CONFIG_HOME/skiff` or `~/.config/skiff`.
pub fn config_dir() -> Option<PathBuf> {
    std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .map(|d| d.join("skiff"))
}

/// The controller address in one spelling: scheme required (http or https), no trailing
/// `/`, host in lower case and `localhost` as 127.0.0.1, so `http://localhost:7400/` finds
/// the token `skiff dev` wrote for `http://127.0.0.1:7400`.
pub fn canonical_addr(addr: &str) -> anyhow::Result<String> {
    let trimmed = addr.trim().trim_end_matches('/');
    let Some((scheme, rest)) = trimmed.split_once("://") else {
        anyhow::bail!(
            "--addr/SKIFF_ADDR: {addr:?} has no scheme; did you mean http://{trimmed} (or https:// for a TLS controller)?"
        );
    };
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        anyhow::bail!("--addr/SKIFF_ADDR: {addr:?}: the scheme must be http:// or https://");
    }
    if rest.is_empty() || rest.contains('/') {
        anyhow::bail!(
            "--addr/SKIFF_ADDR: {addr:?} is not an address like http://127.0.0.1:7400 (no path)"
        );
    }
    let host_port = rest.to_ascii_lowercase();
    let host_port = match host_port.strip_prefix("localhost") {
        Some(port) if port.is_empty() || port.starts_with(':') => format!("127.0.0.1{port}"),
        _ => host_port,
    };
    Ok(format!("{scheme}://{host_port}"))
}

/// The token file for one controller address (`skiff dev` writes its admin token there).
pub fn token_file_for(addr: &str) -> Option<PathBuf> {
    let addr = canonical_addr(addr).unwrap_or_else(|_| addr.to_string());
    let key: String = addr
        .trim_start_matches("http://")
        .trim_start_matches("https://")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    config_dir().map(|d| d.join("tokens").join(key))
}

/// The CA certificate file the CLI trusts for an https:// controller: `SKIFF_CA_FILE`, else
/// `<config dir>/cas/<address>.crt`, else `<config dir>/ca.crt`.
pub fn ca_file_for(addr: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SKIFF_CA_FILE") {
        return Some(PathBuf::from(p));
    }
    let per_addr = token_file_for(addr).and_then(|t| {
        let name = t.file_name()?.to_string_lossy().into_owned();
        Some(
            t.parent()?
                .parent()?
                .join("cas")
                .join(format!("{name}.crt")),
        )
    });
    [per_addr, config_dir().map(|d| d.join("ca.crt"))]
        .into_iter()
        .flatten()
        .find(|p| p.exists())
}

/// Where this process's API token came from (or where it was looked for), for an
/// "not authenticated" answer to name.
static TOKEN_ORIGIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// The API token to use: `SKIFF_TOKEN`, else a task's `SKIFF_TASK_TOKEN`, else the token
/// file for this address, else `<config dir>/token`. Also says where it came from, or where
/// it was looked for.
fn token_for(addr: &str) -> (Option<String>, String) {
    for var in ["SKIFF_TOKEN", "SKIFF_TASK_TOKEN"] {
        if let Ok(t) = std::env::var(var) {
            return (Some(t.trim().to_string()), format!("the token in {var}"));
        }
    }
    let candidates: Vec<PathBuf> = [token_file_for(addr), config_dir().map(|d| d.join("token"))]
        .into_iter()
        .flatten()
        .collect();
    for p in &candidates {
        if let Ok(t) = std::fs::read_to_string(p) {
            return (
                Some(t.trim().to_string()),
                format!("the token in {}", p.display()),
            );
        }
    }
    let looked = candidates
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(" or ");
    (
        None,
        format!("no API token: SKIFF_TOKEN is not set and there is no {looked} (`skiff dev` writes the first for its address; a controller writes <data dir>/admin.token)"),
    )
}

pub async fn connect(addr: &str) -> anyhow::Result<Conn> {
    let addr = &canonical_addr(addr)?;
    let endpoint = tonic::transport::Endpoint::from_shared(addr.to_string())
        .with_context(|| format!("--addr: {addr:?} is not a URL like http://127.0.0.1:7400"))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true)
        // A controller gone without a word (a cut link, a host powered off) answers no ping:
        // the call fails after 15 s unanswered instead of hanging (long waits and follows
        // keep going while it answers).
        .http2_keep_alive_interval(Duration::from_secs(5))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    let (token, origin) = token_for(addr);
    let _ = TOKEN_ORIGIN.set(origin);
    let token = match token {
        Some(t) => Some(
            format!("Bearer {t}")
                .parse()
                .context("the API token (SKIFF_TOKEN or token file) is not valid text")?,
        ),
        None => None,
    };
    let endpoint = if addr.starts_with("https://") {
        let ca_file = ca_file_for(addr).with_context(|| {
            format!("{addr} is https: give the cluster CA certificate (SKIFF_CA_FILE)")
        })?;
        let ca = std::fs::read_to_string(&ca_file)
            .with_context(|| format!("reading the CA certificate {}", ca_file.display()))?;
        endpoint
            .tls_config(
                tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(ca)),
            )
            .context("TLS settings")?
    } else {
        endpoint
    };
    let channel = endpoint.connect().await.with_context(|| {
        format!(
            "cannot reach the skiff controller at {addr} (is it running? set --addr or SKIFF_ADDR)"
        )
    })?;
    Ok(tonic::service::interceptor::InterceptedService::new(
        channel,
        BearerToken(token),
    ))
}

/// Turns an API error into a message a person can act on.
pub fn api_error(s: tonic::Status) -> anyhow::Error {
    use tonic::Code::*;
    let kind = match s.code() {
        InvalidArgument => "invalid input",
        NotFound => "not found",
        FailedPrecondition => "not possible now",
        Unavailable => "unavailable",
        PermissionDenied => "permission denied",
        Unauthenticated => "not authenticated",
        Unimplemented => "not supported by this controller (older version?)",
        _ => "error",
    };
    match (s.code(), TOKEN_ORIGIN.get()) {
        (Unauthenticated, Some(origin)) => {
            anyhow::anyhow!("{kind}: {} ({origin})", s.message())
        }
        // The keepalive gave up (or the connection broke mid-call): say what that means.
        (Unavailable, _) if s.message().contains("http2 error") => anyhow::anyhow!(
            "{kind}: the controller stopped answering (no reply to pings for 10 s, or the connection broke): {}",
            s.message()
        ),
        _ => anyhow::anyhow!("{kind}: {}", s.message()),
    }
}
