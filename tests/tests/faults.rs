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

/// Invariants: a node cut off past the heartbeat timeout loses its tasks (`NodeLost`) and the
/// service's task is replaced on another node within the timeout and a placement; the cut-off
/// node's container keeps running through the partition; when the node returns, its copy is
/// stopped and exactly one copy runs — the replacement, untouched — and the lost task's record
/// stays as it was.
#[test]
fn a_partitioned_node_keeps_its_container_and_converges_to_one_copy_when_it_returns() {
    let mut env = Env::new();
    let mut lan = Lan::up();
    let (h1, h2) = (lan.host(), lan.host());
    let timeout = Duration::from_secs(3);
    let (_, addr) = env.controller(&format!("{}:0", lan.gateway), &["--node-timeout", "3s"]);
    env.agent_on(Some(&h1), &addr, "n1", &[]);
    env.register_json(
        &addr,
        serde_json::json!({"family": "web", "network_mode": "none", "containers": [{
            "name": "main", "image": env.busybox_image(), "command": ["sleep", "3600"],
            "stop_timeout": 1}]}),
    );
    let f = env.path("web.yaml");
    std::fs::write(&f, "name: web\ntask_definition: web\ndesired_count: 1\n").unwrap();
    let out = cli(&addr, &["services", "create", "-f", f.to_str().unwrap()]);
    assert_eq!(out.code, 0, "{out:?}");
    let first = wait_for("web's task RUNNING on n1", LONG, || {
        service_tasks(&addr, "web", 1)
    });
    assert_eq!(first[0].0, "n1");
    let old_id = first[0].1.clone();
    let n1_dir = env.path("agent-n1");
    let shims = shims_under(&n1_dir);
    assert_eq!(shims.len(), 1, "one container on n1");
    env.agent_on(Some(&h2), &addr, "n2", &[]);

    // The cable is pulled: n1 goes silent.
    h1.cut();
    let cut_at = Instant::now();
    let lost = wait_status(&addr, &old_id, "STOPPED", LONG);
    assert_eq!(lost["stopCode"], "NodeLost", "{lost}");
    assert!(
        lost["replacedBy"] == "",
        "a service's loop replaces its own tasks: {lost}"
    );
    let replaced = wait_for("web's task replaced on n2", LONG, || {
        service_tasks(&addr, "web", 1).filter(|t| t[0].0 == "n2")
    });
    let replaced_after = cut_at.elapsed();
    eprintln!("replaced on n2 {replaced_after:?} after the cut (node timeout {timeout:?})");
    assert!(
        replaced_after < timeout + Duration::from_secs(10),
        "replaced {replaced_after:?} after the cut"
    );
    // Cut off, n1 still runs its container.
    assert!(alive(shims[0]), "n1's container kept running while cut off");
    assert!(!node_connected(&addr, "n1"));

    // The cable goes back: n1 reconnects, is told its task is over, and stops it.
    h1.heal();
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
