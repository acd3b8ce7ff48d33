//! Fault tests: agents as separate hosts on a lan of network namespaces the test creates
//! (`skiff_tests::netns`: veth + bridge), real processes and real containers. Each test names
//! the invariant it checks.

use std::time::{Duration, Instant};

use skiff_tests::netns::Lan;
use skiff_tests::{
    cli, group_tasks, hostport, node_connected, put_until_acknowledged, shims_under, wait_for,
    wait_status, Env,
};

const LONG: Duration = Duration::from_secs(30);

/// The nodes of a service's RUNNING tasks once it has exactly `n` tasks, all RUNNING, with
/// their ids.
fn service_tasks(addr: &str, name: &str, n: usize) -> Option<Vec<(String, String)>> {
    let out = cli(addr, &["services", "describe", name, "-o", "json"]).json();
    let tasks = out["tasks"].as_array()?;
    let running: Vec<(String, String)> = tasks
        .iter()
        .filter(|t| t["lastStatus"] == "RUNNING")
        .map(|t| {
            let s = |k: &str| t[k].as_str().unwrap_or("").to_string();
            (s("nodeId"), s("id"))
        })
        .collect();
    (running.len() == n && tasks.len() == n).then_some(running)
}

/// Whether process `pid` is alive (a zombie is not).
fn alive(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| {
        s.lines()
            .any(|l| l.starts_with("State:") && !l.contains('Z'))
    })
}

/// How node n1 is lost in `a_lost_node_s_service_task_is_replaced_and_one_copy_is_left`.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    /// Its cable is pulled (its veth taken down), then put back.
    Cut,
    /// Its agent is killed (-9), then started again.
    Kill9,
}

