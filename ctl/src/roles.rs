//! `skiff roles`: task roles from YAML (or JSON / TOML, by extension) files, strict about
//! unknown fields so a typo is an error rather than a grant that silently is not there.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Subcommand;
use serde::Deserialize;
use skiff_proto::v1 as pb;

use crate::conn::{api_error, connect};
use crate::output::{self, Format};
use crate::taskdef_file::DurationField;

#[derive(Subcommand)]
pub enum RolesCmd {
    /// Create or replace a role from a file (role.yaml, .json or .toml).
    Put {
        /// The role file.
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    /// List roles.
    Ls,
    /// Show one role (`get` is an alias).
    #[command(alias = "get")]
    Describe {
        /// The role's name.
        name: String,
    },
    /// Delete a role (running tasks under it get no new credentials).
    Rm {
        /// The role's name.
        name: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleFile {
    pub name: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub api: Vec<ApiGrantFile>,
    pub storage: Option<StorageFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiGrantFile {
    pub actions: Vec<String>,
    pub resources: Vec<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageFile {
    pub sts: Option<StsFile>,
    pub static_keys: Option<StaticKeysFile>,
    pub grants: Vec<GrantFile>,
    /// Lifetime of minted credentials, e.g. "1h" (or seconds).
    pub duration: Option<DurationField>,
    #[serde(default)]
    pub region: String,
    /// The object store's URL, given to containers as AWS_ENDPOINT_URL_S3.
    #[serde(default)]
    pub endpoint: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StsFile {
    pub endpoint: String,
    pub role_arn: String,
    pub access_key_id_secret: String,
    pub secret_access_key_secret: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StaticKeysFile {
    pub access_key_id_secret: String,
    pub secret_access_key_secret: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrantFile {
    pub bucket: String,
    #[serde(default)]
    pub prefix: String,
    pub access: String,
}

/// Reads a role file; the format follows the extension (YAML when it is neither .json nor
/// .toml).
pub fn load(path: &Path) -> anyhow::Result<pb::TaskRole> {
    let file: RoleFile = crate::config::read_definition(path, "role")?;
    to_pb(file)
}

/// A role as its file declares it (also a `role:` document of `skiff apply`).
pub(crate) fn to_pb(f: RoleFile) -> anyhow::Result<pb::TaskRole> {
    let storage = match f.storage {
        None => None,
        Some(s) => {
            let provider = match (s.sts, s.static_keys) {
                (Some(p), None) => pb::storage_access::Provider::Sts(pb::StsProvider {
                    endpoint: p.endpoint,
                    role_arn: p.role_arn,
                    access_key_id_secret: p.access_key_id_secret,
                    secret_access_key_secret: p.secret_access_key_secret,
                }),
                (None, Some(p)) => {
                    pb::storage_access::Provider::StaticKeys(pb::StaticKeysProvider {
                        access_key_id_secret: p.access_key_id_secret,
                        secret_access_key_secret: p.secret_access_key_secret,
                    })
                }
                _ => anyhow::bail!("storage: give exactly one of sts or static_keys"),
            };
            let duration_seconds = match s.duration {
                None => 0,
                Some(d) => u32::try_from(d.seconds("storage.duration")?)
                    .context("storage.duration: too long")?,
            };
            Some(pb::StorageAccess {
                provider: Some(provider),
                grants: s
                    .grants
                    .into_iter()
                    .map(|g| pb::StorageGrant {
                        bucket: g.bucket,
                        prefix: g.prefix,
                        access: g.access,
                    })
                    .collect(),
                duration_seconds,
                region: s.region,
                endpoint: s.endpoint,
            })
        }
    };
    Ok(pb::TaskRole {
        name: f.name,
        description: f.description,
        api: f
            .api
            .into_iter()
            .map(|g| pb::ApiGrant {
                actions: g.actions,
                resources: g.resources,
            })
            .collect(),
        storage,
        ..Default::default()
    })
}

fn provider_name(r: &pb::TaskRole) -> String {
    match r.storage.as_ref().and_then(|s| s.provider.as_ref()) {
        Some(pb::storage_access::Provider::Sts(p)) => format!("sts {}", p.endpoint),
        Some(pb::storage_access::Provider::StaticKeys(_)) => "static keys".into(),
        None => "-".into(),
    }
}

fn grants(r: &pb::TaskRole) -> String {
    let Some(s) = &r.storage else {
        return "-".into();
    };
    s.grants
        .iter()
        .map(|g| format!("{} s3://{}/{}", g.access, g.bucket, g.prefix))
        .collect::<Vec<_>>()
        .join(", ")
}

fn role_json(r: &pb::TaskRole) -> serde_json::Value {
    serde_json::json!({
        "name": r.name,
        "description": r.description,
        "version": r.version,
        "api": r.api.iter().map(|g| serde_json::json!({"actions": g.actions, "resources": g.resources})).collect::<Vec<_>>(),
        "storage": r.storage.as_ref().map(|s| serde_json::json!({
            "provider": match &s.provider {
                Some(pb::storage_access::Provider::Sts(p)) => serde_json::json!({"sts": {
                    "endpoint": p.endpoint, "roleArn": p.role_arn,
                    "accessKeyIdSecret": p.access_key_id_secret,
                    "secretAccessKeySecret": p.secret_access_key_secret}}),
                Some(pb::storage_access::Provider::StaticKeys(p)) => serde_json::json!({"staticKeys": {
                    "accessKeyIdSecret": p.access_key_id_secret,
                    "secretAccessKeySecret": p.secret_access_key_secret}}),
                None => serde_json::Value::Null,
            },
            "grants": s.grants.iter().map(|g| serde_json::json!({"bucket": g.bucket, "prefix": g.prefix, "access": g.access})).collect::<Vec<_>>(),
            "durationSeconds": s.duration_seconds,
            "region": s.region,
            "endpoint": s.endpoint,
        })),
        "updatedMs": r.updated_ms,
    })
}

fn print(fmt: Format, roles: &[pb::TaskRole]) {
    if fmt == Format::Json {
        let v: Vec<_> = roles.iter().map(role_json).collect();
        println!("{}", output::json(&v));
        return;
    }
    let rows = roles
        .iter()
        .map(|r| {
            let api = r
                .api
                .iter()
                .map(|g| format!("{} on {}", g.actions.join(","), g.resources.join(",")))
                .collect::<Vec<_>>()
                .join("; ");
            vec![
                r.name.clone(),
                r.version.to_string(),
                if api.is_empty() { "-".into() } else { api },
                provider_name(r),
                grants(r),
            ]
        })
        .collect();
    println!(
        "{}",
        output::table(&["NAME", "VERSION", "API", "CREDENTIALS", "STORAGE"], rows)
    );
}

pub async fn roles(addr: &str, fmt: Format, cmd: RolesCmd) -> anyhow::Result<i32> {
    let mut c = pb::roles_client::RolesClient::new(connect(addr).await?);
    match cmd {
        RolesCmd::Put { file } => {
            let role = load(&file)?;
            let r = c.put(role).await.map_err(api_error)?.into_inner();
            print(fmt, &[r]);
        }
        RolesCmd::Ls => {
            let r = c
                .list(pb::ListRolesRequest {})
                .await
                .map_err(api_error)?
                .into_inner();
            print(fmt, &r.roles);
        }
        RolesCmd::Describe { name } => {
            let r = c
                .get(pb::RoleRef { name })
                .await
                .map_err(api_error)?
                .into_inner();
            print(fmt, &[r]);
        }
        RolesCmd::Rm { name } => {
            let r = c
                .delete(pb::RoleRef { name })
                .await
                .map_err(api_error)?
                .into_inner();
            print(fmt, &[r]);
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_yaml_role_file_becomes_a_role_and_typos_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("role.yaml");
        std::fs::write(
            &path,
            "name: thumbs\napi:\n  - actions: [tasks:Run]\n    resources: [task-definition/thumbs]\n\
             storage:\n  sts:\n    endpoint: http://127.0.0.1:5000\n    role_arn: arn:aws:iam::1:role/t\n\
             \x20   access_key_id_secret: ak\n    secret_access_key_secret: sk\n  duration: 15m\n\
             \x20 grants:\n    - {bucket: photos, prefix: incoming/, access: read}\n",
        )
        .unwrap();
        let r = load(&path).unwrap();
        assert_eq!(r.api[0].actions, ["tasks:Run"]);
        let s = r.storage.unwrap();
        assert_eq!(s.duration_seconds, 900);
        assert_eq!(s.grants[0].prefix, "incoming/");
        std::fs::write(&path, "name: thumbs\napis: []\n").unwrap();
        let e = format!("{:#}", load(&path).unwrap_err());
        assert!(e.contains("apis"), "{e}");
    }
}
