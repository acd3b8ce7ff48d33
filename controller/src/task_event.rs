//! The `Task State Change` event, written for every lifecycle move. It is encoded straight
//! from the task's fields: building a JSON tree per move, encoding and dropping it was a
//! sixth of the controller's CPU in a burst of placements (`bench_cluster`). The bytes are the
//! ones an `Event` with that detail encodes to — the detail's keys in the order a JSON object
//! keeps them (sorted) — so a reader decodes it as any other event.

use serde::Serialize;

use crate::model::Task;
use crate::store::EncodedEvent;

pub use skiff_model::lifecycle::TASK_SOURCE;
pub const TASK_STATE_CHANGE: &str = "Task State Change";

/// The event for a task as it is now; the detail mirrors the ECS event.
pub fn state_change_event(id: String, t: &Task, time_ms: i64) -> EncodedEvent {
    let resource = [format!("skiff:task/{}", t.id)];
    let envelope = Envelope {
        id: &id,
        source: TASK_SOURCE,
        detail_type: TASK_STATE_CHANGE,
        time_ms,
        resources: &resource,
        detail: Detail::of(t),
    };
    let json = EncodedEvent::record(&envelope);
    EncodedEvent { id, json }
}

/// `Event`'s fields, in its order.
#[derive(Serialize)]
struct Envelope<'a> {
    id: &'a str,
    source: &'a str,
    detail_type: &'a str,
    time_ms: i64,
    resources: &'a [String],
    detail: Detail<'a>,
}

/// Keys sorted, as in a JSON object.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Detail<'a> {
    attempt: u32,
    containers: Vec<Container<'a>>,
    cpu: f64,
    created_at: Option<String>,
    desired_status: &'a str,
    group: &'a str,
    last_status: &'a str,
    memory: u64,
    node_id: Option<&'a str>,
    pull_started_at: Option<String>,
    replaced_by: Option<&'a str>,
    replaces: Option<&'a str>,
    started_at: Option<String>,
    started_by: &'a str,
    stop_code: Option<&'a str>,
    stopped_at: Option<String>,
    stopped_reason: Option<&'a str>,
    stopping_at: Option<String>,
    task_arn: &'a str,
    task_definition_arn: Option<&'a str>,
    version: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Container<'a> {
    essential: bool,
    exit_code: Option<i32>,
    health_status: Option<&'a str>,
    image: &'a str,
    last_status: &'a str,
    name: &'a str,
    reason: Option<&'a str>,
}

/// RFC 3339 with milliseconds; None for a time not reached (0).
fn timestamp(ms: i64) -> Option<String> {
    (ms > 0)
        .then(|| chrono::DateTime::from_timestamp_millis(ms))
        .flatten()
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
}

fn unless_empty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

