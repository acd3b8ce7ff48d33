//! End-to-end tests with a controller and agents as separate real processes: crashes, restarts,
//! re-adoption, placement across nodes.

use std::time::Duration;

use skiff_tests::{
    cli, hostport, node_connected, run_task, shims_under, task, wait_for, wait_status, Env,
};

const LONG: Duration = Duration::from_secs(30);

#[test]
fn controller_kill_9_and_restart_loses_no_task() {
    let mut env = Env::new();
    let (ctl, addr) = env.controller("127.0.0.1:0", &[]);
    env.agent(&addr, "n1", &[]);
    let img = env.busybox_image();

    let long = run_task(
        &addr,
        &[
            "--image",
            &img,
            "--",
            "sh",
            "-c",
            "sleep 2; echo finished; exit 4",
        ],
    );
    wait_status(&addr, &long, "RUNNING", LONG);
    let done = cli(
        &addr,
        &[
            "run-task", "--wait", "-o", "json", "--image", &img, "--", "true",
        ],
    )
    .json();
    // Acknowledged right before the crash: it must survive it.
    let last = run_task(
        &addr,
        &["--image", &img, "--", "sh", "-c", "echo after-crash"],
    );
    env.procs[ctl].kill9();

    let (_, addr2) = env.controller(hostport(&addr), &[]);
    assert_eq!(addr2, addr);
    wait_for("the agent to reconnect", LONG, || {
        node_connected(&addr, "n1").then_some(())
    });
    // The task that ran through the crash finishes normally and is recorded once.
    let t = wait_status(&addr, &long, "STOPPED", LONG);
    assert_eq!(t["containers"][0]["exitCode"], 4, "{t}");
    assert_eq!(t["stopCode"], "EssentialContainerExited");
    assert_eq!(cli(&addr, &["tasks", "logs", &long]).stdout, "finished\n");
    let t = wait_status(&addr, &last, "STOPPED", LONG);
    assert_eq!(t["containers"][0]["exitCode"], 0, "{t}");
    assert_eq!(
        task(&addr, done["id"].as_str().unwrap())["lastStatus"],
        "STOPPED"
    );
    let all = cli(&addr, &["tasks", "ls", "-o", "json"]).json();
    assert_eq!(all.as_array().unwrap().len(), 3, "{all}");
    // One event per transition, no duplicates across the restart.
    let events = cli(&addr, &["events", "tail", "-n", "1000", "-o", "json"]);
    let stopped = events
        .stdout
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|e| {
            e["detail"]["taskArn"] == long.as_str() && e["detail"]["lastStatus"] == "STOPPED"
        })
        .count();
    assert_eq!(stopped, 1, "{}", events.stdout);
}

#[test]
fn a_controller_with_an_agent_and_followers_connected_stops_at_once_on_sigterm() {
    let mut env = Env::new();
    let (ctl, addr) = env.controller("127.0.0.1:0", &[]);
    env.agent(&addr, "n1", &[]);
    let img = env.busybox_image();
    let id = run_task(
        &addr,
        &[
            "--image",
            &img,
            "--",
            "sh",
            "-c",
            "trap 'exit 0' TERM; while true; do echo tick; sleep 0.2; done",
        ],
    );
    wait_status(&addr, &id, "RUNNING", LONG);
    // Two followers on long-lived streams, besides the agent's session.
    let follow = |name: &str, args: &[&str]| {
        let out = std::fs::File::create(env.path(&format!("{name}.out"))).unwrap();
        let err = std::fs::File::create(env.path(&format!("{name}.err"))).unwrap();
        skiff_tests::skiff_command()
            .args(args)
            .env("SKIFF_ADDR", &addr)
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap()
    };
    let mut logs = follow("logs", &["tasks", "logs", &id, "--follow"]);
    let mut events = follow("events", &["events", "tail", "-f", "-n", "1"]);
    wait_for("the log follower's first lines", LONG, || {
        let out = std::fs::read_to_string(env.path("logs.out")).ok()?;
        out.contains("tick").then_some(())
    });
    wait_for("the event follower's first line", LONG, || {
        let out = std::fs::read_to_string(env.path("events.out")).ok()?;
        (!out.is_empty()).then_some(())
    });

    // SIGTERM: every stream ends ("stopping; retry"), so the graceful shutdown returns
    // without cutting a call off, and the state is flushed: exit 0.
    assert_eq!(env.procs[ctl].terminate(), Some(0));
    let stderr = env.procs[ctl].stderr_text();
    assert!(!stderr.contains("cut off"), "{stderr}");
    for (name, child) in [("logs", &mut logs), ("events", &mut events)] {
        let status = wait_for(&format!("the {name} follower to end"), LONG, || {
            child.try_wait().unwrap()
        });
        let err = std::fs::read_to_string(env.path(&format!("{name}.err"))).unwrap();
        assert_eq!(status.code(), Some(1), "{name}: {err}");
        assert!(
            err.contains("the controller is stopping; retry"),
            "{name}: {err}"
        );
    }

    // Back on the same address, the agent reconnects to the task it kept running.
    env.controller(hostport(&addr), &[]);
    wait_for("the agent to reconnect", LONG, || {
        node_connected(&addr, "n1").then_some(())
    });
    assert_eq!(task(&addr, &id)["lastStatus"], "RUNNING");
    cli(&addr, &["tasks", "stop", &id]);
    let t = wait_status(&addr, &id, "STOPPED", LONG);
    assert_eq!(t["containers"][0]["exitCode"], 0, "{t}");
}

