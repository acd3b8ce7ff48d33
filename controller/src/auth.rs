//! Who may call what. Every API call carries `authorization: Bearer skiff_<id>_<secret>`; the
//! token's role decides which methods it may call. Tokens are stored as SHA-256 of their secret
//! only, so a copy of the state directory does not hand out working tokens.
//!
//! The check runs as a tower layer in front of every gRPC service, on the method path, so a
//! new method is refused to all but admins until it is given a role here ([`required_role`]).

use std::sync::Arc;
use std::task::{Context, Poll};

use sha2::{Digest, Sha256};
use tonic::Status;

use crate::core::Core;
use crate::model::{ApiToken, TaskRole};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    ReadOnly,
    Operator,
    Admin,
}

impl Role {
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "read-only" => Some(Role::ReadOnly),
            "operator" => Some(Role::Operator),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::ReadOnly => "read-only",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

/// The authenticated caller, put into each request's extensions for handlers that decide more
/// finely (e.g. privileged containers need an admin).
#[derive(Clone, Debug)]
pub struct Caller {
    pub token_id: String,
    pub role: Role,
    /// Set when the caller is a task with its SKIFF_TASK_TOKEN: its role's grants decide, not
    /// `role` (which is then read-only, so admin-only checks refuse it).
    pub task: Option<TaskCaller>,
}

#[derive(Clone, Debug)]
pub struct TaskCaller {
    pub task_id: String,
    pub role: Arc<TaskRole>,
}

/// The action name a role grants for a method path: `/skiff.v1.Tasks/Run` → `tasks:Run`.
pub fn action_name(path: &str) -> String {
    let (service, method) = path
        .trim_start_matches('/')
        .split_once('/')
        .unwrap_or((path, ""));
    let service = service.rsplit('.').next().unwrap_or(service);
    format!("{}:{method}", service.to_ascii_lowercase())
}

/// Actions whose handlers check the resource they act on (`check_task_resource`); for every
/// other action a task's role needs a grant on "*".
const RESOURCE_SCOPED: &[&str] = &[
    "tasks:Run",
    "tasks:Stop",
    "events:Put",
    "queues:Describe",
    "queues:Send",
    "queues:Receive",
    "queues:DeleteMessages",
    "queues:ChangeVisibility",
];

/// The role a method needs; None = open to all (health, reflection, and the agent channel,
/// whose peers are authenticated by the transport).
pub fn required_role(path: &str) -> Option<Role> {
    let (service, method) = path
        .trim_start_matches('/')
        .split_once('/')
        .unwrap_or((path, ""));
    match service {
        "grpc.health.v1.Health"
        | "grpc.reflection.v1.ServerReflection"
        | "grpc.reflection.v1alpha.ServerReflection"
        | "skiff.v1.AgentChannel" => None,
        "skiff.v1.TaskDefinitions" => Some(match method {
            "List" | "Describe" => Role::ReadOnly,
            _ => Role::Operator,
        }),
        "skiff.v1.Tasks" => Some(match method {
            "Describe" | "List" | "Wait" | "Logs" => Role::ReadOnly,
            _ => Role::Operator,
        }),
        "skiff.v1.Nodes" => Some(match method {
            "Revoke" => Role::Admin,
            "SetState" => Role::Operator,
            "List" => Role::ReadOnly,
            _ => Role::Admin,
        }),
        "skiff.v1.Events" => Some(match method {
            "Put" | "Replay" => Role::Operator,
            _ => Role::ReadOnly,
        }),
        "skiff.v1.Schedules" => Some(match method {
            "Describe" | "List" => Role::ReadOnly,
            _ => Role::Operator,
        }),
        "skiff.v1.Topics" => Some(match method {
            "Describe" | "List" | "ListDeadLetters" | "Confirm" => Role::ReadOnly,
            _ => Role::Operator,
        }),
        "skiff.v1.Queues" => Some(match method {
            "Describe" | "List" => Role::ReadOnly,
            _ => Role::Operator,
        }),
        "skiff.v1.Services" => Some(match method {
            "Describe" | "List" => Role::ReadOnly,
            _ => Role::Operator,
        }),
        "skiff.v1.Sources" => Some(match method {
            "List" => Role::ReadOnly,
            _ => Role::Admin,
        }),
        "skiff.v1.ApplySets" => Some(match method {
            "Get" | "List" => Role::ReadOnly,
            _ => Role::Operator,
        }),
        "skiff.v1.Rules" => Some(match method {
            "Get" | "List" => Role::ReadOnly,
            _ => Role::Operator,
        }),
        "skiff.v1.Images" => Some(match method {
            "List" => Role::ReadOnly,
            _ => Role::Operator,
        }),
        "skiff.v1.Secrets" => Some(match method {
            "List" => Role::Operator,
            _ => Role::Admin,
        }),
        "skiff.v1.Roles" => Some(match method {
            "List" | "Get" => Role::Operator,
            _ => Role::Admin,
        }),
        "skiff.v1.RegistryCredentials" => Some(match method {
            "List" => Role::Operator,
            _ => Role::Admin,
        }),
        _ => Some(Role::Admin),
    }
}

/// A secret's SHA-256, hex: what is kept of it.
pub(crate) fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    use std::io::Read;
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut buf))
        .expect("/dev/urandom is readable");
    hex::encode(buf)
}

