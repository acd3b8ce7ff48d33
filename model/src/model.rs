//! The domain records: what the controller's store persists and what the pure modules
//! (lifecycle, placement, patterns) reason about. Generated protobuf types never reach them.
//! This module imports no other module of the crate: the others build on it.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

// --- task statuses and stop codes (the lifecycle module moves tasks between them) ---

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum TaskStatus {
    Provisioning,
    Pending,
    Running,
    Stopping,
    Stopped,
}

impl TaskStatus {
    pub const ALL: [TaskStatus; 5] = [
        TaskStatus::Provisioning,
        TaskStatus::Pending,
        TaskStatus::Running,
        TaskStatus::Stopping,
        TaskStatus::Stopped,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Provisioning => "PROVISIONING",
            TaskStatus::Pending => "PENDING",
            TaskStatus::Running => "RUNNING",
            TaskStatus::Stopping => "STOPPING",
            TaskStatus::Stopped => "STOPPED",
        }
    }

    pub fn parse(s: &str) -> Option<TaskStatus> {
        TaskStatus::ALL
            .into_iter()
            .find(|st| st.as_str().eq_ignore_ascii_case(s))
    }

    /// Whether the task still holds (or may soon hold) resources on a node.
    pub fn is_active(self) -> bool {
        self != TaskStatus::Stopped
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum DesiredStatus {
    Running,
    Stopped,
}

impl DesiredStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DesiredStatus::Running => "RUNNING",
            DesiredStatus::Stopped => "STOPPED",
        }
    }
}

/// Why a task stopped (ECS names).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum StopCode {
    TaskFailedToStart,
    EssentialContainerExited,
    UserInitiated,
    ServiceSchedulerInitiated,
    TimedOut,
    NodeLost,
}

impl StopCode {
    pub const ALL: [StopCode; 6] = [
        StopCode::TaskFailedToStart,
        StopCode::EssentialContainerExited,
        StopCode::UserInitiated,
        StopCode::ServiceSchedulerInitiated,
        StopCode::TimedOut,
        StopCode::NodeLost,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            StopCode::TaskFailedToStart => "TaskFailedToStart",
            StopCode::EssentialContainerExited => "EssentialContainerExited",
            StopCode::UserInitiated => "UserInitiated",
            StopCode::ServiceSchedulerInitiated => "ServiceSchedulerInitiated",
            StopCode::TimedOut => "TimedOut",
            StopCode::NodeLost => "NodeLost",
        }
    }

    pub fn parse(s: &str) -> Option<StopCode> {
        StopCode::ALL.into_iter().find(|c| c.as_str() == s)
    }
}

/// Default seconds between SIGTERM and SIGKILL, as in ECS.
pub const DEFAULT_STOP_TIMEOUT_SECS: u32 = 30;

/// How a task is networked. Stored and sent as its name: `none`, `host`, `bridge` or
/// `cni/<network>`; a task definition or task that names none gets `bridge` (as Docker,
/// Podman and Nomad default to a bridge).
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum NetworkMode {
    /// Own network namespace with only loopback.
    #[default]
    None,
    /// The node's network namespace.
    Host,
    /// Own network namespace, shared by the task's containers, on skiff's bridge network:
    /// an address of its own, outbound NAT, published ports.
    Bridge,
    /// Like `Bridge`, on a CNI network the node's operator named.
    Cni(String),
}

impl NetworkMode {
    /// The mode by its name; None for a name that is not one.
    pub fn parse(s: &str) -> Option<NetworkMode> {
        match s {
            "none" => Some(NetworkMode::None),
            "host" => Some(NetworkMode::Host),
            "" | "bridge" => Some(NetworkMode::Bridge),
            other => {
                let name = other.strip_prefix("cni/")?;
                let ok = !name.is_empty()
                    && name.len() <= 63
                    && name
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b));
                ok.then(|| NetworkMode::Cni(name.to_string()))
            }
        }
    }

    /// Whether the task gets a namespace of its own on a network (and may publish ports).
    pub fn is_attached(&self) -> bool {
        matches!(self, NetworkMode::Bridge | NetworkMode::Cni(_))
    }
}

impl std::fmt::Display for NetworkMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            NetworkMode::None => f.write_str("none"),
            NetworkMode::Host => f.write_str("host"),
            NetworkMode::Bridge => f.write_str("bridge"),
            NetworkMode::Cni(n) => write!(f, "cni/{n}"),
        }
    }
}

impl Serialize for NetworkMode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for NetworkMode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        NetworkMode::parse(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("{s:?} is not a network mode")))
    }
}

/// A container port published on the node (ECS `portMappings`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PortMapping {
    pub container_port: u16,
    pub host_port: u16,
    pub protocol: PortProtocol,
}

#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, Default,
)]
#[serde(rename_all = "lowercase")]
pub enum PortProtocol {
    #[default]
    Tcp,
    Udp,
}

