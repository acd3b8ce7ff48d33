//! Service decisions, pure: one reconcile pass of a service over what its tasks are doing —
//! which tasks to start and stop (a rolling deployment within minimum healthy / maximum
//! percent), how failed tasks count (crash-loop backoff, the deployment circuit breaker and
//! its rollback), when a deployment completes, and what autoscaling makes of a backlog. The
//! controller's `services.rs` reads the inputs, applies the pass and records the decisions.

use serde_json::json;

use crate::model::{
    Autoscaling, Backlog, Deployment, DeploymentStatus, Health, RolloutState, Service,
    ServiceDecision, ServiceState, StopCode, TaskStatus,
};

/// After a second failed task in a row, starts back off from this…
pub const BACKOFF_BASE_MS: i64 = 1_000;
/// …doubling up to this.
pub const BACKOFF_CAP_MS: i64 = 300_000;
/// A task that stayed up this long ends a crash loop.
pub const STABLE_MS: i64 = 10_000;
/// Decisions kept for `describe`.
pub const DECISIONS_KEPT: usize = 20;

/// An active task of the service as the pass sees it.
#[derive(Clone, Debug, PartialEq)]
pub struct TaskView {
    pub id: String,
    pub deployment: String,
    pub status: TaskStatus,
    /// Already asked to stop.
    pub stopping: bool,
    pub started_at_ms: i64,
    /// The health of its essential containers with health checks (None: none has one):
    /// UNHEALTHY if one is, UNKNOWN if one is not known yet, else HEALTHY.
    pub health: Option<Health>,
    /// Its node is being drained: it is replaced elsewhere, within the deployment limits.
    pub draining: bool,
}

impl TaskView {
    /// Running and, with health checks, HEALTHY: what minimum healthy percent counts and
    /// what completes a deployment.
    fn healthy(&self) -> bool {
        self.status == TaskStatus::Running
            && !self.stopping
            && matches!(self.health, None | Some(Health::Healthy))
    }

    fn unhealthy(&self) -> bool {
        !self.stopping && self.health == Some(Health::Unhealthy)
    }
}

/// A task the service had that has stopped since the last pass.
#[derive(Clone, Debug, PartialEq)]
pub struct Finished {
    pub id: String,
    pub deployment: String,
    pub code: Option<StopCode>,
    pub reason: String,
    /// How long it ran (0: it never reached RUNNING).
    pub ran_ms: i64,
}

impl Finished {
    /// Whether it counts against the service (backoff, circuit breaker): it failed on its
    /// own, rather than being stopped by someone or losing its node.
    fn failed(&self) -> bool {
        matches!(
            self.code,
            Some(StopCode::TaskFailedToStart)
                | Some(StopCode::EssentialContainerExited)
                | Some(StopCode::TimedOut)
        )
    }
}

/// What one pass sees.
pub struct Inputs<'a> {
    pub service: &'a Service,
    pub state: &'a ServiceState,
    pub active: &'a [TaskView],
    pub finished: &'a [Finished],
    /// The latest backlog of the autoscaling source, if any was observed.
    pub backlog: Option<&'a Backlog>,
    /// A fresh deployment id, used if this pass rolls back.
    pub new_deployment_id: &'a str,
    pub now_ms: i64,
}

/// An event the pass puts on the bus.
#[derive(Clone, Debug, PartialEq)]
pub struct Announce {
    /// `Service Action` or `Service Deployment State Change`.
    pub detail_type: &'static str,
    pub detail: serde_json::Value,
}

pub const SERVICE_ACTION: &str = "Service Action";
pub const DEPLOYMENT_STATE_CHANGE: &str = "Service Deployment State Change";

/// What one pass does.
#[derive(Debug, PartialEq)]
pub struct Pass {
    /// The state to store (deployments, counters, decisions).
    pub state: ServiceState,
    /// Tasks to start, each for a deployment (by id) with its task definition.
    pub start: Vec<(String, String)>,
    /// Tasks to stop, with the reason.
    pub stop: Vec<(String, String)>,
    pub events: Vec<Announce>,
    /// Draining is over: delete the service.
    pub delete: bool,
    /// When the next pass is needed even if nothing changes (a backoff or cooldown ends).
    pub wake_at_ms: Option<i64>,
}

