//! The agent channel: a bidirectional stream the agent opens. The agent registers (with every
//! task it runs), heartbeats and reports task status; the controller sends start/stop/log
//! requests. On every (re)connect the controller reconciles what the agent runs with what it
//! has stored. Every message is idempotent by task id.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;

use futures::{FutureExt, Stream};
use skiff_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Request, Response, Status, Streaming};
use tracing::{info, warn};

use crate::applier;
use crate::combiner::Combiner;
use crate::convert;
use crate::core::{Core, CoreError};
use crate::model::PortProtocol;
use crate::wake::Loop;
use skiff_model::lifecycle::{DesiredStatus, StopCode, TaskEvent, TaskStatus};
use skiff_model::validate;

use pb::controller_message::Body as Out;

/// At most this many agent messages are handled (and their reports flushed) together.
const MAX_BATCH: usize = 256;

/// How long a session whose silence timer fired still waits for a message already on its way.
const STALL_GRACE: std::time::Duration = std::time::Duration::from_millis(500);

pub struct AgentService {
    core: Arc<Core>,
    reports: Arc<Reports>,
}

/// Task reports (node, reports) from every session, applied together (`handle_reports`).
type Reports = Combiner<(String, Vec<pb::TaskReport>)>;

impl AgentService {
    pub fn new(core: Arc<Core>) -> Self {
        AgentService {
            core,
            reports: Default::default(),
        }
    }
}

type OutStream = Pin<Box<dyn Stream<Item = Result<pb::ControllerMessage, Status>> + Send>>;

#[tonic::async_trait]
impl pb::agent_channel_server::AgentChannel for AgentService {
    type SessionStream = OutStream;

    async fn session(
        &self,
        request: Request<Streaming<pb::AgentMessage>>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let cert = authenticate_node(&self.core, &request)?;
        let mut inbound = request.into_inner();
        let first = inbound
            .message()
            .await?
            .ok_or_else(|| Status::invalid_argument("the stream closed before register"))?;
        let Some(pb::agent_message::Body::Register(reg)) = first.body else {
            return Err(Status::invalid_argument(
                "the first message must be register",
            ));
        };
        validate::check_name("register.node_id", &reg.node_id)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        if let Some(c) = &cert {
            if c.node_id != reg.node_id {
                return Err(Status::permission_denied(format!(
                    "this certificate is node {}'s, not {}'s",
                    c.node_id, reg.node_id
                )));
            }
        }
        if !(reg.cpu.is_finite() && reg.cpu > 0.0) || reg.memory_mib == 0 {
            return Err(Status::invalid_argument(
                "register.cpu and register.memory_mib: must be positive",
            ));
        }
        let core = self.core.clone();
        let combined = self.reports.clone();
        let node_id = reg.node_id.clone();
        let registration = crate::nodes::Registration {
            node_id: node_id.clone(),
            labels: reg.labels.clone().into_iter().collect::<BTreeMap<_, _>>(),
            cpu: reg.cpu,
            memory_mib: reg.memory_mib,
            version: reg.version.clone(),
        };
        crate::nodes::register(&core, registration).await?;

        let (tx, rx) = mpsc::channel(1024);
        let conn_id = core.attach(&node_id, tx.clone());
        info!(node_id = %node_id, tasks = reg.tasks.len(), "agent connected");
        let _ = tx
            .send(pb::ControllerMessage {
                body: Some(Out::Registered(pb::Registered {
                    heartbeat_interval_ms: core.timing.heartbeat_interval.as_millis() as u32,
                    http_port: core.http_port.map_or(0, u32::from),
                })),
            })
            .await;
        let names = tokio::spawn(forward_names(core.names.subscribe(), tx.clone()));

        tokio::spawn(async move {
            if let Err(e) = reconcile(&core, &combined, &node_id, &reg.tasks).await {
                warn!(node_id = %node_id, error = %e, "reconcile failed");
            }
            core.loops.wake(Loop::Placer);
            // A session whose agent falls silent (a cut cable leaves the TCP connection open
            // for many minutes) ends after the node timeout with its silence counted from the
            // last message, so the node is lost then, as if it had disconnected. A watchdog on
            // the connection, so in real time (tokio's), not on the core's clock, which tests
            // move by hand without their fake agents' heartbeats.
            let silence = core.timing.node_timeout;
            let mut silent = false;
            'session: loop {
                let next = tokio::select! {
                    next = inbound.message() => next,
                    _ = crate::clock::Clock::real_sleep(silence) => {
                        // A controller that stalled itself (a host frozen by I/O) wakes with
                        // its timer and the agent's waiting messages ready at once: a moment
                        // for them to be read before the agent is judged silent.
                        match tokio::time::timeout(STALL_GRACE, inbound.message()).await {
                            Ok(next) => next,
                            Err(_) => {
                                warn!(node_id = %node_id, ?silence, "agent silent for the node timeout; closing its session");
                                silent = true;
                                break;
                            }
                        }
                    }
                };
                let mut arrived = match next {
                    Ok(Some(m)) => vec![m],
                    Ok(None) => break,
                    Err(e) => {
                        warn!(node_id = %node_id, error = %e, "agent stream broke");
                        break;
                    }
                };
                // Whatever else has arrived meanwhile is handled with it: its task reports
                // share one flush (`Core::transition_all`).
                let mut closed = false;
                while arrived.len() < MAX_BATCH {
                    match inbound.message().now_or_never() {
                        Some(Ok(Some(m))) => arrived.push(m),
                        Some(Ok(None)) => {
                            closed = true;
                            break;
                        }
                        Some(Err(e)) => {
                            warn!(node_id = %node_id, error = %e, "agent stream broke");
                            closed = true;
                            break;
                        }
                        None => break,
                    }
                }
                if cert
                    .as_ref()
                    .is_some_and(|c| cert_revoked(&core, &c.fingerprint))
                {
                    warn!(node_id = %node_id, "node revoked; closing its session");
                    break;
                }
                core.seen(&node_id);
                let mut reports = Vec::new();
                for msg in arrived {
                    match msg.body {
                        Some(pb::agent_message::Body::Task(report)) => reports.push(report),
                        other => handle_message(&core, &node_id, &tx, other),
                    }
                }
                handle_reports(&core, &combined, &node_id, reports).await;
                if closed {
                    break 'session;
                }
            }
            names.abort();
            if silent {
                core.detach_silent(&node_id, conn_id);
            } else {
                core.detach(&node_id, conn_id);
            }
            info!(node_id = %node_id, "agent disconnected");
        });

