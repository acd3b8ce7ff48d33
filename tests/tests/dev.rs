//! End-to-end tests against one real `skiff dev` process running real containers.

use std::time::Duration;

use skiff_tests::images::{self, ImageConfig};
use skiff_tests::{cli, cli_as, failed_to_start, run_task, task, wait_for, wait_status, Env};

#[test]
fn exit_code_and_output_of_a_command() {
    let mut env = Env::new();
    let addr = env.dev();
    let img = env.busybox_image();
    let out = cli(
        &addr,
        &[
            "run-task",
            "--follow",
            "--image",
            &img,
            "--",
            "sh",
            "-c",
            "echo to-out; echo to-err >&2; exit 3",
        ],
    );
    assert_eq!(out.code, 3, "{out:?}");
    assert_eq!(out.stdout, "to-out\n", "{out:?}");
    assert!(out.stderr.contains("to-err"), "{out:?}");

    let id = run_task(&addr, &["--image", &img, "--", "sh", "-c", "echo later"]);
    let t = wait_status(&addr, &id, "STOPPED", Duration::from_secs(30));
    assert_eq!(t["stopCode"], "EssentialContainerExited");
    assert_eq!(t["containers"][0]["exitCode"], 0);
    assert_eq!(t["nodeId"], "local");
    let logs = cli(&addr, &["tasks", "logs", &id]);
    assert_eq!(logs.stdout, "later\n", "{logs:?}");
    // Once it stopped, its rootfs and upper layer are gone, and once the controller has
    // recorded that, its runtime dir (on the state tmpfs) too; its log stays on disk.
    let cdir = env.path(&format!("dev/agent/tasks/{id}/main"));
    let runtime = env.path(&format!("dev/agent/state/tasks/{id}"));
    wait_for("rootfs cleanup", Duration::from_secs(10), || {
        (!runtime.exists() && !cdir.join("upper").exists()).then_some(())
    });
    assert!(cdir.join("container.log").exists());
    let state = env.path("dev/agent/state");
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert!(
        mounts
            .lines()
            .any(|l| l.starts_with(&format!("tmpfs {} tmpfs ", state.display()))),
        "the agent's runtime state is on a tmpfs of its own"
    );
}

#[test]
fn env_limits_and_namespaces_inside_the_container() {
    let mut env = Env::new();
    let addr = env.dev();
    let img = env.busybox_image();
    let script = "echo FOO=$FOO; \
        echo mem=$(cat /sys/fs/cgroup/memory/memory.limit_in_bytes); \
        echo quota=$(cat /sys/fs/cgroup/cpu/cpu.cfs_quota_us); \
        echo period=$(cat /sys/fs/cgroup/cpu/cpu.cfs_period_us); \
        echo nets=$(ls /sys/class/net); \
        echo procs=$(ls /proc | grep -c '^[0-9]'); \
        echo host=$(hostname); echo task=$SKIFF_TASK_ID";
    let out = cli(
        &addr,
        &[
            "run-task",
            "--follow",
            "--image",
            &img,
            "--env",
            "FOO=bar baz",
            "--memory",
            "48",
            "--cpu",
            "0.25",
            "--",
            "sh",
            "-c",
            script,
        ],
    );
    assert_eq!(out.code, 0, "{out:?}");
    let s = &out.stdout;
    assert!(s.contains("FOO=bar baz\n"), "{s}");
    assert!(s.contains(&format!("mem={}\n", 48 * 1024 * 1024)), "{s}");
    assert!(
        s.contains("quota=25000\n") && s.contains("period=100000\n"),
        "{s}"
    );
    assert!(
        s.contains("nets=lo\n"),
        "network mode none has only loopback: {s}"
    );
    // PID namespace: sh, and the ls/grep of the command substitution; never the host's processes.
    let procs: u32 = s
        .lines()
        .find_map(|l| l.strip_prefix("procs="))
        .unwrap()
        .parse()
        .unwrap();
    assert!(procs <= 4, "{s}");
    let task_id = s.lines().find_map(|l| l.strip_prefix("task=")).unwrap();
    let host = s.lines().find_map(|l| l.strip_prefix("host=")).unwrap();
    assert_eq!(
        host,
        &task_id[..12],
        "UTS namespace with the task's hostname"
    );

    let out = cli(
        &addr,
        &[
            "run-task",
            "--follow",
            "--image",
            &img,
            "--network",
            "host",
            "--",
            "sh",
            "-c",
            "ls /sys/class/net",
        ],
    );
    assert_eq!(out.code, 0, "{out:?}");
    let host_nets = std::fs::read_dir("/sys/class/net").unwrap().count();
    assert!(out.stdout.lines().count() > 1, "{out:?}");
    assert_eq!(
        out.stdout.lines().count(),
        host_nets,
        "host mode sees the host's interfaces: {out:?}"
    );
}

