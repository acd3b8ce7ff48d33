//! The controller's reads with a long history: a store with 100,000 STOPPED tasks and 10,000
//! RUNNING ones (plus 100 waiting to be placed), as a busy cluster has after weeks — then
//! `Tasks.List` as the CLI calls it (`tasks ls` and its filters, the newest 100 and the count
//! of the rest), the placer's read of a pass with tasks waiting, the service loop's read of
//! the active tasks (and its first read after a reopen, before the store has them decoded),
//! a whole placement pass of 100 tasks (read, plan, write, flush), and reopening the store;
//! with a history of any length (`1000000` for a million): the store's bytes per task, a page
//! of a time range and the page after it, and the history sweep deleting the oldest tenth.
//! Prints medians for docs/benchmarks.md.
//!
//! Usage: cargo run --release -p skiff-controller --example bench_many_tasks [STOPPED] [ACTIVE]

use std::time::Instant;

use skiff_controller::lifecycle::TaskStatus;
use skiff_controller::model::{Event, Task};
use skiff_controller::store::{Decision, Store, TaskFilter};
use skiff_model::model::NodeState;
use skiff_model::placement;

fn event(id: String) -> Event {
    Event {
        id,
        source: "bench".into(),
        detail_type: "Bench".into(),
        replay: None,
        time_ms: 0,
        resources: vec![],
        detail: serde_json::json!({}),
    }
}

/// Task `i`: one of 50 families (service groups), on one of 10 nodes.
fn task(i: usize, status: TaskStatus) -> Task {
    let mut spec = skiff_model::testing::spec(0.01, 16);
    spec.containers[0].image = "registry.lan:5000/team/worker:v2".into();
    spec.containers[0].command = vec!["worker".into(), "--queue".into(), "jobs".into()];
    let family = format!("app{}", i % 50);
    let mut t = Task::new(
        ulid::Ulid::new().to_string().to_lowercase(),
        Some(format!("{family}:1")),
        format!("service:{family}"),
        String::new(),
        spec,
        0,
    );
    t.status = status;
    if status != TaskStatus::Provisioning {
        t.node_id = Some(format!("node-{}", i % 10));
    }
    t
}

fn median_ms(runs: usize, f: &dyn Fn() -> usize) -> (f64, usize) {
    let mut found = 0;
    let mut v: Vec<f64> = (0..runs)
        .map(|_| {
            let t = Instant::now();
            found = std::hint::black_box(f());
            t.elapsed().as_secs_f64() * 1000.0
        })
        .collect();
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    (v[v.len() / 2], found)
}

/// One placement pass as the placer makes it, timed from its read to its flush: the waiting
/// tasks and each node's sums read, `placement::plan` over them (10 nodes of 64 vCPU and
/// 256 GiB), the placements written as one batch and flushed. The 100 tasks it places
/// (created first, not timed) are placed in round `round`.
async fn placement_pass(store: &Store, round: usize) -> f64 {
    if round > 0 {
        for i in 0..100 {
            let t = task(1_000_000 + round * 100 + i, TaskStatus::Provisioning);
            store.create_task(&t, event).await.unwrap();
        }
    }
    let start = Instant::now();
    let waiting = store.waiting_tasks().unwrap();
    let mut reserved = store.node_reservations();
    let snapshot = placement::Snapshot {
        waiting: waiting.iter().map(|t| placement::Waiting::of(t)).collect(),
        nodes: (0..10)
            .map(|n| {
                let id = format!("node-{n}");
                let r = reserved.remove(&id).unwrap_or_default();
                placement::NodeLoad {
                    id,
                    state: NodeState::Ready,
                    connected: true,
                    cpu: 64.0,
                    memory_mib: 256 * 1024,
                    cpu_used: r.cpu,
                    memory_used_mib: r.memory_mib,
                    labels: Default::default(),
                    groups: r.groups,
                    ports: r.ports,
                }
            })
            .collect(),
        on_lost_nodes: vec![],
        node_timeout_secs: 30,
    };
    let places: Vec<(String, String)> = placement::plan(&snapshot)
        .into_iter()
        .filter_map(|s| match s {
            placement::Step::Place { task, node } => Some((task, node)),
            _ => None,
        })
        .collect();
    assert_eq!(places.len(), 100, "every waiting task fits");
    let ids: Vec<String> = places.iter().map(|p| p.0.clone()).collect();
    store
        .update_tasks_uncommitted(&ids, |i, mut t, _| {
            t.status = TaskStatus::Pending;
            t.node_id = Some(places[i].1.clone());
            Ok::<_, ()>(Decision::Write {
                task: t,
                event: None,
            })
        })
        .await
        .unwrap();
    store.commit().await.unwrap();
    start.elapsed().as_secs_f64() * 1000.0
}

