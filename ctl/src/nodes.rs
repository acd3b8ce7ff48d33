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
        NodesCmd::Drain { nodes } => Some((nodes.clone(), "DRAINING")),
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
