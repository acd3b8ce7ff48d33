//! Schedules: their operations (put, delete, enable — what the Schedules service calls) and
//! the loop that fires them.
//!
//! Each schedule's next fire time is durable (`schedule_state`), and each fire creates its
//! task through `Store::create_task_once` keyed by (schedule, fire time): a restart at any
//! moment neither loses nor doubles a fire. A fire whose task could not start waits in the
//! `schedule_retries` due table for its next attempt (the retry policy decides when, and
//! when it is a dead letter instead). Fire times missed while the controller was down
//! follow the schedule's catch-up policy (skip, run-once, run-all up to a limit), recorded in
//! its runs either way. A run still going at the next fire time is allowed, skipped (forbid),
//! or stopped with `ServiceSchedulerInitiated` (replace).

use std::sync::Arc;

use chrono::{DateTime, TimeZone, Utc};
use tracing::{info, warn};

use crate::core::{Core, CoreError};
use crate::model::{
    schedule_fire_key, CatchUp, Overlap, Schedule, ScheduleRetry, ScheduleRun, ScheduleState, Task,
};
use crate::wake::Loop;
use skiff_model::cron::Expression;
use skiff_model::lifecycle::StopCode;
use skiff_model::retry::{Next, Retry};

/// A fire handled this long after its time counts as missed (the catch-up policy applies).
const LATE_MS: i64 = 60_000;
/// The source of the events schedules put on the bus.
pub const SCHEDULER_SOURCE: &str = "skiff.scheduler";
/// Schedules handled at once in a pass. Enough that a few hundred due together are prepared
/// at once, so their creations share one transaction and their tasks one placement pass
/// (at 64, 100 due together went in two rounds, the second waiting for the first's writes).
const CONCURRENT_FIRES: usize = 256;
/// Runs kept per schedule.
const RUNS_KEPT: usize = 20;