impl PortProtocol {
    pub fn as_str(self) -> &'static str {
        match self {
            PortProtocol::Tcp => "tcp",
            PortProtocol::Udp => "udp",
        }
    }
}

impl std::fmt::Display for PortMapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}/{}",
            self.host_port,
            self.container_port,
            self.protocol.as_str()
        )
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ContainerDef {
    pub name: String,
    pub image: String,
    pub entrypoint: Vec<String>,
    pub command: Vec<String>,
    pub environment: BTreeMap<String, String>,
    /// vCPUs, fractional; 0 = unlimited.
    pub cpu: f64,
    /// Hard limit in MiB; 0 = unlimited.
    pub memory_mib: u64,
    pub essential: bool,
    pub stop_timeout_secs: u32,
    pub working_dir: String,
    /// "always", "if-not-present" or "never".
    #[serde(default)]
    pub pull_policy: String,
    /// Name of stored registry credentials; empty = none.
    #[serde(default)]
    pub repository_credentials: String,
    #[serde(default)]
    pub privileged: bool,
    #[serde(default)]
    pub readonly_root_filesystem: bool,
    /// user[:group] or uid[:gid]; empty = the image's.
    #[serde(default)]
    pub user: String,
    /// Secrets by name; their values are resolved only when the task starts.
    #[serde(default)]
    pub secrets: Vec<SecretRef>,
    /// Host paths bind-mounted into the container (admin only).
    #[serde(default)]
    pub mounts: Vec<MountPoint>,
    /// skiff-init as PID 1 (signals forwarded, zombies reaped): ECS initProcessEnabled.
    #[serde(default)]
    pub init_process_enabled: bool,
    /// A command run in the container to tell whether it works.
    #[serde(default)]
    pub health_check: Option<HealthCheck>,
    /// Ports published on the node (bridge and CNI networks).
    #[serde(default)]
    pub port_mappings: Vec<PortMapping>,
}

/// A container health check as ECS and Docker define it: `command` every `interval_secs`
/// (killed after `timeout_secs`); `retries` failures in a row make the container UNHEALTHY;
/// failures within `start_period_secs` of its start do not count until it was once healthy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HealthCheck {
    /// `["CMD-SHELL", "script"]` or `["CMD", "exe", "arg", …]`.
    pub command: Vec<String>,
    pub interval_secs: u32,
    pub timeout_secs: u32,
    pub retries: u32,
    pub start_period_secs: u32,
}

/// A container's health as its checks found it (ECS's healthStatus).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum Health {
    /// Checked, and not yet known (starting, or within its start period).
    Unknown,
    Healthy,
    Unhealthy,
}

impl Health {
    pub fn as_str(self) -> &'static str {
        match self {
            Health::Unknown => "UNKNOWN",
            Health::Healthy => "HEALTHY",
            Health::Unhealthy => "UNHEALTHY",
        }
    }

    pub fn parse(s: &str) -> Option<Health> {
        [Health::Unknown, Health::Healthy, Health::Unhealthy]
            .into_iter()
            .find(|h| h.as_str() == s)
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MountPoint {
    /// Absolute path on the node.
    pub source: String,
    /// Absolute path in the container.
    pub target: String,
    pub read_only: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SecretRef {
    /// The env var (when `file` is empty).
    pub name: String,
    pub value_from: String,
    /// An absolute path in the container, or empty.
    pub file: String,
}

/// A stored secret: its value sealed with the controller's secrets key (AES-256-GCM).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct SealedSecret {
    pub name: String,
    pub version: u32,
    pub nonce: Vec<u8>,
    pub ciphertext: Vec<u8>,
    pub size: u64,
    pub created_ms: i64,
    pub updated_ms: i64,
}

/// What a task runs: the part of a task definition that a task copies (with overrides applied),
/// so a task never changes when its definition is later deregistered.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    pub containers: Vec<ContainerDef>,
    pub network_mode: NetworkMode,
    pub timeout_secs: u64,
    /// The task role's name; empty = none.
    #[serde(default)]
    pub task_role: String,
    /// The input of the event that started it (a rule's task target), given to every container
    /// as SKIFF_EVENT and /run/skiff/event.json.
    #[serde(default)]
    pub input: Option<String>,
    /// Where it may run (a service's placement, copied to each of its tasks).
    #[serde(default)]
    pub placement: ServicePlacement,
}

impl TaskSpec {
    /// Total vCPUs the task reserves on its node.
    pub fn cpu(&self) -> f64 {
        self.containers.iter().map(|c| c.cpu).sum()
    }

