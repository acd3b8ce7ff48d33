//! One task's life on this node: prepare images and rootfs, launch a shim per container, watch
//! them, stop the rest when an essential container exits, enforce the task timeout, clean up,
//! and report every change. The task's record is persisted at each step (`task.json`), so a
//! restarted agent can pick the task up where it was.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::watch;
use tracing::{info, warn};

use crate::bundle::{self, BundleInput};
use crate::record::Phase;
use crate::rootfs;
use crate::runtime::{self, ShimHandle};
use crate::shim::{self, ShimConfig};
use crate::spec::{ContainerSpec, NetworkMode, TaskIdentity, TaskSpec};
use crate::state_dir;
use crate::AgentInner;

/// A stop request: (stop code, reason).
pub type StopRequest = Option<(String, String)>;

pub const TASK_FILE: &str = "task.json";

/// libcontainer's state root, under the state dir.
pub const LIBCONTAINER_STATE: &str = "runc";

/// A task's per-boot runtime dir (on the state tmpfs, `state_dir`): its record and, per
/// container, bundle, shim files, rootfs mountpoint and secrets.
pub fn runtime_dir(cfg: &crate::AgentConfig, task_id: &str) -> PathBuf {
    cfg.state_dir.join("tasks").join(task_id)
}

/// A task's dir on disk: per container, the overlay's upper layer and work dir (removed with
/// the task) and the logs (kept).
pub fn disk_dir(cfg: &crate::AgentConfig, task_id: &str) -> PathBuf {
    cfg.data_dir.join("tasks").join(task_id)
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Runs (or, with `adopt`, resumes) a task to its end.
pub async fn run(
    agent: Arc<AgentInner>,
    task_id: String,
    adopt: bool,
    stop: watch::Receiver<StopRequest>,
) {
    // Instrumented, not entered: a span entered across an `.await` would tag whatever else
    // runs on this thread meanwhile.
    let span = tracing::info_span!("task", task_id = %task_id);
    tracing::Instrument::instrument(run_task(agent, task_id, adopt, stop), span).await
}

async fn run_task(
    agent: Arc<AgentInner>,
    task_id: String,
    adopt: bool,
    mut stop: watch::Receiver<StopRequest>,
) {
    let Some(record) = agent.record(&task_id) else {
        return;
    };
    let dir = runtime_dir(&agent.cfg, &task_id);
    let handles: Vec<Option<ShimHandle>> = if adopt && record.phase != Phase::Pending {
        record
            .spec
            .containers
            .iter()
            .map(|c| runtime::adopt(&dir.join(&c.name)))
            .collect()
    } else {
        if adopt {
            // The agent died while starting this task, after launching part of it or more
            // often than it may be started again (`readopt` starts it again otherwise):
            // whatever started must go.
            stop_adopted(&dir, &record.spec).await;
            finish(
                &agent,
                &task_id,
                "TaskFailedToStart",
                "the agent restarted while the task was starting".into(),
            )
            .await;
            cleanup(&agent, &task_id, &record.spec).await;
            return;
        }
        match start(&agent, &task_id, &record.spec).await {
            Ok(h) => h.into_iter().map(Some).collect(),
            Err(reason) => {
                finish(&agent, &task_id, "TaskFailedToStart", reason).await;
                return;
            }
        }
    };
    if !adopt || record.phase == Phase::Pending {
        agent.update(&task_id, |r| {
            r.phase = Phase::Running;
            r.started_at_ms = now_ms();
            for c in &mut r.containers {
                c.phase = Phase::Running;
            }
        });
        info!("running");
    } else {
        info!("re-adopted");
        check_network(&agent, &task_id, &record.spec).await;
        if let Err(e) = serve_bridge_endpoints(&agent, &record.spec).await {
            warn!(error = %e, "the endpoints for a re-adopted bridge task cannot start");
        }
    }
    supervise(&agent, &task_id, &dir, handles, &mut stop).await;
}

/// How many times a task interrupted by the agent's own restart before it ran is started
/// again; past that it fails (`TaskFailedToStart`): it may be what brings the agent down.
pub const MAX_INTERRUPTED_STARTS: u32 = 3;

/// Counts one more interrupted start of a task (in its disk dir, which outlives the state
/// tmpfs and the agent) and returns the count.
pub fn interrupted_start(disk: &Path) -> u32 {
    let file = disk.join("interrupted-starts");
    let n = std::fs::read_to_string(&file)
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
        .unwrap_or(0)
        + 1;
    if let Err(e) = std::fs::create_dir_all(disk).and_then(|_| std::fs::write(&file, n.to_string()))
    {
        warn!(path = %file.display(), error = %e, "cannot count the task's interrupted starts");
    }
    n
}

/// How much of a task whose start was interrupted had been launched.
pub enum Launched {
    /// No container's shim was (about to be) started: nothing of the task ran.
    None,
    /// Every container has a shim that ran (it left its pid or its exit).
    All,
    Some,
}

/// What a previous agent launched of a task, from the files in each container's dir: the
/// shim's log is created just before the shim starts, its pid file by the shim itself, its
/// exit record when it ends.
pub fn launched(dir: &Path, spec: &TaskSpec) -> Launched {
    let (mut begun, mut running) = (0, 0);
    for c in &spec.containers {
        let cdir = dir.join(&c.name);
        let has = |f: &str| cdir.join(f).exists();
        if has(shim::SHIM_PID) || has(shim::EXIT) {
            running += 1;
        } else if has("shim.log") {
            begun += 1;
        }
    }
    match (begun, running) {
        (0, 0) => Launched::None,
        (0, n) if n == spec.containers.len() => Launched::All,
        _ => Launched::Some,
    }
}

/// Removes what an interrupted start of a task left (containers already launched, rootfs,
/// network, runtime dir), so that it can start afresh. The task has no record in the agent.
pub async fn discard_unstarted(agent: &Arc<AgentInner>, task_id: &str, spec: &TaskSpec) {
    stop_adopted(&runtime_dir(&agent.cfg, task_id), spec).await;
    cleanup(agent, task_id, spec).await;
}

/// Stops whichever of a task's containers a previous agent had launched.
async fn stop_adopted(dir: &Path, spec: &TaskSpec) {
    for c in &spec.containers {
        if let Some(h) = runtime::adopt(&dir.join(&c.name)) {
            h.stop();
            h.exited().await.gone().await;
        }
    }
}

/// Prepares every container and launches their shims, in ordered steps: the images (all of
/// them, concurrently — a task whose image cannot be had starts nothing), then for each
/// container its directories and rootfs, its secrets, its bundle and its shim
/// (`prepare_and_launch`), with the task's network attached in between for a task on one.
/// A failed step undoes what came before, in reverse: the shims launched so far are stopped
/// (last first), then the task's network, mounts and directories go (`cleanup`).
async fn start(
    agent: &Arc<AgentInner>,
    task_id: &str,
    spec: &TaskSpec,
) -> Result<Vec<ShimHandle>, String> {
    let images = match pull_images(agent, spec).await {
        Ok(images) => images,
        Err(e) => {
            cleanup(agent, task_id, spec).await;
            return Err(e);
        }
    };
    let attached = match attach_network(agent, task_id, spec).await {
        Ok(a) => a,
        Err(e) => {
            cleanup(agent, task_id, spec).await;
            return Err(e);
        }
    };
    let mut launched: Vec<ShimHandle> = Vec::new();
    for (c, image) in spec.containers.iter().zip(images) {
        let step = {
            let (agent, task_id, c) = (agent.clone(), task_id.to_string(), c.clone());
            let (network, identity) = (spec.network.clone(), spec.identity.clone());
            let attached = attached.clone();
            tokio::task::spawn_blocking(move || {
                prepare_and_launch(
                    &agent,
                    &task_id,
                    &c,
                    &image,
                    &network,
                    attached.as_ref(),
                    identity.as_ref(),
                )
            })
            .await
            .unwrap_or_else(|e| Err(format!("preparing container: {e}")))
        };
        match step {
            Ok(h) => launched.push(h),
            Err(e) => {
                while let Some(h) = launched.pop() {
                    h.stop();
                    h.exited().await.gone().await;
                }
                cleanup(agent, task_id, spec).await;
                return Err(format!("container {}: {e}", c.name));
            }
        }
    }
    enforce_image_budget(agent);
    Ok(launched)
}

/// What the containers of a task on a network need of it.
#[derive(Clone)]
struct Attached {
    netns: PathBuf,
    etc_files: Vec<(PathBuf, String)>,
}

/// The task's hostname: its id's first 12 characters, as Docker shortens container ids.
fn hostname(task_id: &str) -> String {
    task_id.chars().take(12).collect()
}

/// Step 2, for a task on a network: its namespace, attached through CNI with its published
/// ports, and its /etc/hosts and /etc/resolv.conf. The addresses go in its record (and so in
/// its reports).
async fn attach_network(
    agent: &Arc<AgentInner>,
    task_id: &str,
    spec: &TaskSpec,
) -> Result<Option<Attached>, String> {
    let NetworkMode::Network(name) = &spec.network else {
        return Ok(None);
    };
    if spec.identity.is_some() && name != crate::network::DEFAULT_NETWORK {
        return Err(format!(
            "a task with a role runs with network_mode host or bridge: on cni/{name} its \
             containers cannot reach the credentials endpoint"
        ));
    }
    let ports: Vec<crate::network::PortMapping> = spec
        .containers
        .iter()
        .flat_map(|c| &c.port_mappings)
        .map(|p| crate::network::PortMapping {
            host_port: p.host_port,
            container_port: p.container_port,
            protocol: p.protocol.clone(),
        })
        .collect();
    // The placer knew of the ports other processes held at the last report; one taken since
    // fails the start rather than have the task's rule take the process's traffic.
    if !ports.is_empty() {
        let held = tokio::task::spawn_blocking(crate::hostports::in_use)
            .await
            .map_err(|e| format!("reading the node's sockets: {e}"))?;
        for p in &ports {
            let taken = match p.protocol.as_str() {
                "udp" => held.udp.contains(&p.host_port),
                _ => held.tcp.contains(&p.host_port),
            };
            if taken {
                return Err(format!(
                    "host port {}/{} is in use on this node by another process",
                    p.host_port, p.protocol
                ));
            }
        }
    }
    let (a, task, net_name) = (agent.clone(), task_id.to_string(), name.clone());
    let dir = runtime_dir(&agent.cfg, task_id).join("network");
    // Tasks on skiff's bridge ask the agent's DNS server (service names); on an operator's
    // network the agent cannot be reached, and the node's resolvers are named instead.
    let on_bridge = name == crate::network::DEFAULT_NETWORK;
    let resolver = on_bridge.then_some(crate::network::TaskResolver {
        nameserver: crate::network::TASK_ENDPOINT,
        search: crate::dnsserve::ZONE,
    });
    let attached = tokio::task::spawn_blocking(move || {
        let began = std::time::Instant::now();
        let net = a.networks.attach(&task, &net_name, &ports)?;
        let took = began.elapsed();
        let etc_files = a
            .networks
            .etc_files(&dir, &hostname(&task), &net, resolver.as_ref())?;
        Ok::<_, crate::network::NetworkError>((net, etc_files, took))
    })
    .await
    .map_err(|e| format!("attaching the network: {e}"))?;
    let (net, etc_files, took) = attached.map_err(|e| format!("network {name}: {e}"))?;
    info!(network = %name, addresses = ?net.addresses, cni_ms = took.as_secs_f64() * 1000.0, "attached to its network");
    agent.update(task_id, |r| r.addresses = net.addresses.clone());
    if on_bridge {
        // Bridge tasks run here: keep namespaces attached ahead of the next ones.
        let a = agent.clone();
        tokio::task::spawn_blocking(move || a.networks.refill());
        // The CNI bridge plugin has made the bridge by now: the servers can listen on it.
        serve_bridge_endpoints(agent, spec).await?;
    }
    Ok(Some(Attached {
        netns: net.netns,
        etc_files,
    }))
}

/// A re-adopted task's network is CHECKed (CNI CHECK with its cached result): an interface,
/// address or rule that went away while no agent ran is logged with the plugin that found
/// it. The task keeps running.
async fn check_network(agent: &Arc<AgentInner>, task_id: &str, spec: &TaskSpec) {
    if !matches!(spec.network, NetworkMode::Network(_)) {
        return;
    }
    let (a, id) = (agent.clone(), task_id.to_string());
    match tokio::task::spawn_blocking(move || a.networks.check(&id)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => warn!(error = %e, "the task's network changed while no agent ran"),
        Err(e) => warn!(error = %e, "checking the task's network failed"),
    }
}

/// What a task on skiff's bridge asks at 169.254.170.2: names, and with a role credentials
/// and the API. The servers start with the agent's first such task — a new one, or one a new
/// agent process re-adopts — and then run for all.
async fn serve_bridge_endpoints(agent: &Arc<AgentInner>, spec: &TaskSpec) -> Result<(), String> {
    if spec.network != NetworkMode::Network(crate::network::DEFAULT_NETWORK.to_string()) {
        return Ok(());
    }
    let bridge = &agent.cfg.network.bridge_name;
    crate::dnsserve::ensure_serving(&agent.dns, bridge).await?;
    if spec.identity.is_some() {
        crate::credserve::ensure_bridge_endpoint(agent, bridge).await?;
        crate::apirelay::ensure_relaying(&agent.relay, bridge).await?;
    }
    Ok(())
}

/// Step 1: every container's image, concurrently.
async fn pull_images(
    agent: &Arc<AgentInner>,
    spec: &TaskSpec,
) -> Result<Vec<crate::images::Image>, String> {
    let pulls = spec.containers.iter().map(|c| async move {
        agent
            .images
            .ensure(&c.image, c.pull_policy, c.registry_auth.as_ref())
            .await
            .map_err(|e| format!("container {}: {e}", c.name))
    });
    futures::future::try_join_all(pulls).await
}

/// Steps 2–5 for one container, on a blocking thread (mounts and file writes): directories and
/// rootfs, secrets, bundle, shim. What a failed step leaves is removed by `cleanup`.
fn prepare_and_launch(
    agent: &Arc<AgentInner>,
    task_id: &str,
    c: &ContainerSpec,
    image: &crate::images::Image,
    network: &NetworkMode,
    attached: Option<&Attached>,
    identity: Option<&TaskIdentity>,
) -> Result<ShimHandle, String> {
    // Directories and rootfs.
    let dir = runtime_dir(&agent.cfg, task_id).join(&c.name);
    let scratch = disk_dir(&agent.cfg, task_id).join(&c.name);
    for d in [&dir, &scratch] {
        std::fs::create_dir_all(d).map_err(|e| format!("creating {}: {e}", d.display()))?;
    }
    if let Some(m) = c
        .mounts
        .iter()
        .find(|m| !std::path::Path::new(&m.source).exists())
    {
        return Err(format!(
            "mount source {} does not exist on node {}",
            m.source, agent.cfg.node_id
        ));
    }
    let rootfs = rootfs::prepare(&image.layers, &dir, &scratch)
        .map_err(|e| format!("preparing the rootfs: {e}"))?;
    // Secrets: a role's tokens travel like secrets (env vars whose spec lives on the tmpfs).
    let mut extra_env = vec![
        ("SKIFF_TASK_ID".to_string(), task_id.to_string()),
        ("SKIFF_CONTAINER_NAME".to_string(), c.name.clone()),
    ];
    let mut secrets = c.secrets.clone();
    if let Some(identity) = identity {
        let bridge =
            matches!(network, NetworkMode::Network(n) if n == crate::network::DEFAULT_NETWORK);
        for (name, value) in crate::credserve::environment(agent, task_id, identity, bridge)? {
            secrets.push(crate::spec::SecretValue {
                name,
                file: String::new(),
                value: value.into_bytes(),
            });
        }
        if let Some(ca) = crate::tls::ca_pem(&agent.cfg.data_dir) {
            secrets.push(crate::spec::SecretValue {
                name: String::new(),
                file: crate::apirelay::CA_FILE.into(),
                value: ca,
            });
        }
    }
    let secret_files = rootfs::place_secrets(&dir, &secrets, &mut extra_env)
        .map_err(|e| format!("delivering secrets: {e}"))?;
    // Bundle: config.json — on the secrets tmpfs when it carries secret values, never on the
    // node's disk — and the shim's own config.
    let cgroup_path = runtime::cgroup_path(task_id, &c.name);
    runtime::ensure_cgroup_parent().map_err(|e| format!("creating skiff's cgroup: {e}"))?;
    let hostname = hostname(task_id);
    let spec = bundle::runtime_spec(&BundleInput {
        container: c,
        image: &image.config,
        rootfs: &rootfs,
        hostname: &hostname,
        network,
        netns: attached.map(|a| a.netns.as_path()),
        etc_files: attached.map(|a| a.etc_files.as_slice()).unwrap_or_default(),
        cgroup_path: &cgroup_path,
        extra_env: &extra_env,
        secret_files: &secret_files,
        init_binary: &crate::init_binary::path(&agent.cfg.data_dir),
    })
    .map_err(|e| e.to_string())?;
    let bundle_dir = if secrets.is_empty() {
        dir.clone()
    } else {
        dir.join("secrets")
    };
    spec.save(bundle_dir.join("config.json"))
        .map_err(|e| format!("writing config.json: {}", crate::images::error_chain(&e)))?;
    runtime::write_shim_config(
        &dir,
        &ShimConfig {
            container_id: format!("{task_id}-{}", c.name),
            bundle: bundle_dir,
            state_root: agent.cfg.state_dir.join(LIBCONTAINER_STATE),
            log_path: scratch.join(crate::logs::LOG_FILE),
            log_max_bytes: agent.cfg.log_max_bytes,
            log_keep: agent.cfg.log_keep,
            stop_timeout_secs: c.stop_timeout_secs,
            cgroup_path: cgroup_path.clone(),
        },
    )
    .map_err(|e| format!("writing shim.json: {e}"))?;
    // Shim.
    runtime::launch(
        agent.as_ref(),
        &agent.cfg.shim_exe,
        &dir,
        &cgroup_path,
        agent.cfg.start_timeout,
    )
    .map_err(|e| {
        // "not found" for a command that is visibly there: say what is wrong with it.
        let (program, path_env, cwd) = command_of(&spec);
        match crate::executable::explain_missing(&rootfs, &program, &path_env, &cwd) {
            Some(why) => format!("{why}: {e}"),
            None => e,
        }
    })
}

/// The program a runtime spec starts (past an init), its PATH and its working directory.
fn command_of(spec: &oci_spec::runtime::Spec) -> (String, String, String) {
    let process = spec.process().as_ref();
    let program = process
        .and_then(|p| {
            p.args()
                .as_ref()?
                .iter()
                .find(|a| !a.starts_with("/dev/init") && *a != "--")
                .cloned()
        })
        .unwrap_or_default();
    let path_env = process
        .and_then(|p| {
            p.env()
                .as_ref()?
                .iter()
                .find_map(|e| e.strip_prefix("PATH=").map(String::from))
        })
        .unwrap_or_default();
    let cwd = process
        .map(|p| p.cwd().display().to_string())
        .unwrap_or_else(|| "/".into());
    (program, path_env, cwd)
}

/// Keeps images under the disk budget, in the background: after a start (a new image may
/// have pushed use over it) and after a task's cleanup (its image became evictable).
fn enforce_image_budget(agent: &Arc<AgentInner>) {
    if agent.images.config().disk_budget.is_none() {
        return;
    }
    let agent = agent.clone();
    tokio::spawn(async move {
        let r = agent.images.enforce_budget().await;
        if !r.images_removed.is_empty() {
            info!(images = ?r.images_removed, bytes = r.bytes_freed, "image disk budget enforced");
        }
    });
}

async fn supervise(
    agent: &Arc<AgentInner>,
    task_id: &str,
    dir: &Path,
    handles: Vec<Option<ShimHandle>>,
    stop: &mut watch::Receiver<StopRequest>,
) {
    let Some(record) = agent.record(task_id) else {
        return;
    };
    let spec = record.spec.clone();
    let mut pids: Vec<Option<runtime::ShimRef>> = Vec::new();
    let mut waiting = FuturesUnordered::new();
    for (i, h) in handles.into_iter().enumerate() {
        pids.push(h.as_ref().and_then(ShimHandle::stopper));
        // None: gone while the agent was away; its exit is already recorded (or lost).
        waiting.push(async move {
            let ending = match h {
                Some(h) => Some(h.exited().await),
                None => None,
            };
            (i, ending)
        });
    }
    // Each running container with a health check is checked until it exits.
    let mut checks: Vec<Option<tokio::task::JoinHandle<()>>> = spec
        .containers
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let check = c.health_check.clone()?;
            pids[i].as_ref()?;
            Some(tokio::spawn(crate::health::watch(
                agent.clone(),
                task_id.to_string(),
                i,
                dir.join(&c.name),
                check,
                record.started_at_ms,
            )))
        })
        .collect();
    // Shims whose containers have exited but which may still be deleting them.
    let mut ending: Vec<runtime::ShimRef> = Vec::new();
    let deadline = (spec.timeout_secs > 0).then(|| {
        let end = record.started_at_ms + (spec.timeout_secs as i64) * 1000;
        tokio::time::Instant::now() + Duration::from_millis((end - now_ms()).max(0) as u64)
    });
    let mut stopping: Option<(String, String)> = None;
    if record.phase == Phase::Stopping {
        stopping = Some((record.stop_code.clone(), record.reason.clone()));
    }
    // A stop that arrived before or during start.
    let mut pending_stop = stop.borrow_and_update().clone();
    loop {
        if let Some((code, reason)) = pending_stop.take() {
            if stopping.is_none() {
                info!(stop_code = %code, "stopping");
                stopping = Some((code.clone(), reason.clone()));
                agent.update(task_id, |r| {
                    r.phase = Phase::Stopping;
                    r.stop_code = code;
                    r.reason = reason;
                });
                for p in pids.iter().flatten() {
                    p.stop();
                }
            }
        }
        tokio::select! {
            done = waiting.next() => {
                let Some((i, shim)) = done else { break };
                ending.extend(shim);
                if let Some(check) = checks[i].take() {
                    check.abort();
                }
                let c = &spec.containers[i];
                let exit = runtime::exit_record(&dir.join(&c.name));
                pids[i] = None;
                let reason = if exit.oom_killed {
                    "OutOfMemoryError: Container killed due to memory usage".to_string()
                } else if exit.killed_after_stop_timeout {
                    stop_timeout_reason(c)
                } else {
                    exit.error.clone().unwrap_or_default()
                };
                info!(container = %c.name, exit_code = ?exit.exit_code, %reason, "container exited");
                agent.update(task_id, |r| {
                    if let Some(cr) = r.containers.get_mut(i) {
                        cr.phase = Phase::Stopped;
                        cr.exit_code = exit.exit_code;
                        cr.reason = reason.clone();
                    }
                });
                if c.essential && stopping.is_none() {
                    pending_stop = Some((
                        "EssentialContainerExited".to_string(),
                        format!("Essential container in task exited ({}: exit code {})", c.name,
                            exit.exit_code.map_or("unknown".to_string(), |c| c.to_string())),
                    ));
                }
            }
            changed = stop.changed() => {
                if changed.is_ok() {
                    pending_stop = stop.borrow_and_update().clone();
                }
            }
            _ = async { tokio::time::sleep_until(deadline.unwrap()).await }, if deadline.is_some() && stopping.is_none() => {
                pending_stop = Some((
                    "TimedOut".to_string(),
                    format!("Task exceeded its timeout of {}s", spec.timeout_secs),
                ));
            }
        }
    }
    for check in checks.into_iter().flatten() {
        check.abort();
    }
    let (code, reason) = stopping.unwrap_or_else(|| {
        (
            "EssentialContainerExited".to_string(),
            "All containers exited".to_string(),
        )
    });
    // Report first: every container has exited, so the task no longer uses node resources.
    // Then let the shims finish deleting their containers (cgroups, state), and remove the
    // rootfs: idempotent, and redone on agent restart for every STOPPED task.
    finish(agent, task_id, &code, reason).await;
    for shim in ending {
        shim.gone().await;
    }
    cleanup(agent, task_id, &spec).await;
}

