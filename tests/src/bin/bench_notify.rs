//! Benchmark: notifications. A `skiff dev` with a rule sending every task STOPPED to a topic
//! whose webhook subscriber is a real receiver (verifying signatures); reports
//! STOPPED → webhook received (the event's stoppedAt to the receiver's clock, one machine)
//! over N tasks, then deliveries/s for a burst of events put over gRPC.
//!
//! Usage: bench_notify [--tasks N] [--burst M] [--skiff PATH]

use std::time::Duration;

use skiff_proto::v1 as pb;
use skiff_tests::bench::{self, percentile, summary};
use skiff_tests::receiver::Receiver;
use skiff_tests::{admin_token, cli, wait_for, Env};

fn subscribe(addr: &str, topic: &str, hook: &Receiver) {
    assert_eq!(cli(addr, &["topics", "put", topic]).code, 0);
    let out = cli(
        addr,
        &[
            "topics",
            "subscribe",
            topic,
            "--webhook",
            &hook.url(),
            "-o",
            "json",
        ],
    );
    assert_eq!(out.code, 0, "{out:?}");
    hook.set_secret(out.json()["signingSecret"].as_str().unwrap());
}

fn rule(env: &Env, addr: &str, name: &str, pattern: &str, topic: &str) {
    let f = env.path(&format!("{name}.yaml"));
    std::fs::write(
        &f,
        format!("name: {name}\npattern: {pattern}\ntargets: [{{id: t, notify: {topic}}}]\n"),
    )
    .unwrap();
    assert_eq!(
        cli(addr, &["rules", "put", "-f", f.to_str().unwrap()]).code,
        0
    );
}

fn main() {
    let tasks: usize = bench::arg("--tasks", 100);
    let burst: usize = bench::arg("--burst", 2000);
    bench::use_skiff_arg();
    let mut env = Env::new();
    let addr = env.dev();
    let img = env.busybox_image();

    // STOPPED → webhook.
    let stopped = Receiver::start();
    subscribe(&addr, "stopped", &stopped);
    rule(
        &env,
        &addr,
        "stopped",
        "{source: [skiff.task], detail: {lastStatus: [STOPPED]}}",
        "stopped",
    );
    for _ in 0..tasks {
        let out = cli(
            &addr,
            &["run-task", "--wait", "--image", &img, "--", "true"],
        );
        assert_eq!(out.code, 0, "{out:?}");
    }
    let got = wait_for("every STOPPED notified", Duration::from_secs(120), || {
        let r = stopped.received();
        (r.iter().filter(|r| r.status == 200).count() >= tasks).then_some(r)
    });
    let mut lat = Vec::new();
    for r in got.iter().filter(|r| r.status == 200 && r.signature_ok) {
        let ev = r.json();
        let at = chrono::DateTime::parse_from_rfc3339(ev["detail"]["stoppedAt"].as_str().unwrap())
            .unwrap()
            .timestamp_millis();
        lat.push((r.at_ms - at) as f64);
    }
    let mut sorted = lat.clone();
    sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
    summary("task STOPPED → webhook", lat);
    println!("p99 = {:.1} ms", percentile(&sorted, 0.99));

    // A burst: events put in batches of 100 → one delivery each.
    let load = Receiver::start();
    subscribe(&addr, "load", &load);
    rule(&env, &addr, "load", "{source: [load]}", "load");
    let token = admin_token(&addr);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let start_ms = chrono::Utc::now().timestamp_millis();
    rt.block_on(async {
        let channel = tonic::transport::Endpoint::new(addr.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let bearer: tonic::metadata::MetadataValue<_> =
            format!("Bearer {}", token.trim()).parse().unwrap();
        let mut client = pb::events_client::EventsClient::with_interceptor(
            channel,
            move |mut req: tonic::Request<()>| {
                req.metadata_mut().insert("authorization", bearer.clone());
                Ok(req)
            },
        );
        for b in 0..burst.div_ceil(100) {
            let entries = (0..100.min(burst - b * 100))
                .map(|i| pb::PutEventsEntry {
                    source: "load".into(),
                    detail_type: "Load".into(),
                    detail_json: format!(r#"{{"n": {}}}"#, b * 100 + i),
                    ..Default::default()
                })
                .collect();
            let r = client
                .put(pb::PutEventsRequest { entries })
                .await
                .unwrap()
                .into_inner();
            assert_eq!(r.failed_entry_count, 0);
        }
    });
    let done = wait_for("the burst delivered", Duration::from_secs(600), || {
        let ok: Vec<i64> = load
            .received()
            .iter()
            .filter(|r| r.status == 200)
            .map(|r| r.at_ms)
            .collect();
        (ok.len() >= burst).then_some(ok)
    });
    // From the first put to the last delivery received (the receiver's clock).
    let secs = (done.iter().max().unwrap() - start_ms) as f64 / 1000.0;
    println!(
        "burst of {burst} events → {burst} webhook deliveries: {secs:.2} s, {:.0} deliveries/s",
        burst as f64 / secs
    );
}
