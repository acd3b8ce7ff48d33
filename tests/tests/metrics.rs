//! Prometheus metrics end to end: a real Prometheus scrapes `skiff dev`'s controller (with a
//! read-only API token) and its agent (`--metrics-listen`) while a task burns CPU and holds
//! memory, a queue holds messages and a task fails; what Prometheus stores is what a user
//! would query. `promtool check metrics` lints both expositions by Prometheus's conventions.

use std::time::Duration;

use skiff_tests::prometheus::{lint, Job, Prometheus};
use skiff_tests::registry::free_port;
use skiff_tests::{cli, http, run_task, wait_for, wait_status, Env};

#[test]
fn a_real_prometheus_scrapes_the_controller_and_the_agent() {
    let mut env = Env::new();
    let agent_metrics = format!("127.0.0.1:{}", free_port());
    let addr = env.dev_with(&["--metrics-listen", &agent_metrics]);
    let base = env.procs[0].http_url();

    // The controller's metrics need an API token; a read-only one is enough.
    let (code, body) = http("GET", &format!("{base}/metrics"), None, b"");
    assert_eq!(code, 401, "{body}");
    let token = skiff_tests::read_only_token(&addr);

    // A task that holds ~40 MB and spins, under a 256 MiB limit; one that fails; a queue
    // with three messages.
    env.register_json(
        &addr,
        serde_json::json!({"family": "burner", "containers": [{"name": "main",
            "image": env.busybox_image(), "memory": 256, "stop_timeout": 1,
            "command": ["sh", "-c", "a=$(head -c 40000000 /dev/zero | tr '\\0' x); while :; do :; done"]}]}),
    );
    let burner = run_task(&addr, &["--task-def", "burner"]);
    wait_status(&addr, &burner, "RUNNING", Duration::from_secs(30));
    // A rule that publishes every stopped task to a topic fanned out to a queue, and a
    // service: rule counts, deliveries and service actions have series to show.
    assert_eq!(cli(&addr, &["queues", "create", "alerts-q"]).code, 0);
    assert_eq!(cli(&addr, &["topics", "put", "alerts"]).code, 0);
    let sub = cli(
        &addr,
        &["topics", "subscribe", "alerts", "--queue", "alerts-q"],
    );
    assert_eq!(sub.code, 0, "{sub:?}");
    env.put_yaml(
        &addr,
        "rules",
        "stops",
        "name: stops\npattern:\n  source: [skiff.task]\n  detail:\n    lastStatus: [STOPPED]\ntargets:\n  - id: t\n    notify: alerts\n",
    );
    env.register_busybox(&addr, "sleeper", &["sleep", "300"]);
    let svc = env.path("sleepers.yaml");
    std::fs::write(
        &svc,
        "name: sleepers\ntask_definition: sleeper\ndesired_count: 1\n",
    )
    .unwrap();
    let created = cli(&addr, &["services", "create", "-f", svc.to_str().unwrap()]);
    assert_eq!(created.code, 0, "{created:?}");
    let failed = run_task(&addr, &["--image", &env.busybox_image(), "--", "false"]);
    wait_status(&addr, &failed, "STOPPED", Duration::from_secs(30));
    assert_eq!(cli(&addr, &["queues", "create", "jobs"]).code, 0);
    for n in 0..3 {
        let sent = cli(&addr, &["queues", "send", "jobs", &format!("job {n}")]);
        assert_eq!(sent.code, 0, "{sent:?}");
    }

    // Both expositions pass Prometheus's own lint.
    let (code, controller_text) = http("GET", &format!("{base}/metrics"), Some(&token), b"");
    assert_eq!(code, 200, "{controller_text}");
    let (code, agent_text) = http("GET", &format!("http://{agent_metrics}/metrics"), None, b"");
    assert_eq!(code, 200, "{agent_text}");
    for (who, text) in [("controller", &controller_text), ("agent", &agent_text)] {
        let (ok, said) = lint(text);
        assert!(ok, "promtool check metrics on the {who}'s: {said}\n{text}");
    }

    let controller = base.trim_start_matches("http://").to_string();
    let prom = Prometheus::start(
        &env.path("prometheus"),
        &[
            Job {
                name: "skiff-controller",
                target: &controller,
                token: Some(&token),
            },
            Job {
                name: "skiff-agent",
                target: &agent_metrics,
                token: None,
            },
        ],
    );
    for job in ["skiff-controller", "skiff-agent"] {
        prom.wait_value(&format!("up{{job=\"{job}\"}}"), |v| v == 1.0);
    }

    // What runs now, by family and status; the queue's backlog; the node.
    prom.wait_value("skiff_tasks{family=\"burner\",status=\"RUNNING\"}", |v| {
        v == 1.0
    });
    prom.wait_value(
        "skiff_queue_messages{queue=\"jobs\",state=\"visible\"}",
        |v| v == 3.0,
    );
    prom.wait_value("skiff_nodes{state=\"READY\"}", |v| v == 1.0);
    // What happened: two placements at least, two starts timed, one task stopped.
    prom.wait_value("skiff_placements_total", |v| v >= 2.0);
    prom.wait_value("skiff_task_start_seconds_count", |v| v >= 2.0);
    prom.wait_value(
        "sum(skiff_task_status_changes_total{status=\"STOPPED\"})",
        |v| v >= 1.0,
    );
    prom.wait_value("skiff_events_total{source=\"skiff.task\"}", |v| v >= 6.0);
    prom.wait_value("skiff_store_flush_seconds_count", |v| v >= 1.0);
    prom.wait_value("skiff_store_size_bytes", |v| v > 0.0);

    // The burner's container as its cgroups count it: CPU time that grows, its working set,
    // its limit, no OOM kill.
    let series = |m: &str| format!("{m}{{task=\"{burner}\",container=\"main\"}}");
    let first = prom.wait_value(&series("skiff_container_cpu_seconds_total"), |v| v > 0.2);
    prom.wait_value(&series("skiff_container_cpu_seconds_total"), |v| {
        v > first + 0.5
    });
    prom.wait_value(&series("skiff_container_memory_working_set_bytes"), |v| {
        v > 35e6
    });
    prom.wait_value(&series("skiff_container_memory_limit_bytes"), |v| {
        v == (256u64 << 20) as f64
    });
    prom.wait_value(&series("skiff_container_oom_kills_total"), |v| v == 0.0);
    // The burner and the service's sleeper.
    prom.wait_value("skiff_agent_tasks{phase=\"RUNNING\"}", |v| v == 2.0);
    prom.wait_value(
        "skiff_service_actions_total{service=\"sleepers\",action=\"start\"}",
        |v| v >= 1.0,
    );
    prom.wait_value(
        "skiff_deliveries_total{topic=\"alerts\",outcome=\"delivered\"}",
        |v| v >= 1.0,
    );
    prom.wait_value("skiff_rule_matches_total{rule=\"stops\"}", |v| v >= 1.0);

    // Every query of the Grafana dashboard in deploy/ is valid PromQL to a real Prometheus,
    // and every skiff metric it names is one the controller or the agent serves.
    let dashboard: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../deploy/grafana/skiff-dashboard.json"),
        )
        .unwrap(),
    )
    .unwrap();
    // Read again now that every kind of series exists (rule counts, deliveries, service
    // actions appear with their first event).
    let (_, controller_text) = http("GET", &format!("{base}/metrics"), Some(&token), b"");
    let (_, agent_text) = http("GET", &format!("http://{agent_metrics}/metrics"), None, b"");
    // What is served: each family's TYPE line and the sample names its type makes.
    let mut served = Vec::new();
    for line in controller_text.lines().chain(agent_text.lines()) {
        let Some((family, kind)) = line.strip_prefix("# TYPE ").and_then(|t| t.split_once(' '))
        else {
            continue;
        };
        let suffixes: &[&str] = match kind {
            "counter" => &["_total"],
            "histogram" => &["_bucket", "_count", "_sum"],
            _ => &[""],
        };
        served.extend(suffixes.iter().map(|s| format!("{family}{s}")));
    }
    let mut checked = 0;
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            prom.query(expr);
            for name in metric_names(expr) {
                assert!(
                    served.contains(&name),
                    "the dashboard's {:?} names {name}, which skiff does not serve",
                    panel["title"]
                );
            }
            checked += 1;
        }
    }
    assert!(checked >= 18, "{checked} dashboard queries");

    // Stopped, the burner leaves the running count and its container's series.
    assert_eq!(cli(&addr, &["tasks", "stop", &burner]).code, 0);
    wait_status(&addr, &burner, "STOPPED", Duration::from_secs(30));
    wait_for(
        "the burner's series to end",
        Duration::from_secs(30),
        || {
            prom.query(&format!(
                "skiff_tasks{{family=\"burner\",status=\"RUNNING\"}} == 1 or {}",
                series("skiff_container_cpu_seconds_total")
            ))
            .is_empty()
            .then_some(())
        },
    );
}

/// The `skiff_…` metric names in a PromQL expression.
fn metric_names(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(i) = rest.find("skiff_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        names.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    names
}
