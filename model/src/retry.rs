//! Retrying, one decision for every kind of retried work — rule deliveries, schedule fires and
//! notifications: after a failed attempt, `Retry::after_failure` says when to try again or
//! why to give up (a dead letter), and `Backoff::delay_ms` is the wait. Pure: the time and
//! the random part of the jitter come in as arguments.

/// Exponential backoff between attempts: `min·2^(attempts−1)`, at most `max`; with jitter,
/// "equal jitter" (half of the wait fixed, half random) so many failing deliveries do not
/// retry in step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Backoff {
    pub min_ms: i64,
    pub max_ms: i64,
    pub jitter: bool,
}

impl Backoff {
    /// Rule deliveries and schedule fires: 1 s, 2 s, 4 s, … up to five minutes.
    pub const DELIVERIES: Backoff = Backoff {
        min_ms: 1000,
        max_ms: 5 * 60 * 1000,
        jitter: false,
    };

    /// The wait after `attempts` failures (1 = the first). `random` is any random number; it
    /// is used only with jitter.
    pub fn delay_ms(&self, attempts: u32, random: u64) -> i64 {
        let base = (self.min_ms.max(1) << attempts.saturating_sub(1).min(30))
            .min(self.max_ms)
            .max(1);
        if !self.jitter {
            return base;
        }
        let half = base / 2;
        half + (random % (base - half + 1) as u64) as i64
    }
}

/// What a kind of retried work allows: how many attempts in all, how old the work may get,
/// and the wait between attempts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retry {
    /// Attempts in all (the first included); at least one is always made.
    pub max_attempts: u32,
    /// Give up on work older than this (ms since it was due); None = no age limit.
    pub max_age_ms: Option<i64>,
    pub backoff: Backoff,
}

impl Retry {
    /// A rule target's or schedule's policy: EventBridge's attempts and event age, waiting
    /// 1 s doubling to 5 minutes.
    pub fn of_policy(p: &crate::model::RetryPolicy) -> Retry {
        Retry {
            max_attempts: p.max_attempts,
            max_age_ms: Some(i64::from(p.max_event_age_secs) * 1000),
            backoff: Backoff::DELIVERIES,
        }
    }

    /// A topic's delivery policy: its attempts and delays, with jitter; no age limit.
    pub fn of_delivery(p: &crate::model::DeliveryPolicy) -> Retry {
        Retry {
            max_attempts: p.max_attempts,
            max_age_ms: None,
            backoff: Backoff {
                min_ms: i64::from(p.min_delay_ms),
                max_ms: i64::from(p.max_delay_ms),
                jitter: true,
            },
        }
    }
}

/// After a failed attempt: when to try again, or why not.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Next {
    /// Try again at this time (ms since the epoch).
    At(i64),
    /// The attempts are used up: a dead letter.
    OutOfAttempts,
    /// The work is older than allowed: a dead letter.
    TooOld,
    /// The failure says trying again cannot help (a permanent error): a dead letter.
    Permanent,
}

impl Retry {
    /// The decision after `attempts` failed attempts (1 = the first) of work due at `due_ms`,
    /// at `now_ms`; `transient` is whether the failure may pass. `random` feeds the jitter.
    pub fn after_failure(
        &self,
        attempts: u32,
        due_ms: i64,
        now_ms: i64,
        transient: bool,
        random: u64,
    ) -> Next {
        if !transient {
            Next::Permanent
        } else if attempts >= self.max_attempts {
            Next::OutOfAttempts
        } else if self.max_age_ms.is_some_and(|max| now_ms - due_ms >= max) {
            Next::TooOld
        } else {
            Next::At(now_ms + self.backoff.delay_ms(attempts, random))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn after_a_failure_retry_on_the_backoff_until_attempts_or_age_run_out() {
        let r = Retry {
            max_attempts: 3,
            max_age_ms: Some(10_000),
            backoff: Backoff::DELIVERIES,
        };
        assert_eq!(r.after_failure(1, 0, 100, true, 0), Next::At(1_100));
        assert_eq!(r.after_failure(2, 0, 1_100, true, 0), Next::At(3_100));
        assert_eq!(r.after_failure(3, 0, 3_100, true, 0), Next::OutOfAttempts);
        assert_eq!(r.after_failure(1, 0, 10_000, true, 0), Next::TooOld);
        assert_eq!(r.after_failure(1, 0, 100, false, 0), Next::Permanent);
        let no_age = Retry {
            max_age_ms: None,
            ..r
        };
        assert_eq!(
            no_age.after_failure(1, 0, i64::MAX / 2, true, 0),
            Next::At(i64::MAX / 2 + 1000)
        );
        // One attempt in all: the first failure is the last.
        let once = Retry {
            max_attempts: 1,
            ..r
        };
        assert_eq!(once.after_failure(1, 0, 0, true, 0), Next::OutOfAttempts);
    }

    #[test]
    fn deliveries_double_up_to_five_minutes() {
        let b = Backoff::DELIVERIES;
        assert_eq!(b.delay_ms(1, 99), 1000);
        assert_eq!(b.delay_ms(2, 99), 2000);
        assert_eq!(b.delay_ms(5, 99), 16000);
        assert_eq!(b.delay_ms(100, 99), 300_000);
    }

    #[test]
    fn jitter_stays_inside_each_step_and_spreads() {
        let b = Backoff {
            min_ms: 1000,
            max_ms: 8000,
            jitter: true,
        };
        for r in [0, 1, 499, 500, 12345, u64::MAX] {
            let d = b.delay_ms(3, r);
            assert!((2000..=4000).contains(&d), "{d}");
            let d = b.delay_ms(9, r);
            assert!((4000..=8000).contains(&d), "{d}");
        }
        let spread: std::collections::HashSet<i64> =
            (0..50u64).map(|r| b.delay_ms(5, r * 7919)).collect();
        assert!(spread.len() > 10);
    }
}
