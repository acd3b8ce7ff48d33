//! The event bus and rules end to end: app events (PutEvents) matched by EventBridge patterns
//! start real tasks that receive the event; failing deliveries are retried and dead-lettered;
//! a controller killed mid-burst loses no event and starts no task twice.

use std::collections::HashSet;
use std::time::Duration;

use skiff_tests::{cli, put_event, wait_for, wait_status, Env};

const LONG: Duration = Duration::from_secs(60);

fn tasks_of_group(addr: &str, group: &str) -> Vec<serde_json::Value> {
    let out = cli(addr, &["tasks", "ls", "-o", "json"]);
    assert_eq!(out.code, 0, "{out:?}");
    out.json()
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["group"] == group)
        .cloned()
        .collect()
}

#[test]
fn matching_app_events_start_a_task_that_receives_the_event() {
    let mut env = Env::new();
    let addr = env.dev();
    env.register_busybox(
        &addr,
        "fulfil",
        &[
            "sh",
            "-c",
            "echo \"env=$SKIFF_EVENT\"; echo \"file=$(cat /run/skiff/event.json)\"",
        ],
    );
    env.put_yaml(&addr, "rules", "big-orders",
        "name: big-orders\n\
         pattern:\n\
         \x20 source: [shop]\n\
         \x20 detail-type: [OrderPlaced]\n\
         \x20 detail:\n\
         \x20   total: [{numeric: ['>', 100]}]\n\
         \x20   country: [{anything-but: [XX]}]\n\
         targets:\n\
         \x20 - id: fulfil\n\
         \x20   task: {task_definition: fulfil}\n\
         \x20   input_transformer:\n\
         \x20     input_paths: {order: $.detail.id, total: $.detail.total}\n\
         \x20     input_template: '{\"order\": <order>, \"total\": <total>, \"rule\": \"<aws.events.rule-name>\"}'\n",
    );
    // Events the rule must not match come first: once the matching one has its task, the
    // dispatcher has read past them.
    put_event(
        &addr,
        "shop",
        "OrderPlaced",
        r#"{"id": "small", "total": 50, "country": "DE"}"#,
    );
    put_event(
        &addr,
        "shop",
        "OrderPlaced",
        r#"{"id": "blocked", "total": 500, "country": "XX"}"#,
    );
    put_event(
        &addr,
        "billing",
        "OrderPlaced",
        r#"{"id": "other", "total": 500, "country": "DE"}"#,
    );
    let id = put_event(
        &addr,
        "shop",
        "OrderPlaced",
        r#"{"id": "o-1", "total": 150.5, "country": "DE"}"#,
    );

    let task = wait_for("the rule's task", LONG, || {
        tasks_of_group(&addr, "rule:big-orders").into_iter().next()
    });
    let task_id = task["id"].as_str().unwrap().to_string();
    assert_eq!(task["startedBy"], format!("rule/big-orders/{id}"));
    let t = wait_status(&addr, &task_id, "STOPPED", LONG);
    assert_eq!(t["containers"][0]["exitCode"], 0, "{t}");
    let logs = cli(&addr, &["tasks", "logs", &task_id]).stdout;
    let expected = r#"{"order": "o-1", "total": 150.5, "rule": "big-orders"}"#;
    assert_eq!(logs, format!("env={expected}\nfile={expected}\n"));
    assert_eq!(tasks_of_group(&addr, "rule:big-orders").len(), 1);

    // The bus refuses bad entries one by one, naming the problem.
    let out = cli(
        &addr,
        &[
            "events",
            "put",
            "--source",
            "skiff.task",
            "--detail-type",
            "x",
        ],
    );
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("reserved"), "{out:?}");
    let out = cli(
        &addr,
        &[
            "events",
            "put",
            "--source",
            "shop",
            "--detail-type",
            "x",
            "--detail",
            "[1]",
        ],
    );
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("MalformedDetail"), "{out:?}");

    // Rules are listed, disabled (no new tasks) and re-enabled.
    let ls = cli(&addr, &["rules", "ls", "-o", "json"]).json();
    assert_eq!(ls[0]["name"], "big-orders");
    assert_eq!(ls[0]["enabled"], true);
    assert_eq!(cli(&addr, &["rules", "disable", "big-orders"]).code, 0);
    put_event(
        &addr,
        "shop",
        "OrderPlaced",
        r#"{"id": "o-2", "total": 999, "country": "DE"}"#,
    );
    assert_eq!(cli(&addr, &["rules", "enable", "big-orders"]).code, 0);
    let id3 = put_event(
        &addr,
        "shop",
        "OrderPlaced",
        r#"{"id": "o-3", "total": 999, "country": "DE"}"#,
    );
    wait_for("the task of o-3", LONG, || {
        tasks_of_group(&addr, "rule:big-orders")
            .iter()
            .any(|t| t["startedBy"] == format!("rule/big-orders/{id3}"))
            .then_some(())
    });
    assert_eq!(
        tasks_of_group(&addr, "rule:big-orders").len(),
        2,
        "o-2 arrived while the rule was disabled"
    );
}

