//! Secret operations in the core layer: put (sealed with the controller's key, versioned) and
//! delete. The Secrets service (`secrets_api.rs`) checks the name and size, then calls these.

use crate::core::{Core, CoreError};
use crate::model::SealedSecret;

/// Seals `value` under `name` and stores it, replacing the previous version.
pub async fn put(core: &Core, name: &str, value: &[u8]) -> Result<SealedSecret, CoreError> {
    let (nonce, ciphertext) = core.secrets.seal(name, value);
    let now = core.clock.now_ms();
    Ok(core
        .store
        .secrets
        .upsert(name, |old| SealedSecret {
            name: name.to_string(),
            version: old.as_ref().map_or(1, |o| o.version + 1),
            nonce: nonce.clone(),
            ciphertext: ciphertext.clone(),
            size: value.len() as u64,
            created_ms: old.as_ref().map_or(now, |o| o.created_ms),
            updated_ms: now,
        })
        .await?)
}

pub async fn delete(core: &Core, name: &str) -> Result<Option<SealedSecret>, CoreError> {
    Ok(core.store.secrets.delete(name).await?)
}
