//! Benchmark: a simulated cluster. One process connects `--nodes` fake agents (default 1,000)
//! to a real `skiff controller` over the real agent protocol — a gRPC session each, on its own
//! connection: Register, heartbeats at the interval the controller asks for, a RUNNING report
//! for every StartTask and a STOPPED one for every StopTask. No container runs.
//!
//! Figures:
//! - the controller's RSS and CPU with the nodes connected and idle (heartbeats only): per
//!   node and per heartbeat;
//! - placements per second: `--tasks` tasks (default 10,000; `--tasks 100000` for the larger
//!   figure) wait PROVISIONING while every node is cordoned; then every node is uncordoned in
//!   one call and the clock runs from that call until the fake agents
//!   have received a StartTask for every task (placed, committed, sent), and until the
//!   controller has every task RUNNING (the reports taken in).
//!
//! Usage: bench_cluster [--nodes N] [--tasks N] [--skiff PATH]
//!
//! With `BENCH_PERF_OUT=FILE` set, `perf record --call-graph dwarf` samples the controller
//! from the uncordon call to all RUNNING (build with symbols to read it).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use skiff_proto::v1 as pb;
use skiff_tests::bench;
use skiff_tests::{admin_token, Env};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

/// Each fake node's capacity and each task's reservation: 64 vCPU / 0.05 = 1,280 tasks fit on
/// a node, so any node can take a share of the tasks and bin-pack decides which.
const NODE_CPU: f64 = 64.0;
const NODE_MEMORY_MIB: u64 = 256 * 1024;
const TASK_CPU: f64 = 0.05;
const TASK_MEMORY_MIB: u64 = 16;

/// What the fake agents saw, shared by all of them.
#[derive(Default)]
struct Seen {
    registered: AtomicUsize,
    starts: AtomicUsize,
    heartbeats: AtomicUsize,
}

fn report(task_id: &str, state: pb::RunState) -> pb::AgentMessage {
    pb::AgentMessage {
        body: Some(pb::agent_message::Body::Task(pb::TaskReport {
            task_id: task_id.to_string(),
            state: state as i32,
            time_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_millis() as i64,
            containers: vec![pb::ContainerReport {
                name: "main".into(),
                state: state as i32,
                ..Default::default()
            }],
            code: if state == pb::RunState::Stopped {
                pb::StopCode::UserInitiated as i32
            } else {
                0
            },
            ..Default::default()
        })),
    }
}

/// One fake agent: registers as `node`, heartbeats, answers starts and stops. Runs until the
/// session ends.
async fn fake_agent(addr: String, node: String, seen: Arc<Seen>) {
    let channel = Channel::from_shared(addr)
        .unwrap()
        .connect()
        .await
        .expect("connecting a fake agent");
    let mut client = pb::agent_channel_client::AgentChannelClient::new(channel);
    let (tx, rx) = mpsc::channel::<pb::AgentMessage>(256);
    tx.send(pb::AgentMessage {
        body: Some(pb::agent_message::Body::Register(pb::Register {
            node_id: node.clone(),
            labels: [("pool".to_string(), "sim".to_string())].into(),
            cpu: NODE_CPU,
            memory_mib: NODE_MEMORY_MIB,
            version: "bench-cluster".into(),
            tasks: vec![],
        })),
    })
    .await
    .unwrap();
    let mut inbound = client
        .session(ReceiverStream::new(rx))
        .await
        .expect("opening a session")
        .into_inner();
    let mut beat: Option<tokio::task::JoinHandle<()>> = None;
    while let Ok(Some(m)) = inbound.message().await {
        match m.body {
            Some(pb::controller_message::Body::Registered(r)) => {
                seen.registered.fetch_add(1, Ordering::AcqRel);
                let every = Duration::from_millis(u64::from(r.heartbeat_interval_ms.max(100)));
                let (tx, seen) = (tx.clone(), seen.clone());
                beat = Some(tokio::spawn(async move {
                    let mut tick = tokio::time::interval(every);
                    tick.tick().await;
                    loop {
                        tick.tick().await;
                        let hb = pb::AgentMessage {
                            body: Some(pb::agent_message::Body::Heartbeat(pb::Heartbeat {})),
                        };
                        if tx.send(hb).await.is_err() {
                            return;
                        }
                        seen.heartbeats.fetch_add(1, Ordering::AcqRel);
                    }
                }));
            }
            Some(pb::controller_message::Body::Start(s)) => {
                seen.starts.fetch_add(1, Ordering::AcqRel);
                let _ = tx.send(report(&s.task_id, pb::RunState::Running)).await;
            }
            Some(pb::controller_message::Body::Stop(s)) => {
                let _ = tx.send(report(&s.task_id, pb::RunState::Stopped)).await;
            }
            _ => {}
        }
    }
    if let Some(b) = beat {
        b.abort();
    }
}