#[test]
fn each_container_gets_its_own_namespaces() {
    let mut env = Env::new();
    let addr = env.dev();
    let img = env.busybox_image();
    let kinds = ["pid", "mnt", "uts", "ipc", "net"];
    let script = kinds
        .iter()
        .map(|k| format!("echo {k}=$(stat -L -c %i /proc/self/ns/{k})"))
        .collect::<Vec<_>>()
        .join("; ");
    let inside = |network: &str| {
        let out = cli(
            &addr,
            &[
                "run-task",
                "--follow",
                "--network",
                network,
                "--image",
                &img,
                "--",
                "sh",
                "-c",
                &script,
            ],
        );
        assert_eq!(out.code, 0, "{out:?}");
        out.stdout
    };
    let host_ns = |k: &str| {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(format!("/proc/self/ns/{k}"))
            .unwrap()
            .ino()
            .to_string()
    };
    let none = inside("none");
    for k in kinds {
        let v = none
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap_or_else(|| panic!("{k} missing: {none}"));
        assert_ne!(v, host_ns(k), "{k} namespace must be the container's own");
    }
    let host = inside("host");
    let net = host.lines().find_map(|l| l.strip_prefix("net=")).unwrap();
    assert_eq!(
        net,
        host_ns("net"),
        "network mode host shares the node's network namespace"
    );
    let pid = host.lines().find_map(|l| l.strip_prefix("pid=")).unwrap();
    assert_ne!(pid, host_ns("pid"));
}

#[test]
fn dev_stops_cleanly_on_sigterm() {
    let mut env = Env::new();
    let _addr = env.dev();
    assert_eq!(env.procs[0].terminate(), Some(0), "{}", env.logs());
    assert!(env.procs[0].stdout_text().contains("skiff dev: stopped"));
}

