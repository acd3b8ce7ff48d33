//! The queues over HTTP, shaped like SQS's JSON protocol (`POST /` with `X-Amz-Target:
//! AmazonSQS.<Action>` and the action's JSON fields, answers and errors as SQS gives them),
//! so a worker in any language — or `wget` in a busybox container — can use a queue with an
//! API token or its SKIFF_TASK_TOKEN (`Authorization: Bearer …`). A task's role grants
//! `queues:<Method>` on `queue/<name>`, as over gRPC. Decodes, checks, makes one call to the
//! queue operations (`queues.rs`), encodes.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use md5::{Digest, Md5};
use serde_json::{json, Value};

use crate::auth::Role;
use crate::core::{Core, CoreError};
use crate::model::{Queue, QueueMessage};
use crate::queues::{self, Outgoing};
use skiff_model::validate::{self, MAX_BATCH};

/// An SQS error: its HTTP status, its `__type` (what SDKs map to exceptions) and message.
struct SqsError(StatusCode, &'static str, String);

impl IntoResponse for SqsError {
    fn into_response(self) -> Response {
        let body = json!({"__type": format!("com.amazonaws.sqs#{}", self.1), "message": self.2});
        (
            self.0,
            [("content-type", "application/x-amz-json-1.0")],
            Json(body),
        )
            .into_response()
    }
}

fn invalid(message: impl Into<String>) -> SqsError {
    SqsError(
        StatusCode::BAD_REQUEST,
        "InvalidParameterValue",
        message.into(),
    )
}

impl From<CoreError> for SqsError {
    fn from(e: CoreError) -> SqsError {
        match e {
            CoreError::NoSuchQueue(q) => SqsError(
                StatusCode::BAD_REQUEST,
                "QueueDoesNotExist",
                format!("no queue {q:?}"),
            ),
            CoreError::BadReference(m) => invalid(m),
            other => SqsError(
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalError",
                other.to_string(),
            ),
        }
    }
}

fn md5_hex(s: &str) -> String {
    hex::encode(Md5::digest(s.as_bytes()))
}

/// The skiff action an SQS action is, for the role check.
fn action_of(target: &str) -> Option<&'static str> {
    Some(match target {
        "SendMessage" | "SendMessageBatch" => "queues:Send",
        "ReceiveMessage" => "queues:Receive",
        "DeleteMessage" | "DeleteMessageBatch" => "queues:DeleteMessages",
        "ChangeMessageVisibility" | "ChangeMessageVisibilityBatch" => "queues:ChangeVisibility",
        "GetQueueUrl" | "GetQueueAttributes" => "queues:Describe",
        "CreateQueue" => "queues:Put",
        "DeleteQueue" => "queues:Delete",
        "PurgeQueue" => "queues:Purge",
        "ListQueues" => "queues:List",
        _ => return None,
    })
}

/// A queue's name from a QueueUrl (`…/queue/<name>`, or the name alone) or a QueueName.
fn queue_name(body: &Value) -> Result<String, SqsError> {
    let url = body["QueueUrl"]
        .as_str()
        .or_else(|| body["QueueName"].as_str())
        .ok_or_else(|| invalid("QueueUrl: missing"))?;
    let name = url.rsplit('/').next().unwrap_or(url);
    validate::queue_name("QueueUrl", name).map_err(|e| invalid(e.to_string()))?;
    Ok(name.to_string())
}

fn u32_field(body: &Value, field: &str) -> Result<Option<u32>, SqsError> {
    match &body[field] {
        Value::Null => Ok(None),
        v => v
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| invalid(format!("{field}: {v} is not a whole number of seconds"))),
    }
}

