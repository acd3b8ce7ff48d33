//! `skiff queues`: durable queues with SQS's semantics — create, list, describe, remove,
//! purge; send, receive (long polling), delete and change the visibility of messages; move a
//! dead-letter queue's messages back.

use std::collections::HashMap;
use std::time::Duration;

use clap::Subcommand;
use skiff_proto::v1 as pb;

use crate::conn::{api_error, connect};
use crate::output::{self, Format};
use crate::taskdef_file::DurationField;

fn secs(field: &str, d: Option<Duration>) -> anyhow::Result<Option<u32>> {
    d.map(|d| {
        u32::try_from(d.as_secs())
            .map_err(|_| anyhow::anyhow!("{field}: {} s is too long", d.as_secs()))
    })
    .transpose()
}

/// A queue as a `queue:` document of `skiff apply` declares it; unset settings take SQS's
/// defaults, as with `skiff queues create`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct QueueFile {
    name: String,
    visibility_timeout: Option<DurationField>,
    delay: Option<DurationField>,
    retention: Option<DurationField>,
    max_message_bytes: Option<u32>,
    receive_wait: Option<DurationField>,
    /// Move a message here after `max_receives` receives.
    dead_letter_queue: Option<String>,
    max_receives: Option<u32>,
    #[serde(default)]
    fifo: bool,
    #[serde(default)]
    content_based_deduplication: bool,
}

pub(crate) fn from_file(f: QueueFile) -> anyhow::Result<pb::Queue> {
    let secs = |field: &str, d: Option<DurationField>| -> anyhow::Result<Option<u32>> {
        d.map(|d| {
            let s = d.seconds(field)?;
            u32::try_from(s).map_err(|_| anyhow::anyhow!("{field}: {s} s is too long"))
        })
        .transpose()
    };
    let redrive = match (f.dead_letter_queue, f.max_receives) {
        (Some(dead_letter_queue), Some(max_receive_count)) => Some(pb::QueueRedrivePolicy {
            dead_letter_queue,
            max_receive_count,
        }),
        (None, None) => None,
        (Some(_), None) => anyhow::bail!("max_receives: needed with dead_letter_queue"),
        (None, Some(_)) => anyhow::bail!("dead_letter_queue: needed with max_receives"),
    };
    Ok(pb::Queue {
        name: f.name,
        visibility_timeout_seconds: secs("visibility_timeout", f.visibility_timeout)?,
        delay_seconds: secs("delay", f.delay)?,
        retention_seconds: secs("retention", f.retention)?,
        max_message_bytes: f.max_message_bytes,
        receive_wait_seconds: secs("receive_wait", f.receive_wait)?,
        redrive,
        fifo: f.fifo,
        content_based_deduplication: f.content_based_deduplication,
        ..Default::default()
    })
}

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e} (give e.g. 30s, 5m, 4d)"))
}

