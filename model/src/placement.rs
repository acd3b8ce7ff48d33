//! Placement: which node gets a task. A pure function over a snapshot of nodes and what they
//! already run; the scheduler commits its answer.

use crate::model::{NodeState, TaskSpec};

/// A node as placement sees it: capacity and what is already reserved.
#[derive(Clone, Debug, PartialEq)]
pub struct NodeLoad {
    pub id: String,
    pub state: NodeState,
    pub connected: bool,
    pub cpu: f64,
    pub memory_mib: u64,
    pub cpu_used: f64,
    pub memory_used_mib: u64,
}

impl NodeLoad {
    fn fits(&self, cpu: f64, memory_mib: u64) -> bool {
        // A small epsilon so 4 × 0.25 vCPU fits in 1 vCPU despite float rounding.
        self.cpu_used + cpu <= self.cpu + 1e-9
            && self.memory_used_mib + memory_mib <= self.memory_mib
    }

    /// Reserves a placed task's resources, so the next decision in the same pass sees them.
    pub fn reserve(&mut self, spec: &TaskSpec) {
        self.cpu_used += spec.cpu();
        self.memory_used_mib += spec.memory_mib();
    }
}

/// Why a task was not placed in this pass.
#[derive(Clone, Debug, PartialEq)]
pub struct Unplaced {
    /// For people: what is missing.
    pub reason: String,
    /// No connected node could ever fit it (too big for the largest): a wait for it never
    /// ends unless a bigger node joins.
    pub never: bool,
}

impl std::fmt::Display for Unplaced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.reason)
    }
}

/// Picks the first READY, connected node with room for the task, or says why none fits.
pub fn place<'a>(spec: &TaskSpec, nodes: &'a [NodeLoad]) -> Result<&'a NodeLoad, Unplaced> {
    let (cpu, mem) = (spec.cpu(), spec.memory_mib());
    let ready: Vec<&NodeLoad> = nodes
        .iter()
        .filter(|n| n.connected && n.state == NodeState::Ready)
        .collect();
    if ready.is_empty() {
        return Err(Unplaced {
            reason: "no READY agent is connected".to_string(),
            never: false,
        });
    }
    if let Some(n) = ready.iter().find(|n| n.fits(cpu, mem)) {
        return Ok(n);
    }
    let biggest = ready
        .iter()
        .any(|n| n.cpu + 1e-9 >= cpu && n.memory_mib >= mem);
    if biggest {
        return Err(Unplaced {
            reason: format!(
                "no node has {cpu} vCPU and {mem} MiB free right now; waiting for capacity"
            ),
            never: false,
        });
    }
    let max_cpu = ready.iter().map(|n| n.cpu).fold(0.0, f64::max);
    let max_mem = ready.iter().map(|n| n.memory_mib).max().unwrap_or(0);
    Err(Unplaced {
        reason: format!(
            "no node can ever fit {cpu} vCPU and {mem} MiB (the largest connected node has {max_cpu} vCPU and {max_mem} MiB)"
        ),
        never: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::spec;

    fn node(id: &str, cpu: f64, mem: u64) -> NodeLoad {
        NodeLoad {
            id: id.into(),
            state: NodeState::Ready,
            connected: true,
            cpu,
            memory_mib: mem,
            cpu_used: 0.0,
            memory_used_mib: 0,
        }
    }

    #[test]
    fn first_fitting_node_wins() {
        let nodes = vec![node("a", 1.0, 256), node("b", 4.0, 4096)];
        assert_eq!(place(&spec(2.0, 128), &nodes).unwrap().id, "b");
        assert_eq!(place(&spec(0.5, 128), &nodes).unwrap().id, "a");
    }

    #[test]
    fn reservations_fill_a_node() {
        let mut nodes = vec![node("a", 1.0, 1024), node("b", 1.0, 1024)];
        for _ in 0..4 {
            let id = place(&spec(0.25, 10), &nodes).unwrap().id.clone();
            assert_eq!(id, "a");
            nodes[0].reserve(&spec(0.25, 10));
        }
        assert_eq!(place(&spec(0.25, 10), &nodes).unwrap().id, "b");
    }

    #[test]
    fn draining_and_disconnected_nodes_get_nothing() {
        let mut a = node("a", 8.0, 8192);
        a.state = NodeState::Draining;
        let mut b = node("b", 8.0, 8192);
        b.connected = false;
        let err = place(&spec(1.0, 1), &[a, b]).unwrap_err();
        assert!(err.reason.contains("no READY agent"), "{err}");
        assert!(!err.never, "an agent may still connect");
    }

    #[test]
    fn too_big_says_so() {
        let err = place(&spec(16.0, 1), &[node("a", 2.0, 100)]).unwrap_err();
        assert!(err.reason.contains("can ever fit"), "{err}");
        assert!(
            err.reason
                .contains("largest connected node has 2 vCPU and 100 MiB"),
            "{err}"
        );
        assert!(err.never);
        let mut busy = node("a", 2.0, 100);
        busy.cpu_used = 2.0;
        let err = place(&spec(1.0, 1), &[busy]).unwrap_err();
        assert!(err.reason.contains("waiting for capacity"), "{err}");
        assert!(!err.never);
    }
}
