//! Queue operations in the core layer: create or change a queue, delete, purge; send,
//! receive (long polling), delete and change the visibility of messages; redrive a
//! dead-letter queue. The decisions are `skiff_model::queue`'s; this applies them under the
//! queue's lock (`queue_waits.rs`: one writer per queue, so a message is never handed to two
//! receivers), and every change is durable before it is answered.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use crate::core::{Core, CoreError};
use crate::model::{Queue, QueueMessage};
use crate::store::{Record, Store};
use crate::wake::Loop;
use skiff_model::queue::{self, Counts, Receive, StaleReceipt};

/// Creates a queue or changes one (checked already; its messages stay, its creation time is
/// kept). A redrive policy must name a queue that exists.
pub async fn put(core: &Core, q: Queue) -> Result<Queue, CoreError> {
    if let Some(r) = &q.redrive {
        if core.store.queues.get(&r.dead_letter_queue)?.is_none() {
            return Err(CoreError::BadReference(format!(
                "redrive.dead_letter_queue: no queue {:?} (create it first)",
                r.dead_letter_queue
            )));
        }
    }
    let now = core.clock.now_ms();
    let stored = core
        .store
        .queues
        .upsert(q.name.clone(), |old| Queue {
            created_ms: old.as_ref().map_or(now, |o| o.created_ms),
            updated_ms: now,
            ..q.clone()
        })
        .await?;
    Ok(stored)
}

/// A queue's settings (not its counts: those read its messages).
pub fn get(core: &Core, name: &str) -> Result<Queue, CoreError> {
    core.store
        .queues
        .get(name)?
        .ok_or_else(|| CoreError::NoSuchQueue(name.to_string()))
}

/// A queue and its numbers now, tallied from the visibility index (keys only, no message
/// read) and the oldest message (the first by key: ids are in send order). Messages past
/// retention count until the sweep or a receive drops them (SQS's counts are approximate).
pub fn describe(core: &Core, name: &str) -> Result<(Queue, Counts), CoreError> {
    let q = get(core, name)?;
    let prefix = Store::queue_prefix(name);
    let (visible, delayed, in_flight) =
        core.store.messages.tally_in(&prefix, core.clock.now_ms())?;
    let oldest_sent_ms = core
        .store
        .messages
        .first_by_key(&prefix)?
        .map_or(0, |m| m.sent_ms);
    Ok((
        q,
        Counts {
            visible,
            in_flight,
            delayed,
            oldest_sent_ms,
        },
    ))
}

/// The queues whose dead letters go to `dlq`.
fn dead_letter_sources(core: &Core, dlq: &str) -> Result<Vec<String>, CoreError> {
    Ok(core
        .store
        .queues
        .list()?
        .into_iter()
        .filter(|q| {
            q.redrive
                .as_ref()
                .is_some_and(|r| r.dead_letter_queue == dlq)
        })
        .map(|q| q.name)
        .collect())
}

/// Removes a queue and its messages. None: no such queue. Refused while another queue sends
/// its dead letters here, a rule targets it or a topic delivers to it (they would lose
/// messages): the error names them.
pub async fn delete(core: &Core, name: &str) -> Result<Option<Queue>, CoreError> {
    let mut users: Vec<String> = dead_letter_sources(core, name)?
        .into_iter()
        .map(|q| format!("queue {q}"))
        .collect();
    for rule in core.store.rules.list()? {
        if rule.targets.iter().any(|t| {
            matches!(&t.kind, crate::model::TargetKind::Queue(q) if q == name)
                || t.dead_letter_queue == name
        }) {
            users.push(format!("rule {}", rule.name));
        }
    }
    for sub in core.store.subscriptions(None)? {
        if sub.protocol == crate::model::Protocol::Queue && sub.endpoint == name {
            users.push(format!("topic {} (subscription {})", sub.topic, sub.id));
        }
    }
    for s in core.store.schedules.list()? {
        if s.dead_letter_queue == name {
            users.push(format!("schedule {} (dead letters)", s.name));
        }
    }
    for t in core.store.topics.list()? {
        if t.dead_letter_queue == name {
            users.push(format!("topic {} (dead letters)", t.name));
        }
    }
    for s in core.store.services.list()? {
        if s.autoscaling
            .as_ref()
            .is_some_and(|a| a.source == format!("queue:{name}"))
        {
            users.push(format!("service {}", s.name));
        }
    }
    if !users.is_empty() {
        return Err(CoreError::BadReference(format!(
            "name: queue {name:?} is used by {}; change them first",
            users.join(", ")
        )));
    }
    let waits = core.queue_waits.of(name);
    let _held = waits.lock.lock().await;
    let old = core.store.delete_queue(name).await?;
    core.queue_waits.forget(name);
    Ok(old)
}

