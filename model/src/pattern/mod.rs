//! EventBridge event patterns: parsed and checked once ([`Pattern::compile`]), then matched
//! against events ([`Pattern::matches`]) without re-reading the pattern's JSON.
//!
//! Semantics follow EventBridge (and its open-source matcher, event-ruler): every field named
//! must match (AND), any value listed for a field may match (OR), `$or` lists alternative
//! sub-patterns; an array in the event matches if any element does; fields of a nested pattern
//! must all match inside the *same* element of an array of objects ("array-consistent"
//! matching); `exists` looks at leaves only (an object is not a leaf); numbers compare as
//! IEEE-754 doubles, exactly, over their whole range; strings, numbers, booleans and null never
//! match each other, and `anything-but` lets every leaf through that it does not exclude
//! (an `anything-but` prefix passes numbers, booleans and null) — all as event-ruler does,
//! checked side by side with it on the same events by `bench_patterns`.

mod set;

use std::net::IpAddr;

use serde_json::Value;

pub use set::{PatternSet, MAX_BRANCHES};

/// A pattern that does not make sense, with the path of the offending part
/// (`detail.size[0].numeric`) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {problem}")]
pub struct PatternError {
    pub path: String,
    pub problem: String,
}

fn err(path: &str, problem: impl Into<String>) -> PatternError {
    PatternError {
        path: if path.is_empty() {
            "pattern".into()
        } else {
            path.into()
        },
        problem: problem.into(),
    }
}

/// Where an event failed a pattern: the field's path (keys from the top), what the event has
/// there (None: nothing), and why it did not match.
#[derive(Debug, Clone, PartialEq)]
pub struct Mismatch {
    pub path: Vec<String>,
    pub found: Option<Value>,
    pub why: String,
}

impl Mismatch {
    /// `detail.total`, or `(the event)` for the top.
    pub fn dotted(&self) -> String {
        if self.path.is_empty() {
            "(the event)".into()
        } else {
            self.path.join(".")
        }
    }
}

/// A compiled event pattern.
#[derive(Debug, Clone, PartialEq)]
pub struct Pattern {
    fields: Vec<(String, Node)>,
    /// Each entry is one `$or`: at least one of its alternatives must match.
    ors: Vec<Vec<Pattern>>,
}

#[derive(Debug, Clone, PartialEq)]
enum Node {
    Nested(Pattern),
    Leaf(Vec<Matcher>),
}

#[derive(Debug, Clone, PartialEq)]
enum Matcher {
    Str(String),
    /// As [`order_key`]: 300, 300.0 and 3e2 are one number.
    Num(u64),
    Bool(bool),
    Null,
    Prefix(String),
    PrefixIgnoreCase(String),
    Suffix(String),
    SuffixIgnoreCase(String),
    EqualsIgnoreCase(String),
    Wildcard(Wildcard),
    AnythingBut(Excluded),
    Numeric {
        lower: Option<(u64, bool)>,
        upper: Option<(u64, bool)>,
    },
    Cidr(Cidr),
    Exists(bool),
}

/// What `anything-but` excludes.
#[derive(Debug, Clone, PartialEq)]
enum Excluded {
    Strings(Vec<String>),
    Numbers(Vec<u64>),
    /// Strings starting with any of these are excluded.
    Prefixes(Vec<String>),
    Suffixes(Vec<String>),
    IgnoreCase(Vec<String>),
    Wildcards(Vec<Wildcard>),
}

/// A wildcard value split at its unescaped `*`s.
#[derive(Debug, Clone, PartialEq)]
struct Wildcard {
    parts: Vec<String>,
}

#[derive(Debug, Clone, PartialEq)]
struct Cidr {
    net: IpAddr,
    bits: u8,
}

/// A number as an integer with the same order: numbers compare as IEEE-754 doubles, exactly
/// (event-ruler does the same), and integers compare faster than floats in the lookups.
fn order_key(n: f64) -> u64 {
    let bits = (n + 0.0).to_bits(); // -0.0 + 0.0 is 0.0: one zero
    if bits >> 63 == 1 {
        !bits
    } else {
        bits | 1 << 63
    }
}

fn number(v: &Value) -> Option<f64> {
    v.as_f64()
}

impl Wildcard {
    fn parse(path: &str, s: &str) -> Result<Wildcard, PatternError> {
        let mut parts = vec![String::new()];
        let mut chars = s.chars().peekable();
        let mut last_star = false;
        while let Some(c) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some(e @ ('*' | '\\')) => {
                        parts.last_mut().unwrap().push(e);
                        last_star = false;
                    }
                    _ => {
                        return Err(err(
                            path,
                            format!("{s:?}: a backslash may only escape '*' or '\\'"),
                        ))
                    }
                },
                '*' => {
                    if last_star {
                        return Err(err(path, format!("{s:?}: consecutive '*' are not allowed")));
                    }
                    parts.push(String::new());
                    last_star = true;
                }
                c => {
                    parts.last_mut().unwrap().push(c);
                    last_star = false;
                }
            }
        }
        Ok(Wildcard { parts })
    }

    fn matches(&self, s: &str) -> bool {
        let (first, rest) = self.parts.split_first().expect("at least one part");
        let Some(mut s) = s.strip_prefix(first.as_str()) else {
            return false;
        };
        let Some((last, middle)) = rest.split_last() else {
            return s.is_empty();
        };
        for part in middle {
            match s.find(part.as_str()) {
                Some(i) => s = &s[i + part.len()..],
                None => return false,
            }
        }
        s.len() >= last.len() && s.ends_with(last.as_str())
    }
}

