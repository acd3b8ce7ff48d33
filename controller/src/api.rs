//! The public gRPC API: task definitions, tasks, nodes, events. Thin: it validates input,
//! converts at the edge and calls into `Core`.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use skiff_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::convert;
use crate::core::Core;
use crate::model::{DefinitionStatus, Event, NodeState, Task, TaskDefinition};
use crate::placer::node_loads;
use crate::store::TaskFilter;
use skiff_model::lifecycle::{StopCode, TaskStatus};
use skiff_model::validate::{self, InvalidField};

pub(crate) type ApiStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// `stream` until the controller begins to stop; then one `Unavailable` ("stopping; retry")
/// and the end. A graceful shutdown waits for every open stream, so without this an agent's
/// session or a `--follow` would hold the controller up forever.
pub(crate) fn until_stopping<T: Send + 'static>(
    core: &Core,
    stream: impl Stream<Item = Result<T, Status>> + Send + 'static,
) -> ApiStream<T> {
    use futures::StreamExt;
    let state = (Box::pin(stream), Box::pin(core.stopped()), false);
    Box::pin(futures::stream::unfold(
        state,
        |(mut stream, mut stopped, ended)| async move {
            if ended {
                return None;
            }
            tokio::select! {
                biased;
                _ = &mut stopped => Some((
                    Err(Status::unavailable("the controller is stopping; retry")),
                    (stream, stopped, true),
                )),
                item = stream.next() => item.map(|i| (i, (stream, stopped, false))),
            }
        },
    ))
}

fn invalid(e: InvalidField) -> Status {
    Status::invalid_argument(e.to_string())
}

/// Resolves once the task is STOPPED; fails at once (FailedPrecondition, with the reason)
/// while no connected node could ever fit it, since that wait would never end.
async fn wait_stopped(core: &Core, id: &str) -> Result<Task, Status> {
    let mut changes = core.subscribe();
    loop {
        let task = get_task(core, id)?;
        if task.status == TaskStatus::Stopped {
            return Ok(task);
        }
        if task.status == TaskStatus::Provisioning && task.unplaceable {
            return Err(Status::failed_precondition(format!(
                "task {} can never be placed: {}",
                task.id, task.status_reason
            )));
        }
        if changes.changed().await.is_err() {
            return Err(Status::unavailable("controller is shutting down"));
        }
    }
}

/// Privileged containers and host bind mounts are an admin's decision: either reaches the
/// whole node.
fn check_privileged(spec: &crate::model::TaskSpec, role: crate::auth::Role) -> Result<(), Status> {
    if role >= crate::auth::Role::Admin {
        return Ok(());
    }
    if let Some(i) = spec.containers.iter().position(|c| c.privileged) {
        return Err(Status::permission_denied(format!(
            "containers[{i}].privileged: only an admin token may ask for a privileged container (this token is {})",
            role.as_str()
        )));
    }
    if let Some(i) = spec.containers.iter().position(|c| !c.mounts.is_empty()) {
        return Err(Status::permission_denied(format!(
            "containers[{i}].mounts: only an admin token may mount host paths (this token is {})",
            role.as_str()
        )));
    }
    Ok(())
}

/// The resource a task role names to run or stop tasks of a family.
fn task_resource(family: Option<&str>) -> String {
    family.map_or_else(|| "ad-hoc".to_string(), |f| format!("task-definition/{f}"))
}

/// Resolves `family` (latest ACTIVE revision) or `family:rev`.
fn resolve_taskdef(core: &Core, field: &str, reference: &str) -> Result<TaskDefinition, Status> {
    crate::taskdefs::resolve(core, field, reference)?
        .ok_or_else(|| Status::not_found(format!("{field}: no task definition {reference:?}")))
}

pub struct TaskDefinitionsApi {
    pub core: Arc<Core>,
}

