//! skiff dev stopping, restarting and recovering: SIGTERM, re-adoption, the zygote, reboots, killed shims.

use std::time::Duration;

use skiff_tests::{cli, run_task, task, wait_for, wait_status, Env};

#[test]
fn dev_stops_cleanly_on_sigterm() {
    let mut env = Env::new();
    let _addr = env.dev();
    assert_eq!(env.procs[0].terminate(), Some(0), "{}", env.logs());
    assert!(env.procs[0].stdout_text().contains("skiff dev: stopped"));
}

#[test]
fn sigterm_stops_dev_promptly_while_a_task_runs_and_a_restart_readopts_it() {
    let mut env = Env::new();
    let addr = env.dev();
    let img = env.busybox_image();
    let id = run_task(
        &addr,
        &[
            "--stop-timeout",
            "1s",
            "--image",
            &img,
            "--",
            "sleep",
            "120",
        ],
    );
    wait_status(&addr, &id, "RUNNING", Duration::from_secs(30));
    // Ctrl-C / SIGTERM: the process ends cleanly (exit 0) and leaves the container running.
    let code = env.procs[0].terminate();
    assert_eq!(code, Some(0), "{}", env.logs());
    let shims = skiff_tests::shims_under(&env.path("dev"));
    assert_eq!(shims.len(), 1, "the container outlives skiff dev");
    // The next `skiff dev` on the same data dir finds it again.
    let addr = env.dev();
    let t = wait_status(&addr, &id, "RUNNING", Duration::from_secs(30));
    assert_eq!(t["containers"][0]["exitCode"], serde_json::Value::Null);
    assert_eq!(skiff_tests::shims_under(&env.path("dev")), shims);
    assert_eq!(cli(&addr, &["tasks", "stop", &id]).code, 0);
    let t = wait_status(&addr, &id, "STOPPED", Duration::from_secs(30));
    assert_eq!(t["stopCode"], "UserInitiated", "{t}");
}

/// The pid of the shim of task `id`'s container `main` under the env's `skiff dev`, as the
/// shim recorded it ("PID STARTTIME").
fn shim_of(env: &Env, id: &str) -> i32 {
    let path = env.path(&format!("dev/agent/state/tasks/{id}/main/shim.pid"));
    let text = std::fs::read_to_string(&path).unwrap();
    text.split_whitespace().next().unwrap().parse().unwrap()
}

/// The agent's shim zygote (its child that forks one shim per container): the dev process's
/// children named `skiff-zygote`, zombies left out.
fn zygotes(dev_pid: i32) -> Vec<i32> {
    skiff_tests::children_of(dev_pid)
        .into_iter()
        .filter(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            stat.contains("(skiff-zygote)") && !stat.contains(") Z ")
        })
        .collect()
}

#[test]
fn shims_are_forked_by_a_zygote_that_is_replaced_when_it_dies() {
    let mut env = Env::new();
    let addr = env.dev();
    let dev_pid = env.procs.last().unwrap().pid();
    let img = env.busybox_image();
    let sleeper = run_task(
        &addr,
        &[
            "--image",
            &img,
            "--stop-timeout",
            "1s",
            "--",
            "sleep",
            "300",
        ],
    );
    wait_status(&addr, &sleeper, "RUNNING", Duration::from_secs(30));
    let zygote = wait_for("the zygote", Duration::from_secs(10), || {
        let z = zygotes(dev_pid);
        (z.len() == 1).then(|| z[0])
    });
    // The shim is the zygote's child, in a session of its own, named as a shim.
    let shim_pid = shim_of(&env, &sleeper);
    assert!(skiff_tests::children_of(zygote).contains(&shim_pid));
    assert_eq!(
        nix::unistd::getsid(Some(nix::unistd::Pid::from_raw(shim_pid))).unwrap(),
        nix::unistd::Pid::from_raw(shim_pid)
    );
    let comm = std::fs::read_to_string(format!("/proc/{shim_pid}/comm")).unwrap();
    assert_eq!(comm.trim(), "skiff-shim");

    // The zygote dies outright: the running container is untouched, and tasks still start
    // (the next one by executing its shim, then from a new zygote).
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(zygote),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    for code in ["4", "5"] {
        let out = cli(
            &addr,
            &[
                "run-task",
                "--wait",
                "--image",
                &img,
                "--",
                "sh",
                "-c",
                &format!("exit {code}"),
            ],
        );
        assert_eq!(out.code.to_string(), code, "{out:?}");
    }
    let replacement = wait_for("a new zygote", Duration::from_secs(10), || {
        let z = zygotes(dev_pid);
        (z.len() == 1 && z[0] != zygote).then(|| z[0])
    });
    assert_ne!(replacement, zygote);
    assert_eq!(task(&addr, &sleeper)["lastStatus"], "RUNNING");
    // The killed one was reaped, not left a zombie.
    assert!(!std::path::Path::new(&format!("/proc/{zygote}")).exists());
    let out = cli(&addr, &["tasks", "stop", &sleeper]);
    assert_eq!(out.code, 0, "{out:?}");
    wait_status(&addr, &sleeper, "STOPPED", Duration::from_secs(30));
}

