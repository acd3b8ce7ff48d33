//! Stopping, timeouts, logs and the event stream of a task.

use std::time::Duration;

use skiff_tests::{cli, run_task, task, wait_for, wait_status, Env};

#[test]
fn stop_and_timeout() {
    let mut env = Env::new();
    let addr = env.dev();
    let img = env.busybox_image();

    // A container that handles SIGTERM exits cleanly on stop.
    let id = run_task(
        &addr,
        &[
            "--image",
            &img,
            "--",
            "sh",
            "-c",
            "trap 'echo bye; exit 0' TERM; echo up; while true; do sleep 0.1; done",
        ],
    );
    wait_status(&addr, &id, "RUNNING", Duration::from_secs(30));
    wait_for("the container to print up", Duration::from_secs(10), || {
        cli(&addr, &["tasks", "logs", &id])
            .stdout
            .contains("up")
            .then_some(())
    });
    let stop = cli(&addr, &["tasks", "stop", &id, "--reason", "test says so"]);
    assert_eq!(stop.code, 0, "{stop:?}");
    let waited = cli(&addr, &["tasks", "wait", &id]);
    assert_eq!(waited.code, 0, "exit code of the trap: {waited:?}");
    let t = task(&addr, &id);
    assert_eq!(t["stopCode"], "UserInitiated");
    assert_eq!(t["stoppedReason"], "test says so");
    assert!(cli(&addr, &["tasks", "logs", &id]).stdout.contains("bye"));

    // One that ignores SIGTERM (sleep as PID 1) is killed after its stop timeout.
    let id = run_task(
        &addr,
        &[
            "--image",
            &img,
            "--stop-timeout",
            "1s",
            "--",
            "sleep",
            "1000",
        ],
    );
    wait_status(&addr, &id, "RUNNING", Duration::from_secs(30));
    let started = std::time::Instant::now();
    assert_eq!(cli(&addr, &["tasks", "stop", &id]).code, 0);
    let t = wait_status(&addr, &id, "STOPPED", Duration::from_secs(30));
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "SIGKILL came before the stop timeout"
    );
    assert_eq!(t["containers"][0]["exitCode"], 137);
    let reason = t["containers"][0]["reason"].as_str().unwrap();
    assert!(
        reason.starts_with("Killed after the stop timeout (1 s)") && reason.contains("--init"),
        "{reason}"
    );

    // The task timeout stops it with TimedOut, and run-task --wait says so.
    let out = cli(
        &addr,
        &[
            "run-task",
            "--wait",
            "--image",
            &img,
            "--timeout",
            "1s",
            "--stop-timeout",
            "1s",
            "--",
            "sleep",
            "1000",
        ],
    );
    assert_eq!(out.code, 124, "{out:?}");
    assert!(out.stderr.contains("timed out"), "{out:?}");
    let listed = cli(&addr, &["tasks", "ls", "--status", "STOPPED", "-o", "json"]).json();
    assert!(listed
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["stopCode"] == "TimedOut"));

    // Stopping a stopped task changes nothing.
    let again = cli(&addr, &["tasks", "stop", &id]);
    assert_eq!(again.code, 0, "{again:?}");
    assert_eq!(task(&addr, &id)["stopCode"], "UserInitiated");
}

#[test]
fn logs_follow_streams_while_the_task_runs() {
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
            "for i in 1 2 3 4 5; do echo line $i; sleep 0.2; done",
        ],
    );
    wait_status(&addr, &id, "RUNNING", Duration::from_secs(30));
    let out = cli(&addr, &["tasks", "logs", "-f", &id]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout, "line 1\nline 2\nline 3\nline 4\nline 5\n");
    assert_eq!(
        task(&addr, &id)["lastStatus"],
        "STOPPED",
        "-f returns only once the task has stopped"
    );
}

