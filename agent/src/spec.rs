//! The agent's own view of what to run, converted from the agent-channel protobuf in one place.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use skiff_proto::v1 as pb;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    None,
    Host,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ContainerSpec {
    pub name: String,
    pub image: String,
    pub entrypoint: Vec<String>,
    pub command: Vec<String>,
    pub environment: BTreeMap<String, String>,
    pub cpu: f64,
    pub memory_mib: u64,
    pub essential: bool,
    pub stop_timeout_secs: u32,
    pub working_dir: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    pub task_id: String,
    pub containers: Vec<ContainerSpec>,
    pub network: NetworkMode,
    pub timeout_secs: u64,
}

impl TaskSpec {
    pub fn from_proto(s: &pb::StartTask) -> TaskSpec {
        TaskSpec {
            task_id: s.task_id.clone(),
            containers: s
                .containers
                .iter()
                .map(|c| ContainerSpec {
                    name: c.name.clone(),
                    image: c.image.clone(),
                    entrypoint: c.entrypoint.clone(),
                    command: c.command.clone(),
                    environment: c.environment.clone().into_iter().collect(),
                    cpu: c.cpu,
                    memory_mib: c.memory_mib,
                    essential: c.essential,
                    stop_timeout_secs: c.stop_timeout_seconds,
                    working_dir: c.working_dir.clone(),
                })
                .collect(),
            network: if s.network_mode == "host" {
                NetworkMode::Host
            } else {
                NetworkMode::None
            },
            timeout_secs: s.timeout_seconds,
        }
    }
}