#[test]
fn agent_restart_readopts_running_containers() {
    let mut env = Env::new();
    let (_, addr) = env.controller("127.0.0.1:0", &["--node-timeout", "20s"]);
    let agent = env.agent(&addr, "n1", &[]);
    let img = env.busybox_image();
    let agent_dir = env.path("agent-n1");

    let id = run_task(
        &addr,
        &[
            "--image",
            &img,
            "--",
            "sh",
            "-c",
            "echo started; while [ ! -e /tmp/go ]; do sleep 0.05; done; echo released; exit 5",
        ],
    );
    wait_status(&addr, &id, "RUNNING", LONG);
    let shim_before = shims_under(&agent_dir);
    assert_eq!(shim_before.len(), 1);

    env.procs[agent].kill9();
    // The container keeps running without its agent.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        shims_under(&agent_dir),
        shim_before,
        "the shim outlives the agent"
    );
    env.agent(&addr, "n1", &[]);
    assert_eq!(task(&addr, &id)["lastStatus"], "RUNNING");
    assert_eq!(
        shims_under(&agent_dir),
        shim_before,
        "re-adopted, not started again"
    );

    // Let it finish (through the container's own rootfs mount); the new agent reports the exit.
    std::fs::write(
        agent_dir.join(format!("state/tasks/{id}/main/rootfs/tmp/go")),
        "",
    )
    .unwrap();
    let t = wait_status(&addr, &id, "STOPPED", LONG);
    assert_eq!(t["containers"][0]["exitCode"], 5, "{t}");
    assert_eq!(
        cli(&addr, &["tasks", "logs", &id]).stdout,
        "started\nreleased\n"
    );
    let left = shims_under(&agent_dir);
    let what: Vec<String> = left
        .iter()
        .map(|p| std::fs::read_to_string(format!("/proc/{p}/cmdline")).unwrap_or_default())
        .collect();
    assert!(left.is_empty(), "{left:?} {what:?}");
}

#[test]
fn an_agent_killed_while_tasks_start_starts_each_of_them_again_once() {
    let mut env = Env::new();
    let (_, addr) = env.controller("127.0.0.1:0", &[]);
    let agent = env.agent(&addr, "n1", &[]);
    let img = env.busybox_image();
    let tasks_dir = env.path("agent-n1").join("state/tasks");
    // Bursts of tasks until the agent is caught holding some it has taken but not started;
    // then it is killed there (its shims, if any, survive it).
    let mut ids: Vec<String> = Vec::new();
    let mut caught = Vec::new();
    for _ in 0..20 {
        let burst: Vec<_> = (0..8)
            .map(|_| {
                let (addr, img) = (addr.clone(), img.clone());
                std::thread::spawn(move || {
                    run_task(
                        &addr,
                        &["--image", &img, "--", "sh", "-c", "echo ran $SKIFF_TASK_ID"],
                    )
                })
            })
            .collect();
        let deadline = std::time::Instant::now() + Duration::from_secs(3);
        while caught.is_empty() && std::time::Instant::now() < deadline {
            caught = skiff_tests::tasks_starting(&tasks_dir);
        }
        if !caught.is_empty() {
            env.procs[agent].kill9();
        }
        ids.extend(burst.into_iter().map(|t| t.join().unwrap()));
        if !caught.is_empty() {
            break;
        }
    }
    assert!(!caught.is_empty(), "never caught the agent starting a task");
    env.agent(&addr, "n1", &[]);

    // Every task runs exactly once and stops normally; none failed to start.
    for id in &ids {
        let t = wait_status(&addr, id, "STOPPED", LONG);
        assert_eq!(t["containers"][0]["exitCode"], 0, "{t}");
        assert_ne!(t["stopCode"], "TaskFailedToStart", "{t}");
        assert_eq!(
            cli(&addr, &["tasks", "logs", id]).stdout,
            format!("ran {id}\n"),
            "ran once"
        );
    }
    for id in &caught {
        assert!(ids.contains(id), "{id} was one of ours");
    }
}

#[test]
fn a_container_that_exits_while_its_agent_is_down_is_reported_with_its_exit_code() {
    let mut env = Env::new();
    let (_, addr) = env.controller("127.0.0.1:0", &["--node-timeout", "20s"]);
    let agent = env.agent(&addr, "n1", &[]);
    let img = env.busybox_image();
    let agent_dir = env.path("agent-n1");
    let id = run_task(
        &addr,
        &["--image", &img, "--", "sh", "-c", "sleep 1; exit 9"],
    );
    wait_status(&addr, &id, "RUNNING", LONG);
    env.procs[agent].kill9();
    let exit_file = agent_dir.join(format!("state/tasks/{id}/main/exit.json"));
    wait_for(
        "the container to exit while the agent is down",
        LONG,
        || exit_file.exists().then_some(()),
    );
    assert_eq!(
        task(&addr, &id)["lastStatus"],
        "RUNNING",
        "nobody has told the controller yet"
    );
    env.agent(&addr, "n1", &[]);
    let t = wait_status(&addr, &id, "STOPPED", LONG);
    assert_eq!(t["containers"][0]["exitCode"], 9, "{t}");
    assert_eq!(t["stopCode"], "EssentialContainerExited");
    // And its rootfs (on the state tmpfs) and upper layer (on disk) were cleaned up by the
    // new agent.
    let rootfs_dir = agent_dir.join(format!("state/tasks/{id}/main/rootfs"));
    let upper_dir = agent_dir.join(format!("tasks/{id}/main/upper"));
    wait_for("rootfs cleanup", LONG, || {
        (!rootfs_dir.exists() && !upper_dir.exists()).then_some(())
    });
}

