//! Object-store events: notifications (S3/MinIO `Records[]`, or EventBridge "Object Created"
//! events) and watcher sightings become bus events of one shape — EventBridge's S3 detail,
//! from `source: skiff.s3` — and each object version goes on the bus once, however many times
//! it is notified (webhook retries, webhook + watcher).

use serde_json::{json, Value};

use crate::core::Core;
use crate::model::{Event, Source};
use crate::store::StoreError;

pub const EVENT_SOURCE: &str = "skiff.s3";
pub const CREATED: &str = "Object Created";
pub const DELETED: &str = "Object Deleted";

/// One object that appeared, changed or went away.
#[derive(Debug, Clone, PartialEq)]
pub struct ObjectChange {
    pub bucket: String,
    pub key: String,
    pub size: u64,
    /// Without quotes.
    pub etag: String,
    pub sequencer: String,
    pub version_id: String,
    pub created: bool,
    /// What caused it (the S3 event name, or "Listed" for the watcher).
    pub reason: String,
    pub time_ms: i64,
}

/// What a notification body holds: the changes, and how many records were of other kinds.
#[derive(Debug, Default, PartialEq)]
pub struct Parsed {
    pub changes: Vec<ObjectChange>,
    pub ignored: usize,
}

fn field<'a>(v: &'a Value, path: &[&str]) -> Option<&'a Value> {
    path.iter().try_fold(v, |cur, k| cur.get(*k))
}

fn text(v: &Value, path: &[&str], at: &str) -> Result<String, String> {
    match field(v, path) {
        Some(Value::String(s)) if !s.is_empty() => Ok(s.clone()),
        Some(other) if !other.is_null() => {
            Err(format!("{at}.{}: must be a string", path.join(".")))
        }
        _ => Err(format!("{at}.{}: missing", path.join("."))),
    }
}

fn opt_text(v: &Value, path: &[&str]) -> String {
    field(v, path)
        .and_then(Value::as_str)
        .unwrap_or_default()
        .trim_matches('"')
        .to_string()
}

fn size(v: &Value, path: &[&str], at: &str) -> Result<u64, String> {
    match field(v, path) {
        None | Some(Value::Null) => Ok(0),
        Some(n) => n
            .as_u64()
            .ok_or_else(|| format!("{at}.{}: must be a whole number of bytes", path.join("."))),
    }
}

/// The time a notification gives, or 0 when it gives none (`ingest` then stamps it).
fn time_ms(v: Option<&Value>) -> i64 {
    v.and_then(Value::as_str)
        .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
        .map_or(0, |t| t.timestamp_millis())
}

/// S3 notifications URL-encode keys as HTML forms do ('+' is a space).
pub fn decode_key(raw: &str) -> Result<String, String> {
    let spaced = raw.replace('+', " ");
    percent_encoding::percent_decode_str(&spaced)
        .decode_utf8()
        .map(|s| s.into_owned())
        .map_err(|_| format!("{raw:?} does not decode to UTF-8"))
}

