//! skiff's API for tasks on the bridge: TCP relays at 169.254.170.2 to the controller — its
//! gRPC API on port 7400 (`SKIFF_ENDPOINT`) and its HTTP listener on port 7480
//! (`SKIFF_HTTP_ENDPOINT`: the SQS JSON protocol, notifications) — so that a task with a role
//! calls the API with its `SKIFF_TASK_TOKEN` wherever the controller runs, on the node's
//! loopback (`skiff dev`) included. Bytes pass as they come, TLS included (a TLS controller's
//! certificate names 169.254.170.2); the controller authenticates and authorizes every call
//! as it does from anywhere, so the relays give a task nothing its token does not.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info};

use crate::network::TASK_ENDPOINT;

/// Where bridge tasks reach the controller's gRPC API…
pub const API_PORT: u16 = 7400;
/// …and its HTTP listener.
pub const HTTP_PORT: u16 = 7480;

/// The relays' state: the controller's URL (as the agent dials it), its HTTP port (told at
/// each registration) and the bridge they listen on.
pub struct ApiRelay {
    controller: String,
    http_port: Mutex<Option<u16>>,
    serving: tokio::sync::Mutex<Option<String>>,
}

impl ApiRelay {
    pub fn new(controller: String) -> ApiRelay {
        ApiRelay {
            controller,
            http_port: Mutex::new(None),
            serving: tokio::sync::Mutex::new(None),
        }
    }

    /// The controller's HTTP listener port, from its `Registered` (0: it has none).
    pub fn set_http_port(&self, port: u32) {
        *self.http_port.lock().unwrap() = u16::try_from(port).ok().filter(|p| *p != 0);
    }

    pub fn http_port(&self) -> Option<u16> {
        *self.http_port.lock().unwrap()
    }
}

/// The controller's host and port, and whether it speaks TLS, from its URL.
pub fn controller_host(url: &str) -> Option<(String, u16, bool)> {
    let uri: tonic::transport::Uri = url.parse().ok()?;
    let tls = uri.scheme_str() == Some("https");
    let host = uri
        .host()?
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_string();
    let port = uri.port_u16().unwrap_or(if tls { 443 } else { 80 });
    Some((host, port, tls))
}

/// What a task under a role finds in its environment to reach the API: SKIFF_ENDPOINT and,
/// when the controller has an HTTP listener, SKIFF_HTTP_ENDPOINT — at the relays for a
/// bridge task, at the controller itself otherwise.
pub fn environment(relay: &ApiRelay, bridge: bool) -> Vec<(String, String)> {
    let controller = &relay.controller;
    let Some((host, _, tls)) = controller_host(controller) else {
        return vec![("SKIFF_ENDPOINT".into(), controller.clone())];
    };
    let http = relay.http_port();
    let host = if host.contains(':') {
        format!("[{host}]")
    } else {
        host
    };
    let mut env = Vec::new();
    if tls {
        env.push(("SKIFF_CA_FILE".into(), CA_FILE.into()));
    }
    if bridge {
        let scheme = if tls { "https" } else { "http" };
        env.push((
            "SKIFF_ENDPOINT".into(),
            format!("{scheme}://{TASK_ENDPOINT}:{API_PORT}"),
        ));
        if http.is_some() {
            env.push((
                "SKIFF_HTTP_ENDPOINT".into(),
                format!("http://{TASK_ENDPOINT}:{HTTP_PORT}"),
            ));
        }
    } else {
        env.push(("SKIFF_ENDPOINT".into(), controller.clone()));
        if let Some(p) = http {
            env.push(("SKIFF_HTTP_ENDPOINT".into(), format!("http://{host}:{p}")));
        }
    }
    env
}

/// Where a task under a role finds the cluster CA (a TLS controller's): SKIFF_CA_FILE names
/// it, and the `skiff` CLI reads it from there.
pub const CA_FILE: &str = "/run/skiff/ca.crt";

/// Starts both relays on `bridge` unless they run there already.
pub async fn ensure_relaying(relay: &Arc<ApiRelay>, bridge: &str) -> Result<(), String> {
    let mut serving = relay.serving.lock().await;
    if serving.as_deref() == Some(bridge) {
        return Ok(());
    }
    crate::network::add_task_endpoint_address(bridge).await?;
    for (port, http) in [(API_PORT, false), (HTTP_PORT, true)] {
        let listener = listen(bridge, port).map_err(|e| {
            format!("the API relay {TASK_ENDPOINT}:{port} on {bridge} cannot listen: {e}")
        })?;
        tokio::spawn(forward(relay.clone(), listener, http));
    }
    info!(%bridge, "API relays listening on {TASK_ENDPOINT}:{API_PORT} and :{HTTP_PORT} for bridge tasks");
    *serving = Some(bridge.to_string());
    Ok(())
}

fn listen(bridge: &str, port: u16) -> std::io::Result<TcpListener> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind_device(Some(bridge.as_bytes()))?;
    socket.bind(SocketAddr::from((TASK_ENDPOINT, port)))?;
    socket.listen(1024)
}

async fn forward(relay: Arc<ApiRelay>, listener: TcpListener, http: bool) {
    loop {
        let Ok((mut inbound, peer)) = listener.accept().await else {
            continue;
        };
        let relay = relay.clone();
        tokio::spawn(async move {
            let Some((host, api_port, _)) = controller_host(&relay.controller) else {
                return;
            };
            let port = if http {
                match relay.http_port() {
                    Some(p) => p,
                    None => return,
                }
            } else {
                api_port
            };
            match TcpStream::connect((host.as_str(), port)).await {
                Ok(mut outbound) => {
                    let _ = outbound.set_nodelay(true);
                    let _ = inbound.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                }
                Err(e) => {
                    debug!(%peer, error = %e, "the controller did not take a relayed connection")
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_controllers_host_port_and_scheme_come_from_its_url() {
        assert_eq!(
            controller_host("http://127.0.0.1:7400"),
            Some(("127.0.0.1".into(), 7400, false))
        );
        assert_eq!(
            controller_host("https://controller.lan"),
            Some(("controller.lan".into(), 443, true))
        );
        assert_eq!(
            controller_host("https://[fd00::1]:7400"),
            Some(("fd00::1".into(), 7400, true))
        );
        assert_eq!(controller_host("not a url"), None);
    }
}
