//! The placer: the loop that places PROVISIONING tasks on nodes and declares silent nodes lost.
//! Decisions come from the pure `placement` module; this loop only reads a snapshot, asks, and
//! commits the answer through `Core::transition`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use skiff_proto::v1 as pb;
use tracing::{info, warn};

use crate::convert;
use crate::core::{Core, CoreError};
use crate::lifecycle::{StopCode, TaskEvent};
use crate::model::Task;
use crate::placement::{self, NodeLoad};
use crate::store::Reservation;

/// How often the loop runs even when nothing kicked it (node timeouts, retries).
const TICK: Duration = Duration::from_millis(1000);

pub async fn run(core: Arc<Core>) {
    loop {
        let next_tick = core.clock.now_ms() + TICK.as_millis() as i64;
        if let Err(e) = pass(&core).await {
            warn!(error = %e, "placement pass failed");
        }
        tokio::select! {
            _ = core.kick.notified() => {}
            _ = core.clock.sleep_until(next_tick) => {}
        }
    }
}

async fn pass(core: &Core) -> Result<(), CoreError> {
    reap_lost_nodes(core).await?;
    // Read through the indexes: the tasks to place, and only when there are any, what every
    // node has reserved (small index values, not whole tasks).
    let waiting = core.store.waiting_tasks()?;
    if waiting.is_empty() {
        return Ok(());
    }
    let mut loads = node_loads(core, &core.store.reservations()?)?;
    // Decide every placement first (pure, reserving as it goes), then record them together:
    // concurrent transitions share the store's group commits, so a burst of new tasks (a
    // schedule minute, an upload burst) is placed in a few flushes rather than one each.
    let mut decided = Vec::new();
    for task in &waiting {
        match placement::place(&task.spec, &loads) {
            Ok(n) => {
                let node_id = n.id.clone();
                if let Some(load) = loads.iter_mut().find(|l| l.id == node_id) {
                    load.reserve(&task.spec);
                }
                decided.push((task.id.clone(), node_id));
            }
            Err(why) => core.set_status_reason(&task.id, &why).await?,
        }
    }
    let placed = futures::future::join_all(decided.iter().map(|(id, node_id)| {
        core.transition(
            id,
            TaskEvent::Placed {
                node_id: node_id.clone(),
            },
        )
    }))
    .await;
    for ((_, node_id), result) in decided.iter().zip(placed) {
        let (placed, moved) = result?;
        if moved {
            info!(task_id = %placed.id, node_id = %node_id, "placed");
            send_start(core, node_id, &placed).await;
        }
    }
    Ok(())
}

/// Sends a task to its agent. If the agent just went away, reconciliation resends it later.
pub async fn send_start(core: &Core, node_id: &str, task: &Task) {
    let start = task_identity(core, task).and_then(|identity| {
        convert::start_task(
            &task.id,
            &task.spec,
            identity,
            |name| registry_auth(core, name),
            |name| open_secret(core, name),
        )
    });
    let start = match start {
        Ok(s) => s,
        Err(reason) => {
            warn!(task_id = %task.id, %reason, "task cannot start");
            let event = TaskEvent::Stopped {
                code: StopCode::TaskFailedToStart,
                reason,
                containers: vec![],
            };
            if let Err(e) = core.transition(&task.id, event).await {
                warn!(task_id = %task.id, error = %e, "recording the failed start failed");
            }
            return;
        }
    };
    if let Err(e) = core
        .send(node_id, pb::controller_message::Body::Start(start))
        .await
    {
        warn!(task_id = %task.id, error = %e, "start not delivered; will resend on reconnect");
    }
}

/// What a task under a role needs from the agent: its first SKIFF_TASK_TOKEN, and whether to
/// serve it object-store credentials. A role deleted since the task was accepted fails the start.
fn task_identity(core: &Core, task: &Task) -> Result<Option<pb::TaskIdentity>, String> {
    if task.spec.task_role.is_empty() {
        return Ok(None);
    }
    let role = match core.store.roles.get(&task.spec.task_role) {
        Ok(Some(r)) => r,
        Ok(None) => {
            return Err(format!(
                "task role {:?} does not exist",
                task.spec.task_role
            ))
        }
        Err(e) => return Err(format!("reading task role {:?}: {e}", task.spec.task_role)),
    };
    let claims = crate::credentials::skiff_claims(&task.id, &role.name, core.clock.now_ms());
    Ok(Some(pb::TaskIdentity {
        role: role.name.clone(),
        skiff_token: core.task_keys.mint(&claims),
        storage: role.storage.is_some(),
        region: role
            .storage
            .as_ref()
            .map(|s| s.region.clone())
            .unwrap_or_default(),
        storage_endpoint: role
            .storage
            .as_ref()
            .map(|s| s.endpoint.clone())
            .unwrap_or_default(),
    }))
}

/// The value of the stored secret `name`; the error names the secret, never a value.
fn open_secret(core: &Core, name: &str) -> Result<Vec<u8>, String> {
    match core.store.secrets.get(name) {
        Ok(Some(s)) => core.secrets.open_sealed(&s),
        Ok(None) => Err(format!("secret {name:?} does not exist")),
        Err(e) => Err(format!("reading secret {name:?}: {e}")),
    }
}

/// The stored registry credentials `name`, as the agent receives them.
pub fn registry_auth(core: &Core, name: &str) -> Option<pb::RegistryAuth> {
    match core.store.registry_creds.get(name) {
        Ok(Some(c)) => Some(pb::RegistryAuth {
            username: c.username,
            password: c.password,
            server: c.server,
        }),
        Ok(None) => {
            warn!(name, "registry credentials named by a task no longer exist");
            None
        }
        Err(e) => {
            warn!(name, error = %e, "reading registry credentials failed");
            None
        }
    }
}

/// Capacity and reservations of every known node, from the store and the live sessions.
pub fn node_loads(core: &Core, active: &[Reservation]) -> Result<Vec<NodeLoad>, CoreError> {
    let mut used: HashMap<&str, (f64, u64)> = HashMap::new();
    for r in active {
        if let Some(n) = r.node.as_deref() {
            let e = used.entry(n).or_default();
            e.0 += r.cpu;
            e.1 += r.memory_mib;
        }
    }
    let mut nodes = core.store.nodes.list()?;
    nodes.sort_by(|a, b| {
        a.registered_at_ms
            .cmp(&b.registered_at_ms)
            .then(a.id.cmp(&b.id))
    });
    Ok(nodes
        .into_iter()
        .map(|n| {
            let (cpu_used, memory_used_mib) = used.get(n.id.as_str()).copied().unwrap_or_default();
            NodeLoad {
                connected: core.is_connected(&n.id),
                id: n.id,
                state: n.state,
                cpu: n.cpu,
                memory_mib: n.memory_mib,
                cpu_used,
                memory_used_mib,
            }
        })
        .collect())
}

/// Tasks on nodes silent past the timeout are STOPPED with NodeLost.
async fn reap_lost_nodes(core: &Core) -> Result<(), CoreError> {
    let lost = core.lost_nodes();
    if lost.is_empty() {
        return Ok(());
    }
    for task in core.store.active_tasks()? {
        let Some(node) = task.node_id.as_deref() else {
            continue;
        };
        if !lost.iter().any(|l| l == node) {
            continue;
        }
        let reason = format!(
            "node {node} was silent for more than {}s",
            core.timing.node_timeout.as_secs()
        );
        warn!(task_id = %task.id, node_id = %node, "node lost");
        core.mark_lost(&task.id, reason).await?;
    }
    for node in lost {
        core.forget_node_timer(&node);
    }
    Ok(())
}
