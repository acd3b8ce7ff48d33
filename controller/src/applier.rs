//! The applier: commits a placement plan, then tells the agents. Every lifecycle move of the
//! plan goes through `Core::transition_all` (one group commit for all), and no agent hears of
//! a placement before it is durable. Sending a task to its agent (`send_start`, also used when
//! an agent reconnects) lives here too: the Start message is built from the stored task, its
//! role's credentials, its secrets and its registry credentials.

use tracing::{info, warn};

use crate::agent_link::{StartError, TaskIdentity};
use crate::core::{Core, CoreError};
use crate::model::{RegistryCreds, Task};
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
            if let Some(node) = &task.node_id {
                info!(task_id = %task.id, node_id = %node, "placed");
                send_start(core, node, &task).await;
            }
        }
    }
    Ok(())
}

/// Sends a task to its agent. If the agent just went away, reconciliation resends it later;
/// a task that cannot start as it is (its role, a secret gone) fails with the reason.
pub async fn send_start(core: &Core, node_id: &str, task: &Task) {
    let sent = match task_identity(core, task) {
        Ok(identity) => {
            core.link
                .send_start(
                    node_id,
                    &task.id,
                    &task.spec,
                    identity,
                    |name| registry_creds(core, name),
                    |name| open_secret(core, name),
                )
                .await
        }
        Err(reason) => Err(StartError::Refused(reason)),
    };
    match sent {
        Ok(()) => {}
        Err(StartError::Refused(reason)) => {
            warn!(task_id = %task.id, %reason, "task cannot start");
            let event = TaskEvent::Stopped {
                code: StopCode::TaskFailedToStart,
                reason,
                containers: vec![],
            };
            if let Err(e) = core.transition(&task.id, event).await {
                warn!(task_id = %task.id, error = %e, "recording the failed start failed");
            }
        }
        Err(StartError::Offline(e)) => {
            warn!(task_id = %task.id, error = %e, "start not delivered; will resend on reconnect");
        }
    }
}

/// What a task under a role needs from the agent: its first SKIFF_TASK_TOKEN, and whether to
/// serve it object-store credentials. A role deleted since the task was accepted fails the start.
fn task_identity(core: &Core, task: &Task) -> Result<Option<TaskIdentity>, String> {
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
    Ok(Some(TaskIdentity {
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

/// The stored registry credentials `name` (None, logged, if they are gone).
pub fn registry_creds(core: &Core, name: &str) -> Option<RegistryCreds> {
    match core.store.registry_creds.get(name) {
        Ok(Some(c)) => Some(c),
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
