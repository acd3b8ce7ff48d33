//! The history sweep: keeps stopped tasks to their retention (`skiff_model::history`), and the
//! event log to its limits without deleting an event a reader has not read (the rule
//! dispatcher's cursor, every named consumer's).
//! Every minute, and at once when a policy changes, it deletes the stopped tasks past their
//! scope's `keep` (counted per family, or per group for a group's own policy) or stopped longer
//! ago than their `max_age`. Deletion goes through `Store::delete_stopped_tasks`, the one path
//! that removes a task record, which re-checks under the writer lock that each is STOPPED.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use skiff_model::history::{governing, EventConsumer, Scope, TaskRetention};
use tracing::{info, warn};

use crate::core::{Core, CoreError};
use crate::wake::Loop;

/// How often the sweep runs when nothing wakes it.
const SWEEP_EVERY_MS: i64 = 60_000;

pub use skiff_model::history::{DEFAULT_EVENT_LIMITS, DEFAULT_LIMITS};

/// What one pass deleted.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Swept {
    pub tasks: usize,
    pub events: usize,
}

/// What the sweep remembers between passes: each scope's newest task when it was last
/// counted (a scope with no new task since need not be counted again), and the policies it
/// counted with.
#[derive(Default)]
pub struct Sweeper {
    counted: HashMap<Scope, String>,
    policies: Vec<TaskRetention>,
}

pub async fn run(core: Arc<Core>, mut stop: tokio::sync::watch::Receiver<bool>) {
    let mut sweeper = Sweeper::default();
    loop {
        if *stop.borrow() {
            return;
        }
        let next = core.clock.now_ms() + SWEEP_EVERY_MS;
        match sweeper.sweep(&core).await {
            Ok(swept) => {
                if swept.tasks > 0 {
                    info!(
                        deleted = swept.tasks,
                        "stopped tasks past their retention deleted"
                    );
                }
                if swept.events > 0 {
                    info!(
                        deleted = swept.events,
                        "events past the log's retention deleted"
                    );
                }
            }
            Err(e) => warn!(error = %e, "history sweep failed"),
        }
        tokio::select! {
            _ = stop.changed() => {}
            _ = core.clock.sleep_until(next) => {}
            _ = core.loops.woken(Loop::History) => {}
        }
    }
}

impl Sweeper {
    /// One pass over the tasks and the event log.
    pub async fn sweep(&mut self, core: &Core) -> Result<Swept, CoreError> {
        Ok(Swept {
            tasks: self.sweep_tasks(core).await?,
            events: sweep_events(core).await?,
        })
    }

    /// Deletes the stopped tasks past their retention; returns how many.
    async fn sweep_tasks(&mut self, core: &Core) -> Result<usize, CoreError> {
        let store = &core.store;
        let mut listed = store.task_retention.list()?;
        listed.sort_by(|a, b| a.scope.cmp(&b.scope));
        if listed != self.policies {
            self.counted.clear();
            self.policies = listed.clone();
        }
        let policies: HashMap<Scope, TaskRetention> =
            listed.into_iter().map(|p| (p.scope.clone(), p)).collect();
        let default = core.history_limits;
        let now = core.clock.now_ms();
        let mut doomed: HashSet<String> = HashSet::new();

        // Past `keep`: every scope a task can be counted in, when it has new tasks.
        let mut scopes = store.task_scopes(true)?;
        scopes.extend(store.task_scopes(false)?);
        for scope in scopes {
            let limits = policies.get(&scope).map_or(default, |p| default.with(p));
            let Some(keep) = limits.keep else { continue };
            let Some(newest) = store.newest_scope_task(&scope)? else {
                continue;
            };
            if self.counted.get(&scope) == Some(&newest) {
                continue;
            }
            let ids = store.scope_task_ids(&scope)?;
            let over = ids.len().saturating_sub(keep as usize);
            for id in &ids[..over] {
                if store.is_active_task(id.as_bytes()) {
                    continue;
                }
                // Counted here, but kept by its own group's or family's policy?
                let Some(t) = store.task(id)? else { continue };
                if governing(&t.group, t.family(), &policies).scope() == &scope {
                    doomed.insert(t.id);
                }
            }
            self.counted.insert(scope, newest);
        }

        // Past `max_age`: the oldest tasks, each judged by the policy that governs it.
        let youngest_limit = policies
            .values()
            .map(|p| default.with(p).max_age_ms)
            .chain([default.max_age_ms])
            .flatten()
            .min();
        if let Some(age) = youngest_limit {
            for t in store.stopped_tasks_created_before(now - age, usize::MAX)? {
                let limits = governing(&t.group, t.family(), &policies).limits(default, &policies);
                if limits.too_old(t.stopped_at_ms, now) {
                    doomed.insert(t.id);
                }
            }
        }

        let mut doomed: Vec<String> = doomed.into_iter().collect();
        doomed.sort();
        // Deletions only shrink the scopes counted: no recount needed for them.
        Ok(store.delete_stopped_tasks(&doomed).await?)
    }
}

