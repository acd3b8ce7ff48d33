use super::*;
use crate::model::DeploymentConfig;

fn service(desired: u32) -> Service {
    Service {
        name: "web".into(),
        description: String::new(),
        task_definition: "web".into(),
        desired_count: desired,
        deployment: DeploymentConfig::default(),
        stop_timeout_secs: 0,
        placement: Default::default(),
        autoscaling: None,
        mode: Default::default(),
        created_ms: 0,
        updated_ms: 0,
    }
}

fn deployment(id: &str, def: &str, rollout: RolloutState) -> Deployment {
    Deployment {
        id: id.into(),
        task_definition: def.into(),
        status: DeploymentStatus::Primary,
        rollout,
        reason: String::new(),
        failed_tasks: 0,
        created_ms: 0,
        updated_ms: 0,
    }
}

fn state(deployments: Vec<Deployment>) -> ServiceState {
    let mut deployments = deployments;
    for d in deployments.iter_mut().skip(1) {
        d.status = DeploymentStatus::Active;
    }
    ServiceState {
        name: "web".into(),
        deployments,
        ..Default::default()
    }
}

fn running(id: &str, dep: &str, started: i64) -> TaskView {
    TaskView {
        id: id.into(),
        deployment: dep.into(),
        status: TaskStatus::Running,
        stopping: false,
        started_at_ms: started,
        health: None,
        draining: false,
    }
}

fn pending(id: &str, dep: &str) -> TaskView {
    TaskView {
        status: TaskStatus::Pending,
        started_at_ms: 0,
        ..running(id, dep, 0)
    }
}

fn failed(id: &str, dep: &str, ran_ms: i64) -> Finished {
    Finished {
        id: id.into(),
        deployment: dep.into(),
        code: Some(StopCode::EssentialContainerExited),
        reason: "essential container app exited with 1".into(),
        ran_ms,
    }
}

fn pass(
    svc: &Service,
    st: &ServiceState,
    active: &[TaskView],
    finished: &[Finished],
    now: i64,
) -> Pass {
    reconcile(&Inputs {
        service: svc,
        state: st,
        active,
        finished,
        backlog: None,
        new_deployment_id: "d-new",
        now_ms: now,
    })
}

fn stopped_ids(p: &Pass) -> Vec<&str> {
    let mut ids: Vec<&str> = p.stop.iter().map(|(id, _)| id.as_str()).collect();
    ids.sort();
    ids
}

#[test]
fn a_new_service_starts_its_desired_count_and_completes_when_they_run() {
    let svc = service(3);
    let st = state(vec![deployment("d1", "web:1", RolloutState::InProgress)]);
    let p = pass(&svc, &st, &[], &[], 1_000);
    assert_eq!(p.start, vec![("d1".to_string(), "web:1".to_string()); 3]);
    assert_eq!(p.state.deployments[0].rollout, RolloutState::InProgress);

    let active = [
        running("a", "d1", 1),
        running("b", "d1", 1),
        pending("c", "d1"),
    ];
    let p = pass(&svc, &p.state, &active, &[], 2_000);
    assert!(p.start.is_empty() && p.stop.is_empty());
    assert_eq!(p.state.deployments[0].rollout, RolloutState::InProgress);

    let active = [
        running("a", "d1", 1),
        running("b", "d1", 1),
        running("c", "d1", 1),
    ];
    let p = pass(&svc, &p.state, &active, &[], 3_000);
    assert_eq!(p.state.deployments[0].rollout, RolloutState::Completed);
    assert!(p
        .events
        .iter()
        .any(|e| e.detail_type == DEPLOYMENT_STATE_CHANGE && e.detail["state"] == "COMPLETED"));
}

