//! The web dashboard, on the HTTP listener at `/ui/`: one page (HTML, CSS and JavaScript
//! embedded in the binary, no build step) that reads the controller through `/ui/api/*` —
//! JSON answers of the same gRPC services the CLI calls, so the fields are those of
//! `-o json` — behind the same tokens (the login form's token is sent as a Bearer token;
//! read-only is enough; a task's token is refused). Logs and the event stream are streamed
//! (`follow`), and `series.rs` samples what the page plots.

mod series;

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use skiff_proto::v1 as pb;
use tokio_stream::StreamExt;

use crate::auth::Caller;
use crate::core::Core;
pub use series::Series;

const INDEX: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");

#[derive(Clone)]
struct Ui {
    core: Arc<Core>,
    series: Arc<Series>,
}

pub fn router(core: Arc<Core>, series: Arc<Series>) -> Router {
    Router::new()
        .route("/ui", get(|| async { Redirect::permanent("/ui/") }))
        .route(
            "/ui/",
            get(|| async { asset("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/ui/app.js",
            get(|| async { asset("text/javascript", APP_JS) }),
        )
        .route("/ui/app.css", get(|| async { asset("text/css", APP_CSS) }))
        .route("/ui/api/whoami", get(whoami))
        .route("/ui/api/nodes", get(nodes))
        .route("/ui/api/tasks", get(tasks))
        .route("/ui/api/tasks/{id}", get(task))
        .route("/ui/api/tasks/{id}/logs", get(logs))
        .route("/ui/api/services", get(services))
        .route("/ui/api/queues", get(queues))
        .route("/ui/api/rules", get(rules))
        .route("/ui/api/schedules", get(schedules))
        .route("/ui/api/topics", get(topics))
        .route("/ui/api/events", get(events))
        .route("/ui/api/series", get(samples))
        .with_state(Ui { core, series })
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            // The page holds no data; a cached copy is fine, a stale one for a release is not.
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({"error": message.into()}))).into_response()
}

/// The caller of a `/ui/api` request: any API token, not a task's.
struct Viewer(Caller);

impl FromRequestParts<Ui> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, ui: &Ui) -> Result<Viewer, Response> {
        let header = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok());
        let caller = crate::auth::authenticate(&ui.core, header)
            .map_err(|s| error(StatusCode::UNAUTHORIZED, s.message()))?;
        if caller.task.is_some() {
            return Err(error(
                StatusCode::FORBIDDEN,
                "the dashboard needs an API token (skiff tokens create --role read-only), not a task's",
            ));
        }
        Ok(Viewer(caller))
    }
}

/// A gRPC request as the caller's (so each service decides as it does for the CLI).
fn req<T>(caller: &Caller, msg: T) -> tonic::Request<T> {
    let mut r = tonic::Request::new(msg);
    r.extensions_mut().insert(caller.clone());
    r
}

/// A gRPC answer as JSON, or its error with the matching HTTP code.
fn answer<T: serde::Serialize>(r: Result<tonic::Response<T>, tonic::Status>) -> Response {
    match r {
        Ok(r) => Json(r.into_inner()).into_response(),
        Err(s) => error(crate::status::http_code(s.code()), s.message()),
    }
}

async fn whoami(Viewer(c): Viewer) -> Response {
    Json(json!({"tokenId": c.token_id, "role": c.role.as_str()})).into_response()
}

async fn nodes(State(ui): State<Ui>, Viewer(c): Viewer) -> Response {
    use pb::nodes_server::Nodes;
    let api = crate::api::NodesApi { core: ui.core };
    answer(api.list(req(&c, pb::ListNodesRequest::default())).await)
}

#[derive(Deserialize)]
struct TaskFilter {
    #[serde(default)]
    status: String,
    #[serde(default)]
    family: String,
    #[serde(default)]
    service: String,
    #[serde(default)]
    limit: Option<u32>,
}

async fn tasks(State(ui): State<Ui>, Viewer(c): Viewer, Query(f): Query<TaskFilter>) -> Response {
    use pb::tasks_server::Tasks;
    let api = crate::api::TasksApi { core: ui.core };
    let r = pb::ListTasksRequest {
        status: f.status,
        family: f.family,
        service: f.service,
        limit: f.limit.unwrap_or(100).min(500),
        ..Default::default()
    };
    answer(api.list(req(&c, r)).await)
}

async fn task(State(ui): State<Ui>, Viewer(c): Viewer, Path(id): Path<String>) -> Response {
    use pb::tasks_server::Tasks;
    let api = crate::api::TasksApi { core: ui.core };
    answer(api.describe(req(&c, pb::TaskRef { id })).await)
}

/// The task's logs, the last 500 lines then live until the task stops, as text.
async fn logs(State(ui): State<Ui>, Viewer(c): Viewer, Path(id): Path<String>) -> Response {
    use pb::tasks_server::Tasks;
    let api = crate::api::TasksApi { core: ui.core };
    let r = pb::TaskLogsRequest {
        id,
        follow: true,
        tail: 500,
        ..Default::default()
    };
    match api.logs(req(&c, r)).await {
        Ok(stream) => {
            let body = stream.into_inner().map(|chunk| {
                Ok::<_, std::io::Error>(match chunk {
                    Ok(c) => Bytes::from(c.data),
                    Err(s) => Bytes::from(format!("\n[skiff: {}]\n", s.message())),
                })
            });
            (
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                Body::from_stream(body),
            )
                .into_response()
        }
        Err(s) => error(crate::status::http_code(s.code()), s.message()),
    }
}

