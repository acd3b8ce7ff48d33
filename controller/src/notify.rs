//! Notifications: a rule's topic target publishes a message to every matching subscription
//! through the durable outbox, and the outbox loop delivers it by webhook or e-mail.
//!
//! At least once: an outbox entry is removed only after its endpoint accepted it (a crash in
//! between sends it again, with the same `Skiff-Delivery-Id`). Failures are retried with
//! exponential backoff and jitter per the topic's delivery policy, then dead-lettered; a
//! refusal that cannot change (4xx other than 429, a permanent SMTP error) is dead-lettered at
//! once. Nothing leaves the outbox any other way, and a restart resumes it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tracing::{info, warn};

use crate::core::{Core, CoreError};
use crate::model::{Delivery, DeliveryKind, DeliveryPolicy, Protocol, Subscription};
use crate::wake::Loop;
use skiff_model::pattern::Pattern;
use skiff_model::retry::{Next, Retry};

pub use crate::notifier::{Notifier, SmtpConfig};

/// A compiled subscription filter (checked when subscribing).
pub fn compile_filter(filter: &Value) -> Result<Pattern, String> {
    Pattern::compile(filter).map_err(|e| format!("filter: {e}"))
}

/// Publishes a message to a topic: one outbox entry per confirmed subscription whose filter
/// matches, in one transaction with delivery `key`'s record. Ok(Err) when the topic is
/// missing (the rule delivery is then retried, as for a task target).
pub async fn publish(
    core: &Core,
    key: &str,
    topic: &str,
    rule: &str,
    event_id: &str,
    message: String,
) -> Result<Result<(), String>, CoreError> {
    if core.store.topics.get(topic)?.is_none() {
        return Ok(Err(format!("topic {topic:?} does not exist")));
    }
    let parsed: Option<Value> = serde_json::from_str(&message).ok();
    let now = core.clock.now_ms();
    let mut deliveries = Vec::new();
    let mut unconfirmed = Vec::new();
    for sub in core.store.subscriptions(Some(topic))? {
        if let Some(f) = &sub.filter {
            let matches = match (compile_filter(f), &parsed) {
                (Ok(p), Some(m)) => p.matches(m),
                _ => false,
            };
            if !matches {
                continue;
            }
        }
        if !sub.confirmed {
            unconfirmed.push(sub.id);
            continue;
        }
        deliveries.push(Delivery {
            id: ulid::Ulid::new().to_string(),
            topic: topic.to_string(),
            subscription: sub.id.clone(),
            kind: DeliveryKind::Message,
            rule: rule.to_string(),
            event_id: event_id.to_string(),
            message: message.clone(),
            attempts: 0,
            last_error: String::new(),
            created_ms: now,
            next_attempt_ms: now,
            dead_ms: None,
        });
    }
    let count = deliveries.len();
    if core
        .store
        .enqueue_deliveries(key, &deliveries, &unconfirmed)
        .await?
    {
        info!(%topic, %rule, %event_id, deliveries = count, "published");
        core.loops.wake(Loop::Notifications);
    }
    Ok(Ok(()))
}

/// Delivers the outbox, forever.
pub async fn run(core: Arc<Core>, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        if *stop.borrow() {
            return;
        }
        // Until the next due entry, at most a second after this pass began.
        let latest = core.clock.now_ms() + 1000;
        let until = match pass(&core) {
            Ok(Some(next)) => next.min(latest),
            Ok(None) => latest,
            Err(e) => {
                warn!(error = %e, "reading the outbox failed");
                latest
            }
        };
        tokio::select! {
            _ = core.loops.woken(Loop::Notifications) => {}
            _ = stop.changed() => {}
            _ = core.clock.sleep_until(until) => {}
        }
    }
}

