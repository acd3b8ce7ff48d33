//! Schedules end to end: real containers on a fast rate, overlap policies with a long-running
//! task, and catch-up after the controller was down across fire times.

use std::time::Duration;

use skiff_tests::{cli, wait_for, Env};

const LONG: Duration = Duration::from_secs(60);

fn tasks(addr: &str, schedule: &str) -> Vec<serde_json::Value> {
    cli(addr, &["tasks", "ls", "--limit", "1000", "-o", "json"])
        .json()
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["group"] == format!("schedule:{schedule}"))
        .cloned()
        .collect()
}

fn describe(addr: &str, name: &str) -> serde_json::Value {
    let out = cli(addr, &["schedules", "describe", name, "-o", "json"]);
    assert_eq!(out.code, 0, "{out:?}");
    out.json()[0].clone()
}

#[test]
fn a_fast_schedule_runs_real_containers_and_describe_shows_its_runs() {
    let mut env = Env::new();
    let addr = env.dev();
    env.register_busybox(&addr, "tick", &["cat", "/run/skiff/event.json"]);
    env.put_yaml(
        &addr,
        "schedules",
        "tick",
        "name: tick\nexpression: rate(2 seconds)\ntimezone: Europe/Berlin\noverlap: allow\n\
         task: {task_definition: tick}\n",
    );
    let done = wait_for("two runs of the schedule", LONG, || {
        let t = tasks(&addr, "tick");
        let stopped: Vec<_> = t
            .into_iter()
            .filter(|t| t["lastStatus"] == "STOPPED")
            .collect();
        (stopped.len() >= 2).then_some(stopped)
    });
    for t in &done {
        assert_eq!(t["containers"][0]["exitCode"], 0, "{t}");
        let id = t["id"].as_str().unwrap();
        let event: serde_json::Value =
            serde_json::from_str(&cli(&addr, &["tasks", "logs", id]).stdout).unwrap();
        assert_eq!(event["schedule"], "tick");
        // The scheduled time, in the schedule's zone.
        let when = event["scheduledTime"].as_str().unwrap();
        assert!(
            when.ends_with("+01:00") || when.ends_with("+02:00"),
            "{when}"
        );
        assert_eq!(t["startedBy"], format!("schedule/tick/{when}"));
    }
    let d = describe(&addr, "tick");
    assert_eq!(d["nextFireTimes"].as_array().unwrap().len(), 5, "{d}");
    let runs = d["runs"].as_array().unwrap();
    assert!(runs.len() >= 2, "{d}");
    assert!(
        runs.iter().any(|r| r["outcome"] == "STOPPED, exit 0"),
        "{d}"
    );
    assert_eq!(cli(&addr, &["schedules", "disable", "tick"]).code, 0);
    assert_eq!(
        describe(&addr, "tick")["nextFireTimes"],
        serde_json::json!([])
    );
    // Bad expressions and zones are refused, naming the field.
    for (expr, zone, want) in [
        ("cron(0 25 * * *)", "UTC", "hour field"),
        ("rate(5 fortnights)", "UTC", "fortnights"),
        ("rate(5 minutes)", "Mars/Base", "timezone"),
    ] {
        let f = env.path("bad.yaml");
        std::fs::write(&f, format!("name: bad\nexpression: {expr}\ntimezone: {zone}\ntask: {{task_definition: tick}}\n")).unwrap();
        let out = cli(&addr, &["schedules", "put", "-f", f.to_str().unwrap()]);
        assert_ne!(out.code, 0);
        assert!(out.stderr.contains(want), "{want:?} in {out:?}");
    }
}

