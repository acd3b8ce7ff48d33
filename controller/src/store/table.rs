//! One generic table: a tree of one record type, keyed by what the record says. A resource is
//! a `Record` impl (its tree's name and its key) and a `Table<R>` field on `Store`; reading,
//! listing, writing and deleting come from here, each write durable on return. Writes that
//! must go together with others (indexes, events, cascades) stay `Store` methods that use
//! `tree()` inside one transaction.

use std::marker::PhantomData;

use serde::{de::DeserializeOwned, Serialize};

use std::sync::Arc;

use super::engine::{Engine, TxError};
use super::tree::{transact, Tree};
use super::{decode, encode, GroupCommit, StoreError};

/// A record kept in its own table.
pub trait Record: Serialize + DeserializeOwned {
    /// The table's tree (also named in errors about its records).
    const TREE: &'static str;
    /// The record's key in its table.
    fn key(&self) -> Vec<u8>;
}

/// The records of one type, by key.
#[derive(Clone)]
pub struct Table<R> {
    tree: Tree,
    commit: GroupCommit,
    _record: PhantomData<fn() -> R>,
}

impl<R: Record> Table<R> {
    pub(super) fn open(
        engine: &Arc<dyn Engine>,
        commit: &GroupCommit,
    ) -> Result<Table<R>, StoreError> {
        Ok(Table {
            tree: Tree::open(engine, R::TREE)?,
            commit: commit.clone(),
            _record: PhantomData,
        })
    }

    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<R>, StoreError> {
        self.tree.get(key)?.map(|v| decode(R::TREE, &v)).transpose()
    }

    /// Every record, in key order.
    pub fn list(&self) -> Result<Vec<R>, StoreError> {
        self.tree.iter().map(|kv| decode(R::TREE, &kv?.1)).collect()
    }

    /// The records whose keys start with `prefix`, in key order.
    pub fn list_prefix(&self, prefix: impl AsRef<[u8]>) -> Result<Vec<R>, StoreError> {
        self.tree
            .scan_prefix(prefix)
            .map(|kv| decode(R::TREE, &kv?.1))
            .collect()
    }

    /// The first record whose key starts with `prefix`.
    pub fn first_with_prefix(&self, prefix: impl AsRef<[u8]>) -> Result<Option<R>, StoreError> {
        self.tree
            .scan_prefix(prefix)
            .next()
            .map(|kv| decode(R::TREE, &kv?.1))
            .transpose()
    }

    /// The last record whose key starts with `prefix`.
    pub fn last_with_prefix(&self, prefix: impl AsRef<[u8]>) -> Result<Option<R>, StoreError> {
        self.tree
            .scan_prefix(prefix)
            .next_back()
            .map(|kv| decode(R::TREE, &kv?.1))
            .transpose()
    }

    /// Creates or replaces a record. Durable on return.
    pub async fn put(&self, r: &R) -> Result<(), StoreError> {
        self.put_uncommitted(r)?;
        self.commit.commit().await
    }

    /// Creates or replaces a record without waiting for the flush (the caller commits, and
    /// answers only after).
    pub fn put_uncommitted(&self, r: &R) -> Result<(), StoreError> {
        self.tree.insert(r.key(), encode(r))
    }

    /// Creates or replaces the record at `key` from the one there (None: none yet), read and
    /// written in one transaction, so two writers never both build on the same old record
    /// (a version counted twice, a creation time lost). Returns what was written. Durable on
    /// return.
    pub async fn upsert(
        &self,
        key: impl AsRef<[u8]>,
        mut make: impl FnMut(Option<R>) -> R,
    ) -> Result<R, StoreError> {
        let key = key.as_ref();
        let new = transact(self.tree.engine(), &[&self.tree], |tx| {
            let old = match tx.get(&self.tree, key)? {
                Some(v) => Some(decode::<R>(R::TREE, &v)?),
                None => None,
            };
            let new = make(old);
            tx.insert(&self.tree, key, encode(&new))?;
            Ok(new)
        })?;
        self.commit.commit().await?;
        Ok(new)
    }

    /// Changes the record at `key` in one transaction (read, `change`, write): Ok(None) if
    /// there is none, Err if `change` refused (nothing written). Durable on return.
    pub async fn update<E>(
        &self,
        key: impl AsRef<[u8]>,
        mut change: impl FnMut(&mut R) -> Result<(), E>,
    ) -> Result<Result<Option<R>, E>, StoreError> {
        let key = key.as_ref();
        let mut refused = None;
        let out = transact(self.tree.engine(), &[&self.tree], |tx| {
            let Some(v) = tx.get(&self.tree, key)? else {
                return Ok(None);
            };
            let mut r: R = decode(R::TREE, &v)?;
            if let Err(e) = change(&mut r) {
                refused = Some(e);
                return Err(TxError::Abort(StoreError::Rejected(String::new())));
            }
            tx.insert(&self.tree, key, encode(&r))?;
            Ok(Some(r))
        });
        if let Some(e) = refused {
            return Ok(Err(e));
        }
        let out = out?;
        if out.is_some() {
            self.commit.commit().await?;
        }
        Ok(Ok(out))
    }

