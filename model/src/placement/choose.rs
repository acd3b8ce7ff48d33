//! One task, one node: which nodes may take the task (connected, READY, meeting its
//! constraints, not already running one of its group when it wants distinct nodes, with room
//! and its host ports free), which of those goes first (spread over a label, then over
//! nodes, then preferences, then bin-pack or spread by what is left), and — when none may —
//! why, with how many nodes each reason excluded, as Nomad reports it.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap};

use super::{host_ports, NodeLoad, Unplaced};
use crate::model::{NodeState, PlacementStrategy, TaskSpec};

/// The value of the node attribute a constraint names: `node.id`, or a label given as
/// `disk` or `node.labels.disk`. None: the node has no such label.
pub fn attribute<'a>(node: &'a NodeLoad, name: &str) -> Option<&'a str> {
    if name == "node.id" {
        return Some(&node.id);
    }
    let label = name.strip_prefix("node.labels.").unwrap_or(name);
    node.labels.get(label).map(String::as_str)
}

/// Picks a node for a task of no group.
pub fn place<'a>(spec: &TaskSpec, nodes: &'a [NodeLoad]) -> Result<&'a NodeLoad, Unplaced> {
    place_in(spec, "", nodes)
}

/// How many nodes each reason kept from taking the task.
#[derive(Default)]
struct Excluded {
    disconnected: usize,
    not_ready: usize,
    /// By the first constraint each node failed.
    constraint: BTreeMap<String, usize>,
    distinct: usize,
    no_room: usize,
    ports: usize,
}

impl Excluded {
    /// "of 5 nodes: 2 not connected, 1 excluded by disk == ssd, 2 without room".
    fn tally(&self, of: usize) -> String {
        let mut parts = Vec::new();
        let mut say = |n: usize, what: String| {
            if n > 0 {
                parts.push(format!("{n} {what}"));
            }
        };
        say(self.disconnected, "not connected".into());
        say(
            self.not_ready,
            "not READY (draining, cordoned or down)".into(),
        );
        for (c, n) in &self.constraint {
            say(*n, format!("excluded by {c}"));
        }
        say(self.distinct, "already running one of its group".into());
        say(self.no_room, "without room".into());
        say(self.ports, "with its host port taken".into());
        format!("of {of} nodes: {}", parts.join(", "))
    }
}

/// Picks a node for a task of `group` among those that may take it (see the module doc),
/// or says why none may.
pub fn place_in<'a>(
    spec: &TaskSpec,
    group: &str,
    nodes: &'a [NodeLoad],
) -> Result<&'a NodeLoad, Unplaced> {
    choose(spec, group, nodes).map(|i| &nodes[i])
}

/// `place_in`, answering with the node's index in `nodes`.
pub(super) fn choose(spec: &TaskSpec, group: &str, nodes: &[NodeLoad]) -> Result<usize, Unplaced> {
    let p = &spec.placement;
    let (cpu, mem) = (spec.cpu(), spec.memory_mib());
    let ports = host_ports(spec);
    let mut out = Excluded::default();
    // Nodes past state and constraints: the ones a wait may still end on.
    let mut qualified: Vec<&NodeLoad> = Vec::new();
    let mut candidates: Vec<usize> = Vec::new();
    for (i, n) in nodes.iter().enumerate() {
        if !n.connected {
            out.disconnected += 1;
            continue;
        }
        if n.state != NodeState::Ready {
            out.not_ready += 1;
            continue;
        }
        if let Some(c) = p
            .constraints
            .iter()
            .find(|c| !c.holds(attribute(n, &c.label)))
        {
            *out.constraint.entry(c.to_string()).or_default() += 1;
            continue;
        }
        qualified.push(n);
        if p.distinct_nodes && n.groups.get(group).copied().unwrap_or(0) > 0 {
            out.distinct += 1;
        } else if !n.fits(cpu, mem) {
            out.no_room += 1;
        } else if !n.ports_free(&ports) {
            out.ports += 1;
        } else {
            candidates.push(i);
        }
    }
    if !candidates.is_empty() {
        return Ok(best(spec, group, nodes, candidates));
    }
    let tally = out.tally(nodes.len());
    let waiting = |headline: String| Unplaced {
        reason: format!("{headline} ({tally})"),
        headline,
        never: false,
    };
    if out.disconnected + out.not_ready == nodes.len() {
        return Err(waiting("no READY agent is connected".into()));
    }
    if qualified.is_empty() {
        let wanted: Vec<String> = p.constraints.iter().map(|c| c.to_string()).collect();
        return Err(waiting(format!(
            "no connected READY node meets the placement constraints {}",
            wanted.join(", ")
        )));
    }
    if out.ports > 0 {
        let wanted: Vec<String> = ports
            .iter()
            .map(|(p, proto)| format!("{p}/{}", proto.as_str()))
            .collect();
        return Err(waiting(format!(
            "host port {} is taken on every node with room; waiting for it to be released",
            wanted.join(", ")
        )));
    }
    let could_fit = |n: &&NodeLoad| n.cpu + 1e-9 >= cpu && n.memory_mib >= mem;
    if out.no_room > 0 && qualified.iter().any(could_fit) {
        return Err(waiting(format!(
            "no node has {cpu} vCPU and {mem} MiB free right now; waiting for capacity"
        )));
    }
    if out.no_room == 0 {
        // Every qualified node runs one of the group already.
        return Err(waiting(format!(
            "every node that may take it already runs a task of {group} (distinct nodes); waiting for a node"
        )));
    }
    let max_cpu = qualified.iter().map(|n| n.cpu).fold(0.0, f64::max);
    let max_mem = qualified.iter().map(|n| n.memory_mib).max().unwrap_or(0);
    let headline = format!(
        "no node can ever fit {cpu} vCPU and {mem} MiB: the largest connected node has {max_cpu} vCPU and {max_mem} MiB"
    );
    Err(Unplaced {
        reason: format!("{headline} ({tally})"),
        headline,
        never: true,
    })
}

