//! Services end to end with real containers: `deploy/examples/queue-workers` as written (the
//! image and the controller's address swapped for this machine's), fed 1,000 messages while
//! idle at zero. The service scales out, the backlog drains, a worker killed mid-message
//! gives its message back after the visibility timeout, a poison message ends in the
//! dead-letter queue, the controller is killed with `kill -9` mid-drain and started again,
//! and in the end every message was processed — duplicates only across receives, never by
//! two tasks within one visibility window — and the service is back at zero.

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use skiff_tests::registry::free_port;
use skiff_tests::{cli, wait_for, Env, OwnBridge, Proc};

const LONG: Duration = Duration::from_secs(180);
const JOBS: usize = 1000;

fn example(file: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy/examples/queue-workers")
        .join(file)
}

/// `skiff dev` on fixed ports (so a restart keeps the address the workers' relays use), its
/// bridge tasks on `bridge`.
fn start_dev(env: &mut Env, name: &str, grpc: u16, http: u16, bridge: &OwnBridge) -> usize {
    let data = env.path("dev");
    let (listen, http_listen) = (format!("127.0.0.1:{grpc}"), format!("127.0.0.1:{http}"));
    let mut args = vec![
        "dev",
        "--data-dir",
        data.to_str().unwrap(),
        "--listen",
        &listen,
        "--http-listen",
        &http_listen,
        "--credentials-listen",
        "127.0.0.1:0",
    ];
    args.extend(bridge.flags());
    env.procs.push(Proc::spawn(name, env.dir.path(), &args));
    let addr = format!("http://{listen}");
    wait_for("the dev agent to connect", Duration::from_secs(30), || {
        skiff_tests::node_connected(&addr, "local").then_some(())
    });
    env.procs.len() - 1
}

/// One SQS JSON-protocol call with the admin token; None unless it answered 200.
fn sqs(
    base: &str,
    token: &str,
    action: &str,
    body: serde_json::Value,
) -> Option<serde_json::Value> {
    let (status, answer) = skiff_tests::sqs(base, token, action, body);
    (status == 200).then_some(answer)
}

fn queue_counts(addr: &str, queue: &str) -> Option<(u64, u64)> {
    let out = cli(addr, &["queues", "describe", queue, "-o", "json"]);
    if out.code != 0 {
        return None;
    }
    let s = out.json();
    let n = |f: &str| s[f].as_u64().unwrap_or(0);
    Some((n("visible"), n("inFlight")))
}

fn service(addr: &str) -> Option<serde_json::Value> {
    let out = cli(
        addr,
        &["services", "describe", "queue-workers", "-o", "json"],
    );
    (out.code == 0).then(|| out.json())
}

/// The pid of a process running `sleep 30` (a worker holding the slow message), if any.
fn sleeping_worker() -> Option<(i32, i32)> {
    for e in fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmdline = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if cmdline == b"sleep\x0030\x00" {
            let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let ppid = stat
                .rsplit(')')
                .next()?
                .split_whitespace()
                .nth(1)?
                .parse()
                .ok()?;
            return Some((pid, ppid));
        }
    }
    None
}

