//! The agent's own view of what to run, converted from the agent-channel protobuf in one place.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use skiff_proto::v1 as pb;

use crate::images::{Credentials, PullPolicy};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NetworkMode {
    /// A namespace of its own per container, with only loopback.
    None,
    Host,
    /// One namespace for the task, attached to this CNI network (`bridge` is skiff's own).
    Network(String),
}

impl NetworkMode {
    /// The mode the controller names (`none`, `host`, `bridge`, `cni/<network>`).
    pub fn parse(s: &str) -> Option<NetworkMode> {
        match s {
            "" | "none" => Some(NetworkMode::None),
            "host" => Some(NetworkMode::Host),
            "bridge" => Some(NetworkMode::Network(crate::network::DEFAULT_NETWORK.into())),
            other => other
                .strip_prefix("cni/")
                .filter(|n| safe_component(n))
                .map(|n| NetworkMode::Network(n.to_string())),
        }
    }
}

/// A port to publish on the node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortMapping {
    pub container_port: u16,
    pub host_port: u16,
    pub protocol: String,
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
    #[serde(default)]
    pub pull_policy: PullPolicy,
    /// Credentials for the image's registry, from the controller. Never written to disk.
    #[serde(skip)]
    pub registry_auth: Option<Credentials>,
    #[serde(default)]
    pub privileged: bool,
    #[serde(default)]
    pub readonly_rootfs: bool,
    /// skiff-init runs as PID 1 and the command as its child.
    #[serde(default)]
    pub init: bool,
    /// Overrides the image's User when set.
    #[serde(default)]
    pub user: String,
    /// Secret values for this container. Never written to disk (task.json skips them).
    #[serde(skip)]
    pub secrets: Vec<SecretValue>,
    /// Host paths bind-mounted into the container.
    #[serde(default)]
    pub mounts: Vec<MountPoint>,
    /// Run in the container every interval (see `health.rs`).
    #[serde(default)]
    pub health_check: Option<HealthCheck>,
    /// Published on the node (the task's network).
    #[serde(default)]
    pub port_mappings: Vec<PortMapping>,
}

/// A container health check, its defaults resolved by the controller.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HealthCheck {
    /// `["CMD-SHELL", script]` or `["CMD", exe, args…]`.
    pub command: Vec<String>,
    pub interval_secs: u32,
    pub timeout_secs: u32,
    pub retries: u32,
    pub start_period_secs: u32,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MountPoint {
    pub source: String,
    pub target: String,
    pub read_only: bool,
}

/// A task running under a role: what its containers are told (see `credserve.rs`).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskIdentity {
    pub role: String,
    /// The first SKIFF_TASK_TOKEN. Never written to disk.
    #[serde(skip)]
    pub skiff_token: String,
    /// The role grants object-store access: serve it credentials.
    pub storage: bool,
    pub region: String,
    pub storage_endpoint: String,
}

impl std::fmt::Debug for TaskIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TaskIdentity")
            .field("role", &self.role)
            .field("storage", &self.storage)
            .finish_non_exhaustive()
    }
}

/// One secret for a container: env var `name`, or a file at `file` (absolute, in the
/// container). Debug never shows the value.
#[derive(Clone, PartialEq)]
pub struct SecretValue {
    pub name: String,
    pub file: String,
    pub value: Vec<u8>,
}

impl std::fmt::Debug for SecretValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretValue")
            .field("name", &self.name)
            .field("file", &self.file)
            .field("value", &"<redacted>")
            .finish()
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    pub task_id: String,
    pub containers: Vec<ContainerSpec>,
    pub network: NetworkMode,
    pub timeout_secs: u64,
    #[serde(default)]
    pub identity: Option<TaskIdentity>,
}