impl Cidr {
    fn parse(path: &str, s: &str) -> Result<Cidr, PatternError> {
        let bad = || {
            err(
                path,
                format!("{s:?} is not a CIDR block (10.0.0.0/24, 2001:db8::/32)"),
            )
        };
        let (ip, bits) = s.split_once('/').ok_or_else(bad)?;
        let net: IpAddr = ip.parse().map_err(|_| bad())?;
        let bits: u8 = bits.parse().map_err(|_| bad())?;
        let max = if net.is_ipv4() { 32 } else { 128 };
        if bits > max {
            return Err(bad());
        }
        Ok(Cidr { net, bits })
    }

    fn contains(&self, s: &str) -> bool {
        let Ok(ip) = s.parse::<IpAddr>() else {
            return false;
        };
        let mask = |bits: u8, width: u32| -> u128 {
            if bits == 0 {
                0
            } else {
                (!0u128 << (width - u32::from(bits)))
                    & (if width == 128 {
                        !0
                    } else {
                        (1u128 << width) - 1
                    })
            }
        };
        match (self.net, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let m = mask(self.bits, 32);
                (u128::from(u32::from(n)) & m) == (u128::from(u32::from(a)) & m)
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let m = mask(self.bits, 128);
                (u128::from(n) & m) == (u128::from(a) & m)
            }
            _ => false,
        }
    }
}

fn one_string(path: &str, op: &str, v: &Value) -> Result<String, PatternError> {
    v.as_str()
        .map(str::to_string)
        .ok_or_else(|| err(path, format!("\"{op}\" needs a string, got {v}")))
}

fn strings(path: &str, op: &str, v: &Value) -> Result<Vec<String>, PatternError> {
    match v {
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(a) if !a.is_empty() => a.iter().map(|x| one_string(path, op, x)).collect(),
        _ => Err(err(
            path,
            format!("\"{op}\" needs a string or a non-empty list of strings, got {v}"),
        )),
    }
}

fn checked_number(path: &str, v: &Value) -> Result<u64, PatternError> {
    let n = number(v).ok_or_else(|| err(path, format!("{v} is not a number")))?;
    Ok(order_key(n))
}

fn numeric(path: &str, v: &Value) -> Result<Matcher, PatternError> {
    let bad = |why: &str| {
        err(
            path,
            format!("\"numeric\": {why}; write e.g. [\">\", 0, \"<=\", 5] or [\"=\", 3]"),
        )
    };
    let a = v.as_array().ok_or_else(|| bad("needs a list"))?;
    if a.is_empty() || a.len() % 2 != 0 || a.len() > 4 {
        return Err(bad("needs one or two operator/number pairs"));
    }
    if a.len() == 4 && !matches!(a[0].as_str(), Some(">" | ">=")) {
        return Err(bad(
            "with two bounds, the lower one (\">\" or \">=\") comes first",
        ));
    }
    let mut lower = None;
    let mut upper = None;
    for pair in a.chunks(2) {
        let op = pair[0]
            .as_str()
            .ok_or_else(|| bad("operators are strings"))?;
        let n = checked_number(path, &pair[1])?;
        match op {
            "=" if a.len() == 2 => {
                lower = Some((n, true));
                upper = Some((n, true));
            }
            ">" | ">=" if lower.is_none() => lower = Some((n, op == ">=")),
            "<" | "<=" if upper.is_none() => upper = Some((n, op == "<=")),
            "=" | ">" | ">=" | "<" | "<=" => {
                return Err(bad(&format!("{op:?} cannot be combined like this")))
            }
            other => return Err(bad(&format!("{other:?} is not an operator"))),
        }
    }
    if let (4, Some((lo, _)), Some((hi, _))) = (a.len(), lower, upper) {
        // As event-ruler's rule compiler: an empty or one-point range is refused (use "=").
        if lo >= hi {
            return Err(bad(
                "the lower bound must be below the upper bound (for one value, use \"=\")",
            ));
        }
    }
    Ok(Matcher::Numeric { lower, upper })
}

/// `{"equals-ignore-case": "x"}` inside prefix/suffix, or a plain string.
fn affix(path: &str, op: &str, v: &Value) -> Result<(String, bool), PatternError> {
    match v {
        Value::String(s) => Ok((s.clone(), false)),
        Value::Object(o) if o.len() == 1 && o.contains_key("equals-ignore-case") => Ok((
            one_string(
                &format!("{path}.equals-ignore-case"),
                "equals-ignore-case",
                &o["equals-ignore-case"],
            )?
            .to_lowercase(),
            true,
        )),
        _ => Err(err(
            path,
            format!("\"{op}\" needs a string or {{\"equals-ignore-case\": string}}, got {v}"),
        )),
    }
}

/// An empty prefix or suffix inside `anything-but` would exclude every string; event-ruler's
/// rule compiler refuses it, and so does this one.
fn non_empty(path: &str, op: &str, s: Vec<String>) -> Result<Vec<String>, PatternError> {
    if s.iter().any(String::is_empty) {
        return Err(err(
            path,
            format!("\"{op}\" inside \"anything-but\" must not be empty"),
        ));
    }
    Ok(s)
}

