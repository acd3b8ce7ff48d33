//! The enabled rules, compiled once, and which of them an event matches: indexed by the exact
//! `source` values rules name, so most events are checked only against their source's rules
//! (the rest are checked for every event).

use std::collections::HashMap;

use serde_json::Value;

use crate::model::Rule;
use crate::pattern::{Pattern, PatternError};

/// The enabled rules, compiled, with an index from exact `source` values to the rules that
/// name them (rules without one are checked for every event).
pub struct RuleSet {
    rules: Vec<(Rule, Pattern)>,
    by_source: HashMap<String, Vec<usize>>,
    any_source: Vec<usize>,
}

impl RuleSet {
    /// Compiles the enabled rules. A stored rule whose pattern no longer compiles (it was
    /// checked when put) is left out and returned with why, for the caller to report.
    pub fn new(rules: Vec<Rule>) -> (RuleSet, Vec<(String, PatternError)>) {
        let mut skipped = Vec::new();
        let mut set = RuleSet {
            rules: Vec::new(),
            by_source: HashMap::new(),
            any_source: Vec::new(),
        };
        for rule in rules.into_iter().filter(|r| r.enabled) {
            let pattern = match Pattern::compile(&rule.pattern) {
                Ok(p) => p,
                Err(e) => {
                    skipped.push((rule.name.clone(), e));
                    continue;
                }
            };
            let i = set.rules.len();
            match pattern
                .exact_top_level()
                .into_iter()
                .find(|(field, _)| *field == "source")
            {
                Some((_, values)) => {
                    for v in values {
                        set.by_source.entry(v.to_string()).or_default().push(i);
                    }
                }
                None => set.any_source.push(i),
            }
            set.rules.push((rule, pattern));
        }
        (set, skipped)
    }

    /// The rules `event` (an EventBridge envelope) matches, in a stable order.
    pub fn matching<'a>(&'a self, event: &Value) -> Vec<&'a Rule> {
        let source = event.get("source").and_then(Value::as_str).unwrap_or("");
        let mut idx: Vec<usize> = self
            .by_source
            .get(source)
            .into_iter()
            .flatten()
            .chain(&self.any_source)
            .copied()
            .collect();
        idx.sort_unstable();
        idx.dedup();
        idx.into_iter()
            .filter(|&i| self.rules[i].1.matches(event))
            .map(|i| &self.rules[i].0)
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
    fn the_source_index_finds_the_same_rules_as_checking_all() {
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
