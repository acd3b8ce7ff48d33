//! The agent's end of the agent channel: dial the controller, register with every task this
//! node has, heartbeat, and act on what the controller sends. Reconnects with backoff forever.
//!
//! The link (connection, heartbeats, keepalive) runs on a thread and runtime of its own, and
//! hands what the controller sends to the agent's runtime (`dispatch`): a soak found a busy
//! agent — hundreds of tasks writing their records and clearing interrupted starts on the two
//! worker threads — sending nothing for 10 s, so the controller judged a live node lost.

use std::sync::Arc;
use std::time::Duration;

use skiff_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tracing::{info, warn};

use crate::spec::TaskSpec;
use crate::{logserve, machine_capacity, AgentInner};

use pb::controller_message::Body as In;

/// Runs the link on a thread of its own until the agent's runtime stops reading what it hands
/// over; what the controller sends is acted on here, on the agent's runtime.
pub async fn run(agent: Arc<AgentInner>) {
    let (handed, mut inbound) = mpsc::unbounded_channel::<In>();
    let link = agent.clone();
    let spawned = std::thread::Builder::new()
        .name("controller-link".into())
        .spawn(move || {
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => return warn!(error = %e, "cannot start the controller link's runtime"),
            };
            rt.block_on(keep_linked(link, handed));
        });
    if let Err(e) = spawned {
        warn!(error = %e, "cannot start the controller link's thread");
        return;
    }
    while let Some(msg) = inbound.recv().await {
        dispatch(&agent, msg);
    }
}

/// Acts on one message from the controller (on the agent's runtime).
fn dispatch(agent: &Arc<AgentInner>, msg: In) {
    match msg {
        In::Registered(r) => agent.relay.set_http_port(r.http_port),
        In::Start(s) => match TaskSpec::from_proto(&s) {
            Ok(spec) => agent.start_task(spec),
            Err(e) => agent.report_never_started(&s.task_id, "TaskFailedToStart", e),
        },
        In::Stop(s) => {
            let code =
                crate::record::stop_code_name(s.code()).map_or(s.stop_code.clone(), String::from);
            agent.stop_task(&s.task_id, code, s.reason)
        }
        In::Forget(f) => agent.forget_task(&f.task_id),
        In::Logs(req) => logserve::start(agent.clone(), req),
        In::CancelLogs(c) => logserve::cancel(agent, c.request_id),
        In::Image(cmd) => crate::imageserve::start(agent.clone(), cmd),
        In::Credentials(reply) => agent.credentials.answered(reply),
        In::Names(names) => agent.dns.set_names(names),
        In::Exec(req) => crate::execserve::start(agent.clone(), req),
    }
}

/// Keeps a session with the controller, reconnecting with backoff, until the agent's runtime
/// no longer takes what is handed over.
async fn keep_linked(agent: Arc<AgentInner>, handed: mpsc::UnboundedSender<In>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        if handed.is_closed() {
            return;
        }
        match session(&agent, &handed).await {
            Ok(()) => info!("controller closed the session; reconnecting"),
            Err(e) => warn!(error = %e, "controller session failed; reconnecting"),
        }
        // A session that got as far as registering starts the backoff over: a controller
        // restart or a healed cable is met at once, not after the delay earlier failures built.
        if agent.outbox.lock().unwrap().take().is_some() {
            backoff = Duration::from_millis(100);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

async fn session(
    agent: &Arc<AgentInner>,
    handed: &mpsc::UnboundedSender<In>,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let channel = crate::tls::endpoint(&agent.cfg.controller, agent.tls().as_ref())?
        .connect()
        .await?;
    let mut client = pb::agent_channel_client::AgentChannelClient::new(channel);

    let (tx, rx) = mpsc::unbounded_channel::<pb::AgentMessage>();
    let (machine_cpu, machine_mem) = machine_capacity();
    let register = pb::Register {
        node_id: agent.cfg.node_id.clone(),
        labels: agent.cfg.labels.clone().into_iter().collect(),
        cpu: agent.cfg.cpu.unwrap_or(machine_cpu),
        memory_mib: agent.cfg.memory_mib.unwrap_or(machine_mem),
        version: env!("CARGO_PKG_VERSION").to_string(),
        tasks: agent.reports(),
    };
    tx.send(pb::AgentMessage {
        body: Some(pb::agent_message::Body::Register(register)),
    })?;
    let mut inbound = client
        .session(UnboundedReceiverStream::new(rx))
        .await?
        .into_inner();
    // From here, reports go out live.
    *agent.outbox.lock().unwrap() = Some(tx.clone());
    // Anything that changed between building the register and now is re-sent.
    for r in agent.reports() {
        let _ = tx.send(pb::AgentMessage {
            body: Some(pb::agent_message::Body::Task(r)),
        });
    }
    info!(controller = %agent.cfg.controller, node_id = %agent.cfg.node_id, "connected");

    let mut heartbeat = tokio::time::interval(Duration::from_secs(5));
    // The node's ports in use: sent at once (the first tick), then whenever they change,
    // looked at every second.
    let mut ports_sent: Option<crate::hostports::HostPorts> = None;
    let mut ports_tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            // The agent is shutting down (it no longer takes what the link hands over): end
            // the session now, so the stream to the controller ends with it.
            _ = handed.closed() => return Ok(()),
            msg = inbound.message() => {
                let Some(msg) = msg? else { return Ok(()) };
                let Some(body) = msg.body else { continue };
                if let In::Registered(r) = &body {
                    let every = Duration::from_millis(r.heartbeat_interval_ms.max(100) as u64);
                    heartbeat = tokio::time::interval(every);
                }
                if handed.send(body).is_err() {
                    return Ok(());
                }
            }
            _ = heartbeat.tick() => {
                let hb = pb::AgentMessage { body: Some(pb::agent_message::Body::Heartbeat(pb::Heartbeat {})) };
                if tx.send(hb).is_err() {
                    return Ok(());
                }
            }
            _ = ports_tick.tick() => {
                let ports = tokio::task::spawn_blocking(crate::hostports::in_use).await?;
                if ports_sent.as_ref() != Some(&ports) {
                    let msg = pb::HostPorts {
                        tcp: ports.tcp.iter().map(|p| u32::from(*p)).collect(),
                        udp: ports.udp.iter().map(|p| u32::from(*p)).collect(),
                    };
                    let body = pb::agent_message::Body::HostPorts(msg);
                    if tx.send(pb::AgentMessage { body: Some(body) }).is_err() {
                        return Ok(());
                    }
                    ports_sent = Some(ports);
                }
            }
        }
    }
}
