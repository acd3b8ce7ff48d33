//! Benchmark: latency of `skiff run-task --wait` for a trivial command (the whole round trip:
//! CLI → controller → agent → shim → container → STOPPED → CLI) next to `runc run` of the same
//! rootfs, interleaved so machine noise hits both alike. Also idle RSS of `skiff dev` and the
//! binary size. Prints the figures; `scripts/bench` runs it against a release build.
//!
//! Then the CPU each path costs per run, accounted by a cgroup that holds the benchmark and
//! everything it starts (CLI, `skiff dev`, zygote, shims; runc and its children) up to the
//! moment a container's process moves to the container's own cgroup: 50 runs of each, one
//! path after the other.
//!
//! `--hog N` keeps N busy-looping processes running throughout (outside that cgroup): a
//! reproducible stand-in for a loaded machine.
//!
//! Then throughput: a burst of `--burst N` (default 200) runs of each, 16 at a time.
//!
//! Usage: bench_run_task [--runs N] [--hog N] [--burst N] [--skiff PATH] [--baseline OTHER_SKIFF_BUILD]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use skiff_tests::bench::{self, summary};
use skiff_tests::{cli, images, Env};

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

/// N processes spinning until dropped.
struct Hogs(Vec<std::process::Child>);

impl Hogs {
    fn start(n: usize) -> Hogs {
        Hogs(
            (0..n)
                .map(|_| {
                    Command::new("sh")
                        .args(["-c", "while :; do :; done"])
                        .spawn()
                        .expect("sh")
                })
                .collect(),
        )
    }
}

impl Drop for Hogs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A cgroup this process moves into (so everything it starts from now on is accounted there),
/// and its CPU usage so far in milliseconds.
struct CpuAccount {
    dir: PathBuf,
    v1: bool,
}