#[test]
fn queue_workers_scale_out_of_zero_drain_a_thousand_messages_through_crashes_and_return_to_zero() {
    // The workers on a bridge of the test's own: they reach the queue API through the agent.
    let bridge = OwnBridge::new("skq", 100);
    let mut env = Env::new();
    let (grpc, http) = (free_port(), free_port());
    let dev = start_dev(&mut env, "dev", grpc, http, &bridge);
    let addr = format!("http://127.0.0.1:{grpc}");
    let base = format!("http://127.0.0.1:{http}");
    let token = skiff_tests::admin_token(&addr);

    // The README's commands, with this machine's busybox and controller address.
    for args in [
        vec!["queues", "create", "jobs-dlq"],
        vec!["queues", "create", "done"],
        vec![
            "queues",
            "create",
            "jobs",
            "--visibility-timeout",
            "5s",
            "--dead-letter-queue",
            "jobs-dlq",
            "--max-receives",
            "3",
        ],
    ] {
        let out = cli(&addr, &args);
        assert_eq!(out.code, 0, "{args:?}: {out:?}");
    }
    let role = cli(
        &addr,
        &["roles", "put", "-f", example("role.yaml").to_str().unwrap()],
    );
    assert_eq!(role.code, 0, "{role:?}");
    let worker = fs::read_to_string(example("worker.toml"))
        .unwrap()
        .replace("docker.io/library/busybox:1.36", &env.busybox_image());
    let worker_file = env.path("worker.toml");
    fs::write(&worker_file, worker).unwrap();
    let reg = cli(
        &addr,
        &["taskdefs", "register", "-f", worker_file.to_str().unwrap()],
    );
    assert_eq!(reg.code, 0, "{reg:?}");
    let created = cli(
        &addr,
        &[
            "services",
            "create",
            "-f",
            example("service.yaml").to_str().unwrap(),
        ],
    );
    assert_eq!(created.code, 0, "{created:?}");
    let idle = wait_for("the idle service", LONG, || {
        let s = service(&addr)?;
        (s["deployments"][0]["rollout"] == "COMPLETED").then_some(s)
    });
    assert_eq!(idle["desired"].as_u64().unwrap_or(0), 0, "{idle}");
    assert!(
        idle["tasks"].as_array().is_none_or(|t| t.is_empty()),
        "{idle}"
    );

    // A slow message first (its first worker is killed while on it), a poison one, then 1,000.
    let first_sent = Instant::now();
    for body in ["slow-1", "poison-1"] {
        sqs(
            &base,
            &token,
            "SendMessage",
            serde_json::json!({"QueueUrl": "jobs", "MessageBody": body}),
        )
        .expect("sent");
    }
    for batch in 0..JOBS / 10 {
        let entries: Vec<serde_json::Value> = (0..10)
            .map(|i| {
                let n = batch * 10 + i;
                serde_json::json!({"Id": i.to_string(), "MessageBody": format!("job-{n}")})
            })
            .collect();
        let r = sqs(
            &base,
            &token,
            "SendMessageBatch",
            serde_json::json!({"QueueUrl": "jobs", "Entries": entries}),
        )
        .expect("sent");
        assert_eq!(r["Successful"].as_array().map(Vec::len), Some(10), "{r}");
    }
    let first_running = wait_for("a worker RUNNING", LONG, || {
        let s = service(&addr)?;
        (s["running"].as_u64().unwrap_or(0) >= 1).then(Instant::now)
    });
    eprintln!(
        "first message → first worker RUNNING: {:?}",
        first_running - first_sent
    );

    // The worker that took the slow message is killed mid-message.
    let (sleep_pid, worker_pid) = wait_for("a worker on the slow message", LONG, sleeping_worker);
    assert_eq!(unsafe { libc::kill(worker_pid, libc::SIGKILL) }, 0);
    let _ = sleep_pid;

    // The controller (with its agent) is killed mid-drain and started again on the same ports.
    wait_for("300 messages done", LONG, || {
        let (visible, _) = queue_counts(&addr, "done")?;
        (visible >= 300).then_some(())
    });
    let scaled = service(&addr).unwrap();
    assert!(
        scaled["desired"].as_u64().unwrap() > 1,
        "scaled out: {scaled}"
    );
    let (waiting, in_flight) = queue_counts(&addr, "jobs").unwrap();
    assert!(waiting + in_flight > 0, "the kill comes mid-drain");
    env.procs[dev].kill9();
    start_dev(&mut env, "dev-again", grpc, http, &bridge);

    // Drained: nothing left in jobs, the poison in the dead-letter queue.
    wait_for("jobs drained", LONG, || {
        (queue_counts(&addr, "jobs")? == (0, 0)).then_some(())
    });
    let (dead, _) = queue_counts(&addr, "jobs-dlq").unwrap();
    assert_eq!(dead, 1);
    let dlq = sqs(
        &base,
        &token,
        "ReceiveMessage",
        serde_json::json!({"QueueUrl": "jobs-dlq"}),
    )
    .unwrap();
    assert_eq!(dlq["Messages"][0]["Body"], "poison-1", "{dlq}");

    // Every message was processed; a message processed twice was so on different receives
    // (it came back only after its visibility timeout, never to two tasks at once).
    let mut processed: BTreeMap<String, Vec<(String, u32)>> = BTreeMap::new();
    loop {
        let got = sqs(
            &base,
            &token,
            "ReceiveMessage",
            serde_json::json!({"QueueUrl": "done", "MaxNumberOfMessages": 10, "VisibilityTimeout": 3600}),
        )
        .unwrap();
        let Some(messages) = got["Messages"].as_array().filter(|m| !m.is_empty()) else {
            break;
        };
        for m in messages {
            let body = m["Body"].as_str().unwrap();
            let parts: Vec<&str> = body.split(' ').collect();
            assert_eq!(parts.len(), 3, "{body}");
            processed
                .entry(parts[0].to_string())
                .or_default()
                .push((parts[1].to_string(), parts[2].parse().unwrap()));
        }
    }
    let mut want: Vec<String> = (0..JOBS).map(|n| format!("job-{n}")).collect();
    want.push("slow-1".into());
    want.sort();
    let got: Vec<String> = processed.keys().cloned().collect();
    assert_eq!(
        got.len(),
        want.len(),
        "missing: {:?}",
        want.iter()
            .filter(|w| !processed.contains_key(*w))
            .take(5)
            .collect::<Vec<_>>()
    );
    assert_eq!(got, want);
    let mut duplicates = 0;
    for (body, runs) in &processed {
        if runs.len() > 1 {
            duplicates += runs.len() - 1;
            let mut receives: Vec<u32> = runs.iter().map(|r| r.1).collect();
            receives.sort();
            receives.dedup();
            assert_eq!(
                receives.len(),
                runs.len(),
                "{body} processed twice on one receive: {runs:?}"
            );
        }
    }
    let slow = &processed["slow-1"];
    assert!(
        slow.iter().all(|r| r.1 >= 2),
        "the killed worker's message came back: {slow:?}"
    );
    let tasks: std::collections::BTreeSet<&str> =
        processed.values().flatten().map(|r| r.0.as_str()).collect();
    eprintln!(
        "{} messages processed by {} tasks, {duplicates} duplicates (each on a later receive)",
        processed.len(),
        tasks.len()
    );
    assert!(tasks.len() > 1, "the work was shared: {tasks:?}");

    // Back at zero after the scale-in cooldown, with the decisions that got it there.
    let done = wait_for("the service back at zero", LONG, || {
        let s = service(&addr)?;
        let none = s["tasks"].as_array().is_none_or(|t| t.is_empty());
        (s["desired"].as_u64().unwrap_or(0) == 0 && none).then_some(s)
    });
    let actions: Vec<&str> = done["decisions"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["action"].as_str())
        .collect();
    assert!(actions.contains(&"scale-out"), "{actions:?}");
    assert!(actions.contains(&"scale-in"), "{actions:?}");
}

