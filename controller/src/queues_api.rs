//! The Queues service: decodes and checks each request (every error names its field), makes
//! one call to the queue operations (`queues.rs`), and encodes the answer. A task's role
//! grants `queues:<Method>` on `queue/<name>`.

use std::sync::Arc;
use std::time::Duration;

use skiff_proto::v1 as pb;
use tonic::{Request, Response, Status};

use crate::core::Core;
use crate::model::{Queue, QueueMessage, RedrivePolicy};
use crate::queues::{self, Outgoing};
use skiff_model::queue::Counts;
use skiff_model::validate::{self, InvalidField, MAX_BATCH};

/// SQS's defaults for what a queue does not set.
const DEFAULT_VISIBILITY_SECS: u32 = 30;
const DEFAULT_RETENTION_SECS: u32 = 4 * 24 * 3600;

fn invalid(e: InvalidField) -> Status {
    Status::invalid_argument(e.to_string())
}

fn from_pb(q: &pb::Queue) -> Result<Queue, InvalidField> {
    let queue = Queue {
        name: q.name.clone(),
        visibility_timeout_secs: q
            .visibility_timeout_seconds
            .unwrap_or(DEFAULT_VISIBILITY_SECS),
        delay_secs: q.delay_seconds.unwrap_or(0),
        retention_secs: q.retention_seconds.unwrap_or(DEFAULT_RETENTION_SECS),
        max_message_bytes: q.max_message_bytes.unwrap_or(validate::MAX_MESSAGE_BYTES),
        receive_wait_secs: q.receive_wait_seconds.unwrap_or(0),
        redrive: q.redrive.as_ref().map(|r| RedrivePolicy {
            dead_letter_queue: r.dead_letter_queue.clone(),
            max_receive_count: r.max_receive_count,
        }),
        created_ms: 0,
        updated_ms: 0,
        fifo: q.fifo,
        content_based_deduplication: q.content_based_deduplication,
    };
    validate::queue(&queue)?;
    Ok(queue)
}

pub fn to_pb(q: &Queue) -> pb::Queue {
    pb::Queue {
        name: q.name.clone(),
        visibility_timeout_seconds: Some(q.visibility_timeout_secs),
        delay_seconds: Some(q.delay_secs),
        retention_seconds: Some(q.retention_secs),
        max_message_bytes: Some(q.max_message_bytes),
        receive_wait_seconds: Some(q.receive_wait_secs),
        redrive: q.redrive.as_ref().map(|r| pb::QueueRedrivePolicy {
            dead_letter_queue: r.dead_letter_queue.clone(),
            max_receive_count: r.max_receive_count,
        }),
        created_ms: q.created_ms,
        updated_ms: q.updated_ms,
        fifo: q.fifo,
        content_based_deduplication: q.content_based_deduplication,
    }
}

fn status_pb(q: &Queue, c: Counts) -> pb::QueueStatus {
    pb::QueueStatus {
        queue: Some(to_pb(q)),
        visible: c.visible,
        in_flight: c.in_flight,
        delayed: c.delayed,
        oldest_sent_ms: c.oldest_sent_ms,
    }
}

fn received_pb((m, handle): (QueueMessage, String)) -> pb::ReceivedMessage {
    pb::ReceivedMessage {
        message_id: m.id,
        receipt_handle: handle,
        body: m.body,
        attributes: m.attributes.into_iter().collect(),
        receive_count: m.receive_count,
        sent_ms: m.sent_ms,
        first_received_ms: m.first_received_ms,
        message_group_id: m.group,
        message_deduplication_id: m.dedup_id,
    }
}

fn batch(field: &str, n: usize) -> Result<(), Status> {
    if n == 0 || n > MAX_BATCH {
        return Err(Status::invalid_argument(format!(
            "{field}: {n} entries; give 1 to {MAX_BATCH}"
        )));
    }
    Ok(())
}

pub struct QueuesApi {
    pub core: Arc<Core>,
}