/// Starts due deliveries not already in flight, as many as there are free senders; returns
/// when the next one is due.
fn pass(core: &Arc<Core>) -> Result<Option<i64>, CoreError> {
    let now = core.clock.now_ms();
    let notifier = &core.notifier;
    notifier.backlog.store(false, Ordering::SeqCst);
    // Through the due-time index: only what is due is read (in flight ones included, skipped).
    let (due, earliest) = core.store.outbox.due(now, 4096)?;
    for d in due {
        if notifier
            .in_flight
            .lock()
            .expect("in-flight lock")
            .contains(&d.id)
        {
            continue;
        }
        let Ok(permit) = notifier.limit.clone().try_acquire_owned() else {
            // Every sender is busy: the next one to finish wakes the loop to go on from here.
            notifier.backlog.store(true, Ordering::SeqCst);
            break;
        };
        notifier
            .in_flight
            .lock()
            .expect("in-flight lock")
            .insert(d.id.clone());
        let core = core.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let id = d.id.clone();
            let retry_scheduled = attempt(&core, d).await.unwrap_or_else(|e| {
                warn!(delivery = %id, error = %e, "recording a delivery attempt failed");
                true
            });
            core.notifier
                .in_flight
                .lock()
                .expect("in-flight lock")
                .remove(&id);
            // Rescan only when it can find something: a retry time the loop has not seen, or
            // due deliveries left behind for want of a sender.
            if retry_scheduled || core.notifier.backlog.load(Ordering::SeqCst) {
                core.loops.wake(Loop::Notifications);
            }
        });
    }
    Ok(earliest)
}

/// Why an attempt failed, and whether trying again can help.
#[derive(Debug)]
pub struct Failure {
    pub retry: bool,
    pub reason: String,
}

impl Failure {
    fn transient(reason: impl Into<String>) -> Failure {
        Failure {
            retry: true,
            reason: reason.into(),
        }
    }
    fn permanent(reason: impl Into<String>) -> Failure {
        Failure {
            retry: false,
            reason: reason.into(),
        }
    }
}

/// One attempt at one delivery, and its outcome recorded durably. Returns whether a retry was
/// scheduled.
async fn attempt(core: &Core, mut d: Delivery) -> Result<bool, CoreError> {
    let (Some(sub), Some(topic)) = (
        core.store.subscriptions.get(&d.subscription)?,
        core.store.topics.get(&d.topic)?,
    ) else {
        // Unsubscribed or deleted meanwhile (which also empties its outbox entries).
        core.store.outbox.delete(&d.id).await?;
        return Ok(false);
    };
    let result = match sub.protocol {
        Protocol::Webhook => send_webhook(core, &sub, &d, &topic.delivery).await,
        Protocol::Email => send_email(core, &sub, &d).await,
        Protocol::Queue => send_to_queue(core, &sub, &d).await,
    };
    d.attempts += 1;
    match result {
        Ok(()) => {
            core.store.outbox.delete(&d.id).await?;
            *core
                .notifier
                .delivered
                .lock()
                .expect("counter lock")
                .entry(sub.id.clone())
                .or_default() += 1;
            core.metrics.delivery(&d.topic, "delivered");
            info!(delivery = %d.id, topic = %d.topic, subscription = %sub.id, attempts = d.attempts, "notification delivered");
        }
        Err(f) => {
            d.last_error = f.reason;
            let next = Retry::of_delivery(&topic.delivery).after_failure(
                d.attempts,
                d.created_ms,
                core.clock.now_ms(),
                f.retry,
                random_u64(),
            );
            if let Next::At(at) = next {
                d.next_attempt_ms = at;
                warn!(delivery = %d.id, subscription = %sub.id, attempts = d.attempts, error = %d.last_error, "notification failed; will retry");
                core.store.outbox.put(&d).await?;
                core.metrics.delivery(&d.topic, "retrying");
                return Ok(true);
            } else {
                d.dead_ms = Some(core.clock.now_ms());
                warn!(delivery = %d.id, subscription = %sub.id, attempts = d.attempts, error = %d.last_error, "notification dead-lettered");
                let body = serde_json::json!({
                    "deadLetter": {
                        "topic": d.topic, "subscription": d.subscription, "rule": d.rule,
                        "eventId": d.event_id, "attempts": d.attempts,
                        "lastError": d.last_error, "deadMs": d.dead_ms,
                    },
                    "message": d.message,
                });
                let message =
                    crate::queues::dead_letter_message(core, &topic.dead_letter_queue, body)?;
                core.store
                    .dead_letter_delivery(&d, message.as_ref())
                    .await?;
                crate::queues::dead_letter_queued(core, message.as_ref());
                core.metrics.delivery(&d.topic, "dead_lettered");
            }
        }
    }
    Ok(false)
}

