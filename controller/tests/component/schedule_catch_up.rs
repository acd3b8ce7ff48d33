//! A controller that falls behind its schedules (suspended, or its loop stalled) applies each
//! schedule's catch-up policy to the fire times it missed, and fires on time again after.
//! (No agent is connected, so every run's task is still PROVISIONING: the outcome shows it.)

use std::time::Duration;

use skiff_proto::v1 as pb;

use crate::harness::{Harness, START_MS};

async fn put_schedule(h: &Harness, name: &str, catch_up: &str, limit: u32) {
    h.schedules()
        .put(h.req(pb::Schedule {
            name: name.into(),
            expression: "rate(1 minute)".into(),
            overlap: "allow".into(),
            catch_up: catch_up.into(),
            catch_up_limit: limit,
            task: Some(pb::TaskTarget {
                task_definition: "job".into(),
                ..Default::default()
            }),
            ..Default::default()
        }))
        .await
        .unwrap();
    // The loop has seen it before time moves.
    h.first_fire_time(name).await;
}

/// The schedule's runs, oldest first (Describe lists the newest first).
async fn runs(h: &Harness, name: &str) -> Vec<pb::ScheduleRun> {
    let mut runs = h
        .schedules()
        .describe(h.req(pb::ScheduleRef { name: name.into() }))
        .await
        .unwrap()
        .into_inner()
        .runs;
    runs.reverse();
    runs
}

/// Waits until the schedule has recorded `n` runs.
async fn runs_reach(h: &Harness, name: &str, n: usize) -> Vec<pb::ScheduleRun> {
    h.until(&format!("{name}: {n} runs"), || async {
        let r = runs(h, name).await;
        if r.len() == n {
            Ok(r)
        } else {
            Err(format!("{r:?}"))
        }
    })
    .await
}

fn at_minute(m: i64) -> String {
    chrono::DateTime::from_timestamp_millis(START_MS + m * 60_000)
        .unwrap()
        .to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}

#[tokio::test]
async fn missed_fire_times_follow_the_catch_up_policy_then_fires_are_on_time() {
    let h = Harness::start().await;
    h.register("job").await;
    put_schedule(&h, "all", "run-all", 3).await;
    put_schedule(&h, "once", "run-once", 0).await;
    put_schedule(&h, "none", "skip", 0).await;
    // Ten minutes pass at once: fire times 08:01 … 08:10 are all due, all missed.
    h.advance(Duration::from_secs(600));
    let all = runs_reach(&h, "all", 4).await;
    assert!(
        all[0]
            .outcome
            .starts_with("skipped-catch-up: 7 fire time(s) from "),
        "{all:?}"
    );
    assert_eq!(all[0].scheduled_time, at_minute(1));
    let fired: Vec<_> = all[1..].iter().map(|r| r.scheduled_time.clone()).collect();
    assert_eq!(fired, [at_minute(8), at_minute(9), at_minute(10)]);
    assert!(all[1..]
        .iter()
        .all(|r| r.outcome == "PROVISIONING (catch-up)" && !r.task_id.is_empty()));

    let once = runs_reach(&h, "once", 2).await;
    assert!(once[0]
        .outcome
        .starts_with("skipped-catch-up: 9 fire time(s)"));
    assert_eq!(
        (once[1].scheduled_time.as_str(), once[1].outcome.as_str()),
        (at_minute(10).as_str(), "PROVISIONING (catch-up)")
    );

    let none = runs_reach(&h, "none", 1).await;
    assert!(none[0]
        .outcome
        .starts_with("skipped-catch-up: 10 fire time(s)"));

    // Caught up: the next minute fires on time, once, for each.
    h.advance(Duration::from_secs(60));
    for (name, before) in [("all", 4), ("once", 2), ("none", 1)] {
        let r = runs_reach(&h, name, before + 1).await;
        let last = r.last().unwrap();
        assert_eq!(
            (last.scheduled_time.as_str(), last.outcome.as_str()),
            (at_minute(11).as_str(), "PROVISIONING"),
            "{name}: {r:?}"
        );
        assert_eq!(last.fired_ms, START_MS + 11 * 60_000);
    }
    h.shutdown().await;
}

#[tokio::test]
async fn a_fire_whose_task_cannot_start_is_retried_on_the_backoff_then_dead_lettered() {
    let h = Harness::start().await;
    for (name, family, attempts) in [("recovers", "job", 5), ("doomed", "gone", 2)] {
        h.register(family).await;
        h.schedules()
            .put(h.req(pb::Schedule {
                name: name.into(),
                expression: "rate(1 minute)".into(),
                task: Some(pb::TaskTarget {
                    task_definition: family.into(),
                    ..Default::default()
                }),
                retry: Some(pb::RetryPolicy {
                    max_attempts: attempts,
                    max_event_age_seconds: 3600,
                }),
                ..Default::default()
            }))
            .await
            .unwrap();
        h.first_fire_time(name).await;
        // No active definition at the first fire time: the fire fails.
        h.taskdefs()
            .deregister(h.req(pb::DescribeTaskDefinitionRequest {
                task_definition: format!("{family}:1"),
            }))
            .await
            .unwrap();
    }
    h.advance(Duration::from_secs(60));
    for name in ["recovers", "doomed"] {
        h.until(
            &format!("{name}: a retry after the first failure"),
            || async {
                let pending = h.core.store.schedule_retries.list().unwrap();
                match pending.iter().find(|r| r.schedule == name) {
                    Some(r) if r.attempts == 1 => Ok(()),
                    other => Err(format!("{other:?}")),
                }
            },
        )
        .await;
    }
    let first = runs(&h, "recovers").await;
    assert!(
        first[0]
            .outcome
            .starts_with("failed (will retry): no active task definition"),
        "{first:?}"
    );
    // "job" is back: its retry 1 s later starts the fire's task. "gone" is not: the doomed
    // schedule's second attempt is its last.
    h.register("job").await;
    h.advance(Duration::from_secs(1));
    let r = runs_reach(&h, "recovers", 2).await;
    assert_eq!(r[1].scheduled_time, at_minute(1));
    assert!(!r[1].task_id.is_empty(), "{r:?}");
    let dead = h.rule_dead_letters("schedule:doomed").await;
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].attempts, 2);
    assert_eq!(
        dead[0].event_id,
        at_minute(1),
        "the fire time it stands for"
    );
    assert_eq!(dead[0].dead_ms - START_MS, 61_000);
    assert!(h.core.store.schedule_retries.is_empty());
    h.shutdown().await;
}