#[test]
fn a_memory_hog_is_stopped_with_out_of_memory_error() {
    let mut env = Env::new();
    let addr = env.dev();
    let img = env.busybox_image();
    let hog = "x=$(head -c 200000000 /dev/zero | tr '\\0' a); echo survived";
    let out = cli(
        &addr,
        &[
            "run-task", "--wait", "-o", "json", "--image", &img, "--memory", "16", "--", "sh",
            "-c", hog,
        ],
    );
    assert_eq!(out.code, 137, "{out:?}");
    assert!(
        out.stderr.contains("OutOfMemoryError"),
        "the CLI says why: {out:?}"
    );
    let t = out.json();
    assert_eq!(t["lastStatus"], "STOPPED");
    assert_eq!(t["containers"][0]["exitCode"], 137);
    assert!(
        t["containers"][0]["reason"]
            .as_str()
            .unwrap()
            .starts_with("OutOfMemoryError"),
        "{t}"
    );
}

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
fn bad_input_gets_clear_errors() {
    let mut env = Env::new();
    let addr = env.dev();
    let img = env.busybox_image();
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (
            vec!["run-task", "--image", "Alpine:Latest", "--", "true"],
            "containers[0].image",
        ),
        (
            vec![
                "run-task",
                "--image",
                &img,
                "--pull-policy",
                "often",
                "--",
                "true",
            ],
            "containers[0].pull_policy",
        ),
        (
            vec![
                "run-task", "--image", &img, "--memory", "lots", "--", "true",
            ],
            "not a memory size",
        ),
        (
            vec![
                "run-task", "--image", &img, "--memory", "99999999", "--", "true",
            ],
            "containers[0].memory_mib",
        ),
        (
            vec!["run-task", "--image", &img, "--cpu=-1", "--", "true"],
            "containers[0].cpu",
        ),
        (
            vec![
                "run-task",
                "--image",
                &img,
                "--network",
                "bridge9",
                "--",
                "true",
            ],
            "network_mode",
        ),
        (
            vec![
                "run-task", "--image", &img, "--env", "NOEQUALS", "--", "true",
            ],
            "KEY=VALUE",
        ),
        (
            vec!["run-task", "--task-def", "nope", "--", "true"],
            "no task definition",
        ),
        (
            vec!["tasks", "describe", "no-such-task"],
            "no task no-such-task",
        ),
        (vec!["tasks", "ls", "--status", "SLEEPING"], "status"),
        (vec!["events", "tail", "--after", "not-an-id"], "after"),
    ];
    for (args, needle) in cases {
        let out = cli(&addr, &args);
        assert_ne!(out.code, 0, "{args:?} should fail: {out:?}");
        assert!(
            out.stderr.contains(needle),
            "{args:?}: error should mention {needle:?}: {out:?}"
        );
    }
    // A task whose image has nothing to run fails to start, with a reason.
    let reason = failed_to_start(&addr, &["--image", &img]);
    assert!(reason.contains("nothing to run"), "{reason}");
    // An image that does not exist.
    let reason = failed_to_start(&addr, &["--image", "dir:/no/such/rootfs", "--", "true"]);
    assert!(
        reason.contains("/no/such/rootfs is not a directory"),
        "{reason}"
    );
    // A command that does not exist in the image.
    let reason = failed_to_start(&addr, &["--image", &img, "--", "/no/such/binary"]);
    assert!(reason.contains("/no/such/binary"), "{reason}");
    // Unreachable controller.
    let out = cli("http://127.0.0.1:1", &["tasks", "ls"]);
    assert!(
        out.code != 0 && out.stderr.contains("cannot reach the skiff controller"),
        "{out:?}"
    );
    // Nothing half-written: no task was created by the rejected calls.
    let tasks = cli(&addr, &["tasks", "ls", "-o", "json"]).json();
    assert_eq!(
        tasks.as_array().unwrap().len(),
        3,
        "only the three tasks that were accepted: {tasks}"
    );
}