#[tonic::async_trait]
impl pb::task_definitions_server::TaskDefinitions for TaskDefinitionsApi {
    async fn register(
        &self,
        req: Request<pb::RegisterTaskDefinitionRequest>,
    ) -> Result<Response<pb::TaskDefinition>, Status> {
        let role = crate::auth::caller_role(&req);
        let dry_run = crate::auth::dry_run(&req);
        let input = req
            .into_inner()
            .definition
            .ok_or_else(|| Status::invalid_argument("definition: missing"))?;
        validate::check_name("family", &input.family).map_err(invalid)?;
        let spec = convert::task_spec_input(&input).map_err(invalid)?;
        check_privileged(&spec, role)?;
        if dry_run {
            return Ok(Response::new(convert::task_definition(&TaskDefinition {
                family: input.family.clone(),
                revision: 0,
                spec,
                status: DefinitionStatus::Active,
                registered_at_ms: 0,
            })));
        }
        self.core.check_references(&spec)?;
        let def = crate::taskdefs::register(&self.core, &input.family, spec).await?;
        Ok(Response::new(convert::task_definition(&def)))
    }

    async fn list(
        &self,
        req: Request<pb::ListTaskDefinitionsRequest>,
    ) -> Result<Response<pb::ListTaskDefinitionsResponse>, Status> {
        let req = req.into_inner();
        let family = (!req.family.is_empty()).then_some(req.family.as_str());
        let definitions = self
            .core
            .store
            .taskdefs_of(family)?
            .iter()
            .filter(|d| req.include_inactive || d.status == DefinitionStatus::Active)
            .map(convert::task_definition)
            .collect();
        Ok(Response::new(pb::ListTaskDefinitionsResponse {
            definitions,
        }))
    }

    async fn describe(
        &self,
        req: Request<pb::DescribeTaskDefinitionRequest>,
    ) -> Result<Response<pb::TaskDefinition>, Status> {
        let def = resolve_taskdef(
            &self.core,
            "task_definition",
            &req.into_inner().task_definition,
        )?;
        Ok(Response::new(convert::task_definition(&def)))
    }

    async fn deregister(
        &self,
        req: Request<pb::DescribeTaskDefinitionRequest>,
    ) -> Result<Response<pb::TaskDefinition>, Status> {
        let reference = req.into_inner().task_definition;
        if !reference.contains(':') {
            return Err(Status::invalid_argument(
                "task_definition: deregister needs family:revision",
            ));
        }
        let def = resolve_taskdef(&self.core, "task_definition", &reference)?;
        let def = crate::taskdefs::deregister(&self.core, &def)
            .await?
            .ok_or_else(|| Status::not_found(format!("task_definition: no {reference}")))?;
        Ok(Response::new(convert::task_definition(&def)))
    }
}

pub struct TasksApi {
    pub core: Arc<Core>,
}

/// A task by its id or by a unique prefix of it (as `docker` takes container ids).
pub(crate) fn get_task(core: &Core, id: &str) -> Result<Task, Status> {
    if id.is_empty() {
        return Err(Status::invalid_argument("id: missing"));
    }
    if let Some(t) = core.store.task(id)? {
        return Ok(t);
    }
    let ids = core.store.task_ids_with_prefix(id, 4)?;
    match ids.as_slice() {
        [] => Err(Status::not_found(format!("no task {id}"))),
        [one] => core
            .store
            .task(one)?
            .ok_or_else(|| Status::not_found(format!("no task {id}"))),
        more => Err(Status::invalid_argument(format!(
            "id: {id:?} is the start of several task ids ({}{}); give more of it",
            more[..more.len().min(3)].join(", "),
            if more.len() > 3 { ", …" } else { "" }
        ))),
    }
}

