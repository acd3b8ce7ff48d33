//! Event operations in the core layer: apps' events put on the bus (PutEvents), each with its
//! id, in one durable batch; the dispatcher is woken.

use crate::core::{Core, CoreError};
use crate::model::Event;

/// Appends checked events (their ids are assigned here, in order) with one flush; returns
/// them as stored.
pub async fn put(core: &Core, events: Vec<Event>) -> Result<Vec<Event>, CoreError> {
    let makers: Vec<Box<dyn FnOnce(String) -> Event + Send>> = events
        .into_iter()
        .map(|ev| {
            Box::new(move |id: String| Event { id, ..ev })
                as Box<dyn FnOnce(String) -> Event + Send>
        })
        .collect();
    let stored = core.store.append_events(makers).await?;
    core.events_appended();
    Ok(stored)
}

/// What a replay put back on the bus.
#[derive(Debug, Default)]
pub struct Replayed {
    pub name: String,
    pub count: u64,
    pub first: Option<String>,
    pub last: Option<String>,
}

/// Copies per durable batch.
const REPLAY_BATCH: usize = 500;

/// Puts the events that reached the bus in [from_ms, to_ms) back on it, as copies marked with
/// the replay (`Event::replay`) for `rule` alone or every rule (None); the dispatcher delivers
/// them like new events (new ids, so nothing they reach takes them for repeats). Replays of
/// earlier replays are skipped. How far back is what the event log's retention keeps.
pub async fn replay(
    core: &Core,
    from_ms: i64,
    to_ms: i64,
    rule: Option<String>,
    name: Option<String>,
) -> Result<Replayed, CoreError> {
    if from_ms >= to_ms {
        return Err(CoreError::Refused(
            "from: must be before to (an empty range replays nothing)".into(),
        ));
    }
    let now = core.clock.now_ms();
    if let Some(max_age) = core.event_limits.max_age_ms {
        if from_ms < now - max_age {
            return Err(CoreError::Refused(format!(
                "from: the event log keeps {} of events (--event-log-max-age); replay from {} on",
                humanize_ms(max_age),
                chrono::DateTime::from_timestamp_millis(now - max_age)
                    .unwrap_or_default()
                    .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
            )));
        }
    }
    if let Some(r) = &rule {
        if core.store.rules.get(r)?.is_none() {
            return Err(CoreError::Refused(format!("rule: no rule {r:?}")));
        }
    }
    let name = name.unwrap_or_else(|| format!("replay-{now}"));
    let mut out = Replayed {
        name: name.clone(),
        ..Default::default()
    };
    // Ids are ULIDs: the bound's id (random part 0) sorts before every event of its millisecond.
    let mut cursor = Some(crate::store::event_id_bound(from_ms));
    let end = crate::store::event_id_bound(to_ms);
    loop {
        let batch = core.store.events_after(cursor.as_deref(), REPLAY_BATCH)?;
        let Some(last) = batch.last() else { break };
        cursor = Some(last.id.clone());
        let done = batch.len() < REPLAY_BATCH || last.id >= end;
        let makers: Vec<Box<dyn FnOnce(String) -> Event + Send>> = batch
            .into_iter()
            .filter(|e| e.id < end && e.replay.is_none())
            .map(|e| {
                let replay = crate::model::Replay {
                    name: name.clone(),
                    original: e.id.clone(),
                    rule: rule.clone(),
                };
                Box::new(move |id: String| Event {
                    id,
                    replay: Some(replay),
                    ..e
                }) as Box<dyn FnOnce(String) -> Event + Send>
            })
            .collect();
        if !makers.is_empty() {
            let stored = core.store.append_events(makers).await?;
            out.count += stored.len() as u64;
            if out.first.is_none() {
                out.first = stored.first().map(|e| e.id.clone());
            }
            out.last = stored.last().map(|e| e.id.clone());
            core.events_appended();
        }
        if done {
            break;
        }
    }
    Ok(out)
}

/// "7 days", "36 hours", "90 s": a retention as people set it.
fn humanize_ms(ms: i64) -> String {
    const DAY: i64 = 86_400_000;
    const HOUR: i64 = 3_600_000;
    match ms {
        ms if ms >= DAY && ms % DAY == 0 => format!("{} days", ms / DAY),
        ms if ms >= HOUR && ms % HOUR == 0 => format!("{} hours", ms / HOUR),
        ms => format!("{} s", ms / 1000),
    }
}
