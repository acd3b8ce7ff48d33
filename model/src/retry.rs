//! Retry arithmetic, one for every kind of retried work: rule deliveries, schedule fires and
//! notifications wait `Backoff::delay_ms` between attempts. Pure: the random part of the
//! jitter comes in as an argument.

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

#[cfg(test)]
mod tests {
    use super::*;

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
