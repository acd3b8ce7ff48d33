//! The Rules service: rules are checked completely when they are put (pattern, targets,
//! inputs, retry policy), so the dispatcher (`bus.rs`) only meets rules that make sense.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use skiff_proto::v1 as pb;
use tonic::{Request, Response, Status};

use crate::core::Core;
use crate::model::{Overrides, RetryPolicy, Rule, Target, TargetInput, TargetKind};
use skiff_model::pattern::Pattern;
use skiff_model::validate;

/// EventBridge's limit of targets per rule.
pub const MAX_TARGETS: usize = 5;

fn invalid(field: &str, problem: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {problem}"))
}

pub fn overrides_pb(o: &Overrides) -> pb::TaskOverrides {
    pb::TaskOverrides {
        containers: o
            .containers
            .iter()
            .map(|c| pb::ContainerOverride {
                name: c.name.clone(),
                command: c.command.clone(),
                environment: c.environment.clone().into_iter().collect(),
                cpu: c.cpu,
                memory_mib: c.memory_mib,
            })
            .collect(),
        timeout_seconds: o.timeout_secs,
        task_role: o.task_role.clone(),
    }
}

fn target(core: &Core, i: usize, t: &pb::Target) -> Result<Target, Status> {
    let f = |name: &str| format!("targets[{i}].{name}");
    validate::check_name(&f("id"), &t.id).map_err(|e| Status::invalid_argument(e.to_string()))?;
    let kind = match &t.kind {
        Some(pb::target::Kind::Task(task)) => {
            let (family, rev) =
                validate::taskdef_ref(&f("task.task_definition"), &task.task_definition)
                    .map_err(|e| Status::invalid_argument(e.to_string()))?;
            let defs = core.store.taskdefs_of(Some(&family))?;
            let def = match rev {
                Some(r) => defs.iter().find(|d| d.revision == r),
                None => defs.last(),
            }
            .ok_or_else(|| {
                invalid(
                    &f("task.task_definition"),
                    format!("no task definition {:?}", task.task_definition),
                )
            })?;
            let o = task.overrides.clone().unwrap_or_default();
            // The overrides must apply to the definition as it is now.
            validate::apply_overrides(def.spec.clone(), &crate::convert::overrides(&o))
                .map_err(|e| invalid(&f("task"), e))?;
            TargetKind::Task {
                task_definition: task.task_definition.clone(),
                overrides: crate::convert::overrides(&o),
                group: task.group.clone(),
            }
        }
        Some(pb::target::Kind::Queue(q)) => {
            if core.store.queues.get(q)?.is_none() {
                return Err(invalid(
                    &f("queue"),
                    format!("{q:?}: no such queue (skiff queues create {q})"),
                ));
            }
            TargetKind::Queue(q.clone())
        }
        Some(pb::target::Kind::Topic(t)) => {
            if core.store.topics.get(t)?.is_none() {
                return Err(invalid(
                    &f("topic"),
                    format!("{t:?}: no such topic (skiff topics put {t})"),
                ));
            }
            TargetKind::Topic(t.clone())
        }
        None => return Err(invalid(&f("kind"), "give a task, queue or topic (notify)")),
    };
    let input = match (&t.input_path, &t.input_transformer) {
        (p, None) if p.is_empty() => TargetInput::Event,
        (p, None) => TargetInput::Path(p.clone()),
        (p, Some(tr)) if p.is_empty() => TargetInput::Transformer {
            paths: tr
                .input_paths
                .clone()
                .into_iter()
                .collect::<BTreeMap<_, _>>(),
            template: tr.input_template.clone(),
        },
        _ => {
            return Err(invalid(
                &f("input_path"),
                "give input_path or input_transformer, not both",
            ))
        }
    };
    skiff_model::transform::check(&input)
        .map_err(|e| Status::invalid_argument(format!("targets[{i}].{e}")))?;
    let mut retry = RetryPolicy::default();
    if let Some(r) = &t.retry {
        if r.max_attempts != 0 {
            if r.max_attempts > 185 {
                return Err(invalid(&f("retry.max_attempts"), "at most 185"));
            }
            retry.max_attempts = r.max_attempts;
        }
        if r.max_event_age_seconds != 0 {
            if !(60..=86_400).contains(&r.max_event_age_seconds) {
                return Err(invalid(
                    &f("retry.max_event_age_seconds"),
                    "between 60 and 86400",
                ));
            }
            retry.max_event_age_secs = r.max_event_age_seconds;
        }
    }
    if !t.dead_letter_queue.is_empty() && core.store.queues.get(&t.dead_letter_queue)?.is_none() {
        return Err(invalid(
            &f("dead_letter_queue"),
            format!(
                "{:?}: no such queue (skiff queues create {})",
                t.dead_letter_queue, t.dead_letter_queue
            ),
        ));
    }
    Ok(Target {
        id: t.id.clone(),
        kind,
        input,
        retry,
        dead_letter_queue: t.dead_letter_queue.clone(),
    })
}

