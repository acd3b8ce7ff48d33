//! How long stopped tasks stay queryable: retention policies by scope, and the pure rules the
//! controller's history sweep applies with them. Active tasks are never deleted; a stopped task
//! goes when it is older than its policy's age or not among its scope's newest `keep`.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::validate::InvalidField;

/// A retention policy for one family, service or task group, replacing the controller's
/// default there.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRetention {
    pub scope: Scope,
    /// Keep at most the newest N tasks of the scope (None: the default's).
    pub keep: Option<u32>,
    /// Delete stopped tasks that stopped longer ago than this (None: the default's).
    pub max_age_secs: Option<u64>,
}

/// What a policy covers: a task-definition family's tasks, or a task group's (a service's
/// tasks are group `service:NAME`, a rule's `rule:NAME`, a schedule's `schedule:NAME`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Scope {
    Family(String),
    Group(String),
}

impl Scope {
    /// `family/NAME`, `service/NAME` or `group/NAME`.
    pub fn parse(field: &str, s: &str) -> Result<Scope, InvalidField> {
        let bad = |problem: String| crate::validate::invalid(field, problem);
        let (kind, name) = s.split_once('/').ok_or_else(|| {
            bad(format!(
                "{s:?} is not a scope: give family/NAME, service/NAME or group/NAME"
            ))
        })?;
        if name.is_empty() {
            return Err(bad(format!("{s:?} names no {kind}")));
        }
        match kind {
            "family" => Ok(Scope::Family(name.to_string())),
            "service" => Ok(Scope::Group(crate::model::service_group(name))),
            "group" => Ok(Scope::Group(name.to_string())),
            _ => Err(bad(format!(
                "{kind:?} is not a kind of scope (family, service or group)"
            ))),
        }
    }

    /// The key the policy is stored under, and how it is shown: `family/NAME`,
    /// `service/NAME` or `group/NAME`.
    pub fn key(&self) -> String {
        match self {
            Scope::Family(f) => format!("family/{f}"),
            Scope::Group(g) => match g.strip_prefix("service:") {
                Some(s) => format!("service/{s}"),
                None => format!("group/{g}"),
            },
        }
    }
}

/// The controller's default for task history: stopped tasks stay 30 days, the newest 10,000
/// of each family (ECS keeps them an hour).
pub const DEFAULT_LIMITS: Limits = Limits {
    keep: Some(10_000),
    max_age_ms: Some(30 * 24 * 3600 * 1000),
};

/// The event log's default: events stay 7 days (none is deleted before every reader has
/// read it).
pub const DEFAULT_EVENT_LIMITS: EventLogLimits = EventLogLimits {
    max_age_ms: Some(7 * 24 * 3600 * 1000),
    keep: None,
};

/// The limits one scope's tasks live under.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// The newest N tasks of the scope are kept (None: no count limit).
    pub keep: Option<u32>,
    /// Stopped tasks that stopped longer ago than this go (None: no age limit).
    pub max_age_ms: Option<i64>,
}

impl Limits {
    /// The default's limits with what `policy` sets put over them.
    pub fn with(self, policy: &TaskRetention) -> Limits {
        Limits {
            keep: policy.keep.or(self.keep),
            max_age_ms: policy
                .max_age_secs
                .map(|s| s.saturating_mul(1000).min(i64::MAX as u64) as i64)
                .or(self.max_age_ms),
        }
    }

    /// Whether a task that stopped at `stopped_at_ms` is past the age limit at `now_ms`.
    pub fn too_old(&self, stopped_at_ms: i64, now_ms: i64) -> bool {
        self.max_age_ms
            .is_some_and(|age| now_ms.saturating_sub(stopped_at_ms) > age)
    }
}

/// The scope whose policy governs a task: its group's if there is one, else its family's,
/// else the default's, counted per family (per group for a task with no family).
pub fn governing(
    group: &str,
    family: Option<&str>,
    policies: &HashMap<Scope, TaskRetention>,
) -> Governed {
    let by_group = Scope::Group(group.to_string());
    if policies.contains_key(&by_group) {
        return Governed::Policy(by_group);
    }
    match family {
        Some(f) if policies.contains_key(&Scope::Family(f.to_string())) => {
            Governed::Policy(Scope::Family(f.to_string()))
        }
        Some(f) => Governed::Default(Scope::Family(f.to_string())),
        None => Governed::Default(by_group),
    }
}

/// Which policy governs a task, and the scope it is counted in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Governed {
    /// A policy set for this scope.
    Policy(Scope),
    /// The controller's default, counted in this scope.
    Default(Scope),
}

impl Governed {
    /// The scope the task is counted in for `keep`.
    pub fn scope(&self) -> &Scope {
        match self {
            Governed::Policy(s) | Governed::Default(s) => s,
        }
    }