fn anything_but(path: &str, v: &Value) -> Result<Matcher, PatternError> {
    let ex = match v {
        Value::String(s) => Excluded::Strings(vec![s.clone()]),
        Value::Number(_) => Excluded::Numbers(vec![checked_number(path, v)?]),
        Value::Array(a) if !a.is_empty() && a.iter().all(Value::is_string) => {
            Excluded::Strings(a.iter().map(|x| x.as_str().unwrap().to_string()).collect())
        }
        Value::Array(a) if !a.is_empty() && a.iter().all(Value::is_number) => Excluded::Numbers(
            a.iter()
                .map(|x| checked_number(path, x))
                .collect::<Result<_, _>>()?,
        ),
        Value::Object(o) if o.len() == 1 => {
            let (op, inner) = o.iter().next().unwrap();
            let p = format!("{path}.{op}");
            match op.as_str() {
                "prefix" => Excluded::Prefixes(non_empty(&p, op, strings(&p, op, inner)?)?),
                "suffix" => Excluded::Suffixes(non_empty(&p, op, strings(&p, op, inner)?)?),
                "equals-ignore-case" => Excluded::IgnoreCase(
                    strings(&p, op, inner)?.iter().map(|s| s.to_lowercase()).collect(),
                ),
                "wildcard" => Excluded::Wildcards(
                    strings(&p, op, inner)?
                        .iter()
                        .map(|s| Wildcard::parse(&p, s))
                        .collect::<Result<_, _>>()?,
                ),
                other => {
                    return Err(err(
                        path,
                        format!("\"anything-but\" does not take {other:?}; use prefix, suffix, equals-ignore-case or wildcard"),
                    ))
                }
            }
        }
        _ => {
            return Err(err(
                path,
                format!("\"anything-but\" needs a string, a number, a list of only strings or only numbers, or an object; got {v}"),
            ))
        }
    };
    Ok(Matcher::AnythingBut(ex))
}

