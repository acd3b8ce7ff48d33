//! Per queue: the lock its message changes are made under (a receive, a delete, a change of
//! visibility — one writer per queue, so a message is never handed to two receivers), and the
//! signal a long-polling receive waits on (a message sent, or made visible again).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

#[derive(Default)]
pub struct QueueWaits {
    queues: Mutex<HashMap<String, Arc<Waits>>>,
}

/// One queue's lock and arrival signal.
#[derive(Default)]
pub struct Waits {
    pub lock: tokio::sync::Mutex<()>,
    pub arrived: Notify,
    /// Receives waiting now (looked, found nothing, wait for a message or their deadline).
    pub waiting: AtomicUsize,
}

impl QueueWaits {
    pub fn of(&self, queue: &str) -> Arc<Waits> {
        self.queues
            .lock()
            .unwrap()
            .entry(queue.to_string())
            .or_default()
            .clone()
    }

    /// Wakes every receive waiting on `queue`.
    pub fn arrived(&self, queue: &str) {
        self.of(queue).arrived.notify_waiters();
    }

    /// How many receives are waiting on `queue` now.
    pub fn waiting(&self, queue: &str) -> usize {
        self.of(queue).waiting.load(Ordering::SeqCst)
    }

    /// Forgets a deleted queue's entry.
    pub fn forget(&self, queue: &str) {
        self.queues.lock().unwrap().remove(queue);
    }
}
