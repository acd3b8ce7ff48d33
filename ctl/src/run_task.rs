//! `skiff run-task`: start a one-off task from flags or a task definition, optionally wait for
//! it (exiting with its exit code) and follow its logs.

use std::collections::HashMap;

use anyhow::Context;
use clap::Args;
use skiff_proto::v1 as pb;

use crate::client::{api_error, connect, describe_task, essential_exit, stream_logs};
use crate::output::{self, Format};

#[derive(Args)]
pub struct RunTaskArgs {
    /// Image to run: a registry reference (alpine:3.20, registry.lan:5000/team/app:v2) or a
    /// local source (dir:/rootfs, oci:/layout[:tag], oci-archive:/x.tar, docker-archive:/x.tar).
    #[arg(long, conflicts_with = "task_def")]
    image: Option<String>,
    /// When the agent contacts the image's registry: always, if-not-present, never.
    #[arg(long = "pull-policy", conflicts_with = "task_def")]
    pull_policy: Option<String>,
    /// Name of registry credentials stored in the controller (`skiff registry-creds put`).
    #[arg(long = "registry-creds", conflicts_with = "task_def")]
    registry_creds: Option<String>,
    /// Run as user, user:group, uid or uid:gid (overrides the image's User).
    #[arg(long, conflicts_with = "task_def")]
    user: Option<String>,
    /// Mount the container's root filesystem read-only.
    #[arg(long = "read-only", conflicts_with = "task_def")]
    read_only: bool,
    /// Every capability and no seccomp filter (only for what truly needs the host).
    #[arg(long, conflicts_with = "task_def")]
    privileged: bool,
    /// A stored secret as an env var: VAR=SECRET (repeatable).
    #[arg(long = "secret", value_parser = crate::serve::parse_kv, conflicts_with = "task_def")]
    secrets: Vec<(String, String)>,
    /// A stored secret as a read-only file: /PATH=SECRET (repeatable).
    #[arg(long = "secret-file", value_parser = crate::serve::parse_kv, conflicts_with = "task_def")]
    secret_files: Vec<(String, String)>,
    /// Bind-mount a host path: /HOST/PATH:/IN/CONTAINER[:ro] (repeatable; admin only).
    #[arg(long = "mount", value_parser = parse_mount, conflicts_with = "task_def")]
    mounts: Vec<pb::MountPoint>,
    /// Run under this task role (`skiff roles put`): its containers get credentials for it.
    #[arg(long)]
    role: Option<String>,
    /// Run a registered task definition, FAMILY or FAMILY:REVISION.
    #[arg(long = "task-def")]
    task_def: Option<String>,
    /// vCPUs (fractional).
    #[arg(long)]
    cpu: Option<f64>,
    /// Memory hard limit in MiB.
    #[arg(long, value_parser = parse_memory)]
    memory: Option<u64>,
    /// Environment variable KEY=VALUE (repeatable).
    #[arg(long = "env", short = 'e', value_parser = crate::serve::parse_kv)]
    env: Vec<(String, String)>,
    /// Stop the task after this long (e.g. 30s, 5m): stop code TimedOut.
    #[arg(long, value_parser = parse_duration)]
    timeout: Option<u64>,
    /// Seconds between SIGTERM and SIGKILL when stopping (e.g. 10s).
    #[arg(long = "stop-timeout", value_parser = parse_duration)]
    stop_timeout: Option<u64>,
    /// Network mode: none or host.
    #[arg(long)]
    network: Option<String>,
    /// Container name (ad-hoc tasks).
    #[arg(long, default_value = "main")]
    name: String,
    /// Override the entrypoint (ad-hoc tasks).
    #[arg(long)]
    entrypoint: Option<String>,
    /// Task group.
    #[arg(long)]
    group: Option<String>,
    /// Wait until the task stops and exit with its exit code.
    #[arg(long)]
    wait: bool,
    /// Stream the task's logs (implies --wait).
    #[arg(long, short = 'f')]
    follow: bool,
    /// Command and arguments.
    #[arg(last = true)]
    command: Vec<String>,
}