#[test]
fn a_rolling_deployment_keeps_minimum_healthy_and_stays_under_maximum_percent() {
    // 100 % / 200 %: two new tasks start beside the two old; the old stop only once the new run.
    let svc = service(2);
    let st = state(vec![
        deployment("d2", "web:2", RolloutState::InProgress),
        deployment("d1", "web:1", RolloutState::Completed),
    ]);
    let old = [running("o1", "d1", 1), running("o2", "d1", 2)];
    let p = pass(&svc, &st, &old, &[], 20_000);
    assert_eq!(p.start.len(), 2);
    assert!(p.start.iter().all(|(d, def)| d == "d2" && def == "web:2"));
    assert!(p.stop.is_empty(), "no old task stops before a new one runs");

    let both = [
        old[0].clone(),
        old[1].clone(),
        pending("n1", "d2"),
        running("n2", "d2", 30_000),
    ];
    let p = pass(&svc, &p.state, &both, &[], 31_000);
    assert!(p.start.is_empty());
    assert_eq!(
        stopped_ids(&p),
        vec!["o1"],
        "one new task runs: one old may go (oldest)"
    );

    let mut o1 = old[0].clone();
    o1.stopping = true;
    let after = [
        o1,
        old[1].clone(),
        running("n1", "d2", 32_000),
        running("n2", "d2", 30_000),
    ];
    let p = pass(&svc, &p.state, &after, &[], 33_000);
    assert_eq!(stopped_ids(&p), vec!["o2"]);
    assert_eq!(
        p.state.deployments[0].rollout,
        RolloutState::InProgress,
        "old tasks remain"
    );

    let done = [running("n1", "d2", 32_000), running("n2", "d2", 30_000)];
    let p = pass(&svc, &p.state, &done, &[], 34_000);
    assert_eq!(p.state.deployments[0].rollout, RolloutState::Completed);
    assert_eq!(p.state.deployments[1].status, DeploymentStatus::Inactive);
}

#[test]
fn with_no_room_above_desired_old_tasks_stop_first_down_to_minimum_healthy() {
    let mut svc = service(4);
    svc.deployment.minimum_healthy_percent = 50;
    svc.deployment.maximum_percent = 100;
    let st = state(vec![
        deployment("d2", "web:2", RolloutState::InProgress),
        deployment("d1", "web:1", RolloutState::Completed),
    ]);
    let old: Vec<TaskView> = (0..4).map(|n| running(&format!("o{n}"), "d1", n)).collect();
    let p = pass(&svc, &st, &old, &[], 20_000);
    assert!(
        p.start.is_empty(),
        "maximum 100 %: no room before old tasks go"
    );
    assert_eq!(stopped_ids(&p), vec!["o0", "o1"], "down to 2 of 4 healthy");

    let mut next = old.clone();
    next[0].stopping = true;
    next[1].stopping = true;
    let p = pass(&svc, &p.state, &next, &[], 21_000);
    assert_eq!(p.start.len(), 2, "two stopping: room for two new");
    assert!(p.stop.is_empty(), "2 healthy is the minimum");
}

#[test]
fn scale_in_stops_waiting_tasks_first_then_the_newest() {
    let svc = service(1);
    let st = state(vec![deployment("d1", "web:1", RolloutState::Completed)]);
    let active = [
        running("a", "d1", 1),
        running("b", "d1", 5),
        pending("c", "d1"),
    ];
    let p = pass(&svc, &st, &active, &[], 20_000);
    assert_eq!(stopped_ids(&p), vec!["b", "c"]);
    assert!(p.stop.iter().all(|(_, why)| why == "service scaled in"));
}

