//! Service reaction times on `skiff dev` with real busybox containers:
//! - scale from zero: an idle autoscaled service (min 0, one task per message) gets its first
//!   message → that task RUNNING;
//! - backlog grows: one task running, a second message arrives → the extra task RUNNING;
//! - replacement: a service task's process is killed → its replacement RUNNING.
//!
//! There is no peer to run beside it on this machine: ECS reacts to one-minute CloudWatch
//! metrics and KEDA polls every 30 s by default; the figures are absolute (aim: ≤ 2 s).
//!
//! Usage: bench_services [--rounds N] [--replacements N] [--skiff PATH]

use std::fs;
use std::time::{Duration, Instant};

use skiff_proto::v1 as pb;
use skiff_tests::{bench, cli, wait_for, Env};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

type Auth = Box<dyn FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Send>;

fn auth(token: &str) -> Auth {
    let bearer: tonic::metadata::MetadataValue<_> = format!("Bearer {token}").parse().unwrap();
    Box::new(move |mut req: tonic::Request<()>| {
        req.metadata_mut().insert("authorization", bearer.clone());
        Ok(req)
    })
}

struct Api {
    services: pb::services_client::ServicesClient<InterceptedService<Channel, Auth>>,
    queues: pb::queues_client::QueuesClient<InterceptedService<Channel, Auth>>,
}

impl Api {
    async fn connect(addr: &str, token: &str) -> Api {
        let channel = tonic::transport::Endpoint::new(addr.to_string())
            .unwrap()
            .connect()
            .await
            .unwrap();
        Api {
            services: pb::services_client::ServicesClient::with_interceptor(
                channel.clone(),
                auth(token),
            ),
            queues: pb::queues_client::QueuesClient::with_interceptor(channel, auth(token)),
        }
    }

    async fn service(&mut self, name: &str) -> pb::ServiceStatus {
        self.services
            .describe(pb::ServiceRef { name: name.into() })
            .await
            .unwrap()
            .into_inner()
    }

    async fn send(&mut self, body: &str) {
        self.queues
            .send(pb::SendMessagesRequest {
                queue: "jobs".into(),
                entries: vec![pb::SendEntry {
                    id: "0".into(),
                    body: body.into(),
                    ..Default::default()
                }],
            })
            .await
            .unwrap();
    }

    /// Polls until `done` holds for the service (every 2 ms); returns when it did.
    async fn until(
        &mut self,
        name: &str,
        what: &str,
        done: impl Fn(&pb::ServiceStatus) -> bool,
    ) -> Instant {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let st = self.service(name).await;
            if done(&st) {
                return Instant::now();
            }
            assert!(
                Instant::now() < deadline,
                "{name}: {what} not within 60 s: {st:?}"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

fn running(st: &pb::ServiceStatus) -> usize {
    st.tasks
        .iter()
        .filter(|t| t.last_status == "RUNNING" && t.desired_status == "RUNNING")
        .count()
}

/// The pid of the process whose command line is exactly `argv` (NUL-separated).
fn pid_of(argv: &[u8]) -> Option<i32> {
    fs::read_dir("/proc").ok()?.flatten().find_map(|e| {
        let pid: i32 = e.file_name().to_string_lossy().parse().ok()?;
        (fs::read(format!("/proc/{pid}/cmdline")).ok()? == argv).then_some(pid)
    })
}

fn main() {
    let rounds: usize = bench::arg("--rounds", 20);
    let replacements: usize = bench::arg("--replacements", 8);
    bench::use_skiff_arg();
    let mut env = Env::new();
    let addr = env.dev();
    let token = skiff_tests::admin_token(&addr);
    let image = env.busybox_image();
    for (family, seconds) in [("worker", "3600"), ("steady", "86400")] {
        env.register_json(
            &addr,
            serde_json::json!({"family": family, "containers": [{
                "name": "main", "image": image, "command": ["sleep", seconds],
                "init_process_enabled": true, "stop_timeout": 1}]}),
        );
    }
    assert_eq!(cli(&addr, &["queues", "create", "jobs"]).code, 0);
    let files = [
        (
            "workers.yaml",
            "name: workers\ntask_definition: worker\nautoscaling:\n  source: queue:jobs\n  min: 0\n  max: 2\n  target_per_task: 1\n",
        ),
        ("steady.yaml", "name: steady\ntask_definition: steady\ndesired_count: 1\n"),
    ];
    for (file, text) in files {
        let f = env.path(file);
        fs::write(&f, text).unwrap();
        let out = cli(&addr, &["services", "create", "-f", f.to_str().unwrap()]);
        assert_eq!(out.code, 0, "{out:?}");
    }
    let rt = tokio::runtime::Runtime::new().unwrap();
    let mut api = rt.block_on(Api::connect(&addr, &token));

    let (mut from_zero, mut extra) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        rt.block_on(async {
            api.until("workers", "idle at zero", |s| {
                s.desired == 0 && s.tasks.is_empty()
            })
            .await;
            let t0 = Instant::now();
            api.send("first").await;
            let t1 = api
                .until("workers", "a task RUNNING", |s| running(s) >= 1)
                .await;
            from_zero.push((t1 - t0).as_secs_f64() * 1000.0);
            let t0 = Instant::now();
            api.send("second").await;
            let t1 = api
                .until("workers", "a second task RUNNING", |s| running(s) >= 2)
                .await;
            extra.push((t1 - t0).as_secs_f64() * 1000.0);
            api.queues
                .purge(pb::QueueRef {
                    name: "jobs".into(),
                })
                .await
                .unwrap();
        });
    }

    let mut replaced = Vec::new();
    for _ in 0..replacements {
        rt.block_on(async {
            api.until("steady", "one task RUNNING", |s| running(s) == 1)
                .await;
            let old = api.service("steady").await.tasks[0].id.clone();
            // A task that stays up 10 s ends a crash loop: each kill is a first failure.
            tokio::time::sleep(Duration::from_millis(10_500)).await;
            let pid = wait_for("the steady task's process", Duration::from_secs(10), || {
                pid_of(b"sleep\x0086400\x00")
            });
            let t0 = Instant::now();
            assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0);
            let t1 = api
                .until("steady", "a replacement RUNNING", |s| {
                    running(s) == 1 && s.tasks.iter().all(|t| t.id != old)
                })
                .await;
            replaced.push((t1 - t0).as_secs_f64() * 1000.0);
        });
    }

    println!(
        "services on skiff dev, busybox tasks (sleep, skiff-init), {rounds} rounds; no peer runs here (ECS: one-minute metrics, KEDA: 30 s polls)"
    );
    for (name, series) in [
        ("first message → task RUNNING", from_zero),
        ("backlog +1 → extra RUNNING", extra),
        ("killed → replacement RUNNING", replaced),
    ] {
        let mut sorted = series.clone();
        sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
        let p99 = bench::percentile(&sorted, 0.99);
        bench::summary(name, series);
        println!("{:<28} p99={p99:>7.2} ms", "");
    }
    assert_eq!(cli(&addr, &["services", "rm", "workers"]).code, 0);
    assert_eq!(cli(&addr, &["services", "rm", "steady"]).code, 0);
}