fn matcher(path: &str, v: &Value) -> Result<Matcher, PatternError> {
    match v {
        Value::String(s) => Ok(Matcher::Str(s.clone())),
        Value::Number(_) => Ok(Matcher::Num(checked_number(path, v)?)),
        Value::Bool(b) => Ok(Matcher::Bool(*b)),
        Value::Null => Ok(Matcher::Null),
        Value::Array(_) => Err(err(path, "a list inside a list of values is not allowed")),
        Value::Object(o) => {
            if o.len() != 1 {
                return Err(err(
                    path,
                    format!(
                        "an operator object has exactly one key, this one has {}",
                        o.len()
                    ),
                ));
            }
            let (op, inner) = o.iter().next().unwrap();
            let p = format!("{path}.{op}");
            Ok(match op.as_str() {
                "prefix" => match affix(&p, op, inner)? {
                    (s, false) => Matcher::Prefix(s),
                    (s, true) => Matcher::PrefixIgnoreCase(s),
                },
                "suffix" => match affix(&p, op, inner)? {
                    (s, false) => Matcher::Suffix(s),
                    (s, true) => Matcher::SuffixIgnoreCase(s),
                },
                "equals-ignore-case" => {
                    Matcher::EqualsIgnoreCase(one_string(&p, op, inner)?.to_lowercase())
                }
                "wildcard" => Matcher::Wildcard(Wildcard::parse(&p, &one_string(&p, op, inner)?)?),
                "anything-but" => anything_but(&p, inner)?,
                "numeric" => numeric(&p, inner)?,
                "cidr" => Matcher::Cidr(Cidr::parse(&p, &one_string(&p, op, inner)?)?),
                "exists" => Matcher::Exists(inner.as_bool().ok_or_else(|| {
                    err(&p, format!("\"exists\" needs true or false, got {inner}"))
                })?),
                other => {
                    return Err(err(
                        path,
                        format!(
                            "unknown operator {other:?}; use prefix, suffix, equals-ignore-case, \
                             wildcard, anything-but, numeric, cidr or exists"
                        ),
                    ))
                }
            })
        }
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

impl Pattern {
    /// Parses and checks a pattern given as JSON text.
    pub fn parse(text: &str) -> Result<Pattern, PatternError> {
        let v: Value =
            serde_json::from_str(text).map_err(|e| err("", format!("not valid JSON: {e}")))?;
        Pattern::compile(&v)
    }

    /// Checks a pattern and compiles it.
    pub fn compile(v: &Value) -> Result<Pattern, PatternError> {
        Pattern::object("", v)
    }

    fn object(path: &str, v: &Value) -> Result<Pattern, PatternError> {
        let o = v
            .as_object()
            .ok_or_else(|| err(path, format!("a pattern is a JSON object, got {v}")))?;
        if o.is_empty() {
            return Err(err(path, "a pattern must name at least one field"));
        }
        let mut p = Pattern {
            fields: Vec::new(),
            ors: Vec::new(),
        };
        for (key, sub) in o {
            let here = join(path, key);
            if key == "$or" {
                let alts = sub
                    .as_array()
                    .filter(|a| a.len() >= 2)
                    .ok_or_else(|| err(&here, "\"$or\" needs a list of at least two patterns"))?;
                p.ors.push(
                    alts.iter()
                        .enumerate()
                        .map(|(i, a)| Pattern::object(&format!("{here}[{i}]"), a))
                        .collect::<Result<_, _>>()?,
                );
                continue;
            }
            let node = match sub {
                Value::Object(_) => Node::Nested(Pattern::object(&here, sub)?),
                Value::Array(values) => {
                    if values.is_empty() {
                        return Err(err(&here, "a list of values must not be empty"));
                    }
                    Node::Leaf(
                        values
                            .iter()
                            .enumerate()
                            .map(|(i, m)| matcher(&format!("{here}[{i}]"), m))
                            .collect::<Result<_, _>>()?,
                    )
                }
                other => {
                    return Err(err(
                        &here,
                        format!(
                        "a field's value must be a list of values ([{other}]) or a nested pattern"
                    ),
                    ))
                }
            };
            p.fields.push((key.clone(), node));
        }
        Ok(p)
    }

    /// Whether `event` matches.
    pub fn matches(&self, event: &Value) -> bool {
        self.matches_object(Some(event))
    }

    /// `v` is where this (sub-)pattern's fields are looked up; None = absent.
    fn matches_object(&self, v: Option<&Value>) -> bool {
        // An array of objects: the whole sub-pattern must match within one element.
        if let Some(Value::Array(items)) = v {
            let mut objects = Vec::new();
            flatten_objects(items, &mut objects);
            if !objects.is_empty() {
                return objects.iter().any(|o| self.matches_object(Some(o)));
            }
        }
        let obj = v.and_then(Value::as_object);
        self.fields.iter().all(|(key, node)| {
            let field = obj.and_then(|o| o.get(key));
            match node {
                Node::Nested(p) => p.matches_object(field),
                Node::Leaf(ms) => {
                    let mut leaves = Vec::new();
                    if let Some(f) = field {
                        collect_leaves(f, &mut leaves);
                    }
                    ms.iter().any(|m| m.matches(&leaves))
                }
            }
        }) && self
            .ors
            .iter()
            .all(|alts| alts.iter().any(|p| p.matches_object(v)))
    }

    /// Why `event` does not match: the first field (in the pattern's order) that failed, or
    /// None when it matches. For people asking "why didn't my rule fire?".
    pub fn mismatch(&self, event: &Value) -> Option<Mismatch> {
        self.mismatch_at(&mut Vec::new(), Some(event))
    }

    fn mismatch_at(&self, path: &mut Vec<String>, v: Option<&Value>) -> Option<Mismatch> {
        let here = |path: &Vec<String>, why: &str| Mismatch {
            path: path.clone(),
            found: v.cloned(),
            why: why.to_string(),
        };
        if let Some(Value::Array(items)) = v {
            let mut objects = Vec::new();
            flatten_objects(items, &mut objects);
            if !objects.is_empty() {
                if objects.iter().any(|o| self.matches_object(Some(o))) {
                    return None;
                }
                return Some(here(
                    path,
                    "no one element of this array matches every field the pattern names in it",
                ));
            }
        }
        let obj = v.and_then(Value::as_object);
        for (key, node) in &self.fields {
            let field = obj.and_then(|o| o.get(key));
            path.push(key.clone());
            let found = match node {
                Node::Nested(p) => p.mismatch_at(path, field),
                Node::Leaf(ms) => {
                    let mut leaves = Vec::new();
                    if let Some(f) = field {
                        collect_leaves(f, &mut leaves);
                    }
                    (!ms.iter().any(|m| m.matches(&leaves))).then(|| Mismatch {
                        path: path.clone(),
                        found: field.cloned(),
                        why: if field.is_none() {
                            "the event has no such field".into()
                        } else {
                            "no value the pattern lists matches".into()
                        },
                    })
                }
            };
            path.pop();
            if found.is_some() {
                return found;
            }
        }
        for alts in &self.ors {
            if !alts.iter().any(|p| p.matches_object(v)) {
                return Some(here(path, "none of the $or alternatives matches"));
            }
        }
        None
    }
}

fn flatten_objects<'a>(items: &'a [Value], out: &mut Vec<&'a Value>) {
    for i in items {
        match i {
            Value::Object(_) => out.push(i),
            Value::Array(a) => flatten_objects(a, out),
            _ => {}
        }
    }
}

/// The leaf values at a field: the value itself, or the non-object elements of (nested) arrays.
fn collect_leaves<'a>(v: &'a Value, out: &mut Vec<&'a Value>) {
    match v {
        Value::Array(a) => a.iter().for_each(|x| collect_leaves(x, out)),
        Value::Object(_) => {}
        other => out.push(other),
    }
}

impl Matcher {
    fn matches(&self, leaves: &[&Value]) -> bool {
        match self {
            Matcher::Exists(want) => *want != leaves.is_empty(),
            _ => leaves.iter().any(|v| self.matches_value(v)),
        }
    }

    fn matches_value(&self, v: &Value) -> bool {
        Leaf::of(v).is_some_and(|leaf| self.matches_leaf(leaf))
    }

    /// Whether one leaf satisfies this matcher, `exists: true` included (any leaf does).
    fn holds(&self, v: Leaf<'_>) -> bool {
        match self {
            Matcher::Exists(want) => *want,
            _ => self.matches_leaf(v),
        }
    }