        let out = ReceiverStream::new(rx).map(Ok);
        Ok(Response::new(crate::api::until_stopping(&self.core, out)))
    }

    async fn join(
        &self,
        request: Request<pb::JoinRequest>,
    ) -> Result<Response<pb::JoinResponse>, Status> {
        let pki = self.core.pki.as_ref().ok_or_else(|| {
            Status::failed_precondition(
                "this controller does not serve TLS; agents join without --join",
            )
        })?;
        let r = request.into_inner();
        validate::check_name("node_id", &r.node_id)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        crate::tokens::redeem_join(&self.core, &r.token)
            .await?
            .map_err(|refused| Status::unauthenticated(refused.to_string()))?;
        let resp = issue_node_cert(&self.core, pki, &r.csr_pem, &r.node_id).await?;
        info!(node_id = %r.node_id, "node joined");
        Ok(Response::new(resp))
    }

    async fn renew(
        &self,
        request: Request<pb::RenewRequest>,
    ) -> Result<Response<pb::JoinResponse>, Status> {
        let pki = self
            .core
            .pki
            .as_ref()
            .ok_or_else(|| Status::failed_precondition("this controller does not serve TLS"))?;
        let cert = authenticate_node(&self.core, &request)?
            .ok_or_else(|| Status::unauthenticated("no node certificate"))?;
        let resp =
            issue_node_cert(&self.core, pki, &request.get_ref().csr_pem, &cert.node_id).await?;
        info!(node_id = %cert.node_id, "node certificate renewed");
        Ok(Response::new(resp))
    }

    type ExecStream = Pin<Box<dyn Stream<Item = Result<pb::ExecInput, Status>> + Send>>;

    async fn exec(
        &self,
        request: Request<Streaming<pb::ExecOutput>>,
    ) -> Result<Response<Self::ExecStream>, Status> {
        let cert = authenticate_node(&self.core, &request)?;
        let inputs = crate::exec_api::attach(
            &self.core,
            cert.as_ref().map(|c| c.node_id.as_str()),
            request.into_inner(),
        )
        .await?;
        Ok(Response::new(crate::api::until_stopping(
            &self.core,
            inputs.map(Ok),
        )))
    }

    async fn logs(
        &self,
        request: Request<Streaming<pb::LogData>>,
    ) -> Result<Response<pb::LogsDone>, Status> {
        authenticate_node(&self.core, &request)?;
        // (A follow's stream stays open until its reader goes; a stopping controller ends it.)
        tokio::select! {
            forwarded = forward_logs(&self.core, request.into_inner()) => forwarded?,
            _ = self.core.stopped() => {}
        }
        Ok(Response::new(pb::LogsDone {}))
    }
}