    /// Total MiB the task reserves on its node.
    pub fn memory_mib(&self) -> u64 {
        self.containers.iter().map(|c| c.memory_mib).sum()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum DefinitionStatus {
    Active,
    Inactive,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskDefinition {
    pub family: String,
    pub revision: u32,
    pub spec: TaskSpec,
    pub status: DefinitionStatus,
    pub registered_at_ms: i64,
}

impl TaskDefinition {
    /// The `family:revision` reference tasks carry.
    pub fn reference(&self) -> String {
        format!("{}:{}", self.family, self.revision)
    }
}

/// Per-container runtime state as last reported by the agent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ContainerState {
    pub name: String,
    pub image: String,
    pub essential: bool,
    pub last_status: String,
    pub exit_code: Option<i32>,
    pub reason: String,
    /// Set when the container has a health check.
    #[serde(default)]
    pub health: Option<Health>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub id: String,
    pub task_definition: Option<String>,
    pub group: String,
    pub started_by: String,
    pub spec: TaskSpec,
    pub node_id: Option<String>,
    pub status: TaskStatus,
    pub desired: DesiredStatus,
    pub stop_code: Option<StopCode>,
    pub stopped_reason: String,
    /// Why a PROVISIONING task is still waiting (e.g. no node fits).
    pub status_reason: String,
    /// Set with `status_reason` when no connected node could ever fit the task.
    #[serde(default)]
    pub unplaceable: bool,
    pub containers: Vec<ContainerState>,
    /// The task's addresses on its network (bridge and CNI), as its agent reported them.
    #[serde(default)]
    pub addresses: Vec<String>,
    pub created_at_ms: i64,
    pub pending_at_ms: i64,
    pub started_at_ms: i64,
    pub stopping_at_ms: i64,
    pub stopped_at_ms: i64,
    /// Bumped on every stored change, like ECS's task `version`.
    pub version: u64,
    /// Which start of its work this task is (1 for the first; 0 in records from before the
    /// field): a task lost with its node before it ran is started again as a new task
    /// (`lifecycle::start_again`), one more each time.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub attempt: u32,
    /// The task this one started again (empty for a first start).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub replaces: String,
    /// The task that started this one's work again after its node was lost before it ran.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub replaced_by: String,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl Task {
    /// The health of its essential containers that have checks: UNHEALTHY if one is, UNKNOWN
    /// if one is not known yet, HEALTHY if all are; None if none has a check.
    pub fn essential_health(&self) -> Option<Health> {
        let checked: Vec<Health> = self
            .containers
            .iter()
            .filter(|c| c.essential)
            .filter_map(|c| c.health)
            .collect();
        if checked.is_empty() {
            None
        } else if checked.contains(&Health::Unhealthy) {
            Some(Health::Unhealthy)
        } else if checked.contains(&Health::Unknown) {
            Some(Health::Unknown)
        } else {
            Some(Health::Healthy)
        }
    }

    /// A task just accepted: PROVISIONING, desired RUNNING, its containers not yet started.
    pub fn new(
        id: String,
        task_definition: Option<String>,
        group: String,
        started_by: String,
        spec: TaskSpec,
        now_ms: i64,
    ) -> Task {
        Task {
            id,
            task_definition,
            group,
            started_by,
            containers: spec
                .containers
                .iter()
                .map(|c| ContainerState {
                    name: c.name.clone(),
                    image: c.image.clone(),
                    essential: c.essential,
                    last_status: TaskStatus::Provisioning.as_str().to_string(),
                    exit_code: None,
                    reason: String::new(),
                    health: c.health_check.as_ref().map(|_| Health::Unknown),
                })
                .collect(),
            spec,
            node_id: None,
            status: TaskStatus::Provisioning,
            desired: DesiredStatus::Running,
            stop_code: None,
            stopped_reason: String::new(),
            status_reason: String::new(),
            unplaceable: false,
            addresses: Vec::new(),
            created_at_ms: now_ms,
            pending_at_ms: 0,
            started_at_ms: 0,
            stopping_at_ms: 0,
            stopped_at_ms: 0,
            version: 1,
            attempt: 1,
            replaces: String::new(),
            replaced_by: String::new(),
        }
    }

    /// The family the task came from, if any.
    pub fn family(&self) -> Option<&str> {
        self.task_definition
            .as_deref()
            .map(|r| r.rsplit_once(':').map_or(r, |(f, _)| f))
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum NodeState {
    Ready,
    /// No new tasks; its service tasks are moved to other nodes (`skiff nodes drain`).
    Draining,
    Down,
    /// No new tasks; what runs there stays (`skiff nodes cordon`).
    Cordoned,
}

impl NodeState {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Ready => "READY",
            NodeState::Draining => "DRAINING",
            NodeState::Down => "DOWN",
            NodeState::Cordoned => "CORDONED",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Node {
    pub id: String,
    pub labels: BTreeMap<String, String>,
    pub cpu: f64,
    pub memory_mib: u64,
    pub state: NodeState,
    pub version: String,
    pub registered_at_ms: i64,
    pub last_seen_ms: i64,
}

/// An event on the bus, in the EventBridge envelope.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Event {
    pub id: String,
    pub source: String,
    pub detail_type: String,
    pub time_ms: i64,
    pub resources: Vec<String>,
    pub detail: serde_json::Value,
    /// Set on a copy of an earlier event put back on the bus by a replay (`skiff events
    /// replay`); targets see its name as the envelope's `replay-name`, as EventBridge's do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay: Option<Replay>,
}

/// What a replayed event carries: the replay, the event it copies, and the one rule it is
/// for (None: every rule).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Replay {
    pub name: String,
    pub original: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
}

/// Credentials for one registry, stored by the controller and sent only to the agent that
/// pulls for a task naming them. Debug never shows the password.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct RegistryCreds {
    pub name: String,
    /// HOST[:PORT], or docker.io.
    pub server: String,
    pub username: String,
    pub password: String,
    pub created_ms: i64,
}

impl std::fmt::Debug for RegistryCreds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryCreds")
            .field("name", &self.name)
            .field("server", &self.server)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// An API token as stored: never the secret, only its SHA-256.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ApiToken {
    pub id: String,
    pub name: String,
    pub role: String,
    pub secret_sha256: String,
    pub created_ms: i64,
    /// 0 = never.
    pub expires_ms: i64,
    /// 0 = not revoked.
    pub revoked_ms: i64,
}

/// A node certificate the controller issued, found by the SHA-256 of its DER.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeCert {
    pub fingerprint: String,
    pub node_id: String,
    pub issued_ms: i64,
    /// 0 = not revoked.
    pub revoked_ms: i64,
}