#[test]
fn task_definitions_register_run_and_override() {
    let mut env = Env::new();
    let addr = env.dev();
    let img = env.busybox_image();
    let file = env.path("web.toml");
    std::fs::write(
        &file,
        format!(
            "family = \"web\"\ntimeout = \"1m\"\n[[containers]]\nname = \"main\"\nimage = \"{img}\"\ncommand = [\"sh\", \"-c\", \"echo rev1 $GREETING\"]\nmemory = 32\n[containers.environment]\nGREETING = \"hello\"\n"
        ),
    )
    .unwrap();
    let reg = cli(
        &addr,
        &["taskdefs", "register", "-f", file.to_str().unwrap()],
    );
    assert_eq!(reg.code, 0, "{reg:?}");
    assert_eq!(reg.stdout.trim(), "registered web:1");
    let reg2 = cli(
        &addr,
        &[
            "taskdefs",
            "register",
            "-f",
            file.to_str().unwrap(),
            "-o",
            "json",
        ],
    );
    assert_eq!(reg2.json()["revision"], 2);

    let out = cli(&addr, &["run-task", "--follow", "--task-def", "web"]);
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (0, "rev1 hello\n"),
        "{out:?}"
    );
    let out = cli(
        &addr,
        &[
            "run-task",
            "--follow",
            "--task-def",
            "web:1",
            "--env",
            "GREETING=override",
            "--",
            "sh",
            "-c",
            "echo $GREETING",
        ],
    );
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (0, "override\n"),
        "{out:?}"
    );
    let t = cli(&addr, &["tasks", "ls", "--family", "web", "-o", "json"]).json();
    assert_eq!(t.as_array().unwrap().len(), 2);
    assert_eq!(t[0]["taskDefinition"], "web:1");
    assert_eq!(t[1]["taskDefinition"], "web:2");

    assert_eq!(cli(&addr, &["taskdefs", "deregister", "web:2"]).code, 0);
    let d = cli(&addr, &["taskdefs", "describe", "web", "-o", "json"]).json();
    assert_eq!(d["revision"], 1, "the latest ACTIVE revision");
    let ls = cli(&addr, &["taskdefs", "ls", "-o", "json"]).json();
    assert_eq!(ls.as_array().unwrap().len(), 1);

    std::fs::write(
        &file,
        "family = \"web\"\n[[containers]]\nname = \"m\"\nimage = \"dir:/x\"\nmemroy = 5\n",
    )
    .unwrap();
    let bad = cli(
        &addr,
        &["taskdefs", "register", "-f", file.to_str().unwrap()],
    );
    assert!(bad.code != 0 && bad.stderr.contains("memroy"), "{bad:?}");
}

#[test]
fn oci_layout_images_with_whiteouts_and_config() {
    let mut env = Env::new();
    let addr = env.dev();
    let base = images::busybox_rootfs(&env.path("busybox"));
    std::fs::write(base.join("etc/removed"), "old").unwrap();
    std::fs::write(base.join("etc/motd"), "base").unwrap();
    let top = images::layer_with(&[("etc/.wh.removed", b""), ("etc/motd", b"top layer")]);
    let layout = images::oci_layout(
        &env.path("layout"),
        &[(images::layer_of(&base), true), (top, false)],
        &ImageConfig {
            entrypoint: &["/bin/sh", "-c"],
            cmd: &["echo $FROM_IMAGE in $(pwd); cat /etc/motd; test -e /etc/removed && echo still-there; true"],
            env: &["FROM_IMAGE=image-env", "PATH=/bin"],
            working_dir: "/tmp",
        },
        "v1",
    );
    let image = format!("oci:{}:v1", layout.display());
    let out = cli(&addr, &["run-task", "--follow", "--image", &image]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.stdout, "image-env in /tmp\ntop layer", "{out:?}");

    // A corrupted layer is refused with a reason, never run. (The agent verifies what it
    // stores: a layer of another layout whose blob is damaged on disk.)
    let other_top = images::layer_with(&[("etc/motd", b"other top layer")]);
    let other = images::oci_layout(
        &env.path("layout2"),
        &[(images::layer_of(&base), true), (other_top.clone(), false)],
        &ImageConfig {
            entrypoint: &[],
            cmd: &["cat", "/etc/motd"],
            env: &[],
            working_dir: "",
        },
        "v1",
    );
    let hex = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&other_top));
    let blob = other.join("blobs/sha256").join(&hex);
    let mut bytes = std::fs::read(&blob).unwrap();
    let n = bytes.len();
    bytes[n / 2] ^= 0xff;
    std::fs::write(&blob, bytes).unwrap();
    let reason = failed_to_start(&addr, &["--image", &format!("oci:{}:v1", other.display())]);
    assert!(reason.contains("digest mismatch"), "{reason}");
    assert!(!env
        .path("dev/agent/images/layers/sha256")
        .join(&hex)
        .exists());
    let reason = failed_to_start(&addr, &["--image", &format!("oci:{}:v2", layout.display())]);
    assert!(reason.contains("no tag \"v2\""), "{reason}");
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

