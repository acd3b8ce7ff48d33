//! Validation of user input, over domain types (the API edge decodes its messages into them
//! first). Every error names the field (`containers[1].memory_mib`) and says what is wrong, so
//! a person can fix it without reading code. Nothing here panics on input.

use std::collections::{BTreeMap, HashSet};

use crate::model::{ContainerDef, MountPoint, NetworkMode, Overrides, SecretRef, TaskSpec};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct InvalidField {
    pub field: String,
    pub problem: String,
}

/// An error naming `field` and what is wrong with it.
pub fn invalid(field: impl Into<String>, problem: impl Into<String>) -> InvalidField {
    bad(field, problem)
}

fn bad(field: impl Into<String>, problem: impl Into<String>) -> InvalidField {
    InvalidField {
        field: field.into(),
        problem: problem.into(),
    }
}

/// Largest memory limit accepted: 1 TiB.
pub const MAX_MEMORY_MIB: u64 = 1 << 20;
/// Largest CPU reservation accepted.
pub const MAX_CPU: f64 = 1024.0;
/// Longest stop timeout accepted: one hour.
pub const MAX_STOP_TIMEOUT_SECS: u32 = 3600;

/// Names of families, containers and nodes: letters, digits, `-` and `_`, 1 to 255 characters.
pub fn check_name(field: &str, name: &str) -> Result<(), InvalidField> {
    if name.is_empty() {
        return Err(bad(field, "must not be empty"));
    }
    if name.len() > 255 {
        return Err(bad(
            field,
            format!("is {} characters long; at most 255", name.len()),
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        return Err(bad(
            field,
            format!("{name:?} contains {c:?}; use letters, digits, '-' and '_'"),
        ));
    }
    Ok(())
}

/// A queue's name: a name as `check_name` allows, with `.fifo` after it for a FIFO queue.
pub fn queue_name(field: &str, name: &str) -> Result<(), InvalidField> {
    check_name(field, name.strip_suffix(".fifo").unwrap_or(name))
}

/// Image references this build can run (registry pulls come with the image issue).
pub fn check_image(field: &str, image: &str) -> Result<(), InvalidField> {
    if image.is_empty() {
        return Err(bad(field, "must not be empty"));
    }
    let local = ["dir:", "oci:", "oci-archive:", "docker-archive:"]
        .iter()
        .find_map(|p| image.strip_prefix(p));
    match local {
        Some(p) if !p.starts_with('/') => {
            Err(bad(field, format!("{image:?}: the path must be absolute")))
        }
        Some(_) => Ok(()),
        None => oci_spec::distribution::Reference::try_from(image)
            .map(|_| ())
            .map_err(|e| {
                bad(
                    field,
                    format!(
                        "{image:?} is not a valid image reference ({e}); name images like \
                         alpine:3.20, registry.lan:5000/team/app:v2, app@sha256:<digest>, \
                         or a local source dir:/rootfs, oci:/layout[:tag], \
                         oci-archive:/image.tar, docker-archive:/saved.tar"
                    ),
                )
            }),
    }
}

/// A registry host as credentials name it: `HOST[:PORT]` (a scheme and path are dropped, and
/// Docker Hub's aliases become `docker.io`).
pub fn registry_server(field: &str, server: &str) -> Result<String, InvalidField> {
    let host = server
        .trim()
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase();
    if host.is_empty()
        || !host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
    {
        return Err(bad(
            field,
            format!("{server:?} is not a registry host; give HOST[:PORT], e.g. registry.lan:5000"),
        ));
    }
    Ok(match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            "docker.io".into()
        }
        _ => host,
    })
}

/// A container's secret references: a stored secret name each, delivered as an env var (a
/// valid name, not also set in `environment`) or a file (an absolute path without `..`);
/// no target twice.
fn secret_refs(
    field: &str,
    refs: &[SecretRef],
    environment: &BTreeMap<String, String>,
) -> Result<Vec<SecretRef>, InvalidField> {
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::new();
    for (i, r) in refs.iter().enumerate() {
        let f = |n: &str| format!("{field}[{i}].{n}");
        check_name(&f("value_from"), &r.value_from)?;
        let target = if r.file.is_empty() {
            let valid = !r.name.is_empty()
                && !r.name.starts_with(|c: char| c.is_ascii_digit())
                && r.name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_');
            if !valid {
                return Err(bad(
                    f("name"),
                    format!("{:?} is not an environment variable name", r.name),
                ));
            }
            if environment.contains_key(&r.name) {
                return Err(bad(
                    f("name"),
                    format!("{} is also set in environment", r.name),
                ));
            }
            format!("env:{}", r.name)
        } else {
            if !r.file.starts_with('/')
                || r.file.split('/').any(|p| p == "..")
                || r.file.contains('\0')
                || r.file == "/"
            {
                return Err(bad(
                    f("file"),
                    format!("{:?} must be an absolute file path without ..", r.file),
                ));
            }
            format!("file:{}", r.file)
        };
        if !seen.insert(target.clone()) {
            return Err(bad(field, format!("{target} is given twice")));
        }
        out.push(SecretRef {
            name: r.name.clone(),
            value_from: r.value_from.clone(),
            file: r.file.clone(),
        });
    }
    Ok(out)
}

