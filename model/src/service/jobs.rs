//! Task-per-message decisions, pure (KEDA's ScaledJob, done right): how many messages to
//! lease — one task each — and how each finished task settles its message. Every message is
//! leased to the task it starts *before* that task exists, so a task still waiting for a node
//! already holds its message: no second task is started for it while capacity is short
//! (KEDA #525, #1222, #7329). Concurrency is `autoscaling.max`, counting every task not yet
//! STOPPED. A new deployment only changes what the next tasks run: running jobs are never
//! stopped for it (KEDA #2098, #6440).

use serde_json::json;

use super::{note, Announce, SERVICE_ACTION};
use crate::model::{RolloutState, Service, ServiceState};

/// What a finished job does to its message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Settle {
    /// It exited 0: the message is done.
    Delete,
    /// It failed (or was stopped): the message is visible again at once, and after the
    /// queue's max receives it goes to its dead-letter queue.
    Release,
}

/// A job that ended since the last pass.
#[derive(Clone, Debug, PartialEq)]
pub struct FinishedJob {
    pub task: String,
    /// Every essential container exited 0.
    pub succeeded: bool,
    pub reason: String,
}

pub struct JobInputs<'a> {
    pub service: &'a Service,
    pub state: &'a ServiceState,
    /// Jobs not yet STOPPED (leased, placed, running or stopping).
    pub active: usize,
    pub finished: &'a [FinishedJob],
    /// Messages receivable now.
    pub visible: u64,
    pub now_ms: i64,
}

#[derive(Debug, PartialEq)]
pub struct JobPass {
    pub state: ServiceState,
    /// How many messages to lease now, one new task each.
    pub lease: usize,
    pub settle: Vec<(String, Settle)>,
    /// Stop every running job (the service is being deleted; their messages go back).
    pub stop_all: bool,
    pub events: Vec<Announce>,
    /// Draining is over: delete the service.
    pub delete: bool,
}

/// One pass of a task-per-message service.
pub fn reconcile(i: &JobInputs) -> JobPass {
    let mut st = i.state.clone();
    st.name = i.service.name.clone();
    let now = i.now_ms;
    let mut events = Vec::new();
    let settle: Vec<(String, Settle)> = i
        .finished
        .iter()
        .map(|f| {
            let how = if f.succeeded {
                Settle::Delete
            } else {
                Settle::Release
            };
            events.push(Announce {
                detail_type: SERVICE_ACTION,
                detail: json!({
                    "service": i.service.name, "action": "job-finished", "task": f.task,
                    "succeeded": f.succeeded, "reason": f.reason,
                    "message": if f.succeeded { "deleted" } else { "released" },
                }),
            });
            (f.task.clone(), how)
        })
        .collect();
    // A deployment rolls out by what new jobs run: it is complete as soon as it is primary.
    if let Some(p) = st.deployments.first_mut() {
        if p.rollout == RolloutState::InProgress {
            p.rollout = RolloutState::Completed;
            p.updated_ms = now;
        }
    }
    for d in st.deployments.iter_mut().skip(1) {
        d.status = crate::model::DeploymentStatus::Inactive;
    }
    let max = i.service.autoscaling.as_ref().map_or(0, |a| a.max) as usize;
    let lease = if st.draining {
        0
    } else {
        (max.saturating_sub(i.active)).min(i.visible.min(usize::MAX as u64) as usize)
    };
    if lease > 0 {
        let detail = json!({
            "service": i.service.name, "action": "start-jobs", "count": lease,
            "visible": i.visible, "running": i.active, "max": max,
        });
        note(
            &mut st,
            now,
            "start-jobs",
            format!(
                "starting {lease} job(s): {} message(s) visible, {} of {max} running",
                i.visible, i.active
            ),
            detail.clone(),
        );
        events.push(Announce {
            detail_type: SERVICE_ACTION,
            detail,
        });
    }
    JobPass {
        delete: st.draining && i.active == 0,
        stop_all: st.draining && i.active > 0,
        state: st,
        lease,
        settle,
        events,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Autoscaling, Deployment, DeploymentConfig, DeploymentStatus, ServiceMode};

    fn jobs(max: u32) -> Service {
        Service {
            name: "thumbs".into(),
            description: String::new(),
            task_definition: "thumb".into(),
            desired_count: 0,
            deployment: DeploymentConfig::default(),
            stop_timeout_secs: 0,
            placement: Default::default(),
            autoscaling: Some(Autoscaling {
                source: "queue:uploads".into(),
                min: 0,
                max,
                target_per_task: 1,
                scale_out_cooldown_secs: 0,
                scale_in_cooldown_secs: 0,
                stale_after_secs: 60,
            }),
            mode: ServiceMode::TaskPerMessage,
            created_ms: 0,
            updated_ms: 0,
        }
    }

    fn state() -> ServiceState {
        ServiceState {
            name: "thumbs".into(),
            deployments: vec![Deployment {
                id: "d2".into(),
                task_definition: "thumb:2".into(),
                status: DeploymentStatus::Primary,
                rollout: RolloutState::InProgress,
                reason: String::new(),
                failed_tasks: 0,
                created_ms: 0,
                updated_ms: 0,
            }],
            ..Default::default()
        }
    }

    fn pass(max: u32, active: usize, visible: u64, finished: &[FinishedJob]) -> JobPass {
        reconcile(&JobInputs {
            service: &jobs(max),
            state: &state(),
            active,
            finished,
            visible,
            now_ms: 1_000,
        })
    }

    #[test]
    fn one_job_per_visible_message_up_to_the_concurrency_counting_jobs_not_yet_running() {
        assert_eq!(pass(5, 0, 3, &[]).lease, 3);
        assert_eq!(pass(5, 0, 100, &[]).lease, 5, "max 5 at once");
        // Three jobs still waiting for a node hold their messages: only two more start.
        assert_eq!(pass(5, 3, 100, &[]).lease, 2);
        assert_eq!(pass(5, 5, 100, &[]).lease, 0);
        assert_eq!(pass(5, 0, 0, &[]).lease, 0, "nothing to do: nothing runs");
    }

    #[test]
    fn exit_0_deletes_the_message_and_a_failure_releases_it() {
        let finished = [
            FinishedJob {
                task: "a".into(),
                succeeded: true,
                reason: "exit 0".into(),
            },
            FinishedJob {
                task: "b".into(),
                succeeded: false,
                reason: "exit 2".into(),
            },
        ];
        let p = pass(5, 0, 0, &finished);
        assert_eq!(
            p.settle,
            vec![("a".into(), Settle::Delete), ("b".into(), Settle::Release)]
        );
        assert_eq!(p.events.len(), 2);
    }

    #[test]
    fn a_new_deployment_completes_at_once_and_stops_no_running_job() {
        let p = pass(5, 4, 0, &[]);
        assert_eq!(p.state.deployments[0].rollout, RolloutState::Completed);
        assert!(!p.stop_all);
    }

    #[test]
    fn deleting_stops_the_jobs_then_the_service_goes() {
        let mut st = state();
        st.draining = true;
        let svc = jobs(5);
        let i = |active| JobInputs {
            service: &svc,
            state: &st,
            active,
            finished: &[],
            visible: 10,
            now_ms: 0,
        };
        let p = reconcile(&i(2));
        assert!(p.stop_all && !p.delete && p.lease == 0);
        let p = reconcile(&i(0));
        assert!(p.delete);
    }
}