pub async fn cleanup(agent: &Arc<AgentInner>, task_id: &str, spec: &TaskSpec) {
    let (dir, disk) = (
        runtime_dir(&agent.cfg, task_id),
        disk_dir(&agent.cfg, task_id),
    );
    let names: Vec<String> = spec.containers.iter().map(|c| c.name.clone()).collect();
    let task = task_id.to_string();
    let _ = tokio::task::spawn_blocking(move || {
        for n in names {
            let orphans = runtime::reap_cgroup(&runtime::cgroup_path(&task, &n));
            if orphans > 0 {
                warn!(container = %n, processes = orphans, "killed what its dead shim left running");
            }
            let cdir = dir.join(&n);
            if let Err(e) = rootfs::release(&cdir, &disk.join(&n)) {
                warn!(container = %n, error = %e, "rootfs cleanup failed");
            }
            let _ = std::fs::remove_file(cdir.join(shim::SHIM_PID));
        }
    })
    .await;
    if matches!(spec.network, NetworkMode::Network(_)) {
        let (a, task) = (agent.clone(), task_id.to_string());
        // A namespace the task could not have changed may serve the next one as it is.
        let reusable = spec
            .containers
            .iter()
            .all(|c| !c.privileged && c.port_mappings.is_empty());
        let detached =
            tokio::task::spawn_blocking(move || a.networks.release(&task, reusable)).await;
        if let Ok(Err(e)) = detached {
            warn!(error = %e, "detaching the task's network failed; retried at the next agent start");
        }
    }
    // Forgotten while the rootfs was being released: the runtime dir is this cleanup's to
    // remove (`forget_task` leaves a dir with mounts under it).
    if agent.record(task_id).is_none() {
        if let Err(e) = state_dir::remove_task_dir(&runtime_dir(&agent.cfg, task_id)) {
            warn!(error = %e, "removing the task's runtime dir failed");
        }
    }
    enforce_image_budget(agent);
}