fn parse_duration(s: &str) -> Result<u64, String> {
    humantime::parse_duration(s)
        .map(|d| d.as_secs())
        .or_else(|_| s.parse::<u64>())
        .map_err(|_| format!("{s:?} is not a duration (e.g. 30s, 5m)"))
}

/// MiB, or with a unit: 64, 64M, 64MiB, 1G, 1GiB.
fn parse_memory(s: &str) -> Result<u64, String> {
    let lower = s.trim().to_ascii_lowercase();
    let (num, mult) = if let Some(n) = lower
        .strip_suffix("gib")
        .or_else(|| lower.strip_suffix("g"))
    {
        (n, 1024)
    } else if let Some(n) = lower
        .strip_suffix("mib")
        .or_else(|| lower.strip_suffix("m"))
    {
        (n, 1)
    } else {
        (lower.as_str(), 1)
    };
    num.trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .ok_or_else(|| format!("{s:?} is not a memory size in MiB (e.g. 64, 512M, 2G)"))
}

/// The exit code `--wait` ends with, after saying why when the task did not simply exit.
pub fn exit_status(t: &pb::Task) -> i32 {
    let code = essential_exit(t);
    let oom = t
        .containers
        .iter()
        .find(|c| c.reason.starts_with("OutOfMemoryError"));
    match (t.stop_code.as_str(), oom) {
        (_, Some(c)) => {
            eprintln!(
                "skiff: task {} container {} was killed: {}",
                t.id, c.name, c.reason
            );
            c.exit_code.unwrap_or(137)
        }
        ("TaskFailedToStart", _) => {
            eprintln!("skiff: task {} failed to start: {}", t.id, t.stopped_reason);
            125
        }
        ("TimedOut", _) => {
            eprintln!("skiff: task {} timed out: {}", t.id, t.stopped_reason);
            124
        }
        ("NodeLost", _) => {
            eprintln!(
                "skiff: task {} was lost with its node: {}",
                t.id, t.stopped_reason
            );
            125
        }
        ("UserInitiated", _) | ("ServiceSchedulerInitiated", _) => {
            eprintln!("skiff: task {} was stopped: {}", t.id, t.stopped_reason);
            code.unwrap_or(143)
        }
        _ => code.unwrap_or(1),
    }
}

