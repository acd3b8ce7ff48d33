//! Benchmarks of the event bus, printing the figures for docs/benchmarks.md:
//! 1. pattern matching: events/s through the rule set (as the dispatcher uses it) with 1, 100
//!    and 1,000 rules;
//! 2. ingest: durable events/s of PutEvents batches from 8 concurrent gRPC clients against a
//!    controller served on 127.0.0.1 (in this process, plaintext, its own data dir).
//!
//! Usage: cargo run --release -p skiff-controller --example bench_bus [ingest|matching]

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use skiff_controller::model::{RetryPolicy, Rule, Target, TargetInput, TargetKind};
use skiff_controller::ruleset::RuleSet;
use skiff_proto::v1 as pb;

/// Rules like users write them: 9 in 10 name their source (and more), 1 in 10 matches on the
/// detail alone (checked against every event).
fn rules(n: usize) -> Vec<Rule> {
    (0..n)
        .map(|i| {
            let pattern = if i % 10 == 9 {
                json!({"detail": {"object": {"key": [{"prefix": format!("tenant-{i}/")}]}}})
            } else {
                json!({
                    "source": [format!("app.{i}")],
                    "detail-type": ["Object Created", "Object Updated"],
                    "detail": {
                        "object": {"key": [{"suffix": ".jpg"}, {"wildcard": "*/raw/*"}],
                                   "size": [{"numeric": [">", 0, "<=", 10_000_000]}]},
                        "bucket": {"name": [{"anything-but": ["private", "logs"]}]}
                    }
                })
            };
            Rule {
                name: format!("rule-{i}"),
                description: String::new(),
                pattern,
                enabled: true,
                targets: vec![Target {
                    id: "t".into(),
                    kind: TargetKind::Queue("q".into()),
                    input: TargetInput::Event,
                    retry: RetryPolicy::default(),
                    dead_letter_queue: String::new(),
                }],
                version: 1,
                created_ms: 0,
                updated_ms: 0,
            }
        })
        .collect()
}

fn events(n: usize, sources: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            json!({
                "version": "0", "id": format!("e{i}"), "detail-type": "Object Created",
                "source": format!("app.{}", i % sources.max(1)), "account": "000000000000",
                "time": "2026-11-23T12:00:00Z", "region": "local", "resources": [],
                "detail": {"bucket": {"name": "photos"},
                           "object": {"key": format!("tenant-{}/raw/img-{i}.jpg", i % 50), "size": 1000 + i}}
            })
        })
        .collect()
}

fn matching(n_rules: usize) {
    let (set, _) = RuleSet::new(rules(n_rules));
    let evs = events(20_000, n_rules);
    let mut matched = 0usize;
    // Warm up, then time.
    for e in evs.iter().take(1000) {
        matched += set.matching(e).len();
    }
    let start = Instant::now();
    let mut rounds = 0;
    while start.elapsed() < Duration::from_secs(2) {
        for e in &evs {
            matched += set.matching(e).len();
        }
        rounds += 1;
    }
    let secs = start.elapsed().as_secs_f64();
    let per_s = (rounds * evs.len()) as f64 / secs;
    println!(
        "matching, {n_rules:>5} rules: {:>10.0} events/s  ({:.2} µs/event; {} matches)",
        per_s,
        1e6 / per_s,
        matched
    );
}

async fn ingest(batch: usize, clients: usize, per_client: usize) {
    let dir = tempfile::tempdir().unwrap();
    let ctl = skiff_controller::Controller::bind(skiff_controller::ControllerConfig {
        data_dir: dir.path().to_path_buf(),
        listen: "127.0.0.1:0".parse().unwrap(),
        timing: Default::default(),
        clock: skiff_controller::clock::Clock::system(),
        tls: None,
        node_cert_ttl: None,
        http_listen: None,
        local_buckets: None,
        smtp: None,
        public_url: None,
        task_history: None,
        event_log: None,
    })
    .await
    .unwrap();
    let addr = format!("http://{}", ctl.local_addr());
    let token = std::fs::read_to_string(dir.path().join("admin.token")).unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(ctl.serve(async {
        let _ = stop_rx.await;
    }));
    let bearer: tonic::metadata::MetadataValue<_> =
        format!("Bearer {}", token.trim()).parse().unwrap();
    let bearer = Arc::new(bearer);
    let start = Instant::now();
    let mut handles = Vec::new();
    for c in 0..clients {
        let channel = tonic::transport::Endpoint::new(addr.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let bearer = bearer.clone();
        let mut client = pb::events_client::EventsClient::with_interceptor(
            channel,
            move |mut req: tonic::Request<()>| {
                req.metadata_mut()
                    .insert("authorization", (*bearer).clone());
                Ok(req)
            },
        );
        handles.push(tokio::spawn(async move {
            for b in 0..per_client {
                let entries = (0..batch)
                    .map(|i| pb::PutEventsEntry {
                        source: format!("app.{c}"),
                        detail_type: "Object Created".into(),
                        detail_json: format!(
                            r#"{{"bucket":{{"name":"photos"}},"object":{{"key":"in/{b}-{i}.jpg","size":{i}}}}}"#
                        ),
                        resources: vec![],
                        time_ms: 0,
                    })
                    .collect();
                let r = client
                    .put(pb::PutEventsRequest { entries })
                    .await
                    .unwrap()
                    .into_inner();
                assert_eq!(r.failed_entry_count, 0);
            }
        }));
    }
    for h in handles {
        h.await.unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    let total = clients * per_client * batch;
    println!(
        "ingest, {clients} clients, batches of {batch:>3}: {:>8.0} durable events/s ({total} events in {secs:.2} s)",
        total as f64 / secs
    );
    let _ = stop_tx.send(());
    let _ = server.await;
}

#[tokio::main]
async fn main() {
    // `bench_bus ingest` or `bench_bus matching` runs one part.
    let only = std::env::args().nth(1).unwrap_or_default();
    if only != "ingest" {
        for n in [1, 100, 1000] {
            matching(n);
        }
    }
    if only != "matching" {
        ingest(10, 8, 1000).await;
        ingest(100, 8, 100).await;
    }
}
