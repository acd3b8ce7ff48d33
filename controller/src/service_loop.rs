//! The service loop: keeps every service at its desired count. Each pass reads the tasks that
//! are not STOPPED (one read for all services, through the active index), finds which of a
//! service's tasks stopped since its last pass, reads its backlog, asks the pure
//! `service::reconcile` what to do, and applies it: new tasks (through the placer, like any
//! task), stops (SIGTERM and the stop timeout, through `Core::stop_task`), events, and the
//! state with its decisions. It is woken when a service changes, a service task moves, a
//! backlog is reported or a queue's messages change, and otherwise at the moment a backoff
//! or cooldown ends.
//!
//! Crash safety: a task is created before the state that lists it is written; a pass after a
//! crash finds it through the task group (every active task of `service:<name>` is the
//! service's), so no task is started twice for one decision and none is forgotten.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::{info, warn};

use crate::core::{Core, CoreError};
use crate::model::{Backlog, DesiredStatus, NodeState, Service, ServiceMode, Task};
use crate::wake::Loop;
use skiff_model::lifecycle::StopCode;
use skiff_model::service::{self as decide, Finished, Inputs, TaskView};

/// Passes run at least this often (a task's run time crossing the stable mark, a report
/// turning stale). Wake-ups while a pass runs fold into one next pass.
const TICK: Duration = Duration::from_secs(1);

pub async fn run(core: Arc<Core>, mut stop: watch::Receiver<bool>) {
    loop {
        if *stop.borrow() {
            return;
        }
        let started = core.clock.now_ms();
        let mut next = started + TICK.as_millis() as i64;
        match pass(&core).await {
            Ok(Some(at)) => next = next.min(at),
            Ok(None) => {}
            Err(e) => warn!(error = %e, "service pass failed"),
        }
        tokio::select! {
            _ = core.loops.woken(Loop::Services) => {}
            _ = stop.changed() => {}
            _ = core.clock.sleep_until(next) => {}
        }
    }
}

/// One pass over every service; returns when the next is needed.
pub async fn pass(core: &Core) -> Result<Option<i64>, CoreError> {
    let services = core.store.services.list()?;
    if services.is_empty() {
        core.names.publish(Default::default());
        return Ok(None);
    }
    let mut by_group: HashMap<String, Vec<Arc<Task>>> = HashMap::new();
    for t in core.store.active_tasks()? {
        if t.group.starts_with("service:") {
            by_group.entry(t.group.clone()).or_default().push(t);
        }
    }
    core.names.publish(skiff_model::names::service_addresses(
        by_group.values().flatten().map(|t| &**t),
    ));
    let mut wake: Option<i64> = None;
    for svc in services {
        let mine = by_group.remove(&svc.group()).unwrap_or_default();
        let done = match svc.mode {
            ServiceMode::Service => reconcile_one(core, &svc, mine).await,
            ServiceMode::TaskPerMessage => crate::job_loop::reconcile(core, &svc, mine).await,
        };
        match done {
            Ok(Some(at)) => wake = Some(wake.map_or(at, |w: i64| w.min(at))),
            Ok(None) => {}
            Err(e) => warn!(service = %svc.name, error = %e, "reconciling a service failed"),
        }
    }
    Ok(wake)
}

async fn reconcile_one(
    core: &Core,
    svc: &Service,
    mine: Vec<Arc<Task>>,
) -> Result<Option<i64>, CoreError> {
    let state = core
        .store
        .service_states
        .get(&svc.name)?
        .unwrap_or_default();
    let draining: HashSet<String> = core
        .store
        .nodes
        .list()?
        .into_iter()
        .filter(|n| n.state == NodeState::Draining)
        .map(|n| n.id)
        .collect();
    let active: Vec<TaskView> = mine.iter().map(|t| view(t, &draining)).collect();
    let live: HashSet<&str> = mine.iter().map(|t| t.id.as_str()).collect();
    let mut finished = Vec::new();
    for (id, deployment) in &state.tasks {
        if live.contains(id.as_str()) {
            continue;
        }
        if let Some(t) = core.store.task(id)? {
            finished.push(Finished {
                id: t.id.clone(),
                deployment: deployment.clone(),
                code: t.stop_code,
                reason: t.stopped_reason.clone(),
                ran_ms: if t.started_at_ms > 0 {
                    (t.stopped_at_ms - t.started_at_ms).max(0)
                } else {
                    0
                },
            });
        }
    }
    let backlog = backlog_of(core, svc)?;
    let new_id = core.new_id();
    let now = core.clock.now_ms();
    let mut pass = decide::reconcile(&Inputs {
        service: svc,
        state: &state,
        active: &active,
        finished: &finished,
        backlog: backlog.as_ref(),
        new_deployment_id: &new_id,
        now_ms: now,
    });

    let mut tasks: Vec<(String, String)> = mine
        .iter()
        .map(|t| (t.id.clone(), t.started_by.clone()))
        .collect();
    for (deployment, reference) in &pass.start {
        match crate::services::task_for(core, svc, deployment, reference) {
            Ok(task) => {
                let task = core.create_task(task).await?;
                tasks.push((task.id.clone(), deployment.clone()));
            }
            Err(why) => {
                decide::note(
                    &mut pass.state,
                    now,
                    "start-failed",
                    format!("cannot start a task of {reference}: {why}"),
                    serde_json::json!({"deployment": deployment}),
                );
                break;
            }
        }
    }
    for (id, why) in &pass.stop {
        core.stop_task(id, StopCode::ServiceSchedulerInitiated, why.clone())
            .await?;
    }
    if !pass.start.is_empty() || !pass.stop.is_empty() {
        info!(service = %svc.name, started = pass.start.len(), stopped = pass.stop.len(), "service reconciled");
    }
    for a in pass.events {
        if a.detail_type == skiff_model::service::SERVICE_ACTION {
            if let Some(action) = a.detail["action"].as_str() {
                core.metrics.service_action(&svc.name, action);
            }
        }
        crate::services::announce(core, &svc.name, a.detail_type, a.detail).await?;
    }
    if pass.delete {
        core.store.delete_service(&svc.name).await?;
        info!(service = %svc.name, "service drained and deleted");
        return Ok(None);
    }
    pass.state.tasks = tasks;
    if pass.state != state {
        crate::services::write_state(core, &svc.name, &state, pass.state).await?;
    }
    Ok(pass.wake_at_ms)
}

fn view(t: &Task, draining: &HashSet<String>) -> TaskView {
    TaskView {
        draining: t.node_id.as_ref().is_some_and(|n| draining.contains(n)),
        id: t.id.clone(),
        deployment: t.started_by.clone(),
        status: t.status,
        stopping: t.desired == DesiredStatus::Stopped,
        started_at_ms: t.started_at_ms,
        health: t.essential_health(),
    }
}

/// The backlog a service's autoscaling follows: a built-in queue's counts now, or the last
/// report from outside.
fn backlog_of(core: &Core, svc: &Service) -> Result<Option<Backlog>, CoreError> {
    let Some(a) = &svc.autoscaling else {
        return Ok(None);
    };
    if let Some(q) = a.source.strip_prefix("queue:") {
        return match crate::queues::describe(core, q) {
            Ok((_, c)) => Ok(Some(Backlog {
                source: a.source.clone(),
                visible: c.visible,
                in_flight: c.in_flight,
                observed_ms: core.clock.now_ms(),
            })),
            Err(CoreError::NoSuchQueue(_)) => Ok(None),
            Err(e) => Err(e),
        };
    }
    Ok(core.store.backlogs.get(&a.source)?)
}