    /// Whether one leaf matches; the single definition both the per-pattern matcher and the
    /// compiled [`PatternSet`] fall back on.
    fn matches_leaf(&self, v: Leaf<'_>) -> bool {
        let s = v.as_str();
        match self {
            Matcher::Str(x) => s == Some(x.as_str()),
            Matcher::Num(x) => v.as_number().is_some_and(|n| order_key(n) == *x),
            Matcher::Bool(b) => matches!(v, Leaf::Bool(x) if x == *b),
            Matcher::Null => matches!(v, Leaf::Null),
            Matcher::Prefix(p) => s.is_some_and(|s| s.starts_with(p.as_str())),
            Matcher::PrefixIgnoreCase(p) => s.is_some_and(|s| fold_starts_with(s, p)),
            Matcher::Suffix(p) => s.is_some_and(|s| s.ends_with(p.as_str())),
            Matcher::SuffixIgnoreCase(p) => s.is_some_and(|s| fold_ends_with(s, p)),
            Matcher::EqualsIgnoreCase(x) => s.is_some_and(|s| fold_eq(s, x)),
            Matcher::Wildcard(w) => s.is_some_and(|s| w.matches(s)),
            Matcher::Cidr(c) => s.is_some_and(|s| c.contains(s)),
            Matcher::Numeric { lower, upper } => v.as_number().is_some_and(|n| {
                let n = order_key(n);
                lower.is_none_or(|(lo, inc)| if inc { n >= lo } else { n > lo })
                    && upper.is_none_or(|(hi, inc)| if inc { n <= hi } else { n < hi })
            }),
            Matcher::AnythingBut(ex) => ex.allows(v),
            Matcher::Exists(_) => unreachable!("decided on the whole field"),
        }
    }
}

impl Excluded {
    /// Whether `anything-but` lets this leaf through.
    fn allows(&self, v: Leaf<'_>) -> bool {
        let s = v.as_str();
        match self {
            Excluded::Strings(xs) => !s.is_some_and(|s| xs.iter().any(|x| x == s)),
            Excluded::Numbers(xs) => !v.as_number().is_some_and(|n| xs.contains(&order_key(n))),
            Excluded::Prefixes(ps) => {
                !s.is_some_and(|s| ps.iter().any(|p| s.starts_with(p.as_str())))
            }
            Excluded::Suffixes(ps) => {
                !s.is_some_and(|s| ps.iter().any(|p| s.ends_with(p.as_str())))
            }
            Excluded::IgnoreCase(xs) => !s.is_some_and(|s| xs.iter().any(|x| fold_eq(s, x))),
            Excluded::Wildcards(ws) => !s.is_some_and(|s| ws.iter().any(|w| w.matches(s))),
        }
    }
}

// Case-insensitive comparisons of a leaf with a lower-cased pattern value, as
// `s.to_lowercase()` would compare (the definition), without allocating for ASCII leaves.

fn fold_eq(s: &str, lower: &str) -> bool {
    if s.is_ascii() {
        s.eq_ignore_ascii_case(lower)
    } else {
        s.to_lowercase() == lower
    }
}

fn fold_starts_with(s: &str, lower: &str) -> bool {
    if s.is_ascii() {
        s.len() >= lower.len() && s.as_bytes()[..lower.len()].eq_ignore_ascii_case(lower.as_bytes())
    } else {
        s.to_lowercase().starts_with(lower)
    }
}

fn fold_ends_with(s: &str, lower: &str) -> bool {
    if s.is_ascii() {
        s.len() >= lower.len()
            && s.as_bytes()[s.len() - lower.len()..].eq_ignore_ascii_case(lower.as_bytes())
    } else {
        s.to_lowercase().ends_with(lower)
    }
}

/// One leaf of an event (a string, number, boolean or null), however the event was read.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Leaf<'a> {
    Str(&'a str),
    Num(f64),
    Bool(bool),
    Null,
}

impl<'a> Leaf<'a> {
    fn of(v: &'a Value) -> Option<Leaf<'a>> {
        Some(match v {
            Value::String(s) => Leaf::Str(s),
            Value::Number(_) => Leaf::Num(number(v)?),
            Value::Bool(b) => Leaf::Bool(*b),
            Value::Null => Leaf::Null,
            Value::Array(_) | Value::Object(_) => return None,
        })
    }

    fn as_str(self) -> Option<&'a str> {
        match self {
            Leaf::Str(s) => Some(s),
            _ => None,
        }
    }

