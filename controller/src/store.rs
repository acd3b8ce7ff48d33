//! Durable state: the controller's tables over a key-value engine (`engine.rs`, the seam;
//! sled behind it in `sled_engine.rs`, the only file that knows sled).
//!
//! Values are stored as one version byte followed by JSON, so a newer binary can read (and
//! migrate) an older data dir. A write is acknowledged only after `commit()` has flushed it;
//! concurrent writers share one flush (group commit), which is what keeps durable writes fast.
//! A task change and the event it emits are written in one transaction: never half-written.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::Arc;

use serde::{de::DeserializeOwned, Serialize};
use tokio::sync::{mpsc, oneshot, Mutex};

use crate::model::{
    ApiToken, ApplySet, Backlog, DeadLetter, DedupEntry, Delivery, Event, JobLease, Node, NodeCert,
    PendingRetry, Queue, QueueMessage, RegistryCreds, Rule, RuleCounter, RuleStats, Schedule,
    ScheduleRetry, ScheduleState, SealedSecret, Service, ServiceState, Source, SourceHealth,
    Subscription, Task, TaskDefinition, TaskRole, Topic,
};
use skiff_model::history::{EventConsumer, TaskRetention};
use skiff_model::lifecycle::TaskStatus;

mod due;
mod engine;
#[cfg(test)]
mod engine_tests;
mod history;
mod memory_engine;
mod metrics;
mod notify;
mod reserved;
mod sled_engine;
mod table;
mod tree;

#[cfg(test)]
use due::due_key;
pub use due::{Due, DueTable};
pub use engine::{Change, Engine, Entries, Entry, TreeId, TxBody, TxError, TxTrees};
pub use memory_engine::MemoryEngine;
pub use metrics::StoreMetrics;
use prometheus_client::metrics::histogram::Histogram;
pub use reserved::NodeReserved;
use reserved::Reserved;
pub use sled_engine::SledEngine;
pub use table::{Record, Table};
use tree::{Tree, Tx};

macro_rules! record {
    ($ty:ty, $tree:literal, |$r:ident| $key:expr) => {
        impl Record for $ty {
            const TREE: &'static str = $tree;
            fn key(&$r) -> Vec<u8> {
                $key
            }
        }
    };
}

// The resources kept as plain tables: type, tree, key.
record!(Node, "nodes", |self| self.id.as_bytes().to_vec());
record!(RegistryCreds, "registry_creds", |self| self
    .name
    .as_bytes()
    .to_vec());
record!(ApiToken, "api_tokens", |self| self.id.as_bytes().to_vec());
record!(SealedSecret, "secrets", |self| self
    .name
    .as_bytes()
    .to_vec());
record!(NodeCert, "node_certs", |self| self
    .fingerprint
    .as_bytes()
    .to_vec());
record!(TaskRole, "task_roles", |self| self.name.as_bytes().to_vec());
record!(Rule, "rules", |self| self.name.as_bytes().to_vec());
record!(Source, "sources", |self| self.name.as_bytes().to_vec());
record!(Schedule, "schedules", |self| self.name.as_bytes().to_vec());
record!(Topic, "topics", |self| self.name.as_bytes().to_vec());
record!(Subscription, "subscriptions", |self| self
    .id
    .as_bytes()
    .to_vec());
record!(TaskDefinition, "taskdefs", |self| Store::taskdef_key(
    &self.family,
    self.revision
));

// Work that waits for a moment: type, tree, key; due when its next attempt is.
record!(PendingRetry, "retries", |self| crate::model::delivery_key(
    &self.rule,
    &self.target,
    &self.event_id
)
.into_bytes());
record!(ScheduleRetry, "schedule_retries", |self| {
    crate::model::schedule_fire_key(&self.schedule, self.scheduled_ms).into_bytes()
});
record!(Delivery, "outbox", |self| self.id.as_bytes().to_vec());
record!(Queue, "queues", |self| self.name.as_bytes().to_vec());
record!(Service, "services", |self| self.name.as_bytes().to_vec());
record!(ServiceState, "service_states", |self| self
    .name
    .as_bytes()
    .to_vec());
record!(EventConsumer, "event_consumers", |self| self
    .name
    .as_bytes()
    .to_vec());
record!(ApplySet, "apply_sets", |self| self.name.as_bytes().to_vec());
record!(TaskRetention, "task_retention", |self| self
    .scope
    .key()
    .into_bytes());
record!(Backlog, "backlogs", |self| self.source.as_bytes().to_vec());
record!(JobLease, "job_leases", |self| self.task.as_bytes().to_vec());
record!(DedupEntry, "fifo_dedup", |self| Store::message_key(
    &self.queue,
    &self.dedup_id
));
record!(QueueMessage, "queue_messages", |self| Store::message_key(
    &self.queue,
    &self.id
));
impl Due for QueueMessage {
    fn due_ms(&self) -> i64 {
        self.visible_ms
    }
    /// A queue's messages are read by queue: its part of the index.
    fn due_prefix(&self) -> Vec<u8> {
        Store::queue_prefix(&self.queue)
    }
    /// Not visible and received once: in flight (else: still in its delay).
    fn due_tag(&self) -> u8 {
        u8::from(self.receive_count > 0)
    }
}
impl Due for PendingRetry {
    fn due_ms(&self) -> i64 {
        self.next_attempt_ms
    }
}
impl Due for ScheduleRetry {
    fn due_ms(&self) -> i64 {
        self.next_attempt_ms
    }
}
impl Due for Delivery {
    fn due_ms(&self) -> i64 {
        self.next_attempt_ms
    }
}

/// The on-disk format version of every record this binary writes.
const RECORD_VERSION: u8 = 1;

#[derive(Clone, Debug, thiserror::Error)]
pub enum StoreError {
    /// The engine failed (I/O, corruption it detected). Its own error type stays inside the
    /// store, so the engine can change without touching callers.
    #[error("storage engine: {0}")]
    Engine(String),
    #[error("record in tree {tree} is corrupt: {detail}")]
    Corrupt { tree: &'static str, detail: String },
    #[error("record in tree {tree} has format version {found}, newer than this binary ({RECORD_VERSION})")]
    TooNew { tree: &'static str, found: u8 },
    #[error("the group-commit flusher has stopped")]
    FlusherGone,
    #[error("{0}")]
    Rejected(String),
    #[error("{0}")]
    Io(String),
}

/// What an active task holds on its node, kept in the active-task index.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Reservation {
    pub node: Option<String>,
    pub cpu: f64,
    pub memory_mib: u64,
    /// The task's group (a service spreads its tasks by it).
    #[serde(default)]
    pub group: String,
    /// The host ports it publishes (no other task on its node may).
    #[serde(default)]
    pub ports: Vec<(u16, crate::model::PortProtocol)>,
    /// Its status, so listings by status count without decoding tasks (rewritten at open
    /// for records from before it).
    #[serde(default)]
    pub status: Option<TaskStatus>,
}

impl Reservation {
    /// The task's status (a record from before the field is rewritten at open; until then
    /// an active task counts as RUNNING).
    fn status(&self) -> TaskStatus {
        self.status.unwrap_or(TaskStatus::Running)
    }

    fn of(t: &Task) -> Reservation {
        Reservation {
            node: t.node_id.clone(),
            cpu: t.spec.cpu(),
            memory_mib: t.spec.memory_mib(),
            group: t.group.clone(),
            ports: skiff_model::placement::host_ports(&t.spec),
            status: Some(t.status),
        }
    }
}

fn encode<V: Serialize>(v: &V) -> Vec<u8> {
    let mut out = vec![RECORD_VERSION];
    serde_json::to_writer(&mut out, v).expect("domain records always serialize");
    out
}

fn decode<V: DeserializeOwned>(tree: &'static str, bytes: &[u8]) -> Result<V, StoreError> {
    let (&version, body) = bytes.split_first().ok_or(StoreError::Corrupt {
        tree,
        detail: "empty record".into(),
    })?;
    if version > RECORD_VERSION {
        return Err(StoreError::TooNew {
            tree,
            found: version,
        });
    }
    // Version 1 is the only format so far; older versions would be migrated here.
    serde_json::from_slice(body).map_err(|e| StoreError::Corrupt {
        tree,
        detail: e.to_string(),
    })
}

/// Batches flush requests so that many concurrent writers pay for one fsync.
#[derive(Clone)]
pub(crate) struct GroupCommit {
    tx: mpsc::UnboundedSender<oneshot::Sender<Result<(), String>>>,
}

impl GroupCommit {
    fn start(engine: Arc<dyn Engine>, flush_seconds: Histogram) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<oneshot::Sender<Result<(), String>>>();
        std::thread::Builder::new()
            .name("skiff-group-commit".into())
            .spawn(move || {
                while let Some(first) = rx.blocking_recv() {
                    let mut waiters = vec![first];
                    while let Ok(more) = rx.try_recv() {
                        waiters.push(more);
                    }
                    let began = std::time::Instant::now();
                    let result = engine.flush().map_err(|e| e.to_string());
                    flush_seconds.observe(began.elapsed().as_secs_f64());
                    for w in waiters {
                        let _ = w.send(result.clone());
                    }
                }
            })
            .expect("spawning the group-commit thread");
        GroupCommit { tx }
    }

    async fn commit(&self) -> Result<(), StoreError> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(tx).map_err(|_| StoreError::FlusherGone)?;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(StoreError::Engine(e)),
            Err(_) => Err(StoreError::FlusherGone),
        }
    }
}

/// An event ready for the store: its id and its record's bytes. Task events are written
/// this way straight from the task (`task_event.rs`); any `Event` converts.
pub struct EncodedEvent {
    pub id: String,
    pub json: Vec<u8>,
}

impl EncodedEvent {
    /// The record of an event that serializes as `value` (what an `Event` serializes to).
    pub fn record(value: &impl Serialize) -> Vec<u8> {
        encode(value)
    }
}

impl From<Event> for EncodedEvent {
    fn from(e: Event) -> Self {
        let json = encode(&e);
        EncodedEvent { id: e.id, json }
    }
}

/// What a task update closure decided.
pub enum Decision {
    /// Store this task, with this event if any.
    Write {
        task: Task,
        event: Option<EncodedEvent>,
    },
    /// Nothing changed; here is the task as it is.
    Keep(Task),
    /// Store this task with its event, and create `next` (a new task, with its first event)
    /// in the same transaction: the task stopped and the one that starts its work again
    /// (`lifecycle::start_again`) are durable together or not at all.
    Replace {
        task: Task,
        event: EncodedEvent,
        next: Box<(Task, EncodedEvent)>,
    },
}

impl Decision {
    pub fn task(&self) -> &Task {
        match self {
            Decision::Write { task, .. }
            | Decision::Keep(task)
            | Decision::Replace { task, .. } => task,
        }
    }

    /// Whether it stores anything.
    pub fn writes(&self) -> bool {
        !matches!(self, Decision::Keep(_))
    }
}

/// What a task update came to: the task as it is now (shared with the store's copy of the
/// active tasks, not copied again) and whether it was written.
pub struct Changed {
    pub task: Arc<Task>,
    pub wrote: bool,
}

impl Changed {
    pub fn task(&self) -> &Task {
        &self.task
    }

    /// Whether it stored anything.
    pub fn writes(&self) -> bool {
        self.wrote
    }
}

