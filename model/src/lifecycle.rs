//! The task state machine: the only place that decides how a task's status may change.
//!
//! States only move forward (PROVISIONING → PENDING → RUNNING → STOPPING → STOPPED). A repeated
//! report of the state a task is already in is a no-op, so every agent message is idempotent.
//! Everything here is pure; the store persists what `apply` returns.

use crate::model::{ContainerState, Task};
// The statuses are records' fields (model.rs); they are named here too, where the machine is.
pub use crate::model::{DesiredStatus, StopCode, TaskStatus};

/// The `source` of the events every task change puts on the bus.
pub const TASK_SOURCE: &str = "skiff.task";

/// Something that happened to a task.
#[derive(Clone, Debug, PartialEq)]
pub enum TaskEvent {
    /// The scheduler assigned the task to a node.
    Placed { node_id: String },
    /// The agent started the task's containers (on a network: with these addresses).
    Started {
        containers: Vec<ContainerState>,
        addresses: Vec<String>,
    },
    /// Someone (user, scheduler, timeout) asked the task to stop.
    StopRequested { code: StopCode, reason: String },
    /// The agent reports the task is winding down (an essential container exited).
    Stopping { containers: Vec<ContainerState> },
    /// The task is over: the agent reported it, it never could start, or its node was lost.
    Stopped {
        code: StopCode,
        reason: String,
        containers: Vec<ContainerState>,
    },
}

impl TaskEvent {
    fn name(&self) -> &'static str {
        match self {
            TaskEvent::Placed { .. } => "Placed",
            TaskEvent::Started { .. } => "Started",
            TaskEvent::StopRequested { .. } => "StopRequested",
            TaskEvent::Stopping { .. } => "Stopping",
            TaskEvent::Stopped { .. } => "Stopped",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("task in {from} cannot take event {event}")]
pub struct IllegalTransition {
    pub from: &'static str,
    pub event: &'static str,
}

/// The outcome of a legal event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The task moved to a new status (emit a Task State Change event).
    Moved(TaskStatus),
    /// A repeat of what the task already knows: nothing to store.
    Unchanged,
    /// The same status, but a container's health changed: stored, with a Task State Change
    /// event (ECS sends one too).
    Updated,
}

/// The transition table. Returns the status the event leads to, or why it cannot happen.
pub fn next_status(from: TaskStatus, event: &TaskEvent) -> Result<Outcome, IllegalTransition> {
    use Outcome::*;
    use TaskStatus::*;
    let illegal = || IllegalTransition {
        from: from.as_str(),
        event: event.name(),
    };
    match (from, event) {
        (Provisioning, TaskEvent::Placed { .. }) => Ok(Moved(Pending)),
        (Pending, TaskEvent::Placed { .. }) => Ok(Unchanged),
        (Provisioning, TaskEvent::Started { .. }) => Err(illegal()),
        (Pending, TaskEvent::Started { .. }) => Ok(Moved(Running)),
        (Running, TaskEvent::Started { .. }) => Ok(Unchanged),
        // A task that never reached a node has nothing to wind down.
        (Provisioning, TaskEvent::StopRequested { .. }) => Ok(Moved(Stopped)),
        (Pending | Running, TaskEvent::StopRequested { .. }) => Ok(Moved(Stopping)),
        (Stopping | Stopped, TaskEvent::StopRequested { .. }) => Ok(Unchanged),
        (Pending | Running, TaskEvent::Stopping { .. }) => Ok(Moved(Stopping)),
        (Stopping | Stopped, TaskEvent::Stopping { .. }) => Ok(Unchanged),
        (Provisioning, TaskEvent::Stopping { .. }) => Err(illegal()),
        (Stopped, TaskEvent::Stopped { .. }) => Ok(Unchanged),
        (_, TaskEvent::Stopped { .. }) => Ok(Moved(Stopped)),
        (Stopping | Stopped, TaskEvent::Placed { .. } | TaskEvent::Started { .. }) => {
            Err(illegal())
        }
        (Running, TaskEvent::Placed { .. }) => Err(illegal()),
    }
}

