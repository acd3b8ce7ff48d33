//! Task history kept to its retention: the scopes tasks are indexed under, their ids oldest
//! first, and the one way a task record is ever deleted (`delete_stopped_tasks`).

use std::ops::Bound;

use skiff_model::history::Scope;

use super::tree::Tree;
use super::{decode, event_key, family_key, group_key, key_of, node_key, Store, StoreError};
use crate::model::Task;

/// Deletions per transaction: a sweep of a long history holds the writer lock in short turns.
const DELETE_BATCH: usize = 512;

impl Store {
    /// Every family (or group) that has tasks, from its index: one seek per name, not a scan
    /// of the tasks.
    pub fn task_scopes(&self, families: bool) -> Result<Vec<Scope>, StoreError> {
        let tree = if families {
            &self.by_family
        } else {
            &self.by_group
        };
        let mut out = Vec::new();
        let mut from: Vec<u8> = Vec::new();
        loop {
            let Some(kv) = tree
                .range(Bound::Included(from.clone()), Bound::Unbounded)
                .next()
            else {
                return Ok(out);
            };
            let key = key_of(kv)?;
            let name_len = key.iter().position(|b| *b == 0).unwrap_or(key.len());
            let name = String::from_utf8_lossy(&key[..name_len]).into_owned();
            // The next name: past every key that starts with this name and its NUL.
            from = key[..name_len].to_vec();
            from.push(1);
            out.push(if families {
                Scope::Family(name)
            } else {
                Scope::Group(name)
            });
        }
    }

    /// The ids of a scope's tasks, oldest first (ids are ULIDs: key order is creation order).
    pub fn scope_task_ids(&self, scope: &Scope) -> Result<Vec<String>, StoreError> {
        let (tree, name) = self.scope_index(scope);
        let mut prefix = name.as_bytes().to_vec();
        prefix.push(0);
        tree.scan_prefix(&prefix)
            .map(|kv| Ok(String::from_utf8_lossy(&key_of(kv)?[prefix.len()..]).into_owned()))
            .collect()
    }

    /// The newest id of a scope's tasks: whether it changed since a sweep looked.
    pub fn newest_scope_task(&self, scope: &Scope) -> Result<Option<String>, StoreError> {
        let (tree, name) = self.scope_index(scope);
        let mut prefix = name.as_bytes().to_vec();
        prefix.push(0);
        let Some(kv) = tree.scan_prefix(&prefix).next_back() else {
            return Ok(None);
        };
        Ok(Some(
            String::from_utf8_lossy(&key_of(kv)?[prefix.len()..]).into_owned(),
        ))
    }

    fn scope_index<'a>(&'a self, scope: &'a Scope) -> (&'a Tree, &'a str) {
        match scope {
            Scope::Family(f) => (&self.by_family, f.as_str()),
            Scope::Group(g) => (&self.by_group, g.as_str()),
        }
    }

    /// Stopped tasks created before `before_ms`, oldest first, decoded (at most `limit`).
    pub fn stopped_tasks_created_before(
        &self,
        before_ms: i64,
        limit: usize,
    ) -> Result<Vec<Task>, StoreError> {
        let end = super::task_id_bound(before_ms);
        let mut out = Vec::new();
        for kv in self
            .tasks
            .range(Bound::Unbounded, Bound::Excluded(end.into_bytes()))
        {
            if out.len() >= limit {
                break;
            }
            let (id, v) = kv?;
            if self.is_active_task(&id) {
                continue;
            }
            out.push(decode("tasks", &v)?);
        }
        Ok(out)
    }

    /// Whether a task is not STOPPED (from the statuses kept in memory; no read).
    pub fn is_active_task(&self, id: &[u8]) -> bool {
        self.reserved
            .lock()
            .expect("reserved lock")
            .status(id)
            .is_some()
    }

    /// Deletes these tasks with their index entries, each only if it is STOPPED when its
    /// turn comes (under the writer lock, so no transition can come between the look and the
    /// delete). Durable on return. Returns how many went.
    pub async fn delete_stopped_tasks(&self, ids: &[String]) -> Result<usize, StoreError> {
        let mut deleted = 0;
        for chunk in ids.chunks(DELETE_BATCH) {
            let gen = self.writer.lock().await;
            let trees = [
                &self.tasks,
                &self.by_family,
                &self.by_group,
                &self.by_node,
                &self.index_versions,
            ];
            let count_before = self.task_count.load(std::sync::atomic::Ordering::Acquire);
            let gone = self.transact(&trees, |tx| {
                let mut gone = 0;
                for id in chunk {
                    let Some(bytes) = tx.get(&self.tasks, id)? else {
                        continue;
                    };
                    let task: Task = decode("tasks", &bytes)?;
                    if task.status.is_active() {
                        continue;
                    }
                    tx.remove(&self.tasks, id)?;
                    tx.remove(&self.by_group, group_key(&task))?;
                    if let Some(k) = family_key(&task) {
                        tx.remove(&self.by_family, k)?;
                    }
                    if let Some(k) = node_key(&task) {
                        tx.remove(&self.by_node, k)?;
                    }
                    gone += 1;
                }
                if gone > 0 {
                    let count = count_before.saturating_sub(gone) as u64;
                    tx.insert(&self.index_versions, super::TASK_COUNT, count.to_le_bytes())?;
                }
                Ok(gone)
            })?;
            drop(gen);
            self.task_count
                .fetch_sub(gone, std::sync::atomic::Ordering::AcqRel);
            deleted += gone;
        }
        if deleted > 0 {
            self.commit().await?;
        }
        Ok(deleted)
    }
}

