//! Benchmark: what a network of its own costs a task. `skiff run-task --wait` of `/bin/true`
//! with `--network none` and `--network bridge` (skiff's bridge through the reference CNI
//! plugins), next to `runc run` of the same rootfs, interleaved so machine noise hits all three
//! alike; the time the CNI plugins took per bridge start (from the agent's log); and TCP
//! throughput between two bridge tasks next to the same two programs on the node's loopback.
//!
//! Usage: bench_network [--runs N] [--mib N] [--skiff PATH]   (`scripts/bench` runs it)

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use skiff_tests::bench::{self, summary};
use skiff_tests::moto::python_mounts;
use skiff_tests::{cli, images, run_task, wait_for, wait_status, Env};

/// Receives until EOF on port 5001 and prints MiB/s (from the first byte to EOF).
const SERVER: &str = "import socket, time
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(('0.0.0.0', 5001)); s.listen(1); print('listening', flush=True)
c, _ = s.accept(); n = 0; t = None
while True:
    b = c.recv(1 << 20)
    if t is None: t = time.perf_counter()
    if not b: break
    n += len(b)
print('%.1f' % (n / (1 << 20) / (time.perf_counter() - t)), flush=True)";

/// Sends MIB mebibytes to HOST:5001.
const CLIENT: &str = "import socket, sys
c = socket.create_connection((sys.argv[1], 5001)); buf = b'x' * (1 << 20)
for _ in range(int(sys.argv[2])): c.sendall(buf)
c.close()";

/// `s` without terminal escape sequences (ESC [ … letter).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for d in chars.by_ref() {
                if d.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

fn main() {
    let runs: usize = bench::arg("--runs", 60);
    let mib: usize = bench::arg("--mib", 2048);
    bench::use_skiff_arg();
    let mut env = Env::new();
    let addr = env.dev();
    let img = env.busybox_image();
    let rootfs = images::busybox_rootfs(&env.path("busybox"));
    let bundle = bench::runc_bundle(env.dir.path(), &rootfs);
    let host_cfg = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.contains(" - cgroup2 "))
        .map(|l| {
            if l.contains("favordynmods") {
                "favordynmods on"
            } else {
                "default cgroup2 options"
            }
        })
        .unwrap_or("no cgroup2 mount")
        .to_string();
    println!(
        "host: {} cores, {host_cfg}",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );

    // Warm up: the bridge exists, images and caches are hot.
    for mode in ["none", "bridge"] {
        let out = cli(
            &addr,
            &[
                "run-task",
                "--wait",
                "--image",
                &img,
                "--network",
                mode,
                "--",
                "true",
            ],
        );
        assert_eq!(out.code, 0, "{out:?}");
    }
    let (mut none, mut bridge, mut runc) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..runs {
        for mode in ["none", "bridge"] {
            let t = Instant::now();
            let out = cli(
                &addr,
                &[
                    "run-task",
                    "--wait",
                    "--image",
                    &img,
                    "--network",
                    mode,
                    "--",
                    "true",
                ],
            );
            let ms = t.elapsed().as_secs_f64() * 1000.0;
            assert_eq!(out.code, 0, "{out:?}");
            if mode == "none" {
                none.push(ms)
            } else {
                bridge.push(ms)
            }
        }
        let t = Instant::now();
        let st = Command::new("runc")
            .args(["run", "--bundle"])
            .arg(&bundle)
            .arg(format!("bench-net-{}-{i}", std::process::id()))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(st.success());
        runc.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    println!("run-task --wait of /bin/true, {runs} interleaved runs each (ms):");
    let (n50, _) = summary("  --network none  ", none);
    let (b50, _) = summary("  --network bridge", bridge);
    let (r50, _) = summary("  runc run        ", runc);
    println!(
        "  bridge / none {:.2}x, bridge / runc {:.2}x, none / runc {:.2}x (p50)",
        b50 / n50,
        b50 / r50,
        n50 / r50
    );
    // The agent logs how long the CNI plugins took for each attach.
    let log = env.logs();
    // (The log may be coloured: escape sequences go first.)
    let plain = strip_ansi(&log);
    let cni: Vec<f64> = plain
        .lines()
        .filter_map(|l| l.split("cni_ms=").nth(1))
        .filter_map(|v| {
            let v = v.trim_start_matches(|c: char| !c.is_ascii_digit());
            let end = v
                .find(|c: char| !c.is_ascii_digit() && c != '.')
                .unwrap_or(v.len());
            v[..end].parse().ok()
        })
        .collect();
    let (cold, warm): (Vec<f64>, Vec<f64>) = cni.into_iter().partition(|ms| *ms >= 1.0);
    println!(
        "  CNI per bridge start: {} took a warm namespace, {} ran the plugins",
        warm.len(),
        cold.len()
    );
    if !cold.is_empty() {
        summary("  CNI plugins (ADD loopback + skiff), when run", cold);
    }

    // Throughput: the same Python programs between two bridge tasks and on the node's loopback.
    let (python, mounts) = python_mounts();
    let python = python.to_str().unwrap().to_string();
    let with_python = |extra: &[&str]| -> Vec<String> {
        let mut a: Vec<String> = vec![
            "--image".into(),
            img.clone(),
            "--network".into(),
            "bridge".into(),
        ];
        for m in &mounts {
            a.extend(["--mount".to_string(), m.clone()]);
        }
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    };
    let (mut bridged, mut loopback) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        bridged.push(bridge_throughput(&addr, &with_python, &python, mib));
        loopback.push(loopback_throughput(&python, mib));
    }
    let median = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    let (bridged, loopback) = (median(bridged), median(loopback));
    println!(
        "TCP, {mib} MiB in one connection (median of 3 each): task to task over the bridge {bridged:.0} MiB/s, node loopback {loopback:.0} MiB/s ({:.2}x)",
        bridged / loopback
    );
}

