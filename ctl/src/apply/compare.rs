//! What differs between a resource on the server and the same resource as the files would
//! have it, field by field, both as the API's JSON (so the paths read as `-o json` does).

use serde_json::Value;

/// One field that differs: its path, what it is and what it would be (null: absent).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct FieldChange {
    pub path: String,
    pub from: Value,
    pub to: Value,
}

/// Every leaf that differs, in path order. Objects are compared key by key; arrays index by
/// index (an array that grew or shrank shows its added or removed items).
pub fn changes(current: &Value, desired: &Value) -> Vec<FieldChange> {
    let mut out = Vec::new();
    walk(String::new(), current, desired, &mut out);
    out
}

fn walk(path: String, from: &Value, to: &Value, out: &mut Vec<FieldChange>) {
    match (from, to) {
        (Value::Object(a), Value::Object(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for k in keys {
                let p = if path.is_empty() {
                    k.clone()
                } else {
                    format!("{path}.{k}")
                };
                walk(
                    p,
                    a.get(k).unwrap_or(&Value::Null),
                    b.get(k).unwrap_or(&Value::Null),
                    out,
                );
            }
        }
        (Value::Array(a), Value::Array(b)) => {
            for i in 0..a.len().max(b.len()) {
                walk(
                    format!("{path}[{i}]"),
                    a.get(i).unwrap_or(&Value::Null),
                    b.get(i).unwrap_or(&Value::Null),
                    out,
                );
            }
        }
        (a, b) if a == b => {}
        (a, b) => out.push(FieldChange {
            path,
            from: a.clone(),
            to: b.clone(),
        }),
    }
}

/// Removes the fields the server keeps for itself (times, versions, counters) from the top
/// level of a record, so only what a file can say is compared.
pub fn without(mut v: Value, fields: &[&str]) -> Value {
    if let Value::Object(m) = &mut v {
        for f in fields {
            m.remove(*f);
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn nested_fields_and_arrays_show_their_paths() {
        let a = json!({"name": "q", "redrive": {"maxReceiveCount": 3}, "tags": ["a", "b"], "x": 1});
        let b = json!({"name": "q", "redrive": {"maxReceiveCount": 5}, "tags": ["a"], "y": 2});
        let got: Vec<String> = changes(&a, &b)
            .iter()
            .map(|c| format!("{}: {} → {}", c.path, c.from, c.to))
            .collect();
        assert_eq!(
            got,
            [
                "redrive.maxReceiveCount: 3 → 5",
                "tags[1]: \"b\" → null",
                "x: 1 → null",
                "y: null → 2"
            ]
        );
        assert!(changes(&a, &a).is_empty());
    }

    #[test]
    fn server_kept_fields_are_not_compared() {
        let a = without(
            json!({"name": "q", "createdMs": 1, "updatedMs": 2}),
            &["createdMs", "updatedMs"],
        );
        assert_eq!(a, json!({"name": "q"}));
    }
}
