//! The Schedules service: checks a schedule as the API receives it, stores it, and describes
//! it with its next fire times and last runs. Firing is `schedules.rs`'s loop.

use std::sync::Arc;

use chrono::DateTime;
use skiff_proto::v1 as pb;
use tonic::{Request, Response, Status};

use crate::core::Core;
use crate::model::{CatchUp, Overlap, Schedule};
use crate::schedules::{anchor, in_zone, rfc, utc};
use skiff_model::cron::Expression;
use skiff_model::validate;

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
    Expression::parse(&s.expression, &s.timezone).map_err(|e| invalid(e.to_string()))?;
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
                dead_letter_queue: s.dead_letter_queue.clone(),
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
        dead_letter_queue: r.targets[0].dead_letter_queue.clone(),
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
    if !s.dead_letter_queue.is_empty() {
        return Err(invalid(
            "dead_letter_queue: applies to task targets only (the rules that match the event have their own)"
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
        dead_letter_queue: String::new(),
    })
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
        dead_letter_queue: s.dead_letter_queue.clone(),
    }
}

fn status(core: &Core, s: &Schedule) -> Result<pb::ScheduleStatus, Status> {
    let st = core.store.schedule_state(&s.name)?;
    let (next, runs) = match Expression::parse(&s.expression, &s.timezone) {
        Ok(t) => {
            let from = st
                .next_fire_ms
                .map_or_else(|| utc(core.clock.now_ms()), |n| utc(n - 1));
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
        let s = from_pb(&self.core, req.get_ref())?;
        if crate::auth::dry_run(&req) {
            return Ok(Response::new(to_pb(&s)));
        }
        let s = crate::schedules::put(&self.core, s).await?;
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
            .schedules
            .get(name)?
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
            .schedules
            .list()?
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
        match crate::schedules::delete(&self.core, name).await? {
            Some(s) => Ok(Response::new(to_pb(&s))),
            None => Err(Status::not_found(format!("name: no schedule {name:?}"))),
        }
    }

    async fn set_enabled(
        &self,
        req: Request<pb::SetScheduleEnabledRequest>,
    ) -> Result<Response<pb::Schedule>, Status> {
        let r = req.get_ref();
        let s = crate::schedules::set_enabled(&self.core, &r.name, r.enabled)
            .await?
            .ok_or_else(|| Status::not_found(format!("name: no schedule {:?}", r.name)))?;
        Ok(Response::new(to_pb(&s)))
    }
}
