//! What `--init` (skiff-init as PID 1) costs and saves, to decide whether it should be the
//! default: the `run-task --wait` round trip of `/bin/true` with and without it (interleaved
//! pairs), the resident memory of the init process in a running container, and the time
//! `tasks stop` takes for a command that ignores SIGTERM as PID 1 (`sleep`), with and without
//! it.
//!
//! Usage: bench_init [--runs N] [--stops N] [--stop-timeout SECONDS] [--skiff PATH]
//! (run from target/release after `cargo build --release --bin skiff --bin bench_init`).

use std::time::{Duration, Instant};

use skiff_tests::{bench, cli, images, wait_status, Env};

/// The first process of a container (its PID 1 seen from the host), from the cgroup the
/// agent puts the container in.
fn container_init_pid(task: &str) -> Option<i32> {
    let procs = std::fs::read_to_string(format!(
        "/sys/fs/cgroup/memory/skiff/{task}-main/cgroup.procs"
    ))
    .or_else(|_| std::fs::read_to_string(format!("/sys/fs/cgroup/skiff/{task}-main/cgroup.procs")))
    .ok()?;
    procs.lines().filter_map(|l| l.parse().ok()).min()
}

fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

fn main() {
    let runs: usize = bench::arg("--runs", 100);
    let stops: usize = bench::arg("--stops", 5);
    let stop_timeout: u64 = bench::arg("--stop-timeout", 10);
    bench::use_skiff_arg();
    println!("skiff binary: {}", skiff_tests::skiff_bin().display());
    let mut env = Env::new();
    let addr = env.dev();
    let rootfs = images::busybox_rootfs(&env.path("rootfs"));
    let image = format!("dir:{}", rootfs.display());

    let run = |init: bool| {
        let mut args = vec![
            "run-task",
            "--wait",
            "--network",
            "none",
            "--image",
            image.as_str(),
        ];
        if init {
            args.push("--init");
        }
        args.extend(["--", "/bin/true"]);
        let t = Instant::now();
        let out = cli(&addr, &args);
        assert_eq!(out.code, 0, "{out:?}");
        t.elapsed().as_secs_f64() * 1000.0
    };
    for _ in 0..5 {
        run(false);
        run(true);
    }
    let (mut plain, mut with_init, mut ratios) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..runs {
        // Alternate which goes first, so neither always runs on a warmer machine.
        let (a, b) = if i % 2 == 0 {
            let a = run(false);
            (a, run(true))
        } else {
            let b = run(true);
            (run(false), b)
        };
        plain.push(a);
        with_init.push(b);
        ratios.push(b / a);
    }
    println!("run-task --wait /bin/true, {runs} interleaved pairs:");
    let (p50a, p95a) = bench::summary("  without init", plain);
    let (p50b, p95b) = bench::summary("  with --init", with_init);
    ratios.sort_by(|a, b| a.partial_cmp(b).unwrap());
    println!(
        "  with/without: p50 {:.3}x, p95 {:.3}x, per-pair median {:.3}x",
        p50b / p50a,
        p95b / p95a,
        bench::percentile(&ratios, 0.5)
    );

    // Memory of the init in a running container.
    let out = cli(
        &addr,
        &[
            "run-task", "--init", "--image", &image, "--", "sleep", "600",
        ],
    );
    let id = out.stdout.trim().to_string();
    wait_status(&addr, &id, "RUNNING", Duration::from_secs(20));
    if let Some(pid) = container_init_pid(&id) {
        println!(
            "skiff-init in a running container: pid {pid}, VmRSS {} KiB",
            rss_kib(pid)
        );
    }
    cli(&addr, &["tasks", "stop", &id]);
    wait_status(&addr, &id, "STOPPED", Duration::from_secs(60));

    // Stop time of `sleep` (no SIGTERM handler) with and without the init.
    let timeout = format!("{stop_timeout}s");
    for init in [false, true] {
        let mut times = Vec::new();
        for _ in 0..stops {
            let mut args = vec![
                "run-task",
                "--stop-timeout",
                timeout.as_str(),
                "--image",
                image.as_str(),
            ];
            if init {
                args.push("--init");
            }
            args.extend(["--", "sleep", "600"]);
            let id = cli(&addr, &args).stdout.trim().to_string();
            wait_status(&addr, &id, "RUNNING", Duration::from_secs(20));
            let t = Instant::now();
            assert_eq!(cli(&addr, &["tasks", "stop", &id]).code, 0);
            let out = cli(&addr, &["tasks", "wait", &id]);
            times.push(t.elapsed().as_secs_f64() * 1000.0);
            let expected = if init { 143 } else { 137 };
            assert_eq!(out.code, expected, "{out:?}");
        }
        bench::summary(
            if init {
                "  stop `sleep`, with --init"
            } else {
                "  stop `sleep`, without init"
            },
            times,
        );
    }
    println!("(stop timeout {stop_timeout} s; without an init the SIGTERM is ignored and SIGKILL comes at the timeout)");
}
