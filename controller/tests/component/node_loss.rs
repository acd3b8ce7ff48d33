//! A node that goes silent loses its tasks after the node timeout (10 s here), not before; a
//! node that comes back in time keeps them. Each test has a witness: a node that went silent
//! earlier, whose task stopping proves the reaper ran at the moment the assertion is about.

use std::time::Duration;

use crate::harness::{FakeAgent, Harness};

/// A node holding exactly one 0.25 vCPU task of `family`: the next task goes elsewhere.
async fn node_with_task(h: &Harness, node: &str, family: &str) -> (FakeAgent, String) {
    let mut agent = FakeAgent::connect(h, node, 0.25, &[]).await;
    let task = h.run(family).await;
    assert_eq!(agent.next_start().await, task.id);
    let running = h.task_reaches(&task.id, "RUNNING").await;
    assert_eq!(running.node_id, node);
    (agent, task.id)
}

async fn disconnected(h: &Harness, agent: FakeAgent) {
    let node = agent.node_id.clone();
    agent.vanish();
    h.until(
        &format!("the controller sees {node}'s session end"),
        || async {
            if h.core.is_connected(&node) {
                Err("still connected".to_string())
            } else {
                Ok(())
            }
        },
    )
    .await;
}

#[tokio::test]
async fn a_silent_nodes_tasks_stop_as_node_lost_only_after_the_timeout() {
    let h = Harness::start().await;
    h.register("web").await;
    let (witness, witness_task) = node_with_task(&h, "early", "web").await;
    let (agent, task) = node_with_task(&h, "n1", "web").await;

    disconnected(&h, witness).await;
    h.advance(Duration::from_secs(2));
    disconnected(&h, agent).await;
    // 11 s after the witness went silent, 9 s after n1 did: the witness's task is lost,
    // n1's stays.
    h.advance(Duration::from_secs(9));
    let lost = h.task_reaches(&witness_task, "STOPPED").await;
    assert_eq!(lost.stop_code, "NodeLost");
    assert_eq!(h.task(&task).await.last_status, "RUNNING");
    // Past n1's timeout too: STOPPED with NodeLost, saying why.
    h.advance(Duration::from_secs(2));
    let lost = h.task_reaches(&task, "STOPPED").await;
    assert_eq!(lost.stop_code, "NodeLost");
    assert!(
        lost.stopped_reason
            .contains("node n1 was silent for more than 10s"),
        "{}",
        lost.stopped_reason
    );
    h.shutdown().await;
}

#[tokio::test]
async fn a_node_back_within_the_timeout_keeps_its_tasks() {
    let h = Harness::start().await;
    h.register("web").await;
    let (witness, witness_task) = node_with_task(&h, "early", "web").await;
    let (agent, task) = node_with_task(&h, "n1", "web").await;
    disconnected(&h, witness).await;
    disconnected(&h, agent).await;
    h.advance(Duration::from_secs(8));
    // Back after 8 s, still running its task: the silence ends there.
    let back = FakeAgent::connect(&h, "n1", 0.25, &[&task]).await;
    h.advance(Duration::from_secs(8));
    // 16 s after both went silent: the witness's task is lost, n1's is not.
    h.task_reaches(&witness_task, "STOPPED").await;
    let t = h.task(&task).await;
    assert_eq!(
        (t.last_status.as_str(), t.node_id.as_str()),
        ("RUNNING", "n1")
    );
    back.vanish();
    h.shutdown().await;
}