pub(crate) fn utc(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

/// A time in the schedule's zone, RFC 3339 (with milliseconds only when it has them).
pub(crate) fn in_zone(t: &Expression, ms: i64) -> String {
    utc(ms)
        .with_timezone(&t.tz)
        .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

/// Where a schedule's fire times count from (rates): its start, else its creation.
pub(crate) fn anchor(s: &Schedule) -> DateTime<Utc> {
    utc(s.start_ms.unwrap_or(s.created_ms))
}

/// A stable offset in [0, window) for one fire time, so a flexible window spreads schedules
/// without making a restart fire at another moment.
fn window_offset_ms(name: &str, scheduled_ms: i64, window_secs: u32) -> i64 {
    if window_secs == 0 {
        return 0;
    }
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    (name, scheduled_ms).hash(&mut h);
    (h.finish() % (u64::from(window_secs) * 1000)) as i64
}

/// Creates or replaces a schedule (checked already), keeping its creation time; it starts
/// over from now (its next fire time is recomputed), and the loop is woken.
pub async fn put(core: &Core, mut s: Schedule) -> Result<Schedule, CoreError> {
    let old = core.store.schedules.get(&s.name)?;
    let now = core.clock.now_ms();
    s.created_ms = old.as_ref().map_or(now, |o| o.created_ms);
    s.updated_ms = now;
    core.store.put_schedule(&s).await?;
    core.loops.wake(Loop::Schedules);
    Ok(s)
}

/// Removes a schedule and its state (next fire time, runs, pending retries).
pub async fn delete(core: &Core, name: &str) -> Result<Option<Schedule>, CoreError> {
    Ok(core.store.delete_schedule(name).await?)
}

/// Enables or disables a schedule; re-enabled, it counts from now, not from before it was
/// disabled. None: no such schedule.
pub async fn set_enabled(
    core: &Core,
    name: &str,
    enabled: bool,
) -> Result<Option<Schedule>, CoreError> {
    let Some(mut s) = core.store.schedules.get(name)? else {
        return Ok(None);
    };
    if s.enabled != enabled {
        s.enabled = enabled;
        s.updated_ms = core.clock.now_ms();
        core.store.put_schedule(&s).await?;
        core.loops.wake(Loop::Schedules);
    }
    Ok(Some(s))
}

pub async fn run(core: Arc<Core>, mut stop: tokio::sync::watch::Receiver<bool>) {
    loop {
        if *stop.borrow() {
            return;
        }
        // Sleep until the earliest next fire (at most a second after this pass began:
        // schedules may change).
        let latest = core.clock.now_ms() + 1000;
        let until = match tick(&core).await {
            Ok(Some(next)) => next.min(latest),
            Ok(None) => latest,
            Err(e) => {
                warn!(error = %e, "schedules pass failed");
                latest
            }
        };
        tokio::select! {
            _ = core.loops.woken(Loop::Schedules) => {}
            _ = stop.changed() => {}
            _ = core.clock.sleep_until(until) => {}
        }
    }
}

/// Fires what is due; returns the earliest moment something is due next.
///
/// Schedules are handled concurrently, each in a task of its own (each touches only its own
/// state): the fires due at one moment share the store's transactions and group commits
/// instead of queueing behind each other, and the work of preparing them (states, task
/// definitions, overlap checks) runs on every core.
async fn tick(core: &Arc<Core>) -> Result<Option<i64>, CoreError> {
    let now = core.clock.now_ms();
    retry_due(core, now).await?;
    let enabled: Vec<Schedule> = core
        .store
        .schedules
        .list()?
        .into_iter()
        .filter(|s| s.enabled)
        .collect();
    let limit = Arc::new(tokio::sync::Semaphore::new(CONCURRENT_FIRES));
    let mut passes = tokio::task::JoinSet::new();
    for s in enabled.clone() {
        let (core, limit) = (core.clone(), limit.clone());
        passes.spawn(async move {
            let _turn = limit.acquire_owned().await;
            handle(&core, &s, now).await
        });
    }
    let mut first_error = None;
    while let Some(done) = passes.join_next().await {
        match done {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                first_error.get_or_insert(e);
            }
            Err(e) => warn!(error = %e, "a schedule's pass panicked"),
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    // A retry due later than now (one due already belongs to a disabled schedule, and waits
    // for it to be enabled).
    let mut earliest: Option<i64> = core.store.schedule_retries.next_due()?.filter(|t| *t > now);
    for s in &enabled {
        if let Some(next) = core.store.schedule_state(&s.name)?.next_fire_ms {
            let at = next + window_offset_ms(&s.name, next, s.flexible_window_secs);
            earliest = Some(earliest.map_or(at, |e: i64| e.min(at)));
        }
    }
    Ok(earliest)
}

/// A run handled now.
fn ran(core: &Core, scheduled_ms: i64, task_id: String, outcome: String) -> ScheduleRun {
    ScheduleRun {
        scheduled_ms,
        fired_ms: core.clock.now_ms(),
        task_id,
        outcome,
    }
}

fn record(st: &mut ScheduleState, run: ScheduleRun) {
    st.runs.push(run);
    if st.runs.len() > RUNS_KEPT {
        let extra = st.runs.len() - RUNS_KEPT;
        st.runs.drain(..extra);
    }
}

async fn handle(core: &Core, s: &Schedule, now: i64) -> Result<(), CoreError> {
    let Ok(timing) = Expression::parse(&s.expression, &s.timezone) else {
        return Ok(()); // checked when put
    };
    let anchor = anchor(s);
    let mut st = core.store.schedule_state(&s.name)?;
    let next = match st.next_fire_ms {
        Some(n) => n,
        None => {
            // First sight (or just changed): the first fire time after now; a start date still
            // ahead is itself a fire time. (A rate never fires at the moment it is created.)
            let from = match s.start_ms {
                Some(start) if start > now => utc(start - 1),
                _ => utc(now),
            };
            let Some(t) = timing.next_after(from, anchor) else {
                return Ok(());
            };
            st.next_fire_ms = Some(t.timestamp_millis());
            core.store.put_schedule_state(&s.name, &st).await?;
            t.timestamp_millis()
        }
    };
    if now < next + window_offset_ms(&s.name, next, s.flexible_window_secs) {
        return Ok(());
    }
    // Every fire time up to now, from the first one not yet handled.
    let mut due = vec![next];
    let mut t = utc(next);
    while let Some(n) = timing.next_after(t, anchor) {
        if n.timestamp_millis() > now || due.len() >= 100_000 {
            break;
        }
        due.push(n.timestamp_millis());
        t = n;
    }
    let following = timing
        .next_after(utc(*due.last().unwrap()), anchor)
        .map(|t| t.timestamp_millis());
    let due: Vec<i64> = due
        .into_iter()
        .filter(|t| s.end_ms.is_none_or(|end| *t <= end))
        .collect();
    // Behind: more than one fire time due at once, or one long past. Then every due fire
    // time was missed and the catch-up policy decides.
    let late_after = LATE_MS + i64::from(s.flexible_window_secs) * 1000;
    let behind = due.len() > 1 || due.first().is_some_and(|t| now - t > late_after);
    let (missed, on_time): (Vec<i64>, Vec<i64>) = if behind {
        (due.clone(), vec![])
    } else {
        (vec![], due.clone())
    };
    let fire_missed: Vec<i64> = match s.catch_up {
        CatchUp::Skip => vec![],
        CatchUp::RunOnce => missed.last().copied().into_iter().collect(),
        CatchUp::RunAll => {
            let keep = missed.len().min(s.catch_up_limit as usize);
            missed[missed.len() - keep..].to_vec()
        }
    };
    let skipped = missed.len() - fire_missed.len();
    if skipped > 0 {
        warn!(schedule = %s.name, skipped, policy = ?s.catch_up, "fire times missed while down");
        record(
            &mut st,
            ran(core, missed[0], String::new(), format!(
                    "skipped-catch-up: {skipped} fire time(s) from {} missed while the controller was down",
                    in_zone(&timing, missed[0])
                )),
        );
    }
    for scheduled in fire_missed {
        fire(core, s, &timing, scheduled, true, &mut st).await?;
    }
    for scheduled in on_time {
        fire(core, s, &timing, scheduled, false, &mut st).await?;
    }
    st.next_fire_ms = following.filter(|t| s.end_ms.is_none_or(|end| *t <= end));
    core.store.put_schedule_state(&s.name, &st).await?;
    Ok(())
}

async fn fire(
    core: &Core,
    s: &Schedule,
    timing: &Expression,
    scheduled: i64,
    catching_up: bool,
    st: &mut ScheduleState,
) -> Result<(), CoreError> {
    let when = in_zone(timing, scheduled);
    if let Some(ev) = &s.event {
        let id = put_event(core, s, ev, &when, scheduled).await?;
        let outcome = if catching_up {
            "event-catch-up"
        } else {
            "event"
        };
        info!(schedule = %s.name, %when, event_id = %id, catching_up, "schedule fired");
        record(
            st,
            ran(core, scheduled, String::new(), format!("{outcome} {id}")),
        );
        return Ok(());
    }
    let previous = st
        .runs
        .iter()
        .rev()
        .find(|r| !r.task_id.is_empty())
        .map(|r| r.task_id.clone());
    if let Some(prev) = previous {
        if let Some(task) = core.store.task(&prev)? {
            if task.status.is_active() {
                match s.overlap {
                    Overlap::Allow => {}
                    Overlap::Forbid => {
                        info!(schedule = %s.name, %when, previous = %prev, "skipped: the previous run is still going");
                        record(
                            st,
                            ran(
                                core,
                                scheduled,
                                String::new(),
                                format!("skipped-overlap: task {prev} still running"),
                            ),
                        );
                        return Ok(());
                    }
                    Overlap::Replace => {
                        let reason = format!("replaced by the run of {when}");
                        core.stop_task(&prev, StopCode::ServiceSchedulerInitiated, reason)
                            .await?;
                    }
                }
            }
        }
    }
    let started = if catching_up {
        "started-catch-up"
    } else {
        "started"
    };
    let outcome = match task_for(core, s, &when) {
        Ok(task) => {
            let key = schedule_fire_key(&s.name, scheduled);
            match core.create_task_once(&key, task).await? {
                Ok(t) => {
                    info!(schedule = %s.name, %when, task_id = %t.id, catching_up, "schedule fired");
                    (t.id, started.to_string())
                }
                Err(existing) => (existing, started.to_string()),
            }
        }
        Err(reason) => {
            warn!(schedule = %s.name, %when, %reason, "schedule could not start its task");
            let now = core.clock.now_ms();
            let next = Retry::of_policy(&s.retry).after_failure(1, scheduled, now, true, 0);
            let retry = ScheduleRetry {
                schedule: s.name.clone(),
                scheduled_ms: scheduled,
                attempts: 1,
                first_attempt_ms: now,
                next_attempt_ms: match next {
                    Next::At(t) => t,
                    _ => now,
                },
                last_error: reason.clone(),
            };
            if !matches!(next, Next::At(_)) {
                dead_letter(core, s, &when, &retry).await?;
                (String::new(), format!("dead-lettered: {reason}"))
            } else {
                core.store.schedule_retries.put(&retry).await?;
                (String::new(), format!("failed (will retry): {reason}"))
            }
        }
    };
    record(st, ran(core, scheduled, outcome.0, outcome.1));
    Ok(())
}

/// Puts a fire's event on the bus, once per fire time (a restart mid-fire finds it there).
async fn put_event(
    core: &Core,
    s: &Schedule,
    ev: &crate::model::ScheduleEvent,
    when: &str,
    scheduled: i64,
) -> Result<String, CoreError> {
    let key = schedule_fire_key(&s.name, scheduled);
    let mut detail = ev.detail.clone();
    if let Some(o) = detail.as_object_mut() {
        o.insert("schedule".into(), s.name.clone().into());
        o.insert("scheduledTime".into(), when.into());
    }
    let appended = core
        .store
        .append_event_once(Some(&key), None, |id| crate::model::Event {
            id,
            source: SCHEDULER_SOURCE.into(),
            detail_type: ev.detail_type.clone(),
            replay: None,
            time_ms: scheduled,
            resources: vec![format!("schedule/{}", s.name)],
            detail,
        })
        .await?;
    Ok(match appended {
        Some(e) => {
            core.events_appended();
            e.id
        }
        None => core.store.event_once(&key)?.unwrap_or_default(),
    })
}

/// A fire that ran out of attempts: kept with the rule dead letters, as `schedule:<name>`.
async fn dead_letter(
    core: &Core,
    s: &Schedule,
    when: &str,
    r: &ScheduleRetry,
) -> Result<(), CoreError> {
    let key = schedule_fire_key(&s.name, r.scheduled_ms);
    let dl = crate::model::DeadLetter {
        id: ulid::Ulid::new().to_string(),
        rule: format!("schedule:{}", s.name),
        target: "task".into(),
        event_id: when.to_string(),
        attempts: r.attempts,
        last_error: r.last_error.clone(),
        first_attempt_ms: r.first_attempt_ms,
        dead_ms: core.clock.now_ms(),
    };
    let body = serde_json::json!({
        "deadLetter": {
            "schedule": s.name, "scheduledTime": when, "attempts": dl.attempts,
            "lastError": dl.last_error, "firstAttemptMs": dl.first_attempt_ms,
            "deadMs": dl.dead_ms,
        },
        "taskDefinition": s.task_definition,
    });
    let message = crate::queues::dead_letter_message(core, &s.dead_letter_queue, body)?;
    core.store
        .dead_letter_to(&key, &dl, message.as_ref())
        .await?;
    crate::queues::dead_letter_queued(core, message.as_ref());
    Ok(())
}

/// Attempts again the fires whose retry is due (of enabled schedules), through the due
/// table: a fire that starts its task leaves the table in the task's own transaction; one
/// that fails again is due later, or a dead letter.
async fn retry_due(core: &Core, now: i64) -> Result<(), CoreError> {
    let (due, _) = core.store.schedule_retries.due(now, 1024)?;
    for mut r in due {
        let key = schedule_fire_key(&r.schedule, r.scheduled_ms);
        let Some(s) = core.store.schedules.get(&r.schedule)? else {
            // Removed with its schedule; one left from an older data dir goes now.
            core.store.schedule_retries.delete(&key).await?;
            continue;
        };
        let Ok(timing) = Expression::parse(&s.expression, &s.timezone) else {
            continue; // checked when put
        };
        if !s.enabled {
            continue;
        }
        let when = in_zone(&timing, r.scheduled_ms);
        let run = match task_for(core, &s, &when) {
            Ok(task) => {
                let id = match core.create_task_once(&key, task).await? {
                    Ok(t) => t.id,
                    Err(existing) => existing,
                };
                // (The retry left the table in the task's transaction.)
                info!(schedule = %s.name, %when, task_id = %id, attempts = r.attempts + 1, "schedule fired on retry");
                ran(core, r.scheduled_ms, id, "started".into())
            }
            Err(reason) => {
                r.attempts += 1;
                r.last_error = reason.clone();
                let next = Retry::of_policy(&s.retry).after_failure(
                    r.attempts,
                    r.scheduled_ms,
                    now,
                    true,
                    0,
                );
                if let Next::At(t) = next {
                    r.next_attempt_ms = t;
                    core.store.schedule_retries.put(&r).await?;
                    continue;
                }
                dead_letter(core, &s, &when, &r).await?;
                ran(
                    core,
                    r.scheduled_ms,
                    String::new(),
                    format!("dead-lettered after {} attempts: {reason}", r.attempts),
                )
            }
        };
        let mut st = core.store.schedule_state(&s.name)?;
        record(&mut st, run);
        core.store.put_schedule_state(&s.name, &st).await?;
    }
    Ok(())
}

fn task_for(core: &Core, s: &Schedule, when: &str) -> Result<Task, String> {
    let group = if s.group.is_empty() {
        format!("schedule:{}", s.name)
    } else {
        s.group.clone()
    };
    let input = serde_json::json!({"schedule": s.name, "scheduledTime": when, "firedTime": rfc(Some(core.clock.now_ms()))});
    crate::bus::definition_task(
        core,
        &s.task_definition,
        &s.overrides,
        group,
        format!("schedule/{}/{when}", s.name),
        input.to_string(),
    )
}

/// A time as RFC 3339 in UTC ("" for none).
pub(crate) fn rfc(ms: Option<i64>) -> String {
    ms.map(|m| utc(m).to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flexible_windows_spread_fires_and_are_stable() {
        assert_eq!(window_offset_ms("a", 1_000, 0), 0);
        let offsets: Vec<i64> = (0..50)
            .map(|i| window_offset_ms(&format!("s{i}"), 60_000, 300))
            .collect();
        assert!(offsets.iter().all(|o| (0..300_000).contains(o)));
        // Spread, not all in one place; the same fire always gets the same moment.
        assert!(offsets.iter().max().unwrap() - offsets.iter().min().unwrap() > 60_000);
        assert_eq!(window_offset_ms("s1", 60_000, 300), offsets[1]);
    }
}