    fn as_number(self) -> Option<f64> {
        match self {
            Leaf::Num(n) => Some(n),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// Whether `event` matches, asserting that the compiled set (over the tree and over the
    /// JSON text) answers the same as the pattern alone.
    fn m(pattern: Value, event: Value) -> bool {
        let p = Pattern::compile(&pattern).unwrap_or_else(|e| panic!("{pattern}: {e}"));
        let alone = p.matches(&event);
        let set = PatternSet::new([p]);
        let want: Vec<usize> = if alone { vec![0] } else { vec![] };
        assert_eq!(set.matches(&event), want, "set, tree: {pattern} on {event}");
        let text = event.to_string();
        assert_eq!(
            set.matches_json(text.as_bytes()).unwrap(),
            want,
            "set, text: {pattern} on {event}"
        );
        alone
    }

    fn invalid(pattern: Value) -> PatternError {
        Pattern::compile(&pattern).expect_err(&pattern.to_string())
    }

    #[test]
    fn a_mismatch_names_the_first_field_that_failed() {
        let ev = json!({"source": "shop", "detail-type": "OrderPlaced",
                        "detail": {"total": 50, "items": [{"sku": "a", "qty": 1}]}});
        let p = |v: Value| Pattern::compile(&v).unwrap();
        let ok = p(json!({"source": ["shop"], "detail": {"total": [{"numeric": [">", 10]}]}}));
        assert_eq!(ok.mismatch(&ev), None);
        let m = p(json!({"source": ["shop"], "detail": {"total": [{"numeric": [">", 100]}]}}))
            .mismatch(&ev)
            .unwrap();
        assert_eq!(m.dotted(), "detail.total");
        assert_eq!(m.found, Some(json!(50)));
        let m = p(json!({"detail": {"currency": ["EUR"]}}))
            .mismatch(&ev)
            .unwrap();
        assert_eq!(m.dotted(), "detail.currency");
        assert_eq!(m.found, None);
        assert!(m.why.contains("no such field"), "{}", m.why);
        // Array-consistent: sku a with qty 2 is in no single element.
        let m = p(json!({"detail": {"items": {"sku": ["a"], "qty": [2]}}}))
            .mismatch(&ev)
            .unwrap();
        assert_eq!(m.dotted(), "detail.items");
        let m = p(json!({"$or": [{"source": ["x"]}, {"detail-type": ["y"]}]}))
            .mismatch(&ev)
            .unwrap();
        assert_eq!(m.dotted(), "(the event)");
        assert!(m.why.contains("$or"), "{}", m.why);
    }

    #[test]
    fn exact_values_arrays_and_nesting() {
        let ev = json!({"source": "aws.s3", "detail": {"bucket": {"name": "photos"}, "size": 300},
                        "resources": ["arn:a", "arn:b"]});
        assert!(m(json!({"source": ["aws.s3"]}), ev.clone()));
        assert!(m(json!({"source": ["x", "aws.s3"]}), ev.clone()));
        assert!(!m(json!({"source": ["aws.ec2"]}), ev.clone()));
        assert!(m(
            json!({"detail": {"bucket": {"name": ["photos"]}}}),
            ev.clone()
        ));
        assert!(m(json!({"resources": ["arn:b", "arn:z"]}), ev.clone()));
        assert!(!m(json!({"resources": ["arn:z"]}), ev.clone()));
        // AND across fields; a missing field fails.
        assert!(!m(json!({"source": ["aws.s3"], "nope": ["x"]}), ev.clone()));
        // Types never cross: "300" is not 300; 300 equals 300.0 and 3e2.
        assert!(!m(json!({"detail": {"size": ["300"]}}), ev.clone()));
        assert!(m(json!({"detail": {"size": [300.0]}}), ev.clone()));
        assert!(m(json!({"detail": {"size": [3e2]}}), ev.clone()));
        assert!(!m(json!({"detail": {"size": [true]}}), ev));
    }

    #[test]
    fn null_empty_string_and_exists() {
        let ev = json!({"a": null, "b": "", "c": {"d": 1}, "e": []});
        assert!(m(json!({"a": [null]}), ev.clone()));
        assert!(!m(json!({"b": [null]}), ev.clone()));
        assert!(m(json!({"b": [""]}), ev.clone()));
        assert!(!m(json!({"missing": [null]}), ev.clone()));
        assert!(m(json!({"a": [{"exists": true}]}), ev.clone()));
        assert!(m(json!({"missing": [{"exists": false}]}), ev.clone()));
        assert!(!m(json!({"b": [{"exists": false}]}), ev.clone()));
        // Only leaves exist: an object is not one.
        assert!(m(json!({"c": [{"exists": false}]}), ev.clone()));
        assert!(!m(json!({"c": [{"exists": true}]}), ev.clone()));
        assert!(m(json!({"e": [{"exists": false}]}), ev.clone()));
        // Under a missing parent, everything is absent.
        assert!(m(json!({"x": {"y": [{"exists": false}]}}), ev));
    }

    #[test]
    fn string_operators() {
        let ev = json!({"key": "input/Photo Of Me.JPG", "ip": "10.0.0.33", "ip6": "2001:db8::1"});
        assert!(m(json!({"key": [{"prefix": "input/"}]}), ev.clone()));
        assert!(!m(json!({"key": [{"prefix": "Input/"}]}), ev.clone()));
        assert!(m(
            json!({"key": [{"prefix": {"equals-ignore-case": "INPUT/"}}]}),
            ev.clone()
        ));
        assert!(m(json!({"key": [{"suffix": ".JPG"}]}), ev.clone()));
        assert!(m(
            json!({"key": [{"suffix": {"equals-ignore-case": ".jpg"}}]}),
            ev.clone()
        ));
        assert!(m(
            json!({"key": [{"equals-ignore-case": "INPUT/photo of me.jpg"}]}),
            ev.clone()
        ));
        assert!(m(json!({"key": [{"wildcard": "input/*.JPG"}]}), ev.clone()));
        assert!(m(json!({"key": [{"wildcard": "*Of*"}]}), ev.clone()));
        assert!(!m(
            json!({"key": [{"wildcard": "input/*.png"}]}),
            ev.clone()
        ));
        assert!(m(
            json!({"s": [{"wildcard": "a\\*b"}]}),
            json!({"s": "a*b"})
        ));
        assert!(!m(
            json!({"s": [{"wildcard": "a\\*b"}]}),
            json!({"s": "axxb"})
        ));
        assert!(m(
            json!({"s": [{"wildcard": "ab*ab"}]}),
            json!({"s": "abab"})
        ));
        assert!(!m(
            json!({"s": [{"wildcard": "ab*ab"}]}),
            json!({"s": "aba"})
        ));
        assert!(m(json!({"ip": [{"cidr": "10.0.0.0/24"}]}), ev.clone()));
        assert!(!m(json!({"ip": [{"cidr": "10.0.1.0/24"}]}), ev.clone()));
        assert!(m(json!({"ip6": [{"cidr": "2001:db8::/32"}]}), ev.clone()));
        assert!(m(json!({"ip": [{"cidr": "0.0.0.0/0"}]}), ev.clone()));
        // String operators never match numbers.
        assert!(!m(json!({"n": [{"prefix": "1"}]}), json!({"n": 12})));
    }

    #[test]
    fn anything_but() {
        let ev = json!({"state": "running", "n": 5, "list": ["a", "b"]});
        assert!(m(
            json!({"state": [{"anything-but": "stopped"}]}),
            ev.clone()
        ));
        assert!(!m(
            json!({"state": [{"anything-but": ["running", "x"]}]}),
            ev.clone()
        ));
        assert!(m(json!({"n": [{"anything-but": [1, 2]}]}), ev.clone()));
        assert!(!m(json!({"n": [{"anything-but": 5}]}), ev.clone()));
        assert!(!m(
            json!({"state": [{"anything-but": {"prefix": "run"}}]}),
            ev.clone()
        ));
        assert!(m(
            json!({"state": [{"anything-but": {"suffix": "x"}}]}),
            ev.clone()
        ));
        assert!(!m(
            json!({"state": [{"anything-but": {"equals-ignore-case": ["RUNNING"]}}]}),
            ev.clone()
        ));
        assert!(!m(
            json!({"state": [{"anything-but": {"wildcard": "r*g"}}]}),
            ev.clone()
        ));
        // Any element other than the excluded ones matches; a missing field does not.
        assert!(m(json!({"list": [{"anything-but": "a"}]}), ev.clone()));
        assert!(!m(json!({"missing": [{"anything-but": "a"}]}), ev));
    }

    #[test]
    fn numeric_ranges() {
        let ev = json!({"size": 300, "f": 0.5});
        assert!(m(
            json!({"size": [{"numeric": [">", 0, "<=", 300]}]}),
            ev.clone()
        ));
        assert!(!m(
            json!({"size": [{"numeric": [">", 0, "<", 300]}]}),
            ev.clone()
        ));
        assert!(m(json!({"size": [{"numeric": ["=", 3.0e2]}]}), ev.clone()));
        assert!(m(json!({"f": [{"numeric": [">=", 0.5]}]}), ev.clone()));
        assert!(!m(json!({"size": [{"numeric": ["<", 10]}]}), ev.clone()));
        assert!(!m(
            json!({"size": [{"numeric": [">", 0]}]}),
            json!({"size": "300"})
        ));
        // Several values are OR'ed: outside a range.
        assert!(m(
            json!({"size": [{"numeric": ["<", 10]}, {"numeric": [">", 100]}]}),
            ev
        ));
        // Doubles compare exactly over their whole range, as event-ruler compares them: a
        // coordinate a hair past a bound is past it, and big numbers are numbers.
        let x = json!({"x": -122.4499999999, "big": 1e20, "zero": -0.0});
        assert!(m(json!({"x": [{"numeric": [">", -122.45]}]}), x.clone()));
        assert!(!m(json!({"x": [{"numeric": ["=", -122.45]}]}), x.clone()));
        assert!(m(json!({"big": [{"numeric": [">", 1e10]}]}), x.clone()));
        assert!(m(json!({"big": [1e20]}), x.clone()));
        assert!(m(json!({"zero": [{"numeric": ["=", 0]}]}), x.clone()));
        assert!(m(
            json!({"zero": [{"numeric": [">", -1e300, "<", 1e300]}]}),
            x
        ));
    }

    #[test]
    fn or_and_arrays_of_objects() {
        let ev = json!({"source": "app", "detail": {"employees": [
            {"first": "John", "last": "Doe"}, {"first": "Anna", "last": "Smith"},
            [{"first": "Peter", "last": "Jones"}]]}});
        assert!(m(
            json!({"detail": {"employees": {"first": ["Anna"]}}}),
            ev.clone()
        ));
        assert!(m(
            json!({"detail": {"employees": {"first": ["Peter"], "last": ["Jones"]}}}),
            ev.clone()
        ));
        // Array-consistent: Anna and Jones are in different elements.
        assert!(!m(
            json!({"detail": {"employees": {"first": ["Anna"], "last": ["Jones"]}}}),
            ev.clone()
        ));
        assert!(m(
            json!({"source": ["app"], "$or": [{"detail": {"employees": {"first": ["Nobody"]}}},
                                               {"source": ["app"]}]}),
            ev.clone()
        ));
        assert!(!m(
            json!({"$or": [{"source": ["x"]}, {"detail": {"employees": {"last": ["Nobody"]}}}]}),
            ev.clone()
        ));
        // $or nested inside a nested pattern.
        assert!(m(
            json!({"detail": {"employees": {"$or": [{"first": ["Anna"]}, {"last": ["X"]}]}}}),
            ev
        ));
    }

    #[test]
    fn anything_but_takes_a_list_of_prefixes_or_suffixes_as_event_ruler_does() {
        let ev = |s: &str| json!({"a": s});
        let p = json!({"a": [{"anything-but": {"prefix": ["in/", "tmp/"]}}]});
        assert!(m(p.clone(), ev("out/x")));
        assert!(!m(p.clone(), ev("in/x")));
        assert!(!m(p.clone(), ev("tmp/x")));
        // Like every anything-but, it lets through what it does not exclude: numbers too.
        assert!(m(p, json!({"a": 5})));
        let p = json!({"a": [{"anything-but": {"suffix": [".tmp", ".part"]}}]});
        assert!(m(p.clone(), ev("x.jpg")));
        assert!(!m(p, ev("x.part")));
        let e = invalid(json!({"a": [{"anything-but": {"prefix": ["x", ""]}}]}));
        assert_eq!(e.path, "a[0].anything-but.prefix");
    }

    #[test]
    fn anything_but_of_every_kind_lets_null_numbers_and_booleans_through() {
        // As event-ruler answers (probed side by side): only a string can be excluded by a
        // prefix, suffix, case-folded value or wildcard, and only a number by a number.
        let kinds = [
            json!({"anything-but": "S"}),
            json!({"anything-but": {"prefix": "S"}}),
            json!({"anything-but": {"suffix": "S"}}),
            json!({"anything-but": {"equals-ignore-case": "s"}}),
            json!({"anything-but": {"wildcard": "S*"}}),
        ];
        for k in kinds {
            let p = json!({ "f": [k] });
            for v in [json!(null), json!(5), json!(true), json!("x")] {
                assert!(m(p.clone(), json!({ "f": v })), "{p} on {v}");
            }
            assert!(!m(p.clone(), json!({"f": "S"})), "{p}");
            assert!(!m(p.clone(), json!({"f": []})), "{p}: no leaf");
            assert!(!m(p, json!({"f": {"g": 1}})), "an object is not a leaf");
        }
        let p = json!({"f": [{"anything-but": [5]}]});
        assert!(m(p.clone(), json!({"f": "5"})));
        assert!(m(p.clone(), json!({"f": null})));
        assert!(!m(p, json!({"f": 5.0})));
    }

    #[test]
    fn bad_patterns_name_the_path_and_operator() {
        let cases = [
            (json!({"source": "aws.s3"}), "source"),
            (json!({"source": []}), "source"),
            (json!({}), "pattern"),
            (json!({"a": [{"prefix": 5}]}), "a[0].prefix"),
            (json!({"a": [{"numeric": [">", "x"]}]}), "a[0].numeric"),
            (
                json!({"a": [{"numeric": ["<", 1, ">", 0]}]}),
                "a[0].numeric",
            ),
            (
                json!({"a": [{"numeric": [">", 5, "<", 1]}]}),
                "a[0].numeric",
            ),
            // Degenerate operands event-ruler's rule compiler refuses: a one-point range,
            // an empty prefix or suffix to exclude.
            (
                json!({"a": [{"numeric": [">=", 5, "<=", 5]}]}),
                "a[0].numeric",
            ),
            (
                json!({"a": [{"numeric": [">", 5.0000001, "<", 5]}]}),
                "a[0].numeric",
            ),
            (
                json!({"a": [{"anything-but": {"prefix": ""}}]}),
                "a[0].anything-but.prefix",
            ),
            (
                json!({"a": [{"anything-but": {"suffix": ""}}]}),
                "a[0].anything-but.suffix",
            ),
            (json!({"a": [{"cidr": "10.0.0.0/33"}]}), "a[0].cidr"),
            (json!({"a": [{"exists": "yes"}]}), "a[0].exists"),
            (json!({"a": [{"wildcard": "a**b"}]}), "a[0].wildcard"),
            (json!({"a": [{"wildcard": "a\\b"}]}), "a[0].wildcard"),
            (
                json!({"a": [{"anything-but": ["x", 1]}]}),
                "a[0].anything-but",
            ),
            (
                json!({"a": [{"anything-but": {"numeric": [">", 1]}}]}),
                "a[0].anything-but",
            ),
            (json!({"a": [{"regex": "x"}]}), "a[0]"),
            (json!({"a": [{"prefix": "x", "suffix": "y"}]}), "a[0]"),
            (json!({"a": [["x"]]}), "a[0]"),
            (json!({"$or": [{"a": ["x"]}]}), "$or"),
            (
                json!({"d": {"$or": [{"a": ["x"]}, {"b": "y"}]}}),
                "d.$or[1].b",
            ),
        ];
        for (p, path) in cases {
            let e = invalid(p.clone());
            assert_eq!(e.path, path, "{p}: {e}");
        }
        assert!(invalid(json!({"a": [{"regex": "x"}]}))
            .problem
            .contains("unknown operator \"regex\""));
        assert!(Pattern::parse("{")
            .unwrap_err()
            .problem
            .contains("not valid JSON"));
    }
}
