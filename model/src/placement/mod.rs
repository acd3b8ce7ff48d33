//! Placement: which node gets a task, and what a pass of the placer does. Pure functions over
//! a snapshot of nodes and what they already run; `plan` returns every step of a pass (place,
//! keep waiting with a reason, lose a task whose node is gone) and the controller's applier
//! commits the plan in one group commit before it tells any agent. `choose.rs` picks one
//! node for one task: which nodes may take it, which of those goes first, and why none did.

use std::collections::{BTreeMap, BTreeSet};

use crate::model::{NodeState, PortProtocol, TaskSpec};

mod choose;
pub use choose::{attribute, place, place_in};

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
    /// The node's labels, for placement constraints.
    pub labels: BTreeMap<String, String>,
    /// How many active tasks of each group it runs, for spreading a service.
    pub groups: BTreeMap<String, u32>,
    /// Host ports its active tasks publish: a task that publishes one of them goes elsewhere
    /// (or waits).
    pub ports: BTreeSet<(u16, PortProtocol)>,
}

impl NodeLoad {
    fn fits(&self, cpu: f64, memory_mib: u64) -> bool {
        // A small epsilon so 4 × 0.25 vCPU fits in 1 vCPU despite float rounding.
        self.cpu_used + cpu <= self.cpu + 1e-9
            && self.memory_used_mib + memory_mib <= self.memory_mib
    }

    /// Reserves a placed task's resources, so the next decision in the same pass sees them.
    pub fn reserve(&mut self, spec: &TaskSpec, group: &str) {
        self.cpu_used += spec.cpu();
        self.memory_used_mib += spec.memory_mib();
        *self.groups.entry(group.to_string()).or_default() += 1;
        self.ports.extend(host_ports(spec));
    }

    /// Whether none of these host ports is taken here.
    fn ports_free(&self, wanted: &[(u16, PortProtocol)]) -> bool {
        wanted.iter().all(|p| !self.ports.contains(p))
    }
}

/// The host ports a task publishes.
pub fn host_ports(spec: &TaskSpec) -> Vec<(u16, PortProtocol)> {
    spec.containers
        .iter()
        .flat_map(|c| &c.port_mappings)
        .map(|p| (p.host_port, p.protocol))
        .collect()
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

/// A PROVISIONING task as the planner sees it.
#[derive(Clone, Debug)]
pub struct Waiting<'a> {
    pub id: &'a str,
    /// Its task group (a service spreads its own).
    pub group: &'a str,
    pub spec: &'a TaskSpec,
    /// Why it waited in the last pass (recorded on the task), to write only what changed.
    pub reason: &'a str,
    pub unplaceable: bool,
}

/// What a placer pass sees.
#[derive(Clone, Debug, Default)]
pub struct Snapshot<'a> {
    /// Tasks to place, oldest first.
    pub waiting: Vec<Waiting<'a>>,
    /// Every known node with what it has reserved.
    pub nodes: Vec<NodeLoad>,
    /// Active tasks on nodes silent past the node timeout: (task, node).
    pub on_lost_nodes: Vec<(&'a str, &'a str)>,
    /// The node timeout, for the reason a lost task gets.
    pub node_timeout_secs: u64,
}

/// One step of a plan.
#[derive(Clone, Debug, PartialEq)]
pub enum Step {
    /// PROVISIONING → PENDING on the node; then the node is sent the task.
    Place { task: String, node: String },
    /// Still waiting; the reason changed, so it is recorded.
    Wait { task: String, why: Unplaced },
    /// Its node is gone: STOPPED with NodeLost.
    Lose {
        task: String,
        node: String,
        reason: String,
    },
}

