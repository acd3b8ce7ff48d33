//! What runs inside a container: exit codes and output, limits and namespaces, OOM, multi-container tasks, image layouts, default hardening.

use std::time::Duration;

use skiff_tests::images::{self, ImageConfig};
use skiff_tests::{cli, failed_to_start, run_task, wait_for, wait_status, Env};

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
        s.contains("nets=eth0 lo\n"),
        "the default network mode, bridge, gives the task an interface of its own: {s}"
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
    // The node's interfaces, but for the veths of bridge tasks that tests running at the same
    // time start and stop.
    let stable = |names: Vec<String>| -> Vec<String> {
        let mut n: Vec<String> = names
            .into_iter()
            .filter(|n| !n.starts_with("veth"))
            .collect();
        n.sort();
        n
    };
    let host_nets = stable(
        std::fs::read_dir("/sys/class/net")
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect(),
    );
    let seen = stable(out.stdout.lines().map(String::from).collect());
    assert!(seen.len() > 1, "{out:?}");
    assert_eq!(
        seen, host_nets,
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

/// Processes whose command line is exactly `args`.
fn processes_running(args: &[&str]) -> Vec<String> {
    let want = args.join("\0") + "\0";
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter(|e| std::fs::read(e.path().join("cmdline")).is_ok_and(|c| c == want.as_bytes()))
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn a_container_that_cannot_be_prepared_fails_the_task_and_leaves_nothing_running() {
    let mut env = Env::new();
    let addr = env.dev();
    let img = env.busybox_image();
    let file = env.path("half.json");
    let marker = ["sleep", "3117"];
    let def = serde_json::json!({
        "family": "half",
        "containers": [
            {"name": "first", "image": img, "command": marker, "stop_timeout": "1s"},
            {"name": "second", "image": img, "command": ["true"],
             "mounts": [{"source": "/nonexistent/skiff-test", "target": "/data"}]}
        ]
    });
    std::fs::write(&file, def.to_string()).unwrap();
    let reg = cli(
        &addr,
        &["taskdefs", "register", "-f", file.to_str().unwrap()],
    );
    assert_eq!(reg.code, 0, "{reg:?}");
    let reason = failed_to_start(&addr, &["--task-def", "half"]);
    assert!(
        reason.contains("container second: mount source /nonexistent/skiff-test does not exist"),
        "{reason}"
    );
    // Whatever the first container got to run is gone with the task.
    assert!(
        processes_running(&marker).is_empty(),
        "the first container's process is still running"
    );
}
