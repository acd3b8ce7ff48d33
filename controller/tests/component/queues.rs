//! Queues on the manual clock: visibility timeouts, delays, receipt handles, dead-letter
//! moves and redrive, long polls that return as soon as a message is there.

use std::time::Duration;

use skiff_proto::v1 as pb;

use crate::harness::Harness;

async fn create(h: &Harness, q: pb::Queue) {
    h.queues().put(h.req(q)).await.unwrap();
}

fn queue(name: &str, visibility: u32) -> pb::Queue {
    pb::Queue {
        name: name.into(),
        visibility_timeout_seconds: Some(visibility),
        ..Default::default()
    }
}

/// Creates `dlq`, then `name` sending its messages there after `max` receives.
async fn with_dead_letters(h: &Harness, name: &str, visibility: u32, dlq: &str, max: u32) {
    create(h, queue(dlq, 30)).await;
    create(
        h,
        pb::Queue {
            redrive: Some(pb::QueueRedrivePolicy {
                dead_letter_queue: dlq.into(),
                max_receive_count: max,
            }),
            ..queue(name, visibility)
        },
    )
    .await;
}

async fn send(h: &Harness, queue: &str, body: &str, delay: Option<u32>) -> String {
    let r = h
        .queues()
        .send(h.req(pb::SendMessagesRequest {
            queue: queue.into(),
            entries: vec![pb::SendEntry {
                id: "0".into(),
                body: body.into(),
                delay_seconds: delay,
                ..Default::default()
            }],
        }))
        .await
        .unwrap()
        .into_inner();
    r.results[0].message_id.clone()
}

async fn receive(h: &Harness, queue: &str, wait: u32) -> Vec<pb::ReceivedMessage> {
    h.queues()
        .receive(h.req(pb::ReceiveMessagesRequest {
            queue: queue.into(),
            max_messages: 10,
            wait_seconds: Some(wait),
            visibility_timeout_seconds: None,
        }))
        .await
        .unwrap()
        .into_inner()
        .messages
}

async fn delete(h: &Harness, queue: &str, handle: &str) -> String {
    h.queues()
        .delete_messages(h.req(pb::DeleteMessagesRequest {
            queue: queue.into(),
            receipt_handles: vec![handle.into()],
        }))
        .await
        .unwrap()
        .into_inner()
        .results[0]
        .error
        .clone()
}

async fn counts(h: &Harness, queue: &str) -> (u64, u64, u64) {
    let s = h
        .queues()
        .describe(h.req(pb::QueueRef { name: queue.into() }))
        .await
        .unwrap()
        .into_inner();
    (s.visible, s.in_flight, s.delayed)
}

#[tokio::test]
async fn a_received_message_is_hidden_for_its_visibility_timeout_and_comes_back_unless_deleted() {
    let h = Harness::start().await;
    create(&h, queue("jobs", 30)).await;
    let id = send(&h, "jobs", "resize 1.jpg", None).await;
    let first = receive(&h, "jobs", 0).await;
    assert_eq!(first.len(), 1);
    assert_eq!(
        (first[0].message_id.as_str(), first[0].body.as_str()),
        (id.as_str(), "resize 1.jpg")
    );
    assert_eq!(first[0].receive_count, 1);
    assert_eq!(counts(&h, "jobs").await, (0, 1, 0));
    // Hidden from other receivers until its visibility timeout ends: not at 29 s, at 30 s.
    assert!(receive(&h, "jobs", 0).await.is_empty());
    h.advance(Duration::from_secs(29));
    assert!(receive(&h, "jobs", 0).await.is_empty());
    h.advance(Duration::from_secs(1));
    let again = receive(&h, "jobs", 0).await;
    assert_eq!(again.len(), 1);
    assert_eq!(
        (again[0].message_id.as_str(), again[0].receive_count),
        (id.as_str(), 2)
    );
    // The first receive's handle no longer acts on it; the latest one deletes it.
    let stale = delete(&h, "jobs", &first[0].receipt_handle).await;
    assert!(stale.contains("received again since"), "{stale}");
    assert_eq!(delete(&h, "jobs", &again[0].receipt_handle).await, "");
    h.advance(Duration::from_secs(60));
    assert!(receive(&h, "jobs", 0).await.is_empty());
    assert_eq!(counts(&h, "jobs").await, (0, 0, 0));
    let gone = delete(&h, "jobs", &again[0].receipt_handle).await;
    assert!(gone.contains("no such message"), "{gone}");
    h.shutdown().await;
}

