//! Trust policy: what a task role's API grants allow. Pure: `auth.rs` asks it on every call
//! made with a SKIFF_TASK_TOKEN.

use crate::model::TaskRole;

fn action_matches(pattern: &str, action: &str) -> bool {
    pattern == "*"
        || pattern == action
        || pattern
            .strip_suffix(":*")
            .is_some_and(|svc| action.split_once(':').is_some_and(|(s, _)| s == svc))
}

/// Whether the role grants `action` on `resource`. `None` asks whether it grants the action on
/// some resource (the handler then checks the one it acts on); a grant on "*" covers every
/// resource, and a name ending in '*' covers the names it begins.
pub fn allows(role: &TaskRole, action: &str, resource: Option<&str>) -> bool {
    role.api.iter().any(|g| {
        g.actions.iter().any(|a| action_matches(a, action))
            && match resource {
                None => true,
                Some(res) => g.resources.iter().any(|r| {
                    r == "*" || r == res || r.strip_suffix('*').is_some_and(|p| res.starts_with(p))
                }),
            }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::ApiGrant;

    fn role(api: Vec<(Vec<&str>, Vec<&str>)>) -> TaskRole {
        TaskRole {
            name: "r".into(),
            description: String::new(),
            api: api
                .into_iter()
                .map(|(a, r)| ApiGrant {
                    actions: a.into_iter().map(String::from).collect(),
                    resources: r.into_iter().map(String::from).collect(),
                })
                .collect(),
            storage: None,
            version: 1,
            created_ms: 0,
            updated_ms: 0,
        }
    }

    #[test]
    fn grants_match_actions_and_resources() {
        let r = role(vec![
            (vec!["tasks:Run"], vec!["task-definition/thumbs"]),
            (vec!["tasks:Describe", "tasks:List"], vec!["*"]),
            (vec!["events:*"], vec!["source/uploads*"]),
        ]);
        assert!(allows(&r, "tasks:Run", Some("task-definition/thumbs")));
        assert!(!allows(&r, "tasks:Run", Some("task-definition/other")));
        assert!(allows(&r, "tasks:Run", None));
        assert!(allows(&r, "tasks:List", Some("anything")));
        assert!(!allows(&r, "tasks:Stop", None));
        assert!(allows(&r, "events:Put", Some("source/uploads.eu")));
        assert!(!allows(&r, "events:Put", Some("source/billing")));
        assert!(!allows(&r, "tokens:Create", None));
        assert!(allows(
            &role(vec![(vec!["*"], vec!["*"])]),
            "tokens:Create",
            None
        ));
    }
}
