//! Task-per-message services, applied (the pure decisions are `skiff_model::service::jobs`):
//! each pass settles the messages of finished jobs (exit 0: deleted; otherwise visible again),
//! keeps the leases of running jobs from expiring, and leases new messages, one task each.
//!
//! Crash safety, in write order: a message is received (in flight, durable), then its lease is
//! stored under the id its task will have, then the task is created with the message as its
//! input. A crash before the lease leaves the message in flight until its visibility timeout;
//! a crash between lease and task leaves a lease whose task does not exist, which the next
//! pass releases. A job's message is settled before its lease is removed, so a settle is
//! never lost (it may be repeated; a repeated delete is a stale receipt, ignored).

use std::collections::HashSet;

use serde_json::json;
use tracing::{info, warn};

use crate::core::{Core, CoreError};
use crate::model::{DesiredStatus, JobLease, Service, Task};
use skiff_model::lifecycle::StopCode;
use skiff_model::service::jobs::{self, FinishedJob, JobInputs, Settle};

/// One pass of a task-per-message service; its tasks not yet STOPPED are `mine`.
pub async fn reconcile(
    core: &Core,
    svc: &Service,
    mine: Vec<std::sync::Arc<Task>>,
) -> Result<Option<i64>, CoreError> {
    let Some(queue_name) = svc
        .autoscaling
        .as_ref()
        .and_then(|a| a.source.strip_prefix("queue:"))
    else {
        return Ok(None);
    };
    let (q, counts) = crate::queues::describe(core, queue_name)?;
    let state = core
        .store
        .service_states
        .get(&svc.name)?
        .unwrap_or_default();
    let leases: Vec<JobLease> = core
        .store
        .job_leases
        .list()?
        .into_iter()
        .filter(|l| l.service == svc.name)
        .collect();
    let live: HashSet<&str> = mine.iter().map(|t| t.id.as_str()).collect();
    let mut finished = Vec::new();
    for l in leases.iter().filter(|l| !live.contains(l.task.as_str())) {
        finished.push(match core.store.task(&l.task)? {
            Some(t) => FinishedJob {
                task: t.id.clone(),
                succeeded: succeeded(&t),
                reason: t.stopped_reason.clone(),
            },
            None => FinishedJob {
                task: l.task.clone(),
                succeeded: false,
                reason: "its task was never created (the controller stopped first)".into(),
            },
        });
    }
    let now = core.clock.now_ms();
    let mut pass = jobs::reconcile(&JobInputs {
        service: svc,
        state: &state,
        active: mine.len(),
        finished: &finished,
        visible: counts.visible,
        now_ms: now,
    });

    for (task, how) in &pass.settle {
        let Some(l) = leases.iter().find(|l| &l.task == task) else {
            continue;
        };
        let receipt = [l.receipt.clone()];
        match how {
            Settle::Delete => {
                crate::queues::delete_messages(core, &q, &receipt).await?;
            }
            Settle::Release => {
                crate::queues::change_visibility(core, &q, &[(l.receipt.clone(), 0)]).await?;
            }
        }
        core.store.job_leases.delete(task).await?;
    }
    if pass.stop_all {
        for t in mine.iter().filter(|t| t.desired != DesiredStatus::Stopped) {
            core.stop_task(
                &t.id,
                StopCode::ServiceSchedulerInitiated,
                "service is being deleted".into(),
            )
            .await?;
        }
    }
    extend_leases(core, &q, &leases, &live, now).await?;
    if pass.lease > 0 {
        start_jobs(core, svc, &q, pass.lease, &mut pass.state).await?;
    }
    for a in pass.events {
        crate::services::announce(core, &svc.name, a.detail_type, a.detail).await?;
    }
    if pass.delete {
        for l in &leases {
            core.store.job_leases.delete(&l.task).await?;
        }
        core.store.delete_service(&svc.name).await?;
        info!(service = %svc.name, "service drained and deleted");
        return Ok(None);
    }
    if pass.state != state {
        crate::services::write_state(core, &svc.name, &state, pass.state).await?;
    }
    // More to lease than one receive takes: again at once; else at the earliest lease to extend.
    if pass.lease > skiff_model::validate::MAX_BATCH {
        return Ok(Some(now));
    }
    Ok(leases
        .iter()
        .filter(|l| live.contains(l.task.as_str()))
        .map(|l| l.visible_until_ms - half_visibility(&q))
        .min())
}