/// Registers `web` (busybox sleeping, no network) and creates a service of it with
/// `desired` tasks and the extra service-file lines `more`.
fn web_service(env: &Env, addr: &str, desired: usize, more: &str) {
    env.register_json(
        addr,
        serde_json::json!({"family": "web", "network_mode": "none", "containers": [{
            "name": "main", "image": env.busybox_image(), "command": ["sleep", "3600"],
            "stop_timeout": 1}]}),
    );
    let f = env.path("web.yaml");
    std::fs::write(
        &f,
        format!("name: web\ntask_definition: web\ndesired_count: {desired}\n{more}"),
    )
    .unwrap();
    let out = cli(addr, &["services", "create", "-f", f.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{out:?}");
}

/// Invariants: a node lost past the heartbeat timeout — cut off or its agent killed — loses
/// its tasks (`NodeLost`) and the service's task is replaced on another node within the
/// timeout and a placement; its container keeps running meanwhile (cut off, or under its
/// shim without the agent); when the node returns, its copy is stopped and exactly one copy
/// runs — the replacement, untouched — and the lost task's record stays as it was.
fn a_lost_node_s_service_task_is_replaced_and_one_copy_is_left(fault: Fault) {
    let mut env = Env::new();
    let mut lan = Lan::up();
    let (h1, h2) = (lan.host(), lan.host());
    let timeout = Duration::from_secs(3);
    let (_, addr) = env.controller(&format!("{}:0", lan.gateway), &["--node-timeout", "3s"]);
    let n1 = env.agent_on(Some(&h1), &addr, "n1", &[]);
    web_service(&env, &addr, 1, "");
    let first = wait_for("web's task RUNNING on n1", LONG, || {
        service_tasks(&addr, "web", 1)
    });
    assert_eq!(first[0].0, "n1");
    let old_id = first[0].1.clone();
    let n1_dir = env.path("agent-n1");
    let shims = shims_under(&n1_dir);
    assert_eq!(shims.len(), 1, "one container on n1");
    env.agent_on(Some(&h2), &addr, "n2", &[]);

    let lost_at = Instant::now();
    match fault {
        Fault::Cut => h1.cut(),
        Fault::Kill9 => env.procs[n1].kill9(),
    }
    let lost = wait_status(&addr, &old_id, "STOPPED", LONG);
    assert_eq!(lost["stopCode"], "NodeLost", "{lost}");
    assert!(
        lost["replacedBy"] == "",
        "a service's loop replaces its own tasks: {lost}"
    );
    let replaced = wait_for("web's task replaced on n2", LONG, || {
        service_tasks(&addr, "web", 1).filter(|t| t[0].0 == "n2")
    });
    let replaced_after = lost_at.elapsed();
    eprintln!(
        "{fault:?}: replaced on n2 {replaced_after:?} after the fault (node timeout {timeout:?})"
    );
    // (3.0 s cut off, 4.0 s killed, alone on this machine; the bound leaves room for this
    // binary's other tests, one of which starts 1,000 containers alongside.)
    assert!(
        replaced_after < timeout + Duration::from_secs(25),
        "replaced {replaced_after:?} after the fault"
    );
    assert!(
        alive(shims[0]),
        "n1's container kept running while n1 was lost"
    );
    assert!(!node_connected(&addr, "n1"));

    // n1 returns: it reconnects, is told its task is over, and stops it.
    match fault {
        Fault::Cut => h1.heal(),
        Fault::Kill9 => {
            env.agent_on(Some(&h1), &addr, "n1", &[]);
        }
    }
    wait_for("n1 back and its copy stopped", LONG, || {
        (node_connected(&addr, "n1") && shims_under(&n1_dir).is_empty()).then_some(())
    });
    assert!(!alive(shims[0]));
    // One copy: the replacement, still the same task on n2, and its one container.
    assert_eq!(service_tasks(&addr, "web", 1), Some(replaced.clone()));
    assert_eq!(shims_under(&env.path("agent-n2")).len(), 1);
    let after = wait_status(&addr, &old_id, "STOPPED", LONG);
    assert_eq!(
        (
            &after["stopCode"],
            &after["stoppedReason"],
            &after["version"]
        ),
        (&lost["stopCode"], &lost["stoppedReason"], &lost["version"]),
        "the lost task's record is not rewritten by the returning node: {after}"
    );
}

/// A cut cable leaves the agent's TCP connection open for minutes: the controller closes a
/// session silent for the node timeout, its silence counted from the last message.
#[test]
fn a_node_cut_off_loses_its_service_task_to_another_node_and_its_copy_stops_when_it_returns() {
    a_lost_node_s_service_task_is_replaced_and_one_copy_is_left(Fault::Cut);
}

#[test]
fn an_agent_killed_loses_its_service_task_to_another_node_and_its_copy_stops_when_it_returns() {
    a_lost_node_s_service_task_is_replaced_and_one_copy_is_left(Fault::Kill9);
}

/// Invariant: restarting the agents one by one (as an upgrade does, here with the same
/// binary) keeps a service at its desired count throughout: each agent re-adopts its
/// containers, so the same three tasks run before, during and after.
#[test]
fn agents_restarted_one_by_one_keep_a_service_at_its_desired_count() {
    let mut env = Env::new();
    let mut lan = Lan::up();
    let hosts: Vec<_> = (0..3).map(|_| lan.host()).collect();
    let (_, addr) = env.controller(&format!("{}:0", lan.gateway), &["--node-timeout", "10s"]);
    let mut agents = Vec::new();
    for (i, h) in hosts.iter().enumerate() {
        agents.push(env.agent_on(Some(h), &addr, &format!("n{i}"), &[]));
    }
    web_service(&env, &addr, 3, "placement:\n  distinct_nodes: true\n");
    let before = wait_for("web's 3 tasks RUNNING", LONG, || {
        service_tasks(&addr, "web", 3)
    });

    // A watcher samples the service while the agents restart.
    let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (addr, done) = (addr.clone(), done.clone());
        std::thread::spawn(move || {
            let mut samples = Vec::new();
            while !done.load(std::sync::atomic::Ordering::Acquire) {
                let out = cli(&addr, &["services", "describe", "web", "-o", "json"]).json();
                let running = out["tasks"].as_array().map_or(0, |t| {
                    t.iter().filter(|t| t["lastStatus"] == "RUNNING").count()
                });
                samples.push(running);
            }
            samples
        })
    };
    for (i, h) in hosts.iter().enumerate() {
        let node = format!("n{i}");
        assert_eq!(
            env.procs[agents[i]].terminate(),
            Some(0),
            "{node} stops cleanly"
        );
        wait_for(&format!("{node} to be seen gone"), LONG, || {
            (!node_connected(&addr, &node)).then_some(())
        });
        agents[i] = env.agent_on(Some(h), &addr, &node, &[]);
    }
    done.store(true, std::sync::atomic::Ordering::Release);
    let samples = watcher.join().unwrap();
    assert!(samples.len() >= 3, "the watcher sampled: {samples:?}");
    assert!(
        samples.iter().all(|&n| n == 3),
        "3 RUNNING at every sample: {samples:?}"
    );
    let mut after = service_tasks(&addr, "web", 3).expect("3 tasks RUNNING");
    let mut before = before;
    before.sort();
    after.sort();
    assert_eq!(after, before, "the same tasks, re-adopted, not replaced");
    let shims: usize = (0..3)
        .map(|i| shims_under(&env.path(&format!("agent-n{i}"))).len())
        .sum();
    assert_eq!(shims, 3, "one container each");
}

/// The node's last heartbeat, as `skiff nodes ls` shows it (ms since the epoch).
fn last_heartbeat_ms(addr: &str, node: &str) -> i64 {
    let nodes = cli(addr, &["nodes", "ls", "-o", "json"]).json();
    nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == node)
        .and_then(|n| n["lastHeartbeatMs"].as_i64())
        .unwrap_or(0)
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

/// Invariant: a partition shorter than the node timeout costs nothing — the node's task stays
/// RUNNING, unchanged, in the same container; `nodes ls` shows the silence while it lasts and
/// heartbeats again after it.
#[test]
fn a_partition_shorter_than_the_node_timeout_loses_nothing() {
    let mut env = Env::new();
    let mut lan = Lan::up();
    let h1 = lan.host();
    let (_, addr) = env.controller(&format!("{}:0", lan.gateway), &["--node-timeout", "10s"]);
    env.agent_on(Some(&h1), &addr, "n1", &[]);
    let img = env.busybox_image();
    let id = skiff_tests::run_task(
        &addr,
        &["--network", "none", "--image", &img, "--", "sleep", "3600"],
    );
    let running = wait_status(&addr, &id, "RUNNING", LONG);
    let shims = shims_under(&env.path("agent-n1"));
    assert_eq!(shims.len(), 1);

    h1.cut();
    let cut_at = now_ms();
    // The silence shows (heartbeats come every 500 ms when all is well).
    wait_for("n1's heartbeats to stop for 1.5 s", LONG, || {
        (now_ms() - last_heartbeat_ms(&addr, "n1") > 1500).then_some(())
    });
    h1.heal();
    wait_for("n1's heartbeats to come again", LONG, || {
        (last_heartbeat_ms(&addr, "n1") > cut_at + 1500).then_some(())
    });
    let after = skiff_tests::task(&addr, &id);
    assert_eq!(
        (&after["lastStatus"], &after["version"], &after["nodeId"]),
        (
            &running["lastStatus"],
            &running["version"],
            &running["nodeId"]
        ),
        "{after}"
    );
    assert!(node_connected(&addr, "n1"));
    assert_eq!(
        shims_under(&env.path("agent-n1")),
        shims,
        "the same container"
    );
    assert!(alive(shims[0]));
}

/// Invariant: a controller killed (-9) in the middle of a rolling deployment resumes it after
/// its restart: the service ends stable on the new revision with exactly its desired count,
/// no new-revision task made twice, every old one stopped by the scheduler, one container
/// per task.
#[test]
fn a_controller_killed_during_a_rolling_deployment_finishes_it_after_the_restart() {
    let mut env = Env::new();
    let (ctl, addr) = env.controller("127.0.0.1:0", &["--node-timeout", "20s"]);
    for node in ["n1", "n2"] {
        env.agent(&addr, node, &["--cpu", "4", "--memory", "2048"]);
    }
    web_service(
        &env,
        &addr,
        4,
        "deployment:\n  minimum_healthy_percent: 50\n  maximum_percent: 100\n",
    );
    wait_for("web's 4 tasks RUNNING", LONG, || {
        service_tasks(&addr, "web", 4)
    });
    env.register_json(
        &addr,
        serde_json::json!({"family": "web", "network_mode": "none", "containers": [{
            "name": "main", "image": env.busybox_image(), "command": ["sleep", "3601"],
            "stop_timeout": 1}]}),
    );
    let out = cli(
        &addr,
        &["services", "update", "web", "--task-definition", "web:2"],
    );
    assert_eq!(out.code, 0, "{out:?}");
    let family = |addr: &str| {
        cli(
            addr,
            &[
                "tasks", "ls", "--family", "web", "--limit", "0", "-o", "json",
            ],
        )
        .json()
        .as_array()
        .cloned()
        .unwrap_or_default()
    };
    // Killed as soon as the deployment has begun: a new task made, old ones still running.
    wait_for("the deployment to begin", LONG, || {
        let all = family(&addr);
        let new = all
            .iter()
            .filter(|t| t["taskDefinition"] == "web:2")
            .count();
        let old_running = all
            .iter()
            .filter(|t| t["taskDefinition"] == "web:1" && t["lastStatus"] == "RUNNING")
            .count();
        (new > 0 && old_running > 0).then_some(())
    });
    env.procs[ctl].kill9();
    let (_, again) = env.controller(hostport(&addr), &["--node-timeout", "20s"]);
    assert_eq!(again, addr);

    let out = cli(&addr, &["services", "wait", "web", "--timeout", "60s"]);
    assert_eq!(out.code, 0, "{out:?}\n{}", env.logs());
    let all = family(&addr);
    let new: Vec<_> = all
        .iter()
        .filter(|t| t["taskDefinition"] == "web:2")
        .collect();
    assert_eq!(new.len(), 4, "no new task made twice: {all:?}");
    assert!(new.iter().all(|t| t["lastStatus"] == "RUNNING"), "{new:?}");
    // Every old task is over, none lost with its node by the restart (one may have ended
    // on its own before the deployment and been replaced: the service keeps its count).
    for t in all.iter().filter(|t| t["taskDefinition"] == "web:1") {
        assert_eq!(t["lastStatus"], "STOPPED", "{t}");
        assert_ne!(t["stopCode"], "NodeLost", "{t}");
    }
    let by_scheduler = all
        .iter()
        .filter(|t| t["taskDefinition"] == "web:1" && t["stopCode"] == "ServiceSchedulerInitiated")
        .count();
    assert!(
        by_scheduler >= 4,
        "the deployment stopped the old tasks: {all:?}"
    );
    // (The old tasks' shims end just after their STOPPED is reported.)
    wait_for("one container per running task", LONG, || {
        let shims =
            shims_under(&env.path("agent-n1")).len() + shims_under(&env.path("agent-n2")).len();
        (shims == 4).then_some(())
    });
}

/// Invariant: a controller killed (-9) during a burst of 1,000 events whose rule starts a
/// task each loses none and doubles none: after its restart every acknowledged event has
/// exactly one task, every task ran to exit 0, and no event has two.
#[test]
fn a_controller_killed_during_a_burst_of_1000_events_loses_and_doubles_none() {
    let mut env = Env::new();
    let (ctl, addr) = env.controller("127.0.0.1:0", &["--node-timeout", "60s"]);
    env.agent(&addr, "n1", &["--cpu", "64", "--memory", "65536"]);
    env.task_per_event(&addr, "burst");
    // Four clients put 250 events each, one after another, each retried until acknowledged
    // (a put that failed may still have been stored: that event may have a task too).
    let acked = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (addr, acked) = (addr.clone(), acked.clone());
            std::thread::spawn(move || {
                for _ in 0..250 {
                    let id = put_until_acknowledged(&addr, "burst", Duration::from_secs(60));
                    acked.lock().unwrap().push(id);
                }
            })
        })
        .collect();
    wait_for("300 events acknowledged", Duration::from_secs(120), || {
        (acked.lock().unwrap().len() >= 300).then_some(())
    });
    env.procs[ctl].kill9();
    let at_kill = acked.lock().unwrap().len();
    env.controller(hostport(&addr), &["--node-timeout", "60s"]);
    for c in clients {
        c.join().unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert_eq!(acked.len(), 1000);
    eprintln!("killed after {at_kill} of 1000 events were acknowledged");

    let tasks = wait_for(
        "a STOPPED task for every acknowledged event",
        Duration::from_secs(300),
        || {
            let list = group_tasks(&addr, "rule:burst");
            let stopped = list.iter().all(|t| t["lastStatus"] == "STOPPED");
            (list.len() >= acked.len() && stopped).then_some(list)
        },
    );
    let mut per_event: std::collections::HashMap<String, Vec<&serde_json::Value>> =
        Default::default();
    for t in &tasks {
        let by = t["startedBy"].as_str().unwrap();
        let event = by.strip_prefix("rule/burst/").expect("started by the rule");
        per_event.entry(event.to_string()).or_default().push(t);
        assert_eq!(t["containers"][0]["exitCode"], 0, "{t}");
        assert_ne!(t["stopCode"], "TaskFailedToStart", "{t}");
    }
    for id in &acked {
        assert_eq!(
            per_event.get(id).map_or(0, Vec::len),
            1,
            "event {id}: one task"
        );
    }
    let doubled: Vec<_> = per_event.iter().filter(|(_, t)| t.len() > 1).collect();
    assert!(doubled.is_empty(), "events with two tasks: {doubled:?}");
}