#[test]
fn bad_rules_are_refused_with_the_offending_path() {
    let mut env = Env::new();
    let addr = env.dev();
    env.register_busybox(&addr, "job", &["true"]);
    for (yaml, expected) in [
        (
            "name: r\npattern: {source: shop}\ntargets: []\n",
            "pattern: source: a field's value must be a list",
        ),
        (
            "name: r\npattern: {detail: {size: [{numeric: ['>', big]}]}}\n",
            "pattern: detail.size[0].numeric",
        ),
        (
            "name: r\npattern: {source: [a]}\ntargets: [{id: t, task: {task_definition: nope}}]\n",
            "targets[0].task.task_definition: no task definition",
        ),
        (
            "name: r\npattern: {source: [a]}\ntargets: [{id: t, task: {task_definition: job, overrides: {containers: [{name: side}]}}}]\n",
            "overrides.containers[0].name",
        ),
        (
            "name: r\npattern: {source: [a]}\ntargets: [{id: t, task: {task_definition: job}, input_path: detail}]\n",
            "targets[0].input_path",
        ),
    ] {
        let f = env.path("bad.yaml");
        std::fs::write(&f, yaml).unwrap();
        let out = cli(&addr, &["rules", "put", "-f", f.to_str().unwrap()]);
        assert_ne!(out.code, 0, "{yaml}");
        assert!(out.stderr.contains(expected), "{expected:?} in {out:?}");
    }
    assert_eq!(
        cli(&addr, &["rules", "ls", "-o", "json"]).json(),
        serde_json::json!([])
    );
}

#[test]
fn failing_deliveries_are_retried_then_dead_lettered() {
    let mut env = Env::new();
    let addr = env.dev();
    env.register_busybox(&addr, "fragile", &["true"]);
    env.put_yaml(
        &addr,
        "rules",
        "fragile",
        "name: fragile\npattern: {source: [app]}\n\
         targets: [{id: run, task: {task_definition: fragile}, retry: {max_attempts: 2}}]\n",
    );
    // The definition goes away after the rule was put: deliveries fail until they give up.
    assert_eq!(
        cli(&addr, &["taskdefs", "deregister", "fragile:1"]).code,
        0,
        "{}",
        env.logs()
    );
    let id = put_event(&addr, "app", "Ping", "{}");
    let dl = wait_for("the dead letter", LONG, || {
        let v = cli(&addr, &["events", "dlq", "ls", "-o", "json"]).json();
        v.as_array().unwrap().first().cloned()
    });
    assert_eq!(dl["rule"], "fragile");
    assert_eq!(dl["eventId"], id.as_str());
    assert_eq!(dl["attempts"], 2);
    assert!(
        dl["lastError"]
            .as_str()
            .unwrap()
            .contains("no active task definition"),
        "{dl}"
    );
    assert_eq!(dl["event"]["id"], id.as_str());
    assert!(tasks_of_group(&addr, "rule:fragile").is_empty());
    // The rule's counters tell the same story: matched once, two failed attempts, one dead
    // letter, nothing invoked.
    let stats = cli(&addr, &["rules", "describe", "fragile", "-o", "json"]).json()["stats"].clone();
    assert_eq!(
        (
            &stats["matched"],
            &stats["failed"],
            &stats["deadLettered"],
            &stats["invoked"]
        ),
        (&1.into(), &2.into(), &1.into(), &0.into()),
        "{stats}"
    );
}