/// Forwards one log request's data to the API call that asked for it. Each request has its own
/// stream, so waiting for a slow reader here holds up nothing else.
pub async fn forward_logs(core: &Core, mut inbound: Streaming<pb::LogData>) -> Result<(), Status> {
    let Some(first) = inbound.message().await? else {
        return Ok(());
    };
    let request_id = first.request_id;
    let route = core
        .link
        .log_route(request_id)
        .ok_or_else(|| Status::not_found(format!("no log request {request_id}")))?;
    // However this stream ends, the reader's stream ends with it.
    core.link.close_log_route(request_id);
    let mut next = Some(first);
    while let Some(data) = next {
        let eof = data.eof;
        if route.send(data).await.is_err() {
            return Err(Status::cancelled("the log reader went away"));
        }
        if eof {
            return Ok(());
        }
        next = inbound.message().await?;
    }
    Ok(())
}

/// Signs a node's CSR and records the certificate as the node's.
async fn issue_node_cert(
    core: &Core,
    pki: &crate::pki::Pki,
    csr_pem: &str,
    node_id: &str,
) -> Result<pb::JoinResponse, Status> {
    let (cert_pem, fingerprint) = pki
        .sign_node(csr_pem, node_id)
        .map_err(|e| Status::invalid_argument(format!("csr_pem: {e}")))?;
    let issued_ms = core.clock.now_ms();
    crate::nodes::record_certificate(core, node_id, fingerprint, issued_ms).await?;
    Ok(pb::JoinResponse {
        cert_pem,
        ca_pem: pki.ca_pem.clone(),
        issued_ms,
        expires_ms: issued_ms + pki.node_cert_ttl.as_millis() as i64,
    })
}

/// On a TLS controller, the node whose certificate the peer presented (refused if it is
/// missing, unknown or revoked); None on a plaintext controller.
fn authenticate_node<T>(
    core: &Core,
    request: &Request<T>,
) -> Result<Option<crate::model::NodeCert>, Status> {
    if core.pki.is_none() {
        return Ok(None);
    }
    let certs = request.peer_certs().ok_or_else(|| {
        Status::unauthenticated("the agent channel needs a node certificate (skiff agent --join)")
    })?;
    let leaf = certs
        .first()
        .ok_or_else(|| Status::unauthenticated("no node certificate presented"))?;
    let fingerprint = crate::pki::fingerprint(leaf.as_ref());
    let cert = core
        .store
        .node_certs
        .get(&fingerprint)
        .map_err(internal)?
        .ok_or_else(|| Status::unauthenticated("this node certificate was not issued here"))?;
    if cert.revoked_ms != 0 {
        return Err(Status::permission_denied(format!(
            "node {} has been revoked",
            cert.node_id
        )));
    }
    Ok(Some(cert))
}

/// Whether a node's certificate has been revoked since its session began.
pub fn cert_revoked(core: &Core, fingerprint: &str) -> bool {
    core.store
        .node_certs
        .get(fingerprint)
        .ok()
        .flatten()
        .is_none_or(|c| c.revoked_ms != 0)
}

/// Sends the agent the service names table once there is one, then each change, until the
/// session ends.
async fn forward_names(
    mut names: tokio::sync::watch::Receiver<Option<crate::names::NameTable>>,
    tx: mpsc::Sender<pb::ControllerMessage>,
) {
    loop {
        let table = names.borrow_and_update().clone();
        if let Some(table) = table {
            let services = table
                .iter()
                .map(|(name, addresses)| {
                    let addresses = addresses.clone();
                    (name.clone(), pb::ServiceAddresses { addresses })
                })
                .collect();
            let msg = pb::ControllerMessage {
                body: Some(Out::Names(pb::ServiceNames { services })),
            };
            if tx.send(msg).await.is_err() {
                return;
            }
        }
        if names.changed().await.is_err() {
            return;
        }
    }
}

fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

