//! Service operations in the core layer: create or update a service (a new deployment when
//! its task definition resolves to another revision, or when forced), scale it, delete it
//! (it drains first: the service loop stops its tasks, then removes it), read it with its
//! tasks, and take backlog reports from outside. The reconcile loop is `service_loop.rs`.

use serde_json::json;

use crate::core::{Core, CoreError};
use crate::model::{
    Backlog, Deployment, DeploymentStatus, Event, RolloutState, Service, ServiceState, Task,
};
use crate::wake::Loop;
use skiff_model::service::{self as decide, DEPLOYMENT_STATE_CHANGE};

pub const SERVICE_SOURCE: &str = "skiff.service";

/// Creates or replaces `svc` (checked already). Its task definition is resolved now (a bare
/// family: its latest ACTIVE revision); a revision other than the primary deployment's, or
/// `force`, starts a new deployment. Returns the service and its state as stored.
pub async fn put(
    core: &Core,
    mut svc: Service,
    force: bool,
) -> Result<(Service, ServiceState), CoreError> {
    let def = crate::taskdefs::resolve(core, "task_definition", &svc.task_definition)?.ok_or_else(
        || {
            CoreError::BadReference(format!(
                "task_definition: no active task definition {:?} (see skiff taskdefs ls)",
                svc.task_definition
            ))
        },
    )?;
    core.check_references(&def.spec)?;
    if let Some(q) = svc
        .autoscaling
        .as_ref()
        .and_then(|a| a.source.strip_prefix("queue:"))
    {
        crate::queues::get(core, q).map_err(|_| {
            CoreError::BadReference(format!(
                "autoscaling.source: no queue {q:?} (see skiff queues ls)"
            ))
        })?;
    }
    let now = core.clock.now_ms();
    if let Some(st) = core.store.service_states.get(&svc.name)? {
        if st.draining {
            return Err(CoreError::Refused(format!(
                "service {:?} is being deleted; wait until it is gone",
                svc.name
            )));
        }
    }
    let old = core.store.services.get(&svc.name)?;
    svc.created_ms = old.as_ref().map_or(now, |o| o.created_ms);
    svc.updated_ms = now;
    let reference = def.reference();
    let id = core.new_id();
    let mut started = false;
    let state = core
        .store
        .put_service(&svc, |old| {
            let mut st = old.unwrap_or_default();
            st.name = svc.name.clone();
            started = force
                || st
                    .deployments
                    .first()
                    .is_none_or(|p| p.task_definition != reference);
            if started {
                begin_deployment(&mut st, &id, &reference, force, now);
            }
            if svc.autoscaling.is_none() {
                st.scaled_count = None;
            }
            st
        })
        .await?;
    if started {
        let detail = json!({
            "service": svc.name, "deployment": id, "task_definition": reference,
            "state": "IN_PROGRESS", "desired": svc.desired_count,
            "reason": state.deployments[0].reason,
        });
        announce(core, &svc.name, DEPLOYMENT_STATE_CHANGE, detail).await?;
    }
    core.loops.wake(Loop::Services);
    Ok((svc, state))
}

/// Makes a new PRIMARY deployment of `reference`; the older ones become ACTIVE (their tasks
/// are replaced).
fn begin_deployment(st: &mut ServiceState, id: &str, reference: &str, forced: bool, now: i64) {
    for d in st.deployments.iter_mut() {
        if d.status == DeploymentStatus::Primary {
            d.status = DeploymentStatus::Active;
            d.updated_ms = now;
        }
    }
    let reason = match (st.deployments.is_empty(), forced) {
        (true, _) => "service created".to_string(),
        (false, true) => "new deployment forced".to_string(),
        (false, false) => format!("task definition changed to {reference}"),
    };
    decide::note(
        st,
        now,
        "deploy",
        format!("deployment {id} of {reference}: {reason}"),
        json!({"deployment": id, "task_definition": reference}),
    );
    st.deployments.insert(
        0,
        Deployment {
            id: id.to_string(),
            task_definition: reference.to_string(),
            status: DeploymentStatus::Primary,
            rollout: RolloutState::InProgress,
            reason,
            failed_tasks: 0,
            created_ms: now,
            updated_ms: now,
        },
    );
    // A new deployment is not held back by the old one's crash loop.
    st.consecutive_failures = 0;
    st.backoff_until_ms = 0;
}