/// A task role: what tasks running under it may reach (see `roles.rs`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TaskRole {
    pub name: String,
    pub description: String,
    pub api: Vec<ApiGrant>,
    pub storage: Option<StorageAccess>,
    pub version: u32,
    pub created_ms: i64,
    pub updated_ms: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ApiGrant {
    pub actions: Vec<String>,
    pub resources: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StorageAccess {
    pub provider: CredentialProvider,
    pub grants: Vec<StorageGrant>,
    pub duration_secs: u32,
    pub region: String,
    pub endpoint: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CredentialProvider {
    Sts {
        endpoint: String,
        role_arn: String,
        access_key_id_secret: String,
        secret_access_key_secret: String,
    },
    StaticKeys {
        access_key_id_secret: String,
        secret_access_key_secret: String,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Access {
    Read,
    Write,
    ReadWrite,
}

impl Access {
    pub fn as_str(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::Write => "write",
            Access::ReadWrite => "read-write",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StorageGrant {
    pub bucket: String,
    pub prefix: String,
    pub access: Access,
}

/// A rule: an EventBridge event pattern and where matching events go (see `bus.rs`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Rule {
    pub name: String,
    pub description: String,
    /// The pattern as given (checked by `pattern::Pattern::compile` before it is stored).
    pub pattern: serde_json::Value,
    pub enabled: bool,
    pub targets: Vec<Target>,
    pub version: u32,
    pub created_ms: i64,
    pub updated_ms: i64,
}

/// What a rule has done, for "why didn't my rule fire?": kept beside the rule, not in it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RuleStats {
    /// Events matched: counted in the same transaction that moves the bus cursor past them,
    /// so exactly once per event.
    pub matched: u64,
    /// Deliveries done (a task created, a topic published).
    pub invoked: u64,
    /// Delivery attempts that failed (then retried or dead-lettered).
    pub failed: u64,
    /// Deliveries that ran out of retries: counted with the dead letter, exactly once.
    pub dead_lettered: u64,
    pub last_matched_ms: i64,
}

/// Which of a rule's counters an outcome adds to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuleCounter {
    Invoked,
    Failed,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Target {
    pub id: String,
    pub kind: TargetKind,
    pub input: TargetInput,
    pub retry: RetryPolicy,
    /// A queue that also gets each delivery dead-lettered (EventBridge's DeadLetterConfig);
    /// empty: the dead-letter list only.
    #[serde(default)]
    pub dead_letter_queue: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetKind {
    Task {
        task_definition: String,
        overrides: Overrides,
        group: String,
    },
    Queue(String),
    Topic(String),
}

/// Run-time overrides of a task definition, as a rule's task target keeps them.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Overrides {
    pub containers: Vec<ContainerOverride>,
    pub timeout_secs: Option<u64>,
    pub task_role: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ContainerOverride {
    pub name: String,
    pub command: Vec<String>,
    pub environment: BTreeMap<String, String>,
    pub cpu: Option<f64>,
    pub memory_mib: Option<u64>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetInput {
    /// The whole event, as EventBridge JSON.
    Event,
    /// The part of the event at a JSON path (`$.detail`).
    Path(String),
    Transformer {
        paths: BTreeMap<String, String>,
        template: String,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub max_event_age_secs: u32,
}

impl Default for RetryPolicy {
    /// EventBridge's defaults: 185 attempts, 24 hours.
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 185,
            max_event_age_secs: 86_400,
        }
    }
}

/// The key of one delivery of one event to one rule target: what makes it happen once.
pub fn delivery_key(rule: &str, target: &str, event_id: &str) -> String {
    format!("{rule}\0{target}\0{event_id}")
}

/// The key of one fire of a schedule (its fire time in ms): what makes it happen once.
pub fn schedule_fire_key(schedule: &str, scheduled_ms: i64) -> String {
    format!("schedule\0{schedule}\0{scheduled_ms}")
}

/// A delivery that failed and waits for its next attempt.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PendingRetry {
    pub rule: String,
    pub target: String,
    pub event_id: String,
    pub attempts: u32,
    pub first_attempt_ms: i64,
    pub next_attempt_ms: i64,
    pub last_error: String,
}

/// A delivery that ran out of attempts or time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeadLetter {
    pub id: String,
    pub rule: String,
    pub target: String,
    pub event_id: String,
    pub attempts: u32,
    pub last_error: String,
    pub first_attempt_ms: i64,
    pub dead_ms: i64,
}

/// The account and region fields of skiff's EventBridge envelopes.
pub const BUS_ACCOUNT: &str = "000000000000";
pub const BUS_REGION: &str = "local";

impl Event {
    /// The event as EventBridge shapes it: what patterns match and targets receive.
    pub fn envelope(&self) -> serde_json::Value {
        let mut envelope = serde_json::json!({
            "version": "0",
            "id": self.id,
            "detail-type": self.detail_type,
            "source": self.source,
            "account": BUS_ACCOUNT,
            "time": chrono::DateTime::from_timestamp_millis(self.time_ms)
                .unwrap_or_default()
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            "region": BUS_REGION,
            "resources": self.resources,
            "detail": self.detail,
        });
        if let Some(r) = &self.replay {
            envelope["replay-name"] = serde_json::json!(r.name);
        }
        envelope
    }
}

/// Where object-store events come from (see `objects.rs`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Source {
    pub name: String,
    pub kind: SourceKind,
    pub bucket: String,
    pub prefix: String,
    /// 0 = no watcher.
    pub poll_interval_secs: u32,
    pub created_ms: i64,
    pub updated_ms: i64,
}

/// How a source's watcher is doing: its last listing error, so `sources ls` shows why no
/// events come (not only the controller's log).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SourceHealth {
    /// Empty once a listing succeeds again.
    pub last_error: String,
    pub last_error_ms: i64,
    pub last_listed_ms: i64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SourceKind {
    S3 {
        endpoint: String,
        region: String,
        access_key_id_secret: String,
        secret_access_key_secret: String,
    },
    Local {
        path: String,
    },
}

/// A schedule (see `schedules.rs`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    pub name: String,
    pub description: String,
    pub expression: String,
    pub timezone: String,
    pub enabled: bool,
    pub start_ms: Option<i64>,
    pub end_ms: Option<i64>,
    pub flexible_window_secs: u32,
    pub overlap: Overlap,
    pub catch_up: CatchUp,
    pub catch_up_limit: u32,
    pub task_definition: String,
    pub overrides: Overrides,
    pub group: String,
    /// Retries of a fire whose task cannot start, then a dead letter.
    #[serde(default)]
    pub retry: RetryPolicy,
    pub created_ms: i64,
    pub updated_ms: i64,
    /// Set: fires put this event on the bus instead of running `task_definition`.
    #[serde(default)]
    pub event: Option<ScheduleEvent>,
    /// A queue that also gets each fire that ran out of attempts (empty: none).
    #[serde(default)]
    pub dead_letter_queue: String,
}

/// The event a schedule puts on the bus at each fire.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScheduleEvent {
    pub detail_type: String,
    /// A JSON object.
    pub detail: serde_json::Value,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Overlap {
    Allow,
    Forbid,
    Replace,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum CatchUp {
    Skip,
    RunOnce,
    RunAll,
}

/// Where a schedule stands: durable, so a restart neither double-fires nor forgets.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ScheduleState {
    /// The next fire time not yet handled (None = computed from now on first sight).
    pub next_fire_ms: Option<i64>,
    /// The last runs, newest last (at most 20).
    pub runs: Vec<ScheduleRun>,
    /// Only in a data dir from before fire retries had their own table: moved there at
    /// open, never written again.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub retries: Vec<ScheduleRetry>,
}

/// A schedule fire whose task could not start, waiting for its next attempt.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScheduleRetry {
    /// The schedule's name (empty only in a record from before the retry table).
    #[serde(default)]
    pub schedule: String,
    pub scheduled_ms: i64,
    pub attempts: u32,
    pub first_attempt_ms: i64,
    pub next_attempt_ms: i64,
    pub last_error: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ScheduleRun {
    pub scheduled_ms: i64,
    pub fired_ms: i64,
    pub task_id: String,
    pub outcome: String,
}

/// A topic: a named set of subscriptions that rule targets publish to.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Topic {
    pub name: String,
    pub description: String,
    pub delivery: DeliveryPolicy,
    /// A queue that also gets each notification that ran out of attempts (empty: none).
    #[serde(default)]
    pub dead_letter_queue: String,
    pub created_ms: i64,
    pub updated_ms: i64,
}

