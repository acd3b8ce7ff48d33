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
        match pass(&core).await {
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

/// One pass: lost nodes' tasks, then the waiting tasks a window at a time (oldest first)
/// until a window places something (`placement::plan_window`). Returns whether windows are
/// left after it.
async fn pass(core: &Core) -> Result<bool, CoreError> {
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
    let waiting = core.store.waiting_tasks()?;
    let mut more = false;
    if !waiting.is_empty() || !on_lost.is_empty() {
        let nodes = if waiting.is_empty() {
            vec![]
        } else {
            node_loads(core, core.store.node_reservations())?
        };
        let snapshot = Snapshot {
            waiting: waiting.iter().map(|t| Waiting::of(t)).collect(),
            nodes,
            on_lost_nodes: on_lost
                .iter()
                .filter_map(|t| Some((t.id.as_str(), t.node_id.as_deref()?)))
                .collect(),
            node_timeout_secs: core.timing.node_timeout.as_secs(),
        };
        let (steps, left) = placement::plan_window(&snapshot, PLAN_WINDOW);
        applier::apply(core, steps).await?;
        more = left;
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
