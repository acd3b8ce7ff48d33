//! Per-task credentials. A task's container asks its agent's endpoint; the agent asks here over
//! its (mutually authenticated) channel; the answer is minted only for a task that runs on that
//! very node, is not STOPPED, and has a role. Object-store keys come from the role's provider:
//! STS AssumeRole with a session policy narrowed to the role's grants (so even the provider's
//! role cannot be used beyond them), or static keys the controller holds as secrets.

use std::time::{Duration, SystemTime};

use serde_json::json;

use crate::core::Core;
use crate::model::{Access, CredentialProvider, StorageAccess, StorageGrant};
use crate::task_tokens::{self, Claims};
use skiff_model::lifecycle::TaskStatus;

/// The IAM session policy that narrows assumed-role credentials to `grants`. `partition` is the
/// ARN partition (aws, aws-cn, ...).
pub fn session_policy(partition: &str, grants: &[StorageGrant]) -> String {
    let mut statements = Vec::new();
    for g in grants {
        let objects = format!("arn:{partition}:s3:::{}/{}*", g.bucket, g.prefix);
        if matches!(g.access, Access::Read | Access::ReadWrite) {
            statements.push(json!({
                "Effect": "Allow",
                "Action": ["s3:GetObject", "s3:GetObjectVersion"],
                "Resource": [objects],
            }));
            statements.push(json!({
                "Effect": "Allow",
                "Action": ["s3:ListBucket"],
                "Resource": [format!("arn:{partition}:s3:::{}", g.bucket)],
                "Condition": {"StringLike": {"s3:prefix": [format!("{}*", g.prefix)]}},
            }));
        }
        if matches!(g.access, Access::Write | Access::ReadWrite) {
            statements.push(json!({
                "Effect": "Allow",
                "Action": ["s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"],
                "Resource": [objects],
            }));
        }
    }
    json!({"Version": "2012-10-17", "Statement": statements}).to_string()
}

/// Minted object-store credentials.
#[derive(Debug, Clone, PartialEq)]
pub struct Minted {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: String,
    pub expiration_ms: i64,
    pub role_arn: String,
}

/// Why no credentials: the task's fault (`forbidden`) or the provider's.
#[derive(Debug)]
pub struct Refusal {
    pub message: String,
    pub forbidden: bool,
}

fn forbidden(message: impl Into<String>) -> Refusal {
    Refusal {
        message: message.into(),
        forbidden: true,
    }
}

fn unavailable(message: impl Into<String>) -> Refusal {
    Refusal {
        message: message.into(),
        forbidden: false,
    }
}

/// Credentials minted for a task.
pub enum Issued {
    /// Object-store keys.
    Storage(Minted),
    /// A fresh SKIFF_TASK_TOKEN.
    Skiff { token: String, expiration_ms: i64 },
}

/// Mints credentials of `kind` ("storage" or "", "skiff") for task `task_id`, asked by the
/// agent of `node_id`: only for a task placed on that node, not STOPPED, with a role.
pub async fn mint_for(
    core: &Core,
    node_id: &str,
    task_id: &str,
    kind: &str,
) -> Result<Issued, Refusal> {
    let store_err = |e: crate::store::StoreError| unavailable(format!("state store: {e}"));
    let task = core
        .store
        .task(task_id)
        .map_err(store_err)?
        .ok_or_else(|| forbidden(format!("no task {task_id}")))?;
    // A node gets credentials only for tasks placed on it.
    if task.node_id.as_deref() != Some(node_id) {
        return Err(forbidden(format!(
            "task {} does not run on this node",
            task.id
        )));
    }
    if task.status == TaskStatus::Stopped {
        return Err(forbidden(format!("task {} has stopped", task.id)));
    }
    if task.spec.task_role.is_empty() {
        return Err(forbidden(format!("task {} has no role", task.id)));
    }
    let role = core
        .store
        .roles
        .get(&task.spec.task_role)
        .map_err(store_err)?
        .ok_or_else(|| {
            forbidden(format!(
                "the task's role {:?} no longer exists",
                task.spec.task_role
            ))
        })?;
    match kind {
        "skiff" => Ok(Issued::Skiff {
            token: core
                .task_keys
                .mint(&skiff_claims(&task.id, &role.name, core.clock.now_ms())),
            expiration_ms: core.clock.now_ms() + task_tokens::TTL_MS,
        }),
        "storage" | "" => {
            let storage = role.storage.as_ref().ok_or_else(|| {
                forbidden(format!(
                    "role {:?} grants no object-store access",
                    role.name
                ))
            })?;
            mint_storage(core, &task.id, &role.name, storage)
                .await
                .map(Issued::Storage)
        }
        other => Err(forbidden(format!("unknown credentials kind {other:?}"))),
    }
}

