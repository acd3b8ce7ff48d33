//! The wire to the agents: each connected node's outbound channel, and the routes that bring
//! an agent's answers (log streams, image command replies) back to the API call that asked.
//! The core and the applier hand it domain values — a task to start with what it needs, a
//! stop with its code — and it encodes them; so protobuf stays at this edge. A leaf: it knows
//! the model and the wire conversions, not the core.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use skiff_proto::v1 as pb;
use tokio::sync::mpsc;

use crate::convert;
use crate::model::{RegistryCreds, TaskSpec};
use skiff_model::lifecycle::StopCode;

/// A connected agent's outbound messages (opaque above this module).
pub type Outbox = mpsc::Sender<pb::ControllerMessage>;

/// The node is not connected (or its connection just went away).
#[derive(Debug, thiserror::Error)]
#[error("node {0} is not connected")]
pub struct Offline(pub String);

/// What a task under a role gets from its agent: its first SKIFF_TASK_TOKEN, and whether
/// (and where) to serve it object-store credentials.
#[derive(Clone, Debug)]
pub struct TaskIdentity {
    pub role: String,
    pub skiff_token: String,
    pub storage: bool,
    pub region: String,
    pub storage_endpoint: String,
}

/// Why a start was not sent.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The task cannot start as it is (a secret gone, …): the reason, for the task.
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Offline(#[from] Offline),
}

struct Session {
    conn_id: u64,
    tx: Outbox,
}

type ImageRoute = (String, mpsc::UnboundedSender<pb::ImageReply>);

/// An exec waiting for (then joined to) its node's stream.
pub struct ExecRoute {
    /// The node the request went to: only its stream may attach.
    pub node_id: String,
    /// The node's output; an Err says why the relay broke before the command's exit.
    pub to_caller: mpsc::Sender<Result<pb::ExecOutput, String>>,
    pub from_caller: mpsc::Receiver<pb::ExecInput>,
    pub attached: tokio::sync::oneshot::Sender<()>,
}

#[derive(Default)]
pub struct AgentLink {
    sessions: Mutex<HashMap<String, Session>>,
    /// Log requests in flight: request id → where the agent's chunks go.
    log_routes: Mutex<HashMap<u64, mpsc::Sender<pb::LogData>>>,
    /// Image commands in flight: request id → (node, where its replies go).
    image_routes: Mutex<HashMap<u64, ImageRoute>>,
    /// Execs waiting for their node's stream: request id → the caller's side.
    exec_routes: Mutex<HashMap<u64, ExecRoute>>,
    next_id: AtomicU64,
}

impl AgentLink {
    /// A fresh id for a connection or a request.
    pub fn next_id(&self) -> u64 {
        self.next_id.fetch_add(1, Ordering::Relaxed) + 1
    }

    /// Registers a new connection for a node, replacing an older one; returns its id.
    pub fn attach(&self, node_id: &str, tx: Outbox) -> u64 {
        let conn_id = self.next_id();
        self.sessions
            .lock()
            .unwrap()
            .insert(node_id.to_string(), Session { conn_id, tx });
        conn_id
    }

    /// Forgets a connection, unless a newer one replaced it already. Image commands in flight
    /// on that node will get no answer: their waits end.
    pub fn detach(&self, node_id: &str, conn_id: u64) {
        let mut sessions = self.sessions.lock().unwrap();
        if sessions.get(node_id).is_some_and(|s| s.conn_id == conn_id) {
            sessions.remove(node_id);
            self.image_routes
                .lock()
                .unwrap()
                .retain(|_, (node, _)| node != node_id);
        }
    }

    pub fn is_connected(&self, node_id: &str) -> bool {
        self.sessions.lock().unwrap().contains_key(node_id)
    }

    /// Sends a message to a node's agent.
    pub async fn send(
        &self,
        node_id: &str,
        body: pb::controller_message::Body,
    ) -> Result<(), Offline> {
        let tx = self
            .sessions
            .lock()
            .unwrap()
            .get(node_id)
            .map(|s| s.tx.clone())
            .ok_or_else(|| Offline(node_id.to_string()))?;
        tx.send(pb::ControllerMessage { body: Some(body) })
            .await
            .map_err(|_| Offline(node_id.to_string()))
    }