#[test]
fn two_agents_both_receive_work_and_capacity_is_respected() {
    let mut env = Env::new();
    let (_, addr) = env.controller("127.0.0.1:0", &[]);
    env.agent(&addr, "a", &["--cpu", "1", "--memory", "512"]);
    env.agent(&addr, "b", &["--cpu", "1", "--memory", "512"]);
    let img = env.busybox_image();
    let ids: Vec<String> = (0..2)
        .map(|_| {
            run_task(
                &addr,
                &[
                    "--image",
                    &img,
                    "--cpu",
                    "1",
                    "--memory",
                    "64",
                    "--stop-timeout",
                    "1s",
                    "--",
                    "sleep",
                    "30",
                ],
            )
        })
        .collect();
    let nodes: Vec<String> = ids
        .iter()
        .map(|id| {
            wait_status(&addr, id, "RUNNING", LONG)["nodeId"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let mut sorted = nodes.clone();
    sorted.sort();
    assert_eq!(sorted, ["a", "b"], "one task per node");

    // Both nodes are full: the next one waits, saying why.
    let waiting = run_task(&addr, &["--image", &img, "--cpu", "0.5", "--", "true"]);
    let t = wait_for("a status reason", LONG, || {
        let t = task(&addr, &waiting);
        (!t["statusReason"].as_str().unwrap_or("").is_empty()).then_some(t)
    });
    assert_eq!(t["lastStatus"], "PROVISIONING");
    assert!(
        t["statusReason"]
            .as_str()
            .unwrap()
            .contains("waiting for capacity"),
        "{t}"
    );
    // One that can never fit says that instead.
    let never = run_task(&addr, &["--image", &img, "--cpu", "8", "--", "true"]);
    let t = wait_for("a status reason", LONG, || {
        let t = task(&addr, &never);
        (!t["statusReason"].as_str().unwrap_or("").is_empty()).then_some(t)
    });
    assert!(
        t["statusReason"].as_str().unwrap().contains("can ever fit"),
        "{t}"
    );
    let nodes_ls = cli(&addr, &["nodes", "ls", "-o", "json"]).json();
    assert!(
        nodes_ls
            .as_array()
            .unwrap()
            .iter()
            .all(|n| n["cpuUsed"] == 1.0),
        "{nodes_ls}"
    );

    // Freeing a node places the waiting task.
    assert_eq!(cli(&addr, &["tasks", "stop", &ids[0]]).code, 0);
    let t = wait_status(&addr, &waiting, "STOPPED", LONG);
    assert_eq!(t["nodeId"], nodes[0].as_str());
    assert_eq!(t["containers"][0]["exitCode"], 0);
    // A PROVISIONING task can be stopped without ever running.
    assert_eq!(cli(&addr, &["tasks", "stop", &never]).code, 0);
    let t = task(&addr, &never);
    assert_eq!(
        (t["lastStatus"].as_str(), t["stopCode"].as_str()),
        (Some("STOPPED"), Some("UserInitiated"))
    );
    let by_node = cli(&addr, &["tasks", "ls", "--node", "b", "-o", "json"]).json();
    assert!(by_node
        .as_array()
        .unwrap()
        .iter()
        .all(|t| t["nodeId"] == "b"));
    assert_eq!(cli(&addr, &["tasks", "stop", &ids[1]]).code, 0);
}

#[test]
fn a_silent_node_loses_its_tasks_as_node_lost() {
    let mut env = Env::new();
    let (_, addr) = env.controller("127.0.0.1:0", &["--node-timeout", "2s"]);
    let agent = env.agent(&addr, "n1", &[]);
    let img = env.busybox_image();
    let id = run_task(
        &addr,
        &["--image", &img, "--stop-timeout", "1s", "--", "sleep", "60"],
    );
    wait_status(&addr, &id, "RUNNING", LONG);
    env.procs[agent].kill9();
    let t = wait_status(&addr, &id, "STOPPED", LONG);
    assert_eq!(t["stopCode"], "NodeLost", "{t}");
    assert!(
        t["stoppedReason"].as_str().unwrap().contains("silent"),
        "{t}"
    );
    // When the agent comes back it is told to stop the orphaned container.
    env.agent(&addr, "n1", &[]);
    let agent_dir = env.path("agent-n1");
    wait_for("the orphan to be stopped", LONG, || {
        shims_under(&agent_dir).is_empty().then_some(())
    });
}

/// Invariant: a task whose container never started because skiff lost its node starts again,
/// once per loss and at most `MAX_STARTS` in all, as a new task that says what it replaces;
/// the old one never runs when its node returns; `run-task --wait` follows the work to its end.
#[test]
fn a_task_lost_with_its_node_before_it_ran_starts_again_on_another_node() {
    use skiff_tests::gate::Gate;
    use skiff_tests::images::{busybox_rootfs, layer_of};
    use skiff_tests::registry::{Registry, TestImage};

    let mut env = Env::new();
    let reg = Registry::start(&env.path("registry"), None);
    let layers = vec![layer_of(&busybox_rootfs(&env.path("busybox")))];
    let config = TestImage::config("amd64", &["true"], &[], &layers);
    reg.push("team/app", "v1", &TestImage { layers, config });
    // The agents pull through a gate that holds them until it opens: a pull that hangs keeps
    // the task PENDING on its node.
    let gate = Gate::closed(&reg.addr);
    let image = format!("{}/team/app:v1", gate.addr);
    let (_, addr) = env.controller("127.0.0.1:0", &["--node-timeout", "2s"]);
    let pull = ["--insecure-registry", gate.addr.as_str()];
    let n1 = env.agent(&addr, "n1", &pull);

    // The user's command waits for the work, whichever task ends up doing it.
    let waiter = {
        let (addr, image) = (addr.clone(), image.clone());
        std::thread::spawn(move || {
            cli(
                &addr,
                &[
                    "run-task",
                    "--wait",
                    "--image",
                    &image,
                    "--",
                    "sh",
                    "-c",
                    "echo ran $SKIFF_TASK_ID",
                ],
            )
        })
    };
    let first = wait_for("the task to be pulling its image on n1", LONG, || {
        let ls = cli(&addr, &["tasks", "ls", "-o", "json"]).json();
        let t = ls.as_array()?.first()?.clone();
        (t["lastStatus"] == "PENDING" && t["nodeId"] == "n1" && gate.held() > 0).then_some(t)
    });
    let first_id = first["id"].as_str().unwrap().to_string();
    let state = env.path("agent-n1").join("state/tasks").join(&first_id);
    assert!(state.exists(), "n1 holds the task it is starting");
    env.agent(&addr, "n2", &pull);

    // n1 dies mid-pull; once it is silent past the timeout, its task is lost and its work
    // starts again, on n2, where the pull goes through.
    env.procs[n1].kill9();
    gate.open();
    let lost = wait_status(&addr, &first_id, "STOPPED", LONG);
    assert_eq!(lost["stopCode"], "NodeLost", "{lost}");
    let next_id = lost["replacedBy"].as_str().expect("replacedBy").to_string();
    assert!(
        lost["stoppedReason"].as_str().unwrap().ends_with(&format!(
            "it had not started, so it starts again as task {next_id} (start 2 of 3)"
        )),
        "{lost}"
    );
    let next = wait_status(&addr, &next_id, "STOPPED", LONG);
    assert_eq!(
        (
            &next["nodeId"],
            &next["replaces"],
            &next["attempt"],
            &next["containers"][0]["exitCode"]
        ),
        (
            &"n2".into(),
            &first_id.as_str().into(),
            &2.into(),
            &0.into()
        ),
        "{next}\n{}",
        env.logs()
    );
    assert_eq!(
        cli(&addr, &["tasks", "logs", &next_id]).stdout,
        format!("ran {next_id}\n")
    );
    let described = cli(&addr, &["tasks", "describe", &next_id]).stdout;
    assert!(
        described.contains(&format!(
            "task {first_id} (lost with its node before it ran; this is start 2)"
        )),
        "{described}"
    );
    let waited = waiter.join().unwrap();
    assert_eq!(waited.code, 0, "{waited:?}");
    assert!(
        waited.stderr.contains(&format!(
            "task {first_id} was lost with its node before it started; its work starts again as task {next_id}"
        )),
        "{waited:?}"
    );

    // n1 comes back: it drops the start it never finished, and nothing tells it to start the
    // old task again.
    env.agent(&addr, "n1", &pull);
    wait_for("n1 to drop the start it never finished", LONG, || {
        (!state.exists()).then_some(())
    });
    let first = task(&addr, &first_id);
    assert_eq!(
        (&first["lastStatus"], &first["stopCode"]),
        (&"STOPPED".into(), &"NodeLost".into()),
        "{first}"
    );
    assert_eq!(cli(&addr, &["tasks", "logs", &first_id]).stdout, "");
    assert!(shims_under(&env.path("agent-n1")).is_empty());
    let all = cli(&addr, &["tasks", "ls", "-o", "json"]).json();
    assert_eq!(all.as_array().unwrap().len(), 2, "{all}");
}

#[test]
fn agent_config_file_and_log_rotation_end_to_end() {
    let mut env = Env::new();
    let (_, addr) = env.controller("127.0.0.1:0", &[]);
    let cfg = env.path("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            "controller = \"{addr}\"\nnode_id = \"from-file\"\ndata_dir = \"{}\"\ncpu = 1.5\nlog_max_bytes = 8192\nlog_keep = 2\n[labels]\nzone = \"attic\"\n",
            env.path("agent-from-file").display()
        ),
    )
    .unwrap();
    let join = skiff_tests::join_token(&addr);
    env.procs.push(skiff_tests::Proc::spawn(
        "agent-file",
        env.dir.path(),
        &["agent", "-c", cfg.to_str().unwrap(), "--join", &join],
    ));
    wait_for("the configured agent", LONG, || {
        node_connected(&addr, "from-file").then_some(())
    });
    let nodes = cli(&addr, &["nodes", "ls", "-o", "json"]).json();
    assert_eq!(nodes[0]["cpu"], 1.5);
    assert_eq!(nodes[0]["labels"]["zone"], "attic");

    let img = env.busybox_image();
    let out = cli(
        &addr,
        &[
            "run-task",
            "--wait",
            "-o",
            "json",
            "--image",
            &img,
            "--",
            "sh",
            "-c",
            "seq 1 5000",
        ],
    );
    let id = out.json()["id"].as_str().unwrap().to_string();
    let dir = env.path(&format!("agent-from-file/tasks/{id}/main"));
    let files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("container.log"))
        .collect();
    assert_eq!(files.len(), 3, "current + 2 rotated: {files:?}");
    for f in &files {
        assert!(std::fs::metadata(dir.join(f)).unwrap().len() <= 8192);
    }
    // The kept logs read back in order, ending at the last line.
    let logs = cli(&addr, &["tasks", "logs", &id]).stdout;
    let nums: Vec<u32> = logs.lines().map(|l| l.parse().unwrap()).collect();
    assert_eq!(*nums.last().unwrap(), 5000);
    assert!(
        nums.windows(2).all(|w| w[1] == w[0] + 1),
        "in order, no gaps within what is kept"
    );
    assert!(nums[0] > 1, "the oldest lines were rotated away");

    std::fs::write(&cfg, "controler = \"typo\"\n").unwrap();
    let bad = skiff_tests::skiff_command()
        .args(["agent", "-c", cfg.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(!bad.status.success());
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("controler"),
        "{}",
        String::from_utf8_lossy(&bad.stderr)
    );
}

#[test]
fn acknowledged_tasks_survive_repeated_controller_crashes() {
    let mut env = Env::new();
    let (ctl, addr) = env.controller("127.0.0.1:0", &[]);
    env.agent(&addr, "n1", &[]);
    let img = env.busybox_image();
    let port = hostport(&addr).to_string();

    // A client submits tasks as fast as it can while the controller is killed three times.
    let submitter = {
        let (addr, img) = (addr.clone(), img.clone());
        std::thread::spawn(move || {
            let mut acknowledged = Vec::new();
            let deadline = std::time::Instant::now() + Duration::from_secs(6);
            while std::time::Instant::now() < deadline {
                let out = cli(
                    &addr,
                    &[
                        "run-task",
                        "--image",
                        &img,
                        "--",
                        "sh",
                        "-c",
                        "echo ran $SKIFF_TASK_ID",
                    ],
                );
                if out.code == 0 {
                    acknowledged.push(out.stdout.trim().to_string());
                }
            }
            acknowledged
        })
    };
    let mut ctl = ctl;
    for _ in 0..3 {
        std::thread::sleep(Duration::from_millis(1200));
        env.procs[ctl].kill9();
        ctl = env.controller(&port, &[]).0;
    }
    let acknowledged = submitter.join().unwrap();
    assert!(
        acknowledged.len() >= 10,
        "the test should submit a fair number: {}",
        acknowledged.len()
    );
    wait_for("the agent to reconnect", LONG, || {
        node_connected(&addr, "n1").then_some(())
    });

    // Every acknowledged task exists, runs exactly once, and stops normally.
    for id in &acknowledged {
        let t = wait_status(&addr, id, "STOPPED", LONG);
        assert_eq!(t["containers"][0]["exitCode"], 0, "{t}");
        assert_eq!(
            cli(&addr, &["tasks", "logs", id]).stdout,
            format!("ran {id}\n"),
            "ran once"
        );
    }
    let all = cli(&addr, &["tasks", "ls", "--limit", "0", "-o", "json"]).json();
    let stored: Vec<&str> = all
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    for id in &acknowledged {
        assert!(
            stored.contains(&id.as_str()),
            "acknowledged task {id} was lost"
        );
    }
    // Tasks whose acknowledgement was lost in a crash may exist too, but none may be stuck.
    for t in all.as_array().unwrap() {
        let id = t["id"].as_str().unwrap();
        let t = wait_status(&addr, id, "STOPPED", LONG);
        assert_eq!(t["containers"][0]["exitCode"], 0, "{t}");
    }
    let _ = ctl;
}

#[test]
fn a_container_that_does_not_start_in_time_fails_cleanly() {
    let mut env = Env::new();
    let (_, addr) = env.controller("127.0.0.1:0", &[]);
    let cfg = env.path("agent.toml");
    let data = env.path("agent-slow");
    std::fs::write(
        &cfg,
        format!("controller = \"{addr}\"\nnode_id = \"slow\"\ndata_dir = \"{}\"\nstart_timeout = \"1ms\"\n", data.display()),
    )
    .unwrap();
    let join = skiff_tests::join_token(&addr);
    env.procs.push(skiff_tests::Proc::spawn(
        "agent-slow",
        env.dir.path(),
        &["agent", "-c", cfg.to_str().unwrap(), "--join", &join],
    ));
    wait_for("the agent", LONG, || {
        node_connected(&addr, "slow").then_some(())
    });
    let img = env.busybox_image();
    let reason = skiff_tests::failed_to_start(&addr, &["--image", &img, "--", "sleep", "600"]);
    assert!(reason.contains("did not start within 1ms"), "{reason}");
    // Nothing of it is left running: no shim, no container process.
    assert!(shims_under(&data).is_empty());
    let leftover = std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| std::fs::read(e.path().join("cmdline")).ok())
        .filter(|c| c.starts_with(b"sleep\x00600"))
        .count();
    assert_eq!(leftover, 0, "the container's process was killed");
}

/// A join string from the controller (`skiff tokens create --role join`).
fn join_string(addr: &str, extra: &[&str]) -> String {
    let mut args = vec!["tokens", "create", "--role", "join", "-o", "json"];
    args.extend_from_slice(extra);
    let out = cli(addr, &args);
    assert_eq!(out.code, 0, "{out:?}");
    out.json()["token"].as_str().unwrap().to_string()
}

/// Starts `skiff agent` and waits for it to exit; returns its stderr.
fn agent_that_must_fail(env: &Env, addr: &str, node: &str, extra: &[&str]) -> String {
    let data = env.path(&format!("agent-{node}"));
    let mut args = vec![
        "--addr",
        addr,
        "agent",
        "--controller",
        addr,
        "--node-id",
        node,
    ];
    let d = data.to_str().unwrap().to_string();
    args.extend(["--data-dir", &d]);
    args.extend_from_slice(extra);
    let out = skiff_tests::skiff_command()
        .args(&args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success(), "agent {node} should have failed");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn tls_join_tokens_node_certificates_and_revocation() {
    let mut env = Env::new();
    let (_, addr) = env.controller("127.0.0.1:0", &[]);
    assert!(addr.starts_with("https://"), "{addr}");
    assert_eq!(
        cli(&addr, &["nodes", "ls"]).code,
        0,
        "the CLI trusts the cluster CA"
    );
    // Plain HTTP to it does not work; a client trusting another CA refuses it.
    let plain = addr.replace("https://", "http://");
    assert_ne!(cli(&plain, &["nodes", "ls"]).code, 0);
    let other_ca = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    let fake_ca = env.path("other-ca.crt");
    std::fs::write(&fake_ca, other_ca.cert.pem()).unwrap();
    let out = skiff_tests::skiff_command()
        .args(["--addr", &addr, "nodes", "ls"])
        .env("SKIFF_CA_FILE", &fake_ca)
        .output()
        .unwrap();
    assert!(
        !out.status.success(),
        "a server not signed by the trusted CA is refused"
    );

    // Join: one token, one node; the key stays on the agent.
    let join = join_string(&addr, &[]);
    let n1 = env.agent(&addr, "n1", &["--join", &join]);
    assert!(
        env.procs[n1]
            .stdout_text()
            .contains("joined the cluster as node n1"),
        "{}",
        env.logs()
    );
    let img = env.busybox_image();
    let out = cli(
        &addr,
        &[
            "run-task",
            "--follow",
            "--image",
            &img,
            "--",
            "echo",
            "over mTLS",
        ],
    );
    assert_eq!(out.stdout, "over mTLS\n", "{out:?}\n{}", env.logs());
    let pki = env.path("agent-n1/pki");
    let key_mode = std::fs::metadata(pki.join("node.key"))
        .unwrap()
        .permissions();
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&key_mode) & 0o777,
        0o600
    );
    let reused = agent_that_must_fail(&env, &addr, "n2", &["--join", &join]);
    assert!(reused.contains("already used"), "{reused}");
    let brief = join_string(&addr, &["--ttl", "1s"]);
    std::thread::sleep(Duration::from_millis(1100));
    let expired = agent_that_must_fail(&env, &addr, "n3", &["--join", &brief]);
    assert!(expired.contains("expired"), "{expired}");
    assert!(
        agent_that_must_fail(&env, &addr, "n4", &["--join", "skiffjoin:nope"]).contains("--join")
    );

    // A restarted agent comes back with its certificate, no token needed.
    env.procs[n1].kill9();
    env.agent(&addr, "n1", &[]);

    // A certificate the cluster CA did not sign gets no session.
    let rogue_ca_key = rcgen::KeyPair::generate().unwrap();
    let mut rogue_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    rogue_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let issuer = rcgen::Issuer::new(rogue_params, rogue_ca_key);
    let node_key = rcgen::KeyPair::generate().unwrap();
    let mut node_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    node_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "rogue");
    node_params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let node_cert = node_params.signed_by(&node_key, &issuer).unwrap();
    let rogue_pki = env.path("agent-rogue/pki");
    std::fs::create_dir_all(&rogue_pki).unwrap();
    std::fs::copy(pki.join("ca.crt"), rogue_pki.join("ca.crt")).unwrap();
    std::fs::write(rogue_pki.join("node.crt"), node_cert.pem()).unwrap();
    std::fs::write(rogue_pki.join("node.key"), node_key.serialize_pem()).unwrap();
    let data = env.path("agent-rogue");
    let rogue = skiff_tests::Proc::spawn(
        "agent-rogue",
        env.dir.path(),
        &[
            "agent",
            "--controller",
            &addr,
            "--node-id",
            "rogue",
            "--data-dir",
            data.to_str().unwrap(),
        ],
    );
    wait_for("the rogue agent to be refused", LONG, || {
        rogue.stderr_text().contains("session failed").then_some(())
    });
    assert!(!node_connected(&addr, "rogue"));
    env.procs.push(rogue);

    // Revocation cuts a node off at once and for good.
    let out = cli(&addr, &["nodes", "revoke", "n1"]);
    assert!(out.stdout.contains("1 certificate(s) revoked"), "{out:?}");
    wait_for("n1 to be disconnected", LONG, || {
        (!node_connected(&addr, "n1")).then_some(())
    });
    let agent_log = env.logs();
    wait_for("n1's reconnects to be refused", LONG, || {
        env.logs().contains("has been revoked").then_some(())
    });
    assert!(!node_connected(&addr, "n1"), "{agent_log}");
}

