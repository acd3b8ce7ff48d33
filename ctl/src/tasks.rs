//! `skiff tasks`: list, describe, stop, logs and wait — and the waiting and log streaming
//! `run-task` shares.

use std::io::Write;

use clap::Subcommand;
use skiff_proto::v1 as pb;

use crate::conn::{api_error, connect, Conn};
use crate::output::{self, Format};

#[derive(Subcommand)]
pub enum TasksCmd {
    /// List tasks, newest first.
    Ls {
        /// Only tasks in this state: PROVISIONING, PENDING, RUNNING, STOPPING or STOPPED.
        #[arg(long)]
        status: Option<String>,
        /// Only tasks of this task-definition family.
        #[arg(long)]
        family: Option<String>,
        /// Only tasks placed on this node.
        #[arg(long)]
        node: Option<String>,
        /// Only tasks of this group (e.g. family:thumbs, or a rule's group).
        #[arg(long, conflicts_with = "service")]
        group: Option<String>,
        /// Only this service's tasks.
        #[arg(long)]
        service: Option<String>,
        /// Only tasks created since then: a duration ago (10m, 2h) or an RFC 3339 time.
        #[arg(long, value_parser = parse_since)]
        since: Option<i64>,
        /// Only tasks created before then: a duration ago or an RFC 3339 time.
        #[arg(long, value_parser = parse_since)]
        until: Option<i64>,
        /// At most this many (the newest); says on stderr how many more there are and the
        /// token for the next page.
        #[arg(long, default_value_t = 100)]
        limit: u32,
        /// The next page: the token a listing before gave (the tasks older than its last).
        #[arg(long)]
        page_token: Option<String>,
    },
    /// Show one task: status, stop code, reason, per-container exit codes.
    Describe {
        /// The task id, or a unique prefix of it.
        id: String,
    },
    /// Stop a task (SIGTERM, then SIGKILL after the stop timeout).
    Stop {
        /// The task id, or a unique prefix of it.
        id: String,
        /// Why, recorded as the task's stopped reason.
        #[arg(long)]
        reason: Option<String>,
    },
    /// Run a command in a running task's container — its namespaces and cgroups, as its
    /// user, with its capabilities and seccomp filter — e.g. `skiff tasks exec ID -it -- sh`.
    /// Exits with the command's exit code. Admin and operator tokens only; every exec is a
    /// "Task Exec" event.
    Exec(crate::exec::ExecArgs),
    /// Print a task's logs: stdout to stdout, stderr to stderr.
    Logs {
        /// The task id, or a unique prefix of it.
        id: String,
        /// Keep streaming until the task stops.
        #[arg(short, long)]
        follow: bool,
        /// Only this container's log (default: every container, each line prefixed with its
        /// container's name when there are several).
        #[arg(long, short = 'c')]
        container: Option<String>,
        /// Prefix each line with the time it was written (RFC 3339).
        #[arg(long, short = 't')]
        timestamps: bool,
        /// Only lines written since then: a duration ago (10m, 2h) or an RFC 3339 time.
        #[arg(long, value_parser = parse_since)]
        since: Option<i64>,
        /// Only the last N lines of each container (before following).
        #[arg(long, short = 'n')]
        tail: Option<u32>,
    },
    /// Wait until a task is STOPPED and exit with its essential container's exit code.
    Wait {
        /// The task id, or a unique prefix of it.
        id: String,
    },
    /// How long stopped tasks stay, per family, service or group.
    Retention {
        #[command(subcommand)]
        cmd: crate::retention::RetentionCmd,
    },
}

/// `--since`: a duration before now (`10m`) or an RFC 3339 time; milliseconds since the epoch.
pub fn parse_since(s: &str) -> Result<i64, String> {
    if let Ok(t) = chrono::DateTime::parse_from_rfc3339(s) {
        return Ok(t.timestamp_millis());
    }
    humantime::parse_duration(s)
        .map(|d| chrono::Utc::now().timestamp_millis() - d.as_millis() as i64)
        .map_err(|_| format!("{s:?} is neither a duration (10m, 2h) nor an RFC 3339 time"))
}

fn task_rows(tasks: &[pb::Task]) -> String {
    output::table(
        &[
            "ID",
            "DEFINITION",
            "GROUP",
            "STATUS",
            "DESIRED",
            "NODE",
            "STOP CODE",
            "EXIT",
            "CREATED",
        ],
        tasks
            .iter()
            .map(|t| {
                vec![
                    t.id.clone(),
                    if t.task_definition.is_empty() {
                        "-".into()
                    } else {
                        t.task_definition.clone()
                    },
                    t.group.clone(),
                    t.last_status.clone(),
                    t.desired_status.clone(),
                    if t.node_id.is_empty() {
                        "-".into()
                    } else {
                        t.node_id.clone()
                    },
                    if t.stop_code.is_empty() {
                        "-".into()
                    } else {
                        t.stop_code.clone()
                    },
                    essential_exit(t).map_or("-".into(), |c| c.to_string()),
                    output::time(t.created_at_ms),
                ]
            })
            .collect(),
    )
}