/// The desired count autoscaling asks for, clamped.
pub fn tracked_count(a: &Autoscaling, b: &Backlog) -> u32 {
    let work = b.visible + b.in_flight;
    let per = u64::from(a.target_per_task.max(1));
    let want = work.div_ceil(per);
    (want.min(u64::from(a.max)) as u32).max(a.min)
}

/// The circuit breaker's failed-task threshold for a desired count (ECS: half, 3 to 200).
pub fn failure_threshold(desired: u32) -> u32 {
    desired.div_ceil(2).clamp(3, 200)
}

/// One reconcile pass.
pub fn reconcile(i: &Inputs) -> Pass {
    let mut st = i.state.clone();
    st.name = i.service.name.clone();
    let mut pass = Pass {
        state: ServiceState::default(),
        start: vec![],
        stop: vec![],
        events: vec![],
        delete: false,
        wake_at_ms: None,
    };
    let now = i.now_ms;
    let name = &i.service.name;

    account_finished(i, &mut st, &mut pass);
    let replaced = replace_unhealthy(i, &mut st, &mut pass);
    if !st.draining {
        autoscale(i, &mut st, &mut pass);
    }
    let desired = if st.draining {
        0
    } else {
        st.scaled_count.unwrap_or(i.service.desired_count)
    };
    trip_circuit_breaker(i, &mut st, &mut pass, desired);

    // A task started since the last failure that stayed up ends a crash loop.
    if st.consecutive_failures > 0
        && i.active.iter().any(|t| {
            t.status == TaskStatus::Running
                && t.started_at_ms >= st.last_failure_ms
                && now - t.started_at_ms >= STABLE_MS
        })
    {
        st.consecutive_failures = 0;
        st.backoff_until_ms = 0;
    }

    let primary = st.deployments.first().cloned();
    let live: Vec<&TaskView> = i
        .active
        .iter()
        .filter(|t| !t.stopping && !replaced.contains(&t.id))
        .collect();
    let is_primary = |t: &TaskView| primary.as_ref().is_some_and(|p| p.id == t.deployment);
    let (mut new_live, mut old_live): (Vec<&TaskView>, Vec<&TaskView>) =
        live.iter().copied().partition(|t| is_primary(t));
    let cfg = &i.service.deployment;
    let max_total = (u64::from(desired) * u64::from(cfg.maximum_percent) / 100) as usize;
    let max_total = max_total.max(desired as usize);
    let min_healthy =
        (u64::from(desired) * u64::from(cfg.minimum_healthy_percent)).div_ceil(100) as usize;

    // Old tasks that are not serving yet are of no use: stop them first.
    let (old_serving, old_waiting): (Vec<&TaskView>, Vec<&TaskView>) =
        old_live.iter().copied().partition(|t| t.healthy());
    for t in &old_waiting {
        pass.stop
            .push((t.id.clone(), "replaced by a newer deployment".into()));
    }
    old_live = old_serving;

    // Tasks on draining nodes leave like an old deployment's: replacements are started
    // elsewhere within maximum percent, and the serving ones stop as minimum healthy allows
    // (the others at once).
    let (leaving, staying): (Vec<&TaskView>, Vec<&TaskView>) =
        new_live.iter().copied().partition(|t| t.draining);
    new_live = staying;
    let (leaving_serving, leaving_waiting): (Vec<&TaskView>, Vec<&TaskView>) =
        leaving.iter().copied().partition(|t| t.healthy());
    for t in &leaving_waiting {
        pass.stop
            .push((t.id.clone(), "its node is being drained".into()));
    }
    if !leaving.is_empty() {
        note(
            &mut st,
            now,
            "drain",
            format!("moving {} task(s) off draining nodes", leaving.len()),
            json!({"service": name, "leaving": leaving.len(), "desired": desired}),
        );
    }

    // More new tasks than desired (scale in, drain): waiting ones first, then the newest.
    if new_live.len() > desired as usize {
        new_live.sort_by_key(|t| (t.healthy(), std::cmp::Reverse(t.started_at_ms)));
        for t in new_live.drain(..new_live.len() - desired as usize) {
            let why = if st.draining {
                "service is being deleted"
            } else {
                "service scaled in"
            };
            pass.stop.push((t.id.clone(), why.into()));
        }
    }

    // Starts: up to the desired count, within maximum percent, unless backing off or the
    // deployment failed for good.
    let held = primary
        .as_ref()
        .is_some_and(|p| p.rollout == RolloutState::Failed);
    let need = (desired as usize).saturating_sub(new_live.len());
    let room = max_total.saturating_sub(new_live.len() + old_live.len() + leaving_serving.len());
    let starts = need.min(room);
    if starts > 0 {
        if let Some(p) = &primary {
            if held {
                note(
                    &mut st,
                    now,
                    "held",
                    format!("deployment {} failed; no new tasks are started", p.id),
                    json!({"deployment": p.id, "desired": desired, "running": new_live.len()}),
                );
            } else if now < st.backoff_until_ms {
                pass.wake_at_ms = Some(st.backoff_until_ms);
            } else {
                for _ in 0..starts {
                    pass.start.push((p.id.clone(), p.task_definition.clone()));
                }
                let detail = json!({
                    "service": name, "action": "start", "deployment": p.id,
                    "task_definition": p.task_definition, "count": starts,
                    "desired": desired, "running": count_healthy(&new_live) + old_live.len() + leaving_serving.len(),
                    "pending": new_live.iter().filter(|t| !t.healthy()).count(),
                });
                pass.events.push(Announce {
                    detail_type: SERVICE_ACTION,
                    detail: detail.clone(),
                });
                note(
                    &mut st,
                    now,
                    "start",
                    format!("starting {starts} task(s) of {}", p.task_definition),
                    detail,
                );
            }
        }
    }

    // Old serving tasks, then serving tasks on draining nodes, go as far as minimum healthy
    // allows.
    let serving = count_healthy(&new_live) + old_live.len() + leaving_serving.len();
    let mut may_stop = serving.saturating_sub(min_healthy);
    old_live.sort_by_key(|t| t.started_at_ms);
    for t in old_live.iter().take(may_stop) {
        pass.stop
            .push((t.id.clone(), "replaced by a newer deployment".into()));
    }
    may_stop = may_stop.saturating_sub(old_live.len());
    for t in leaving_serving.iter().take(may_stop) {
        pass.stop
            .push((t.id.clone(), "its node is being drained".into()));
    }

    complete_deployments(i, &mut st, &mut pass, desired);

    if st.draining && i.active.is_empty() {
        pass.delete = true;
    }
    pass.state = st;
    pass
}