/// Checks a rule as the API receives it.
pub fn from_pb(core: &Core, r: &pb::Rule) -> Result<Rule, Status> {
    validate::check_name("name", &r.name).map_err(|e| Status::invalid_argument(e.to_string()))?;
    let pattern: serde_json::Value = serde_json::from_str(&r.pattern_json)
        .map_err(|e| invalid("pattern", format!("not valid JSON: {e}")))?;
    Pattern::compile(&pattern).map_err(|e| invalid("pattern", e))?;
    if r.targets.len() > MAX_TARGETS {
        return Err(invalid("targets", format!("at most {MAX_TARGETS}")));
    }
    let mut ids = HashSet::new();
    let mut targets = Vec::new();
    for (i, t) in r.targets.iter().enumerate() {
        if !ids.insert(t.id.clone()) {
            return Err(invalid(
                &format!("targets[{i}].id"),
                format!("{:?} is used twice", t.id),
            ));
        }
        targets.push(target(core, i, t)?);
    }
    Ok(Rule {
        name: r.name.clone(),
        description: r.description.clone(),
        pattern,
        enabled: r.enabled.unwrap_or(true),
        targets,
        version: 0,
        created_ms: 0,
        updated_ms: 0,
    })
}

/// A rule for the API, with its counters.
pub fn to_pb(r: &Rule, stats: &crate::model::RuleStats) -> pb::Rule {
    pb::Rule {
        stats: Some(pb::RuleStats {
            matched: stats.matched,
            invoked: stats.invoked,
            failed: stats.failed,
            dead_lettered: stats.dead_lettered,
            last_matched_ms: stats.last_matched_ms,
        }),
        name: r.name.clone(),
        description: r.description.clone(),
        pattern_json: r.pattern.to_string(),
        enabled: Some(r.enabled),
        targets: r
            .targets
            .iter()
            .map(|t| pb::Target {
                id: t.id.clone(),
                kind: Some(match &t.kind {
                    TargetKind::Task {
                        task_definition,
                        overrides,
                        group,
                    } => pb::target::Kind::Task(pb::TaskTarget {
                        task_definition: task_definition.clone(),
                        overrides: Some(overrides_pb(overrides)),
                        group: group.clone(),
                    }),
                    TargetKind::Queue(q) => pb::target::Kind::Queue(q.clone()),
                    TargetKind::Topic(t) => pb::target::Kind::Topic(t.clone()),
                }),
                input_path: match &t.input {
                    TargetInput::Path(p) => p.clone(),
                    _ => String::new(),
                },
                input_transformer: match &t.input {
                    TargetInput::Transformer { paths, template } => Some(pb::InputTransformer {
                        input_paths: paths.clone().into_iter().collect(),
                        input_template: template.clone(),
                    }),
                    _ => None,
                },
                retry: Some(pb::RetryPolicy {
                    max_attempts: t.retry.max_attempts,
                    max_event_age_seconds: t.retry.max_event_age_secs,
                }),
                dead_letter_queue: t.dead_letter_queue.clone(),
            })
            .collect(),
        version: r.version,
        created_ms: r.created_ms,
        updated_ms: r.updated_ms,
    }
}

pub struct RulesApi {
    pub core: Arc<Core>,
}

#[tonic::async_trait]
impl pb::rules_server::Rules for RulesApi {
    async fn put(&self, req: Request<pb::Rule>) -> Result<Response<pb::Rule>, Status> {
        let rule = from_pb(&self.core, req.get_ref())?;
        if crate::auth::dry_run(&req) {
            return Ok(Response::new(to_pb(&rule, &Default::default())));
        }
        let rule = crate::rules::put(&self.core, rule).await?;
        let stats = self.core.store.rule_stats(&rule.name)?;
        Ok(Response::new(to_pb(&rule, &stats)))
    }

    async fn get(&self, req: Request<pb::RuleRef>) -> Result<Response<pb::Rule>, Status> {
        let name = &req.get_ref().name;
        match self.core.store.rules.get(name)? {
            Some(r) => Ok(Response::new(to_pb(&r, &self.core.store.rule_stats(name)?))),
            None => Err(Status::not_found(format!("name: no rule {name:?}"))),
        }
    }

    async fn list(
        &self,
        _: Request<pb::ListRulesRequest>,
    ) -> Result<Response<pb::ListRulesResponse>, Status> {
        let rules = self
            .core
            .store
            .rules
            .list()?
            .iter()
            .map(|r| Ok(to_pb(r, &self.core.store.rule_stats(&r.name)?)))
            .collect::<Result<_, Status>>()?;
        Ok(Response::new(pb::ListRulesResponse { rules }))
    }

    async fn delete(&self, req: Request<pb::RuleRef>) -> Result<Response<pb::Rule>, Status> {
        let name = &req.get_ref().name;
        match crate::rules::delete(&self.core, name).await? {
            Some(r) => Ok(Response::new(to_pb(&r, &Default::default()))),
            None => Err(Status::not_found(format!("name: no rule {name:?}"))),
        }
    }

    async fn set_enabled(
        &self,
        req: Request<pb::SetRuleEnabledRequest>,
    ) -> Result<Response<pb::Rule>, Status> {
        let r = req.get_ref();
        let rule = crate::rules::set_enabled(&self.core, &r.name, r.enabled)
            .await?
            .ok_or_else(|| Status::not_found(format!("name: no rule {:?}", r.name)))?;
        let stats = self.core.store.rule_stats(&rule.name)?;
        Ok(Response::new(to_pb(&rule, &stats)))
    }
}
