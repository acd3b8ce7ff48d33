//! One generic table: a tree of one record type, keyed by what the record says. A resource is
//! a `Record` impl (its tree's name and its key) and a `Table<R>` field on `Store`; reading,
//! listing, writing and deleting come from here, each write durable on return. Writes that
//! must go together with others (indexes, events, cascades) stay `Store` methods that use
//! `tree()` inside one transaction.

use std::marker::PhantomData;

use serde::{de::DeserializeOwned, Serialize};

use std::sync::Arc;

use super::engine::Engine;
use super::tree::Tree;
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
        self.tree.insert(r.key(), encode(r))?;
        self.commit.commit().await
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
}