#[tonic::async_trait]
impl pb::tasks_server::Tasks for TasksApi {
    async fn run(&self, req: Request<pb::RunTaskRequest>) -> Result<Response<pb::Task>, Status> {
        let role = crate::auth::caller_role(&req);
        let family = match &req.get_ref().source {
            Some(pb::run_task_request::Source::TaskDefinition(r)) => r.split(':').next(),
            _ => None,
        };
        // A task's role names the definitions it may run (ad-hoc tasks: the resource "ad-hoc").
        crate::auth::check_task_resource(&req, "tasks:Run", &task_resource(family))?;
        let req = req.into_inner();
        let (def, spec) = match &req.source {
            Some(pb::run_task_request::Source::TaskDefinition(r)) => {
                let def = resolve_taskdef(&self.core, "task_definition", r)?;
                let spec = def.spec.clone();
                (Some(def), spec)
            }
            Some(pb::run_task_request::Source::AdHoc(input)) => {
                let spec = convert::task_spec_input(input).map_err(invalid)?;
                // A registered privileged definition was approved by an admin; an ad-hoc one
                // needs one now.
                check_privileged(&spec, role)?;
                (None, spec)
            }
            None => {
                return Err(Status::invalid_argument(
                    "source: give a task_definition or an ad_hoc definition",
                ))
            }
        };
        let spec = match &req.overrides {
            Some(o) => validate::apply_overrides(spec, &convert::overrides(o)).map_err(invalid)?,
            None => spec,
        };
        self.core.check_references(&spec)?;
        let group = if req.group.is_empty() {
            def.as_ref()
                .map_or_else(|| "adhoc".to_string(), |d| format!("family:{}", d.family))
        } else {
            req.group
        };
        let task = Task::new(
            ulid::Ulid::new().to_string().to_lowercase(),
            def.as_ref().map(|d| d.reference()),
            group,
            req.started_by,
            spec,
            self.core.clock.now_ms(),
        );
        let task = self.core.create_task(task).await?;
        tracing::info!(task_id = %task.id, "task accepted");
        Ok(Response::new(convert::task(&task)))
    }

    async fn stop(&self, req: Request<pb::StopTaskRequest>) -> Result<Response<pb::Task>, Status> {
        let target = get_task(&self.core, &req.get_ref().id)?;
        crate::auth::check_task_resource(&req, "tasks:Stop", &task_resource(target.family()))?;
        let req = req.into_inner();
        let reason = if req.reason.is_empty() {
            "stopped by user".to_string()
        } else {
            req.reason
        };
        let task = self
            .core
            .stop_task(&target.id, StopCode::UserInitiated, reason)
            .await?;
        Ok(Response::new(convert::task(&task)))
    }

    async fn describe(&self, req: Request<pb::TaskRef>) -> Result<Response<pb::Task>, Status> {
        Ok(Response::new(convert::task(&get_task(
            &self.core,
            &req.into_inner().id,
        )?)))
    }

    async fn put_retention(
        &self,
        req: Request<pb::TaskRetention>,
    ) -> Result<Response<pb::TaskRetention>, Status> {
        let req = req.into_inner();
        let policy = skiff_model::history::TaskRetention {
            scope: skiff_model::history::Scope::parse("scope", &req.scope).map_err(invalid)?,
            keep: (req.keep > 0).then_some(req.keep),
            max_age_secs: (req.max_age_seconds > 0).then_some(req.max_age_seconds),
        };
        skiff_model::history::check(&policy).map_err(invalid)?;
        crate::history::put_policy(&self.core, &policy).await?;
        Ok(Response::new(convert::retention(&policy)))
    }

    async fn list_retention(
        &self,
        _req: Request<pb::ListRetentionRequest>,
    ) -> Result<Response<pb::ListRetentionResponse>, Status> {
        let policies = self.core.store.task_retention.list()?;
        let d = self.core.history_limits;
        Ok(Response::new(pb::ListRetentionResponse {
            policies: policies.iter().map(convert::retention).collect(),
            default: Some(pb::TaskRetention {
                scope: "default".into(),
                keep: d.keep.unwrap_or(0),
                max_age_seconds: d.max_age_ms.map_or(0, |ms| (ms / 1000) as u64),
            }),
        }))
    }

    async fn delete_retention(
        &self,
        req: Request<pb::RetentionRef>,
    ) -> Result<Response<pb::TaskRetention>, Status> {
        let scope = skiff_model::history::Scope::parse("scope", &req.into_inner().scope)
            .map_err(invalid)?;
        let gone = crate::history::delete_policy(&self.core, &scope)
            .await?
            .ok_or_else(|| {
                Status::not_found(format!("scope: no retention policy for {}", scope.key()))
            })?;
        Ok(Response::new(convert::retention(&gone)))
    }