/// Every step of one placer pass: tasks on lost nodes are lost; each waiting task, oldest
/// first, goes to the node `place_in` picks (reserving it there, so the next decision sees
/// it) or keeps waiting with its reason.
pub fn plan(s: &Snapshot) -> Vec<Step> {
    let mut steps: Vec<Step> = s
        .on_lost_nodes
        .iter()
        .map(|(task, node)| Step::Lose {
            task: task.to_string(),
            node: node.to_string(),
            reason: format!(
                "node {node} was silent for more than {}s",
                s.node_timeout_secs
            ),
        })
        .collect();
    let mut nodes = s.nodes.clone();
    for w in &s.waiting {
        match place_in(w.spec, w.group, &nodes) {
            Ok(n) => {
                let node = n.id.clone();
                if let Some(load) = nodes.iter_mut().find(|l| l.id == node) {
                    load.reserve(w.spec, w.group);
                }
                steps.push(Step::Place {
                    task: w.id.to_string(),
                    node,
                });
            }
            Err(why) if why.reason != w.reason || why.never != w.unplaceable => {
                steps.push(Step::Wait {
                    task: w.id.to_string(),
                    why,
                });
            }
            Err(_) => {}
        }
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::PlacementConstraint;
    use crate::testing::spec;

    pub(super) fn node(id: &str, cpu: f64, mem: u64) -> NodeLoad {
        NodeLoad {
            id: id.into(),
            state: NodeState::Ready,
            connected: true,
            cpu,
            memory_mib: mem,
            cpu_used: 0.0,
            memory_used_mib: 0,
            labels: BTreeMap::new(),
            groups: BTreeMap::new(),
            ports: BTreeSet::new(),
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
            nodes[0].reserve(&spec(0.25, 10), "g");
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
    fn a_plan_loses_tasks_of_lost_nodes_places_in_order_and_records_only_new_reasons() {
        let (small, big) = (spec(1.0, 10), spec(8.0, 10));
        let w = |id, spec, reason| Waiting {
            id,
            group: "g",
            spec,
            reason,
            unplaceable: false,
        };
        let snapshot = Snapshot {
            waiting: vec![
                w("t1", &small, ""),
                w("t2", &small, ""),
                // Does not fit now; its recorded reason is already this one: no step.
                w(
                    "t3",
                    &small,
                    "no node has 1 vCPU and 10 MiB free right now; waiting for capacity \
                     (of 1 nodes: 1 without room)",
                ),
                w("t4", &big, ""),
            ],
            nodes: vec![node("a", 2.0, 100)],
            on_lost_nodes: vec![("old", "gone")],
            node_timeout_secs: 30,
        };
        let steps = plan(&snapshot);
        assert_eq!(
            steps[..3],
            [
                Step::Lose {
                    task: "old".into(),
                    node: "gone".into(),
                    reason: "node gone was silent for more than 30s".into()
                },
                Step::Place {
                    task: "t1".into(),
                    node: "a".into()
                },
                Step::Place {
                    task: "t2".into(),
                    node: "a".into()
                },
            ]
        );
        assert_eq!(steps.len(), 4, "{steps:?}");
        match &steps[3] {
            Step::Wait { task, why } => {
                assert_eq!(task, "t4");
                assert!(why.never, "{why}");
            }
            other => panic!("{other:?}"),
        }
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

    #[test]
    fn constraints_pick_nodes_by_label_and_spread_evens_out_a_group() {
        let labelled = |id: &str, zone: &str| {
            let mut n = node(id, 4.0, 4096);
            n.labels.insert("zone".into(), zone.into());
            n
        };
        let mut nodes = vec![
            labelled("a", "east"),
            labelled("b", "west"),
            labelled("c", "west"),
        ];
        let mut s = spec(0.25, 10);
        s.placement.constraints = vec![PlacementConstraint {
            label: "zone".into(),
            value: "west".into(),
            not: false,
            values: vec![],
        }];
        assert_eq!(place_in(&s, "svc", &nodes).unwrap().id, "b");
        s.placement.constraints[0].not = true;
        assert_eq!(place_in(&s, "svc", &nodes).unwrap().id, "a");
        s.placement.constraints[0].value = "east".into();
        s.placement.constraints[0].not = false;
        s.placement.constraints[0].label = "disk".into();
        let err = place_in(&s, "svc", &nodes).unwrap_err();
        assert!(
            err.reason.contains("placement constraints disk == east"),
            "{err}"
        );
        assert!(!err.never);

        // Spread: six tasks of one group over three nodes, two each, whatever the order.
        s.placement.constraints.clear();
        s.placement.spread = true;
        for _ in 0..6 {
            let id = place_in(&s, "svc", &nodes).unwrap().id.clone();
            nodes
                .iter_mut()
                .find(|n| n.id == id)
                .unwrap()
                .reserve(&s, "svc");
        }
        let counts: Vec<u32> = nodes.iter().map(|n| n.groups["svc"]).collect();
        assert_eq!(counts, [2, 2, 2]);
        // Without spread, bin-pack: every node is as full, so the first takes it.
        s.placement.spread = false;
        assert_eq!(place_in(&s, "svc", &nodes).unwrap().id, "a");
    }

    #[test]
    fn a_taken_host_port_sends_the_task_elsewhere_or_keeps_it_waiting() {
        use crate::model::{NetworkMode, PortMapping};
        let mut web = spec(0.5, 64);
        web.network_mode = NetworkMode::Bridge;
        web.containers[0].port_mappings = vec![PortMapping {
            container_port: 80,
            host_port: 8080,
            protocol: PortProtocol::Tcp,
        }];
        let mut nodes = vec![node("a", 4.0, 4096), node("b", 4.0, 4096)];
        nodes[0].reserve(&web, "g");
        // Node a publishes 8080/tcp already: the second goes to b.
        assert_eq!(place_in(&web, "g", &nodes).unwrap().id, "b");
        nodes[1].reserve(&web, "g");
        let why = place_in(&web, "g", &nodes).unwrap_err();
        assert!(why.reason.contains("8080/tcp is taken"), "{why}");
        assert!(!why.never);
        // Another port, or the same number over UDP, fits anywhere.
        web.containers[0].port_mappings[0].protocol = PortProtocol::Udp;
        assert_eq!(place_in(&web, "g", &nodes).unwrap().id, "a");
        // In one pass, two tasks publishing the same port land on different nodes.
        let fresh = vec![node("a", 4.0, 4096), node("b", 4.0, 4096)];
        let waiting: Vec<Waiting> = ["t1", "t2", "t3"]
            .iter()
            .map(|id| Waiting {
                id,
                group: "g",
                spec: &web,
                reason: "",
                unplaceable: false,
            })
            .collect();
        let steps = plan(&Snapshot {
            waiting,
            nodes: fresh,
            ..Default::default()
        });
        let placed: Vec<_> = steps
            .iter()
            .filter_map(|s| match s {
                Step::Place { node, .. } => Some(node.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(placed, ["a", "b"]);
        assert!(matches!(&steps[2], Step::Wait { task, .. } if task == "t3"));
    }
}
