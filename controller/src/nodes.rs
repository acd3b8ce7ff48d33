//! Node operations in the core layer: an agent's registration (a node is Ready again when it
//! comes back; its first registration time is kept) and the revocation of its certificates.

use std::collections::BTreeMap;

use crate::core::{Core, CoreError};
use crate::model::{Node, NodeCert, NodeState};

/// What an agent says about its node when it connects.
pub struct Registration {
    pub node_id: String,
    pub labels: BTreeMap<String, String>,
    pub cpu: f64,
    pub memory_mib: u64,
    pub version: String,
}

/// Records a connecting agent's node. Durable on return.
pub async fn register(core: &Core, reg: Registration) -> Result<Node, CoreError> {
    let now = core.clock.now_ms();
    Ok(core
        .store
        .nodes
        .upsert(reg.node_id.clone(), |prior| Node {
            id: reg.node_id.clone(),
            labels: reg.labels.clone(),
            cpu: reg.cpu,
            memory_mib: reg.memory_mib,
            state: prior.as_ref().map_or(NodeState::Ready, |p| match p.state {
                NodeState::Down => NodeState::Ready,
                s => s,
            }),
            version: reg.version.clone(),
            registered_at_ms: prior.as_ref().map_or(now, |p| p.registered_at_ms),
            last_seen_ms: now,
        })
        .await?)
}

/// The detail-type of the event a node's state change puts on the bus.
pub const NODE_STATE_CHANGE: &str = "Node State Change";
/// The source of those events.
pub const NODE_SOURCE: &str = "skiff.nodes";

/// Sets whether `nodes` take tasks (READY, CORDONED, DRAINING), all in one write; returns
/// each node's state before, or Err(the first node that does not exist) with nothing
/// written. A `Node State Change` event goes on the bus for each node that changed, and the
/// placer and the service loop are woken: an uncordoned node may take waiting tasks, a
/// draining one's service tasks are replaced.
pub async fn set_state(
    core: &Core,
    nodes: &[String],
    state: NodeState,
) -> Result<Result<Vec<(String, NodeState)>, String>, CoreError> {
    let mut before = Vec::with_capacity(nodes.len());
    let written = core
        .store
        .nodes
        .update_many(nodes, |n| {
            before.push((n.id.clone(), n.state));
            n.state = state;
        })
        .await?;
    if let Err(missing) = written {
        return Ok(Err(missing));
    }
    // A retried transaction calls the change again: the last len() calls are the ones written.
    let before = before.split_off(before.len() - nodes.len());
    let now = core.clock.now_ms();
    let events: Vec<crate::model::Event> = before
        .iter()
        .filter(|(_, was)| *was != state)
        .map(|(node, was)| crate::model::Event {
            id: String::new(),
            source: NODE_SOURCE.to_string(),
            detail_type: NODE_STATE_CHANGE.to_string(),
            replay: None,
            time_ms: now,
            resources: vec![format!("node/{node}")],
            detail: serde_json::json!({
                "node": node, "state": state.as_str(), "previous_state": was.as_str(),
            }),
        })
        .collect();
    if !events.is_empty() {
        crate::events::put(core, events).await?;
        core.loops.wake(crate::wake::Loop::Placer);
        core.loops.wake(crate::wake::Loop::Services);
    }
    Ok(Ok(before))
}

/// Revokes every certificate of a node still valid; returns how many. None: no such node.
pub async fn revoke_certificates(core: &Core, node: &str) -> Result<Option<u32>, CoreError> {
    if core.store.nodes.get(node)?.is_none() {
        return Ok(None);
    }
    let now = core.clock.now_ms();
    let mut revoked = 0;
    for c in core.store.node_certs.list()? {
        if c.node_id == node && c.revoked_ms == 0 {
            core.store
                .node_certs
                .update(&c.fingerprint, |c| {
                    c.revoked_ms = now;
                    Ok::<(), ()>(())
                })
                .await?
                .ok();
            revoked += 1;
        }
    }
    Ok(Some(revoked))
}

/// Records a certificate just issued to a node (checked at every agent connection).
pub async fn record_certificate(
    core: &Core,
    node_id: &str,
    fingerprint: String,
    issued_ms: i64,
) -> Result<(), CoreError> {
    let cert = NodeCert {
        fingerprint,
        node_id: node_id.to_string(),
        issued_ms,
        revoked_ms: 0,
    };
    Ok(core.store.node_certs.put(&cert).await?)
}