/// Why a container was SIGKILLed at its stop timeout, with the likely cause: a PID 1 with no
/// SIGTERM handler ignores SIGTERM (the kernel gives it no default action).
fn stop_timeout_reason(c: &crate::spec::ContainerSpec) -> String {
    let base = format!(
        "Killed after the stop timeout ({} s): the container did not end on SIGTERM",
        c.stop_timeout_secs
    );
    if c.init {
        base
    } else {
        format!("{base} (as PID 1 a command without a SIGTERM handler ignores it; --init / init_process_enabled forwards it)")
    }
}

async fn finish(agent: &Arc<AgentInner>, task_id: &str, code: &str, reason: String) {
    info!(stop_code = code, %reason, "stopped");
    agent.update(task_id, |r| {
        r.phase = Phase::Stopped;
        if r.stop_code.is_empty() || code == "TaskFailedToStart" {
            r.stop_code = code.to_string();
            r.reason = reason;
        }
        for c in &mut r.containers {
            c.phase = Phase::Stopped;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interrupted_starts_are_counted_on_disk_from_one_agent_to_the_next() {
        let dir = std::env::temp_dir().join(format!("skiff-interrupted-{}", std::process::id()));
        let disk = dir.join("tasks").join("t1");
        let counts: Vec<u32> = (0..MAX_INTERRUPTED_STARTS + 1)
            .map(|_| interrupted_start(&disk))
            .collect();
        assert_eq!(counts, (1..=MAX_INTERRUPTED_STARTS + 1).collect::<Vec<_>>());
        assert_eq!(
            std::fs::read_to_string(disk.join("interrupted-starts")).unwrap(),
            (MAX_INTERRUPTED_STARTS + 1).to_string()
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
