//! The applier: commits a placement plan, then tells the agents. Every lifecycle move of the
//! plan goes through `Core::transition_all` (one group commit for all), and no agent hears of
//! a placement before it is durable. Sending a task to its agent (`send_start`, also used when
//! an agent reconnects) lives here too: the Start message is built from the stored task, its
//! role's credentials, its secrets and its registry credentials.

use skiff_proto::v1 as pb;
use tracing::{info, warn};

use crate::convert;
use crate::core::{Core, CoreError};
use crate::model::Task;
use skiff_model::lifecycle::{StopCode, TaskEvent};
use skiff_model::placement::Step;

/// Commits `steps` and sends what they start. Waiting reasons are recorded alongside (they are
/// not lifecycle moves: no event).
pub async fn apply(core: &Core, steps: Vec<Step>) -> Result<(), CoreError> {
    let mut moves = Vec::new();
    let mut waits = Vec::new();
    for step in steps {
        match step {
            Step::Place { task, node } => moves.push((task, TaskEvent::Placed { node_id: node })),
            Step::Lose { task, node, reason } => {
                warn!(task_id = %task, node_id = %node, "node lost");
                let event = TaskEvent::Stopped {
                    code: StopCode::NodeLost,
                    reason,
                    containers: vec![],
                };
                moves.push((task, event));
            }
            Step::Wait { task, why } => waits.push((task, why)),
        }
    }
    let recorded = futures::future::join_all(
        waits
            .iter()
            .map(|(task, why)| core.set_status_reason(task, why)),
    );
    let (moved, recorded) = futures::join!(core.transition_all(moves), recorded);
    for r in recorded {
        r?;
    }
    for result in moved {
        // One refused move (a task stopped meanwhile) does not hold back the others' Starts.
        let (task, moved) = match result {
            Ok(r) => r,
            Err(CoreError::Store(e)) => return Err(CoreError::Store(e)),
            Err(e) => {
                warn!(error = %e, "a planned move was refused");
                continue;
            }
        };
        if moved && task.status == skiff_model::lifecycle::TaskStatus::Pending {
            if let Some(node) = task.node_id.clone() {
                info!(task_id = %task.id, node_id = %node, "placed");
                send_start(core, &node, &task).await;
            }
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
