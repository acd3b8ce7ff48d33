//! `Tasks.Exec` (`skiff tasks exec`): a command in a running task's container. The caller's
//! stream is relayed to the task's node: the controller records a "Task Exec" event, sends an
//! ExecRequest on the node's session, and the agent answers on an `AgentChannel.Exec` stream
//! of its own, which `attach` splices to the caller's — output up, input down — until the
//! command's exit comes back. A caller that goes away ends the agent's stream, which kills the
//! command.

use std::time::Duration;

use serde_json::json;
use skiff_model::lifecycle::TASK_SOURCE;
use skiff_proto::v1 as pb;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;
use tonic::{Status, Streaming};

use crate::agent_link::ExecRoute;
use crate::auth::Caller;
use crate::core::Core;
use crate::model::{Event, Task, TaskStatus};

/// What the caller of an exec reads.
pub type OutputStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::ExecOutput, Status>> + Send>>;

/// How long a node may take to attach its stream before the caller is told it did not answer.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(10);

/// The `start` an exec's first message must be.
pub async fn first_message(
    inbound: &mut Streaming<pb::ExecInput>,
) -> Result<pb::ExecStart, Status> {
    match inbound.message().await? {
        Some(pb::ExecInput {
            body: Some(pb::exec_input::Body::Start(s)),
        }) => Ok(s),
        _ => Err(Status::invalid_argument(
            "start: the first message of an exec must be `start`",
        )),
    }
}

/// Starts an exec of `task` for the caller of `Tasks.Exec`; returns the stream of its output.
pub async fn start(
    core: &Core,
    caller: Option<Caller>,
    start: pb::ExecStart,
    task: Task,
    mut inbound: Streaming<pb::ExecInput>,
) -> Result<OutputStream, Status> {
    if caller.as_ref().is_some_and(|c| c.task.is_some()) {
        return Err(Status::permission_denied(
            "tasks:Exec: a task's token may not exec into tasks; use an operator or admin token",
        ));
    }
    if start.command.is_empty() || start.command[0].is_empty() {
        return Err(Status::invalid_argument("command: empty; name what to run"));
    }
    let container = match (start.container.as_str(), task.spec.containers.as_slice()) {
        ("", [only]) => only.name.clone(),
        ("", many) => {
            return Err(Status::invalid_argument(format!(
                "container: task {} has {} containers ({}); name one with -c",
                task.id,
                many.len(),
                many.iter()
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )))
        }
        (name, all) if all.iter().any(|c| c.name == name) => name.to_string(),
        (name, all) => {
            return Err(Status::invalid_argument(format!(
                "container: task {} has no container {name:?} (it has {})",
                task.id,
                all.iter()
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )))
        }
    };
    if task.status != TaskStatus::Running {
        return Err(Status::failed_precondition(format!(
            "task {} is {}, not RUNNING: there is nothing to exec into",
            task.id,
            task.status.as_str()
        )));
    }
    let node = task
        .node_id
        .clone()
        .ok_or_else(|| Status::failed_precondition(format!("task {} has no node", task.id)))?;
    // Every exec is on the bus before it runs (who, where, what).
    let event = Event {
        id: String::new(),
        source: TASK_SOURCE.to_string(),
        detail_type: "Task Exec".to_string(),
        replay: None,
        time_ms: core.clock.now_ms(),
        resources: vec![format!("task/{}", task.id)],
        detail: json!({
            "taskId": task.id,
            "group": task.group,
            "node": node,
            "container": container,
            "command": start.command,
            "tty": start.tty,
            "tokenId": caller.as_ref().map(|c| c.token_id.clone()).unwrap_or_default(),
            "role": caller.as_ref().map(|c| c.role.as_str()).unwrap_or("admin"),
        }),
    };
    crate::events::put(core, vec![event]).await?;

    let request_id = core.link.next_id();
    let (to_caller, out_rx) = mpsc::channel(64);
    let (in_tx, from_caller) = mpsc::channel(64);
    let (attached_tx, attached_rx) = oneshot::channel();
    core.link.open_exec_route(
        request_id,
        ExecRoute {
            node_id: node.clone(),
            to_caller: to_caller.clone(),
            from_caller,
            attached: attached_tx,
        },
    );
    // The caller's input, until it goes away (then `in_tx` drops and the node's stream ends).
    tokio::spawn(async move {
        while let Ok(Some(input)) = inbound.message().await {
            if in_tx.send(input).await.is_err() {
                break;
            }
        }
    });
    let sent = core
        .link
        .send(
            &node,
            pb::controller_message::Body::Exec(pb::ExecRequest {
                request_id,
                task_id: task.id.clone(),
                container,
                command: start.command,
                tty: start.tty,
                stdin: start.stdin,
                size: start.size,
            }),
        )
        .await;
    if let Err(e) = sent {
        core.link.take_exec_route(request_id);
        return Err(Status::unavailable(format!(
            "task {} runs on node {node}: {e}",
            task.id
        )));
    }
    if !matches!(
        tokio::time::timeout(ATTACH_TIMEOUT, attached_rx).await,
        Ok(Ok(()))
    ) {
        core.link.take_exec_route(request_id);
        return Err(Status::unavailable(format!(
            "node {node} did not answer the exec request for task {}",
            task.id
        )));
    }
    Ok(Box::pin(ReceiverStream::new(out_rx).map(
        |r: Result<pb::ExecOutput, String>| r.map_err(Status::unavailable),
    )))
}

/// Joins a node's exec stream (whose first message names the request) to its caller: returns
/// the caller's input for the node, and forwards the node's output to the caller.
pub async fn attach(
    core: &Core,
    node_id: Option<&str>,
    mut from_node: Streaming<pb::ExecOutput>,
) -> Result<ReceiverStream<pb::ExecInput>, Status> {
    let first = from_node
        .message()
        .await?
        .ok_or_else(|| Status::invalid_argument("the exec stream named no request"))?;
    let route = core
        .link
        .take_exec_route(first.request_id)
        .ok_or_else(|| Status::not_found(format!("no exec request {}", first.request_id)))?;
    if node_id.is_some_and(|n| n != route.node_id) {
        return Err(Status::permission_denied(
            "this exec request was sent to another node",
        ));
    }
    let _ = route.attached.send(());
    let to_caller = route.to_caller;
    tokio::spawn(async move {
        loop {
            match from_node.message().await {
                Ok(Some(out)) => {
                    let done = out.exit.is_some();
                    if to_caller.send(Ok(out)).await.is_err() || done {
                        break;
                    }
                }
                Ok(None) | Err(_) => {
                    let _ = to_caller
                        .send(Err(
                            "the node's exec stream ended before the command did (the agent went away)"
                                .to_string(),
                        ))
                        .await;
                    break;
                }
            }
        }
    });
    Ok(ReceiverStream::new(route.from_caller))
}