fn count_healthy(ts: &[&TaskView]) -> usize {
    ts.iter().filter(|t| t.healthy()).count()
}

/// Records a decision for `describe` (newest first; a repeat of the latest is not added).
pub fn note(
    st: &mut ServiceState,
    now_ms: i64,
    action: &str,
    message: String,
    detail: serde_json::Value,
) {
    if st
        .decisions
        .first()
        .is_some_and(|d| d.action == action && d.message == message)
    {
        return;
    }
    st.decisions.insert(
        0,
        ServiceDecision {
            at_ms: now_ms,
            action: action.to_string(),
            message,
            detail,
        },
    );
    st.decisions.truncate(DECISIONS_KEPT);
}

/// Stops the tasks whose essential containers failed their health checks; each counts as a
/// failed task (backoff, circuit breaker). Returns their ids.
fn replace_unhealthy(i: &Inputs, st: &mut ServiceState, pass: &mut Pass) -> Vec<String> {
    let mut ids = Vec::new();
    for t in i.active.iter().filter(|t| t.unhealthy()) {
        let reason = "Task failed container health checks".to_string();
        pass.stop.push((t.id.clone(), reason.clone()));
        count_failure(i, st, &t.id, &t.deployment, &reason, 0);
        pass.events.push(Announce {
            detail_type: SERVICE_ACTION,
            detail: json!({
                "service": i.service.name, "action": "replace", "task": t.id,
                "deployment": t.deployment, "reason": reason, "failed": true,
                "health": "UNHEALTHY",
            }),
        });
        ids.push(t.id.clone());
    }
    ids
}

