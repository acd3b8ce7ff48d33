//! The container-credentials endpoint AWS SDKs already read
//! (`AWS_CONTAINER_CREDENTIALS_FULL_URI` + `AWS_CONTAINER_AUTHORIZATION_TOKEN`), on the node's
//! loopback, for tasks running under a role.
//!
//! Each task's token is `<task id>.<HMAC-SHA256(agent key, task id)>`: the agent can check any
//! token without storing it (so tasks re-adopted after an agent restart keep working), and a
//! task cannot make a token for another task without the agent's key. A token works only while
//! its task runs on this agent, and only from a container of that task (`peer.rs` traces the
//! caller's connection to its cgroup), so a leaked token is useless elsewhere. Credentials come
//! from the controller, which checks again, and are cached here until two thirds of their life
//! are over.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use ring::hmac;
use serde_json::json;
use skiff_proto::v1 as pb;
use tokio::sync::oneshot;
use tracing::{info, warn};

use crate::record::Phase;
use crate::AgentInner;

pub const KEY_FILE: &str = "credentials.key";
/// Where the endpoint's address is kept, so a restarted agent binds the same port: running
/// containers have it in their environment.
pub const ADDR_FILE: &str = "credentials.addr";
pub const CREDENTIALS_PATH: &str = "/v1/credentials";
/// Where tasks on skiff's bridge reach the endpoint, as on ECS: AWS SDKs prefix
/// `AWS_CONTAINER_CREDENTIALS_RELATIVE_URI` with it.
pub use crate::network::TASK_ENDPOINT;
/// The relative URI's path for bridge tasks: followed by the task's token.
pub const RELATIVE_CREDENTIALS_PATH: &str = "/v2/credentials/";
pub const SKIFF_TOKEN_PATH: &str = "/v1/skiff-token";
/// How long to wait for the controller's answer.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(20);

/// The agent's side of the endpoint: its key, what is cached, and who waits for an answer.
pub struct Credentials {
    key: hmac::Key,
    addr: Mutex<Option<SocketAddr>>,
    /// The bridge the 169.254.170.2 listener serves, once it listens.
    bridge_endpoint: tokio::sync::Mutex<Option<String>>,
    cache: Mutex<HashMap<String, Cached>>,
    waiters: Mutex<HashMap<u64, oneshot::Sender<pb::CredentialsReply>>>,
    next_id: std::sync::atomic::AtomicU64,
}

#[derive(Clone)]
struct Cached {
    reply: pb::CredentialsReply,
    fetched_ms: i64,
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Whether credentials fetched at `fetched_ms` and expiring at `expires_ms` are due for
/// renewal at `now`: after two thirds of their life, so SDKs never hold nearly-dead keys.
pub fn needs_refresh(fetched_ms: i64, expires_ms: i64, now: i64) -> bool {
    now >= fetched_ms + (expires_ms - fetched_ms) * 2 / 3
}

impl Credentials {
    /// Loads `<data_dir>/credentials.key`, creating it (32 random bytes, mode 0600) if missing.
    pub fn open(data_dir: &Path) -> std::io::Result<Credentials> {
        let path = data_dir.join(KEY_FILE);
        let bytes = match std::fs::read(&path) {
            Ok(b) if b.len() >= 32 => b,
            Ok(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    format!("{} holds fewer than 32 bytes", path.display()),
                ))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; 32];
                use std::io::{Read, Write};
                use std::os::unix::fs::OpenOptionsExt;
                std::fs::File::open("/dev/urandom")?.read_exact(&mut key)?;
                let mut f = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&path)?;
                f.write_all(&key)?;
                f.sync_all()?;
                key.to_vec()
            }
            Err(e) => return Err(e),
        };
        Ok(Credentials {
            key: hmac::Key::new(hmac::HMAC_SHA256, &bytes),
            addr: Mutex::new(None),
            bridge_endpoint: tokio::sync::Mutex::new(None),
            cache: Mutex::new(HashMap::new()),
            waiters: Mutex::new(HashMap::new()),
            next_id: std::sync::atomic::AtomicU64::new(1),
        })
    }

    /// The token a task's containers present.
    pub fn token(&self, task_id: &str) -> String {
        let tag = hmac::sign(&self.key, task_id.as_bytes());
        format!("{task_id}.{}", hex::encode(tag.as_ref()))
    }

    /// The task a token was made for, if this agent made it.
    pub fn task_of(&self, token: &str) -> Option<String> {
        let (task_id, tag) = token.trim().rsplit_once('.')?;
        let tag = hex::decode(tag).ok()?;
        hmac::verify(&self.key, task_id.as_bytes(), &tag).ok()?;
        Some(task_id.to_string())
    }

    /// The endpoint's address once it listens.
    pub fn addr(&self) -> Option<SocketAddr> {
        *self.addr.lock().unwrap()
    }

    /// The controller's answer to request `id` arrived.
    pub fn answered(&self, reply: pb::CredentialsReply) {
        if let Some(tx) = self.waiters.lock().unwrap().remove(&reply.request_id) {
            let _ = tx.send(reply);
        }
    }

    /// Drops what is cached for a task (it stopped).
    pub fn forget(&self, task_id: &str) {
        self.cache
            .lock()
            .unwrap()
            .retain(|k, _| !k.starts_with(&format!("{task_id}/")));
    }
}