/// Removes every message of a queue; returns how many.
pub async fn purge(core: &Core, name: &str) -> Result<u64, CoreError> {
    get(core, name)?;
    let waits = core.queue_waits.of(name);
    let _held = waits.lock.lock().await;
    Ok(core.store.purge_queue(name).await?)
}

/// One message to send (checked already).
pub struct Outgoing {
    pub body: String,
    pub delay_secs: Option<u32>,
    pub attributes: BTreeMap<String, String>,
    /// FIFO: the message group and the deduplication id (empty: by content, if the queue
    /// says so).
    pub group: String,
    pub dedup_id: String,
}

/// A new message for `q`, sent now, receivable after its delay (default: the queue's).
pub fn new_message(
    core: &Core,
    q: &Queue,
    body: String,
    attributes: BTreeMap<String, String>,
    delay_secs: Option<u32>,
) -> QueueMessage {
    let now = core.clock.now_ms();
    let delay = delay_secs.unwrap_or(q.delay_secs);
    QueueMessage {
        queue: q.name.clone(),
        id: core.new_id(),
        body,
        attributes,
        sent_ms: now,
        visible_ms: now + i64::from(delay) * 1000,
        receive_count: 0,
        first_received_ms: 0,
        receipt: String::new(),
        group: String::new(),
        dedup_id: String::new(),
    }
}

/// Sends messages to a queue, all durable with one flush before this returns; returns them.
pub async fn send(
    core: &Core,
    q: &Queue,
    outgoing: Vec<Outgoing>,
) -> Result<Vec<QueueMessage>, CoreError> {
    if q.fifo {
        return send_fifo(core, q, outgoing).await;
    }
    let mut sent = Vec::with_capacity(outgoing.len());
    for o in outgoing {
        let m = new_message(core, q, o.body, o.attributes, o.delay_secs);
        core.store.messages.put_uncommitted(&m)?;
        sent.push(m);
    }
    core.store.commit().await?;
    arrived(core, &q.name);
    Ok(sent)
}

/// A FIFO send, under the queue's lock: a message whose deduplication id was sent in the
/// last 5 minutes is answered with the first one's id and not queued again.
async fn send_fifo(
    core: &Core,
    q: &Queue,
    outgoing: Vec<Outgoing>,
) -> Result<Vec<QueueMessage>, CoreError> {
    let waits = core.queue_waits.of(&q.name);
    let held = waits.lock.lock().await;
    let now = core.clock.now_ms();
    let mut sent = Vec::with_capacity(outgoing.len());
    for o in outgoing {
        let dedup_id = if o.dedup_id.is_empty() {
            crate::auth::sha256_hex(&o.body)
        } else {
            o.dedup_id
        };
        let mut m = new_message(core, q, o.body, o.attributes, None);
        m.group = o.group;
        m.dedup_id = dedup_id.clone();
        let key = Store::message_key(&q.name, &dedup_id);
        if let Some(seen) = core.store.fifo_dedup.get(&key)? {
            if now - seen.sent_ms < queue::DEDUP_WINDOW_MS {
                m.id = seen.message_id;
                sent.push(m);
                continue;
            }
        }
        core.store.messages.put_uncommitted(&m)?;
        core.store
            .fifo_dedup
            .put_uncommitted(&crate::model::DedupEntry {
                queue: q.name.clone(),
                dedup_id,
                message_id: m.id.clone(),
                sent_ms: now,
            })?;
        sent.push(m);
    }
    drop(held);
    core.store.commit().await?;
    arrived(core, &q.name);
    Ok(sent)
}

