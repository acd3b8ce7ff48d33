//! Where the controller reads the time and waits for it. Production uses the system clock;
//! component tests use a manual clock that moves only when the test advances it, so heartbeat
//! timeouts, retry backoffs, schedule catch-up and notification retries run deterministically,
//! in milliseconds of real time. Every loop sleeps through its `Clock`, never `tokio::time`
//! directly (checked by `controller/tests/layering.rs`).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

/// A clock: the system's, or a manual one shared by a test and the controller it drives.
#[derive(Clone, Default)]
pub struct Clock {
    manual: Option<Arc<watch::Sender<i64>>>,
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.manual {
            None => f.write_str("Clock::system"),
            Some(t) => write!(f, "Clock::manual({})", *t.borrow()),
        }
    }
}

impl Clock {
    /// The system clock (wall time for records, a monotonic clock for silences).
    pub fn system() -> Clock {
        Clock { manual: None }
    }

    /// A clock that reads `start_ms` until `advance` moves it.
    pub fn manual(start_ms: i64) -> Clock {
        Clock {
            manual: Some(Arc::new(watch::channel(start_ms).0)),
        }
    }

    /// Milliseconds since the epoch.
    pub fn now_ms(&self) -> i64 {
        match &self.manual {
            None => chrono::Utc::now().timestamp_millis(),
            Some(t) => *t.borrow(),
        }
    }

    /// The wall clock the store stamps event ids with (their ULIDs), whichever clock the
    /// controller runs on: an event's age in the log is measured against it.
    pub fn wall_ms() -> i64 {
        chrono::Utc::now().timestamp_millis()
    }

    /// Milliseconds on a clock that never goes back (the system's monotonic clock, or the
    /// manual time): what silences and timeouts are measured with.
    pub fn monotonic_ms(&self) -> i64 {
        match &self.manual {
            None => {
                static ORIGIN: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
                ORIGIN
                    .get_or_init(std::time::Instant::now)
                    .elapsed()
                    .as_millis() as i64
            }
            Some(t) => *t.borrow(),
        }
    }

    /// Waits for `d` to pass on this clock, counted from this call (as `tokio::time::sleep`).
    pub fn sleep(&self, d: Duration) -> impl std::future::Future<Output = ()> + Send + 'static {
        self.sleep_until(self.now_ms().saturating_add(d.as_millis() as i64))
    }

    /// Waits `d` of real time, whatever this clock is: a watchdog on a connection's liveness
    /// (its peer's messages come in real time, also in tests that move a manual clock).
    pub fn real_sleep(d: Duration) -> impl std::future::Future<Output = ()> + Send + 'static {
        tokio::time::sleep(d)
    }

    /// Waits until this clock reads `until_ms`. Loops sleep to a moment computed before their
    /// pass, not for a span after it: time that passed during the pass is not waited twice.
    pub fn sleep_until(
        &self,
        until: i64,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        use futures::future::Either;
        match &self.manual {
            None => {
                let ms = until.saturating_sub(self.now_ms()).max(0) as u64;
                Either::Left(tokio::time::sleep(Duration::from_millis(ms)))
            }
            Some(t) => {
                let mut rx = t.subscribe();
                Either::Right(async move {
                    // A clock that can no longer move (its last holder dropped) never wakes.
                    if rx.wait_for(|now| *now >= until).await.is_err() {
                        std::future::pending::<()>().await;
                    }
                })
            }
        }
    }

    /// Moves a manual clock forward and wakes every sleeper whose time has come.
    ///
    /// # Panics
    /// On the system clock: only tests advance time.
    pub fn advance(&self, d: Duration) {
        let t = self
            .manual
            .as_ref()
            .expect("only a manual clock can be advanced");
        t.send_modify(|now| *now += d.as_millis() as i64);
    }

    /// Whether this is a manual clock.
    pub fn is_manual(&self) -> bool {
        self.manual.is_some()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_manual_sleep_ends_when_the_clock_is_advanced_past_it() {
        let clock = Clock::manual(1_000);
        let sleeper = tokio::spawn(clock.sleep(Duration::from_secs(10)));
        clock.advance(Duration::from_secs(9));
        tokio::task::yield_now().await;
        assert!(!sleeper.is_finished(), "9 s of a 10 s sleep");
        clock.advance(Duration::from_secs(1));
        tokio::time::timeout(Duration::from_secs(5), sleeper)
            .await
            .expect("the sleep ended once 10 s had passed")
            .unwrap();
        assert_eq!(clock.now_ms(), 11_000);
        assert_eq!(clock.monotonic_ms(), 11_000);
    }

    #[test]
    fn the_system_clock_reads_wall_time() {
        let c = Clock::system();
        let wall = chrono::Utc::now().timestamp_millis();
        assert!((c.now_ms() - wall).abs() < 5_000);
        let a = c.monotonic_ms();
        assert!(c.monotonic_ms() >= a);
    }
}
