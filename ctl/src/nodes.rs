//! `skiff nodes`: list nodes with capacity and use, take one out of service (cordon,
//! drain) and back, and cut one off.

use clap::Subcommand;
use skiff_proto::v1 as pb;

use crate::conn::{api_error, connect};
use crate::output::{self, Format};

#[derive(Subcommand)]
pub enum NodesCmd {
    /// List nodes with capacity and use.
    Ls,
    /// Cut a node off: its certificates are refused from now on (TLS controllers).
    Revoke {
        /// The node's id.
        node: String,
    },
    /// Stop placing new tasks on nodes; the tasks running there stay.
    Cordon {
        /// The nodes' ids.
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Stop placing new tasks on nodes and move their service tasks to other nodes, each
    /// service within its deployment limits (a task stops once its replacement serves when
    /// minimum healthy percent asks for it). Tasks of no service stay until they end.
    Drain {
        /// The nodes' ids.
        #[arg(required = true)]
        nodes: Vec<String>,
        /// Wait until no service task is left on them; fails at once if a replacement can
        /// never be placed (the drained node then keeps its task).
        #[arg(long)]
        wait: bool,
        /// With --wait: give up after this long (exit code 2).
        #[arg(long, default_value = "5m", value_parser = |s: &str| humantime::parse_duration(s).map_err(|e| format!("{s:?}: {e} (give e.g. 30s, 5m)")))]
        timeout: std::time::Duration,
    },
    /// Let cordoned or draining nodes take tasks again.
    Uncordon {
        /// The nodes' ids.
        #[arg(required = true)]
        nodes: Vec<String>,
    },
}

pub async fn nodes(addr: &str, fmt: Format, cmd: NodesCmd) -> anyhow::Result<i32> {
    let mut client = pb::nodes_client::NodesClient::new(connect(addr).await?);
    let set = match &cmd {
        NodesCmd::Cordon { nodes } => Some((nodes.clone(), "CORDONED")),
        NodesCmd::Drain { nodes, .. } => Some((nodes.clone(), "DRAINING")),
        NodesCmd::Uncordon { nodes } => Some((nodes.clone(), "READY")),
        _ => None,
    };
    if let Some((nodes, state)) = set {
        let r = client
            .set_state(pb::SetNodeStateRequest {
                node_ids: nodes,
                state: state.into(),
            })
            .await
            .map_err(api_error)?
            .into_inner();
        match fmt {
            Format::Json => println!(
                "{}",
                serde_json::Value::Array(
                    r.nodes
                        .iter()
                        .map(|n| serde_json::json!({"node": n.node_id, "state": n.state, "previousState": n.previous_state}))
                        .collect()
                )
            ),
            Format::Table => {
                for n in &r.nodes {
                    println!("node {}: {} (was {})", n.node_id, n.state, n.previous_state);
                }
            }
        }
        if let NodesCmd::Drain {
            nodes,
            wait: true,
            timeout,
        } = &cmd
        {
            return drained(addr, nodes, *timeout).await;
        }
        return Ok(0);
    }
    if let NodesCmd::Revoke { node } = cmd {
        let r = client
            .revoke(pb::RevokeNodeRequest {
                node_id: node.clone(),
            })
            .await
            .map_err(api_error)?
            .into_inner();
        match fmt {
            Format::Json => println!(
                "{}",
                serde_json::json!({"node": node, "certificatesRevoked": r.certificates_revoked})
            ),
            Format::Table => println!(
                "node {node}: {} certificate(s) revoked",
                r.certificates_revoked
            ),
        }
        return Ok(0);
    }
    let resp = client
        .list(pb::ListNodesRequest {})
        .await
        .map_err(api_error)?
        .into_inner();
    match fmt {
        Format::Json => println!("{}", output::json(&resp.nodes)),
        Format::Table => println!(
            "{}",
            output::table(
                &[
                    "NODE",
                    "STATE",
                    "CONNECTED",
                    "CPU (USED/TOTAL)",
                    "MEMORY MiB (USED/TOTAL)",
                    "TASKS",
                    "VERSION"
                ],
                resp.nodes
                    .iter()
                    .map(|n| vec![
                        n.id.clone(),
                        n.state.clone(),
                        if n.connected {
                            "yes".into()
                        } else {
                            "no".into()
                        },
                        format!("{}/{}", n.cpu_used, n.cpu),
                        format!("{}/{}", n.memory_used_mib, n.memory_mib),
                        n.running_tasks.to_string(),
                        n.version.clone(),
                    ])
                    .collect()
            )
        ),
    }
    Ok(0)
}

/// Waits until no active service task is left on `nodes`: 0 when none is, 2 at the timeout;
/// an error at once when a service task waits for a node it can never get.
async fn drained(
    addr: &str,
    nodes: &[String],
    timeout: std::time::Duration,
) -> anyhow::Result<i32> {
    let mut tasks = pb::tasks_client::TasksClient::new(connect(addr).await?);
    let deadline = std::time::Instant::now() + timeout;
    let is_service = |t: &pb::Task| t.group.starts_with("service:");
    loop {
        let mut left = 0;
        for node in nodes {
            let on = tasks
                .list(pb::ListTasksRequest {
                    node_id: node.clone(),
                    ..Default::default()
                })
                .await
                .map_err(api_error)?
                .into_inner();
            left += on
                .tasks
                .iter()
                .filter(|t| is_service(t) && t.last_status != "STOPPED")
                .count();
        }
        if left == 0 {
            eprintln!("{}: no service task left", nodes.join(", "));
            return Ok(0);
        }
        let waiting = tasks
            .list(pb::ListTasksRequest {
                status: "PROVISIONING".into(),
                ..Default::default()
            })
            .await
            .map_err(api_error)?
            .into_inner();
        if let Some(t) = waiting
            .tasks
            .iter()
            .find(|t| is_service(t) && t.unplaceable)
        {
            anyhow::bail!(
                "the drain cannot finish: task {} of {} can never be placed: {}",
                t.id,
                t.group.trim_start_matches("service:"),
                t.status_reason
            );
        }
        if std::time::Instant::now() >= deadline {
            eprintln!(
                "{}: {left} service task(s) still there after {}",
                nodes.join(", "),
                humantime::format_duration(timeout)
            );
            return Ok(2);
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
