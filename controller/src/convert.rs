//! Conversions between domain types and the generated protobuf types: the one place where the
//! two meet, so a proto change does not ripple through the controller.

use skiff_proto::v1 as pb;

use crate::model::{
    ContainerDef, ContainerState, Event, MountPoint, SecretRef, Task, TaskDefinition, TaskSpec,
    DEFAULT_STOP_TIMEOUT_SECS,
};
use skiff_model::lifecycle::StopCode;
use skiff_model::validate::{self, InvalidField};

fn health_check_pb(h: &crate::model::HealthCheck) -> pb::HealthCheck {
    pb::HealthCheck {
        command: h.command.clone(),
        interval_seconds: Some(h.interval_secs),
        timeout_seconds: Some(h.timeout_secs),
        retries: Some(h.retries),
        start_period_seconds: Some(h.start_period_secs),
    }
}

/// A health check as given, with ECS's defaults for what it leaves out.
fn health_check_input(h: &pb::HealthCheck) -> crate::model::HealthCheck {
    let (interval, timeout, retries, start) = validate::HEALTH_DEFAULTS;
    crate::model::HealthCheck {
        command: h.command.clone(),
        interval_secs: h.interval_seconds.unwrap_or(interval),
        timeout_secs: h.timeout_seconds.unwrap_or(timeout),
        retries: h.retries.unwrap_or(retries),
        start_period_secs: h.start_period_seconds.unwrap_or(start),
    }
}

fn port_mapping_pb(p: &crate::model::PortMapping) -> pb::PortMapping {
    pb::PortMapping {
        container_port: p.container_port.into(),
        host_port: p.host_port.into(),
        protocol: p.protocol.as_str().to_string(),
    }
}

/// Port mappings as given: a host port of 0 is the container port; ports are checked here for
/// range (the rest in `validate::task_spec`).
fn port_mappings_input(
    field: &str,
    ports: &[pb::PortMapping],
) -> Result<Vec<crate::model::PortMapping>, InvalidField> {
    use crate::model::{PortMapping, PortProtocol};
    ports
        .iter()
        .enumerate()
        .map(|(j, p)| {
            let f = format!("{field}[{j}]");
            let port = |name: &str, v: u32| {
                u16::try_from(v).map_err(|_| InvalidField {
                    field: format!("{f}.{name}"),
                    problem: format!("{v} is not a port (1 to 65535)"),
                })
            };
            let container_port = port("container_port", p.container_port)?;
            let host_port = match p.host_port {
                0 => container_port,
                h => port("host_port", h)?,
            };
            let protocol = match p.protocol.as_str() {
                "" | "tcp" => PortProtocol::Tcp,
                "udp" => PortProtocol::Udp,
                other => {
                    return Err(InvalidField {
                        field: format!("{f}.protocol"),
                        problem: format!("{other:?} is not tcp or udp"),
                    })
                }
            };
            Ok(PortMapping {
                container_port,
                host_port,
                protocol,
            })
        })
        .collect()
}

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
        health_check: c.health_check.as_ref().map(health_check_pb),
        port_mappings: c.port_mappings.iter().map(port_mapping_pb).collect(),
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
        network_mode: d.spec.network_mode.to_string(),
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
                health: c.health.map(|h| h.as_str().to_string()).unwrap_or_default(),
            })
            .collect(),
        cpu: t.spec.cpu(),
        memory_mib: t.spec.memory_mib(),
        timeout_seconds: t.spec.timeout_secs,
        network_mode: t.spec.network_mode.to_string(),
        addresses: t.addresses.clone(),
        port_mappings: t
            .spec
            .containers
            .iter()
            .flat_map(|c| &c.port_mappings)
            .map(port_mapping_pb)
            .collect(),
        started_by: t.started_by.clone(),
        status_reason: t.status_reason.clone(),
        unplaceable: t.unplaceable,
        created_at_ms: t.created_at_ms,
        pending_at_ms: t.pending_at_ms,
        started_at_ms: t.started_at_ms,
        stopping_at_ms: t.stopping_at_ms,
        stopped_at_ms: t.stopped_at_ms,
        version: t.version,
        attempt: t.attempt.max(1),
        replaces: t.replaces.clone(),
        replaced_by: t.replaced_by.clone(),
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
        replay_name: e
            .replay
            .as_ref()
            .map(|r| r.name.clone())
            .unwrap_or_default(),
        replay_of: e
            .replay
            .as_ref()
            .map(|r| r.original.clone())
            .unwrap_or_default(),
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
                health_check: c.health_check.as_ref().map(health_check_pb),
                port_mappings: c.port_mappings.iter().map(port_mapping_pb).collect(),
            })
            .collect(),
        network_mode: spec.network_mode.to_string(),
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
                // An older agent reports no health: the container's stays UNKNOWN.
                health: c.health_check.as_ref().map(|_| {
                    r.and_then(|r| crate::model::Health::parse(&r.health))
                        .unwrap_or(crate::model::Health::Unknown)
                }),
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

