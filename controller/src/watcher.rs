//! Bucket watchers, for stores that send no notifications: each source with a poll interval is
//! listed (through `object_store`: S3-compatible endpoints, or local directories) and every
//! new or changed object becomes an "Object Created" event, every vanished one "Object
//! Deleted". What was listed is kept durably with each event (one transaction), so a restart
//! neither re-emits nor misses; the first listing of a source is its baseline (objects already
//! there start nothing, as with S3 notifications enabled on a full bucket).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::TryStreamExt;
use object_store::ObjectStore;
use tracing::{info, warn};

use crate::core::Core;
use crate::model::{Source, SourceKind};
use crate::objects::{self, ObjectChange};
use crate::wake::Loop;

/// A local file modified this recently may still be being written: it is reported once a
/// second listing finds it unchanged.
const SETTLE_MS: i64 = 2000;

/// Runs a watch loop for every source with a poll interval; restarts one when its source
/// changes, stops it when the source goes.
pub async fn run(core: Arc<Core>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut running: HashMap<String, (i64, tokio::task::JoinHandle<()>)> = HashMap::new();
    loop {
        if *stop.borrow() {
            // Each source's loop goes with it (a listing cut short is listed again).
            for (_, (_, handle)) in running.drain() {
                handle.abort();
            }
            return;
        }
        let sources = core.store.sources.list().unwrap_or_else(|e| {
            warn!(error = %e, "reading sources failed");
            Vec::new()
        });
        running.retain(|name, (updated, handle)| {
            let keep = sources
                .iter()
                .any(|s| &s.name == name && s.updated_ms == *updated && s.poll_interval_secs > 0);
            if !keep {
                handle.abort();
            }
            keep
        });
        for s in sources {
            if s.poll_interval_secs > 0 && !running.contains_key(&s.name) {
                let updated = s.updated_ms;
                let name = s.name.clone();
                let handle = tokio::spawn(watch(core.clone(), s));
                running.insert(name, (updated, handle));
            }
        }
        tokio::select! {
            _ = core.loops.woken(Loop::Watchers) => {}
            _ = stop.changed() => {}
            _ = core.clock.sleep(Duration::from_secs(5)) => {}
        }
    }
}

async fn watch(core: Arc<Core>, source: Source) {
    info!(source = %source.name, every_s = source.poll_interval_secs, "watching");
    let mut settling: HashMap<String, String> = HashMap::new();
    loop {
        let next_poll =
            core.clock.now_ms() + i64::from(source.poll_interval_secs).saturating_mul(1000);
        let mut health = core.store.source_health(&source.name).unwrap_or_default();
        match poll(&core, &source, &mut settling).await {
            Ok(()) => {
                health.last_error.clear();
                health.last_listed_ms = core.clock.now_ms();
            }
            Err(e) => {
                warn!(source = %source.name, error = %e, "listing the bucket failed");
                health.last_error = e.to_string();
                health.last_error_ms = core.clock.now_ms();
            }
        }
        if let Err(e) = core.store.set_source_health(&source.name, &health) {
            warn!(source = %source.name, error = %e, "recording the watcher's health failed");
        }
        core.clock.sleep_until(next_poll).await;
    }
}

fn state_key(source: &str, bucket: &str, key: &str) -> String {
    format!("{source}\0{bucket}\0{key}")
}

/// The key marking that a source's baseline was taken.
fn baseline_key(source: &str) -> String {
    format!("{source}\0")
}

fn open_secret(core: &Core, name: &str) -> Result<String, String> {
    let sealed = core
        .store
        .secrets
        .get(name)
        .map_err(|e| e.to_string())?
        .ok_or_else(|| format!("secret {name:?} does not exist"))?;
    let v = core.secrets.open_sealed(&sealed)?;
    String::from_utf8(v)
        .map(|s| s.trim().to_string())
        .map_err(|_| format!("secret {name:?} is not text"))
}

/// A bucket's name and a store rooted at it.
type Bucket = (String, Arc<dyn ObjectStore>);