/// Retries of a failing notification: exponential backoff with jitter between the delays,
/// `max_attempts` in all, then a dead letter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveryPolicy {
    pub max_attempts: u32,
    pub min_delay_ms: u32,
    pub max_delay_ms: u32,
    /// How long a webhook may take to answer.
    #[serde(default = "default_webhook_timeout_ms")]
    pub timeout_ms: u32,
}

fn default_webhook_timeout_ms() -> u32 {
    10_000
}

impl Default for DeliveryPolicy {
    fn default() -> Self {
        DeliveryPolicy {
            max_attempts: 20,
            min_delay_ms: 1000,
            max_delay_ms: 300_000,
            timeout_ms: default_webhook_timeout_ms(),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Protocol {
    Webhook,
    Email,
    /// A skiff queue (the endpoint is its name): SNS → SQS fan-out.
    Queue,
}

/// One endpoint of a topic. (No Debug: it holds the sealed signing key.)
#[derive(Clone, PartialEq, Serialize, Deserialize)]
pub struct Subscription {
    pub id: String,
    pub topic: String,
    pub protocol: Protocol,
    /// An http(s) URL or an e-mail address.
    pub endpoint: String,
    /// An event pattern the message must match.
    pub filter: Option<serde_json::Value>,
    pub raw: bool,
    pub confirmed: bool,
    /// SHA-256 (hex) of the confirmation token, while unconfirmed.
    pub confirm_token_sha256: String,
    /// Webhooks: the signing key, sealed with the secrets key (name `subscription/<id>`).
    pub signing_secret: Option<SealedSecret>,
    pub skipped_unconfirmed: u64,
    pub created_ms: i64,
}

/// What an outbox entry sends.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DeliveryKind {
    /// A message published to the topic.
    Message,
    /// The mail asking an e-mail subscriber to confirm (carries the token).
    Confirmation { token: String },
}

/// One message on its way to one subscription: kept in the outbox until it is delivered or
/// dead-lettered.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Delivery {
    pub id: String,
    pub topic: String,
    pub subscription: String,
    pub kind: DeliveryKind,
    pub rule: String,
    pub event_id: String,
    /// The message: the event envelope, unless the rule's target transformed it.
    pub message: String,
    pub attempts: u32,
    pub last_error: String,
    pub created_ms: i64,
    pub next_attempt_ms: i64,
    /// Set once dead-lettered.
    pub dead_ms: Option<i64>,
}

/// A queue, with SQS's semantics: a message waits until it is received, is then invisible to
/// other receivers for the visibility timeout, and comes back unless it is deleted by the
/// receipt handle of its latest receive.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Queue {
    pub name: String,
    /// How long a received message stays invisible (default 30 s, at most 12 h).
    pub visibility_timeout_secs: u32,
    /// How long a new message waits before it can be received (0–15 min).
    pub delay_secs: u32,
    /// How long a message is kept (1 min–14 days, default 4 days).
    pub retention_secs: u32,
    /// The largest message body accepted (1 KiB–256 KiB, default 256 KiB).
    pub max_message_bytes: u32,
    /// How long a receive waits for a message when it does not say (0–20 s).
    pub receive_wait_secs: u32,
    /// Where a message goes after too many receives.
    pub redrive: Option<RedrivePolicy>,
    pub created_ms: i64,
    pub updated_ms: i64,
    /// First in, first out per message group (SQS FIFO; the name ends in `.fifo`): a group's
    /// messages are received in send order, none while an earlier one is in flight, and a
    /// send whose deduplication id was seen in the last 5 minutes is not queued again.
    #[serde(default)]
    pub fifo: bool,
    /// FIFO: a message without a deduplication id is deduplicated by its body's SHA-256.
    #[serde(default)]
    pub content_based_deduplication: bool,
}