impl Store {
    /// Deletes the events created before `before_ms` and all but the newest `keep`, but none
    /// after `floor` (the oldest cursor a reader still has: what it has not read stays).
    /// Durable on return. Returns how many went.
    pub async fn delete_old_events(
        &self,
        before_ms: Option<i64>,
        keep: Option<u64>,
        floor: Option<&str>,
    ) -> Result<usize, StoreError> {
        // An event goes when it is too old or past the count: below the higher of the two
        // bounds; but never above the floor (inclusive: the floor itself was read).
        if keep == Some(0) {
            return Ok(0);
        }
        let by_age = before_ms.map(|ms| {
            ulid::Ulid::from_parts(ms.max(0) as u64, 0)
                .to_bytes()
                .to_vec()
        });
        let by_count = match keep {
            // The oldest of the newest `keep`: what is below it goes.
            Some(keep) => match self.events.iter().rev().nth(keep as usize - 1) {
                Some(kv) => Some(key_of(kv)?),
                None => None,
            },
            None => None,
        };
        let mut end = match (by_age, by_count) {
            (Some(a), Some(c)) => Some(a.max(c)),
            (a, c) => a.or(c),
        };
        if let (Some(f), Some(e)) = (floor, end.as_mut()) {
            let mut past = event_key(f);
            // Just past the floor: the floor itself may go.
            past.push(0);
            if past < *e {
                *e = past;
            }
        }
        let Some(end) = end else { return Ok(0) };
        let mut deleted = 0;
        loop {
            let keys: Vec<Vec<u8>> = self
                .events
                .range(Bound::Unbounded, Bound::Excluded(end.clone()))
                .take(DELETE_BATCH * 16)
                .map(key_of)
                .collect::<Result<_, _>>()?;
            if keys.is_empty() {
                break;
            }
            deleted += keys.len();
            self.events
                .apply(keys.into_iter().map(|k| (k, None)).collect())?;
        }
        if deleted > 0 {
            self.commit().await?;
        }
        Ok(deleted)
    }
}

#[cfg(test)]
mod tests {
    use skiff_model::history::Scope;
    use skiff_model::lifecycle::TaskStatus;

    use super::super::tests::{event, matching_newest_first, stores};
    use super::super::{Store, TaskFilter};
    use crate::model::Task;

    /// A task created at `ms` (its id a ULID of that time), of family `fam`, group `group`.
    fn task(ms: u64, n: u128, status: TaskStatus, fam: &str, group: &str) -> Task {
        let id = ulid::Ulid::from_parts(ms, n).to_string().to_lowercase();
        let mut t = Task::new(
            id,
            Some(format!("{fam}:1")),
            group.into(),
            String::new(),
            skiff_model::testing::spec(0.1, 8),
            ms as i64,
        );
        t.status = status;
        t.stopped_at_ms = ms as i64;
        t
    }

    /// The sled store in `dir` again (its lock goes a moment after the last handle).
    fn reopen(dir: &std::path::Path) -> Store {
        let started = std::time::Instant::now();
        loop {
            match Store::open(dir) {
                Ok(s) => return s,
                Err(_) if started.elapsed() < std::time::Duration::from_secs(10) => {
                    std::thread::sleep(std::time::Duration::from_millis(10))
                }
                Err(e) => panic!("reopening: {e}"),
            }
        }
    }

    /// 30 tasks, one per second from t = 1,000 s: families a/b alternating, every third
    /// RUNNING, the rest STOPPED.
    async fn history(store: &Store) -> Vec<Task> {
        let mut all = Vec::new();
        for i in 0..30u64 {
            let status = if i % 3 == 0 {
                TaskStatus::Running
            } else {
                TaskStatus::Stopped
            };
            let fam = if i % 2 == 0 { "a" } else { "b" };
            let t = task(1_000_000 + i * 1000, 1, status, fam, &format!("g{}", i % 2));
            store.create_task(&t, event).await.unwrap();
            all.push(t);
        }
        all
    }

