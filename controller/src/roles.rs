//! Task role operations in the core layer: put (versioned) and delete. The Roles service
//! (`roles_api.rs`) checks a role and the secrets it names, then calls these.

use crate::core::{Core, CoreError};
use crate::model::TaskRole;

/// Creates or replaces a role: its version counts the replacements, its creation time is kept.
pub async fn put(core: &Core, role: TaskRole) -> Result<TaskRole, CoreError> {
    let now = core.clock.now_ms();
    Ok(core
        .store
        .roles
        .upsert(role.name.clone(), |old| TaskRole {
            version: old.as_ref().map_or(1, |o| o.version + 1),
            created_ms: old.as_ref().map_or(now, |o| o.created_ms),
            updated_ms: now,
            ..role.clone()
        })
        .await?)
}

pub async fn delete(core: &Core, name: &str) -> Result<Option<TaskRole>, CoreError> {
    Ok(core.store.roles.delete(name).await?)
}