/// A FIFO queue's memory of a deduplication id: a send with the same id within
/// `queue::DEDUP_WINDOW_MS` of `sent_ms` is answered with `message_id` and not queued again.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DedupEntry {
    pub queue: String,
    pub dedup_id: String,
    pub message_id: String,
    pub sent_ms: i64,
}

/// After `max_receive_count` receives, the next receive moves a message to `dead_letter_queue`
/// instead of handing it out.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RedrivePolicy {
    pub dead_letter_queue: String,
    pub max_receive_count: u32,
}

/// One message in a queue.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct QueueMessage {
    pub queue: String,
    /// A ULID: unique, and ordered by when the message was first sent.
    pub id: String,
    pub body: String,
    pub attributes: BTreeMap<String, String>,
    pub sent_ms: i64,
    /// When it can be received (next): after its delay, or after its visibility timeout.
    pub visible_ms: i64,
    pub receive_count: u32,
    /// When it was first received (0: never).
    pub first_received_ms: i64,
    /// The nonce of its latest receive: only that receive's handle deletes it or changes its
    /// visibility ("" before the first).
    pub receipt: String,
    /// FIFO: its message group ("" in a standard queue).
    #[serde(default)]
    pub group: String,
    /// FIFO: its deduplication id.
    #[serde(default)]
    pub dedup_id: String,
}

