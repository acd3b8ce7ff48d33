//! The Secrets service: stores (sealed, see `sealing.rs`) and lists secrets, and never returns
//! a value. Values are opened only to start a task, and go only to the agent that runs it.

use std::sync::Arc;

use skiff_proto::v1 as pb;
use tonic::{Request, Response, Status};

use crate::core::Core;
use crate::model::SealedSecret;
use skiff_model::validate;

pub use crate::sealing::{SecretBox, KEY_FILE, MAX_SECRET_BYTES};

fn info(s: &SealedSecret) -> pb::SecretInfo {
    pb::SecretInfo {
        name: s.name.clone(),
        version: s.version,
        created_ms: s.created_ms,
        updated_ms: s.updated_ms,
        size: s.size,
    }
}

pub struct SecretsApi {
    pub core: Arc<Core>,
}

#[tonic::async_trait]
impl pb::secrets_server::Secrets for SecretsApi {
    async fn put(
        &self,
        req: Request<pb::PutSecretRequest>,
    ) -> Result<Response<pb::SecretInfo>, Status> {
        let r = req.into_inner();
        validate::check_name("name", &r.name)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        if r.value.len() > MAX_SECRET_BYTES {
            return Err(Status::invalid_argument(format!(
                "value: {} bytes is more than the maximum {MAX_SECRET_BYTES}",
                r.value.len()
            )));
        }
        let sealed = crate::secrets::put(&self.core, &r.name, &r.value).await?;
        Ok(Response::new(info(&sealed)))
    }

    async fn list(
        &self,
        _: Request<pb::ListSecretsRequest>,
    ) -> Result<Response<pb::ListSecretsResponse>, Status> {
        let secrets = self.core.store.secrets.list()?.iter().map(info).collect();
        Ok(Response::new(pb::ListSecretsResponse { secrets }))
    }

    async fn delete(
        &self,
        req: Request<pb::DeleteSecretRequest>,
    ) -> Result<Response<pb::SecretInfo>, Status> {
        let name = &req.get_ref().name;
        match crate::secrets::delete(&self.core, name).await? {
            Some(s) => Ok(Response::new(info(&s))),
            None => Err(Status::not_found(format!("name: no secret {name:?}"))),
        }
    }
}