#[test]
fn grpc_reflection_and_health_work_like_grpcurl_expects() {
    let mut env = Env::new();
    let addr = env.dev();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let services = rt.block_on(async {
        use tonic_reflection::pb::v1::{
            server_reflection_client::ServerReflectionClient,
            server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
            ServerReflectionRequest,
        };
        let channel = tonic::transport::Endpoint::from_shared(addr.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut client = ServerReflectionClient::new(channel);
        let req = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut resp = client
            .server_reflection_info(tokio_stream::iter(vec![req]))
            .await
            .unwrap()
            .into_inner();
        let msg = resp.message().await.unwrap().unwrap();
        match msg.message_response.unwrap() {
            MessageResponse::ListServicesResponse(l) => {
                l.service.into_iter().map(|s| s.name).collect::<Vec<_>>()
            }
            other => panic!("unexpected reflection answer {other:?}"),
        }
    });
    for s in [
        "skiff.v1.Tasks",
        "skiff.v1.TaskDefinitions",
        "skiff.v1.Nodes",
        "skiff.v1.Events",
        "skiff.v1.AgentChannel",
        "grpc.health.v1.Health",
    ] {
        assert!(
            services.iter().any(|x| x == s),
            "{s} missing from {services:?}"
        );
    }
    let status = rt.block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(addr.clone())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut h = tonic_health::pb::health_client::HealthClient::new(channel);
        h.check(tonic_health::pb::HealthCheckRequest {
            service: "skiff.v1.Tasks".into(),
        })
        .await
        .unwrap()
        .into_inner()
        .status
    });
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
}

