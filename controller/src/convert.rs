//! Conversions between domain types and the generated protobuf types: the one place where the
//! two meet, so a proto change does not ripple through the controller.

use skiff_proto::v1 as pb;

use crate::model::{ContainerDef, ContainerState, Event, Task, TaskDefinition, TaskSpec};
use skiff_model::lifecycle::StopCode;

pub fn container_def(c: &ContainerDef) -> pb::ContainerDefinition {
    pb::ContainerDefinition {
        name: c.name.clone(),
        image: c.image.clone(),
        entrypoint: c.entrypoint.clone(),
        command: c.command.clone(),
        environment: c.environment.clone().into_iter().collect(),
        cpu: c.cpu,
        memory_mib: c.memory_mib,
        essential: Some(c.essential),
        stop_timeout_seconds: Some(c.stop_timeout_secs),
        working_dir: c.working_dir.clone(),
        pull_policy: c.pull_policy.clone(),
        repository_credentials: c.repository_credentials.clone(),
        privileged: c.privileged,
        readonly_root_filesystem: c.readonly_root_filesystem,
        init_process_enabled: c.init_process_enabled,
        user: c.user.clone(),
        secrets: c
            .secrets
            .iter()
            .map(|r| pb::SecretRef {
                name: r.name.clone(),
                value_from: r.value_from.clone(),
                file: r.file.clone(),
            })
            .collect(),
        mounts: c.mounts.iter().map(mount).collect(),
    }
}

fn mount(m: &crate::model::MountPoint) -> pb::MountPoint {
    pb::MountPoint {
        source: m.source.clone(),
        target: m.target.clone(),
        read_only: m.read_only,
    }
}

pub fn task_definition(d: &TaskDefinition) -> pb::TaskDefinition {
    pb::TaskDefinition {
        family: d.family.clone(),
        revision: d.revision,
        containers: d.spec.containers.iter().map(container_def).collect(),
        network_mode: d.spec.network_mode.as_str().to_string(),
        timeout_seconds: d.spec.timeout_secs,
        status: match d.status {
            crate::model::DefinitionStatus::Active => "ACTIVE",
            crate::model::DefinitionStatus::Inactive => "INACTIVE",
        }
        .to_string(),
        registered_at_ms: d.registered_at_ms,
        task_role: d.spec.task_role.clone(),
    }
}

pub fn task(t: &Task) -> pb::Task {
    pb::Task {
        id: t.id.clone(),
        task_definition: t.task_definition.clone().unwrap_or_default(),
        group: t.group.clone(),
        node_id: t.node_id.clone().unwrap_or_default(),
        last_status: t.status.as_str().to_string(),
        desired_status: t.desired.as_str().to_string(),
        stop_code: t
            .stop_code
            .map(|c| c.as_str().to_string())
            .unwrap_or_default(),
        stopped_reason: t.stopped_reason.clone(),
        containers: t
            .containers
            .iter()
            .map(|c| pb::ContainerState {
                name: c.name.clone(),
                image: c.image.clone(),
                last_status: c.last_status.clone(),
                exit_code: c.exit_code,
                reason: c.reason.clone(),
                essential: c.essential,
            })
            .collect(),
        cpu: t.spec.cpu(),
        memory_mib: t.spec.memory_mib(),
        timeout_seconds: t.spec.timeout_secs,
        network_mode: t.spec.network_mode.as_str().to_string(),
        started_by: t.started_by.clone(),
        status_reason: t.status_reason.clone(),
        unplaceable: t.unplaceable,
        created_at_ms: t.created_at_ms,
        pending_at_ms: t.pending_at_ms,
        started_at_ms: t.started_at_ms,
        stopping_at_ms: t.stopping_at_ms,
        stopped_at_ms: t.stopped_at_ms,
        version: t.version,
        task_role: t.spec.task_role.clone(),
    }
}

pub fn event(e: &Event) -> pb::Event {
    pb::Event {
        id: e.id.clone(),
        source: e.source.clone(),
        detail_type: e.detail_type.clone(),
        time_ms: e.time_ms,
        resources: e.resources.clone(),
        detail_json: e.detail.to_string(),
    }
}

/// Where a rule-started task's containers find the event.
pub const EVENT_FILE: &str = "/run/skiff/event.json";
/// Larger inputs go only to the file (one env string may hold at most 128 KiB).
pub const EVENT_ENV_MAX: usize = 64 * 1024;

