//! What each active task reserves and each node's sums, kept in memory and updated by every
//! task write. The placer needs the sums on every pass (summing the stored reservations took
//! 10–13 ms with 10,000 active tasks, paid again for each burst it places), and listings by
//! status read each active task's status here instead of from the stored index.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::Reservation;
use crate::model::PortProtocol;
use skiff_model::lifecycle::TaskStatus;

/// What the active tasks placed on one node reserve there.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeReserved {
    pub cpu: f64,
    pub memory_mib: u64,
    /// How many active tasks are placed on it.
    pub tasks: u32,
    /// Active tasks by group (a service spreads its tasks by it).
    pub groups: BTreeMap<String, u32>,
    /// Host ports its active tasks publish.
    pub ports: BTreeSet<(u16, PortProtocol)>,
}

/// One node's sums. CPU is counted in millionths of a vCPU so that adding and taking away
/// the same tasks in any order comes back to exactly zero (f64 sums drift).
#[derive(Default)]
struct Tally {
    micro_cpu: i64,
    memory_mib: u64,
    tasks: u32,
    groups: HashMap<String, u32>,
    ports: HashMap<(u16, PortProtocol), u32>,
}

/// Every active task's reservation (by id, so in creation order) and each node's sums.
#[derive(Default)]
pub(super) struct Reserved {
    tasks: BTreeMap<String, Reservation>,
    nodes: HashMap<String, Tally>,
}

fn micro(cpu: f64) -> i64 {
    (cpu * 1e6).round() as i64
}

impl Reserved {
    /// Task `id` now reserves `now` (None: it is no longer active).
    pub(super) fn set(&mut self, id: &str, now: Option<Reservation>) {
        if let Some(old) = self.tasks.remove(id) {
            self.take(&old);
        }
        if let Some(r) = now {
            self.add(&r);
            self.tasks.insert(id.to_string(), r);
        }
    }

    fn add(&mut self, r: &Reservation) {
        let Some(node) = &r.node else { return };
        let t = self.nodes.entry(node.clone()).or_default();
        t.micro_cpu += micro(r.cpu);
        t.memory_mib += r.memory_mib;
        t.tasks += 1;
        *t.groups.entry(r.group.clone()).or_default() += 1;
        for p in &r.ports {
            *t.ports.entry(*p).or_default() += 1;
        }
    }

    fn take(&mut self, r: &Reservation) {
        let Some(node) = &r.node else { return };
        let Some(t) = self.nodes.get_mut(node) else {
            return;
        };
        t.micro_cpu -= micro(r.cpu);
        t.memory_mib = t.memory_mib.saturating_sub(r.memory_mib);
        t.tasks = t.tasks.saturating_sub(1);
        if let Some(n) = t.groups.get_mut(&r.group) {
            *n -= 1;
            if *n == 0 {
                t.groups.remove(&r.group);
            }
        }
        for p in &r.ports {
            if let Some(n) = t.ports.get_mut(p) {
                *n -= 1;
                if *n == 0 {
                    t.ports.remove(p);
                }
            }
        }
        if t.tasks == 0 {
            self.nodes.remove(node);
        }
    }

    /// How many tasks are active.
    pub(super) fn len(&self) -> usize {
        self.tasks.len()
    }

    /// The status of task `id` if it is active (None: STOPPED, or no such task).
    pub(super) fn status(&self, id: &[u8]) -> Option<TaskStatus> {
        let id = std::str::from_utf8(id).ok()?;
        self.tasks.get(id).map(Reservation::status)
    }

    /// The ids of the active tasks, in creation order.
    pub(super) fn ids(&self) -> Vec<Vec<u8>> {
        self.tasks.keys().map(|id| id.as_bytes().to_vec()).collect()
    }

    /// The ids of the active tasks in `status`, in creation order.
    pub(super) fn ids_in(&self, status: TaskStatus) -> Vec<Vec<u8>> {
        self.tasks
            .iter()
            .filter(|(_, r)| r.status() == status)
            .map(|(id, _)| id.as_bytes().to_vec())
            .collect()
    }

    /// Each node with active tasks placed on it, and what they reserve there.
    pub(super) fn by_node(&self) -> HashMap<String, NodeReserved> {
        self.nodes
            .iter()
            .map(|(node, t)| {
                let reserved = NodeReserved {
                    cpu: t.micro_cpu as f64 / 1e6,
                    memory_mib: t.memory_mib,
                    tasks: t.tasks,
                    groups: t.groups.iter().map(|(g, n)| (g.clone(), *n)).collect(),
                    ports: t.ports.keys().copied().collect(),
                };
                (node.clone(), reserved)
            })
            .collect()
    }

    /// The sums `by_node` gives, computed afresh from `reservations`: what the kept sums
    /// must always equal (checked by the store's tests).
    #[cfg(test)]
    pub(super) fn summed(reservations: &[Reservation]) -> HashMap<String, NodeReserved> {
        let mut fresh = Reserved::default();
        for (i, r) in reservations.iter().enumerate() {
            fresh.set(&i.to_string(), Some(r.clone()));
        }
        fresh.by_node()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(node: &str, cpu: f64, group: &str, port: Option<u16>) -> Reservation {
        Reservation {
            node: Some(node.into()),
            cpu,
            memory_mib: 64,
            group: group.into(),
            ports: port.map(|p| (p, PortProtocol::Tcp)).into_iter().collect(),
            status: None,
        }
    }

    #[test]
    fn sums_come_back_to_nothing_when_every_task_stops() {
        let mut kept = Reserved::default();
        for i in 0..1000 {
            kept.set(&format!("t{i}"), Some(r("n1", 0.1, "g", Some(8080))));
        }
        assert_eq!(kept.by_node()["n1"].tasks, 1000);
        assert_eq!(kept.by_node()["n1"].cpu, 100.0);
        for i in (0..1000).rev() {
            kept.set(&format!("t{i}"), None);
        }
        assert!(kept.by_node().is_empty());
    }

    #[test]
    fn a_task_moved_or_rewritten_counts_once_where_it_is() {
        let mut kept = Reserved::default();
        let mut unplaced = r("n1", 0.5, "g", None);
        unplaced.node = None;
        kept.set("a", Some(unplaced));
        assert!(
            kept.by_node().is_empty(),
            "an unplaced task reserves nothing"
        );
        kept.set("a", Some(r("n1", 0.5, "g", Some(80))));
        kept.set("a", Some(r("n1", 0.5, "g", Some(80))));
        kept.set("b", Some(r("n2", 0.25, "h", Some(80))));
        let now = kept.by_node();
        assert_eq!(now["n1"].tasks, 1);
        assert_eq!(now["n1"].cpu, 0.5);
        assert_eq!(now["n1"].ports.len(), 1);
        assert_eq!(now["n2"].groups["h"], 1);
        assert_eq!(
            now,
            Reserved::summed(&[r("n1", 0.5, "g", Some(80)), r("n2", 0.25, "h", Some(80))])
        );
    }
}