/// Fills the filesystem holding `dir` with a file there (written until ENOSPC); returns it.
fn fill_disk(dir: &std::path::Path) -> std::path::PathBuf {
    use std::io::Write;
    let path = dir.join("filler");
    let mut f = std::fs::File::create(&path).unwrap();
    let chunk = vec![7u8; 1 << 20];
    loop {
        if let Err(e) = f.write_all(&chunk).and_then(|_| f.flush()) {
            assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
            break;
        }
    }
    // The last partial chunk too: nothing is left.
    while f.write(&chunk[..4096]).is_ok_and(|n| n > 0) {}
    path
}

/// Invariant: a full disk on an agent fails what it cannot do with a reason that says so —
/// a task that cannot start fails to start (`TaskFailedToStart`, "No space left on device"),
/// a running task still has its end recorded — and the agent keeps serving: once space is
/// freed, the next task runs.
#[test]
fn a_full_disk_on_an_agent_fails_tasks_clearly_and_the_agent_keeps_serving() {
    let mut env = Env::new();
    let (_, addr) = env.controller("127.0.0.1:0", &[]);
    // The agent's data dir is a small filesystem of its own.
    let data = env.path("agent-n1");
    std::fs::create_dir_all(&data).unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=24m", "tmpfs"])
        .arg(&data)
        .status()
        .unwrap();
    assert!(mounted.success());
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg("-l")
                .arg(&self.0)
                .status();
        }
    }
    let _unmount = Unmount(data.clone());
    let agent = env.agent(&addr, "n1", &[]);
    let img = env.busybox_image();
    // It works before the disk fills.
    let ok = cli(
        &addr,
        &[
            "run-task",
            "--wait",
            "--network",
            "none",
            "--image",
            &img,
            "--",
            "true",
        ],
    );
    assert_eq!(ok.code, 0, "{ok:?}\n{}", env.logs());
    // A task running (and logging) as the disk fills.
    let running = skiff_tests::run_task(
        &addr,
        &[
            "--network",
            "none",
            "--image",
            &img,
            "--stop-timeout",
            "1s",
            "--",
            "sh",
            "-c",
            "while true; do echo line; sleep 0.05; done",
        ],
    );
    wait_status(&addr, &running, "RUNNING", LONG);

    let filler = fill_disk(&data);
    let failed = cli(
        &addr,
        &[
            "run-task",
            "--wait",
            "-o",
            "json",
            "--network",
            "none",
            "--image",
            &img,
            "--",
            "true",
        ],
    );
    assert_eq!(failed.code, 125, "{failed:?}\n{}", env.logs());
    let t = failed.json();
    assert_eq!(t["stopCode"], "TaskFailedToStart", "{t}");
    assert!(
        t["stoppedReason"]
            .as_str()
            .unwrap()
            .contains("No space left on device"),
        "{t}"
    );
    let out = cli(&addr, &["tasks", "stop", &running]);
    assert_eq!(out.code, 0, "{out:?}");
    let stopped = wait_status(&addr, &running, "STOPPED", LONG);
    assert_eq!(stopped["stopCode"], "UserInitiated", "{stopped}");
    assert!(env.procs[agent].is_running(), "the agent is up");
    assert!(node_connected(&addr, "n1"));

    // Space again: it serves as before.
    std::fs::remove_file(filler).unwrap();
    let ok = cli(
        &addr,
        &[
            "run-task",
            "--wait",
            "--network",
            "none",
            "--image",
            &img,
            "--",
            "echo",
            "again",
        ],
    );
    assert_eq!(
        (ok.code, ok.stdout.as_str()),
        (0, ""),
        "{ok:?}\n{}",
        env.logs()
    );
}
