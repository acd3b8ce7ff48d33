//! What the agent keeps about each task — in memory, and in `task.json` in the state dir so a
//! restarted agent resumes it: the spec, the phase of the task and of each container, exit codes
//! and the stop reason. Read by the supervisor (which writes it), the connection (reports) and
//! the credentials endpoint (is the task still running?).

use serde::{Deserialize, Serialize};
use skiff_proto::v1 as pb;

use crate::spec::TaskSpec;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Phase {
    Pending,
    Running,
    Stopping,
    Stopped,
}

impl Phase {
    /// The phase on the agent wire.
    pub fn wire(self) -> pb::RunState {
        match self {
            Phase::Pending => pb::RunState::Pending,
            Phase::Running => pb::RunState::Running,
            Phase::Stopping => pb::RunState::Stopping,
            Phase::Stopped => pb::RunState::Stopped,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "PENDING",
            Phase::Running => "RUNNING",
            Phase::Stopping => "STOPPING",
            Phase::Stopped => "STOPPED",
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ContainerRecord {
    pub name: String,
    pub phase: Phase,
    pub exit_code: Option<i32>,
    pub reason: String,
    /// HEALTHY, UNHEALTHY or UNKNOWN with a health check; empty without one.
    #[serde(default)]
    pub health: String,
}

/// What the agent keeps about a task, in memory and in `task.json`.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TaskRecord {
    pub spec: TaskSpec,
    pub phase: Phase,
    pub containers: Vec<ContainerRecord>,
    pub stop_code: String,
    pub reason: String,
    pub started_at_ms: i64,
    /// The task's addresses on its network (bridge and CNI modes).
    #[serde(default)]
    pub addresses: Vec<String>,
}

impl TaskRecord {
    pub fn new(spec: TaskSpec) -> TaskRecord {
        TaskRecord {
            containers: spec
                .containers
                .iter()
                .map(|c| ContainerRecord {
                    name: c.name.clone(),
                    phase: Phase::Pending,
                    exit_code: None,
                    reason: String::new(),
                    health: if c.health_check.is_some() {
                        "UNKNOWN".into()
                    } else {
                        String::new()
                    },
                })
                .collect(),
            spec,
            phase: Phase::Pending,
            stop_code: String::new(),
            reason: String::new(),
            started_at_ms: 0,
            addresses: Vec::new(),
        }
    }
}

/// A stop code as the agent keeps it in its records (the API's names), from the wire; None
/// when unspecified (a controller of the previous version sent only the text).
pub fn stop_code_name(c: pb::StopCode) -> Option<&'static str> {
    Some(match c {
        pb::StopCode::Unspecified => return None,
        pb::StopCode::TaskFailedToStart => "TaskFailedToStart",
        pb::StopCode::EssentialContainerExited => "EssentialContainerExited",
        pb::StopCode::UserInitiated => "UserInitiated",
        pb::StopCode::ServiceSchedulerInitiated => "ServiceSchedulerInitiated",
        pb::StopCode::TimedOut => "TimedOut",
        pb::StopCode::NodeLost => "NodeLost",
    })
}

/// A stop code on the wire, from the name the agent keeps (unspecified for none or an
/// unknown name; the text travels beside it).
pub fn wire_stop_code(name: &str) -> pb::StopCode {
    match name {
        "TaskFailedToStart" => pb::StopCode::TaskFailedToStart,
        "EssentialContainerExited" => pb::StopCode::EssentialContainerExited,
        "UserInitiated" => pb::StopCode::UserInitiated,
        "ServiceSchedulerInitiated" => pb::StopCode::ServiceSchedulerInitiated,
        "TimedOut" => pb::StopCode::TimedOut,
        "NodeLost" => pb::StopCode::NodeLost,
        _ => pb::StopCode::Unspecified,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_codes_cross_the_wire_as_enums_and_keep_their_names() {
        for name in [
            "TaskFailedToStart",
            "EssentialContainerExited",
            "UserInitiated",
            "ServiceSchedulerInitiated",
            "TimedOut",
            "NodeLost",
        ] {
            let wire = wire_stop_code(name);
            assert_ne!(wire, pb::StopCode::Unspecified, "{name}");
            assert_eq!(stop_code_name(wire), Some(name));
        }
        // No code yet (a running task), or a controller of the previous version: the text
        // travels alone.
        assert_eq!(wire_stop_code(""), pb::StopCode::Unspecified);
        assert_eq!(stop_code_name(pb::StopCode::Unspecified), None);
        assert_eq!(Phase::Stopping.wire(), pb::RunState::Stopping);
    }
}