#[test]
fn after_a_reboot_the_agent_removes_what_running_containers_left_on_disk_and_keeps_logs() {
    let mut env = Env::new();
    let addr = env.dev();
    let img = env.busybox_image();
    let id = run_task(
        &addr,
        &[
            "--image",
            &img,
            "--",
            "sh",
            "-c",
            "echo kept-log; head -c 1048576 /dev/zero > /written; sleep 300",
        ],
    );
    wait_status(&addr, &id, "RUNNING", Duration::from_secs(30));
    let disk = env.path(&format!("dev/agent/tasks/{id}/main"));
    wait_for("the container's write", Duration::from_secs(30), || {
        (std::fs::metadata(disk.join("upper/written")).ok()?.len() == 1 << 20).then_some(())
    });

    // Power loss: every process gone, every mount (the state tmpfs, the overlay) and cgroup
    // with them; the data dir's disk survives.
    env.procs[0].kill9();
    skiff_tests::kill_shims_under(env.dir.path());
    skiff_tests::remove_task_cgroups_under(env.dir.path());
    skiff_tests::unmount_under(env.dir.path());
    skiff_tests::reboot_forgets_the_iptables_rules_of(&env.path("dev/agent"));
    assert!(disk.join("upper/written").exists());

    let addr = env.dev();
    // The controller learns the task is gone; the agent removes its upper and work dirs.
    let t = wait_status(&addr, &id, "STOPPED", Duration::from_secs(30));
    assert!(
        t["stoppedReason"].as_str().unwrap_or("").contains("lost"),
        "{t}"
    );
    wait_for(
        "the leftover scratch dirs removed",
        Duration::from_secs(10),
        || (!disk.join("upper").exists() && !disk.join("work").exists()).then_some(()),
    );
    // The log stays, and is still served.
    let logs = cli(&addr, &["tasks", "logs", &id]);
    assert_eq!(logs.stdout, "kept-log\n", "{logs:?}");
    // Tasks run as before.
    let out = cli(
        &addr,
        &["run-task", "--wait", "--image", &img, "--", "true"],
    );
    assert_eq!(out.code, 0, "{out:?}");
}

#[test]
fn a_killed_shim_leaves_no_container_process_or_cgroup_behind() {
    let mut env = Env::new();
    let addr = env.dev();
    let img = env.busybox_image();
    let id = run_task(&addr, &["--image", &img, "--", "sleep", "300"]);
    wait_status(&addr, &id, "RUNNING", Duration::from_secs(30));
    let procs = format!("/sys/fs/cgroup/pids/skiff/{id}-main/cgroup.procs");
    let inside: Vec<i32> = std::fs::read_to_string(&procs)
        .unwrap()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
    assert!(!inside.is_empty(), "the container runs in its cgroup");
    // The container's shim dies outright (OOM killer, an operator's kill -9).
    let shim = shim_of(&env, &id);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(shim),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let t = wait_status(&addr, &id, "STOPPED", Duration::from_secs(30));
    assert!(
        t["containers"][0]["reason"]
            .as_str()
            .unwrap_or("")
            .contains("shim"),
        "{t}"
    );
    // Nothing it ran is left: no process, no cgroup in any hierarchy.
    wait_for(
        "the orphaned container killed",
        Duration::from_secs(10),
        || {
            inside
                .iter()
                .all(|pid| !std::path::Path::new(&format!("/proc/{pid}")).exists())
                .then_some(())
        },
    );
    for hierarchy in ["pids", "memory", "cpu", "freezer", "unified"] {
        let dir = format!("/sys/fs/cgroup/{hierarchy}/skiff/{id}-main");
        wait_for(&format!("{dir} removed"), Duration::from_secs(10), || {
            (!std::path::Path::new(&dir).exists()).then_some(())
        });
    }
}

#[test]
fn dev_killed_during_a_burst_of_rule_tasks_starts_every_one_after_the_restart() {
    let mut env = Env::new();
    let addr = env.dev();
    env.register_busybox(&addr, "work", &["sh", "-c", "echo ran $SKIFF_TASK_ID"]);
    env.put_yaml(
        &addr,
        "rules",
        "burst",
        "name: burst\npattern: {source: [burst]}\ntargets:\n  - id: work\n    task: {task_definition: work}\n",
    );
    let tasks = env.path("dev").join("agent/state/tasks");
    // Events until skiff dev is caught holding tasks its agent has taken but not started;
    // then it is killed there, mid-burst.
    let mut events = 0;
    let mut caught = Vec::new();
    while caught.is_empty() && events < 400 {
        for _ in 0..10 {
            skiff_tests::put_event(&addr, "burst", "Tick", "{}");
            events += 1;
        }
        let deadline = std::time::Instant::now() + Duration::from_millis(500);
        while caught.is_empty() && std::time::Instant::now() < deadline {
            caught = skiff_tests::tasks_starting(&tasks);
        }
    }
    assert!(!caught.is_empty(), "never caught the agent starting a task");
    env.procs[0].kill9();
    let addr = env.dev();

    // One task per acknowledged event, each run once to its end; none failed to start.
    let all = wait_for("a task for every event", Duration::from_secs(60), || {
        let list = skiff_tests::group_tasks(&addr, "rule:burst");
        (list.len() == events && list.iter().all(|t| t["lastStatus"] == "STOPPED")).then_some(list)
    });
    for t in &all {
        let id = t["id"].as_str().unwrap();
        assert_eq!(t["containers"][0]["exitCode"], 0, "{t}");
        assert_eq!(
            cli(&addr, &["tasks", "logs", id]).stdout,
            format!("ran {id}\n"),
            "ran once"
        );
    }
    for id in &caught {
        assert!(
            all.iter().any(|t| t["id"] == id.as_str()),
            "{id} is one of them"
        );
    }
    // The controller sent the interrupted starts again, and their tasks say so.
    let again = all
        .iter()
        .find(|t| {
            t["statusReason"]
                .as_str()
                .is_some_and(|r| r.starts_with("start sent again: node"))
        })
        .expect("no task says its start was sent again");
    let described = cli(&addr, &["tasks", "describe", again["id"].as_str().unwrap()]).stdout;
    assert!(
        described.contains("Note:") && described.contains("start sent again"),
        "{described}"
    );
}
