//! The compiled set must answer exactly what matching each pattern alone answers. Besides the
//! pattern tests (each of which also checks a set of one), random patterns over a small
//! vocabulary meet random events here, many patterns to a set.

use serde_json::{json, Map, Value};

use super::*;
use crate::testing::patterns::{event_object, pattern_object, Rng};

/// Returns how many (pattern, event) pairs matched.
fn check(seed: u64, patterns: usize, events: usize) -> usize {
    let mut r = Rng(seed);
    let mut compiled = Vec::new();
    while compiled.len() < patterns {
        if let Ok(p) = Pattern::compile(&pattern_object(&mut r, 0)) {
            compiled.push(p);
        }
    }
    let set = PatternSet::new(compiled.clone());
    if patterns > 1 {
        // Both ways of deciding a condition are exercised: counted, and checked once the
        // branch's lead condition holds.
        let deferred: usize = set.branches.iter().map(|b| b.deferred.len()).sum();
        let counted = set.preds.iter().filter(|p| p.need > 1).count();
        assert!(
            deferred > 0 && counted > 0,
            "seed {seed}: {deferred} deferred, {counted} counted"
        );
    }
    let mut matched = 0;
    for _ in 0..events {
        let event = event_object(&mut r, 0);
        let want: Vec<usize> = (0..compiled.len())
            .filter(|&i| compiled[i].matches(&event))
            .collect();
        matched += want.len();
        let differs = |got: &[usize]| {
            let mut names = Vec::new();
            for (i, p) in compiled.iter().enumerate() {
                if want.contains(&i) != got.contains(&i) {
                    names.push(format!("{p:?} (alone: {})", want.contains(&i)));
                }
            }
            format!("seed {seed}, event {event}: {}", names.join("; "))
        };
        let got = set.matches(&event);
        assert!(got == want, "tree: {}", differs(&got));
        let got = set.matches_json(event.to_string().as_bytes()).unwrap();
        assert!(got == want, "text: {}", differs(&got));
    }
    matched
}

#[test]
fn a_set_of_random_patterns_matches_what_each_pattern_matches_alone() {
    for seed in 1..=8u64 {
        let matched = check(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15), 200, 2_000);
        // The vocabulary is small enough that patterns do match: the comparison is not vacuous.
        assert!(matched > 2_000, "seed {seed}: only {matched} matches");
    }
}

#[test]
fn single_patterns_in_small_sets_agree_too() {
    let matched: usize = (100..400u64)
        .map(|seed| check(seed.wrapping_mul(0x2545_F491_4F6C_DD1D), 1, 50))
        .sum();
    assert!(matched > 400, "only {matched} matches");
}

#[test]
fn patterns_past_the_branch_limit_or_with_absence_beside_values_are_matched_whole() {
    // 2·2·2·2·2·2·2 = 128 combinations of `$or` alternatives.
    let alternatives: Vec<Value> = (0..7)
        .map(|i| json!({"$or": [{format!("k{i}"): ["x"]}, {format!("j{i}"): ["y"]}]}))
        .collect();
    let mut wide = Map::new();
    for (i, a) in alternatives.iter().enumerate() {
        wide.insert(format!("n{i}"), a.clone());
    }
    let wide = Pattern::compile(&Value::Object(wide)).unwrap();
    let mixed = Pattern::compile(&json!({"a": [{"exists": false}, "x"]})).unwrap();
    let set = PatternSet::new([wide, mixed]);
    assert_eq!(set.whole, vec![0, 1]);
    let mut event = Map::new();
    for i in 0..7 {
        event.insert(format!("n{i}"), json!({ format!("j{i}"): "y" }));
    }
    assert_eq!(set.matches(&Value::Object(event.clone())), vec![0, 1]);
    event.insert("a".into(), json!("z"));
    assert_eq!(set.matches(&Value::Object(event)), vec![0]);
    assert_eq!(set.matches(&json!({"a": "x"})), vec![1]);
}

#[test]
fn fields_no_pattern_names_are_skipped_even_when_they_are_deep() {
    let set = PatternSet::new([Pattern::compile(&json!({"a": ["x"]})).unwrap()]);
    let mut deep = json!("leaf");
    for _ in 0..100 {
        deep = json!({ "z": [deep] });
    }
    let event = json!({"a": "x", "other": deep});
    assert_eq!(set.matches(&event), vec![0]);
    assert_eq!(
        set.matches_json(event.to_string().as_bytes()).unwrap(),
        vec![0]
    );
    assert!(set.matches_json(b"{\"a\": \"x\"").is_err());
    assert!(set.matches_json(b"{\"a\": \"x\"} trailing").is_err());
}