#[test]
fn a_container_failing_its_health_check_gets_its_task_replaced() {
    let mut env = Env::new();
    let addr = env.dev();
    // Healthy while /ok exists: for about 8 s, then UNHEALTHY at the next check.
    let def = env.path("flaky.yaml");
    fs::write(
        &def,
        format!(
            "family: flaky\ncontainers:\n  - name: main\n    image: {}\n    command: [sh, -c, 'touch /ok; sleep 8; rm /ok; exec sleep 3600']\n    stop_timeout: 1s\n    health_check:\n      command: [CMD-SHELL, test -f /ok]\n      interval: 5s\n      timeout: 2s\n      retries: 1\n",
            env.busybox_image()
        ),
    )
    .unwrap();
    let reg = cli(
        &addr,
        &["taskdefs", "register", "-f", def.to_str().unwrap()],
    );
    assert_eq!(reg.code, 0, "{reg:?}");
    let svc = env.path("flaky-service.yaml");
    fs::write(
        &svc,
        "name: flaky\ntask_definition: flaky\ndesired_count: 1\n",
    )
    .unwrap();
    assert_eq!(
        cli(&addr, &["services", "create", "-f", svc.to_str().unwrap()]).code,
        0
    );

    // RUNNING but UNKNOWN until the first check (5 s): the deployment is not done yet.
    let starting = wait_for("a RUNNING task", LONG, || {
        let out = cli(&addr, &["services", "describe", "flaky", "-o", "json"]).json();
        let t = out["tasks"].as_array()?.first()?.clone();
        (t["lastStatus"] == "RUNNING").then_some((t, out))
    });
    assert_eq!(
        starting.0["containers"][0]["health"], "UNKNOWN",
        "{}",
        starting.1
    );
    assert_eq!(
        starting.1["deployments"][0]["rollout"], "IN_PROGRESS",
        "{}",
        starting.1
    );
    // HEALTHY after the first check, and then the deployment completes.
    let first = wait_for("a HEALTHY task and the deployment done", LONG, || {
        let out = cli(&addr, &["services", "describe", "flaky", "-o", "json"]).json();
        let t = out["tasks"].as_array()?.first()?.clone();
        (t["containers"][0]["health"] == "HEALTHY"
            && out["deployments"][0]["rollout"] == "COMPLETED")
            .then_some((t, out))
    });
    let id = first.0["id"].as_str().unwrap().to_string();
    let table = cli(&addr, &["tasks", "describe", &id]);
    assert!(table.stdout.contains("HEALTHY"), "{table:?}");

    // Then UNHEALTHY: the service stops it, saying why, and runs another.
    let stopped = wait_for("the unhealthy task replaced", LONG, || {
        let t = skiff_tests::task(&addr, &id);
        (t["lastStatus"] == "STOPPED").then_some(t)
    });
    assert_eq!(
        stopped["stoppedReason"], "Task failed container health checks",
        "{stopped}"
    );
    assert_eq!(
        stopped["stopCode"], "ServiceSchedulerInitiated",
        "{stopped}"
    );
    assert_eq!(stopped["containers"][0]["health"], "UNHEALTHY", "{stopped}");
    let replaced = wait_for("a replacement", LONG, || {
        let out = cli(&addr, &["services", "describe", "flaky", "-o", "json"]).json();
        let t = out["tasks"].as_array()?.first()?.clone();
        (t["id"] != id.as_str() && t["lastStatus"] == "RUNNING").then_some(out)
    });
    assert!(
        replaced["lastFailure"]
            .as_str()
            .unwrap()
            .contains("health checks"),
        "{replaced}"
    );
    // The health changes were Task State Change events.
    let events = cli(&addr, &["events", "tail", "-n", "100", "-o", "json"]);
    assert!(events.stdout.contains("UNHEALTHY"), "{events:?}");
}

