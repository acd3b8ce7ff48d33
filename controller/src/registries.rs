//! Registry credential operations in the core layer: put and delete. The RegistryCredentials
//! service (`images_api.rs`) checks the server and fields, then calls these.

use crate::core::{Core, CoreError};
use crate::model::RegistryCreds;

/// Stores credentials for a registry server under a name (replacing any of that name).
pub async fn put(
    core: &Core,
    name: String,
    server: String,
    username: String,
    password: String,
) -> Result<RegistryCreds, CoreError> {
    let creds = RegistryCreds {
        name,
        server,
        username,
        password,
        created_ms: core.clock.now_ms(),
    };
    core.store.registry_creds.put(&creds).await?;
    Ok(creds)
}

pub async fn delete(core: &Core, name: &str) -> Result<Option<RegistryCreds>, CoreError> {
    Ok(core.store.registry_creds.delete(name).await?)
}
