//! `GET /metrics` on the agent's `--metrics-listen` address: what this node's containers use,
//! read from their cgroups at each scrape (`usage.rs`), and its tasks by phase, in the
//! Prometheus (OpenMetrics) text format. No token: bind it to loopback or a network the
//! scraper shares with nobody else (the numbers name tasks, not secrets).

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use axum::extract::State;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};

use crate::record::Phase;
use crate::AgentInner;

const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ContainerLabels {
    task: String,
    container: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabel {
    phase: String,
}

/// Every metric of this node, as the text a scrape gets. Reads cgroup files: call it off
/// the runtime's worker threads.
pub fn render(inner: &AgentInner) -> String {
    let phases = Family::<PhaseLabel, Gauge>::default();
    let cpu = Family::<ContainerLabels, Counter<f64, AtomicU64>>::default();
    let memory = Family::<ContainerLabels, Gauge>::default();
    let limit = Family::<ContainerLabels, Gauge>::default();
    let ooms = Family::<ContainerLabels, Counter>::default();
    for phase in [Phase::Pending, Phase::Running, Phase::Stopping] {
        phases
            .get_or_create(&PhaseLabel {
                phase: phase.as_str().to_string(),
            })
            .set(0);
    }
    // One pass under the lock: the phases counted, the live containers listed; their cgroup
    // files are read after it is let go.
    let mut containers: Vec<(String, String)> = Vec::new();
    for (id, t) in inner.tasks.lock().unwrap().iter() {
        phases
            .get_or_create(&PhaseLabel {
                phase: t.record.phase.as_str().to_string(),
            })
            .inc();
        if t.record.phase != Phase::Stopped {
            containers.extend(
                t.record
                    .containers
                    .iter()
                    .map(|c| (id.clone(), c.name.clone())),
            );
        }
    }
    for (task, container) in containers {
        let Some(u) = crate::usage::read(&crate::runtime::cgroup_path(&task, &container)) else {
            continue;
        };
        let labels = ContainerLabels { task, container };
        cpu.get_or_create(&labels).inc_by(u.cpu_seconds);
        memory
            .get_or_create(&labels)
            .set(u.memory_working_set_bytes as i64);
        if let Some(l) = u.memory_limit_bytes {
            limit.get_or_create(&labels).set(l as i64);
        }
        ooms.get_or_create(&labels).inc_by(u.oom_kills);
    }
    let mut reg = Registry::default();
    reg.register(
        "skiff_agent_tasks",
        "Tasks this agent holds, by phase (STOPPED ones until the controller has their end)",
        phases,
    );
    reg.register_with_unit(
        "skiff_container_cpu",
        "CPU time each container has used (its cgroup's count)",
        Unit::Seconds,
        cpu,
    );
    reg.register_with_unit(
        "skiff_container_memory_working_set",
        "Memory each container uses, less the page cache the kernel can reclaim at once (as cAdvisor counts it)",
        Unit::Bytes,
        memory,
    );
    reg.register_with_unit(
        "skiff_container_memory_limit",
        "Each container's memory limit (absent without one)",
        Unit::Bytes,
        limit,
    );
    reg.register(
        "skiff_container_oom_kills",
        "Processes the kernel's OOM killer ended in each container",
        ooms,
    );
    let connected = Gauge::<i64>::default();
    connected.set(i64::from(inner.outbox.lock().unwrap().is_some()));
    reg.register(
        "skiff_agent_connected",
        "1 while the agent has a session with the controller",
        connected,
    );
    let mut out = String::new();
    prometheus_client::encoding::text::encode(&mut out, &reg)
        .expect("writing to a String does not fail");
    out
}

async fn metrics(State(inner): State<Arc<AgentInner>>) -> axum::response::Response {
    match tokio::task::spawn_blocking(move || render(&inner)).await {
        Ok(text) => ([(axum::http::header::CONTENT_TYPE, CONTENT_TYPE)], text).into_response(),
        Err(e) => (axum::http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

/// Serves `GET /metrics` on `listener` until the process ends.
pub async fn serve(
    inner: Arc<AgentInner>,
    listener: tokio::net::TcpListener,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/metrics", get(metrics))
        .with_state(inner);
    axum::serve(listener, app).await
}