/// The environment a container under a role gets (the endpoint's address included): on the
/// node's loopback for host-network tasks (`FULL_URI` + token), at 169.254.170.2 for tasks on
/// skiff's bridge (`RELATIVE_URI`, where SDKs look by default).
pub fn environment(
    agent: &AgentInner,
    task_id: &str,
    identity: &crate::spec::TaskIdentity,
    bridge: bool,
) -> Result<Vec<(String, String)>, String> {
    let mut env = vec![
        ("SKIFF_TASK_TOKEN".to_string(), identity.skiff_token.clone()),
        ("SKIFF_TASK_ROLE".to_string(), identity.role.clone()),
    ];
    env.extend(crate::apirelay::environment(&agent.relay, bridge));
    let token = agent.credentials.token(task_id);
    let base = if bridge {
        format!("http://{TASK_ENDPOINT}")
    } else {
        let addr = agent
            .credentials
            .addr()
            .ok_or("the credentials endpoint is not running on this node")?;
        format!("http://{addr}")
    };
    env.push((
        "SKIFF_TASK_TOKEN_URI".into(),
        format!("{base}{SKIFF_TOKEN_PATH}"),
    ));
    env.push(("AWS_CONTAINER_AUTHORIZATION_TOKEN".into(), token.clone()));
    if identity.storage {
        if bridge {
            env.push((
                "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI".into(),
                format!("{RELATIVE_CREDENTIALS_PATH}{token}"),
            ));
        } else {
            env.push((
                "AWS_CONTAINER_CREDENTIALS_FULL_URI".into(),
                format!("{base}{CREDENTIALS_PATH}"),
            ));
        }
        env.push(("AWS_REGION".into(), identity.region.clone()));
        env.push(("AWS_DEFAULT_REGION".into(), identity.region.clone()));
        if !identity.storage_endpoint.is_empty() {
            env.push((
                "AWS_ENDPOINT_URL_S3".into(),
                identity.storage_endpoint.clone(),
            ));
        }
    }
    Ok(env)
}

/// Binds the endpoint: the address a previous run used, if it is still free, else `want`.
pub async fn bind(
    agent: &AgentInner,
    want: SocketAddr,
) -> std::io::Result<tokio::net::TcpListener> {
    let addr_file = agent.cfg.data_dir.join(ADDR_FILE);
    let previous: Option<SocketAddr> = std::fs::read_to_string(&addr_file)
        .ok()
        .and_then(|s| s.trim().parse().ok());
    let listener = match previous {
        Some(p) => match tokio::net::TcpListener::bind(p).await {
            Ok(l) => l,
            Err(e) => {
                warn!(addr = %p, error = %e, "the credentials endpoint's old address is taken; running containers lose it");
                tokio::net::TcpListener::bind(want).await?
            }
        },
        None => tokio::net::TcpListener::bind(want).await?,
    };
    let addr = listener.local_addr()?;
    crate::shim::write_atomic(&addr_file, addr.to_string().as_bytes())?;
    *agent.credentials.addr.lock().unwrap() = Some(addr);
    info!(%addr, "credentials endpoint listening");
    Ok(listener)
}