#[test]
fn node_certificates_are_renewed_before_they_expire() {
    let mut env = Env::new();
    let (_, addr) = env.controller("127.0.0.1:0", &["--node-cert-ttl", "6s"]);
    let n1 = env.agent(&addr, "n1", &[]);
    let crt = env.path("agent-n1/pki/node.crt");
    let first = std::fs::read_to_string(&crt).unwrap();
    let joined_at = std::time::Instant::now();
    // Renewed after two thirds of its life (~4 s), before it expires at 6 s.
    let renewed = wait_for("the node certificate to be renewed", LONG, || {
        let now = std::fs::read_to_string(&crt).unwrap_or_default();
        (now != first && now.contains("BEGIN CERTIFICATE")).then_some(now)
    });
    assert!(
        joined_at.elapsed() < Duration::from_secs(6),
        "renewed in time"
    );
    assert!(env.procs[n1]
        .stderr_text()
        .contains("node certificate renewed"));
    // Past the first certificate's end, a restarted agent connects with the renewed one.
    while joined_at.elapsed() < Duration::from_millis(6500) {
        std::thread::sleep(Duration::from_millis(100));
    }
    env.procs[n1].kill9();
    assert_eq!(std::fs::read_to_string(&crt).unwrap(), renewed);
    env.agent(&addr, "n1", &[]);
    let img = env.busybox_image();
    let out = cli(
        &addr,
        &[
            "run-task", "--follow", "--image", &img, "--", "echo", "renewed",
        ],
    );
    assert_eq!(out.stdout, "renewed\n", "{out:?}\n{}", env.logs());
}

