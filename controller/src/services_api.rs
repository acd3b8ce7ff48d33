//! The Services service: decodes and checks each request (every error names its field),
//! makes one call to the service operations (`services.rs`), and encodes the answer.

use std::sync::Arc;

use skiff_proto::v1 as pb;
use tonic::{Request, Response, Status};

use crate::convert;
use crate::core::Core;
use crate::model::{
    Autoscaling, Backlog, DeploymentConfig, PlacementConstraint, PlacementPreference,
    PlacementStrategy, Service, ServiceMode, ServicePlacement, ServiceState, Task,
};
use crate::services;
use skiff_model::lifecycle::TaskStatus;
use skiff_model::validate::{self, InvalidField};

/// Seconds after which an external backlog report is not trusted, unless the service says.
const DEFAULT_STALE_AFTER_SECS: u32 = 60;

fn invalid(e: InvalidField) -> Status {
    Status::invalid_argument(e.to_string())
}

fn constraint_from_pb(c: &pb::PlacementConstraint) -> PlacementConstraint {
    PlacementConstraint {
        label: c.label.clone(),
        value: c.value.clone(),
        not: c.not,
        values: c.values.clone(),
    }
}

fn constraint_to_pb(c: &PlacementConstraint) -> pb::PlacementConstraint {
    pb::PlacementConstraint {
        label: c.label.clone(),
        value: c.value.clone(),
        not: c.not,
        values: c.values.clone(),
    }
}

fn from_pb(s: &pb::Service) -> Result<Service, InvalidField> {
    let defaults = DeploymentConfig::default();
    let mode = match s.mode.as_str() {
        "" => ServiceMode::Service,
        m => ServiceMode::parse(m).ok_or_else(|| InvalidField {
            field: "mode".into(),
            problem: format!("{m:?} is not service or task-per-message"),
        })?,
    };
    let d = s.deployment.unwrap_or_default();
    let svc = Service {
        name: s.name.clone(),
        description: s.description.clone(),
        task_definition: s.task_definition.clone(),
        desired_count: s.desired_count,
        deployment: DeploymentConfig {
            minimum_healthy_percent: d
                .minimum_healthy_percent
                .unwrap_or(defaults.minimum_healthy_percent),
            maximum_percent: d.maximum_percent.unwrap_or(defaults.maximum_percent),
            circuit_breaker: d.circuit_breaker.unwrap_or(defaults.circuit_breaker),
            rollback: d.rollback.unwrap_or(defaults.rollback),
        },
        stop_timeout_secs: s.stop_timeout_seconds,
        placement: s
            .placement
            .as_ref()
            .map(|p| -> Result<ServicePlacement, InvalidField> {
                Ok(ServicePlacement {
                    constraints: p.constraints.iter().map(constraint_from_pb).collect(),
                    spread: p.spread,
                    strategy: PlacementStrategy::parse(&p.strategy).ok_or_else(|| {
                        InvalidField {
                            field: "placement.strategy".into(),
                            problem: format!("{:?} is not binpack or spread", p.strategy),
                        }
                    })?,
                    spread_over: p.spread_over.clone(),
                    distinct_nodes: p.distinct_nodes,
                    preferences: p
                        .preferences
                        .iter()
                        .map(|pref| PlacementPreference {
                            constraint: pref
                                .constraint
                                .as_ref()
                                .map(constraint_from_pb)
                                .unwrap_or_else(|| constraint_from_pb(&Default::default())),
                            weight: pref.weight,
                        })
                        .collect(),
                })
            })
            .transpose()?
            .unwrap_or_default(),
        autoscaling: s.autoscaling.as_ref().map(|a| Autoscaling {
            source: a.source.clone(),
            min: a.min,
            max: a.max,
            target_per_task: a.target_per_task,
            scale_out_cooldown_secs: a.scale_out_cooldown_seconds,
            scale_in_cooldown_secs: a.scale_in_cooldown_seconds,
            stale_after_secs: a.stale_after_seconds.unwrap_or(DEFAULT_STALE_AFTER_SECS),
        }),
        mode,
        created_ms: 0,
        updated_ms: 0,
    };
    validate::service(&svc)?;
    Ok(svc)
}

