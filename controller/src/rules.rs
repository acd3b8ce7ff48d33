//! Rule operations in the core layer: put (versioned), delete (with its counters) and enable
//! or disable. Each is durable on return and then makes the dispatcher recompile the rule set.
//! The Rules service (`rules_api.rs`) checks what it is given and calls these.

use crate::core::{Core, CoreError};
use crate::model::Rule;

/// Creates or replaces a rule (checked already): its version counts the replacements, its
/// creation time is kept.
pub async fn put(core: &Core, mut rule: Rule) -> Result<Rule, CoreError> {
    let old = core.store.rules.get(&rule.name)?;
    let now = core.clock.now_ms();
    rule.version = old.as_ref().map_or(1, |o| o.version + 1);
    rule.created_ms = old.as_ref().map_or(now, |o| o.created_ms);
    rule.updated_ms = now;
    core.store.rules.put(&rule).await?;
    core.rules_changed();
    Ok(rule)
}

/// Removes a rule and its counters (a new rule of the same name counts from zero).
pub async fn delete(core: &Core, name: &str) -> Result<Option<Rule>, CoreError> {
    let old = core.store.delete_rule(name).await?;
    if old.is_some() {
        core.rules_changed();
    }
    Ok(old)
}

/// Enables or disables a rule; a change of state is a new version. None: no such rule.
pub async fn set_enabled(
    core: &Core,
    name: &str,
    enabled: bool,
) -> Result<Option<Rule>, CoreError> {
    let Some(mut rule) = core.store.rules.get(name)? else {
        return Ok(None);
    };
    if rule.enabled != enabled {
        rule.enabled = enabled;
        rule.version += 1;
        rule.updated_ms = core.clock.now_ms();
        core.store.rules.put(&rule).await?;
        core.rules_changed();
    }
    Ok(Some(rule))
}
