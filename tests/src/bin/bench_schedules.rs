//! Benchmark: fire-time jitter with many schedules due together. A `skiff dev` with N
//! schedules (default 100), each `rate(10 seconds)` from one common start running a trivial task; after the run, each task's
//! lateness is its PENDING time (placed on the node) minus the fire time it stands for.
//!
//! Usage: bench_schedules [--schedules N] [--seconds S] [--network bridge|none|host] [--skiff PATH]

use std::time::{Duration, Instant};

use skiff_tests::bench::{self, percentile, summary};
use skiff_tests::{cli, Env};

fn main() {
    let n: usize = bench::arg("--schedules", 100);
    let seconds: u64 = bench::arg("--seconds", 45);
    bench::use_skiff_arg();
    let mut env = Env::new();
    let addr = env.dev();
    // The task's network: bridge (the default for new tasks), none or host.
    let network = bench::arg("--network", "bridge".to_string());
    env.register_json(
        &addr,
        serde_json::json!({"family": "job", "network_mode": network, "containers": [
            {"name": "main", "image": env.busybox_image(), "command": ["true"], "stop_timeout": 1}]}),
    );
    // One common start, so every schedule is due at the same moments (every 10 s from it).
    let start_at = chrono::Utc::now() + chrono::Duration::seconds(2 + n as i64 / 20);
    let start_at = start_at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    for i in 0..n {
        let f = env.path("s.yaml");
        std::fs::write(
            &f,
            format!("name: s{i}\nexpression: rate(10 seconds)\nstart: \"{start_at}\"\noverlap: allow\ntask: {{task_definition: job}}\n"),
        )
        .unwrap();
        assert_eq!(
            cli(&addr, &["schedules", "put", "-f", f.to_str().unwrap()]).code,
            0
        );
    }
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(seconds) {
        std::thread::sleep(Duration::from_millis(500));
    }
    for i in 0..n {
        cli(&addr, &["schedules", "disable", &format!("s{i}")]);
    }
    let tasks = cli(&addr, &["tasks", "ls", "--limit", "100000", "-o", "json"]).json();
    let mut late = Vec::new();
    // Fire time → PENDING by fire time (each is one burst of `n` fires).
    let mut waves: std::collections::BTreeMap<i64, Vec<f64>> = Default::default();
    // The two parts: the schedules loop (fire time → task created) and placement (created →
    // PENDING).
    let mut to_created = Vec::new();
    let mut to_placed = Vec::new();
    for t in tasks.as_array().unwrap() {
        let Some(when) = t["startedBy"].as_str().and_then(|s| s.rsplit('/').next()) else {
            continue;
        };
        let Ok(scheduled) = chrono::DateTime::parse_from_rfc3339(when) else {
            continue;
        };
        let ms = |k: &str| {
            t[k].as_i64()
                .or_else(|| t[k].as_str().and_then(|s| s.parse().ok()))
                .unwrap_or(0)
        };
        let (created, pending) = (ms("createdAtMs"), ms("pendingAtMs"));
        if pending > 0 {
            let at = scheduled.timestamp_millis();
            late.push((pending - at) as f64);
            waves.entry(at).or_default().push((pending - at) as f64);
            to_created.push((created - at) as f64);
            to_placed.push((pending - created) as f64);
        }
    }
    println!(
        "{n} schedules due together, rate(10 seconds) each, network {network}, {seconds} s: {} fires",
        late.len()
    );
    for (at, mut wave) in waves {
        wave.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!(
            "  fires at {}: {} tasks, PENDING after p50 {:.0} ms, max {:.0} ms",
            chrono::DateTime::from_timestamp_millis(at)
                .unwrap_or_default()
                .format("%H:%M:%S"),
            wave.len(),
            percentile(&wave, 0.5),
            wave.last().copied().unwrap_or_default()
        );
    }
    let mut sorted = late.clone();
    sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
    summary("fire time → PENDING", late);
    println!("p99 = {:.1} ms", percentile(&sorted, 0.99));
    for (name, mut part) in [
        ("  fire time → created", to_created),
        ("  created → PENDING", to_placed),
    ] {
        part.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let p99 = percentile(&part, 0.99);
        summary(name, part);
        println!("  p99 = {p99:.1} ms");
    }
}