/// Every agent message but a task report (those are batched: `handle_reports`).
fn handle_message(
    core: &Arc<Core>,
    node_id: &str,
    tx: &mpsc::Sender<pb::ControllerMessage>,
    body: Option<pb::agent_message::Body>,
) {
    match body {
        Some(pb::agent_message::Body::Heartbeat(_)) | Some(pb::agent_message::Body::Task(_)) => {}
        None => {}
        Some(pb::agent_message::Body::Image(reply)) => {
            core.link.image_reply(node_id, reply);
        }
        Some(pb::agent_message::Body::Register(_)) => {
            warn!(node_id = %node_id, "register sent twice; ignored");
        }
        Some(pb::agent_message::Body::HostPorts(p)) => {
            let port = |p: u32| u16::try_from(p).ok();
            let tcp = p
                .tcp
                .into_iter()
                .filter_map(port)
                .map(|p| (p, PortProtocol::Tcp));
            let udp = p
                .udp
                .into_iter()
                .filter_map(port)
                .map(|p| (p, PortProtocol::Udp));
            core.set_host_ports(node_id, tcp.chain(udp).collect());
        }
        Some(pb::agent_message::Body::Credentials(req)) => {
            // STS may take a while; never hold up the session for it.
            let (core, node_id, tx) = (core.clone(), node_id.to_string(), tx.clone());
            tokio::spawn(async move {
                let reply = credentials_reply(&core, &node_id, req).await;
                let _ = tx
                    .send(pb::ControllerMessage {
                        body: Some(Out::Credentials(reply)),
                    })
                    .await;
            });
        }
    }
}

/// Answers one agent's request for a task's credentials.
async fn credentials_reply(
    core: &Core,
    node_id: &str,
    req: pb::CredentialsRequest,
) -> pb::CredentialsReply {
    use crate::credentials::{mint_for, Issued};
    let mut reply = pb::CredentialsReply {
        request_id: req.request_id,
        ..Default::default()
    };
    match mint_for(core, node_id, &req.task_id, &req.kind).await {
        Ok(Issued::Storage(m)) => {
            reply.access_key_id = m.access_key_id;
            reply.secret_access_key = m.secret_access_key;
            reply.session_token = m.session_token;
            reply.expiration_ms = m.expiration_ms;
            reply.role_arn = m.role_arn;
        }
        Ok(Issued::Skiff {
            token,
            expiration_ms,
        }) => {
            reply.skiff_token = token;
            reply.expiration_ms = expiration_ms;
        }
        Err(r) => {
            warn!(task_id = %req.task_id, node_id, reason = %r.message, "credentials refused");
            reply.error = r.message;
            reply.forbidden = r.forbidden;
        }
    }
    reply
}

/// Applies an agent's task reports in the order they came, then answers each (forget a
/// STOPPED task, stop one that must not run). Reports other sessions hand in meanwhile are
/// applied with them: one transaction and one flush for all (`Combiner`).
async fn handle_reports(
    core: &Core,
    combined: &Reports,
    node_id: &str,
    reports: Vec<pb::TaskReport>,
) {
    if reports.is_empty() {
        return;
    }
    combined
        .run((node_id.to_string(), reports), |batches| {
            apply_reports(core, batches)
        })
        .await;
}

/// Applies the reports of one or more sessions (node, reports) in one `transition_all`.
async fn apply_reports(core: &Core, batches: Vec<(String, Vec<pb::TaskReport>)>) {
    let mut applicable = Vec::new();
    for (node_id, reports) in &batches {
        for r in reports {
            match report_event(core, node_id, r).await {
                Ok(Some(event)) => applicable.push((node_id.as_str(), r, event)),
                Ok(None) => {}
                Err(e) => {
                    warn!(node_id = %node_id, task_id = %r.task_id, error = %e, "report not applied")
                }
            }
        }
    }
    let (reports, changes): (Vec<_>, Vec<_>) = applicable
        .into_iter()
        .map(|(node_id, r, event)| ((node_id, r), (r.task_id.clone(), event)))
        .unzip();
    let results = core.transition_all(changes).await;
    for ((node_id, r), result) in reports.into_iter().zip(results) {
        if let Err(e) = answer_report(core, node_id, r, result).await {
            warn!(node_id = %node_id, task_id = %r.task_id, error = %e, "report not applied");
        }
    }
}