/// An absolute path without `..`, NUL or a trailing component that would escape.
fn check_abs_path(field: &str, path: &str) -> Result<(), InvalidField> {
    if !path.starts_with('/') {
        return Err(bad(field, format!("{path:?} must be an absolute path")));
    }
    if path.contains('\0') {
        return Err(bad(field, "must not contain NUL"));
    }
    if path.split('/').any(|p| p == "..") {
        return Err(bad(field, format!("{path:?} must not contain '..'")));
    }
    Ok(())
}

/// Bind mounts: absolute paths, not over the root or the kernel filesystems the runtime
/// mounts itself, no target twice.
fn mounts(field: &str, mounts: &[MountPoint]) -> Result<Vec<MountPoint>, InvalidField> {
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(mounts.len());
    for (i, m) in mounts.iter().enumerate() {
        let f = |name: &str| format!("{field}[{i}].{name}");
        check_abs_path(&f("source"), &m.source)?;
        check_abs_path(&f("target"), &m.target)?;
        let target = m.target.trim_end_matches('/');
        if target.is_empty()
            || ["/proc", "/sys", "/dev"]
                .iter()
                .any(|k| target == *k || target.starts_with(&format!("{k}/")))
        {
            return Err(bad(
                f("target"),
                format!("{:?}: cannot mount over /, /proc, /sys or /dev", m.target),
            ));
        }
        if !seen.insert(target.to_string()) {
            return Err(bad(f("target"), format!("{target:?} is mounted twice")));
        }
        out.push(MountPoint {
            source: m.source.clone(),
            target: target.to_string(),
            read_only: m.read_only,
        });
    }
    Ok(out)
}

/// `user`, `user:group`, `uid` or `uid:gid`; names as /etc/passwd allows them.
fn check_user(field: &str, user: &str) -> Result<(), InvalidField> {
    if user.is_empty() {
        return Ok(());
    }
    let part_ok = |p: &str| {
        !p.is_empty()
            && p.len() <= 32
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
    };
    let ok = match user.split_once(':') {
        Some((u, g)) => part_ok(u) && part_ok(g),
        None => part_ok(user),
    };
    if ok {
        Ok(())
    } else {
        Err(bad(
            field,
            format!("{user:?} is not user, user:group, uid or uid:gid"),
        ))
    }
}

/// The canonical pull policy; empty means the default.
fn pull_policy(field: &str, policy: &str) -> Result<String, InvalidField> {
    match policy {
        "" | "if-not-present" => Ok("if-not-present".into()),
        "always" | "never" => Ok(policy.into()),
        other => Err(bad(
            field,
            format!("{other:?} is not a pull policy; use always, if-not-present or never"),
        )),
    }
}

fn check_cpu(field: &str, cpu: f64) -> Result<(), InvalidField> {
    if !cpu.is_finite() || cpu < 0.0 {
        return Err(bad(
            field,
            format!("{cpu} is not a CPU amount; give vCPUs >= 0, e.g. 0.5"),
        ));
    }
    if cpu > MAX_CPU {
        return Err(bad(
            field,
            format!("{cpu} vCPU is more than the maximum {MAX_CPU}"),
        ));
    }
    Ok(())
}

fn check_memory(field: &str, mib: u64) -> Result<(), InvalidField> {
    if mib > MAX_MEMORY_MIB {
        return Err(bad(
            field,
            format!("{mib} MiB is more than the maximum {MAX_MEMORY_MIB} MiB"),
        ));
    }
    if mib != 0 && mib < 4 {
        return Err(bad(
            field,
            format!("{mib} MiB is too small to start a container; at least 4 MiB"),
        ));
    }
    Ok(())
}