/// MiB/s from a client task to a server task, both on the bridge.
fn bridge_throughput(
    addr: &str,
    with_python: &dyn Fn(&[&str]) -> Vec<String>,
    python: &str,
    mib: usize,
) -> f64 {
    let server_args = with_python(&["--", python, "-c", SERVER]);
    let server = run_task(
        addr,
        &server_args.iter().map(String::as_str).collect::<Vec<_>>(),
    );
    let t = wait_status(addr, &server, "RUNNING", Duration::from_secs(30));
    let server_ip = t["addresses"][0].as_str().unwrap().to_string();
    wait_for("the server to listen", Duration::from_secs(30), || {
        cli(addr, &["tasks", "logs", &server])
            .stdout
            .contains("listening")
            .then_some(())
    });
    let mib_s = mib.to_string();
    let client_args = with_python(&["--wait", "--", python, "-c", CLIENT, &server_ip, &mib_s]);
    let mut args = vec!["run-task"];
    args.extend(client_args.iter().map(String::as_str));
    let out = cli(addr, &args);
    assert_eq!(out.code, 0, "{out:?}");
    wait_status(addr, &server, "STOPPED", Duration::from_secs(60));
    let logs = cli(addr, &["tasks", "logs", &server]).stdout;
    logs.lines().last().unwrap().trim().parse().unwrap()
}

/// MiB/s with the same two programs on the node's loopback.
fn loopback_throughput(python: &str, mib: usize) -> f64 {
    let mut server = Command::new(python)
        .args(["-c", SERVER])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut reader = std::io::BufReader::new(server.stdout.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut reader, &mut line).unwrap();
    let st = Command::new(python)
        .args(["-c", CLIENT, "127.0.0.1", &mib.to_string()])
        .status()
        .unwrap();
    assert!(st.success());
    line.clear();
    std::io::BufRead::read_line(&mut reader, &mut line).unwrap();
    let _ = server.wait();
    line.trim().parse().unwrap()
}
