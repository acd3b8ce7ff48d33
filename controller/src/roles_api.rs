//! The Roles service. A task role is what a task running under it may reach. Two halves: skiff
//! API grants (checked on every call made with the task's SKIFF_TASK_TOKEN by `auth.rs`,
//! through the pure `trust::allows`) and object-store grants
//! (turned into a session policy for the credentials the agent's endpoint hands the task, see
//! `credentials.rs`). Roles are an admin's business: they decide what tasks can do.

use std::sync::Arc;

use skiff_proto::v1 as pb;
use tonic::{Request, Response, Status};

use crate::core::Core;
use crate::model::{Access, ApiGrant, CredentialProvider, StorageAccess, StorageGrant, TaskRole};
use skiff_model::validate::{self, InvalidField};

/// Default lifetime of minted object-store credentials.
pub const DEFAULT_DURATION_SECS: u32 = 3600;
/// The range STS accepts for AssumeRole.
pub const STS_DURATION_SECS: std::ops::RangeInclusive<u32> = 900..=43200;

fn bad(field: impl Into<String>, problem: impl Into<String>) -> InvalidField {
    InvalidField {
        field: field.into(),
        problem: problem.into(),
    }
}

/// `service:Method`, `service:*` or `*`.
fn check_action(field: &str, action: &str) -> Result<(), InvalidField> {
    let ok = action == "*"
        || action.split_once(':').is_some_and(|(svc, m)| {
            !svc.is_empty()
                && svc.chars().all(|c| c.is_ascii_lowercase())
                && (m == "*" || (!m.is_empty() && m.chars().all(|c| c.is_ascii_alphanumeric())))
        });
    if ok {
        Ok(())
    } else {
        Err(bad(
            field,
            format!(
                "{action:?} is not an action; write service:Method (tasks:Run), service:* or *"
            ),
        ))
    }
}

fn check_resource(field: &str, r: &str) -> Result<(), InvalidField> {
    if r.is_empty() || r.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(bad(
            field,
            format!("{r:?} is not a resource; write kind/name (task-definition/thumbs) or *"),
        ));
    }
    Ok(())
}

/// S3's bucket naming rules (3–63 of lowercase letters, digits, '.', '-').
fn check_bucket(field: &str, b: &str) -> Result<(), InvalidField> {
    let ok = (3..=63).contains(&b.len())
        && b.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '.' || c == '-')
        && b.starts_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(bad(
            field,
            format!("{b:?} is not a bucket name (3 to 63 lowercase letters, digits, '.', '-')"),
        ))
    }
}

fn check_endpoint(field: &str, url: &str) -> Result<(), InvalidField> {
    let rest = url
        .strip_prefix("http://")
        .or_else(|| url.strip_prefix("https://"));
    match rest {
        Some(host) if !host.is_empty() && !host.contains(char::is_whitespace) => Ok(()),
        _ => Err(bad(
            field,
            format!("{url:?} is not an endpoint URL; give http(s)://HOST[:PORT]"),
        )),
    }
}

fn access(field: &str, s: &str) -> Result<Access, InvalidField> {
    match s {
        "read" => Ok(Access::Read),
        "write" => Ok(Access::Write),
        "read-write" => Ok(Access::ReadWrite),
        other => Err(bad(
            field,
            format!("{other:?} is not an access mode; use read, write or read-write"),
        )),
    }
}

