//! `Engine` over ordered maps in memory: a second engine behind the seam, on which the
//! store's own tests run too. Nothing is kept across a restart (`flush` has nothing to do),
//! so it is for tests, not for a controller's data. A transaction holds the one lock for its
//! whole body and applies its writes at the end: serial, so it never conflicts.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::{Mutex, MutexGuard};

use super::engine::{Change, Engine, Entries, TreeId, TxBody, TxError, TxTrees};
use super::StoreError;

#[derive(Default)]
pub struct MemoryEngine {
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    names: HashMap<String, TreeId>,
    trees: Vec<BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl MemoryEngine {
    pub fn new() -> MemoryEngine {
        MemoryEngine::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves no half-applied write (writes are applied
        // after the body returns), so the state is still whole.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Engine for MemoryEngine {
    fn open_tree(&self, name: &str) -> Result<TreeId, StoreError> {
        let mut s = self.state();
        if let Some(id) = s.names.get(name) {
            return Ok(*id);
        }
        let id = TreeId(s.trees.len());
        s.trees.push(BTreeMap::new());
        s.names.insert(name.to_string(), id);
        Ok(id)
    }

    fn get(&self, tree: TreeId, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.state().trees[tree.0].get(key).cloned())
    }

    fn insert(&self, tree: TreeId, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        self.state().trees[tree.0].insert(key.to_vec(), value.to_vec());
        Ok(())
    }

    fn remove(&self, tree: TreeId, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.state().trees[tree.0].remove(key))
    }

    fn range(&self, tree: TreeId, from: Bound<Vec<u8>>, to: Bound<Vec<u8>>) -> Entries<'_> {
        // A snapshot of the range: the lock is not held while the caller reads.
        let entries: Vec<_> = self.state().trees[tree.0]
            .range((from, to))
            .map(|(k, v)| Ok((k.clone(), v.clone())))
            .collect();
        Box::new(entries.into_iter())
    }

    fn update(&self, tree: TreeId, key: &[u8], change: &mut Change<'_>) -> Result<(), StoreError> {
        let mut s = self.state();
        let t = &mut s.trees[tree.0];
        match change(t.get(key).map(Vec::as_slice)) {
            Some(v) => t.insert(key.to_vec(), v),
            None => t.remove(key),
        };
        Ok(())
    }

    fn len(&self, tree: TreeId) -> usize {
        self.state().trees[tree.0].len()
    }

    fn clear(&self, tree: TreeId) -> Result<(), StoreError> {
        self.state().trees[tree.0].clear();
        Ok(())
    }

    fn apply(
        &self,
        tree: TreeId,
        writes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    ) -> Result<(), StoreError> {
        let mut s = self.state();
        for (k, v) in writes {
            match v {
                Some(v) => s.trees[tree.0].insert(k, v),
                None => s.trees[tree.0].remove(&k),
            };
        }
        Ok(())
    }

    fn transact(&self, trees: &[TreeId], body: &mut TxBody<'_>) -> Result<(), StoreError> {
        let mut state = self.state();
        let tx = MemoryTx {
            state: &state,
            trees,
            writes: RefCell::new(BTreeMap::new()),
        };
        match body(&tx) {
            Ok(()) => {}
            Err(TxError::Abort(e)) => return Err(e),
            Err(TxError::Engine(_)) => {
                return Err(StoreError::Engine(
                    "a transaction ended with another engine's error".into(),
                ))
            }
        }
        let writes = tx.writes.into_inner();
        for ((tree, key), value) in writes {
            match value {
                Some(v) => state.trees[tree.0].insert(key, v),
                None => state.trees[tree.0].remove(&key),
            };
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn size_on_disk(&self) -> u64 {
        0
    }
}

/// A transaction's pending writes: (tree, key) → the new value, None to remove.
type Writes = BTreeMap<(TreeId, Vec<u8>), Option<Vec<u8>>>;

/// A transaction's view: the state as it was, under its own pending writes.
struct MemoryTx<'a> {
    state: &'a State,
    trees: &'a [TreeId],
    writes: RefCell<Writes>,
}

impl MemoryTx<'_> {
    fn check(&self, tree: TreeId) -> Result<(), TxError> {
        if self.trees.contains(&tree) {
            Ok(())
        } else {
            Err(TxError::Abort(StoreError::Engine(format!(
                "tree {} is not part of this transaction",
                tree.0
            ))))
        }
    }
}

impl TxTrees for MemoryTx<'_> {
    fn get(&self, tree: TreeId, key: &[u8]) -> Result<Option<Vec<u8>>, TxError> {
        self.check(tree)?;
        if let Some(pending) = self.writes.borrow().get(&(tree, key.to_vec())) {
            return Ok(pending.clone());
        }
        Ok(self.state.trees[tree.0].get(key).cloned())
    }

    fn insert(&self, tree: TreeId, key: &[u8], value: &[u8]) -> Result<(), TxError> {
        self.check(tree)?;
        self.writes
            .borrow_mut()
            .insert((tree, key.to_vec()), Some(value.to_vec()));
        Ok(())
    }

    fn remove(&self, tree: TreeId, key: &[u8]) -> Result<Option<Vec<u8>>, TxError> {
        let old = self.get(tree, key)?;
        self.writes.borrow_mut().insert((tree, key.to_vec()), None);
        Ok(old)
    }
}
