//! The Tokens API, and the bootstrap admin token a new controller writes for its operator.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use skiff_proto::v1 as pb;
use tonic::{Request, Response, Status};

use crate::auth::{self, Role};
use crate::core::Core;
use crate::model::ApiToken;
use crate::store::{Store, StoreError};

/// The file (in the data dir) holding the first admin token.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

fn info(t: &ApiToken) -> pb::TokenInfo {
    pb::TokenInfo {
        id: t.id.clone(),
        name: t.name.clone(),
        role: t.role.clone(),
        created_ms: t.created_ms,
        expires_ms: t.expires_ms,
        revoked_ms: t.revoked_ms,
    }
}

/// On a controller's first start (no token at all yet), mints an admin token and writes it to
/// `<data_dir>/admin.token`, readable by its owner only. Returns the file's path.
pub async fn bootstrap(
    store: &Store,
    data_dir: &Path,
    now_ms: i64,
) -> Result<Option<PathBuf>, StoreError> {
    if !store.tokens.list()?.is_empty() {
        return Ok(None);
    }
    let (token, record) = auth::mint(Role::Admin, "bootstrap admin", 0, now_ms);
    let path = data_dir.join(ADMIN_TOKEN_FILE);
    write_secret(&path, &token).map_err(|e| StoreError::Io(format!("{}: {e}", path.display())))?;
    // Stored after the file exists: a crash in between leaves no token nobody can see.
    store.tokens.put(&record).await?;
    Ok(Some(path))
}

pub use crate::keyfile::{write_secret, write_secret_bytes};

pub struct TokensApi {
    pub core: Arc<Core>,
}

/// Join strings: `skiffjoin:<token>:<CA certificate PEM, base64url>`. The agent learns the CA
/// to trust from the string itself, so its first connection is already verified.
pub const JOIN_PREFIX: &str = "skiffjoin:";

/// Default lifetime of a join token.
const JOIN_TTL_SECS: u64 = 24 * 3600;

impl TokensApi {
    async fn create_join(
        &self,
        r: &pb::CreateTokenRequest,
    ) -> Result<Response<pb::CreatedToken>, Status> {
        let pki = self.core.pki.as_ref().ok_or_else(|| {
            Status::failed_precondition(
                "role: join tokens need a TLS controller (skiff controller --tls)",
            )
        })?;
        let ttl = if r.ttl_seconds == 0 {
            JOIN_TTL_SECS
        } else {
            r.ttl_seconds
        };
        let (token, mut record) =
            auth::mint(Role::ReadOnly, &r.name, ttl, self.core.clock.now_ms());
        record.role = "join".into();
        self.core.store.tokens.put(&record).await?;
        use base64::Engine;
        let ca = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&pki.ca_pem);
        Ok(Response::new(pb::CreatedToken {
            info: Some(info(&record)),
            token: format!("{JOIN_PREFIX}{token}:{ca}"),
        }))
    }
}

/// Checks a join token and uses it up (one node per token).
pub async fn redeem_join_token(core: &Core, token: &str) -> Result<(), Status> {
    let bad = || Status::unauthenticated("token: not a valid join token");
    let (id, secret) = token
        .strip_prefix("skiff_")
        .and_then(|t| t.split_once('_'))
        .ok_or_else(bad)?;
    let mut record = core.store.tokens.get(id)?.ok_or_else(bad)?;
    let given = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(secret.as_bytes()));
    if record.role != "join" || given != record.secret_sha256 {
        return Err(bad());
    }
    if record.revoked_ms != 0 {
        return Err(Status::unauthenticated(
            "token: this join token was already used (or revoked)",
        ));
    }
    if record.expires_ms != 0 && core.clock.now_ms() >= record.expires_ms {
        return Err(Status::unauthenticated(
            "token: this join token has expired",
        ));
    }
    record.revoked_ms = core.clock.now_ms();
    core.store.tokens.put(&record).await?;
    Ok(())
}

#[tonic::async_trait]
impl pb::tokens_server::Tokens for TokensApi {
    async fn create(
        &self,
        req: Request<pb::CreateTokenRequest>,
    ) -> Result<Response<pb::CreatedToken>, Status> {
        let r = req.into_inner();
        if r.role == "join" {
            return self.create_join(&r).await;
        }
        let role = Role::parse(&r.role).ok_or_else(|| {
            Status::invalid_argument(format!(
                "role: {:?} is not a role; use admin, operator, read-only or join",
                r.role
            ))
        })?;
        if r.name.len() > 200 {
            return Err(Status::invalid_argument("name: at most 200 characters"));
        }
        if r.ttl_seconds > 10 * 365 * 24 * 3600 {
            return Err(Status::invalid_argument("ttl_seconds: at most ten years"));
        }
        let (token, record) = auth::mint(role, &r.name, r.ttl_seconds, self.core.clock.now_ms());
        self.core.store.tokens.put(&record).await?;
        Ok(Response::new(pb::CreatedToken {
            info: Some(info(&record)),
            token,
        }))
    }

    async fn list(
        &self,
        _: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        let mut tokens: Vec<pb::TokenInfo> =
            self.core.store.tokens.list()?.iter().map(info).collect();
        tokens.sort_by_key(|t| t.created_ms);
        Ok(Response::new(pb::ListTokensResponse { tokens }))
    }

    async fn revoke(
        &self,
        req: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::TokenInfo>, Status> {
        let id = &req.get_ref().id;
        let mut t = self
            .core
            .store
            .tokens
            .get(id)?
            .ok_or_else(|| Status::not_found(format!("id: no token {id:?}")))?;
        if t.revoked_ms == 0 {
            t.revoked_ms = self.core.clock.now_ms();
            self.core.store.tokens.put(&t).await?;
        }
        Ok(Response::new(info(&t)))
    }
}