/// One failed task: the crash-loop count and backoff, the deployment's failure count.
fn count_failure(
    i: &Inputs,
    st: &mut ServiceState,
    task: &str,
    deployment: &str,
    reason: &str,
    ran_ms: i64,
) {
    let now = i.now_ms;
    if ran_ms >= STABLE_MS {
        st.consecutive_failures = 0;
    }
    st.consecutive_failures += 1;
    if let Some(d) = st.deployments.iter_mut().find(|d| d.id == deployment) {
        d.failed_tasks += 1;
        d.updated_ms = now;
    }
    // The first failure is replaced at once; a second in a row waits 1 s, then 2 s, 4 s, …
    let delay = match st.consecutive_failures {
        0 | 1 => 0,
        n => (BACKOFF_BASE_MS << (n - 2).min(20)).min(BACKOFF_CAP_MS),
    };
    st.backoff_until_ms = now + delay;
    st.last_failure = format!("task {task}: {reason}");
    st.last_failure_ms = now;
    note(
        st,
        now,
        "backoff",
        if delay == 0 {
            format!("task {task} failed; replaced at once ({reason})")
        } else {
            format!(
                "{} failed task(s) in a row; next start in {}s (last: task {task}: {reason})",
                st.consecutive_failures,
                delay / 1000,
            )
        },
        json!({"consecutive_failures": st.consecutive_failures, "delay_ms": delay}),
    );
}

/// Counts the tasks that stopped since the last pass: failures feed the backoff and the
/// circuit breaker; every one not stopped by the service is replaced.
fn account_finished(i: &Inputs, st: &mut ServiceState, pass: &mut Pass) {
    for f in i.finished {
        if f.code == Some(StopCode::ServiceSchedulerInitiated) {
            continue;
        }
        let detail = json!({
            "service": i.service.name, "action": "replace", "task": f.id,
            "deployment": f.deployment,
            "stop_code": f.code.map(|c| c.as_str()), "reason": f.reason,
            "failed": f.failed(), "ran_ms": f.ran_ms,
        });
        if f.failed() {
            count_failure(i, st, &f.id, &f.deployment, &f.reason, f.ran_ms);
        }
        pass.events.push(Announce {
            detail_type: SERVICE_ACTION,
            detail,
        });
    }
}

/// Target tracking: the count a backlog asks for, within min/max, respecting cooldowns (out
/// of zero at once). A stale external report holds the count.
fn autoscale(i: &Inputs, st: &mut ServiceState, pass: &mut Pass) {
    let Some(a) = &i.service.autoscaling else {
        st.scaled_count = None;
        return;
    };
    let now = i.now_ms;
    let current = st
        .scaled_count
        .unwrap_or(i.service.desired_count)
        .clamp(a.min, a.max);
    st.scaled_count = Some(current);
    let Some(b) = i.backlog else {
        note(
            st,
            now,
            "hold",
            format!(
                "no backlog observed from {} yet; holding at {current}",
                a.source
            ),
            json!({"source": a.source, "desired": current}),
        );
        return;
    };
    let stale_ms = i64::from(a.stale_after_secs) * 1000;
    if !a.source.starts_with("queue:") && now - b.observed_ms > stale_ms {
        note(
            st,
            now,
            "hold",
            format!(
                "backlog of {} last reported {}s ago (stale after {}s); holding at {current}",
                a.source,
                (now - b.observed_ms) / 1000,
                a.stale_after_secs
            ),
            json!({"source": a.source, "observed_ms": b.observed_ms, "desired": current}),
        );
        return;
    }
    let want = tracked_count(a, b);
    if want == current {
        return;
    }
    let (action, since, cooldown) = if want > current {
        ("scale-out", st.last_scale_out_ms, a.scale_out_cooldown_secs)
    } else {
        (
            "scale-in",
            st.last_scale_out_ms.max(st.last_scale_in_ms),
            a.scale_in_cooldown_secs,
        )
    };
    let ready_at = since + i64::from(cooldown) * 1000;
    if current > 0 && since > 0 && now < ready_at {
        pass.wake_at_ms = Some(pass.wake_at_ms.map_or(ready_at, |w| w.min(ready_at)));
        return;
    }
    st.scaled_count = Some(want);
    if want > current {
        st.last_scale_out_ms = now;
    } else {
        st.last_scale_in_ms = now;
    }
    let detail = json!({
        "service": i.service.name, "action": action, "from": current, "to": want,
        "source": a.source, "visible": b.visible, "in_flight": b.in_flight,
        "target_per_task": a.target_per_task, "min": a.min, "max": a.max,
    });
    note(
        st,
        now,
        action,
        format!(
            "{action} {current} → {want}: backlog {} visible + {} in flight, target {} per task",
            b.visible, b.in_flight, a.target_per_task
        ),
        detail.clone(),
    );
    pass.events.push(Announce {
        detail_type: SERVICE_ACTION,
        detail,
    });
}