#[test]
fn a_crash_loop_backs_off_doubling_and_a_task_that_stays_up_ends_it() {
    let svc = service(1);
    let mut st = state(vec![deployment("d1", "web:1", RolloutState::Completed)]);
    let mut now = 100_000;
    for (n, expect_delay) in [(1, 0), (2, 1_000), (3, 2_000), (4, 4_000)] {
        let p = pass(&svc, &st, &[], &[failed(&format!("t{n}"), "d1", 200)], now);
        assert_eq!(p.state.consecutive_failures, n);
        assert_eq!(p.state.backoff_until_ms, now + expect_delay);
        assert!(p
            .state
            .decisions
            .iter()
            .any(|d| d.message.contains("essential container app exited")));
        if expect_delay == 0 {
            assert_eq!(p.start.len(), 1, "a first failure is replaced at once");
            st = p.state;
            now += 1;
            continue;
        }
        assert!(p.start.is_empty(), "no start while backing off");
        assert_eq!(p.wake_at_ms, Some(now + expect_delay));
        let p2 = pass(&svc, &p.state, &[], &[], now + expect_delay);
        assert_eq!(p2.start.len(), 1, "the backoff over, a replacement starts");
        st = p2.state;
        now += expect_delay + 1;
    }
    // A task started since the last failure that stays up past STABLE_MS resets the count.
    let up = [running("t5", "d1", now)];
    let p = pass(&svc, &st, &up, &[], now + STABLE_MS);
    assert_eq!(p.state.consecutive_failures, 0);
    // The backoff is capped.
    let mut st = p.state;
    st.consecutive_failures = 40;
    let p = pass(&svc, &st, &[], &[failed("t6", "d1", 10)], 0);
    assert_eq!(p.state.backoff_until_ms, BACKOFF_CAP_MS);
}

#[test]
fn tasks_stopped_by_people_or_lost_nodes_are_replaced_without_backoff() {
    let svc = service(1);
    let st = state(vec![deployment("d1", "web:1", RolloutState::Completed)]);
    let lost = Finished {
        code: Some(StopCode::NodeLost),
        ..failed("t1", "d1", 50_000)
    };
    let p = pass(&svc, &st, &[], &[lost], 100_000);
    assert_eq!(p.state.consecutive_failures, 0);
    assert_eq!(p.start.len(), 1);
    assert!(p.events.iter().any(|e| e.detail["action"] == "replace"));
}

#[test]
fn the_circuit_breaker_fails_a_deployment_and_rolls_back_to_the_last_completed() {
    let svc = service(2);
    let mut st = state(vec![
        deployment("d2", "web:2", RolloutState::InProgress),
        deployment("d1", "web:1", RolloutState::Completed),
    ]);
    let old = [running("o1", "d1", 1), running("o2", "d1", 2)];
    let mut now = 50_000;
    for n in 0..3 {
        let p = pass(&svc, &st, &old, &[failed(&format!("n{n}"), "d2", 0)], now);
        st = p.state;
        now = st.backoff_until_ms.max(now + 1);
        if n < 2 {
            assert_eq!(st.deployments[0].rollout, RolloutState::InProgress);
        } else {
            assert!(p.events.iter().any(|e| e.detail["state"] == "FAILED"));
            // The rollback starts at once, beside the old tasks (maximum 200 %).
            assert_eq!(p.start, vec![("d-new".to_string(), "web:1".to_string()); 2]);
        }
    }
    assert_eq!(failure_threshold(2), 3);
    assert_eq!(st.deployments[0].id, "d-new");
    assert_eq!(st.deployments[0].task_definition, "web:1");
    assert_eq!(st.deployments[1].rollout, RolloutState::Failed);
    assert!(st.deployments[1].reason.contains("3 task(s) failed"));
    // Once the rollback's tasks run, the old ones are replaced and it completes.
    let new = [running("r1", "d-new", now), running("r2", "d-new", now)];
    let both: Vec<TaskView> = old.iter().chain(new.iter()).cloned().collect();
    let p = pass(&svc, &st, &both, &[], now + 1);
    assert_eq!(stopped_ids(&p), vec!["o1", "o2"]);
    let p = pass(&svc, &p.state, &new, &[], now + 2);
    assert_eq!(p.state.deployments[0].rollout, RolloutState::Completed);
}

#[test]
fn without_rollback_a_failed_deployment_starts_nothing_more() {
    let mut svc = service(1);
    svc.deployment.rollback = false;
    let mut st = state(vec![deployment("d1", "web:1", RolloutState::InProgress)]);
    for n in 0..3 {
        st = pass(&svc, &st, &[], &[failed(&format!("n{n}"), "d1", 0)], 0).state;
    }
    assert_eq!(st.deployments[0].rollout, RolloutState::Failed);
    let p = pass(&svc, &st, &[], &[], 10_000_000);
    assert!(p.start.is_empty());
    assert!(p.state.decisions[0]
        .message
        .contains("failed; no new tasks"));
}

