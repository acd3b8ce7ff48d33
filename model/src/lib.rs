//! skiff's pure layer: the domain types and the decisions made over them.
//!
//! **Invariant:** nothing here does I/O, awaits, reads the clock, or knows sled, tonic or the
//! protobuf types: time comes in as arguments (`now_ms`), input arrives as domain values, and
//! answers go out as values. The crate boundary enforces most of it (this crate cannot name
//! what it does not depend on); `the_pure_layer_depends_on_no_runtime_storage_or_wire_crate`
//! below keeps the dependency list that way.
//!
//! - [`model`]: records (task definitions, tasks, nodes, events, rules, schedules, sources, …).
//! - [`lifecycle`]: the task state machine.
//! - [`placement`]: which node gets a task, or why none does.
//! - [`pattern`]: EventBridge event patterns; [`ruleset`]: the enabled rules, compiled and
//!   indexed; [`transform`]: a target's input.
//! - [`history`]: how long stopped tasks stay (retention policies and their rules).
//! - [`retry`]: the backoff between attempts of any retried work.
//! - [`trust`]: what a task role's API grants allow.
//! - [`cron`]: schedule expressions (cron / rate / at) in IANA zones and their fire times.

pub mod cron;
pub mod history;
pub mod lifecycle;
pub mod model;
pub mod names;
pub mod pattern;
pub mod placement;
pub mod queue;
pub mod redis_source;
pub mod retry;
pub mod ruleset;
pub mod service;
pub mod transform;
pub mod trust;
pub mod validate;

#[cfg(any(test, feature = "testing"))]
pub mod testing;

#[cfg(test)]
mod tests {
    /// The layering rule, as a check: the pure layer may depend only on these crates. Adding
    /// tokio, sled, tonic, skiff-proto (or anything else) fails here first.
    #[test]
    fn the_pure_layer_depends_on_no_runtime_storage_or_wire_crate() {
        const ALLOWED: [&str; 8] = [
            "serde",
            "serde_json",
            "thiserror",
            "chrono",
            "chrono-tz",
            "cron",
            // The OCI image reference grammar (validate.rs parses references; nothing reads
            // a file through it).
            "oci-spec",
            // A fast hash for the pattern set's lookup tables (matching is per event).
            "rustc-hash",
        ];
        let manifest = include_str!("../Cargo.toml");
        let deps = manifest
            .split("[dependencies]")
            .nth(1)
            .expect("a [dependencies] table")
            .split("\n[")
            .next()
            .unwrap();
        let names: Vec<&str> = deps
            .lines()
            .filter_map(|l| l.split(['=', '.']).next())
            .map(str::trim)
            .filter(|n| !n.is_empty() && !n.starts_with('#'))
            .collect();
        assert!(!names.is_empty());
        for n in names {
            assert!(
                ALLOWED.contains(&n),
                "skiff-model must stay pure, but depends on {n}"
            );
        }
        // And no source file reaches for the clock or the runtime by path either.
        for (file, text) in [
            ("model.rs", include_str!("model.rs")),
            ("lifecycle.rs", include_str!("lifecycle.rs")),
            ("placement/mod.rs", include_str!("placement/mod.rs")),
            ("placement/choose.rs", include_str!("placement/choose.rs")),
            ("queue.rs", include_str!("queue.rs")),
            ("pattern/mod.rs", include_str!("pattern/mod.rs")),
            ("pattern/set/mod.rs", include_str!("pattern/set/mod.rs")),
            (
                "pattern/set/values.rs",
                include_str!("pattern/set/values.rs"),
            ),
            ("pattern/set/walk.rs", include_str!("pattern/set/walk.rs")),
            ("ruleset.rs", include_str!("ruleset.rs")),
            ("retry.rs", include_str!("retry.rs")),
            ("transform.rs", include_str!("transform.rs")),
            ("validate.rs", include_str!("validate.rs")),
            ("cron.rs", include_str!("cron.rs")),
        ] {
            let code = text.split("#[cfg(test)]").next().unwrap();
            for banned in [
                "Utc::now",
                "SystemTime::now",
                "Instant::now",
                "tokio::",
                "std::fs",
                "std::net::Tcp",
            ] {
                assert!(
                    !code.contains(banned),
                    "{file} uses {banned}: the pure layer takes time and data as arguments"
                );
            }
        }
    }
}
