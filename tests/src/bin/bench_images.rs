//! Benchmark: images. (1) Cold start — `skiff run-task --wait` of an image the node does not
//! have (pull from a registry on 127.0.0.1 + unpack + start) — next to a warm start of the
//! same image, interleaved. (2) Disk used by ten running tasks of one image, next to the
//! image itself. Runs against a real registry (Debian's docker-registry) and `skiff dev`.
//!
//! Usage: bench_images [--runs N] [--payload-mib M] [--skiff PATH]

use std::io::Read;
use std::process::Command;
use std::time::{Duration, Instant};

use skiff_tests::bench::{self, summary};
use skiff_tests::images::{busybox_rootfs, layer_of};
use skiff_tests::registry::{Registry, TestImage};
use skiff_tests::{cli, wait_status, Env};

/// Disk blocks used under `path` on its own filesystem (overlay mounts not entered), KiB.
fn du_kib(path: &std::path::Path) -> u64 {
    let out = Command::new("du").arg("-skx").arg(path).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// A gzipped layer holding `mib` MiB of incompressible bytes (like binaries in real images).
fn payload_layer(mib: usize) -> Vec<u8> {
    let mut data = vec![0u8; mib << 20];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut data)
        .unwrap();
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let mut b = tar::Builder::new(gz);
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    b.append_data(&mut h, "opt/payload.bin", &data[..]).unwrap();
    b.into_inner().unwrap().finish().unwrap()
}

fn main() {
    let runs: usize = bench::arg("--runs", 20);
    let payload: usize = bench::arg("--payload-mib", 64);
    bench::use_skiff_arg();
    let mut env = Env::new();
    let reg = Registry::start(&env.path("registry"), None);
    let base = layer_of(&busybox_rootfs(&env.path("busybox")));
    let layers = vec![base, payload_layer(payload)];
    let config = TestImage::config("amd64", &["true"], &[], &layers);
    let compressed: usize = layers.iter().map(Vec::len).sum();
    let image = TestImage { layers, config };
    reg.push("bench/app", "v1", &image);
    let name = format!("{}/bench/app:v1", reg.addr);
    println!(
        "image: busybox + {payload} MiB payload, {:.1} MiB compressed, 2 layers",
        compressed as f64 / 1048576.0
    );
    let addr = env.dev_with(&["--insecure-registry", &reg.addr]);
    let run = |extra: &[&str]| {
        let mut a = vec!["run-task", "--wait", "--image", &name];
        a.extend_from_slice(extra);
        let t = Instant::now();
        let out = cli(&addr, &a);
        assert_eq!(out.code, 0, "{out:?}");
        t.elapsed().as_secs_f64() * 1000.0
    };
    // Warm up the path once.
    run(&["--", "true"]);
    let (mut cold, mut warm) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        let out = cli(&addr, &["images", "rm", &name]);
        assert_eq!(out.code, 0, "{out:?}");
        cold.push(run(&["--", "true"]));
        warm.push(run(&["--", "true"]));
    }
    let (c, _) = summary("cold: pull + unpack + start", cold);
    let (w, _) = summary("warm: start (image on the node)", warm);
    println!("cold / warm p50: {:.1}x", c / w);

    // Ten tasks of one image.
    let agent_dir = env.path("dev/agent");
    let image_kib = du_kib(&agent_dir.join("images"));
    let before_kib = du_kib(&agent_dir);
    let ids: Vec<String> = (0..10)
        .map(|_| {
            let out = cli(
                &addr,
                &[
                    "run-task",
                    "--stop-timeout",
                    "1s",
                    "--image",
                    &name,
                    "--",
                    "sleep",
                    "300",
                ],
            );
            assert_eq!(out.code, 0, "{out:?}");
            out.stdout.trim().to_string()
        })
        .collect();
    for id in &ids {
        wait_status(&addr, id, "RUNNING", Duration::from_secs(60));
    }
    let with_tasks_kib = du_kib(&agent_dir);
    println!(
        "disk: the image {:.1} MiB; agent data dir {:.1} MiB before, {:.1} MiB with ten running tasks (+{:.1} MiB, {:.2}x one image)",
        image_kib as f64 / 1024.0,
        before_kib as f64 / 1024.0,
        with_tasks_kib as f64 / 1024.0,
        (with_tasks_kib - before_kib) as f64 / 1024.0,
        with_tasks_kib as f64 / image_kib as f64
    );
    for id in &ids {
        cli(&addr, &["tasks", "stop", id]);
    }
    for id in &ids {
        wait_status(&addr, id, "STOPPED", Duration::from_secs(60));
    }
}