#[derive(Clone)]
pub struct Store {
    engine: Arc<dyn Engine>,
    pub taskdefs: Table<TaskDefinition>,
    tasks: Tree,
    /// Tasks that are not STOPPED, each with what it reserves (`Reservation`): the placer
    /// sums node loads from these small values instead of decoding every task.
    active: Tree,
    /// Ids of PROVISIONING tasks: what the placer has to place.
    waiting: Tree,
    /// Every task by its group: group NUL id → (). Written with the task.
    by_group: Tree,
    /// Every placed task by its node: node NUL id → (). Written with the task.
    by_node: Tree,
    /// Every task by its task definition's family: family NUL id → (). Written when the
    /// task is created (its family never changes).
    by_family: Tree,
    /// Which derived indexes this data dir has: index name → version.
    index_versions: Tree,
    events: Tree,
    pub nodes: Table<Node>,
    pub registry_creds: Table<RegistryCreds>,
    pub tokens: Table<ApiToken>,
    pub secrets: Table<SealedSecret>,
    pub node_certs: Table<NodeCert>,
    pub roles: Table<TaskRole>,
    pub rules: Table<Rule>,
    /// Rule name → RuleStats (matches, invocations, failures, dead letters).
    rule_stats: Tree,
    /// The rule dispatcher's cursor: the last event whose deliveries are all recorded.
    bus: Tree,
    /// (rule, target, event id) → the task it created: task creation at most once.
    deliveries: Tree,
    /// (rule, target, event id) → a failed delivery waiting for its next attempt.
    pub retries: DueTable<PendingRetry>,
    dead_letters: Tree,
    pub sources: Table<Source>,
    /// Events that must reach the bus once (object versions, schedule fires) → event id.
    object_seen: Tree,
    /// What each watcher last listed: (source, bucket, key) → "etag size".
    watch_state: Tree,
    /// Source name → SourceHealth (the watcher's last error and listing).
    source_health: Tree,
    pub schedules: Table<Schedule>,
    schedule_state: Tree,
    /// (schedule, fire time) → a fire whose task could not start, waiting to try again.
    pub schedule_retries: DueTable<ScheduleRetry>,
    pub topics: Table<Topic>,
    pub subscriptions: Table<Subscription>,
    /// Notifications on their way: delivery id → Delivery, due at its next attempt.
    pub outbox: DueTable<Delivery>,
    /// Notifications that ran out of attempts: delivery id → Delivery.
    notify_dead: Tree,
    pub queues: Table<Queue>,
    /// Every queue's messages: queue NUL id → message, due (receivable) at `visible_ms`,
    /// indexed by queue.
    pub messages: DueTable<QueueMessage>,
    /// Services as their users defined them.
    pub services: Table<Service>,
    /// Each service's deployments, tasks, counters and decisions (written by its loop).
    pub service_states: Table<ServiceState>,
    /// Backlogs reported from outside (ReportBacklog, pollers), by source.
    pub backlogs: Table<Backlog>,
    /// Task-per-message services' messages, each held for its task: task id → lease.
    pub job_leases: Table<JobLease>,
    /// FIFO queues' deduplication ids of the last 5 minutes: queue NUL id → DedupEntry.
    pub fifo_dedup: Table<DedupEntry>,
    /// Retention policies of task history, by scope key (`family/web`, `service/api`).
    pub task_retention: Table<TaskRetention>,
    /// Named readers of the event log and their cursors: the log's retention keeps what they
    /// have not read.
    pub event_consumers: Table<EventConsumer>,
    /// What each `skiff apply` set applied, by set name (what `--prune` may delete).
    pub apply_sets: Table<ApplySet>,
    commit: GroupCommit,
    /// What the writes count, for `/metrics`.
    pub metrics: StoreMetrics,
    /// Serialises writers that append events, so event keys (ULIDs) are in commit order and a
    /// cursor never skips an event that commits late.
    writer: Arc<Mutex<ulid::Generator>>,
    /// Task creations waiting for the writer lock: whoever takes it writes them all in one
    /// transaction (a burst of fires or deliveries pays one, not one each).
    creations: Arc<std::sync::Mutex<Vec<Creation>>>,
    /// How many tasks the tasks tree holds: read at open (`TASK_COUNT`), then kept by the
    /// creations and the history sweep's deletions, so a listing's total costs no scan.
    task_count: Arc<std::sync::atomic::AtomicUsize>,
    /// Decoded active tasks by id, kept by every task write under the writer lock (see
    /// `active_tasks`).
    active_cache: Arc<std::sync::Mutex<Decoded>>,
    /// Every active task's reservation and each node's sums, kept by every task write
    /// under the writer lock (see `node_reservations`).
    reserved: Arc<std::sync::Mutex<Reserved>>,
}

/// Active tasks kept decoded, by id. `generation` counts the task writes: a reader that
/// decoded a task from the tree keeps it only if no write came between its read and its
/// keeping, so an entry is never older than the task's last write — which lets writers take
/// a task from here instead of decoding it.
#[derive(Default)]
struct Decoded {
    generation: u64,
    tasks: HashMap<Vec<u8>, Arc<Task>>,
}

impl Decoded {
    /// Keeps `task`, decoded by a reader that began when the generation was `seen`.
    fn keep(&mut self, seen: u64, key: Vec<u8>, task: &Arc<Task>) {
        if self.generation == seen && task.status.is_active() {
            self.tasks.entry(key).or_insert_with(|| task.clone());
        }
    }
}

/// What a task was before a write, so the write touches only the index entries it changes:
/// the group entry is written with a new task (a task's group never changes), the node entry
/// when it is first placed (its node never changes after), the waiting entry when it enters
/// or leaves PROVISIONING. Every index write costs a sled insert in the transaction.
#[derive(Clone, Copy)]
struct Before {
    /// No such task yet (or not known): write every entry.
    new: bool,
    /// Its status (None for a new task), for the metrics.
    status: Option<TaskStatus>,
    placed: bool,
    waiting: bool,
}

impl Before {
    const NEW: Before = Before {
        new: true,
        status: None,
        placed: false,
        waiting: true,
    };

    fn of(t: &Task) -> Before {
        Before {
            new: false,
            status: Some(t.status),
            placed: t.node_id.is_some(),
            waiting: t.status == TaskStatus::Provisioning,
        }
    }
}

/// One `create_task_once` call waiting to be written.
struct Creation {
    key: String,
    task: Task,
    event: Box<dyn FnOnce(String) -> EncodedEvent + Send>,
    done: oneshot::Sender<Result<Result<String, String>, StoreError>>,
}

impl Store {
    /// Opens (creating) the data dir at `path` on sled.
    pub fn open(path: &std::path::Path) -> Result<Store, StoreError> {
        Store::with_engine(Arc::new(SledEngine::open(path)?))
    }

    /// Opens the store on any engine (see `engine.rs`).
    pub fn with_engine(engine: Arc<dyn Engine>) -> Result<Store, StoreError> {
        let metrics = StoreMetrics::default();
        let commit = GroupCommit::start(engine.clone(), metrics.flush_seconds.clone());
        let store = Store {
            metrics,
            taskdefs: Table::open(&engine, &commit)?,
            tasks: Tree::open(&engine, "tasks")?,
            active: Tree::open(&engine, "tasks_active")?,
            waiting: Tree::open(&engine, "tasks_waiting")?,
            by_group: Tree::open(&engine, "tasks_by_group")?,
            by_family: Tree::open(&engine, "tasks_by_family")?,
            by_node: Tree::open(&engine, "tasks_by_node")?,
            index_versions: Tree::open(&engine, "index_versions")?,
            events: Tree::open(&engine, "events")?,
            nodes: Table::open(&engine, &commit)?,
            registry_creds: Table::open(&engine, &commit)?,
            tokens: Table::open(&engine, &commit)?,
            secrets: Table::open(&engine, &commit)?,
            node_certs: Table::open(&engine, &commit)?,
            roles: Table::open(&engine, &commit)?,
            rules: Table::open(&engine, &commit)?,
            rule_stats: Tree::open(&engine, "rule_stats")?,
            bus: Tree::open(&engine, "bus")?,
            deliveries: Tree::open(&engine, "deliveries")?,
            retries: DueTable::open(&engine, &commit)?,
            dead_letters: Tree::open(&engine, "dead_letters")?,
            sources: Table::open(&engine, &commit)?,
            object_seen: Tree::open(&engine, "object_seen")?,
            watch_state: Tree::open(&engine, "watch_state")?,
            source_health: Tree::open(&engine, "source_health")?,
            schedules: Table::open(&engine, &commit)?,
            schedule_state: Tree::open(&engine, "schedule_state")?,
            schedule_retries: DueTable::open(&engine, &commit)?,
            topics: Table::open(&engine, &commit)?,
            subscriptions: Table::open(&engine, &commit)?,
            outbox: DueTable::open(&engine, &commit)?,
            notify_dead: Tree::open(&engine, "notify_dead")?,
            queues: Table::open(&engine, &commit)?,
            messages: DueTable::open(&engine, &commit)?,
            services: Table::open(&engine, &commit)?,
            service_states: Table::open(&engine, &commit)?,
            backlogs: Table::open(&engine, &commit)?,
            job_leases: Table::open(&engine, &commit)?,
            fifo_dedup: Table::open(&engine, &commit)?,
            task_retention: Table::open(&engine, &commit)?,
            event_consumers: Table::open(&engine, &commit)?,
            apply_sets: Table::open(&engine, &commit)?,
            commit,
            writer: Arc::new(Mutex::new(ulid::Generator::new())),
            creations: Default::default(),
            task_count: Default::default(),
            active_cache: Default::default(),
            reserved: Default::default(),
            engine,
        };
        store.rebuild_indexes()?;
        let count = store.stored_task_count()?;
        store
            .task_count
            .store(count, std::sync::atomic::Ordering::Release);
        Ok(store)
    }

    /// The count of tasks kept with every creation and deletion; counted (a scan of every
    /// task) and kept once for a data dir from before it.
    fn stored_task_count(&self) -> Result<usize, StoreError> {
        if let Some(v) = self.index_versions.get(TASK_COUNT)? {
            if let Ok(bytes) = <[u8; 8]>::try_from(v.as_slice()) {
                return Ok(u64::from_le_bytes(bytes) as usize);
            }
        }
        let count = self.tasks.len();
        self.index_versions
            .insert(TASK_COUNT, (count as u64).to_le_bytes())?;
        Ok(count)
    }

    /// Derives every secondary index from its records, at open: a data dir from before an
    /// index existed gets it, and an index can never disagree with its records after a
    /// crash. One pass over the active tasks.
    fn rebuild_indexes(&self) -> Result<(), StoreError> {
        // Group, node and family never change once set, and are written in the task's own
        // transactions: built once for a data dir from before them (one pass over the tasks
        // for whichever is missing), not at every open.
        let group_node = self.index_versions.get("tasks_by_group_node")?.is_none();
        let family = self.index_versions.get("tasks_by_family")?.is_none();
        if group_node || family {
            for kv in self.tasks.iter() {
                let (_, v) = kv?;
                let task: Task = decode("tasks", &v)?;
                if group_node {
                    self.by_group.insert(group_key(&task), [])?;
                    if let Some(k) = node_key(&task) {
                        self.by_node.insert(k, [])?;
                    }
                }
                if let Some(k) = family_key(&task).filter(|_| family) {
                    self.by_family.insert(k, [])?;
                }
            }
            self.index_versions.insert("tasks_by_group_node", [1])?;
            self.index_versions.insert("tasks_by_family", [1])?;
        }
        self.waiting.clear()?;
        let mut reserved = Reserved::default();
        for key in self.active.iter().map(key_of) {
            let key = key?;
            match self.tasks.get(&key)? {
                Some(bytes) => {
                    let task: Task = decode("tasks", &bytes)?;
                    if task.status.is_active() {
                        reserved.set(&task.id, Some(Reservation::of(&task)));
                        self.active.insert(&key, encode(&Reservation::of(&task)))?;
                        if task.status == TaskStatus::Provisioning {
                            self.waiting.insert(&key, [])?;
                        }
                    } else {
                        self.active.remove(&key)?;
                    }
                }
                None => {
                    self.active.remove(&key)?;
                }
            }
        }
        *self.reserved.lock().expect("reserved lock") = reserved;
        // (The due tables derive their indexes as they open.)
        self.move_schedule_retries_to_their_table()?;
        self.engine.flush()?;
        Ok(())
    }

    /// Makes everything written so far durable.
    pub async fn commit(&self) -> Result<(), StoreError> {
        self.commit.commit().await
    }

    // --- queues ---

    /// Where a queue's messages are: queue NUL.
    pub fn queue_prefix(queue: &str) -> Vec<u8> {
        let mut k = queue.as_bytes().to_vec();
        k.push(0);
        k
    }

    /// A message's key: queue NUL id.
    pub fn message_key(queue: &str, id: &str) -> Vec<u8> {
        let mut k = Self::queue_prefix(queue);
        k.extend_from_slice(id.as_bytes());
        k
    }

    /// Moves a message (to a dead-letter queue, or back from one): out of `from` and in as
    /// `to`, in one transaction. Durable with the caller's next commit.
    pub fn move_message(&self, from: &QueueMessage, to: &QueueMessage) -> Result<(), StoreError> {
        let from_key = from.key();
        self.transact(&self.messages.trees(), |tx| {
            self.messages.remove_in(tx, &from_key)?;
            self.messages.put_in(tx, to)
        })
    }

    /// Sends `m` as delivery `key` (a rule target's) unless that delivery already sent it:
    /// the message, the delivery record and the end of any pending retry are one transaction,
    /// so a replayed event never queues twice. Returns whether it sent. Durable on return.
    pub async fn send_once(&self, key: &str, m: &QueueMessage) -> Result<bool, StoreError> {
        let rule_retry = self.retries.get(key)?.is_some();
        let mut trees = vec![&self.deliveries];
        trees.extend(self.messages.trees());
        if rule_retry {
            trees.extend(self.retries.trees());
        }
        let sent = self.transact(&trees, |tx| {
            if rule_retry {
                self.retries.remove_in(tx, key.as_bytes())?;
            }
            if tx.get(&self.deliveries, key)?.is_some() {
                return Ok(false);
            }
            self.messages.put_in(tx, m)?;
            tx.insert(&self.deliveries, key, format!("queued:{}", m.id))?;
            Ok(true)
        })?;
        self.commit().await?;
        Ok(sent)
    }

    /// Removes every message of a queue; returns how many. Durable on return.
    pub async fn purge_queue(&self, queue: &str) -> Result<u64, StoreError> {
        let mut n = 0;
        for m in self.messages.list_in(&Self::queue_prefix(queue))? {
            if self.messages.delete_uncommitted(m.key())?.is_some() {
                n += 1;
            }
        }
        self.commit().await?;
        Ok(n)
    }

    /// Removes a queue after its messages. Durable on return.
    pub async fn delete_queue(&self, name: &str) -> Result<Option<Queue>, StoreError> {
        self.purge_queue(name).await?;
        self.queues.delete(name).await
    }

    // --- services ---

    /// Creates or replaces a service and changes its state with it (a new deployment), in one
    /// transaction: a service is never stored without the deployment it asked for. Returns
    /// the state written. Durable on return.
    pub async fn put_service(
        &self,
        service: &Service,
        mut change: impl FnMut(Option<ServiceState>) -> ServiceState,
    ) -> Result<ServiceState, StoreError> {
        let (services, states) = (self.services.tree(), self.service_states.tree());
        let key = service.key();
        let state = self.transact(&[services, states], |tx| {
            let old = match tx.get(states, &key)? {
                Some(v) => Some(decode::<ServiceState>("service_states", &v)?),
                None => None,
            };
            let state = change(old);
            tx.insert(services, &key, encode(service))?;
            tx.insert(states, &key, encode(&state))?;
            Ok(state)
        })?;
        self.commit().await?;
        Ok(state)
    }

