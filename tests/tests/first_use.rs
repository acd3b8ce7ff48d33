//! What a first-time user runs into (issue 15): waits that can never end, lost failure
//! reasons, Ctrl-C, pipes, token lookup, id prefixes, logs, counters — each checked as the user
//! would see it, against a real `skiff dev` with real containers.

use std::fs;
use std::process::Stdio;
use std::time::{Duration, Instant};

use skiff_tests::{
    cli, cli_as, failed_to_start, put_event, run_task, skiff_command, task, wait_for, wait_status,
    Env,
};

/// What a process has written to `file` so far.
fn text(file: &std::path::Path) -> String {
    fs::read_to_string(file).unwrap_or_default()
}

#[test]
fn a_task_no_node_can_fit_fails_at_once_and_one_waiting_for_capacity_says_so() {
    let mut env = Env::new();
    let addr = env.dev();
    // Never: more CPUs than the node has. --wait and --follow fail at once with the reason.
    for mode in ["--wait", "--follow"] {
        let started = Instant::now();
        let out = cli(
            &addr,
            &[
                "run-task",
                mode,
                "--cpu",
                "64",
                "--image",
                &env.busybox_image(),
                "--",
                "true",
            ],
        );
        assert_eq!(out.code, 125, "{mode}: {out:?}");
        assert!(
            out.stderr
                .contains("can never be placed: no node can ever fit 64 vCPU"),
            "{mode}: {out:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{mode} took {:?}",
            started.elapsed()
        );
    }
    // run-task stopped what it created; nothing is left waiting to start unattended.
    let ls = cli(&addr, &["tasks", "ls", "-o", "json"]).json();
    assert!(
        ls.as_array()
            .unwrap()
            .iter()
            .all(|t| t["lastStatus"] == "STOPPED"),
        "{ls}"
    );
    // `tasks wait` on someone's unplaceable task fails at once too, and leaves it alone.
    let id = run_task(
        &addr,
        &["--cpu", "64", "--image", &env.busybox_image(), "--", "true"],
    );
    wait_for(
        "the task to be marked unplaceable",
        Duration::from_secs(10),
        || (task(&addr, &id)["unplaceable"] == true).then_some(()),
    );
    let out = cli(&addr, &["tasks", "wait", &id]);
    assert_eq!(out.code, 125, "{out:?}");
    assert!(out.stderr.contains("no node can ever fit"), "{out:?}");
    assert_eq!(task(&addr, &id)["lastStatus"], "PROVISIONING");

    // Capacity: a task holding both CPUs; the next waits and says why on stderr, then runs.
    let hog = run_task(
        &addr,
        &[
            "--cpu",
            "2",
            "--init",
            "--image",
            &env.busybox_image(),
            "--",
            "sleep",
            "600",
        ],
    );
    wait_status(&addr, &hog, "RUNNING", Duration::from_secs(20));
    let err_file = env.path("waiting.err");
    let mut waiting = skiff_command()
        .args([
            "run-task",
            "--wait",
            "--cpu",
            "1",
            "--image",
            &env.busybox_image(),
            "--",
            "true",
        ])
        .env("SKIFF_ADDR", &addr)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(&err_file).unwrap())
        .spawn()
        .unwrap();
    wait_for("the waiting message", Duration::from_secs(10), || {
        text(&err_file)
            .contains("is waiting for a node: no node has 1 vCPU and 0 MiB free right now")
            .then_some(())
    });
    assert_eq!(cli(&addr, &["tasks", "stop", &hog]).code, 0);
    let code = wait_for(
        "the waiting task to run and end",
        Duration::from_secs(30),
        || waiting.try_wait().unwrap(),
    );
    assert_eq!(code.code(), Some(0), "{}", text(&err_file));
}

