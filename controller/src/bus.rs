//! The rule dispatcher: reads the event log after its durable cursor, matches every event
//! against the enabled rules, and delivers it to each matching rule's targets.
//!
//! Delivery is at least once: the cursor moves past an event only after every delivery it
//! caused is recorded (a task created, a retry scheduled or a dead letter kept), so a crash
//! replays at most the batch in flight. Task creation is at most once per (rule, target, event
//! id): the task and its delivery record are one transaction (`Store::create_task_once`), and
//! a replayed delivery finds the record.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use serde_json::Value;
use tracing::{info, warn};

use crate::core::{Core, CoreError};
use crate::model::{
    delivery_key, DeadLetter, Event, PendingRetry, Rule, RuleCounter, Target, TargetKind, Task,
};
use crate::wake::Loop;
use skiff_model::retry::{Next, Retry};
use skiff_model::ruleset::RuleSet;

/// Events read per pass.
const BATCH: usize = 256;
/// Deliveries of a batch made at once.
const CONCURRENT_DELIVERIES: usize = 64;

/// How long dedup records are kept (design: "dedup keys with TTL").
pub const DEDUP_TTL_MS: i64 = 7 * 24 * 3600 * 1000;

pub async fn run(core: Arc<Core>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut head = core.subscribe();
    let mut rules: Option<(u64, RuleSet)> = None;
    let mut last_gc: Option<i64> = None;
    loop {
        if *stop.borrow() {
            return;
        }
        // Retries are looked at again a second after this pass began, at the latest.
        let next_look = core.clock.now_ms() + 1000;
        if last_gc.is_none_or(|t| core.clock.monotonic_ms() - t >= 3_600_000) {
            last_gc = Some(core.clock.monotonic_ms());
            match core
                .store
                .gc_dedup(core.clock.now_ms() - DEDUP_TTL_MS)
                .await
            {
                Ok(0) => {}
                Ok(n) => info!(removed = n, "old dedup records forgotten"),
                Err(e) => warn!(error = %e, "dedup GC failed"),
            }
        }
        let version = core.rules_version();
        if rules.as_ref().is_none_or(|(v, _)| *v != version) {
            match core.store.rules.list() {
                Ok(all) => {
                    let (set, skipped) = RuleSet::new(all);
                    for (rule, e) in skipped {
                        // Checked when put; a stored rule that no longer compiles is skipped.
                        warn!(%rule, error = %e, "stored rule pattern does not compile; skipped");
                    }
                    rules = Some((version, set));
                }
                Err(e) => warn!(error = %e, "reading rules failed"),
            }
        }
        let Some((_, set)) = &rules else {
            core.clock.sleep(Duration::from_secs(1)).await;
            continue;
        };
        let progressed = match pass(&core, set).await {
            Ok(p) => p,
            Err(e) => {
                warn!(error = %e, "rule dispatch pass failed");
                false
            }
        };
        if let Err(e) = retry_due(&core).await {
            warn!(error = %e, "retrying deliveries failed");
        }
        if progressed {
            continue;
        }
        tokio::select! {
            _ = head.changed() => {}
            _ = core.loops.woken(Loop::Rules) => {}
            _ = stop.changed() => {}
            _ = core.clock.sleep_until(next_look) => {}
        }
    }
}

/// One batch of events after the cursor. Returns whether there were any.
async fn pass(core: &Core, rules: &RuleSet) -> Result<bool, CoreError> {
    let cursor = core.store.bus_cursor()?;
    if rules.is_empty() {
        // No rule to match: move past the batch without decoding it.
        let Some(last) = core.store.last_event_after(cursor.as_deref(), BATCH)? else {
            return Ok(false);
        };
        core.store.advance_bus(&last, &Default::default()).await?;
        return Ok(true);
    }
    let events = core.store.events_after(cursor.as_deref(), BATCH)?;
    let Some(last) = events.last() else {
        return Ok(false);
    };
    let mut matched: std::collections::BTreeMap<String, (u64, i64)> = Default::default();
    // The batch's deliveries are independent (one record each), so they run together and
    // share the store's group commits instead of a flush each, one after another.
    let envelopes: Vec<Value> = events.iter().map(Event::envelope).collect();
    let mut deliveries = Vec::new();
    for (ev, envelope) in events.iter().zip(&envelopes) {
        // A replay for one rule reaches that rule alone.
        let only = ev.replay.as_ref().and_then(|r| r.rule.as_deref());
        for rule in rules.matching(envelope) {
            if only.is_some_and(|r| r != rule.name) {
                continue;
            }
            let m = matched.entry(rule.name.clone()).or_default();
            m.0 += 1;
            m.1 = m.1.max(ev.time_ms);
            for target in &rule.targets {
                deliveries.push(deliver(core, rule, target, ev, envelope));
            }
        }
    }
    let mut running = futures::stream::iter(deliveries).buffer_unordered(CONCURRENT_DELIVERIES);
    while let Some(done) = running.next().await {
        done?;
    }
    core.store.advance_bus(&last.id, &matched).await?;
    Ok(true)
}

