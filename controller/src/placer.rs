//! The placer: the loop that places PROVISIONING tasks on nodes and declares silent nodes lost.
//! It reads a snapshot through the store's indexes, asks the pure `placement::plan` what to
//! do, and hands the plan to the applier (which commits it, then tells the agents).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tracing::warn;

use crate::applier;
use crate::core::{Core, CoreError};
use crate::store::{NodeReserved, TaskFilter};
use crate::wake::Loop;
use skiff_model::placement::{self, NodeLoad, Snapshot, Waiting};

/// How often the loop runs even when nothing kicked it (node timeouts, retries).
const TICK: Duration = Duration::from_millis(1000);

/// At most this many waiting tasks are decided in one plan: each plan is one transaction,
/// so a burst of 100,000 is committed (and its Starts sent) a window at a time, not held in
/// one write.
const PLAN_WINDOW: usize = 2048;

pub async fn run(core: Arc<Core>, mut stop: watch::Receiver<bool>) {
    loop {
        if *stop.borrow() {
            return;
        }
        let next_tick = core.clock.now_ms() + TICK.as_millis() as i64;
        match pass(&core, PLAN_WINDOW).await {
            // More windows wait: the next pass now.
            Ok(true) => continue,
            Ok(false) => {}
            Err(e) => warn!(error = %e, "placement pass failed"),
        }
        tokio::select! {
            _ = core.loops.woken(Loop::Placer) => {}
            _ = stop.changed() => {}
            _ = core.clock.sleep_until(next_tick) => {}
        }
    }
}

/// One pass: lost nodes' tasks, then the waiting tasks a window at a time (oldest first,
/// read from the waiting index one window at a time) until a window places something.
/// Returns whether windows are left after it.
async fn pass(core: &Core, window_size: usize) -> Result<bool, CoreError> {
    // Read through the indexes: the tasks to place, the tasks on lost nodes (by node), and
    // only when there is something to place, what every node has reserved.
    let lost = core.lost_nodes();
    let mut on_lost = Vec::new();
    for node in &lost {
        let filter = TaskFilter {
            node: Some(node.clone()),
            ..Default::default()
        };
        on_lost.extend(
            core.store
                .list_tasks(&filter, 0)?
                .0
                .into_iter()
                .filter(|t| t.status.is_active()),
        );
    }
    // Built once per pass: a window that places nothing reserves nothing, so the next one
    // sees the same loads (they move into each snapshot and back out of it).
    let mut nodes: Option<Vec<NodeLoad>> = None;
    let mut after: Option<String> = None;
    let mut more = false;
    loop {
        let window = core
            .store
            .waiting_tasks_after(after.as_deref(), window_size)?;
        let first = after.is_none();
        if window.is_empty() && (!first || on_lost.is_empty()) {
            break;
        }
        if nodes.is_none() && !window.is_empty() {
            nodes = Some(node_loads(core, core.store.node_reservations())?);
        }
        let full = window.len() == window_size;
        let snapshot = Snapshot {
            waiting: window.iter().map(|t| Waiting::of(t)).collect(),
            nodes: nodes.take().unwrap_or_default(),
            // Lost nodes' tasks are decided with the first window.
            on_lost_nodes: on_lost
                .iter()
                .filter(|_| first)
                .filter_map(|t| Some((t.id.as_str(), t.node_id.as_deref()?)))
                .collect(),
            node_timeout_secs: core.timing.node_timeout.as_secs(),
        };
        let steps = placement::plan(&snapshot);
        nodes = Some(snapshot.nodes);
        let placed = steps
            .iter()
            .any(|s| matches!(s, placement::Step::Place { .. }));
        applier::apply(core, steps).await?;
        if placed || !full {
            more = placed && full;
            break;
        }
        // Nothing in this window fits anywhere: the next one may.
        after = window.last().map(|t| t.id.clone());
    }
    for node in lost {
        core.forget_node_timer(&node);
    }
    Ok(more)
}

/// Capacity and reservations of every known node, from the store's kept sums
/// (`Store::node_reservations`) and the live sessions.
pub fn node_loads(
    core: &Core,
    mut reserved: HashMap<String, NodeReserved>,
) -> Result<Vec<NodeLoad>, CoreError> {
    let mut nodes = core.store.nodes.list()?;
    nodes.sort_by(|a, b| {
        a.registered_at_ms
            .cmp(&b.registered_at_ms)
            .then(a.id.cmp(&b.id))
    });
    Ok(nodes
        .into_iter()
        .map(|n| {
            let r = reserved.remove(&n.id).unwrap_or_default();
            NodeLoad {
                connected: core.is_connected(&n.id),
                groups: r.groups,
                // Its tasks' published ports, and those other processes hold there.
                ports: r.ports.into_iter().chain(core.host_ports(&n.id)).collect(),
                labels: n.labels,
                id: n.id,
                state: n.state,
                cpu: n.cpu,
                memory_mib: n.memory_mib,
                cpu_used: r.cpu,
                memory_used_mib: r.memory_mib,
            }
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Task;
    use skiff_model::lifecycle::TaskStatus;

    /// Windows of two over t0..t6 on one node of 2 vCPU: t0..t3 fit nowhere, t4..t6 do.
    /// The windows [t0 t1] and [t2 t3] place nothing (their reasons are written) and do not
    /// hold back [t4 t5], which ends the pass saying more wait; the next pass places t6.
    #[tokio::test]
    async fn a_window_that_places_nothing_does_not_hold_back_the_next() {
        let dir = tempfile::tempdir().unwrap();
        let core = Core::new(
            crate::store::Store::open(&dir.path().join("store")).unwrap(),
            crate::NodeTiming::default(),
            crate::clock::Clock::system(),
            crate::sealing::SecretBox::open(dir.path()).unwrap(),
            crate::task_tokens::TaskTokenKey::open(dir.path()).unwrap(),
        );
        let registration = crate::nodes::Registration {
            node_id: "a".into(),
            labels: Default::default(),
            cpu: 2.0,
            memory_mib: 1024,
            version: "test".into(),
        };
        crate::nodes::register(&core, registration).await.unwrap();
        let (agent, _starts) = tokio::sync::mpsc::channel(16);
        core.attach("a", agent);
        for i in 0..7 {
            let cpu = if i < 4 { 64.0 } else { 0.5 };
            let spec = skiff_model::testing::spec(cpu, 16);
            let task = Task::new(format!("t{i}"), None, "g".into(), "t".into(), spec, 0);
            core.create_task(task).await.unwrap();
        }
        let status = |id: &str| core.store.task(id).unwrap().unwrap();

        assert!(
            pass(&core, 2).await.unwrap(),
            "t6 is left for the next pass"
        );
        for id in ["t4", "t5"] {
            assert_eq!(status(id).status, TaskStatus::Pending, "{id}");
        }
        for id in ["t0", "t1", "t2", "t3"] {
            let t = status(id);
            assert_eq!(t.status, TaskStatus::Provisioning, "{id}");
            assert!(!t.status_reason.is_empty(), "{id} waits with its reason");
        }
        assert_eq!(status("t6").status, TaskStatus::Provisioning);

        assert!(!pass(&core, 2).await.unwrap(), "nothing left that fits");
        assert_eq!(status("t6").status, TaskStatus::Pending);
    }
}