impl QueuesApi {
    /// The queue a message operation names, after the caller's role allows `action` on it.
    fn queue<T>(&self, req: &Request<T>, action: &str, name: &str) -> Result<Queue, Status> {
        crate::auth::check_task_resource(req, action, &format!("queue/{name}"))?;
        validate::queue_name("queue", name).map_err(invalid)?;
        Ok(queues::get(&self.core, name)?)
    }
}

#[tonic::async_trait]
impl pb::queues_server::Queues for QueuesApi {
    async fn put(&self, req: Request<pb::Queue>) -> Result<Response<pb::Queue>, Status> {
        let q = from_pb(req.get_ref()).map_err(invalid)?;
        if crate::auth::dry_run(&req) {
            return Ok(Response::new(to_pb(&q)));
        }
        let stored = queues::put(&self.core, q).await?;
        Ok(Response::new(to_pb(&stored)))
    }

    async fn describe(
        &self,
        req: Request<pb::QueueRef>,
    ) -> Result<Response<pb::QueueStatus>, Status> {
        let name = &req.get_ref().name;
        crate::auth::check_task_resource(&req, "queues:Describe", &format!("queue/{name}"))?;
        let (q, c) = queues::describe(&self.core, name)?;
        Ok(Response::new(status_pb(&q, c)))
    }

    async fn list(
        &self,
        _: Request<pb::ListQueuesRequest>,
    ) -> Result<Response<pb::ListQueuesResponse>, Status> {
        let mut out = Vec::new();
        for q in self.core.store.queues.list()? {
            let (q, c) = queues::describe(&self.core, &q.name)?;
            out.push(status_pb(&q, c));
        }
        Ok(Response::new(pb::ListQueuesResponse { queues: out }))
    }

    async fn delete(&self, req: Request<pb::QueueRef>) -> Result<Response<pb::Queue>, Status> {
        let name = &req.get_ref().name;
        match queues::delete(&self.core, name).await? {
            Some(q) => Ok(Response::new(to_pb(&q))),
            None => Err(Status::not_found(format!("name: no queue {name:?}"))),
        }
    }

    async fn purge(
        &self,
        req: Request<pb::QueueRef>,
    ) -> Result<Response<pb::PurgeQueueResponse>, Status> {
        let purged = queues::purge(&self.core, &req.get_ref().name).await?;
        Ok(Response::new(pb::PurgeQueueResponse { purged }))
    }

    async fn send(
        &self,
        req: Request<pb::SendMessagesRequest>,
    ) -> Result<Response<pb::SendMessagesResponse>, Status> {
        let q = self.queue(&req, "queues:Send", &req.get_ref().queue)?;
        let r = req.into_inner();
        batch("entries", r.entries.len())?;
        let mut outgoing = Vec::new();
        for (i, e) in r.entries.iter().enumerate() {
            let attributes = e.attributes.clone().into_iter().collect();
            validate::message(
                &format!("entries[{i}]"),
                &q,
                &e.body,
                e.delay_seconds,
                &attributes,
            )
            .map_err(invalid)?;
            validate::fifo_fields(
                &format!("entries[{i}]"),
                &q,
                &e.message_group_id,
                &e.message_deduplication_id,
                e.delay_seconds,
            )
            .map_err(invalid)?;
            outgoing.push(Outgoing {
                body: e.body.clone(),
                delay_secs: e.delay_seconds,
                attributes,
                group: e.message_group_id.clone(),
                dedup_id: e.message_deduplication_id.clone(),
            });
        }
        let sent = queues::send(&self.core, &q, outgoing).await?;
        let results = r
            .entries
            .iter()
            .zip(sent)
            .map(|(e, m)| pb::SendResult {
                id: e.id.clone(),
                message_id: m.id,
                error: String::new(),
            })
            .collect();
        Ok(Response::new(pb::SendMessagesResponse { results }))
    }

