//! API token operations in the core layer: the first admin token, minting, revoking, and
//! redeeming a join token (once: checked and used up in one transaction, so two agents never
//! join on one token). The Tokens service (`tokens_api.rs`) checks its input and calls these.

use std::path::{Path, PathBuf};

use crate::auth::{self, Role};
use crate::core::{Core, CoreError};
use crate::model::ApiToken;
use crate::store::{Store, StoreError};

/// The file a controller's first admin token is written to, in its data dir.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

/// On a controller's first start (no token at all yet), mints an admin token and writes it to
/// `<data_dir>/admin.token`, readable by its owner only. Returns the file's path.
pub async fn bootstrap(
    store: &Store,
    data_dir: &Path,
    now_ms: i64,
) -> Result<Option<PathBuf>, StoreError> {
    if !store.tokens.is_empty() {
        return Ok(None);
    }
    let (token, record) = auth::mint(Role::Admin, "bootstrap admin", 0, now_ms);
    let path = data_dir.join(ADMIN_TOKEN_FILE);
    crate::keyfile::write_secret(&path, &token)
        .map_err(|e| StoreError::Io(format!("{}: {e}", path.display())))?;
    // Stored after the file exists: a crash in between leaves no token nobody can see.
    store.tokens.put(&record).await?;
    Ok(Some(path))
}

/// Mints a token for `role` ("join": a join token, which the agent's Join call redeems);
/// returns the secret (shown once) and its record.
pub async fn mint(
    core: &Core,
    role: Role,
    join: bool,
    name: &str,
    ttl_secs: u64,
) -> Result<(String, ApiToken), CoreError> {
    let (token, mut record) = auth::mint(role, name, ttl_secs, core.clock.now_ms());
    if join {
        record.role = "join".into();
    }
    core.store.tokens.put(&record).await?;
    Ok((token, record))
}

/// Revokes a token (a second revoke keeps the first time). None: no such token.
pub async fn revoke(core: &Core, id: &str) -> Result<Option<ApiToken>, CoreError> {
    let now = core.clock.now_ms();
    let out = core
        .store
        .tokens
        .update(id, |t| {
            if t.revoked_ms == 0 {
                t.revoked_ms = now;
            }
            Ok::<(), ()>(())
        })
        .await?;
    Ok(out.unwrap_or(None))
}

/// Why a join token was refused.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum JoinRefused {
    #[error("token: not a valid join token")]
    NotValid,
    #[error("token: this join token was already used (or revoked)")]
    Used,
    #[error("token: this join token has expired")]
    Expired,
}

/// Checks a join token and uses it up (one node per token), in one transaction.
pub async fn redeem_join(core: &Core, token: &str) -> Result<Result<(), JoinRefused>, CoreError> {
    let Some((id, secret)) = token.strip_prefix("skiff_").and_then(|t| t.split_once('_')) else {
        return Ok(Err(JoinRefused::NotValid));
    };
    let given = auth::sha256_hex(secret);
    let now = core.clock.now_ms();
    let redeemed = core
        .store
        .tokens
        .update(id, |record| {
            if record.role != "join" || given != record.secret_sha256 {
                return Err(JoinRefused::NotValid);
            }
            if record.revoked_ms != 0 {
                return Err(JoinRefused::Used);
            }
            if record.expires_ms != 0 && now >= record.expires_ms {
                return Err(JoinRefused::Expired);
            }
            record.revoked_ms = now;
            Ok(())
        })
        .await?;
    Ok(match redeemed {
        Ok(Some(_)) => Ok(()),
        Ok(None) => Err(JoinRefused::NotValid),
        Err(refused) => Err(refused),
    })
}
