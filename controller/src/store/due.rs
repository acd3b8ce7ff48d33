//! A table of work that waits for a moment: one record per piece of work, and beside it a
//! due-time index (due ms, big-endian ‖ record key). Inside a transaction with other writes
//! (`put_in`, `remove_in`) record and key move together; alone (`put`, `delete`, the hot
//! paths) they are written in an order a crash cannot turn into a lost record, and `due`
//! drops a key its record does not confirm. The index is derived again at every open.
//! Rule delivery retries, schedule fire retries and the notification outbox are each one of
//! these; a reader takes what is due through the index without scanning the records, and
//! learns when the next piece is due. (Queue message visibility is the next user.)

use std::sync::Arc;

use super::engine::{Engine, TxError};
use super::table::{Record, Table};
use super::tree::{Tree, Tx};
use super::{decode, encode, GroupCommit, StoreError};

/// A record that is due at a moment.
pub trait Due: Record {
    fn due_ms(&self) -> i64;
    /// Which part of the index the record is in (a queue's messages are read by queue);
    /// empty for one index over all records.
    fn due_prefix(&self) -> Vec<u8> {
        Vec::new()
    }
    /// A byte kept with the record's index key, so a tally of a part (`tally_in`) can tell
    /// two kinds of not-yet-due records apart without reading them (a queue message: 1 once
    /// received — in flight — 0 while only delayed).
    fn due_tag(&self) -> u8 {
        0
    }
}

/// A due-index key: the time (ms, big-endian, so keys sort by time) then the record's key.
pub(super) fn due_key(due_ms: i64, key: &[u8]) -> Vec<u8> {
    let mut k = (due_ms.max(0) as u64).to_be_bytes().to_vec();
    k.extend_from_slice(key);
    k
}

/// A record's index key: its part, its due time, its key.
fn index_key<R: Due>(r: &R, key: &[u8]) -> Vec<u8> {
    let mut k = r.due_prefix();
    k.extend_from_slice(&due_key(r.due_ms(), key));
    k
}

/// The due time in an index key of the part `prefix` names.
fn time_of(k: &[u8], prefix: &[u8]) -> i64 {
    let at = &k[prefix.len()..prefix.len() + 8];
    i64::from_be_bytes(at.try_into().expect("8-byte time"))
}

/// Records of one type, each due at a moment, readable in due order.
#[derive(Clone)]
pub struct DueTable<R> {
    records: Table<R>,
    index: Tree,
    commit: GroupCommit,
}

impl<R: Due> DueTable<R> {
    /// Opens the table and its index (`<tree>_due`), and derives the index from the records:
    /// an index can never disagree with its records after an open.
    pub(super) fn open(
        engine: &Arc<dyn Engine>,
        commit: &GroupCommit,
    ) -> Result<DueTable<R>, StoreError> {
        let t = DueTable {
            records: Table::open(engine, commit)?,
            index: Tree::open(engine, &format!("{}_due", R::TREE))?,
            commit: commit.clone(),
        };
        t.index.clear()?;
        for kv in t.records.tree().iter() {
            let (k, v) = kv?;
            let r: R = decode(R::TREE, &v)?;
            t.index.insert(index_key(&r, &k), [r.due_tag()])?;
        }
        Ok(t)
    }

    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<R>, StoreError> {
        self.records.get(key)
    }