/// `MessageAttributes` as SQS sends them ({name: {DataType, StringValue}}): string values.
fn attributes(v: &Value) -> BTreeMap<String, String> {
    v.as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, a)| Some((k.clone(), a["StringValue"].as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

fn message_json(m: &QueueMessage, handle: &str) -> Value {
    let attrs: serde_json::Map<String, Value> = m
        .attributes
        .iter()
        .map(|(k, v)| (k.clone(), json!({"DataType": "String", "StringValue": v})))
        .collect();
    let mut system = json!({
        "ApproximateReceiveCount": m.receive_count.to_string(),
        "SentTimestamp": m.sent_ms.to_string(),
        "ApproximateFirstReceiveTimestamp": m.first_received_ms.to_string(),
    });
    if !m.group.is_empty() {
        system["MessageGroupId"] = json!(m.group);
        system["MessageDeduplicationId"] = json!(m.dedup_id);
        system["SequenceNumber"] = json!(m.id);
    }
    json!({
        "MessageId": m.id,
        "ReceiptHandle": handle,
        "Body": m.body,
        "MD5OfBody": md5_hex(&m.body),
        "Attributes": system,
        "MessageAttributes": attrs,
    })
}

/// `POST /`: one SQS action.
pub async fn handle(State(core): State<Arc<Core>>, headers: HeaderMap, body: Bytes) -> Response {
    match act(&core, &headers, &body).await {
        Ok(v) => ([("content-type", "application/x-amz-json-1.0")], Json(v)).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn act(core: &Core, headers: &HeaderMap, body: &[u8]) -> Result<Value, SqsError> {
    let target = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .and_then(|t| t.strip_prefix("AmazonSQS."))
        .ok_or_else(|| {
            SqsError(
                StatusCode::BAD_REQUEST,
                "InvalidAction",
                "X-Amz-Target: give AmazonSQS.<Action>".into(),
            )
        })?
        .to_string();
    let action = action_of(&target).ok_or_else(|| {
        SqsError(
            StatusCode::BAD_REQUEST,
            "InvalidAction",
            format!("{target}: not an action skiff's queues answer"),
        )
    })?;
    let body: Value = serde_json::from_slice(body).map_err(|e| {
        SqsError(
            StatusCode::BAD_REQUEST,
            "SerializationException",
            format!("the body is not JSON: {e}"),
        )
    })?;
    let name = if target == "ListQueues" {
        "*".to_string()
    } else {
        queue_name(&body)?
    };
    let auth = headers
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let caller = crate::auth::authenticate(core, auth).map_err(|s| {
        SqsError(
            StatusCode::FORBIDDEN,
            "AccessDenied",
            s.message().to_string(),
        )
    })?;
    let resource = format!("queue/{name}");
    let allowed = match &caller.task {
        Some(t) => skiff_model::trust::allows(&t.role, action, Some(&resource)),
        None => {
            matches!(action, "queues:Describe" | "queues:List") || caller.role >= Role::Operator
        }
    };
    if !allowed {
        return Err(SqsError(
            StatusCode::FORBIDDEN,
            "AccessDenied",
            format!("{action} on {resource}: not granted to this caller"),
        ));
    }
    match target.as_str() {
        "ListQueues" => {
            let prefix = body["QueueNamePrefix"].as_str().unwrap_or("");
            let urls: Vec<String> = core
                .store
                .queues
                .list()
                .map_err(CoreError::from)?
                .into_iter()
                .filter(|q| q.name.starts_with(prefix))
                .map(|q| format!("/queue/{}", q.name))
                .collect();
            return Ok(json!({"QueueUrls": urls}));
        }
        "CreateQueue" => {
            let q = queue_from_attributes(&name, &body["Attributes"])?;
            let q = queues::put(core, q).await?;
            return Ok(json!({"QueueUrl": format!("/queue/{}", q.name)}));
        }
        _ => {}
    }
    let q = queues::get(core, &name)?;
    match target.as_str() {
        "DeleteQueue" => {
            queues::delete(core, &name).await?;
            Ok(json!({}))
        }
        "PurgeQueue" => {
            queues::purge(core, &name).await?;
            Ok(json!({}))
        }
        "GetQueueUrl" => Ok(json!({"QueueUrl": format!("/queue/{name}")})),
        "GetQueueAttributes" => {
            let (q, c) = queues::describe(core, &name)?;
            Ok(json!({"Attributes": {
                "ApproximateNumberOfMessages": c.visible.to_string(),
                "ApproximateNumberOfMessagesNotVisible": c.in_flight.to_string(),
                "ApproximateNumberOfMessagesDelayed": c.delayed.to_string(),
                "VisibilityTimeout": q.visibility_timeout_secs.to_string(),
                "DelaySeconds": q.delay_secs.to_string(),
                "MessageRetentionPeriod": q.retention_secs.to_string(),
                "MaximumMessageSize": q.max_message_bytes.to_string(),
                "ReceiveMessageWaitTimeSeconds": q.receive_wait_secs.to_string(),
                "CreatedTimestamp": (q.created_ms / 1000).to_string(),
                "FifoQueue": q.fifo.to_string(),
                "ContentBasedDeduplication": q.content_based_deduplication.to_string(),
            }}))
        }
        "SendMessage" => {
            let sent = send(core, &q, std::slice::from_ref(&body), "").await?;
            let (m, _) = &sent[0];
            Ok(json!({"MessageId": m.id, "MD5OfMessageBody": md5_hex(&m.body)}))
        }
        "SendMessageBatch" => {
            let entries = batch(&body)?;
            let sent = send(core, &q, &entries, "Entries").await?;
            let ok: Vec<Value> = sent
                .iter()
                .map(|(m, id)| json!({"Id": id, "MessageId": m.id, "MD5OfMessageBody": md5_hex(&m.body)}))
                .collect();
            Ok(json!({"Successful": ok, "Failed": []}))
        }
        "ReceiveMessage" => {
            let max = u32_field(&body, "MaxNumberOfMessages")?.unwrap_or(1) as usize;
            if max == 0 || max > MAX_BATCH {
                return Err(invalid(format!(
                    "MaxNumberOfMessages: {max}; give 1 to {MAX_BATCH}"
                )));
            }
            let wait = u32_field(&body, "WaitTimeSeconds")?.unwrap_or(q.receive_wait_secs);
            if wait > validate::MAX_RECEIVE_WAIT_SECS {
                return Err(invalid(format!(
                    "WaitTimeSeconds: {wait}; at most {}",
                    validate::MAX_RECEIVE_WAIT_SECS
                )));
            }
            let visibility =
                u32_field(&body, "VisibilityTimeout")?.unwrap_or(q.visibility_timeout_secs);
            if visibility > validate::MAX_VISIBILITY_SECS {
                return Err(invalid(format!(
                    "VisibilityTimeout: {visibility}; at most {}",
                    validate::MAX_VISIBILITY_SECS
                )));
            }
            let got = queues::receive(
                core,
                &q,
                max,
                Duration::from_secs(u64::from(wait)),
                visibility,
            )
            .await?;
            let messages: Vec<Value> = got.iter().map(|(m, h)| message_json(m, h)).collect();
            Ok(json!({"Messages": messages}))
        }
        "DeleteMessage" => {
            let handle = body["ReceiptHandle"]
                .as_str()
                .ok_or_else(|| invalid("ReceiptHandle: missing"))?;
            single(
                queues::delete_messages(core, &q, &[handle.to_string()])
                    .await?
                    .remove(0),
            )
        }
        "DeleteMessageBatch" => {
            let entries = batch(&body)?;
            let handles: Vec<String> = entries
                .iter()
                .map(|e| e["ReceiptHandle"].as_str().unwrap_or("").to_string())
                .collect();
            let outcomes = queues::delete_messages(core, &q, &handles).await?;
            Ok(batch_result(&entries, outcomes))
        }
        "ChangeMessageVisibility" => {
            let handle = body["ReceiptHandle"]
                .as_str()
                .ok_or_else(|| invalid("ReceiptHandle: missing"))?;
            let secs = u32_field(&body, "VisibilityTimeout")?
                .ok_or_else(|| invalid("VisibilityTimeout: missing"))?;
            if secs > validate::MAX_VISIBILITY_SECS {
                return Err(invalid(format!(
                    "VisibilityTimeout: {secs}; at most {}",
                    validate::MAX_VISIBILITY_SECS
                )));
            }
            single(
                queues::change_visibility(core, &q, &[(handle.to_string(), secs)])
                    .await?
                    .remove(0),
            )
        }
        "ChangeMessageVisibilityBatch" => {
            let entries = batch(&body)?;
            let mut changes = Vec::new();
            for (i, e) in entries.iter().enumerate() {
                let secs = u32_field(e, "VisibilityTimeout")?
                    .ok_or_else(|| invalid(format!("Entries[{i}].VisibilityTimeout: missing")))?;
                changes.push((
                    e["ReceiptHandle"].as_str().unwrap_or("").to_string(),
                    secs.min(validate::MAX_VISIBILITY_SECS),
                ));
            }
            let outcomes = queues::change_visibility(core, &q, &changes).await?;
            Ok(batch_result(&entries, outcomes))
        }
        other => Err(SqsError(
            StatusCode::BAD_REQUEST,
            "InvalidAction",
            format!("{other}: not answered"),
        )),
    }
}

/// A queue from CreateQueue's `Attributes` (numbers as strings, as SQS takes them; a
/// `RedrivePolicy` as a JSON string naming the dead-letter queue by ARN or name).
fn queue_from_attributes(name: &str, a: &Value) -> Result<Queue, SqsError> {
    let num = |field: &str, default: u32| -> Result<u32, SqsError> {
        match &a[field] {
            Value::Null => Ok(default),
            Value::String(s) => s
                .parse()
                .map_err(|_| invalid(format!("Attributes.{field}: {s:?} is not a number"))),
            v => v
                .as_u64()
                .and_then(|n| u32::try_from(n).ok())
                .ok_or_else(|| invalid(format!("Attributes.{field}: {v} is not a number"))),
        }
    };
    let flag = |field: &str| -> Result<bool, SqsError> {
        match &a[field] {
            Value::Null => Ok(false),
            Value::Bool(b) => Ok(*b),
            Value::String(s) if s == "true" => Ok(true),
            Value::String(s) if s == "false" => Ok(false),
            v => Err(invalid(format!(
                "Attributes.{field}: {v} is not true or false"
            ))),
        }
    };
    let redrive = match &a["RedrivePolicy"] {
        Value::Null => None,
        v => {
            let p: Value = match v {
                Value::String(s) => serde_json::from_str(s)
                    .map_err(|e| invalid(format!("Attributes.RedrivePolicy: not JSON: {e}")))?,
                other => other.clone(),
            };
            let target = p["deadLetterTargetArn"]
                .as_str()
                .ok_or_else(|| invalid("Attributes.RedrivePolicy.deadLetterTargetArn: missing"))?;
            let count = match &p["maxReceiveCount"] {
                Value::String(s) => s.parse().ok(),
                v => v.as_u64().and_then(|n| u32::try_from(n).ok()),
            }
            .ok_or_else(|| invalid("Attributes.RedrivePolicy.maxReceiveCount: give a number"))?;
            Some(crate::model::RedrivePolicy {
                dead_letter_queue: target.rsplit(':').next().unwrap_or(target).to_string(),
                max_receive_count: count,
            })
        }
    };
    let q = Queue {
        name: name.to_string(),
        visibility_timeout_secs: num("VisibilityTimeout", 30)?,
        delay_secs: num("DelaySeconds", 0)?,
        retention_secs: num("MessageRetentionPeriod", 4 * 24 * 3600)?,
        max_message_bytes: num("MaximumMessageSize", validate::MAX_MESSAGE_BYTES)?,
        receive_wait_secs: num("ReceiveMessageWaitTimeSeconds", 0)?,
        redrive,
        created_ms: 0,
        updated_ms: 0,
        fifo: flag("FifoQueue")?,
        content_based_deduplication: flag("ContentBasedDeduplication")?,
    };
    validate::queue(&q).map_err(|e| invalid(format!("Attributes: {e}")))?;
    Ok(q)
}

/// Checks and sends messages given as SQS entries (`MessageBody`, `DelaySeconds`,
/// `MessageAttributes`, and in a batch `Id`); returns each with its entry's Id.
async fn send(
    core: &Core,
    q: &Queue,
    entries: &[Value],
    field: &str,
) -> Result<Vec<(QueueMessage, String)>, SqsError> {
    let mut outgoing = Vec::new();
    let mut ids = Vec::new();
    for (i, e) in entries.iter().enumerate() {
        let f = if field.is_empty() {
            "MessageBody".to_string()
        } else {
            format!("{field}[{i}]")
        };
        let body = e["MessageBody"]
            .as_str()
            .ok_or_else(|| invalid(format!("{f}: MessageBody missing")))?;
        let delay = u32_field(e, "DelaySeconds")?;
        let attrs = attributes(&e["MessageAttributes"]);
        validate::message(&f, q, body, delay, &attrs).map_err(|e| invalid(e.to_string()))?;
        let group = e["MessageGroupId"].as_str().unwrap_or_default();
        let dedup = e["MessageDeduplicationId"].as_str().unwrap_or_default();
        validate::fifo_fields(&f, q, group, dedup, delay).map_err(|e| invalid(e.to_string()))?;
        outgoing.push(Outgoing {
            body: body.to_string(),
            delay_secs: delay,
            attributes: attrs,
            group: group.to_string(),
            dedup_id: dedup.to_string(),
        });
        ids.push(e["Id"].as_str().unwrap_or_default().to_string());
    }
    let sent = queues::send(core, q, outgoing).await?;
    Ok(sent.into_iter().zip(ids).collect())
}

/// A batch's `Entries` (1 to 10).
fn batch(body: &Value) -> Result<Vec<Value>, SqsError> {
    let entries = body["Entries"].as_array().cloned().unwrap_or_default();
    if entries.is_empty() || entries.len() > MAX_BATCH {
        return Err(invalid(format!(
            "Entries: {} entries; give 1 to {MAX_BATCH}",
            entries.len()
        )));
    }
    Ok(entries)
}

/// A single-message action's answer: `{}`, or SQS's error for a receipt that no longer acts.
fn single(outcome: Result<(), skiff_model::queue::StaleReceipt>) -> Result<Value, SqsError> {
    outcome.map(|()| json!({})).map_err(|e| {
        SqsError(
            StatusCode::BAD_REQUEST,
            "ReceiptHandleIsInvalid",
            e.to_string(),
        )
    })
}

fn batch_result(
    entries: &[Value],
    outcomes: Vec<Result<(), skiff_model::queue::StaleReceipt>>,
) -> Value {
    let mut ok = Vec::new();
    let mut failed = Vec::new();
    for (e, o) in entries.iter().zip(outcomes) {
        let id = e["Id"].as_str().unwrap_or_default();
        match o {
            Ok(()) => ok.push(json!({"Id": id})),
            Err(err) => failed.push(json!({"Id": id, "Code": "ReceiptHandleIsInvalid", "Message": err.to_string(), "SenderFault": true})),
        }
    }
    json!({"Successful": ok, "Failed": failed})
}