#[test]
fn follow_keeps_the_failure_reason_and_ctrl_c_leaves_or_stops_the_task() {
    let mut env = Env::new();
    let addr = env.dev();
    // A task that never started has no logs: --follow gives the reason and 125, as --wait does.
    let out = cli(
        &addr,
        &[
            "run-task",
            "--follow",
            "--image",
            "dir:/does/not/exist",
            "--",
            "true",
        ],
    );
    assert_eq!(out.code, 125, "{out:?}");
    assert!(
        out.stderr.contains("/does/not/exist is not a directory"),
        "{out:?}"
    );
    assert!(!out.stderr.contains("no logs"), "{out:?}");

    // An absolute link made on the host dangles in the container: the reason says so.
    let root = env.path("badroot");
    fs::create_dir_all(root.join("bin")).unwrap();
    fs::copy(skiff_tests::images::busybox(), root.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink(root.join("bin/busybox"), root.join("bin/sh")).unwrap();
    let image = format!("dir:{}", root.display());
    let out = cli(
        &addr,
        &[
            "run-task", "--wait", "--image", &image, "--", "sh", "-c", "true",
        ],
    );
    assert_eq!(out.code, 125, "{out:?}");
    assert!(out.stderr.contains("/bin/sh is a symlink to"), "{out:?}");
    assert!(
        out.stderr.contains("does not exist inside the container"),
        "{out:?}"
    );
    // One "container main:" prefix, not two.
    let reason = failed_to_start(&addr, &["--image", &env.busybox_image()]);
    assert!(
        reason.starts_with("container main: nothing to run"),
        "{reason}"
    );
    assert_eq!(reason.matches("container main").count(), 1, "{reason}");

    // Ctrl-C while following: the id is printed first; the task goes on, and we are told how
    // to stop it.
    for stop in [false, true] {
        let err_file = env.path(&format!("follow-{stop}.err"));
        let mut args = vec!["run-task", "--follow", "--init"];
        if stop {
            args.push("--stop-on-interrupt");
        }
        let image = env.busybox_image();
        args.extend([
            "--image",
            image.as_str(),
            "--",
            "sh",
            "-c",
            "echo up; sleep 600",
        ]);
        let mut child = skiff_command()
            .args(&args)
            .env("SKIFF_ADDR", &addr)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(&err_file).unwrap())
            .spawn()
            .unwrap();
        let id = wait_for("the task id on stderr", Duration::from_secs(20), || {
            let text = fs::read_to_string(&err_file).unwrap_or_default();
            let id = text
                .split("logs of task ")
                .nth(1)?
                .split_whitespace()
                .next()?
                .to_string();
            (task(&addr, &id)["lastStatus"] == "RUNNING").then_some(id)
        });
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
        let status = wait_for("run-task to end", Duration::from_secs(20), || {
            child.try_wait().unwrap()
        });
        let text = fs::read_to_string(&err_file).unwrap();
        if stop {
            assert!(text.contains("stopping task"), "{text}");
            assert_eq!(task(&addr, &id)["lastStatus"], "STOPPED");
            assert_eq!(task(&addr, &id)["stopCode"], "UserInitiated");
        } else {
            assert_eq!(status.code(), Some(130), "{text}");
            assert!(text.contains(&format!("skiff tasks stop {id}")), "{text}");
            assert_eq!(task(&addr, &id)["lastStatus"], "RUNNING");
            assert_eq!(cli(&addr, &["tasks", "stop", &id]).code, 0);
        }
    }
}

#[test]
fn events_tail_from_now_pipes_and_token_lookup() {
    let mut env = Env::new();
    let addr = env.dev();
    put_event(&addr, "shop", "Old", "{}");
    // -n 0 -f: only what comes after.
    let out_file = env.path("tail.out");
    let mut tail = skiff_command()
        .args(["events", "tail", "-f", "-n", "0", "-o", "json"])
        .env("SKIFF_ADDR", &addr)
        .stdin(Stdio::null())
        .stdout(fs::File::create(&out_file).unwrap())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // The stream is open once a first new event shows: keep putting until one does.
    wait_for("a new event in the tail", Duration::from_secs(20), || {
        put_event(&addr, "shop", "New", "{}");
        std::thread::sleep(Duration::from_millis(200));
        fs::read_to_string(&out_file)
            .unwrap()
            .contains("\"New\"")
            .then_some(())
    });
    let _ = tail.kill();
    let _ = tail.wait();
    let text = fs::read_to_string(&out_file).unwrap();
    assert!(!text.contains("\"Old\""), "history printed: {text}");
    assert!(!text.contains("skiff.task"), "history printed: {text}");

    // A closed pipe ends the CLI quietly (SIGPIPE), not with a panic.
    let id = run_task(
        &addr,
        &["--image", &env.busybox_image(), "--", "seq", "1", "200000"],
    );
    wait_status(&addr, &id, "STOPPED", Duration::from_secs(30));
    let out = std::process::Command::new("bash")
        .args([
            "-c",
            &format!(
                "{} tasks logs {id} | head -1; echo \"status=${{PIPESTATUS[0]}}\" >&2",
                skiff_tests::skiff_bin().display()
            ),
        ])
        .env("SKIFF_ADDR", &addr)
        .env("XDG_CONFIG_HOME", skiff_tests::config_home())
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert_eq!(stdout, "1\n");
    assert!(
        !stderr.contains("panicked") && !stderr.contains("Broken pipe"),
        "{stderr}"
    );
    assert!(stderr.contains("status=141"), "killed by SIGPIPE: {stderr}");

    // The address is normalised: localhost, a trailing slash find the dev's token.
    let port = addr.rsplit(':').next().unwrap();
    for spelling in [
        format!("http://localhost:{port}"),
        format!("{addr}/"),
        format!("HTTP://127.0.0.1:{port}"),
    ] {
        let out = cli(&spelling, &["nodes", "ls"]);
        assert_eq!(out.code, 0, "{spelling}: {out:?}");
    }
    // No scheme: a suggestion. No token: the file it looked for is named.
    let out = cli(&format!("127.0.0.1:{port}"), &["nodes", "ls"]);
    assert_eq!(out.code, 1);
    assert!(
        out.stderr
            .contains(&format!("did you mean http://127.0.0.1:{port}")),
        "{out:?}"
    );
    let out = cli_as(&addr, None, &["nodes", "ls"]);
    assert_eq!(out.code, 1);
    assert!(out.stderr.contains("no API token"), "{out:?}");
    assert!(
        out.stderr
            .contains(&format!("skiff/tokens/127.0.0.1_{port}")),
        "{out:?}"
    );
}

