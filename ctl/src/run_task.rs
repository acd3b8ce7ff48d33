//! `skiff run-task`: start a one-off task from flags or a task definition, optionally wait for
//! it (exiting with its exit code) and follow its logs.

use std::collections::HashMap;

use clap::Args;
use skiff_proto::v1 as pb;

use crate::conn::{api_error, connect, Conn};
use crate::output::{self, Format};
use crate::tasks::{
    describe_task, exit_status, say_while_provisioning, stream_logs, wait, Unfinished,
};

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
    /// Run an init as PID 1 that forwards signals to the command and reaps zombies, so a
    /// command without a SIGTERM handler (sleep, a shell loop) stops at once.
    #[arg(long, conflicts_with = "task_def")]
    init: bool,
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
    /// Network mode: bridge (the default: a namespace and an address of its own on skiff's
    /// bridge, outbound NAT, published ports), none (loopback only), host (the node's) or
    /// cni/NETWORK (a CNI network the node's operator named).
    #[arg(long)]
    network: Option<String>,
    /// Publish a container port on the node: HOST:CONTAINER[/tcp|udp], or PORT for the same
    /// on both (repeatable; bridge and cni/NETWORK modes).
    #[arg(long = "publish", short = 'p', value_parser = parse_port, conflicts_with = "task_def")]
    publish: Vec<pb::PortMapping>,
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
    /// Stream the task's logs (implies --wait). Ctrl-C stops following; the task goes on
    /// (see --stop-on-interrupt).
    #[arg(long, short = 'f')]
    follow: bool,
    /// With --wait or --follow: Ctrl-C stops the task (SIGTERM, then SIGKILL after its stop
    /// timeout) and waits for it, instead of leaving it running.
    #[arg(long = "stop-on-interrupt")]
    stop_on_interrupt: bool,
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

use crate::taskdef_file::parse_memory;

fn parse_port(s: &str) -> Result<pb::PortMapping, String> {
    let p = skiff_model::validate::port_mapping("--publish", s).map_err(|e| e.problem)?;
    Ok(pb::PortMapping {
        container_port: p.container_port.into(),
        host_port: p.host_port.into(),
        protocol: p.protocol.as_str().to_string(),
    })
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
                init_process_enabled: a.init,
                health_check: None,
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
                port_mappings: a.publish.clone(),
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
        eprintln!(
            "skiff: following the logs of task {} (Ctrl-C stops following{})",
            task.id,
            if a.stop_on_interrupt {
                " and stops the task"
            } else {
                ", the task goes on"
            }
        );
    }
    let id = task.id.clone();
    let waited = tokio::select! {
        r = follow_and_wait(&mut client, &id, a.follow) => r,
        _ = tokio::signal::ctrl_c() => {
            if !a.stop_on_interrupt {
                eprintln!(
                    "skiff: stopped following; task {id} goes on running (stop it with `skiff tasks stop {id}`, follow it again with `skiff tasks logs -f {id}`)"
                );
                return Ok(130);
            }
            // Its work may have started again as another task: that one is stopped.
            let id = crate::tasks::latest(&mut client, &id).await?;
            eprintln!("skiff: interrupted; stopping task {id}");
            client
                .stop(pb::StopTaskRequest { id: id.clone(), reason: "interrupted (Ctrl-C) in skiff run-task".into() })
                .await
                .map_err(api_error)?;
            wait(&mut client, &id).await
        }
    };
    let done = match waited {
        Ok(done) => done,
        Err(Unfinished::NeverPlaced(reason)) => {
            // Nobody will wait for it: leave nothing behind that could start unattended later.
            let _ = client
                .stop(pb::StopTaskRequest {
                    id: id.clone(),
                    reason: format!("run-task gave up: {reason}"),
                })
                .await;
            eprintln!("skiff: {reason}; the task was stopped");
            return Ok(125);
        }
        Err(Unfinished::Failed(e)) => return Err(e),
    };
    if fmt == Format::Json {
        println!("{}", output::json(&done));
    } else if done.stop_code == "TaskFailedToStart" && a.follow {
        eprintln!("{}", describe_task(&done));
    }
    Ok(exit_status(&done))
}

/// Streams the logs once the task's containers run (when `follow`), then waits for the end;
/// the same for each task that starts its work again after it was lost with its node before
/// it ran. A task that never ran has no logs: its reason comes from the wait, as with `--wait`.
async fn follow_and_wait(
    client: &mut pb::tasks_client::TasksClient<Conn>,
    id: &str,
    follow: bool,
) -> Result<pb::Task, Unfinished> {
    let mut id = id.to_string();
    loop {
        let done = follow_one(client, &id, follow).await?;
        match crate::tasks::started_again(&done) {
            Some(next) => id = next,
            None => return Ok(done),
        }
    }
}

/// `follow_and_wait` for one task: returns it STOPPED.
async fn follow_one(
    client: &mut pb::tasks_client::TasksClient<Conn>,
    id: &str,
    follow: bool,
) -> Result<pb::Task, Unfinished> {
    if follow {
        let (mut poll, mut watcher) = (client.clone(), client.clone());
        let started = tokio::select! {
            r = wait_until_started(&mut poll, id) => r.map_err(Unfinished::Failed)?,
            never = say_while_provisioning(&mut watcher, id) => return Err(never),
        };
        if started {
            let opts = crate::tasks::LogOptions {
                follow: true,
                ..Default::default()
            };
            if let Err(e) = stream_logs(client, id, &opts).await {
                // The task may have stopped before its log could be read; the wait says how.
                tracing::debug!(error = %e, "no logs");
            }
        }
    }
    crate::tasks::wait_one(client, id).await
}

/// Polls until the task's containers run (true) or it stopped without running (false).
async fn wait_until_started(
    client: &mut pb::tasks_client::TasksClient<Conn>,
    id: &str,
) -> anyhow::Result<bool> {
    let mut delay = std::time::Duration::from_millis(5);
    loop {
        let t = client
            .describe(pb::TaskRef { id: id.to_string() })
            .await
            .map_err(api_error)?
            .into_inner();
        match t.last_status.as_str() {
            "RUNNING" | "STOPPING" => return Ok(true),
            "STOPPED" => return Ok(t.started_at_ms > 0),
            _ => {}
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(std::time::Duration::from_millis(100));
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
