//! `skiff topics`: topics, their subscriptions (webhook, e-mail), dead letters and redrive.

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use serde::Deserialize;
use skiff_proto::v1 as pb;

use crate::conn::{api_error, connect};
use crate::output::{self, Format};

#[derive(Subcommand)]
pub enum TopicsCmd {
    /// Create or change a topic: by name with flags, or from a file (-f topic.yaml).
    Put {
        /// The topic's name (or give -f).
        name: Option<String>,
        /// A topic file (topic.yaml) instead of the name and flags.
        #[arg(short = 'f', long = "file", conflicts_with = "name")]
        file: Option<PathBuf>,
        /// What the topic is for.
        #[arg(long)]
        description: Option<String>,
        /// Attempts per delivery before it is dead-lettered (default 20).
        #[arg(long)]
        max_attempts: Option<u32>,
        /// First retry delay (default 1s); doubles each time.
        #[arg(long)]
        min_delay: Option<String>,
        /// Longest retry delay (default 5m).
        #[arg(long)]
        max_delay: Option<String>,
        /// How long a webhook may take to answer before the attempt fails (default 10s).
        #[arg(long)]
        timeout: Option<String>,
        /// A queue that also gets each notification that ran out of attempts.
        #[arg(long = "dead-letter-queue")]
        dead_letter_queue: Option<String>,
    },
    /// List topics with their subscriptions' counts.
    Ls,
    /// A topic, its subscriptions and what is pending or dead per subscription.
    Describe {
        /// The topic's name.
        name: String,
    },
    /// Deletes a topic with its subscriptions, pending deliveries and dead letters.
    Rm {
        /// The topic's name.
        name: String,
    },
    /// Subscribes an endpoint; a webhook's signing secret is printed once.
    Subscribe {
        /// The topic's name.
        topic: String,
        /// POST each message to this http(s) URL.
        #[arg(long, conflicts_with_all = ["email", "queue"], required_unless_present_any = ["email", "queue"])]
        webhook: Option<String>,
        /// Mail each message to this address (confirmed first, unless --no-confirm).
        #[arg(long, conflicts_with = "queue")]
        email: Option<String>,
        /// Send each message to this skiff queue (as is, or wrapped with --formatted).
        #[arg(long)]
        queue: Option<String>,
        /// Only messages matching this event pattern (JSON).
        #[arg(long)]
        filter: Option<String>,
        /// Webhook: wrap the message with the delivery's metadata; e-mail: readable text
        /// (both are the defaults' opposites of --raw).
        #[arg(long, conflicts_with = "raw")]
        formatted: bool,
        /// Webhook: the message as is (default); e-mail: the message as is instead of text.
        #[arg(long)]
        raw: bool,
        /// E-mail: no confirmation mail (admin tokens only).
        #[arg(long)]
        no_confirm: bool,
    },
    /// Remove a subscription.
    Unsubscribe {
        /// The subscription's id (skiff topics describe).
        id: String,
    },
    /// Confirms an e-mail subscription with the token from its confirmation mail.
    Confirm {
        /// The subscription's id.
        id: String,
        /// The token from the confirmation mail.
        token: String,
    },
    /// Dead-lettered deliveries, of one topic or all.
    Dlq {
        /// Only this topic's dead letters.
        topic: Option<String>,
    },
    /// Puts a topic's dead letters back in the outbox with fresh attempts.
    Redrive {
        /// The topic whose dead letters go back into the outbox.
        topic: String,
        /// Only this subscription's dead letters.
        #[arg(long)]
        subscription: Option<String>,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TopicFile {
    name: String,
    #[serde(default)]
    description: String,
    delivery: Option<DeliveryFile>,
    /// A queue that also gets each notification that ran out of attempts.
    #[serde(default)]
    dead_letter_queue: String,
    /// The topic's subscriptions, all of them (`skiff apply` only: `topics put` sets the
    /// topic and leaves its subscriptions as they are).
    #[serde(default)]
    pub(crate) subscriptions: Vec<SubscriptionFile>,
}

/// A subscription as a topic document declares it: one of webhook, email or queue.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SubscriptionFile {
    webhook: Option<String>,
    email: Option<String>,
    queue: Option<String>,
    /// An event pattern (a mapping, or JSON text): only matching messages are delivered.
    filter: Option<serde_json::Value>,
    /// Webhook: the message as is (default true); e-mail: as is instead of readable text.
    raw: Option<bool>,
    /// E-mail: confirmed before it receives anything (default true; false needs an admin).
    require_confirmation: Option<bool>,
}

/// A declared subscription of `topic` as the API takes it.
pub(crate) fn subscription(
    topic: &str,
    i: usize,
    f: SubscriptionFile,
) -> anyhow::Result<pb::Subscription> {
    let (protocol, endpoint) = match (f.webhook, f.email, f.queue) {
        (Some(w), None, None) => ("webhook", w),
        (None, Some(e), None) => ("email", e),
        (None, None, Some(q)) => ("queue", q),
        _ => anyhow::bail!("subscriptions[{i}]: give exactly one of webhook, email or queue"),
    };
    Ok(pb::Subscription {
        topic: topic.to_string(),
        protocol: protocol.to_string(),
        endpoint,
        filter_json: match f.filter {
            None => String::new(),
            Some(serde_json::Value::String(s)) => s,
            Some(v) => v.to_string(),
        },
        raw: f.raw,
        require_confirmation: f.require_confirmation,
        ..Default::default()
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeliveryFile {
    max_attempts: Option<u32>,
    min_delay: Option<String>,
    max_delay: Option<String>,
    /// How long a webhook may take to answer (default 10s).
    timeout: Option<String>,
}

fn millis(field: &str, v: Option<&str>) -> anyhow::Result<u32> {
    match v {
        None => Ok(0),
        Some(s) => {
            let d = crate::config::duration(field, s)?;
            u32::try_from(d.as_millis()).with_context(|| format!("{field}: {s:?} is too long"))
        }
    }
}

fn policy(d: DeliveryFile) -> anyhow::Result<pb::DeliveryPolicy> {
    Ok(pb::DeliveryPolicy {
        max_attempts: d.max_attempts.unwrap_or(0),
        min_delay_ms: millis("delivery.min_delay", d.min_delay.as_deref())?,
        max_delay_ms: millis("delivery.max_delay", d.max_delay.as_deref())?,
        timeout_ms: millis("delivery.timeout", d.timeout.as_deref())?,
    })
}

fn load(path: &std::path::Path) -> anyhow::Result<pb::Topic> {
    from_file(crate::config::read_definition(path, "topic")?)
}

/// A topic as its file declares it (also a `topic:` document of `skiff apply`, whose
/// subscriptions `skiff apply` keeps apart).
pub(crate) fn from_file(f: TopicFile) -> anyhow::Result<pb::Topic> {
    if !f.subscriptions.is_empty() {
        anyhow::bail!(
            "subscriptions: `skiff topics put` sets the topic only; subscribe with `skiff topics \
             subscribe`, or declare the topic with its subscriptions for `skiff apply -f`"
        );
    }
    Ok(pb::Topic {
        name: f.name,
        description: f.description,
        delivery: f.delivery.map(policy).transpose()?,
        dead_letter_queue: f.dead_letter_queue,
        ..Default::default()
    })
}

fn print_topics(fmt: Format, list: &[pb::TopicStatus], detailed: bool) {
    if fmt == Format::Json {
        println!("{}", output::json(&list));
        return;
    }
    let rows = list
        .iter()
        .map(|st| {
            let t = st.topic.clone().unwrap_or_default();
            let d = t.delivery.unwrap_or_default();
            vec![
                t.name,
                st.subscriptions.len().to_string(),
                st.pending.values().sum::<u32>().to_string(),
                st.dead.values().sum::<u32>().to_string(),
                format!(
                    "{} attempts, {}–{} ms",
                    d.max_attempts, d.min_delay_ms, d.max_delay_ms
                ),
            ]
        })
        .collect();
    println!(
        "{}",
        output::table(
            &["NAME", "SUBSCRIPTIONS", "PENDING", "DEAD", "DELIVERY"],
            rows
        )
    );
    if detailed {
        for st in list {
            let rows = st
                .subscriptions
                .iter()
                .map(|s| {
                    vec![
                        s.id.clone(),
                        s.protocol.clone(),
                        s.endpoint.clone(),
                        s.status.clone(),
                        if s.filter_json.is_empty() {
                            "-".into()
                        } else {
                            s.filter_json.clone()
                        },
                        st.delivered.get(&s.id).copied().unwrap_or(0).to_string(),
                        st.pending.get(&s.id).copied().unwrap_or(0).to_string(),
                        st.dead.get(&s.id).copied().unwrap_or(0).to_string(),
                    ]
                })
                .collect();
            println!(
                "\nsubscriptions:\n{}",
                output::table(
                    &[
                        "ID",
                        "PROTOCOL",
                        "ENDPOINT",
                        "STATUS",
                        "FILTER",
                        "DELIVERED",
                        "PENDING",
                        "DEAD"
                    ],
                    rows
                )
            );
        }
    }
}

pub async fn topics(addr: &str, fmt: Format, cmd: TopicsCmd) -> anyhow::Result<i32> {
    let mut c = pb::topics_client::TopicsClient::new(connect(addr).await?);
    let topic_ref = |name: String| pb::TopicRef { name };
    match cmd {
        TopicsCmd::Put {
            name,
            file,
            description,
            max_attempts,
            min_delay,
            max_delay,
            timeout,
            dead_letter_queue,
        } => {
            let t = match (name, file) {
                (_, Some(f)) => load(&f)?,
                (Some(name), None) => pb::Topic {
                    name,
                    description: description.unwrap_or_default(),
                    delivery: Some(policy(DeliveryFile {
                        max_attempts,
                        min_delay,
                        max_delay,
                        timeout,
                    })?),
                    dead_letter_queue: dead_letter_queue.unwrap_or_default(),
                    ..Default::default()
                },
                (None, None) => anyhow::bail!("give a topic name or -f FILE"),
            };
            let t = c.put(t).await.map_err(api_error)?.into_inner();
            let st = c
                .describe(topic_ref(t.name))
                .await
                .map_err(api_error)?
                .into_inner();
            print_topics(fmt, &[st], false);
        }
        TopicsCmd::Ls => {
            let r = c
                .list(pb::ListTopicsRequest {})
                .await
                .map_err(api_error)?
                .into_inner();
            print_topics(fmt, &r.topics, false);
        }
        TopicsCmd::Describe { name } => {
            let st = c
                .describe(topic_ref(name))
                .await
                .map_err(api_error)?
                .into_inner();
            print_topics(fmt, &[st], true);
        }
        TopicsCmd::Rm { name } => {
            c.delete(topic_ref(name.clone())).await.map_err(api_error)?;
            output::deleted(fmt, &name);
        }
        TopicsCmd::Subscribe {
            topic,
            webhook,
            email,
            queue,
            filter,
            formatted,
            raw,
            no_confirm,
        } => {
            let (protocol, endpoint) = match (webhook, email, queue) {
                (Some(u), None, None) => ("webhook", u),
                (None, Some(a), None) => ("email", a),
                (None, None, Some(q)) => ("queue", q),
                _ => anyhow::bail!("give one of --webhook URL, --email ADDRESS or --queue NAME"),
            };
            let r = c
                .subscribe(pb::Subscription {
                    topic,
                    protocol: protocol.into(),
                    endpoint,
                    filter_json: filter.unwrap_or_default(),
                    raw: if raw {
                        Some(true)
                    } else if formatted {
                        Some(false)
                    } else {
                        None
                    },
                    require_confirmation: no_confirm.then_some(false),
                    ..Default::default()
                })
                .await
                .map_err(api_error)?
                .into_inner();
            let s = r.subscription.unwrap_or_default();
            if fmt == Format::Json {
                println!(
                    "{}",
                    output::json(&serde_json::json!({
                        "id": s.id, "status": s.status, "signingSecret": r.signing_secret}))
                );
            } else {
                println!("{}\t{}", s.id, s.status);
                if !r.signing_secret.is_empty() {
                    println!(
                        "signing secret (shown once; verify Skiff-Signature with it): {}",
                        r.signing_secret
                    );
                }
                if s.status == "pending-confirmation" {
                    eprintln!("a confirmation mail is on its way to {}", s.endpoint);
                }
            }
        }
        TopicsCmd::Unsubscribe { id } => {
            c.unsubscribe(pb::SubscriptionRef { id: id.clone() })
                .await
                .map_err(api_error)?;
            output::deleted(fmt, &id);
        }
        TopicsCmd::Confirm { id, token } => {
            let s = c
                .confirm(pb::ConfirmSubscriptionRequest { id, token })
                .await
                .map_err(api_error)?
                .into_inner();
            match fmt {
                Format::Json => println!("{}", output::json(&s)),
                Format::Table => println!("{}\t{}", s.id, s.status),
            }
        }
        TopicsCmd::Dlq { topic } => {
            let r = c
                .list_dead_letters(pb::ListNotificationDeadLettersRequest {
                    topic: topic.unwrap_or_default(),
                })
                .await
                .map_err(api_error)?
                .into_inner();
            if fmt == Format::Json {
                println!("{}", output::json(&r.deliveries));
            } else {
                let rows = r
                    .deliveries
                    .iter()
                    .map(|d| {
                        vec![
                            d.id.clone(),
                            d.topic.clone(),
                            d.subscription.clone(),
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
                        &[
                            "ID",
                            "TOPIC",
                            "SUBSCRIPTION",
                            "EVENT",
                            "ATTEMPTS",
                            "DEAD",
                            "LAST ERROR"
                        ],
                        rows
                    )
                );
            }
        }
        TopicsCmd::Redrive {
            topic,
            subscription,
        } => {
            let r = c
                .redrive(pb::RedriveRequest {
                    topic,
                    subscription: subscription.unwrap_or_default(),
                })
                .await
                .map_err(api_error)?
                .into_inner();
            match fmt {
                Format::Json => println!("{}", serde_json::json!({"redriven": r.redriven})),
                Format::Table => println!("{} redriven", r.redriven),
            }
        }
    }
    Ok(0)
}