fn check_env(field: &str, env: &BTreeMap<String, String>) -> Result<(), InvalidField> {
    for (k, v) in env {
        if k.is_empty() || k.contains('=') || k.contains('\0') {
            return Err(bad(
                format!("{field}[{k:?}]"),
                "names must be non-empty, without '=' or NUL",
            ));
        }
        if v.contains('\0') {
            return Err(bad(
                format!("{field}[{k:?}]"),
                "values must not contain NUL",
            ));
        }
    }
    Ok(())
}

fn check_args(field: &str, args: &[String]) -> Result<(), InvalidField> {
    if let Some(i) = args.iter().position(|a| a.contains('\0')) {
        return Err(bad(format!("{field}[{i}]"), "must not contain NUL"));
    }
    Ok(())
}

/// A network mode by its name ("" is bridge, the default).
pub fn network_mode(field: &str, mode: &str) -> Result<NetworkMode, InvalidField> {
    NetworkMode::parse(mode).ok_or_else(|| {
        bad(
            field,
            format!(
                "{mode:?} is not a network mode; use none, host, bridge or cni/<network> \
                 (a network name is letters, digits, '-', '_' and '.')"
            ),
        )
    })
}

/// ECS's defaults and bounds for health checks.
pub const HEALTH_DEFAULTS: (u32, u32, u32, u32) = (30, 5, 3, 0);

fn within(field: String, v: u32, lo: u32, hi: u32) -> Result<(), InvalidField> {
    if !(lo..=hi).contains(&v) {
        return Err(bad(field, format!("{v} is outside {lo} to {hi}")));
    }
    Ok(())
}

/// A health check: `CMD-SHELL` with one script, or `CMD` with a command; ECS's bounds.
fn health_check(field: &str, h: &crate::model::HealthCheck) -> Result<(), InvalidField> {
    let cmd = format!("{field}.command");
    match h.command.first().map(String::as_str) {
        Some("CMD-SHELL") if h.command.len() == 2 && !h.command[1].is_empty() => {}
        Some("CMD-SHELL") => {
            return Err(bad(
                cmd,
                "CMD-SHELL takes one script: [\"CMD-SHELL\", \"...\"]",
            ))
        }
        Some("CMD") if h.command.len() >= 2 && !h.command[1].is_empty() => {}
        Some("CMD") => {
            return Err(bad(
                cmd,
                "CMD takes the command after it: [\"CMD\", \"exe\", \"arg\"]",
            ))
        }
        _ => {
            return Err(bad(
                cmd,
                "must start with CMD-SHELL (a script) or CMD (a command and its arguments)",
            ))
        }
    }
    check_args(&cmd, &h.command)?;
    within(format!("{field}.interval_seconds"), h.interval_secs, 5, 300)?;
    within(format!("{field}.timeout_seconds"), h.timeout_secs, 2, 60)?;
    within(format!("{field}.retries"), h.retries, 1, 10)?;
    within(
        format!("{field}.start_period_seconds"),
        h.start_period_secs,
        0,
        300,
    )?;
    if h.timeout_secs >= h.interval_secs {
        return Err(bad(
            format!("{field}.timeout_seconds"),
            format!(
                "{} s must be shorter than the interval ({} s)",
                h.timeout_secs, h.interval_secs
            ),
        ));
    }
    Ok(())
}

fn container(i: usize, c: &ContainerDef) -> Result<ContainerDef, InvalidField> {
    let f = |name: &str| format!("containers[{i}].{name}");
    check_name(&f("name"), &c.name)?;
    check_image(&f("image"), &c.image)?;
    check_cpu(&f("cpu"), c.cpu)?;
    check_memory(&f("memory_mib"), c.memory_mib)?;
    check_args(&f("entrypoint"), &c.entrypoint)?;
    check_args(&f("command"), &c.command)?;
    let environment = c.environment.clone();
    check_env(&f("environment"), &environment)?;
    let stop_timeout_secs = c.stop_timeout_secs;
    if stop_timeout_secs > MAX_STOP_TIMEOUT_SECS {
        return Err(bad(
            f("stop_timeout_seconds"),
            format!("{stop_timeout_secs} s is more than the maximum {MAX_STOP_TIMEOUT_SECS} s"),
        ));
    }
    if !c.working_dir.is_empty() && !c.working_dir.starts_with('/') {
        return Err(bad(f("working_dir"), "must be an absolute path"));
    }
    let pull_policy = pull_policy(&f("pull_policy"), &c.pull_policy)?;
    let secrets = secret_refs(&f("secrets"), &c.secrets, &environment)?;
    check_user(&f("user"), &c.user)?;
    let mounts = mounts(&f("mounts"), &c.mounts)?;
    if !c.repository_credentials.is_empty() {
        check_name(&f("repository_credentials"), &c.repository_credentials)?;
    }
    if let Some(h) = &c.health_check {
        health_check(&f("health_check"), h)?;
    }
    Ok(ContainerDef {
        port_mappings: c.port_mappings.clone(),
        health_check: c.health_check.clone(),
        name: c.name.clone(),
        image: c.image.clone(),
        entrypoint: c.entrypoint.clone(),
        command: c.command.clone(),
        environment,
        cpu: c.cpu,
        memory_mib: c.memory_mib,
        essential: c.essential,
        stop_timeout_secs,
        working_dir: c.working_dir.clone(),
        pull_policy,
        repository_credentials: c.repository_credentials.clone(),
        privileged: c.privileged,
        readonly_root_filesystem: c.readonly_root_filesystem,
        init_process_enabled: c.init_process_enabled,
        user: c.user.clone(),
        secrets,
        mounts,
    })
}