/// The wait after `attempts` failures: the topic's delivery policy as a jittered backoff.
pub fn backoff_ms(p: &DeliveryPolicy, attempts: u32) -> i64 {
    Retry::of_delivery(p)
        .backoff
        .delay_ms(attempts, random_u64())
}

fn random_u64() -> u64 {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 8];
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    u64::from_le_bytes(b)
}

/// A fresh random token, hex.
pub fn random_token(bytes: usize) -> String {
    use ring::rand::SecureRandom;
    let mut b = vec![0u8; bytes];
    let _ = ring::rand::SystemRandom::new().fill(&mut b);
    hex::encode(b)
}

/// The signature a receiver recomputes: hex HMAC-SHA256 with the subscription's secret over
/// `<timestamp>.<delivery id>.<body>`.
pub fn signature(secret: &[u8], timestamp: i64, delivery_id: &str, body: &str) -> String {
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, secret);
    let mut ctx = ring::hmac::Context::with_key(&key);
    ctx.update(format!("{timestamp}.{delivery_id}.").as_bytes());
    ctx.update(body.as_bytes());
    hex::encode(ctx.sign().as_ref())
}

/// A delivery to a queue subscription: the message (or its wrapping), queued once per
/// delivery id, so an attempt repeated after a crash does not queue it twice.
async fn send_to_queue(core: &Core, sub: &Subscription, d: &Delivery) -> Result<(), Failure> {
    let body = body_of(sub, d);
    let key = format!("notify\0{}\0{}", sub.id, d.id);
    match crate::queues::send_event(core, &key, &sub.endpoint, body).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(reason)) => Err(Failure::transient(reason)),
        Err(e) => Err(Failure::transient(e.to_string())),
    }
}

/// What a webhook or a queue gets: the message as is (raw), or wrapped with the delivery's
/// metadata.
fn body_of(sub: &Subscription, d: &Delivery) -> String {
    if sub.raw {
        return d.message.clone();
    }
    let message: Value =
        serde_json::from_str(&d.message).unwrap_or_else(|_| Value::String(d.message.clone()));
    json!({
        "deliveryId": d.id,
        "topic": d.topic,
        "subscription": sub.id,
        "rule": d.rule,
        "eventId": d.event_id,
        "subject": format_message(&d.message, &d.topic).0,
        "message": message,
    })
    .to_string()
}