#[tokio::test]
async fn a_delayed_message_is_received_only_after_its_delay() {
    let h = Harness::start().await;
    create(&h, queue("later", 30)).await;
    send(&h, "later", "in a minute", Some(60)).await;
    assert_eq!(counts(&h, "later").await, (0, 0, 1));
    assert!(receive(&h, "later", 0).await.is_empty());
    h.advance(Duration::from_secs(60));
    assert_eq!(counts(&h, "later").await, (1, 0, 0));
    assert_eq!(receive(&h, "later", 0).await[0].body, "in a minute");
    h.shutdown().await;
}

#[tokio::test]
async fn a_message_received_too_often_moves_to_the_dead_letter_queue_and_redrives_back() {
    let h = Harness::start().await;
    with_dead_letters(&h, "jobs", 10, "jobs-dlq", 2).await;
    send(&h, "jobs", "poison", None).await;
    for n in 1..=2 {
        let got = receive(&h, "jobs", 0).await;
        assert_eq!(got[0].receive_count, n);
        h.advance(Duration::from_secs(10));
    }
    // The third receive moves it instead of handing it out.
    assert!(receive(&h, "jobs", 0).await.is_empty());
    assert_eq!(counts(&h, "jobs").await, (0, 0, 0));
    assert_eq!(counts(&h, "jobs-dlq").await, (1, 0, 0));
    // Redriven (to the one queue whose dead letters these are): received afresh.
    let r = h
        .queues()
        .redrive(h.req(pb::QueueRedriveRequest {
            dead_letter_queue: "jobs-dlq".into(),
            to: String::new(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.moved, r.to.as_str()), (1, "jobs"));
    let back = receive(&h, "jobs", 0).await;
    assert_eq!(
        (back[0].body.as_str(), back[0].receive_count),
        ("poison", 1)
    );
    assert_eq!(counts(&h, "jobs-dlq").await, (0, 0, 0));
    h.shutdown().await;
}

/// A 20 s receive on `queue`, waiting in the background.
fn poll(h: &Harness, queue: &str) -> tokio::task::JoinHandle<Vec<pb::ReceivedMessage>> {
    let q = h.queues();
    let req = h.req(pb::ReceiveMessagesRequest {
        queue: queue.into(),
        max_messages: 1,
        wait_seconds: Some(20),
        visibility_timeout_seconds: None,
    });
    tokio::spawn(async move { q.clone().receive(req).await.unwrap().into_inner().messages })
}

/// Waits until a receive on `queue` is waiting (it looked and found nothing).
async fn waiting(h: &Harness, queue: &str) {
    h.until(&format!("a receive waiting on {queue}"), || async {
        match h.core.queue_waits.waiting(queue) {
            1 => Ok(()),
            n => Err(format!("{n} waiting")),
        }
    })
    .await;
}

async fn returned(
    poll: tokio::task::JoinHandle<Vec<pb::ReceivedMessage>>,
) -> Vec<pb::ReceivedMessage> {
    tokio::time::timeout(Duration::from_secs(10), poll)
        .await
        .expect("the receive returned")
        .unwrap()
}

#[tokio::test]
async fn a_long_poll_returns_as_soon_as_a_message_arrives_or_comes_back() {
    let h = Harness::start().await;
    create(&h, queue("jobs", 5)).await;
    // Waiting on an empty queue: the message sent meanwhile is what it returns, with no
    // clock moving.
    let p = poll(&h, "jobs");
    waiting(&h, "jobs").await;
    let id = send(&h, "jobs", "now", None).await;
    let got = returned(p).await;
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].message_id, id);
    // In flight for 5 s: a waiting receive gets it when it comes back, at 5 s on the clock.
    let p = poll(&h, "jobs");
    waiting(&h, "jobs").await;
    h.advance(Duration::from_secs(4));
    h.advance(Duration::from_secs(1));
    let got = returned(p).await;
    assert_eq!(
        (got[0].message_id.as_str(), got[0].receive_count),
        (id.as_str(), 2)
    );
    // Nothing comes: it ends empty once its 20 s have passed on the clock, not at 19 s.
    create(&h, queue("idle", 30)).await;
    create(&h, queue("witness", 30)).await;
    let p = poll(&h, "idle");
    waiting(&h, "idle").await;
    h.advance(Duration::from_secs(19));
    // A second waiter, started after the 19 s: once it waits, the controller has had its
    // chance to end the first one early.
    let witness = poll(&h, "witness");
    waiting(&h, "witness").await;
    assert!(!p.is_finished(), "the receive ended before its wait");
    h.advance(Duration::from_secs(1));
    assert!(returned(p).await.is_empty());
    witness.abort();
    h.shutdown().await;
}

