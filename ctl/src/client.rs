//! Client commands: thin gRPC calls with human or JSON output.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use skiff_proto::v1 as pb;
use tonic::transport::Channel;

use crate::output::{self, Format};

/// A connection to the controller that sends the caller's API token with every call.
pub type Conn = tonic::service::interceptor::InterceptedService<Channel, BearerToken>;

/// Adds `authorization: Bearer TOKEN` to each request.
#[derive(Clone)]
pub struct BearerToken(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for BearerToken {
    fn call(&mut self, mut req: tonic::Request<()>) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(v) = &self.0 {
            req.metadata_mut().insert("authorization", v.clone());
        }
        Ok(req)
    }
}

/// Where the CLI keeps tokens: `$XDG_CONFIG_HOME/skiff` or `~/.config/skiff`.
pub fn config_dir() -> Option<PathBuf> {
    std::env::var_os("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".config")))
        .map(|d| d.join("skiff"))
}

/// The controller address in one spelling: scheme required (http or https), no trailing
/// `/`, host in lower case and `localhost` as 127.0.0.1, so `http://localhost:7400/` finds
/// the token `skiff dev` wrote for `http://127.0.0.1:7400`.
pub fn canonical_addr(addr: &str) -> anyhow::Result<String> {
    let trimmed = addr.trim().trim_end_matches('/');
    let Some((scheme, rest)) = trimmed.split_once("://") else {
        anyhow::bail!(
            "--addr/SKIFF_ADDR: {addr:?} has no scheme; did you mean http://{trimmed} (or https:// for a TLS controller)?"
        );
    };
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        anyhow::bail!("--addr/SKIFF_ADDR: {addr:?}: the scheme must be http:// or https://");
    }
    if rest.is_empty() || rest.contains('/') {
        anyhow::bail!(
            "--addr/SKIFF_ADDR: {addr:?} is not an address like http://127.0.0.1:7400 (no path)"
        );
    }
    let host_port = rest.to_ascii_lowercase();
    let host_port = match host_port.strip_prefix("localhost") {
        Some(port) if port.is_empty() || port.starts_with(':') => format!("127.0.0.1{port}"),
        _ => host_port,
    };
    Ok(format!("{scheme}://{host_port}"))
}

/// The token file for one controller address (`skiff dev` writes its admin token there).
pub fn token_file_for(addr: &str) -> Option<PathBuf> {
    let addr = canonical_addr(addr).unwrap_or_else(|_| addr.to_string());
    let key: String = addr
        .trim_start_matches("http://")
        .trim_start_matches("https://")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect();
    config_dir().map(|d| d.join("tokens").join(key))
}

/// The CA certificate file the CLI trusts for an https:// controller: `SKIFF_CA_FILE`, else
/// `<config dir>/cas/<address>.crt`, else `<config dir>/ca.crt`.
pub fn ca_file_for(addr: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("SKIFF_CA_FILE") {
        return Some(PathBuf::from(p));
    }
    let per_addr = token_file_for(addr).and_then(|t| {
        let name = t.file_name()?.to_string_lossy().into_owned();
        Some(
            t.parent()?
                .parent()?
                .join("cas")
                .join(format!("{name}.crt")),
        )
    });
    [per_addr, config_dir().map(|d| d.join("ca.crt"))]
        .into_iter()
        .flatten()
        .find(|p| p.exists())
}