fn attribute(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

#[derive(Subcommand)]
pub enum QueuesCmd {
    /// Create a queue, or change one (its messages stay).
    Create {
        /// The queue's name (letters, digits, '-' and '_').
        name: String,
        /// How long a received message stays invisible to other receivers (default 30s, at most 12h).
        #[arg(long = "visibility-timeout", value_parser = duration)]
        visibility_timeout: Option<Duration>,
        /// How long a new message waits before it can be received (at most 15m).
        #[arg(long, value_parser = duration)]
        delay: Option<Duration>,
        /// How long a message is kept (1m to 14d, default 4d).
        #[arg(long, value_parser = duration)]
        retention: Option<Duration>,
        /// The largest message accepted, in bytes (1024 to 262144, the default).
        #[arg(long = "max-message-bytes")]
        max_message_bytes: Option<u32>,
        /// How long a receive waits for a message when it does not say (at most 20s).
        #[arg(long = "receive-wait", value_parser = duration)]
        receive_wait: Option<Duration>,
        /// Move a message here after --max-receives receives.
        #[arg(long = "dead-letter-queue", requires = "max_receives")]
        dead_letter_queue: Option<String>,
        /// Receives before a message moves to the dead-letter queue (1 to 1000).
        #[arg(long = "max-receives", requires = "dead_letter_queue")]
        max_receives: Option<u32>,
        /// First in, first out per message group; the name must end in .fifo.
        #[arg(long)]
        fifo: bool,
        /// FIFO: deduplicate messages sent without --dedup-id by their body's SHA-256.
        #[arg(long = "content-based-dedup", requires = "fifo")]
        content_based_dedup: bool,
    },
    /// List queues with their message counts.
    Ls,
    /// Show a queue's settings and its visible, in-flight and delayed messages.
    Describe {
        /// The queue's name.
        name: String,
    },
    /// Remove a queue and its messages.
    Rm {
        /// The queue's name.
        name: String,
    },
    /// Remove every message of a queue, keeping the queue.
    Purge {
        /// The queue's name.
        name: String,
    },
    /// Send messages (one per BODY, at most 10); prints each message's id.
    Send {
        /// The queue to send to.
        queue: String,
        /// Message bodies ("-" reads one from standard input).
        #[arg(required = true)]
        bodies: Vec<String>,
        /// Wait this long before the messages can be received (at most 15m).
        #[arg(long, value_parser = duration)]
        delay: Option<Duration>,
        /// A message attribute, KEY=VALUE (repeatable).
        #[arg(long = "attr", value_parser = attribute)]
        attributes: Vec<(String, String)>,
        /// FIFO queues: the message group (required there).
        #[arg(long)]
        group: Option<String>,
        /// FIFO queues: the deduplication id (a send with one seen in the last 5 minutes is
        /// not queued again); with several bodies, each gets it with its index appended.
        #[arg(long = "dedup-id")]
        dedup_id: Option<String>,
    },
    /// Receive up to --max messages; each is hidden from other receivers for the
    /// visibility timeout and comes back unless deleted with its receipt handle.
    Receive {
        /// The queue to receive from.
        queue: String,
        /// How many messages at most (1 to 10).
        #[arg(long, default_value_t = 1)]
        max: u32,
        /// Wait up to this long for the first message (at most 20s; default: the queue's).
        #[arg(long, value_parser = duration)]
        wait: Option<Duration>,
        /// Hide the messages this long (default: the queue's visibility timeout).
        #[arg(long = "visibility-timeout", value_parser = duration)]
        visibility_timeout: Option<Duration>,
    },
    /// Delete received messages by their receipt handles (at most 10).
    Delete {
        /// The queue the messages are in.
        queue: String,
        /// Receipt handles, as `receive` printed them.
        #[arg(required = true)]
        receipt_handles: Vec<String>,
    },
    /// Make received messages visible again after --timeout (0s: now).
    ChangeVisibility {
        /// The queue the messages are in.
        queue: String,
        /// Receipt handles, as `receive` printed them.
        #[arg(required = true)]
        receipt_handles: Vec<String>,
        /// When the messages become visible again, from now (0s: at once; at most 12h).
        #[arg(long, value_parser = duration)]
        timeout: Duration,
    },
    /// Move a dead-letter queue's messages back (to --to, or to the one queue whose
    /// dead-letter queue it is).
    Redrive {
        /// The dead-letter queue to empty.
        dead_letter_queue: String,
        /// The queue to move the messages to (default: the one queue whose dead-letter
        /// queue this is).
        #[arg(long)]
        to: Option<String>,
    },
}

fn status_rows(queues: &[pb::QueueStatus]) -> String {
    let rows = queues
        .iter()
        .map(|s| {
            let q = s.queue.clone().unwrap_or_default();
            vec![
                q.name,
                s.visible.to_string(),
                s.in_flight.to_string(),
                s.delayed.to_string(),
                output::time(s.oldest_sent_ms),
                q.redrive
                    .map(|r| format!("{} after {}", r.dead_letter_queue, r.max_receive_count))
                    .unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    output::table(
        &[
            "NAME",
            "VISIBLE",
            "IN FLIGHT",
            "DELAYED",
            "OLDEST",
            "DEAD LETTERS TO",
        ],
        rows,
    )
}

/// Prints per-entry results; the exit code is 1 if any entry failed.
fn entry_results(fmt: Format, r: pb::QueueEntryResults) -> i32 {
    let failed = r.results.iter().filter(|e| !e.error.is_empty()).count();
    if fmt == Format::Json {
        println!("{}", output::json(&r.results));
    } else {
        for e in &r.results {
            if e.error.is_empty() {
                println!("{}", e.receipt_handle);
            } else {
                eprintln!("{}: {}", e.receipt_handle, e.error);
            }
        }
    }
    i32::from(failed > 0)
}

pub async fn queues(addr: &str, fmt: Format, cmd: QueuesCmd) -> anyhow::Result<i32> {
    let mut c = pb::queues_client::QueuesClient::new(connect(addr).await?);
    let queue_ref = |name: String| pb::QueueRef { name };
    match cmd {
        QueuesCmd::Create {
            name,
            visibility_timeout,
            delay,
            retention,
            max_message_bytes,
            receive_wait,
            dead_letter_queue,
            max_receives,
            fifo,
            content_based_dedup,
        } => {
            let q = pb::Queue {
                fifo,
                content_based_deduplication: content_based_dedup,
                name,
                visibility_timeout_seconds: secs("--visibility-timeout", visibility_timeout)?,
                delay_seconds: secs("--delay", delay)?,
                retention_seconds: secs("--retention", retention)?,
                max_message_bytes,
                receive_wait_seconds: secs("--receive-wait", receive_wait)?,
                redrive: dead_letter_queue.map(|d| pb::QueueRedrivePolicy {
                    dead_letter_queue: d,
                    max_receive_count: max_receives.unwrap_or_default(),
                }),
                ..Default::default()
            };
            let q = c.put(q).await.map_err(api_error)?.into_inner();
            match fmt {
                Format::Json => println!("{}", output::json(&q)),
                Format::Table => println!("{}", q.name),
            }
        }
        QueuesCmd::Ls => {
            let list = c
                .list(pb::ListQueuesRequest {})
                .await
                .map_err(api_error)?
                .into_inner();
            match fmt {
                Format::Json => println!("{}", output::json(&list.queues)),
                Format::Table => println!("{}", status_rows(&list.queues)),
            }
        }
        QueuesCmd::Describe { name } => {
            let s = c
                .describe(queue_ref(name))
                .await
                .map_err(api_error)?
                .into_inner();
            if fmt == Format::Json {
                println!("{}", output::json(&s));
                return Ok(0);
            }
            let q = s.queue.clone().unwrap_or_default();
            let secs = |v: Option<u32>| format!("{}s", v.unwrap_or_default());
            println!("name:                {}", q.name);
            println!(
                "visibility timeout:  {}",
                secs(q.visibility_timeout_seconds)
            );
            println!("delay:               {}", secs(q.delay_seconds));
            println!("retention:           {}", secs(q.retention_seconds));
            println!(
                "max message bytes:   {}",
                q.max_message_bytes.unwrap_or_default()
            );
            println!("receive wait:        {}", secs(q.receive_wait_seconds));
            if let Some(r) = &q.redrive {
                println!(
                    "dead letters to:     {} after {} receives",
                    r.dead_letter_queue, r.max_receive_count
                );
            }
            println!(
                "messages:            {} visible, {} in flight, {} delayed",
                s.visible, s.in_flight, s.delayed
            );
            println!("oldest sent:         {}", output::time(s.oldest_sent_ms));
        }
        QueuesCmd::Rm { name } => {
            let q = c
                .delete(queue_ref(name))
                .await
                .map_err(api_error)?
                .into_inner();
            output::deleted(fmt, &q.name);
        }
        QueuesCmd::Purge { name } => {
            let r = c
                .purge(queue_ref(name))
                .await
                .map_err(api_error)?
                .into_inner();
            match fmt {
                Format::Json => println!("{}", output::json(&r)),
                Format::Table => println!("{} messages purged", r.purged),
            }
        }
        QueuesCmd::Send {
            queue,
            bodies,
            delay,
            attributes,
            group,
            dedup_id,
        } => {
            let attributes: HashMap<String, String> = attributes.into_iter().collect();
            let delay_seconds = secs("--delay", delay)?;
            let n = bodies.len();
            let mut entries = Vec::new();
            for (i, body) in bodies.into_iter().enumerate() {
                let body = if body == "-" {
                    std::io::read_to_string(std::io::stdin())
                        .map_err(|e| anyhow::anyhow!("reading a message from stdin: {e}"))?
                } else {
                    body
                };
                let message_deduplication_id = match (&dedup_id, n) {
                    (Some(d), 1) => d.clone(),
                    (Some(d), _) => format!("{d}-{i}"),
                    (None, _) => String::new(),
                };
                entries.push(pb::SendEntry {
                    id: i.to_string(),
                    body,
                    delay_seconds,
                    attributes: attributes.clone(),
                    message_group_id: group.clone().unwrap_or_default(),
                    message_deduplication_id,
                });
            }
            let r = c
                .send(pb::SendMessagesRequest { queue, entries })
                .await
                .map_err(api_error)?
                .into_inner();
            match fmt {
                Format::Json => println!("{}", output::json(&r.results)),
                Format::Table => {
                    for s in &r.results {
                        println!("{}", s.message_id);
                    }
                }
            }
        }
        QueuesCmd::Receive {
            queue,
            max,
            wait,
            visibility_timeout,
        } => {
            let r = c
                .receive(pb::ReceiveMessagesRequest {
                    queue,
                    max_messages: max,
                    wait_seconds: secs("--wait", wait)?,
                    visibility_timeout_seconds: secs("--visibility-timeout", visibility_timeout)?,
                })
                .await
                .map_err(api_error)?
                .into_inner();
            match fmt {
                Format::Json => {
                    for m in &r.messages {
                        println!("{}", serde_json::to_string(m)?);
                    }
                }
                Format::Table => {
                    let rows = r
                        .messages
                        .iter()
                        .map(|m| {
                            vec![
                                m.receipt_handle.clone(),
                                m.receive_count.to_string(),
                                m.body.clone(),
                            ]
                        })
                        .collect();
                    println!(
                        "{}",
                        output::table(&["RECEIPT HANDLE", "RECEIVES", "BODY"], rows)
                    );
                }
            }
        }
        QueuesCmd::Delete {
            queue,
            receipt_handles,
        } => {
            let r = c
                .delete_messages(pb::DeleteMessagesRequest {
                    queue,
                    receipt_handles,
                })
                .await
                .map_err(api_error)?
                .into_inner();
            return Ok(entry_results(fmt, r));
        }
        QueuesCmd::ChangeVisibility {
            queue,
            receipt_handles,
            timeout,
        } => {
            let t = secs("--timeout", Some(timeout))?.unwrap_or_default();
            let changes = receipt_handles
                .into_iter()
                .map(|h| pb::VisibilityChange {
                    receipt_handle: h,
                    visibility_timeout_seconds: t,
                })
                .collect();
            let r = c
                .change_visibility(pb::ChangeVisibilityRequest { queue, changes })
                .await
                .map_err(api_error)?
                .into_inner();
            return Ok(entry_results(fmt, r));
        }
        QueuesCmd::Redrive {
            dead_letter_queue,
            to,
        } => {
            let r = c
                .redrive(pb::QueueRedriveRequest {
                    dead_letter_queue,
                    to: to.unwrap_or_default(),
                })
                .await
                .map_err(api_error)?
                .into_inner();
            match fmt {
                Format::Json => println!("{}", output::json(&r)),
                Format::Table => println!("{} messages moved to {}", r.moved, r.to),
            }
        }
    }
    Ok(0)
}