    /// Tells a node's agent to stop one of its tasks (idempotent on the agent).
    pub async fn send_stop(
        &self,
        node_id: &str,
        task_id: &str,
        code: StopCode,
        reason: &str,
    ) -> Result<(), Offline> {
        let stop = pb::StopTask {
            task_id: task_id.to_string(),
            stop_code: code.as_str().to_string(),
            reason: reason.to_string(),
            code: convert::wire_stop_code(code).into(),
        };
        self.send(node_id, pb::controller_message::Body::Stop(stop))
            .await
    }

    /// Sends a task to its agent, with its identity, the registry credentials its images
    /// name and the secrets its containers name (resolved by `registry` and `secret`).
    pub async fn send_start(
        &self,
        node_id: &str,
        task_id: &str,
        spec: &TaskSpec,
        identity: Option<TaskIdentity>,
        registry: impl Fn(&str) -> Option<RegistryCreds>,
        secret: impl Fn(&str) -> Result<Vec<u8>, String>,
    ) -> Result<(), StartError> {
        let identity = identity.map(|i| pb::TaskIdentity {
            role: i.role,
            skiff_token: i.skiff_token,
            storage: i.storage,
            region: i.region,
            storage_endpoint: i.storage_endpoint,
        });
        let start = convert::start_task(
            task_id,
            spec,
            identity,
            |name| registry(name).map(|c| registry_auth(&c)),
            secret,
        )
        .map_err(StartError::Refused)?;
        self.send(node_id, pb::controller_message::Body::Start(start))
            .await?;
        Ok(())
    }

    // --- log routing: an agent's Logs stream → the API call that asked for it ---

    pub fn open_log_route(&self, request_id: u64, tx: mpsc::Sender<pb::LogData>) {
        self.log_routes.lock().unwrap().insert(request_id, tx);
    }

    pub fn close_log_route(&self, request_id: u64) {
        self.log_routes.lock().unwrap().remove(&request_id);
    }

    pub fn log_route(&self, request_id: u64) -> Option<mpsc::Sender<pb::LogData>> {
        self.log_routes.lock().unwrap().get(&request_id).cloned()
    }

    // --- exec routing: an agent's Exec stream ↔ the API call that asked for it ---

    pub fn open_exec_route(&self, request_id: u64, route: ExecRoute) {
        self.exec_routes.lock().unwrap().insert(request_id, route);
    }

    pub fn take_exec_route(&self, request_id: u64) -> Option<ExecRoute> {
        self.exec_routes.lock().unwrap().remove(&request_id)
    }

    // --- image commands: replies on a node's session → the API call that sent the command ---

    /// Sends an image command to a node; its replies arrive on the returned receiver, which
    /// ends after the final reply or when the node disconnects.
    pub async fn image_command(
        &self,
        node_id: &str,
        op: pb::image_command::Op,
    ) -> Result<mpsc::UnboundedReceiver<pb::ImageReply>, Offline> {
        let request_id = self.next_id();
        let (tx, rx) = mpsc::unbounded_channel();
        self.image_routes
            .lock()
            .unwrap()
            .insert(request_id, (node_id.to_string(), tx));
        let cmd = pb::ImageCommand {
            request_id,
            op: Some(op),
        };
        if let Err(e) = self
            .send(node_id, pb::controller_message::Body::Image(cmd))
            .await
        {
            self.image_routes.lock().unwrap().remove(&request_id);
            return Err(e);
        }
        Ok(rx)
    }

    /// Delivers an image reply from `node_id`; the final one closes the route.
    pub fn image_reply(&self, node_id: &str, reply: pb::ImageReply) {
        let mut routes = self.image_routes.lock().unwrap();
        let Some((node, tx)) = routes.get(&reply.request_id) else {
            return;
        };
        if node != node_id {
            return;
        }
        let id = reply.request_id;
        let done = reply.done;
        let _ = tx.send(reply);
        if done {
            routes.remove(&id);
        }
    }
}

/// Registry credentials as the agent receives them.
pub fn registry_auth(c: &RegistryCreds) -> pb::RegistryAuth {
    pb::RegistryAuth {
        username: c.username.clone(),
        password: c.password.clone(),
        server: c.server.clone(),
    }
}