// --- services ---

/// A service: a task definition kept running at a desired count (ECS's service). Its tasks
/// are in the task group `service:<name>`; each carries its deployment's id in `started_by`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Service {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// As the user gave it: `family` (its latest ACTIVE revision when deployed) or `family:rev`.
    pub task_definition: String,
    pub desired_count: u32,
    pub deployment: DeploymentConfig,
    /// Seconds between SIGTERM and SIGKILL when the service stops a task (0 = each
    /// container's own stop timeout).
    #[serde(default)]
    pub stop_timeout_secs: u32,
    #[serde(default)]
    pub placement: ServicePlacement,
    /// Set: the desired count follows a queue's backlog between min and max.
    #[serde(default)]
    pub autoscaling: Option<Autoscaling>,
    /// Long-running tasks at a count, or one task per message of a queue.
    #[serde(default)]
    pub mode: ServiceMode,
    pub created_ms: i64,
    pub updated_ms: i64,
}

/// How a service uses its tasks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServiceMode {
    /// Tasks kept running at the desired count (ECS's service).
    #[default]
    Service,
    /// Each message of the autoscaling queue starts one task, leased to it; the task's exit
    /// settles the message (KEDA's ScaledJob). `autoscaling.max` is the concurrency.
    TaskPerMessage,
}

impl ServiceMode {
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceMode::Service => "service",
            ServiceMode::TaskPerMessage => "task-per-message",
        }
    }

    pub fn parse(s: &str) -> Option<ServiceMode> {
        [ServiceMode::Service, ServiceMode::TaskPerMessage]
            .into_iter()
            .find(|m| m.as_str() == s)
    }
}

/// A message of a built-in queue held for the task it started (task-per-message): received
/// (in flight) before the task was created, kept invisible while the task runs, deleted when
/// it exits 0 and made visible again when it fails.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobLease {
    pub task: String,
    pub service: String,
    pub queue: String,
    pub message_id: String,
    pub receipt: String,
    /// When the message becomes visible again unless the lease is extended.
    pub visible_until_ms: i64,
}

impl Service {
    /// The task group of the service's tasks.
    pub fn group(&self) -> String {
        service_group(&self.name)
    }
}

/// The task group of service `name`'s tasks.
pub fn service_group(name: &str) -> String {
    format!("service:{name}")
}

/// How a new revision replaces the old one (ECS's deployment configuration).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeploymentConfig {
    /// Running tasks kept during a deployment, in percent of the desired count (default 100).
    pub minimum_healthy_percent: u32,
    /// Tasks allowed at once during a deployment, in percent of the desired count (default 200).
    pub maximum_percent: u32,
    /// Stop a deployment whose new tasks keep failing (default on)…
    pub circuit_breaker: bool,
    /// …and go back to the last deployment that completed (default on).
    pub rollback: bool,
}

impl Default for DeploymentConfig {
    fn default() -> Self {
        DeploymentConfig {
            minimum_healthy_percent: 100,
            maximum_percent: 200,
            circuit_breaker: true,
            rollback: true,
        }
    }
}

/// Where a service's tasks may go, and which of the nodes that may take one gets it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ServicePlacement {
    /// Every one must hold for a node.
    pub constraints: Vec<PlacementConstraint>,
    /// Spread the service's tasks over the nodes that qualify (fewest of them first).
    pub spread: bool,
    /// Among the nodes that fit, the fullest (bin-pack, the default) or the emptiest.
    #[serde(default)]
    pub strategy: PlacementStrategy,
    /// A node label (or `node.id`) whose values the service's tasks are spread over:
    /// zones, racks. The value with the fewest of its tasks goes first.
    #[serde(default)]
    pub spread_over: String,
    /// At most one of the service's tasks on a node.
    #[serde(default)]
    pub distinct_nodes: bool,
    /// Soft constraints: among the nodes that may take the task, those meeting more
    /// weight of these go first.
    #[serde(default)]
    pub preferences: Vec<PlacementPreference>,
}

/// Which node of those that fit gets a task.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PlacementStrategy {
    /// The node with the least CPU (then memory) left: keeps whole nodes free for big
    /// tasks.
    #[default]
    Binpack,
    /// The node with the most CPU (then memory) left: evens the load.
    Spread,
}

impl PlacementStrategy {
    pub fn as_str(self) -> &'static str {
        match self {
            PlacementStrategy::Binpack => "binpack",
            PlacementStrategy::Spread => "spread",
        }
    }

    pub fn parse(s: &str) -> Option<PlacementStrategy> {
        match s {
            "" | "binpack" => Some(PlacementStrategy::Binpack),
            "spread" => Some(PlacementStrategy::Spread),
            _ => None,
        }
    }
}

