//! `skiff events`: tail the bus, put events, dead letters, and test a pattern locally.

use anyhow::Context;
use clap::Subcommand;
use skiff_proto::v1 as pb;

use crate::conn::{api_error, connect};
use crate::output::{self, Format};

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
        /// Read as this named consumer: resume after the last event it acknowledged (a new one
        /// starts where --after / -n say), acknowledging what is printed. The log keeps every
        /// event a consumer has not acknowledged (`skiff events consumers rm` lets go).
        #[arg(long)]
        consumer: Option<String>,
    },
    /// Named consumers of the event log and how far behind each is.
    #[command(subcommand)]
    Consumers(ConsumersCmd),
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
    /// Put the events that reached the bus in a time range back on it, for one rule or all
    /// (EventBridge's replay): e.g. run a new rule over last week's uploads. The copies carry
    /// the replay's name (`replay-name` in what targets receive); the log's retention
    /// (--event-log-max-age) says how far back. Prints the replay's name and how many.
    Replay {
        /// From then: a duration ago (7d, 2h) or an RFC 3339 time.
        #[arg(long, value_parser = crate::tasks::parse_since)]
        from: i64,
        /// Until then (not included; default now): a duration ago or an RFC 3339 time.
        #[arg(long, value_parser = crate::tasks::parse_since)]
        to: Option<i64>,
        /// Only this rule gets the copies (default: every rule that matches them).
        #[arg(long)]
        rule: Option<String>,
        /// The replay's name (default replay-<time>).
        #[arg(long)]
        name: Option<String>,
    },
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
pub enum ConsumersCmd {
    /// List the consumers, their cursors and how many events wait for each.
    Ls,
    /// Forget a consumer: the log no longer keeps events for it.
    Rm {
        /// The consumer's name.
        name: String,
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

async fn replay(
    addr: &str,
    fmt: Format,
    from: i64,
    to: Option<i64>,
    rule: Option<String>,
    name: Option<String>,
) -> anyhow::Result<i32> {
    let mut client = pb::events_client::EventsClient::new(connect(addr).await?);
    let r = client
        .replay(pb::ReplayEventsRequest {
            from_ms: from,
            to_ms: to.unwrap_or_else(|| chrono::Utc::now().timestamp_millis()),
            rule: rule.unwrap_or_default(),
            name: name.unwrap_or_default(),
        })
        .await
        .map_err(api_error)?
        .into_inner();
    match fmt {
        Format::Json => println!("{}", output::json(&r)),
        Format::Table => println!("{}: {} events replayed", r.name, r.replayed),
    }
    Ok(0)
}

pub async fn events(addr: &str, fmt: Format, cmd: EventsCmd) -> anyhow::Result<i32> {
    let (follow, after, lines, consumer) = match cmd {
        EventsCmd::Tail {
            follow,
            after,
            lines,
            consumer,
        } => (follow, after, lines, consumer),
        EventsCmd::Consumers(cmd) => return consumers(addr, fmt, cmd).await,
        EventsCmd::TestPattern { pattern, event } => return Ok(test_pattern(&pattern, &event)),
        EventsCmd::Put {
            source,
            detail_type,
            detail,
            resources,
        } => return put_event(addr, fmt, source, detail_type, detail, resources).await,
        EventsCmd::Dlq(DlqCmd::Ls { rule }) => return dead_letters(addr, fmt, rule).await,
        EventsCmd::Replay {
            from,
            to,
            rule,
            name,
        } => return replay(addr, fmt, from, to, rule, name).await,
    };
    let mut client = pb::events_client::EventsClient::new(connect(addr).await?);
    let mut stream = client
        .watch(pb::WatchEventsRequest {
            after: after.clone().unwrap_or_default(),
            follow,
            tail: if after.is_some() { None } else { lines.0 },
            consumer: consumer.clone().unwrap_or_default(),
        })
        .await
        .map_err(api_error)?
        .into_inner();
    // A consumer acknowledges what it printed every 100 events or second, and at the end: a
    // tail cut short sees at most that much again.
    let mut acks = consumer.map(|name| Acks::new(client.clone(), name));
    loop {
        let next = match acks.as_mut() {
            Some(a) => {
                tokio::select! {
                    m = stream.message() => m,
                    _ = a.due() => {
                        a.send().await?;
                        continue;
                    }
                }
            }
            None => stream.message().await,
        };
        let Some(e) = next.map_err(api_error)? else {
            break;
        };
        print_event(fmt, &e);
        if let Some(a) = acks.as_mut() {
            a.printed(&e.id).await?;
        }
    }
    if let Some(a) = acks.as_mut() {
        a.send().await?;
    }
    Ok(0)
}

/// A consumer's acknowledgements of what `events tail` printed, sent in batches.
struct Acks {
    client: pb::events_client::EventsClient<crate::conn::Conn>,
    name: String,
    last: Option<String>,
    unsent: usize,
    since: tokio::time::Instant,
}

impl Acks {
    fn new(client: pb::events_client::EventsClient<crate::conn::Conn>, name: String) -> Acks {
        Acks {
            client,
            name,
            last: None,
            unsent: 0,
            since: tokio::time::Instant::now(),
        }
    }

    async fn printed(&mut self, id: &str) -> anyhow::Result<()> {
        self.last = Some(id.to_string());
        self.unsent += 1;
        if self.unsent >= 100 {
            self.send().await?;
        }
        Ok(())
    }

    /// When the unsent acknowledgements are a second old (never, with none).
    async fn due(&self) {
        if self.unsent == 0 {
            std::future::pending::<()>().await;
        }
        tokio::time::sleep_until(self.since + std::time::Duration::from_secs(1)).await;
    }

    async fn send(&mut self) -> anyhow::Result<()> {
        if let (Some(id), true) = (&self.last, self.unsent > 0) {
            self.client
                .ack(pb::AckEventsRequest {
                    consumer: self.name.clone(),
                    event_id: id.clone(),
                })
                .await
                .map_err(api_error)?;
        }
        self.unsent = 0;
        self.since = tokio::time::Instant::now();
        Ok(())
    }
}

/// `skiff events consumers ls|rm`.
async fn consumers(addr: &str, fmt: Format, cmd: ConsumersCmd) -> anyhow::Result<i32> {
    let mut client = pb::events_client::EventsClient::new(connect(addr).await?);
    match cmd {
        ConsumersCmd::Ls => {
            let list = client
                .list_consumers(pb::ListConsumersRequest {})
                .await
                .map_err(api_error)?
                .into_inner()
                .consumers;
            match fmt {
                Format::Json => println!("{}", output::json(&list)),
                Format::Table => println!(
                    "{}",
                    output::table(
                        &["NAME", "CURSOR", "ACKNOWLEDGED", "BEHIND"],
                        list.iter()
                            .map(|c| vec![
                                c.name.clone(),
                                if c.cursor.is_empty() {
                                    "-".into()
                                } else {
                                    c.cursor.clone()
                                },
                                output::time(c.acked_at_ms),
                                c.behind.to_string(),
                            ])
                            .collect()
                    )
                ),
            }
        }
        ConsumersCmd::Rm { name } => {
            let c = client
                .delete_consumer(pb::ConsumerRef { name })
                .await
                .map_err(api_error)?
                .into_inner();
            match fmt {
                Format::Json => println!("{}", output::json(&c)),
                Format::Table => println!("removed consumer {}", c.name),
            }
        }
    }
    Ok(0)
}

/// One event as `events tail` prints it.
fn print_event(fmt: Format, e: &pb::Event) {
    {
        match fmt {
            Format::Json => {
                // One EventBridge-style envelope per line, for jq.
                let detail: serde_json::Value =
                    serde_json::from_str(&e.detail_json).unwrap_or(serde_json::Value::Null);
                let mut v = serde_json::json!({
                    "version": "0", "id": e.id, "source": e.source, "detail-type": e.detail_type,
                    "time": chrono::DateTime::from_timestamp_millis(e.time_ms).map(|d| d.to_rfc3339()),
                    "resources": e.resources, "detail": detail,
                });
                if !e.replay_name.is_empty() {
                    v["replay-name"] = serde_json::json!(e.replay_name);
                    v["replay-of"] = serde_json::json!(e.replay_of);
                }
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
                let replay = if e.replay_name.is_empty() {
                    String::new()
                } else {
                    format!("  (replay {} of {})", e.replay_name, e.replay_of)
                };
                println!(
                    "{}  {}  {}  {}  {}{replay}",
                    e.id,
                    output::time(e.time_ms),
                    e.source,
                    e.detail_type,
                    summary
                );
            }
        }
    }
}

/// `skiff events put`: one app event. Exits 1 if the bus refused it.
pub async fn put_event(
    addr: &str,
    fmt: Format,
    source: String,
    detail_type: String,
    detail: String,
    resources: Vec<String>,
) -> anyhow::Result<i32> {
    let detail = match detail.strip_prefix('@') {
        Some(path) => {
            std::fs::read_to_string(path).with_context(|| format!("--detail: reading {path}"))?
        }
        None => detail,
    };
    let mut c = pb::events_client::EventsClient::new(connect(addr).await?);
    let r = c
        .put(pb::PutEventsRequest {
            entries: vec![pb::PutEventsEntry {
                source,
                detail_type,
                detail_json: detail,
                resources,
                time_ms: 0,
            }],
        })
        .await
        .map_err(api_error)?
        .into_inner();
    let e = r.entries.into_iter().next().unwrap_or_default();
    if !e.error_code.is_empty() {
        eprintln!("skiff: {}: {}", e.error_code, e.error_message);
        return Ok(1);
    }
    match fmt {
        Format::Json => println!(
            "{}",
            serde_json::json!({"eventId": e.event_id, "matchedRules": e.matched_rules})
        ),
        Format::Table => {
            println!("{}", e.event_id);
            // The id is the output scripts take; how many rules it reached is for people.
            match e.matched_rules.len() {
                0 => eprintln!(
                    "skiff: matched no enabled rule (`skiff events test-pattern` shows why a pattern does not match)"
                ),
                n => eprintln!(
                    "skiff: matched {n} rule{}: {}",
                    if n == 1 { "" } else { "s" },
                    e.matched_rules.join(", ")
                ),
            }
        }
    }
    Ok(0)
}

/// `skiff events dlq ls`.
pub async fn dead_letters(addr: &str, fmt: Format, rule: Option<String>) -> anyhow::Result<i32> {
    let mut c = pb::events_client::EventsClient::new(connect(addr).await?);
    let r = c
        .list_dead_letters(pb::ListDeadLettersRequest {
            rule: rule.unwrap_or_default(),
            limit: 0,
        })
        .await
        .map_err(api_error)?
        .into_inner();
    if fmt == Format::Json {
        let v: Vec<_> = r
            .dead_letters
            .iter()
            .map(|d| {
                serde_json::json!({"rule": d.rule, "target": d.target, "eventId": d.event_id,
                    "attempts": d.attempts, "lastError": d.last_error, "deadMs": d.dead_ms,
                    "event": serde_json::from_str::<serde_json::Value>(&d.event_json).unwrap_or_default()})
            })
            .collect();
        println!("{}", output::json(&v));
    } else {
        let rows = r
            .dead_letters
            .iter()
            .map(|d| {
                vec![
                    d.rule.clone(),
                    d.target.clone(),
                    d.event_id.clone(),
                    d.attempts.to_string(),
                    output::time(d.dead_ms),
                    d.last_error.clone(),
                ]
            })
            .collect();
        println!(
            "{}",
            output::table(
                &["RULE", "TARGET", "EVENT", "ATTEMPTS", "DEAD", "LAST ERROR"],
                rows
            )
        );
    }
    Ok(0)
}