/// Whether a task id or container name is safe to use as one path component: the agent builds
/// directories from them, so it checks them itself rather than trusting the sender.
pub fn safe_component(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 255
        && s != "."
        && s != ".."
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

impl TaskSpec {
    /// Converts a StartTask, refusing ids and names that are not safe path components.
    pub fn from_proto(s: &pb::StartTask) -> Result<TaskSpec, String> {
        if !safe_component(&s.task_id) {
            return Err(format!("task id {:?} is not a safe name", s.task_id));
        }
        if let Some(c) = s.containers.iter().find(|c| !safe_component(&c.name)) {
            return Err(format!("container name {:?} is not a safe name", c.name));
        }
        let network = NetworkMode::parse(&s.network_mode).ok_or_else(|| {
            format!(
                "network mode {:?} is not one this agent knows",
                s.network_mode
            )
        })?;
        let mut policies = Vec::new();
        for c in &s.containers {
            policies.push(
                c.pull_policy
                    .parse::<PullPolicy>()
                    .map_err(|e| format!("container {}: pullPolicy: {e}", c.name))?,
            );
        }
        Ok(TaskSpec {
            task_id: s.task_id.clone(),
            containers: s
                .containers
                .iter()
                .zip(policies)
                .map(|(c, pull_policy)| ContainerSpec {
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
                    pull_policy,
                    registry_auth: c.registry_auth.as_ref().map(|a| Credentials {
                        username: a.username.clone(),
                        password: a.password.clone(),
                        server: a.server.clone(),
                    }),
                    privileged: c.privileged,
                    readonly_rootfs: c.readonly_root_filesystem,
                    init: c.init,
                    user: c.user.clone(),
                    secrets: c
                        .secrets
                        .iter()
                        .map(|s| SecretValue {
                            name: s.name.clone(),
                            file: s.file.clone(),
                            value: s.value.clone(),
                        })
                        .collect(),
                    mounts: c
                        .mounts
                        .iter()
                        .map(|m| MountPoint {
                            source: m.source.clone(),
                            target: m.target.clone(),
                            read_only: m.read_only,
                        })
                        .collect(),
                    port_mappings: c
                        .port_mappings
                        .iter()
                        .map(|p| PortMapping {
                            container_port: p.container_port as u16,
                            host_port: p.host_port as u16,
                            protocol: if p.protocol.is_empty() {
                                "tcp".into()
                            } else {
                                p.protocol.clone()
                            },
                        })
                        .collect(),
                    health_check: c.health_check.as_ref().map(|h| HealthCheck {
                        command: h.command.clone(),
                        interval_secs: h.interval_seconds.unwrap_or(30).max(1),
                        timeout_secs: h.timeout_seconds.unwrap_or(5).max(1),
                        retries: h.retries.unwrap_or(3).max(1),
                        start_period_secs: h.start_period_seconds.unwrap_or(0),
                    }),
                })
                .collect(),
            network,
            timeout_secs: s.timeout_seconds,
            identity: s.identity.as_ref().map(|i| TaskIdentity {
                role: i.role.clone(),
                skiff_token: i.skiff_token.clone(),
                storage: i.storage,
                region: i.region.clone(),
                storage_endpoint: i.storage_endpoint.clone(),
            }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_components_are_checked() {
        for ok in ["01m83mk2xvm4xst6xgehek67ez", "main", "side-car_1", "v1.2"] {
            assert!(safe_component(ok), "{ok}");
        }
        for bad in ["", ".", "..", "../etc", "a/b", "a\0b", "x y"] {
            assert!(!safe_component(bad), "{bad:?}");
        }
        let start = pb::StartTask {
            task_id: "../../etc".into(),
            ..Default::default()
        };
        assert!(TaskSpec::from_proto(&start)
            .unwrap_err()
            .contains("task id"));
        let start = pb::StartTask {
            task_id: "t1".into(),
            containers: vec![pb::ContainerSpec {
                name: "../x".into(),
                ..Default::default()
            }],
            ..Default::default()
        };
        assert!(TaskSpec::from_proto(&start)
            .unwrap_err()
            .contains("container name"));
    }
}
