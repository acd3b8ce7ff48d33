//! Benchmark: queue throughput, durable (acknowledged only after the flush), next to Redis
//! with `appendfsync always` on the same machine in the same run. skiff: a controller's
//! Queues service over gRPC — send, then receive + delete — with 1 and 8 clients, one
//! message per call and batches of 10. Redis: `redis-benchmark` LPUSH, then RPOP (a pop is
//! receive and delete in one), with 1 and 8 clients, unpipelined and pipelined by 10.
//!
//! Usage: bench_queues [--messages N] [--skiff PATH]   (`scripts/deps bench` brings redis)

use std::process::Command;
use std::time::Instant;

use skiff_proto::v1 as pb;
use skiff_tests::bench;
use skiff_tests::{admin_token, cli, Env};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// Puts the admin token on every call.
type Auth = Box<dyn FnMut(tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> + Send>;
type Client = pb::queues_client::QueuesClient<InterceptedService<Channel, Auth>>;

async fn client(addr: &str, token: &str) -> Client {
    let channel = tonic::transport::Endpoint::new(addr.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let bearer: tonic::metadata::MetadataValue<_> = format!("Bearer {token}").parse().unwrap();
    let auth: Auth = Box::new(move |mut req: tonic::Request<()>| {
        req.metadata_mut().insert("authorization", bearer.clone());
        Ok(req)
    });
    pb::queues_client::QueuesClient::with_interceptor(channel, auth)
}

/// Sends `n` messages from `clients` concurrent clients, `batch` per call; messages/s.
async fn send(addr: &str, token: &str, queue: &str, n: usize, clients: usize, batch: usize) -> f64 {
    let per = n / clients / batch * batch;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let mut cl = client(addr, token).await;
        let queue = queue.to_string();
        tasks.push(tokio::spawn(async move {
            for b in 0..per / batch {
                let entries = (0..batch)
                    .map(|i| pb::SendEntry {
                        id: i.to_string(),
                        body: format!("job {c}-{b}-{i}: resize photo.jpg to 800x600"),
                        ..Default::default()
                    })
                    .collect();
                cl.send(pb::SendMessagesRequest {
                    queue: queue.clone(),
                    entries,
                })
                .await
                .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    (per / batch * batch * clients) as f64 / start.elapsed().as_secs_f64()
}

/// Receives and deletes `n` messages from `clients` concurrent clients, `batch` per call;
/// messages/s.
async fn drain(
    addr: &str,
    token: &str,
    queue: &str,
    n: usize,
    clients: usize,
    batch: usize,
) -> f64 {
    let per = n / clients / batch * batch;
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let mut cl = client(addr, token).await;
        let queue = queue.to_string();
        tasks.push(tokio::spawn(async move {
            let mut done = 0;
            while done < per {
                let got = cl
                    .receive(pb::ReceiveMessagesRequest {
                        queue: queue.clone(),
                        max_messages: batch.min(per - done) as u32,
                        wait_seconds: Some(1),
                        visibility_timeout_seconds: None,
                    })
                    .await
                    .unwrap()
                    .into_inner()
                    .messages;
                if got.is_empty() {
                    continue;
                }
                done += got.len();
                cl.delete_messages(pb::DeleteMessagesRequest {
                    queue: queue.clone(),
                    receipt_handles: got.into_iter().map(|m| m.receipt_handle).collect(),
                })
                .await
                .unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    (per * clients) as f64 / start.elapsed().as_secs_f64()
}

/// Median microseconds of `n` one-at-a-time `Describe` calls on an empty queue: the floor
/// of a call (gRPC, the token check, a read) under every figure above, with nothing written.
async fn call_floor(addr: &str, token: &str, queue: &str, n: usize) -> f64 {
    let mut cl = client(addr, token).await;
    let mut took = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        cl.describe(pb::QueueRef {
            name: queue.to_string(),
        })
        .await
        .unwrap();
        took.push(start.elapsed().as_secs_f64() * 1e6);
    }
    took.sort_by(f64::total_cmp);
    took[n / 2]
}

/// requests/s that `redis-benchmark` reports for `test` (lpush, rpop).
fn redis(port: u16, test: &str, n: usize, clients: usize, pipeline: usize) -> f64 {
    let out = Command::new("redis-benchmark")
        .args(["-p", &port.to_string(), "-t", test, "-n", &n.to_string()])
        .args([
            "-c",
            &clients.to_string(),
            "-P",
            &pipeline.to_string(),
            "-d",
            "48",
            "-q",
        ])
        .output()
        .expect("redis-benchmark (scripts/deps bench installs redis)");
    let text = String::from_utf8_lossy(&out.stdout);
    // Progress lines end in '\r'; the result is "LPUSH: 1234.56 requests per second, p50=…".
    let result = text
        .split(['\r', '\n'])
        .find(|l| l.contains("requests per second"));
    result
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("redis-benchmark said: {text}"))
}

fn main() {
    let n: usize = bench::arg("--messages", 4000);
    bench::use_skiff_arg();
    let mut env = Env::new();
    let (_, addr) = env.controller("127.0.0.1:0", &["--plaintext"]);
    let token = admin_token(&addr);
    let rt = tokio::runtime::Runtime::new().unwrap();

    // Redis with every write fsynced before it answers, as skiff's are.
    let server = skiff_tests::redis::RedisServer::start(
        &env.path("redis"),
        &["--appendonly", "yes", "--appendfsync", "always"],
    );
    let port = server.port;

    assert_eq!(cli(&addr, &["queues", "create", "bench-floor"]).code, 0);
    let floor = rt.block_on(call_floor(&addr, &token, "bench-floor", 2000));
    let one = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let floor1 = one.block_on(call_floor(&addr, &token, "bench-floor", 2000));
    println!("a call that writes nothing (Describe of an empty queue): p50 {floor:.0} us (client on one thread: {floor1:.0} us)");
    println!("{n} messages per figure, durable on both sides; messages/s (ratio skiff/redis)");
    for (clients, batch) in [(1, 1), (8, 1), (1, 10), (8, 10)] {
        let queue = format!("bench-{clients}-{batch}");
        assert_eq!(
            cli(
                &addr,
                &["queues", "create", &queue, "--visibility-timeout", "1h"]
            )
            .code,
            0
        );
        let sent = rt.block_on(send(&addr, &token, &queue, n, clients, batch));
        let drained = rt.block_on(drain(&addr, &token, &queue, n, clients, batch));
        let r_push = redis(port, "lpush", n, clients, batch);
        let r_pop = redis(port, "rpop", n, clients, batch);
        let what = if batch == 1 {
            "one per call"
        } else {
            "batches of 10 / pipelined by 10"
        };
        println!(
            "{clients} client(s), {what}: send {sent:.0} vs LPUSH {r_push:.0} ({:.2}x); receive+delete {drained:.0} vs RPOP {r_pop:.0} ({:.2}x)",
            sent / r_push,
            drained / r_pop
        );
    }
    drop(server);
}