    /// Changes the records at `keys` in one transaction, one flush: Ok(Err(key)) and nothing
    /// written if one of them is missing. Returns each record as written. Durable on return.
    pub async fn update_many(
        &self,
        keys: &[String],
        mut change: impl FnMut(&mut R),
    ) -> Result<Result<Vec<R>, String>, StoreError> {
        let mut missing = None;
        let out = transact(self.tree.engine(), &[&self.tree], |tx| {
            let mut out = Vec::with_capacity(keys.len());
            for key in keys {
                let Some(v) = tx.get(&self.tree, key.as_bytes())? else {
                    missing = Some(key.clone());
                    return Err(TxError::Abort(StoreError::Rejected(String::new())));
                };
                let mut r: R = decode(R::TREE, &v)?;
                change(&mut r);
                tx.insert(&self.tree, key.as_bytes(), encode(&r))?;
                out.push(r);
            }
            Ok(out)
        });
        if let Some(key) = missing {
            return Ok(Err(key));
        }
        let out = out?;
        self.commit.commit().await?;
        Ok(Ok(out))
    }

    /// Removes a record; returns what it was. Durable on return.
    pub async fn delete(&self, key: impl AsRef<[u8]>) -> Result<Option<R>, StoreError> {
        let old = self.remove(key)?;
        self.commit.commit().await?;
        Ok(old)
    }

    /// Removes a record without waiting for the flush (the caller commits).
    pub(super) fn remove(&self, key: impl AsRef<[u8]>) -> Result<Option<R>, StoreError> {
        self.tree
            .remove(key)?
            .map(|v| decode(R::TREE, &v))
            .transpose()
    }

    /// The tree, for a transaction over several tables.
    pub(super) fn tree(&self) -> &Tree {
        &self.tree
    }

    pub fn len(&self) -> usize {
        self.tree.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tree.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use crate::model::{DeliveryPolicy, Topic};
    use crate::store::Store;

    fn topic(name: &str) -> Topic {
        Topic {
            name: name.into(),
            description: String::new(),
            delivery: DeliveryPolicy::default(),
            dead_letter_queue: String::new(),
            created_ms: 0,
            updated_ms: 0,
        }
    }

    #[tokio::test]
    async fn a_table_reads_lists_and_deletes_what_was_put_and_keeps_it_across_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        for n in ["b", "a", "ab"] {
            store.topics.put(&topic(n)).await.unwrap();
        }
        let names = |v: Vec<Topic>| v.into_iter().map(|t| t.name).collect::<Vec<_>>();
        assert_eq!(names(store.topics.list().unwrap()), ["a", "ab", "b"]);
        assert_eq!(names(store.topics.list_prefix("a").unwrap()), ["a", "ab"]);
        assert_eq!(
            store.topics.last_with_prefix("a").unwrap().unwrap().name,
            "ab"
        );
        assert_eq!(store.topics.delete("a").await.unwrap().unwrap().name, "a");
        assert!(store.topics.delete("a").await.unwrap().is_none());
        assert!(store.topics.get("a").unwrap().is_none());
        drop(store);
        // The dropped store's flusher thread lets go of the files shortly.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let store = loop {
            match Store::open(dir.path()) {
                Ok(s) => break s,
                Err(e) if std::time::Instant::now() > deadline => panic!("reopening: {e}"),
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
            }
        };
        assert_eq!(names(store.topics.list().unwrap()), ["ab", "b"]);
        assert_eq!(store.topics.len(), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn upserts_and_updates_read_and_write_in_one_transaction() {
        use crate::model::SealedSecret;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        // Twenty writers at once, each counting a version up from the one it read: none is
        // lost, none counted twice.
        let writes = (0..20).map(|_| {
            let store = store.clone();
            tokio::spawn(async move {
                store
                    .secrets
                    .upsert("s", |old| SealedSecret {
                        name: "s".into(),
                        version: old.map_or(1, |o| o.version + 1),
                        nonce: vec![],
                        ciphertext: vec![],
                        size: 0,
                        created_ms: 0,
                        updated_ms: 0,
                    })
                    .await
            })
        });
        let mut versions: Vec<u32> = futures::future::join_all(writes)
            .await
            .into_iter()
            .map(|r| r.unwrap().unwrap().version)
            .collect();
        versions.sort();
        assert_eq!(versions, (1..=20).collect::<Vec<u32>>());
        // A refused change writes nothing; a missing record is None.
        let refused = store
            .secrets
            .update("s", |s| {
                s.size = 99;
                Err("no")
            })
            .await
            .unwrap();
        assert!(matches!(refused, Err("no")));
        assert_eq!(store.secrets.get("s").unwrap().unwrap().size, 0);
        let missing = store
            .secrets
            .update("t", |_| Ok::<(), ()>(()))
            .await
            .unwrap();
        assert!(matches!(missing, Ok(None)));
        let changed = store
            .secrets
            .update("s", |s| {
                s.size = 7;
                Ok::<(), ()>(())
            })
            .await
            .unwrap();
        assert_eq!(changed.unwrap().unwrap().size, 7);
        assert_eq!(store.secrets.get("s").unwrap().unwrap().size, 7);
    }
}