/// Validates a task definition (or an ad-hoc task) as decoded from its input, and returns the
/// spec tasks run (paths and policies in their canonical form).
pub fn task_spec(input: &TaskSpec) -> Result<TaskSpec, InvalidField> {
    if input.containers.is_empty() {
        return Err(bad("containers", "at least one container is required"));
    }
    let mut names = HashSet::new();
    let mut containers = Vec::with_capacity(input.containers.len());
    for (i, c) in input.containers.iter().enumerate() {
        let def = container(i, c)?;
        if !names.insert(def.name.clone()) {
            return Err(bad(
                format!("containers[{i}].name"),
                format!("{:?} is used twice", def.name),
            ));
        }
        containers.push(def);
    }
    if !containers.iter().any(|c| c.essential) {
        return Err(bad(
            "containers",
            "at least one container must be essential",
        ));
    }
    let spec = TaskSpec {
        placement: input.placement.clone(),
        containers,
        network_mode: input.network_mode.clone(),
        timeout_secs: input.timeout_secs,
        task_role: input.task_role.clone(),
        input: input.input.clone(),
    };
    check_task_role("task_role", &spec)?;
    check_ports(&spec)?;
    Ok(spec)
}

/// Published ports: in range, each host port once per protocol, and only where the task has
/// a network of its own to publish them from.
fn check_ports(spec: &TaskSpec) -> Result<(), InvalidField> {
    let mut seen = HashSet::new();
    for (i, c) in spec.containers.iter().enumerate() {
        for (j, p) in c.port_mappings.iter().enumerate() {
            let field = format!("containers[{i}].port_mappings[{j}]");
            if p.container_port == 0 {
                return Err(bad(format!("{field}.container_port"), "must be 1 to 65535"));
            }
            if p.host_port == 0 {
                return Err(bad(format!("{field}.host_port"), "must be 1 to 65535"));
            }
            if !spec.network_mode.is_attached() {
                return Err(bad(
                    field,
                    format!(
                        "ports are published only with network_mode bridge or cni/<network> \
                         (this task's is {}{})",
                        spec.network_mode,
                        if spec.network_mode == NetworkMode::Host {
                            ": its containers use the node's ports directly"
                        } else {
                            ""
                        }
                    ),
                ));
            }
            if !seen.insert((p.host_port, p.protocol)) {
                return Err(bad(
                    format!("{field}.host_port"),
                    format!("{}/{} is published twice", p.host_port, p.protocol.as_str()),
                ));
            }
        }
    }
    Ok(())
}

/// A port mapping as `run-task -p` takes it: HOST:CONTAINER[/tcp|udp], or PORT for the same
/// port on both sides.
pub fn port_mapping(field: &str, s: &str) -> Result<crate::model::PortMapping, InvalidField> {
    use crate::model::{PortMapping, PortProtocol};
    let (ports, protocol) = match s.split_once('/') {
        Some((p, "tcp")) => (p, PortProtocol::Tcp),
        Some((p, "udp")) => (p, PortProtocol::Udp),
        Some((_, other)) => {
            return Err(bad(field, format!("protocol {other:?} is not tcp or udp")))
        }
        None => (s, PortProtocol::Tcp),
    };
    let port = |p: &str| -> Result<u16, InvalidField> {
        match p.parse::<u16>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(bad(
                field,
                format!("{p:?} is not a port (1 to 65535); use HOST:CONTAINER[/tcp|udp]"),
            )),
        }
    };
    let (host, container) = match ports.split_once(':') {
        Some((h, c)) => (port(h)?, port(c)?),
        None => (port(ports)?, port(ports)?),
    };
    Ok(PortMapping {
        container_port: container,
        host_port: host,
        protocol,
    })
}

