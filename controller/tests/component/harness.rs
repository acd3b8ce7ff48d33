//! The component tier's harness: a whole controller in this process (its real store, API and
//! background loops) on a manual clock, reached through its real gRPC API, with fake agents
//! that speak the real agent protocol over loopback. Time moves only when a test calls
//! `advance`, so timeouts and backoffs run in milliseconds and never race the wall clock.

use std::sync::Arc;
use std::time::Duration;

use skiff_controller::clock::Clock;
use skiff_controller::core::Core;
use skiff_controller::workers::WorkerState;
use skiff_controller::{Controller, ControllerConfig, NodeTiming};
use skiff_proto::v1 as pb;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

/// 2027-01-15T08:00:00Z: a fixed start, so fire times in assertions are exact.
pub const START_MS: i64 = 1_800_000_000_000;

/// How long a test waits (real time) for the controller to act on what it was given.
const REACT: Duration = Duration::from_secs(5);

pub struct Harness {
    pub clock: Clock,
    pub core: Arc<Core>,
    pub channel: Channel,
    token: String,
    stop: Option<oneshot::Sender<()>>,
    served: Option<tokio::task::JoinHandle<()>>,
    _dir: tempfile::TempDir,
}

impl Harness {
    /// A controller with a 1 s heartbeat and a 10 s node timeout, on a manual clock at
    /// `START_MS`.
    pub async fn start() -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let clock = Clock::manual(START_MS);
        let ctl = Controller::bind(ControllerConfig {
            data_dir: dir.path().to_path_buf(),
            listen: "127.0.0.1:0".parse().unwrap(),
            timing: NodeTiming {
                heartbeat_interval: Duration::from_secs(1),
                node_timeout: Duration::from_secs(10),
            },
            clock: clock.clone(),
            tls: None,
            node_cert_ttl: None,
            http_listen: None,
            local_buckets: None,
            smtp: None,
            public_url: None,
            task_history: None,
            event_log: None,
        })
        .await
        .unwrap();
        let token = std::fs::read_to_string(ctl.bootstrap_token().unwrap()).unwrap();
        let core = ctl.core();
        let addr = ctl.local_addr();
        let (stop, stopped) = oneshot::channel::<()>();
        let served = tokio::spawn(async move {
            ctl.serve(async {
                let _ = stopped.await;
            })
            .await
            .unwrap();
        });
        let channel = Channel::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect()
            .await
            .unwrap();
        Harness {
            clock,
            core,
            channel,
            token: token.trim().to_string(),
            stop: Some(stop),
            served: Some(served),
            _dir: dir,
        }
    }

    /// A request with the admin token.
    pub fn req<T>(&self, msg: T) -> tonic::Request<T> {
        let mut r = tonic::Request::new(msg);
        r.metadata_mut().insert(
            "authorization",
            format!("Bearer {}", self.token).parse().unwrap(),
        );
        r
    }

    pub fn tasks(&self) -> pb::tasks_client::TasksClient<Channel> {
        pb::tasks_client::TasksClient::new(self.channel.clone())
    }

    pub fn rules(&self) -> pb::rules_client::RulesClient<Channel> {
        pb::rules_client::RulesClient::new(self.channel.clone())
    }

    pub fn events(&self) -> pb::events_client::EventsClient<Channel> {
        pb::events_client::EventsClient::new(self.channel.clone())
    }

    pub fn schedules(&self) -> pb::schedules_client::SchedulesClient<Channel> {
        pb::schedules_client::SchedulesClient::new(self.channel.clone())
    }

    pub fn topics(&self) -> pb::topics_client::TopicsClient<Channel> {
        pb::topics_client::TopicsClient::new(self.channel.clone())
    }

    pub fn queues(&self) -> pb::queues_client::QueuesClient<Channel> {
        pb::queues_client::QueuesClient::new(self.channel.clone())
    }

    pub fn services(&self) -> pb::services_client::ServicesClient<Channel> {
        pb::services_client::ServicesClient::new(self.channel.clone())
    }

    pub fn taskdefs(&self) -> pb::task_definitions_client::TaskDefinitionsClient<Channel> {
        pb::task_definitions_client::TaskDefinitionsClient::new(self.channel.clone())
    }

    /// Registers a one-container definition (0.25 vCPU, 64 MiB) of `family`.
    pub async fn register(&self, family: &str) -> pb::TaskDefinition {
        self.register_running(family, "true").await
    }

    /// Registers a definition whose container runs `command` (`crash`: fake agents report
    /// it exited with 1 as soon as it starts).
    pub async fn register_running(&self, family: &str, command: &str) -> pb::TaskDefinition {
        self.taskdefs()
            .register(self.req(pb::RegisterTaskDefinitionRequest {
                definition: Some(pb::TaskDefinitionInput {
                    family: family.into(),
                    containers: vec![pb::ContainerDefinition {
                        name: "main".into(),
                        image: "dir:/nowhere".into(),
                        command: vec![command.into()],
                        cpu: 0.25,
                        memory_mib: 64,
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
            }))
            .await
            .unwrap()
            .into_inner()
    }

    /// Runs a task of a registered family.
    pub async fn run(&self, family: &str) -> pb::Task {
        self.tasks()
            .run(self.req(pb::RunTaskRequest {
                source: Some(pb::run_task_request::Source::TaskDefinition(family.into())),
                ..Default::default()
            }))
            .await
            .unwrap()
            .into_inner()
    }

    pub async fn task(&self, id: &str) -> pb::Task {
        self.tasks()
            .describe(self.req(pb::TaskRef { id: id.into() }))
            .await
            .unwrap()
            .into_inner()
    }

    /// Moves the clock forward.
    pub fn advance(&self, d: Duration) {
        self.clock.advance(d);
    }

    /// Waits (real time, bounded) until `check` returns Some; panics naming `what` with the
    /// last value seen otherwise.
    pub async fn until<T, F, Fut>(&self, what: &str, mut check: F) -> T
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, String>>,
    {
        let deadline = tokio::time::Instant::now() + REACT;
        loop {
            match check().await {
                Ok(v) => return v,
                Err(last) if tokio::time::Instant::now() >= deadline => {
                    panic!("{what}: not within {REACT:?}; last seen: {last}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(5)).await,
            }
        }
    }

    /// Waits until the bus's dead-letter list for `rule` is not empty, and returns it.
    pub async fn rule_dead_letters(&self, rule: &str) -> Vec<pb::DeadLetter> {
        self.until(&format!("{rule}'s dead letters"), || async {
            let d = self
                .events()
                .list_dead_letters(self.req(pb::ListDeadLettersRequest {
                    rule: rule.into(),
                    limit: 10,
                }))
                .await
                .unwrap()
                .into_inner()
                .dead_letters;
            if d.is_empty() {
                Err("none yet".into())
            } else {
                Ok(d)
            }
        })
        .await
    }

    /// Waits until the schedules loop has seen schedule `name` (its first fire time is
    /// durable), so that time may move.
    pub async fn first_fire_time(&self, name: &str) -> i64 {
        self.until(&format!("{name}'s first fire time"), || async {
            match self.core.store.schedule_state(name).unwrap().next_fire_ms {
                Some(t) => Ok(t),
                None => Err("not yet".into()),
            }
        })
        .await
    }

    /// Waits until the task has `status`.
    pub async fn task_reaches(&self, id: &str, status: &str) -> pb::Task {
        self.until(&format!("task {id} {status}"), || async {
            let t = self.task(id).await;
            if t.last_status == status {
                Ok(t)
            } else {
                Err(format!("{} ({})", t.last_status, t.stopped_reason))
            }
        })
        .await
    }

    /// Stops the controller and waits for it to finish.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(served) = self.served.take() {
            tokio::time::timeout(REACT, served)
                .await
                .expect("the controller stopped")
                .unwrap();
        }
        // Every background loop finished its pass and returned.
        let workers = self.core.workers.all();
        assert_eq!(workers.len(), 9, "{workers:?}");
        assert!(
            workers.values().all(|s| *s == WorkerState::Stopped),
            "{workers:?}"
        );
    }
}

/// A fake agent: registers over the real agent channel, answers every Start with a RUNNING
/// report and every Stop with a STOPPED one, and can go away without a word.
pub struct FakeAgent {
    pub node_id: String,
    out: Option<mpsc::Sender<pb::AgentMessage>>,
    /// Task ids of every Start received, in order.
    pub started: mpsc::UnboundedReceiver<String>,
    session: tokio::task::JoinHandle<()>,
}

impl FakeAgent {
    /// Connects as `node_id` with `cpu` vCPU and 4 GiB, reporting `running` as its tasks.
    pub async fn connect(h: &Harness, node_id: &str, cpu: f64, running: &[&str]) -> FakeAgent {
        let (out, rx) = mpsc::channel(64);
        out.send(pb::AgentMessage {
            body: Some(pb::agent_message::Body::Register(pb::Register {
                node_id: node_id.into(),
                cpu,
                memory_mib: 4096,
                version: "fake".into(),
                tasks: running
                    .iter()
                    .map(|id| report(id, "RUNNING", "", ""))
                    .collect(),
                ..Default::default()
            })),
        })
        .await
        .unwrap();
        let mut client = pb::agent_channel_client::AgentChannelClient::new(h.channel.clone());
        let mut inbound = client
            .session(ReceiverStream::new(rx))
            .await
            .unwrap()
            .into_inner();
        let first = inbound.message().await.unwrap().unwrap();
        assert!(
            matches!(
                first.body,
                Some(pb::controller_message::Body::Registered(_))
            ),
            "the controller answers register first: {first:?}"
        );
        let (started_tx, started) = mpsc::unbounded_channel();
        let replies = out.clone();
        let session = tokio::spawn(async move {
            while let Ok(Some(msg)) = inbound.message().await {
                let reply = match msg.body {
                    Some(pb::controller_message::Body::Start(s)) => {
                        let _ = started_tx.send(s.task_id.clone());
                        // A container whose command is `crash` exits at once with 1.
                        if s.containers
                            .iter()
                            .any(|c| c.command.first().is_some_and(|c| c == "crash"))
                        {
                            report(
                                &s.task_id,
                                "STOPPED",
                                "EssentialContainerExited",
                                "essential container main exited with 1",
                            )
                        } else {
                            report(&s.task_id, "RUNNING", "", "")
                        }
                    }
                    Some(pb::controller_message::Body::Stop(s)) => {
                        report(&s.task_id, "STOPPED", &s.stop_code, &s.reason)
                    }
                    _ => continue,
                };
                let body = Some(pb::agent_message::Body::Task(reply));
                if replies.send(pb::AgentMessage { body }).await.is_err() {
                    break;
                }
            }
        });
        FakeAgent {
            node_id: node_id.into(),
            out: Some(out),
            started,
            session,
        }
    }

    /// Waits for the next Start this agent receives.
    pub async fn next_start(&mut self) -> String {
        tokio::time::timeout(REACT, self.started.recv())
            .await
            .expect("a Start within the deadline")
            .expect("the session is open")
    }

    /// Reports that a task's essential container exited with `exit_code`.
    pub async fn exit(&self, task_id: &str, exit_code: i32) {
        self.exit_with(task_id, exit_code).await
    }

    /// Reports that a task's essential container exited with `exit_code`, the code on the
    /// container as a real agent reports it.
    pub async fn exit_with(&self, task_id: &str, exit_code: i32) {
        let mut r = report(
            task_id,
            "STOPPED",
            "EssentialContainerExited",
            &format!("essential container main exited with {exit_code}"),
        );
        r.containers = vec![pb::ContainerReport {
            name: "main".into(),
            status: "STOPPED".into(),
            exit_code: Some(exit_code),
            ..Default::default()
        }];
        let body = Some(pb::agent_message::Body::Task(r));
        self.out
            .as_ref()
            .expect("connected")
            .send(pb::AgentMessage { body })
            .await
            .unwrap();
    }

    /// Drops the connection, as a crashed host or a cut cable would.
    pub fn vanish(mut self) {
        self.out.take();
        self.session.abort();
    }
}

fn report(task_id: &str, status: &str, stop_code: &str, reason: &str) -> pb::TaskReport {
    pb::TaskReport {
        task_id: task_id.into(),
        status: status.into(),
        stop_code: stop_code.into(),
        reason: reason.into(),
        ..Default::default()
    }
}

/// A webhook endpoint on 127.0.0.1 that answers 500 to its first `failures` requests and 200
/// after, and hands over every body it receives.
pub struct Webhook {
    pub url: String,
    pub bodies: mpsc::UnboundedReceiver<String>,
}

impl Webhook {
    pub async fn start(failures: usize) -> Webhook {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let (tx, bodies) = mpsc::unbounded_channel();
        let seen = Arc::new(AtomicUsize::new(0));
        let app = axum::Router::new().route(
            "/hook",
            axum::routing::post(move |body: String| {
                let tx = tx.clone();
                let seen = seen.clone();
                async move {
                    let _ = tx.send(body);
                    if seen.fetch_add(1, Ordering::SeqCst) < failures {
                        http::StatusCode::INTERNAL_SERVER_ERROR
                    } else {
                        http::StatusCode::OK
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hook", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Webhook { url, bodies }
    }

    /// Waits for the next request's body.
    pub async fn next(&mut self) -> String {
        tokio::time::timeout(REACT, self.bodies.recv())
            .await
            .expect("a webhook request within the deadline")
            .expect("the endpoint is up")
    }

    /// Whether a request arrived that has not been taken yet.
    pub fn idle(&mut self) -> bool {
        self.bodies.try_recv().is_err()
    }
}

/// Puts one event from source "app" with `detail` on the bus; returns its id.
pub async fn put_event(h: &Harness, detail: serde_json::Value) -> String {
    let r = h
        .events()
        .put(h.req(pb::PutEventsRequest {
            entries: vec![pb::PutEventsEntry {
                source: "app".into(),
                detail_type: "Thing Happened".into(),
                detail_json: detail.to_string(),
                ..Default::default()
            }],
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.failed_entry_count, 0, "{r:?}");
    r.entries[0].event_id.clone()
}