// --- operations: the API's one path to each change ---

/// Sets a scope's retention policy (replacing the one there) and wakes the sweep.
pub async fn put_policy(core: &Core, policy: &TaskRetention) -> Result<(), CoreError> {
    core.store.task_retention.put(policy).await?;
    core.loops.wake(Loop::History);
    Ok(())
}

/// Removes a scope's policy (the default applies there again); None if it had none.
pub async fn delete_policy(core: &Core, scope: &Scope) -> Result<Option<TaskRetention>, CoreError> {
    let gone = core.store.task_retention.delete(scope.key()).await?;
    core.loops.wake(Loop::History);
    Ok(gone)
}

/// Keeps a consumer's place in the log from now on: a new one, or one told where to start
/// (`cursor`: the event before the first it reads; None: before the oldest).
pub async fn place_consumer(
    core: &Core,
    name: &str,
    cursor: Option<String>,
) -> Result<(), CoreError> {
    let c = EventConsumer {
        name: name.to_string(),
        cursor: cursor.unwrap_or_default(),
        acked_at_ms: core.clock.now_ms(),
    };
    core.store.event_consumers.put(&c).await?;
    Ok(())
}

/// Moves a consumer's cursor forward to `event_id` — never back: an acknowledgement that
/// comes late moves nothing. None if there is no such consumer.
pub async fn ack(
    core: &Core,
    name: &str,
    event_id: ulid::Ulid,
) -> Result<Option<EventConsumer>, CoreError> {
    let now = core.clock.now_ms();
    let moved = core
        .store
        .event_consumers
        .update(name, |c| {
            let behind = ulid::Ulid::from_string(&c.cursor).map_or(true, |cur| cur < event_id);
            if behind {
                c.cursor = event_id.to_string();
                c.acked_at_ms = now;
            }
            Ok::<(), ()>(())
        })
        .await?;
    Ok(moved.ok().flatten())
}

/// Forgets a consumer: the log no longer keeps events for it. None if there was none.
pub async fn delete_consumer(core: &Core, name: &str) -> Result<Option<EventConsumer>, CoreError> {
    Ok(core.store.event_consumers.delete(name).await?)
}