    async fn list(
        &self,
        req: Request<pb::ListTasksRequest>,
    ) -> Result<Response<pb::ListTasksResponse>, Status> {
        let req = req.into_inner();
        let status = match req.status.as_str() {
            "" => None,
            s => Some(TaskStatus::parse(s).ok_or_else(|| {
                Status::invalid_argument(format!(
                    "status: {s:?} is not a task status (PROVISIONING, PENDING, RUNNING, STOPPING, STOPPED)"
                ))
            })?),
        };
        let some = |s: &str| (!s.is_empty()).then(|| s.to_string());
        let group = match (some(&req.group), some(&req.service)) {
            (Some(_), Some(_)) => return Err(Status::invalid_argument(
                "service: give a service or a group, not both (a service's group is service:NAME)",
            )),
            (g, s) => g.or(s.map(|s| crate::model::service_group(&s))),
        };
        let older_than = match req.page_token.as_str() {
            "" => None,
            t => {
                ulid::Ulid::from_string(t).map_err(|_| {
                    Status::invalid_argument(format!(
                        "page_token: {t:?} is not a token from a listing"
                    ))
                })?;
                Some(t.to_lowercase())
            }
        };
        let bound = |field: &str, ms: i64| match ms {
            0 => Ok(None),
            ms if ms < 0 => Err(Status::invalid_argument(format!(
                "{field}: {ms} is before 1970"
            ))),
            ms => Ok(Some(ms)),
        };
        let filter = TaskFilter {
            status,
            family: some(&req.family),
            node: some(&req.node_id),
            group,
            created_from_ms: bound("created_from_ms", req.created_from_ms)?,
            created_before_ms: bound("created_before_ms", req.created_before_ms)?,
            older_than,
        };
        let (tasks, total) = self.core.store.list_tasks(&filter, req.limit as usize)?;
        let next_page_token = match tasks.last() {
            Some(last) if total > tasks.len() => last.id.clone(),
            _ => String::new(),
        };
        let total_at_least =
            req.limit > 0 && total >= (req.limit as usize).saturating_add(crate::store::COUNT_CAP);
        let tasks = tasks.iter().map(convert::task).collect();
        let total = total.min(u32::MAX as usize) as u32;
        Ok(Response::new(pb::ListTasksResponse {
            tasks,
            total,
            next_page_token,
            total_at_least,
        }))
    }

    async fn wait(&self, req: Request<pb::TaskRef>) -> Result<Response<pb::Task>, Status> {
        let id = get_task(&self.core, &req.into_inner().id)?.id;
        let task = wait_stopped(&self.core, &id).await?;
        Ok(Response::new(convert::task(&task)))
    }

    type ExecStream = ApiStream<pb::ExecOutput>;

    async fn exec(
        &self,
        req: Request<tonic::Streaming<pb::ExecInput>>,
    ) -> Result<Response<Self::ExecStream>, Status> {
        let caller = req.extensions().get::<crate::auth::Caller>().cloned();
        let mut inbound = req.into_inner();
        let start = crate::exec_api::first_message(&mut inbound).await?;
        let task = get_task(&self.core, &start.task_id)?;
        let out = crate::exec_api::start(&self.core, caller, start, task, inbound).await?;
        Ok(Response::new(until_stopping(&self.core, out)))
    }

    type LogsStream = ApiStream<pb::LogChunk>;