/// Resident memory (KiB) and CPU time (clock ticks, user + system) of process `pid`.
fn usage(pid: i32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command (which may hold spaces) start after the last ')'.
    let rest: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..]
        .split_whitespace()
        .collect();
    let ticks = rest[11].parse::<u64>().unwrap() + rest[12].parse::<u64>().unwrap();
    (rss, ticks)
}

type Authed = tonic::service::interceptor::InterceptedService<
    Channel,
    Box<dyn FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Send>,
>;

async fn authed(addr: &str, token: &str) -> Authed {
    let channel = Channel::from_shared(addr.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let bearer: tonic::metadata::MetadataValue<_> = format!("Bearer {token}").parse().unwrap();
    tonic::service::interceptor::InterceptedService::new(
        channel,
        Box::new(move |mut req: tonic::Request<()>| {
            req.metadata_mut().insert("authorization", bearer.clone());
            Ok(req)
        }),
    )
}

/// Sets every node's state in one call.
async fn set_all(addr: &str, token: &str, nodes: &[String], state: &str) {
    let mut c = pb::nodes_client::NodesClient::new(authed(addr, token).await);
    let r = c
        .set_state(pb::SetNodeStateRequest {
            node_ids: nodes.to_vec(),
            state: state.into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.nodes.len(), nodes.len());
}

/// How many tasks are in `status`, as the controller counts them.
async fn count(tasks: &mut pb::tasks_client::TasksClient<Authed>, status: &str) -> u32 {
    tasks
        .list(pb::ListTasksRequest {
            status: status.into(),
            limit: 1,
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner()
        .total
}

fn main() {
    let nodes_n: usize = bench::arg("--nodes", 1000);
    let tasks_n: usize = bench::arg("--tasks", 10_000);
    bench::use_skiff_arg();
    let mut env = Env::new();
    let (ctl, addr) = env.controller("127.0.0.1:0", &["--plaintext"]);
    let pid = env.procs[ctl].pid();
    let token = admin_token(&addr);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let seen = Arc::new(Seen::default());
        let (rss0, _) = usage(pid);
        let nodes: Vec<String> = (0..nodes_n).map(|i| format!("sim-{i:04}")).collect();
        let connecting = Instant::now();
        for n in &nodes {
            tokio::spawn(fake_agent(addr.clone(), n.clone(), seen.clone()));
        }
        while seen.registered.load(Ordering::Acquire) < nodes_n {
            assert!(connecting.elapsed() < Duration::from_secs(120), "nodes did not all register");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        println!(
            "{nodes_n} fake agents registered in {:.2} s",
            connecting.elapsed().as_secs_f64()
        );

        // Idle: heartbeats only, measured over 10 s.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (rss1, cpu0) = usage(pid);
        let beats0 = seen.heartbeats.load(Ordering::Acquire);
        let idle = Instant::now();
        tokio::time::sleep(Duration::from_secs(10)).await;
        let (_, cpu1) = usage(pid);
        let beats = seen.heartbeats.load(Ordering::Acquire) - beats0;
        let secs = idle.elapsed().as_secs_f64();
        let tick = 1e6 / 100.0; // µs per clock tick (USER_HZ = 100)
        let cpu_us = (cpu1 - cpu0) as f64 * tick;
        println!(
            "controller RSS: {:.1} MiB before the nodes, {:.1} MiB with {nodes_n} connected ({:.1} KiB per node)",
            rss0 as f64 / 1024.0,
            rss1 as f64 / 1024.0,
            (rss1 - rss0.min(rss1)) as f64 / nodes_n as f64
        );
        println!(
            "idle with {nodes_n} nodes: {:.1}% of a core, {:.0} heartbeats/s, {:.1} µs of controller CPU per heartbeat",
            cpu_us / secs / 1e4,
            beats as f64 / secs,
            if beats > 0 { cpu_us / beats as f64 } else { 0.0 }
        );

        // Placement: every node cordoned, the tasks made, then every node uncordoned.
        set_all(&addr, &token, &nodes, "CORDONED").await;
        let making = Instant::now();
        let per_client = tasks_n.div_ceil(16);
        let mut makers = Vec::new();
        for c in 0..16 {
            let mut client = pb::tasks_client::TasksClient::new(authed(&addr, &token).await);
            let n = per_client.min(tasks_n.saturating_sub(c * per_client));
            makers.push(tokio::spawn(async move {
                for _ in 0..n {
                    client
                        .run(pb::RunTaskRequest {
                            source: Some(pb::run_task_request::Source::AdHoc(
                                pb::TaskDefinitionInput {
                                    family: "sim".into(),
                                    containers: vec![pb::ContainerDefinition {
                                        name: "main".into(),
                                        image: "dir:/nonexistent-fake-agents-run-nothing".into(),
                                        command: vec!["true".into()],
                                        cpu: TASK_CPU,
                                        memory_mib: TASK_MEMORY_MIB,
                                        essential: Some(true),
                                        ..Default::default()
                                    }],
                                    network_mode: "none".into(),
                                    ..Default::default()
                                },
                            )),
                            ..Default::default()
                        })
                        .await
                        .unwrap();
                }
            }));
        }
        for m in makers {
            m.await.unwrap();
        }
        let mut tasks = pb::tasks_client::TasksClient::new(authed(&addr, &token).await);
        assert_eq!(count(&mut tasks, "PROVISIONING").await as usize, tasks_n);
        println!(
            "{tasks_n} tasks created (16 clients, Tasks.Run) in {:.2} s, all PROVISIONING",
            making.elapsed().as_secs_f64()
        );
        let starts0 = seen.starts.load(Ordering::Acquire);
        let perf = std::env::var("BENCH_PERF_OUT").ok().map(|out| {
            let child = std::process::Command::new("perf")
                .args(["record", "-q", "--call-graph", "dwarf,16384", "-F", "999", "-o", &out])
                .args(["-p", &pid.to_string()])
                .spawn()
                .expect("running perf");
            // perf is sampling once it has written its header.
            std::thread::sleep(Duration::from_millis(500));
            child
        });
        let (_, cpu_before) = usage(pid);
        let go = Instant::now();
        let uncordon = {
            let (addr, token, nodes) = (addr.clone(), token.clone(), nodes.clone());
            tokio::spawn(async move {
                set_all(&addr, &token, &nodes, "READY").await;
                Instant::now()
            })
        };
        while seen.starts.load(Ordering::Acquire) - starts0 < tasks_n {
            assert!(go.elapsed() < Duration::from_secs(600), "not every task was started");
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let all_started = go.elapsed().as_secs_f64();
        let uncordoned = uncordon.await.unwrap().duration_since(go).as_secs_f64();
        while (count(&mut tasks, "RUNNING").await as usize) < tasks_n {
            assert!(go.elapsed() < Duration::from_secs(600), "not every task RUNNING");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let all_running = go.elapsed().as_secs_f64();
        let (_, cpu_after) = usage(pid);
        if let Some(mut p) = perf {
            // SIGINT: perf writes its file and exits.
            unsafe { libc::kill(p.id() as i32, libc::SIGINT) };
            let _ = p.wait();
        }
        println!(
            "{tasks_n} tasks over {nodes_n} nodes: every StartTask at the agents {all_started:.2} s after the uncordon call ({:.0} placements/s); all RUNNING at the controller after {all_running:.2} s ({:.0}/s); the call took {uncordoned:.2} s",
            tasks_n as f64 / all_started,
            tasks_n as f64 / all_running,
        );
        let cpu_ms = (cpu_after - cpu_before) as f64 * 10.0;
        println!(
            "controller CPU from the uncordon call to all RUNNING: {cpu_ms:.0} ms ({:.0} µs per task placed, started and reported RUNNING)",
            cpu_ms * 1000.0 / tasks_n as f64
        );
        let (rss2, _) = usage(pid);
        println!(
            "controller RSS with {tasks_n} tasks RUNNING: {:.1} MiB",
            rss2 as f64 / 1024.0
        );
    });
}
