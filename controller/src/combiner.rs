//! Flat combining: many callers queue work, and whichever caller holds the turn applies
//! everything queued so far in one go. Agent sessions use it for their task reports, so the
//! reports of a thousand nodes that arrive together share one transaction and one flush
//! instead of paying one each — with no background task to start, stop or outlive its core.

use std::sync::Mutex;

use tokio::sync::oneshot;

/// Work of type `T` queued by callers that wait until it has been applied.
pub struct Combiner<T> {
    queued: Mutex<Vec<(T, oneshot::Sender<()>)>>,
    /// Held by the caller applying a batch; the next holder takes what queued meanwhile.
    turn: tokio::sync::Mutex<()>,
}

impl<T> Default for Combiner<T> {
    fn default() -> Self {
        Combiner {
            queued: Mutex::new(Vec::new()),
            turn: tokio::sync::Mutex::new(()),
        }
    }
}

impl<T> Combiner<T> {
    /// Queues `work` and returns once it has been applied — by this caller, together with
    /// whatever else is queued, or by the caller whose turn it was. `apply` gets the whole
    /// batch, in the order it was queued. Work whose applier was cancelled is dropped
    /// unapplied, as it would be had its own caller been cancelled.
    pub async fn run<F, Fut>(&self, work: T, apply: F)
    where
        F: FnOnce(Vec<T>) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let (done, mut applied) = oneshot::channel();
        self.queued
            .lock()
            .expect("combiner queue lock")
            .push((work, done));
        let mut apply = Some(apply);
        loop {
            let turn = tokio::select! {
                biased;
                _ = &mut applied => return,
                turn = self.turn.lock() => turn,
            };
            let batch = std::mem::take(&mut *self.queued.lock().expect("combiner queue lock"));
            if batch.is_empty() {
                // Ours went with a batch applied before this turn: its answer is in.
                drop(turn);
                continue;
            }
            let (work, dones): (Vec<T>, Vec<_>) = batch.into_iter().unzip();
            (apply
                .take()
                .expect("a caller applies at most once: its own work is in"))(work)
            .await;
            for done in dones {
                let _ = done.send(());
            }
            drop(turn);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    /// Every item is applied exactly once, each caller returns only after its own item was
    /// applied, and items queued while a batch is applied go together in the next one.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_item_once_and_batched_while_busy() {
        let combiner = Arc::new(Combiner::<usize>::default());
        let applied = Arc::new(Mutex::new(Vec::<Vec<usize>>::new()));
        let calls = Arc::new(AtomicUsize::new(0));
        let mut callers = Vec::new();
        for i in 0..200 {
            let (combiner, applied, calls) = (combiner.clone(), applied.clone(), calls.clone());
            callers.push(tokio::spawn(async move {
                let into = applied.clone();
                combiner
                    .run(i, |batch| async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        // Slow enough that others queue meanwhile.
                        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
                        into.lock().unwrap().push(batch);
                    })
                    .await;
                assert!(
                    applied.lock().unwrap().iter().flatten().any(|&x| x == i),
                    "caller {i} returned before its item was applied"
                );
            }));
        }
        for c in callers {
            c.await.unwrap();
        }
        let mut all: Vec<usize> = applied.lock().unwrap().iter().flatten().copied().collect();
        all.sort();
        assert_eq!(all, (0..200).collect::<Vec<_>>());
        let batches = calls.load(Ordering::SeqCst);
        assert!(
            batches < 200,
            "no batch held more than one item ({batches} batches)"
        );
    }
}
