//! `skiff schedules`: cron, rate and at schedules that run a task.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;
use serde::Deserialize;
use skiff_proto::v1 as pb;

use crate::conn::{api_error, connect};
use crate::output::{self, Format};
use crate::rules::TaskTargetFile;
use crate::taskdef_file::DurationField;

#[derive(Subcommand)]
pub enum SchedulesCmd {
    /// Create or replace a schedule from a file (schedule.yaml, .json or .toml).
    Put {
        /// The schedule file.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    /// List schedules with their next fire time.
    Ls,
    /// A schedule, its next 5 fire times (in its zone) and its last runs.
    Describe {
        /// The schedule's name.
        name: String,
    },
    /// Delete a schedule (runs already started go on).
    Rm {
        /// The schedule's name.
        name: String,
    },
    /// Enable a schedule: it fires again from now on.
    Enable {
        /// The schedule's name.
        name: String,
    },
    /// Disable a schedule: it keeps its settings but does not fire.
    Disable {
        /// The schedule's name.
        name: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ScheduleFile {
    name: String,
    #[serde(default)]
    description: String,
    /// cron(...), rate(...) or at(...).
    expression: String,
    #[serde(default)]
    timezone: String,
    enabled: Option<bool>,
    #[serde(default)]
    start: String,
    #[serde(default)]
    end: String,
    flexible_window: Option<DurationField>,
    #[serde(default)]
    overlap: String,
    #[serde(default)]
    catch_up: String,
    #[serde(default)]
    catch_up_limit: u32,
    /// The task each fire runs, or else:
    task: Option<TaskTargetFile>,
    /// the event each fire puts on the bus (for rules to route).
    event: Option<EventFile>,
    /// When a fire's task cannot start: {max_attempts, max_event_age}.
    retry: Option<crate::rules::RetryFile>,
    /// A queue that also gets each fire that ran out of attempts.
    #[serde(default)]
    dead_letter_queue: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct EventFile {
    #[serde(default)]
    detail_type: String,
    /// Any mapping; sent as the event's detail.
    detail: Option<serde_json::Value>,
}

pub fn load(path: &Path) -> anyhow::Result<pb::Schedule> {
    from_file(crate::config::read_definition(path, "schedule")?)
}

/// A schedule as its file declares it (also a `schedule:` document of `skiff apply`).
pub(crate) fn from_file(f: ScheduleFile) -> anyhow::Result<pb::Schedule> {
    Ok(pb::Schedule {
        name: f.name,
        description: f.description,
        expression: f.expression,
        timezone: f.timezone,
        enabled: f.enabled,
        start: f.start,
        end: f.end,
        flexible_window_seconds: match f.flexible_window {
            Some(d) => {
                u32::try_from(d.seconds("flexible_window")?).context("flexible_window: too long")?
            }
            None => 0,
        },
        overlap: f.overlap,
        catch_up: f.catch_up,
        catch_up_limit: f.catch_up_limit,
        task: f
            .task
            .map(|t| crate::rules::task_target("task", t))
            .transpose()?,
        event: f.event.map(|e| pb::ScheduleEvent {
            detail_type: e.detail_type,
            detail_json: e.detail.map(|d| d.to_string()).unwrap_or_default(),
        }),
        retry: f
            .retry
            .map(|r| crate::rules::retry_policy("retry", r))
            .transpose()?,
        dead_letter_queue: f.dead_letter_queue,
        ..Default::default()
    })
}

fn print(fmt: Format, list: &[pb::ScheduleStatus], detailed: bool) {
    if fmt == Format::Json {
        println!("{}", output::json(&list));
        return;
    }
    let rows = list
        .iter()
        .map(|st| {
            let s = st.schedule.clone().unwrap_or_default();
            vec![
                s.name,
                s.expression,
                if s.timezone.is_empty() {
                    "UTC".into()
                } else {
                    s.timezone
                },
                if s.enabled.unwrap_or(true) {
                    "enabled"
                } else {
                    "disabled"
                }
                .into(),
                st.next_fire_times
                    .first()
                    .cloned()
                    .unwrap_or_else(|| "-".into()),
                match (s.task, s.event) {
                    (Some(t), _) => t.task_definition,
                    (None, Some(e)) => format!("event: {}", e.detail_type),
                    (None, None) => String::new(),
                },
            ]
        })
        .collect();
    println!(
        "{}",
        output::table(
            &["NAME", "EXPRESSION", "ZONE", "STATE", "NEXT", "TARGET"],
            rows
        )
    );
    if detailed {
        for st in list {
            println!("\nnext fire times:");
            for t in &st.next_fire_times {
                println!("  {t}");
            }
            let rows = st
                .runs
                .iter()
                .map(|r| {
                    vec![
                        r.scheduled_time.clone(),
                        r.task_id.clone(),
                        r.outcome.clone(),
                    ]
                })
                .collect();
            println!(
                "\nlast runs:\n{}",
                output::table(&["SCHEDULED", "TASK", "OUTCOME"], rows)
            );
        }
    }
}

pub async fn schedules(addr: &str, fmt: Format, cmd: SchedulesCmd) -> anyhow::Result<i32> {
    let mut c = pb::schedules_client::SchedulesClient::new(connect(addr).await?);
    let describe = |name: String| pb::ScheduleRef { name };
    let enable = matches!(cmd, SchedulesCmd::Enable { .. });
    match cmd {
        SchedulesCmd::Put { file } => {
            let s = c.put(load(&file)?).await.map_err(api_error)?.into_inner();
            let st = c
                .describe(describe(s.name))
                .await
                .map_err(api_error)?
                .into_inner();
            print(fmt, &[st], false);
        }
        SchedulesCmd::Ls => {
            let r = c
                .list(pb::ListSchedulesRequest {})
                .await
                .map_err(api_error)?
                .into_inner();
            print(fmt, &r.schedules, false);
        }
        SchedulesCmd::Describe { name } => {
            let st = c
                .describe(describe(name))
                .await
                .map_err(api_error)?
                .into_inner();
            print(fmt, &[st], true);
        }
        SchedulesCmd::Rm { name } => {
            c.delete(describe(name.clone())).await.map_err(api_error)?;
            crate::output::deleted(fmt, &name);
        }
        SchedulesCmd::Enable { name } | SchedulesCmd::Disable { name } => {
            c.set_enabled(pb::SetScheduleEnabledRequest {
                name: name.clone(),
                enabled: enable,
            })
            .await
            .map_err(api_error)?;
            let st = c
                .describe(describe(name))
                .await
                .map_err(api_error)?
                .into_inner();
            print(fmt, &[st], false);
        }
    }
    Ok(0)
}