pub async fn run(addr: &str, fmt: Format, a: RunTaskArgs) -> anyhow::Result<i32> {
    let source = match (&a.image, &a.task_def) {
        (Some(image), None) => pb::run_task_request::Source::AdHoc(pb::TaskDefinitionInput {
            family: String::new(),
            containers: vec![pb::ContainerDefinition {
                name: a.name.clone(),
                image: image.clone(),
                entrypoint: a.entrypoint.iter().cloned().collect(),
                command: a.command.clone(),
                environment: a.env.iter().cloned().collect(),
                cpu: a.cpu.unwrap_or(0.0),
                memory_mib: a.memory.unwrap_or(0),
                essential: Some(true),
                stop_timeout_seconds: a.stop_timeout.map(|s| s.min(u32::MAX as u64) as u32),
                working_dir: String::new(),
                pull_policy: a.pull_policy.clone().unwrap_or_default(),
                repository_credentials: a.registry_creds.clone().unwrap_or_default(),
                privileged: a.privileged,
                readonly_root_filesystem: a.read_only,
                user: a.user.clone().unwrap_or_default(),
                secrets: a
                    .secrets
                    .iter()
                    .map(|(var, secret)| pb::SecretRef {
                        name: var.clone(),
                        value_from: secret.clone(),
                        file: String::new(),
                    })
                    .chain(a.secret_files.iter().map(|(path, secret)| pb::SecretRef {
                        name: String::new(),
                        value_from: secret.clone(),
                        file: path.clone(),
                    }))
                    .collect(),
                mounts: a.mounts.clone(),
            }],
            network_mode: a.network.clone().unwrap_or_default(),
            timeout_seconds: a.timeout.unwrap_or(0),
            task_role: a.role.clone().unwrap_or_default(),
        }),
        (None, Some(def)) => pb::run_task_request::Source::TaskDefinition(def.clone()),
        (None, None) => anyhow::bail!("give --image REF (ad hoc) or --task-def FAMILY[:REV]"),
        (Some(_), Some(_)) => unreachable!("clap rejects --image with --task-def"),
    };
    let overrides = if a.task_def.is_some() {
        anyhow::ensure!(
            a.network.is_none(),
            "--network: set it in the task definition"
        );
        let container_override =
            (!a.command.is_empty() || !a.env.is_empty() || a.cpu.is_some() || a.memory.is_some())
                .then(|| pb::ContainerOverride {
                    name: a.name.clone(),
                    command: a.command.clone(),
                    environment: a.env.iter().cloned().collect::<HashMap<_, _>>(),
                    cpu: a.cpu,
                    memory_mib: a.memory,
                });
        Some(pb::TaskOverrides {
            containers: container_override.into_iter().collect(),
            timeout_seconds: a.timeout,
            task_role: a.role.clone(),
        })
    } else {
        None
    };
    let channel = connect(addr).await?;
    let mut client = pb::tasks_client::TasksClient::new(channel);
    let task = client
        .run(pb::RunTaskRequest {
            source: Some(source),
            overrides,
            group: a.group.unwrap_or_default(),
            started_by: "skiff run-task".into(),
        })
        .await
        .map_err(api_error)?
        .into_inner();
    if !(a.wait || a.follow) {
        match fmt {
            Format::Json => println!("{}", output::json(&task)),
            Format::Table => println!("{}", task.id),
        }
        return Ok(0);
    }
    if a.follow {
        // Logs exist once the task is placed and started; the stream ends when it stops.
        wait_until_placed(&mut client, &task.id).await?;
        stream_logs(&mut client, &task.id, true, String::new()).await?;
    }
    let done = client
        .wait(pb::TaskRef {
            id: task.id.clone(),
        })
        .await
        .map_err(api_error)
        .context("waiting for the task")?
        .into_inner();
    if fmt == Format::Json {
        println!("{}", output::json(&done));
    } else if done.stop_code == "TaskFailedToStart" && a.follow {
        eprint!("{}", describe_task(&done));
    }
    Ok(exit_status(&done))
}

async fn wait_until_placed(
    client: &mut pb::tasks_client::TasksClient<crate::client::Conn>,
    id: &str,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(600);
    loop {
        let t = client
            .describe(pb::TaskRef { id: id.to_string() })
            .await
            .map_err(api_error)?
            .into_inner();
        if !t.node_id.is_empty() && t.last_status != "PENDING" {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            anyhow::bail!(
                "task {id} was not placed within 10 minutes: {}",
                t.status_reason
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

/// `/host:/container` or `/host:/container:ro`.
fn parse_mount(s: &str) -> Result<pb::MountPoint, String> {
    let parts: Vec<&str> = s.split(':').collect();
    let (source, target, read_only) = match parts.as_slice() {
        [src, dst] => (src, dst, false),
        [src, dst, "ro"] => (src, dst, true),
        [src, dst, "rw"] => (src, dst, false),
        _ => return Err(format!("{s:?}: write /HOST/PATH:/IN/CONTAINER[:ro]")),
    };
    Ok(pb::MountPoint {
        source: source.to_string(),
        target: target.to_string(),
        read_only,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_units() {
        assert_eq!(parse_memory("64"), Ok(64));
        assert_eq!(parse_memory("64M"), Ok(64));
        assert_eq!(parse_memory("2g"), Ok(2048));
        assert_eq!(parse_memory("1GiB"), Ok(1024));
        assert!(parse_memory("lots")
            .unwrap_err()
            .contains("not a memory size"));
        assert!(parse_memory("-5").is_err());
    }
}
