//! Benchmark: latency of `skiff run-task --wait` for a trivial command (the whole round trip:
//! CLI → controller → agent → shim → container → STOPPED → CLI) next to `runc run` of the same
//! rootfs, interleaved so machine noise hits both alike. Also idle RSS of `skiff dev` and the
//! binary size. Prints the figures; `scripts/bench` runs it against a release build.
//!
//! Usage: bench_run_task [--runs N] [--skiff PATH]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use skiff_tests::bench::{self, summary};
use skiff_tests::{cli, images, node_connected, wait_for, Env, Proc};

fn rss_kib(pid: i32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .map(|v| v.trim().trim_end_matches("kB").trim().parse().unwrap_or(0))
        })
        .unwrap_or(0)
}

fn runc_bundle(dir: &Path, rootfs: &Path) -> PathBuf {
    let bundle = dir.join("runc-bundle");
    std::fs::create_dir_all(&bundle).unwrap();
    let st = Command::new("runc")
        .args(["spec", "--bundle"])
        .arg(&bundle)
        .status()
        .expect("runc is installed (scripts/bench installs it)");
    assert!(st.success());
    let path = bundle.join("config.json");
    let mut spec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    spec["root"]["path"] = rootfs.to_str().unwrap().into();
    spec["root"]["readonly"] = true.into();
    spec["process"]["terminal"] = false.into();
    spec["process"]["args"] = serde_json::json!(["/bin/true"]);
    std::fs::write(&path, serde_json::to_vec_pretty(&spec).unwrap()).unwrap();
    bundle
}

fn main() {
    let runs: usize = bench::arg("--runs", 100);
    bench::use_skiff_arg();
    let bin = skiff_tests::skiff_bin();
    println!(
        "skiff binary: {} ({:.1} MiB)",
        bin.display(),
        std::fs::metadata(&bin).unwrap().len() as f64 / 1048576.0
    );

    let mut env = Env::new();
    let rootfs = images::busybox_rootfs(&env.path("rootfs"));
    let image = format!("dir:{}", rootfs.display());
    let data = env.path("dev");
    let dev = Proc::spawn(
        "dev",
        env.dir.path(),
        &[
            "dev",
            "--data-dir",
            data.to_str().unwrap(),
            "--listen",
            "127.0.0.1:0",
            "--http-listen",
            "127.0.0.1:0",
        ],
    );
    let addr = format!("http://{}", dev.listen_addr());
    let dev_pid = dev.pid();
    env.procs.push(dev);
    wait_for("the agent", Duration::from_secs(20), || {
        node_connected(&addr, "local").then_some(())
    });
    std::thread::sleep(Duration::from_secs(1));
    let rss_idle_fresh = rss_kib(dev_pid);

    let bundle = runc_bundle(env.dir.path(), &rootfs);
    let run_skiff = || {
        let t = Instant::now();
        let out = cli(
            &addr,
            &["run-task", "--wait", "--image", &image, "--", "/bin/true"],
        );
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        assert_eq!(out.code, 0, "{out:?}");
        ms
    };
    let run_runc = |i: usize| {
        let t = Instant::now();
        let st = Command::new("runc")
            .args(["run", "--bundle"])
            .arg(&bundle)
            .arg(format!("skiff-bench-{}-{i}", std::process::id()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .unwrap();
        let ms = t.elapsed().as_secs_f64() * 1000.0;
        assert!(st.success(), "runc run failed");
        ms
    };
    // Warm both paths (page cache, first-use allocations).
    for i in 0..5 {
        run_skiff();
        run_runc(1_000_000 + i);
    }
    let (mut skiff_ms, mut runc_ms) = (Vec::with_capacity(runs), Vec::with_capacity(runs));
    for i in 0..runs {
        skiff_ms.push(run_skiff());
        runc_ms.push(run_runc(i));
    }
    println!("runs: {runs}, interleaved, after 5 warm-up runs each");
    let (s50, s95) = summary("skiff run-task --wait", skiff_ms);
    let (r50, r95) = summary("runc run", runc_ms);
    println!(
        "ratio skiff/runc: p50 {:.2}x, p95 {:.2}x",
        s50 / r50,
        s95 / r95
    );
    std::thread::sleep(Duration::from_secs(2));
    println!(
        "skiff dev RSS (controller + agent, one process): idle after start {:.1} MiB, idle after {} tasks {:.1} MiB",
        rss_idle_fresh as f64 / 1024.0,
        runs + 5,
        rss_kib(dev_pid) as f64 / 1024.0
    );
}