/// The claims of a fresh SKIFF_TASK_TOKEN for a task.
pub fn skiff_claims(task_id: &str, role: &str, now_ms: i64) -> Claims {
    Claims {
        t: task_id.to_string(),
        r: role.to_string(),
        e: now_ms + task_tokens::TTL_MS,
    }
}

fn open_secret(core: &Core, name: &str) -> Result<String, Refusal> {
    let sealed = core
        .store
        .secrets
        .get(name)
        .map_err(|e| unavailable(format!("state store: {e}")))?
        .ok_or_else(|| unavailable(format!("the provider's secret {name:?} does not exist")))?;
    let value = core.secrets.open_sealed(&sealed).map_err(unavailable)?;
    String::from_utf8(value)
        .map(|s| s.trim().to_string())
        .map_err(|_| unavailable(format!("the provider's secret {name:?} is not text")))
}

async fn mint_storage(
    core: &Core,
    task_id: &str,
    role_name: &str,
    s: &StorageAccess,
) -> Result<Minted, Refusal> {
    match &s.provider {
        CredentialProvider::StaticKeys {
            access_key_id_secret,
            secret_access_key_secret,
        } => Ok(Minted {
            access_key_id: open_secret(core, access_key_id_secret)?,
            secret_access_key: open_secret(core, secret_access_key_secret)?,
            session_token: String::new(),
            // Static keys do not expire; a finite expiry makes SDKs come back, so a rotated
            // secret reaches running tasks.
            expiration_ms: core.clock.now_ms() + i64::from(s.duration_secs) * 1000,
            role_arn: format!("skiff:role/{role_name}"),
        }),
        CredentialProvider::Sts {
            endpoint,
            role_arn,
            access_key_id_secret,
            secret_access_key_secret,
        } => {
            let partition = role_arn.split(':').nth(1).unwrap_or("aws");
            let call = AssumeRole {
                endpoint,
                region: &s.region,
                access_key_id: &open_secret(core, access_key_id_secret)?,
                secret_access_key: &open_secret(core, secret_access_key_secret)?,
                role_arn,
                session_name: &format!("skiff-{task_id}"),
                duration_secs: s.duration_secs,
                policy: &session_policy(partition, &s.grants),
            };
            call.send().await.map_err(unavailable)
        }
    }
}

/// One STS AssumeRole call (the query API, SigV4-signed with the controller's keys).
struct AssumeRole<'a> {
    endpoint: &'a str,
    region: &'a str,
    access_key_id: &'a str,
    secret_access_key: &'a str,
    role_arn: &'a str,
    session_name: &'a str,
    duration_secs: u32,
    policy: &'a str,
}

impl AssumeRole<'_> {
    /// The form body, encoded as AWS SDKs encode query-protocol bodies (RFC 3986: only
    /// unreserved characters stay), which servers that re-encode parsed forms to check a
    /// signature also expect.
    fn body(&self) -> String {
        use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
        const AWS_QUERY: &AsciiSet = &NON_ALPHANUMERIC
            .remove(b'-')
            .remove(b'_')
            .remove(b'.')
            .remove(b'~');
        let duration = self.duration_secs.to_string();
        [
            ("Action", "AssumeRole"),
            ("Version", "2011-06-15"),
            ("RoleArn", self.role_arn),
            ("RoleSessionName", self.session_name),
            ("DurationSeconds", duration.as_str()),
            ("Policy", self.policy),
        ]
        .iter()
        .map(|(k, v)| format!("{k}={}", utf8_percent_encode(v, AWS_QUERY)))
        .collect::<Vec<_>>()
        .join("&")
    }

    fn signed_request(&self) -> Result<http::Request<String>, String> {
        use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
        let url = format!("{}/", self.endpoint);
        let body = self.body();
        let host = url
            .split("://")
            .nth(1)
            .and_then(|r| r.split('/').next())
            .unwrap_or_default()
            .to_string();
        let headers = [
            ("host", host.as_str()),
            (
                "content-type",
                "application/x-www-form-urlencoded; charset=utf-8",
            ),
        ];
        let identity: aws_smithy_runtime_api::client::identity::Identity =
            aws_credential_types::Credentials::new(
                self.access_key_id,
                self.secret_access_key,
                None,
                None,
                "skiff-controller",
            )
            .into();
        let params = aws_sigv4::sign::v4::SigningParams::builder()
            .identity(&identity)
            .region(self.region)
            .name("sts")
            .time(SystemTime::now())
            .settings(SigningSettings::default())
            .build()
            .map_err(|e| format!("signing STS request: {e}"))?
            .into();
        let signable = SignableRequest::new(
            "POST",
            &url,
            headers.iter().copied(),
            SignableBody::Bytes(body.as_bytes()),
        )
        .map_err(|e| format!("signing STS request: {e}"))?;
        let (instructions, _) = sign(signable, &params)
            .map_err(|e| format!("signing STS request: {e}"))?
            .into_parts();
        let mut req = http::Request::builder().method("POST").uri(&url);
        for (k, v) in headers {
            req = req.header(k, v);
        }
        let mut req = req
            .body(body)
            .map_err(|e| format!("STS endpoint {:?}: {e}", self.endpoint))?;
        instructions.apply_to_request_http1x(&mut req);
        Ok(req)
    }

    async fn send(&self) -> Result<Minted, String> {
        let req = self.signed_request()?;
        let req = reqwest::Request::try_from(req).map_err(|e| format!("STS request: {e}"))?;
        let client = crate::outbound::client(|b| b.timeout(Duration::from_secs(15)))
            .map_err(|e| format!("HTTP client: {e}"))?;
        let resp = client
            .execute(req)
            .await
            .map_err(|e| format!("STS endpoint {}: {e}", self.endpoint))?;
        let status = resp.status();
        let text = resp
            .text()
            .await
            .map_err(|e| format!("STS endpoint {}: {e}", self.endpoint))?;
        parse_assume_role(status.as_u16(), &text, self.role_arn)
    }
}