/// The service's desired count, running tasks and latest decisions.
fn counts_of(addr: &str, name: &str) -> Option<(u64, u64, serde_json::Value)> {
    let out = cli(addr, &["services", "describe", name, "-o", "json"]);
    if out.code != 0 {
        return None;
    }
    let s = out.json();
    let n = |f: &str| s[f].as_u64().unwrap_or(0);
    Some((n("desired"), n("running"), s["decisions"].clone()))
}

#[test]
fn services_scale_on_a_redis_list_and_a_redis_streams_consumer_group() {
    let mut env = Env::new();
    let mut redis = skiff_tests::redis::RedisServer::start(&env.path("redis"), &[]);
    let addr = env.dev();
    env.register_busybox(&addr, "sleeper", &["sleep", "3600"]);
    let base = format!("redis://127.0.0.1:{}", redis.port);
    for (name, source) in [
        ("list-workers", format!("{base}/jobs")),
        ("stream-workers", format!("{base}/events#workers")),
    ] {
        let f = env.path(&format!("{name}.yaml"));
        fs::write(
            &f,
            format!(
                "name: {name}\ntask_definition: sleeper\nstop_timeout: 1s\nautoscaling:\n  source: {source}\n  min: 0\n  max: 5\n  target_per_task: 10\n  scale_in_cooldown: 2s\n  stale_after: 3s\n"
            ),
        )
        .unwrap();
        let out = cli(&addr, &["services", "create", "-f", f.to_str().unwrap()]);
        assert_eq!(out.code, 0, "{out:?}");
    }
    // 25 list items: 3 tasks. A stream with 15 entries, 4 of them read but not acknowledged
    // by the group (pending): ceil((11 + 4) / 10) = 2.
    let items: Vec<String> = (0..25).map(|n| format!("job-{n}")).collect();
    let mut push = vec!["RPUSH", "jobs"];
    push.extend(items.iter().map(String::as_str));
    redis.cli(&push);
    redis.cli(&["XGROUP", "CREATE", "events", "workers", "0", "MKSTREAM"]);
    for n in 0..15 {
        redis.cli(&["XADD", "events", "*", "n", &n.to_string()]);
    }
    redis.cli(&[
        "XREADGROUP",
        "GROUP",
        "workers",
        "w1",
        "COUNT",
        "4",
        "STREAMS",
        "events",
        ">",
    ]);
    for (name, want) in [("list-workers", 3), ("stream-workers", 2)] {
        wait_for(&format!("{name} at {want}"), LONG, || {
            let (desired, running, _) = counts_of(&addr, name)?;
            (desired == want && running == want).then_some(())
        });
    }
    let (_, _, decisions) = counts_of(&addr, "stream-workers").unwrap();
    let detail: serde_json::Value = decisions
        .as_array()
        .unwrap()
        .iter()
        .find(|d| d["action"] == "scale-out")
        .map(|d| serde_json::from_str(d["detailJson"].as_str().unwrap()).unwrap())
        .expect("a scale-out decision");
    assert_eq!(
        (detail["visible"].as_u64(), detail["in_flight"].as_u64()),
        (Some(11), Some(4)),
        "{detail}"
    );

    // The list empties: back to zero after the 2 s scale-in cooldown.
    redis.cli(&["DEL", "jobs"]);
    wait_for("list-workers at zero", LONG, || {
        let (desired, running, _) = counts_of(&addr, "list-workers")?;
        (desired == 0 && running == 0).then_some(())
    });

    // Redis goes away: its last report turns stale after 3 s and the stream's workers hold.
    redis.stop();
    wait_for("a hold on the stale backlog", LONG, || {
        let (_, _, decisions) = counts_of(&addr, "stream-workers")?;
        decisions
            .as_array()?
            .iter()
            .any(|d| {
                d["action"] == "hold"
                    && d["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("stale after 3s"))
            })
            .then_some(())
    });
    let (desired, _, _) = counts_of(&addr, "stream-workers").unwrap();
    assert_eq!(desired, 2, "held at its count");
}

#[test]
fn services_wait_fails_at_once_when_a_task_can_never_be_placed() {
    let mut env = Env::new();
    let addr = env.dev();
    env.register_json(
        &addr,
        serde_json::json!({"family": "huge", "containers": [{"name": "main",
            "image": env.busybox_image(), "command": ["sleep", "3600"], "cpu": 512.0}]}),
    );
    let svc = env.path("huge-service.yaml");
    fs::write(
        &svc,
        "name: huge\ntask_definition: huge\ndesired_count: 1\n",
    )
    .unwrap();
    assert_eq!(
        cli(&addr, &["services", "create", "-f", svc.to_str().unwrap()]).code,
        0
    );
    let started = Instant::now();
    let out = cli(&addr, &["services", "wait", "huge", "--timeout", "5m"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stderr.contains("can never be placed"), "{out:?}");
    assert!(
        out.stderr.contains("512 vCPU"),
        "the reason names what is missing: {out:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "at once, not at the timeout"
    );
}
