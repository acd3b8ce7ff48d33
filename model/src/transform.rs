//! What a rule's target receives: the whole event, the part at a JSON path, or EventBridge's
//! input transformer (values picked by paths, substituted into a template).

use std::collections::BTreeMap;

use serde_json::Value;

use crate::model::TargetInput;

/// A JSON path as EventBridge takes them: `$`, `$.detail.key`, `$.detail.list[0].name`.
/// None = not a path.
pub fn parse_path(path: &str) -> Option<Vec<Step>> {
    let rest = path.strip_prefix('$')?;
    let mut steps = Vec::new();
    let mut chars = rest.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '.' => {
                let mut name = String::new();
                while let Some(&n) = chars.peek() {
                    if n == '.' || n == '[' {
                        break;
                    }
                    name.push(n);
                    chars.next();
                }
                if name.is_empty() {
                    return None;
                }
                steps.push(Step::Field(name));
            }
            '[' => {
                let mut idx = String::new();
                for n in chars.by_ref() {
                    if n == ']' {
                        break;
                    }
                    idx.push(n);
                }
                steps.push(Step::Index(idx.parse().ok()?));
            }
            _ => return None,
        }
    }
    Some(steps)
}

#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    Field(String),
    Index(usize),
}

/// The value at a path (None when it is not there).
pub fn get<'a>(v: &'a Value, steps: &[Step]) -> Option<&'a Value> {
    steps.iter().try_fold(v, |cur, s| match s {
        Step::Field(f) => cur.get(f.as_str()),
        Step::Index(i) => cur.get(*i),
    })
}

/// Checks a target's input settings: paths parse, names are plain.
pub fn check(input: &TargetInput) -> Result<(), String> {
    match input {
        TargetInput::Event => Ok(()),
        TargetInput::Path(p) => parse_path(p)
            .map(|_| ())
            .ok_or_else(|| format!("input_path: {p:?} is not a JSON path like $.detail.key")),
        TargetInput::Transformer { paths, template } => {
            if paths.len() > 100 {
                return Err("input_transformer.input_paths: at most 100 entries".into());
            }
            for (name, p) in paths {
                if name.is_empty()
                    || !name
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
                    || name.starts_with("aws.")
                {
                    return Err(format!(
                        "input_transformer.input_paths[{name:?}]: names are letters, digits, '-' and '_' (and not aws.*)"
                    ));
                }
                if parse_path(p).is_none() {
                    return Err(format!(
                        "input_transformer.input_paths[{name:?}]: {p:?} is not a JSON path like $.detail.key"
                    ));
                }
            }
            if template.is_empty() {
                return Err("input_transformer.input_template: must not be empty".into());
            }
            Ok(())
        }
    }
}

/// The input a target receives for `event` (the EventBridge envelope), as text.
pub fn render(input: &TargetInput, event: &Value, rule: &str, ingested_ms: i64) -> String {
    match input {
        TargetInput::Event => event.to_string(),
        TargetInput::Path(p) => parse_path(p)
            .and_then(|steps| get(event, &steps).cloned())
            .unwrap_or(Value::Null)
            .to_string(),
        TargetInput::Transformer { paths, template } => {
            let mut values: BTreeMap<String, Value> = paths
                .iter()
                .map(|(name, p)| {
                    let v = parse_path(p)
                        .and_then(|steps| get(event, &steps).cloned())
                        .unwrap_or(Value::Null);
                    (name.clone(), v)
                })
                .collect();
            values.insert("aws.events.event".into(), event.clone());
            values.insert("aws.events.event.json".into(), event.clone());
            values.insert("aws.events.rule-name".into(), Value::String(rule.into()));
            values.insert(
                "aws.events.event.ingestion-time".into(),
                Value::String(
                    chrono::DateTime::from_timestamp_millis(ingested_ms)
                        .unwrap_or_default()
                        .to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                ),
            );
            substitute(template, &values)
        }
    }
}

/// Replaces `<name>` with its value: inside a JSON string the bare text (escaped for JSON),
/// outside one the JSON value. Unknown `<...>` is left as written.
fn substitute(template: &str, values: &BTreeMap<String, Value>) -> String {
    let mut out = String::with_capacity(template.len());
    let mut in_string = false;
    let mut escaped = false;
    let mut rest = template;
    while let Some(c) = rest.chars().next() {
        if c == '<' {
            if let Some(end) = rest.find('>') {
                let name = &rest[1..end];
                if let Some(v) = values.get(name) {
                    if in_string {
                        let text = match v {
                            Value::String(s) => s.clone(),
                            Value::Null => String::new(),
                            other => other.to_string(),
                        };
                        let quoted = Value::String(text).to_string();
                        out.push_str(&quoted[1..quoted.len() - 1]);
                    } else {
                        out.push_str(&v.to_string());
                    }
                    rest = &rest[end + 1..];
                    escaped = false;
                    continue;
                }
            }
        }
        if c == '"' && !escaped {
            in_string = !in_string;
        }
        escaped = c == '\\' && !escaped;
        out.push(c);
        rest = &rest[c.len_utf8()..];
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event() -> Value {
        json!({"id": "e1", "source": "app", "detail": {"key": "in/a \"b\".jpg", "size": 3,
               "tags": [{"k": "x"}]}})
    }

    #[test]
    fn paths() {
        let e = event();
        assert_eq!(get(&e, &parse_path("$").unwrap()), Some(&e));
        assert_eq!(
            get(&e, &parse_path("$.detail.size").unwrap()),
            Some(&json!(3))
        );
        assert_eq!(
            get(&e, &parse_path("$.detail.tags[0].k").unwrap()),
            Some(&json!("x"))
        );
        assert_eq!(get(&e, &parse_path("$.detail.nope").unwrap()), None);
        for bad in ["detail", "$..x", "$.a[x]", "$x"] {
            assert!(parse_path(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn templates_quote_inside_strings_and_keep_json_outside() {
        let input = TargetInput::Transformer {
            paths: [("key", "$.detail.key"), ("size", "$.detail.size"), ("gone", "$.x")]
                .into_iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
            template: r#"{"file": "s3://b/<key>", "size": <size>, "raw": <key>, "none": <gone>, "rule": "<aws.events.rule-name>", "keep": "<b>"}"#.into(),
        };
        let out = render(&input, &event(), "thumbs", 0);
        let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
        assert_eq!(v["file"], "s3://b/in/a \"b\".jpg");
        assert_eq!(v["size"], 3);
        assert_eq!(v["raw"], "in/a \"b\".jpg");
        assert_eq!(v["none"], Value::Null);
        assert_eq!(v["rule"], "thumbs");
        assert_eq!(v["keep"], "<b>");
        // A plain-text template.
        let text = TargetInput::Transformer {
            paths: [("key".to_string(), "$.detail.key".to_string())].into(),
            template: "got <key> from <aws.events.event.json>".into(),
        };
        assert!(render(&text, &event(), "r", 0).starts_with("got \"in/a \\\"b\\\".jpg\" from {"));
        assert_eq!(
            render(&TargetInput::Path("$.detail.size".into()), &event(), "r", 0),
            "3"
        );
    }

    #[test]
    fn bad_inputs_are_named() {
        let bad = TargetInput::Transformer {
            paths: [("k".to_string(), "detail.key".to_string())].into(),
            template: "x".into(),
        };
        assert!(check(&bad).unwrap_err().contains("input_paths[\"k\"]"));
        assert!(check(&TargetInput::Path("nope".into())).is_err());
    }
}
