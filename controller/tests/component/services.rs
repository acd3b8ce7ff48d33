//! Services on the manual clock with fake agents: a service keeps its count and replaces a
//! failed task; a new revision rolls out within maximum percent and completes; a crash loop
//! backs off and the circuit breaker rolls a failing deployment back; autoscaling follows a
//! queue's backlog out of zero and back to it after its cooldown; `rm` drains, then deletes.

use std::time::Duration;

use skiff_proto::v1 as pb;

use crate::harness::{FakeAgent, Harness};

fn service(name: &str, family: &str, desired: u32) -> pb::Service {
    pb::Service {
        name: name.into(),
        task_definition: family.into(),
        desired_count: desired,
        ..Default::default()
    }
}

async fn put(h: &Harness, s: pb::Service) -> pb::ServiceStatus {
    h.services()
        .put(h.req(pb::PutServiceRequest {
            service: Some(s),
            force_new_deployment: false,
        }))
        .await
        .unwrap()
        .into_inner()
}

async fn describe(h: &Harness, name: &str) -> pb::ServiceStatus {
    h.services()
        .describe(h.req(pb::ServiceRef { name: name.into() }))
        .await
        .unwrap()
        .into_inner()
}

/// Waits until the service's primary deployment has `rollout` with `running` tasks RUNNING.
async fn settles(h: &Harness, name: &str, rollout: &str, running: u32) -> pb::ServiceStatus {
    h.until(
        &format!("{name} {rollout} with {running} running"),
        || async {
            let st = describe(h, name).await;
            let primary = st.deployments.first().map(|d| d.rollout.clone());
            if primary.as_deref() == Some(rollout) && st.running == running && st.pending == 0 {
                Ok(st)
            } else {
                Err(format!(
                    "{primary:?}, {} running, {} pending, decisions {:?}",
                    st.running,
                    st.pending,
                    st.decisions.iter().map(|d| &d.message).collect::<Vec<_>>()
                ))
            }
        },
    )
    .await
}

/// The service events on the bus so far, as (detail-type, detail).
async fn service_events(h: &Harness) -> Vec<(String, serde_json::Value)> {
    let events = h.core.store.last_events(10_000).unwrap();
    events
        .into_iter()
        .filter(|e| e.source == "skiff.service")
        .map(|e| (e.detail_type, e.detail))
        .collect()
}

#[tokio::test]
async fn a_service_keeps_its_count_replaces_a_failed_task_and_rolls_out_a_new_revision() {
    let h = Harness::start().await;
    h.register("web").await;
    let agent = FakeAgent::connect(&h, "n1", 4.0, &[]).await;
    put(&h, service("web", "web", 2)).await;
    let st = settles(&h, "web", "COMPLETED", 2).await;
    assert_eq!(st.deployments[0].task_definition, "web:1");
    let first: Vec<String> = st.tasks.iter().map(|t| t.id.clone()).collect();

    // One task's container exits with 1: a replacement starts, the event says why.
    agent.exit(&first[0], 1).await;
    let st = h
        .until("a replacement running", || async {
            let st = describe(&h, "web").await;
            let ids: Vec<&str> = st.tasks.iter().map(|t| t.id.as_str()).collect();
            if st.running == 2 && !ids.contains(&first[0].as_str()) {
                Ok(st)
            } else {
                h.advance(Duration::from_millis(500));
                Err(format!("{ids:?}, {} running", st.running))
            }
        })
        .await;
    assert!(
        st.tasks.iter().any(|t| t.id == first[1]),
        "the healthy task stays"
    );
    let events = service_events(&h).await;
    let replaced = events
        .iter()
        .find(|(_, d)| d["action"] == "replace")
        .expect("a replace event");
    assert_eq!(replaced.1["task"], first[0]);
    assert_eq!(replaced.1["stop_code"], "EssentialContainerExited");

    // A new revision rolls out: both tasks replaced, never more than 200 % at once.
    h.register("web").await;
    let st = put(&h, service("web", "web", 2)).await;
    assert_eq!(st.deployments[0].task_definition, "web:2");
    assert_eq!(st.deployments[0].rollout, "IN_PROGRESS");
    let st = h
        .until("web:2 completed", || async {
            let st = describe(&h, "web").await;
            let active = h.core.store.active_tasks().unwrap();
            assert!(active.len() <= 4, "more than 200 %: {}", active.len());
            let done = st.deployments[0].rollout == "COMPLETED"
                && st.tasks.iter().all(|t| t.task_definition == "web:2")
                && st.running == 2;
            if done {
                Ok(st)
            } else {
                Err(format!("{:?}", st.deployments))
            }
        })
        .await;
    assert_eq!(st.deployments[1].status, "INACTIVE");
    let events = service_events(&h).await;
    let states: Vec<&str> = events
        .iter()
        .filter(|(t, _)| t == "Service Deployment State Change")
        .map(|(_, d)| d["state"].as_str().unwrap())
        .collect();
    assert_eq!(
        states,
        ["IN_PROGRESS", "COMPLETED", "IN_PROGRESS", "COMPLETED"]
    );
    agent.vanish();
    h.shutdown().await;
}

