//! Benchmark: upload → container RUNNING. A `skiff dev` with a rule on object events; each run
//! posts one S3 notification to the controller's HTTP listener (as MinIO would after an
//! upload) and times until the rule's task is reported RUNNING on the event stream. Then the
//! same through `skiff dev`'s watched local bucket (a file written, no notification), which
//! adds the poll interval (1 s) and the settling time of local files (2 s).
//!
//! Usage: bench_upload [--runs N] [--skiff PATH]

use std::io::{BufRead, BufReader};
use std::process::Stdio;
use std::time::{Duration, Instant};

use skiff_tests::bench::{self, summary};
use skiff_tests::{admin_token, cli, http, wait_for, Env};

fn main() {
    let runs: usize = bench::arg("--runs", 50);
    bench::use_skiff_arg();
    let mut env = Env::new();
    let addr = env.dev();
    let base = env.procs[0].http_url();
    let token = admin_token(&addr);
    env.register_busybox(&addr, "work", &["true"]);
    let source = env.path("source.yaml");
    std::fs::write(
        &source,
        "name: store\nkind: s3\nendpoint: http://127.0.0.1:1\nbucket: photos\n",
    )
    .unwrap();
    assert_eq!(
        cli(&addr, &["sources", "put", "-f", source.to_str().unwrap()]).code,
        0
    );
    let rule = env.path("rule.yaml");
    std::fs::write(
        &rule,
        "name: up\npattern: {source: [skiff.s3], detail-type: [Object Created]}\n\
         targets: [{id: run, task: {task_definition: work}}]\n",
    )
    .unwrap();
    assert_eq!(
        cli(&addr, &["rules", "put", "-f", rule.to_str().unwrap()]).code,
        0
    );

    // Follow the event stream from now on.
    let mut tail = skiff_tests::skiff_command()
        .args(["events", "tail", "-f", "-n", "1", "-o", "json"])
        .env("SKIFF_ADDR", &addr)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(tail.stdout.take().unwrap()).lines();
    let mut running_of = |event_id: &str| {
        let want = format!("rule/up/{event_id}");
        for line in lines.by_ref() {
            let e: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
            if e["detail"]["startedBy"] == want.as_str() && e["detail"]["lastStatus"] == "RUNNING" {
                return;
            }
        }
        panic!("the event stream ended");
    };

    let mut webhook = Vec::new();
    for i in 0..runs + 5 {
        let body = serde_json::json!({"Records": [{"eventName": "s3:ObjectCreated:Put",
            "eventTime": "2026-11-23T12:00:00Z",
            "s3": {"bucket": {"name": "photos"}, "object": {"key": format!("in/{i}.jpg"), "size": 10, "eTag": format!("e{i}")}}}]})
        .to_string();
        let t0 = Instant::now();
        let (status, resp) = http(
            "POST",
            &format!("{base}/notify/store"),
            Some(&token),
            body.as_bytes(),
        );
        assert_eq!(status, 200, "{resp}");
        let resp: serde_json::Value = serde_json::from_str(&resp).unwrap();
        running_of(resp["eventIds"][0].as_str().unwrap());
        if i >= 5 {
            webhook.push(t0.elapsed().as_secs_f64() * 1000.0);
        }
    }
    summary("notification → RUNNING", webhook);

    // The watched local bucket: event ids are not known up front; match by key.
    let bucket = env.path("dev/buckets/photos");
    std::fs::create_dir_all(&bucket).unwrap();
    wait_for(
        "the local buckets' baseline",
        Duration::from_secs(30),
        || env.logs().contains("baseline listed").then_some(()),
    );
    drop(tail);
    let count = || {
        cli(&addr, &["tasks", "ls", "--limit", "1000", "-o", "json"])
            .json()
            .as_array()
            .map_or(0, |a| a.iter().filter(|t| t["group"] == "rule:up").count())
    };
    let mut watched = Vec::new();
    for i in 0..10 {
        let before = count();
        let t0 = Instant::now();
        std::fs::write(bucket.join(format!("file-{i}.jpg")), b"0123456789").unwrap();
        wait_for("the task of a local file", Duration::from_secs(30), || {
            (count() > before).then_some(())
        });
        watched.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    summary("local file → task created", watched);
}
