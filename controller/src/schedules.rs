//! Schedules: the Schedules service and the loop that fires them.
//!
//! Each schedule's next fire time is durable (`schedule_state`), and each fire creates its
//! task through `Store::create_task_once` keyed by (schedule, fire time): a restart at any
//! moment neither loses nor doubles a fire. Fire times missed while the controller was down
//! follow the schedule's catch-up policy (skip, run-once, run-all up to a limit), recorded in
//! its runs either way. A run still going at the next fire time is allowed, skipped (forbid),
//! or stopped with `ServiceSchedulerInitiated` (replace).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use skiff_proto::v1 as pb;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::core::{Core, CoreError};
use crate::lifecycle::{StopCode, TaskEvent};
use crate::model::{
    now_ms, CatchUp, Overlap, Schedule, ScheduleRetry, ScheduleRun, ScheduleState, Task,
};
use crate::schedule::Timing;
use crate::validate;

/// A fire handled this long after its time counts as missed (the catch-up policy applies).
const LATE_MS: i64 = 60_000;
/// The source of the events schedules put on the bus.
pub const SCHEDULER_SOURCE: &str = "skiff.scheduler";
/// Schedules handled at once in a pass.
const CONCURRENT_FIRES: usize = 64;
/// Runs kept per schedule.
const RUNS_KEPT: usize = 20;