/// Sets the desired count (with autoscaling on, the next decision moves it within min/max).
pub async fn scale(core: &Core, name: &str, desired: u32) -> Result<Service, CoreError> {
    skiff_model::validate::service(&Service {
        desired_count: desired,
        ..get(core, name)?
    })
    .map_err(|e| CoreError::BadReference(e.to_string()))?;
    let now = core.clock.now_ms();
    let out = core
        .store
        .services
        .update(name, |s| {
            s.desired_count = desired;
            s.updated_ms = now;
            Ok::<(), ()>(())
        })
        .await?;
    core.loops.wake(Loop::Services);
    match out {
        Ok(Some(s)) => Ok(s),
        _ => Err(CoreError::NoSuchService(name.to_string())),
    }
}

/// Starts deleting a service: it drains (its tasks are stopped with their stop timeout) and
/// is removed once none is left. Returns the service.
pub async fn delete(core: &Core, name: &str) -> Result<Service, CoreError> {
    let svc = get(core, name)?;
    let now = core.clock.now_ms();
    core.store
        .service_states
        .upsert(name, |old| {
            let mut st = old.unwrap_or_default();
            st.name = name.to_string();
            if !st.draining {
                st.draining = true;
                decide::note(
                    &mut st,
                    now,
                    "drain",
                    "deleting: stopping every task, then removing the service".into(),
                    json!({}),
                );
            }
            st
        })
        .await?;
    core.loops.wake(Loop::Services);
    Ok(svc)
}

pub fn get(core: &Core, name: &str) -> Result<Service, CoreError> {
    core.store
        .services
        .get(name)?
        .ok_or_else(|| CoreError::NoSuchService(name.to_string()))
}

/// A service, its state and its tasks that are not STOPPED.
pub fn describe(core: &Core, name: &str) -> Result<(Service, ServiceState, Vec<Task>), CoreError> {
    let svc = get(core, name)?;
    let state = core.store.service_states.get(name)?.unwrap_or_default();
    let filter = crate::store::TaskFilter {
        group: Some(svc.group()),
        ..Default::default()
    };
    let tasks = core
        .store
        .list_tasks(&filter, 0)?
        .0
        .into_iter()
        .filter(|t| t.status.is_active())
        .collect();
    Ok((svc, state, tasks))
}

/// Every service with its state.
pub fn list(core: &Core) -> Result<Vec<(Service, ServiceState)>, CoreError> {
    let mut out = Vec::new();
    for svc in core.store.services.list()? {
        let st = core
            .store
            .service_states
            .get(&svc.name)?
            .unwrap_or_default();
        out.push((svc, st));
    }
    Ok(out)
}

/// Records an external backlog (ReportBacklog) and wakes the services that follow it.
pub async fn report_backlog(core: &Core, b: Backlog) -> Result<Backlog, CoreError> {
    core.store.backlogs.put(&b).await?;
    core.loops.wake(Loop::Services);
    Ok(b)
}

/// Puts a service event on the bus (source `skiff.service`, resource `service/<name>`).
pub async fn announce(
    core: &Core,
    service: &str,
    detail_type: &str,
    detail: serde_json::Value,
) -> Result<(), CoreError> {
    let ev = Event {
        id: String::new(),
        source: SERVICE_SOURCE.to_string(),
        detail_type: detail_type.to_string(),
        replay: None,
        time_ms: core.clock.now_ms(),
        resources: vec![format!("service/{service}")],
        detail,
    };
    crate::events::put(core, vec![ev]).await.map(|_| ())
}

/// Writes the pass's state if the stored one is still what the pass read. A user's change
/// meanwhile (a new deployment, `rm`) wins: the pass is not written and the next one, woken
/// now, starts from it (tasks it created are found through their group).
pub async fn write_state(
    core: &Core,
    name: &str,
    read: &ServiceState,
    st: ServiceState,
) -> Result<(), CoreError> {
    let written = core
        .store
        .service_states
        .upsert(name, |old| match old {
            Some(o) if &o != read => o,
            _ => st.clone(),
        })
        .await?;
    if written != st {
        core.loops.wake(Loop::Services);
    }
    Ok(())
}

/// A task of deployment `deployment` (its definition `reference`), in the service's group,
/// with the service's stop timeout.
pub fn task_for(
    core: &Core,
    svc: &Service,
    deployment: &str,
    reference: &str,
) -> Result<Task, String> {
    let def = crate::taskdefs::resolve(core, "task_definition", reference)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("no task definition {reference:?}"))?;
    let mut spec = def.spec.clone();
    core.check_references(&spec).map_err(|e| e.to_string())?;
    spec.placement = svc.placement.clone();
    if svc.stop_timeout_secs > 0 {
        for c in spec.containers.iter_mut() {
            c.stop_timeout_secs = svc.stop_timeout_secs;
        }
    }
    Ok(Task::new(
        ulid::Ulid::new().to_string().to_lowercase(),
        Some(def.reference()),
        svc.group(),
        deployment.to_string(),
        spec,
        core.clock.now_ms(),
    ))
}