#[test]
fn ids_by_prefix_groups_limits_and_logs_with_names_times_and_tails() {
    let mut env = Env::new();
    let addr = env.dev();
    let def = env.path("two.json");
    let image = env.busybox_image();
    fs::write(
        &def,
        serde_json::json!({"family": "two", "containers": [
            {"name": "web", "image": image, "command": ["sh", "-c", "echo w1; echo w2; echo w3"], "memory": "32M"},
            {"name": "sidecar", "image": image, "command": ["sh", "-c", "echo s1 >&2"], "essential": false}]})
        .to_string(),
    )
    .unwrap();
    assert_eq!(
        cli(
            &addr,
            &["taskdefs", "register", "-f", def.to_str().unwrap()]
        )
        .code,
        0
    );
    let out = cli(
        &addr,
        &[
            "run-task",
            "--wait",
            "-o",
            "json",
            "--task-def",
            "two",
            "--group",
            "batch-7",
        ],
    );
    assert_eq!(out.code, 0, "{out:?}");
    let t = out.json();
    let id = t["id"].as_str().unwrap().to_string();
    assert_eq!(
        t["memoryMib"], 32,
        "512M-style memory in a definition file: {t}"
    );

    // A unique prefix is enough; describe ends with a newline.
    let out = cli(&addr, &["tasks", "describe", &id[..20]]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(
        out.stdout.contains(&id) && out.stdout.ends_with('\n'),
        "{out:?}"
    );
    run_task(&addr, &["--image", &image, "--", "true"]);
    let out = cli(&addr, &["tasks", "describe", &id[..1]]);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("several task ids"), "{out:?}");

    // Groups: a filter and a column; --limit says what it left out.
    let ls = cli(&addr, &["tasks", "ls", "--group", "batch-7", "-o", "json"]).json();
    assert_eq!(ls.as_array().unwrap().len(), 1, "{ls}");
    let out = cli(&addr, &["tasks", "ls", "--limit", "1"]);
    assert!(
        out.stdout.lines().next().unwrap().contains("GROUP"),
        "{out:?}"
    );
    assert!(out.stderr.contains("1 of 2 tasks shown"), "{out:?}");

    // Logs: every container, each line named; --tail; --timestamps; --since; -o json.
    let out = cli(&addr, &["tasks", "logs", &id]);
    assert!(
        out.stdout
            .contains("web     | w1\nweb     | w2\nweb     | w3\n"),
        "{out:?}"
    );
    assert_eq!(out.stderr, "sidecar | s1\n", "{out:?}");
    let out = cli(&addr, &["tasks", "logs", &id, "-c", "web", "--tail", "1"]);
    assert_eq!(out.stdout, "w3\n", "{out:?}");
    let out = cli(&addr, &["tasks", "logs", &id, "-c", "web", "--timestamps"]);
    let first = out.stdout.lines().next().unwrap();
    let (time, line) = first.split_once(' ').unwrap();
    assert!(
        chrono::DateTime::parse_from_rfc3339(time).is_ok(),
        "{first}"
    );
    assert_eq!(line, "w1");
    let out = cli(
        &addr,
        &["tasks", "logs", &id, "--since", "2999-01-01T00:00:00Z"],
    );
    assert_eq!(
        (out.stdout.as_str(), out.stderr.as_str()),
        ("", ""),
        "{out:?}"
    );
    let out = cli(
        &addr,
        &["tasks", "logs", &id, "--since", "1h", "-o", "json"],
    );
    let lines: Vec<serde_json::Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 4, "{out:?}");
    assert!(lines
        .iter()
        .any(|l| l["container"] == "sidecar" && l["stream"] == "stderr" && l["line"] == "s1"));
}