    /// Removes a drained service and its state together. Durable on return.
    pub async fn delete_service(&self, name: &str) -> Result<(), StoreError> {
        let (services, states) = (self.services.tree(), self.service_states.tree());
        self.transact(&[services, states], |tx| {
            tx.remove(services, name)?;
            tx.remove(states, name)
        })?;
        self.commit().await
    }

    // --- task definitions: key = family \0 revision (big-endian) ---

    fn taskdef_key(family: &str, revision: u32) -> Vec<u8> {
        let mut k = family.as_bytes().to_vec();
        k.push(0);
        k.extend_from_slice(&revision.to_be_bytes());
        k
    }

    fn family_prefix(family: &str) -> Vec<u8> {
        let mut k = family.as_bytes().to_vec();
        k.push(0);
        k
    }

    /// Registers the next revision of a family. Durable on return.
    pub async fn register_taskdef(
        &self,
        family: &str,
        make: impl FnOnce(u32) -> TaskDefinition,
    ) -> Result<TaskDefinition, StoreError> {
        let _guard = self.writer.lock().await;
        let last = self
            .taskdefs
            .last_with_prefix(Self::family_prefix(family))?
            .map_or(0, |d| d.revision);
        let def = make(last + 1);
        // Under the writer lock: two registrations of a family never take one revision.
        let put = self.taskdefs.put(&def).await;
        drop(_guard);
        put.map(|()| def)
    }

    pub fn taskdef(
        &self,
        family: &str,
        revision: u32,
    ) -> Result<Option<TaskDefinition>, StoreError> {
        self.taskdefs.get(Self::taskdef_key(family, revision))
    }

    /// All revisions of a family (or of every family), oldest first.
    pub fn taskdefs_of(&self, family: Option<&str>) -> Result<Vec<TaskDefinition>, StoreError> {
        match family {
            Some(f) => self.taskdefs.list_prefix(Self::family_prefix(f)),
            None => self.taskdefs.list(),
        }
    }

    // --- tasks ---

    pub fn task(&self, id: &str) -> Result<Option<Task>, StoreError> {
        self.tasks.get(id)?.map(|v| decode("tasks", &v)).transpose()
    }

    /// Ids of tasks that start with `prefix` (at most `limit`), for ids given by prefix.
    pub fn task_ids_with_prefix(
        &self,
        prefix: &str,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        self.tasks
            .scan_prefix(prefix)
            .map(key_of)
            .take(limit)
            .map(|k| Ok(String::from_utf8_lossy(&k?).into_owned()))
            .collect()
    }

    pub fn tasks(&self) -> Result<Vec<Task>, StoreError> {
        self.tasks
            .iter()
            .map(|kv| decode("tasks", &kv?.1))
            .collect()
    }