/// Deletes the events past the log's limits that every reader has read; returns how many.
async fn sweep_events(core: &Core) -> Result<usize, CoreError> {
    let limits = core.event_limits;
    let store = &core.store;
    // The oldest cursor: the rule dispatcher's, or a consumer's. A reader that has read
    // nothing holds the whole log.
    let mut cursors = vec![store.bus_cursor()?];
    cursors.extend(
        store
            .event_consumers
            .list()?
            .into_iter()
            .map(|c| (!c.cursor.is_empty()).then_some(c.cursor)),
    );
    // Every reader has read something, or nothing goes. Event ids are ULIDs: the oldest
    // cursor is the smallest once parsed (an unreadable one counts as having read nothing).
    let parsed: Option<Vec<ulid::Ulid>> = cursors
        .iter()
        .map(|c| c.as_deref().and_then(|id| ulid::Ulid::from_string(id).ok()))
        .collect();
    let Some(floor) = parsed.and_then(|p| p.into_iter().min()) else {
        return Ok(0);
    };
    let floor = floor.to_string();
    // Event ids carry the wall clock's time (the store stamps them), so their age is
    // measured on it, not on the controller's clock (a manual one in component tests).
    let before = limits
        .max_age_ms
        .map(|age| crate::clock::Clock::wall_ms() - age);
    Ok(store
        .delete_old_events(before, limits.keep, Some(&floor))
        .await?)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use skiff_model::history::Limits;
    use skiff_model::lifecycle::TaskStatus;

    use super::*;
    use crate::core::NodeTiming;
    use crate::model::Task;
    use crate::store::Store;

    const DAY_MS: i64 = 24 * 3600 * 1000;

    fn core(dir: &std::path::Path, clock: crate::clock::Clock) -> Core {
        let mut core = Core::new(
            Store::open(&dir.join("store")).unwrap(),
            NodeTiming::default(),
            clock,
            crate::sealing::SecretBox::open(dir).unwrap(),
            crate::task_tokens::TaskTokenKey::open(dir).unwrap(),
        );
        core.history_limits = Limits {
            keep: Some(5),
            max_age_ms: Some(10 * DAY_MS),
        };
        core
    }

    /// A STOPPED (or RUNNING) task of `fam` in `group`, created and stopped at `ms`.
    async fn task(core: &Core, ms: i64, n: u128, fam: &str, group: &str, running: bool) {
        let id = ulid::Ulid::from_parts(ms as u64, n)
            .to_string()
            .to_lowercase();
        let mut t = Task::new(
            id,
            Some(format!("{fam}:1")),
            group.into(),
            "test".into(),
            skiff_model::testing::spec(0.1, 8),
            ms,
        );
        t.status = if running {
            TaskStatus::Running
        } else {
            TaskStatus::Stopped
        };
        t.stopped_at_ms = ms;
        core.create_task(t).await.unwrap();
    }

    fn left(core: &Core, fam: &str) -> usize {
        let f = crate::store::TaskFilter {
            family: Some(fam.into()),
            ..Default::default()
        };
        core.store.list_tasks(&f, 0).unwrap().1
    }

    #[tokio::test]
    async fn the_sweep_keeps_each_scope_to_its_count_and_age_and_never_touches_a_running_task() {
        let dir = tempfile::tempdir().unwrap();
        let start = 100 * DAY_MS;
        let clock = crate::clock::Clock::manual(start);
        let core = core(dir.path(), clock.clone());
        // web: 8 tasks a day apart, the oldest RUNNING; api: 3 of them from 20 days ago;
        // jobs: 8, in a service with its own policy (keep 7).
        for i in 0..8 {
            task(&core, start - (8 - i) * DAY_MS, 1, "web", "rule:w", i == 0).await;
            task(
                &core,
                start - (8 - i) * DAY_MS,
                2,
                "jobs",
                "service:jobs",
                false,
            )
            .await;
        }
        for i in 0..3 {
            task(
                &core,
                start - 20 * DAY_MS,
                10 + i as u128,
                "api",
                "rule:a",
                false,
            )
            .await;
        }
        core.store
            .task_retention
            .put(&TaskRetention {
                scope: Scope::Group("service:jobs".into()),
                keep: Some(7),
                max_age_secs: None,
            })
            .await
            .unwrap();
        let mut sweeper = Sweeper::default();
        let deleted = sweeper.sweep(&core).await.unwrap().tasks;
        // web: past keep 5 are its 3 oldest, one RUNNING (kept): 2 go. jobs: its own keep
        // of 7: 1 goes. api: all past the default age (10 days): 3 go.
        assert_eq!(deleted, 6);
        assert_eq!(
            (left(&core, "web"), left(&core, "jobs"), left(&core, "api")),
            (6, 7, 0)
        );
        let web = core
            .store
            .list_tasks(
                &crate::store::TaskFilter {
                    family: Some("web".into()),
                    status: Some(TaskStatus::Running),
                    ..Default::default()
                },
                0,
            )
            .unwrap();
        assert_eq!(web.1, 1, "the running task stays");
        // A second pass with nothing new deletes nothing.
        assert_eq!(sweeper.sweep(&core).await.unwrap().tasks, 0);
        // Four days on, the default age of 10 days passes jobs' oldest (11 days) and web's
        // RUNNING one (12 days, kept); web's oldest stopped one is 9 days old.
        clock.advance(Duration::from_millis((4 * DAY_MS) as u64));
        assert_eq!(sweeper.sweep(&core).await.unwrap().tasks, 1);
        let now = core.clock.now_ms();
        for t in core.store.tasks().unwrap() {
            assert!(
                t.status.is_active() || now - t.stopped_at_ms <= 10 * DAY_MS,
                "{} stopped {} days ago",
                t.id,
                (now - t.stopped_at_ms) / DAY_MS
            );
        }
        // Removing the service's policy puts its tasks under the default's keep of 5 and
        // age of 10 days.
        core.store
            .task_retention
            .delete(Scope::Group("service:jobs".into()).key())
            .await
            .unwrap();
        assert_eq!(sweeper.sweep(&core).await.unwrap().tasks, 1);
        assert_eq!(left(&core, "jobs"), 5);
    }
}