/// Where this process's API token came from (or where it was looked for), for an
/// "not authenticated" answer to name.
static TOKEN_ORIGIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// The API token to use: `SKIFF_TOKEN`, else the token file for this address, else
/// `<config dir>/token`. Also says where it came from, or where it was looked for.
fn token_for(addr: &str) -> (Option<String>, String) {
    if let Ok(t) = std::env::var("SKIFF_TOKEN") {
        return (
            Some(t.trim().to_string()),
            "the token in SKIFF_TOKEN".into(),
        );
    }
    let candidates: Vec<PathBuf> = [token_file_for(addr), config_dir().map(|d| d.join("token"))]
        .into_iter()
        .flatten()
        .collect();
    for p in &candidates {
        if let Ok(t) = std::fs::read_to_string(p) {
            return (
                Some(t.trim().to_string()),
                format!("the token in {}", p.display()),
            );
        }
    }
    let looked = candidates
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(" or ");
    (
        None,
        format!("no API token: SKIFF_TOKEN is not set and there is no {looked} (`skiff dev` writes the first for its address; a controller writes <data dir>/admin.token)"),
    )
}

pub async fn connect(addr: &str) -> anyhow::Result<Conn> {
    let addr = &canonical_addr(addr)?;
    let endpoint = tonic::transport::Endpoint::from_shared(addr.to_string())
        .with_context(|| format!("--addr: {addr:?} is not a URL like http://127.0.0.1:7400"))?
        .connect_timeout(Duration::from_secs(5))
        .tcp_nodelay(true);
    let (token, origin) = token_for(addr);
    let _ = TOKEN_ORIGIN.set(origin);
    let token = match token {
        Some(t) => Some(
            format!("Bearer {t}")
                .parse()
                .context("the API token (SKIFF_TOKEN or token file) is not valid text")?,
        ),
        None => None,
    };
    let endpoint = if addr.starts_with("https://") {
        let ca_file = ca_file_for(addr).with_context(|| {
            format!("{addr} is https: give the cluster CA certificate (SKIFF_CA_FILE)")
        })?;
        let ca = std::fs::read_to_string(&ca_file)
            .with_context(|| format!("reading the CA certificate {}", ca_file.display()))?;
        endpoint
            .tls_config(
                tonic::transport::ClientTlsConfig::new()
                    .ca_certificate(tonic::transport::Certificate::from_pem(ca)),
            )
            .context("TLS settings")?
    } else {
        endpoint
    };
    let channel = endpoint.connect().await.with_context(|| {
        format!(
            "cannot reach the skiff controller at {addr} (is it running? set --addr or SKIFF_ADDR)"
        )
    })?;
    Ok(tonic::service::interceptor::InterceptedService::new(
        channel,
        BearerToken(token),
    ))
}

/// Turns an API error into a message a person can act on.
pub fn api_error(s: tonic::Status) -> anyhow::Error {
    use tonic::Code::*;
    let kind = match s.code() {
        InvalidArgument => "invalid input",
        NotFound => "not found",
        FailedPrecondition => "not possible now",
        Unavailable => "unavailable",
        PermissionDenied => "permission denied",
        Unauthenticated => "not authenticated",
        Unimplemented => "not supported by this controller (older version?)",
        _ => "error",
    };
    match (s.code(), TOKEN_ORIGIN.get()) {
        (Unauthenticated, Some(origin)) => {
            anyhow::anyhow!("{kind}: {} ({origin})", s.message())
        }
        _ => anyhow::anyhow!("{kind}: {}", s.message()),
    }
}

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
        #[arg(long)]
        group: Option<String>,
        /// At most this many (the newest); says on stderr how many more there are.
        #[arg(long, default_value_t = 100)]
        limit: u32,
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
}

/// `events tail -n`: how many past events (None: all of them).
#[derive(Clone, Copy, Debug)]
pub struct EventCount(Option<u32>);