/// A role needs a network: its containers reach their credentials endpoint on the node's
/// loopback (host) or at 169.254.170.2 (bridge), which a task without a network cannot.
fn check_task_role(field: &str, spec: &TaskSpec) -> Result<(), InvalidField> {
    if spec.task_role.is_empty() {
        return Ok(());
    }
    check_name(field, &spec.task_role)?;
    if spec.network_mode == NetworkMode::None {
        return Err(bad(
            field,
            "a task with a role needs network_mode bridge or host (without a network it \
             cannot reach its credentials endpoint)",
        ));
    }
    Ok(())
}

/// Applies run-time overrides (ECS `overrides`) to a spec.
pub fn apply_overrides(mut spec: TaskSpec, o: &Overrides) -> Result<TaskSpec, InvalidField> {
    for (i, co) in o.containers.iter().enumerate() {
        let f = |name: &str| format!("overrides.containers[{i}].{name}");
        let Some(c) = spec.containers.iter_mut().find(|c| c.name == co.name) else {
            let known: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
            return Err(bad(
                f("name"),
                format!("no container {:?} in the task (it has {known:?})", co.name),
            ));
        };
        if !co.command.is_empty() {
            check_args(&f("command"), &co.command)?;
            c.command = co.command.clone();
        }
        check_env(&f("environment"), &co.environment)?;
        c.environment
            .extend(co.environment.iter().map(|(k, v)| (k.clone(), v.clone())));
        if let Some(cpu) = co.cpu {
            check_cpu(&f("cpu"), cpu)?;
            c.cpu = cpu;
        }
        if let Some(mem) = co.memory_mib {
            check_memory(&f("memory_mib"), mem)?;
            c.memory_mib = mem;
        }
    }
    if let Some(t) = o.timeout_secs {
        spec.timeout_secs = t;
    }
    if let Some(role) = &o.task_role {
        spec.task_role = role.clone();
        check_task_role("overrides.task_role", &spec)?;
    }
    Ok(spec)
}

/// Parses `family` or `family:revision`.
pub fn taskdef_ref(field: &str, s: &str) -> Result<(String, Option<u32>), InvalidField> {
    let (family, rev) = match s.rsplit_once(':') {
        Some((f, r)) => {
            let rev: u32 =
                r.parse().ok().filter(|n| *n > 0).ok_or_else(|| {
                    bad(field, format!("{r:?} is not a revision number (1, 2, ...)"))
                })?;
            (f, Some(rev))
        }
        None => (s, None),
    };
    check_name(field, family)?;
    Ok((family.to_string(), rev))
}

/// Longest visibility timeout: 12 hours.
pub const MAX_VISIBILITY_SECS: u32 = 12 * 3600;
/// Longest delay: 15 minutes.
pub const MAX_DELAY_SECS: u32 = 900;
/// Retention bounds: 1 minute to 14 days.
pub const MIN_RETENTION_SECS: u32 = 60;
pub const MAX_RETENTION_SECS: u32 = 14 * 24 * 3600;
/// Largest message body: 256 KiB.
pub const MAX_MESSAGE_BYTES: u32 = 256 * 1024;
/// Longest receive wait: 20 seconds.
pub const MAX_RECEIVE_WAIT_SECS: u32 = 20;
/// Most messages in one send, receive or delete.
pub const MAX_BATCH: usize = 10;

fn at_most(field: &str, value: u32, max: u32, unit: &str) -> Result<(), InvalidField> {
    if value > max {
        return Err(bad(
            field,
            format!("{value} {unit} is more than the maximum {max} {unit}"),
        ));
    }
    Ok(())
}

