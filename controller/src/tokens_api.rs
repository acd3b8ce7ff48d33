//! The Tokens API: checks what it is given and calls the token operations (`tokens.rs`).

use std::sync::Arc;

use skiff_proto::v1 as pb;
use tonic::{Request, Response, Status};

use crate::auth::Role;
use crate::core::Core;
use crate::model::ApiToken;
use crate::tokens;

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
        let (token, record) = tokens::mint(&self.core, Role::ReadOnly, true, &r.name, ttl).await?;
        use base64::Engine;
        let ca = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(&pki.ca_pem);
        Ok(Response::new(pb::CreatedToken {
            info: Some(info(&record)),
            token: format!("{JOIN_PREFIX}{token}:{ca}"),
        }))
    }
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
        let (token, record) = tokens::mint(&self.core, role, false, &r.name, r.ttl_seconds).await?;
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
        let t = tokens::revoke(&self.core, id)
            .await?
            .ok_or_else(|| Status::not_found(format!("id: no token {id:?}")))?;
        Ok(Response::new(info(&t)))
    }
}