#[tokio::test]
async fn a_crash_loop_backs_off_and_the_circuit_breaker_rolls_back() {
    let h = Harness::start().await;
    h.register("api").await;
    let agent = FakeAgent::connect(&h, "n1", 4.0, &[]).await;
    put(&h, service("api", "api", 1)).await;
    settles(&h, "api", "COMPLETED", 1).await;

    // Revision 2 crashes at once: the first is replaced at once, the second backs off 1 s,
    // and after 3 failed tasks the deployment fails and rolls back to revision 1.
    h.register_running("api", "crash").await;
    put(&h, service("api", "api", 1)).await;
    let st = h
        .until("the second failure's backoff", || async {
            let st = describe(&h, "api").await;
            if st.consecutive_failures == 2 {
                Ok(st)
            } else {
                Err(format!("{} failures", st.consecutive_failures))
            }
        })
        .await;
    assert!(
        st.last_failure.contains("exited with 1"),
        "{}",
        st.last_failure
    );
    assert!(
        st.decisions[0].message.contains("next start in 1s"),
        "{:?}",
        st.decisions[0]
    );
    let backoff_until = st.backoff_until_ms;
    // Before the backoff ends no new task of revision 2 starts.
    let before = h.core.store.active_tasks().unwrap().len();
    h.advance(Duration::from_millis(500));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(h.core.store.active_tasks().unwrap().len(), before);
    assert!(h.clock.now_ms() < backoff_until);

    let st = h
        .until("the rollback completed", || async {
            h.advance(Duration::from_millis(500));
            let st = describe(&h, "api").await;
            let rolled_back = st.deployments.len() == 3
                && st.deployments[0].task_definition == "api:1"
                && st.deployments[0].rollout == "COMPLETED"
                && st.running == 1;
            if rolled_back {
                Ok(st)
            } else {
                Err(format!("{:?}", st.deployments))
            }
        })
        .await;
    assert_eq!(st.deployments[1].rollout, "FAILED");
    assert_eq!(st.deployments[1].failed_tasks, 3);
    assert!(st.deployments[0].reason.contains("rollback"));
    let failed = service_events(&h)
        .await
        .into_iter()
        .find(|(t, d)| t == "Service Deployment State Change" && d["state"] == "FAILED")
        .expect("a FAILED event");
    assert_eq!(failed.1["threshold"], 3);
    agent.vanish();
    h.shutdown().await;
}