/// A queue's settings, by the fields its file and API name them.
pub fn queue(q: &crate::model::Queue) -> Result<(), InvalidField> {
    queue_name("name", &q.name)?;
    if q.fifo != q.name.ends_with(".fifo") {
        return Err(bad(
            "name",
            if q.fifo {
                format!("{:?}: a FIFO queue's name ends in .fifo", q.name)
            } else {
                format!(
                    "{:?}: only a FIFO queue's name ends in .fifo (set fifo)",
                    q.name
                )
            },
        ));
    }
    if q.content_based_deduplication && !q.fifo {
        return Err(bad(
            "content_based_deduplication",
            "applies to FIFO queues only",
        ));
    }
    at_most(
        "visibility_timeout_seconds",
        q.visibility_timeout_secs,
        MAX_VISIBILITY_SECS,
        "s",
    )?;
    at_most("delay_seconds", q.delay_secs, MAX_DELAY_SECS, "s")?;
    if !(MIN_RETENTION_SECS..=MAX_RETENTION_SECS).contains(&q.retention_secs) {
        return Err(bad(
            "retention_seconds",
            format!(
                "{} s is outside {MIN_RETENTION_SECS} s (1 minute) to {MAX_RETENTION_SECS} s (14 days)",
                q.retention_secs
            ),
        ));
    }
    if !(1024..=MAX_MESSAGE_BYTES).contains(&q.max_message_bytes) {
        return Err(bad(
            "max_message_bytes",
            format!(
                "{} is outside 1024 to {MAX_MESSAGE_BYTES} bytes",
                q.max_message_bytes
            ),
        ));
    }
    at_most(
        "receive_wait_seconds",
        q.receive_wait_secs,
        MAX_RECEIVE_WAIT_SECS,
        "s",
    )?;
    if let Some(r) = &q.redrive {
        queue_name("redrive.dead_letter_queue", &r.dead_letter_queue)?;
        if r.dead_letter_queue.ends_with(".fifo") != q.fifo {
            return Err(bad(
                "redrive.dead_letter_queue",
                "a FIFO queue's dead-letter queue is FIFO too, and a standard queue's standard",
            ));
        }
        if r.dead_letter_queue == q.name {
            return Err(bad(
                "redrive.dead_letter_queue",
                "a queue cannot be its own dead-letter queue",
            ));
        }
        if !(1..=1000).contains(&r.max_receive_count) {
            return Err(bad(
                "redrive.max_receive_count",
                format!("{} is outside 1 to 1000", r.max_receive_count),
            ));
        }
    }
    Ok(())
}

/// A message sent to `q`: its body's size, its delay, its attributes.
pub fn message(
    field: &str,
    q: &crate::model::Queue,
    body: &str,
    delay_secs: Option<u32>,
    attributes: &BTreeMap<String, String>,
) -> Result<(), InvalidField> {
    if body.is_empty() {
        return Err(bad(format!("{field}.body"), "must not be empty"));
    }
    let size = body.len()
        + attributes
            .iter()
            .map(|(k, v)| k.len() + v.len())
            .sum::<usize>();
    if size > q.max_message_bytes as usize {
        return Err(bad(
            format!("{field}.body"),
            format!(
                "{size} bytes (with its attributes) is more than queue {}'s maximum {} bytes",
                q.name, q.max_message_bytes
            ),
        ));
    }
    if let Some(d) = delay_secs {
        at_most(&format!("{field}.delay_seconds"), d, MAX_DELAY_SECS, "s")?;
    }
    if attributes.len() > 10 {
        return Err(bad(format!("{field}.attributes"), "at most 10 attributes"));
    }
    for k in attributes.keys() {
        check_name(&format!("{field}.attributes"), k)?;
    }
    Ok(())
}

/// A message's FIFO fields: a FIFO queue needs a message group, and a deduplication id
/// unless it deduplicates by content, and takes no per-message delay; a standard queue takes
/// neither field.
pub fn fifo_fields(
    field: &str,
    q: &crate::model::Queue,
    group: &str,
    dedup_id: &str,
    delay_secs: Option<u32>,
) -> Result<(), InvalidField> {
    let token = |name: &str, v: &str| -> Result<(), InvalidField> {
        if v.len() > 128 || v.chars().any(|c| !c.is_ascii_graphic()) {
            return Err(bad(
                format!("{field}.{name}"),
                "at most 128 printable ASCII characters",
            ));
        }
        Ok(())
    };
    if !q.fifo {
        if !group.is_empty() {
            return Err(bad(
                format!("{field}.message_group_id"),
                format!("queue {} is not FIFO", q.name),
            ));
        }
        if !dedup_id.is_empty() {
            return Err(bad(
                format!("{field}.message_deduplication_id"),
                format!("queue {} is not FIFO", q.name),
            ));
        }
        return Ok(());
    }
    if group.is_empty() {
        return Err(bad(
            format!("{field}.message_group_id"),
            format!("required for FIFO queue {}", q.name),
        ));
    }
    token("message_group_id", group)?;
    token("message_deduplication_id", dedup_id)?;
    if dedup_id.is_empty() && !q.content_based_deduplication {
        return Err(bad(
            format!("{field}.message_deduplication_id"),
            format!(
                "required: queue {} does not deduplicate by content (content_based_deduplication)",
                q.name
            ),
        ));
    }
    if delay_secs.is_some() {
        return Err(bad(
            format!("{field}.delay_seconds"),
            "a FIFO queue delays all its messages alike (the queue's delay)",
        ));
    }
    Ok(())
}