/// The lifecycle event a report stands for; None for a report about a task this node must
/// not run (it is told to stop it) or with an unknown status.
async fn report_event(
    core: &Core,
    node_id: &str,
    r: &pb::TaskReport,
) -> Result<Option<TaskEvent>, CoreError> {
    let Some(task) = core.store.task_shared(&r.task_id)? else {
        // Not ours (a data dir was wiped?): it must not run.
        warn!(task_id = %r.task_id, node_id, "agent runs an unknown task; stopping it");
        core.send_stop(
            node_id,
            &r.task_id,
            StopCode::TaskFailedToStart,
            "unknown to the controller",
        )
        .await?;
        return Ok(None);
    };
    if task.node_id.as_deref() != Some(node_id) {
        warn!(task_id = %r.task_id, node_id, "task reported by a node it is not placed on; stopping it there");
        core.send_stop(
            node_id,
            &r.task_id,
            StopCode::TaskFailedToStart,
            "placed on another node",
        )
        .await?;
        return Ok(None);
    }
    let containers = convert::container_states(&task.spec, &r.containers);
    Ok(match convert::run_state(r.state(), &r.status) {
        Some(pb::RunState::Pending) => Some(TaskEvent::Placed {
            node_id: node_id.to_string(),
        }),
        Some(pb::RunState::Running) => Some(TaskEvent::Started {
            containers,
            addresses: r.addresses.clone(),
        }),
        Some(pb::RunState::Stopping) => Some(TaskEvent::Stopping { containers }),
        Some(pb::RunState::Stopped) => Some(TaskEvent::Stopped {
            code: convert::stop_code(r.code(), &r.stop_code),
            reason: r.reason.clone(),
            containers,
        }),
        Some(pb::RunState::Unspecified) | None => {
            warn!(task_id = %r.task_id, status = %r.status, "unknown status in report");
            None
        }
    })
}

/// What the agent is told once its report is durable: a STOPPED task can be forgotten; a
/// task the controller has stopped (or wants stopped) must stop there too.
async fn answer_report(
    core: &Core,
    node_id: &str,
    r: &pb::TaskReport,
    result: Result<(Arc<crate::model::Task>, bool), CoreError>,
) -> Result<(), CoreError> {
    let task = match result {
        Ok((t, _)) => t,
        Err(CoreError::Illegal(e)) => {
            // e.g. RUNNING reported for a task already STOPPED: the agent must stop it.
            warn!(task_id = %r.task_id, error = %e, "stale report");
            core.store
                .task(&r.task_id)?
                .map(Arc::new)
                .ok_or_else(|| CoreError::NoSuchTask(r.task_id.clone()))?
        }
        Err(e) => return Err(e),
    };
    let reported_stopped = convert::run_state(r.state(), &r.status) == Some(pb::RunState::Stopped);
    if task.status == TaskStatus::Stopped {
        if reported_stopped {
            core.link
                .send(
                    node_id,
                    Out::Forget(pb::ForgetTask {
                        task_id: task.id.clone(),
                    }),
                )
                .await?;
        } else {
            let code = task.stop_code.unwrap_or(StopCode::UserInitiated);
            core.send_stop(node_id, &task.id, code, &task.stopped_reason)
                .await?;
        }
    } else if task.desired == DesiredStatus::Stopped && !reported_stopped {
        let code = task.stop_code.unwrap_or(StopCode::UserInitiated);
        core.send_stop(node_id, &task.id, code, &task.stopped_reason)
            .await?;
    }
    Ok(())
}

/// Brings stored state and the agent's reality together after a (re)connect.
async fn reconcile(
    core: &Core,
    combined: &Reports,
    node_id: &str,
    reports: &[pb::TaskReport],
) -> Result<(), CoreError> {
    handle_reports(core, combined, node_id, reports.to_vec()).await;
    for task in core.store.active_tasks()? {
        if task.node_id.as_deref() != Some(node_id) || reports.iter().any(|r| r.task_id == task.id)
        {
            continue;
        }
        match task.status {
            TaskStatus::Pending => {
                info!(task_id = %task.id, node_id, "resending start after reconnect");
                if let Err(e) = core.note_start_again(&task.id, node_id).await {
                    warn!(task_id = %task.id, error = %e, "noting the start sent again failed");
                }
                applier::send_start(core, node_id, &task).await;
            }
            TaskStatus::Running | TaskStatus::Stopping => {
                let reason = "the agent no longer has this task (its state was lost)".to_string();
                core.mark_lost(&task.id, reason).await?;
            }
            TaskStatus::Provisioning | TaskStatus::Stopped => {}
        }
    }
    Ok(())
}
