//! Whether each background loop is running: kept on `Core` (the HTTP listener reports it),
//! written by the runner in `workers.rs`. A leaf, so that `core` need not import the runner.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// Where a loop stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkerState {
    Running,
    /// Returned after a stop request.
    Stopped,
    /// Panicked or returned on its own: its work is not being done.
    Failed,
}

/// Every loop's state, by name (kept on `Core` so the HTTP listener can report it).
#[derive(Default)]
pub struct WorkerStates(Mutex<BTreeMap<&'static str, WorkerState>>);

impl WorkerStates {
    pub(crate) fn set(&self, name: &'static str, state: WorkerState) {
        self.0.lock().expect("worker states").insert(name, state);
    }

    pub fn all(&self) -> BTreeMap<&'static str, WorkerState> {
        self.0.lock().expect("worker states").clone()
    }

    /// Whether every loop that was started is still running.
    pub fn healthy(&self) -> bool {
        self.all().values().all(|s| *s == WorkerState::Running)
    }
}
