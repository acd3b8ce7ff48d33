//! The domain records, from the pure layer (`skiff-model`), plus the one thing the pure layer
//! may not do: read the clock.

pub use skiff_model::model::*;

/// Milliseconds since the epoch, now.
pub fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