fn storage(field: &str, s: &pb::StorageAccess) -> Result<StorageAccess, InvalidField> {
    let f = |name: &str| format!("{field}.{name}");
    let provider = match &s.provider {
        Some(pb::storage_access::Provider::Sts(p)) => {
            check_endpoint(&f("sts.endpoint"), &p.endpoint)?;
            if !p.role_arn.starts_with("arn:") {
                return Err(bad(
                    f("sts.role_arn"),
                    format!(
                        "{:?} is not a role ARN (arn:aws:iam::ACCOUNT:role/NAME)",
                        p.role_arn
                    ),
                ));
            }
            validate::check_name(&f("sts.access_key_id_secret"), &p.access_key_id_secret)?;
            validate::check_name(
                &f("sts.secret_access_key_secret"),
                &p.secret_access_key_secret,
            )?;
            CredentialProvider::Sts {
                endpoint: p.endpoint.trim_end_matches('/').to_string(),
                role_arn: p.role_arn.clone(),
                access_key_id_secret: p.access_key_id_secret.clone(),
                secret_access_key_secret: p.secret_access_key_secret.clone(),
            }
        }
        Some(pb::storage_access::Provider::StaticKeys(p)) => {
            validate::check_name(
                &f("static_keys.access_key_id_secret"),
                &p.access_key_id_secret,
            )?;
            validate::check_name(
                &f("static_keys.secret_access_key_secret"),
                &p.secret_access_key_secret,
            )?;
            CredentialProvider::StaticKeys {
                access_key_id_secret: p.access_key_id_secret.clone(),
                secret_access_key_secret: p.secret_access_key_secret.clone(),
            }
        }
        None => {
            return Err(bad(
                f("provider"),
                "missing: give sts (AssumeRole with a session policy) or static_keys",
            ))
        }
    };
    if s.grants.is_empty() {
        return Err(bad(f("grants"), "at least one bucket grant is required"));
    }
    let mut grants = Vec::with_capacity(s.grants.len());
    for (i, g) in s.grants.iter().enumerate() {
        let gf = |name: &str| format!("{field}.grants[{i}].{name}");
        check_bucket(&gf("bucket"), &g.bucket)?;
        if g.prefix.starts_with('/') || g.prefix.contains(['*', '?', '\0']) {
            return Err(bad(
                gf("prefix"),
                format!(
                    "{:?}: a key prefix has no leading '/' and no wildcards",
                    g.prefix
                ),
            ));
        }
        grants.push(StorageGrant {
            bucket: g.bucket.clone(),
            prefix: g.prefix.clone(),
            access: access(&gf("access"), &g.access)?,
        });
    }
    let duration_secs = if s.duration_seconds == 0 {
        DEFAULT_DURATION_SECS
    } else {
        s.duration_seconds
    };
    if matches!(provider, CredentialProvider::Sts { .. })
        && !STS_DURATION_SECS.contains(&duration_secs)
    {
        return Err(bad(
            f("duration_seconds"),
            format!("{duration_secs} s is outside what STS allows (900 to 43200)"),
        ));
    }
    if !s.endpoint.is_empty() {
        check_endpoint(&f("endpoint"), &s.endpoint)?;
    }
    Ok(StorageAccess {
        provider,
        grants,
        duration_secs,
        region: if s.region.is_empty() {
            "us-east-1".into()
        } else {
            s.region.clone()
        },
        endpoint: s.endpoint.trim_end_matches('/').to_string(),
    })
}

/// Validates a role as the API receives it (the version and times are the store's).
pub fn from_pb(r: &pb::TaskRole) -> Result<TaskRole, InvalidField> {
    validate::check_name("name", &r.name)?;
    let mut api = Vec::with_capacity(r.api.len());
    for (i, g) in r.api.iter().enumerate() {
        if g.actions.is_empty() {
            return Err(bad(format!("api[{i}].actions"), "at least one action"));
        }
        for (j, a) in g.actions.iter().enumerate() {
            check_action(&format!("api[{i}].actions[{j}]"), a)?;
        }
        if g.resources.is_empty() {
            return Err(bad(
                format!("api[{i}].resources"),
                "at least one resource (\"*\" for any)",
            ));
        }
        for (j, res) in g.resources.iter().enumerate() {
            check_resource(&format!("api[{i}].resources[{j}]"), res)?;
        }
        api.push(ApiGrant {
            actions: g.actions.clone(),
            resources: g.resources.clone(),
        });
    }
    let storage = r
        .storage
        .as_ref()
        .map(|s| storage("storage", s))
        .transpose()?;
    Ok(TaskRole {
        name: r.name.clone(),
        description: r.description.clone(),
        api,
        storage,
        version: 0,
        created_ms: 0,
        updated_ms: 0,
    })
}

pub fn to_pb(r: &TaskRole) -> pb::TaskRole {
    pb::TaskRole {
        name: r.name.clone(),
        description: r.description.clone(),
        api: r
            .api
            .iter()
            .map(|g| pb::ApiGrant {
                actions: g.actions.clone(),
                resources: g.resources.clone(),
            })
            .collect(),
        storage: r.storage.as_ref().map(|s| pb::StorageAccess {
            provider: Some(match &s.provider {
                CredentialProvider::Sts {
                    endpoint,
                    role_arn,
                    access_key_id_secret,
                    secret_access_key_secret,
                } => pb::storage_access::Provider::Sts(pb::StsProvider {
                    endpoint: endpoint.clone(),
                    role_arn: role_arn.clone(),
                    access_key_id_secret: access_key_id_secret.clone(),
                    secret_access_key_secret: secret_access_key_secret.clone(),
                }),
                CredentialProvider::StaticKeys {
                    access_key_id_secret,
                    secret_access_key_secret,
                } => pb::storage_access::Provider::StaticKeys(pb::StaticKeysProvider {
                    access_key_id_secret: access_key_id_secret.clone(),
                    secret_access_key_secret: secret_access_key_secret.clone(),
                }),
            }),
            grants: s
                .grants
                .iter()
                .map(|g| pb::StorageGrant {
                    bucket: g.bucket.clone(),
                    prefix: g.prefix.clone(),
                    access: g.access.as_str().to_string(),
                })
                .collect(),
            duration_seconds: s.duration_secs,
            region: s.region.clone(),
            endpoint: s.endpoint.clone(),
        }),
        version: r.version,
        created_ms: r.created_ms,
        updated_ms: r.updated_ms,
    }
}