/// Makes sure 169.254.170.2:80 is served on `bridge` (skiff's bridge, which the CNI bridge
/// plugin has created by now): the address on the bridge (`ip addr replace`, idempotent) and a
/// listener bound to that device, so the agents of several bridges on one host can each serve
/// their own. Tasks reach it through their default route, the bridge; they are told apart by
/// their source address.
pub async fn ensure_bridge_endpoint(agent: &Arc<AgentInner>, bridge: &str) -> Result<(), String> {
    let mut serving = agent.credentials.bridge_endpoint.lock().await;
    if serving.as_deref() == Some(bridge) {
        return Ok(());
    }
    crate::network::add_task_endpoint_address(bridge).await?;
    let bind = || -> std::io::Result<tokio::net::TcpListener> {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.set_reuseaddr(true)?;
        socket.bind_device(Some(bridge.as_bytes()))?;
        socket.bind(SocketAddr::from((TASK_ENDPOINT, 80)))?;
        socket.listen(1024)
    };
    let listener = bind().map_err(|e| {
        format!("the credentials endpoint {TASK_ENDPOINT}:80 on {bridge} cannot listen: {e}")
    })?;
    info!(%bridge, "credentials endpoint listening on {TASK_ENDPOINT}:80 for bridge tasks");
    let app = Router::new()
        .route(
            &format!("{RELATIVE_CREDENTIALS_PATH}{{token}}"),
            get(bridge_credentials),
        )
        .route(SKIFF_TOKEN_PATH, get(bridge_skiff_token))
        .with_state(agent.clone());
    tokio::spawn(async move {
        let served = axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await;
        if let Err(e) = served {
            warn!(error = %e, "the bridge credentials endpoint stopped");
        }
    });
    *serving = Some(bridge.to_string());
    Ok(())
}

/// The running task a token names, when the request comes from that task's own address on
/// the bridge; otherwise why it is refused (AccessDenied).
fn caller_by_address(
    agent: &AgentInner,
    token: &str,
    peer: SocketAddr,
) -> Result<String, &'static str> {
    let task_id = agent
        .credentials
        .task_of(token)
        .ok_or("this token is not valid")?;
    match agent.record(&task_id) {
        Some(r) if r.phase != Phase::Stopped && r.spec.identity.is_some() => {
            if r.addresses.iter().any(|a| *a == peer.ip().to_string()) {
                Ok(task_id)
            } else {
                Err("this token belongs to another task")
            }
        }
        _ => Err("this token is not valid"),
    }
}

async fn bridge_credentials(
    State(agent): State<Arc<AgentInner>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    axum::extract::Path(token): axum::extract::Path<String>,
) -> Response {
    match caller_by_address(&agent, &token, peer) {
        Ok(task_id) => credentials_response(&agent, &task_id).await,
        Err(why) => refuse(StatusCode::FORBIDDEN, "AccessDenied", why),
    }
}

async fn bridge_skiff_token(
    State(agent): State<Arc<AgentInner>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    let Some(token) = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    else {
        return refuse(
            StatusCode::UNAUTHORIZED,
            "MissingToken",
            "send the task's AWS_CONTAINER_AUTHORIZATION_TOKEN as the Authorization header",
        );
    };
    match caller_by_address(&agent, token, peer) {
        Ok(task_id) => skiff_token_response(&agent, &task_id).await,
        Err(why) => refuse(StatusCode::FORBIDDEN, "AccessDenied", why),
    }
}

/// Serves the endpoint until the process ends.
pub async fn serve(
    agent: Arc<AgentInner>,
    listener: tokio::net::TcpListener,
) -> std::io::Result<()> {
    let app = Router::new()
        .route(CREDENTIALS_PATH, get(storage_credentials))
        .route(SKIFF_TOKEN_PATH, get(skiff_token))
        .with_state(agent);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .await
}

fn refuse(status: StatusCode, code: &str, message: &str) -> Response {
    (status, Json(json!({"code": code, "message": message}))).into_response()
}

/// The running task a request's token names, when the request comes from a container of that
/// very task; otherwise the response that refuses it.
async fn caller(
    agent: &AgentInner,
    headers: &HeaderMap,
    peer: SocketAddr,
) -> Result<String, Response> {
    let token = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| {
            refuse(
                StatusCode::UNAUTHORIZED,
                "MissingToken",
                "send the task's AWS_CONTAINER_AUTHORIZATION_TOKEN as the Authorization header",
            )
        })?;
    let denied = || {
        refuse(
            StatusCode::FORBIDDEN,
            "AccessDenied",
            "this token is not valid",
        )
    };
    let task_id = agent.credentials.task_of(token).ok_or_else(denied)?;
    match agent.record(&task_id) {
        Some(r) if r.phase != Phase::Stopped && r.spec.identity.is_some() => {}
        _ => return Err(denied()),
    }
    let local = agent.credentials.addr().ok_or_else(denied)?;
    let container = tokio::task::spawn_blocking(move || crate::peer::container_of(peer, local))
        .await
        .ok()
        .flatten();
    match container {
        Some(c) if c.starts_with(&format!("{task_id}-")) => Ok(task_id),
        _ => Err(refuse(
            StatusCode::FORBIDDEN,
            "AccessDenied",
            "this token belongs to another task",
        )),
    }
}

