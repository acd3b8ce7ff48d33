//! `Engine` over sled: the one file that knows sled. A tree handle is an index into the
//! trees opened so far; a transaction is sled's multi-tree transaction, whose conflicts sled
//! retries (the body's engine errors carry sled's own signal back to it).

use std::cell::RefCell;
use std::ops::Bound;
use std::sync::{Mutex, OnceLock};

use sled::transaction::{
    ConflictableTransactionError, TransactionError, TransactionalTree, UnabortableTransactionError,
};
use sled::Transactional;

use super::engine::{Change, Engine, Entries, TreeId, TxBody, TxError, TxTrees};
use super::StoreError;

/// How many trees one engine can open (the store opens about thirty).
const MAX_TREES: usize = 128;

/// A sled database and the trees opened in it.
pub struct SledEngine {
    db: sled::Db,
    /// Set once each, in open order: read on every operation without a lock.
    trees: Box<[OnceLock<sled::Tree>]>,
    opened: Mutex<usize>,
}

impl SledEngine {
    pub fn open(path: &std::path::Path) -> Result<SledEngine, StoreError> {
        Ok(SledEngine {
            db: sled::Config::new().path(path).open().map_err(engine)?,
            trees: (0..MAX_TREES).map(|_| OnceLock::new()).collect(),
            opened: Mutex::new(0),
        })
    }

    fn tree(&self, id: TreeId) -> &sled::Tree {
        self.trees[id.0].get().expect("a tree id from open_tree")
    }
}

fn engine(e: sled::Error) -> StoreError {
    StoreError::Engine(e.to_string())
}

impl Engine for SledEngine {
    fn open_tree(&self, name: &str) -> Result<TreeId, StoreError> {
        let tree = self.db.open_tree(name).map_err(engine)?;
        let mut opened = self.opened.lock().expect("tree count lock");
        if *opened == MAX_TREES {
            return Err(StoreError::Engine(format!(
                "more than {MAX_TREES} trees opened"
            )));
        }
        let id = TreeId(*opened);
        let _ = self.trees[id.0].set(tree);
        *opened += 1;
        Ok(id)
    }

    fn get(&self, tree: TreeId, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .tree(tree)
            .get(key)
            .map_err(engine)?
            .map(|v| v.to_vec()))
    }

    fn insert(&self, tree: TreeId, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.tree(tree).insert(key, value).map_err(engine)?;
        Ok(())
    }

    fn remove(&self, tree: TreeId, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self
            .tree(tree)
            .remove(key)
            .map_err(engine)?
            .map(|v| v.to_vec()))
    }

    fn range(&self, tree: TreeId, from: Bound<Vec<u8>>, to: Bound<Vec<u8>>) -> Entries<'_> {
        Box::new(
            self.tree(tree)
                .range((from, to))
                .map(|kv| kv.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(engine)),
        )
    }

    fn update(&self, tree: TreeId, key: &[u8], change: &mut Change<'_>) -> Result<(), StoreError> {
        self.tree(tree)
            .update_and_fetch(key, change)
            .map_err(engine)?;
        Ok(())
    }

    fn len(&self, tree: TreeId) -> usize {
        self.tree(tree).len()
    }

    fn clear(&self, tree: TreeId) -> Result<(), StoreError> {
        self.tree(tree).clear().map_err(engine)
    }

    fn apply(
        &self,
        tree: TreeId,
        writes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    ) -> Result<(), StoreError> {
        let mut batch = sled::Batch::default();
        for (k, v) in writes {
            match v {
                Some(v) => batch.insert(k, v),
                None => batch.remove(k),
            }
        }
        self.tree(tree).apply_batch(batch).map_err(engine)
    }

    fn transact(&self, trees: &[TreeId], body: &mut TxBody<'_>) -> Result<(), StoreError> {
        let sled_trees: Vec<&sled::Tree> = trees.iter().map(|id| self.tree(*id)).collect();
        // sled may run the body again after a conflict; it never runs two at once.
        let body = RefCell::new(body);
        let result = sled_trees[..].transaction(|views: &Vec<TransactionalTree>| {
            let view = SledTx { ids: trees, views };
            match (body.borrow_mut())(&view) {
                Ok(()) => Ok(()),
                Err(TxError::Abort(e)) => Err(ConflictableTransactionError::Abort(e)),
                Err(TxError::Engine(signal)) => {
                    match signal.downcast::<UnabortableTransactionError>() {
                        Ok(s) => Err((*s).into()),
                        Err(_) => Err(ConflictableTransactionError::Abort(StoreError::Engine(
                            "a transaction ended with another engine's error".into(),
                        ))),
                    }
                }
            }
        });
        match result {
            Ok(()) => Ok(()),
            Err(TransactionError::Abort(e)) => Err(e),
            Err(TransactionError::Storage(e)) => Err(engine(e)),
        }
    }

    fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map(|_| ()).map_err(engine)
    }

    fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }
}

/// A sled transaction's trees, found by the handles the body names.
struct SledTx<'a> {
    ids: &'a [TreeId],
    views: &'a [TransactionalTree],
}

impl SledTx<'_> {
    fn view(&self, tree: TreeId) -> Result<&TransactionalTree, TxError> {
        let i = self.ids.iter().position(|id| *id == tree).ok_or_else(|| {
            TxError::Abort(StoreError::Engine(format!(
                "tree {} is not part of this transaction",
                tree.0
            )))
        })?;
        Ok(&self.views[i])
    }
}

fn signal(e: UnabortableTransactionError) -> TxError {
    TxError::Engine(Box::new(e))
}

impl TxTrees for SledTx<'_> {
    fn get(&self, tree: TreeId, key: &[u8]) -> Result<Option<Vec<u8>>, TxError> {
        Ok(self
            .view(tree)?
            .get(key)
            .map_err(signal)?
            .map(|v| v.to_vec()))
    }

    fn insert(&self, tree: TreeId, key: &[u8], value: &[u8]) -> Result<(), TxError> {
        self.view(tree)?.insert(key, value).map_err(signal)?;
        Ok(())
    }

    fn remove(&self, tree: TreeId, key: &[u8]) -> Result<Option<Vec<u8>>, TxError> {
        Ok(self
            .view(tree)?
            .remove(key)
            .map_err(signal)?
            .map(|v| v.to_vec()))
    }
}