/// Sends a rule target's message (`body`, the target's input) to queue `name` once per
/// delivery `key`. Ok(Err) when the queue is missing or refuses the message (the delivery
/// is then retried, as for a task target).
pub async fn send_event(
    core: &Core,
    key: &str,
    name: &str,
    body: String,
) -> Result<Result<(), String>, CoreError> {
    let Some(q) = core.store.queues.get(name)? else {
        return Ok(Err(format!("queue {name:?} does not exist")));
    };
    if let Err(e) = skiff_model::validate::message("message", &q, &body, None, &BTreeMap::new()) {
        return Ok(Err(format!("queue {name:?}: {e}")));
    }
    let m = new_message(core, &q, body, BTreeMap::new(), None);
    if core.store.send_once(key, &m).await? {
        arrived(core, &q.name);
    }
    Ok(Ok(()))
}

/// Receives up to `max` visible messages, waiting up to `wait` for the first; each is
/// invisible to other receivers for `visibility_secs` (durable before it is handed out).
/// Returns each with its receipt handle.
pub async fn receive(
    core: &Core,
    q: &Queue,
    max: usize,
    wait: Duration,
    visibility_secs: u32,
) -> Result<Vec<(QueueMessage, String)>, CoreError> {
    let deadline = core.clock.now_ms() + wait.as_millis() as i64;
    let waits = core.queue_waits.of(&q.name);
    let prefix = Store::queue_prefix(&q.name);
    loop {
        // Interest first: a message sent between the look and the wait still wakes it.
        let arrived = waits.arrived.notified();
        tokio::pin!(arrived);
        arrived.as_mut().enable();
        let got = take(core, q, &prefix, max, visibility_secs).await?;
        let now = core.clock.now_ms();
        if !got.is_empty() || now >= deadline {
            return Ok(got);
        }
        // Until a message arrives, one in flight or delayed becomes visible, or the wait ends.
        // (FIFO: a visible message may wait behind one in flight; that one's end counts.)
        let next_due = if q.fifo {
            core.store
                .messages
                .list_in(&prefix)?
                .iter()
                .map(|m| m.visible_ms)
                .filter(|t| *t > now)
                .min()
        } else {
            core.store.messages.next_due_in(&prefix)?
        };
        let next = next_due.map_or(deadline, |t| t.min(deadline));
        waits.waiting.fetch_add(1, Ordering::SeqCst);
        tokio::select! {
            _ = arrived => {}
            _ = core.clock.sleep_until(next.max(now + 1)) => {}
        }
        waits.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

/// One look at the queue under its lock: what is visible now, received (or moved, or
/// expired) and made durable with one flush.
async fn take(
    core: &Core,
    q: &Queue,
    prefix: &[u8],
    max: usize,
    visibility_secs: u32,
) -> Result<Vec<(QueueMessage, String)>, CoreError> {
    let waits = core.queue_waits.of(&q.name);
    let held = waits.lock.lock().await;
    let now = core.clock.now_ms();
    let mut out = Vec::new();
    let mut changed = false;
    let mut dead_lettered = Vec::new();
    // Visible messages in the order they became visible (FIFO: in send order per group, none
    // behind one in flight); moved and expired ones make room.
    while out.len() < max {
        let visible = if q.fifo {
            let all = core.store.messages.list_by_key(prefix)?;
            queue::fifo_receivable(&all, now, max - out.len())
                .into_iter()
                .map(|i| all[i].clone())
                .collect()
        } else {
            core.store.messages.due_in(prefix, now, max - out.len())?.0
        };
        if visible.is_empty() {
            break;
        }
        for m in visible {
            let nonce = core.new_id();
            match queue::receive(q, &m, now, i64::from(visibility_secs) * 1000, &nonce) {
                Receive::Deliver(received) => {
                    core.store.messages.put_uncommitted(&received)?;
                    let handle = queue::receipt_handle(&received);
                    out.push((received, handle));
                }
                Receive::DeadLetter { to, message } => {
                    if core.store.queues.get(&to)?.is_some() {
                        core.store.move_message(&m, &message)?;
                        dead_lettered.push(to);
                    } else {
                        // (Deleting a dead-letter queue in use is refused; one gone anyway
                        // leaves its messages where they are rather than nowhere.)
                        warn!(queue = %q.name, dead_letter_queue = %to, "dead-letter queue missing; the message stays");
                        let Receive::Deliver(received) = queue::receive(
                            &Queue {
                                redrive: None,
                                ..q.clone()
                            },
                            &m,
                            now,
                            i64::from(visibility_secs) * 1000,
                            &nonce,
                        ) else {
                            continue;
                        };
                        core.store.messages.put_uncommitted(&received)?;
                        let handle = queue::receipt_handle(&received);
                        out.push((received, handle));
                    }
                }
                Receive::Expired => {
                    core.store.messages.delete_uncommitted(m.key())?;
                }
            }
            changed = true;
        }
    }
    // The lock covers the decisions and the writes (a later receiver sees them at once); the
    // flush is shared with whoever else flushes, and nothing is handed out before it.
    drop(held);
    if changed {
        core.store.commit().await?;
        core.loops.wake(Loop::Services);
    }
    for dlq in dead_lettered {
        arrived(core, &dlq);
    }
    Ok(out)
}

/// Deletes messages by the receipt handles of their latest receives; one result per handle.
pub async fn delete_messages(
    core: &Core,
    q: &Queue,
    handles: &[String],
) -> Result<Vec<Result<(), StaleReceipt>>, CoreError> {
    let waits = core.queue_waits.of(&q.name);
    let held = waits.lock.lock().await;
    let mut results = Vec::with_capacity(handles.len());
    for h in handles {
        let r = match current(core, q, h)? {
            Ok(m) => {
                core.store.messages.delete_uncommitted(m.key())?;
                Ok(())
            }
            Err(e) => Err(e),
        };
        results.push(r);
    }
    drop(held);
    core.store.commit().await?;
    core.loops.wake(Loop::Services);
    Ok(results)
}

/// Makes received messages visible again after `secs` from now (0: at once), by the receipt
/// handles of their latest receives; one result per change.
pub async fn change_visibility(
    core: &Core,
    q: &Queue,
    changes: &[(String, u32)],
) -> Result<Vec<Result<(), StaleReceipt>>, CoreError> {
    let waits = core.queue_waits.of(&q.name);
    let held = waits.lock.lock().await;
    let now = core.clock.now_ms();
    let mut results = Vec::with_capacity(changes.len());
    for (h, secs) in changes {
        let r = match current(core, q, h)? {
            Ok(mut m) => {
                m.visible_ms = now + i64::from(*secs) * 1000;
                core.store.messages.put_uncommitted(&m)?;
                Ok(())
            }
            Err(e) => Err(e),
        };
        results.push(r);
    }
    drop(held);
    core.store.commit().await?;
    arrived(core, &q.name);
    Ok(results)
}

/// The message a receipt handle acts on, if it still does.
fn current(
    core: &Core,
    q: &Queue,
    handle: &str,
) -> Result<Result<QueueMessage, StaleReceipt>, CoreError> {
    let Some((id, _)) = queue::parse_receipt(handle) else {
        return Ok(Err(StaleReceipt::Malformed));
    };
    let m = core.store.messages.get(Store::message_key(&q.name, id))?;
    Ok(queue::check_receipt(m.as_ref(), handle).map(|()| m.expect("checked")))
}

/// Moves every message of dead-letter queue `dlq` to `to` (None: the one queue whose redrive
/// policy names `dlq`), visible at once and counted from zero; returns how many and where.
pub async fn redrive(core: &Core, dlq: &str, to: Option<&str>) -> Result<(u64, String), CoreError> {
    get(core, dlq)?;
    let to = match to {
        Some(t) => get(core, t)?.name,
        None => {
            let sources = dead_letter_sources(core, dlq)?;
            match sources.as_slice() {
                [one] => one.clone(),
                [] => {
                    return Err(CoreError::BadReference(format!(
                        "to: no queue sends its dead letters to {dlq:?}; name the queue to move them to"
                    )))
                }
                many => {
                    return Err(CoreError::BadReference(format!(
                        "to: queues {} all send their dead letters to {dlq:?}; name one",
                        many.join(", ")
                    )))
                }
            }
        }
    };
    let waits = core.queue_waits.of(dlq);
    let _held = waits.lock.lock().await;
    let now = core.clock.now_ms();
    let mut moved = 0;
    for m in core.store.messages.list_in(&Store::queue_prefix(dlq))? {
        let back = QueueMessage {
            queue: to.clone(),
            visible_ms: now,
            receive_count: 0,
            first_received_ms: 0,
            receipt: String::new(),
            ..m.clone()
        };
        core.store.move_message(&m, &back)?;
        moved += 1;
    }
    core.store.commit().await?;
    arrived(core, &to);
    Ok((moved, to))
}

/// The message a dead letter puts in dead-letter queue `dlq` (`body`: the dead letter and what
/// it carried), or None when the queue is gone (logged: the dead letter is then only listed).
pub fn dead_letter_message(
    core: &Core,
    dlq: &str,
    body: serde_json::Value,
) -> Result<Option<QueueMessage>, CoreError> {
    if dlq.is_empty() {
        return Ok(None);
    }
    let Some(q) = core.store.queues.get(dlq)? else {
        warn!(
            queue = dlq,
            "dead-letter queue gone; the dead letter is only listed"
        );
        return Ok(None);
    };
    Ok(Some(new_message(
        core,
        &q,
        body.to_string(),
        Default::default(),
        None,
    )))
}

/// A dead letter was queued in `m`'s queue: its receivers hear of it.
pub fn dead_letter_queued(core: &Core, m: Option<&QueueMessage>) {
    if let Some(m) = m {
        arrived(core, &m.queue);
    }
}

/// New messages in queue `name`: its waiting receivers and the services that scale on it
/// hear of them.
fn arrived(core: &Core, name: &str) {
    core.queue_waits.arrived(name);
    core.loops.wake(Loop::Services);
}

/// How often the retention sweep runs.
const SWEEP_EVERY_MS: i64 = 60_000;

/// The retention sweep: every minute, messages older than their queue's retention are
/// deleted (a receive also drops one it meets), so a queue nobody reads does not grow.
pub async fn run(core: Arc<Core>, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        if *stop.borrow() {
            return;
        }
        let next = core.clock.now_ms() + SWEEP_EVERY_MS;
        if let Err(e) = sweep(&core).await {
            warn!(error = %e, "queue retention sweep failed");
        }
        tokio::select! {
            _ = stop.changed() => {}
            _ = core.clock.sleep_until(next) => {}
        }
    }
}

/// Deletes every expired message (and FIFO deduplication ids past their window); returns
/// how many messages.
pub async fn sweep(core: &Core) -> Result<u64, CoreError> {
    let now = core.clock.now_ms();
    let mut forgotten = 0;
    for d in core.store.fifo_dedup.list()? {
        if now - d.sent_ms >= queue::DEDUP_WINDOW_MS {
            core.store
                .fifo_dedup
                .delete(Store::message_key(&d.queue, &d.dedup_id))
                .await?;
            forgotten += 1;
        }
    }
    if forgotten > 0 {
        info!(
            forgotten,
            "FIFO deduplication ids past their window forgotten"
        );
    }
    let mut removed = 0;
    for q in core.store.queues.list()? {
        let waits = core.queue_waits.of(&q.name);
        let held = waits.lock.lock().await;
        let now = core.clock.now_ms();
        let mut here = 0;
        for m in core.store.messages.list_in(&Store::queue_prefix(&q.name))? {
            if queue::expired(&q, &m, now)
                && core.store.messages.delete_uncommitted(m.key())?.is_some()
            {
                here += 1;
            }
        }
        drop(held);
        if here > 0 {
            core.store.commit().await?;
            info!(queue = %q.name, expired = here, "messages past retention deleted");
        }
        removed += here;
    }
    Ok(removed)
}