/// The exit code of the first essential container that has one.
pub fn essential_exit(t: &pb::Task) -> Option<i32> {
    t.containers
        .iter()
        .filter(|c| c.essential)
        .find_map(|c| c.exit_code)
}

pub fn describe_task(t: &pb::Task) -> String {
    let mut s = String::new();
    let mut kv = |k: &str, v: String| {
        if !v.is_empty() {
            s.push_str(&format!("{k:<16}{v}\n"));
        }
    };
    kv("Task:", t.id.clone());
    kv("Definition:", t.task_definition.clone());
    kv("Group:", t.group.clone());
    kv(
        "Status:",
        format!("{} (desired {})", t.last_status, t.desired_status),
    );
    // Why it waits for a node, or a note on how it started (a start sent again).
    let reason_label = if t.last_status == "PROVISIONING" {
        "Waiting:"
    } else {
        "Note:"
    };
    kv(reason_label, t.status_reason.clone());
    kv("Node:", t.node_id.clone());
    kv(
        "Resources:",
        format!(
            "{} vCPU, {} MiB, network {}",
            t.cpu, t.memory_mib, t.network_mode
        ),
    );
    kv("Addresses:", t.addresses.join(", "));
    kv(
        "Ports:",
        t.port_mappings
            .iter()
            .map(|p| format!("{}->{}/{}", p.host_port, p.container_port, p.protocol))
            .collect::<Vec<_>>()
            .join(", "),
    );
    if t.timeout_seconds > 0 {
        kv("Timeout:", format!("{}s", t.timeout_seconds));
    }
    kv("Stop code:", t.stop_code.clone());
    kv("Stopped reason:", t.stopped_reason.clone());
    if !t.replaces.is_empty() {
        kv(
            "Replaces:",
            format!(
                "task {} (lost with its node before it ran; this is start {})",
                t.replaces, t.attempt
            ),
        );
    }
    kv("Replaced by:", t.replaced_by.clone());
    kv("Created:", output::time(t.created_at_ms));
    kv("Started:", output::time(t.started_at_ms));
    kv("Stopped:", output::time(t.stopped_at_ms));
    kv(
        "Ran for:",
        output::span(
            t.started_at_ms,
            if t.stopped_at_ms > 0 {
                t.stopped_at_ms
            } else {
                chrono::Utc::now().timestamp_millis()
            },
        ),
    );
    s.push_str("Containers:\n");
    s.push_str(&output::table(
        &[
            "  NAME",
            "IMAGE",
            "STATUS",
            "HEALTH",
            "ESSENTIAL",
            "EXIT",
            "REASON",
        ],
        t.containers
            .iter()
            .map(|c| {
                vec![
                    format!("  {}", c.name),
                    c.image.clone(),
                    c.last_status.clone(),
                    if c.health.is_empty() {
                        "-".into()
                    } else {
                        c.health.clone()
                    },
                    c.essential.to_string(),
                    c.exit_code.map_or("-".into(), |e| e.to_string()),
                    if c.reason.is_empty() {
                        "-".into()
                    } else {
                        c.reason.clone()
                    },
                ]
            })
            .collect(),
    ));
    s
}