/// Most tasks a service may ask for.
pub const MAX_SERVICE_TASKS: u32 = 1000;

/// A service's settings, by the fields its file and API name them.
pub fn service(s: &crate::model::Service) -> Result<(), InvalidField> {
    check_name("name", &s.name)?;
    taskdef_ref("task_definition", &s.task_definition)?;
    at_most("desired_count", s.desired_count, MAX_SERVICE_TASKS, "tasks")?;
    let d = &s.deployment;
    if d.minimum_healthy_percent > 100 {
        return Err(bad(
            "deployment.minimum_healthy_percent",
            format!("{} is more than 100", d.minimum_healthy_percent),
        ));
    }
    if !(100..=400).contains(&d.maximum_percent) {
        return Err(bad(
            "deployment.maximum_percent",
            format!("{} is outside 100 to 400", d.maximum_percent),
        ));
    }
    if d.maximum_percent == 100 && d.minimum_healthy_percent == 100 {
        return Err(bad(
            "deployment.maximum_percent",
            "with minimum_healthy_percent 100 it must be above 100, or no task could ever be replaced",
        ));
    }
    at_most("stop_timeout", s.stop_timeout_secs, 3600, "s")?;
    for (i, c) in s.placement.constraints.iter().enumerate() {
        constraint(&format!("placement.constraints[{i}]"), c)?;
    }
    for (i, p) in s.placement.preferences.iter().enumerate() {
        let field = format!("placement.preferences[{i}]");
        constraint(&field, &p.constraint)?;
        if !(1..=100).contains(&p.weight) {
            return Err(bad(
                format!("{field}.weight"),
                format!("{} is not between 1 and 100", p.weight),
            ));
        }
    }
    if s.placement.spread_over.trim() != s.placement.spread_over {
        return Err(bad(
            "placement.spread_over",
            "must be a label name without surrounding spaces",
        ));
    }
    if let Some(a) = &s.autoscaling {
        match a.source.split_once(':') {
            Some(("queue", q)) => queue_name("autoscaling.source", q)?,
            Some(("external", n)) => check_name("autoscaling.source", n)?,
            Some(("redis", _)) => crate::redis_source::parse(&a.source)
                .map(|_| ())
                .map_err(|e| bad("autoscaling.source", e))?,
            _ => {
                return Err(bad(
                    "autoscaling.source",
                    format!(
                        "{:?} is not queue:<name>, external:<name> or redis://host:port/key",
                        a.source
                    ),
                ))
            }
        }
        at_most("autoscaling.max", a.max, MAX_SERVICE_TASKS, "tasks")?;
        if a.min > a.max {
            return Err(bad(
                "autoscaling.min",
                format!("{} is more than max {}", a.min, a.max),
            ));
        }
        if a.max == 0 {
            return Err(bad("autoscaling.max", "must be at least 1"));
        }
        if a.target_per_task == 0 {
            return Err(bad("autoscaling.target_per_task", "must be at least 1"));
        }
        at_most(
            "autoscaling.scale_out_cooldown",
            a.scale_out_cooldown_secs,
            86_400,
            "s",
        )?;
        at_most(
            "autoscaling.scale_in_cooldown",
            a.scale_in_cooldown_secs,
            86_400,
            "s",
        )?;
        if a.stale_after_secs == 0 {
            return Err(bad("autoscaling.stale_after", "must be at least 1 s"));
        }
    }
    if s.mode == crate::model::ServiceMode::TaskPerMessage
        && !s
            .autoscaling
            .as_ref()
            .is_some_and(|a| a.source.starts_with("queue:"))
    {
        return Err(bad(
            "mode",
            "task-per-message takes its messages from a built-in queue: set autoscaling.source to queue:<name>",
        ));
    }
    Ok(())
}