/// Reads a notification body: `{"Records": [...]}` as S3 and MinIO send them, an S3 test
/// event (no records), or one EventBridge "Object Created"/"Object Deleted" event. Errors name
/// the offending field.
pub fn parse_notification(body: &[u8]) -> Result<Parsed, String> {
    let v: Value =
        serde_json::from_slice(body).map_err(|e| format!("body: not valid JSON: {e}"))?;
    if !v.is_object() {
        return Err("body: must be a JSON object".into());
    }
    let mut out = Parsed::default();
    if let Some(records) = v.get("Records") {
        let records = records.as_array().ok_or("Records: must be a list")?;
        for (i, r) in records.iter().enumerate() {
            let at = format!("Records[{i}]");
            let name = text(r, &["eventName"], &at)?;
            let name = name.strip_prefix("s3:").unwrap_or(&name).to_string();
            let created = name.starts_with("ObjectCreated:");
            if !created && !name.starts_with("ObjectRemoved:") {
                out.ignored += 1;
                continue;
            }
            let raw_key = text(r, &["s3", "object", "key"], &at)?;
            out.changes.push(ObjectChange {
                bucket: text(r, &["s3", "bucket", "name"], &at)?,
                key: decode_key(&raw_key).map_err(|e| format!("{at}.s3.object.key: {e}"))?,
                size: size(r, &["s3", "object", "size"], &at)?,
                etag: opt_text(r, &["s3", "object", "eTag"]),
                sequencer: opt_text(r, &["s3", "object", "sequencer"]),
                version_id: opt_text(r, &["s3", "object", "versionId"]),
                created,
                reason: name,
                time_ms: time_ms(r.get("eventTime")),
            });
        }
        return Ok(out);
    }
    if v.get("Event").and_then(Value::as_str) == Some("s3:TestEvent") {
        return Ok(out);
    }
    match v.get("detail-type").and_then(Value::as_str) {
        Some(kind @ (CREATED | DELETED)) => {
            let at = "detail";
            let d = v.get("detail").ok_or("detail: missing")?;
            out.changes.push(ObjectChange {
                bucket: text(d, &["bucket", "name"], at)?,
                // EventBridge delivers keys as they are (not URL-encoded).
                key: text(d, &["object", "key"], at)?,
                size: size(d, &["object", "size"], at)?,
                etag: opt_text(d, &["object", "etag"]),
                sequencer: opt_text(d, &["object", "sequencer"]),
                version_id: opt_text(d, &["object", "version-id"]),
                created: kind == CREATED,
                reason: opt_text(d, &["reason"]),
                time_ms: time_ms(v.get("time")),
            });
            Ok(out)
        }
        Some(_) => {
            out.ignored += 1;
            Ok(out)
        }
        None => Err(
            "body: neither S3 notification Records nor an EventBridge \"Object Created\" event"
                .into(),
        ),
    }
}

/// The key that makes one object version go on the bus once. None = nothing identifies it.
pub fn seen_key(source: &str, c: &ObjectChange) -> Option<String> {
    if c.created {
        (!c.etag.is_empty() || !c.version_id.is_empty()).then(|| {
            format!(
                "{source}\0{}\0{}\0+{}\0{}\0{}",
                c.bucket, c.key, c.etag, c.version_id, c.size
            )
        })
    } else {
        (!c.sequencer.is_empty())
            .then(|| format!("{source}\0{}\0{}\0-{}", c.bucket, c.key, c.sequencer))
    }
}

/// The bus event of one change.
pub fn event(source: &str, via: &str, c: &ObjectChange, id: String) -> Event {
    let mut object = json!({"key": c.key, "size": c.size, "etag": c.etag});
    if !c.sequencer.is_empty() {
        object["sequencer"] = json!(c.sequencer);
    }
    if !c.version_id.is_empty() {
        object["version-id"] = json!(c.version_id);
    }
    Event {
        id,
        source: EVENT_SOURCE.into(),
        detail_type: if c.created { CREATED } else { DELETED }.into(),
        replay: None,
        time_ms: c.time_ms,
        resources: vec![format!("arn:aws:s3:::{}", c.bucket)],
        detail: json!({
            "version": "0",
            "bucket": {"name": c.bucket},
            "object": object,
            "reason": c.reason,
            "skiff-source": source,
            "via": via,
        }),
    }
}

/// Whether a change belongs to a source (its bucket and prefix).
pub fn in_scope(s: &Source, c: &ObjectChange) -> bool {
    (s.bucket.is_empty() || s.bucket == c.bucket) && c.key.starts_with(&s.prefix)
}

/// What an ingest did.
#[derive(Debug, Default, PartialEq)]
pub struct Ingested {
    pub event_ids: Vec<String>,
    pub duplicates: usize,
    pub out_of_scope: usize,
}

