//! Object-store source operations in the core layer: put and delete, each restarting the
//! watchers. The Sources service (`sources_api.rs`) checks a source, then calls these.

use crate::core::{Core, CoreError};
use crate::model::Source;
use crate::wake::Loop;

/// Stores a source (creating or replacing it, its creation time kept) and restarts its
/// watcher.
pub async fn put(core: &Core, source: Source) -> Result<Source, CoreError> {
    let now = core.clock.now_ms();
    let stored = core
        .store
        .sources
        .upsert(source.name.clone(), |old| Source {
            created_ms: old.as_ref().map_or(now, |o| o.created_ms),
            // Strictly later than the last version: the watcher tells versions apart by it.
            updated_ms: now.max(old.as_ref().map_or(0, |o| o.updated_ms + 1)),
            ..source.clone()
        })
        .await?;
    core.loops.wake(Loop::Watchers);
    Ok(stored)
}

/// Removes a source with its health record, and stops its watcher.
pub async fn delete(core: &Core, name: &str) -> Result<Option<Source>, CoreError> {
    let old = core.store.delete_source(name).await?;
    if old.is_some() {
        core.loops.wake(Loop::Watchers);
    }
    Ok(old)
}
