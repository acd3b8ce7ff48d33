//! What the background loops read per pass, with many records in the store — the placer over
//! 10,000 active tasks (none waiting, then 100 waiting) and the outbox over 10,000 pending
//! deliveries none of which is due — read as the loops did before the indexes (every active
//! task decoded; every outbox entry decoded) and as they do now (the waiting-task index and
//! the active index's reservations; the due-time index), and Tasks.List of one group (every
//! task decoded, then the by-group index), on the same store in the same run.
//! Prints the medians for docs/benchmarks.md.
//!
//! Usage: cargo run --release -p skiff-controller --example bench_indexes [N]

use std::collections::HashMap;
use std::time::Instant;

use skiff_controller::lifecycle::TaskStatus;
use skiff_controller::model::{Delivery, DeliveryKind, Event, Task, TaskSpec};
use skiff_controller::store::{Store, TaskFilter};

/// A one-container spec with a command and an environment, as real tasks have.
fn spec() -> TaskSpec {
    let mut s = skiff_model::testing::spec(0.1, 64);
    s.containers[0].image = "registry.lan:5000/team/worker:v2".into();
    s.containers[0].command = vec!["worker".into(), "--queue".into(), "jobs".into()];
    s.containers[0].environment = [("MODE".to_string(), "batch".to_string())].into();
    s
}

fn event(id: String) -> Event {
    Event {
        id,
        source: "bench".into(),
        detail_type: "Bench".into(),
        replay: None,
        time_ms: now_ms(),
        resources: vec![],
        detail: serde_json::json!({}),
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Before: every active task decoded, the waiting ones picked, loads summed from all.
fn placer_read_scan(store: &Store) -> usize {
    let active = store.active_tasks().unwrap();
    let waiting = active
        .iter()
        .filter(|t| t.status == TaskStatus::Provisioning)
        .count();
    let mut used: HashMap<&str, (f64, u64)> = HashMap::new();
    for t in &active {
        if let Some(n) = t.node_id.as_deref() {
            let e = used.entry(n).or_default();
            e.0 += t.spec.cpu();
            e.1 += t.spec.memory_mib();
        }
    }
    waiting + used.len()
}

/// Now: the waiting tasks through their index and, only when there are any, the loads from
/// the active index's reservations.
fn placer_read_indexed(store: &Store) -> usize {
    let waiting = store.waiting_tasks().unwrap();
    if waiting.is_empty() {
        return 0;
    }
    let mut used: HashMap<String, (f64, u64)> = HashMap::new();
    for r in store.reservations().unwrap() {
        if let Some(n) = r.node {
            let e = used.entry(n).or_default();
            e.0 += r.cpu;
            e.1 += r.memory_mib;
        }
    }
    waiting.len() + used.len()
}

/// Before: every outbox entry decoded, the due ones picked.
fn outbox_read_scan(store: &Store, now: i64) -> usize {
    store
        .outbox
        .list()
        .unwrap()
        .into_iter()
        .filter(|d| d.next_attempt_ms <= now)
        .count()
}

/// Now: the due-time index up to now.
fn outbox_read_indexed(store: &Store, now: i64) -> usize {
    store.outbox.due(now, 4096).unwrap().0.len()
}

fn report(what: &str, before: f64, after: f64) {
    println!(
        "{what:<44} before {:>9.1} µs   after {:>9.1} µs   ({:.0}x less)",
        before * 1000.0,
        after * 1000.0,
        before / after.max(1e-6)
    );
}

#[tokio::main]
async fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(10_000);
    let dir = std::env::temp_dir().join(format!("skiff-bench-indexes-{}", std::process::id()));
    let store = Store::open(&dir).expect("open store");
    // n RUNNING tasks on 10 nodes, written concurrently (group commits).
    for chunk in (0..n).collect::<Vec<_>>().chunks(256) {
        futures::future::join_all(chunk.iter().map(|i| {
            let mut t = Task::new(
                format!("r{i:08}"),
                Some("worker:1".into()),
                "service:worker".into(),
                String::new(),
                spec(),
                now_ms(),
            );
            t.status = TaskStatus::Running;
            t.node_id = Some(format!("node-{}", i % 10));
            let store = &store;
            async move { store.create_task(&t, event).await.unwrap() }
        }))
        .await;
    }
    let runs = 20;
    let time = |f: &dyn Fn() -> usize| {
        median(
            (0..runs)
                .map(|_| {
                    let t = Instant::now();
                    std::hint::black_box(f());
                    t.elapsed().as_secs_f64() * 1000.0
                })
                .collect(),
        )
    };
    report(
        &format!("placer pass, {n} RUNNING, 0 waiting:"),
        time(&|| placer_read_scan(&store)),
        time(&|| placer_read_indexed(&store)),
    );
    for i in 0..100 {
        let t = Task::new(
            format!("w{i:08}"),
            None,
            "adhoc".into(),
            String::new(),
            spec(),
            now_ms(),
        );
        store.create_task(&t, event).await.unwrap();
    }
    report(
        &format!("placer pass, {n} RUNNING, 100 waiting:"),
        time(&|| placer_read_scan(&store)),
        time(&|| placer_read_indexed(&store)),
    );
    // Tasks.List of one small group (the 100 ad-hoc tasks) among all the tasks: before, every
    // task decoded and filtered; now, the by-group index.
    let adhoc = TaskFilter {
        group: Some("adhoc".into()),
        ..Default::default()
    };
    report(
        &format!("list one group of 100 among {} tasks:", n + 100),
        time(&|| {
            store
                .tasks()
                .unwrap()
                .iter()
                .filter(|t| t.group == "adhoc")
                .count()
        }),
        time(&|| store.list_tasks(&adhoc, 0).unwrap().1),
    );

    // n pending deliveries, due in an hour.
    let later = now_ms() + 3_600_000;
    let deliveries: Vec<Delivery> = (0..n)
        .map(|i| Delivery {
            id: format!("d{i:08}"),
            topic: "admins".into(),
            subscription: "sub-1".into(),
            kind: DeliveryKind::Message,
            rule: "alerts".into(),
            event_id: format!("e{i:08}"),
            message: "{\"detail\":{\"stopCode\":\"EssentialContainerExited\"}}".repeat(4),
            attempts: 3,
            last_error: "503 Service Unavailable".into(),
            created_ms: now_ms(),
            next_attempt_ms: later,
            dead_ms: None,
        })
        .collect();
    for chunk in deliveries.chunks(1000) {
        let key = format!("bench-{}", chunk[0].id);
        store.enqueue_deliveries(&key, chunk, &[]).await.unwrap();
    }
    let now = now_ms();
    report(
        &format!("outbox pass, {n} pending, 0 due:"),
        time(&|| outbox_read_scan(&store, now)),
        time(&|| outbox_read_indexed(&store, now)),
    );
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Milliseconds since the epoch, now.
fn now_ms() -> i64 {
    skiff_controller::clock::Clock::system().now_ms()
}