#[tokio::test]
async fn a_rule_sends_each_matching_event_to_its_queue_once() {
    let h = Harness::start().await;
    // A rule naming a queue that does not exist is refused, by field.
    let rule = |queue: &str| pb::Rule {
        name: "to-jobs".into(),
        pattern_json: r#"{"source":["app"]}"#.into(),
        targets: vec![pb::Target {
            id: "q".into(),
            kind: Some(pb::target::Kind::Queue(queue.into())),
            input_path: "$.detail".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    let refused = h.rules().put(h.req(rule("jobs"))).await.unwrap_err();
    assert!(
        refused.message().contains("targets[0].queue")
            && refused.message().contains("no such queue"),
        "{refused:?}"
    );
    create(&h, queue("jobs", 30)).await;
    h.rules().put(h.req(rule("jobs"))).await.unwrap();
    for n in 1..=3 {
        crate::harness::put_event(&h, serde_json::json!({"photo": format!("{n}.jpg")})).await;
    }
    h.until("three messages in the queue", || async {
        match counts(&h, "jobs").await {
            (3, 0, 0) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let mut bodies: Vec<String> = receive(&h, "jobs", 0)
        .await
        .into_iter()
        .map(|m| m.body)
        .collect();
    bodies.sort();
    assert_eq!(
        bodies,
        [
            r#"{"photo":"1.jpg"}"#,
            r#"{"photo":"2.jpg"}"#,
            r#"{"photo":"3.jpg"}"#
        ]
    );
    // Exactly once each: nothing else arrives, and the rule counted three invocations.
    assert_eq!(counts(&h, "jobs").await, (0, 3, 0));
    let stats = h
        .rules()
        .get(h.req(pb::RuleRef {
            name: "to-jobs".into(),
        }))
        .await
        .unwrap()
        .into_inner()
        .stats
        .unwrap_or_default();
    assert_eq!(stats.invoked, 3, "{stats:?}");
    h.shutdown().await;
}

#[tokio::test]
async fn a_topic_fans_out_to_its_queue_subscriptions() {
    let h = Harness::start().await;
    create(&h, queue("audit", 30)).await;
    h.topics()
        .put(h.req(pb::Topic {
            name: "admins".into(),
            ..Default::default()
        }))
        .await
        .unwrap();
    let subscribe = |endpoint: &str| {
        h.req(pb::Subscription {
            topic: "admins".into(),
            protocol: "queue".into(),
            endpoint: endpoint.into(),
            ..Default::default()
        })
    };
    let refused = h
        .topics()
        .subscribe(subscribe("nowhere"))
        .await
        .unwrap_err();
    assert!(
        refused.message().contains("endpoint") && refused.message().contains("no such queue"),
        "{refused:?}"
    );
    h.topics().subscribe(subscribe("audit")).await.unwrap();
    h.rules()
        .put(h.req(pb::Rule {
            name: "tell-admins".into(),
            pattern_json: r#"{"source":["app"]}"#.into(),
            targets: vec![pb::Target {
                id: "n".into(),
                kind: Some(pb::target::Kind::Topic("admins".into())),
                input_path: "$.detail".into(),
                ..Default::default()
            }],
            ..Default::default()
        }))
        .await
        .unwrap();
    crate::harness::put_event(&h, serde_json::json!({"disk": "full"})).await;
    h.until("the message in the queue", || async {
        match counts(&h, "audit").await {
            (1, 0, 0) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let got = receive(&h, "audit", 0).await;
    assert_eq!(got[0].body, r#"{"disk":"full"}"#);
    h.shutdown().await;
}

#[tokio::test]
async fn messages_past_retention_are_swept_even_if_nobody_receives() {
    let h = Harness::start().await;
    create(
        &h,
        pb::Queue {
            retention_seconds: Some(60),
            ..queue("short", 30)
        },
    )
    .await;
    send(&h, "short", "stale soon", None).await;
    let stored = || {
        h.core
            .store
            .messages
            .list_in(&skiff_controller::store::Store::queue_prefix("short"))
            .unwrap()
            .len()
    };
    assert_eq!(stored(), 1);
    // Past its minute (and the sweep's), it is gone from the store, not only from the counts.
    h.advance(Duration::from_secs(61));
    h.until("the expired message swept", || async {
        match stored() {
            0 => Ok(()),
            n => Err(format!("{n} stored")),
        }
    })
    .await;
    assert_eq!(counts(&h, "short").await, (0, 0, 0));
    h.shutdown().await;
}

#[tokio::test]
async fn a_queue_in_use_cannot_be_removed() {
    let h = Harness::start().await;
    with_dead_letters(&h, "jobs", 30, "jobs-dlq", 3).await;
    let rm = |name: &str| {
        let mut q = h.queues();
        let req = h.req(pb::QueueRef { name: name.into() });
        async move { q.delete(req).await }
    };
    let refused = rm("jobs-dlq").await.unwrap_err();
    assert!(
        refused.message().contains("used by queue jobs"),
        "{refused:?}"
    );
    // Once nothing uses it, it goes, with its messages.
    rm("jobs").await.unwrap();
    send(&h, "jobs-dlq", "left over", None).await;
    rm("jobs-dlq").await.unwrap();
    let gone = h
        .queues()
        .describe(h.req(pb::QueueRef {
            name: "jobs-dlq".into(),
        }))
        .await
        .unwrap_err();
    assert_eq!(gone.code(), tonic::Code::NotFound);
    assert!(h
        .core
        .store
        .messages
        .list_in(&skiff_controller::store::Store::queue_prefix("jobs-dlq"))
        .unwrap()
        .is_empty());
    h.shutdown().await;
}

#[tokio::test]
async fn a_rule_targets_dead_letters_also_go_to_its_dead_letter_queue() {
    let h = Harness::start().await;
    create(&h, queue("failed-jobs", 30)).await;
    h.register("job").await;
    let rule = pb::Rule {
        name: "run-job".into(),
        pattern_json: r#"{"source":["app"]}"#.into(),
        targets: vec![pb::Target {
            id: "run".into(),
            kind: Some(pb::target::Kind::Task(pb::TaskTarget {
                task_definition: "job".into(),
                ..Default::default()
            })),
            retry: Some(pb::RetryPolicy {
                max_attempts: 1,
                max_event_age_seconds: 3600,
            }),
            dead_letter_queue: "failed-jobs".into(),
            ..Default::default()
        }],
        ..Default::default()
    };
    h.rules().put(h.req(rule)).await.unwrap();
    // No active definition when the event comes: its one attempt fails, and it is a dead
    // letter — in the list and in the queue, with the event.
    h.taskdefs()
        .deregister(h.req(pb::DescribeTaskDefinitionRequest {
            task_definition: "job:1".into(),
        }))
        .await
        .unwrap();
    let event_id = crate::harness::put_event(&h, serde_json::json!({"photo": "1.jpg"})).await;
    let listed = h.rule_dead_letters("run-job").await;
    assert_eq!(listed.len(), 1);
    h.until("the dead letter in its queue", || async {
        match counts(&h, "failed-jobs").await {
            (1, 0, 0) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    let got = receive(&h, "failed-jobs", 0).await;
    let body: serde_json::Value = serde_json::from_str(&got[0].body).unwrap();
    assert_eq!(body["deadLetter"]["rule"], "run-job");
    assert_eq!(body["deadLetter"]["attempts"], 1);
    assert!(
        body["deadLetter"]["lastError"]
            .as_str()
            .unwrap()
            .contains("job"),
        "{body}"
    );
    assert_eq!(body["event"]["id"], event_id.as_str());
    assert_eq!(body["event"]["detail"]["photo"], "1.jpg");
    // The queue is in use now: it cannot be removed under the rule.
    let refused = h
        .queues()
        .delete(h.req(pb::QueueRef {
            name: "failed-jobs".into(),
        }))
        .await
        .unwrap_err();
    assert!(refused.message().contains("rule run-job"), "{refused:?}");
    h.shutdown().await;
}

async fn send_fifo(h: &Harness, queue: &str, body: &str, group: &str, dedup: &str) -> String {
    h.queues()
        .send(h.req(pb::SendMessagesRequest {
            queue: queue.into(),
            entries: vec![pb::SendEntry {
                id: "0".into(),
                body: body.into(),
                message_group_id: group.into(),
                message_deduplication_id: dedup.into(),
                ..Default::default()
            }],
        }))
        .await
        .unwrap()
        .into_inner()
        .results[0]
        .message_id
        .clone()
}

async fn receive_bodies(h: &Harness, queue: &str, max: u32) -> Vec<(String, String)> {
    h.queues()
        .receive(h.req(pb::ReceiveMessagesRequest {
            queue: queue.into(),
            max_messages: max,
            ..Default::default()
        }))
        .await
        .unwrap()
        .into_inner()
        .messages
        .into_iter()
        .map(|m| (m.body, m.receipt_handle))
        .collect()
}

#[tokio::test]
async fn a_fifo_queue_keeps_each_groups_order_one_receiver_at_a_time_and_deduplicates() {
    let h = Harness::start().await;
    // A FIFO queue's name ends in .fifo; the fields say so when it does not.
    let err = h
        .queues()
        .put(h.req(pb::Queue {
            name: "orders".into(),
            fifo: true,
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert!(err.message().contains("ends in .fifo"), "{err:?}");
    h.queues()
        .put(h.req(pb::Queue {
            name: "orders.fifo".into(),
            fifo: true,
            visibility_timeout_seconds: Some(30),
            ..Default::default()
        }))
        .await
        .unwrap();
    for (body, group) in [
        ("a1", "a"),
        ("b1", "b"),
        ("a2", "a"),
        ("b2", "b"),
        ("a3", "a"),
    ] {
        send_fifo(&h, "orders.fifo", body, group, body).await;
    }
    // In send order; then nothing more of either group while they are in flight.
    let first = receive_bodies(&h, "orders.fifo", 3).await;
    let bodies: Vec<&str> = first.iter().map(|(b, _)| b.as_str()).collect();
    assert_eq!(bodies, ["a1", "b1", "a2"]);
    let none = receive_bodies(&h, "orders.fifo", 10).await;
    assert!(none.is_empty(), "both groups in flight: {none:?}");
    // b1 done: b2 is next; a stays blocked behind a1/a2 in flight.
    h.queues()
        .delete_messages(h.req(pb::DeleteMessagesRequest {
            queue: "orders.fifo".into(),
            receipt_handles: vec![first[1].1.clone()],
        }))
        .await
        .unwrap();
    let next = receive_bodies(&h, "orders.fifo", 10).await;
    assert_eq!(
        next.iter().map(|(b, _)| b.as_str()).collect::<Vec<_>>(),
        ["b2"]
    );
    // Their visibility ends without a delete: every group again, in send order.
    h.advance(Duration::from_secs(30));
    let again = receive_bodies(&h, "orders.fifo", 10).await;
    let bodies: Vec<&str> = again.iter().map(|(b, _)| b.as_str()).collect();
    assert_eq!(bodies, ["a1", "a2", "b2", "a3"]);

    // Deduplication: the same id within 5 minutes is the same message, not a new one.
    let id = send_fifo(&h, "orders.fifo", "c1", "c", "order-77").await;
    assert_eq!(
        send_fifo(&h, "orders.fifo", "c1 again", "c", "order-77").await,
        id
    );
    let status = h
        .queues()
        .describe(h.req(pb::QueueRef {
            name: "orders.fifo".into(),
        }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(status.visible, 1, "one c message");
    h.advance(Duration::from_secs(301));
    assert_ne!(
        send_fifo(&h, "orders.fifo", "c1", "c", "order-77").await,
        id,
        "after 5 min"
    );

    // Content-based deduplication, and the fields a FIFO send needs.
    h.queues()
        .put(h.req(pb::Queue {
            name: "events.fifo".into(),
            fifo: true,
            content_based_deduplication: true,
            ..Default::default()
        }))
        .await
        .unwrap();
    let id = send_fifo(&h, "events.fifo", "same", "g", "").await;
    assert_eq!(send_fifo(&h, "events.fifo", "same", "g", "").await, id);
    let refused = |queue: &str, group: &str| {
        let (q, g) = (queue.to_string(), group.to_string());
        let h = &h;
        async move {
            h.queues()
                .send(h.req(pb::SendMessagesRequest {
                    queue: q,
                    entries: vec![pb::SendEntry {
                        id: "0".into(),
                        body: "x".into(),
                        message_group_id: g,
                        ..Default::default()
                    }],
                }))
                .await
                .unwrap_err()
                .message()
                .to_string()
        }
    };
    assert!(refused("orders.fifo", "")
        .await
        .contains("entries[0].message_group_id: required"));
    assert!(refused("orders.fifo", "a")
        .await
        .contains("entries[0].message_deduplication_id: required"));
    h.queues()
        .put(h.req(pb::Queue {
            name: "plain".into(),
            ..Default::default()
        }))
        .await
        .unwrap();
    assert!(refused("plain", "a").await.contains("is not FIFO"));
    h.shutdown().await;
}