    /// Every record, in key order.
    pub fn list(&self) -> Result<Vec<R>, StoreError> {
        self.records.list()
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Up to `limit` records due at `now_ms`, earliest first; and when the next one after
    /// those is due (None: nothing else is waiting).
    pub fn due(&self, now_ms: i64, limit: usize) -> Result<(Vec<R>, Option<i64>), StoreError> {
        self.due_in(&[], now_ms, limit)
    }

    /// `due` within the part of the index `prefix` names.
    pub fn due_in(
        &self,
        prefix: &[u8],
        now_ms: i64,
        limit: usize,
    ) -> Result<(Vec<R>, Option<i64>), StoreError> {
        let mut due = Vec::new();
        for kv in self.index.scan_prefix(prefix) {
            let (k, _) = kv?;
            let at = time_of(&k, prefix);
            if at > now_ms || due.len() >= limit {
                return Ok((due, Some(at)));
            }
            match self.records.get(&k[prefix.len() + 8..])? {
                Some(r) if r.due_ms() == at => due.push(r),
                // A key whose record is gone or due at another time (a crash between the
                // writes of `put` or `delete`, a damaged index) is dropped, not followed.
                _ => {
                    self.index.remove(&k)?;
                }
            }
        }
        Ok((due, None))
    }

    /// How many records of the part `prefix` names are due at `now_ms`, and how many are
    /// not yet, by their tag (untagged, tagged) — from the index alone, no record read.
    pub fn tally_in(&self, prefix: &[u8], now_ms: i64) -> Result<(u64, u64, u64), StoreError> {
        let (mut due, mut later, mut later_tagged) = (0, 0, 0);
        for kv in self.index.scan_prefix(prefix) {
            let (k, v) = kv?;
            if time_of(&k, prefix) <= now_ms {
                due += 1;
            } else if v.first() == Some(&1) {
                later_tagged += 1;
            } else {
                later += 1;
            }
        }
        Ok((due, later, later_tagged))
    }

    /// The first record (in key order) of the part `prefix` names.
    pub fn first_by_key(&self, prefix: &[u8]) -> Result<Option<R>, StoreError> {
        self.records.first_with_prefix(prefix)
    }

    /// When the earliest record is due.
    pub fn next_due(&self) -> Result<Option<i64>, StoreError> {
        self.next_due_in(&[])
    }

    /// When the earliest record of the part `prefix` names is due.
    pub fn next_due_in(&self, prefix: &[u8]) -> Result<Option<i64>, StoreError> {
        match self.index.scan_prefix(prefix).next() {
            Some(kv) => Ok(Some(time_of(&kv?.0, prefix))),
            None => Ok(None),
        }
    }

    /// Every record of the part `prefix` names, earliest due first.
    pub fn list_in(&self, prefix: &[u8]) -> Result<Vec<R>, StoreError> {
        let mut out = Vec::new();
        for kv in self.index.scan_prefix(prefix) {
            let (k, _) = kv?;
            if let Some(r) = self.records.get(&k[prefix.len() + 8..])? {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// Every record whose key starts with `prefix`, in key order (a queue's messages: in
    /// the order they were sent).
    pub fn list_by_key(&self, prefix: &[u8]) -> Result<Vec<R>, StoreError> {
        self.records.list_prefix(prefix)
    }

    /// Creates or replaces a record, moving its index key. Durable on return.
    ///
    /// Outside a transaction (these are the hot paths: every delivery ends with one), in an
    /// order that a crash cannot turn into a lost record: the new index key first, then the
    /// record, then the old key out. A key left behind is dropped by `due`. One record has
    /// one writer at a time (the loop that owns the work), so the old due time read first is
    /// still the record's when its key goes.
    pub async fn put(&self, r: &R) -> Result<(), StoreError> {
        self.put_uncommitted(r)?;
        self.commit.commit().await
    }

    /// `put` without waiting for the flush (the caller commits; nobody may learn of the write
    /// before).
    pub fn put_uncommitted(&self, r: &R) -> Result<(), StoreError> {
        let key = r.key();
        let old = self.records.get(&key)?;
        let new_key = index_key(r, &key);
        self.index.insert(&new_key, [r.due_tag()])?;
        self.records.tree().insert(&key, encode(r))?;
        if let Some(old) = old {
            let old_key = index_key(&old, &key);
            if old_key != new_key {
                self.index.remove(old_key)?;
            }
        }
        Ok(())
    }

    /// Removes a record and then its index key; returns what it was. Durable on return.
    pub async fn delete(&self, key: impl AsRef<[u8]>) -> Result<Option<R>, StoreError> {
        let old = self.delete_uncommitted(key)?;
        if old.is_some() {
            self.commit.commit().await?;
        }
        Ok(old)
    }

    /// `delete` without waiting for the flush (the caller commits).
    pub fn delete_uncommitted(&self, key: impl AsRef<[u8]>) -> Result<Option<R>, StoreError> {
        let key = key.as_ref();
        let Some(old) = self.records.remove(key)? else {
            return Ok(None);
        };
        self.index.remove(index_key(&old, key))?;
        Ok(Some(old))
    }

    /// The record tree and the index tree, for a transaction that also writes others.
    pub(super) fn trees(&self) -> [&Tree; 2] {
        [self.records.tree(), &self.index]
    }

    /// `put` inside a transaction over (at least) `trees()`.
    pub(super) fn put_in(&self, tx: &Tx<'_>, r: &R) -> Result<(), TxError> {
        let key = r.key();
        if let Some(old) = tx.get(self.records.tree(), &key)? {
            let old: R = decode(R::TREE, &old)?;
            tx.remove(&self.index, index_key(&old, &key))?;
        }
        tx.insert(&self.index, index_key(r, &key), [r.due_tag()])?;
        tx.insert(self.records.tree(), &key, encode(r))
    }

    /// `delete` inside a transaction over (at least) `trees()`.
    pub(super) fn remove_in(&self, tx: &Tx<'_>, key: &[u8]) -> Result<Option<R>, TxError> {
        let Some(old) = tx.get(self.records.tree(), key)? else {
            return Ok(None);
        };
        let old: R = decode(R::TREE, &old)?;
        tx.remove(&self.index, index_key(&old, key))?;
        tx.remove(self.records.tree(), key)?;
        Ok(Some(old))
    }

    #[cfg(test)]
    pub(super) fn index(&self) -> &Tree {
        &self.index
    }
}