/// Applies an event to a task at time `now_ms`, updating status, timestamps and stop details.
pub fn apply(task: &mut Task, event: TaskEvent, now_ms: i64) -> Result<Outcome, IllegalTransition> {
    let mut outcome = next_status(task.status, &event)?;
    match event {
        TaskEvent::Placed { node_id } => {
            if outcome != Outcome::Unchanged {
                task.node_id = Some(node_id);
                task.status_reason.clear();
                task.unplaceable = false;
            }
        }
        TaskEvent::Started {
            containers,
            addresses,
        } => {
            if outcome == Outcome::Unchanged && health_changed(&task.containers, &containers) {
                outcome = Outcome::Updated;
                task.version += 1;
            }
            if !containers.is_empty() {
                task.containers = containers;
            }
            if !addresses.is_empty() {
                task.addresses = addresses;
            }
        }
        TaskEvent::Stopping { containers } => {
            if outcome == Outcome::Unchanged && health_changed(&task.containers, &containers) {
                outcome = Outcome::Updated;
                task.version += 1;
            }
            if !containers.is_empty() {
                task.containers = containers;
            }
        }
        TaskEvent::StopRequested { code, reason } => {
            // The first reason to stop is the one that counts.
            if task.desired != DesiredStatus::Stopped {
                task.desired = DesiredStatus::Stopped;
                task.stop_code = Some(code);
                task.stopped_reason = reason;
            }
        }
        TaskEvent::Stopped {
            code,
            reason,
            containers,
        } => {
            if outcome != Outcome::Unchanged {
                task.desired = DesiredStatus::Stopped;
                if task.stop_code.is_none() {
                    task.stop_code = Some(code);
                    task.stopped_reason = reason;
                }
                if !containers.is_empty() {
                    task.containers = containers;
                }
                for c in &mut task.containers {
                    c.last_status = TaskStatus::Stopped.as_str().to_string();
                }
            }
        }
    }
    if let Outcome::Moved(to) = outcome {
        task.status = to;
        let stamp = match to {
            TaskStatus::Provisioning => &mut task.created_at_ms,
            TaskStatus::Pending => &mut task.pending_at_ms,
            TaskStatus::Running => &mut task.started_at_ms,
            TaskStatus::Stopping => &mut task.stopping_at_ms,
            TaskStatus::Stopped => &mut task.stopped_at_ms,
        };
        *stamp = now_ms;
        task.version += 1;
    }
    Ok(outcome)
}

/// How many times in all a task's work is started when skiff's own failure stopped it before
/// it ran (its node lost: powered off, cut off, its agent gone).
pub const MAX_STARTS: u32 = 3;

/// The task that starts `lost`'s work again, if `lost` was just stopped `NodeLost` before any
/// of its containers ran (`was`: its status and desired status before), nobody had asked it to
/// stop, it is no service's (a service's loop replaces its own tasks) and it has starts left
/// (`MAX_STARTS`). Its node being gone, nothing of it ran, so starting it again loses nothing
/// and doubles nothing; a new task (not the same one moved back) because its old node, if it
/// returns, may still hold the old id, which it is told to stop. `lost` records its successor
/// in `replaced_by` and its stop reason.
pub fn start_again(
    lost: &mut Task,
    was: (TaskStatus, DesiredStatus),
    new_id: impl FnOnce() -> String,
    now_ms: i64,
) -> Option<Task> {
    let lost_before_running = lost.status == TaskStatus::Stopped
        && lost.stop_code == Some(StopCode::NodeLost)
        && was == (TaskStatus::Pending, DesiredStatus::Running)
        && lost.started_at_ms == 0;
    let attempt = lost.attempt.max(1) + 1;
    if !lost_before_running || lost.group.starts_with("service:") || attempt > MAX_STARTS {
        return None;
    }
    let mut next = Task::new(
        new_id(),
        lost.task_definition.clone(),
        lost.group.clone(),
        lost.started_by.clone(),
        lost.spec.clone(),
        now_ms,
    );
    next.attempt = attempt;
    next.replaces = lost.id.clone();
    lost.replaced_by = next.id.clone();
    lost.stopped_reason = format!(
        "{}; it had not started, so it starts again as task {} (start {attempt} of {MAX_STARTS})",
        lost.stopped_reason, next.id
    );
    Some(next)
}