/// Reads an AssumeRole answer (or an STS error document).
fn parse_assume_role(status: u16, xml: &str, role_arn: &str) -> Result<Minted, String> {
    let doc = roxmltree::Document::parse(xml)
        .map_err(|e| format!("STS answered {status} with a body that is not XML ({e})"))?;
    let text = |tag: &str| {
        doc.descendants()
            .find(|n| n.has_tag_name(tag))
            .and_then(|n| n.text())
            .map(str::to_string)
    };
    if !(200..300).contains(&status) {
        return Err(format!(
            "STS refused AssumeRole ({status} {}): {}",
            text("Code").unwrap_or_default(),
            text("Message").unwrap_or_default()
        ));
    }
    let field = |tag: &str| text(tag).ok_or_else(|| format!("STS answer has no {tag}"));
    let expiration = field("Expiration")?;
    let expiration_ms = chrono::DateTime::parse_from_rfc3339(&expiration)
        .map_err(|e| format!("STS Expiration {expiration:?}: {e}"))?
        .timestamp_millis();
    Ok(Minted {
        access_key_id: field("AccessKeyId")?,
        secret_access_key: field("SecretAccessKey")?,
        session_token: field("SessionToken")?,
        expiration_ms,
        role_arn: role_arn.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_session_policy_names_exactly_the_granted_prefixes() {
        let grants = [
            StorageGrant {
                bucket: "photos".into(),
                prefix: "incoming/".into(),
                access: Access::Read,
            },
            StorageGrant {
                bucket: "photos".into(),
                prefix: "thumbs/".into(),
                access: Access::ReadWrite,
            },
        ];
        let p: serde_json::Value = serde_json::from_str(&session_policy("aws", &grants)).unwrap();
        let st = p["Statement"].as_array().unwrap();
        let allowed = |action: &str| -> Vec<String> {
            st.iter()
                .filter(|s| s["Action"].as_array().unwrap().iter().any(|a| a == action))
                .flat_map(|s| s["Resource"].as_array().unwrap().clone())
                .map(|r| r.as_str().unwrap().to_string())
                .collect()
        };
        assert_eq!(
            allowed("s3:GetObject"),
            [
                "arn:aws:s3:::photos/incoming/*",
                "arn:aws:s3:::photos/thumbs/*"
            ]
        );
        assert_eq!(allowed("s3:PutObject"), ["arn:aws:s3:::photos/thumbs/*"]);
        assert!(st.iter().all(|s| s["Effect"] == "Allow"));
    }

    #[test]
    fn sts_answers_and_errors_are_read() {
        let ok = r#"<AssumeRoleResponse xmlns="https://sts.amazonaws.com/doc/2011-06-15/">
          <AssumeRoleResult><Credentials>
            <AccessKeyId>ASIAX</AccessKeyId><SecretAccessKey>sk</SecretAccessKey>
            <SessionToken>tok</SessionToken><Expiration>2026-11-23T13:00:00Z</Expiration>
          </Credentials></AssumeRoleResult></AssumeRoleResponse>"#;
        let m = parse_assume_role(200, ok, "arn:aws:iam::1:role/r").unwrap();
        assert_eq!(m.access_key_id, "ASIAX");
        assert_eq!(m.session_token, "tok");
        assert_eq!(m.expiration_ms, 1_795_438_800_000);
        let err = r#"<ErrorResponse><Error><Code>AccessDenied</Code>
          <Message>not allowed</Message></Error></ErrorResponse>"#;
        let e = parse_assume_role(403, err, "r").unwrap_err();
        assert!(
            e.contains("403 AccessDenied") && e.contains("not allowed"),
            "{e}"
        );
        assert!(parse_assume_role(500, "oops", "r").is_err());
    }
}