/// `label == value`, `!=`, `in (a, b)` or `not in (a, b)` on a node's attributes: its
/// labels (`disk` or `node.labels.disk`) and `node.id`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlacementConstraint {
    pub label: String,
    pub value: String,
    /// `!=` instead of `==` (with `values`: `not in`).
    #[serde(default)]
    pub not: bool,
    /// `in`: any of these (then `value` is unused).
    #[serde(default)]
    pub values: Vec<String>,
}

impl PlacementConstraint {
    /// Whether a node whose attribute `label` has `found` (None: it has no such
    /// attribute) meets this constraint.
    pub fn holds(&self, found: Option<&str>) -> bool {
        let hit = match found {
            None => false,
            Some(v) if self.values.is_empty() => v == self.value,
            Some(v) => self.values.iter().any(|x| x == v),
        };
        hit != self.not
    }
}

impl std::fmt::Display for PlacementConstraint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match (self.values.is_empty(), self.not) {
            (true, false) => write!(f, "{} == {}", self.label, self.value),
            (true, true) => write!(f, "{} != {}", self.label, self.value),
            (false, not) => write!(
                f,
                "{} {}in ({})",
                self.label,
                if not { "not " } else { "" },
                self.values.join(", ")
            ),
        }
    }
}

/// A soft constraint with its weight (1–100).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PlacementPreference {
    pub constraint: PlacementConstraint,
    pub weight: u32,
}

/// Target tracking on a queue's backlog per task.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Autoscaling {
    /// Where the backlog comes from: `queue:<name>` (a built-in queue, read on every change)
    /// or `external:<name>` (reported over gRPC with ReportBacklog, or polled: `redis:…`).
    pub source: String,
    pub min: u32,
    pub max: u32,
    /// Messages per task the service aims for.
    pub target_per_task: u32,
    pub scale_out_cooldown_secs: u32,
    pub scale_in_cooldown_secs: u32,
    /// An external report older than this is not trusted: the count holds (default 60 s).
    pub stale_after_secs: u32,
}

/// A backlog as last observed: a queue's messages waiting and being worked on.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Backlog {
    pub source: String,
    pub visible: u64,
    pub in_flight: u64,
    pub observed_ms: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum DeploymentStatus {
    /// The one new tasks are started for.
    Primary,
    /// An older one whose tasks are being replaced.
    Active,
    /// Done: no tasks left.
    Inactive,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum RolloutState {
    InProgress,
    Completed,
    Failed,
}

/// One revision of a service being rolled out (or done).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Deployment {
    pub id: String,
    /// `family:rev`, resolved when the deployment began.
    pub task_definition: String,
    pub status: DeploymentStatus,
    pub rollout: RolloutState,
    /// Why it is in its rollout state (failed: which tasks, rolled back to what).
    pub reason: String,
    /// Tasks of this deployment that failed (essential container exited, failed to start,
    /// unhealthy), for the circuit breaker.
    pub failed_tasks: u32,
    pub created_ms: i64,
    pub updated_ms: i64,
}

/// A service's running state, kept apart from its definition (which the user replaces).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceState {
    pub name: String,
    /// Newest first; the first is PRIMARY.
    pub deployments: Vec<Deployment>,
    /// The tasks the service has and that were last seen active: (task id, deployment id).
    pub tasks: Vec<(String, String)>,
    /// Failed tasks in a row, for the crash-loop backoff (reset when a task stays up).
    pub consecutive_failures: u32,
    /// No new task starts before this (crash-loop backoff).
    pub backoff_until_ms: i64,
    /// The last failure, for people.
    pub last_failure: String,
    /// When it happened.
    #[serde(default)]
    pub last_failure_ms: i64,
    /// Set by `rm`: desired 0, and the service is deleted once its tasks are gone.
    pub draining: bool,
    /// The desired count autoscaling chose (None: the service's own).
    pub scaled_count: Option<u32>,
    pub last_scale_out_ms: i64,
    pub last_scale_in_ms: i64,
    /// The latest decisions, newest first (at most 20).
    pub decisions: Vec<ServiceDecision>,
}

/// A decision the service made, with its inputs, as `describe` shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ServiceDecision {
    pub at_ms: i64,
    /// scale-out, scale-in, start, replace, stop, backoff, deploy, rollback, …
    pub action: String,
    pub message: String,
    /// The numbers behind it.
    pub detail: serde_json::Value,
}

// --- apply sets ---

/// What `skiff apply` applied under a name: `--prune` deletes only these, so nothing made by
/// hand or by another set is ever pruned.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplySet {
    pub name: String,
    pub members: Vec<ApplySetMember>,
    pub updated_ms: i64,
}

/// One resource of an apply set: its kind (`rule`, `queue`, …) and name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ApplySetMember {
    pub kind: String,
    pub name: String,
}
