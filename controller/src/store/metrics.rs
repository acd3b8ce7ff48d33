//! What the store counts as it writes, for `/metrics` (`crate::metrics` renders it): every
//! task change, event append and flush takes a path through the store, so counting here
//! misses none. Counts live for the process (Prometheus takes a reset as a restart).

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};

use crate::model::{Task, TaskStatus};

/// A task's family (empty for a task run without a definition) and the status it entered.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TaskChange {
    pub family: String,
    pub status: String,
}

/// The `source` of events appended to the log.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventSource {
    pub source: String,
}

/// The source of the events the store writes with task changes.
const TASK_EVENTS: &str = skiff_model::lifecycle::TASK_SOURCE;

#[derive(Clone, Debug)]
pub struct StoreMetrics {
    /// How long each group commit's flush (fsync) took.
    pub flush_seconds: Histogram,
    /// Tasks that entered each status, by family.
    pub task_changes: Family<TaskChange, Counter>,
    /// From a task's creation to its RUNNING.
    pub start_seconds: Histogram,
    /// Tasks given a node.
    pub placements: Counter,
    /// Tasks that reached RUNNING (the dashboard plots its rate; `task_changes` has it by
    /// family for Prometheus).
    pub started: Counter,
    /// Events appended to the log, by source.
    pub events: Family<EventSource, Counter>,
}

impl Default for StoreMetrics {
    fn default() -> Self {
        StoreMetrics {
            // 50 µs … ~1.6 s.
            flush_seconds: Histogram::new(exponential_buckets(0.00005, 2.0, 16)),
            task_changes: Family::default(),
            // 5 ms … ~82 s: a warm start, an image pull, a long wait for capacity.
            start_seconds: Histogram::new(exponential_buckets(0.005, 2.0, 15)),
            placements: Counter::default(),
            started: Counter::default(),
            events: Family::default(),
        }
    }
}

impl StoreMetrics {
    /// Counts a task write: `before` is the task's status and whether it had a node before
    /// the write (None for a new task).
    pub(super) fn task_written(
        &self,
        before: Option<(TaskStatus, bool)>,
        task: &Task,
        event: bool,
    ) {
        let (was, was_placed) = before.map_or((None, false), |(s, p)| (Some(s), p));
        if was != Some(task.status) {
            self.task_changes
                .get_or_create(&TaskChange {
                    family: task.family().unwrap_or_default().to_string(),
                    status: task.status.as_str().to_string(),
                })
                .inc();
            if task.status == TaskStatus::Running {
                self.started.inc();
            }
            if task.status == TaskStatus::Running && task.started_at_ms >= task.created_at_ms {
                self.start_seconds
                    .observe((task.started_at_ms - task.created_at_ms) as f64 / 1000.0);
            }
        }
        if !was_placed && task.node_id.is_some() {
            self.placements.inc();
        }
        if event {
            self.event_appended(TASK_EVENTS);
        }
    }

    pub(super) fn event_appended(&self, source: &str) {
        self.events
            .get_or_create(&EventSource {
                source: source.to_string(),
            })
            .inc();
    }

    /// Adds these metrics (shared, not copied) to a scrape's registry.
    pub fn register(&self, reg: &mut Registry) {
        reg.register_with_unit(
            "skiff_store_flush",
            "Time each durable commit of the state store took (one fsync for every writer waiting)",
            Unit::Seconds,
            self.flush_seconds.clone(),
        );
        reg.register(
            "skiff_task_status_changes",
            "Tasks that entered each status since the controller started, by task-definition family",
            self.task_changes.clone(),
        );
        reg.register_with_unit(
            "skiff_task_start",
            "Time from a task's creation to its RUNNING (placement, image, container start)",
            Unit::Seconds,
            self.start_seconds.clone(),
        );
        reg.register(
            "skiff_placements",
            "Tasks placed on a node since the controller started",
            self.placements.clone(),
        );
        reg.register(
            "skiff_events",
            "Events appended to the durable event log since the controller started, by source",
            self.events.clone(),
        );
    }
}