/// A new token: the string to hand out (once) and the record to store.
pub fn mint(role: Role, name: &str, ttl_secs: u64, now: i64) -> (String, ApiToken) {
    let id = random_hex(8);
    let secret = random_hex(24);
    let record = ApiToken {
        id: id.clone(),
        name: name.to_string(),
        role: role.as_str().to_string(),
        secret_sha256: sha256_hex(&secret),
        created_ms: now,
        expires_ms: if ttl_secs == 0 {
            0
        } else {
            now.saturating_add((ttl_secs as i64).saturating_mul(1000))
        },
        revoked_ms: 0,
    };
    (format!("skiff_{id}_{secret}"), record)
}

/// Checks a task's SKIFF_TASK_TOKEN: signed by this controller, unexpired, its task not
/// STOPPED and still under the role the token names.
fn authenticate_task(core: &Core, token: &str) -> Result<Caller, Status> {
    let claims = core
        .task_keys
        .verify(token, core.clock.now_ms())
        .map_err(Status::unauthenticated)?;
    let store_err = |e: crate::store::StoreError| Status::internal(format!("state store: {e}"));
    let task = core
        .store
        .task(&claims.t)
        .map_err(store_err)?
        .ok_or_else(|| Status::unauthenticated("the task token's task does not exist"))?;
    if task.status == skiff_model::lifecycle::TaskStatus::Stopped {
        return Err(Status::unauthenticated(format!(
            "task {} has stopped; its token is no longer valid",
            task.id
        )));
    }
    if task.spec.task_role != claims.r {
        return Err(Status::unauthenticated("the task token is not valid"));
    }
    let role = core
        .store
        .roles
        .get(&claims.r)
        .map_err(store_err)?
        .ok_or_else(|| {
            Status::permission_denied(format!("the task's role {:?} no longer exists", claims.r))
        })?;
    Ok(Caller {
        token_id: format!("task:{}", task.id),
        role: Role::ReadOnly,
        task: Some(TaskCaller {
            task_id: task.id,
            role: Arc::new(role),
        }),
    })
}

/// Checks a bearer token against the store.
pub fn authenticate(core: &Core, header: Option<&str>) -> Result<Caller, Status> {
    let token = header
        .and_then(|h| h.strip_prefix("Bearer "))
        .ok_or_else(|| {
            Status::unauthenticated(
                "no API token: send authorization: Bearer TOKEN (the CLI reads SKIFF_TOKEN)",
            )
        })?;
    if token.starts_with(crate::task_tokens::PREFIX) {
        return authenticate_task(core, token);
    }
    let bad = || Status::unauthenticated("the API token is not valid");
    let (id, secret) = token
        .strip_prefix("skiff_")
        .and_then(|t| t.split_once('_'))
        .ok_or_else(bad)?;
    let record = core
        .store
        .tokens
        .get(id)
        .map_err(|e| Status::internal(format!("state store: {e}")))?
        .ok_or_else(bad)?;
    // Compare digests, not secrets: equal-length, and no early exit on the secret's bytes.
    let given = Sha256::digest(secret.as_bytes());
    let stored = hex::decode(&record.secret_sha256).unwrap_or_default();
    let same = given.len() == stored.len()
        && given
            .iter()
            .zip(&stored)
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0;
    if !same {
        return Err(bad());
    }
    if record.revoked_ms != 0 {
        return Err(Status::unauthenticated("the API token has been revoked"));
    }
    if record.expires_ms != 0 && core.clock.now_ms() >= record.expires_ms {
        return Err(Status::unauthenticated("the API token has expired"));
    }
    let role = Role::parse(&record.role).ok_or_else(bad)?;
    Ok(Caller {
        token_id: record.id,
        role,
        task: None,
    })
}