/// What the agent needs to run a task; `creds` resolves a container's named registry
/// credentials (the agent receives them, they are never stored with the task).
/// `secret` opens a stored secret by name; a secret that cannot be had fails the start.
/// `identity` is the task's role identity, when it runs under one.
pub fn start_task(
    id: &str,
    spec: &TaskSpec,
    identity: Option<pb::TaskIdentity>,
    creds: impl Fn(&str) -> Option<pb::RegistryAuth>,
    secret: impl Fn(&str) -> Result<Vec<u8>, String>,
) -> Result<pb::StartTask, String> {
    let mut secrets = Vec::new();
    for c in &spec.containers {
        let mut values = Vec::new();
        if let Some(input) = &spec.input {
            // The event travels like a secret: on the container's tmpfs, never the node's disk.
            if input.len() < EVENT_ENV_MAX {
                values.push(pb::SecretValue {
                    name: "SKIFF_EVENT".into(),
                    file: String::new(),
                    value: input.clone().into_bytes(),
                });
            }
            values.push(pb::SecretValue {
                name: String::new(),
                file: EVENT_FILE.into(),
                value: input.clone().into_bytes(),
            });
        }
        for r in &c.secrets {
            values.push(pb::SecretValue {
                name: r.name.clone(),
                file: r.file.clone(),
                value: secret(&r.value_from).map_err(|e| format!("container {}: {e}", c.name))?,
            });
        }
        secrets.push(values);
    }
    Ok(pb::StartTask {
        task_id: id.to_string(),
        containers: spec
            .containers
            .iter()
            .zip(secrets)
            .map(|(c, secrets)| pb::ContainerSpec {
                name: c.name.clone(),
                image: c.image.clone(),
                entrypoint: c.entrypoint.clone(),
                command: c.command.clone(),
                environment: c.environment.clone().into_iter().collect(),
                cpu: c.cpu,
                memory_mib: c.memory_mib,
                essential: c.essential,
                stop_timeout_seconds: c.stop_timeout_secs,
                working_dir: c.working_dir.clone(),
                pull_policy: c.pull_policy.clone(),
                registry_auth: (!c.repository_credentials.is_empty())
                    .then(|| creds(&c.repository_credentials))
                    .flatten(),
                privileged: c.privileged,
                readonly_root_filesystem: c.readonly_root_filesystem,
                init: c.init_process_enabled,
                user: c.user.clone(),
                secrets,
                mounts: c.mounts.iter().map(mount).collect(),
            })
            .collect(),
        network_mode: spec.network_mode.as_str().to_string(),
        timeout_seconds: spec.timeout_secs,
        identity,
    })
}

/// Container states from an agent report, keeping what the spec knows (image, essential).
pub fn container_states(spec: &TaskSpec, reports: &[pb::ContainerReport]) -> Vec<ContainerState> {
    spec.containers
        .iter()
        .map(|c| {
            let r = reports.iter().find(|r| r.name == c.name);
            ContainerState {
                name: c.name.clone(),
                image: c.image.clone(),
                essential: c.essential,
                last_status: r
                    .and_then(|r| run_state(r.state(), &r.status))
                    .map_or("PENDING", run_state_name)
                    .to_string(),
                exit_code: r.and_then(|r| r.exit_code),
                reason: r.map(|r| r.reason.clone()).unwrap_or_default(),
            }
        })
        .collect()
}

/// An agent's stop code: the enum, or the text an agent of the previous version sends;
/// defaulting sensibly when a confused agent sends neither.
pub fn stop_code(code: pb::StopCode, text: &str) -> StopCode {
    match code {
        pb::StopCode::Unspecified => {
            StopCode::parse(text).unwrap_or(StopCode::EssentialContainerExited)
        }
        pb::StopCode::TaskFailedToStart => StopCode::TaskFailedToStart,
        pb::StopCode::EssentialContainerExited => StopCode::EssentialContainerExited,
        pb::StopCode::UserInitiated => StopCode::UserInitiated,
        pb::StopCode::ServiceSchedulerInitiated => StopCode::ServiceSchedulerInitiated,
        pb::StopCode::TimedOut => StopCode::TimedOut,
        pb::StopCode::NodeLost => StopCode::NodeLost,
    }
}

