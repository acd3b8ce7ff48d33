//! The compiled set must answer exactly what matching each pattern alone answers. Besides the
//! pattern tests (each of which also checks a set of one), random patterns over a small
//! vocabulary meet random events here, many patterns to a set.

use serde_json::{json, Map, Value};

use super::*;

/// xorshift64: deterministic, so a failure names a seed that reproduces it.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn pick<T: Clone>(&mut self, xs: &[T]) -> T {
        xs[self.below(xs.len())].clone()
    }
}

const KEYS: [&str; 4] = ["a", "b", "c", "d"];
const STRINGS: [&str; 12] = [
    "x", "X", "xy", "yx", "xay", "foo", "Foo", "", "10.0.0.1", "10.1.2.3", "ΣΑΣ", "σας",
];
const NUMBERS: [f64; 7] = [0.0, 1.0, 1.5, -2.0, 300.0, 2.0000001, 1e9];

fn leaf(r: &mut Rng) -> Value {
    match r.below(6) {
        0..=2 => json!(r.pick(&STRINGS)),
        3 | 4 => json!(r.pick(&NUMBERS)),
        _ => [json!(true), json!(false), Value::Null][r.below(3)].clone(),
    }
}

fn event_value(r: &mut Rng, depth: usize) -> Value {
    match r.below(10) {
        0..=5 => leaf(r),
        6 => Value::Array((0..r.below(4)).map(|_| leaf(r)).collect()),
        7 | 8 if depth < 2 => event_object(r, depth + 1),
        9 if depth < 2 => Value::Array(
            (0..1 + r.below(3))
                .map(|_| {
                    if r.below(5) == 0 {
                        leaf(r)
                    } else {
                        event_object(r, depth + 1)
                    }
                })
                .collect(),
        ),
        _ => leaf(r),
    }
}

fn event_object(r: &mut Rng, depth: usize) -> Value {
    let mut o = Map::new();
    for _ in 0..1 + r.below(4) {
        o.insert(r.pick(&KEYS).into(), event_value(r, depth));
    }
    Value::Object(o)
}

fn matcher(r: &mut Rng) -> Value {
    let s = r.pick(&STRINGS);
    let n = r.pick(&NUMBERS);
    let wild = r.pick(&["x*", "*y", "x*y", "*", "*a*", "f*o", "10.*", "x"]);
    let bound = |r: &mut Rng| [-2, 0, 1, 300][r.below(4)];
    match r.below(22) {
        0 | 1 => json!(s),
        2 => json!(n),
        3 => json!(r.below(2) == 0),
        4 => Value::Null,
        5 => json!({"prefix": s.chars().take(1).collect::<String>()}),
        6 => json!({"prefix": {"equals-ignore-case": s}}),
        7 => json!({"suffix": s.chars().last().map(String::from).unwrap_or_default()}),
        8 => json!({"suffix": {"equals-ignore-case": s}}),
        9 => json!({"equals-ignore-case": s}),
        10 => json!({"wildcard": wild}),
        11 => json!({"anything-but": s}),
        12 => json!({"anything-but": [n, r.pick(&NUMBERS)]}),
        13 => {
            let prefixes = &["x", "1"][..1 + r.below(2)];
            json!({"anything-but": {"prefix": prefixes}})
        }
        14 => json!({"anything-but": {"suffix": "y"}}),
        15 => json!({"anything-but": {"equals-ignore-case": [s, "x"]}}),
        16 => json!({"anything-but": {"wildcard": wild}}),
        17 => {
            let (a, b) = (bound(r), bound(r));
            json!({"numeric": [">", a.min(b), "<=", a.max(b)]})
        }
        18 => json!({"numeric": [r.pick(&["<", "<=", ">", ">=", "="]), bound(r)]}),
        19 => json!({"cidr": "10.0.0.0/16"}),
        20 => json!({"exists": r.below(2) == 0}),
        _ => json!([s, "foo"][r.below(2)]),
    }
}

fn pattern_object(r: &mut Rng, depth: usize) -> Value {
    let mut o = Map::new();
    for _ in 0..1 + r.below(3) {
        let value = if depth < 2 && r.below(3) == 0 {
            pattern_object(r, depth + 1)
        } else {
            Value::Array((0..1 + r.below(2)).map(|_| matcher(r)).collect())
        };
        o.insert(r.pick(&KEYS).into(), value);
    }
    if r.below(6) == 0 {
        o.insert(
            "$or".into(),
            json!([pattern_object(r, depth + 1), pattern_object(r, depth + 1)]),
        );
    }
    Value::Object(o)
}

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