#[test]
fn a_stalled_log_reader_does_not_hold_up_other_tasks() {
    let mut env = Env::new();
    let addr = env.dev();
    let img = env.busybox_image();
    let chatty = run_task(
        &addr,
        &[
            "--image",
            &img,
            "--stop-timeout",
            "1s",
            "--",
            "sh",
            "-c",
            "yes a-line-of-log-output | head -n 3000000; sleep 600",
        ],
    );
    wait_status(&addr, &chatty, "RUNNING", Duration::from_secs(30));
    // A reader that never reads: its pipe fills, then the gRPC stream's window, then the
    // controller's buffer for it.
    let mut stalled = skiff_tests::skiff_command()
        .args(["tasks", "logs", "-f", &chatty])
        .env("SKIFF_ADDR", &addr)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The log rotates at 10 MB (keeping 3): count every file of it.
    let dir = env.path(&format!("dev/agent/tasks/{chatty}/main"));
    let written = || -> u64 {
        std::fs::read_dir(&dir)
            .map(|d| {
                d.flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with("container.log"))
                    .map(|e| e.metadata().map_or(0, |m| m.len()))
                    .sum()
            })
            .unwrap_or(0)
    };
    wait_for(
        "the chatty task to write 20 MB of log",
        Duration::from_secs(120),
        || (written() > 20_000_000).then_some(()),
    );
    // Meanwhile other tasks on the same node start, run and report as usual.
    let out = cli(
        &addr,
        &[
            "run-task",
            "--wait",
            "--timeout",
            "20s",
            "--image",
            &img,
            "--",
            "sh",
            "-c",
            "exit 6",
        ],
    );
    assert_eq!(out.code, 6, "{out:?}");
    assert_eq!(cli(&addr, &["tasks", "stop", &chatty]).code, 0);
    wait_status(&addr, &chatty, "STOPPED", Duration::from_secs(30));
    let _ = stalled.kill();
    let _ = stalled.wait();
}

#[test]
fn every_transition_is_an_event_and_the_stream_resumes_from_a_cursor() {
    let mut env = Env::new();
    let addr = env.dev();
    let img = env.busybox_image();
    let out = cli(
        &addr,
        &[
            "run-task", "--wait", "-o", "json", "--image", &img, "--", "true",
        ],
    );
    let id = out.json()["id"].as_str().unwrap().to_string();
    let events = cli(&addr, &["events", "tail", "-n", "100", "-o", "json"]);
    let lines: Vec<serde_json::Value> = events
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let statuses: Vec<&str> = lines
        .iter()
        .filter(|e| e["detail"]["taskArn"] == id.as_str())
        .map(|e| e["detail"]["lastStatus"].as_str().unwrap())
        .collect();
    assert_eq!(
        statuses,
        ["PROVISIONING", "PENDING", "RUNNING", "STOPPING", "STOPPED"]
    );
    let last = lines.last().unwrap();
    assert_eq!(last["source"], "skiff.task");
    assert_eq!(last["detail-type"], "Task State Change");
    assert_eq!(last["detail"]["stopCode"], "EssentialContainerExited");
    assert_eq!(last["detail"]["containers"][0]["exitCode"], 0);

    // Resume after the last seen event: only newer events arrive.
    let cursor = last["id"].as_str().unwrap().to_string();
    let mut follow = skiff_tests::skiff_command()
        .args([
            "events", "tail", "--follow", "--after", &cursor, "-o", "json",
        ])
        .env("SKIFF_ADDR", &addr)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let id2 = run_task(&addr, &["--image", &img, "--", "true"]);
    wait_status(&addr, &id2, "STOPPED", Duration::from_secs(30));
    let stdout = follow.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead;
        let mut seen = Vec::new();
        for line in std::io::BufReader::new(stdout).lines() {
            let v: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
            let done = v["detail"]["lastStatus"] == "STOPPED";
            seen.push(v);
            if done {
                break;
            }
        }
        seen
    });
    wait_for(
        "the follower to see the second task stop",
        Duration::from_secs(20),
        || reader.is_finished().then_some(()),
    );
    let seen = reader.join().unwrap();
    let _ = follow.kill();
    let _ = follow.wait();
    assert!(
        seen.iter().all(|e| e["detail"]["taskArn"] == id2.as_str()),
        "nothing before the cursor: {seen:?}"
    );
    assert_eq!(
        seen.first().unwrap()["detail"]["lastStatus"],
        "PROVISIONING"
    );
}