impl<'a> Detail<'a> {
    fn of(t: &'a Task) -> Self {
        Detail {
            attempt: t.attempt.max(1),
            containers: t
                .containers
                .iter()
                .map(|c| Container {
                    essential: c.essential,
                    exit_code: c.exit_code,
                    health_status: c.health.map(|h| h.as_str()),
                    image: &c.image,
                    last_status: &c.last_status,
                    name: &c.name,
                    reason: unless_empty(&c.reason),
                })
                .collect(),
            cpu: t.spec.cpu(),
            created_at: timestamp(t.created_at_ms),
            desired_status: t.desired.as_str(),
            group: &t.group,
            last_status: t.status.as_str(),
            memory: t.spec.memory_mib(),
            node_id: t.node_id.as_deref(),
            pull_started_at: timestamp(t.pending_at_ms),
            replaced_by: unless_empty(&t.replaced_by),
            replaces: unless_empty(&t.replaces),
            started_at: timestamp(t.started_at_ms),
            started_by: &t.started_by,
            stop_code: t.stop_code.map(|c| c.as_str()),
            stopped_at: timestamp(t.stopped_at_ms),
            stopped_reason: unless_empty(&t.stopped_reason),
            stopping_at: timestamp(t.stopping_at_ms),
            task_arn: &t.id,
            task_definition_arn: t.task_definition.as_deref(),
            version: t.version,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ContainerState, Event, Health};
    use serde_json::json;
    use skiff_model::lifecycle::{StopCode, TaskStatus};

    /// The detail as the ECS event shapes it, written out as a JSON tree.
    fn expected(t: &Task) -> serde_json::Value {
        let ts = |ms: i64| timestamp(ms);
        json!({
            "taskArn": t.id,
            "taskDefinitionArn": t.task_definition,
            "group": t.group,
            "startedBy": t.started_by,
            "nodeId": t.node_id,
            "lastStatus": t.status.as_str(),
            "desiredStatus": t.desired.as_str(),
            "stopCode": t.stop_code.map(|c| c.as_str()),
            "stoppedReason": (!t.stopped_reason.is_empty()).then_some(&t.stopped_reason),
            "cpu": t.spec.cpu(),
            "memory": t.spec.memory_mib(),
            "containers": t.containers.iter().map(|c| json!({
                "name": c.name,
                "image": c.image,
                "lastStatus": c.last_status,
                "exitCode": c.exit_code,
                "reason": (!c.reason.is_empty()).then_some(&c.reason),
                "essential": c.essential,
                "healthStatus": c.health.map(|h| h.as_str()),
            })).collect::<Vec<_>>(),
            "createdAt": ts(t.created_at_ms),
            "pullStartedAt": ts(t.pending_at_ms),
            "startedAt": ts(t.started_at_ms),
            "stoppingAt": ts(t.stopping_at_ms),
            "stoppedAt": ts(t.stopped_at_ms),
            "version": t.version,
            "attempt": t.attempt.max(1),
            "replaces": (!t.replaces.is_empty()).then_some(&t.replaces),
            "replacedBy": (!t.replaced_by.is_empty()).then_some(&t.replaced_by),
        })
    }

    fn decoded(e: &EncodedEvent) -> Event {
        serde_json::from_slice(&e.json[1..]).expect("a task event decodes")
    }

    fn bare() -> Task {
        crate::store::tests::task("01bare", TaskStatus::Provisioning, None)
    }

    fn full() -> Task {
        let mut t = crate::store::tests::task("01full", TaskStatus::Stopped, Some("n1"));
        t.task_definition = Some("web:3".into());
        t.group = "service:web".into();
        t.started_by = "rule/uploads".into();
        t.stop_code = Some(StopCode::EssentialContainerExited);
        t.stopped_reason = "main exited 2 \"quoted\"\n".into();
        (t.pending_at_ms, t.started_at_ms) = (1_700_000_000_100, 1_700_000_000_200);
        (t.stopping_at_ms, t.stopped_at_ms) = (1_700_000_000_300, 1_700_000_000_400);
        t.version = 7;
        t.attempt = 2;
        t.replaces = "01prev".into();
        t.replaced_by = "01next".into();
        t.containers = vec![ContainerState {
            name: "main".into(),
            image: "busybox:1.36".into(),
            essential: true,
            last_status: "STOPPED".into(),
            exit_code: Some(2),
            reason: "exited".into(),
            health: Some(Health::Unhealthy),
        }];
        t
    }

    /// Byte for byte what the event with the detail as a JSON tree encodes to, for a task
    /// with every optional field set and for one with none.
    #[test]
    fn encodes_as_the_event_with_its_detail_as_a_json_tree() {
        for t in [bare(), full()] {
            let written = state_change_event("01ev".into(), &t, 1_700_000_000_500);
            let tree = Event {
                id: "01ev".into(),
                source: TASK_SOURCE.into(),
                detail_type: TASK_STATE_CHANGE.into(),
                replay: None,
                time_ms: 1_700_000_000_500,
                resources: vec![format!("skiff:task/{}", t.id)],
                detail: expected(&t),
            };
            assert_eq!(written.id, "01ev");
            assert_eq!(
                String::from_utf8_lossy(&written.json),
                String::from_utf8_lossy(&EncodedEvent::from(tree.clone()).json),
                "task {}",
                t.id
            );
            assert_eq!(decoded(&written), tree);
        }
    }
}