#[tokio::test]
async fn autoscaling_follows_a_queues_backlog_out_of_zero_and_back() {
    let h = Harness::start().await;
    h.register("worker").await;
    let agent = FakeAgent::connect(&h, "n1", 4.0, &[]).await;
    h.queues()
        .put(h.req(pb::Queue {
            name: "jobs".into(),
            ..Default::default()
        }))
        .await
        .unwrap();
    let mut s = service("workers", "worker", 0);
    s.autoscaling = Some(pb::Autoscaling {
        source: "queue:jobs".into(),
        min: 0,
        max: 4,
        target_per_task: 10,
        scale_out_cooldown_seconds: 30,
        scale_in_cooldown_seconds: 60,
        stale_after_seconds: None,
    });
    put(&h, s).await;
    settles(&h, "workers", "COMPLETED", 0).await;

    // 25 messages: ceil(25 / 10) = 3 tasks, out of zero at once.
    for batch in 0..3 {
        let n = if batch < 2 { 10 } else { 5 };
        h.queues()
            .send(
                h.req(pb::SendMessagesRequest {
                    queue: "jobs".into(),
                    entries: (0..n)
                        .map(|i| pb::SendEntry {
                            id: i.to_string(),
                            body: format!("job {batch}.{i}"),
                            ..Default::default()
                        })
                        .collect(),
                }),
            )
            .await
            .unwrap();
    }
    // Out of zero at once (on the first batch or two), then within the 30 s scale-out
    // cooldown the count holds; after it, ceil(25 / 10) = 3.
    h.until("out of zero", || async {
        let st = describe(&h, "workers").await;
        if st.running >= 1 {
            Ok(())
        } else {
            Err(format!("desired {}, running {}", st.desired, st.running))
        }
    })
    .await;
    h.advance(Duration::from_secs(31));
    let st = h
        .until("3 workers", || async {
            let st = describe(&h, "workers").await;
            if st.running == 3 {
                Ok(st)
            } else {
                Err(format!("desired {}, running {}", st.desired, st.running))
            }
        })
        .await;
    let scale_out = st
        .decisions
        .iter()
        .find(|d| d.action == "scale-out")
        .expect("a scale-out decision");
    let detail: serde_json::Value = serde_json::from_str(&scale_out.detail_json).unwrap();
    assert_eq!(detail["to"], 3, "{detail}");
    assert_eq!(detail["visible"], 25, "{detail}");

    // The work is done (the queue is empty). The count holds through the scale-in
    // cooldown, then goes to zero.
    h.queues()
        .purge(h.req(pb::QueueRef {
            name: "jobs".into(),
        }))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        describe(&h, "workers").await.desired,
        3,
        "within the cooldown"
    );
    h.advance(Duration::from_secs(61));
    h.until("back to zero", || async {
        let st = describe(&h, "workers").await;
        if st.desired == 0 && st.running == 0 && st.tasks.is_empty() {
            Ok(())
        } else {
            Err(format!("desired {}, {} tasks", st.desired, st.tasks.len()))
        }
    })
    .await;
    let actions: Vec<String> = service_events(&h)
        .await
        .into_iter()
        .filter_map(|(_, d)| d["action"].as_str().map(str::to_string))
        .collect();
    assert!(actions.contains(&"scale-out".to_string()), "{actions:?}");
    assert!(actions.contains(&"scale-in".to_string()), "{actions:?}");
    agent.vanish();
    h.shutdown().await;
}

