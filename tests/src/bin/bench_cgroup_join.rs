//! Benchmark: how long moving one process into a fresh cgroup takes on this host — the write to
//! `cgroup.procs` that every container start makes (libcontainer and runc alike). Without the
//! cgroup2 option `favordynmods` the kernel makes each such writer wait for an RCU grace
//! period; the agent's `cgroup_favordynmods` setting turns it on (see agent/src/cgroup_tuning.rs).
//! Joins are spaced 50 ms apart, as separate container starts are: back-to-back joins share one
//! grace period and would hide it.
//!
//! Usage: bench_cgroup_join [--runs N]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use skiff_tests::bench::{self, summary};

/// A hierarchy to join: the v1 memory controller's if mounted (hybrid hosts), else cgroup2.
fn hierarchy() -> PathBuf {
    let v1 = Path::new("/sys/fs/cgroup/memory");
    if v1.join("cgroup.procs").exists() {
        v1.to_path_buf()
    } else {
        PathBuf::from("/sys/fs/cgroup")
    }
}

fn cgroup2_options() -> String {
    std::fs::read_to_string("/proc/self/mounts")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.split_whitespace().nth(2) == Some("cgroup2"))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            format!("{} {}", f[1], f[3])
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn main() {
    let runs: usize = bench::arg("--runs", 50);
    let dir = hierarchy().join(format!("skiff-bench-join-{}", std::process::id()));
    std::fs::create_dir(&dir).expect("creating a cgroup (run as root)");
    println!("cgroup2 mounts: {}", cgroup2_options());
    println!("joining {} ({runs} times, 50 ms apart)", dir.display());
    let mut ms = Vec::with_capacity(runs);
    for _ in 0..runs {
        let mut child = Command::new("sleep").arg("10").spawn().expect("sleep");
        let t = Instant::now();
        std::fs::write(dir.join("cgroup.procs"), child.id().to_string()).expect("joining");
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
        let _ = child.kill();
        let _ = child.wait();
        std::thread::sleep(Duration::from_millis(50));
    }
    summary("cgroup join", ms);
    // The cgroup is empty again once the children are reaped.
    let _ = std::fs::remove_dir(&dir);
}