fn to_pb(s: &Service) -> pb::Service {
    pb::Service {
        name: s.name.clone(),
        description: s.description.clone(),
        task_definition: s.task_definition.clone(),
        desired_count: s.desired_count,
        deployment: Some(pb::DeploymentConfig {
            minimum_healthy_percent: Some(s.deployment.minimum_healthy_percent),
            maximum_percent: Some(s.deployment.maximum_percent),
            circuit_breaker: Some(s.deployment.circuit_breaker),
            rollback: Some(s.deployment.rollback),
        }),
        stop_timeout_seconds: s.stop_timeout_secs,
        placement: Some(pb::ServicePlacement {
            constraints: s
                .placement
                .constraints
                .iter()
                .map(constraint_to_pb)
                .collect(),
            spread: s.placement.spread,
            strategy: s.placement.strategy.as_str().into(),
            spread_over: s.placement.spread_over.clone(),
            distinct_nodes: s.placement.distinct_nodes,
            preferences: s
                .placement
                .preferences
                .iter()
                .map(|p| pb::PlacementPreference {
                    constraint: Some(constraint_to_pb(&p.constraint)),
                    weight: p.weight,
                })
                .collect(),
        }),
        autoscaling: s.autoscaling.as_ref().map(|a| pb::Autoscaling {
            source: a.source.clone(),
            min: a.min,
            max: a.max,
            target_per_task: a.target_per_task,
            scale_out_cooldown_seconds: a.scale_out_cooldown_secs,
            scale_in_cooldown_seconds: a.scale_in_cooldown_secs,
            stale_after_seconds: Some(a.stale_after_secs),
        }),
        created_ms: s.created_ms,
        updated_ms: s.updated_ms,
        mode: s.mode.as_str().to_string(),
    }
}

fn backlog_pb(b: &Backlog) -> pb::Backlog {
    pb::Backlog {
        source: b.source.clone(),
        visible: b.visible,
        in_flight: b.in_flight,
        observed_ms: b.observed_ms,
    }
}

fn status_pb(
    core: &Core,
    s: &Service,
    st: &ServiceState,
    tasks: Option<Vec<Task>>,
) -> pb::ServiceStatus {
    let (running, pending) = tasks.as_ref().map_or_else(
        || {
            let running = st.tasks.len() as u32;
            (running, 0)
        },
        |ts| {
            let live = ts
                .iter()
                .filter(|t| t.desired != crate::model::DesiredStatus::Stopped);
            let running = live
                .clone()
                .filter(|t| t.status == TaskStatus::Running)
                .count() as u32;
            (running, live.count() as u32 - running)
        },
    );
    let backlog = s.autoscaling.as_ref().and_then(|a| {
        if let Some(q) = a.source.strip_prefix("queue:") {
            crate::queues::describe(core, q)
                .ok()
                .map(|(_, c)| pb::Backlog {
                    source: a.source.clone(),
                    visible: c.visible,
                    in_flight: c.in_flight,
                    observed_ms: core.clock.now_ms(),
                })
        } else {
            core.store
                .backlogs
                .get(&a.source)
                .ok()
                .flatten()
                .map(|b| backlog_pb(&b))
        }
    });
    pb::ServiceStatus {
        service: Some(to_pb(s)),
        deployments: st
            .deployments
            .iter()
            .map(|d| pb::ServiceDeployment {
                id: d.id.clone(),
                task_definition: d.task_definition.clone(),
                status: enum_text(&d.status),
                rollout: enum_text(&d.rollout),
                reason: d.reason.clone(),
                failed_tasks: d.failed_tasks,
                created_ms: d.created_ms,
                updated_ms: d.updated_ms,
            })
            .collect(),
        desired: if st.draining {
            0
        } else {
            st.scaled_count.unwrap_or(s.desired_count)
        },
        running,
        pending,
        consecutive_failures: st.consecutive_failures,
        backoff_until_ms: st.backoff_until_ms,
        last_failure: st.last_failure.clone(),
        draining: st.draining,
        decisions: st
            .decisions
            .iter()
            .map(|d| pb::ServiceDecision {
                at_ms: d.at_ms,
                action: d.action.clone(),
                message: d.message.clone(),
                detail_json: d.detail.to_string(),
            })
            .collect(),
        tasks: tasks
            .unwrap_or_default()
            .iter()
            .map(convert::task)
            .collect(),
        backlog,
    }
}

