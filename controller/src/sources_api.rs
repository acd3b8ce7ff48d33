//! The Sources service: object stores whose changes become events, by notification
//! (`POST /notify/<name>` on the HTTP listener) and/or by a watcher listing the bucket.

use std::sync::Arc;

use skiff_proto::v1 as pb;
use tonic::{Request, Response, Status};

use crate::core::Core;
use crate::model::{Source, SourceKind};
use skiff_model::validate;

fn invalid(field: &str, problem: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {problem}"))
}

fn check_secret(core: &Core, field: &str, name: &str) -> Result<(), Status> {
    validate::check_name(field, name).map_err(|e| Status::invalid_argument(e.to_string()))?;
    if core.store.secrets.get(name)?.is_none() {
        return Err(Status::failed_precondition(format!(
            "{field}: no secret {name:?} (skiff secrets put {name})"
        )));
    }
    Ok(())
}

/// Checks a source as the API receives it.
pub fn from_pb(core: &Core, s: &pb::Source) -> Result<Source, Status> {
    validate::check_name("name", &s.name).map_err(|e| Status::invalid_argument(e.to_string()))?;
    if s.prefix.starts_with('/') {
        return Err(invalid("prefix", "a key prefix has no leading '/'"));
    }
    if s.poll_interval_seconds > 86_400 {
        return Err(invalid(
            "poll_interval_seconds",
            "at most 86400 (0 = no watcher)",
        ));
    }
    let kind = match s.kind.as_str() {
        "s3" => {
            if !(s.endpoint.starts_with("http://") || s.endpoint.starts_with("https://")) {
                return Err(invalid(
                    "endpoint",
                    format!("{:?} is not an http(s):// URL", s.endpoint),
                ));
            }
            if s.bucket.is_empty() {
                return Err(invalid("bucket", "an s3 source names its bucket"));
            }
            if s.poll_interval_seconds > 0 {
                check_secret(core, "access_key_id_secret", &s.access_key_id_secret)?;
                check_secret(
                    core,
                    "secret_access_key_secret",
                    &s.secret_access_key_secret,
                )?;
            }
            SourceKind::S3 {
                endpoint: s.endpoint.trim_end_matches('/').to_string(),
                region: if s.region.is_empty() {
                    "us-east-1".into()
                } else {
                    s.region.clone()
                },
                access_key_id_secret: s.access_key_id_secret.clone(),
                secret_access_key_secret: s.secret_access_key_secret.clone(),
            }
        }
        "local" => {
            if !s.path.starts_with('/') {
                return Err(invalid(
                    "path",
                    format!("{:?} must be an absolute path", s.path),
                ));
            }
            SourceKind::Local {
                path: s.path.clone(),
            }
        }
        other => {
            return Err(invalid(
                "kind",
                format!("{other:?} is not a source kind; use s3 or local"),
            ))
        }
    };
    Ok(Source {
        name: s.name.clone(),
        kind,
        bucket: s.bucket.clone(),
        prefix: s.prefix.clone(),
        poll_interval_secs: s.poll_interval_seconds,
        created_ms: 0,
        updated_ms: 0,
    })
}

/// A source for the API, with its watcher's health.
pub fn to_pb(s: &Source, health: &crate::model::SourceHealth) -> pb::Source {
    let mut out = pb::Source {
        last_error: health.last_error.clone(),
        last_error_ms: health.last_error_ms,
        last_listed_ms: health.last_listed_ms,
        name: s.name.clone(),
        bucket: s.bucket.clone(),
        prefix: s.prefix.clone(),
        poll_interval_seconds: s.poll_interval_secs,
        created_ms: s.created_ms,
        updated_ms: s.updated_ms,
        ..Default::default()
    };
    match &s.kind {
        SourceKind::S3 {
            endpoint,
            region,
            access_key_id_secret,
            secret_access_key_secret,
        } => {
            out.kind = "s3".into();
            out.endpoint = endpoint.clone();
            out.region = region.clone();
            out.access_key_id_secret = access_key_id_secret.clone();
            out.secret_access_key_secret = secret_access_key_secret.clone();
        }
        SourceKind::Local { path } => {
            out.kind = "local".into();
            out.path = path.clone();
        }
    }
    out
}

pub struct SourcesApi {
    pub core: Arc<Core>,
}

#[tonic::async_trait]
impl pb::sources_server::Sources for SourcesApi {
    async fn put(&self, req: Request<pb::Source>) -> Result<Response<pb::Source>, Status> {
        let source = from_pb(&self.core, req.get_ref())?;
        if crate::auth::dry_run(&req) {
            return Ok(Response::new(to_pb(&source, &Default::default())));
        }
        let stored = crate::sources::put(&self.core, source).await?;
        Ok(Response::new(to_pb(&stored, &Default::default())))
    }

    async fn list(
        &self,
        _: Request<pb::ListSourcesRequest>,
    ) -> Result<Response<pb::ListSourcesResponse>, Status> {
        let sources = self
            .core
            .store
            .sources
            .list()?
            .iter()
            .map(|s| Ok(to_pb(s, &self.core.store.source_health(&s.name)?)))
            .collect::<Result<_, Status>>()?;
        Ok(Response::new(pb::ListSourcesResponse { sources }))
    }

    async fn delete(&self, req: Request<pb::SourceRef>) -> Result<Response<pb::Source>, Status> {
        let name = &req.get_ref().name;
        match crate::sources::delete(&self.core, name).await? {
            Some(s) => Ok(Response::new(to_pb(&s, &Default::default()))),
            None => Err(Status::not_found(format!("name: no source {name:?}"))),
        }
    }
}
