//! `GET /metrics` on the HTTP listener: the controller's numbers in the Prometheus
//! (OpenMetrics) text format. Counters of what happened are kept as it happens (the store's
//! in `store::StoreMetrics`, the loops' in `metrics.rs`); what is there now — tasks, nodes,
//! queues, services, rule counts — is read from the store at each scrape, so it is never
//! stale and costs nothing between scrapes.

use std::collections::HashMap;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use crate::core::{Core, CoreError};

/// The content type of what `render` writes.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TaskLabels {
    family: String,
    status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabel {
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabels {
    queue: String,
    state: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct QueueLabel {
    queue: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RuleLabel {
    rule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabel {
    service: String,
}

/// Every metric, as the text a scrape gets.
pub fn render(core: &Core) -> Result<String, CoreError> {
    let mut reg = Registry::default();
    core.store.metrics.register(&mut reg);
    core.metrics.register(&mut reg);
    tasks(core, &mut reg)?;
    nodes(core, &mut reg)?;
    queues(core, &mut reg)?;
    rules(core, &mut reg)?;
    services(core, &mut reg)?;
    let pending = Gauge::<i64>::default();
    pending.set(core.store.outbox.len() as i64);
    reg.register(
        "skiff_deliveries_pending",
        "Notifications waiting for their first or next attempt",
        pending,
    );
    let size = Gauge::<i64>::default();
    size.set(core.store.size_on_disk() as i64);
    reg.register_with_unit(
        "skiff_store_size",
        "Bytes the state store's files take on disk",
        Unit::Bytes,
        size,
    );
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &reg)
        .expect("writing to a String does not fail");
    Ok(out)
}

/// Tasks not yet STOPPED by family and status, and how many the store keeps in all.
fn tasks(core: &Core, reg: &mut Registry) -> Result<(), CoreError> {
    let family = Family::<TaskLabels, Gauge>::default();
    for t in core.store.active_tasks()? {
        family
            .get_or_create(&TaskLabels {
                family: t.family().unwrap_or_default().to_string(),
                status: t.status.as_str().to_string(),
            })
            .inc();
    }
    reg.register(
        "skiff_tasks",
        "Tasks not yet STOPPED, by task-definition family and status",
        family,
    );
    let stored = Gauge::<i64>::default();
    stored.set(core.store.task_total() as i64);
    reg.register(
        "skiff_tasks_stored",
        "Tasks the store keeps, stopped ones included (until their retention removes them)",
        stored,
    );
    Ok(())
}

fn nodes(core: &Core, reg: &mut Registry) -> Result<(), CoreError> {
    let family = Family::<StateLabel, Gauge>::default();
    for state in ["READY", "DRAINING", "DOWN", "CORDONED"] {
        // Every state is shown, at 0 when no node is in it.
        family
            .get_or_create(&StateLabel {
                state: state.into(),
            })
            .set(0);
    }
    for n in core.store.nodes.list()? {
        family
            .get_or_create(&StateLabel {
                state: n.state.as_str().to_string(),
            })
            .inc();
    }
    reg.register("skiff_nodes", "Nodes by state", family);
    Ok(())
}

/// Each queue's messages by state and the age of its oldest (the autoscaler's inputs).
fn queues(core: &Core, reg: &mut Registry) -> Result<(), CoreError> {
    let messages = Family::<QueueLabels, Gauge>::default();
    let age = Family::<QueueLabel, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    let now = core.clock.now_ms();
    for q in core.store.queues.list()? {
        let (_, c) = crate::queues::describe(core, &q.name)?;
        for (state, n) in [
            ("visible", c.visible),
            ("in_flight", c.in_flight),
            ("delayed", c.delayed),
        ] {
            messages
                .get_or_create(&QueueLabels {
                    queue: q.name.clone(),
                    state: state.into(),
                })
                .set(n as i64);
        }
        let oldest = if c.oldest_sent_ms > 0 {
            (now - c.oldest_sent_ms).max(0) as f64 / 1000.0
        } else {
            0.0
        };
        age.get_or_create(&QueueLabel {
            queue: q.name.clone(),
        })
        .set(oldest);
    }
    reg.register(
        "skiff_queue_messages",
        "Messages in each queue: visible (receivable), in_flight (received, not deleted), delayed",
        messages,
    );
    reg.register_with_unit(
        "skiff_queue_oldest_message_age",
        "Age of each queue's oldest message (0 when empty)",
        Unit::Seconds,
        age,
    );
    Ok(())
}

/// Each rule's durable counts (kept across restarts, exactly once per event).
fn rules(core: &Core, reg: &mut Registry) -> Result<(), CoreError> {
    let matched = Family::<RuleLabel, Counter>::default();
    let invoked = Family::<RuleLabel, Counter>::default();
    let failed = Family::<RuleLabel, Counter>::default();
    let dead = Family::<RuleLabel, Counter>::default();
    for r in core.store.rules.list()? {
        let s = core.store.rule_stats(&r.name)?;
        let label = RuleLabel { rule: r.name };
        matched.get_or_create(&label).inc_by(s.matched);
        invoked.get_or_create(&label).inc_by(s.invoked);
        failed.get_or_create(&label).inc_by(s.failed);
        dead.get_or_create(&label).inc_by(s.dead_lettered);
    }
    reg.register("skiff_rule_matches", "Events each rule matched", matched);
    reg.register(
        "skiff_rule_invocations",
        "Deliveries each rule's targets received (a task created, a message sent, a topic published)",
        invoked,
    );
    reg.register(
        "skiff_rule_failures",
        "Delivery attempts of each rule that failed (then retried or dead-lettered)",
        failed,
    );
    reg.register(
        "skiff_rule_dead_letters",
        "Deliveries of each rule that ran out of retries",
        dead,
    );
    Ok(())
}

/// Each service's desired count (the autoscaler's, when it scales) and the tasks it holds.
fn services(core: &Core, reg: &mut Registry) -> Result<(), CoreError> {
    let desired = Family::<ServiceLabel, Gauge>::default();
    let held = Family::<ServiceLabel, Gauge>::default();
    let states: HashMap<String, skiff_model::model::ServiceState> = core
        .store
        .service_states
        .list()?
        .into_iter()
        .map(|s| (s.name.clone(), s))
        .collect();
    for s in core.store.services.list()? {
        let st = states.get(&s.name);
        let label = ServiceLabel {
            service: s.name.clone(),
        };
        let want = match st {
            Some(st) if st.draining => 0,
            Some(st) => st.scaled_count.unwrap_or(s.desired_count),
            None => s.desired_count,
        };
        desired.get_or_create(&label).set(i64::from(want));
        held.get_or_create(&label)
            .set(st.map_or(0, |st| st.tasks.len() as i64));
    }
    reg.register(
        "skiff_service_desired_tasks",
        "Tasks each service wants (its autoscaler's count when it scales; 0 while deleting)",
        desired,
    );
    reg.register(
        "skiff_service_tasks",
        "Tasks each service holds now (starting, running or stopping)",
        held,
    );
    Ok(())
}
