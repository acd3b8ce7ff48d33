//! SKIFF_TASK_TOKEN: a token the controller signs for one task, so code in the container can
//! call skiff's API with exactly its role's grants. It is stateless (HMAC-SHA256 under a key in
//! the data dir, `task-token.key`), expires, and is refused as soon as its task is STOPPED —
//! the auth layer looks the task up on every call.

use std::path::Path;

use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use base64::Engine;
use ring::hmac;
use serde::{Deserialize, Serialize};

pub const KEY_FILE: &str = "task-token.key";
pub const PREFIX: &str = "skifftask_";
/// How long a minted token lives; the agent's endpoint hands out fresh ones
/// (GET /v1/skiff-token), so long-running tasks are not cut off.
pub const TTL_MS: i64 = 12 * 3600 * 1000;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Claims {
    /// Task id.
    pub t: String,
    /// Role name.
    pub r: String,
    /// Expiry, ms since the epoch.
    pub e: i64,
}

pub struct TaskTokenKey {
    key: hmac::Key,
}

impl TaskTokenKey {
    /// Loads `<data_dir>/task-token.key`, creating it (32 random bytes, mode 0600) if missing.
    pub fn open(data_dir: &Path) -> std::io::Result<TaskTokenKey> {
        let path = data_dir.join(KEY_FILE);
        let bytes = crate::keyfile::read_or_create_key(&path)?;
        if bytes.len() < 32 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("{} holds fewer than 32 bytes", path.display()),
            ));
        }
        Ok(TaskTokenKey {
            key: hmac::Key::new(hmac::HMAC_SHA256, &bytes),
        })
    }

    pub fn mint(&self, claims: &Claims) -> String {
        let payload = B64.encode(serde_json::to_vec(claims).expect("claims serialise"));
        let tag = hmac::sign(&self.key, payload.as_bytes());
        format!("{PREFIX}{payload}.{}", B64.encode(tag.as_ref()))
    }

    /// The claims of a token this key signed and that has not expired at `now_ms`.
    pub fn verify(&self, token: &str, now_ms: i64) -> Result<Claims, &'static str> {
        let bad = "the task token is not valid";
        let (payload, tag) = token
            .strip_prefix(PREFIX)
            .and_then(|t| t.split_once('.'))
            .ok_or(bad)?;
        let tag = B64.decode(tag).map_err(|_| bad)?;
        // Constant-time comparison inside ring.
        hmac::verify(&self.key, payload.as_bytes(), &tag).map_err(|_| bad)?;
        let claims: Claims = B64
            .decode(payload)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(bad)?;
        if now_ms >= claims.e {
            return Err("the task token has expired");
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_only_under_their_key_unaltered_and_unexpired() {
        let dir = tempfile::tempdir().unwrap();
        let key = TaskTokenKey::open(dir.path()).unwrap();
        let claims = Claims {
            t: "task1".into(),
            r: "thumbs".into(),
            e: 2_000,
        };
        let token = key.mint(&claims);
        assert!(token.starts_with(PREFIX));
        assert_eq!(key.verify(&token, 1_000).unwrap(), claims);
        assert_eq!(
            key.verify(&token, 2_000).unwrap_err(),
            "the task token has expired"
        );
        // The key persists across restarts of the controller.
        let again = TaskTokenKey::open(dir.path()).unwrap();
        assert!(again.verify(&token, 1_000).is_ok());
        // Another controller's key, or a changed payload, does not verify.
        let other = tempfile::tempdir().unwrap();
        assert!(TaskTokenKey::open(other.path())
            .unwrap()
            .verify(&token, 1_000)
            .is_err());
        let forged_claims = Claims {
            r: "admin".into(),
            ..claims
        };
        let forged_payload = B64.encode(serde_json::to_vec(&forged_claims).unwrap());
        let tag = token.rsplit_once('.').unwrap().1;
        assert!(key
            .verify(&format!("{PREFIX}{forged_payload}.{tag}"), 1_000)
            .is_err());
    }
}
