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
    /// For people: what is missing, then how many nodes each cause excluded, in brackets.
    pub reason: String,
    /// The part of `reason` before the counts: what a pass compares while it places other
    /// tasks (the counts change with every placement; rewriting every waiting task for them
    /// in each such pass would cost more than the placements).
    pub headline: String,
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

impl<'a> Waiting<'a> {
    /// A PROVISIONING task as the planner sees it.
    pub fn of(t: &'a crate::model::Task) -> Waiting<'a> {
        Waiting {
            id: &t.id,
            group: &t.group,
            spec: &t.spec,
            reason: &t.status_reason,
            unplaceable: t.unplaceable,
        }
    }
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

/// Whether a node chosen for a task stays the best for the next task of the same spec (see
/// `plan`): bin-pack ranks by what is left, which only falls on the node chosen.
fn keeps_its_node(spec: &TaskSpec) -> bool {
    let p = &spec.placement;
    p.strategy == crate::model::PlacementStrategy::Binpack
        && !p.spread
        && !p.distinct_nodes
        && p.spread_over.is_empty()
        && host_ports(spec).is_empty()
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
    let mut waits = Vec::new();
    let mut placed = false;
    // The previous task's answer, reused for the next task of the same spec and group (a
    // burst is mostly alike; each answer looks at every node): a node it went to stays the
    // best for the next while it has room when what ranks nodes does not change as they
    // fill (bin-pack without spread, distinct nodes or ports), and a task that fit nowhere
    // still fits nowhere (within a pass, nodes only fill).
    let mut last: Option<(&Waiting, Result<usize, Unplaced>)> = None;
    for w in &s.waiting {
        let reuse = last
            .as_ref()
            .filter(|(prev, _)| {
                prev.group == w.group && (std::ptr::eq(prev.spec, w.spec) || prev.spec == w.spec)
            })
            .and_then(|(_, answer)| match answer {
                Ok(i)
                    if keeps_its_node(w.spec)
                        && nodes[*i].fits(w.spec.cpu(), w.spec.memory_mib()) =>
                {
                    Some(Ok(*i))
                }
                Err(why) => Some(Err(why.clone())),
                Ok(_) => None,
            });
        let answer = reuse.unwrap_or_else(|| choose::choose(w.spec, w.group, &nodes));
        last = Some((w, answer.clone()));
        match answer {
            Ok(i) => {
                nodes[i].reserve(w.spec, w.group);
                placed = true;
                steps.push(Step::Place {
                    task: w.id.to_string(),
                    node: nodes[i].id.clone(),
                });
            }
            Err(why) if why.reason != w.reason || why.never != w.unplaceable => {
                waits.push((w, why));
            }
            Err(_) => {}
        }
    }
    // A reason is rewritten when it changed; in a pass that placed tasks, only when more
    // than its counts did (the next quiet pass brings the counts up to date).
    for (w, why) in waits {
        let same_headline = w
            .reason
            .strip_prefix(why.headline.as_str())
            .is_some_and(|rest| rest.starts_with(" ("));
        if placed && same_headline && why.never == w.unplaceable {
            continue;
        }
        steps.push(Step::Wait {
            task: w.id.to_string(),
            why,
        });
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

    #[test]
    fn a_pass_that_places_rewrites_a_waiting_reason_only_when_more_than_its_counts_changed() {
        let one = spec(1.0, 10);
        let stale = "no node has 1 vCPU and 10 MiB free right now; waiting for capacity \
                     (of 1 nodes: 1 not connected)";
        let w = |id, reason| Waiting {
            id,
            group: "g",
            spec: &one,
            reason,
            unplaceable: false,
        };
        let snapshot = |waiting| Snapshot {
            waiting,
            nodes: vec![node("a", 1.0, 100)],
            ..Default::default()
        };
        // t1 takes the last room; t2's counts changed but its headline did not: not written.
        let steps = plan(&snapshot(vec![w("t1", ""), w("t2", stale), w("t3", "")]));
        let waited: Vec<&str> = steps
            .iter()
            .filter_map(|s| match s {
                Step::Wait { task, .. } => Some(task.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(waited, ["t3"], "t3 had no reason yet: {steps:?}");
        // A pass that places nothing brings the counts up to date.
        let mut full = node("a", 1.0, 100);
        full.cpu_used = 1.0;
        let steps = plan(&Snapshot {
            waiting: vec![w("t2", stale)],
            nodes: vec![full],
            ..Default::default()
        });
        match &steps[..] {
            [Step::Wait { task, why }] => {
                assert_eq!(task, "t2");
                assert!(
                    why.reason.ends_with("(of 1 nodes: 1 without room)"),
                    "{why}"
                );
            }
            other => panic!("{other:?}"),
        }
    }

    /// `plan` reuses an answer for the next task of the same spec and group; it must place
    /// exactly as asking `place_in` for every task would, for every kind of placement.
    #[test]
    fn a_plan_places_as_asking_for_every_task_would() {
        use crate::model::{NetworkMode, PlacementStrategy, PortMapping};
        let mut seed = 0x2545_f491_u64;
        let mut next = move |n: u64| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) % n
        };
        for round in 0..200 {
            let mut specs = Vec::new();
            for k in 0..4 {
                let mut sp = spec(
                    [0.25, 0.5, 1.0, 2.0][next(4) as usize],
                    [16, 64, 512][next(3) as usize],
                );
                match (round + k) % 6 {
                    1 => sp.placement.spread = true,
                    2 => sp.placement.distinct_nodes = true,
                    3 => sp.placement.strategy = PlacementStrategy::Spread,
                    4 => sp.placement.spread_over = "zone".into(),
                    5 => {
                        sp.network_mode = NetworkMode::Bridge;
                        sp.containers[0].port_mappings = vec![PortMapping {
                            container_port: 80,
                            host_port: 8000 + next(3) as u16,
                            protocol: PortProtocol::Tcp,
                        }];
                    }
                    _ => {}
                }
                specs.push(sp);
            }
            let nodes: Vec<NodeLoad> = (0..12)
                .map(|i| {
                    let mut n = node(&format!("n{i}"), [1.0, 2.0, 4.0][next(3) as usize], 1024);
                    n.cpu_used = [0.0_f64, 0.5, 1.0][next(3) as usize].min(n.cpu);
                    n.labels.insert("zone".into(), format!("z{}", next(3)));
                    n.connected = next(10) > 0;
                    n
                })
                .collect();
            let ids: Vec<String> = (0..40).map(|i| format!("t{i}")).collect();
            // Runs of alike tasks, as bursts are.
            let mut which = 0;
            let waiting: Vec<Waiting> = ids
                .iter()
                .map(|id| {
                    if next(4) == 0 {
                        which = next(4) as usize;
                    }
                    Waiting {
                        id,
                        group: if which % 2 == 0 { "g1" } else { "g2" },
                        spec: &specs[which],
                        reason: "",
                        unplaceable: false,
                    }
                })
                .collect();
            let mut reference = nodes.clone();
            let mut expected = Vec::new();
            for w in &waiting {
                if let Ok(n) = place_in(w.spec, w.group, &reference) {
                    let id = n.id.clone();
                    let i = reference.iter().position(|x| x.id == id).unwrap();
                    reference[i].reserve(w.spec, w.group);
                    expected.push((w.id.to_string(), id));
                }
            }
            let got: Vec<(String, String)> = plan(&Snapshot {
                waiting,
                nodes,
                ..Default::default()
            })
            .into_iter()
            .filter_map(|s| match s {
                Step::Place { task, node } => Some((task, node)),
                _ => None,
            })
            .collect();
            assert_eq!(got, expected, "round {round}");
        }
    }
}