#[test]
fn rules_count_what_they_did_and_sources_show_their_errors() {
    let mut env = Env::new();
    let addr = env.dev();
    env.register_busybox(&addr, "job", &["true"]);
    env.put_yaml(
        &addr,
        "rules",
        "orders",
        "name: orders\npattern: {source: [shop]}\ntargets:\n  - id: run\n    task: {task_definition: job}\n",
    );
    let out = cli(
        &addr,
        &[
            "events",
            "put",
            "--source",
            "shop",
            "--detail-type",
            "X",
            "-o",
            "json",
        ],
    );
    assert_eq!(
        out.json()["matchedRules"],
        serde_json::json!(["orders"]),
        "{out:?}"
    );
    let out = cli(
        &addr,
        &[
            "events",
            "put",
            "--source",
            "elsewhere",
            "--detail-type",
            "X",
        ],
    );
    assert!(out.stderr.contains("matched no enabled rule"), "{out:?}");
    let stats = wait_for("the rule's counters", Duration::from_secs(20), || {
        let r = cli(&addr, &["rules", "describe", "orders", "-o", "json"]).json();
        (r["stats"]["invoked"] == 1).then_some(r)
    });
    assert_eq!(stats["stats"]["matched"], 1, "{stats}");
    assert_eq!(stats["stats"]["failed"], 0, "{stats}");
    assert_eq!(
        stats["targets"][0]["kind"]["task"]["taskDefinition"], "job",
        "{stats}"
    );

    // A watcher that cannot list its bucket says so in `sources ls`, not only in the log.
    env.put_yaml(
        &addr,
        "sources",
        "gone",
        "name: gone\nkind: local\npath: /does/not/exist/skiff\npoll: 1s\n",
    );
    let s = wait_for("the watcher's error", Duration::from_secs(20), || {
        let all = cli(&addr, &["sources", "describe", "gone", "-o", "json"]).json();
        let s = all[0].clone();
        (!s["lastError"].as_str().unwrap_or("").is_empty()).then_some(s)
    });
    assert!(
        s["lastError"]
            .as_str()
            .unwrap()
            .contains("/does/not/exist/skiff"),
        "{s}"
    );
    let out = cli(&addr, &["sources", "ls"]);
    assert!(
        out.stdout.contains("LAST ERROR") && out.stdout.contains("/does/not/exist/skiff"),
        "{out:?}"
    );

    // -o json where it used to be ignored.
    let out = cli(&addr, &["rules", "rm", "orders", "-o", "json"]);
    assert_eq!(out.json()[0]["name"], "orders", "{out:?}");
}

#[test]
fn every_command_answers_json_with_o_json() {
    let mut env = Env::new();
    let addr = env.dev();
    env.register_busybox(&addr, "job", &["true"]);
    env.put_yaml(
        &addr,
        "schedules",
        "nightly",
        "name: nightly\nexpression: cron(0 3 * * *)\ntask: {task_definition: job}\n",
    );
    assert_eq!(cli(&addr, &["topics", "put", "admins"]).code, 0);
    let secret = skiff_tests::cli_stdin(&addr, &["secrets", "put", "pw"], b"x");
    assert_eq!(secret.code, 0, "{secret:?}");
    let id = run_task(
        &addr,
        &["--image", &env.busybox_image(), "--", "echo", "hi"],
    );
    wait_status(&addr, &id, "STOPPED", Duration::from_secs(30));
    // Every listing and describe, and the changes that used to print plain text.
    for args in [
        vec!["tasks", "ls"],
        vec!["tasks", "describe", &id],
        vec!["taskdefs", "ls"],
        vec!["taskdefs", "describe", "job"],
        vec!["nodes", "ls"],
        vec!["events", "dlq", "ls"],
        vec!["images", "ls"],
        vec!["secrets", "ls"],
        vec!["tokens", "ls"],
        vec!["roles", "ls"],
        vec!["rules", "ls"],
        vec!["sources", "ls"],
        vec!["schedules", "ls"],
        vec!["schedules", "describe", "nightly"],
        vec!["topics", "ls"],
        vec!["topics", "describe", "admins"],
        vec!["topics", "dlq", "admins"],
        vec!["topics", "redrive", "admins"],
        vec!["schedules", "rm", "nightly"],
        vec!["topics", "rm", "admins"],
        vec!["secrets", "rm", "pw"],
    ] {
        let mut all = args.clone();
        all.extend(["-o", "json"]);
        let out = cli(&addr, &all);
        assert_eq!(out.code, 0, "{args:?}: {out:?}");
        assert!(
            serde_json::from_str::<serde_json::Value>(&out.stdout).is_ok(),
            "{args:?} did not print JSON: {out:?}"
        );
    }
    // Line-oriented streams print one JSON object per line.
    for args in [
        vec!["tasks", "logs", id.as_str()],
        vec!["events", "tail", "-n", "5"],
    ] {
        let mut all = args.clone();
        all.extend(["-o", "json"]);
        let out = cli(&addr, &all);
        assert_eq!(out.code, 0, "{args:?}: {out:?}");
        assert!(!out.stdout.is_empty(), "{args:?}");
        for line in out.stdout.lines() {
            assert!(
                serde_json::from_str::<serde_json::Value>(line).is_ok(),
                "{args:?}: {line:?}"
            );
        }
    }
}