#[tokio::main]
async fn main() {
    let arg = |i: usize, d: usize| {
        std::env::args()
            .nth(i)
            .and_then(|a| a.parse().ok())
            .unwrap_or(d)
    };
    let (stopped, active) = (arg(1, 100_000), arg(2, 10_000));
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).expect("open store");
    let made = Instant::now();
    let wall_ms = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as i64
    };
    let written_from_ms = wall_ms();
    let statuses = std::iter::repeat_n(TaskStatus::Stopped, stopped)
        .chain(std::iter::repeat_n(TaskStatus::Running, active))
        .chain(std::iter::repeat_n(TaskStatus::Provisioning, 100))
        .enumerate()
        .collect::<Vec<_>>();
    for chunk in statuses.chunks(512) {
        futures::future::join_all(chunk.iter().map(|(i, s)| {
            let t = task(*i, *s);
            let store = &store;
            async move { store.create_task(&t, event).await.unwrap() }
        }))
        .await;
    }
    let written_to_ms = wall_ms();
    println!(
        "{stopped} STOPPED + {active} RUNNING + 100 PROVISIONING tasks written in {:.1} s",
        made.elapsed().as_secs_f64()
    );
    let list = |f: TaskFilter| {
        let store = &store;
        move || {
            let (tasks, total) = store.list_tasks(&f, 100).unwrap();
            tasks.len() + total
        }
    };
    let f = |status: Option<TaskStatus>, family: Option<&str>, group: Option<&str>| TaskFilter {
        status,
        family: family.map(String::from),
        group: group.map(String::from),
        ..Default::default()
    };
    let node = TaskFilter {
        node: Some("node-3".into()),
        ..Default::default()
    };
    // The middle of the history in time, and a page token there: a listing of a range, and
    // the page after a page.
    let (first_ms, last_ms) = (written_from_ms, written_to_ms);
    let mid_ms = first_ms + (last_ms - first_ms) / 2;
    let since_mid = TaskFilter {
        created_from_ms: Some(mid_ms),
        ..Default::default()
    };
    let older_than_mid = TaskFilter {
        older_than: Some(skiff_controller::store::task_id_bound(mid_ms)),
        ..Default::default()
    };
    let family_range = TaskFilter {
        family: Some("app7".into()),
        created_from_ms: Some(mid_ms),
        ..Default::default()
    };
    type Read<'a> = Box<dyn Fn() -> usize + 'a>;
    let cases: Vec<(&str, Read)> = vec![
        (
            "tasks ls (newest 100 + count)",
            Box::new(list(f(None, None, None))),
        ),
        (
            "tasks ls --status RUNNING",
            Box::new(list(f(Some(TaskStatus::Running), None, None))),
        ),
        (
            "tasks ls --status STOPPED",
            Box::new(list(f(Some(TaskStatus::Stopped), None, None))),
        ),
        (
            "tasks ls --family app7",
            Box::new(list(f(None, Some("app7"), None))),
        ),
        (
            "tasks ls --group service:app7",
            Box::new(list(f(None, None, Some("service:app7")))),
        ),
        ("tasks ls --node node-3", Box::new(list(node))),
        (
            "tasks ls --since (the middle; 100 + count)",
            Box::new(list(since_mid)),
        ),
        (
            "tasks ls --page-token (a page in the middle)",
            Box::new(list(older_than_mid)),
        ),
        (
            "tasks ls --family app7 --since (the middle)",
            Box::new(list(family_range)),
        ),
        (
            "placer pass read (100 waiting + node sums)",
            Box::new(|| store.waiting_tasks().unwrap().len() + store.node_reservations().len()),
        ),
        (
            "stored reservations summed (the read before)",
            Box::new(|| store.waiting_tasks().unwrap().len() + store.reservations().unwrap().len()),
        ),
        (
            "service loop read (active tasks)",
            Box::new(|| store.active_tasks().unwrap().len()),
        ),
    ];
    for (what, f) in cases {
        let (ms, found) = median_ms(11, f.as_ref());
        println!("{what:<48} {ms:>9.2} ms  (median of 11; returned + counted: {found})");
    }
    store.commit().await.unwrap();
    let tasks = stopped + active + 100;
    println!(
        "{:<48} {:>9} bytes ({} on disk for {tasks} tasks)",
        "store bytes per task",
        store.size_on_disk() / tasks as u64,
        store.size_on_disk()
    );
    let mut passes = Vec::new();
    for round in 0..11 {
        passes.push(placement_pass(&store, round).await);
    }
    passes.sort_by(f64::total_cmp);
    println!(
        "{:<48} {:>9.2} ms  (median of 11; 100 tasks placed in each)",
        "placement pass: read, plan, write, flush", passes[5]
    );
    drop(store);
    // Reopening, in its two parts: sled opening its files, then the store's own work at open
    // (the active tasks decoded, the derived indexes, the due tables).
    let opened = Instant::now();
    let engine = loop {
        match skiff_controller::store::SledEngine::open(dir.path()) {
            Ok(e) => break e,
            Err(_) if opened.elapsed().as_secs() < 10 => {
                std::thread::sleep(std::time::Duration::from_millis(5))
            }
            Err(e) => panic!("reopening: {e}"),
        }
    };
    let engine_ms = opened.elapsed().as_secs_f64() * 1000.0;
    let store = Store::with_engine(std::sync::Arc::new(engine)).expect("reopening");
    let total_ms = opened.elapsed().as_secs_f64() * 1000.0;
    println!(
        "{:<48} {:>9.2} ms  (sled's open {engine_ms:.0} ms, the store's own {:.0} ms)",
        "reopening the store (indexes rebuilt)",
        total_ms,
        total_ms - engine_ms
    );
    let first = Instant::now();
    let n = store.active_tasks().unwrap().len();
    println!(
        "{:<48} {:>9.2} ms  ({n} tasks, each decoded once)",
        "service loop read, first after the reopen",
        first.elapsed().as_secs_f64() * 1000.0
    );
    // The history sweep's deletion of the oldest tenth (all STOPPED): what retention costs.
    let doomed: Vec<String> = store
        .stopped_tasks_created_before(i64::MAX, stopped / 10)
        .unwrap()
        .into_iter()
        .map(|t| t.id)
        .collect();
    let deleting = Instant::now();
    let deleted = store.delete_stopped_tasks(&doomed).await.unwrap();
    let secs = deleting.elapsed().as_secs_f64();
    println!(
        "{:<48} {:>9.0} tasks/s ({deleted} in {secs:.2} s, durable)",
        "history sweep: deleting stopped tasks",
        deleted as f64 / secs
    );
    drop(store);
}
