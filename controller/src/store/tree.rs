//! A tree as the store's methods use it: an engine and a tree handle, with the reads and
//! writes of `Engine` keyed by anything byte-like, and `Tx`, the same inside a transaction.

use std::ops::Bound;
use std::sync::Arc;

use super::engine::{Engine, Entries, TreeId, TxError, TxTrees};
use super::StoreError;

/// One named tree of the store's engine.
#[derive(Clone)]
pub(crate) struct Tree {
    engine: Arc<dyn Engine>,
    id: TreeId,
}

impl Tree {
    pub(crate) fn open(engine: &Arc<dyn Engine>, name: &str) -> Result<Tree, StoreError> {
        Ok(Tree {
            engine: engine.clone(),
            id: engine.open_tree(name)?,
        })
    }

    /// The engine the tree lives in (for a transaction over it).
    pub(crate) fn engine(&self) -> &dyn Engine {
        self.engine.as_ref()
    }

    pub(crate) fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<Vec<u8>>, StoreError> {
        self.engine.get(self.id, key.as_ref())
    }

    pub(crate) fn insert(
        &self,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
    ) -> Result<(), StoreError> {
        self.engine.insert(self.id, key.as_ref(), value.as_ref())
    }

    pub(crate) fn remove(&self, key: impl AsRef<[u8]>) -> Result<Option<Vec<u8>>, StoreError> {
        self.engine.remove(self.id, key.as_ref())
    }

    /// Every entry, in key order.
    pub(crate) fn iter(&self) -> Entries<'_> {
        self.engine
            .range(self.id, Bound::Unbounded, Bound::Unbounded)
    }

    pub(crate) fn range(&self, from: Bound<Vec<u8>>, to: Bound<Vec<u8>>) -> Entries<'_> {
        self.engine.range(self.id, from, to)
    }

    /// The entries whose keys start with `prefix`, in key order.
    pub(crate) fn scan_prefix(&self, prefix: impl AsRef<[u8]>) -> Entries<'_> {
        let prefix = prefix.as_ref().to_vec();
        let end = prefix_end(&prefix);
        self.engine.range(self.id, Bound::Included(prefix), end)
    }

    /// Replaces one key's value with what `change` makes of it (see `Engine::update`).
    pub(crate) fn update(
        &self,
        key: impl AsRef<[u8]>,
        mut change: impl FnMut(Option<&[u8]>) -> Option<Vec<u8>>,
    ) -> Result<(), StoreError> {
        self.engine.update(self.id, key.as_ref(), &mut change)
    }

    /// Writes several entries atomically (None removes).
    pub(crate) fn apply(&self, writes: Vec<(Vec<u8>, Option<Vec<u8>>)>) -> Result<(), StoreError> {
        self.engine.apply(self.id, writes)
    }

    pub(crate) fn len(&self) -> usize {
        self.engine.len(self.id)
    }

    pub(crate) fn clear(&self) -> Result<(), StoreError> {
        self.engine.clear(self.id)
    }
}

/// The first key after every key that starts with `prefix`.
pub(crate) fn prefix_end(prefix: &[u8]) -> Bound<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < u8::MAX {
            end.push(last + 1);
            return Bound::Excluded(end);
        }
    }
    Bound::Unbounded
}

/// The trees of a running transaction, read and written by their `Tree` handles.
pub(crate) struct Tx<'a> {
    trees: &'a dyn TxTrees,
}

impl Tx<'_> {
    pub(crate) fn get(
        &self,
        tree: &Tree,
        key: impl AsRef<[u8]>,
    ) -> Result<Option<Vec<u8>>, TxError> {
        self.trees.get(tree.id, key.as_ref())
    }

    pub(crate) fn insert(
        &self,
        tree: &Tree,
        key: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
    ) -> Result<(), TxError> {
        self.trees.insert(tree.id, key.as_ref(), value.as_ref())
    }

    pub(crate) fn remove(&self, tree: &Tree, key: impl AsRef<[u8]>) -> Result<(), TxError> {
        self.trees.remove(tree.id, key.as_ref()).map(|_| ())
    }
}

/// Runs `body` over `trees` in one transaction of `engine` and returns what it returned.
/// The body may run more than once (see `TxBody`).
pub(crate) fn transact<R>(
    engine: &dyn Engine,
    trees: &[&Tree],
    mut body: impl FnMut(&Tx<'_>) -> Result<R, TxError>,
) -> Result<R, StoreError> {
    let ids: Vec<TreeId> = trees.iter().map(|t| t.id).collect();
    let mut out = None;
    engine.transact(&ids, &mut |trees| {
        out = Some(body(&Tx { trees })?);
        Ok(())
    })?;
    Ok(out.expect("a transaction that committed ran its body"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prefix_ends_after_its_last_byte_that_can_grow() {
        assert_eq!(prefix_end(b"ab"), Bound::Excluded(b"ac".to_vec()));
        assert_eq!(prefix_end(b"a\xff"), Bound::Excluded(b"b".to_vec()));
        assert_eq!(prefix_end(b"\xff\xff"), Bound::Unbounded);
        assert_eq!(prefix_end(b""), Bound::Unbounded);
    }
}
