//! The Redis backlog poller: for every service that scales on a Redis source, reads the
//! backlog once a second and records it like a ReportBacklog (a list: its length waits; a
//! stream's consumer group: its lag waits and its pending entries are in flight). A source
//! that cannot be read records nothing, so its last report turns stale and the service holds
//! its count. Sources: `redis://[:password@]host:port/KEY` (a list) and
//! `redis://[:password@]host:port/STREAM#GROUP`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use tokio::sync::watch;
use tracing::warn;

use crate::core::Core;
use crate::model::Backlog;
use skiff_model::redis_source::{parse, RedisSource};

const EVERY: Duration = Duration::from_secs(1);
/// A Redis that does not answer within this is skipped this round.
const TIMEOUT: Duration = Duration::from_secs(2);

pub async fn run(core: Arc<Core>, mut stop: watch::Receiver<bool>) {
    let mut connections: HashMap<String, MultiplexedConnection> = HashMap::new();
    loop {
        if *stop.borrow() {
            return;
        }
        pass(&core, &mut connections).await;
        let next = core.clock.now_ms() + EVERY.as_millis() as i64;
        tokio::select! {
            _ = stop.changed() => {}
            _ = core.clock.sleep_until(next) => {}
        }
    }
}

async fn pass(core: &Core, connections: &mut HashMap<String, MultiplexedConnection>) {
    let Ok(services) = core.store.services.list() else {
        return;
    };
    let mut sources: Vec<String> = services
        .into_iter()
        .filter_map(|s| s.autoscaling.map(|a| a.source))
        .filter(|s| s.starts_with("redis://"))
        .collect();
    sources.sort();
    sources.dedup();
    for source in sources {
        let read = match parse(&source) {
            Ok(r) => tokio::time::timeout(TIMEOUT, read(connections, &r)).await,
            Err(e) => Ok(Err(e)),
        };
        match read {
            Ok(Ok((visible, in_flight))) => {
                let b = Backlog {
                    source: source.clone(),
                    visible,
                    in_flight,
                    observed_ms: core.clock.now_ms(),
                };
                if let Err(e) = crate::services::report_backlog(core, b).await {
                    warn!(%source, error = %e, "recording a Redis backlog failed");
                }
            }
            Ok(Err(e)) => {
                connections.remove(&source);
                warn!(%source, error = %e, "reading a Redis backlog failed");
            }
            Err(_) => {
                connections.remove(&source);
                warn!(%source, "Redis did not answer within {TIMEOUT:?}");
            }
        }
    }
}

/// (waiting, in flight) of one source.
async fn read(
    connections: &mut HashMap<String, MultiplexedConnection>,
    r: &RedisSource,
) -> Result<(u64, u64), String> {
    let key = format!("{}{}", r.url, r.key);
    let con = match connections.get_mut(&key) {
        Some(c) => c,
        None => {
            let client = redis::Client::open(r.url.as_str()).map_err(|e| e.to_string())?;
            let c = client
                .get_multiplexed_async_connection()
                .await
                .map_err(|e| e.to_string())?;
            connections.entry(key).or_insert(c)
        }
    };
    let Some(group) = &r.group else {
        let len: u64 = redis::cmd("LLEN")
            .arg(&r.key)
            .query_async(con)
            .await
            .map_err(|e| e.to_string())?;
        return Ok((len, 0));
    };
    let groups: redis::Value = redis::cmd("XINFO")
        .arg("GROUPS")
        .arg(&r.key)
        .query_async(con)
        .await
        .map_err(|e| e.to_string())?;
    stream_group(&groups, group)
        .ok_or_else(|| format!("stream {:?} has no consumer group {group:?}", r.key))
}

/// A consumer group's (lag, pending) from XINFO GROUPS (RESP2 flat arrays or RESP3 maps).
fn stream_group(v: &redis::Value, group: &str) -> Option<(u64, u64)> {
    let redis::Value::Array(groups) = v else {
        return None;
    };
    for g in groups {
        let fields: Vec<(String, &redis::Value)> = match g {
            redis::Value::Array(flat) => flat
                .chunks(2)
                .filter_map(|kv| Some((text(&kv[0])?, kv.get(1)?)))
                .collect(),
            redis::Value::Map(m) => m.iter().filter_map(|(k, v)| Some((text(k)?, v))).collect(),
            _ => continue,
        };
        let get = |name: &str| fields.iter().find(|(k, _)| k == name).map(|(_, v)| *v);
        if get("name").and_then(text).as_deref() != Some(group) {
            continue;
        }
        let number = |v: Option<&redis::Value>| match v {
            Some(redis::Value::Int(n)) => u64::try_from(*n).ok(),
            _ => None,
        };
        return Some((
            number(get("lag")).unwrap_or(0),
            number(get("pending")).unwrap_or(0),
        ));
    }
    None
}

fn text(v: &redis::Value) -> Option<String> {
    match v {
        redis::Value::BulkString(b) => String::from_utf8(b.clone()).ok(),
        redis::Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    }
}
