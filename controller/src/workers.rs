//! The background loops' runtime: one runner starts every loop, knows whether each is
//! running, and stops them with a deadline. A loop is an `async fn run(core, stop)` that
//! checks `stop` between passes and returns when it turns true; one that does not return by
//! the deadline is aborted (the store's crash safety covers a pass cut short). A loop that
//! panics is reported `failed` (GET /healthz answers 503), never silently gone.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{error, warn};

use crate::core::Core;
pub use crate::worker_state::{WorkerState, WorkerStates};

/// The running loops.
pub struct Workers {
    core: Arc<Core>,
    stop: watch::Sender<bool>,
    handles: Vec<(&'static str, JoinHandle<()>)>,
}

impl Workers {
    /// Starts every background loop of the controller.
    pub fn start(core: &Arc<Core>) -> Workers {
        let mut w = Workers {
            core: core.clone(),
            stop: watch::channel(false).0,
            handles: Vec::new(),
        };
        w.spawn("placer", crate::placer::run);
        w.spawn("rules", crate::bus::run);
        w.spawn("watchers", crate::watcher::run);
        w.spawn("schedules", crate::schedules::run);
        w.spawn("notifications", crate::notify::run);
        w.spawn("queue-retention", crate::queues::run);
        w.spawn("task-history", crate::history::run);
        w.spawn("services", crate::service_loop::run);
        w.spawn("redis-backlog", crate::backlog_poller::run);
        w
    }

    fn spawn<F, Fut>(&mut self, name: &'static str, run: F)
    where
        F: FnOnce(Arc<Core>, watch::Receiver<bool>) -> Fut,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let core = self.core.clone();
        let stop = self.stop.subscribe();
        let body = run(core.clone(), stop.clone());
        core.workers.set(name, WorkerState::Running);
        let handle = tokio::spawn(async move {
            let outcome = std::panic::AssertUnwindSafe(body).catch_unwind().await;
            let state = match outcome {
                Ok(()) if *stop.borrow() => WorkerState::Stopped,
                Ok(()) => {
                    error!(worker = name, "a background loop returned on its own");
                    WorkerState::Failed
                }
                Err(_) => {
                    error!(worker = name, "a background loop panicked");
                    WorkerState::Failed
                }
            };
            core.workers.set(name, state);
        });
        self.handles.push((name, handle));
    }

    /// Asks every loop to stop after its current pass and waits up to `deadline` for them;
    /// aborts the ones still going. Returns their names.
    pub async fn stop(self, deadline: Duration) -> Vec<&'static str> {
        let mut handles = self.handles;
        let _ = self.stop.send(true);
        let all = futures::future::join_all(handles.iter_mut().map(|(_, h)| h));
        let _ = tokio::time::timeout(deadline, all).await;
        let mut aborted = Vec::new();
        for (name, handle) in handles {
            if !handle.is_finished() {
                warn!(worker = name, "did not stop in time; aborted");
                handle.abort();
                self.core.workers.set(name, WorkerState::Stopped);
                aborted.push(name);
            }
        }
        aborted
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn core(dir: &std::path::Path) -> Arc<Core> {
        Arc::new(Core::new(
            crate::store::Store::open(&dir.join("store")).unwrap(),
            crate::core::NodeTiming::default(),
            crate::clock::Clock::manual(0),
            crate::sealing::SecretBox::open(dir).unwrap(),
            crate::task_tokens::TaskTokenKey::open(dir).unwrap(),
        ))
    }

    async fn polite(_: Arc<Core>, mut stop: watch::Receiver<bool>) {
        let _ = stop.wait_for(|s| *s).await;
    }

    async fn deaf(_: Arc<Core>, _: watch::Receiver<bool>) {
        std::future::pending::<()>().await;
    }

    async fn broken(_: Arc<Core>, _: watch::Receiver<bool>) {
        panic!("a bug in a loop");
    }

    #[tokio::test]
    async fn a_panicking_loop_is_reported_failed_and_stop_aborts_one_that_does_not_listen() {
        let dir = tempfile::tempdir().unwrap();
        let core = core(dir.path());
        let mut w = Workers {
            core: core.clone(),
            stop: watch::channel(false).0,
            handles: Vec::new(),
        };
        w.spawn("polite", polite);
        w.spawn("deaf", deaf);
        w.spawn("broken", broken);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while core.workers.all()["broken"] != WorkerState::Failed {
            assert!(
                std::time::Instant::now() < deadline,
                "{:?}",
                core.workers.all()
            );
            tokio::task::yield_now().await;
        }
        assert!(!core.workers.healthy());
        assert_eq!(core.workers.all()["polite"], WorkerState::Running);
        let aborted = w.stop(Duration::from_millis(200)).await;
        assert_eq!(aborted, ["deaf"]);
        let states = core.workers.all();
        assert_eq!(
            (states["polite"], states["deaf"], states["broken"]),
            (
                WorkerState::Stopped,
                WorkerState::Stopped,
                WorkerState::Failed
            )
        );
    }
}