#[tokio::test]
async fn rm_drains_the_tasks_then_deletes_the_service() {
    let h = Harness::start().await;
    h.register("web").await;
    let agent = FakeAgent::connect(&h, "n1", 4.0, &[]).await;
    put(&h, service("web", "web", 3)).await;
    let st = settles(&h, "web", "COMPLETED", 3).await;
    // The node goes away, so the stops stay in flight until it is declared lost.
    let node = agent.node_id.clone();
    agent.vanish();
    h.until("the session ended", || async {
        if h.core.is_connected(&node) {
            Err("connected".to_string())
        } else {
            Ok(())
        }
    })
    .await;
    let st2 = h
        .services()
        .delete(h.req(pb::ServiceRef { name: "web".into() }))
        .await
        .unwrap()
        .into_inner();
    assert!(st2.draining);
    // A put while it drains is refused, naming why.
    let err = h
        .services()
        .put(h.req(pb::PutServiceRequest {
            service: Some(service("web", "web", 3)),
            force_new_deployment: false,
        }))
        .await
        .unwrap_err();
    assert!(err.message().contains("being deleted"), "{err:?}");
    for t in &st.tasks {
        h.until("its stop asked for", || async {
            match h.task(&t.id).await.desired_status.as_str() {
                "STOPPED" => Ok(()),
                other => Err(other.to_string()),
            }
        })
        .await;
    }
    h.advance(Duration::from_secs(11));
    h.until("the service gone", || async {
        match h
            .services()
            .describe(h.req(pb::ServiceRef { name: "web".into() }))
            .await
        {
            Err(e) if e.code() == tonic::Code::NotFound => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    for t in st.tasks {
        let t = h.task(&t.id).await;
        assert_eq!(t.last_status, "STOPPED");
        assert_eq!(t.stop_code, "ServiceSchedulerInitiated");
        assert_eq!(t.stopped_reason, "service is being deleted");
    }
    h.shutdown().await;
}

#[tokio::test]
async fn bad_service_input_is_refused_naming_the_field() {
    let h = Harness::start().await;
    h.register("web").await;
    let cases = [
        (
            service("web", "nope", 1),
            "task_definition: no active task definition",
        ),
        (service("bad name!", "web", 1), "name"),
        (
            pb::Service {
                deployment: Some(pb::DeploymentConfig {
                    maximum_percent: Some(100),
                    ..Default::default()
                }),
                ..service("web", "web", 1)
            },
            "deployment.maximum_percent",
        ),
        (
            pb::Service {
                autoscaling: Some(pb::Autoscaling {
                    source: "queue:missing".into(),
                    max: 2,
                    target_per_task: 1,
                    ..Default::default()
                }),
                ..service("web", "web", 1)
            },
            "autoscaling.source: no queue \"missing\"",
        ),
        (
            pb::Service {
                autoscaling: Some(pb::Autoscaling {
                    source: "queue:jobs".into(),
                    min: 3,
                    max: 2,
                    target_per_task: 1,
                    ..Default::default()
                }),
                ..service("web", "web", 1)
            },
            "autoscaling.min",
        ),
    ];
    for (s, want) in cases {
        let err = h
            .services()
            .put(h.req(pb::PutServiceRequest {
                service: Some(s),
                force_new_deployment: false,
            }))
            .await
            .unwrap_err();
        assert_eq!(err.code(), tonic::Code::InvalidArgument, "{err:?}");
        assert!(err.message().contains(want), "{want}: {}", err.message());
    }
    h.shutdown().await;
}

async fn send(h: &Harness, queue: &str, bodies: &[&str]) {
    h.queues()
        .send(
            h.req(pb::SendMessagesRequest {
                queue: queue.into(),
                entries: bodies
                    .iter()
                    .enumerate()
                    .map(|(i, b)| pb::SendEntry {
                        id: i.to_string(),
                        body: b.to_string(),
                        ..Default::default()
                    })
                    .collect(),
            }),
        )
        .await
        .unwrap();
}

async fn queue_counts(h: &Harness, queue: &str) -> (u64, u64) {
    let s = h
        .queues()
        .describe(h.req(pb::QueueRef { name: queue.into() }))
        .await
        .unwrap()
        .into_inner();
    (s.visible, s.in_flight)
}

#[tokio::test]
async fn task_per_message_leases_each_message_to_one_task_and_settles_it_by_the_exit() {
    let h = Harness::start().await;
    h.register("thumb").await;
    for (name, dlq) in [("uploads-dlq", None), ("uploads", Some("uploads-dlq"))] {
        h.queues()
            .put(h.req(pb::Queue {
                name: name.into(),
                visibility_timeout_seconds: Some(60),
                redrive: dlq.map(|d| pb::QueueRedrivePolicy {
                    dead_letter_queue: d.into(),
                    max_receive_count: 2,
                }),
                ..Default::default()
            }))
            .await
            .unwrap();
    }
    // Room for one task at a time on the only node (0.25 vCPU each).
    let mut agent = FakeAgent::connect(&h, "n1", 0.25, &[]).await;
    let mut s = service("thumbs", "thumb", 0);
    s.mode = "task-per-message".into();
    s.autoscaling = Some(pb::Autoscaling {
        source: "queue:uploads".into(),
        max: 3,
        target_per_task: 1,
        ..Default::default()
    });
    put(&h, s).await;
    send(&h, "uploads", &["a.jpg", "b.jpg", "c.jpg", "d.jpg"]).await;

    // Three jobs (the concurrency), one running and two waiting for capacity, each holding
    // its message: the fourth message stays visible, no duplicate task is started.
    let first = agent.next_start().await;
    let jobs = h
        .until("3 jobs", || async {
            let st = describe(&h, "thumbs").await;
            if st.tasks.len() == 3 {
                Ok(st.tasks)
            } else {
                Err(format!("{} tasks", st.tasks.len()))
            }
        })
        .await;
    assert_eq!(queue_counts(&h, "uploads").await, (1, 3));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(
        describe(&h, "thumbs").await.tasks.len(),
        3,
        "no task beyond the 3 leased"
    );
    let waiting = jobs
        .iter()
        .filter(|t| t.last_status == "PROVISIONING")
        .count();
    assert_eq!(waiting, 2, "{jobs:?}");
    // The running job got its message as its input.
    let input = h
        .core
        .store
        .task(&first)
        .unwrap()
        .unwrap()
        .spec
        .input
        .unwrap();
    let event: serde_json::Value = serde_json::from_str(&input).unwrap();
    assert_eq!(event["body"], "a.jpg", "{event}");
    assert_eq!(event["queue"], "uploads");

    // A new revision: the running jobs are not stopped; the next jobs run revision 2.
    h.register("thumb").await;
    put(
        &h,
        pb::Service {
            mode: "task-per-message".into(),
            autoscaling: Some(pb::Autoscaling {
                source: "queue:uploads".into(),
                max: 3,
                target_per_task: 1,
                ..Default::default()
            }),
            ..service("thumbs", "thumb", 0)
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(h.task(&first).await.desired_status, "RUNNING");

    // Exit 0: its message is deleted, and the freed slot takes the fourth message.
    agent.exit_with(&first, 0).await;
    let second = agent.next_start().await;
    h.until("a.jpg deleted, d.jpg leased", || async {
        match queue_counts(&h, "uploads").await {
            (0, 3) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    h.until("the next job runs revision 2", || async {
        let st = describe(&h, "thumbs").await;
        let defs: Vec<&str> = st
            .tasks
            .iter()
            .map(|t| t.task_definition.as_str())
            .collect();
        if st.tasks.len() == 3 && defs.contains(&"thumb:2") {
            Ok(())
        } else {
            Err(format!("{defs:?}"))
        }
    })
    .await;

    // A failure returns the message; after 2 receives it goes to the dead-letter queue.
    let second_body = {
        let input = h
            .core
            .store
            .task(&second)
            .unwrap()
            .unwrap()
            .spec
            .input
            .unwrap();
        serde_json::from_str::<serde_json::Value>(&input).unwrap()["body"].clone()
    };
    agent.exit_with(&second, 1).await;
    let third = agent.next_start().await;
    let body_of = |id: String| {
        let input = h.core.store.task(&id).unwrap().unwrap().spec.input.unwrap();
        serde_json::from_str::<serde_json::Value>(&input).unwrap()
    };
    let retried = body_of(third.clone());
    // Either the released message came back at once, or a waiting job ran first: follow the
    // released one until it is dead-lettered.
    let mut current = third;
    let mut event = retried;
    for _ in 0..4 {
        if event["body"] == second_body {
            assert_eq!(event["receiveCount"], 2, "{event}");
            agent.exit_with(&current, 1).await;
            break;
        }
        agent.exit_with(&current, 0).await;
        current = agent.next_start().await;
        event = body_of(current.clone());
    }
    h.until("the failed message dead-lettered", || async {
        match queue_counts(&h, "uploads-dlq").await {
            (1, 0) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
    agent.vanish();
    h.shutdown().await;
}

#[tokio::test]
async fn an_external_backlog_reported_over_grpc_scales_a_service_and_a_stale_one_holds_it() {
    let h = Harness::start().await;
    h.register("consumer").await;
    let agent = FakeAgent::connect(&h, "n1", 4.0, &[]).await;
    let mut s = service("consumers", "consumer", 0);
    s.autoscaling = Some(pb::Autoscaling {
        source: "external:kafka-lag".into(),
        min: 0,
        max: 10,
        target_per_task: 100,
        stale_after_seconds: Some(30),
        ..Default::default()
    });
    put(&h, s).await;
    let report = |visible: u64| pb::ReportBacklogRequest {
        source: "external:kafka-lag".into(),
        visible,
        in_flight: 50,
        observed_ms: 0,
    };
    // 450 waiting + 50 in flight: 5 consumers.
    let b = h
        .services()
        .report_backlog(h.req(report(450)))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        b.observed_ms,
        h.clock.now_ms(),
        "observed now when not given"
    );
    h.until("5 consumers", || async {
        let st = describe(&h, "consumers").await;
        if st.running == 5 {
            Ok(())
        } else {
            Err(format!("desired {}, running {}", st.desired, st.running))
        }
    })
    .await;
    // No report for longer than 30 s: the count holds, and describe says why.
    h.advance(Duration::from_secs(31));
    // (The service held once already, before the first report: wait for the stale hold.)
    let st = h
        .until("a hold on the stale report", || async {
            let st = describe(&h, "consumers").await;
            if st
                .decisions
                .iter()
                .any(|d| d.action == "hold" && d.message.contains("stale after 30s"))
            {
                Ok(st)
            } else {
                Err(format!("{:?}", st.decisions))
            }
        })
        .await;
    assert_eq!(st.desired, 5);
    assert!(
        st.decisions[0].message.contains("stale after 30s"),
        "{:?}",
        st.decisions[0]
    );
    // Only external sources are reported.
    let err = h
        .services()
        .report_backlog(h.req(pb::ReportBacklogRequest {
            source: "queue:jobs".into(),
            ..Default::default()
        }))
        .await
        .unwrap_err();
    assert!(err.message().starts_with("source:"), "{err:?}");
    agent.vanish();
    h.shutdown().await;
}