/// The nodes (ids) the RUNNING tasks of service `name` run on, sorted; None while any of
/// its tasks is not RUNNING or there are not `n`.
fn service_nodes(addr: &str, name: &str, n: usize) -> Option<Vec<String>> {
    let out = cli(addr, &["services", "describe", name, "-o", "json"]).json();
    let tasks = out["tasks"].as_array()?;
    let running: Vec<String> = tasks
        .iter()
        .filter(|t| t["lastStatus"] == "RUNNING")
        .map(|t| t["nodeId"].as_str().unwrap_or("").to_string())
        .collect();
    if running.len() != n || tasks.len() != n {
        return None;
    }
    let mut nodes = running;
    nodes.sort();
    Some(nodes)
}

/// Placement across three labelled nodes, as an operator uses it: a constraint keeps a
/// service in its zone and bin-pack puts its tasks on one node; distinct nodes put one task
/// per node; a cordoned node takes nothing and a task that fits nowhere says how many nodes
/// each reason excluded; a drained node's service tasks move to the other node of the zone
/// while the service stays at its desired count, and an uncordoned node takes tasks again.
#[test]
fn constraints_binpack_distinct_nodes_cordon_and_drain_across_three_nodes() {
    let mut env = Env::new();
    let (_, addr) = env.controller("127.0.0.1:0", &[]);
    for (node, zone) in [("a", "east"), ("b", "east"), ("c", "west")] {
        let label = format!("zone={zone}");
        env.agent(
            &addr,
            node,
            &["--cpu", "2", "--memory", "1024", "--label", &label],
        );
    }
    for node in ["a", "b", "c"] {
        wait_for("the node connected", LONG, || {
            node_connected(&addr, node).then_some(())
        });
    }
    env.register_json(
        &addr,
        serde_json::json!({"family": "web", "containers": [{"name": "main",
            "image": env.busybox_image(), "command": ["sleep", "3600"], "cpu": 0.5,
            "memory": 64, "stop_timeout": 1}]}),
    );
    let service = |name: &str, yaml: &str| {
        let f = env.path(&format!("{name}.yaml"));
        std::fs::write(&f, yaml).unwrap();
        let out = cli(&addr, &["services", "create", "-f", f.to_str().unwrap()]);
        assert_eq!(out.code, 0, "{out:?}");
    };

    // In zone east only, bin-packed: both tasks on one east node.
    service(
        "web",
        "name: web\ntask_definition: web\ndesired_count: 2\nplacement:\n  constraints: [\"node.labels.zone == east\"]\n",
    );
    let web = wait_for("web's 2 tasks RUNNING", LONG, || {
        service_nodes(&addr, "web", 2)
    });
    assert_eq!(web[0], web[1], "bin-pack puts both on one node: {web:?}");
    let packed = web[0].clone();
    assert!(packed == "a" || packed == "b", "zone east only: {web:?}");
    let other_east = if packed == "a" { "b" } else { "a" };

    // One per node.
    service(
        "spread",
        "name: spread\ntask_definition: web\ndesired_count: 3\nplacement:\n  distinct_nodes: true\n",
    );
    let spread = wait_for("spread's 3 tasks RUNNING", LONG, || {
        service_nodes(&addr, "spread", 3)
    });
    assert_eq!(spread, ["a", "b", "c"]);

    // Cordoned: c takes nothing, so a fourth task of `spread` has nowhere to go, and says
    // why with the count of each reason.
    let out = cli(&addr, &["nodes", "cordon", "c", "-o", "json"]).json();
    assert_eq!(out[0]["node"], "c", "{out}");
    assert_eq!(out[0]["state"], "CORDONED", "{out}");
    assert_eq!(out[0]["previousState"], "READY", "{out}");
    // An unknown node refuses the whole call, naming it; nothing changes.
    let out = cli(&addr, &["nodes", "cordon", "a", "nope"]);
    assert_ne!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("no node \"nope\""), "{out:?}");
    let ls = cli(&addr, &["nodes", "ls", "-o", "json"]).json();
    let c = ls
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == "c")
        .unwrap();
    assert_eq!(c["state"], "CORDONED", "{ls}");
    assert_eq!(cli(&addr, &["services", "scale", "spread", "4"]).code, 0);
    let reason = wait_for("the fourth task waiting with its reason", LONG, || {
        let out = cli(&addr, &["services", "describe", "spread", "-o", "json"]).json();
        out["tasks"]
            .as_array()?
            .iter()
            .find(|t| t["lastStatus"] == "PROVISIONING")
            .map(|t| t["statusReason"].as_str().unwrap_or("").to_string())
            .filter(|r| !r.is_empty())
    });
    assert!(reason.contains("distinct nodes"), "{reason}");
    assert!(
        reason.contains("of 3 nodes: 1 not READY (draining, cordoned or down), 2 already running one of its group"),
        "{reason}"
    );
    // Draining c cannot finish while `spread` wants one task per node and a and b have
    // theirs: its task on c stays (minimum healthy) and `--wait` gives up at its timeout.
    let out = cli(&addr, &["nodes", "drain", "c", "--wait", "--timeout", "2s"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(
        out.stderr
            .contains("1 service task(s) still there after 2s"),
        "{out:?}"
    );
    let running_on_c = cli(
        &addr,
        &[
            "tasks", "ls", "--node", "c", "--status", "RUNNING", "-o", "json",
        ],
    )
    .json();
    assert_eq!(running_on_c.as_array().unwrap().len(), 1, "{running_on_c}");
    assert_eq!(cli(&addr, &["services", "rm", "spread"]).code, 0);
    wait_for("spread gone", LONG, || {
        (cli(&addr, &["services", "describe", "spread"]).code != 0).then_some(())
    });

    // Drained: web's tasks move to the other east node (not c: the constraint), and web
    // never drops below 2 RUNNING (minimum healthy 100%).
    let out = cli(
        &addr,
        &["nodes", "drain", &packed, "--wait", "--timeout", "30s"],
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("DRAINING (was READY)"), "{out:?}");
    assert!(out.stderr.contains("no service task left"), "{out:?}");
    let moved = wait_for("web's tasks moved off the drained node", LONG, || {
        let out = cli(&addr, &["services", "describe", "web", "-o", "json"]).json();
        let tasks = out["tasks"].as_array()?;
        let running: Vec<&str> = tasks
            .iter()
            .filter(|t| t["lastStatus"] == "RUNNING")
            .map(|t| t["nodeId"].as_str().unwrap_or(""))
            .collect();
        assert!(
            running.len() >= 2,
            "web fell below its desired count: {out}"
        );
        (tasks.len() == 2 && running.iter().all(|n| *n == other_east)).then_some(out)
    });
    let decisions = moved["decisions"].to_string();
    assert!(decisions.contains("off draining nodes"), "{moved}");
    let listed = cli(
        &addr,
        &[
            "tasks",
            "ls",
            "--group",
            "service:web",
            "--status",
            "STOPPED",
            "-o",
            "json",
        ],
    )
    .json();
    let stopped = listed.as_array().unwrap();
    assert_eq!(stopped.len(), 2, "{listed}");
    for t in stopped {
        assert_eq!(t["nodeId"], packed.as_str(), "{t}");
        assert_eq!(t["stoppedReason"], "its node is being drained", "{t}");
    }

    // Uncordoned, the drained node takes tasks again.
    let out = cli(&addr, &["nodes", "uncordon", &packed, "-o", "json"]).json();
    assert_eq!(out[0]["state"], "READY", "{out}");
    assert_eq!(cli(&addr, &["services", "scale", "web", "5"]).code, 0);
    let web = wait_for("web's 5 tasks RUNNING", LONG, || {
        service_nodes(&addr, "web", 5)
    });
    assert!(web.iter().any(|n| n == &packed), "{web:?}");
    assert!(web.iter().all(|n| n != "c"), "{web:?}");
}