    async fn logs(
        &self,
        req: Request<pb::TaskLogsRequest>,
    ) -> Result<Response<Self::LogsStream>, Status> {
        let req = req.into_inner();
        let task = get_task(&self.core, &req.id)?;
        if !req.container.is_empty()
            && !task.spec.containers.iter().any(|c| c.name == req.container)
        {
            return Err(Status::invalid_argument(format!(
                "container: task {} has no container {:?}",
                task.id, req.container
            )));
        }
        let node = task.node_id.clone().ok_or_else(|| {
            Status::failed_precondition(format!(
                "task {} has not been placed on a node yet; no logs",
                task.id
            ))
        })?;
        let request_id = self.core.next_id();
        let (route_tx, mut route_rx) = mpsc::channel::<pb::LogData>(64);
        self.core.link.open_log_route(request_id, route_tx);
        let sent = self
            .core
            .link
            .send(
                &node,
                pb::controller_message::Body::Logs(pb::LogRequest {
                    request_id,
                    task_id: task.id.clone(),
                    container: req.container.clone(),
                    follow: req.follow,
                    since_ms: req.since_ms,
                    tail: req.tail,
                    timestamps: req.timestamps,
                }),
            )
            .await;
        if let Err(e) = sent {
            self.core.link.close_log_route(request_id);
            return Err(Status::unavailable(format!(
                "logs of task {} live on node {node}: {e}",
                task.id
            )));
        }
        // The agent attaches its stream with an empty first message; a node that cannot answer
        // (it just went away) must not leave the caller hanging.
        let attached =
            tokio::time::timeout(std::time::Duration::from_secs(10), route_rx.recv()).await;
        if !matches!(attached, Ok(Some(_))) {
            self.core.link.close_log_route(request_id);
            return Err(Status::unavailable(format!(
                "node {node} did not answer the log request for task {}",
                task.id
            )));
        }
        let (tx, rx) = mpsc::channel(64);
        let core = self.core.clone();
        let (follow, task_id) = (req.follow, task.id.clone());
        tokio::spawn(async move {
            let mut finished = false;
            while let Some(d) = route_rx.recv().await {
                if !d.error.is_empty() {
                    let _ = tx.send(Err(Status::not_found(d.error))).await;
                    finished = true;
                    break;
                }
                if !d.data.is_empty() {
                    let chunk = pb::LogChunk {
                        container: d.container,
                        stream: d.stream,
                        data: d.data,
                        time: d.time,
                    };
                    if tx.send(Ok(chunk)).await.is_err() {
                        break;
                    }
                }
                if d.eof {
                    finished = true;
                    if follow {
                        // The log ends when the container does; the task is STOPPED a report
                        // later. A follower returns after that, so `logs -f; describe` in a
                        // script sees the final state.
                        let _ = tokio::time::timeout(
                            std::time::Duration::from_secs(10),
                            wait_stopped(&core, &task_id),
                        )
                        .await;
                    }
                    break;
                }
            }
            if !finished && !tx.is_closed() {
                let _ = tx
                    .send(Err(Status::unavailable(format!(
                        "the log stream from node {node} broke; retry"
                    ))))
                    .await;
            }
            core.link.close_log_route(request_id);
            let cancel = pb::controller_message::Body::CancelLogs(pb::LogCancel { request_id });
            let _ = core.link.send(&node, cancel).await;
        });
        Ok(Response::new(until_stopping(
            &self.core,
            ReceiverStream::new(rx),
        )))
    }
}

pub struct NodesApi {
    pub core: Arc<Core>,
}

#[tonic::async_trait]
impl pb::nodes_server::Nodes for NodesApi {
    async fn set_state(
        &self,
        req: Request<pb::SetNodeStateRequest>,
    ) -> Result<Response<pb::SetNodeStateResponse>, Status> {
        let r = req.get_ref();
        let state = match r.state.as_str() {
            "READY" => NodeState::Ready,
            "CORDONED" => NodeState::Cordoned,
            "DRAINING" => NodeState::Draining,
            other => {
                return Err(Status::invalid_argument(format!(
                    "state: {other:?} is not READY, CORDONED or DRAINING"
                )))
            }
        };
        if r.node_ids.is_empty() {
            return Err(Status::invalid_argument("node_ids: name at least one node"));
        }
        let before = crate::nodes::set_state(&self.core, &r.node_ids, state)
            .await?
            .map_err(|missing| Status::not_found(format!("node_ids: no node {missing:?}")))?;
        Ok(Response::new(pb::SetNodeStateResponse {
            nodes: before
                .into_iter()
                .map(|(node, was)| pb::NodeStateChange {
                    node_id: node,
                    state: state.as_str().into(),
                    previous_state: was.as_str().into(),
                })
                .collect(),
        }))
    }

    async fn revoke(
        &self,
        req: Request<pb::RevokeNodeRequest>,
    ) -> Result<Response<pb::RevokeNodeResponse>, Status> {
        let node = &req.get_ref().node_id;
        let revoked = crate::nodes::revoke_certificates(&self.core, node)
            .await?
            .ok_or_else(|| Status::not_found(format!("node_id: no node {node:?}")))?;
        Ok(Response::new(pb::RevokeNodeResponse {
            certificates_revoked: revoked,
        }))
    }