#[test]
fn draining_stops_every_task_then_deletes() {
    let svc = service(3);
    let mut st = state(vec![
        deployment("d2", "web:2", RolloutState::InProgress),
        deployment("d1", "web:1", RolloutState::Completed),
    ]);
    st.draining = true;
    let active = [
        running("a", "d2", 1),
        pending("b", "d2"),
        running("c", "d1", 1),
    ];
    let p = pass(&svc, &st, &active, &[], 10);
    assert_eq!(stopped_ids(&p), vec!["a", "b", "c"]);
    assert!(!p.delete, "tasks still stopping");
    let mut going = active.clone();
    for t in going.iter_mut() {
        t.stopping = true;
    }
    let p = pass(&svc, &p.state, &going, &[], 20);
    assert!(p.stop.is_empty() && p.start.is_empty() && !p.delete);
    let p = pass(&svc, &p.state, &[], &[], 30);
    assert!(p.delete);
}

fn autoscaled(min: u32, max: u32, target: u32) -> Service {
    Service {
        autoscaling: Some(Autoscaling {
            source: "queue:jobs".into(),
            min,
            max,
            target_per_task: target,
            scale_out_cooldown_secs: 30,
            scale_in_cooldown_secs: 60,
            stale_after_secs: 60,
        }),
        ..service(0)
    }
}

fn with_backlog(
    svc: &Service,
    st: &ServiceState,
    active: &[TaskView],
    visible: u64,
    in_flight: u64,
    now: i64,
) -> Pass {
    let b = Backlog {
        source: svc.autoscaling.as_ref().unwrap().source.clone(),
        visible,
        in_flight,
        observed_ms: now,
    };
    reconcile(&Inputs {
        service: svc,
        state: st,
        active,
        finished: &[],
        backlog: Some(&b),
        new_deployment_id: "x",
        now_ms: now,
    })
}

#[test]
fn target_tracking_follows_the_backlog_within_bounds_and_cooldowns() {
    let svc = autoscaled(0, 10, 100);
    let st = state(vec![deployment("d1", "w:1", RolloutState::Completed)]);
    // Idle at zero: nothing to do.
    let p = with_backlog(&svc, &st, &[], 0, 0, 1_000);
    assert_eq!(p.state.scaled_count, Some(0));
    assert!(p.start.is_empty());
    // The first message: out of zero at once.
    let p = with_backlog(&svc, &p.state, &[], 1, 0, 2_000);
    assert_eq!(p.state.scaled_count, Some(1));
    assert_eq!(p.start.len(), 1);
    assert!(p
        .events
        .iter()
        .any(|e| e.detail["action"] == "scale-out" && e.detail["to"] == 1));
    // 1,000 messages 5 s later: within the 30 s scale-out cooldown, held (wake at its end).
    let st = p.state;
    let p = with_backlog(&svc, &st, &[], 1_000, 0, 7_000);
    assert_eq!(p.state.scaled_count, Some(1));
    assert_eq!(p.wake_at_ms, Some(32_000));
    // After it: ceil(1000 / 100) = 10, and never more than max.
    let p = with_backlog(&svc, &st, &[], 1_000, 0, 32_000);
    assert_eq!(p.state.scaled_count, Some(10));
    let p2 = with_backlog(&svc, &p.state, &[], 5_000, 0, 70_000);
    assert_eq!(p2.state.scaled_count, Some(10), "max 10");
    // In-flight messages are work too: 0 visible + 400 in flight = 4 tasks, after the
    // scale-in cooldown (60 s from the last scaling).
    let p3 = with_backlog(&svc, &p.state, &[], 0, 400, 60_000);
    assert_eq!(p3.state.scaled_count, Some(10), "scale-in cooldown");
    let p3 = with_backlog(&svc, &p.state, &[], 0, 400, 92_000);
    assert_eq!(p3.state.scaled_count, Some(4));
    // Empty: to zero (min 0).
    let p4 = with_backlog(&svc, &p3.state, &[], 0, 0, 200_000);
    assert_eq!(p4.state.scaled_count, Some(0));
    assert!(p4.state.decisions[0].message.starts_with("scale-in 4 → 0"));
}

