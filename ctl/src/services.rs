//! `skiff services`: task definitions kept running at a desired count — created from a
//! service file, rolled out revision by revision, scaled by hand or on a queue's backlog,
//! and drained when removed.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;
use serde::Deserialize;
use skiff_proto::v1 as pb;

use crate::conn::{api_error, connect};
use crate::output::{self, Format};
use crate::taskdef_file::DurationField;

#[derive(Subcommand)]
pub enum ServicesCmd {
    /// Create a service from a file (service.yaml, .json or .toml); it starts its tasks.
    Create {
        /// The service file.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    /// Change a service: from its file, or just its task definition. A new revision rolls out
    /// within the service's minimum healthy and maximum percent.
    Update {
        /// The service's name (with --task-definition or --force-new-deployment).
        name: Option<String>,
        /// The changed service file.
        #[arg(short = 'f', long = "file", conflicts_with = "name")]
        file: Option<PathBuf>,
        /// Deploy this task definition (family = its latest ACTIVE revision, or family:rev).
        #[arg(long = "task-definition", requires = "name")]
        task_definition: Option<String>,
        /// Replace every task even if the revision did not change.
        #[arg(long = "force-new-deployment")]
        force_new_deployment: bool,
    },
    /// Set how many tasks a service keeps running.
    Scale {
        /// The service's name.
        name: String,
        /// The desired count.
        desired: u32,
    },
    /// List services with their desired, running and pending counts.
    Ls,
    /// A service: its deployments, tasks, backoff and latest decisions with their inputs.
    Describe {
        /// The service's name.
        name: String,
    },
    /// A service's deployments, newest first.
    Deployments {
        /// The service's name.
        name: String,
    },
    /// Wait until a service is stable: its primary deployment completed, as many tasks running
    /// as desired, no older deployment's task left. Fails at once if the deployment failed or
    /// one of its tasks can never be placed.
    Wait {
        /// The service's name.
        name: String,
        /// Give up after this long (exit code 2).
        #[arg(long, default_value = "5m", value_parser = duration)]
        timeout: std::time::Duration,
    },
    /// Delete a service: its tasks are stopped (SIGTERM, then the stop timeout), then it goes.
    Rm {
        /// The service's name.
        name: String,
    },
    /// Report a backlog observed outside skiff, for services scaling on `external:<name>`.
    ReportBacklog {
        /// external:<name>
        source: String,
        /// Messages waiting.
        #[arg(long)]
        visible: u64,
        /// Messages being worked on.
        #[arg(long = "in-flight", default_value_t = 0)]
        in_flight: u64,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ServiceFile {
    name: String,
    #[serde(default)]
    description: String,
    /// family (its latest ACTIVE revision) or family:rev.
    task_definition: String,
    #[serde(default)]
    desired_count: u32,
    deployment: Option<DeploymentFile>,
    stop_timeout: Option<DurationField>,
    placement: Option<PlacementFile>,
    autoscaling: Option<AutoscalingFile>,
    /// service (default) or task-per-message (one task per message of autoscaling.source).
    #[serde(default)]
    mode: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DeploymentFile {
    minimum_healthy_percent: Option<u32>,
    maximum_percent: Option<u32>,
    circuit_breaker: Option<bool>,
    rollback: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PlacementFile {
    /// "label == value", "label != value", "label in (a, b)", "label not in (a, b)".
    #[serde(default)]
    constraints: Vec<String>,
    #[serde(default)]
    spread: bool,
    /// binpack (default) or spread.
    #[serde(default)]
    strategy: String,
    #[serde(default)]
    spread_over: String,
    #[serde(default)]
    distinct_nodes: bool,
    #[serde(default)]
    preferences: Vec<PreferenceFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PreferenceFile {
    /// As a constraint is written.
    constraint: String,
    weight: u32,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AutoscalingFile {
    /// queue:<name> or external:<name>.
    source: String,
    #[serde(default)]
    min: u32,
    max: u32,
    target_per_task: u32,
    scale_out_cooldown: Option<DurationField>,
    scale_in_cooldown: Option<DurationField>,
    stale_after: Option<DurationField>,
}

fn duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e} (give e.g. 30s, 5m)"))
}

/// Whether the service is stable, or why it never will be (its deployment failed).
fn stable(st: &pb::ServiceStatus) -> Result<bool, String> {
    let Some(primary) = st.deployments.first() else {
        return Ok(false);
    };
    if primary.rollout == "FAILED" {
        return Err(format!(
            "deployment {} of {} failed: {}",
            primary.id, primary.task_definition, primary.reason
        ));
    }
    // A task no connected node can ever fit waits forever: say so now.
    if let Some(t) = st
        .tasks
        .iter()
        .find(|t| t.started_by == primary.id && t.unplaceable)
    {
        return Err(format!(
            "task {} can never be placed: {}",
            t.id, t.status_reason
        ));
    }
    let old_left = st.tasks.iter().any(|t| t.started_by != primary.id);
    Ok(primary.rollout == "COMPLETED" && !old_left && st.running == st.desired && st.pending == 0)
}

fn secs(field: &str, d: Option<DurationField>) -> anyhow::Result<Option<u32>> {
    d.map(|d| u32::try_from(d.seconds(field)?).with_context(|| format!("{field}: too long")))
        .transpose()
}

/// `label == value`, `label != value`, `label in (a, b)` or `label not in (a, b)` (square
/// brackets work too); `field` names it in errors.
pub fn constraint(field: &str, s: &str) -> anyhow::Result<pb::PlacementConstraint> {
    let usage = || {
        anyhow::anyhow!(
            "{field}: {s:?} is not \"label == value\", \"label != value\", \"label in (a, b)\" or \"label not in (a, b)\""
        )
    };
    let list = |l: &str, v: &str, not: bool| -> anyhow::Result<pb::PlacementConstraint> {
        let v = v.trim();
        let inner = v
            .strip_prefix('(')
            .and_then(|v| v.strip_suffix(')'))
            .or_else(|| v.strip_prefix('[').and_then(|v| v.strip_suffix(']')))
            .ok_or_else(usage)?;
        let values: Vec<String> = inner.split(',').map(|x| x.trim().to_string()).collect();
        if values.iter().any(String::is_empty) {
            anyhow::bail!("{field}: {s:?} lists an empty value");
        }
        Ok(pb::PlacementConstraint {
            label: l.trim().to_string(),
            value: String::new(),
            not,
            values,
        })
    };
    if let Some((l, v)) = s.split_once(" not in ") {
        return list(l, v, true);
    }
    if let Some((l, v)) = s.split_once(" in ") {
        return list(l, v, false);
    }
    let (label, value, not) = if let Some((l, v)) = s.split_once("!=") {
        (l, v, true)
    } else if let Some((l, v)) = s.split_once("==") {
        (l, v, false)
    } else {
        return Err(usage());
    };
    if label.trim().is_empty() || value.trim().is_empty() {
        return Err(usage());
    }
    Ok(pb::PlacementConstraint {
        label: label.trim().to_string(),
        value: value.trim().to_string(),
        not,
        values: vec![],
    })
}

pub fn load(path: &Path) -> anyhow::Result<pb::Service> {
    from_file(crate::config::read_definition(path, "service")?)
}

/// A service as its file declares it (also a `service:` document of `skiff apply`).
pub(crate) fn from_file(f: ServiceFile) -> anyhow::Result<pb::Service> {
    Ok(pb::Service {
        name: f.name,
        description: f.description,
        task_definition: f.task_definition,
        desired_count: f.desired_count,
        deployment: f.deployment.map(|d| pb::DeploymentConfig {
            minimum_healthy_percent: d.minimum_healthy_percent,
            maximum_percent: d.maximum_percent,
            circuit_breaker: d.circuit_breaker,
            rollback: d.rollback,
        }),
        stop_timeout_seconds: secs("stop_timeout", f.stop_timeout)?.unwrap_or(0),
        placement: f
            .placement
            .map(|p| -> anyhow::Result<_> {
                Ok(pb::ServicePlacement {
                    constraints: p
                        .constraints
                        .iter()
                        .enumerate()
                        .map(|(i, c)| constraint(&format!("placement.constraints[{i}]"), c))
                        .collect::<anyhow::Result<_>>()?,
                    spread: p.spread,
                    strategy: p.strategy,
                    spread_over: p.spread_over,
                    distinct_nodes: p.distinct_nodes,
                    preferences: p
                        .preferences
                        .iter()
                        .enumerate()
                        .map(|(i, pref)| -> anyhow::Result<_> {
                            Ok(pb::PlacementPreference {
                                constraint: Some(constraint(
                                    &format!("placement.preferences[{i}].constraint"),
                                    &pref.constraint,
                                )?),
                                weight: pref.weight,
                            })
                        })
                        .collect::<anyhow::Result<_>>()?,
                })
            })
            .transpose()?,
        autoscaling: f
            .autoscaling
            .map(|a| -> anyhow::Result<_> {
                Ok(pb::Autoscaling {
                    source: a.source,
                    min: a.min,
                    max: a.max,
                    target_per_task: a.target_per_task,
                    scale_out_cooldown_seconds: secs(
                        "autoscaling.scale_out_cooldown",
                        a.scale_out_cooldown,
                    )?
                    .unwrap_or(0),
                    scale_in_cooldown_seconds: secs(
                        "autoscaling.scale_in_cooldown",
                        a.scale_in_cooldown,
                    )?
                    .unwrap_or(0),
                    stale_after_seconds: secs("autoscaling.stale_after", a.stale_after)?,
                })
            })
            .transpose()?,
        mode: f.mode,
        ..Default::default()
    })
}

fn rows(list: &[pb::ServiceStatus]) -> String {
    let rows = list
        .iter()
        .map(|st| {
            let s = st.service.clone().unwrap_or_default();
            let primary = st.deployments.first();
            vec![
                s.name,
                primary.map_or("-".into(), |d| d.task_definition.clone()),
                st.desired.to_string(),
                st.running.to_string(),
                st.pending.to_string(),
                if st.draining {
                    "DRAINING".into()
                } else {
                    primary.map_or("-".into(), |d| d.rollout.clone())
                },
            ]
        })
        .collect();
    output::table(
        &[
            "NAME",
            "TASK DEFINITION",
            "DESIRED",
            "RUNNING",
            "PENDING",
            "ROLLOUT",
        ],
        rows,
    )
}

fn deployment_rows(st: &pb::ServiceStatus) -> String {
    let rows = st
        .deployments
        .iter()
        .map(|d| {
            vec![
                d.id.clone(),
                d.task_definition.clone(),
                d.status.clone(),
                d.rollout.clone(),
                d.failed_tasks.to_string(),
                output::time(d.created_ms),
                d.reason.clone(),
            ]
        })
        .collect();
    output::table(
        &[
            "ID",
            "TASK DEFINITION",
            "STATUS",
            "ROLLOUT",
            "FAILED",
            "CREATED",
            "REASON",
        ],
        rows,
    )
}

fn describe(st: &pb::ServiceStatus) {
    let s = st.service.clone().unwrap_or_default();
    println!("name:            {}", s.name);
    if !s.description.is_empty() {
        println!("description:     {}", s.description);
    }
    println!("task definition: {}", s.task_definition);
    if s.mode == "task-per-message" {
        println!("mode:            task-per-message (one task per message)");
    }
    println!(
        "desired:         {}{}",
        st.desired,
        if st.draining { " (draining)" } else { "" }
    );
    println!("running:         {}", st.running);
    println!("pending:         {}", st.pending);
    if let Some(a) = &s.autoscaling {
        println!(
            "autoscaling:     {} min {} max {} target {} per task (cooldowns out {}s, in {}s)",
            a.source,
            a.min,
            a.max,
            a.target_per_task,
            a.scale_out_cooldown_seconds,
            a.scale_in_cooldown_seconds
        );
    }
    if let Some(b) = &st.backlog {
        println!(
            "backlog:         {} visible, {} in flight (observed {})",
            b.visible,
            b.in_flight,
            output::time(b.observed_ms)
        );
    }
    if st.consecutive_failures > 0 {
        println!(
            "backing off:     {} failure(s) in a row; next start not before {}",
            st.consecutive_failures,
            output::time(st.backoff_until_ms)
        );
        println!("last failure:    {}", st.last_failure);
    }
    println!("\ndeployments:\n{}", deployment_rows(st));
    let tasks = st
        .tasks
        .iter()
        .map(|t| {
            vec![
                t.id.clone(),
                t.task_definition.clone(),
                t.last_status.clone(),
                t.desired_status.clone(),
                t.node_id.clone(),
            ]
        })
        .collect();
    println!(
        "\ntasks:\n{}",
        output::table(
            &["ID", "TASK DEFINITION", "STATUS", "DESIRED", "NODE"],
            tasks
        )
    );
    let decisions = st
        .decisions
        .iter()
        .map(|d| vec![output::time(d.at_ms), d.action.clone(), d.message.clone()])
        .collect();
    println!(
        "\ndecisions:\n{}",
        output::table(&["AT", "ACTION", "WHY"], decisions)
    );
}

pub async fn services(addr: &str, fmt: Format, cmd: ServicesCmd) -> anyhow::Result<i32> {
    let mut c = pb::services_client::ServicesClient::new(connect(addr).await?);
    let service_ref = |name: String| pb::ServiceRef { name };
    let print = |st: &pb::ServiceStatus| match fmt {
        Format::Json => println!("{}", output::json(st)),
        Format::Table => describe(st),
    };
    match cmd {
        ServicesCmd::Create { file } => {
            let svc = load(&file)?;
            match c.describe(service_ref(svc.name.clone())).await {
                Ok(_) => anyhow::bail!(
                    "service {:?} already exists; change it with skiff services update -f {}",
                    svc.name,
                    file.display()
                ),
                Err(s) if s.code() == tonic::Code::NotFound => {}
                Err(s) => return Err(api_error(s)),
            }
            let st = c
                .put(pb::PutServiceRequest {
                    service: Some(svc),
                    force_new_deployment: false,
                })
                .await
                .map_err(api_error)?
                .into_inner();
            print(&st);
        }
        ServicesCmd::Update {
            name,
            file,
            task_definition,
            force_new_deployment,
        } => {
            let svc = match (file, name) {
                (Some(file), _) => {
                    let svc = load(&file)?;
                    c.describe(service_ref(svc.name.clone()))
                        .await
                        .map_err(|s| match s.code() {
                            tonic::Code::NotFound => anyhow::anyhow!(
                                "no service {:?}; create it with skiff services create -f {}",
                                svc.name,
                                file.display()
                            ),
                            _ => api_error(s),
                        })?;
                    svc
                }
                (None, Some(name)) => {
                    let mut svc = c
                        .describe(service_ref(name))
                        .await
                        .map_err(api_error)?
                        .into_inner()
                        .service
                        .unwrap_or_default();
                    if let Some(td) = task_definition {
                        svc.task_definition = td;
                    }
                    svc
                }
                (None, None) => anyhow::bail!("give -f FILE, or a service's NAME"),
            };
            let st = c
                .put(pb::PutServiceRequest {
                    service: Some(svc),
                    force_new_deployment,
                })
                .await
                .map_err(api_error)?
                .into_inner();
            print(&st);
        }
        ServicesCmd::Scale { name, desired } => {
            let st = c
                .scale(pb::ScaleServiceRequest {
                    name,
                    desired_count: desired,
                })
                .await
                .map_err(api_error)?
                .into_inner();
            print(&st);
        }
        ServicesCmd::Ls => {
            let list = c
                .list(pb::ListServicesRequest {})
                .await
                .map_err(api_error)?
                .into_inner();
            match fmt {
                Format::Json => println!("{}", output::json(&list.services)),
                Format::Table => println!("{}", rows(&list.services)),
            }
        }
        ServicesCmd::Describe { name } => {
            let st = c
                .describe(service_ref(name))
                .await
                .map_err(api_error)?
                .into_inner();
            print(&st);
        }
        ServicesCmd::Deployments { name } => {
            let st = c
                .describe(service_ref(name))
                .await
                .map_err(api_error)?
                .into_inner();
            match fmt {
                Format::Json => println!("{}", output::json(&st.deployments)),
                Format::Table => println!("{}", deployment_rows(&st)),
            }
        }
        ServicesCmd::Wait { name, timeout } => {
            let deadline = std::time::Instant::now() + timeout;
            loop {
                let st = c
                    .describe(service_ref(name.clone()))
                    .await
                    .map_err(api_error)?
                    .into_inner();
                match stable(&st) {
                    Ok(true) => {
                        match fmt {
                            Format::Json => println!("{}", output::json(&st)),
                            Format::Table => println!(
                                "{name}: stable, {} running ({})",
                                st.running, st.deployments[0].task_definition
                            ),
                        }
                        return Ok(0);
                    }
                    Ok(false) => {}
                    Err(why) => anyhow::bail!("{name} will not become stable: {why}"),
                }
                if std::time::Instant::now() >= deadline {
                    eprintln!(
                        "{name}: not stable after {}: {} of {} running",
                        humantime::format_duration(timeout),
                        st.running,
                        st.desired
                    );
                    return Ok(2);
                }
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
        }
        ServicesCmd::Rm { name } => {
            let st = c
                .delete(service_ref(name.clone()))
                .await
                .map_err(api_error)?
                .into_inner();
            match fmt {
                Format::Json => println!("{}", output::json(&st)),
                Format::Table => println!(
                    "{name}: draining {} task(s); deleted once they stop",
                    st.tasks.len()
                ),
            }
        }
        ServicesCmd::ReportBacklog {
            source,
            visible,
            in_flight,
        } => {
            let b = c
                .report_backlog(pb::ReportBacklogRequest {
                    source,
                    visible,
                    in_flight,
                    observed_ms: 0,
                })
                .await
                .map_err(api_error)?
                .into_inner();
            match fmt {
                Format::Json => println!("{}", output::json(&b)),
                Format::Table => println!(
                    "{}: {} visible, {} in flight",
                    b.source, b.visible, b.in_flight
                ),
            }
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::constraint;

    #[test]
    fn constraints_are_read_as_operators_write_them() {
        let c = constraint("c", "node.labels.disk == ssd").unwrap();
        assert_eq!(
            (c.label.as_str(), c.value.as_str(), c.not),
            ("node.labels.disk", "ssd", false)
        );
        let c = constraint("c", "zone != west").unwrap();
        assert!(c.not);
        let c = constraint("c", "disk in (ssd, nvme)").unwrap();
        assert_eq!(c.values, ["ssd", "nvme"]);
        assert!(!c.not);
        let c = constraint("c", "rack not in [r1,r2]").unwrap();
        assert_eq!((c.label.as_str(), c.not), ("rack", true));
        assert_eq!(c.values, ["r1", "r2"]);
        for bad in [
            "disk",
            "disk in ssd",
            "disk in (ssd, )",
            "== ssd",
            "disk ==",
        ] {
            let e = constraint("placement.constraints[2]", bad)
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("placement.constraints[2]: "), "{bad}: {e}");
        }
    }
}