    async fn list(
        &self,
        _: Request<pb::ListNodesRequest>,
    ) -> Result<Response<pb::ListNodesResponse>, Status> {
        let reserved = self.core.store.node_reservations();
        let loads = node_loads(&self.core, reserved.clone())?;
        let nodes = self
            .core
            .store
            .nodes
            .list()?
            .into_iter()
            .map(|n| {
                let load = loads.iter().find(|l| l.id == n.id);
                let host_ports = self
                    .core
                    .host_ports(&n.id)
                    .iter()
                    .map(|(p, proto)| format!("{p}/{}", proto.as_str()))
                    .collect();
                let connected = load.is_some_and(|l| l.connected);
                // The last message heard this run; before any, when it last registered.
                let last_heartbeat_ms = self.core.last_heard_ms(&n.id).unwrap_or(n.last_seen_ms);
                pb::Node {
                    running_tasks: reserved.get(&n.id).map_or(0, |r| r.tasks),
                    cpu_used: load.map_or(0.0, |l| l.cpu_used),
                    memory_used_mib: load.map_or(0, |l| l.memory_used_mib),
                    state: n.state.as_str().to_string(),
                    labels: n.labels.into_iter().collect(),
                    id: n.id,
                    cpu: n.cpu,
                    memory_mib: n.memory_mib,
                    connected,
                    last_heartbeat_ms,
                    host_ports,
                    version: n.version,
                }
            })
            .collect();
        Ok(Response::new(pb::ListNodesResponse { nodes }))
    }
}

pub struct EventsApi {
    pub core: Arc<Core>,
    /// The enabled rules, compiled, for telling a caller which rules its events match;
    /// rebuilt when the rules change (the core's rules version).
    pub rules: std::sync::Mutex<Option<(u64, Arc<skiff_model::ruleset::RuleSet>)>>,
}

impl EventsApi {
    pub fn new(core: Arc<Core>) -> EventsApi {
        EventsApi {
            core,
            rules: std::sync::Mutex::new(None),
        }
    }

    fn rule_set(&self) -> Result<Arc<skiff_model::ruleset::RuleSet>, Status> {
        let version = self.core.rules_version();
        if let Some((v, set)) = self.rules.lock().unwrap().as_ref() {
            if *v == version {
                return Ok(set.clone());
            }
        }
        // Patterns were checked when put; the dispatcher reports any that no longer compile.
        let set = Arc::new(skiff_model::ruleset::RuleSet::new(self.core.store.rules.list()?).0);
        *self.rules.lock().unwrap() = Some((version, set.clone()));
        Ok(set)
    }
}

#[tonic::async_trait]
impl pb::events_server::Events for EventsApi {
    type WatchStream = ApiStream<pb::Event>;