#[test]
fn a_stale_external_backlog_holds_the_count() {
    let mut svc = autoscaled(1, 5, 10);
    svc.autoscaling.as_mut().unwrap().source = "external:kafka".into();
    let mut st = state(vec![deployment("d1", "w:1", RolloutState::Completed)]);
    st.scaled_count = Some(3);
    let b = Backlog {
        source: "external:kafka".into(),
        visible: 0,
        in_flight: 0,
        observed_ms: 0,
    };
    let p = reconcile(&Inputs {
        service: &svc,
        state: &st,
        active: &[],
        finished: &[],
        backlog: Some(&b),
        new_deployment_id: "x",
        now_ms: 61_000,
    });
    assert_eq!(p.state.scaled_count, Some(3));
    assert!(p
        .state
        .decisions
        .iter()
        .any(|d| d.action == "hold" && d.message.contains("stale after 60s")));
    assert_eq!(p.start.len(), 3, "the held count is kept running");
    assert_eq!(
        tracked_count(svc.autoscaling.as_ref().unwrap(), &b),
        1,
        "min 1"
    );
}

#[test]
fn an_unhealthy_task_is_replaced_and_counts_as_failed_and_unknown_health_is_not_serving() {
    let svc = service(2);
    let st = state(vec![deployment("d1", "web:1", RolloutState::InProgress)]);
    let with = |id: &str, h: Health| TaskView {
        health: Some(h),
        ..running(id, "d1", 1)
    };
    // Running but with health UNKNOWN: not serving yet, so the deployment is not complete.
    let p = pass(
        &svc,
        &st,
        &[with("a", Health::Unknown), with("b", Health::Healthy)],
        &[],
        20_000,
    );
    assert_eq!(p.state.deployments[0].rollout, RolloutState::InProgress);
    assert!(p.start.is_empty());
    // UNHEALTHY: stopped and replaced (after the backoff), a failure of its deployment.
    let p = pass(
        &svc,
        &p.state,
        &[with("a", Health::Unhealthy), with("b", Health::Healthy)],
        &[],
        21_000,
    );
    assert_eq!(
        p.stop,
        vec![(
            "a".to_string(),
            "Task failed container health checks".to_string()
        )]
    );
    assert_eq!(p.state.deployments[0].failed_tasks, 1);
    assert_eq!(p.state.consecutive_failures, 1);
    assert_eq!(p.start.len(), 1, "a first failure is replaced at once");
    assert!(p.events.iter().any(|e| e.detail["health"] == "UNHEALTHY"));
    // Its later STOPPED (stopped by the service) is not counted twice.
    let stopped = Finished {
        code: Some(StopCode::ServiceSchedulerInitiated),
        ..failed("a", "d1", 20_000)
    };
    let p = pass(
        &svc,
        &p.state,
        &[with("b", Health::Healthy)],
        &[stopped],
        22_500,
    );
    assert_eq!(p.state.deployments[0].failed_tasks, 1);
    assert_eq!(p.start.len(), 1);
    let c = TaskView {
        health: Some(Health::Healthy),
        ..running("c", "d1", 23_000)
    };
    let p = pass(
        &svc,
        &p.state,
        &[with("b", Health::Healthy), c.clone()],
        &[],
        24_000,
    );
    assert_eq!(p.state.consecutive_failures, 1, "c has not stayed up yet");
    let p = pass(
        &svc,
        &p.state,
        &[with("b", Health::Healthy), c],
        &[],
        23_000 + STABLE_MS,
    );
    assert_eq!(p.state.consecutive_failures, 0, "c stayed up");
    assert_eq!(p.state.deployments[0].rollout, RolloutState::Completed);
}