/// Decides one call: Ok(None) = open method, Ok(Some(caller)) = allowed, Err = refused.
pub fn authorize(core: &Core, path: &str, header: Option<&str>) -> Result<Option<Caller>, Status> {
    let Some(needed) = required_role(path) else {
        return Ok(None);
    };
    let caller = authenticate(core, header)?;
    if let Some(task) = &caller.task {
        let action = action_name(path);
        let resource = (!RESOURCE_SCOPED.contains(&action.as_str())).then_some("*");
        if !skiff_model::trust::allows(&task.role, &action, resource) {
            return Err(Status::permission_denied(format!(
                "{action}: task role {:?} does not grant it",
                task.role.name
            )));
        }
        return Ok(Some(caller));
    }
    if caller.role < needed {
        return Err(Status::permission_denied(format!(
            "{path} needs the {} role; this token is {}",
            needed.as_str(),
            caller.role.as_str()
        )));
    }
    Ok(Some(caller))
}

/// The request metadata that turns a Put into a dry run: checked and normalised as the Put
/// would be, answered with the record it would store, nothing stored (`skiff diff` compares
/// files with the server this way).
pub const DRY_RUN_HEADER: &str = "skiff-dry-run";

/// Whether a Put request asks only for a dry run (`skiff-dry-run: 1`).
pub fn dry_run<T>(req: &tonic::Request<T>) -> bool {
    req.metadata()
        .get(DRY_RUN_HEADER)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| matches!(v, "1" | "true"))
}

/// The role of the caller of a handler (admin when no layer ran, as in unit tests).
pub fn caller_role<T>(req: &tonic::Request<T>) -> Role {
    req.extensions()
        .get::<Caller>()
        .map_or(Role::Admin, |c| c.role)
}

/// For a task caller, checks that its role grants `action` on `resource`; other callers were
/// decided by their role already.
pub fn check_task_resource<T>(
    req: &tonic::Request<T>,
    action: &str,
    resource: &str,
) -> Result<(), Status> {
    match req
        .extensions()
        .get::<Caller>()
        .and_then(|c| c.task.as_ref())
    {
        Some(t) if !skiff_model::trust::allows(&t.role, action, Some(resource)) => {
            Err(Status::permission_denied(format!(
                "{action} on {resource}: task role {:?} does not grant it",
                t.role.name
            )))
        }
        _ => Ok(()),
    }
}

#[derive(Clone)]
pub struct AuthLayer {
    pub core: Arc<Core>,
}

impl<S> tower::Layer<S> for AuthLayer {
    type Service = AuthService<S>;
    fn layer(&self, inner: S) -> AuthService<S> {
        AuthService {
            inner,
            core: self.core.clone(),
        }
    }
}

#[derive(Clone)]
pub struct AuthService<S> {
    inner: S,
    core: Arc<Core>,
}

type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for AuthService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        let header = req
            .headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        match authorize(&self.core, req.uri().path(), header) {
            Ok(caller) => {
                if let Some(c) = caller {
                    req.extensions_mut().insert(c);
                }
                // The clone that was made ready is the one to call (tower's contract).
                let clone = self.inner.clone();
                let mut ready = std::mem::replace(&mut self.inner, clone);
                Box::pin(ready.call(req))
            }
            Err(status) => Box::pin(async move { Ok(status.into_http()) }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_per_method_and_unknown_methods_need_admin() {
        assert_eq!(required_role("/skiff.v1.Tasks/List"), Some(Role::ReadOnly));
        assert_eq!(required_role("/skiff.v1.Tasks/Run"), Some(Role::Operator));
        assert_eq!(required_role("/skiff.v1.Tokens/Create"), Some(Role::Admin));
        assert_eq!(
            required_role("/skiff.v1.Tasks/SomethingNew"),
            Some(Role::Operator)
        );
        assert_eq!(required_role("/skiff.v1.Unknown/X"), Some(Role::Admin));
        assert_eq!(required_role("/grpc.health.v1.Health/Check"), None);
        assert!(Role::Admin > Role::Operator && Role::Operator > Role::ReadOnly);
        assert_eq!(action_name("/skiff.v1.Tasks/Run"), "tasks:Run");
        assert_eq!(
            action_name("/skiff.v1.TaskDefinitions/List"),
            "taskdefinitions:List"
        );
    }

    #[test]
    fn minted_tokens_store_only_a_digest() {
        let (token, rec) = mint(Role::Operator, "ci", 60, 1_000);
        assert!(token.starts_with(&format!("skiff_{}_", rec.id)));
        let secret = token.rsplit('_').next().unwrap();
        assert!(!rec.secret_sha256.contains(secret));
        assert_eq!(rec.secret_sha256, sha256_hex(secret));
        assert_eq!((rec.created_ms, rec.expires_ms), (1_000, 61_000));
    }
}
