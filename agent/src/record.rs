//! What the agent keeps about each task — in memory, and in `task.json` in the state dir so a
//! restarted agent resumes it: the spec, the phase of the task and of each container, exit codes
//! and the stop reason. Read by the supervisor (which writes it), the connection (reports) and
//! the credentials endpoint (is the task still running?).

use serde::{Deserialize, Serialize};

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
                })
                .collect(),
            spec,
            phase: Phase::Pending,
            stop_code: String::new(),
            reason: String::new(),
            started_at_ms: 0,
        }
    }
}
