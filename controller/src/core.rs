//! The controller's shared state and the operations every entry point uses: creating tasks,
//! moving them through the lifecycle (each move stored with its event), and talking to agents.
//! It knows nothing about gRPC servers; `api.rs` and `agents.rs` translate to and from it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use crate::agent_link::{AgentLink, Offline, Outbox};
use crate::model::Task;
use crate::store::{Decision, Store, StoreError};
use crate::wake::Loop;
use skiff_model::lifecycle::{self, Outcome, TaskEvent};

pub use crate::task_event::{state_change_event, TASK_SOURCE, TASK_STATE_CHANGE};

/// How often agents check in, and how long a silent node keeps its tasks.
#[derive(Clone, Debug)]
pub struct NodeTiming {
    /// How often agents send heartbeats.
    pub heartbeat_interval: Duration,
    /// A node silent for this long is lost: its tasks become STOPPED/NodeLost.
    pub node_timeout: Duration,
}

impl Default for NodeTiming {
    fn default() -> Self {
        NodeTiming {
            heartbeat_interval: Duration::from_secs(5),
            node_timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum CoreError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("no task {0}")]
    NoSuchTask(String),
    #[error("no queue {0:?}")]
    NoSuchQueue(String),
    #[error("no service {0:?}")]
    NoSuchService(String),
    /// Not now, as things stand (the message says why).
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Illegal(#[from] lifecycle::IllegalTransition),
    #[error(transparent)]
    NodeOffline(#[from] Offline),
    /// A spec names a secret, registry credentials or role that does not exist (the message
    /// names the field).
    #[error("{0}")]
    BadReference(String),
}

pub struct Core {
    pub store: Store,
    pub timing: NodeTiming,
    /// Where time is read and waited for (manual in component tests).
    pub clock: crate::clock::Clock,
    /// Seals and opens secrets (the key lives in the data dir, apart from the store).
    pub secrets: crate::sealing::SecretBox,
    /// Signs and checks SKIFF_TASK_TOKENs.
    pub task_keys: crate::task_tokens::TaskTokenKey,
    /// The cluster CA, when the controller serves TLS.
    pub pki: Option<crate::pki::Pki>,
    /// Each connected agent's channel, and the routes of its answers (see `agent_link.rs`).
    pub link: AgentLink,
    /// When each node was last heard from, for the node reaper.
    last_seen: Mutex<HashMap<String, i64>>,
    /// When (wall clock) each node was last heard from this run, kept after it is lost.
    last_heard: Mutex<HashMap<String, i64>>,
    /// The ports other processes hold on each node, as its agent last reported them.
    host_ports:
        Mutex<HashMap<String, std::collections::BTreeSet<(u16, crate::model::PortProtocol)>>>,
    /// Bumped after every durable task or event write; waiters re-read what they watch.
    head: watch::Sender<u64>,
    /// Wakes the background loops by name (see `wake.rs`).
    pub loops: crate::wake::Wakeups,
    /// Bumped when rules change, so the dispatcher recompiles them.
    rules_version: AtomicU64,
    /// Delivers notifications (webhooks, mail) from the outbox.
    pub notifier: crate::notifier::Notifier,
    /// Counters the loops keep for `/metrics` (the store keeps its own).
    pub metrics: crate::metrics::Metrics,
    /// Whether each background loop is running (`workers.rs` starts and stops them).
    pub workers: crate::worker_state::WorkerStates,
    /// Each queue's lock and arrival signal.
    pub queue_waits: crate::queue_waits::QueueWaits,
    /// The addresses behind each service's DNS name, for the agents.
    pub names: crate::names::Names,
    /// The HTTP listener's port, told to agents (their bridge tasks reach it through them).
    pub http_port: Option<u16>,
    /// How long stopped tasks stay where no retention policy says otherwise.
    pub history_limits: skiff_model::history::Limits,
    /// How long the event log keeps what every reader has read.
    pub event_limits: skiff_model::history::EventLogLimits,
    /// Makes ULIDs stamped with the clock's time (increasing within a millisecond).
    ids: Mutex<ulid::Generator>,
    /// Set when the controller is told to stop: every long-lived response stream ends then
    /// (`api::until_stopping`), or a graceful shutdown would wait forever for agents' sessions and
    /// followers.
    stopping: watch::Sender<bool>,
}

impl Core {
    /// Every secret, registry credentials and role a spec names must exist: checked when a
    /// definition is registered and whenever a task is made from one.
    pub fn check_references(&self, spec: &crate::model::TaskSpec) -> Result<(), CoreError> {
        for (i, c) in spec.containers.iter().enumerate() {
            for (j, r) in c.secrets.iter().enumerate() {
                if self.store.secrets.get(&r.value_from)?.is_none() {
                    return Err(CoreError::BadReference(format!(
                        "containers[{i}].secrets[{j}].value_from: no secret named {:?} (see skiff secrets ls)",
                        r.value_from
                    )));
                }
            }
            if !c.repository_credentials.is_empty()
                && self
                    .store
                    .registry_creds
                    .get(&c.repository_credentials)?
                    .is_none()
            {
                return Err(CoreError::BadReference(format!(
                    "containers[{i}].repository_credentials: no registry credentials named {:?} (see skiff registry-creds ls)",
                    c.repository_credentials
                )));
            }
        }
        if !spec.task_role.is_empty() && self.store.roles.get(&spec.task_role)?.is_none() {
            return Err(CoreError::BadReference(format!(
                "task_role: no role named {:?} (see skiff roles ls)",
                spec.task_role
            )));
        }
        Ok(())
    }

    pub fn new(
        store: Store,
        timing: NodeTiming,
        clock: crate::clock::Clock,
        secrets: crate::sealing::SecretBox,
        task_keys: crate::task_tokens::TaskTokenKey,
    ) -> Core {
        let (head, _) = watch::channel(0);
        // Nodes known from before a restart get a full timeout to come back.
        let now = clock.monotonic_ms();
        let last_seen = store
            .nodes
            .list()
            .unwrap_or_default()
            .into_iter()
            .map(|n| (n.id, now))
            .collect();
        Core {
            metrics: Default::default(),
            store,
            timing,
            clock,
            secrets,
            task_keys,
            pki: None,
            link: AgentLink::default(),
            last_seen: Mutex::new(last_seen),
            last_heard: Mutex::new(HashMap::new()),
            host_ports: Mutex::new(HashMap::new()),
            head,
            loops: Default::default(),
            rules_version: AtomicU64::new(0),
            notifier: crate::notifier::Notifier::new(None, "http://127.0.0.1:7480".into())
                .expect("a notifier without SMTP always builds"),
            workers: Default::default(),
            queue_waits: Default::default(),
            names: Default::default(),
            http_port: None,
            history_limits: skiff_model::history::DEFAULT_LIMITS,
            event_limits: skiff_model::history::DEFAULT_EVENT_LIMITS,
            ids: Mutex::new(ulid::Generator::new()),
            stopping: watch::channel(false).0,
        }
    }

    /// Ends every stream `api::until_stopping` wraps (the controller is shutting down).
    pub fn begin_stopping(&self) {
        self.stopping.send_replace(true);
    }

    /// Resolves once `begin_stopping` was called.
    pub fn stopped(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.stopping.subscribe();
        async move {
            let _ = rx.wait_for(|stopping| *stopping).await;
        }
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.head.subscribe()
    }

    fn bump(&self) {
        self.head.send_modify(|v| *v += 1);
    }

    /// A fresh ULID at the clock's time, increasing within one millisecond.
    pub fn new_id(&self) -> String {
        let ms = self.clock.now_ms().max(0) as u64;
        let at = std::time::UNIX_EPOCH + Duration::from_millis(ms);
        let mut ids = self.ids.lock().unwrap();
        // (Only 2^80 ids in one millisecond exhaust it.)
        ids.generate_from_datetime(at)
            .unwrap_or_else(|_| ulid::Ulid::from_parts(ms, u128::MAX >> 48))
            .to_string()
    }

    pub fn next_id(&self) -> u64 {
        self.link.next_id()
    }

    pub fn rules_version(&self) -> u64 {
        self.rules_version.load(Ordering::Acquire)
    }

    /// A rule was put, deleted, enabled or disabled.
    pub fn rules_changed(&self) {
        self.rules_version.fetch_add(1, Ordering::AcqRel);
        self.loops.wake(Loop::Rules);
    }

    /// New events were appended (PutEvents): wake whoever watches the log.
    pub fn events_appended(&self) {
        self.bump();
    }

    /// Stores a task for delivery `key` unless that delivery already made one (then
    /// Err(its task id)); wakes the placer.
    pub async fn create_task_once(
        &self,
        key: &str,
        task: Task,
    ) -> Result<Result<Task, String>, CoreError> {
        let (now, for_event) = (self.clock.now_ms(), task.clone());
        match self
            .store
            .create_task_once(key, &task, move |id| {
                state_change_event(id, &for_event, now)
            })
            .await?
        {
            Ok(_) => {
                self.bump();
                self.loops.wake(Loop::Placer);
                Ok(Ok(task))
            }
            Err(existing) => Ok(Err(existing)),
        }
    }

    /// Stores a new PROVISIONING task with its first event and wakes the placer.
    pub async fn create_task(&self, task: Task) -> Result<Task, CoreError> {
        self.store
            .create_task(&task, |id| {
                state_change_event(id, &task, self.clock.now_ms())
            })
            .await?;
        self.bump();
        self.loops.wake(Loop::Placer);
        Ok(task)
    }

    /// Moves a task through the lifecycle. Returns the task as stored afterwards and whether it
    /// moved. A repeated event is a no-op; an illegal one is an error and changes nothing.
    pub async fn transition(
        &self,
        id: &str,
        event: TaskEvent,
    ) -> Result<(Arc<Task>, bool), CoreError> {
        let mut all = self.transition_all(vec![(id.to_string(), event)]).await;
        all.pop().expect("one result per change")
    }

    /// Moves several tasks (or one task several times) through the lifecycle, in order, with
    /// one flush for all: an agent's reports that arrive together (a short task's RUNNING,
    /// STOPPING and STOPPED; a burst of tasks) share it instead of paying one each. Every
    /// change is durable before any of them is published. One result per change, in order.
    pub async fn transition_all(
        &self,
        changes: Vec<(String, TaskEvent)>,
    ) -> Vec<Result<(Arc<Task>, bool), CoreError>> {
        let now = self.clock.now_ms();
        let (ids, mut events): (Vec<String>, Vec<Option<TaskEvent>>) =
            changes.into_iter().map(|(id, e)| (id, Some(e))).unzip();
        // One transaction for all of them (a burst of placements or reports pays one).
        let decided = self
            .store
            .update_tasks_uncommitted(&ids, |i, mut task, next_event_id| {
                let event = events[i].take().expect("one decision per change");
                let was = (task.status, task.desired);
                match lifecycle::apply(&mut task, event, now)? {
                    Outcome::Unchanged => Ok::<_, CoreError>(Decision::Keep(task)),
                    Outcome::Moved(_) | Outcome::Updated => {
                        // (The id is made only for a task that does start again.)
                        let new_id = || ulid::Ulid::new().to_string().to_lowercase();
                        if let Some(next) = lifecycle::start_again(&mut task, was, new_id, now) {
                            tracing::info!(task_id = %task.id, next = %next.id, attempt = next.attempt, "lost with its node before it ran; starting it again");
                            let event = state_change_event(next_event_id(), &task, now);
                            let first = state_change_event(next_event_id(), &next, now);
                            return Ok(Decision::Replace {
                                task,
                                event,
                                next: Box::new((next, first)),
                            });
                        }
                        let ev = state_change_event(next_event_id(), &task, now);
                        Ok(Decision::Write {
                            task,
                            event: Some(ev),
                        })
                    }
                }
            })
            .await;
        let decided = match decided {
            Ok(d) => d,
            Err(e) => return ids.iter().map(|_| Err(e.clone().into())).collect(),
        };
        let results: Vec<Result<(Arc<Task>, bool), CoreError>> = ids
            .into_iter()
            .zip(decided)
            .map(|(id, decision)| match decision {
                Ok(Some(changed)) => Ok((changed.task, changed.wrote)),
                Ok(None) => Err(CoreError::NoSuchTask(id)),
                Err(e) => Err(e),
            })
            .collect();
        let wrote = results.iter().any(|r| matches!(r, Ok((_, true))));
        if !wrote {
            return results;
        }
        if let Err(e) = self.store.commit().await {
            // Not durable, so not done: nothing is published and every writer hears why.
            let why = e.to_string();
            return results
                .into_iter()
                .map(|r| match r {
                    Ok((_, true)) => Err(CoreError::Store(StoreError::Io(why.clone()))),
                    other => other,
                })
                .collect();
        }
        self.bump();
        if results
            .iter()
            .any(|r| matches!(r, Ok((t, true)) if !t.status.is_active()))
        {
            // Capacity was freed.
            self.loops.wake(Loop::Placer);
        }
        if results
            .iter()
            .any(|r| matches!(r, Ok((t, true)) if t.group.starts_with("service:")))
        {
            // A service's task moved: its loop counts it.
            self.loops.wake(Loop::Services);
        }
        results
    }

    /// Marks a task STOPPED/`NodeLost`: its node is gone or no longer has it.
    pub async fn mark_lost(&self, id: &str, reason: String) -> Result<(), CoreError> {
        let event = TaskEvent::Stopped {
            code: skiff_model::lifecycle::StopCode::NodeLost,
            reason,
            containers: vec![],
        };
        self.transition(id, event).await.map(|_| ())
    }

    /// Records why a PROVISIONING task is still waiting (not a lifecycle move: no event).
    pub async fn set_status_reason(
        &self,
        id: &str,
        why: &skiff_model::placement::Unplaced,
    ) -> Result<(), CoreError> {
        self.rewrite_reason(id, |task| {
            (task.status_reason != why.reason || task.unplaceable != why.never)
                .then(|| (why.reason.clone(), why.never))
        })
        .await
    }

    /// Notes on a task placed on `node_id` that its start is sent again because the node
    /// reconnected without it (it had not run: its agent restarted before, or the start never
    /// arrived). The note stays in the task's status reason, the history of how it started.
    pub async fn note_start_again(&self, id: &str, node_id: &str) -> Result<(), CoreError> {
        let reason = format!(
            "start sent again: node {node_id} reconnected without the task (it had not run)"
        );
        self.rewrite_reason(id, |task| {
            (task.status == crate::model::TaskStatus::Pending
                && task.node_id.as_deref() == Some(node_id)
                && task.status_reason != reason)
                .then(|| (reason.clone(), task.unplaceable))
        })
        .await
    }

    /// Rewrites a task's status reason and `unplaceable` flag to what `change` answers (not a
    /// lifecycle move: no event); None leaves the task as it is.
    async fn rewrite_reason(
        &self,
        id: &str,
        change: impl Fn(&Task) -> Option<(String, bool)>,
    ) -> Result<(), CoreError> {
        self.store
            .update_task(id, |mut task, _| {
                let Some((reason, unplaceable)) = change(&task) else {
                    return Ok::<_, CoreError>(Decision::Keep(task));
                };
                task.status_reason = reason;
                task.unplaceable = unplaceable;
                task.version += 1;
                Ok(Decision::Write { task, event: None })
            })
            .await??;
        self.bump();
        Ok(())
    }

    // --- agent sessions ---

    /// Registers a new connection for a node, replacing an older one (its silence timer
    /// restarts).
    pub fn attach(&self, node_id: &str, tx: Outbox) -> u64 {
        let conn_id = self.link.attach(node_id, tx);
        self.seen(node_id);
        conn_id
    }

    /// Forgets a connection, unless a newer one replaced it already; the node's silence
    /// counts from now.
    pub fn detach(&self, node_id: &str, conn_id: u64) {
        self.link.detach(node_id, conn_id);
        self.seen(node_id);
    }

    /// Forgets the connection of an agent that fell silent; its silence counts from its last
    /// message, not from now.
    pub fn detach_silent(&self, node_id: &str, conn_id: u64) {
        self.link.detach(node_id, conn_id);
        self.loops.wake(Loop::Placer);
    }

    /// When (wall clock) the node's agent was last heard from by this controller.
    pub fn last_heard_ms(&self, node_id: &str) -> Option<i64> {
        self.last_heard.lock().unwrap().get(node_id).copied()
    }

    /// The node's agent was heard from just now (or its connection changed).
    pub fn seen(&self, node_id: &str) {
        self.last_heard
            .lock()
            .unwrap()
            .insert(node_id.to_string(), self.clock.now_ms());
        self.last_seen
            .lock()
            .unwrap()
            .insert(node_id.to_string(), self.clock.monotonic_ms());
    }

    pub fn is_connected(&self, node_id: &str) -> bool {
        self.link.is_connected(node_id)
    }

    /// A node's agent reported the ports other processes hold there; the placer is woken when
    /// they changed (a task waiting for one may go now).
    pub fn set_host_ports(
        &self,
        node_id: &str,
        ports: std::collections::BTreeSet<(u16, crate::model::PortProtocol)>,
    ) {
        let changed = self
            .host_ports
            .lock()
            .unwrap()
            .insert(node_id.to_string(), ports.clone())
            .is_none_or(|before| before != ports);
        if changed {
            self.loops.wake(Loop::Placer);
        }
    }

    /// The ports other processes hold on a node (none known: empty).
    pub fn host_ports(
        &self,
        node_id: &str,
    ) -> std::collections::BTreeSet<(u16, crate::model::PortProtocol)> {
        self.host_ports
            .lock()
            .unwrap()
            .get(node_id)
            .cloned()
            .unwrap_or_default()
    }

    /// Nodes that are not connected and have been silent for longer than the node timeout.
    pub fn lost_nodes(&self) -> Vec<String> {
        let cutoff = self.timing.node_timeout.as_millis() as i64;
        let now = self.clock.monotonic_ms();
        self.last_seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(id, at)| !self.link.is_connected(id) && now - **at > cutoff)
            .map(|(id, _)| id.clone())
            .collect()
    }

    /// Forgets the silence timer of a node whose tasks were all marked lost.
    pub fn forget_node_timer(&self, node_id: &str) {
        self.last_seen.lock().unwrap().remove(node_id);
    }

    /// The one way to stop a task: desired STOPPED (durable, with its event), then its agent
    /// is told (SIGTERM, grace, SIGKILL). A task not yet on a node stops at once; if the agent
    /// is away, the reconciliation after it reconnects sends the stop. Returns the task as
    /// stored (with the stop code and reason it first got, if it was already stopping).
    pub async fn stop_task(
        &self,
        id: &str,
        code: lifecycle::StopCode,
        reason: String,
    ) -> Result<Arc<Task>, CoreError> {
        let (task, _) = self
            .transition(id, lifecycle::TaskEvent::StopRequested { code, reason })
            .await?;
        if task.status == lifecycle::TaskStatus::Stopping {
            if let Some(node) = &task.node_id {
                let code = task.stop_code.unwrap_or(code);
                let _ = self
                    .send_stop(node, &task.id, code, &task.stopped_reason)
                    .await;
            }
        }
        Ok(task)
    }

    /// Tells a node's agent to stop one of its tasks (idempotent on the agent).
    pub async fn send_stop(
        &self,
        node_id: &str,
        task_id: &str,
        code: lifecycle::StopCode,
        reason: &str,
    ) -> Result<(), CoreError> {
        Ok(self.link.send_stop(node_id, task_id, code, reason).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use skiff_model::lifecycle::{StopCode, TaskStatus};

    async fn core_with_task(dir: &std::path::Path, id: &str) -> Core {
        let store = Store::open(&dir.join("store")).unwrap();
        let core = Core::new(
            store,
            NodeTiming::default(),
            crate::clock::Clock::system(),
            crate::sealing::SecretBox::open(dir).unwrap(),
            crate::task_tokens::TaskTokenKey::open(dir).unwrap(),
        );
        let spec = skiff_model::testing::spec(0.1, 16);
        let task = Task::new(id.into(), None, "g".into(), "t".into(), spec, 0);
        core.create_task(task).await.unwrap();
        core
    }

    #[tokio::test]
    async fn a_batch_of_transitions_applies_in_order_and_publishes_each_once() {
        let dir = tempfile::tempdir().unwrap();
        let core = core_with_task(dir.path(), "t1").await;
        let mut head = core.subscribe();
        head.borrow_and_update();
        let results = core
            .transition_all(vec![
                (
                    "t1".into(),
                    TaskEvent::Placed {
                        node_id: "n".into(),
                    },
                ),
                (
                    "t1".into(),
                    TaskEvent::Started {
                        containers: vec![],
                        addresses: vec![],
                    },
                ),
                // Repeated: a no-op, not an error.
                (
                    "t1".into(),
                    TaskEvent::Started {
                        containers: vec![],
                        addresses: vec![],
                    },
                ),
                (
                    "nope".into(),
                    TaskEvent::Started {
                        containers: vec![],
                        addresses: vec![],
                    },
                ),
                ("t1".into(), TaskEvent::Stopping { containers: vec![] }),
                (
                    "t1".into(),
                    TaskEvent::Stopped {
                        code: StopCode::EssentialContainerExited,
                        reason: "done".into(),
                        containers: vec![],
                    },
                ),
                // Illegal after STOPPED: refused, changes nothing.
                (
                    "t1".into(),
                    TaskEvent::Placed {
                        node_id: "m".into(),
                    },
                ),
            ])
            .await;
        let moved: Vec<Option<bool>> = results
            .iter()
            .map(|r| r.as_ref().ok().map(|t| t.1))
            .collect();
        assert_eq!(
            moved,
            [
                Some(true),
                Some(true),
                Some(false),
                None,
                Some(true),
                Some(true),
                None
            ]
        );
        assert!(matches!(results[3], Err(CoreError::NoSuchTask(_))));
        assert!(matches!(results[6], Err(CoreError::Illegal(_))));
        // Durable and published: the stored task is STOPPED on node n, waiters were woken,
        // and the log holds one event per move, in order.
        let t = core.store.task("t1").unwrap().unwrap();
        assert_eq!(
            (t.status, t.node_id.as_deref()),
            (TaskStatus::Stopped, Some("n"))
        );
        assert!(head.has_changed().unwrap());
        let statuses: Vec<String> = core
            .store
            .events_after(None, 100)
            .unwrap()
            .iter()
            .map(|e| e.detail["lastStatus"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(
            statuses,
            ["PROVISIONING", "PENDING", "RUNNING", "STOPPING", "STOPPED"]
        );
    }
}
