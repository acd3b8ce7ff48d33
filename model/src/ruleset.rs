//! The enabled rules, compiled once into one [`PatternSet`], and which of them an event
//! matches: the cost of an event grows with its fields, not with the number of rules.

use serde_json::Value;

use crate::model::Rule;
use crate::pattern::{Pattern, PatternError, PatternSet};

/// The enabled rules, their patterns compiled together.
pub struct RuleSet {
    rules: Vec<Rule>,
    patterns: PatternSet,
}

impl RuleSet {
    /// Compiles the enabled rules. A stored rule whose pattern no longer compiles (it was
    /// checked when put) is left out and returned with why, for the caller to report.
    pub fn new(rules: Vec<Rule>) -> (RuleSet, Vec<(String, PatternError)>) {
        let mut skipped = Vec::new();
        let mut kept = Vec::new();
        let mut patterns = Vec::new();
        for rule in rules.into_iter().filter(|r| r.enabled) {
            match Pattern::compile(&rule.pattern) {
                Ok(p) => {
                    patterns.push(p);
                    kept.push(rule);
                }
                Err(e) => skipped.push((rule.name.clone(), e)),
            }
        }
        let set = RuleSet {
            rules: kept,
            patterns: PatternSet::new(patterns),
        };
        (set, skipped)
    }

    /// The rules `event` (an EventBridge envelope) matches, in a stable order.
    pub fn matching<'a>(&'a self, event: &Value) -> Vec<&'a Rule> {
        self.patterns
            .matches(event)
            .into_iter()
            .map(|i| &self.rules[i])
            .collect()
    }

    pub fn len(&self) -> usize {
        self.rules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.rules.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{RetryPolicy, Target, TargetInput, TargetKind};
    use serde_json::json;

    fn rule(name: &str, pattern: Value, enabled: bool) -> Rule {
        Rule {
            name: name.into(),
            description: String::new(),
            pattern,
            enabled,
            targets: vec![Target {
                id: "t".into(),
                kind: TargetKind::Queue("q".into()),
                input: TargetInput::Event,
                retry: RetryPolicy::default(),
                dead_letter_queue: String::new(),
            }],
            version: 1,
            created_ms: 0,
            updated_ms: 0,
        }
    }

    #[test]
    fn enabled_rules_are_matched_in_their_order_and_disabled_ones_never() {
        let (set, skipped) = RuleSet::new(vec![
            rule("by-source", json!({"source": ["app", "other"]}), true),
            rule("by-detail", json!({"detail": {"k": ["v"]}}), true),
            rule("disabled", json!({"source": ["app"]}), false),
            rule("prefix", json!({"source": [{"prefix": "ap"}]}), true),
        ]);
        assert_eq!(set.len(), 3);
        assert!(skipped.is_empty());
        let names =
            |e: Value| -> Vec<String> { set.matching(&e).iter().map(|r| r.name.clone()).collect() };
        assert_eq!(
            names(json!({"source": "app", "detail": {"k": "v"}})),
            ["by-source", "by-detail", "prefix"]
        );
        assert_eq!(
            names(json!({"source": "zzz", "detail": {"k": "v"}})),
            ["by-detail"]
        );
        assert!(names(json!({"source": "zzz"})).is_empty());
    }
}