/// Every essential container exited 0.
fn succeeded(t: &Task) -> bool {
    let essential: Vec<_> = t.containers.iter().filter(|c| c.essential).collect();
    !essential.is_empty() && essential.iter().all(|c| c.exit_code == Some(0))
}

fn half_visibility(q: &crate::model::Queue) -> i64 {
    i64::from(q.visibility_timeout_secs) * 500
}

/// Keeps the messages of running jobs invisible: a lease past half its visibility timeout
/// is extended by a whole one.
async fn extend_leases(
    core: &Core,
    q: &crate::model::Queue,
    leases: &[JobLease],
    live: &HashSet<&str>,
    now: i64,
) -> Result<(), CoreError> {
    let visibility = i64::from(q.visibility_timeout_secs) * 1000;
    for l in leases.iter().filter(|l| live.contains(l.task.as_str())) {
        if l.visible_until_ms - now > half_visibility(q) {
            continue;
        }
        let changed = crate::queues::change_visibility(
            core,
            q,
            &[(l.receipt.clone(), q.visibility_timeout_secs)],
        )
        .await?;
        if changed.first().is_some_and(|r| r.is_ok()) {
            let lease = JobLease {
                visible_until_ms: now + visibility,
                ..l.clone()
            };
            core.store.job_leases.put(&lease).await?;
        } else {
            warn!(task = %l.task, "a job's message was taken back before its lease was extended");
        }
    }
    Ok(())
}

/// Receives up to `n` messages and starts one task for each, its lease stored first.
async fn start_jobs(
    core: &Core,
    svc: &Service,
    q: &crate::model::Queue,
    n: usize,
    state: &mut crate::model::ServiceState,
) -> Result<(), CoreError> {
    let Some(deployment) = state.deployments.first().cloned() else {
        return Ok(());
    };
    let got = crate::queues::receive(
        core,
        q,
        n.min(skiff_model::validate::MAX_BATCH),
        std::time::Duration::ZERO,
        q.visibility_timeout_secs,
    )
    .await?;
    let now = core.clock.now_ms();
    for (m, receipt) in got {
        let input = json!({
            "source": "skiff.queue", "queue": q.name, "messageId": m.id, "body": m.body,
            "attributes": m.attributes, "receiveCount": m.receive_count, "sentMs": m.sent_ms,
        })
        .to_string();
        let task =
            crate::services::task_for(core, svc, &deployment.id, &deployment.task_definition).map(
                |mut t| {
                    t.spec.input = Some(input);
                    t
                },
            );
        let task = match task {
            Ok(t) => t,
            Err(why) => {
                // The definition cannot run now: the message goes back, the service says why.
                crate::queues::change_visibility(core, q, &[(receipt, 0)]).await?;
                skiff_model::service::note(
                    state,
                    now,
                    "start-failed",
                    format!(
                        "cannot start a job of {}: {why}",
                        deployment.task_definition
                    ),
                    json!({"deployment": deployment.id}),
                );
                continue;
            }
        };
        core.store
            .job_leases
            .put(&JobLease {
                task: task.id.clone(),
                service: svc.name.clone(),
                queue: q.name.clone(),
                message_id: m.id.clone(),
                receipt,
                visible_until_ms: now + i64::from(q.visibility_timeout_secs) * 1000,
            })
            .await?;
        core.create_task(task).await?;
    }
    Ok(())
}