pub async fn tasks(addr: &str, fmt: Format, cmd: TasksCmd) -> anyhow::Result<i32> {
    let mut client = pb::tasks_client::TasksClient::new(connect(addr).await?);
    match cmd {
        TasksCmd::Ls {
            status,
            family,
            node,
            group,
            service,
            since,
            until,
            limit,
            page_token,
        } => {
            let resp = client
                .list(pb::ListTasksRequest {
                    status: status.unwrap_or_default(),
                    family: family.unwrap_or_default(),
                    node_id: node.unwrap_or_default(),
                    group: group.unwrap_or_default(),
                    service: service.unwrap_or_default(),
                    created_from_ms: since.unwrap_or(0),
                    created_before_ms: until.unwrap_or(0),
                    page_token: page_token.unwrap_or_default(),
                    limit,
                })
                .await
                .map_err(api_error)?
                .into_inner();
            match fmt {
                Format::Json => println!("{}", output::json(&resp.tasks)),
                Format::Table => println!("{}", task_rows(&resp.tasks)),
            }
            let shown = resp.tasks.len() as u32;
            if resp.total > shown {
                let of = if resp.total_at_least { "at least " } else { "" };
                eprintln!(
                    "skiff: {shown} of {of}{} tasks shown (newest first); the next page: --page-token {}",
                    resp.total, resp.next_page_token
                );
            }
        }
        TasksCmd::Describe { id } => {
            let t = client
                .describe(pb::TaskRef { id })
                .await
                .map_err(api_error)?
                .into_inner();
            match fmt {
                Format::Json => println!("{}", output::json(&t)),
                Format::Table => println!("{}", describe_task(&t)),
            }
        }
        TasksCmd::Stop { id, reason } => {
            let t = client
                .stop(pb::StopTaskRequest {
                    id,
                    reason: reason.unwrap_or_default(),
                })
                .await
                .map_err(api_error)?
                .into_inner();
            match fmt {
                Format::Json => println!("{}", output::json(&t)),
                Format::Table => {
                    println!("{} {} (desired {})", t.id, t.last_status, t.desired_status)
                }
            }
        }
        TasksCmd::Logs {
            id,
            follow,
            container,
            timestamps,
            since,
            tail,
        } => {
            let opts = LogOptions {
                follow,
                container: container.unwrap_or_default(),
                timestamps,
                since_ms: since.unwrap_or(0),
                tail: tail.unwrap_or(0),
                json: fmt == Format::Json,
            };
            stream_logs(&mut client, &id, &opts).await?;
        }
        TasksCmd::Retention { cmd } => crate::retention::retention(&mut client, fmt, cmd).await?,
        TasksCmd::Exec(a) => return crate::exec::exec(&mut client, fmt, a).await,
        TasksCmd::Wait { id } => {
            let t = match wait(&mut client, &id).await {
                Ok(t) => t,
                Err(Unfinished::NeverPlaced(reason)) => {
                    eprintln!("skiff: {reason}");
                    return Ok(125);
                }
                Err(Unfinished::Failed(e)) => return Err(e),
            };
            if fmt == Format::Json {
                println!("{}", output::json(&t));
            }
            return Ok(exit_status(&t));
        }
    }
    Ok(0)
}

/// What `tasks logs` (and `run-task --follow`) asks for and how it prints.
#[derive(Clone, Debug, Default)]
pub struct LogOptions {
    pub follow: bool,
    /// One container's log; empty = all.
    pub container: String,
    pub timestamps: bool,
    pub since_ms: i64,
    pub tail: u32,
    /// One JSON object per line ({time, container, stream, line}) instead of the raw text.
    pub json: bool,
}

/// Copies a task's logs to stdout/stderr, each line to the stream the container wrote it to;
/// with several containers (and no `container` chosen) each line starts with `NAME | `, as
/// `docker compose logs` does.
pub async fn stream_logs(
    client: &mut pb::tasks_client::TasksClient<Conn>,
    id: &str,
    opts: &LogOptions,
) -> anyhow::Result<()> {
    let task = client
        .describe(pb::TaskRef { id: id.to_string() })
        .await
        .map_err(api_error)?
        .into_inner();
    let width = task
        .containers
        .iter()
        .map(|c| c.name.len())
        .max()
        .unwrap_or(0);
    let label = opts.container.is_empty() && task.containers.len() > 1;
    let mut stream = client
        .logs(pb::TaskLogsRequest {
            id: task.id.clone(),
            container: opts.container.clone(),
            follow: opts.follow,
            since_ms: opts.since_ms,
            tail: opts.tail,
            timestamps: opts.timestamps || opts.json,
        })
        .await
        .map_err(api_error)?
        .into_inner();
    let (mut out, mut err) = (std::io::stdout(), std::io::stderr());
    // Whether the next byte of (container, stream) begins a line, for the prefixes.
    let mut at_line_start: std::collections::HashMap<(String, String), bool> = Default::default();
    while let Some(chunk) = stream.message().await.map_err(api_error)? {
        if opts.json {
            let line = String::from_utf8_lossy(&chunk.data);
            let v = serde_json::json!({
                "time": chunk.time, "container": chunk.container, "stream": chunk.stream,
                "line": line.strip_suffix('\n').unwrap_or(&line),
            });
            writeln!(out, "{v}")?;
            out.flush()?;
            continue;
        }
        let mut prefix = String::new();
        if label {
            prefix.push_str(&format!("{:<width$} | ", chunk.container));
        }
        if opts.timestamps && !chunk.time.is_empty() {
            prefix.push_str(&chunk.time);
            prefix.push(' ');
        }
        let data = if prefix.is_empty() {
            chunk.data
        } else {
            let start = at_line_start
                .entry((chunk.container.clone(), chunk.stream.clone()))
                .or_insert(true);
            let mut buf = Vec::with_capacity(chunk.data.len() + prefix.len());
            for piece in chunk.data.split_inclusive(|b| *b == b'\n') {
                if *start {
                    buf.extend_from_slice(prefix.as_bytes());
                }
                buf.extend_from_slice(piece);
                *start = piece.ends_with(b"\n");
            }
            buf
        };
        if chunk.stream == "stderr" {
            err.write_all(&data)?;
        } else {
            out.write_all(&data)?;
            out.flush()?;
        }
    }
    Ok(())
}

