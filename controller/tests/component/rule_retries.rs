//! A rule delivery that fails is retried on the backoff (1 s, 2 s, 4 s, …) and succeeds once
//! its target can take it; one that keeps failing ends as a dead letter after its attempts.

use std::time::Duration;

use skiff_proto::v1 as pb;

use crate::harness::{put_event, Harness};

/// A rule on source "app" whose one target runs the latest active `family`.
async fn put_rule(h: &Harness, name: &str, family: &str, max_attempts: u32) {
    h.rules()
        .put(h.req(pb::Rule {
            name: name.into(),
            pattern_json: r#"{"source":["app"]}"#.into(),
            targets: vec![pb::Target {
                id: "run".into(),
                kind: Some(pb::target::Kind::Task(pb::TaskTarget {
                    task_definition: family.into(),
                    ..Default::default()
                })),
                retry: Some(pb::RetryPolicy {
                    max_attempts,
                    max_event_age_seconds: 3600,
                }),
                ..Default::default()
            }],
            ..Default::default()
        }))
        .await
        .unwrap();
}

async fn stats(h: &Harness, rule: &str) -> pb::RuleStats {
    h.rules()
        .get(h.req(pb::RuleRef { name: rule.into() }))
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap_or_default()
}

/// Waits until the rule's delivery has failed `n` attempts and its next one is scheduled
/// (the retry record the dispatcher reads; the failure counter is bumped just before it).
async fn failed(h: &Harness, rule: &str, n: u32) {
    h.until(
        &format!("{rule}: retry after {n} failed attempt(s)"),
        || async {
            let (pending, _) = h.core.store.retries.due(i64::MAX, 10).unwrap();
            match pending.iter().find(|r| r.rule == rule) {
                Some(r) if r.attempts == n => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
}

async fn tasks_of(h: &Harness, rule: &str) -> Vec<pb::Task> {
    h.tasks()
        .list(h.req(pb::ListTasksRequest {
            group: format!("rule:{rule}"),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .tasks
}

async fn deregister(h: &Harness, reference: &str) {
    h.taskdefs()
        .deregister(h.req(pb::DescribeTaskDefinitionRequest {
            task_definition: reference.into(),
        }))
        .await
        .unwrap();
}

#[tokio::test]
async fn a_failed_delivery_is_retried_on_the_backoff_and_succeeds_when_it_can() {
    let h = Harness::start().await;
    h.register("job").await;
    put_rule(&h, "on-app", "job", 5).await;
    // No active definition: the delivery fails until there is one again.
    deregister(&h, "job:1").await;
    let event = put_event(&h, serde_json::json!({"n": 1})).await;
    failed(&h, "on-app", 1).await;
    // The second attempt waits 1 s.
    h.advance(Duration::from_secs(1));
    failed(&h, "on-app", 2).await;
    h.register("job").await;
    // The third waits 2 s; then the target takes it and the task is made, once.
    h.advance(Duration::from_secs(2));
    let tasks = h
        .until("the retried delivery's task", || async {
            let t = tasks_of(&h, "on-app").await;
            if t.is_empty() {
                Err(format!("{:?}", stats(&h, "on-app").await))
            } else {
                Ok(t)
            }
        })
        .await;
    assert_eq!(tasks.len(), 1);
    assert_eq!(tasks[0].started_by, format!("rule/on-app/{event}"));
    assert_eq!(tasks[0].task_definition, "job:2");
    // The counter follows the task it counts.
    h.until("the delivery counted", || async {
        let s = stats(&h, "on-app").await;
        match (s.matched, s.failed, s.invoked, s.dead_lettered) {
            (1, 2, 1, 0) => Ok(()),
            _ => Err(format!("{s:?}")),
        }
    })
    .await;
    h.shutdown().await;
}

#[tokio::test]
async fn a_delivery_that_keeps_failing_becomes_a_dead_letter_after_its_attempts() {
    let h = Harness::start().await;
    h.register("job").await;
    put_rule(&h, "doomed", "job", 3).await;
    deregister(&h, "job:1").await;
    let event = put_event(&h, serde_json::json!({"n": 2})).await;
    failed(&h, "doomed", 1).await;
    h.advance(Duration::from_secs(1));
    failed(&h, "doomed", 2).await;
    h.advance(Duration::from_secs(2));
    let dead = h.rule_dead_letters("doomed").await;
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (
            dead[0].event_id.as_str(),
            dead[0].target.as_str(),
            dead[0].attempts
        ),
        (event.as_str(), "run", 3)
    );
    assert!(
        dead[0].last_error.contains("no active task definition"),
        "{}",
        dead[0].last_error
    );
    assert_eq!(dead[0].dead_ms - dead[0].first_attempt_ms, 3_000);
    assert!(tasks_of(&h, "doomed").await.is_empty());
    assert_eq!(stats(&h, "doomed").await.dead_lettered, 1);
    h.shutdown().await;
}

#[tokio::test]
async fn a_schedule_fire_that_cannot_start_ends_in_its_dead_letter_queue() {
    let h = Harness::start().await;
    h.register("job").await;
    let schedule = |dlq: &str| pb::Schedule {
        name: "nightly".into(),
        expression: "rate(1 minute)".into(),
        task: Some(pb::TaskTarget {
            task_definition: "job".into(),
            ..Default::default()
        }),
        retry: Some(pb::RetryPolicy {
            max_attempts: 2,
            max_event_age_seconds: 3600,
        }),
        dead_letter_queue: dlq.into(),
        ..Default::default()
    };
    let err = h
        .schedules()
        .put(h.req(schedule("nightly-dlq")))
        .await
        .unwrap_err();
    assert!(
        err.message()
            .starts_with("dead_letter_queue: \"nightly-dlq\": no such queue"),
        "{err:?}"
    );
    h.queues()
        .put(h.req(pb::Queue {
            name: "nightly-dlq".into(),
            ..Default::default()
        }))
        .await
        .unwrap();
    h.schedules()
        .put(h.req(schedule("nightly-dlq")))
        .await
        .unwrap();
    let first = h.first_fire_time("nightly").await;
    // The definition goes away: the fire fails, is retried 1 s later, then dead-lettered.
    deregister(&h, "job:1").await;
    h.advance(Duration::from_millis((first - h.clock.now_ms()) as u64));
    h.until("the first attempt failed", || async {
        match h.core.store.schedule_retries.list().unwrap().first() {
            Some(r) if r.attempts == 1 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    h.advance(Duration::from_secs(1));
    let got = h
        .until("the dead letter in its queue", || async {
            let got = h
                .queues()
                .receive(h.req(pb::ReceiveMessagesRequest {
                    queue: "nightly-dlq".into(),
                    ..Default::default()
                }))
                .await
                .unwrap()
                .into_inner()
                .messages;
            if got.is_empty() {
                Err("none yet".to_string())
            } else {
                Ok(got)
            }
        })
        .await;
    let body: serde_json::Value = serde_json::from_str(&got[0].body).unwrap();
    assert_eq!(body["deadLetter"]["schedule"], "nightly", "{body}");
    assert_eq!(body["deadLetter"]["attempts"], 2, "{body}");
    assert!(
        body["deadLetter"]["lastError"]
            .as_str()
            .unwrap()
            .contains("job"),
        "{body}"
    );
    // The queue cannot go while the schedule names it.
    let err = h
        .queues()
        .delete(h.req(pb::QueueRef {
            name: "nightly-dlq".into(),
        }))
        .await
        .unwrap_err();
    assert!(err.message().contains("schedule nightly"), "{err:?}");
    h.shutdown().await;
}
