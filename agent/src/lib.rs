//! skiff's agent: runs task containers on this node and reports on them to the controller.
//!
//! The agent never calls libcontainer itself: each container is owned by a `skiff shim`
//! process (see `shim.rs`) that outlives agent restarts. The agent prepares images and rootfs,
//! launches and watches shims, serves logs, and keeps one stream open to the controller.

pub mod apirelay;
pub mod bundle;
pub mod cgroup_tuning;
pub(crate) mod connection;
pub mod credserve;
pub mod dnsserve;
pub mod exec_helper;
mod execserve;
pub mod executable;
pub mod hardening;
pub mod health;
pub mod hostports;
pub mod images;
mod imageserve;
pub mod init_binary;
pub mod logs;
mod logserve;
pub mod metrics;
pub mod mountinfo;
pub mod network;
pub mod peer;
pub mod record;
pub mod rootfs;
pub mod runtime;
pub mod shim;
pub mod spec;
pub mod state_dir;
pub mod supervisor;
pub mod tls;
pub mod usage;
pub mod zygote;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use skiff_proto::v1 as pb;
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::record::{Phase, TaskRecord};
use crate::supervisor::{StopRequest, TASK_FILE};

#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub node_id: String,
    /// The controller's gRPC address, e.g. http://127.0.0.1:7400.
    pub controller: String,
    pub data_dir: PathBuf,
    /// Per-boot runtime state (see `state_dir`); a tmpfs is mounted there unless it is on one.
    pub state_dir: PathBuf,
    pub labels: BTreeMap<String, String>,
    /// Capacity offered to the scheduler; defaults to the machine's.
    pub cpu: Option<f64>,
    pub memory_mib: Option<u64>,
    /// The binary to run as `BINARY shim DIR`; normally the running `skiff` itself.
    pub shim_exe: PathBuf,
    pub log_max_bytes: u64,
    pub log_keep: u32,
    /// How long a container may take to be created and started before the task fails.
    pub start_timeout: std::time::Duration,
    /// A docker-style config.json with this node's registry credentials.
    pub docker_config: Option<PathBuf>,
    /// Registries (host[:port]) that are reached over plain HTTP.
    pub insecure_registries: Vec<String>,
    /// Unused images are garbage-collected, least recently used first, above this size.
    pub image_disk_budget: Option<u64>,
    /// Where the container-credentials endpoint listens (a loopback address: containers with
    /// the host network reach it there). A restarted agent keeps the port it had.
    pub credentials_listen: std::net::SocketAddr,
    /// Set the host-wide cgroup2 option `favordynmods` at start (see `cgroup_tuning`).
    pub cgroup_favordynmods: bool,
    /// Task networks: CNI plugins, operators' networks, skiff's bridge (see `network`).
    pub network: network::NetworkConfig,
    /// Resolvers the tasks' DNS server forwards to; empty: the node's (/etc/resolv.conf).
    pub dns_upstreams: Vec<std::net::SocketAddr>,
    /// Where `GET /metrics` is served (`metrics.rs`); None: not served.
    pub metrics_listen: Option<std::net::SocketAddr>,
}