#[test]
fn overlapping_runs_are_forbidden_or_replaced() {
    let mut env = Env::new();
    let addr = env.dev();
    env.register_busybox(&addr, "long", &["sleep", "60"]);
    env.put_yaml(
        &addr,
        "schedules",
        "solo",
        "name: solo\nexpression: rate(2 seconds)\noverlap: forbid\ntask: {task_definition: long}\n",
    );
    env.put_yaml(&addr, "schedules", "fresh", "name: fresh\nexpression: rate(2 seconds)\noverlap: replace\ntask: {task_definition: long}\n");
    env.put_yaml(
        &addr,
        "schedules",
        "many",
        "name: many\nexpression: rate(2 seconds)\noverlap: allow\ntask: {task_definition: long}\n",
    );
    // allow: runs pile up while the earlier ones are still going.
    wait_for("two overlapping runs", LONG, || {
        let running = tasks(&addr, "many")
            .iter()
            .filter(|t| t["lastStatus"] == "RUNNING")
            .count();
        (running >= 2).then_some(())
    });
    // forbid: the first run keeps going; later fire times are skipped and recorded.
    wait_for("a skipped overlapping run", LONG, || {
        describe(&addr, "solo")["runs"]
            .as_array()?
            .iter()
            .any(|r| {
                r["outcome"]
                    .as_str()
                    .is_some_and(|o| o.starts_with("skipped-overlap"))
            })
            .then_some(())
    });
    assert_eq!(tasks(&addr, "solo").len(), 1);
    // replace: the previous run is stopped by the scheduler when the next one starts.
    let replaced = wait_for("a replaced run", LONG, || {
        tasks(&addr, "fresh")
            .into_iter()
            .find(|t| t["stopCode"] == "ServiceSchedulerInitiated")
    });
    assert!(replaced["stoppedReason"]
        .as_str()
        .unwrap()
        .contains("replaced by the run of"));
    for s in ["solo", "fresh", "many"] {
        assert_eq!(cli(&addr, &["schedules", "rm", s]).code, 0);
    }
    let all: Vec<_> = ["solo", "fresh", "many"]
        .iter()
        .flat_map(|s| tasks(&addr, s))
        .collect();
    for t in all {
        cli(&addr, &["tasks", "stop", t["id"].as_str().unwrap()]);
    }
}

#[test]
fn missed_fire_times_follow_the_catch_up_policy_after_downtime() {
    let mut env = Env::new();
    let (ctl, addr) = env.controller("127.0.0.1:0", &["--plaintext"]);
    env.agent(&addr, "n1", &[]);
    env.register_busybox(&addr, "job", &["true"]);
    for (name, policy) in [
        ("skip", "skip"),
        ("once", "run-once"),
        ("all", "run-all\ncatch_up_limit: 2"),
    ] {
        env.put_yaml(&addr, "schedules", name,
            &format!("name: {name}\nexpression: rate(2 seconds)\noverlap: allow\ncatch_up: {policy}\ntask: {{task_definition: job}}\n"),
        );
    }
    // Each has run at least once before the controller goes down.
    wait_for("the first runs", LONG, || {
        ["skip", "once", "all"]
            .iter()
            .all(|s| !tasks(&addr, s).is_empty())
            .then_some(())
    });
    let before: Vec<usize> = ["skip", "once", "all"]
        .iter()
        .map(|s| tasks(&addr, s).len())
        .collect();
    env.procs[ctl].terminate();
    let down_ms = chrono::Utc::now().timestamp_millis();
    // Down across several fire times (each schedule fires every 2 s).
    let down = std::time::Instant::now();
    wait_for("the downtime", Duration::from_secs(20), || {
        (down.elapsed() >= Duration::from_secs(7)).then_some(())
    });
    let hostport = addr.trim_start_matches("http://").to_string();
    let up_ms = chrono::Utc::now().timestamp_millis();
    env.controller(&hostport, &["--plaintext"]);
    // The first pass after the restart applies each policy; the next on-time fire follows.
    let outcome = |name: &str| -> Vec<serde_json::Value> {
        describe(&addr, name)["runs"].as_array().unwrap().clone()
    };
    wait_for("the skip policy's record", LONG, || {
        outcome("skip")
            .iter()
            .any(|r| {
                r["outcome"]
                    .as_str()
                    .is_some_and(|o| o.starts_with("skipped-catch-up"))
            })
            .then_some(())
    });
    // Catch-up runs for fire times inside the downtime (a later stall of the machine could
    // make more, for later fire times).
    let caught_up = |name: &str| -> usize {
        outcome(name)
            .iter()
            .filter(|r| {
                r["outcome"]
                    .as_str()
                    .is_some_and(|o| o.ends_with("(catch-up)"))
            })
            .filter(|r| {
                let at = chrono::DateTime::parse_from_rfc3339(r["scheduledTime"].as_str().unwrap())
                    .unwrap()
                    .timestamp_millis();
                (down_ms - 2_000..=up_ms + 5_000).contains(&at)
            })
            .count()
    };
    wait_for("run-once and run-all to catch up", LONG, || {
        (caught_up("once") >= 1 && caught_up("all") >= 2).then_some(())
    });
    assert_eq!(caught_up("skip"), 0);
    assert_eq!(caught_up("once"), 1);
    assert_eq!(caught_up("all"), 2);
    assert!(tasks(&addr, "once").len() > before[1]);
}