/// The buckets of a source.
fn buckets(core: &Core, s: &Source) -> Result<Vec<Bucket>, String> {
    match &s.kind {
        SourceKind::S3 {
            endpoint,
            region,
            access_key_id_secret,
            secret_access_key_secret,
        } => {
            crate::outbound::install_crypto_provider();
            let store = object_store::aws::AmazonS3Builder::new()
                .with_endpoint(endpoint)
                .with_region(region)
                .with_bucket_name(&s.bucket)
                .with_access_key_id(open_secret(core, access_key_id_secret)?)
                .with_secret_access_key(open_secret(core, secret_access_key_secret)?)
                .with_allow_http(endpoint.starts_with("http://"))
                .build()
                .map_err(|e| e.to_string())?;
            Ok(vec![(s.bucket.clone(), Arc::new(store))])
        }
        SourceKind::Local { path } => {
            let names: Vec<String> = if s.bucket.is_empty() {
                std::fs::read_dir(path)
                    .map_err(|e| format!("{path}: {e}"))?
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .filter_map(|e| e.file_name().to_str().map(str::to_string))
                    .collect()
            } else {
                vec![s.bucket.clone()]
            };
            names
                .into_iter()
                .map(|b| {
                    let dir = std::path::Path::new(path).join(&b);
                    object_store::local::LocalFileSystem::new_with_prefix(&dir)
                        .map(|fs| (b, Arc::new(fs) as Arc<dyn ObjectStore>))
                        .map_err(|e| format!("{}: {e}", dir.display()))
                })
                .collect()
        }
    }
}

/// One listing of a source: events for what changed since the last one.
async fn poll(
    core: &Core,
    s: &Source,
    settling: &mut HashMap<String, String>,
) -> Result<(), String> {
    let before = core.store.watch_state(&s.name).map_err(|e| e.to_string())?;
    let baseline = !before.contains_key(&baseline_key(&s.name));
    let local = matches!(s.kind, SourceKind::Local { .. });
    // List from the directory part of the prefix; keep what starts with the whole prefix.
    let dir = s.prefix.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
    let list_prefix = (!dir.is_empty()).then(|| object_store::path::Path::from(dir));
    let mut listed = HashSet::new();
    let mut baseline_entries = Vec::new();
    let mut emitted = 0usize;
    for (bucket, store) in buckets(core, s)? {
        let metas: Vec<object_store::ObjectMeta> = store
            .list(list_prefix.as_ref())
            .try_collect()
            .await
            .map_err(|e| format!("bucket {bucket:?}: {e}"))?;
        for m in metas {
            let key = m.location.as_ref().to_string();
            if !key.starts_with(&s.prefix) {
                continue;
            }
            let etag = m
                .e_tag
                .clone()
                .unwrap_or_default()
                .trim_matches('"')
                .to_string();
            let value = format!("{etag} {}", m.size);
            let sk = state_key(&s.name, &bucket, &key);
            listed.insert(sk.clone());
            if baseline {
                baseline_entries.push((sk, value));
                continue;
            }
            if before.get(&sk) == Some(&value) {
                settling.remove(&sk);
                continue;
            }
            let modified_ms = m.last_modified.timestamp_millis();
            if local
                && core.clock.now_ms() - modified_ms < SETTLE_MS
                && settling.get(&sk) != Some(&value)
            {
                settling.insert(sk, value);
                continue;
            }
            settling.remove(&sk);
            let change = ObjectChange {
                bucket: bucket.clone(),
                key,
                size: m.size,
                etag,
                sequencer: String::new(),
                version_id: m.version.clone().unwrap_or_default(),
                created: true,
                reason: "Listed".into(),
                time_ms: modified_ms,
            };
            let seen = objects::seen_key(&s.name, &change);
            let appended = core
                .store
                .append_event_once(seen.as_deref(), Some((&sk, Some(&value))), |id| {
                    objects::event(&s.name, "watcher", &change, id)
                })
                .await
                .map_err(|e| e.to_string())?;
            emitted += usize::from(appended.is_some());
        }
    }
    if baseline {
        baseline_entries.push((baseline_key(&s.name), "baseline".into()));
        core.store
            .put_watch_state(&baseline_entries)
            .await
            .map_err(|e| e.to_string())?;
        info!(source = %s.name, objects = baseline_entries.len() - 1, "baseline listed");
        return Ok(());
    }
    for (sk, _) in before
        .iter()
        .filter(|(k, _)| !listed.contains(*k) && **k != baseline_key(&s.name))
    {
        let mut parts = sk.splitn(3, '\0');
        let (_, bucket, key) = (
            parts.next(),
            parts.next().unwrap_or(""),
            parts.next().unwrap_or(""),
        );
        let change = ObjectChange {
            bucket: bucket.to_string(),
            key: key.to_string(),
            size: 0,
            etag: String::new(),
            sequencer: String::new(),
            version_id: String::new(),
            created: false,
            reason: "Listed".into(),
            time_ms: core.clock.now_ms(),
        };
        core.store
            .append_event_once(None, Some((sk, None)), |id| {
                objects::event(&s.name, "watcher", &change, id)
            })
            .await
            .map_err(|e| e.to_string())?;
        emitted += 1;
    }
    if emitted > 0 {
        core.events_appended();
    }
    Ok(())
}