    /// The limits the task lives under.
    pub fn limits(&self, default: Limits, policies: &HashMap<Scope, TaskRetention>) -> Limits {
        match self {
            Governed::Policy(s) => policies.get(s).map_or(default, |p| default.with(p)),
            Governed::Default(_) => default,
        }
    }
}

/// A named reader of the event log with a durable cursor (`skiff events tail --consumer`):
/// it resumes after its cursor, and the log's retention keeps every event after it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventConsumer {
    pub name: String,
    /// The last event it acknowledged (empty: none yet; it reads from the oldest kept).
    pub cursor: String,
    pub acked_at_ms: i64,
}

/// How long the event log keeps events no consumer still needs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventLogLimits {
    /// Events older than this go (None: no age limit).
    pub max_age_ms: Option<i64>,
    /// Only the newest N are kept (None: no count limit).
    pub keep: Option<u64>,
}

/// Checks a policy: it must limit something, and its limits must keep something.
pub fn check(p: &TaskRetention) -> Result<(), InvalidField> {
    if p.keep.is_none() && p.max_age_secs.is_none() {
        return Err(crate::validate::invalid(
            "retention",
            "give keep, max_age or both".to_string(),
        ));
    }
    if p.keep == Some(0) {
        return Err(crate::validate::invalid(
            "keep",
            "0 would delete every stopped task at once; give at least 1".to_string(),
        ));
    }
    if p.max_age_secs == Some(0) {
        return Err(crate::validate::invalid(
            "max_age",
            "0 s would delete every stopped task at once; give at least 1 s".to_string(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(scope: Scope, keep: Option<u32>, age: Option<u64>) -> (Scope, TaskRetention) {
        let p = TaskRetention {
            scope: scope.clone(),
            keep,
            max_age_secs: age,
        };
        (scope, p)
    }

    #[test]
    fn scopes_parse_from_what_users_type_and_show_back_the_same() {
        for s in ["family/web", "service/api", "group/rule:thumbs"] {
            assert_eq!(Scope::parse("scope", s).unwrap().key(), s);
        }
        assert_eq!(
            Scope::parse("scope", "service/api").unwrap(),
            Scope::Group("service:api".into())
        );
        let e = Scope::parse("scope", "web").unwrap_err().to_string();
        assert!(e.contains("scope") && e.contains("family/NAME"), "{e}");
        let e = Scope::parse("scope", "node/n1").unwrap_err().to_string();
        assert!(e.contains("\"node\""), "{e}");
        assert!(Scope::parse("scope", "family/").is_err());
    }

    #[test]
    fn a_group_policy_governs_before_a_family_policy_before_the_default() {
        let policies: HashMap<Scope, TaskRetention> = [
            policy(Scope::Group("service:api".into()), Some(5), None),
            policy(Scope::Family("web".into()), None, Some(60)),
        ]
        .into();
        let default = Limits {
            keep: Some(1000),
            max_age_ms: Some(86_400_000),
        };
        let g = governing("service:api", Some("web"), &policies);
        assert_eq!(g, Governed::Policy(Scope::Group("service:api".into())));
        // The group's keep over the default's age.
        assert_eq!(
            g.limits(default, &policies),
            Limits {
                keep: Some(5),
                max_age_ms: Some(86_400_000)
            }
        );
        let f = governing("rule:x", Some("web"), &policies);
        assert_eq!(f, Governed::Policy(Scope::Family("web".into())));
        assert_eq!(
            f.limits(default, &policies),
            Limits {
                keep: Some(1000),
                max_age_ms: Some(60_000)
            }
        );
        let d = governing("rule:x", Some("other"), &policies);
        assert_eq!(d, Governed::Default(Scope::Family("other".into())));
        assert_eq!(d.limits(default, &policies), default);
        // No family: counted in its group.
        assert_eq!(
            governing("adhoc", None, &policies),
            Governed::Default(Scope::Group("adhoc".into()))
        );
    }

    #[test]
    fn age_counts_from_the_stop_and_only_past_the_limit() {
        let l = Limits {
            keep: None,
            max_age_ms: Some(1000),
        };
        assert!(!l.too_old(5_000, 6_000));
        assert!(l.too_old(5_000, 6_001));
        let none = Limits {
            keep: None,
            max_age_ms: None,
        };
        assert!(!none.too_old(0, i64::MAX));
    }

    #[test]
    fn a_policy_that_would_delete_everything_or_nothing_is_refused_by_field() {
        let p = |keep, age| TaskRetention {
            scope: Scope::Family("f".into()),
            keep,
            max_age_secs: age,
        };
        assert!(check(&p(None, None))
            .unwrap_err()
            .to_string()
            .contains("keep, max_age"));
        assert!(check(&p(Some(0), None))
            .unwrap_err()
            .to_string()
            .starts_with("keep"));
        assert!(check(&p(None, Some(0)))
            .unwrap_err()
            .to_string()
            .starts_with("max_age"));
        assert!(check(&p(Some(1), Some(1))).is_ok());
    }
}
