//! Task definition operations in the core layer: register (the family's next revision) and
//! deregister (inactive: kept for the tasks that name it, refused for new ones).

use crate::core::{Core, CoreError};
use crate::model::{DefinitionStatus, TaskDefinition, TaskSpec};
use crate::store::Record;

/// Registers `spec` (checked already, its references resolved) as the family's next revision.
pub async fn register(
    core: &Core,
    family: &str,
    spec: TaskSpec,
) -> Result<TaskDefinition, CoreError> {
    let now = core.clock.now_ms();
    Ok(core
        .store
        .register_taskdef(family, |revision| TaskDefinition {
            family: family.to_string(),
            revision,
            spec,
            status: DefinitionStatus::Active,
            registered_at_ms: now,
        })
        .await?)
}

/// Marks a revision inactive; returns it as stored (None: it is gone).
pub async fn deregister(
    core: &Core,
    def: &TaskDefinition,
) -> Result<Option<TaskDefinition>, CoreError> {
    let out = core
        .store
        .taskdefs
        .update(def.key(), |d| {
            d.status = DefinitionStatus::Inactive;
            Ok::<(), ()>(())
        })
        .await?;
    Ok(out.unwrap_or(None))
}

/// The definition `reference` names: `family:rev` (whatever its status: tasks of a
/// deregistered revision may still be running and replaced), or `family`, its latest ACTIVE
/// revision. None: there is no such definition. The reference is checked first.
pub fn resolve(
    core: &Core,
    field: &str,
    reference: &str,
) -> Result<Option<TaskDefinition>, CoreError> {
    let (family, rev) = skiff_model::validate::taskdef_ref(field, reference)
        .map_err(|e| CoreError::BadReference(e.to_string()))?;
    Ok(match rev {
        Some(r) => core.store.taskdef(&family, r)?,
        None => core
            .store
            .taskdefs_of(Some(&family))?
            .into_iter()
            .rev()
            .find(|d| d.status == DefinitionStatus::Active),
    })
}