/// A task definition's input (or an ad-hoc task's) decoded into the domain spec (unset fields
/// take their defaults) and checked (`skiff_model::validate::task_spec`): the spec tasks run.
pub fn task_spec_input(input: &pb::TaskDefinitionInput) -> Result<TaskSpec, InvalidField> {
    let containers = input
        .containers
        .iter()
        .enumerate()
        .map(|(i, c)| {
            Ok(ContainerDef {
                port_mappings: port_mappings_input(
                    &format!("containers[{i}].port_mappings"),
                    &c.port_mappings,
                )?,
                name: c.name.clone(),
                image: c.image.clone(),
                entrypoint: c.entrypoint.clone(),
                command: c.command.clone(),
                environment: c.environment.clone().into_iter().collect(),
                cpu: c.cpu,
                memory_mib: c.memory_mib,
                essential: c.essential.unwrap_or(true),
                stop_timeout_secs: c.stop_timeout_seconds.unwrap_or(DEFAULT_STOP_TIMEOUT_SECS),
                working_dir: c.working_dir.clone(),
                pull_policy: c.pull_policy.clone(),
                repository_credentials: c.repository_credentials.clone(),
                privileged: c.privileged,
                readonly_root_filesystem: c.readonly_root_filesystem,
                init_process_enabled: c.init_process_enabled,
                health_check: c.health_check.as_ref().map(health_check_input),
                user: c.user.clone(),
                secrets: c
                    .secrets
                    .iter()
                    .map(|r| SecretRef {
                        name: r.name.clone(),
                        value_from: r.value_from.clone(),
                        file: r.file.clone(),
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
            })
        })
        .collect::<Result<Vec<_>, InvalidField>>()?;
    let spec = TaskSpec {
        placement: Default::default(),
        containers,
        network_mode: validate::network_mode("network_mode", &input.network_mode)?,
        timeout_secs: input.timeout_seconds,
        task_role: input.task_role.clone(),
        input: None,
    };
    validate::task_spec(&spec)
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
            placement: Default::default(),
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
                health_check: None,
                port_mappings: vec![],
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

#[cfg(test)]
mod input_tests {
    use super::*;
    use crate::model::NetworkMode;
    use skiff_model::validate::{apply_overrides, taskdef_ref, InvalidField};

    fn input(c: pb::ContainerDefinition) -> pb::TaskDefinitionInput {
        pb::TaskDefinitionInput {
            family: "web".into(),
            containers: vec![c],
            network_mode: String::new(),
            timeout_seconds: 0,
            task_role: String::new(),
        }
    }

    fn ok_container() -> pb::ContainerDefinition {
        pb::ContainerDefinition {
            name: "main".into(),
            image: "dir:/images/busybox".into(),
            command: vec!["true".into()],
            ..Default::default()
        }
    }

    fn err_of(c: pb::ContainerDefinition) -> InvalidField {
        task_spec_input(&input(c)).unwrap_err()
    }

    #[test]
    fn a_good_definition_gets_defaults() {
        let spec = task_spec_input(&input(ok_container())).unwrap();
        let c = &spec.containers[0];
        assert!(c.essential);
        assert_eq!(c.stop_timeout_secs, DEFAULT_STOP_TIMEOUT_SECS);
        assert_eq!(
            spec.network_mode,
            NetworkMode::Bridge,
            "bridge is the default"
        );
    }

    #[test]
    fn errors_name_the_field() {
        let e = err_of(pb::ContainerDefinition {
            memory_mib: 1 << 40,
            ..ok_container()
        });
        assert_eq!(e.field, "containers[0].memory_mib");
        let e = err_of(pb::ContainerDefinition {
            cpu: f64::NAN,
            ..ok_container()
        });
        assert_eq!(e.field, "containers[0].cpu");
        let e = err_of(pb::ContainerDefinition {
            cpu: -1.0,
            ..ok_container()
        });
        assert_eq!(e.field, "containers[0].cpu");
        let e = err_of(pb::ContainerDefinition {
            image: "Alpine:3.20".into(),
            ..ok_container()
        });
        assert_eq!(e.field, "containers[0].image");
        assert!(e.problem.contains("not a valid image reference"), "{e}");
        for good in [
            "alpine",
            "alpine:3.20",
            "registry.lan:5000/team/app:v2",
            "oci-archive:/x.tar",
        ] {
            let c = pb::ContainerDefinition {
                image: good.into(),
                ..ok_container()
            };
            assert!(task_spec_input(&input(c)).is_ok(), "{good}");
        }
        let e = err_of(pb::ContainerDefinition {
            pull_policy: "sometimes".into(),
            ..ok_container()
        });
        assert_eq!(e.field, "containers[0].pull_policy");
        let e = err_of(pb::ContainerDefinition {
            user: "root:".into(),
            ..ok_container()
        });
        assert_eq!(e.field, "containers[0].user");
        let e = err_of(pb::ContainerDefinition {
            image: "dir:relative".into(),
            ..ok_container()
        });
        assert!(e.problem.contains("absolute"), "{e}");
        let e = err_of(pb::ContainerDefinition {
            name: "a b".into(),
            ..ok_container()
        });
        assert_eq!(e.field, "containers[0].name");
        let e = err_of(pb::ContainerDefinition {
            stop_timeout_seconds: Some(99999),
            ..ok_container()
        });
        assert_eq!(e.field, "containers[0].stop_timeout_seconds");
        let mut env = std::collections::HashMap::new();
        env.insert("A=B".to_string(), "x".to_string());
        let e = err_of(pb::ContainerDefinition {
            environment: env,
            ..ok_container()
        });
        assert!(e.field.starts_with("containers[0].environment"), "{e}");
    }

    #[test]
    fn task_level_rules() {
        let mut i = input(ok_container());
        i.network_mode = "bridge2".into();
        assert_eq!(task_spec_input(&i).unwrap_err().field, "network_mode");
        let mut i = input(pb::ContainerDefinition {
            essential: Some(false),
            ..ok_container()
        });
        assert_eq!(task_spec_input(&i).unwrap_err().field, "containers");
        i.containers = vec![ok_container(), ok_container()];
        assert_eq!(task_spec_input(&i).unwrap_err().field, "containers[1].name");
        i.containers.clear();
        assert_eq!(task_spec_input(&i).unwrap_err().field, "containers");

        let mut i = input(ok_container());
        i.task_role = "thumbs".into();
        // The default network (bridge) reaches the credentials endpoint; none cannot.
        assert_eq!(task_spec_input(&i).unwrap().task_role, "thumbs");
        i.network_mode = "none".into();
        let e = task_spec_input(&i).unwrap_err();
        assert_eq!(e.field, "task_role");
        assert!(e.problem.contains("network_mode bridge or host"), "{e}");
        i.network_mode = "host".into();
        assert_eq!(task_spec_input(&i).unwrap().task_role, "thumbs");
        i.task_role = "no way".into();
        assert_eq!(task_spec_input(&i).unwrap_err().field, "task_role");
    }

    #[test]
    fn mounts_are_absolute_and_stay_off_kernel_filesystems() {
        let m = |source: &str, target: &str| pb::MountPoint {
            source: source.into(),
            target: target.into(),
            read_only: true,
        };
        let with = |ms: Vec<pb::MountPoint>| pb::ContainerDefinition {
            mounts: ms,
            ..ok_container()
        };
        let spec = task_spec_input(&input(with(vec![m("/usr", "/usr/")]))).unwrap();
        assert_eq!(spec.containers[0].mounts[0].target, "/usr");
        for (bad_mount, field) in [
            (m("usr", "/usr"), "containers[0].mounts[0].source"),
            (m("/usr", "/"), "containers[0].mounts[0].target"),
            (m("/usr", "/proc/x"), "containers[0].mounts[0].target"),
            (m("/a/../etc", "/x"), "containers[0].mounts[0].source"),
        ] {
            assert_eq!(err_of(with(vec![bad_mount])).field, field);
        }
        let e = err_of(with(vec![m("/a", "/x"), m("/b", "/x")]));
        assert_eq!(e.field, "containers[0].mounts[1].target");
    }

    #[test]
    fn overrides_apply_and_check() {
        let spec = task_spec_input(&input(ok_container())).unwrap();
        let over = |name: &str| crate::model::ContainerOverride {
            name: name.into(),
            command: vec![],
            environment: Default::default(),
            cpu: None,
            memory_mib: None,
        };
        let o = crate::model::Overrides {
            containers: vec![crate::model::ContainerOverride {
                command: vec!["echo".into(), "hi".into()],
                memory_mib: Some(64),
                ..over("main")
            }],
            timeout_secs: Some(5),
            task_role: None,
        };
        let s = apply_overrides(spec.clone(), &o).unwrap();
        assert_eq!(s.containers[0].command, vec!["echo", "hi"]);
        assert_eq!(s.containers[0].memory_mib, 64);
        assert_eq!(s.timeout_secs, 5);
        let o = crate::model::Overrides {
            containers: vec![over("nope")],
            timeout_secs: None,
            task_role: None,
        };
        assert_eq!(
            apply_overrides(spec, &o).unwrap_err().field,
            "overrides.containers[0].name"
        );
    }

    #[test]
    fn taskdef_refs() {
        assert_eq!(taskdef_ref("t", "web").unwrap(), ("web".into(), None));
        assert_eq!(taskdef_ref("t", "web:3").unwrap(), ("web".into(), Some(3)));
        assert!(taskdef_ref("t", "web:0").is_err());
        assert!(taskdef_ref("t", "web:x").is_err());
        assert!(taskdef_ref("t", ":1").is_err());
    }
}

pub fn retention(p: &skiff_model::history::TaskRetention) -> pb::TaskRetention {
    pb::TaskRetention {
        scope: p.scope.key(),
        keep: p.keep.unwrap_or(0),
        max_age_seconds: p.max_age_secs.unwrap_or(0),
    }
}
