//! Benchmark of the durable store: latency of one acknowledged (flushed) task write, alone and
//! with concurrent writers sharing group commits. Prints the figures for docs/benchmarks.md.
//!
//! Usage: cargo run --release -p skiff-controller --example bench_store [DIR]

use std::sync::Arc;
use std::time::Instant;

use skiff_controller::model::{Event, NetworkMode, Task, TaskSpec};
use skiff_controller::store::Store;

fn task(i: usize) -> Task {
    let spec = TaskSpec {
        placement: Default::default(),
        containers: vec![],
        network_mode: NetworkMode::None,
        timeout_secs: 0,
        task_role: String::new(),
        input: None,
    };
    Task::new(
        format!("bench-{i:08}"),
        None,
        "bench".into(),
        String::new(),
        spec,
        now_ms(),
    )
}

fn event(id: String) -> Event {
    Event {
        id,
        source: "bench".into(),
        detail_type: "Bench".into(),
        replay: None,
        time_ms: now_ms(),
        resources: vec![],
        detail: serde_json::json!({"k": "v"}),
    }
}

fn pct(mut v: Vec<f64>, p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[((v.len() - 1) as f64 * p).round() as usize]
}

#[tokio::main]
async fn main() {
    let dir = std::env::args()
        .nth(1)
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::env::temp_dir().join(format!("skiff-bench-store-{}", std::process::id()))
        });
    let store = Arc::new(Store::open(&dir).expect("open store"));
    let n = 2000;
    let mut lat = Vec::with_capacity(n);
    for i in 0..n {
        let t = Instant::now();
        store.create_task(&task(i), event).await.unwrap();
        lat.push(t.elapsed().as_secs_f64() * 1e6);
    }
    println!(
        "one writer:   {n} durable task writes, p50 {:.0} µs, p99 {:.0} µs",
        pct(lat.clone(), 0.5),
        pct(lat, 0.99)
    );

    let writers = 8;
    let per = 1000;
    let t = Instant::now();
    let mut handles = Vec::new();
    for w in 0..writers {
        let store = store.clone();
        handles.push(tokio::spawn(async move {
            for i in 0..per {
                store
                    .create_task(&task(100_000 + w * per + i), event)
                    .await
                    .unwrap();
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let secs = t.elapsed().as_secs_f64();
    println!("{writers} writers:    {} durable task writes in {secs:.2} s = {:.0} writes/s (group commit)", writers * per, (writers * per) as f64 / secs);
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}

/// Milliseconds since the epoch, now.
fn now_ms() -> i64 {
    skiff_controller::clock::Clock::system().now_ms()
}