pub struct RolesApi {
    pub core: Arc<Core>,
}

fn invalid(e: InvalidField) -> Status {
    Status::invalid_argument(e.to_string())
}

#[tonic::async_trait]
impl pb::roles_server::Roles for RolesApi {
    async fn put(&self, req: Request<pb::TaskRole>) -> Result<Response<pb::TaskRole>, Status> {
        let role = from_pb(req.get_ref()).map_err(invalid)?;
        if let Some(s) = &role.storage {
            // Name the keys' secrets now, not when a task first asks for credentials.
            let (id, key) = match &s.provider {
                CredentialProvider::Sts {
                    access_key_id_secret,
                    secret_access_key_secret,
                    ..
                } => ("sts", (access_key_id_secret, secret_access_key_secret)),
                CredentialProvider::StaticKeys {
                    access_key_id_secret,
                    secret_access_key_secret,
                } => (
                    "static_keys",
                    (access_key_id_secret, secret_access_key_secret),
                ),
            };
            for (field, name) in [
                ("access_key_id_secret", key.0),
                ("secret_access_key_secret", key.1),
            ] {
                if self.core.store.secrets.get(name)?.is_none() {
                    return Err(Status::failed_precondition(format!(
                        "storage.{id}.{field}: no secret {name:?} (skiff secrets put {name})"
                    )));
                }
            }
        }
        if crate::auth::dry_run(&req) {
            return Ok(Response::new(to_pb(&role)));
        }
        let role = crate::roles::put(&self.core, role).await?;
        Ok(Response::new(to_pb(&role)))
    }

    async fn get(&self, req: Request<pb::RoleRef>) -> Result<Response<pb::TaskRole>, Status> {
        let name = &req.get_ref().name;
        match self.core.store.roles.get(name)? {
            Some(r) => Ok(Response::new(to_pb(&r))),
            None => Err(Status::not_found(format!("name: no role {name:?}"))),
        }
    }

    async fn list(
        &self,
        _: Request<pb::ListRolesRequest>,
    ) -> Result<Response<pb::ListRolesResponse>, Status> {
        let roles = self.core.store.roles.list()?.iter().map(to_pb).collect();
        Ok(Response::new(pb::ListRolesResponse { roles }))
    }

    async fn delete(&self, req: Request<pb::RoleRef>) -> Result<Response<pb::TaskRole>, Status> {
        let name = &req.get_ref().name;
        match crate::roles::delete(&self.core, name).await? {
            Some(r) => Ok(Response::new(to_pb(&r))),
            None => Err(Status::not_found(format!("name: no role {name:?}"))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_roles_are_refused_by_field() {
        let field = |r: pb::TaskRole| from_pb(&r).unwrap_err().field;
        let grant = |a: &str, r: &str| pb::ApiGrant {
            actions: vec![a.into()],
            resources: vec![r.into()],
        };
        assert_eq!(
            field(pb::TaskRole {
                name: "r".into(),
                api: vec![grant("Tasks.Run", "*")],
                ..Default::default()
            }),
            "api[0].actions[0]"
        );
        assert_eq!(
            field(pb::TaskRole {
                name: "r".into(),
                api: vec![grant("tasks:Run", "")],
                ..Default::default()
            }),
            "api[0].resources[0]"
        );
        let sts = pb::StsProvider {
            endpoint: "http://127.0.0.1:5000".into(),
            role_arn: "arn:aws:iam::123456789012:role/tasks".into(),
            access_key_id_secret: "ak".into(),
            secret_access_key_secret: "sk".into(),
        };
        let store = |grants: Vec<pb::StorageGrant>, duration_seconds| pb::TaskRole {
            name: "r".into(),
            storage: Some(pb::StorageAccess {
                provider: Some(pb::storage_access::Provider::Sts(sts.clone())),
                grants,
                duration_seconds,
                ..Default::default()
            }),
            ..Default::default()
        };
        let g = |bucket: &str, prefix: &str, access: &str| pb::StorageGrant {
            bucket: bucket.into(),
            prefix: prefix.into(),
            access: access.into(),
        };
        assert_eq!(field(store(vec![], 0)), "storage.grants");
        assert_eq!(
            field(store(vec![g("Photos", "", "read")], 0)),
            "storage.grants[0].bucket"
        );
        assert_eq!(
            field(store(vec![g("photos", "in/*", "read")], 0)),
            "storage.grants[0].prefix"
        );
        assert_eq!(
            field(store(vec![g("photos", "in/", "all")], 0)),
            "storage.grants[0].access"
        );
        assert_eq!(
            field(store(vec![g("photos", "in/", "read")], 60)),
            "storage.duration_seconds"
        );
        let ok = from_pb(&store(vec![g("photos", "in/", "read")], 0)).unwrap();
        let s = ok.storage.unwrap();
        assert_eq!(s.duration_secs, DEFAULT_DURATION_SECS);
        assert_eq!(s.region, "us-east-1");
    }
}