fn utc(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

/// A time in the schedule's zone, RFC 3339 (with milliseconds only when it has them).
fn in_zone(t: &Timing, ms: i64) -> String {
    utc(ms)
        .with_timezone(&t.tz)
        .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

/// Where a schedule's fire times count from (rates): its start, else its creation.
fn anchor(s: &Schedule) -> DateTime<Utc> {
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

pub async fn run(core: Arc<Core>) {
    loop {
        // Sleep until the earliest next fire (at most a second: schedules may change).
        let wait_ms = match tick(&core).await {
            Ok(Some(next)) => (next - now_ms()).clamp(0, 1000),
            Ok(None) => 1000,
            Err(e) => {
                warn!(error = %e, "schedules pass failed");
                1000
            }
        };
        tokio::select! {
            _ = core.schedules_kick.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(wait_ms as u64)) => {}
        }
    }
}

/// Fires what is due; returns the earliest moment something is due next.
///
/// Schedules are handled concurrently (each touches only its own state), so the fires due
/// at one moment share the store's group commits instead of queueing behind each other.
async fn tick(core: &Core) -> Result<Option<i64>, CoreError> {
    use futures::StreamExt;
    let now = now_ms();
    let enabled: Vec<Schedule> = core
        .store
        .schedules()?
        .into_iter()
        .filter(|s| s.enabled)
        .collect();
    // Collected first: a lazy map here trips the compiler's higher-ranked lifetime check
    // when the loop is spawned.
    let passes: Vec<_> = enabled.iter().map(|s| handle(core, s, now)).collect();
    let mut passes = futures::stream::iter(passes).buffer_unordered(CONCURRENT_FIRES);
    while let Some(r) = passes.next().await {
        r?;
    }
    drop(passes);
    let mut earliest: Option<i64> = None;
    for s in &enabled {
        if let Some(next) = core.store.schedule_state(&s.name)?.next_fire_ms {
            let at = next + window_offset_ms(&s.name, next, s.flexible_window_secs);
            earliest = Some(earliest.map_or(at, |e: i64| e.min(at)));
        }
    }
    Ok(earliest)
}

/// A run handled now.
fn ran(scheduled_ms: i64, task_id: String, outcome: String) -> ScheduleRun {
    ScheduleRun {
        scheduled_ms,
        fired_ms: now_ms(),
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
    let Ok(timing) = Timing::parse(&s.expression, &s.timezone) else {
        return Ok(()); // checked when put
    };
    let anchor = anchor(s);
    let mut st = core.store.schedule_state(&s.name)?;
    if st.retries.iter().any(|r| r.next_attempt_ms <= now) {
        retry_due(core, s, &timing, &mut st).await?;
        core.store.put_schedule_state(&s.name, &st).await?;
    }
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
            ran(missed[0], String::new(), format!(
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
    timing: &Timing,
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
        record(st, ran(scheduled, String::new(), format!("{outcome} {id}")));
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
                                scheduled,
                                String::new(),
                                format!("skipped-overlap: task {prev} still running"),
                            ),
                        );
                        return Ok(());
                    }
                    Overlap::Replace => {
                        let reason = format!("replaced by the run of {when}");
                        let (t, _) = core
                            .transition(
                                &prev,
                                TaskEvent::StopRequested {
                                    code: StopCode::ServiceSchedulerInitiated,
                                    reason: reason.clone(),
                                },
                            )
                            .await?;
                        if let Some(node) = &t.node_id {
                            let _ = crate::agents::stop_on_agent(
                                core,
                                node,
                                &prev,
                                StopCode::ServiceSchedulerInitiated,
                                &reason,
                            )
                            .await;
                        }
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
            let key = format!("schedule\0{}\0{scheduled}", s.name);
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
            let now = now_ms();
            let retry = ScheduleRetry {
                scheduled_ms: scheduled,
                attempts: 1,
                first_attempt_ms: now,
                next_attempt_ms: now + crate::bus::backoff_ms(1),
                last_error: reason.clone(),
            };
            if s.retry.max_attempts <= 1 {
                dead_letter(core, s, &when, &retry).await?;
                (String::new(), format!("dead-lettered: {reason}"))
            } else {
                st.retries.push(retry);
                (String::new(), format!("failed (will retry): {reason}"))
            }
        }
    };
    record(st, ran(scheduled, outcome.0, outcome.1));
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
    let key = format!("schedule\0{}\0{scheduled}", s.name);
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
    let key = format!("schedule\0{}\0{}", s.name, r.scheduled_ms);
    let dl = crate::model::DeadLetter {
        id: ulid::Ulid::new().to_string(),
        rule: format!("schedule:{}", s.name),
        target: "task".into(),
        event_id: when.to_string(),
        attempts: r.attempts,
        last_error: r.last_error.clone(),
        first_attempt_ms: r.first_attempt_ms,
        dead_ms: now_ms(),
    };
    core.store.dead_letter(&key, &dl).await?;
    Ok(())
}

/// Attempts again the fires whose retry is due.
async fn retry_due(
    core: &Core,
    s: &Schedule,
    timing: &Timing,
    st: &mut ScheduleState,
) -> Result<(), CoreError> {
    let now = now_ms();
    let mut still = Vec::new();
    for mut r in std::mem::take(&mut st.retries) {
        if r.next_attempt_ms > now {
            still.push(r);
            continue;
        }
        let when = in_zone(timing, r.scheduled_ms);
        match task_for(core, s, &when) {
            Ok(task) => {
                let key = format!("schedule\0{}\0{}", s.name, r.scheduled_ms);
                let id = match core.create_task_once(&key, task).await? {
                    Ok(t) => t.id,
                    Err(existing) => existing,
                };
                info!(schedule = %s.name, %when, task_id = %id, attempts = r.attempts + 1, "schedule fired on retry");
                record(st, ran(r.scheduled_ms, id, "started".into()));
            }
            Err(reason) => {
                r.attempts += 1;
                r.last_error = reason.clone();
                let too_old = now - r.scheduled_ms >= i64::from(s.retry.max_event_age_secs) * 1000;
                if r.attempts >= s.retry.max_attempts || too_old {
                    dead_letter(core, s, &when, &r).await?;
                    record(
                        st,
                        ran(
                            r.scheduled_ms,
                            String::new(),
                            format!("dead-lettered after {} attempts: {reason}", r.attempts),
                        ),
                    );
                } else {
                    r.next_attempt_ms = now + crate::bus::backoff_ms(r.attempts);
                    still.push(r);
                }
            }
        }
    }
    st.retries = still;
    Ok(())
}

fn task_for(core: &Core, s: &Schedule, when: &str) -> Result<Task, String> {
    let group = if s.group.is_empty() {
        format!("schedule:{}", s.name)
    } else {
        s.group.clone()
    };
    let input = serde_json::json!({"schedule": s.name, "scheduledTime": when, "firedTime": rfc(Some(now_ms()))});
    crate::bus::definition_task(
        core,
        &s.task_definition,
        &s.overrides,
        group,
        format!("schedule/{}/{when}", s.name),
        input.to_string(),
    )
}

fn parse_time(field: &str, s: &str) -> Result<Option<i64>, Status> {
    if s.is_empty() {
        return Ok(None);
    }
    DateTime::parse_from_rfc3339(s)
        .map(|t| Some(t.timestamp_millis()))
        .map_err(|e| Status::invalid_argument(format!("{field}: {s:?} is not RFC 3339 ({e})")))
}

/// Checks a schedule as the API receives it.
pub fn from_pb(core: &Core, s: &pb::Schedule) -> Result<Schedule, Status> {
    let invalid = |e: String| Status::invalid_argument(e);
    validate::check_name("name", &s.name).map_err(|e| invalid(e.to_string()))?;
    Timing::parse(&s.expression, &s.timezone).map_err(|e| invalid(e.to_string()))?;
    let overlap = match s.overlap.as_str() {
        "" | "forbid" => Overlap::Forbid,
        "allow" => Overlap::Allow,
        "replace" => Overlap::Replace,
        o => {
            return Err(invalid(format!(
                "overlap: {o:?}: use allow, forbid or replace"
            )))
        }
    };
    let catch_up = match s.catch_up.as_str() {
        "" | "run-once" => CatchUp::RunOnce,
        "skip" => CatchUp::Skip,
        "run-all" => CatchUp::RunAll,
        c => {
            return Err(invalid(format!(
                "catch_up: {c:?}: use skip, run-once or run-all"
            )))
        }
    };
    if s.catch_up_limit > 1000 {
        return Err(invalid("catch_up_limit: at most 1000".into()));
    }
    if s.flexible_window_seconds > 86_400 {
        return Err(invalid("flexible_window_seconds: at most 86400".into()));
    }
    let start_ms = parse_time("start", &s.start)?;
    let end_ms = parse_time("end", &s.end)?;
    if let (Some(a), Some(b)) = (start_ms, end_ms) {
        if a >= b {
            return Err(invalid("end: must be after start".into()));
        }
    }
    let task = match (&s.task, &s.event) {
        (Some(t), None) => t,
        (None, Some(e)) => return event_schedule(s, e, start_ms, end_ms, catch_up),
        (None, None) => {
            return Err(invalid(
                "task: missing (the task definition to run, or an event to put on the bus)".into(),
            ))
        }
        (Some(_), Some(_)) => {
            return Err(invalid(
                "event: a schedule has one target: a task or an event, not both".into(),
            ))
        }
    };
    // Checked as a rule's task target is: the definition exists, the overrides apply.
    let r = crate::rules_api::from_pb(
        core,
        &pb::Rule {
            name: s.name.clone(),
            pattern_json: "{\"source\": [\"-\"]}".into(),
            targets: vec![pb::Target {
                id: "task".into(),
                kind: Some(pb::target::Kind::Task(task.clone())),
                retry: s.retry,
                ..Default::default()
            }],
            ..Default::default()
        },
    )
    // Its errors name the schedule's fields, not a rule's.
    .map_err(|st| Status::new(st.code(), st.message().replacen("targets[0].", "", 1)))?;
    let crate::model::TargetKind::Task { overrides, .. } = &r.targets[0].kind else {
        unreachable!("built as a task target")
    };
    Ok(Schedule {
        name: s.name.clone(),
        description: s.description.clone(),
        expression: s.expression.trim().to_string(),
        timezone: s.timezone.clone(),
        enabled: s.enabled.unwrap_or(true),
        start_ms,
        end_ms,
        flexible_window_secs: s.flexible_window_seconds,
        overlap,
        catch_up,
        catch_up_limit: if s.catch_up_limit == 0 {
            10
        } else {
            s.catch_up_limit
        },
        task_definition: task.task_definition.clone(),
        overrides: overrides.clone(),
        group: task.group.clone(),
        retry: r.targets[0].retry,
        created_ms: 0,
        updated_ms: 0,
        event: None,
    })
}

/// A schedule whose fires put an event on the bus.
fn event_schedule(
    s: &pb::Schedule,
    e: &pb::ScheduleEvent,
    start_ms: Option<i64>,
    end_ms: Option<i64>,
    catch_up: CatchUp,
) -> Result<Schedule, Status> {
    let invalid = |e: String| Status::invalid_argument(e);
    if !s.overlap.is_empty() {
        return Err(invalid(
            "overlap: applies to task targets only (an event has no run to overlap)".into(),
        ));
    }
    if s.retry.is_some() {
        return Err(invalid(
            "retry: applies to task targets only (the rules that match the event have their own)"
                .into(),
        ));
    }
    let detail = if e.detail_json.trim().is_empty() {
        serde_json::json!({})
    } else {
        match serde_json::from_str::<serde_json::Value>(&e.detail_json) {
            Ok(v @ serde_json::Value::Object(_)) => v,
            Ok(_) => return Err(invalid("event.detail: must be a JSON object".into())),
            Err(err) => return Err(invalid(format!("event.detail: not JSON ({err})"))),
        }
    };
    let detail_type = if e.detail_type.is_empty() {
        "Scheduled Event".to_string()
    } else {
        e.detail_type.clone()
    };
    Ok(Schedule {
        name: s.name.clone(),
        description: s.description.clone(),
        expression: s.expression.trim().to_string(),
        timezone: s.timezone.clone(),
        enabled: s.enabled.unwrap_or(true),
        start_ms,
        end_ms,
        flexible_window_secs: s.flexible_window_seconds,
        overlap: Overlap::Allow,
        catch_up,
        catch_up_limit: if s.catch_up_limit == 0 {
            10
        } else {
            s.catch_up_limit
        },
        task_definition: String::new(),
        overrides: Default::default(),
        group: String::new(),
        retry: Default::default(),
        created_ms: 0,
        updated_ms: 0,
        event: Some(crate::model::ScheduleEvent {
            detail_type,
            detail,
        }),
    })
}

fn rfc(ms: Option<i64>) -> String {
    ms.map(|m| utc(m).to_rfc3339_opts(chrono::SecondsFormat::Secs, true))
        .unwrap_or_default()
}

pub fn to_pb(s: &Schedule) -> pb::Schedule {
    pb::Schedule {
        name: s.name.clone(),
        description: s.description.clone(),
        expression: s.expression.clone(),
        timezone: s.timezone.clone(),
        enabled: Some(s.enabled),
        start: rfc(s.start_ms),
        end: rfc(s.end_ms),
        flexible_window_seconds: s.flexible_window_secs,
        overlap: match s.overlap {
            _ if s.event.is_some() => "",
            Overlap::Allow => "allow",
            Overlap::Forbid => "forbid",
            Overlap::Replace => "replace",
        }
        .into(),
        catch_up: match s.catch_up {
            CatchUp::Skip => "skip",
            CatchUp::RunOnce => "run-once",
            CatchUp::RunAll => "run-all",
        }
        .into(),
        catch_up_limit: s.catch_up_limit,
        task: s.event.is_none().then(|| pb::TaskTarget {
            task_definition: s.task_definition.clone(),
            overrides: Some(crate::rules_api::overrides_pb(&s.overrides)),
            group: s.group.clone(),
        }),
        retry: s.event.is_none().then_some(pb::RetryPolicy {
            max_attempts: s.retry.max_attempts,
            max_event_age_seconds: s.retry.max_event_age_secs,
        }),
        created_ms: s.created_ms,
        updated_ms: s.updated_ms,
        event: s.event.as_ref().map(|e| pb::ScheduleEvent {
            detail_type: e.detail_type.clone(),
            detail_json: e.detail.to_string(),
        }),
    }
}

fn status(core: &Core, s: &Schedule) -> Result<pb::ScheduleStatus, Status> {
    let st = core.store.schedule_state(&s.name)?;
    let (next, runs) = match Timing::parse(&s.expression, &s.timezone) {
        Ok(t) => {
            let from = st
                .next_fire_ms
                .map_or_else(|| utc(now_ms()), |n| utc(n - 1));
            let next = t
                .upcoming(from, anchor(s), 5)
                .into_iter()
                .filter(|x| s.end_ms.is_none_or(|e| x.timestamp_millis() <= e))
                .map(|x| in_zone(&t, x.timestamp_millis()))
                .collect();
            let runs = st
                .runs
                .iter()
                .rev()
                .map(|r| {
                    let outcome = match core.store.task(&r.task_id) {
                        Ok(Some(task)) if r.outcome.starts_with("started") => {
                            let code = task
                                .containers
                                .first()
                                .and_then(|c| c.exit_code)
                                .map(|c| format!(", exit {c}"))
                                .unwrap_or_default();
                            let late = if r.outcome == "started-catch-up" {
                                " (catch-up)"
                            } else {
                                ""
                            };
                            format!("{}{code}{late}", task.status.as_str())
                        }
                        _ => r.outcome.clone(),
                    };
                    pb::ScheduleRun {
                        scheduled_time: in_zone(&t, r.scheduled_ms),
                        fired_ms: r.fired_ms,
                        task_id: r.task_id.clone(),
                        outcome,
                    }
                })
                .collect();
            (next, runs)
        }
        Err(_) => (vec![], vec![]),
    };
    Ok(pb::ScheduleStatus {
        schedule: Some(to_pb(s)),
        next_fire_times: if s.enabled { next } else { vec![] },
        runs,
    })
}

pub struct SchedulesApi {
    pub core: Arc<Core>,
}

#[tonic::async_trait]
impl pb::schedules_server::Schedules for SchedulesApi {
    async fn put(&self, req: Request<pb::Schedule>) -> Result<Response<pb::Schedule>, Status> {
        let mut s = from_pb(&self.core, req.get_ref())?;
        let old = self.core.store.schedule(&s.name)?;
        let now = now_ms();
        s.created_ms = old.as_ref().map_or(now, |o| o.created_ms);
        s.updated_ms = now;
        self.core.store.put_schedule(&s).await?;
        self.core.schedules_kick.notify_one();
        Ok(Response::new(to_pb(&s)))
    }

    async fn describe(
        &self,
        req: Request<pb::ScheduleRef>,
    ) -> Result<Response<pb::ScheduleStatus>, Status> {
        let name = &req.get_ref().name;
        let s = self
            .core
            .store
            .schedule(name)?
            .ok_or_else(|| Status::not_found(format!("name: no schedule {name:?}")))?;
        Ok(Response::new(status(&self.core, &s)?))
    }

    async fn list(
        &self,
        _: Request<pb::ListSchedulesRequest>,
    ) -> Result<Response<pb::ListSchedulesResponse>, Status> {
        let schedules = self
            .core
            .store
            .schedules()?
            .iter()
            .map(|s| status(&self.core, s))
            .collect::<Result<_, _>>()?;
        Ok(Response::new(pb::ListSchedulesResponse { schedules }))
    }

    async fn delete(
        &self,
        req: Request<pb::ScheduleRef>,
    ) -> Result<Response<pb::Schedule>, Status> {
        let name = &req.get_ref().name;
        match self.core.store.delete_schedule(name).await? {
            Some(s) => Ok(Response::new(to_pb(&s))),
            None => Err(Status::not_found(format!("name: no schedule {name:?}"))),
        }
    }

    async fn set_enabled(
        &self,
        req: Request<pb::SetScheduleEnabledRequest>,
    ) -> Result<Response<pb::Schedule>, Status> {
        let r = req.get_ref();
        let mut s = self
            .core
            .store
            .schedule(&r.name)?
            .ok_or_else(|| Status::not_found(format!("name: no schedule {:?}", r.name)))?;
        if s.enabled != r.enabled {
            s.enabled = r.enabled;
            s.updated_ms = now_ms();
            // Re-enabled: counts from now, not from before it was disabled.
            self.core.store.put_schedule(&s).await?;
            self.core.schedules_kick.notify_one();
        }
        Ok(Response::new(to_pb(&s)))
    }
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
