//! The controller's HTTP listener, for what speaks HTTP rather than gRPC: object-store
//! notifications (`POST /notify/<source>`, as S3/MinIO webhooks and EventBridge API
//! destinations send them), e-mail subscription confirmations (`GET /confirm/<id>?token=`, the
//! link the confirmation mail carries), `GET /healthz`, `GET /metrics` (Prometheus, with any
//! API token: `scrape.rs`), the queues in SQS's JSON protocol (`POST /`, `sqs_api.rs`), and
//! the web dashboard (`/ui/`, `dashboard/`).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use crate::auth::Role;
use crate::core::Core;

/// Largest notification body accepted.
pub const MAX_BODY_BYTES: usize = 1 << 20;

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({"error": message.into()}))).into_response()
}

pub fn router(core: Arc<Core>, series: Arc<crate::dashboard::Series>) -> Router {
    Router::new()
        .route("/notify/{source}", post(notify))
        .route("/confirm/{id}", get(confirm))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .route("/", post(crate::sqs_api::handle))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(core.clone())
        .merge(crate::dashboard::router(core, series))
}

/// 200 while every background loop runs; 503 naming the ones that do not.
async fn healthz(State(core): State<Arc<Core>>) -> Response {
    let workers = core.workers.all();
    let code = if core.workers.healthy() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(json!({"workers": workers}))).into_response()
}

/// The metrics, for a scraper holding an API token of any role (a task's token is refused:
/// the numbers name every family, queue and service).
async fn metrics(State(core): State<Arc<Core>>, headers: HeaderMap) -> Response {
    let header = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    match crate::auth::authenticate(&core, header) {
        Err(s) => return error(StatusCode::UNAUTHORIZED, s.message()),
        Ok(caller) if caller.task.is_some() => {
            return error(
                StatusCode::FORBIDDEN,
                "metrics need an API token (skiff tokens create --role read-only), not a task's",
            )
        }
        Ok(_) => {}
    }
    let rendered = tokio::task::spawn_blocking(move || crate::scrape::render(&core)).await;
    match rendered {
        Ok(Ok(text)) => (
            [(
                axum::http::header::CONTENT_TYPE,
                crate::scrape::CONTENT_TYPE,
            )],
            text,
        )
            .into_response(),
        Ok(Err(e)) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("state store: {e}"),
        ),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

pub async fn serve(core: Arc<Core>, listener: tokio::net::TcpListener) -> std::io::Result<()> {
    let series = Arc::new(crate::dashboard::Series::default());
    // The dashboard's plots are sampled while the listener serves.
    let sampler = tokio::spawn(series.clone().run(core.clone()));
    let served = axum::serve(listener, router(core, series)).await;
    sampler.abort();
    served
}

pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

/// Webhooks send `Authorization: Bearer TOKEN` (MinIO's `auth_token`); some send the token
/// bare. Either way it must be an API token of an operator or admin.
fn authorize(core: &Core, headers: &HeaderMap) -> Result<(), (StatusCode, String)> {
    let header = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(|v| {
            if v.starts_with("Bearer ") {
                v.to_string()
            } else {
                format!("Bearer {v}")
            }
        });
    let caller = crate::auth::authenticate(core, header.as_deref())
        .map_err(|s| (StatusCode::UNAUTHORIZED, s.message().to_string()))?;
    if caller.task.is_some() || caller.role < Role::Operator {
        return Err((
            StatusCode::FORBIDDEN,
            format!(
                "notifications need an operator or admin token (this token is {})",
                caller.role.as_str()
            ),
        ));
    }
    Ok(())
}

async fn notify(
    State(core): State<Arc<Core>>,
    Path(source): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    if let Err((status, message)) = authorize(&core, &headers) {
        return error(status, message);
    }
    let source = match core.store.sources.get(&source) {
        Ok(Some(s)) => s,
        Ok(None) => {
            return error(
                StatusCode::NOT_FOUND,
                format!("no source {source:?} (skiff sources put)"),
            )
        }
        Err(e) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("state store: {e}"),
            )
        }
    };
    let parsed = match crate::objects::parse_notification(&body) {
        Ok(p) => p,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    match crate::objects::ingest(&core, &source, "webhook", parsed.changes).await {
        Ok(done) => Json(json!({
            "accepted": done.event_ids.len(),
            "eventIds": done.event_ids,
            "duplicates": done.duplicates,
            "outOfScope": done.out_of_scope,
            "ignored": parsed.ignored,
        }))
        .into_response(),
        Err(e) => error(
            crate::status::http_store_code(&e),
            format!("state store: {e}"),
        ),
    }
}

#[derive(serde::Deserialize)]
struct ConfirmQuery {
    #[serde(default)]
    token: String,
}

/// The confirmation link of an e-mail subscription: the token is the credential.
async fn confirm(
    State(core): State<Arc<Core>>,
    Path(id): Path<String>,
    Query(q): Query<ConfirmQuery>,
) -> Response {
    match crate::topics_api::confirm(&core, &id, &q.token).await {
        Ok(sub) => (
            StatusCode::OK,
            format!(
                "Confirmed: {} now receives topic {:?}.\n",
                sub.endpoint, sub.topic
            ),
        )
            .into_response(),
        Err(s) => error(crate::status::http_code(s.code()), s.message()),
    }
}
