//! Fault tests: agents as separate hosts on a lan of network namespaces the test creates
//! (`skiff_tests::netns`: veth + bridge), real processes and real containers. Each test names
//! the invariant it checks.

use std::time::{Duration, Instant};

use skiff_tests::netns::Lan;
use skiff_tests::{cli, node_connected, shims_under, wait_for, wait_status, Env};

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
    assert!(
        replaced_after < timeout + Duration::from_secs(10),
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