async fn services(State(ui): State<Ui>, Viewer(c): Viewer) -> Response {
    use pb::services_server::Services;
    let api = crate::services_api::ServicesApi { core: ui.core };
    answer(api.list(req(&c, pb::ListServicesRequest::default())).await)
}

async fn queues(State(ui): State<Ui>, Viewer(c): Viewer) -> Response {
    use pb::queues_server::Queues;
    let api = crate::queues_api::QueuesApi { core: ui.core };
    answer(api.list(req(&c, pb::ListQueuesRequest::default())).await)
}

/// Rules with their counters, and the newest dead letters of all of them.
async fn rules(State(ui): State<Ui>, Viewer(c): Viewer) -> Response {
    use pb::events_server::Events;
    use pb::rules_server::Rules;
    let rules = crate::rules_api::RulesApi {
        core: ui.core.clone(),
    };
    let events = crate::api::EventsApi::new(ui.core);
    let list = rules.list(req(&c, pb::ListRulesRequest::default())).await;
    let dead = events
        .list_dead_letters(req(
            &c,
            pb::ListDeadLettersRequest {
                rule: String::new(),
                limit: 50,
            },
        ))
        .await;
    let recent = match recent_matches(&rules.core) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("state store: {e}"),
            )
        }
    };
    match (list, dead) {
        (Ok(l), Ok(d)) => Json(json!({
            "rules": l.into_inner().rules,
            "recentMatches": recent,
            "deadLetters": d.into_inner().dead_letters,
        }))
        .into_response(),
        (Err(s), _) | (_, Err(s)) => error(crate::status::http_code(s.code()), s.message()),
    }
}

/// How far back the rules page looks for each rule's recent matches.
const RECENT_EVENTS: usize = 1000;
/// How many matches it shows per rule.
const MATCHES_SHOWN: usize = 5;

/// Each enabled rule's newest matches among the last events of the log (what its pattern
/// matches now, the way the dispatcher matches).
fn recent_matches(
    core: &Core,
) -> Result<std::collections::BTreeMap<String, Vec<serde_json::Value>>, crate::store::StoreError> {
    let (set, _) = skiff_model::ruleset::RuleSet::new(core.store.rules.list()?);
    let mut out: std::collections::BTreeMap<String, Vec<serde_json::Value>> = Default::default();
    for ev in core.store.last_events(RECENT_EVENTS)?.iter().rev() {
        for rule in set.matching(&ev.envelope()) {
            let shown = out.entry(rule.name.clone()).or_default();
            if shown.len() < MATCHES_SHOWN {
                shown.push(json!({
                    "id": ev.id,
                    "timeMs": ev.time_ms,
                    "source": ev.source,
                    "detailType": ev.detail_type,
                    "resources": ev.resources,
                }));
            }
        }
    }
    Ok(out)
}

async fn schedules(State(ui): State<Ui>, Viewer(c): Viewer) -> Response {
    use pb::schedules_server::Schedules;
    let api = crate::schedules_api::SchedulesApi { core: ui.core };
    answer(api.list(req(&c, pb::ListSchedulesRequest::default())).await)
}

/// Topics with their subscriptions' delivery counts, and the dead-lettered deliveries.
async fn topics(State(ui): State<Ui>, Viewer(c): Viewer) -> Response {
    use pb::topics_server::Topics;
    let api = crate::topics_api::TopicsApi { core: ui.core };
    let list = api.list(req(&c, pb::ListTopicsRequest::default())).await;
    let dead = api
        .list_dead_letters(req(&c, pb::ListNotificationDeadLettersRequest::default()))
        .await;
    match (list, dead) {
        (Ok(l), Ok(d)) => Json(json!({
            "topics": l.into_inner().topics,
            "deadLetters": d.into_inner().deliveries,
        }))
        .into_response(),
        (Err(s), _) | (_, Err(s)) => error(crate::status::http_code(s.code()), s.message()),
    }
}

/// The event stream, the last 50 then live, one JSON event per line.
async fn events(State(ui): State<Ui>, Viewer(c): Viewer) -> Response {
    use pb::events_server::Events;
    let api = crate::api::EventsApi::new(ui.core);
    let r = pb::WatchEventsRequest {
        follow: true,
        tail: Some(50),
        ..Default::default()
    };
    match api.watch(req(&c, r)).await {
        Ok(stream) => {
            let body = stream.into_inner().map(|ev| {
                let line = match ev {
                    Ok(e) => serde_json::to_string(&e).unwrap_or_default(),
                    Err(s) => json!({"error": s.message()}).to_string(),
                };
                Ok::<_, std::io::Error>(Bytes::from(line + "\n"))
            });
            (
                [(header::CONTENT_TYPE, "application/x-ndjson")],
                Body::from_stream(body),
            )
                .into_response()
        }
        Err(s) => error(crate::status::http_code(s.code()), s.message()),
    }
}

async fn samples(State(ui): State<Ui>, Viewer(_): Viewer) -> Response {
    Json(ui.series.snapshot()).into_response()
}