    async fn watch(
        &self,
        req: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let req = req.into_inner();
        let mut cursor = match req.after.as_str() {
            "" => None,
            id => {
                ulid::Ulid::from_string(id).map_err(|_| {
                    Status::invalid_argument(format!("after: {id:?} is not an event id"))
                })?;
                Some(id.to_string())
            }
        };
        let consumer = match req.consumer.as_str() {
            "" => None,
            name => {
                validate::check_name("consumer", name).map_err(invalid)?;
                self.core.store.event_consumers.get(name)?
            }
        };
        // A consumer known already resumes after its cursor (unless told where).
        let resumes = cursor.is_none() && consumer.is_some();
        if let (true, Some(c)) = (resumes, &consumer) {
            cursor = (!c.cursor.is_empty()).then(|| c.cursor.clone());
        }
        match req.tail.filter(|_| !resumes) {
            // Only what comes next: start after the newest event there is.
            Some(0) if cursor.is_none() => {
                cursor = self.core.store.last_events(1)?.pop().map(|e| e.id);
            }
            Some(n) if cursor.is_none() => {
                let last = self.core.store.last_events(n as usize + 1)?;
                if last.len() > n as usize {
                    cursor = Some(last[0].id.clone());
                }
            }
            _ => {}
        }
        if let (false, name) = (resumes, req.consumer.as_str()) {
            if !name.is_empty() {
                // A new consumer (or one told where to start): kept from here on, so the
                // log's retention holds what it has not read.
                crate::history::place_consumer(&self.core, name, cursor.clone()).await?;
            }
        }
        let core = self.core.clone();
        let (tx, rx) = mpsc::channel(256);
        tokio::spawn(async move {
            // Subscribe before the first read, so no append between read and wait is missed.
            let mut changes = core.subscribe();
            const BATCH: usize = 512;
            loop {
                let batch = match core.store.events_after(cursor.as_deref(), BATCH) {
                    Ok(b) => b,
                    Err(e) => {
                        let _ = tx.send(Err(Status::from(e))).await;
                        return;
                    }
                };
                let full = batch.len() == BATCH;
                for e in batch {
                    cursor = Some(e.id.clone());
                    if tx.send(Ok(convert::event(&e))).await.is_err() {
                        return;
                    }
                }
                if full {
                    continue;
                }
                if !req.follow {
                    return;
                }
                tokio::select! {
                    r = changes.changed() => if r.is_err() { return },
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(until_stopping(
            &self.core,
            ReceiverStream::new(rx),
        )))
    }

    async fn replay(
        &self,
        req: Request<pb::ReplayEventsRequest>,
    ) -> Result<Response<pb::ReplayEventsResponse>, Status> {
        let r = req.into_inner();
        if r.from_ms <= 0 || r.to_ms <= r.from_ms {
            return Err(Status::invalid_argument(format!(
                "from, to: give a range with from before to (from_ms {}, to_ms {})",
                r.from_ms, r.to_ms
            )));
        }
        let opt = |s: String| (!s.is_empty()).then_some(s);
        let done =
            crate::events::replay(&self.core, r.from_ms, r.to_ms, opt(r.rule), opt(r.name)).await?;
        Ok(Response::new(pb::ReplayEventsResponse {
            name: done.name,
            replayed: done.count,
            first_event_id: done.first.unwrap_or_default(),
            last_event_id: done.last.unwrap_or_default(),
        }))
    }

    async fn put(
        &self,
        req: Request<pb::PutEventsRequest>,
    ) -> Result<Response<pb::PutEventsResponse>, Status> {
        let entries = &req.get_ref().entries;
        if entries.is_empty() || entries.len() > MAX_PUT_ENTRIES {
            return Err(Status::invalid_argument(format!(
                "entries: give 1 to {MAX_PUT_ENTRIES} entries, not {}",
                entries.len()
            )));
        }
        let mut results: Vec<pb::PutEventsResult> = Vec::with_capacity(entries.len());
        let mut accepted: Vec<(usize, Event)> = Vec::new();
        for (i, e) in entries.iter().enumerate() {
            let resource = format!("source/{}", e.source);
            let checked = check_entry(e, self.core.clock.now_ms()).and_then(|ev| {
                crate::auth::check_task_resource(&req, "events:Put", &resource)
                    .map(|_| ev)
                    .map_err(|s| ("AccessDeniedException", s.message().to_string()))
            });
            match checked {
                Ok(ev) => {
                    accepted.push((i, ev));
                    results.push(pb::PutEventsResult::default());
                }
                Err((code, message)) => results.push(pb::PutEventsResult {
                    event_id: String::new(),
                    error_code: code.to_string(),
                    error_message: format!("entries[{i}]: {message}"),
                    matched_rules: vec![],
                }),
            }
        }
        if !accepted.is_empty() {
            let events = accepted.iter().map(|(_, ev)| ev.clone()).collect();
            let stored = crate::events::put(&self.core, events).await?;
            // Which rules these events match now; the dispatcher delivers to them (the same
            // patterns, unless a rule changes in between).
            let rules = self.rule_set()?;
            for ((i, _), ev) in accepted.iter().zip(stored) {
                results[*i].matched_rules = rules
                    .matching(&ev.envelope())
                    .into_iter()
                    .map(|r| r.name.clone())
                    .collect();
                results[*i].event_id = ev.id;
            }
        }
        Ok(Response::new(pb::PutEventsResponse {
            failed_entry_count: results.iter().filter(|r| !r.error_code.is_empty()).count() as u32,
            entries: results,
        }))
    }

    async fn ack(
        &self,
        req: Request<pb::AckEventsRequest>,
    ) -> Result<Response<pb::EventConsumer>, Status> {
        let req = req.into_inner();
        let at = ulid::Ulid::from_string(&req.event_id).map_err(|_| {
            Status::invalid_argument(format!("event_id: {:?} is not an event id", req.event_id))
        })?;
        let c = crate::history::ack(&self.core, &req.consumer, at)
            .await?
            .ok_or_else(|| {
                Status::not_found(format!(
                    "consumer: no consumer {:?} (a watch with --consumer makes one)",
                    req.consumer
                ))
            })?;
        Ok(Response::new(consumer(&self.core, &c)?))
    }

    async fn list_consumers(
        &self,
        _req: Request<pb::ListConsumersRequest>,
    ) -> Result<Response<pb::ListConsumersResponse>, Status> {
        let consumers = self
            .core
            .store
            .event_consumers
            .list()?
            .iter()
            .map(|c| consumer(&self.core, c))
            .collect::<Result<_, _>>()?;
        Ok(Response::new(pb::ListConsumersResponse { consumers }))
    }

    async fn delete_consumer(
        &self,
        req: Request<pb::ConsumerRef>,
    ) -> Result<Response<pb::EventConsumer>, Status> {
        let name = req.into_inner().name;
        let gone = crate::history::delete_consumer(&self.core, &name).await?;
        let gone = gone.ok_or_else(|| Status::not_found(format!("name: no consumer {name:?}")))?;
        Ok(Response::new(consumer(&self.core, &gone)?))
    }

    async fn list_dead_letters(
        &self,
        req: Request<pb::ListDeadLettersRequest>,
    ) -> Result<Response<pb::ListDeadLettersResponse>, Status> {
        let r = req.into_inner();
        let mut out = Vec::new();
        for d in self.core.store.dead_letters()?.into_iter().rev() {
            if !r.rule.is_empty() && d.rule != r.rule {
                continue;
            }
            let event_json = self
                .core
                .store
                .event(&d.event_id)?
                .map(|e| e.envelope().to_string())
                .unwrap_or_default();
            out.push(pb::DeadLetter {
                rule: d.rule,
                target: d.target,
                event_id: d.event_id,
                attempts: d.attempts,
                last_error: d.last_error,
                first_attempt_ms: d.first_attempt_ms,
                dead_ms: d.dead_ms,
                event_json,
            });
            if r.limit > 0 && out.len() >= r.limit as usize {
                break;
            }
        }
        Ok(Response::new(pb::ListDeadLettersResponse {
            dead_letters: out,
        }))
    }
}

/// Most entries in one PutEvents call.
pub const MAX_PUT_ENTRIES: usize = 100;
/// Largest detail of one entry (EventBridge's event size limit).
pub const MAX_DETAIL_BYTES: usize = 256 * 1024;

/// One PutEvents entry as an event (its id assigned when stored), or (error code, message).
fn check_entry(e: &pb::PutEventsEntry, now_ms: i64) -> Result<Event, (&'static str, String)> {
    let bad = |m: String| ("InvalidArgument", m);
    if e.source.is_empty() || e.source.len() > 256 {
        return Err(bad("source: 1 to 256 characters".into()));
    }
    if e.source.starts_with("skiff.") || e.source == "skiff" {
        return Err(bad(format!(
            "source: {:?}: skiff.* is reserved for skiff's own events",
            e.source
        )));
    }
    if e.detail_type.is_empty() || e.detail_type.len() > 128 {
        return Err(bad("detail_type: 1 to 128 characters".into()));
    }
    if e.detail_json.len() > MAX_DETAIL_BYTES {
        return Err(bad(format!(
            "detail_json: {} bytes is more than {MAX_DETAIL_BYTES}",
            e.detail_json.len()
        )));
    }
    let detail: serde_json::Value = if e.detail_json.is_empty() {
        serde_json::json!({})
    } else {
        serde_json::from_str(&e.detail_json).map_err(|err| {
            (
                "MalformedDetail",
                format!("detail_json: not valid JSON: {err}"),
            )
        })?
    };
    if !detail.is_object() {
        return Err((
            "MalformedDetail",
            "detail_json: must be a JSON object".into(),
        ));
    }
    Ok(Event {
        id: String::new(),
        source: e.source.clone(),
        detail_type: e.detail_type.clone(),
        replay: None,
        time_ms: if e.time_ms > 0 { e.time_ms } else { now_ms },
        resources: e.resources.clone(),
        detail,
    })
}

/// A consumer as the API shows it, with how many events wait after its cursor.
fn consumer(
    core: &Core,
    c: &skiff_model::history::EventConsumer,
) -> Result<pb::EventConsumer, Status> {
    let after = (!c.cursor.is_empty()).then_some(c.cursor.as_str());
    Ok(pb::EventConsumer {
        name: c.name.clone(),
        cursor: c.cursor.clone(),
        acked_at_ms: c.acked_at_ms,
        behind: core.store.count_events_after(after, 1_000_000)? as u64,
    })
}
