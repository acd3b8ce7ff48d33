//! `skiff images ls|pull|rm|prune` and `skiff registry-creds put|ls|rm`.

use std::collections::HashMap;
use std::io::Read;

use clap::Subcommand;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use skiff_proto::v1 as pb;

use crate::conn::{api_error, connect};
use crate::output::{self, Format};

#[derive(Subcommand)]
pub enum ImagesCmd {
    /// List the images on the nodes, with disk use.
    Ls {
        /// One node (default: every connected node).
        #[arg(long)]
        node: Option<String>,
    },
    /// Pull an image onto the nodes (always contacting the registry).
    Pull {
        /// The image reference to pull.
        image: String,
        /// Only on this node (default: every connected node).
        #[arg(long)]
        node: Option<String>,
        /// Stored registry credentials to pull with (`skiff registry-creds put`).
        #[arg(long = "registry-creds")]
        registry_creds: Option<String>,
    },
    /// Remove an image (by name, digest or digest prefix) and the layers only it used.
    Rm {
        /// By name, digest or digest prefix.
        image: String,
        /// Only on this node (default: every connected node).
        #[arg(long)]
        node: Option<String>,
    },
    /// Remove every image no running task uses, and any content no image references.
    Prune {
        /// Only on this node (default: every connected node).
        #[arg(long)]
        node: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum RegistryCredsCmd {
    /// Store credentials for a registry; the password is read from standard input.
    Put {
        /// The name task definitions give as repository_credentials.
        name: String,
        /// The registry, HOST[:PORT] (docker.io for Docker Hub).
        #[arg(long)]
        server: String,
        /// The registry user name (the password is read from standard input).
        #[arg(long)]
        username: String,
    },
    /// List stored credentials (never their passwords).
    Ls,
    /// Delete stored credentials.
    Rm {
        /// The credentials' name.
        name: String,
    },
}

/// 1536 → "1.5 KiB".
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn short(digest: &str) -> String {
    digest
        .trim_start_matches("sha256:")
        .chars()
        .take(12)
        .collect()
}

fn image_json(i: &pb::ImageInfo) -> serde_json::Value {
    serde_json::json!({
        "digest": i.digest, "references": i.references, "size": i.size,
        "unpackedSize": i.unpacked_size, "inUse": i.in_use,
        "createdMs": i.created_ms, "lastUsedMs": i.last_used_ms,
    })
}

fn gc_json(g: &pb::NodeGc) -> serde_json::Value {
    let r = g.result.clone().unwrap_or_default();
    serde_json::json!({
        "nodeId": g.node_id, "error": g.error, "imagesRemoved": r.images_removed,
        "layersRemoved": r.layers_removed, "blobsRemoved": r.blobs_removed,
        "bytesFreed": r.bytes_freed,
    })
}

pub async fn images(addr: &str, fmt: Format, cmd: ImagesCmd) -> anyhow::Result<i32> {
    let mut c = pb::images_client::ImagesClient::new(connect(addr).await?);
    match cmd {
        ImagesCmd::Ls { node } => {
            let r = c
                .list(pb::ListImagesRequest {
                    node_id: node.unwrap_or_default(),
                })
                .await
                .map_err(api_error)?
                .into_inner();
            let failed = r.nodes.iter().any(|n| !n.error.is_empty());
            if fmt == Format::Json {
                let v: Vec<serde_json::Value> = r
                    .nodes
                    .iter()
                    .map(|n| {
                        let d = n.disk.unwrap_or_default();
                        serde_json::json!({
                            "nodeId": n.node_id, "error": n.error,
                            "images": n.images.iter().map(image_json).collect::<Vec<_>>(),
                            "disk": {"layersBytes": d.layers_bytes, "blobsBytes": d.blobs_bytes,
                                "budgetBytes": d.budget_bytes},
                        })
                    })
                    .collect();
                println!("{}", output::json(&v));
            } else {
                let mut rows = Vec::new();
                for n in &r.nodes {
                    for i in &n.images {
                        let name = if i.references.is_empty() {
                            "<none>".to_string()
                        } else {
                            i.references.join(", ")
                        };
                        rows.push(vec![
                            n.node_id.clone(),
                            name,
                            short(&i.digest),
                            bytes(i.size),
                            bytes(i.unpacked_size),
                            if i.in_use { "yes" } else { "" }.to_string(),
                            output::time(i.last_used_ms),
                        ]);
                    }
                }
                println!(
                    "{}",
                    output::table(
                        &[
                            "NODE",
                            "IMAGE",
                            "DIGEST",
                            "SIZE",
                            "UNPACKED",
                            "IN USE",
                            "LAST USED"
                        ],
                        rows
                    )
                );
                for n in &r.nodes {
                    if !n.error.is_empty() {
                        eprintln!("skiff: node {}: {}", n.node_id, n.error);
                        continue;
                    }
                    let d = n.disk.unwrap_or_default();
                    let budget = if d.budget_bytes > 0 {
                        format!(" (budget {})", bytes(d.budget_bytes))
                    } else {
                        String::new()
                    };
                    println!(
                        "node {}: images use {}{budget}",
                        n.node_id,
                        bytes(d.layers_bytes + d.blobs_bytes)
                    );
                }
            }
            Ok(if failed { 1 } else { 0 })
        }
        ImagesCmd::Pull {
            image,
            node,
            registry_creds,
        } => pull(&mut c, fmt, image, node, registry_creds).await,
        ImagesCmd::Rm { image, node } => {
            let r = c
                .remove(pb::RemoveImageRequest {
                    node_id: node.unwrap_or_default(),
                    image,
                })
                .await
                .map_err(api_error)?
                .into_inner();
            Ok(print_gc(fmt, &r))
        }
        ImagesCmd::Prune { node } => {
            let r = c
                .prune(pb::PruneImagesRequest {
                    node_id: node.unwrap_or_default(),
                })
                .await
                .map_err(api_error)?
                .into_inner();
            Ok(print_gc(fmt, &r))
        }
    }
}

fn print_gc(fmt: Format, r: &pb::ImageGcResponse) -> i32 {
    if fmt == Format::Json {
        let v: Vec<serde_json::Value> = r.nodes.iter().map(gc_json).collect();
        println!("{}", output::json(&v));
    } else {
        for n in &r.nodes {
            if !n.error.is_empty() {
                eprintln!("skiff: node {}: {}", n.node_id, n.error);
                continue;
            }
            let g = n.result.clone().unwrap_or_default();
            for d in &g.images_removed {
                println!("node {}: removed {d}", n.node_id);
            }
            println!(
                "node {}: {} image(s), {} layer(s), {} blob(s) removed, {} freed",
                n.node_id,
                g.images_removed.len(),
                g.layers_removed,
                g.blobs_removed,
                bytes(g.bytes_freed)
            );
        }
    }
    if r.nodes.iter().any(|n| !n.error.is_empty()) {
        1
    } else {
        0
    }
}

async fn pull(
    c: &mut pb::images_client::ImagesClient<crate::conn::Conn>,
    fmt: Format,
    image: String,
    node: Option<String>,
    registry_creds: Option<String>,
) -> anyhow::Result<i32> {
    let mut stream = c
        .pull(pb::PullImageRequest {
            node_id: node.unwrap_or_default(),
            image: image.clone(),
            repository_credentials: registry_creds.unwrap_or_default(),
        })
        .await
        .map_err(api_error)?
        .into_inner();
    // One bar per (node, layer), on stderr; hidden when stderr is not a terminal.
    let bars = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template(
        "{prefix:.bold} {bar:30} {bytes:>10}/{total_bytes:<10} {bytes_per_sec:>12}",
    )
    .expect("a valid template");
    let mut layer_bars: HashMap<(String, String), ProgressBar> = HashMap::new();
    let mut results = Vec::new();
    while let Some(msg) = stream.message().await.map_err(api_error)? {
        if let Some(p) = &msg.progress {
            let bar = layer_bars
                .entry((msg.node_id.clone(), p.layer.clone()))
                .or_insert_with(|| {
                    let b = bars.add(ProgressBar::new(p.total));
                    b.set_style(style.clone());
                    b.set_prefix(format!("{} {}", msg.node_id, short(&p.layer)));
                    b
                });
            bar.set_position(p.done);
            if p.done >= p.total {
                bar.finish();
            }
        }
        if msg.done {
            results.push(msg);
        }
    }
    let _ = bars.clear();
    let failed = results.iter().any(|r| !r.error.is_empty());
    if fmt == Format::Json {
        let v: Vec<serde_json::Value> = results
            .iter()
            .map(|r| {
                serde_json::json!({"nodeId": r.node_id, "error": r.error,
                    "image": r.image.as_ref().map(image_json)})
            })
            .collect();
        println!("{}", output::json(&v));
    } else {
        for r in &results {
            match &r.image {
                Some(i) if r.error.is_empty() => println!(
                    "node {}: {image} → {} ({})",
                    r.node_id,
                    i.digest,
                    bytes(i.size)
                ),
                _ => eprintln!("skiff: node {}: {}", r.node_id, r.error),
            }
        }
    }
    Ok(if failed { 1 } else { 0 })
}

pub async fn registry_creds(addr: &str, fmt: Format, cmd: RegistryCredsCmd) -> anyhow::Result<i32> {
    let mut c =
        pb::registry_credentials_client::RegistryCredentialsClient::new(connect(addr).await?);
    let print = |infos: Vec<pb::RegistryCredentialsInfo>| {
        if fmt == Format::Json {
            let v: Vec<serde_json::Value> = infos
                .iter()
                .map(|i| serde_json::json!({"name": i.name, "server": i.server, "username": i.username, "createdMs": i.created_ms}))
                .collect();
            println!("{}", output::json(&v));
        } else {
            let rows = infos
                .iter()
                .map(|i| {
                    vec![
                        i.name.clone(),
                        i.server.clone(),
                        i.username.clone(),
                        output::time(i.created_ms),
                    ]
                })
                .collect();
            println!(
                "{}",
                output::table(&["NAME", "SERVER", "USERNAME", "CREATED"], rows)
            );
        }
    };
    match cmd {
        RegistryCredsCmd::Put {
            name,
            server,
            username,
        } => {
            let mut password = String::new();
            std::io::stdin()
                .read_to_string(&mut password)
                .map_err(|e| anyhow::anyhow!("reading the password from stdin: {e}"))?;
            let password = password.trim_end_matches(['\n', '\r']).to_string();
            let info = c
                .put(pb::PutRegistryCredentialsRequest {
                    name,
                    server,
                    username,
                    password,
                })
                .await
                .map_err(api_error)?
                .into_inner();
            print(vec![info]);
        }
        RegistryCredsCmd::Ls => {
            let r = c
                .list(pb::ListRegistryCredentialsRequest {})
                .await
                .map_err(api_error)?
                .into_inner();
            print(r.credentials);
        }
        RegistryCredsCmd::Rm { name } => {
            let info = c
                .delete(pb::DeleteRegistryCredentialsRequest { name })
                .await
                .map_err(api_error)?
                .into_inner();
            print(vec![info]);
        }
    }
    Ok(0)
}