/// A first delivery: skipped when already done or owned by the retry loop.
async fn deliver(
    core: &Core,
    rule: &Rule,
    target: &Target,
    ev: &Event,
    envelope: &Value,
) -> Result<(), CoreError> {
    let key = delivery_key(&rule.name, &target.id, &ev.id);
    if core.store.delivered(&key)?.is_some() || core.store.retries.get(&key)?.is_some() {
        return Ok(());
    }
    if let Err(reason) = attempt(core, &key, rule, target, ev, envelope).await? {
        failed(core, &key, rule, target, ev, None, reason).await?;
    } else {
        core.store.count_rule(&rule.name, RuleCounter::Invoked)?;
    }
    Ok(())
}

/// One attempt: Ok(Err(reason)) when the target refused it (to be retried).
async fn attempt(
    core: &Core,
    key: &str,
    rule: &Rule,
    target: &Target,
    ev: &Event,
    envelope: &Value,
) -> Result<Result<(), String>, CoreError> {
    match &target.kind {
        TargetKind::Task {
            task_definition,
            overrides,
            group,
        } => {
            let input =
                skiff_model::transform::render(&target.input, envelope, &rule.name, ev.time_ms);
            let group = if group.is_empty() {
                format!("rule:{}", rule.name)
            } else {
                group.clone()
            };
            let started_by = format!("rule/{}/{}", rule.name, ev.id);
            let task =
                match definition_task(core, task_definition, overrides, group, started_by, input) {
                    Ok(t) => t,
                    Err(reason) => return Ok(Err(reason)),
                };
            match core.create_task_once(key, task).await? {
                Ok(task) => {
                    info!(rule = %rule.name, target = %target.id, event_id = %ev.id, task_id = %task.id, "rule started a task");
                }
                Err(existing) => {
                    info!(rule = %rule.name, event_id = %ev.id, task_id = %existing, "delivery already done");
                }
            }
            Ok(Ok(()))
        }
        TargetKind::Queue(q) => {
            let body =
                skiff_model::transform::render(&target.input, envelope, &rule.name, ev.time_ms);
            crate::queues::send_event(core, key, q, body).await
        }
        TargetKind::Topic(t) => {
            let message =
                skiff_model::transform::render(&target.input, envelope, &rule.name, ev.time_ms);
            crate::notify::publish(core, key, t, &rule.name, &ev.id, message).await
        }
    }
}

/// A task of a definition (`family` = its latest ACTIVE revision, or `family:rev`) with run-time
/// overrides and an input: what a rule's task target or a schedule's fire starts. The error
/// says why it cannot start now (the delivery is then retried).
pub fn definition_task(
    core: &Core,
    reference: &str,
    overrides: &crate::model::Overrides,
    group: String,
    started_by: String,
    input: String,
) -> Result<Task, String> {
    let def = crate::taskdefs::resolve(core, "task_definition", reference)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("no active task definition {reference:?}"))?;
    let mut spec = skiff_model::validate::apply_overrides(def.spec.clone(), overrides)
        .map_err(|e| format!("overrides: {e}"))?;
    core.check_references(&spec).map_err(|e| e.to_string())?;
    spec.input = Some(input);
    Ok(Task::new(
        ulid::Ulid::new().to_string().to_lowercase(),
        Some(def.reference()),
        group,
        started_by,
        spec,
        core.clock.now_ms(),
    ))
}