/// A stop code on the agent wire.
pub fn wire_stop_code(c: StopCode) -> pb::StopCode {
    match c {
        StopCode::TaskFailedToStart => pb::StopCode::TaskFailedToStart,
        StopCode::EssentialContainerExited => pb::StopCode::EssentialContainerExited,
        StopCode::UserInitiated => pb::StopCode::UserInitiated,
        StopCode::ServiceSchedulerInitiated => pb::StopCode::ServiceSchedulerInitiated,
        StopCode::TimedOut => pb::StopCode::TimedOut,
        StopCode::NodeLost => pb::StopCode::NodeLost,
    }
}

/// A reported state: the enum, or the text an agent of the previous version sends (None when
/// it is neither).
pub fn run_state(state: pb::RunState, text: &str) -> Option<pb::RunState> {
    match state {
        pb::RunState::Unspecified => match text {
            "PENDING" => Some(pb::RunState::Pending),
            "RUNNING" => Some(pb::RunState::Running),
            "STOPPING" => Some(pb::RunState::Stopping),
            "STOPPED" => Some(pb::RunState::Stopped),
            _ => None,
        },
        s => Some(s),
    }
}

/// A reported state as the API shows it.
pub fn run_state_name(s: pb::RunState) -> &'static str {
    match s {
        pb::RunState::Unspecified | pb::RunState::Pending => "PENDING",
        pb::RunState::Running => "RUNNING",
        pb::RunState::Stopping => "STOPPING",
        pb::RunState::Stopped => "STOPPED",
    }
}

/// Run-time overrides as the API gives them, as the domain keeps them.
pub fn overrides(o: &pb::TaskOverrides) -> crate::model::Overrides {
    use crate::model::ContainerOverride;
    crate::model::Overrides {
        containers: o
            .containers
            .iter()
            .map(|c| ContainerOverride {
                name: c.name.clone(),
                command: c.command.clone(),
                environment: c.environment.clone().into_iter().collect(),
                cpu: c.cpu,
                memory_mib: c.memory_mib,
            })
            .collect(),
        timeout_secs: o.timeout_seconds,
        task_role: o.task_role.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{ContainerDef, NetworkMode, SecretRef};

    #[test]
    fn agent_states_and_stop_codes_read_the_enum_or_the_previous_versions_text() {
        for c in StopCode::ALL {
            assert_eq!(stop_code(wire_stop_code(c), ""), c);
        }
        assert_eq!(
            stop_code(pb::StopCode::Unspecified, "TimedOut"),
            StopCode::TimedOut
        );
        assert_eq!(
            run_state(pb::RunState::Unspecified, "STOPPED"),
            Some(pb::RunState::Stopped)
        );
        assert_eq!(
            run_state(pb::RunState::Running, "whatever"),
            Some(pb::RunState::Running)
        );
        assert_eq!(run_state(pb::RunState::Unspecified, "BOGUS"), None);
        assert_eq!(run_state_name(pb::RunState::Stopping), "STOPPING");
    }

    #[test]
    fn a_secret_that_cannot_be_opened_fails_the_start_by_name() {
        let spec = TaskSpec {
            containers: vec![ContainerDef {
                name: "main".into(),
                image: "dir:/x".into(),
                entrypoint: vec![],
                command: vec![],
                environment: Default::default(),
                cpu: 0.0,
                memory_mib: 0,
                essential: true,
                stop_timeout_secs: 1,
                working_dir: String::new(),
                pull_policy: String::new(),
                repository_credentials: String::new(),
                privileged: false,
                readonly_root_filesystem: false,
                init_process_enabled: false,
                user: String::new(),
                secrets: vec![SecretRef {
                    name: "PW".into(),
                    value_from: "gone".into(),
                    file: String::new(),
                }],
                mounts: vec![],
            }],
            network_mode: NetworkMode::None,
            timeout_secs: 0,
            task_role: String::new(),
            input: None,
        };
        let err = start_task(
            "t",
            &spec,
            None,
            |_| None,
            |n| Err(format!("secret {n:?} does not exist")),
        )
        .unwrap_err();
        assert_eq!(err, "container main: secret \"gone\" does not exist");
        let ok = start_task("t", &spec, None, |_| None, |_| Ok(b"v".to_vec())).unwrap();
        assert_eq!(ok.containers[0].secrets[0].value, b"v");
    }
}