/// Fails a rolling-out deployment whose tasks keep failing, and rolls back to the last
/// deployment that completed when the service says so.
fn trip_circuit_breaker(i: &Inputs, st: &mut ServiceState, pass: &mut Pass, desired: u32) {
    let cfg = &i.service.deployment;
    let Some(p) = st.deployments.first() else {
        return;
    };
    let threshold = failure_threshold(desired);
    if !cfg.circuit_breaker || p.rollout != RolloutState::InProgress || p.failed_tasks < threshold {
        return;
    }
    let now = i.now_ms;
    let failed_id = p.id.clone();
    let failed_def = p.task_definition.clone();
    let failed_count = p.failed_tasks;
    let back_to = st
        .deployments
        .iter()
        .skip(1)
        .find(|d| d.rollout == RolloutState::Completed)
        .map(|d| d.task_definition.clone());
    let p = &mut st.deployments[0];
    p.rollout = RolloutState::Failed;
    p.updated_ms = now;
    p.reason = format!(
        "circuit breaker: {failed_count} task(s) failed (threshold {threshold}); last: {}",
        st.last_failure
    );
    pass.events.push(Announce {
        detail_type: DEPLOYMENT_STATE_CHANGE,
        detail: json!({
            "service": i.service.name, "deployment": failed_id,
            "task_definition": failed_def, "state": "FAILED",
            "failed_tasks": failed_count, "threshold": threshold, "reason": p.reason,
        }),
    });
    let reason = p.reason.clone();
    note(
        st,
        now,
        "deployment-failed",
        format!("deployment {failed_id} failed: {reason}"),
        json!({"deployment": failed_id, "failed_tasks": failed_count, "threshold": threshold}),
    );
    let Some(def) = back_to.filter(|_| cfg.rollback) else {
        return;
    };
    st.deployments[0].status = DeploymentStatus::Active;
    st.deployments.insert(
        0,
        Deployment {
            id: i.new_deployment_id.to_string(),
            task_definition: def.clone(),
            status: DeploymentStatus::Primary,
            rollout: RolloutState::InProgress,
            reason: format!("rollback from failed deployment {failed_id}"),
            failed_tasks: 0,
            created_ms: now,
            updated_ms: now,
        },
    );
    // The rollback is not held back by the failed deployment's crash loop.
    st.consecutive_failures = 0;
    st.backoff_until_ms = 0;
    pass.events.push(Announce {
        detail_type: DEPLOYMENT_STATE_CHANGE,
        detail: json!({
            "service": i.service.name, "deployment": i.new_deployment_id,
            "task_definition": def, "state": "IN_PROGRESS",
            "reason": format!("rollback from failed deployment {failed_id}"),
        }),
    });
    note(
        st,
        now,
        "rollback",
        format!("rolling back to {def} (deployment {failed_id} failed)"),
        json!({"from": failed_def, "to": def}),
    );
}

/// The primary completes when its healthy tasks reach the desired count and no older
/// deployment has a task left; the older ones then become INACTIVE.
fn complete_deployments(i: &Inputs, st: &mut ServiceState, pass: &mut Pass, desired: u32) {
    let Some(p) = st.deployments.first() else {
        return;
    };
    let pid = p.id.clone();
    let healthy = i
        .active
        .iter()
        .filter(|t| t.deployment == pid && t.healthy())
        .count();
    let old_left = i.active.iter().any(|t| t.deployment != pid);
    if old_left {
        return;
    }
    let now = i.now_ms;
    for d in st.deployments.iter_mut().skip(1) {
        if d.status != DeploymentStatus::Inactive {
            d.status = DeploymentStatus::Inactive;
            d.updated_ms = now;
        }
    }
    let p = &mut st.deployments[0];
    if p.rollout == RolloutState::InProgress && healthy >= desired as usize {
        p.rollout = RolloutState::Completed;
        p.updated_ms = now;
        pass.events.push(Announce {
            detail_type: DEPLOYMENT_STATE_CHANGE,
            detail: json!({
                "service": i.service.name, "deployment": p.id,
                "task_definition": p.task_definition, "state": "COMPLETED",
                "running": healthy, "desired": desired,
            }),
        });
        let msg = format!("deployment {} completed ({healthy} running)", p.id);
        let detail = json!({"deployment": p.id, "running": healthy});
        note(st, now, "deployment-completed", msg, detail);
    }
    // Keep the history short: the primary and the last five.
    st.deployments.truncate(6);
}

pub mod jobs;

#[cfg(test)]
mod tests;