#[test]
fn a_controller_killed_mid_burst_loses_no_event_and_starts_no_task_twice() {
    let mut env = Env::new();
    let (ctl, addr) = env.controller("127.0.0.1:0", &["--plaintext"]);
    env.agent(&addr, "n1", &[]);
    env.register_busybox(&addr, "burst", &["true"]);
    env.put_yaml(&addr, "rules", "burst",
        "name: burst\npattern: {source: [burst]}\ntargets: [{id: run, task: {task_definition: burst}}]\n",
    );
    let mut acknowledged = Vec::new();
    for i in 0..30 {
        acknowledged.push(put_event(
            &addr,
            "burst",
            "Tick",
            &format!(r#"{{"n": {i}}}"#),
        ));
    }
    // Killed while the dispatcher is still creating the burst's tasks.
    env.procs[ctl].kill9();
    let hostport = addr.trim_start_matches("http://").to_string();
    let (_, addr2) = env.controller(&hostport, &["--plaintext"]);
    assert_eq!(addr2, addr);
    for i in 30..40 {
        acknowledged.push(put_event(
            &addr,
            "burst",
            "Tick",
            &format!(r#"{{"n": {i}}}"#),
        ));
    }
    let tasks = wait_for("a task per acknowledged event", LONG, || {
        let tasks = tasks_of_group(&addr, "rule:burst");
        (tasks.len() >= acknowledged.len()).then_some(tasks)
    });
    let started_by: Vec<String> = tasks
        .iter()
        .map(|t| t["startedBy"].as_str().unwrap().to_string())
        .collect();
    let unique: HashSet<&String> = started_by.iter().collect();
    assert_eq!(unique.len(), started_by.len(), "an event started two tasks");
    for id in &acknowledged {
        assert!(
            unique.contains(&format!("rule/burst/{id}")),
            "event {id} started no task"
        );
    }
    assert_eq!(tasks.len(), acknowledged.len());
}

#[test]
fn test_pattern_runs_locally_with_eventbridges_exit_codes() {
    let env = Env::new();
    let event = env.path("event.json");
    std::fs::write(
        &event,
        r#"{"source": "aws.s3", "detail-type": "Object Created",
            "detail": {"bucket": {"name": "photos"}, "object": {"key": "input/a b.jpg", "size": 2048}}}"#,
    )
    .unwrap();
    let ev = format!("@{}", event.display());
    // No controller is running at this address: the command must not need one.
    let run = |pattern: &str| {
        cli(
            "http://127.0.0.1:1",
            &[
                "events",
                "test-pattern",
                "--pattern",
                pattern,
                "--event",
                &ev,
            ],
        )
    };
    let out = run(
        r#"{"detail": {"object": {"key": [{"prefix": "input/"}], "size": [{"numeric": [">", 1024]}]}}}"#,
    );
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (0, "{\"result\":true}\n"),
        "{out:?}"
    );
    let out = run(r#"{"detail": {"object": {"key": [{"suffix": ".png"}]}}}"#);
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (1, "{\"result\":false}\n"),
        "{out:?}"
    );
    let out = run(r#"{"detail": {"object": {"size": [{"numeric": [">", "big"]}]}}}"#);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr.contains("detail.object.size[0].numeric"),
        "{out:?}"
    );
    let out = cli(
        "http://127.0.0.1:1",
        &[
            "events",
            "test-pattern",
            "--pattern",
            r#"{"a": ["b"]}"#,
            "--event",
            "not json",
        ],
    );
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("--event"), "{out:?}");
}