    /// The tasks `filter` wants, newest first, at most `limit` (0 = all), and how many match
    /// in all (for a time range or a page with no other filter: counted up to `limit +
    /// COUNT_CAP`, so a total that reaches it means at least that many). Read through the narrowest index the filter allows (group, node, family, the
    /// active tasks' statuses kept in memory), and counted from the indexes: only the tasks
    /// returned are decoded, so a long history costs key reads, not decodes.
    /// How many tasks the store keeps, stopped ones included (kept, not counted).
    pub fn task_total(&self) -> usize {
        self.task_count.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn list_tasks(
        &self,
        filter: &TaskFilter,
        limit: usize,
    ) -> Result<(Vec<Task>, usize), StoreError> {
        let take = if limit == 0 { usize::MAX } else { limit };
        let range = filter.id_range();
        let in_range = |id: &[u8]| TaskFilter::in_range(&range, id);
        let suffix_ids = |tree: &Tree, prefix: &str| -> Result<Vec<Vec<u8>>, StoreError> {
            let mut p = prefix.as_bytes().to_vec();
            p.push(0);
            let from = range.0.as_ref().map(|f| [&p[..], f.as_bytes()].concat());
            let to = range.1.as_ref().map(|t| [&p[..], t.as_bytes()].concat());
            let ids = match (from, to) {
                (None, None) => tree.scan_prefix(&p),
                (from, to) => tree.range(
                    Bound::Included(from.unwrap_or_else(|| p.clone())),
                    to.map_or_else(|| tree::prefix_end(&p), Bound::Excluded),
                ),
            };
            ids.map(|kv| Ok(kv?.0[p.len()..].to_vec())).collect()
        };
        // Each look at the kept statuses takes the lock for itself: writers update them.
        let reserved = || self.reserved.lock().expect("reserved lock");
        let wants_status = |status: Option<TaskStatus>| match filter.status {
            None => true,
            Some(TaskStatus::Stopped) => status.is_none(),
            Some(s) => status == Some(s),
        };
        // Candidate ids in key (= creation) order, every one matching: the narrowest index
        // first, the others' sets intersected.
        let indexed = [
            (&filter.group, &self.by_group),
            (&filter.family, &self.by_family),
            (&filter.node, &self.by_node),
        ];
        let ids: Vec<Vec<u8>> = if indexed.iter().any(|(f, _)| f.is_some()) {
            let mut sets = Vec::new();
            for (value, tree) in indexed {
                if let Some(v) = value {
                    sets.push(suffix_ids(tree, v)?);
                }
            }
            sets.sort_by_key(|s| s.len());
            let mut sets = sets.into_iter();
            let mut ids = sets.next().unwrap_or_default();
            for other in sets {
                let other: std::collections::HashSet<Vec<u8>> = other.into_iter().collect();
                ids.retain(|id| other.contains(id));
            }
            if filter.status.is_some() {
                let mut kept = Vec::with_capacity(ids.len());
                for id in ids {
                    if wants_status(reserved().status(&id)) {
                        kept.push(id);
                    }
                }
                ids = kept;
            }
            ids
        } else if let Some(status) = filter.status.filter(|s| s.is_active()) {
            let mut ids = reserved().ids_in(status);
            ids.retain(|id| in_range(id));
            ids
        } else {
            // Everything, or everything STOPPED, in the id range: the newest `limit` from the
            // end of the range (active ones skipped by key). With no range the total is the
            // count kept; with one, it is counted from the keys (no decoding).
            let stopped_only = filter.status == Some(TaskStatus::Stopped);
            let from = range.0.clone().map(String::into_bytes);
            let to = range.1.clone().map(String::into_bytes);
            let keys = || {
                self.tasks.range(
                    from.clone().map_or(Bound::Unbounded, Bound::Included),
                    to.clone().map_or(Bound::Unbounded, Bound::Excluded),
                )
            };
            // With no range the total is the count kept. A range (a time range, a page) is
            // walked once from its newest end, its keys past the page counted only up to
            // `COUNT_CAP` (a page deep in a long history would count hundreds of thousands).
            let unranged = from.is_none() && to.is_none();
            let cap = take.saturating_add(COUNT_CAP);
            let (mut out, mut total) = (Vec::new(), 0);
            for kv in keys().rev() {
                if out.len() >= take && (unranged || total >= cap) {
                    break;
                }
                let (id, v) = kv?;
                if stopped_only && reserved().status(&id).is_some() {
                    continue;
                }
                if out.len() < take {
                    out.push(decode("tasks", &v)?);
                }
                total += 1;
            }
            if unranged {
                total = self.task_count.load(std::sync::atomic::Ordering::Acquire);
                if stopped_only {
                    total = total.saturating_sub(reserved().len());
                }
            }
            return Ok((out, total));
        };
        // Ids are ULIDs: reverse key order is newest first.
        let mut out = Vec::new();
        for id in ids.iter().rev().take(take) {
            if let Some(v) = self.tasks.get(id)? {
                out.push(decode("tasks", &v)?);
            }
        }
        Ok((out, ids.len()))
    }

    /// PROVISIONING tasks, in creation order (read through their index), from the decoded
    /// active tasks the store keeps (a placer pass with 10,000 waiting decoded each one).
    pub fn waiting_tasks(&self) -> Result<Vec<Arc<Task>>, StoreError> {
        self.waiting_tasks_after(None, usize::MAX)
    }

    /// Up to `limit` of the waiting tasks after task `after` (None: from the oldest), oldest
    /// first: the placer reads a burst of 100,000 a window at a time instead of whole on
    /// every pass.
    pub fn waiting_tasks_after(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Arc<Task>>, StoreError> {
        let from = match after {
            Some(id) => Bound::Excluded(id.as_bytes().to_vec()),
            None => Bound::Unbounded,
        };
        let keys: Vec<Vec<u8>> = self
            .waiting
            .range(from, Bound::Unbounded)
            .take(limit)
            .map(key_of)
            .collect::<Result<_, _>>()?;
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            let (seen, hit) = {
                let cache = self.active_cache.lock().expect("active cache lock");
                (cache.generation, cache.tasks.get(&key).cloned())
            };
            if let Some(t) = hit {
                out.push(t);
                continue;
            }
            let Some(bytes) = self.tasks.get(&key)? else {
                continue;
            };
            let task = Arc::new(decode::<Task>("tasks", &bytes)?);
            self.active_cache
                .lock()
                .expect("active cache lock")
                .keep(seen, key, &task);
            out.push(task);
        }
        Ok(out)
    }

    /// What every task that is not STOPPED reserves, without decoding the tasks.
    pub fn reservations(&self) -> Result<Vec<Reservation>, StoreError> {
        self.active
            .iter()
            .map(|kv| kv.map(|(_, v)| v))
            .map(|v| decode("tasks_active", &v?))
            .collect()
    }

    /// What the active tasks placed on each node reserve there (nodes without any are
    /// absent), from the sums the store keeps: no read of the stored reservations.
    pub fn node_reservations(&self) -> HashMap<String, NodeReserved> {
        self.reserved.lock().expect("reserved lock").by_node()
    }

    /// Tasks that are not STOPPED, in creation order.
    ///
    /// Served from the decoded tasks the store's writes keep (`active_cache`): the service
    /// loop reads every active task on every pass, and decoding 10,000 took 80 ms. A task
    /// not cached yet (the first read after open, a new task) is decoded once and kept.
    pub fn active_tasks(&self) -> Result<Vec<Arc<Task>>, StoreError> {
        let keys = self.reserved.lock().expect("reserved lock").ids();
        let (seen, cached): (u64, Vec<Option<Arc<Task>>>) = {
            let cache = self.active_cache.lock().expect("active cache lock");
            let hits = keys
                .iter()
                .map(|k| cache.tasks.get(k.as_slice()).cloned())
                .collect();
            (cache.generation, hits)
        };
        let mut out = Vec::with_capacity(keys.len());
        for (key, hit) in keys.iter().zip(cached) {
            if let Some(t) = hit {
                out.push(t);
                continue;
            }
            let Some(bytes) = self.tasks.get(key)? else {
                continue;
            };
            let task = Arc::new(decode::<Task>("tasks", &bytes)?);
            self.active_cache
                .lock()
                .expect("active cache lock")
                .keep(seen, key.clone(), &task);
            out.push(task);
        }
        Ok(out)
    }

    /// Creates a task and its first event atomically. Durable on return.
    pub async fn create_task<E: Into<EncodedEvent>>(
        &self,
        task: &Task,
        event: impl FnOnce(String) -> E,
    ) -> Result<(), StoreError> {
        let mut gen = self.writer.lock().await;
        let event = event(next_event_id(&mut gen)).into();
        let new = self.tasks.get(&task.id)?.is_none();
        self.write_tasks_and_events(
            &[(Arc::new(task.clone()), Some(&event), Before::NEW)],
            usize::from(new),
        )?;
        if new {
            self.task_count
                .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        }
        drop(gen);
        self.commit().await?;
        Ok(())
    }

    /// Task `id` as it is now, for a writer holding the writer lock: from the decoded active
    /// tasks when kept there (never older than the last write, see `Decoded`), else decoded.
    fn task_to_change(&self, id: &str) -> Result<Option<Task>, StoreError> {
        Ok(self.task_shared(id)?.map(Arc::unwrap_or_clone))
    }

    /// Task `id`, shared: an active task is the decoded copy the store's writes keep (no
    /// decode, no copy); any other is read from the store.
    pub fn task_shared(&self, id: &str) -> Result<Option<Arc<Task>>, StoreError> {
        let kept = self
            .active_cache
            .lock()
            .expect("active cache lock")
            .tasks
            .get(id.as_bytes())
            .cloned();
        match kept {
            Some(t) => Ok(Some(t)),
            None => Ok(self.task(id)?.map(Arc::new)),
        }
    }

    /// Reads a task, lets `change` decide what it becomes, and writes the task with its event
    /// atomically. Ok(Ok(None)) means there is no such task. Durable on return.
    pub async fn update_task<E>(
        &self,
        id: &str,
        change: impl FnOnce(Task, &mut dyn FnMut() -> String) -> Result<Decision, E>,
    ) -> Result<Result<Option<Changed>, E>, StoreError> {
        let out = self.update_task_uncommitted(id, change).await?;
        if matches!(&out, Ok(Some(d)) if d.writes()) {
            self.commit().await?;
        }
        Ok(out)
    }

    /// `update_task` without waiting for the flush: for a batch of changes that share one
    /// `commit()`. Nobody may learn of a change (event published, caller answered) before it.
    pub async fn update_task_uncommitted<E>(
        &self,
        id: &str,
        change: impl FnOnce(Task, &mut dyn FnMut() -> String) -> Result<Decision, E>,
    ) -> Result<Result<Option<Changed>, E>, StoreError> {
        let mut change = Some(change);
        let mut out = self
            .update_tasks_uncommitted(&[id.to_string()], |_, task, next_id| {
                (change.take().expect("called once per id"))(task, next_id)
            })
            .await?;
        Ok(out.pop().expect("one result per id"))
    }

    /// Changes many tasks in one transaction without waiting for the flush: `change(i, …)`
    /// decides for `ids[i]` (None: no such task). A task named twice sees its first change.
    /// Nobody may learn of a change before the caller's `commit()`.
    pub async fn update_tasks_uncommitted<E>(
        &self,
        ids: &[String],
        mut change: impl FnMut(usize, Task, &mut dyn FnMut() -> String) -> Result<Decision, E>,
    ) -> Result<Vec<Result<Option<Changed>, E>>, StoreError> {
        let mut gen = self.writer.lock().await;
        let mut changed: HashMap<&str, Arc<Task>> = HashMap::new();
        let mut writes: Vec<(Arc<Task>, Option<EncodedEvent>, Before)> = Vec::new();
        // Tasks created by `Decision::Replace`, written after the changes.
        let mut created: Vec<(Arc<Task>, Option<EncodedEvent>, Before)> = Vec::new();
        let mut out = Vec::with_capacity(ids.len());
        for (i, id) in ids.iter().enumerate() {
            let task = match changed.get(id.as_str()) {
                Some(t) => Some((**t).clone()),
                None => self.task_to_change(id)?,
            };
            let Some(task) = task else {
                out.push(Ok(None));
                continue;
            };
            let mut next_id = || next_event_id(&mut gen);
            let before = Before::of(&task);
            // The decision is taken apart, not copied: its task is shared with the cache and
            // the caller, its events go to the store.
            let (task, event, wrote) = match change(i, task, &mut next_id) {
                Err(e) => {
                    out.push(Err(e));
                    continue;
                }
                Ok(Decision::Keep(task)) => {
                    out.push(Ok(Some(Changed {
                        task: Arc::new(task),
                        wrote: false,
                    })));
                    continue;
                }
                Ok(Decision::Write { task, event }) => (task, event, true),
                Ok(Decision::Replace { task, event, next }) => {
                    let (new, first) = *next;
                    created.push((Arc::new(new), Some(first), Before::NEW));
                    (task, Some(event), true)
                }
            };
            let written = Arc::new(task);
            changed.insert(id, written.clone());
            writes.push((written.clone(), event, before));
            out.push(Ok(Some(Changed {
                task: written,
                wrote,
            })));
        }
        let new_tasks = created.len();
        writes.append(&mut created);
        if !writes.is_empty() {
            let rows: Vec<(Arc<Task>, Option<&EncodedEvent>, Before)> = writes
                .iter()
                .map(|(t, e, b)| (t.clone(), e.as_ref(), *b))
                .collect();
            self.write_tasks_and_events(&rows, new_tasks)?;
            self.task_count
                .fetch_add(new_tasks, std::sync::atomic::Ordering::AcqRel);
        }
        Ok(out)
    }

    /// Writes tasks (with the index entries their change needs — see `Before`; `created`: the
    /// rows written as new (`Before::NEW`) are new tasks, with their family's entry too) and
    /// their events in one transaction; a task written twice ends as its last write.
    fn write_tasks_and_events(
        &self,
        writes: &[(Arc<Task>, Option<&EncodedEvent>, Before)],
        new_tasks: usize,
    ) -> Result<(), StoreError> {
        let created = new_tasks > 0;
        struct Row<'a> {
            id: String,
            task: Vec<u8>,
            event: Option<(Vec<u8>, &'a [u8])>,
            active: Option<Vec<u8>>,
            /// Some(in the waiting index or not); None: it was not and is not.
            waiting: Option<bool>,
            group: Option<Vec<u8>>,
            node: Option<Vec<u8>>,
            family: Option<Vec<u8>>,
        }
        let rows: Vec<Row> = writes
            .iter()
            .map(|(task, event, before)| Row {
                id: task.id.clone(),
                task: encode(&**task),
                event: event.map(|e| (event_key(&e.id), e.json.as_slice())),
                active: task
                    .status
                    .is_active()
                    .then(|| encode(&Reservation::of(task))),
                waiting: (task.status == TaskStatus::Provisioning || before.waiting)
                    .then_some(task.status == TaskStatus::Provisioning),
                group: before.new.then(|| group_key(task)),
                node: node_key(task).filter(|_| before.new || !before.placed),
                family: family_key(task).filter(|_| created && before.new),
            })
            .collect();
        let mut trees = vec![
            &self.tasks,
            &self.active,
            &self.waiting,
            &self.events,
            &self.by_group,
            &self.by_node,
        ];
        if rows.iter().any(|r| r.family.is_some()) {
            trees.push(&self.by_family);
        }
        if created {
            trees.push(&self.index_versions);
        }
        // The writer lock is held: the count cannot move between this read and the write.
        let count = self.task_count.load(std::sync::atomic::Ordering::Acquire) + new_tasks;
        self.transact(&trees, |tx| {
            if created {
                tx.insert(
                    &self.index_versions,
                    TASK_COUNT,
                    (count as u64).to_le_bytes(),
                )?;
            }
            for r in &rows {
                tx.insert(&self.tasks, &r.id, &r.task)?;
                if let Some(k) = &r.family {
                    tx.insert(&self.by_family, k, [])?;
                }
                if let Some(k) = &r.group {
                    tx.insert(&self.by_group, k, [])?;
                }
                if let Some(k) = &r.node {
                    tx.insert(&self.by_node, k, [])?;
                }
                match &r.active {
                    Some(v) => tx.insert(&self.active, &r.id, v)?,
                    None => tx.remove(&self.active, &r.id)?,
                };
                match r.waiting {
                    Some(true) => tx.insert(&self.waiting, &r.id, [])?,
                    Some(false) => tx.remove(&self.waiting, &r.id)?,
                    None => {}
                };
                if let Some((k, v)) = &r.event {
                    tx.insert(&self.events, k, v)?;
                }
            }
            Ok(())
        })?;
        let mut cache = self.active_cache.lock().expect("active cache lock");
        cache.generation += 1;
        let cache = &mut cache.tasks;
        let mut reserved = self.reserved.lock().expect("reserved lock");
        for (task, _, _) in writes {
            if task.status.is_active() {
                cache.insert(task.id.as_bytes().to_vec(), task.clone());
                reserved.set(&task.id, Some(Reservation::of(task)));
            } else {
                cache.remove(task.id.as_bytes());
                reserved.set(&task.id, None);
            }
        }
        drop(reserved);
        // Counted once the locks every reader of the active tasks takes are let go.
        for (task, event, before) in writes {
            self.metrics.task_written(
                before.status.map(|s| (s, before.placed)),
                task,
                event.is_some(),
            );
        }
        Ok(())
    }

    /// Runs `body` over `trees` in one transaction (see `tree::transact`).
    fn transact<R>(
        &self,
        trees: &[&Tree],
        body: impl FnMut(&Tx<'_>) -> Result<R, TxError>,
    ) -> Result<R, StoreError> {
        tree::transact(self.engine.as_ref(), trees, body)
    }

    // --- events: key = ULID bytes, so key order is append order ---

    /// Appends an event that belongs to no task. Durable on return.
    pub async fn append_event(
        &self,
        event: impl FnOnce(String) -> Event,
    ) -> Result<Event, StoreError> {
        let mut gen = self.writer.lock().await;
        let event = event(next_event_id(&mut gen));
        self.events.insert(event_key(&event.id), encode(&event))?;
        drop(gen);
        self.commit().await?;
        self.metrics.event_appended(&event.source);
        Ok(event)
    }

    /// Up to `limit` events strictly after `after` (an event id; None = from the start).
    pub fn events_after(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<Event>, StoreError> {
        self.events
            .range(after_bound(after), Bound::Unbounded)
            .take(limit)
            .map(|kv| decode("events", &kv?.1))
            .collect()
    }

    /// How many events come after `after` (None: all), counting at most `limit` of them.
    pub fn count_events_after(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<usize, StoreError> {
        let mut n = 0;
        for kv in self
            .events
            .range(after_bound(after), Bound::Unbounded)
            .take(limit)
        {
            kv?;
            n += 1;
        }
        Ok(n)
    }

    /// The id of the last of the `limit` events after `after`, read from its key (nothing
    /// decoded): where a cursor that reads no event (the bus with no rules) moves to.
    pub fn last_event_after(
        &self,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Option<String>, StoreError> {
        let mut last = None;
        for k in self
            .events
            .range(after_bound(after), Bound::Unbounded)
            .take(limit)
            .map(key_of)
        {
            last = Some(k?);
        }
        // The key is the id's ULID bytes (`event_key`): no need to decode the record.
        Ok(last.and_then(|k| {
            let bytes: [u8; 16] = k.as_slice().try_into().ok()?;
            Some(ulid::Ulid::from_bytes(bytes).to_string())
        }))
    }

    /// Appends a batch of events (ids in order) with one flush. Durable on return.
    pub async fn append_events(
        &self,
        events: Vec<Box<dyn FnOnce(String) -> Event + Send>>,
    ) -> Result<Vec<Event>, StoreError> {
        let mut gen = self.writer.lock().await;
        let mut batch = Vec::with_capacity(events.len());
        let mut out = Vec::with_capacity(events.len());
        for make in events {
            let e = make(next_event_id(&mut gen));
            batch.push((event_key(&e.id), Some(encode(&e))));
            out.push(e);
        }
        self.events.apply(batch)?;
        drop(gen);
        self.commit().await?;
        for e in &out {
            self.metrics.event_appended(&e.source);
        }
        Ok(out)
    }

    pub fn event(&self, id: &str) -> Result<Option<Event>, StoreError> {
        self.events
            .get(event_key(id))?
            .map(|v| decode("events", &v))
            .transpose()
    }

    /// The last `n` events, oldest first.
    pub fn last_events(&self, n: usize) -> Result<Vec<Event>, StoreError> {
        let mut out: Vec<Event> = self
            .events
            .iter()
            .rev()
            .take(n)
            .map(|kv| decode("events", &kv?.1))
            .collect::<Result<_, _>>()?;
        out.reverse();
        Ok(out)
    }

    // --- rules: key = name ---

    pub async fn delete_rule(&self, name: &str) -> Result<Option<Rule>, StoreError> {
        let old = self.rules.remove(name)?;
        // A new rule of the same name starts counting from zero.
        self.rule_stats.remove(name)?;
        self.commit().await?;
        Ok(old)
    }

    // --- rule deliveries ---

    pub fn bus_cursor(&self) -> Result<Option<String>, StoreError> {
        Ok(self
            .bus
            .get("cursor")?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    pub async fn set_bus_cursor(&self, event_id: &str) -> Result<(), StoreError> {
        self.advance_bus(event_id, &BTreeMap::new()).await
    }

    /// Moves the dispatcher's cursor past a batch and adds the batch's matches to each rule's
    /// counters (rule → (events matched, time of the last)) in one transaction, so a batch
    /// replayed after a crash is never counted twice. Durable on return.
    pub async fn advance_bus(
        &self,
        event_id: &str,
        matched: &BTreeMap<String, (u64, i64)>,
    ) -> Result<(), StoreError> {
        let mut updates = Vec::with_capacity(matched.len());
        for (rule, (n, last_ms)) in matched {
            let mut s = self.rule_stats(rule)?;
            s.matched += n;
            s.last_matched_ms = s.last_matched_ms.max(*last_ms);
            updates.push((rule.as_bytes().to_vec(), s));
        }
        self.transact(&[&self.bus, &self.rule_stats], |tx| {
            tx.insert(&self.bus, "cursor", event_id)?;
            for (k, s) in &updates {
                tx.insert(&self.rule_stats, k, encode(s))?;
            }
            Ok(())
        })?;
        self.commit().await
    }

    /// A rule's counters (zero for a rule that has done nothing yet).
    pub fn rule_stats(&self, rule: &str) -> Result<RuleStats, StoreError> {
        Ok(self
            .rule_stats
            .get(rule)?
            .map(|v| decode("rule_stats", &v))
            .transpose()?
            .unwrap_or_default())
    }

    /// Adds one to a rule's counter; durable with the next commit (these two are counts of
    /// attempts, at least once across a crash).
    pub fn count_rule(&self, rule: &str, counter: RuleCounter) -> Result<(), StoreError> {
        let mut err = None;
        self.rule_stats.update(rule, |old| {
            let mut s: RuleStats = old
                .and_then(|v| decode("rule_stats", v).map_err(|e| err = Some(e)).ok())
                .unwrap_or_default();
            match counter {
                RuleCounter::Invoked => s.invoked += 1,
                RuleCounter::Failed => s.failed += 1,
            }
            Some(encode(&s))
        })?;
        err.map_or(Ok(()), Err)
    }

    /// The task a delivery created, if it did.
    pub fn delivered(&self, key: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .deliveries
            .get(key)?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Creates the task of delivery `key` (a rule target's or a schedule fire's) unless that
    /// delivery already created one: the task, its first event, the delivery record and the
    /// end of any pending retry are one transaction. Returns Err(existing task id) when it
    /// had (its retry ends too, durable with the next commit). Durable on return.
    pub async fn create_task_once<E: Into<EncodedEvent>>(
        &self,
        key: &str,
        task: &Task,
        event: impl FnOnce(String) -> E + Send + 'static,
    ) -> Result<Result<String, String>, StoreError> {
        let (done, result) = oneshot::channel();
        self.creations
            .lock()
            .expect("creations lock")
            .push(Creation {
                key: key.to_string(),
                task: task.clone(),
                event: Box::new(move |id| event(id).into()),
                done,
            });
        let mut gen = self.writer.lock().await;
        // Ours, and every creation queued while the lock was held; empty when the holder
        // before us took ours along.
        let batch = std::mem::take(&mut *self.creations.lock().expect("creations lock"));
        if !batch.is_empty() {
            self.create_all_once(&mut gen, batch);
        }
        drop(gen);
        let created = result.await.map_err(|_| StoreError::FlusherGone)??;
        if created.is_ok() {
            self.commit().await?;
        }
        Ok(created)
    }

    /// Writes queued creations in one transaction (under the writer lock) and answers each.
    fn create_all_once(&self, gen: &mut ulid::Generator, batch: Vec<Creation>) {
        struct Prepared {
            key: String,
            task_id: String,
            task: Vec<u8>,
            reserves: Reservation,
            reservation: Vec<u8>,
            waiting: bool,
            group: Vec<u8>,
            node: Option<Vec<u8>>,
            family: Option<Vec<u8>>,
            event_key: Vec<u8>,
            event: Vec<u8>,
            rule_retry: bool,
            schedule_retry: bool,
            /// The task, for the metrics once it is written.
            created: Task,
        }
        let mut prepared = Vec::with_capacity(batch.len());
        let mut answers = Vec::with_capacity(batch.len());
        for c in batch {
            let mut event = (c.event)(next_event_id(gen));
            // Most deliveries have no pending retry: their transaction leaves the retry
            // tables out (sled runs one transaction at a time, and every tree in it costs).
            // The one writer of a key's retry is the loop calling here, so a retry cannot
            // appear in between.
            let rule_retry = self.retries.get(&c.key).map(|r| r.is_some());
            let schedule_retry = self.schedule_retries.get(&c.key).map(|r| r.is_some());
            let (rule_retry, schedule_retry) = match (rule_retry, schedule_retry) {
                (Ok(a), Ok(b)) => (a, b),
                (Err(e), _) | (_, Err(e)) => {
                    let _ = c.done.send(Err(e));
                    continue;
                }
            };
            prepared.push(Prepared {
                key: c.key,
                task_id: c.task.id.clone(),
                task: encode(&c.task),
                reserves: Reservation::of(&c.task),
                reservation: encode(&Reservation::of(&c.task)),
                waiting: c.task.status == TaskStatus::Provisioning,
                group: group_key(&c.task),
                node: node_key(&c.task),
                family: family_key(&c.task),
                event_key: event_key(&event.id),
                event: std::mem::take(&mut event.json),
                rule_retry,
                schedule_retry,
                created: c.task,
            });
            answers.push((c.done, event.id));
        }
        let mut trees = vec![
            &self.tasks,
            &self.active,
            &self.waiting,
            &self.events,
            &self.deliveries,
            &self.by_group,
            &self.by_node,
            &self.index_versions,
        ];
        if prepared.iter().any(|p| p.family.is_some()) {
            trees.push(&self.by_family);
        }
        if prepared.iter().any(|p| p.rule_retry) {
            trees.extend(self.retries.trees());
        }
        if prepared.iter().any(|p| p.schedule_retry) {
            trees.extend(self.schedule_retries.trees());
        }
        // Under the writer lock: the count cannot move before this transaction writes it.
        let count_before = self.task_count.load(std::sync::atomic::Ordering::Acquire);
        let res = self.transact(&trees, |tx| {
            let mut existing = Vec::with_capacity(prepared.len());
            for p in &prepared {
                // Either way the delivery's pending retry, if any, is over.
                if p.rule_retry {
                    self.retries.remove_in(tx, p.key.as_bytes())?;
                }
                if p.schedule_retry {
                    self.schedule_retries.remove_in(tx, p.key.as_bytes())?;
                }
                if let Some(id) = tx.get(&self.deliveries, &p.key)? {
                    existing.push(Some(String::from_utf8_lossy(&id).into_owned()));
                    continue;
                }
                tx.insert(&self.tasks, &p.task_id, &p.task)?;
                tx.insert(&self.by_group, &p.group, [])?;
                if let Some(k) = &p.family {
                    tx.insert(&self.by_family, k, [])?;
                }
                if let Some(k) = &p.node {
                    tx.insert(&self.by_node, k, [])?;
                }
                tx.insert(&self.active, &p.task_id, &p.reservation)?;
                if p.waiting {
                    tx.insert(&self.waiting, &p.task_id, [])?;
                }
                tx.insert(&self.events, &p.event_key, &p.event)?;
                tx.insert(&self.deliveries, &p.key, &p.task_id)?;
                existing.push(None);
            }
            let created = existing.iter().filter(|e| e.is_none()).count();
            if created > 0 {
                let count = count_before + created;
                tx.insert(
                    &self.index_versions,
                    TASK_COUNT,
                    (count as u64).to_le_bytes(),
                )?;
            }
            Ok(existing)
        });
        match res {
            Ok(existing) => {
                let created = existing.iter().filter(|e| e.is_none()).count();
                let mut reserved = self.reserved.lock().expect("reserved lock");
                let mut written = Vec::with_capacity(created);
                for (p, existing) in prepared.into_iter().zip(&existing) {
                    if existing.is_none() {
                        reserved.set(&p.task_id, Some(p.reserves));
                        written.push(p.created);
                    }
                }
                drop(reserved);
                for task in &written {
                    self.metrics.task_written(None, task, true);
                }
                self.task_count
                    .fetch_add(created, std::sync::atomic::Ordering::AcqRel);
                for ((done, event_id), existing) in answers.into_iter().zip(existing) {
                    let _ = done.send(Ok(existing.map_or(Ok(event_id), Err)));
                }
            }
            Err(e) => {
                for (done, _) in answers {
                    let _ = done.send(Err(e.clone()));
                }
            }
        }
    }

    /// Forgets dedup records of events older than `cutoff_ms` (their ULIDs carry the time):
    /// delivery records (no retry lasts that long, and the dispatcher never replays that far
    /// back) and object versions seen. Returns how many went.
    pub async fn gc_dedup(&self, cutoff_ms: i64) -> Result<usize, StoreError> {
        let old = |event_id: &str| {
            ulid::Ulid::from_string(event_id).is_ok_and(|u| (u.timestamp_ms() as i64) < cutoff_ms)
        };
        let mut removed = 0;
        for kv in self.deliveries.iter() {
            let (k, _) = kv?;
            let key = String::from_utf8_lossy(&k);
            if key.rsplit('\0').next().is_some_and(old) && self.retries.get(&k)?.is_none() {
                self.deliveries.remove(&k)?;
                removed += 1;
            }
        }
        for kv in self.object_seen.iter() {
            let (k, v) = kv?;
            if old(&String::from_utf8_lossy(&v)) {
                self.object_seen.remove(&k)?;
                removed += 1;
            }
        }
        if removed > 0 {
            self.commit().await?;
        }
        Ok(removed)
    }

    /// Records a delivery that needs no task (a target kind that completes at once).
    pub async fn mark_delivered(&self, key: &str, what: &str) -> Result<(), StoreError> {
        let trees = [&[&self.deliveries][..], &self.retries.trees()].concat();
        self.transact(&trees, |tx| {
            tx.insert(&self.deliveries, key, what)?;
            self.retries.remove_in(tx, key.as_bytes()).map(|_| ())
        })?;
        self.commit().await
    }

    /// Ends a delivery (a rule target's, or a schedule fire's: `key` is one or the other) in
    /// the dead-letter list: its pending retry gone and its rule's counter up, in the same
    /// transaction. Durable on return.
    pub async fn dead_letter(&self, key: &str, d: &DeadLetter) -> Result<(), StoreError> {
        self.dead_letter_to(key, d, None).await
    }

    /// `dead_letter`, also queueing `message` (to a dead-letter queue) in the same
    /// transaction. Durable on return.
    pub async fn dead_letter_to(
        &self,
        key: &str,
        d: &DeadLetter,
        message: Option<&QueueMessage>,
    ) -> Result<(), StoreError> {
        let bytes = encode(d);
        let trees = [
            &[&self.dead_letters, &self.deliveries, &self.rule_stats][..],
            &self.retries.trees(),
            &self.schedule_retries.trees(),
            &self.messages.trees(),
        ]
        .concat();
        self.transact(&trees, |tx| {
            if tx
                .get(&self.deliveries, key)?
                .is_some_and(|v| v.starts_with(b"dead-letter:"))
            {
                return Ok(());
            }
            tx.insert(&self.dead_letters, &d.id, &bytes)?;
            if let Some(m) = message {
                self.messages.put_in(tx, m)?;
            }
            self.retries.remove_in(tx, key.as_bytes())?;
            self.schedule_retries.remove_in(tx, key.as_bytes())?;
            tx.insert(&self.deliveries, key, format!("dead-letter:{}", d.id))?;
            let mut s: RuleStats = match tx.get(&self.rule_stats, &d.rule)? {
                Some(v) => decode("rule_stats", &v).unwrap_or_default(),
                None => RuleStats::default(),
            };
            s.dead_lettered += 1;
            tx.insert(&self.rule_stats, &d.rule, encode(&s))
        })?;
        self.commit().await
    }

    pub fn dead_letters(&self) -> Result<Vec<DeadLetter>, StoreError> {
        self.dead_letters
            .iter()
            .map(|kv| decode("dead_letters", &kv?.1))
            .collect()
    }

    // --- schedules: key = name ---

    pub async fn put_schedule(&self, s: &Schedule) -> Result<(), StoreError> {
        // A changed schedule starts over from now: its old next fire time may not apply.
        self.transact(&[self.schedules.tree(), &self.schedule_state], |tx| {
            tx.insert(self.schedules.tree(), &s.name, encode(s))?;
            let mut state: ScheduleState = match tx.get(&self.schedule_state, &s.name)? {
                Some(v) => decode("schedule_state", &v).unwrap_or_default(),
                None => ScheduleState::default(),
            };
            state.next_fire_ms = None;
            tx.insert(&self.schedule_state, &s.name, encode(&state))
        })?;
        self.commit().await
    }

    /// Removes a schedule with its state and its pending fire retries, in one transaction.
    pub async fn delete_schedule(&self, name: &str) -> Result<Option<Schedule>, StoreError> {
        let Some(old) = self.schedules.get(name)? else {
            return Ok(None);
        };
        let pending: Vec<ScheduleRetry> = self
            .schedule_retries
            .list()?
            .into_iter()
            .filter(|r| r.schedule == name)
            .collect();
        let trees = [
            &[self.schedules.tree(), &self.schedule_state][..],
            &self.schedule_retries.trees(),
        ]
        .concat();
        self.transact(&trees, |tx| {
            tx.remove(self.schedules.tree(), name)?;
            tx.remove(&self.schedule_state, name)?;
            for r in &pending {
                self.schedule_retries.remove_in(tx, &r.key())?;
            }
            Ok(())
        })?;
        self.commit().await?;
        Ok(Some(old))
    }

    /// A data dir from before fire retries had their own table kept them in each
    /// schedule's state: moved to the table, each state rewritten without them, in one
    /// transaction per schedule.
    fn move_schedule_retries_to_their_table(&self) -> Result<(), StoreError> {
        let trees = [&[&self.schedule_state][..], &self.schedule_retries.trees()].concat();
        for kv in self.schedule_state.iter() {
            let (name, v) = kv?;
            let mut st: ScheduleState = decode("schedule_state", &v)?;
            if st.retries.is_empty() {
                continue;
            }
            let schedule = String::from_utf8_lossy(&name).into_owned();
            let retries = std::mem::take(&mut st.retries);
            self.transact(&trees, |tx| {
                for r in &retries {
                    let r = ScheduleRetry {
                        schedule: schedule.clone(),
                        ..r.clone()
                    };
                    self.schedule_retries.put_in(tx, &r)?;
                }
                tx.insert(&self.schedule_state, &name, encode(&st))
            })?;
        }
        Ok(())
    }

    pub fn schedule_state(&self, name: &str) -> Result<ScheduleState, StoreError> {
        Ok(self
            .schedule_state
            .get(name)?
            .map(|v| decode("schedule_state", &v))
            .transpose()?
            .unwrap_or_default())
    }

    pub async fn put_schedule_state(
        &self,
        name: &str,
        st: &ScheduleState,
    ) -> Result<(), StoreError> {
        self.schedule_state.insert(name, encode(st))?;
        self.commit().await
    }

    // --- object-store sources ---

    pub async fn delete_source(&self, name: &str) -> Result<Option<Source>, StoreError> {
        let old = self.sources.remove(name)?;
        self.source_health.remove(name)?;
        self.commit().await?;
        Ok(old)
    }

    /// Appends an event unless one with `seen_key` is already on the bus (then Ok(None)):
    /// an object version, a schedule's fire. With `watch`, records what the watcher saw in the same transaction (None as
    /// its value = the object is gone). Durable on return.
    pub async fn append_event_once(
        &self,
        seen_key: Option<&str>,
        watch: Option<(&str, Option<&str>)>,
        make: impl FnOnce(String) -> Event,
    ) -> Result<Option<Event>, StoreError> {
        let mut gen = self.writer.lock().await;
        let event = make(next_event_id(&mut gen));
        let (ek, ev) = (event_key(&event.id), encode(&event));
        let trees = [&self.events, &self.object_seen, &self.watch_state];
        let res = self.transact(&trees, |tx| {
            if let Some((k, v)) = watch {
                match v {
                    Some(v) => tx.insert(&self.watch_state, k, v)?,
                    None => tx.remove(&self.watch_state, k)?,
                };
            }
            if let Some(sk) = seen_key {
                if tx.get(&self.object_seen, sk)?.is_some() {
                    return Ok(false);
                }
                tx.insert(&self.object_seen, sk, &event.id)?;
            }
            tx.insert(&self.events, &ek, &ev)?;
            Ok(true)
        });
        drop(gen);
        let appended = res?;
        self.commit().await?;
        if appended {
            self.metrics.event_appended(&event.source);
        }
        Ok(appended.then_some(event))
    }

    /// The id of the event appended under `seen_key`, while its record lasts.
    pub fn event_once(&self, seen_key: &str) -> Result<Option<String>, StoreError> {
        Ok(self
            .object_seen
            .get(seen_key)?
            .map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Records a watcher's listing as it is (its baseline), with one flush.
    pub async fn put_watch_state(&self, entries: &[(String, String)]) -> Result<(), StoreError> {
        let batch = entries
            .iter()
            .map(|(k, v)| (k.as_bytes().to_vec(), Some(v.as_bytes().to_vec())))
            .collect();
        self.watch_state.apply(batch)?;
        self.commit().await
    }

    /// A watcher's last listing of one source: key (source NUL bucket NUL object) →
    /// "etag size".
    pub fn watch_state(
        &self,
        source: &str,
    ) -> Result<std::collections::HashMap<String, String>, StoreError> {
        let prefix = format!("{source}\0");
        self.watch_state
            .scan_prefix(prefix.as_bytes())
            .map(|kv| {
                let (k, v) = kv?;
                Ok((
                    String::from_utf8_lossy(&k).into_owned(),
                    String::from_utf8_lossy(&v).into_owned(),
                ))
            })
            .collect()
    }

    /// Records a watcher's health. Not flushed on its own: it is a status, made durable by
    /// the next commit, and rewritten at every listing.
    pub fn set_source_health(&self, source: &str, h: &SourceHealth) -> Result<(), StoreError> {
        self.source_health.insert(source.as_bytes(), encode(h))?;
        Ok(())
    }

    pub fn source_health(&self, source: &str) -> Result<SourceHealth, StoreError> {
        Ok(self
            .source_health
            .get(source)?
            .map(|v| decode("source_health", &v))
            .transpose()?
            .unwrap_or_default())
    }

    /// Size of the data dir on disk, for diagnostics.
    pub fn size_on_disk(&self) -> u64 {
        self.engine.size_on_disk()
    }
}

/// The by-group index key of a task: group NUL id.
fn group_key(t: &Task) -> Vec<u8> {
    let mut k = t.group.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(t.id.as_bytes());
    k
}

/// The by-family index key of a task from a task definition: family NUL id.
fn family_key(t: &Task) -> Option<Vec<u8>> {
    let mut k = t.family()?.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(t.id.as_bytes());
    Some(k)
}

/// The by-node index key of a placed task: node NUL id.
fn node_key(t: &Task) -> Option<Vec<u8>> {
    let node = t.node_id.as_deref()?;
    let mut k = node.as_bytes().to_vec();
    k.push(0);
    k.extend_from_slice(t.id.as_bytes());
    Some(k)
}

/// Which tasks a listing wants; empty fields match every task.
#[derive(Clone, Debug, Default)]
pub struct TaskFilter {
    pub status: Option<TaskStatus>,
    pub family: Option<String>,
    pub node: Option<String>,
    pub group: Option<String>,
    /// Only tasks created at or after this time (ms since the epoch).
    pub created_from_ms: Option<i64>,
    /// Only tasks created before this time.
    pub created_before_ms: Option<i64>,
    /// Only tasks older than this one: the last id of the page before (a page token).
    pub older_than: Option<String>,
}

impl TaskFilter {
    /// The id range the filter allows: [from, to).
    fn id_range(&self) -> (Option<String>, Option<String>) {
        let from = self.created_from_ms.map(task_id_bound);
        let to = [
            self.created_before_ms.map(task_id_bound),
            self.older_than.clone(),
        ]
        .into_iter()
        .flatten()
        .min();
        (from, to)
    }

    fn in_range(range: &(Option<String>, Option<String>), id: &[u8]) -> bool {
        range.0.as_ref().is_none_or(|f| id >= f.as_bytes())
            && range.1.as_ref().is_none_or(|t| id < t.as_bytes())
    }
}

impl TaskFilter {
    /// Whether `t` is one the filter wants (what the listing's indexes must agree with).
    #[cfg(test)]
    fn matches(&self, t: &Task) -> bool {
        self.status.is_none_or(|s| t.status == s)
            && self.family.as_deref().is_none_or(|f| t.family() == Some(f))
            && self
                .node
                .as_deref()
                .is_none_or(|n| t.node_id.as_deref() == Some(n))
            && self.group.as_deref().is_none_or(|g| t.group == g)
            && Self::in_range(&self.id_range(), t.id.as_bytes())
    }
}

/// An entry's key.
/// The key (in `index_versions`) of the count of tasks, written in every transaction that
/// creates or deletes tasks, so an open reads it instead of counting a long history.
pub(crate) const TASK_COUNT: &str = "task_count";

/// How far past a page a listing of a range counts: beyond it, its total is "at least".
pub const COUNT_CAP: usize = 10_000;

/// The smallest event id of `ms` (a ULID with no random part): the events of a time range
/// are the ids between two bounds.
pub fn event_id_bound(ms: i64) -> String {
    ulid::Ulid::from_parts(ms.max(0) as u64, 0).to_string()
}

/// The smallest task id (a lowercase ULID) created at `ms`: ids below it were created
/// earlier, so a time range of tasks is a key range.
pub fn task_id_bound(ms: i64) -> String {
    ulid::Ulid::from_parts(ms.max(0) as u64, 0)
        .to_string()
        .to_lowercase()
}

fn key_of(kv: Result<Entry, StoreError>) -> Result<Vec<u8>, StoreError> {
    kv.map(|(k, _)| k)
}

fn next_event_id(gen: &mut ulid::Generator) -> String {
    // The monotonic generator only fails after 2^80 ids in one millisecond; fall back to a fresh one.
    gen.generate()
        .unwrap_or_else(|_| ulid::Ulid::new())
        .to_string()
}

/// A malformed cursor sorts before every real id, so it reads from the start rather than failing
/// here; the API layer validates cursors before they get this far.
/// Where a read of the events after event `after` (None: from the first) starts.
fn after_bound(after: Option<&str>) -> Bound<Vec<u8>> {
    match after {
        Some(id) => Bound::Excluded(event_key(id)),
        None => Bound::Unbounded,
    }
}

fn event_key(id: &str) -> Vec<u8> {
    ulid::Ulid::from_string(id)
        .map(|u| u.to_bytes().to_vec())
        .unwrap_or_default()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The store on each engine: the callers' code is the same on both.
    /// (The data dir is None in memory.)
    pub(super) fn stores() -> Vec<(Store, Option<tempfile::TempDir>)> {
        let dir = tempfile::tempdir().unwrap();
        let on_sled = Store::open(dir.path()).unwrap();
        let on_memory = Store::with_engine(Arc::new(MemoryEngine::new())).unwrap();
        vec![(on_sled, Some(dir)), (on_memory, None)]
    }

    #[tokio::test]
    async fn dedup_records_older_than_the_cutoff_are_forgotten() {
        for (store, _dir) in stores() {
            let old_id = ulid::Ulid::from_parts(1_000, 1).to_string();
            let new_id = ulid::Ulid::from_parts(5_000, 1).to_string();
            for id in [&old_id, &new_id] {
                store
                    .mark_delivered(&format!("r\0t\0{id}"), "done")
                    .await
                    .unwrap();
                store
                    .object_seen
                    .insert(format!("s\0{id}"), id.as_bytes())
                    .unwrap();
            }
            assert_eq!(store.gc_dedup(2_000).await.unwrap(), 2);
            assert!(store
                .delivered(&format!("r\0t\0{old_id}"))
                .unwrap()
                .is_none());
            assert!(store
                .delivered(&format!("r\0t\0{new_id}"))
                .unwrap()
                .is_some());
            assert_eq!(store.object_seen.len(), 1);
        }
    }

    pub(crate) fn task(id: &str, status: TaskStatus, node: Option<&str>) -> Task {
        let mut t = Task::new(
            id.into(),
            None,
            "g".into(),
            String::new(),
            skiff_model::testing::spec(0.5, 64),
            0,
        );
        t.status = status;
        t.node_id = node.map(String::from);
        t
    }

    /// Opens the store again once the dropped one's flusher thread has let go of the files.
    fn reopen(dir: &std::path::Path) -> Store {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match Store::open(dir) {
                Ok(s) => return s,
                Err(e) if std::time::Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) => panic!("reopening the store: {e}"),
            }
        }
    }

    /// The ids of the tasks `filter` wants, newest first: what a listing must return.
    pub(super) fn matching_newest_first(all: &[Task], filter: &TaskFilter) -> Vec<String> {
        all.iter()
            .rev()
            .filter(|t| filter.matches(t))
            .map(|t| t.id.clone())
            .collect()
    }

    pub(super) fn event(id: String) -> Event {
        Event {
            id,
            source: "t".into(),
            detail_type: "T".into(),
            replay: None,
            time_ms: 0,
            resources: vec![],
            detail: serde_json::json!({}),
        }
    }

    #[tokio::test]
    async fn a_replace_stops_the_task_and_creates_the_next_in_one_write_that_every_index_sees() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            let mut lost = task("01a", TaskStatus::Pending, Some("n1"));
            lost.task_definition = Some("web:1".into());
            store.create_task(&lost, event).await.unwrap();
            let before = store.events_after(None, 100).unwrap().len();
            let out = store
                .update_tasks_uncommitted(&["01a".to_string()], |_, mut t, next_id| {
                    t.status = TaskStatus::Stopped;
                    let mut next = task("01b", TaskStatus::Provisioning, None);
                    next.task_definition = t.task_definition.clone();
                    next.replaces = t.id.clone();
                    t.replaced_by = next.id.clone();
                    Ok::<_, ()>(Decision::Replace {
                        event: event(next_id()).into(),
                        task: t,
                        next: Box::new((next, event(next_id()).into())),
                    })
                })
                .await
                .unwrap();
            assert!(
                matches!(&out[0], Ok(Some(d)) if d.writes() && d.task().status == TaskStatus::Stopped)
            );
            store.commit().await.unwrap();
            assert_eq!(store.events_after(None, 100).unwrap().len(), before + 2);
            assert_eq!(
                store
                    .waiting_tasks()
                    .unwrap()
                    .iter()
                    .map(|t| t.id.as_str())
                    .collect::<Vec<_>>(),
                ["01b"]
            );
            assert!(store.node_reservations().is_empty(), "n1 holds nothing now");
        }
        // Both are durable, and every listing counts them as they are.
        let store = reopen(dir.path());
        assert_eq!(store.task("01a").unwrap().unwrap().replaced_by, "01b");
        assert_eq!(store.task("01b").unwrap().unwrap().replaces, "01a");
        let ids = |f: TaskFilter| {
            let (tasks, total) = store.list_tasks(&f, 0).unwrap();
            (tasks.into_iter().map(|t| t.id).collect::<Vec<_>>(), total)
        };
        let status = |s| TaskFilter {
            status: Some(s),
            ..Default::default()
        };
        assert_eq!(
            ids(TaskFilter::default()),
            (vec!["01b".into(), "01a".into()], 2)
        );
        assert_eq!(
            ids(status(TaskStatus::Provisioning)),
            (vec!["01b".into()], 1)
        );
        assert_eq!(ids(status(TaskStatus::Stopped)), (vec!["01a".into()], 1));
        let family = TaskFilter {
            family: Some("web".into()),
            ..Default::default()
        };
        assert_eq!(ids(family), (vec!["01b".into(), "01a".into()], 2));
        let on_n1 = TaskFilter {
            node: Some("n1".into()),
            ..Default::default()
        };
        assert_eq!(ids(on_n1), (vec!["01a".into()], 1));
    }

    #[tokio::test]
    async fn active_tasks_follow_every_write_after_they_were_first_read() {
        for (store, _dir) in stores() {
            for (id, status) in [("01a", TaskStatus::Running), ("01b", TaskStatus::Pending)] {
                store
                    .create_task(&task(id, status, Some("n1")), event)
                    .await
                    .unwrap();
            }
            let read = || {
                store
                    .active_tasks()
                    .unwrap()
                    .iter()
                    .map(|t| (t.id.clone(), t.status, t.addresses.clone()))
                    .collect::<Vec<_>>()
            };
            assert_eq!(
                read(),
                [
                    ("01a".to_string(), TaskStatus::Running, vec![]),
                    ("01b".to_string(), TaskStatus::Pending, vec![])
                ]
            );
            let change = |id: &'static str, status: TaskStatus, address: &'static str| {
                store.update_task(id, move |mut t, _| {
                    t.status = status;
                    t.addresses = vec![address.to_string()];
                    Ok::<_, ()>(Decision::Write {
                        task: t,
                        event: None,
                    })
                })
            };
            change("01b", TaskStatus::Running, "10.0.0.2")
                .await
                .unwrap()
                .unwrap();
            change("01a", TaskStatus::Stopped, "10.0.0.1")
                .await
                .unwrap()
                .unwrap();
            store
                .create_task(&task("01c", TaskStatus::Provisioning, None), event)
                .await
                .unwrap();
            assert_eq!(
                read(),
                [
                    (
                        "01b".to_string(),
                        TaskStatus::Running,
                        vec!["10.0.0.2".to_string()]
                    ),
                    ("01c".to_string(), TaskStatus::Provisioning, vec![])
                ]
            );
        }
    }

    #[tokio::test]
    async fn every_listing_through_the_indexes_agrees_with_filtering_every_task() {
        for (store, _dir) in stores() {
            let statuses = [
                TaskStatus::Provisioning,
                TaskStatus::Pending,
                TaskStatus::Running,
                TaskStatus::Stopping,
                TaskStatus::Stopped,
            ];
            for i in 0..60usize {
                let status = statuses[i % 5];
                let node = (status != TaskStatus::Provisioning).then(|| format!("n{}", i % 3));
                let mut t = task(&format!("01{i:03}"), status, node.as_deref());
                t.group = format!("g{}", i % 4);
                t.task_definition = (i % 7 != 0).then(|| format!("fam{}:{}", i % 2, i % 3));
                store.create_task(&t, event).await.unwrap();
            }
            // Then moves, as the placer and agents make them (the writes touch only the
            // index entries a move changes): half the waiting tasks placed, some of those and
            // of the others run or stop — one batch, a task named twice among them.
            let ids: Vec<String> = (0..60usize)
                .filter(|i| i % 5 == 0 || i % 7 == 1)
                .chain([0, 5])
                .map(|i| format!("01{i:03}"))
                .collect();
            store
                .update_tasks_uncommitted(&ids, |i, mut t, _| {
                    let n: usize = t.id[2..].parse().unwrap();
                    if t.status == TaskStatus::Provisioning {
                        if !n.is_multiple_of(10) && i < ids.len() - 2 {
                            return Ok::<_, ()>(Decision::Keep(t));
                        }
                        t.status = TaskStatus::Pending;
                        t.node_id = Some(format!("n{}", (n / 5) % 3));
                    } else if t.status.is_active() {
                        t.status = if n.is_multiple_of(2) {
                            TaskStatus::Running
                        } else {
                            TaskStatus::Stopped
                        };
                    }
                    Ok(Decision::Write {
                        task: t,
                        event: None,
                    })
                })
                .await
                .unwrap();
            let all = store.tasks().unwrap();
            assert!(
                all.iter().any(|t| t.status == TaskStatus::Provisioning)
                    && all.iter().filter(|t| t.node_id.is_some()).count() > 48,
                "the moves placed some waiting tasks and left others"
            );
            let pick = |v: &[&str], i: usize| v.get(i).map(|s| s.to_string());
            for status in std::iter::once(None).chain(statuses.map(Some)) {
                for g in 0..3 {
                    for f in 0..3 {
                        for n in 0..3 {
                            let filter = TaskFilter {
                                status,
                                group: pick(&["g1", "g2"], g),
                                family: pick(&["fam0", "fam1"], f),
                                node: pick(&["n0", "n2"], n),
                                ..Default::default()
                            };
                            let mut want = matching_newest_first(&all, &filter);
                            let (got, total) = store.list_tasks(&filter, 3).unwrap();
                            let got: Vec<String> = got.into_iter().map(|t| t.id).collect();
                            assert_eq!(total, want.len(), "{filter:?}");
                            want.truncate(3);
                            assert_eq!(got, want, "{filter:?}");
                        }
                    }
                }
            }
        }
    }

    #[tokio::test]
    async fn a_batch_of_task_changes_is_one_write_and_a_task_named_twice_sees_its_first_change() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for id in ["a", "b"] {
            store
                .create_task(&task(id, TaskStatus::Provisioning, None), event)
                .await
                .unwrap();
        }
        let ids: Vec<String> = ["a", "nope", "b", "a"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        let mut seen = Vec::new();
        let out = store
            .update_tasks_uncommitted(&ids, |i, mut t, next_id| {
                seen.push((i, t.status));
                t.status = match t.status {
                    TaskStatus::Provisioning => TaskStatus::Pending,
                    _ => TaskStatus::Running,
                };
                t.node_id = Some("n1".into());
                Ok::<_, ()>(Decision::Write {
                    event: Some(event(next_id()).into()),
                    task: t,
                })
            })
            .await
            .unwrap();
        assert_eq!(out.len(), 4);
        assert!(matches!(out[1], Ok(None)), "no such task");
        assert_eq!(
            seen,
            [
                (0, TaskStatus::Provisioning),
                (2, TaskStatus::Provisioning),
                (3, TaskStatus::Pending)
            ]
        );
        store.commit().await.unwrap();
        let status = |id: &str| store.task(id).unwrap().unwrap().status;
        assert_eq!(
            (status("a"), status("b")),
            (TaskStatus::Running, TaskStatus::Pending)
        );
        // The indexes follow: nothing waits for placement, both are on n1.
        assert!(store.waiting_tasks().unwrap().is_empty());
        let on_n1 = TaskFilter {
            node: Some("n1".into()),
            ..Default::default()
        };
        assert_eq!(store.list_tasks(&on_n1, 0).unwrap().0.len(), 2);
        // Two creations and three changes, each with its event.
        let all = store.events_after(None, 100).unwrap();
        assert_eq!(all.len(), 5);
        // Where a cursor that reads nothing moves to: the last of the batch.
        let last = |after: Option<&str>, n| store.last_event_after(after, n).unwrap();
        assert_eq!(last(None, 3), Some(all[2].id.clone()));
        assert_eq!(last(Some(&all[2].id), 100), Some(all[4].id.clone()));
        assert_eq!(last(Some(&all[4].id), 100), None);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_creations_share_transactions_and_each_delivery_makes_one_task() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        // 60 deliveries, each asked for twice at once: one task each, the second call told
        // which task the first made.
        let calls: Vec<_> = (0..120)
            .map(|i| {
                let store = store.clone();
                tokio::spawn(async move {
                    let key = format!("fire\0{}", i % 60);
                    let t = task(&format!("t{i:03}"), TaskStatus::Provisioning, None);
                    let made = store.create_task_once(&key, &t, event).await.unwrap();
                    (i % 60, t.id, made)
                })
            })
            .collect();
        type Calls = Vec<(String, Result<String, String>)>;
        let mut by_key: BTreeMap<usize, Calls> = BTreeMap::new();
        for c in calls {
            let (key, id, made) = c.await.unwrap();
            by_key.entry(key).or_default().push((id, made));
        }
        let mut event_ids = Vec::new();
        for (key, calls) in &by_key {
            let created: Vec<&(String, Result<String, String>)> =
                calls.iter().filter(|(_, m)| m.is_ok()).collect();
            assert_eq!(created.len(), 1, "delivery {key}: {calls:?}");
            let winner = &created[0].0;
            let other = calls.iter().find(|(_, m)| m.is_err()).unwrap();
            assert_eq!(other.1.as_ref().unwrap_err(), winner, "delivery {key}");
            assert!(store.task(winner).unwrap().is_some());
            assert!(store.task(&other.0).unwrap().is_none());
            event_ids.push(created[0].1.as_ref().unwrap().clone());
        }
        // Every task's event is stored, in id order with the rest.
        assert_eq!(store.active_tasks().unwrap().len(), 60);
        let stored: Vec<String> = store
            .events_after(None, 1000)
            .unwrap()
            .into_iter()
            .map(|e| e.id)
            .collect();
        event_ids.sort();
        assert_eq!(stored, event_ids);
        // Durable: all of it is there after a reopen.
        drop(store);
        let store = reopen(dir.path());
        assert_eq!(store.active_tasks().unwrap().len(), 60);
    }

    /// The placer's per-node sums are kept in memory by the writes, not read from the
    /// stored reservations: after creations (one at a time and batched), placements,
    /// moves between nodes and stops, and after a reopen, they must equal the sums of the
    /// stored reservations.
    #[tokio::test]
    async fn node_sums_kept_by_the_writes_equal_the_stored_reservations() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let check = |store: &Store, when: &str| {
            let stored = Reserved::summed(&store.reservations().unwrap());
            assert_eq!(store.node_reservations(), stored, "{when}");
        };
        let mut made = Vec::new();
        for i in 0..40 {
            let mut t = task(&format!("t{i:02}"), TaskStatus::Provisioning, None);
            t.group = format!("g{}", i % 3);
            t.spec.containers[0].cpu = 0.1 + f64::from(i % 7) * 0.05;
            if i % 4 < 2 {
                // Created placed already, as a task pinned to its node is.
                t.status = TaskStatus::Pending;
                t.node_id = Some("n1".into());
            }
            if i % 2 == 0 {
                store.create_task(&t, event).await.unwrap();
            } else {
                let key = format!("k{i}");
                store
                    .create_task_once(&key, &t, event)
                    .await
                    .unwrap()
                    .unwrap();
            }
            made.push(t.id);
        }
        check(&store, "created, half of them placed");
        assert_eq!(store.node_reservations()["n1"].tasks, 20);
        // Every task placed, then some moved, some stopped, some placed again: a fixed
        // walk of moves in which each task changes more than once.
        for round in 0..4 {
            let moves: Vec<(String, TaskStatus, Option<String>)> = made
                .iter()
                .enumerate()
                .map(|(i, id)| {
                    let node = format!("n{}", (i + round) % 3);
                    let status = match (i + round * 7) % 5 {
                        0 => TaskStatus::Stopped,
                        1 => TaskStatus::Pending,
                        _ => TaskStatus::Running,
                    };
                    (id.clone(), status, Some(node))
                })
                .collect();
            let ids: Vec<String> = moves.iter().map(|m| m.0.clone()).collect();
            store
                .update_tasks_uncommitted(&ids, |i, mut t, _| {
                    if t.status == TaskStatus::Stopped {
                        return Ok::<_, ()>(Decision::Keep(t));
                    }
                    t.status = moves[i].1;
                    t.node_id = moves[i].2.clone();
                    Ok(Decision::Write {
                        task: t,
                        event: None,
                    })
                })
                .await
                .unwrap();
            check(&store, &format!("round {round}"));
        }
        assert!(!store.node_reservations().is_empty());
        store.commit().await.unwrap();
        let before = store.node_reservations();
        drop(store);
        let store = reopen(dir.path());
        assert_eq!(store.node_reservations(), before, "after a reopen");
        check(&store, "after a reopen");
    }

    #[tokio::test]
    async fn task_indexes_follow_every_write_and_are_rebuilt_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store
            .create_task(&task("a", TaskStatus::Provisioning, None), event)
            .await
            .unwrap();
        store
            .create_task(&task("b", TaskStatus::Running, Some("n1")), event)
            .await
            .unwrap();
        store
            .create_task(&task("c", TaskStatus::Stopped, Some("n1")), event)
            .await
            .unwrap();
        let ids = |v: Vec<Arc<Task>>| v.iter().map(|t| t.id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(store.waiting_tasks().unwrap()), ["a"]);
        let r = store.reservations().unwrap();
        assert_eq!(r.len(), 2, "{r:?}");
        assert!(r.contains(&Reservation {
            node: Some("n1".into()),
            cpu: 0.5,
            memory_mib: 64,
            group: "g".into(),
            ports: vec![],
            status: Some(TaskStatus::Running),
        }));
        // Placed: no longer waiting, reserving on its node.
        store
            .update_task("a", |mut t, _| {
                t.status = TaskStatus::Pending;
                t.node_id = Some("n2".into());
                Ok::<_, ()>(Decision::Write {
                    task: t,
                    event: None,
                })
            })
            .await
            .unwrap()
            .unwrap();
        assert!(store.waiting_tasks().unwrap().is_empty());
        assert!(store
            .reservations()
            .unwrap()
            .iter()
            .any(|r| r.node.as_deref() == Some("n2")));
        // A data dir from before the indexes (empty index values, no waiting tree entries):
        // the next open derives them from the records.
        store
            .create_task(&task("d", TaskStatus::Provisioning, None), event)
            .await
            .unwrap();
        for k in store.active.iter().map(key_of) {
            store.active.insert(k.unwrap(), []).unwrap();
        }
        store.waiting.clear().unwrap();
        store.engine.flush().unwrap();
        drop(store);
        let store = reopen(dir.path());
        assert_eq!(ids(store.waiting_tasks().unwrap()), ["d"]);
        assert_eq!(store.reservations().unwrap().len(), 3);
    }

    #[tokio::test]
    async fn task_listings_read_the_group_and_node_indexes_newest_first() {
        for (store, dir) in stores() {
            let mk = |id: &str, group: &str, status, node: Option<&str>| {
                let mut t = task(id, status, node);
                t.group = group.into();
                t
            };
            for t in [
                mk("01a", "batch", TaskStatus::Stopped, Some("n1")),
                mk("01b", "web", TaskStatus::Running, Some("n1")),
                mk("01c", "batch", TaskStatus::Running, Some("n2")),
                mk("01d", "batch", TaskStatus::Provisioning, None),
            ] {
                let mut t = t;
                t.task_definition = Some(format!("fam-{}:1", t.group));
                store.create_task(&t, event).await.unwrap();
            }
            let list = |f: TaskFilter, limit| {
                let (tasks, total) = store.list_tasks(&f, limit).unwrap();
                (tasks.into_iter().map(|t| t.id).collect::<Vec<_>>(), total)
            };
            let group = |g: &str| TaskFilter {
                group: Some(g.into()),
                ..Default::default()
            };
            assert_eq!(
                list(group("batch"), 0),
                (vec!["01d".into(), "01c".into(), "01a".into()], 3)
            );
            assert_eq!(list(group("batch"), 1), (vec!["01d".into()], 3));
            let on_n1 = TaskFilter {
                node: Some("n1".into()),
                ..Default::default()
            };
            assert_eq!(
                list(on_n1.clone(), 0),
                (vec!["01b".into(), "01a".into()], 2)
            );
            let running_batch = TaskFilter {
                status: Some(TaskStatus::Running),
                ..group("batch")
            };
            assert_eq!(list(running_batch, 0), (vec!["01c".into()], 1));
            assert_eq!(
                list(TaskFilter::default(), 2),
                (vec!["01d".into(), "01c".into()], 4)
            );
            // By status alone: counted from the active index, newest first.
            let status = |s| TaskFilter {
                status: Some(s),
                ..Default::default()
            };
            assert_eq!(
                list(status(TaskStatus::Running), 1),
                (vec!["01c".into()], 2)
            );
            assert_eq!(
                list(status(TaskStatus::Stopped), 0),
                (vec!["01a".into()], 1)
            );
            let stopped_on_n1 = TaskFilter {
                status: Some(TaskStatus::Stopped),
                ..on_n1.clone()
            };
            assert_eq!(list(stopped_on_n1, 0), (vec!["01a".into()], 1));
            let family = TaskFilter {
                family: Some("nope".into()),
                ..Default::default()
            };
            assert_eq!(list(family, 0), (vec![], 0));
            // Placed later: the node index follows the task's write.
            store
                .update_task("01d", |mut t, _| {
                    t.status = TaskStatus::Pending;
                    t.node_id = Some("n2".into());
                    Ok::<_, ()>(Decision::Write {
                        task: t,
                        event: None,
                    })
                })
                .await
                .unwrap()
                .unwrap();
            let on_n2 = TaskFilter {
                node: Some("n2".into()),
                ..Default::default()
            };
            assert_eq!(list(on_n2.clone(), 0).1, 2);
            assert_eq!(
                list(status(TaskStatus::Pending), 0),
                (vec!["01d".into()], 1),
                "the active index follows the status"
            );
            assert_eq!(list(TaskFilter::default(), 0).1, 4);
            let Some(dir) = dir else {
                continue; // in memory: nothing to reopen
            };
            // A data dir from before these indexes gets them at its next open.
            store.by_group.clear().unwrap();
            store.by_node.clear().unwrap();
            store.by_family.clear().unwrap();
            store.index_versions.clear().unwrap();
            store.engine.flush().unwrap();
            drop(store);
            let store = reopen(dir.path());
            assert_eq!(store.list_tasks(&group("batch"), 0).unwrap().1, 3);
            assert_eq!(store.list_tasks(&on_n2, 0).unwrap().1, 2);
            assert_eq!(store.list_tasks(&TaskFilter::default(), 0).unwrap().1, 4);
            let family = TaskFilter {
                family: Some("fam-batch".into()),
                ..Default::default()
            };
            assert_eq!(store.list_tasks(&family, 0).unwrap().1, 3);
        }
    }

    #[tokio::test]
    async fn the_outbox_is_read_by_due_time_through_every_move() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let d = |id: &str, at: i64| Delivery {
            id: id.into(),
            topic: "t".into(),
            subscription: "s".into(),
            kind: crate::model::DeliveryKind::Message,
            rule: "r".into(),
            event_id: "e".into(),
            message: "{}".into(),
            attempts: 0,
            last_error: String::new(),
            created_ms: 0,
            next_attempt_ms: at,
            dead_ms: None,
        };
        store
            .enqueue_deliveries("k", &[d("late", 500), d("soon", 100), d("now", 10)], &[])
            .await
            .unwrap();
        let due_ids = |now| {
            let (due, next) = store.outbox.due(now, 10).unwrap();
            (due.into_iter().map(|d| d.id).collect::<Vec<_>>(), next)
        };
        assert_eq!(due_ids(50), (vec!["now".to_string()], Some(100)));
        assert_eq!(due_ids(100).0, ["now", "soon"]);
        // A failed attempt moves it later; a delivered one and a dead letter leave the index.
        store.outbox.put(&d("now", 1_000)).await.unwrap();
        assert_eq!(due_ids(100), (vec!["soon".to_string()], Some(500)));
        store.outbox.delete("soon").await.unwrap();
        store
            .dead_letter_delivery(&d("late", 500), None)
            .await
            .unwrap();
        assert_eq!(due_ids(999), (vec![], Some(1_000)));
        assert_eq!(store.notify_dead(None).unwrap().len(), 1);
        // Redriven: due again.
        store.redrive(&[d("late", 0)]).await.unwrap();
        assert_eq!(due_ids(0).0, ["late"]);
        // An e-mail subscription's confirmation is enqueued with the subscription; a deleted
        // subscription or topic takes its pending entries out of the index too.
        let sub = |id: &str, topic: &str| crate::model::Subscription {
            id: id.into(),
            topic: topic.into(),
            protocol: crate::model::Protocol::Email,
            endpoint: "ops@example.org".into(),
            filter: None,
            raw: false,
            confirmed: false,
            confirm_token_sha256: String::new(),
            signing_secret: None,
            skipped_unconfirmed: 0,
            created_ms: 0,
        };
        let confirm = |id: &str, sub: &str, topic: &str| Delivery {
            subscription: sub.into(),
            topic: topic.into(),
            ..d(id, 3)
        };
        store
            .put_subscription(&sub("s1", "t"), Some(&confirm("c1", "s1", "t")))
            .await
            .unwrap();
        store
            .topics
            .put(&crate::model::Topic {
                name: "other".into(),
                description: String::new(),
                delivery: Default::default(),
                dead_letter_queue: String::new(),
                created_ms: 0,
                updated_ms: 0,
            })
            .await
            .unwrap();
        store
            .put_subscription(&sub("s2", "other"), Some(&confirm("c2", "s2", "other")))
            .await
            .unwrap();
        assert_eq!(due_ids(3).0, ["late", "c1", "c2"]);
        store.delete_subscription("s1").await.unwrap();
        store.delete_topic("other").await.unwrap();
        assert_eq!(due_ids(3).0, ["late"]);
        // Every outbox entry has exactly one index entry, and the other way round (each move
        // writes both in one transaction).
        assert_eq!(store.outbox.index().len(), store.outbox.len());
        // A damaged index (here: a second key for "late", at the wrong time, and one for an
        // entry that is gone): the record decides, and the stray keys are dropped.
        store
            .outbox
            .index()
            .insert(due_key(1, b"late"), [])
            .unwrap();
        store
            .outbox
            .index()
            .insert(due_key(2, b"gone"), [])
            .unwrap();
        assert_eq!(due_ids(3).0, ["late"]);
        assert_eq!(store.outbox.index().len(), store.outbox.len());
        // Rebuilt at open from the outbox itself.
        store.outbox.index().clear().unwrap();
        store.engine.flush().unwrap();
        drop(store);
        let store = reopen(dir.path());
        let (due, next) = store.outbox.due(5_000, 10).unwrap();
        assert_eq!(due.len(), 2);
        assert_eq!(next, None);
    }

    #[tokio::test]
    async fn rule_and_schedule_retries_are_due_tables_that_end_with_their_delivery() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let r = |event: &str, at: i64| PendingRetry {
            rule: "r".into(),
            target: "t".into(),
            event_id: event.into(),
            attempts: 1,
            first_attempt_ms: 0,
            next_attempt_ms: at,
            last_error: String::new(),
        };
        let due = |now| {
            let (due, next) = store.retries.due(now, 10).unwrap();
            let due: Vec<_> = due
                .into_iter()
                .map(|r| (r.event_id, r.next_attempt_ms))
                .collect();
            (due, next)
        };
        store.retries.put(&r("a", 10)).await.unwrap();
        store.retries.put(&r("b", 20)).await.unwrap();
        assert_eq!(due(15), (vec![("a".into(), 10)], Some(20)));
        // Rescheduled: due at its new time only.
        store.retries.put(&r("a", 30)).await.unwrap();
        assert_eq!(due(25), (vec![("b".into(), 20)], Some(30)));
        assert_eq!(store.retries.index().len(), 2);
        // A dead letter ends it, in its own transaction.
        let dl = DeadLetter {
            id: "d".into(),
            rule: "r".into(),
            target: "t".into(),
            event_id: "b".into(),
            attempts: 2,
            last_error: String::new(),
            first_attempt_ms: 0,
            dead_ms: 0,
        };
        store
            .dead_letter(&crate::model::delivery_key("r", "t", "b"), &dl)
            .await
            .unwrap();
        assert_eq!(due(100), (vec![("a".into(), 30)], None));
        assert_eq!(store.retries.index().len(), 1);
        // So does the task it was for, created at last.
        let key_a = crate::model::delivery_key("r", "t", "a");
        store
            .create_task_once(&key_a, &task("01t", TaskStatus::Provisioning, None), event)
            .await
            .unwrap()
            .unwrap();
        assert!(store.retries.is_empty() && store.retries.index().len() == 0);

        // A schedule's fire retries: due by time, ended by the fire's task, gone with the
        // schedule.
        let fire = |name: &str, scheduled: i64, at: i64| ScheduleRetry {
            schedule: name.into(),
            scheduled_ms: scheduled,
            attempts: 1,
            first_attempt_ms: 0,
            next_attempt_ms: at,
            last_error: "no definition".into(),
        };
        let schedule = |name: &str| Schedule {
            name: name.into(),
            ..skiff_model::testing::schedule()
        };
        store.put_schedule(&schedule("nightly")).await.unwrap();
        store
            .schedule_retries
            .put(&fire("nightly", 1, 50))
            .await
            .unwrap();
        store
            .schedule_retries
            .put(&fire("nightly", 2, 60))
            .await
            .unwrap();
        store
            .schedule_retries
            .put(&fire("hourly", 1, 40))
            .await
            .unwrap();
        let fires = |now| {
            let (due, _) = store.schedule_retries.due(now, 10).unwrap();
            due.into_iter()
                .map(|r| format!("{}@{}", r.schedule, r.scheduled_ms))
                .collect::<Vec<_>>()
        };
        assert_eq!(fires(55), ["hourly@1", "nightly@1"]);
        store
            .create_task_once(
                &crate::model::schedule_fire_key("hourly", 1),
                &task("01u", TaskStatus::Provisioning, None),
                event,
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!(fires(100), ["nightly@1", "nightly@2"]);
        store.delete_schedule("nightly").await.unwrap();
        assert!(fires(100).is_empty());
        assert_eq!(store.schedule_retries.index().len(), 0);

        // A data dir from before the table kept them in the schedule's state: moved at open.
        store.put_schedule(&schedule("old")).await.unwrap();
        let legacy = ScheduleState {
            retries: vec![ScheduleRetry {
                schedule: String::new(),
                ..fire("", 7, 70)
            }],
            ..Default::default()
        };
        store.put_schedule_state("old", &legacy).await.unwrap();
        store.engine.flush().unwrap();
        drop(store);
        let store = reopen(dir.path());
        let (due, _) = store.schedule_retries.due(100, 10).unwrap();
        assert_eq!(due.len(), 1);
        assert_eq!((due[0].schedule.as_str(), due[0].scheduled_ms), ("old", 7));
        assert!(store.schedule_state("old").unwrap().retries.is_empty());
        assert_eq!(store.retries.due(100, 10).unwrap().0.len(), 0);
    }

    #[tokio::test]
    async fn a_queues_tally_from_its_index_matches_the_count_over_its_messages() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let q = crate::model::Queue {
            name: "jobs".into(),
            visibility_timeout_secs: 30,
            delay_secs: 0,
            retention_secs: 3600,
            max_message_bytes: 1024,
            receive_wait_secs: 0,
            redrive: None,
            created_ms: 0,
            updated_ms: 0,
            fifo: false,
            content_based_deduplication: false,
        };
        let m = |id: &str, sent_ms: i64, visible_ms: i64, receive_count: u32| QueueMessage {
            queue: "jobs".into(),
            id: id.into(),
            body: "b".into(),
            attributes: Default::default(),
            sent_ms,
            visible_ms,
            receive_count,
            first_received_ms: 0,
            receipt: String::new(),
            group: String::new(),
            dedup_id: String::new(),
        };
        // Visible, visible again after a receive, delayed, in flight; another queue's too.
        for msg in [
            m("01A", 10, 100, 0),
            m("01B", 20, 500, 2),
            m("01C", 30, 5_000, 0),
            m("01D", 40, 9_000, 1),
            QueueMessage {
                queue: "other".into(),
                ..m("01E", 5, 0, 0)
            },
        ] {
            store.messages.put(&msg).await.unwrap();
        }
        let prefix = Store::queue_prefix("jobs");
        let check = |store: &Store, now: i64| {
            let all = store.messages.list_in(&prefix).unwrap();
            let c = skiff_model::queue::counts(&q, &all, now);
            let (visible, delayed, in_flight) = store.messages.tally_in(&prefix, now).unwrap();
            assert_eq!(
                (visible, in_flight, delayed),
                (c.visible, c.in_flight, c.delayed)
            );
            (visible, in_flight, delayed)
        };
        assert_eq!(check(&store, 1_000), (2, 1, 1));
        // A receive moves a visible message in flight; a delete takes one away.
        store.messages.put(&m("01A", 10, 31_000, 1)).await.unwrap();
        assert_eq!(check(&store, 1_000), (1, 2, 1));
        store
            .messages
            .delete(Store::message_key("jobs", "01B"))
            .await
            .unwrap();
        assert_eq!(check(&store, 1_000), (0, 2, 1));
        assert_eq!(check(&store, 10_000), (2, 1, 0));
        assert_eq!(
            store
                .messages
                .first_by_key(&prefix)
                .unwrap()
                .unwrap()
                .sent_ms,
            10
        );
        // The index (and so the tally) is derived again at open.
        drop(store);
        let store = reopen(dir.path());
        assert_eq!(check(&store, 1_000), (0, 2, 1));
    }
}