/// The exit code `--wait` ends with, after saying why when the task did not simply exit.
pub fn exit_status(t: &pb::Task) -> i32 {
    let code = essential_exit(t);
    let oom = t
        .containers
        .iter()
        .find(|c| c.reason.starts_with("OutOfMemoryError"));
    match (t.stop_code.as_str(), oom) {
        (_, Some(c)) => {
            eprintln!(
                "skiff: task {} container {} was killed: {}",
                t.id, c.name, c.reason
            );
            c.exit_code.unwrap_or(137)
        }
        ("TaskFailedToStart", _) => {
            eprintln!("skiff: task {} failed to start: {}", t.id, t.stopped_reason);
            125
        }
        ("TimedOut", _) => {
            eprintln!("skiff: task {} timed out: {}", t.id, t.stopped_reason);
            124
        }
        ("NodeLost", _) => {
            eprintln!(
                "skiff: task {} was lost with its node: {}",
                t.id, t.stopped_reason
            );
            125
        }
        ("UserInitiated", _) | ("ServiceSchedulerInitiated", _) => {
            eprintln!("skiff: task {} was stopped: {}", t.id, t.stopped_reason);
            code.unwrap_or(143)
        }
        _ => code.unwrap_or(1),
    }
}

/// Why a wait ended without a STOPPED task.
pub enum Unfinished {
    /// No connected node could ever fit the task (the controller's reason).
    NeverPlaced(String),
    Failed(anyhow::Error),
}

/// Waits until the task's work is over: the task is STOPPED, and so is each task that
/// started its work again after it was lost with its node before it ran (said on stderr).
/// Says on stderr why while it waits for a node; fails at once when it can never be placed.
pub async fn wait(
    client: &mut pb::tasks_client::TasksClient<Conn>,
    id: &str,
) -> Result<pb::Task, Unfinished> {
    let mut id = id.to_string();
    loop {
        let done = wait_one(client, &id).await?;
        match started_again(&done) {
            Some(next) => id = next,
            None => return Ok(done),
        }
    }
}

/// The task that starts a STOPPED task's work again (its node was lost before it ran), said
/// on stderr; None when its work is over.
pub fn started_again(t: &pb::Task) -> Option<String> {
    if t.replaced_by.is_empty() {
        return None;
    }
    eprintln!(
        "skiff: task {} was lost with its node before it started; its work starts again as task {}",
        t.id, t.replaced_by
    );
    Some(t.replaced_by.clone())
}

/// The task that carries `id`'s work now: `id`, or the last task that started it again.
pub async fn latest(
    client: &mut pb::tasks_client::TasksClient<Conn>,
    id: &str,
) -> anyhow::Result<String> {
    let mut id = id.to_string();
    loop {
        let t = client
            .describe(pb::TaskRef { id: id.clone() })
            .await
            .map_err(api_error)?
            .into_inner();
        if t.replaced_by.is_empty() {
            return Ok(id);
        }
        id = t.replaced_by;
    }
}

/// Waits until this one task is STOPPED (see `wait`).
pub async fn wait_one(
    client: &mut pb::tasks_client::TasksClient<Conn>,
    id: &str,
) -> Result<pb::Task, Unfinished> {
    let mut watcher = client.clone();
    let waiting = say_while_provisioning(&mut watcher, id);
    let done = client.wait(pb::TaskRef { id: id.to_string() });
    tokio::select! {
        r = done => match r {
            Ok(t) => Ok(t.into_inner()),
            Err(s) if s.code() == tonic::Code::FailedPrecondition => {
                Err(Unfinished::NeverPlaced(s.message().to_string()))
            }
            Err(s) => Err(Unfinished::Failed(api_error(s).context("waiting for the task"))),
        },
        never = waiting => Err(never),
    }
}

/// After a second in PROVISIONING, prints the task's waiting reason (again whenever it
/// changes). Ends only when the task can never be placed.
pub async fn say_while_provisioning(
    client: &mut pb::tasks_client::TasksClient<Conn>,
    id: &str,
) -> Unfinished {
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let mut said = String::new();
    loop {
        if let Ok(t) = client.describe(pb::TaskRef { id: id.to_string() }).await {
            let t = t.into_inner();
            if t.last_status == "PROVISIONING" && t.unplaceable {
                return Unfinished::NeverPlaced(format!(
                    "task {} can never be placed: {}",
                    t.id, t.status_reason
                ));
            }
            if t.last_status == "PROVISIONING"
                && !t.status_reason.is_empty()
                && t.status_reason != said
            {
                eprintln!(
                    "skiff: task {} is waiting for a node: {}",
                    t.id, t.status_reason
                );
                said = t.status_reason;
            }
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}
