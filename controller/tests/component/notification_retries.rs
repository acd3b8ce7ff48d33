//! A webhook that fails is retried on the topic's delivery policy until it answers; one that
//! never does ends as a dead letter after the policy's attempts.

use std::time::Duration;

use skiff_proto::v1 as pb;

use crate::harness::{put_event, Harness, Webhook};

/// A topic with `max_attempts`, 1 s to 4 s between attempts, a rule from source "app" to it,
/// and a webhook subscription to `url`; returns the subscription id.
async fn topic_to(h: &Harness, topic: &str, max_attempts: u32, url: &str) -> String {
    h.topics()
        .put(h.req(pb::Topic {
            name: topic.into(),
            delivery: Some(pb::DeliveryPolicy {
                max_attempts,
                min_delay_ms: 1000,
                max_delay_ms: 4000,
                timeout_ms: 2000,
            }),
            ..Default::default()
        }))
        .await
        .unwrap();
    let sub = h
        .topics()
        .subscribe(h.req(pb::Subscription {
            topic: topic.into(),
            protocol: "webhook".into(),
            endpoint: url.into(),
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .subscription
        .unwrap();
    h.rules()
        .put(h.req(pb::Rule {
            name: format!("to-{topic}"),
            pattern_json: r#"{"source":["app"]}"#.into(),
            targets: vec![pb::Target {
                id: "notify".into(),
                kind: Some(pb::target::Kind::Topic(topic.into())),
                ..Default::default()
            }],
            ..Default::default()
        }))
        .await
        .unwrap();
    sub.id
}

async fn status(h: &Harness, topic: &str) -> pb::TopicStatus {
    h.topics()
        .describe(h.req(pb::TopicRef { name: topic.into() }))
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test]
async fn a_failing_webhook_is_retried_until_it_answers() {
    let h = Harness::start().await;
    let mut hook = Webhook::start(2).await;
    let sub = topic_to(&h, "alerts", 5, &hook.url).await;
    put_event(&h, serde_json::json!({"disk": "full"})).await;
    let first = hook.next().await;
    assert!(first.contains("\"disk\":\"full\""), "{first}");
    // Retried after the backoff (1 s at most for the first, with jitter), then 2 s at most.
    h.until("the failure recorded", || async {
        let s = status(&h, "alerts").await;
        let due = h.core.store.outbox.due(i64::MAX, 10).unwrap().0;
        match due.first() {
            Some(d) if d.attempts == 1 => Ok(s),
            _ => Err(format!("{s:?}")),
        }
    })
    .await;
    assert!(hook.idle(), "no second attempt before the clock moves");
    h.advance(Duration::from_secs(1));
    assert_eq!(hook.next().await, first, "the same message again");
    h.until("the second failure recorded", || async {
        let due = h.core.store.outbox.due(i64::MAX, 10).unwrap().0;
        match due.first() {
            Some(d) if d.attempts == 2 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    h.advance(Duration::from_secs(2));
    assert_eq!(hook.next().await, first);
    let s = h
        .until("delivered", || async {
            let s = status(&h, "alerts").await;
            if s.delivered.get(&sub) == Some(&1) {
                Ok(s)
            } else {
                Err(format!("{s:?}"))
            }
        })
        .await;
    assert_eq!(s.pending.get(&sub).copied().unwrap_or(0), 0);
    assert_eq!(s.dead.get(&sub).copied().unwrap_or(0), 0);
    h.shutdown().await;
}

#[tokio::test]
async fn a_webhook_that_never_answers_becomes_a_dead_letter() {
    let h = Harness::start().await;
    let mut hook = Webhook::start(usize::MAX).await;
    let sub = topic_to(&h, "pager", 3, &hook.url).await;
    // The topic's dead letters also go to a queue (a missing one is refused by field).
    let mut topic = pb::Topic {
        name: "pager".into(),
        delivery: Some(pb::DeliveryPolicy {
            max_attempts: 3,
            min_delay_ms: 1000,
            max_delay_ms: 4000,
            timeout_ms: 2000,
        }),
        dead_letter_queue: "pager-dlq".into(),
        ..Default::default()
    };
    let err = h.topics().put(h.req(topic.clone())).await.unwrap_err();
    assert!(
        err.message()
            .starts_with("dead_letter_queue: \"pager-dlq\": no such queue"),
        "{err:?}"
    );
    h.queues()
        .put(h.req(pb::Queue {
            name: "pager-dlq".into(),
            ..Default::default()
        }))
        .await
        .unwrap();
    topic.description = "pages".into();
    h.topics().put(h.req(topic)).await.unwrap();
    put_event(&h, serde_json::json!({"n": 1})).await;
    for wait in [1, 2] {
        hook.next().await;
        h.until("the failure recorded", || async {
            match h.core.store.outbox.due(i64::MAX, 10).unwrap().0.first() {
                Some(d) if d.attempts == wait => Ok(()),
                other => Err(format!("{other:?}")),
            }
        })
        .await;
        h.advance(Duration::from_secs(wait as u64));
    }
    hook.next().await;
    let dead = h
        .until("the dead letter", || async {
            let d = h
                .topics()
                .list_dead_letters(h.req(pb::ListNotificationDeadLettersRequest {
                    topic: "pager".into(),
                }))
                .await
                .unwrap()
                .into_inner()
                .deliveries;
            if d.is_empty() {
                Err("none yet".into())
            } else {
                Ok(d)
            }
        })
        .await;
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (dead[0].subscription.as_str(), dead[0].attempts),
        (sub.as_str(), 3)
    );
    assert!(dead[0].last_error.contains("500"), "{}", dead[0].last_error);
    let s = status(&h, "pager").await;
    assert_eq!(s.dead.get(&sub), Some(&1));
    assert_eq!(s.pending.get(&sub).copied().unwrap_or(0), 0);
    let got = h
        .queues()
        .receive(h.req(pb::ReceiveMessagesRequest {
            queue: "pager-dlq".into(),
            max_messages: 10,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .messages;
    assert_eq!(got.len(), 1, "{got:?}");
    let body: serde_json::Value = serde_json::from_str(&got[0].body).unwrap();
    assert_eq!(body["deadLetter"]["subscription"], sub.as_str(), "{body}");
    assert_eq!(body["deadLetter"]["attempts"], 3);
    assert!(
        body["message"].as_str().unwrap().contains("\"n\":1"),
        "{body}"
    );
    h.shutdown().await;
}