async fn send_webhook(
    core: &Core,
    sub: &Subscription,
    d: &Delivery,
    policy: &DeliveryPolicy,
) -> Result<(), Failure> {
    let body = body_of(sub, d);
    let secret = match &sub.signing_secret {
        Some(s) => core.secrets.open_sealed(s).map_err(Failure::transient)?,
        None => return Err(Failure::permanent("webhook has no signing secret")),
    };
    let ts = core.clock.now_ms() / 1000;
    let sig = signature(&secret, ts, &d.id, &body);
    let res = core
        .notifier
        .http
        .post(&sub.endpoint)
        .header("content-type", "application/json")
        .header("skiff-delivery-id", &d.id)
        .header("skiff-timestamp", ts.to_string())
        .header("skiff-signature", format!("v1={sig}"))
        .header("skiff-topic", &d.topic)
        .header("skiff-subscription", &sub.id)
        .header("skiff-attempt", (d.attempts + 1).to_string())
        .timeout(Duration::from_millis(u64::from(policy.timeout_ms)))
        .body(body)
        .send()
        .await
        .map_err(|e| Failure::transient(format!("POST {}: {}", sub.endpoint, error_chain(&e))))?;
    let status = res.status();
    if status.is_success() {
        return Ok(());
    }
    let reason = format!("POST {}: HTTP {status}", sub.endpoint);
    if status.as_u16() == 429 || status.is_server_error() {
        Err(Failure::transient(reason))
    } else {
        Err(Failure::permanent(reason))
    }
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

async fn send_email(core: &Core, sub: &Subscription, d: &Delivery) -> Result<(), Failure> {
    use lettre::AsyncTransport;
    let Some(mailer) = &core.notifier.mailer else {
        return Err(Failure::transient(
            "no SMTP server configured (controller --smtp-url, --smtp-from)",
        ));
    };
    let to: lettre::message::Mailbox = sub
        .endpoint
        .parse()
        .map_err(|e| Failure::permanent(format!("address {:?}: {e}", sub.endpoint)))?;
    let (subject, body) = match &d.kind {
        DeliveryKind::Confirmation { token } => confirmation_mail(core, sub, token),
        DeliveryKind::Message if sub.raw => (format!("[skiff] {}", d.topic), d.message.clone()),
        DeliveryKind::Message => {
            let (subject, body) = format_message(&d.message, &d.topic);
            (
                subject,
                format!(
                    "{body}\n--\nTopic {}, rule {}, event {}, delivery {}.\n",
                    d.topic, d.rule, d.event_id, d.id
                ),
            )
        }
    };
    let mail = lettre::Message::builder()
        .from(mailer.from.clone())
        .to(to)
        .subject(subject)
        .header(lettre::message::header::ContentType::TEXT_PLAIN)
        .body(body)
        .map_err(|e| Failure::permanent(format!("building the mail: {e}")))?;
    match mailer.transport.send(mail).await {
        Ok(_) => Ok(()),
        Err(e) if e.is_permanent() => Err(Failure::permanent(format!("SMTP: {}", error_chain(&e)))),
        Err(e) => Err(Failure::transient(format!("SMTP: {}", error_chain(&e)))),
    }
}

fn confirmation_mail(core: &Core, sub: &Subscription, token: &str) -> (String, String) {
    (
        format!("[skiff] Confirm your subscription to {}", sub.topic),
        format!(
            "You were subscribed to the skiff topic {topic:?}. Nothing is sent to this address \
             until the subscription is confirmed.\n\nConfirm: {url}/confirm/{id}?token={token}\n\
             or: skiff topics confirm {id} {token}\n\nIf you did not expect this, ignore it.\n",
            topic = sub.topic,
            url = core.notifier.public_url.trim_end_matches('/'),
            id = sub.id,
        ),
    )
}

/// A readable subject and body for a message: a task's state change spelled out (what
/// stopped, why, exit codes, when, how to see the logs); any other event by its type and
/// detail; anything else as it is.
pub fn format_message(message: &str, topic: &str) -> (String, String) {
    let Ok(ev) = serde_json::from_str::<Value>(message) else {
        return (format!("[skiff] {topic}"), message.to_string());
    };
    let s = |v: &Value| v.as_str().unwrap_or("-").to_string();
    if ev["detail-type"] == crate::core::TASK_STATE_CHANGE {
        let d = &ev["detail"];
        let id = s(&d["taskArn"]);
        let family = d["taskDefinitionArn"]
            .as_str()
            .unwrap_or("ad hoc")
            .to_string();
        let status = s(&d["lastStatus"]);
        let containers: Vec<&Value> = d["containers"]
            .as_array()
            .map(|a| a.iter().collect())
            .unwrap_or_default();
        let why: Vec<String> = containers
            .iter()
            .filter(|c| c["exitCode"].as_i64().is_some_and(|x| x != 0) || c["reason"].is_string())
            .map(|c| {
                let mut w = s(&c["name"]);
                if let Some(r) = c["reason"].as_str() {
                    w.push_str(&format!(": {r}"));
                }
                if let Some(x) = c["exitCode"].as_i64() {
                    w.push_str(&format!(", exit {x}"));
                }
                w
            })
            .collect();
        let code = d["stopCode"].as_str();
        let mut subject = format!("[skiff] Task {family} {}", status.to_lowercase());
        if let Some(code) = code {
            subject.push_str(&format!(": {code}"));
        }
        if !why.is_empty() {
            subject.push_str(&format!(" ({})", why.join("; ")));
        }
        let mut body = String::new();
        let mut line = |k: &str, v: String| body.push_str(&format!("{k:<12}{v}\n"));
        line("Task", id.clone());
        line("Family", family);
        line("Group", s(&d["group"]));
        line("Started by", s(&d["startedBy"]));
        line("Node", s(&d["nodeId"]));
        line(
            "Status",
            format!("{status} (desired {})", s(&d["desiredStatus"])),
        );
        line("Stop code", code.unwrap_or("-").to_string());
        line("Reason", s(&d["stoppedReason"]));
        line("Started", s(&d["startedAt"]));
        line("Stopped", s(&d["stoppedAt"]));
        body.push_str("Containers:\n");
        for c in containers {
            body.push_str(&format!(
                "  {:<16} exit {:<5} {}{}\n",
                s(&c["name"]),
                c["exitCode"]
                    .as_i64()
                    .map_or("-".to_string(), |x| x.to_string()),
                c["reason"].as_str().unwrap_or(""),
                if c["essential"] == true {
                    "  (essential)"
                } else {
                    ""
                },
            ));
        }
        body.push_str(&format!(
            "\nLogs:       skiff tasks logs {id}\nDetails:    skiff tasks describe {id}\n"
        ));
        return (subject, body);
    }
    let subject = match (ev["detail-type"].as_str(), ev["source"].as_str()) {
        (Some(t), Some(src)) => format!("[skiff] {t} from {src}"),
        _ => format!("[skiff] {topic}"),
    };
    let body = serde_json::to_string_pretty(&ev).unwrap_or_else(|_| message.to_string());
    (subject, body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn backoff_grows_to_the_maximum_with_jitter_inside_each_step() {
        let p = DeliveryPolicy {
            max_attempts: 10,
            min_delay_ms: 1000,
            max_delay_ms: 10_000,
            timeout_ms: 1000,
        };
        for _ in 0..200 {
            let b1 = backoff_ms(&p, 1);
            assert!((500..=1000).contains(&b1), "{b1}");
            let b3 = backoff_ms(&p, 3);
            assert!((2000..=4000).contains(&b3), "{b3}");
            let b9 = backoff_ms(&p, 9);
            assert!((5000..=10_000).contains(&b9), "{b9}");
        }
        // Jittered: not all the same.
        let spread: HashSet<i64> = (0..50).map(|_| backoff_ms(&p, 5)).collect();
        assert!(spread.len() > 10);
    }

    #[test]
    fn signatures_cover_the_timestamp_the_id_and_the_body() {
        let a = signature(b"k", 100, "d1", "{}");
        assert_eq!(a.len(), 64);
        assert_ne!(a, signature(b"k", 101, "d1", "{}"));
        assert_ne!(a, signature(b"k", 100, "d2", "{}"));
        assert_ne!(a, signature(b"k", 100, "d1", "{ }"));
        assert_ne!(a, signature(b"j", 100, "d1", "{}"));
        // RFC 4231 test case 2 checks the primitive itself.
        let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"Jefe");
        assert_eq!(
            hex::encode(ring::hmac::sign(&key, b"what do ya want for nothing?").as_ref()),
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn a_stopped_task_reads_as_what_stopped_and_why() {
        let ev = json!({"source": "skiff.task", "detail-type": "Task State Change", "detail": {
            "taskArn": "t1", "taskDefinitionArn": "hog:2", "nodeId": "n1", "lastStatus": "STOPPED",
            "desiredStatus": "STOPPED", "stopCode": "EssentialContainerExited",
            "stoppedReason": "Essential container in task exited", "startedAt": "2026-11-23T10:00:00Z",
            "stoppedAt": "2026-11-23T10:00:05Z",
            "containers": [{"name": "main", "exitCode": 137, "reason": "OutOfMemoryError", "essential": true}]}});
        let (subject, body) = format_message(&ev.to_string(), "admins");
        assert_eq!(
            subject,
            "[skiff] Task hog:2 stopped: EssentialContainerExited (main: OutOfMemoryError, exit 137)"
        );
        for want in [
            "Node        n1",
            "exit 137",
            "OutOfMemoryError",
            "skiff tasks logs t1",
            "2026-11-23T10:00:05Z",
        ] {
            assert!(body.contains(want), "{want:?} in\n{body}");
        }
        let (subject, _) = format_message(r#"{"source": "shop", "detail-type": "Order"}"#, "t");
        assert_eq!(subject, "[skiff] Order from shop");
        assert_eq!(
            format_message("plain text", "t"),
            ("[skiff] t".into(), "plain text".into())
        );
    }
}