/// Whether a report changes any container's health.
fn health_changed(known: &[ContainerState], reported: &[ContainerState]) -> bool {
    reported.iter().any(|r| {
        known
            .iter()
            .find(|k| k.name == r.name)
            .is_some_and(|k| k.health != r.health)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{NetworkMode, TaskSpec};

    fn events() -> Vec<TaskEvent> {
        vec![
            TaskEvent::Placed {
                node_id: "n1".into(),
            },
            TaskEvent::Started {
                containers: vec![],
                addresses: vec![],
            },
            TaskEvent::StopRequested {
                code: StopCode::UserInitiated,
                reason: "asked".into(),
            },
            TaskEvent::Stopping { containers: vec![] },
            TaskEvent::Stopped {
                code: StopCode::EssentialContainerExited,
                reason: "exited".into(),
                containers: vec![],
            },
        ]
    }

    fn task_in(status: TaskStatus) -> Task {
        let spec = TaskSpec {
            placement: Default::default(),
            containers: vec![],
            network_mode: NetworkMode::None,
            timeout_secs: 0,
            task_role: String::new(),
            input: None,
        };
        let mut t = Task::new("t".into(), None, String::new(), String::new(), spec, 0);
        t.status = status;
        t.version = 0;
        t
    }

    /// The whole table, written out independently of `next_status`: (from, event index) → result.
    /// `None` = illegal, `Some(None)` = unchanged, `Some(Some(s))` = moved to s.
    fn expected(from: TaskStatus, event: usize) -> Option<Option<TaskStatus>> {
        use TaskStatus::*;
        let table: [[Option<Option<TaskStatus>>; 5]; 5] = [
            // Placed, Started, StopRequested, Stopping, Stopped
            [
                Some(Some(Pending)),
                None,
                Some(Some(Stopped)),
                None,
                Some(Some(Stopped)),
            ], // PROVISIONING
            [
                Some(None),
                Some(Some(Running)),
                Some(Some(Stopping)),
                Some(Some(Stopping)),
                Some(Some(Stopped)),
            ], // PENDING
            [
                None,
                Some(None),
                Some(Some(Stopping)),
                Some(Some(Stopping)),
                Some(Some(Stopped)),
            ], // RUNNING
            [None, None, Some(None), Some(None), Some(Some(Stopped))], // STOPPING
            [None, None, Some(None), Some(None), Some(None)],          // STOPPED
        ];
        let row = TaskStatus::ALL.iter().position(|s| *s == from).unwrap();
        table[row][event]
    }

    #[test]
    fn every_state_and_event_follows_the_table() {
        for from in TaskStatus::ALL {
            for (i, ev) in events().into_iter().enumerate() {
                let got = next_status(from, &ev);
                match expected(from, i) {
                    None => assert!(got.is_err(), "{from:?} + {ev:?} should be illegal"),
                    Some(None) => assert_eq!(got, Ok(Outcome::Unchanged), "{from:?} + {ev:?}"),
                    Some(Some(to)) => assert_eq!(got, Ok(Outcome::Moved(to)), "{from:?} + {ev:?}"),
                }
            }
        }
    }

    #[test]
    fn status_never_moves_backwards() {
        for from in TaskStatus::ALL {
            for ev in events() {
                if let Ok(Outcome::Moved(to)) = next_status(from, &ev) {
                    assert!(to > from, "{from:?} -> {to:?} goes backwards");
                }
            }
        }
    }

    #[test]
    fn apply_stamps_times_and_bumps_version_only_on_moves() {
        let mut t = task_in(TaskStatus::Provisioning);
        apply(&mut t, events()[0].clone(), 10).unwrap();
        assert_eq!(
            (t.status, t.pending_at_ms, t.version),
            (TaskStatus::Pending, 10, 1)
        );
        assert_eq!(t.node_id.as_deref(), Some("n1"));
        // A repeat is a no-op.
        apply(&mut t, events()[0].clone(), 20).unwrap();
        assert_eq!((t.pending_at_ms, t.version), (10, 1));
        apply(&mut t, events()[1].clone(), 30).unwrap();
        assert_eq!((t.status, t.started_at_ms), (TaskStatus::Running, 30));
    }

    #[test]
    fn first_stop_code_wins() {
        let mut t = task_in(TaskStatus::Running);
        apply(&mut t, events()[2].clone(), 1).unwrap();
        assert_eq!(t.status, TaskStatus::Stopping);
        assert_eq!(t.desired, DesiredStatus::Stopped);
        apply(&mut t, events()[4].clone(), 2).unwrap();
        assert_eq!(t.status, TaskStatus::Stopped);
        assert_eq!(t.stop_code, Some(StopCode::UserInitiated));
        assert_eq!(t.stopped_reason, "asked");
    }

    #[test]
    fn natural_exit_records_its_own_code() {
        let mut t = task_in(TaskStatus::Running);
        apply(&mut t, events()[4].clone(), 5).unwrap();
        assert_eq!(t.stop_code, Some(StopCode::EssentialContainerExited));
        assert_eq!(t.desired, DesiredStatus::Stopped);
        assert_eq!(t.stopped_at_ms, 5);
    }

    #[test]
    fn stopping_a_provisioning_task_stops_it_at_once() {
        let mut t = task_in(TaskStatus::Provisioning);
        apply(&mut t, events()[2].clone(), 7).unwrap();
        assert_eq!(t.status, TaskStatus::Stopped);
        assert_eq!(t.stopped_at_ms, 7);
    }

    #[test]
    fn names_round_trip() {
        for s in TaskStatus::ALL {
            assert_eq!(TaskStatus::parse(s.as_str()), Some(s));
        }
        for c in StopCode::ALL {
            assert_eq!(StopCode::parse(c.as_str()), Some(c));
        }
        assert_eq!(TaskStatus::parse("running"), Some(TaskStatus::Running));
        assert_eq!(TaskStatus::parse("nope"), None);
    }

    #[test]
    fn a_health_change_while_running_is_stored_with_an_event_and_a_repeat_is_not() {
        use crate::model::Health;
        let mut t = task_in(TaskStatus::Running);
        t.containers = vec![ContainerState {
            name: "web".into(),
            image: "img".into(),
            essential: true,
            last_status: "RUNNING".into(),
            exit_code: None,
            reason: String::new(),
            health: Some(Health::Unknown),
        }];
        let mut healthy = t.containers.clone();
        healthy[0].health = Some(Health::Healthy);
        let version = t.version;
        let started = TaskEvent::Started {
            containers: healthy.clone(),
            addresses: vec![],
        };
        assert_eq!(apply(&mut t, started.clone(), 5), Ok(Outcome::Updated));
        assert_eq!(t.containers[0].health, Some(Health::Healthy));
        assert_eq!((t.status, t.version), (TaskStatus::Running, version + 1));
        assert_eq!(apply(&mut t, started, 6), Ok(Outcome::Unchanged));
    }

    /// A task stopped by `event` from `status` (desired RUNNING unless asked to stop first).
    fn lost_from(status: TaskStatus, asked_to_stop: bool) -> (Task, (TaskStatus, DesiredStatus)) {
        let mut t = task_in(status);
        t.group = "family:web".into();
        if status == TaskStatus::Running {
            t.started_at_ms = 3;
        }
        if asked_to_stop {
            t.desired = DesiredStatus::Stopped;
        }
        let was = (t.status, t.desired);
        let lost = TaskEvent::Stopped {
            code: StopCode::NodeLost,
            reason: "node n1 was silent for more than 30s".into(),
            containers: vec![],
        };
        apply(&mut t, lost, 9).unwrap();
        (t, was)
    }

    #[test]
    fn a_task_lost_with_its_node_before_it_ran_starts_again_as_a_new_task_a_bounded_number_of_times(
    ) {
        let (mut lost, was) = lost_from(TaskStatus::Pending, false);
        let next = start_again(&mut lost, was, || "t2".into(), 10).expect("started again");
        assert_eq!(
            (next.status, next.node_id.as_deref(), next.attempt),
            (TaskStatus::Provisioning, None, 2)
        );
        assert_eq!(
            (next.replaces.as_str(), next.group.as_str()),
            ("t", "family:web")
        );
        assert_eq!(next.spec, lost.spec);
        assert_eq!(lost.replaced_by, "t2");
        assert_eq!(
            lost.stopped_reason,
            "node n1 was silent for more than 30s; it had not started, so it starts again as \
             task t2 (start 2 of 3)"
        );
        // The third start is the last.
        let mut second = next;
        second.status = TaskStatus::Pending;
        second.node_id = Some("n2".into());
        let was = (second.status, second.desired);
        apply(
            &mut second,
            TaskEvent::Stopped {
                code: StopCode::NodeLost,
                reason: "lost".into(),
                containers: vec![],
            },
            11,
        )
        .unwrap();
        let mut third = start_again(&mut second, was, || "t3".into(), 12).expect("third start");
        assert_eq!((third.attempt, third.replaces.as_str()), (3, "t2"));
        third.status = TaskStatus::Pending;
        let was = (third.status, third.desired);
        apply(
            &mut third,
            TaskEvent::Stopped {
                code: StopCode::NodeLost,
                reason: "lost".into(),
                containers: vec![],
            },
            13,
        )
        .unwrap();
        assert_eq!(start_again(&mut third, was, || "t4".into(), 14), None);
        assert_eq!(third.replaced_by, "");
    }

    #[test]
    fn a_task_that_ran_was_asked_to_stop_belongs_to_a_service_or_stopped_otherwise_is_not_started_again(
    ) {
        // It ran: its work may be half done.
        let (mut ran, was) = lost_from(TaskStatus::Running, false);
        assert_eq!(start_again(&mut ran, was, || "x".into(), 10), None);
        // Someone asked it to stop.
        let (mut asked, was) = lost_from(TaskStatus::Pending, true);
        assert_eq!(start_again(&mut asked, was, || "x".into(), 10), None);
        // A service's loop replaces its own tasks.
        let (mut of_service, was) = lost_from(TaskStatus::Pending, false);
        of_service.group = "service:web".into();
        assert_eq!(start_again(&mut of_service, was, || "x".into(), 10), None);
        // It failed to start for a reason of its own.
        let mut failed = task_in(TaskStatus::Pending);
        let was = (failed.status, failed.desired);
        let event = TaskEvent::Stopped {
            code: StopCode::TaskFailedToStart,
            reason: "no such image".into(),
            containers: vec![],
        };
        apply(&mut failed, event, 9).unwrap();
        assert_eq!(start_again(&mut failed, was, || "x".into(), 10), None);
        for t in [&ran, &asked, &of_service, &failed] {
            assert_eq!(t.replaced_by, "", "{t:?}");
            assert!(!t.stopped_reason.contains("starts again"), "{t:?}");
        }
    }
}