/// A placement constraint: a label, and a value or (for `in`) a list of values.
fn constraint(field: &str, c: &crate::model::PlacementConstraint) -> Result<(), InvalidField> {
    if c.label.trim().is_empty() {
        return Err(bad(format!("{field}.label"), "must not be empty"));
    }
    if c.values.iter().any(|v| v.is_empty()) {
        return Err(bad(
            format!("{field}.values"),
            "an empty value; give the values \"in\" takes, e.g. disk in (ssd, nvme)",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod network_tests {
    use super::*;
    use crate::model::{PortMapping, PortProtocol};

    #[test]
    fn network_modes_parse_and_keep_their_names() {
        for (name, mode) in [
            ("none", NetworkMode::None),
            ("host", NetworkMode::Host),
            ("bridge", NetworkMode::Bridge),
            ("cni/lan-1.v2", NetworkMode::Cni("lan-1.v2".into())),
        ] {
            assert_eq!(network_mode("network_mode", name).unwrap(), mode);
            assert_eq!(mode.to_string(), name);
            let json = serde_json::to_string(&mode).unwrap();
            assert_eq!(serde_json::from_str::<NetworkMode>(&json).unwrap(), mode);
        }
        assert_eq!(network_mode("n", "").unwrap(), NetworkMode::Bridge);
        for bad_mode in ["cni/", "cni/a b", "cni/../x", "bridged", "awsvpc"] {
            let e = network_mode("network_mode", bad_mode).unwrap_err();
            assert_eq!(e.field, "network_mode");
            assert!(e.problem.contains("bridge or cni/<network>"), "{e}");
        }
    }

    #[test]
    fn published_ports_parse_as_docker_writes_them() {
        let p = |s| port_mapping("--publish", s);
        assert_eq!(
            p("8080:80").unwrap(),
            PortMapping {
                container_port: 80,
                host_port: 8080,
                protocol: PortProtocol::Tcp
            }
        );
        assert_eq!(
            p("53:5353/udp").unwrap(),
            PortMapping {
                container_port: 5353,
                host_port: 53,
                protocol: PortProtocol::Udp
            }
        );
        assert_eq!(p("80").unwrap().host_port, 80);
        for (bad_port, says) in [
            ("0:80", "\"0\""),
            ("80:x", "\"x\""),
            ("80/sctp", "sctp"),
            ("70000", "70000"),
        ] {
            let e = p(bad_port).unwrap_err();
            assert!(e.problem.contains(says), "{bad_port}: {e}");
        }
    }

    #[test]
    fn ports_need_a_network_of_the_tasks_own_and_each_host_port_once() {
        let mut spec = crate::testing::spec(0.5, 64);
        spec.containers[0].port_mappings = vec![PortMapping {
            container_port: 80,
            host_port: 8080,
            protocol: PortProtocol::Tcp,
        }];
        spec.network_mode = NetworkMode::None;
        let e = task_spec(&spec).unwrap_err();
        assert_eq!(e.field, "containers[0].port_mappings[0]");
        assert!(e.problem.contains("bridge or cni/<network>"), "{e}");
        spec.network_mode = NetworkMode::Host;
        assert!(task_spec(&spec)
            .unwrap_err()
            .problem
            .contains("node's ports directly"));
        spec.network_mode = NetworkMode::Bridge;
        task_spec(&spec).unwrap();
        spec.containers[0].port_mappings.push(PortMapping {
            container_port: 81,
            host_port: 8080,
            protocol: PortProtocol::Tcp,
        });
        let e = task_spec(&spec).unwrap_err();
        assert_eq!(e.field, "containers[0].port_mappings[1].host_port");
        // The same port number over UDP is another port.
        spec.containers[0].port_mappings[1].protocol = PortProtocol::Udp;
        task_spec(&spec).unwrap();
    }

    #[test]
    fn placement_names_the_constraint_or_preference_that_is_wrong() {
        use crate::model::{PlacementConstraint, PlacementPreference, Service};
        let mut svc = Service {
            name: "web".into(),
            description: String::new(),
            task_definition: "web".into(),
            desired_count: 1,
            deployment: Default::default(),
            stop_timeout_secs: 0,
            placement: Default::default(),
            autoscaling: None,
            mode: Default::default(),
            created_ms: 0,
            updated_ms: 0,
        };
        service(&svc).unwrap();
        let c = |label: &str, values: &[&str]| PlacementConstraint {
            label: label.into(),
            value: String::new(),
            not: false,
            values: values.iter().map(|v| v.to_string()).collect(),
        };
        svc.placement.constraints = vec![c("disk", &["ssd"]), c(" ", &[])];
        assert_eq!(
            service(&svc).unwrap_err().field,
            "placement.constraints[1].label"
        );
        svc.placement.constraints = vec![c("disk", &["ssd", ""])];
        assert_eq!(
            service(&svc).unwrap_err().field,
            "placement.constraints[0].values"
        );
        svc.placement.constraints.clear();
        svc.placement.preferences = vec![PlacementPreference {
            constraint: c("gpu", &["yes"]),
            weight: 0,
        }];
        let e = service(&svc).unwrap_err();
        assert_eq!(e.field, "placement.preferences[0].weight");
        assert!(e.problem.contains("between 1 and 100"), "{e}");
        svc.placement.preferences[0].weight = 100;
        service(&svc).unwrap();
    }
}