fn parse_lines(s: &str) -> Result<EventCount, String> {
    if s.eq_ignore_ascii_case("all") {
        return Ok(EventCount(None));
    }
    s.parse()
        .map(|n| EventCount(Some(n)))
        .map_err(|_| format!("{s:?} is not a number of events (or `all`)"))
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

#[derive(Subcommand)]
pub enum TaskdefsCmd {
    /// Register a new revision from a JSON or TOML file.
    Register {
        /// The task definition: a JSON, TOML or YAML file.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    /// List task definitions.
    Ls {
        /// Only this family's revisions.
        #[arg(long)]
        family: Option<String>,
        /// Include deregistered revisions.
        #[arg(long)]
        all: bool,
    },
    /// Show FAMILY (latest) or FAMILY:REVISION.
    Describe {
        /// FAMILY (its latest active revision) or FAMILY:REVISION.
        task_definition: String,
    },
    /// Mark FAMILY:REVISION inactive.
    Deregister {
        /// FAMILY:REVISION to deregister.
        task_definition: String,
    },
}

#[derive(Subcommand)]
pub enum NodesCmd {
    /// List nodes with capacity and use.
    Ls,
    /// Cut a node off: its certificates are refused from now on (TLS controllers).
    Revoke {
        /// The node's id.
        node: String,
    },
}

#[derive(Subcommand)]
pub enum EventsCmd {
    /// Print events from the bus.
    Tail {
        /// Keep streaming new events.
        #[arg(short, long)]
        follow: bool,
        /// Start after this event id.
        #[arg(long)]
        after: Option<String>,
        /// The last N events before following: a number (0: none, only new ones with -f), or
        /// `all` for the whole log.
        #[arg(short = 'n', long, default_value = "20", value_parser = parse_lines)]
        lines: EventCount,
    },
    /// Put an app event on the bus (like EventBridge PutEvents); prints its id.
    Put {
        /// The event's source (any name but skiff.*).
        #[arg(long)]
        source: String,
        /// The event's detail-type.
        #[arg(long = "detail-type")]
        detail_type: String,
        /// The detail: a JSON object, or @FILE.
        #[arg(long, default_value = "{}")]
        detail: String,
        /// A resource the event is about (repeatable).
        #[arg(long = "resource")]
        resources: Vec<String>,
    },
    /// Deliveries that ran out of retries.
    #[command(subcommand)]
    Dlq(DlqCmd),
    /// Check an event pattern against an event, locally (like `aws events
    /// test-event-pattern`): prints {"result": true|false}; exits 0 on a match, 1 on none,
    /// 2 when the pattern or the event is invalid.
    TestPattern {
        /// The pattern: JSON text, or @FILE.
        #[arg(long)]
        pattern: String,
        /// The event: JSON text, or @FILE.
        #[arg(long)]
        event: String,
    },
}

#[derive(Subcommand)]
pub enum DlqCmd {
    /// List dead letters, newest first.
    Ls {
        /// Only this rule's dead letters.
        #[arg(long)]
        rule: Option<String>,
    },
}

/// `skiff events test-pattern`: no controller involved.
pub fn test_pattern(pattern: &str, event: &str) -> i32 {
    let read = |what: &str, arg: &str| -> Result<String, String> {
        match arg.strip_prefix('@') {
            Some(path) => {
                std::fs::read_to_string(path).map_err(|e| format!("--{what}: reading {path}: {e}"))
            }
            None => Ok(arg.to_string()),
        }
    };
    let mut pattern_json = serde_json::Value::Null;
    let checked = read("pattern", pattern).and_then(|p| {
        pattern_json = serde_json::from_str(&p).unwrap_or_default();
        skiff_model::pattern::Pattern::parse(&p).map_err(|e| format!("--pattern: {e}"))
    });
    let event = read("event", event).and_then(|e| {
        serde_json::from_str::<serde_json::Value>(&e)
            .map_err(|e| format!("--event: not valid JSON: {e}"))
            .and_then(|v| {
                if v.is_object() {
                    Ok(v)
                } else {
                    Err("--event: an event is a JSON object".to_string())
                }
            })
    });
    match (checked, event) {
        (Ok(p), Ok(e)) => match p.mismatch(&e) {
            None => {
                println!("{}", serde_json::json!({ "result": true }));
                0
            }
            Some(m) => {
                // stdout keeps EventBridge's answer; the why is for people, on stderr.
                let wants = m
                    .path
                    .iter()
                    .try_fold(&pattern_json, |v, k| v.get(k))
                    .cloned();
                println!("{}", serde_json::json!({ "result": false }));
                let found = m
                    .found
                    .as_ref()
                    .map_or("nothing".to_string(), |v| v.to_string());
                eprintln!(
                    "skiff: no match at {}: the event has {found}{}; {}",
                    m.dotted(),
                    wants
                        .map(|w| format!(", the pattern wants {w}"))
                        .unwrap_or_default(),
                    m.why
                );
                1
            }
        },
        (Err(msg), _) | (_, Err(msg)) => {
            eprintln!("skiff: {msg}");
            2
        }
    }
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
    kv("Waiting:", t.status_reason.clone());
    kv("Node:", t.node_id.clone());
    kv(
        "Resources:",
        format!(
            "{} vCPU, {} MiB, network {}",
            t.cpu, t.memory_mib, t.network_mode
        ),
    );
    if t.timeout_seconds > 0 {
        kv("Timeout:", format!("{}s", t.timeout_seconds));
    }
    kv("Stop code:", t.stop_code.clone());
    kv("Stopped reason:", t.stopped_reason.clone());
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
        &["  NAME", "IMAGE", "STATUS", "ESSENTIAL", "EXIT", "REASON"],
        t.containers
            .iter()
            .map(|c| {
                vec![
                    format!("  {}", c.name),
                    c.image.clone(),
                    c.last_status.clone(),
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
            limit,
        } => {
            let resp = client
                .list(pb::ListTasksRequest {
                    status: status.unwrap_or_default(),
                    family: family.unwrap_or_default(),
                    node_id: node.unwrap_or_default(),
                    group: group.unwrap_or_default(),
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
                eprintln!(
                    "skiff: {shown} of {} tasks shown (newest first); raise --limit or filter to see more",
                    resp.total
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
        TasksCmd::Wait { id } => {
            let t = match crate::run_task::wait(&mut client, &id).await {
                Ok(t) => t,
                Err(crate::run_task::Unfinished::NeverPlaced(reason)) => {
                    eprintln!("skiff: {reason}");
                    return Ok(125);
                }
                Err(crate::run_task::Unfinished::Failed(e)) => return Err(e),
            };
            if fmt == Format::Json {
                println!("{}", output::json(&t));
            }
            return Ok(crate::run_task::exit_status(&t));
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

pub async fn taskdefs(addr: &str, fmt: Format, cmd: TaskdefsCmd) -> anyhow::Result<i32> {
    let mut client = pb::task_definitions_client::TaskDefinitionsClient::new(connect(addr).await?);
    let show = |d: &pb::TaskDefinition| match fmt {
        Format::Json => output::json(d),
        Format::Table => {
            let mut s = format!("{}:{} ({})\n", d.family, d.revision, d.status);
            for c in &d.containers {
                s.push_str(&format!(
                    "  {}  {}  {:?} {:?}  cpu={} memory={}MiB essential={}\n",
                    c.name,
                    c.image,
                    c.entrypoint,
                    c.command,
                    c.cpu,
                    c.memory_mib,
                    c.essential.unwrap_or(true)
                ));
            }
            s.trim_end().to_string()
        }
    };
    match cmd {
        TaskdefsCmd::Register { file } => {
            let text = std::fs::read_to_string(&file)
                .with_context(|| format!("reading {}", file.display()))?;
            let definition = crate::taskdef_file::parse(&file, &text)?;
            let d = client
                .register(pb::RegisterTaskDefinitionRequest {
                    definition: Some(definition),
                })
                .await
                .map_err(api_error)?
                .into_inner();
            match fmt {
                Format::Json => println!("{}", output::json(&d)),
                Format::Table => println!("registered {}:{}", d.family, d.revision),
            }
        }
        TaskdefsCmd::Ls { family, all } => {
            let resp = client
                .list(pb::ListTaskDefinitionsRequest {
                    family: family.unwrap_or_default(),
                    include_inactive: all,
                })
                .await
                .map_err(api_error)?
                .into_inner();
            match fmt {
                Format::Json => println!("{}", output::json(&resp.definitions)),
                Format::Table => println!(
                    "{}",
                    output::table(
                        &["DEFINITION", "STATUS", "CONTAINERS", "REGISTERED"],
                        resp.definitions
                            .iter()
                            .map(|d| vec![
                                format!("{}:{}", d.family, d.revision),
                                d.status.clone(),
                                d.containers
                                    .iter()
                                    .map(|c| c.name.as_str())
                                    .collect::<Vec<_>>()
                                    .join(","),
                                output::time(d.registered_at_ms),
                            ])
                            .collect()
                    )
                ),
            }
        }
        TaskdefsCmd::Describe { task_definition } => {
            let d = client
                .describe(pb::DescribeTaskDefinitionRequest { task_definition })
                .await
                .map_err(api_error)?
                .into_inner();
            println!("{}", show(&d));
        }
        TaskdefsCmd::Deregister { task_definition } => {
            let d = client
                .deregister(pb::DescribeTaskDefinitionRequest { task_definition })
                .await
                .map_err(api_error)?
                .into_inner();
            println!("{}", show(&d));
        }
    }
    Ok(0)
}

pub async fn nodes(addr: &str, fmt: Format, cmd: NodesCmd) -> anyhow::Result<i32> {
    let mut client = pb::nodes_client::NodesClient::new(connect(addr).await?);
    if let NodesCmd::Revoke { node } = cmd {
        let r = client
            .revoke(pb::RevokeNodeRequest {
                node_id: node.clone(),
            })
            .await
            .map_err(api_error)?
            .into_inner();
        match fmt {
            Format::Json => println!(
                "{}",
                serde_json::json!({"node": node, "certificatesRevoked": r.certificates_revoked})
            ),
            Format::Table => println!(
                "node {node}: {} certificate(s) revoked",
                r.certificates_revoked
            ),
        }
        return Ok(0);
    }
    let resp = client
        .list(pb::ListNodesRequest {})
        .await
        .map_err(api_error)?
        .into_inner();
    match fmt {
        Format::Json => println!("{}", output::json(&resp.nodes)),
        Format::Table => println!(
            "{}",
            output::table(
                &[
                    "NODE",
                    "STATE",
                    "CONNECTED",
                    "CPU (USED/TOTAL)",
                    "MEMORY MiB (USED/TOTAL)",
                    "TASKS",
                    "VERSION"
                ],
                resp.nodes
                    .iter()
                    .map(|n| vec![
                        n.id.clone(),
                        n.state.clone(),
                        if n.connected {
                            "yes".into()
                        } else {
                            "no".into()
                        },
                        format!("{}/{}", n.cpu_used, n.cpu),
                        format!("{}/{}", n.memory_used_mib, n.memory_mib),
                        n.running_tasks.to_string(),
                        n.version.clone(),
                    ])
                    .collect()
            )
        ),
    }
    Ok(0)
}

pub async fn events(addr: &str, fmt: Format, cmd: EventsCmd) -> anyhow::Result<i32> {
    let (follow, after, lines) = match cmd {
        EventsCmd::Tail {
            follow,
            after,
            lines,
        } => (follow, after, lines),
        EventsCmd::TestPattern { pattern, event } => return Ok(test_pattern(&pattern, &event)),
        EventsCmd::Put {
            source,
            detail_type,
            detail,
            resources,
        } => {
            return crate::rules::put_event(addr, fmt, source, detail_type, detail, resources).await
        }
        EventsCmd::Dlq(DlqCmd::Ls { rule }) => {
            return crate::rules::dead_letters(addr, fmt, rule).await
        }
    };
    let mut client = pb::events_client::EventsClient::new(connect(addr).await?);
    let mut stream = client
        .watch(pb::WatchEventsRequest {
            after: after.clone().unwrap_or_default(),
            follow,
            tail: if after.is_some() { None } else { lines.0 },
        })
        .await
        .map_err(api_error)?
        .into_inner();
    while let Some(e) = stream.message().await.map_err(api_error)? {
        match fmt {
            Format::Json => {
                // One EventBridge-style envelope per line, for jq.
                let detail: serde_json::Value =
                    serde_json::from_str(&e.detail_json).unwrap_or(serde_json::Value::Null);
                let v = serde_json::json!({
                    "version": "0", "id": e.id, "source": e.source, "detail-type": e.detail_type,
                    "time": chrono::DateTime::from_timestamp_millis(e.time_ms).map(|d| d.to_rfc3339()),
                    "resources": e.resources, "detail": detail,
                });
                println!("{v}");
            }
            Format::Table => {
                let detail: serde_json::Value =
                    serde_json::from_str(&e.detail_json).unwrap_or_default();
                let summary = match (detail.get("taskArn"), detail.get("lastStatus")) {
                    (Some(t), Some(s)) => format!(
                        "task {} {}{}",
                        t.as_str().unwrap_or("?"),
                        s.as_str().unwrap_or("?"),
                        detail
                            .get("stopCode")
                            .and_then(|c| c.as_str())
                            .map(|c| format!(" ({c})"))
                            .unwrap_or_default()
                    ),
                    _ => e.detail_json.clone(),
                };
                println!(
                    "{}  {}  {}  {}  {}",
                    e.id,
                    output::time(e.time_ms),
                    e.source,
                    e.detail_type,
                    summary
                );
            }
        }
    }
    Ok(0)
}

#[derive(Subcommand)]
pub enum TokensCmd {
    /// Create an API token; it is printed once and never shown again.
    Create {
        /// admin, operator or read-only (or join: same as --join).
        #[arg(long, required_unless_present = "join")]
        role: Option<String>,
        /// A one-time join string for `skiff agent --join` (TLS controllers).
        #[arg(long, conflicts_with = "role")]
        join: bool,
        /// What it is for.
        #[arg(long, default_value = "")]
        name: String,
        /// Lifetime (e.g. 30d, 12h); default: no expiry.
        #[arg(long)]
        ttl: Option<String>,
    },
    /// List tokens (never their secrets).
    Ls,
    /// Revoke a token by id: every call with it fails from now on.
    Revoke {
        /// The token's id (skiff tokens ls).
        id: String,
    },
}

fn token_row(t: &pb::TokenInfo) -> Vec<String> {
    let state = if t.revoked_ms != 0 {
        "revoked".to_string()
    } else if t.expires_ms != 0 && t.expires_ms <= chrono::Utc::now().timestamp_millis() {
        "expired".to_string()
    } else {
        "active".to_string()
    };
    vec![
        t.id.clone(),
        t.role.clone(),
        t.name.clone(),
        state,
        output::time(t.created_ms),
        if t.expires_ms == 0 {
            "never".into()
        } else {
            output::time(t.expires_ms)
        },
    ]
}

fn token_json(t: &pb::TokenInfo) -> serde_json::Value {
    serde_json::json!({"id": t.id, "role": t.role, "name": t.name, "createdMs": t.created_ms,
        "expiresMs": t.expires_ms, "revokedMs": t.revoked_ms})
}

pub async fn tokens(addr: &str, fmt: Format, cmd: TokensCmd) -> anyhow::Result<i32> {
    let mut c = pb::tokens_client::TokensClient::new(connect(addr).await?);
    let header = ["ID", "ROLE", "NAME", "STATE", "CREATED", "EXPIRES"];
    match cmd {
        TokensCmd::Create {
            role,
            join,
            name,
            ttl,
        } => {
            let role = if join {
                "join".to_string()
            } else {
                role.unwrap_or_default()
            };
            let ttl_seconds = match ttl {
                Some(t) => crate::config::duration("--ttl", &t)?.as_secs(),
                None => 0,
            };
            let r = c
                .create(pb::CreateTokenRequest {
                    role,
                    name,
                    ttl_seconds,
                })
                .await
                .map_err(api_error)?
                .into_inner();
            let info = r.info.unwrap_or_default();
            if fmt == Format::Json {
                let mut v = token_json(&info);
                v["token"] = r.token.into();
                println!("{}", output::json(&v));
            } else {
                println!("{}", r.token);
                eprintln!(
                    "skiff: token {} ({}) created; it is shown only this once",
                    info.id, info.role
                );
            }
        }
        TokensCmd::Ls => {
            let r = c
                .list(pb::ListTokensRequest {})
                .await
                .map_err(api_error)?
                .into_inner();
            if fmt == Format::Json {
                let v: Vec<_> = r.tokens.iter().map(token_json).collect();
                println!("{}", output::json(&v));
            } else {
                println!(
                    "{}",
                    output::table(&header, r.tokens.iter().map(token_row).collect())
                );
            }
        }
        TokensCmd::Revoke { id } => {
            let t = c
                .revoke(pb::RevokeTokenRequest { id })
                .await
                .map_err(api_error)?
                .into_inner();
            if fmt == Format::Json {
                println!("{}", output::json(&token_json(&t)));
            } else {
                println!("{}", output::table(&header, vec![token_row(&t)]));
            }
        }
    }
    Ok(0)
}

#[derive(Subcommand)]
pub enum SecretsCmd {
    /// Store (or replace) a secret; the value is read from stdin, or from --from-file.
    Put {
        /// The secret's name (what task definitions name in value_from).
        name: String,
        /// Read the value from this file instead of standard input.
        #[arg(long = "from-file")]
        from_file: Option<PathBuf>,
    },
    /// List secrets (names, versions and sizes; never values).
    Ls,
    /// Delete a secret.
    Rm {
        /// The secret's name.
        name: String,
    },
}

pub async fn secrets(addr: &str, fmt: Format, cmd: SecretsCmd) -> anyhow::Result<i32> {
    let mut c = pb::secrets_client::SecretsClient::new(connect(addr).await?);
    let print = |infos: Vec<pb::SecretInfo>| {
        if fmt == Format::Json {
            let v: Vec<_> = infos
                .iter()
                .map(|i| {
                    serde_json::json!({"name": i.name, "version": i.version, "size": i.size,
                    "createdMs": i.created_ms, "updatedMs": i.updated_ms})
                })
                .collect();
            println!("{}", output::json(&v));
        } else {
            let rows = infos
                .iter()
                .map(|i| {
                    vec![
                        i.name.clone(),
                        i.version.to_string(),
                        format!("{} B", i.size),
                        output::time(i.updated_ms),
                    ]
                })
                .collect();
            println!(
                "{}",
                output::table(&["NAME", "VERSION", "SIZE", "UPDATED"], rows)
            );
        }
    };
    match cmd {
        SecretsCmd::Put { name, from_file } => {
            let value = match from_file {
                Some(p) => std::fs::read(&p)
                    .with_context(|| format!("--from-file: reading {}", p.display()))?,
                None => {
                    let mut v = Vec::new();
                    std::io::Read::read_to_end(&mut std::io::stdin(), &mut v)
                        .context("reading the secret from stdin")?;
                    v
                }
            };
            let info = c
                .put(pb::PutSecretRequest { name, value })
                .await
                .map_err(api_error)?
                .into_inner();
            print(vec![info]);
        }
        SecretsCmd::Ls => {
            let r = c
                .list(pb::ListSecretsRequest {})
                .await
                .map_err(api_error)?
                .into_inner();
            print(r.secrets);
        }
        SecretsCmd::Rm { name } => {
            let info = c
                .delete(pb::DeleteSecretRequest { name })
                .await
                .map_err(api_error)?
                .into_inner();
            print(vec![info]);
        }
    }
    Ok(0)
}
