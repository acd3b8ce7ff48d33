//! `skiff rules` (rule files in YAML, JSON or TOML) and `skiff events put` / `dlq`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;
use serde::Deserialize;
use skiff_proto::v1 as pb;

use crate::conn::{api_error, connect};
use crate::output::{self, Format};
use crate::taskdef_file::DurationField;

#[derive(Subcommand)]
pub enum RulesCmd {
    /// Create or replace a rule from a file (rule.yaml, .json or .toml).
    Put {
        /// The rule file.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    /// List rules: state, pattern, targets, and how many events each matched.
    Ls,
    /// Show a rule: pattern, targets with their input and retry policy, and its counters
    /// (matched, invoked, failed, dead-lettered).
    Describe {
        /// The rule's name.
        name: String,
    },
    /// Delete a rule (deliveries already made stay done).
    Rm {
        /// The rule's name.
        name: String,
    },
    /// Enable a rule: events from now on are matched against it.
    Enable {
        /// The rule's name.
        name: String,
    },
    /// Disable a rule: it keeps its settings and counters but matches nothing.
    Disable {
        /// The rule's name.
        name: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RuleFile {
    name: String,
    #[serde(default)]
    description: String,
    /// An EventBridge pattern: a mapping, or JSON text.
    pattern: serde_json::Value,
    enabled: Option<bool>,
    #[serde(default)]
    targets: Vec<TargetFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TargetFile {
    id: String,
    task: Option<TaskTargetFile>,
    queue: Option<String>,
    /// `notify: TOPIC` (or `topic: TOPIC`): publish to a topic's subscriptions.
    #[serde(alias = "notify")]
    topic: Option<String>,
    #[serde(default)]
    input_path: String,
    input_transformer: Option<TransformerFile>,
    retry: Option<RetryFile>,
    /// A queue that also gets each dead-lettered delivery.
    #[serde(default)]
    dead_letter_queue: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TaskTargetFile {
    task_definition: String,
    #[serde(default)]
    group: String,
    overrides: Option<OverridesFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct OverridesFile {
    #[serde(default)]
    containers: Vec<ContainerOverrideFile>,
    timeout: Option<DurationField>,
    task_role: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ContainerOverrideFile {
    name: String,
    #[serde(default)]
    command: Vec<String>,
    #[serde(default)]
    environment: BTreeMap<String, String>,
    cpu: Option<f64>,
    /// MiB, or with a unit (512M, 1G).
    memory: Option<crate::taskdef_file::MemoryField>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TransformerFile {
    #[serde(default)]
    input_paths: BTreeMap<String, String>,
    input_template: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RetryFile {
    max_attempts: Option<u32>,
    /// e.g. "1h" (or seconds).
    max_event_age: Option<DurationField>,
}

/// A retry policy as files write it (rules and schedules).
pub(crate) fn retry_policy(field: &str, r: RetryFile) -> anyhow::Result<pb::RetryPolicy> {
    Ok(pb::RetryPolicy {
        max_attempts: r.max_attempts.unwrap_or(0),
        max_event_age_seconds: match r.max_event_age {
            Some(d) => u32::try_from(d.seconds(&format!("{field}.max_event_age"))?)
                .context("max_event_age: too long")?,
            None => 0,
        },
    })
}

/// Reads a rule file; the format follows the extension (YAML unless .json or .toml).
pub fn load(path: &Path) -> anyhow::Result<pb::Rule> {
    from_file(crate::config::read_definition(path, "rule")?)
}

/// A rule as its file declares it (also a `rule:` document of `skiff apply`).
pub(crate) fn from_file(file: RuleFile) -> anyhow::Result<pb::Rule> {
    let pattern_json = match &file.pattern {
        serde_json::Value::String(s) => s.clone(),
        v => v.to_string(),
    };
    let mut targets = Vec::new();
    for (i, t) in file.targets.into_iter().enumerate() {
        let kind = match (t.task, t.queue, t.topic) {
            (Some(task), None, None) => {
                pb::target::Kind::Task(task_target(&format!("targets[{i}].task"), task)?)
            }
            (None, Some(q), None) => pb::target::Kind::Queue(q),
            (None, None, Some(t)) => pb::target::Kind::Topic(t),
            _ => anyhow::bail!("targets[{i}]: give exactly one of task, queue or notify (a topic)"),
        };
        let retry = t
            .retry
            .map(|r| retry_policy(&format!("targets[{i}].retry"), r))
            .transpose()?;
        targets.push(pb::Target {
            id: t.id,
            kind: Some(kind),
            input_path: t.input_path,
            input_transformer: t.input_transformer.map(|tr| pb::InputTransformer {
                input_paths: tr.input_paths.into_iter().collect(),
                input_template: tr.input_template,
            }),
            retry,
            dead_letter_queue: t.dead_letter_queue,
        });
    }
    Ok(pb::Rule {
        name: file.name,
        description: file.description,
        pattern_json,
        enabled: file.enabled,
        targets,
        ..Default::default()
    })
}

/// A task target as files write it (rules and schedules).
pub(crate) fn task_target(field: &str, task: TaskTargetFile) -> anyhow::Result<pb::TaskTarget> {
    let overrides = match task.overrides {
        None => None,
        Some(o) => Some(pb::TaskOverrides {
            containers: o
                .containers
                .into_iter()
                .map(|c| {
                    Ok(pb::ContainerOverride {
                        memory_mib: c
                            .memory
                            .as_ref()
                            .map(|m| m.mib(&format!("{field}.overrides.containers.memory")))
                            .transpose()?,
                        name: c.name,
                        command: c.command,
                        environment: c.environment.into_iter().collect(),
                        cpu: c.cpu,
                    })
                })
                .collect::<anyhow::Result<_>>()?,
            timeout_seconds: o
                .timeout
                .map(|d| d.seconds(&format!("{field}.overrides.timeout")))
                .transpose()?,
            task_role: o.task_role,
        }),
    };
    Ok(pb::TaskTarget {
        task_definition: task.task_definition,
        overrides,
        group: task.group,
    })
}

fn target_text(t: &pb::Target) -> String {
    match &t.kind {
        Some(pb::target::Kind::Task(task)) => format!("{}: task {}", t.id, task.task_definition),
        Some(pb::target::Kind::Queue(q)) => format!("{}: queue {q}", t.id),
        Some(pb::target::Kind::Topic(q)) => format!("{}: notify {q}", t.id),
        None => t.id.clone(),
    }
}

/// A rule as JSON: the pattern as an object, targets with every setting, counters.
fn rule_json(r: &pb::Rule) -> serde_json::Value {
    serde_json::json!({
        "name": r.name, "description": r.description, "enabled": r.enabled.unwrap_or(true),
        "pattern": serde_json::from_str::<serde_json::Value>(&r.pattern_json).unwrap_or_default(),
        "targets": r.targets, "stats": r.stats.unwrap_or_default(),
        "version": r.version, "created": output::time(r.created_ms),
        "updated": output::time(r.updated_ms),
    })
}

/// `rules describe`: everything about one rule, for people.
fn describe(r: &pb::Rule) -> String {
    let mut s = String::new();
    let mut kv = |k: &str, v: String| s.push_str(&format!("{k:<16}{v}\n"));
    kv("Rule:", r.name.clone());
    if !r.description.is_empty() {
        kv("Description:", r.description.clone());
    }
    kv(
        "State:",
        if r.enabled.unwrap_or(true) {
            "enabled".into()
        } else {
            "disabled".into()
        },
    );
    kv("Pattern:", r.pattern_json.clone());
    let st = r.stats.unwrap_or_default();
    kv(
        "Matched:",
        format!(
            "{} events (last {})",
            st.matched,
            output::time(st.last_matched_ms)
        ),
    );
    kv(
        "Deliveries:",
        format!(
            "{} invoked, {} failed attempts, {} dead-lettered",
            st.invoked, st.failed, st.dead_lettered
        ),
    );
    kv("Updated:", output::time(r.updated_ms));
    s.push_str("Targets:\n");
    for t in &r.targets {
        s.push_str(&format!("  {}\n", target_text(t)));
        if let Some(pb::target::Kind::Task(task)) = &t.kind {
            if !task.group.is_empty() {
                s.push_str(&format!("    group:        {}\n", task.group));
            }
            if let Some(o) = &task.overrides {
                if !o.containers.is_empty() || o.timeout_seconds.is_some() || o.task_role.is_some()
                {
                    let o = serde_json::to_string(o).unwrap_or_default();
                    s.push_str(&format!("    overrides:    {o}\n"));
                }
            }
        }
        let input = match (&t.input_transformer, t.input_path.as_str()) {
            (Some(tr), _) => format!(
                "transformer paths {} template {}",
                serde_json::to_string(&tr.input_paths).unwrap_or_default(),
                tr.input_template
            ),
            (None, "") => "the whole event".into(),
            (None, p) => format!("path {p}"),
        };
        s.push_str(&format!("    input:        {input}\n"));
        if let Some(rp) = &t.retry {
            s.push_str(&format!(
                "    retry:        {} attempts, events up to {}s old\n",
                rp.max_attempts, rp.max_event_age_seconds
            ));
        }
    }
    s.trim_end().to_string()
}

fn print(fmt: Format, rules: &[pb::Rule], detailed: bool) {
    if fmt == Format::Json {
        let v: Vec<_> = rules.iter().map(rule_json).collect();
        if detailed && v.len() == 1 {
            println!("{}", output::json(&v[0]));
        } else {
            println!("{}", output::json(&v));
        }
        return;
    }
    if detailed {
        for r in rules {
            println!("{}", describe(r));
        }
        return;
    }
    let rows = rules
        .iter()
        .map(|r| {
            vec![
                r.name.clone(),
                if r.enabled.unwrap_or(true) {
                    "enabled"
                } else {
                    "disabled"
                }
                .into(),
                r.pattern_json.clone(),
                r.targets
                    .iter()
                    .map(target_text)
                    .collect::<Vec<_>>()
                    .join(", "),
                r.stats.as_ref().map_or(0, |s| s.matched).to_string(),
            ]
        })
        .collect();
    println!(
        "{}",
        output::table(&["NAME", "STATE", "PATTERN", "TARGETS", "MATCHED"], rows)
    );
}

pub async fn rules(addr: &str, fmt: Format, cmd: RulesCmd) -> anyhow::Result<i32> {
    let mut c = pb::rules_client::RulesClient::new(connect(addr).await?);
    let detailed = matches!(cmd, RulesCmd::Describe { .. });
    let r = match cmd {
        RulesCmd::Put { file } => vec![c.put(load(&file)?).await.map_err(api_error)?.into_inner()],
        RulesCmd::Ls => {
            c.list(pb::ListRulesRequest {})
                .await
                .map_err(api_error)?
                .into_inner()
                .rules
        }
        RulesCmd::Describe { name } => {
            vec![c
                .get(pb::RuleRef { name })
                .await
                .map_err(api_error)?
                .into_inner()]
        }
        RulesCmd::Rm { name } => {
            vec![c
                .delete(pb::RuleRef { name })
                .await
                .map_err(api_error)?
                .into_inner()]
        }
        RulesCmd::Enable { name } => vec![c
            .set_enabled(pb::SetRuleEnabledRequest {
                name,
                enabled: true,
            })
            .await
            .map_err(api_error)?
            .into_inner()],
        RulesCmd::Disable { name } => vec![c
            .set_enabled(pb::SetRuleEnabledRequest {
                name,
                enabled: false,
            })
            .await
            .map_err(api_error)?
            .into_inner()],
    };
    print(fmt, &r, detailed);
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The example in deploy/ stays loadable: every file parses, the pattern compiles.
    #[test]
    fn the_upload_processing_example_loads() {
        let dir =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/upload-processing");
        let rule = load(&dir.join("rule.yaml")).unwrap();
        assert_eq!(rule.targets.len(), 1);
        skiff_model::pattern::Pattern::parse(&rule.pattern_json).unwrap();
        let role = crate::roles::load(&dir.join("role.yaml")).unwrap();
        assert_eq!(role.storage.unwrap().grants.len(), 2);
        crate::sources::load(&dir.join("source.yaml")).unwrap();
        let def = dir.join("thumbnail.toml");
        let text = std::fs::read_to_string(&def).unwrap();
        let def = crate::taskdef_file::parse(&def, &text).unwrap();
        assert_eq!(def.task_role, "thumbnailer");
        // As tests/tests/sources.rs runs it: on skiff's bridge, not the host's network.
        assert_eq!(def.network_mode, "bridge");
    }

    #[test]
    fn the_hourly_batch_example_loads() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/examples/hourly-batch");
        let s = crate::schedules::load(&dir.join("schedule.yaml")).unwrap();
        assert_eq!(s.flexible_window_seconds, 300);
        skiff_model::cron::Expression::parse(&s.expression, &s.timezone).unwrap();
        crate::roles::load(&dir.join("role.yaml")).unwrap();
        let def = dir.join("batch.toml");
        let text = std::fs::read_to_string(&def).unwrap();
        let def = crate::taskdef_file::parse(&def, &text).unwrap();
        assert_eq!(def.task_role, "batch");
        assert_eq!(def.network_mode, "bridge");
    }
}