impl AgentConfig {
    pub fn new(node_id: String, controller: String, data_dir: PathBuf) -> AgentConfig {
        AgentConfig {
            node_id,
            controller,
            state_dir: data_dir.join("state"),
            data_dir,
            labels: BTreeMap::new(),
            cpu: None,
            memory_mib: None,
            shim_exe: std::env::current_exe().unwrap_or_else(|_| PathBuf::from("skiff")),
            log_max_bytes: 10 * 1024 * 1024,
            log_keep: 3,
            start_timeout: std::time::Duration::from_secs(60),
            docker_config: std::env::var_os("DOCKER_CONFIG")
                .map(PathBuf::from)
                .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker")))
                .map(|d| d.join("config.json")),
            insecure_registries: Vec::new(),
            image_disk_budget: None,
            credentials_listen: std::net::SocketAddr::from(([127, 0, 0, 1], 51679)),
            cgroup_favordynmods: false,
            network: network::NetworkConfig::default(),
            dns_upstreams: Vec::new(),
            metrics_listen: None,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("agent data dir {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Network(#[from] network::NetworkError),
}

struct TaskEntry {
    record: TaskRecord,
    stop: watch::Sender<StopRequest>,
}

/// State shared by the agent's tasks and connection.
pub struct AgentInner {
    pub cfg: AgentConfig,
    pub images: images::ImageStore,
    tasks: Mutex<HashMap<String, TaskEntry>>,
    /// Interrupted starts whose leftovers are still being cleared (see `readopt`): a start of
    /// the same task waits for its clearing, which flips the flag to true when done.
    discarding: Mutex<HashMap<String, watch::Receiver<bool>>>,
    /// The live session's outbox; None while disconnected (the next register carries state).
    /// Unbounded on purpose: it carries only small control messages (reports, heartbeats), and a
    /// report must never be dropped; bulk log data goes on connections of its own.
    outbox: Mutex<Option<mpsc::UnboundedSender<pb::AgentMessage>>>,
    log_cancels: Mutex<HashMap<u64, watch::Sender<bool>>>,
    /// Forks the shims (see `zygote`); replaced when it fails.
    zygote: Mutex<Option<zygote::Zygote>>,
    /// TLS to the controller (cluster CA + node certificate), when the agent has joined;
    /// replaced when the certificate is renewed.
    tls: Mutex<Option<tonic::transport::ClientTlsConfig>>,
    /// The container-credentials endpoint's key, cache and pending requests.
    pub credentials: credserve::Credentials,
    /// The node's networks, which bridge and CNI tasks are attached to.
    pub networks: network::Networks,
    /// The DNS server of bridge tasks and the service names it answers.
    pub dns: Arc<dnsserve::Dns>,
    /// Bridge tasks' way to the controller's API (see `apirelay`).
    pub relay: Arc<apirelay::ApiRelay>,
}

impl AgentInner {
    /// The TLS settings for a new connection to the controller.
    pub(crate) fn tls(&self) -> Option<tonic::transport::ClientTlsConfig> {
        self.tls.lock().unwrap().clone()
    }

    /// Renews the node certificate when two thirds of its life are over (checked every
    /// minute, or sooner for short-lived certificates). Failures are retried.
    async fn keep_certificate_fresh(self: Arc<Self>) {
        loop {
            let Some(due) = tls::renew_at_ms(&self.cfg.data_dir) else {
                return; // not a joined agent
            };
            let now = chrono::Utc::now().timestamp_millis();
            if now < due {
                let wait = (due - now).clamp(50, 60_000) as u64;
                tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
                continue;
            }
            let Some(current) = self.tls() else { return };
            match tls::renew(&self.cfg.controller, &self.cfg.data_dir, &current).await {
                Ok(fresh) => {
                    *self.tls.lock().unwrap() = Some(fresh);
                    info!("node certificate renewed");
                }
                Err(e) => {
                    warn!(error = %e, "renewing the node certificate failed; retrying");
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// Starts the shim zygote unless one is running. Not fatal: without one, shims are
    /// executed.
    fn start_zygote(&self) {
        let mut slot = self.zygote.lock().unwrap();
        if slot.is_none() {
            match zygote::Zygote::spawn(&self.cfg.shim_exe) {
                Ok(z) => *slot = Some(z),
                Err(e) => warn!(error = %e, "starting the shim zygote failed"),
            }
        }
    }

    pub fn record(&self, task_id: &str) -> Option<TaskRecord> {
        self.tasks
            .lock()
            .unwrap()
            .get(task_id)
            .map(|e| e.record.clone())
    }

    /// Changes a task's record, persists it, and reports it if anything changed.
    pub fn update(&self, task_id: &str, change: impl FnOnce(&mut TaskRecord)) {
        let report = {
            let mut tasks = self.tasks.lock().unwrap();
            let Some(entry) = tasks.get_mut(task_id) else {
                return;
            };
            let before = entry.record.clone();
            change(&mut entry.record);
            if entry.record == before {
                return;
            }
            self.persist(task_id, &entry.record);
            report_of(task_id, &entry.record)
        };
        self.send(pb::agent_message::Body::Task(report));
    }

    fn persist(&self, task_id: &str, record: &TaskRecord) {
        let dir = supervisor::runtime_dir(&self.cfg, task_id);
        let write = std::fs::create_dir_all(&dir).and_then(|_| {
            shim::write_atomic(
                &dir.join(TASK_FILE),
                &serde_json::to_vec(record).expect("serializable"),
            )
        });
        if let Err(e) = write {
            warn!(task_id, error = %e, "persisting the task record failed");
        }
    }

    /// Sends now if connected; false when there is no session to send on.
    pub(crate) fn send_now(&self, body: pb::agent_message::Body) -> bool {
        self.outbox
            .lock()
            .unwrap()
            .as_ref()
            .is_some_and(|tx| tx.send(pb::AgentMessage { body: Some(body) }).is_ok())
    }

    pub(crate) fn send(&self, body: pb::agent_message::Body) {
        if let Some(tx) = self.outbox.lock().unwrap().as_ref() {
            // A closed outbox means the connection is going; the next register resends state.
            let _ = tx.send(pb::AgentMessage { body: Some(body) });
        }
    }

    fn reports(&self) -> Vec<pb::TaskReport> {
        self.tasks
            .lock()
            .unwrap()
            .iter()
            .map(|(id, e)| report_of(id, &e.record))
            .collect()
    }

    /// Starts a task unless it is already known (StartTask is idempotent by task id).
    fn start_task(self: &Arc<Self>, spec: spec::TaskSpec) {
        let id = spec.task_id.clone();
        let clearing = self.discarding.lock().unwrap().get(&id).cloned();
        if let Some(mut cleared) = clearing {
            // What an interrupted start of this task left is still going: start it after.
            let agent = self.clone();
            tokio::spawn(async move {
                let _ = cleared.wait_for(|done| *done).await;
                agent.start_task(spec);
            });
            return;
        }
        let rx = {
            let mut tasks = self.tasks.lock().unwrap();
            if let Some(e) = tasks.get(&id) {
                let report = report_of(&id, &e.record);
                drop(tasks);
                self.send(pb::agent_message::Body::Task(report));
                return;
            }
            let record = TaskRecord::new(spec);
            self.persist(&id, &record);
            let (stop, rx) = watch::channel(None);
            tasks.insert(id.clone(), TaskEntry { record, stop });
            rx
        };
        let report = self.record(&id).map(|r| report_of(&id, &r));
        if let Some(r) = report {
            self.send(pb::agent_message::Body::Task(r));
        }
        tokio::spawn(supervisor::run(self.clone(), id, false, rx));
    }

    fn stop_task(&self, task_id: &str, code: String, reason: String) {
        let tasks = self.tasks.lock().unwrap();
        match tasks.get(task_id) {
            Some(e) if e.record.phase != Phase::Stopped => {
                e.stop.send_if_modified(|cur| {
                    if cur.is_none() {
                        *cur = Some((code, reason));
                        true
                    } else {
                        false
                    }
                });
            }
            Some(e) => {
                let report = report_of(task_id, &e.record);
                drop(tasks);
                self.send(pb::agent_message::Body::Task(report));
            }
            None => {
                // Its start never arrived (or it is long forgotten): nothing runs, say so.
                drop(tasks);
                let reason = format!(
                    "{reason} (the task never started on node {})",
                    self.cfg.node_id
                );
                self.report_never_started(task_id, &code, reason);
            }
        }
    }

    /// Reports a task this agent does not run (and will not) as STOPPED.
    fn report_never_started(&self, task_id: &str, code: &str, reason: String) {
        let mut record = TaskRecord::new(spec::TaskSpec {
            task_id: task_id.to_string(),
            containers: vec![],
            network: spec::NetworkMode::None,
            timeout_secs: 0,
            identity: None,
        });
        record.phase = Phase::Stopped;
        record.stop_code = code.to_string();
        record.reason = reason;
        self.send(pb::agent_message::Body::Task(report_of(task_id, &record)));
    }

    /// The controller has recorded the task as STOPPED: drop its record (logs stay on disk).
    fn forget_task(&self, task_id: &str) {
        let mut tasks = self.tasks.lock().unwrap();
        if tasks
            .get(task_id)
            .is_some_and(|e| e.record.phase == Phase::Stopped)
        {
            tasks.remove(task_id);
            self.credentials.forget(task_id);
            // Its runtime files go too (the logs stay, on disk) — now, or when the cleanup
            // that may still be releasing its rootfs is done (`supervisor::cleanup`).
            let _ = state_dir::remove_task_dir(&supervisor::runtime_dir(&self.cfg, task_id));
        }
    }
}

fn report_of(task_id: &str, r: &TaskRecord) -> pb::TaskReport {
    pb::TaskReport {
        task_id: task_id.to_string(),
        status: r.phase.as_str().to_string(),
        state: r.phase.wire().into(),
        containers: r
            .containers
            .iter()
            .map(|c| pb::ContainerReport {
                name: c.name.clone(),
                status: c.phase.as_str().to_string(),
                state: c.phase.wire().into(),
                exit_code: c.exit_code,
                reason: c.reason.clone(),
                health: c.health.clone(),
            })
            .collect(),
        stop_code: r.stop_code.clone(),
        code: crate::record::wire_stop_code(&r.stop_code).into(),
        reason: r.reason.clone(),
        time_ms: chrono::Utc::now().timestamp_millis(),
        addresses: r.addresses.clone(),
    }
}

impl runtime::ShimForker for AgentInner {
    fn fork_shim(
        &self,
        dir: &std::path::Path,
        status: std::os::fd::OwnedFd,
    ) -> Result<zygote::Forked, zygote::ForkError> {
        let mut slot = self.zygote.lock().unwrap();
        let zygote = match slot.take() {
            Some(z) => z,
            None => match zygote::Zygote::spawn(&self.cfg.shim_exe) {
                Ok(z) => z,
                Err(e) => return Err(zygote::ForkError::NotSent(status, e)),
            },
        };
        match zygote.fork_shim(dir, status) {
            Ok(f) => {
                *slot = Some(zygote);
                Ok(f)
            }
            Err(e) => {
                // Dropping it ends it; the next start spawns a new one.
                warn!(error = ?e, "the shim zygote failed; starting another next time");
                Err(e)
            }
        }
    }
}

pub struct Agent {
    inner: Arc<AgentInner>,
}

/// Sets `favordynmods` if configured, and says what container starts pay for cgroup joins.
/// Not fatal: containers run either way, only their starts are slower.
fn report_cgroup_joins(wanted: bool) {
    use cgroup_tuning::Favordynmods::*;
    match cgroup_tuning::apply(wanted) {
        Ok(On(point)) => {
            info!(mount = %point.display(), "favordynmods is set: cgroup joins are fast")
        }
        Ok(TurnedOn(point)) => info!(
            mount = %point.display(),
            "set favordynmods (host-wide, as configured): cgroup joins no longer wait for an RCU grace period"
        ),
        Ok(Off(point)) => info!(
            mount = %point.display(),
            "favordynmods is off: every container start waits ~10 ms for an RCU grace period to join its cgroups; \
             cgroup_favordynmods = true (or --cgroup-favordynmods) sets it host-wide"
        ),
        Ok(NoCgroup2) if wanted => {
            warn!("cgroup_favordynmods is set but this host has no cgroup2 mount to set it on")
        }
        Ok(NoCgroup2) => {}
        Err(e) => warn!(error = %e, "cgroup_favordynmods: could not set favordynmods"),
    }
}

impl Agent {
    /// Prepares the data dir and re-adopts every task a previous agent left running.
    pub fn open(cfg: AgentConfig) -> Result<Agent, AgentError> {
        for sub in ["tasks", "images"] {
            let path = cfg.data_dir.join(sub);
            std::fs::create_dir_all(&path)
                .map_err(|source| AgentError::DataDir { path, source })?;
        }
        if state_dir::ensure_tmpfs(&cfg.state_dir).map_err(|source| AgentError::DataDir {
            path: cfg.state_dir.clone(),
            source,
        })? {
            info!(state_dir = %cfg.state_dir.display(), "runtime state on a new tmpfs");
        }
        report_cgroup_joins(cfg.cgroup_favordynmods);
        for sub in ["tasks", supervisor::LIBCONTAINER_STATE] {
            let path = cfg.state_dir.join(sub);
            std::fs::create_dir_all(&path)
                .map_err(|source| AgentError::DataDir { path, source })?;
        }
        init_binary::install(&cfg.data_dir).map_err(|source| AgentError::DataDir {
            path: init_binary::path(&cfg.data_dir),
            source,
        })?;
        let cfg_data_dir = cfg.data_dir.clone();
        let root = cfg.data_dir.join("images");
        let images = images::ImageStore::open(images::ImageStoreConfig {
            root: root.clone(),
            docker_config: cfg.docker_config.clone(),
            insecure_registries: cfg.insecure_registries.clone(),
            disk_budget: cfg.image_disk_budget,
        })
        .map_err(|source| AgentError::DataDir { path: root, source })?;
        let credentials =
            credserve::Credentials::open(&cfg.data_dir).map_err(|source| AgentError::DataDir {
                path: cfg.data_dir.join(credserve::KEY_FILE),
                source,
            })?;
        let networks = network::Networks::load(
            cfg.network.clone(),
            cfg.data_dir.join("cni").join("results"),
            cfg.state_dir.join("netns"),
        )?;
        let inner = Arc::new(AgentInner {
            networks,
            dns: Arc::new(dnsserve::Dns::new(cfg.dns_upstreams.clone())),
            relay: Arc::new(apirelay::ApiRelay::new(cfg.controller.clone())),
            images,
            cfg,
            tasks: Mutex::new(HashMap::new()),
            discarding: Mutex::new(HashMap::new()),
            outbox: Mutex::new(None),
            log_cancels: Mutex::new(HashMap::new()),
            zygote: Mutex::new(None),
            tls: Mutex::new(tls::client_config(&cfg_data_dir)),
            credentials,
        });
        Ok(Agent { inner })
    }

    /// Runs until `shutdown` resolves: re-adopts old tasks, then stays connected to the
    /// controller. Shutting the agent down leaves containers running (their shims own them).
    pub async fn run(self, shutdown: impl std::future::Future<Output = ()>) {
        self.readopt().await;
        self.sweep_orphan_scratch();
        self.detach_leftover_networks();
        self.inner.start_zygote();
        tokio::spawn(self.inner.clone().keep_certificate_fresh());
        let listen = self.inner.cfg.credentials_listen;
        match credserve::bind(&self.inner, listen).await {
            Ok(listener) => {
                let inner = self.inner.clone();
                tokio::spawn(async move {
                    if let Err(e) = credserve::serve(inner, listener).await {
                        warn!(error = %e, "the credentials endpoint stopped");
                    }
                });
            }
            Err(e) => {
                warn!(%listen, error = %e, "the credentials endpoint is not available; tasks with roles cannot start")
            }
        }
        if let Some(listen) = self.inner.cfg.metrics_listen {
            match tokio::net::TcpListener::bind(listen).await {
                Ok(listener) => {
                    info!(%listen, "serving metrics at /metrics");
                    tokio::spawn(metrics::serve(self.inner.clone(), listener));
                }
                Err(e) => warn!(%listen, error = %e, "cannot serve metrics there"),
            }
        }
        tokio::select! {
            _ = connection::run(self.inner.clone()) => {}
            _ = shutdown => info!("agent shutting down; containers keep running"),
        }
        // Task supervisors still hold the agent: drop the session's sender so the stream to
        // the controller ends now (a controller shutting down gracefully waits for it).
        *self.inner.outbox.lock().unwrap() = None;
        let inner = self.inner.clone();
        let _ = tokio::task::spawn_blocking(move || inner.networks.drain_pool()).await;
    }

    /// Detaches the networks of tasks this agent no longer has (a crash between a task's end
    /// and its cleanup, a reboot): their address leases, NAT rules, veths and namespaces.
    fn detach_leftover_networks(&self) {
        // Interrupted starts being cleared release their own networks.
        let mut known: std::collections::HashSet<String> =
            self.inner.tasks.lock().unwrap().keys().cloned().collect();
        known.extend(self.inner.discarding.lock().unwrap().keys().cloned());
        let inner = self.inner.clone();
        let gone = inner.networks.reconcile(|id| known.contains(id));
        if !gone.is_empty() {
            info!(tasks = ?gone, "detached the networks of tasks from before a crash or a reboot");
        }
    }

    /// Removes the scratch dirs (upper, work, copied rootfs) that containers running before a
    /// reboot left in the data dir. Decided now, before any new task can start; removed in
    /// the background, as a copied rootfs can be large.
    fn sweep_orphan_scratch(&self) {
        let listed = {
            let tasks = self.inner.tasks.lock().unwrap();
            state_dir::orphan_scratch(
                &self.inner.cfg.data_dir.join("tasks"),
                |id| tasks.contains_key(id),
                |id, container| runtime::cgroup_has_processes(&runtime::cgroup_path(id, container)),
            )
        };
        let dirs = match listed {
            Ok(d) if d.is_empty() => return,
            Ok(d) => d,
            Err(e) => {
                warn!(error = %e, "looking for scratch dirs left by a reboot failed");
                return;
            }
        };
        info!(
            dirs = dirs.len(),
            "removing scratch dirs of containers from before a reboot"
        );
        tokio::task::spawn_blocking(move || {
            for d in dirs {
                if let Err(e) = std::fs::remove_dir_all(&d) {
                    warn!(dir = %d.display(), error = %e, "removing a leftover scratch dir failed");
                }
            }
        });
    }

    async fn readopt(&self) {
        let dir = self.inner.cfg.state_dir.join("tasks");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        // Interrupted starts to clear away (after the loop).
        let mut discards = Vec::new();
        for entry in entries.flatten() {
            let path = entry.path().join(TASK_FILE);
            let Ok(bytes) = std::fs::read(&path) else {
                continue;
            };
            let record: TaskRecord = match serde_json::from_slice(&bytes) {
                Ok(r) => r,
                Err(e) => {
                    warn!(path = %path.display(), error = %e, "unreadable task record skipped");
                    continue;
                }
            };
            let id = entry.file_name().to_string_lossy().into_owned();
            let mut record = record;
            if record.phase == Phase::Pending {
                match supervisor::launched(
                    &supervisor::runtime_dir(&self.inner.cfg, &id),
                    &record.spec,
                ) {
                    // Taken but no container launched: skiff's own crash interrupted it, so it
                    // is safe to start again. What had begun goes, and the task is not
                    // reported: the controller, which still sees it waiting on this node,
                    // sends its start again when the agent reconnects (or not, if it no longer
                    // wants it). A task whose starts keep ending with the agent is failed
                    // instead, by the supervisor.
                    supervisor::Launched::None => {
                        let disk = supervisor::disk_dir(&self.inner.cfg, &id);
                        let attempt = supervisor::interrupted_start(&disk);
                        if attempt <= supervisor::MAX_INTERRUPTED_STARTS {
                            info!(task_id = %id, attempt, "the agent restarted while this task was starting; it will start again");
                            discards.push((id, record.spec));
                            continue;
                        }
                    }
                    // Every container was launched: it runs (or ran), so it is adopted.
                    supervisor::Launched::All => {
                        record.phase = Phase::Running;
                        record.started_at_ms = chrono::Utc::now().timestamp_millis();
                        for c in &mut record.containers {
                            c.phase = Phase::Running;
                        }
                    }
                    // Some of it may have run: it fails (the supervisor stops what runs).
                    supervisor::Launched::Some => {}
                }
            }
            let phase = record.phase;
            let (stop, rx) = watch::channel(None);
            self.inner
                .tasks
                .lock()
                .unwrap()
                .insert(id.clone(), TaskEntry { record, stop });
            if phase != Phase::Stopped {
                info!(task_id = %id, phase = phase.as_str(), "re-adopting");
                tokio::spawn(supervisor::run(self.inner.clone(), id, true, rx));
            } else if let Some(record) = self.inner.record(&id) {
                // It may have stopped just before the old agent could clean up.
                let inner = self.inner.clone();
                tokio::spawn(async move { supervisor::cleanup(&inner, &id, &record.spec).await });
            }
        }
        // Cleared in the background, so that the agent connects at once: a busy node took
        // 15 s and more to clear 40 of them, long enough to be judged lost. A start of one of
        // these tasks waits for its clearing (`start_task`).
        for (id, spec) in discards {
            let (done, cleared) = watch::channel(false);
            self.inner
                .discarding
                .lock()
                .unwrap()
                .insert(id.clone(), cleared);
            let inner = self.inner.clone();
            tokio::spawn(async move {
                let began = std::time::Instant::now();
                supervisor::discard_unstarted(&inner, &id, &spec).await;
                let took = began.elapsed();
                if took > std::time::Duration::from_secs(2) {
                    warn!(task_id = %id, ?took, "clearing an interrupted start was slow");
                }
                inner.discarding.lock().unwrap().remove(&id);
                let _ = done.send(true);
            });
        }
    }
}

/// Capacity of this machine: CPUs and total memory.
pub fn machine_capacity() -> (f64, u64) {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    let mem_kib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .unwrap_or(1024 * 1024);
    (cpus, mem_kib / 1024)
}