/// A task on a draining node leaves like an old deployment's task: with the defaults (100%
/// healthy, 200% max) replacements start first and it stops once they serve; with 50% / 100%
/// one stops first and its replacement starts in the next pass; tasks not serving yet go at
/// once; a task on a node that is not draining stays.
#[test]
fn tasks_on_a_draining_node_are_replaced_within_the_deployment_limits() {
    let st = state(vec![deployment("d1", "web:1", RolloutState::Completed)]);
    let on_drained = |id: &str| TaskView {
        draining: true,
        ..running(id, "d1", 1)
    };
    let svc = service(2);
    let p = pass(
        &svc,
        &st,
        &[on_drained("a"), running("b", "d1", 1)],
        &[],
        20_000,
    );
    assert_eq!(p.start.len(), 1, "one replacement: {p:?}");
    assert!(
        p.stop.is_empty(),
        "a serves until its replacement does: {p:?}"
    );
    let actions: Vec<&str> = p
        .state
        .decisions
        .iter()
        .map(|d| d.action.as_str())
        .collect();
    assert_eq!(actions, ["start", "drain"]);
    // The replacement serves: a stops.
    let p = pass(
        &svc,
        &p.state,
        &[
            on_drained("a"),
            running("b", "d1", 1),
            running("c", "d1", 25_000),
        ],
        &[],
        30_000,
    );
    assert!(p.start.is_empty(), "{p:?}");
    assert_eq!(
        p.stop,
        [("a".to_string(), "its node is being drained".to_string())]
    );

    // Every task drains: both replacements start; while they are not serving yet, the
    // drained ones are not excess to scale in — they serve until the replacements do.
    let p = pass(&svc, &st, &[on_drained("a"), on_drained("b")], &[], 20_000);
    assert_eq!(p.start.len(), 2, "{p:?}");
    assert!(p.stop.is_empty(), "{p:?}");
    let p = pass(
        &svc,
        &p.state,
        &[
            on_drained("a"),
            on_drained("b"),
            pending("n1", "d1"),
            pending("n2", "d1"),
        ],
        &[],
        21_000,
    );
    assert!(p.start.is_empty() && p.stop.is_empty(), "{p:?}");
    let p = pass(
        &svc,
        &p.state,
        &[
            on_drained("a"),
            on_drained("b"),
            running("n1", "d1", 21_500),
            pending("n2", "d1"),
        ],
        &[],
        22_000,
    );
    assert_eq!(
        p.stop.len(),
        1,
        "one may go once one replacement serves: {p:?}"
    );

    // 50% healthy, 100% max: no room for a replacement, so one goes first.
    let mut tight = service(2);
    tight.deployment.minimum_healthy_percent = 50;
    tight.deployment.maximum_percent = 100;
    let p = pass(
        &tight,
        &st,
        &[on_drained("a"), on_drained("b")],
        &[],
        20_000,
    );
    assert!(p.start.is_empty(), "{p:?}");
    assert_eq!(p.stop.len(), 1, "{p:?}");
    let gone = p.stop[0].0.clone();
    let left = if gone == "a" { "b" } else { "a" };
    let p = pass(&tight, &p.state, &[on_drained(left)], &[], 21_000);
    assert_eq!(p.start.len(), 1, "{p:?}");
    assert!(
        p.stop.is_empty(),
        "the last one serves until its replacement does: {p:?}"
    );

    // Not serving yet: stopped at once, replaced.
    let waiting = TaskView {
        draining: true,
        ..pending("p", "d1")
    };
    let p = pass(&svc, &st, &[waiting, running("b", "d1", 1)], &[], 20_000);
    assert_eq!(
        p.stop,
        [("p".to_string(), "its node is being drained".to_string())]
    );
    assert_eq!(p.start.len(), 1);

    // Nothing drains: nothing moves.
    let p = pass(
        &svc,
        &st,
        &[running("a", "d1", 1), running("b", "d1", 1)],
        &[],
        20_000,
    );
    assert!(p.start.is_empty() && p.stop.is_empty(), "{p:?}");
}