/// The candidate that goes first; among equals, the first in `nodes` order.
fn best(spec: &TaskSpec, group: &str, nodes: &[NodeLoad], candidates: Vec<usize>) -> usize {
    let p = &spec.placement;
    let (cpu, mem) = (spec.cpu(), spec.memory_mib());
    let of_group = |n: &NodeLoad| n.groups.get(group).copied().unwrap_or(0);
    // The group's tasks per value of the spread label, over every node (a zone counts
    // its tasks wherever they are, also on nodes that cannot take this one).
    let mut per_value: HashMap<&str, u32> = HashMap::new();
    if !p.spread_over.is_empty() {
        for n in nodes {
            let v = attribute(n, &p.spread_over).unwrap_or("");
            *per_value.entry(v).or_default() += of_group(n);
        }
    }
    let in_value = |n: &NodeLoad| {
        if p.spread_over.is_empty() {
            0
        } else {
            per_value[attribute(n, &p.spread_over).unwrap_or("")]
        }
    };
    let preferred = |n: &NodeLoad| -> u32 {
        p.preferences
            .iter()
            .filter(|pref| pref.constraint.holds(attribute(n, &pref.constraint.label)))
            .map(|pref| pref.weight)
            .sum()
    };
    let left = |n: &NodeLoad| {
        (
            n.cpu - n.cpu_used - cpu,
            n.memory_mib.saturating_sub(n.memory_used_mib + mem),
        )
    };
    let order = |a: &NodeLoad, b: &NodeLoad| -> Ordering {
        let by_room = || {
            let (ac, am) = left(a);
            let (bc, bm) = left(b);
            let fuller_first = ac.total_cmp(&bc).then(am.cmp(&bm));
            match p.strategy {
                PlacementStrategy::Binpack => fuller_first,
                PlacementStrategy::Spread => fuller_first.reverse(),
            }
        };
        in_value(a)
            .cmp(&in_value(b))
            .then_with(|| {
                if p.spread {
                    of_group(a).cmp(&of_group(b))
                } else {
                    Ordering::Equal
                }
            })
            .then_with(|| preferred(b).cmp(&preferred(a)))
            .then_with(by_room)
    };
    candidates
        .into_iter()
        .reduce(|best, n| {
            if order(&nodes[n], &nodes[best]) == Ordering::Less {
                n
            } else {
                best
            }
        })
        .expect("called with at least one candidate")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{PlacementConstraint, PlacementPreference};
    use crate::placement::tests::node;
    use crate::testing::spec;

    fn labelled(id: &str, label: &str, value: &str) -> NodeLoad {
        let mut n = node(id, 4.0, 4096);
        n.labels.insert(label.into(), value.into());
        n
    }

    fn is(label: &str, value: &str) -> PlacementConstraint {
        PlacementConstraint {
            label: label.into(),
            value: value.into(),
            not: false,
            values: vec![],
        }
    }

    /// Places `n` tasks of `group` one after another, reserving each; the nodes chosen.
    fn place_many(s: &TaskSpec, group: &str, nodes: &mut [NodeLoad], n: usize) -> Vec<String> {
        (0..n)
            .map(|_| {
                let id = place_in(s, group, nodes).unwrap().id.clone();
                nodes
                    .iter_mut()
                    .find(|x| x.id == id)
                    .unwrap()
                    .reserve(s, group);
                id
            })
            .collect()
    }

    #[test]
    fn binpack_fills_the_fullest_node_and_spread_the_emptiest() {
        let mut nodes = vec![node("a", 4.0, 4096), node("b", 4.0, 4096)];
        nodes[1].cpu_used = 1.0;
        let s = spec(1.0, 64);
        // Bin-pack (the default): b has less left, so b until it is full, then a.
        assert_eq!(
            place_many(&s, "", &mut nodes.clone(), 5),
            ["b", "b", "b", "a", "a"]
        );
        let mut spread = s.clone();
        spread.placement.strategy = PlacementStrategy::Spread;
        // Spread: the most CPU left first, then the most memory (b has used no memory).
        assert_eq!(
            place_many(&spread, "", &mut nodes, 5),
            ["a", "b", "a", "b", "a"]
        );
    }

    #[test]
    fn in_not_in_and_node_attributes_select_nodes() {
        let nodes = vec![
            labelled("a", "disk", "hdd"),
            labelled("b", "disk", "ssd"),
            labelled("c", "disk", "nvme"),
        ];
        let mut s = spec(0.5, 64);
        s.placement.constraints = vec![PlacementConstraint {
            label: "node.labels.disk".into(),
            value: String::new(),
            not: false,
            values: vec!["nvme".into(), "ssd".into()],
        }];
        assert_eq!(place(&s, &nodes).unwrap().id, "b");
        s.placement.constraints[0].not = true;
        assert_eq!(place(&s, &nodes).unwrap().id, "a");
        s.placement.constraints = vec![is("node.id", "c")];
        assert_eq!(place(&s, &nodes).unwrap().id, "c");
        // A node without the label fails `==` and `in`, and meets `!=` and `not in`.
        s.placement.constraints = vec![is("rack", "r1")];
        assert!(place(&s, &nodes).is_err());
        s.placement.constraints[0].not = true;
        assert_eq!(place(&s, &nodes).unwrap().id, "a");
    }

    #[test]
    fn distinct_nodes_put_one_task_of_a_group_on_each() {
        let mut nodes = vec![node("a", 8.0, 8192), node("b", 8.0, 8192)];
        let mut s = spec(0.5, 64);
        s.placement.distinct_nodes = true;
        assert_eq!(place_many(&s, "svc", &mut nodes, 2), ["a", "b"]);
        let why = place_in(&s, "svc", &nodes).unwrap_err();
        assert!(why.reason.contains("distinct nodes"), "{why}");
        assert!(
            why.reason.contains("2 already running one of its group"),
            "{why}"
        );
        assert!(!why.never, "a third node may join");
        // Another group is not held back.
        assert_eq!(place_in(&s, "other", &nodes).unwrap().id, "a");
    }

    #[test]
    fn spread_over_a_label_evens_out_zones_before_nodes() {
        // Zone east has three nodes, west one: spreading over zones sends every other
        // task west, although bin-pack alone would fill east's first node.
        let mut nodes = vec![
            labelled("e1", "zone", "east"),
            labelled("e2", "zone", "east"),
            labelled("e3", "zone", "east"),
            labelled("w1", "zone", "west"),
        ];
        let mut s = spec(0.25, 16);
        s.placement.spread_over = "zone".into();
        let chosen = place_many(&s, "svc", &mut nodes, 6);
        let west = chosen.iter().filter(|n| *n == "w1").count();
        assert_eq!(west, 3, "{chosen:?}");
        // With spread over nodes too, east's three tasks go to three nodes.
        let mut nodes2: Vec<NodeLoad> = nodes
            .iter()
            .map(|n| labelled(&n.id, "zone", n.labels["zone"].as_str()))
            .collect();
        s.placement.spread = true;
        let chosen = place_many(&s, "svc", &mut nodes2, 6);
        let mut east: Vec<&String> = chosen.iter().filter(|n| n.starts_with('e')).collect();
        east.sort();
        assert_eq!(east, ["e1", "e2", "e3"], "{chosen:?}");
    }

    #[test]
    fn preferences_go_first_and_are_only_preferences() {
        let mut nodes = vec![labelled("a", "gpu", "no"), labelled("b", "gpu", "yes")];
        let mut s = spec(2.0, 64);
        s.placement.preferences = vec![PlacementPreference {
            constraint: is("gpu", "yes"),
            weight: 50,
        }];
        // b is preferred while it has room; then the task goes to a rather than wait.
        assert_eq!(place_many(&s, "", &mut nodes, 3), ["b", "b", "a"]);
    }

    #[test]
    fn a_task_that_fits_nowhere_says_how_many_nodes_each_reason_excluded() {
        let mut nodes = vec![
            labelled("a", "disk", "ssd"),
            labelled("b", "disk", "hdd"),
            labelled("c", "disk", "ssd"),
            labelled("d", "disk", "ssd"),
            labelled("e", "disk", "ssd"),
        ];
        nodes[2].cpu_used = 4.0;
        nodes[3].connected = false;
        nodes[4].state = NodeState::Draining;
        let mut s = spec(1.0, 64);
        s.placement.constraints = vec![is("disk", "ssd")];
        nodes[0].cpu_used = 3.5;
        let why = place(&s, &nodes).unwrap_err();
        assert_eq!(
            why.reason,
            "no node has 1 vCPU and 64 MiB free right now; waiting for capacity \
             (of 5 nodes: 1 not connected, 1 not READY (draining, cordoned or down), \
             1 excluded by disk == ssd, 2 without room)"
        );
        assert!(!why.never);
    }
}