#[cfg(test)]
mod event_log_tests {
    use skiff_model::history::{EventConsumer, EventLogLimits};

    use super::*;
    use crate::model::Event;

    async fn append(core: &Core, n: usize) -> Vec<String> {
        let mut ids = Vec::new();
        for i in 0..n {
            let e = core
                .store
                .append_event(|id| Event {
                    id,
                    source: "test".into(),
                    detail_type: "Tick".into(),
                    replay: None,
                    time_ms: 0,
                    resources: vec![],
                    detail: serde_json::json!({"i": i}),
                })
                .await
                .unwrap();
            ids.push(e.id);
        }
        ids
    }

    fn left(core: &Core) -> Vec<String> {
        core.store
            .events_after(None, 1000)
            .unwrap()
            .into_iter()
            .map(|e| e.id)
            .collect()
    }

    async fn consumer(core: &Core, name: &str, cursor: &str) {
        core.store
            .event_consumers
            .put(&EventConsumer {
                name: name.into(),
                cursor: cursor.into(),
                acked_at_ms: 0,
            })
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn old_events_go_but_never_one_the_dispatcher_or_a_consumer_has_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let mut core = Core::new(
            crate::store::Store::open(&dir.path().join("store")).unwrap(),
            crate::core::NodeTiming::default(),
            crate::clock::Clock::system(),
            crate::sealing::SecretBox::open(dir.path()).unwrap(),
            crate::task_tokens::TaskTokenKey::open(dir.path()).unwrap(),
        );
        // Only the newest 2 are wanted (no age limit).
        core.event_limits = EventLogLimits {
            max_age_ms: None,
            keep: Some(2),
        };
        let ids = append(&core, 10).await;
        // The dispatcher has read nothing: everything stays.
        assert_eq!(sweep_events(&core).await.unwrap(), 0);
        // It has read the first 6, a consumer the first 3: 3 go.
        core.store.set_bus_cursor(&ids[5]).await.unwrap();
        consumer(&core, "audit", &ids[2]).await;
        assert_eq!(sweep_events(&core).await.unwrap(), 3);
        assert_eq!(left(&core), ids[3..]);
        // The consumer moves past the dispatcher: the dispatcher holds the rest.
        consumer(&core, "audit", &ids[7]).await;
        assert_eq!(sweep_events(&core).await.unwrap(), 3);
        assert_eq!(left(&core), ids[6..]);
        // A consumer that has read nothing holds everything.
        consumer(&core, "late", "").await;
        core.store.set_bus_cursor(&ids[9]).await.unwrap();
        assert_eq!(sweep_events(&core).await.unwrap(), 0);
        core.store.event_consumers.delete("late").await.unwrap();
        // The newest 2 of what every reader has read (audit is at the 8th): 2 go.
        assert_eq!(sweep_events(&core).await.unwrap(), 2);
        assert_eq!(left(&core), ids[8..]);
        // By age alone: events under it stay; either limit is enough for the rest.
        consumer(&core, "audit", &ids[9]).await;
        core.event_limits = EventLogLimits {
            max_age_ms: Some(24 * 3600 * 1000),
            keep: None,
        };
        assert_eq!(sweep_events(&core).await.unwrap(), 0, "a day old: none is");
        core.event_limits.keep = Some(1);
        assert_eq!(sweep_events(&core).await.unwrap(), 1);
        assert_eq!(left(&core), ids[9..]);
        // Older than a moment from now: all of them, but the floor still holds.
        let more = append(&core, 2).await;
        let later = crate::clock::Clock::wall_ms() + 60_000;
        let deleted = core
            .store
            .delete_old_events(Some(later), None, Some(&more[0]))
            .await
            .unwrap();
        assert_eq!(deleted, 2, "the 10th and the first new one");
        assert_eq!(left(&core), more[1..]);
    }
}
