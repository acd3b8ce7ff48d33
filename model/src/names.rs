//! Names for services, pure: which addresses `<service>.skiff.internal` stands for. A task
//! counts while it runs, is not asked to stop, has an address on a network and its essential
//! containers with health checks are HEALTHY — so a task being drained or replaced leaves
//! the name before it goes, and one still starting joins once it is ready.

use std::collections::BTreeMap;

use crate::model::{DesiredStatus, Health, Task, TaskStatus};

/// Service name (lower case, as DNS compares names) → its tasks' addresses, sorted. Services
/// without such a task are left out; tasks of other groups are ignored.
pub fn service_addresses<'a>(
    tasks: impl IntoIterator<Item = &'a Task>,
) -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for t in tasks {
        let Some(service) = t.group.strip_prefix("service:") else {
            continue;
        };
        let ready = t.status == TaskStatus::Running
            && t.desired == DesiredStatus::Running
            && matches!(t.essential_health(), None | Some(Health::Healthy));
        if !ready || t.addresses.is_empty() {
            continue;
        }
        out.entry(service.to_ascii_lowercase())
            .or_default()
            .extend(t.addresses.iter().cloned());
    }
    for addresses in out.values_mut() {
        addresses.sort();
        addresses.dedup();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ContainerState;

    fn task(id: &str, group: &str, status: TaskStatus, addresses: &[&str]) -> Task {
        let mut t = Task::new(
            id.into(),
            None,
            group.into(),
            "test".into(),
            crate::testing::spec(0.1, 64),
            0,
        );
        t.status = status;
        t.addresses = addresses.iter().map(|a| a.to_string()).collect();
        t
    }

    fn checked(mut t: Task, essential: bool, health: Health) -> Task {
        t.containers.push(ContainerState {
            name: format!("c{}", t.containers.len()),
            image: "img".into(),
            essential,
            last_status: "RUNNING".into(),
            exit_code: None,
            reason: String::new(),
            health: Some(health),
        });
        t
    }

    #[test]
    fn a_name_stands_for_the_running_ready_tasks_of_its_service() {
        let mut stopping = task("t3", "service:web", TaskStatus::Running, &["10.0.0.3"]);
        stopping.desired = DesiredStatus::Stopped;
        let tasks = vec![
            task("t1", "service:web", TaskStatus::Running, &["10.0.0.9"]),
            task("t2", "service:web", TaskStatus::Running, &["10.0.0.2"]),
            stopping,
            task("t4", "service:web", TaskStatus::Pending, &["10.0.0.4"]),
            task("t5", "service:Api", TaskStatus::Running, &["10.0.0.5"]),
            task("t6", "service:hostnet", TaskStatus::Running, &[]),
            task("t7", "family:web", TaskStatus::Running, &["10.0.0.7"]),
            checked(
                task("t8", "service:api", TaskStatus::Running, &["10.0.0.8"]),
                true,
                Health::Unknown,
            ),
            checked(
                task("t9", "service:api", TaskStatus::Running, &["10.0.0.1"]),
                false,
                Health::Unhealthy,
            ),
        ];
        let names = service_addresses(&tasks);
        assert_eq!(
            names,
            BTreeMap::from([
                (
                    "api".to_string(),
                    vec!["10.0.0.1".into(), "10.0.0.5".into()]
                ),
                (
                    "web".to_string(),
                    vec!["10.0.0.2".into(), "10.0.0.9".into()]
                ),
            ])
        );
    }

    #[test]
    fn an_unhealthy_essential_container_takes_its_task_out_until_it_is_healthy() {
        let sick = checked(
            task("t1", "service:web", TaskStatus::Running, &["10.0.0.1"]),
            true,
            Health::Unhealthy,
        );
        assert!(service_addresses([&sick]).is_empty());
        let mut well = sick.clone();
        well.containers.last_mut().unwrap().health = Some(Health::Healthy);
        assert_eq!(service_addresses([&well])["web"], ["10.0.0.1"]);
    }
}