#[test]
fn a_fire_whose_task_cannot_start_is_retried_then_dead_lettered() {
    let mut env = Env::new();
    let addr = env.dev();
    env.register_busybox(&addr, "gone", &["true"]);
    env.put_yaml(&addr, "schedules", "broken",
        "name: broken\nexpression: rate(3 seconds)\ntask: {task_definition: gone}\nretry: {max_attempts: 2}\n",
    );
    // The definition goes away after the schedule was put.
    assert_eq!(cli(&addr, &["taskdefs", "deregister", "gone:1"]).code, 0);
    let dl = wait_for("the schedule's dead letter", LONG, || {
        cli(&addr, &["events", "dlq", "ls", "-o", "json"])
            .json()
            .as_array()?
            .iter()
            .find(|d| d["rule"] == "schedule:broken")
            .cloned()
    });
    assert_eq!(dl["attempts"], 2, "{dl}");
    assert!(
        dl["lastError"]
            .as_str()
            .unwrap()
            .contains("no active task definition"),
        "{dl}"
    );
    let runs = describe(&addr, "broken")["runs"].clone();
    assert!(
        runs.as_array().unwrap().iter().any(|r| r["outcome"]
            .as_str()
            .is_some_and(|o| o.starts_with("dead-lettered after 2 attempts"))),
        "{runs}"
    );
    assert!(tasks(&addr, "broken").is_empty());
}

#[test]
fn one_time_and_bounded_schedules() {
    let mut env = Env::new();
    let addr = env.dev();
    env.register_busybox(&addr, "once", &["true"]);
    let fmt = |d: chrono::DateTime<chrono::Utc>| d.format("%Y-%m-%dT%H:%M:%S").to_string();
    let now = chrono::Utc::now();
    // at(): once, at that wall-clock time in the schedule's zone (UTC here).
    let at = fmt(now + chrono::Duration::seconds(3));
    env.put_yaml(
        &addr,
        "schedules",
        "once",
        &format!("name: once\nexpression: at({at})\ntask: {{task_definition: once}}\n"),
    );
    assert_eq!(
        describe(&addr, "once")["nextFireTimes"],
        serde_json::json!([format!("{at}Z")])
    );
    let t = wait_for("the one-time run", LONG, || {
        tasks(&addr, "once").into_iter().next()
    });
    assert_eq!(t["startedBy"], format!("schedule/once/{at}Z"));
    wait_for("no fire time left", LONG, || {
        (describe(&addr, "once")["nextFireTimes"] == serde_json::json!([])).then_some(())
    });
    // start/end: fire times only inside the window.
    let start = now + chrono::Duration::hours(1);
    let end = start + chrono::Duration::minutes(30);
    env.put_yaml(&addr, "schedules", "window",
        &format!(
            "name: window\nexpression: rate(10 minutes)\nstart: {}Z\nend: {}Z\ntask: {{task_definition: once}}\n",
            fmt(start),
            fmt(end)
        ),
    );
    let next = describe(&addr, "window")["nextFireTimes"].clone();
    let expected: Vec<String> = (0..4)
        .map(|i| format!("{}Z", fmt(start + chrono::Duration::minutes(10 * i))))
        .collect();
    assert_eq!(next, serde_json::json!(expected));
}

