//! The storage seam: what the store needs from a key-value engine. Named, ordered trees of
//! byte keys and values; atomic transactions over several trees; one flush that makes every
//! earlier write durable. `sled_engine.rs` implements it over sled (the only file that knows
//! sled); `memory_engine.rs` over maps in memory, which the store's tests run on too — so a
//! replicated engine can take sled's place by implementing this trait, without touching the
//! store's callers or its methods.

use std::any::Any;
use std::ops::Bound;

use super::StoreError;

/// A tree's handle, from `Engine::open_tree`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TreeId(pub usize);

/// One key and its value.
pub type Entry = (Vec<u8>, Vec<u8>);

/// Entries in key order (reversible), as an engine reads them.
pub type Entries<'a> = Box<dyn DoubleEndedIterator<Item = Result<Entry, StoreError>> + Send + 'a>;

/// What a single-key update makes of the value there (None: no value; returning None
/// removes it).
pub type Change<'a> = dyn FnMut(Option<&[u8]>) -> Option<Vec<u8>> + 'a;

/// Why a transaction's body stopped.
pub enum TxError {
    /// The body gave up with this error: nothing it wrote is kept.
    Abort(StoreError),
    /// The engine's own signal (a conflict to retry, a storage failure), carried back to it
    /// through the body untouched.
    Engine(Box<dyn Any + Send>),
}

impl From<StoreError> for TxError {
    fn from(e: StoreError) -> TxError {
        TxError::Abort(e)
    }
}

/// The trees of one transaction as its body sees them: its own writes included.
pub trait TxTrees {
    fn get(&self, tree: TreeId, key: &[u8]) -> Result<Option<Vec<u8>>, TxError>;
    fn insert(&self, tree: TreeId, key: &[u8], value: &[u8]) -> Result<(), TxError>;
    fn remove(&self, tree: TreeId, key: &[u8]) -> Result<Option<Vec<u8>>, TxError>;
}

/// A transaction's body. It may run more than once (an engine retries a conflict), so it
/// must do nothing but read and write through `TxTrees` and set what it returns.
pub type TxBody<'a> = dyn FnMut(&dyn TxTrees) -> Result<(), TxError> + 'a;

/// An ordered key-value engine with multi-tree transactions.
pub trait Engine: Send + Sync {
    /// Opens a tree by name, creating it empty the first time.
    fn open_tree(&self, name: &str) -> Result<TreeId, StoreError>;
    fn get(&self, tree: TreeId, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    fn insert(&self, tree: TreeId, key: &[u8], value: &[u8]) -> Result<(), StoreError>;
    /// Removes a key; returns its value.
    fn remove(&self, tree: TreeId, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// Entries with keys within the bounds, in key order.
    fn range(&self, tree: TreeId, from: Bound<Vec<u8>>, to: Bound<Vec<u8>>) -> Entries<'_>;
    fn len(&self, tree: TreeId) -> usize;
    fn clear(&self, tree: TreeId) -> Result<(), StoreError>;
    /// Replaces one key's value with what `change` makes of it (None removes), atomically
    /// against other writers of that key and without a transaction's cost (`change` may run
    /// more than once).
    fn update(&self, tree: TreeId, key: &[u8], change: &mut Change<'_>) -> Result<(), StoreError>;
    /// Writes several entries of one tree atomically (None removes).
    fn apply(
        &self,
        tree: TreeId,
        writes: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    ) -> Result<(), StoreError>;
    /// Runs `body` over `trees` atomically and in isolation: all its writes or none.
    fn transact(&self, trees: &[TreeId], body: &mut TxBody<'_>) -> Result<(), StoreError>;
    /// Makes every write that returned before this call durable.
    fn flush(&self) -> Result<(), StoreError>;
    /// Bytes on disk, for diagnostics (0 if the engine keeps none).
    fn size_on_disk(&self) -> u64;
}