    #[tokio::test]
    async fn pages_walk_a_time_range_newest_first_and_meet_every_task_once() {
        for (store, _dir) in stores() {
            let all = history(&store).await;
            for base in [
                TaskFilter::default(),
                TaskFilter {
                    family: Some("a".into()),
                    ..Default::default()
                },
                TaskFilter {
                    status: Some(TaskStatus::Stopped),
                    ..Default::default()
                },
                TaskFilter {
                    status: Some(TaskStatus::Running),
                    ..Default::default()
                },
            ] {
                let mut filter = base.clone();
                // Created in [1,005 s, 1,025 s).
                filter.created_from_ms = Some(1_005_000);
                filter.created_before_ms = Some(1_025_000);
                let want = matching_newest_first(&all, &filter);
                assert!(!want.is_empty() && want.len() <= 20, "{base:?}");
                let mut got = Vec::new();
                let mut pages = 0;
                loop {
                    let (page, total) = store.list_tasks(&filter, 4).unwrap();
                    assert_eq!(total, want.len() - got.len(), "{base:?}: what is left");
                    got.extend(page.iter().map(|t| t.id.clone()));
                    pages += 1;
                    if total <= page.len() {
                        break;
                    }
                    filter.older_than = page.last().map(|t| t.id.clone());
                }
                assert_eq!(got, want, "{base:?}");
                assert_eq!(pages, want.len().div_ceil(4).max(1), "{base:?}");
            }
        }
    }

    #[tokio::test]
    async fn a_range_deep_in_a_long_history_is_counted_only_so_far_past_its_page() {
        let store =
            Store::with_engine(std::sync::Arc::new(super::super::MemoryEngine::new())).unwrap();
        let n = super::super::COUNT_CAP + 50;
        for i in 0..n as u64 {
            let t = task(1_000_000 + i, 1, TaskStatus::Stopped, "a", "g");
            store.create_task(&t, event).await.unwrap();
        }
        let range = TaskFilter {
            created_from_ms: Some(1_000_000),
            ..Default::default()
        };
        let (page, total) = store.list_tasks(&range, 10).unwrap();
        assert_eq!(page.len(), 10);
        assert_eq!(total, 10 + super::super::COUNT_CAP, "counted up to the cap");
        // A smaller range, or no limit, is counted exactly.
        let near = TaskFilter {
            created_from_ms: Some(1_000_000 + n as i64 - 30),
            ..Default::default()
        };
        assert_eq!(store.list_tasks(&near, 10).unwrap().1, 30);
        assert_eq!(store.list_tasks(&range, 0).unwrap().1, n);
    }

    #[tokio::test]
    async fn deleting_takes_stopped_tasks_and_their_index_entries_and_never_an_active_one() {
        for (store, dir) in stores() {
            let all = history(&store).await;
            let ids: Vec<String> = all.iter().map(|t| t.id.clone()).collect();
            let deleted = store.delete_stopped_tasks(&ids).await.unwrap();
            assert_eq!(deleted, 20);
            let left = store.tasks().unwrap();
            assert_eq!(left.len(), 10);
            assert!(left.iter().all(|t| t.status == TaskStatus::Running));
            // The indexes and the count agree with what is left.
            let a = TaskFilter {
                family: Some("a".into()),
                ..Default::default()
            };
            let (listed, total) = store.list_tasks(&a, 0).unwrap();
            assert_eq!(total, 5);
            assert!(listed.iter().all(|t| t.status == TaskStatus::Running));
            assert_eq!(store.list_tasks(&TaskFilter::default(), 1).unwrap().1, 10);
            assert_eq!(
                store
                    .scope_task_ids(&Scope::Group("g1".into()))
                    .unwrap()
                    .len(),
                5
            );
            let mut scopes = store.task_scopes(true).unwrap();
            scopes.extend(store.task_scopes(false).unwrap());
            assert_eq!(
                scopes,
                [
                    Scope::Family("a".into()),
                    Scope::Family("b".into()),
                    Scope::Group("g0".into()),
                    Scope::Group("g1".into())
                ]
            );
            // The count is kept on disk with the deletions: a reopen reads it.
            if let Some(dir) = dir {
                drop(store);
                let store = reopen(dir.path());
                assert_eq!(store.list_tasks(&TaskFilter::default(), 1).unwrap().1, 10);
                let more = task(2_000_000, 1, TaskStatus::Stopped, "a", "g0");
                store.create_task(&more, event).await.unwrap();
                drop(store);
                let store = reopen(dir.path());
                assert_eq!(store.list_tasks(&TaskFilter::default(), 1).unwrap().1, 11);
            }
        }
    }
}