/// Milliseconds of an RFC 3339 time.
fn ms(rfc3339: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(rfc3339)
        .unwrap_or_else(|e| panic!("{rfc3339:?}: {e}"))
        .timestamp_millis()
}

#[test]
fn a_schedule_puts_events_for_rules_and_spreads_fires_over_its_window() {
    let mut env = Env::new();
    let addr = env.dev();
    env.register_busybox(&addr, "on-ping", &["cat", "/run/skiff/event.json"]);
    // The rule routes the schedule's events (here to a task; to any target a rule has).
    let rule = env.path("rule.yaml");
    std::fs::write(
        &rule,
        "name: on-ping\npattern: {source: [skiff.scheduler], resources: [schedule/ping]}\n\
         targets: [{id: run, task: {task_definition: on-ping}}]\n",
    )
    .unwrap();
    assert_eq!(
        cli(&addr, &["rules", "put", "-f", rule.to_str().unwrap()]).code,
        0
    );
    // Fires every 3 s, each at a moment within 2 s after its fire time.
    env.put_yaml(
        &addr,
        "schedules",
        "ping",
        "name: ping\nexpression: rate(3 seconds)\nflexible_window: 2s\n\
         event: {detail_type: Nightly Ping, detail: {job: nightly}}\n",
    );
    let task = wait_for("a task started by the schedule's event", LONG, || {
        cli(&addr, &["tasks", "ls", "--limit", "1000", "-o", "json"])
            .json()
            .as_array()?
            .iter()
            .find(|t| t["group"] == "rule:on-ping" && t["lastStatus"] == "STOPPED")
            .cloned()
    });
    assert_eq!(task["containers"][0]["exitCode"], 0, "{task}");
    let logs = cli(&addr, &["tasks", "logs", task["id"].as_str().unwrap()]).stdout;
    let event: serde_json::Value = serde_json::from_str(&logs).unwrap();
    assert_eq!(event["source"], "skiff.scheduler", "{event}");
    assert_eq!(event["detail-type"], "Nightly Ping", "{event}");
    assert_eq!(event["resources"], serde_json::json!(["schedule/ping"]));
    assert_eq!(event["detail"]["job"], "nightly", "{event}");
    assert_eq!(event["detail"]["schedule"], "ping", "{event}");
    // The event's time is the fire time it stands for.
    let scheduled = event["detail"]["scheduledTime"].as_str().unwrap();
    assert_eq!(
        ms(event["time"].as_str().unwrap()),
        ms(scheduled) / 1000 * 1000
    );

    // Each fire lands inside its window (allowing 2 s for a loaded machine), and the window
    // is used, not just its start.
    let runs = wait_for("five fires", LONG, || {
        let runs = describe(&addr, "ping")["runs"].as_array()?.clone();
        (runs.len() >= 5).then_some(runs)
    });
    let mut offsets = Vec::new();
    let mut ids = std::collections::HashSet::new();
    for r in &runs {
        let outcome = r["outcome"].as_str().unwrap();
        let id = outcome
            .strip_prefix("event ")
            .unwrap_or_else(|| panic!("{r}"));
        assert!(ids.insert(id.to_string()), "one event per fire: {runs:?}");
        let fired = r["firedMs"]
            .as_str()
            .map_or_else(|| r["firedMs"].as_i64().unwrap(), |s| s.parse().unwrap());
        offsets.push(fired - ms(r["scheduledTime"].as_str().unwrap()));
    }
    assert!(
        offsets.iter().all(|o| (0..2_000 + 2_000).contains(o)),
        "fire - fire time, ms: {offsets:?}"
    );
    assert!(
        offsets.iter().any(|o| *o > 300),
        "a 2 s window spreads fires: {offsets:?}"
    );
    // An event schedule has no run to overlap, and says so.
    let f = env.path("bad.yaml");
    std::fs::write(
        &f,
        "name: bad\nexpression: rate(1 minute)\noverlap: forbid\nevent: {detail: {a: 1}}\n",
    )
    .unwrap();
    let out = cli(&addr, &["schedules", "put", "-f", f.to_str().unwrap()]);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("overlap"), "{out:?}");
}