    async fn receive(
        &self,
        req: Request<pb::ReceiveMessagesRequest>,
    ) -> Result<Response<pb::ReceiveMessagesResponse>, Status> {
        let q = self.queue(&req, "queues:Receive", &req.get_ref().queue)?;
        let r = req.into_inner();
        let max = if r.max_messages == 0 {
            1
        } else {
            r.max_messages as usize
        };
        if max > MAX_BATCH {
            return Err(Status::invalid_argument(format!(
                "max_messages: {max}; give 1 to {MAX_BATCH}"
            )));
        }
        let wait = r.wait_seconds.unwrap_or(q.receive_wait_secs);
        if wait > validate::MAX_RECEIVE_WAIT_SECS {
            return Err(Status::invalid_argument(format!(
                "wait_seconds: {wait} s is more than the maximum {} s",
                validate::MAX_RECEIVE_WAIT_SECS
            )));
        }
        let visibility = r
            .visibility_timeout_seconds
            .unwrap_or(q.visibility_timeout_secs);
        if visibility > validate::MAX_VISIBILITY_SECS {
            return Err(Status::invalid_argument(format!(
                "visibility_timeout_seconds: {visibility} s is more than the maximum {} s",
                validate::MAX_VISIBILITY_SECS
            )));
        }
        let got = queues::receive(
            &self.core,
            &q,
            max,
            Duration::from_secs(u64::from(wait)),
            visibility,
        )
        .await?;
        Ok(Response::new(pb::ReceiveMessagesResponse {
            messages: got.into_iter().map(received_pb).collect(),
        }))
    }

    async fn delete_messages(
        &self,
        req: Request<pb::DeleteMessagesRequest>,
    ) -> Result<Response<pb::QueueEntryResults>, Status> {
        let q = self.queue(&req, "queues:DeleteMessages", &req.get_ref().queue)?;
        let r = req.into_inner();
        batch("receipt_handles", r.receipt_handles.len())?;
        let outcomes = queues::delete_messages(&self.core, &q, &r.receipt_handles).await?;
        Ok(Response::new(results(&r.receipt_handles, outcomes)))
    }

    async fn change_visibility(
        &self,
        req: Request<pb::ChangeVisibilityRequest>,
    ) -> Result<Response<pb::QueueEntryResults>, Status> {
        let q = self.queue(&req, "queues:ChangeVisibility", &req.get_ref().queue)?;
        let r = req.into_inner();
        batch("changes", r.changes.len())?;
        let mut changes = Vec::new();
        for (i, c) in r.changes.iter().enumerate() {
            if c.visibility_timeout_seconds > validate::MAX_VISIBILITY_SECS {
                return Err(Status::invalid_argument(format!(
                    "changes[{i}].visibility_timeout_seconds: {} s is more than the maximum {} s",
                    c.visibility_timeout_seconds,
                    validate::MAX_VISIBILITY_SECS
                )));
            }
            changes.push((c.receipt_handle.clone(), c.visibility_timeout_seconds));
        }
        let outcomes = queues::change_visibility(&self.core, &q, &changes).await?;
        let handles: Vec<String> = changes.into_iter().map(|(h, _)| h).collect();
        Ok(Response::new(results(&handles, outcomes)))
    }

    async fn redrive(
        &self,
        req: Request<pb::QueueRedriveRequest>,
    ) -> Result<Response<pb::QueueRedriveResponse>, Status> {
        let r = req.into_inner();
        let to = (!r.to.is_empty()).then_some(r.to.as_str());
        let (moved, to) = queues::redrive(&self.core, &r.dead_letter_queue, to).await?;
        Ok(Response::new(pb::QueueRedriveResponse { moved, to }))
    }
}

fn results(
    handles: &[String],
    outcomes: Vec<Result<(), skiff_model::queue::StaleReceipt>>,
) -> pb::QueueEntryResults {
    pb::QueueEntryResults {
        results: handles
            .iter()
            .zip(outcomes)
            .map(|(h, o)| pb::QueueEntryResult {
                receipt_handle: h.clone(),
                error: o.err().map(|e| e.to_string()).unwrap_or_default(),
            })
            .collect(),
    }
}