impl CpuAccount {
    fn join() -> CpuAccount {
        let v1 = Path::new("/sys/fs/cgroup/cpuacct/cgroup.procs").exists();
        let parent = if v1 {
            "/sys/fs/cgroup/cpuacct"
        } else {
            "/sys/fs/cgroup"
        };
        let dir = Path::new(parent).join(format!("skiff-bench-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("creating the accounting cgroup (run as root)");
        std::fs::write(dir.join("cgroup.procs"), std::process::id().to_string())
            .expect("joining the accounting cgroup");
        CpuAccount { dir, v1 }
    }

    fn used_ms(&self) -> f64 {
        if self.v1 {
            let ns: f64 = std::fs::read_to_string(self.dir.join("cpuacct.usage"))
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            ns / 1e6
        } else {
            let stat = std::fs::read_to_string(self.dir.join("cpu.stat")).unwrap();
            let us: f64 = stat
                .lines()
                .find_map(|l| l.strip_prefix("usage_usec "))
                .unwrap()
                .trim()
                .parse()
                .unwrap();
            us / 1e3
        }
    }
}

impl Drop for CpuAccount {
    /// Moves back to the parent and removes the cgroup once what ran in it has ended.
    fn drop(&mut self) {
        if let Some(parent) = self.dir.parent() {
            let _ = std::fs::write(parent.join("cgroup.procs"), std::process::id().to_string());
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::fs::remove_dir(&self.dir).is_err() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

fn main() {
    let runs: usize = bench::arg("--runs", 100);
    let hog_count: usize = bench::arg("--hog", 0);
    let _hogs = Hogs::start(hog_count);
    if hog_count > 0 {
        println!("{hog_count} busy-looping processes run throughout");
    }
    let account = CpuAccount::join();
    bench::use_skiff_arg();
    let bin = skiff_tests::skiff_bin();
    println!(
        "skiff binary: {} ({:.1} MiB)",
        bin.display(),
        std::fs::metadata(&bin).unwrap().len() as f64 / 1048576.0
    );

    // --baseline BIN: a second `skiff dev` from another build, interleaved with this one (an
    // A/B of two builds in the same run, on the same machine noise).
    let baseline = std::env::args()
        .skip_while(|a| a != "--baseline")
        .nth(1)
        .map(PathBuf::from);

    let mut env = Env::new();
    let rootfs = images::busybox_rootfs(&env.path("rootfs"));
    let image = format!("dir:{}", rootfs.display());
    let (addr, dev_pid) = start_dev(&mut env, &bin, "dev", 51679);
    let base_addr = baseline
        .as_ref()
        .map(|b| start_dev(&mut env, b, "baseline", 51680).0);
    std::thread::sleep(Duration::from_secs(1));
    let rss_idle_fresh = rss_kib(dev_pid);

    let bundle = bench::runc_bundle(env.dir.path(), &rootfs);
    let run_skiff = |addr: &str| {
        let t = Instant::now();
        let out = cli(
            addr,
            &[
                "run-task",
                "--wait",
                "--network",
                "none",
                "--image",
                &image,
                "--",
                "/bin/true",
            ],
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
        run_skiff(&addr);
        if let Some(b) = &base_addr {
            run_skiff(b);
        }
        run_runc(1_000_000 + i);
    }
    let (mut skiff_ms, mut runc_ms) = (Vec::with_capacity(runs), Vec::with_capacity(runs));
    let mut base_ms = Vec::with_capacity(runs);
    for i in 0..runs {
        skiff_ms.push(run_skiff(&addr));
        if let Some(b) = &base_addr {
            base_ms.push(run_skiff(b));
        }
        runc_ms.push(run_runc(i));
    }
    println!("runs: {runs}, interleaved, after 5 warm-up runs each");
    if let Some(b) = &baseline {
        let per_pair: Vec<f64> = skiff_ms.iter().zip(&base_ms).map(|(a, b)| a / b).collect();
        let (b50, _) = summary(&format!("baseline {}", b.display()), base_ms);
        let mut sorted = skiff_ms.clone();
        sorted.sort_by(f64::total_cmp);
        println!(
            "this build / baseline: p50 {:.2}x, median of per-pair ratios {:.2}x",
            sorted[sorted.len() / 2] / b50,
            median(per_pair)
        );
    }
    let (s50, s95) = summary("skiff run-task --wait", skiff_ms);
    let (r50, r95) = summary("runc run", runc_ms);
    println!(
        "ratio skiff/runc: p50 {:.2}x, p95 {:.2}x",
        s50 / r50,
        s95 / r95
    );

    const CPU_RUNS: usize = 50;
    let cpu_per_run = |run: &dyn Fn(usize)| {
        let before = account.used_ms();
        for i in 0..CPU_RUNS {
            run(i);
        }
        (account.used_ms() - before) / CPU_RUNS as f64
    };
    let skiff_cpu = cpu_per_run(&|_| {
        run_skiff(&addr);
    });
    let base_cpu = base_addr.as_ref().map(|b| {
        cpu_per_run(&|_| {
            run_skiff(b);
        })
    });
    let runc_cpu = cpu_per_run(&|i| {
        run_runc(2_000_000 + i);
    });
    println!(
        "CPU per run ({CPU_RUNS} runs each, cgroup-accounted): skiff {skiff_cpu:.1} ms, runc {runc_cpu:.1} ms ({:.2}x)",
        skiff_cpu / runc_cpu
    );
    if let Some(b) = base_cpu {
        println!(
            "CPU per run, baseline build: {b:.1} ms (this build / baseline {:.2}x)",
            skiff_cpu / b
        );
    }

    let burst: usize = bench::arg("--burst", 200);
    if burst > 0 {
        let skiff_rate = per_second(burst, &|_| {
            run_skiff(&addr);
        });
        let base_rate = base_addr.as_ref().map(|b| {
            per_second(burst, &|_| {
                run_skiff(b);
            })
        });
        let runc_rate = per_second(burst, &|i| {
            run_runc(3_000_000 + i);
        });
        println!(
            "burst of {burst}, {BURST_PARALLEL} at a time: skiff {skiff_rate:.1} tasks/s, runc {runc_rate:.1} runs/s ({:.2}x)",
            skiff_rate / runc_rate
        );
        if let Some(b) = base_rate {
            println!(
                "burst, baseline build: {b:.1} tasks/s (this build / baseline {:.2}x)",
                skiff_rate / b
            );
        }
    }
    std::thread::sleep(Duration::from_secs(2));
    println!(
        "skiff dev RSS (controller + agent, one process): idle after start {:.1} MiB, idle after {} tasks {:.1} MiB",
        rss_idle_fresh as f64 / 1024.0,
        runs + 5,
        rss_kib(dev_pid) as f64 / 1024.0
    );
    shim_memory(&env, &addr, &image);
}

/// What each running container's shim costs in memory: proportional set size (shared pages
/// split among their users) and private dirty pages, mean of ten `sleep` containers.
fn shim_memory(env: &Env, addr: &str, image: &str) {
    let ids: Vec<String> = (0..10)
        .map(|_| {
            skiff_tests::run_task(
                addr,
                &[
                    "--image",
                    image,
                    "--stop-timeout",
                    "1s",
                    "--",
                    "sleep",
                    "300",
                ],
            )
        })
        .collect();
    let (mut pss, mut dirty) = (0.0, 0.0);
    for id in &ids {
        skiff_tests::wait_status(addr, id, "RUNNING", Duration::from_secs(30));
        let pid_file = env
            .path("dev")
            .join(format!("agent/state/tasks/{id}/main/shim.pid"));
        let pid = std::fs::read_to_string(pid_file).unwrap();
        let pid = pid.split_whitespace().next().unwrap();
        let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap();
        let kib = |key: &str| -> f64 {
            rollup
                .lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or(0.0)
        };
        pss += kib("Pss:");
        dirty += kib("Private_Dirty:");
    }
    println!(
        "per running container's shim (mean of {}): Pss {:.1} MiB, private dirty {:.1} MiB",
        ids.len(),
        pss / ids.len() as f64 / 1024.0,
        dirty / ids.len() as f64 / 1024.0
    );
    for id in &ids {
        cli(addr, &["tasks", "stop", id]);
    }
    for id in &ids {
        skiff_tests::wait_status(addr, id, "STOPPED", Duration::from_secs(30));
    }
}

/// How many runs of a burst are in flight at once.
const BURST_PARALLEL: usize = 16;

/// Runs `run(i)` for i in 0..n, `BURST_PARALLEL` at a time; returns runs per second.
fn per_second(n: usize, run: &(dyn Fn(usize) + Sync)) -> f64 {
    let next = std::sync::atomic::AtomicUsize::new(0);
    let t = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..BURST_PARALLEL {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    break;
                }
                run(i);
            });
        }
    });
    n as f64 / t.elapsed().as_secs_f64()
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Starts `skiff dev` from `bin` (its own data dir and credentials port); its address and pid.
fn start_dev(env: &mut Env, bin: &Path, name: &str, credentials_port: u16) -> (String, i32) {
    let mut cmd = Command::new(bin);
    cmd.env("XDG_CONFIG_HOME", skiff_tests::config_home());
    let listen = format!("127.0.0.1:{credentials_port}");
    let addr = env.dev_from(cmd, name, &["--credentials-listen", &listen]);
    let pid = env.procs.last().expect("just started").pid();
    (addr, pid)
}