#[test]
fn essential_and_non_essential_containers() {
    let mut env = Env::new();
    let addr = env.dev();
    let img = env.busybox_image();
    let file = env.path("pair.json");
    let def = serde_json::json!({
        "family": "pair",
        "containers": [
            {"name": "main", "image": img, "command": ["sh", "-c", "sleep 1; echo main done; exit 3"]},
            {"name": "helper", "image": img, "essential": false, "command": ["sh", "-c", "echo helper quits early; exit 1"]},
            {"name": "sidecar", "image": img, "essential": false, "stop_timeout": "5s",
             "command": ["sh", "-c", "trap 'echo sidecar stopped; exit 0' TERM; while true; do sleep 0.1; done"]}
        ]
    });
    std::fs::write(&file, def.to_string()).unwrap();
    assert_eq!(
        cli(
            &addr,
            &["taskdefs", "register", "-f", file.to_str().unwrap()]
        )
        .code,
        0
    );
    let out = cli(
        &addr,
        &["run-task", "--wait", "-o", "json", "--task-def", "pair"],
    );
    assert_eq!(out.code, 3, "the essential container's exit code: {out:?}");
    let t = out.json();
    assert_eq!(t["stopCode"], "EssentialContainerExited");
    let exit = |name: &str| {
        t["containers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap()["exitCode"]
            .clone()
    };
    // The helper exited first without stopping the task; the sidecar was stopped when main exited.
    assert_eq!(
        (exit("main"), exit("helper"), exit("sidecar")),
        (3.into(), 1.into(), 0.into()),
        "{t}"
    );
    let id = t["id"].as_str().unwrap();
    let logs = |c: &str| cli(&addr, &["tasks", "logs", id, "--container", c]).stdout;
    assert_eq!(logs("main"), "main done\n");
    assert_eq!(logs("helper"), "helper quits early\n");
    assert_eq!(logs("sidecar"), "sidecar stopped\n");
    let all = cli(&addr, &["tasks", "logs", id]).stdout;
    assert_eq!(all.lines().count(), 3, "{all}");
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

/// The `CapEff:` and `Seccomp:` lines of /proc/self/status inside a container, and whether
/// it could make a user namespace and write to its root.
fn security_view(addr: &str, img: &str, extra: &[&str]) -> String {
    let mut args = vec!["run-task", "--follow", "--image", img];
    args.extend_from_slice(extra);
    args.extend([
        "--",
        "sh",
        "-c",
        "grep -E '^(CapEff|Seccomp):' /proc/self/status; \
         unshare -U true 2>/dev/null && echo userns=yes || echo userns=no; \
         touch /written 2>/dev/null && echo rootfs=rw || echo rootfs=ro; echo uid=$(id -u):$(id -g)",
    ]);
    let out = cli(addr, &args);
    assert_eq!(out.code, 0, "{out:?}");
    out.stdout.replace('\t', " ")
}

#[test]
fn containers_are_hardened_by_default() {
    let mut env = Env::new();
    let addr = env.dev();
    let img = env.busybox_image();
    // Docker's default set: CHOWN DAC_OVERRIDE FOWNER FSETID KILL SETGID SETUID SETPCAP
    // NET_BIND_SERVICE NET_RAW SYS_CHROOT MKNOD AUDIT_WRITE SETFCAP.
    let docker: u64 = [0, 1, 3, 4, 5, 6, 7, 8, 10, 13, 18, 27, 29, 31]
        .iter()
        .map(|b| 1u64 << b)
        .sum();
    let v = security_view(&addr, &img, &[]);
    assert!(v.contains(&format!("CapEff: {docker:016x}\n")), "{v}");
    assert!(
        v.contains("Seccomp: 2\n"),
        "a seccomp filter is installed: {v}"
    );
    assert!(v.contains("userns=no"), "namespaces are refused: {v}");
    assert!(v.contains("rootfs=rw") && v.contains("uid=0:0"), "{v}");

    // What the dropped capabilities and the filter forbid, as root in the container.
    let out = cli(
        &addr,
        &[
            "run-task",
            "--follow",
            "--image",
            &img,
            "--",
            "sh",
            "-c",
            "mount -t tmpfs none /mnt 2>/dev/null && echo mount=yes || echo mount=no; \
             hostname intruder 2>/dev/null && echo hostname=yes || echo hostname=no; \
             echo x > /tmp/m.ko; insmod /tmp/m.ko 2>/dev/null && echo insmod=yes || echo insmod=no",
        ],
    );
    assert_eq!(out.stdout, "mount=no\nhostname=no\ninsmod=no\n", "{out:?}");

    let v = security_view(&addr, &img, &["--read-only", "--user", "1000:1000"]);
    assert!(v.contains("rootfs=ro"), "{v}");
    assert!(v.contains("uid=1000:1000"), "{v}");
    assert!(
        v.contains("CapEff: 0000000000000000"),
        "a non-root user has no effective caps: {v}"
    );

    // Privileged: every capability skiff itself holds, no filter.
    let own_bounding = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("CapBnd:").map(|v| v.trim().to_string()))
        .unwrap();
    let v = security_view(&addr, &img, &["--privileged"]);
    assert!(v.contains(&format!("CapEff: {own_bounding}\n")), "{v}");
    assert!(
        v.contains("Seccomp: 0\n") && v.contains("userns=yes"),
        "{v}"
    );
}

fn new_token(addr: &str, role: &str, extra: &[&str]) -> (String, String) {
    let mut args = vec![
        "tokens", "create", "--role", role, "--name", "test", "-o", "json",
    ];
    args.extend_from_slice(extra);
    let v = cli(addr, &args).json();
    (
        v["token"].as_str().unwrap().to_string(),
        v["id"].as_str().unwrap().to_string(),
    )
}

#[test]
fn api_tokens_and_roles_guard_every_call() {
    let mut env = Env::new();
    let addr = env.dev();
    let img = env.busybox_image();

    let out = cli_as(&addr, None, &["tasks", "ls"]);
    assert!(
        out.code != 0 && out.stderr.contains("not authenticated"),
        "{out:?}"
    );
    let tasks_before = cli(&addr, &["tasks", "ls", "-o", "json"]).json();
    assert!(
        out.stderr.contains("SKIFF_TOKEN"),
        "says how to fix it: {out:?}"
    );
    let out = cli_as(&addr, Some("skiff_0123_4567"), &["tasks", "ls"]);
    assert!(out.stderr.contains("not valid"), "{out:?}");

    let (viewer, _) = new_token(&addr, "read-only", &[]);
    assert_eq!(cli_as(&addr, Some(&viewer), &["tasks", "ls"]).code, 0);
    let out = cli_as(
        &addr,
        Some(&viewer),
        &["run-task", "--image", &img, "--", "true"],
    );
    assert!(
        out.code != 0 && out.stderr.contains("permission denied"),
        "{out:?}"
    );
    assert!(
        out.stderr.contains("operator"),
        "names the role needed: {out:?}"
    );

    // Refused calls change nothing.
    let out = cli_as(&addr, None, &["run-task", "--image", &img, "--", "true"]);
    assert!(out.stderr.contains("not authenticated"), "{out:?}");
    let out = cli_as(&addr, Some(&viewer), &["taskdefs", "deregister", "x:1"]);
    assert!(out.stderr.contains("permission denied"), "{out:?}");
    assert_eq!(
        cli(&addr, &["tasks", "ls", "-o", "json"]).json(),
        tasks_before
    );

    let (op, op_id) = new_token(&addr, "operator", &[]);
    let out = cli_as(
        &addr,
        Some(&op),
        &["run-task", "--wait", "--image", &img, "--", "true"],
    );
    assert_eq!(out.code, 0, "{out:?}");
    for admin_only in [
        vec!["tokens", "ls"],
        vec!["tokens", "create", "--role", "admin"],
        vec!["registry-creds", "rm", "x"],
    ] {
        let out = cli_as(&addr, Some(&op), &admin_only);
        assert!(
            out.stderr.contains("permission denied"),
            "{admin_only:?}: {out:?}"
        );
    }
    // Privileged containers are an admin's call.
    let out = cli_as(
        &addr,
        Some(&op),
        &["run-task", "--privileged", "--image", &img, "--", "true"],
    );
    assert!(out.stderr.contains("containers[0].privileged"), "{out:?}");
    assert_eq!(
        cli(
            &addr,
            &[
                "run-task",
                "--wait",
                "--privileged",
                "--image",
                &img,
                "--",
                "true"
            ]
        )
        .code,
        0
    );

    // Listing shows roles and states, never a secret.
    let ls = cli(&addr, &["tokens", "ls", "-o", "json"]);
    let secret = op.rsplit('_').next().unwrap();
    assert!(!ls.stdout.contains(secret), "{ls:?}");
    assert_eq!(cli(&addr, &["tokens", "revoke", &op_id]).code, 0);
    let out = cli_as(&addr, Some(&op), &["tasks", "ls"]);
    assert!(out.stderr.contains("revoked"), "{out:?}");

    let (brief, _) = new_token(&addr, "read-only", &["--ttl", "1s"]);
    assert_eq!(cli_as(&addr, Some(&brief), &["nodes", "ls"]).code, 0);
    let out = wait_for(
        "the short-lived token to expire",
        Duration::from_secs(10),
        || {
            let out = cli_as(&addr, Some(&brief), &["nodes", "ls"]);
            (out.code != 0).then_some(out)
        },
    );
    assert!(out.stderr.contains("expired"), "{out:?}");
    let out = cli(&addr, &["tokens", "create", "--role", "root"]);
    assert!(out.stderr.contains("role"), "{out:?}");
}

/// Every file under `dir` whose bytes contain `needle`.
fn files_containing(dir: &std::path::Path, needle: &[u8]) -> Vec<std::path::PathBuf> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(p),
                Ok(t)
                    if t.is_file()
                        && std::fs::read(&p)
                            .is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle)) =>
                {
                    hits.push(p)
                }
                _ => {}
            }
        }
    }
    hits
}

