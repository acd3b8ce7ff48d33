//! Random event patterns and events over a small vocabulary (strings that differ by case and
//! by non-ASCII folding, numbers, booleans, null, nested objects and arrays of objects), so
//! that random pairs match often enough to compare two matchers on them: the compiled set with
//! the single-pattern matcher (`pattern/set/tests.rs`), skiff with event-ruler
//! (`examples/pattern_cases.rs`).

use serde_json::{json, Map, Value};

/// xorshift64: deterministic, so a failure names a seed that reproduces it.
pub struct Rng(pub u64);

impl Rng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub fn pick<T: Clone>(&mut self, xs: &[T]) -> T {
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

pub fn event_object(r: &mut Rng, depth: usize) -> Value {
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

pub fn pattern_object(r: &mut Rng, depth: usize) -> Value {
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
