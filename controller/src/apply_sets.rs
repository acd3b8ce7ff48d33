//! Apply sets (what `skiff apply` applied under each name), as the store keeps them.

use crate::core::{Core, CoreError};
use crate::model::ApplySet;

/// Records a set's members (durable on return).
pub async fn put(core: &Core, set: &ApplySet) -> Result<(), CoreError> {
    Ok(core.store.apply_sets.put(set).await?)
}

/// Forgets a set; None when there was none.
pub async fn delete(core: &Core, name: &str) -> Result<Option<ApplySet>, CoreError> {
    Ok(core.store.apply_sets.delete(name).await?)
}