#[test]
fn secrets_reach_the_container_and_nothing_else() {
    let mut env = Env::new();
    let addr = env.dev();
    let img = env.busybox_image();
    let value = "s3cr3t-value-4711";
    let out = skiff_tests::cli_stdin(
        &addr,
        &["secrets", "put", "db-password", "-o", "json"],
        value.as_bytes(),
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert!(!out.stdout.contains(value));

    let def = env.path("def.toml");
    std::fs::write(
        &def,
        "family = \"app\"\n[[containers]]\nname = \"main\"\nimage = \"IMG\"\n\
         command = [\"sh\", \"-c\", \"echo env=$DB_PASSWORD; echo file=$(cat /run/secrets/db); \
         ls -l /run/secrets/db | cut -c1-10; echo x > /run/secrets/db || echo read-only\"]\n\
         secrets = [{name = \"DB_PASSWORD\", value_from = \"db-password\"}, \
         {file = \"/run/secrets/db\", value_from = \"db-password\"}]\n"
            .replace("IMG", &img),
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
    let out = cli(&addr, &["run-task", "--follow", "--task-def", "app"]);
    assert_eq!(out.code, 0, "{out:?}\n{}", env.logs());
    assert!(out.stdout.contains(&format!("env={value}\n")), "{out:?}");
    assert!(out.stdout.contains(&format!("file={value}\n")), "{out:?}");
    assert!(
        out.stdout.contains("-r--r--r--") && out.stdout.contains("read-only"),
        "{out:?}"
    );

    // Nothing else shows the value: definitions, tasks, events, listings...
    for args in [
        vec!["taskdefs", "describe", "app", "-o", "json"],
        vec!["tasks", "ls", "-o", "json"],
        vec!["events", "tail", "-o", "json"],
        vec!["secrets", "ls", "-o", "json"],
    ] {
        let o = cli(&addr, &args);
        assert_eq!(o.code, 0, "{args:?}: {o:?}");
        assert!(
            !o.stdout.contains(value),
            "{args:?} shows the secret: {}",
            o.stdout
        );
    }
    // ...nor any file skiff keeps: the controller's store holds it encrypted, the agent's
    // task files and the container's tmpfs are not on disk (the container's log has it only
    // because the container printed it).
    let hits: Vec<_> = files_containing(&env.path("dev"), value.as_bytes())
        .into_iter()
        .filter(|p| !p.ends_with("container.log"))
        .collect();
    assert!(hits.is_empty(), "the secret is on disk in {hits:?}");
    // Nor any line skiff logged (at debug level here).
    assert!(!env.logs().contains(value), "a log line shows the secret");

    // Missing secrets are refused up front and named.
    let out = cli(
        &addr,
        &[
            "run-task", "--secret", "X=nope", "--image", &img, "--", "true",
        ],
    );
    assert!(
        out.code != 0 && out.stderr.contains("value_from") && out.stderr.contains("nope"),
        "{out:?}"
    );
    let out = cli(
        &addr,
        &[
            "run-task",
            "--secret",
            "1BAD=db-password",
            "--image",
            &img,
            "--",
            "true",
        ],
    );
    assert!(out.stderr.contains("secrets[0].name"), "{out:?}");
    // Values are an admin's business; operators may list names.
    let (op, _) = new_token(&addr, "operator", &[]);
    let out = cli_as(&addr, Some(&op), &["secrets", "rm", "db-password"]);
    assert!(out.stderr.contains("permission denied"), "{out:?}");
    assert_eq!(cli_as(&addr, Some(&op), &["secrets", "ls"]).code, 0);
    // A secret deleted after the definition was registered: running it is refused, by name.
    assert_eq!(cli(&addr, &["secrets", "rm", "db-password"]).code, 0);
    let out = cli(&addr, &["run-task", "--wait", "--task-def", "app"]);
    assert!(
        out.code != 0 && out.stderr.contains("\"db-password\""),
        "{out:?}"
    );
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
    skiff_tests::unmount_under(env.dir.path());
    for hierarchy in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        let _ = std::fs::remove_dir(hierarchy.path().join(format!("skiff/{id}-main")));
    }
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