#[test]
fn an_init_reaps_orphans_that_a_pid_1_without_one_leaves_as_zombies() {
    let mut env = Env::new();
    let addr = env.dev();
    // A child's child outlives its parent and is re-parented to PID 1; when it exits, only a
    // PID 1 that waits for every child reaps it. Here PID 1 ends up as `sleep`, which never
    // waits: without an init the orphan stays a zombie; skiff-init reaps it.
    let script = "sh -c 'sleep 0.2 &'; exec sleep 600";
    let state = |pid: i32| {
        let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        stat.rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next().map(String::from))
            .unwrap_or_default()
    };
    for init in [false, true] {
        // (Without the init, `sleep` ignores SIGTERM: a short stop timeout ends it.)
        let mut args = vec!["--stop-timeout", "1s", "--init", "--image"];
        if !init {
            args.remove(2);
        }
        let image = env.busybox_image();
        args.extend([image.as_str(), "--", "sh", "-c", script]);
        let id = run_task(&addr, &args);
        wait_status(&addr, &id, "RUNNING", Duration::from_secs(30));
        // The container's PID 1, seen from the host: the shim's child.
        let pid1 = wait_for(
            "the container's first process",
            Duration::from_secs(10),
            || {
                let shims = skiff_tests::shims_under(env.dir.path());
                shims
                    .iter()
                    .flat_map(|s| skiff_tests::children_of(*s))
                    .next()
            },
        );
        if init {
            // Reaped: PID 1 (the init) is left with one child, `sleep 600`, alive.
            wait_for(
                "the init to reap the orphan",
                Duration::from_secs(10),
                || {
                    let kids = skiff_tests::children_of(pid1);
                    (kids.len() == 1
                        && state(kids[0]) != "Z"
                        && fs::read_to_string(format!("/proc/{}/comm", kids[0]))
                            .is_ok_and(|c| c.trim() == "sleep"))
                    .then_some(())
                },
            );
        } else {
            wait_for(
                "the orphan to be left a zombie",
                Duration::from_secs(10),
                || {
                    skiff_tests::children_of(pid1)
                        .into_iter()
                        .any(|k| state(k) == "Z")
                        .then_some(())
                },
            );
        }
        assert_eq!(cli(&addr, &["tasks", "stop", &id]).code, 0);
        wait_status(&addr, &id, "STOPPED", Duration::from_secs(60));
    }
}

#[test]
fn a_call_to_a_controller_that_went_silent_fails_instead_of_hanging() {
    // A dead link: the connection is accepted and then nothing ever answers (no reset).
    let gate = skiff_tests::gate::Gate::closed("127.0.0.1:9");
    let addr = format!("http://{}", gate.addr);
    let started = Instant::now();
    let out = cli_as(&addr, Some("any-token"), &["tasks", "ls"]);
    let took = started.elapsed();
    assert!(out.code != 0, "{out:?}");
    assert!(
        out.stderr.contains("stopped answering"),
        "an error says why: {out:?}"
    );
    assert!(
        took < Duration::from_secs(40),
        "failed after {took:?}, not at the dead link's 15 s of silence"
    );
    assert!(gate.held() >= 1, "the call reached the gate");
}