/// A domain enum's name as serde writes it (PRIMARY, IN_PROGRESS, …).
fn enum_text<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

pub struct ServicesApi {
    pub core: Arc<Core>,
}

impl ServicesApi {
    fn describe_now(&self, name: &str) -> Result<pb::ServiceStatus, Status> {
        let (s, st, tasks) = services::describe(&self.core, name)?;
        Ok(status_pb(&self.core, &s, &st, Some(tasks)))
    }
}

#[tonic::async_trait]
impl pb::services_server::Services for ServicesApi {
    async fn put(
        &self,
        req: Request<pb::PutServiceRequest>,
    ) -> Result<Response<pb::ServiceStatus>, Status> {
        let dry_run = crate::auth::dry_run(&req);
        let req = req.into_inner();
        let input = req
            .service
            .ok_or_else(|| Status::invalid_argument("service: missing"))?;
        let svc = from_pb(&input).map_err(invalid)?;
        if dry_run {
            return Ok(Response::new(status_pb(
                &self.core,
                &svc,
                &Default::default(),
                None,
            )));
        }
        let (svc, st) = services::put(&self.core, svc, req.force_new_deployment).await?;
        Ok(Response::new(status_pb(&self.core, &svc, &st, None)))
    }

    async fn describe(
        &self,
        req: Request<pb::ServiceRef>,
    ) -> Result<Response<pb::ServiceStatus>, Status> {
        Ok(Response::new(self.describe_now(&req.get_ref().name)?))
    }

    async fn list(
        &self,
        _req: Request<pb::ListServicesRequest>,
    ) -> Result<Response<pb::ListServicesResponse>, Status> {
        let services = services::list(&self.core)?
            .iter()
            .map(|(s, st)| status_pb(&self.core, s, st, None))
            .collect();
        Ok(Response::new(pb::ListServicesResponse { services }))
    }

    async fn scale(
        &self,
        req: Request<pb::ScaleServiceRequest>,
    ) -> Result<Response<pb::ServiceStatus>, Status> {
        let req = req.into_inner();
        validate::check_name("name", &req.name).map_err(invalid)?;
        services::scale(&self.core, &req.name, req.desired_count).await?;
        Ok(Response::new(self.describe_now(&req.name)?))
    }

    async fn delete(
        &self,
        req: Request<pb::ServiceRef>,
    ) -> Result<Response<pb::ServiceStatus>, Status> {
        let name = &req.get_ref().name;
        validate::check_name("name", name).map_err(invalid)?;
        services::delete(&self.core, name).await?;
        Ok(Response::new(self.describe_now(name)?))
    }

    async fn report_backlog(
        &self,
        req: Request<pb::ReportBacklogRequest>,
    ) -> Result<Response<pb::Backlog>, Status> {
        let req = req.into_inner();
        match req.source.split_once(':') {
            Some(("external", n)) => validate::check_name("source", n).map_err(invalid)?,
            _ => {
                return Err(Status::invalid_argument(format!(
                    "source: {:?} is not external:<name> (built-in queues report themselves)",
                    req.source
                )))
            }
        }
        let now = self.core.clock.now_ms();
        let b = Backlog {
            source: req.source,
            visible: req.visible,
            in_flight: req.in_flight,
            observed_ms: if req.observed_ms == 0 {
                now
            } else {
                req.observed_ms.min(now)
            },
        };
        let b = services::report_backlog(&self.core, b).await?;
        Ok(Response::new(backlog_pb(&b)))
    }
}