/// Schedules the next attempt of a failed delivery, or ends it in the dead-letter list.
async fn failed(
    core: &Core,
    key: &str,
    rule: &Rule,
    target: &Target,
    ev: &Event,
    prev: Option<PendingRetry>,
    reason: String,
) -> Result<(), CoreError> {
    core.store.count_rule(&rule.name, RuleCounter::Failed)?;
    let now = core.clock.now_ms();
    let attempts = prev.as_ref().map_or(1, |p| p.attempts + 1);
    let first = prev.as_ref().map_or(now, |p| p.first_attempt_ms);
    let next = Retry::of_policy(&target.retry).after_failure(attempts, ev.time_ms, now, true, 0);
    let Next::At(next_attempt_ms) = next else {
        warn!(rule = %rule.name, target = %target.id, event_id = %ev.id, attempts, %reason, "delivery dead-lettered");
        let dl = DeadLetter {
            id: ulid::Ulid::new().to_string(),
            rule: rule.name.clone(),
            target: target.id.clone(),
            event_id: ev.id.clone(),
            attempts,
            last_error: reason,
            first_attempt_ms: first,
            dead_ms: now,
        };
        dead_letter(core, key, &target.dead_letter_queue, &dl, Some(ev)).await?;
        return Ok(());
    };
    warn!(rule = %rule.name, target = %target.id, event_id = %ev.id, attempts, %reason, "delivery failed; will retry");
    core.store
        .retries
        .put(&PendingRetry {
            rule: rule.name.clone(),
            target: target.id.clone(),
            event_id: ev.id.clone(),
            attempts,
            first_attempt_ms: first,
            next_attempt_ms,
            last_error: reason,
        })
        .await?;
    Ok(())
}

/// Ends a delivery in the dead-letter list and, when its target names one that exists, in
/// its dead-letter queue too (the dead letter with the event), in one transaction.
async fn dead_letter(
    core: &Core,
    key: &str,
    dlq: &str,
    dl: &DeadLetter,
    ev: Option<&Event>,
) -> Result<(), CoreError> {
    let body = serde_json::json!({
        "deadLetter": {
            "rule": dl.rule, "target": dl.target, "eventId": dl.event_id,
            "attempts": dl.attempts, "lastError": dl.last_error,
            "firstAttemptMs": dl.first_attempt_ms, "deadMs": dl.dead_ms,
        },
        "event": ev.map(Event::envelope),
    });
    let message = crate::queues::dead_letter_message(core, dlq, body)?;
    core.store.dead_letter_to(key, dl, message.as_ref()).await?;
    crate::queues::dead_letter_queued(core, message.as_ref());
    Ok(())
}

/// Attempts every delivery whose retry is due.
async fn retry_due(core: &Core) -> Result<(), CoreError> {
    let now = core.clock.now_ms();
    let (due, _) = core.store.retries.due(now, 1024)?;
    for r in due {
        let key = delivery_key(&r.rule, &r.target, &r.event_id);
        let rule = core.store.rules.get(&r.rule)?;
        let target = rule
            .as_ref()
            .and_then(|rule| rule.targets.iter().find(|t| t.id == r.target).cloned());
        let event = core.store.event(&r.event_id)?;
        let (Some(rule), Some(target), Some(ev)) = (&rule, &target, &event) else {
            // The rule, its target or the event is gone: nothing left to deliver to.
            let dl = DeadLetter {
                id: ulid::Ulid::new().to_string(),
                rule: r.rule.clone(),
                target: r.target.clone(),
                event_id: r.event_id.clone(),
                attempts: r.attempts,
                last_error: format!(
                    "{} (then the rule, target or event was removed)",
                    r.last_error
                ),
                first_attempt_ms: r.first_attempt_ms,
                dead_ms: now,
            };
            let dlq = target.as_ref().map_or("", |t| t.dead_letter_queue.as_str());
            dead_letter(core, &key, dlq, &dl, event.as_ref()).await?;
            continue;
        };
        let envelope = ev.envelope();
        if let Err(reason) = attempt(core, &key, rule, target, ev, &envelope).await? {
            failed(core, &key, rule, target, ev, Some(r), reason).await?;
        } else {
            core.store.count_rule(&rule.name, RuleCounter::Invoked)?;
        }
    }
    Ok(())
}