/// Asks the controller for a task's credentials of `kind`, or serves them from the cache.
async fn fetch(
    agent: &AgentInner,
    task_id: &str,
    kind: &str,
) -> Result<pb::CredentialsReply, Response> {
    let key = format!("{task_id}/{kind}");
    let now = now_ms();
    if let Some(c) = agent.credentials.cache.lock().unwrap().get(&key) {
        if !needs_refresh(c.fetched_ms, c.reply.expiration_ms, now) {
            return Ok(c.reply.clone());
        }
    }
    let id = agent
        .credentials
        .next_id
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let (tx, rx) = oneshot::channel();
    agent.credentials.waiters.lock().unwrap().insert(id, tx);
    let sent = agent.send_now(pb::agent_message::Body::Credentials(
        pb::CredentialsRequest {
            request_id: id,
            task_id: task_id.to_string(),
            kind: kind.to_string(),
        },
    ));
    let unavailable =
        |m: &str| refuse(StatusCode::SERVICE_UNAVAILABLE, "CredentialsUnavailable", m);
    if !sent {
        agent.credentials.waiters.lock().unwrap().remove(&id);
        return Err(unavailable(
            "the agent is not connected to the controller; retry",
        ));
    }
    let reply = match tokio::time::timeout(ANSWER_TIMEOUT, rx).await {
        Ok(Ok(r)) => r,
        _ => {
            agent.credentials.waiters.lock().unwrap().remove(&id);
            return Err(unavailable("the controller did not answer in time; retry"));
        }
    };
    if !reply.error.is_empty() {
        return Err(if reply.forbidden {
            refuse(StatusCode::FORBIDDEN, "AccessDenied", &reply.error)
        } else {
            unavailable(&reply.error)
        });
    }
    // A task that stopped while we waited gets nothing.
    if agent
        .record(task_id)
        .is_none_or(|r| r.phase == Phase::Stopped)
    {
        return Err(refuse(
            StatusCode::FORBIDDEN,
            "AccessDenied",
            "the task has stopped",
        ));
    }
    agent.credentials.cache.lock().unwrap().insert(
        key,
        Cached {
            reply: reply.clone(),
            fetched_ms: now,
        },
    );
    Ok(reply)
}

fn rfc3339(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

async fn storage_credentials(
    State(agent): State<Arc<AgentInner>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    match caller(&agent, &headers, peer).await {
        Ok(task_id) => credentials_response(&agent, &task_id).await,
        Err(r) => r,
    }
}

async fn credentials_response(agent: &AgentInner, task_id: &str) -> Response {
    match fetch(agent, task_id, "storage").await {
        Ok(r) => {
            // Token is always there (empty for static keys): some SDKs require the field.
            Json(json!({
                "AccessKeyId": r.access_key_id,
                "SecretAccessKey": r.secret_access_key,
                "Token": r.session_token,
                "Expiration": rfc3339(r.expiration_ms),
                "RoleArn": r.role_arn,
            }))
            .into_response()
        }
        Err(r) => r,
    }
}

async fn skiff_token(
    State(agent): State<Arc<AgentInner>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    match caller(&agent, &headers, peer).await {
        Ok(task_id) => skiff_token_response(&agent, &task_id).await,
        Err(r) => r,
    }
}

async fn skiff_token_response(agent: &AgentInner, task_id: &str) -> Response {
    match fetch(agent, task_id, "skiff").await {
        Ok(r) => Json(json!({"Token": r.skiff_token, "Expiration": rfc3339(r.expiration_ms)}))
            .into_response(),
        Err(r) => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_name_their_task_and_cannot_be_moved_to_another() {
        let dir = tempfile::tempdir().unwrap();
        let c = Credentials::open(dir.path()).unwrap();
        let a = c.token("task-a");
        assert_eq!(c.task_of(&a).as_deref(), Some("task-a"));
        let tag = a.rsplit_once('.').unwrap().1;
        assert_eq!(c.task_of(&format!("task-b.{tag}")), None);
        assert_eq!(c.task_of("task-a"), None);
        // The key survives a restart; another agent's key does not verify.
        assert_eq!(
            Credentials::open(dir.path())
                .unwrap()
                .task_of(&a)
                .as_deref(),
            Some("task-a")
        );
        let other = tempfile::tempdir().unwrap();
        assert_eq!(Credentials::open(other.path()).unwrap().task_of(&a), None);
    }

    #[test]
    fn credentials_are_refreshed_after_two_thirds_of_their_life() {
        assert!(!needs_refresh(0, 3_000, 1_999));
        assert!(needs_refresh(0, 3_000, 2_000));
        assert!(needs_refresh(0, 3_000, 5_000));
    }
}