/// Puts notified changes on the bus (each object version once). Durable on return.
pub async fn ingest(
    core: &Core,
    source: &Source,
    via: &str,
    changes: Vec<ObjectChange>,
) -> Result<Ingested, StoreError> {
    let mut out = Ingested::default();
    for mut c in changes {
        if c.time_ms == 0 {
            c.time_ms = core.clock.now_ms();
        }
        if !in_scope(source, &c) {
            out.out_of_scope += 1;
            continue;
        }
        let seen = seen_key(&source.name, &c);
        match core
            .store
            .append_event_once(seen.as_deref(), None, |id| event(&source.name, via, &c, id))
            .await?
        {
            Some(e) => out.event_ids.push(e.id),
            None => out.duplicates += 1,
        }
    }
    if !out.event_ids.is_empty() {
        core.events_appended();
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minio(key: &str) -> Value {
        json!({"EventName": "s3:ObjectCreated:Put", "Key": format!("photos/{key}"), "Records": [{
            "eventVersion": "2.0", "eventSource": "minio:s3", "eventTime": "2026-11-23T12:00:00.000Z",
            "eventName": "s3:ObjectCreated:Put",
            "s3": {"bucket": {"name": "photos"}, "object": {"key": key, "size": 1234,
                   "eTag": "abc123", "sequencer": "17A0"}}}]})
    }

    #[test]
    fn minio_records_with_encoded_keys() {
        let p = parse_notification(
            minio("input/photo+of+me+%C3%BC%2B1.jpg")
                .to_string()
                .as_bytes(),
        )
        .unwrap();
        let c = &p.changes[0];
        assert_eq!(c.key, "input/photo of me ü+1.jpg");
        assert_eq!(
            (c.bucket.as_str(), c.size, c.etag.as_str()),
            ("photos", 1234, "abc123")
        );
        assert!(c.created);
        assert_eq!(c.time_ms, 1_795_435_200_000);
    }

    #[test]
    fn eventbridge_events_and_other_kinds() {
        let eb = json!({"version": "0", "detail-type": "Object Created", "source": "aws.s3",
            "time": "2026-11-23T12:00:00Z",
            "detail": {"bucket": {"name": "photos"}, "object": {"key": "input/a b.jpg", "size": 5,
                       "etag": "e1"}, "reason": "PutObject"}});
        let p = parse_notification(eb.to_string().as_bytes()).unwrap();
        assert_eq!(p.changes[0].key, "input/a b.jpg");
        let other = json!({"Records": [{"eventName": "s3:ObjectAccessed:Get",
            "s3": {"bucket": {"name": "b"}, "object": {"key": "k"}}}]});
        assert_eq!(
            parse_notification(other.to_string().as_bytes())
                .unwrap()
                .ignored,
            1
        );
        let test_event = json!({"Service": "Amazon S3", "Event": "s3:TestEvent"});
        assert_eq!(
            parse_notification(test_event.to_string().as_bytes()).unwrap(),
            Parsed::default()
        );
    }

    #[test]
    fn malformed_bodies_name_the_field() {
        let cases: [(&[u8], &str); 6] = [
            (b"not json", "body: not valid JSON"),
            (b"[1]", "body: must be a JSON object"),
            (b"{\"Records\": 5}", "Records: must be a list"),
            (b"{\"Records\": [{\"s3\": {}}]}", "Records[0].eventName: missing"),
            (
                b"{\"Records\": [{\"eventName\": \"s3:ObjectCreated:Put\", \"s3\": {\"bucket\": {\"name\": \"b\"}, \"object\": {\"key\": \"k\", \"size\": -1}}}]}",
                "Records[0].s3.object.size",
            ),
            (b"{\"hello\": 1}", "neither S3 notification Records"),
        ];
        for (body, want) in cases {
            let e = parse_notification(body).unwrap_err();
            assert!(e.contains(want), "{want:?} in {e:?}");
        }
        let bad_key = minio("%FF%FE");
        assert!(parse_notification(bad_key.to_string().as_bytes())
            .unwrap_err()
            .contains("Records[0].s3.object.key"));
    }

    #[test]
    fn one_object_version_has_one_key_whoever_reports_it() {
        let p = parse_notification(minio("in/a.jpg").to_string().as_bytes()).unwrap();
        let mut c = p.changes[0].clone();
        let webhook = seen_key("s", &c).unwrap();
        c.sequencer.clear();
        c.reason = "Listed".into();
        assert_eq!(
            seen_key("s", &c).unwrap(),
            webhook,
            "the watcher sees the same version"
        );
        c.etag = "other".into();
        assert_ne!(seen_key("s", &c).unwrap(), webhook, "a new version is new");
    }
}
