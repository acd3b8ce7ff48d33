//! Answers the controller's image commands (`skiff images ls|pull|rm|prune`): each runs as a
//! task of its own and replies on the session with its request id — progress messages for a
//! pull, then one final reply with `done` set.

use std::sync::Arc;

use skiff_proto::v1 as pb;
use tracing::info;

use crate::images::{Credentials, GcReport, ImageSummary, PullPolicy};
use crate::AgentInner;

pub fn start(agent: Arc<AgentInner>, cmd: pb::ImageCommand) {
    tokio::spawn(async move {
        let id = cmd.request_id;
        let reply = match cmd.op {
            Some(pb::image_command::Op::List(_)) => list(&agent),
            Some(pb::image_command::Op::Pull(p)) => pull(&agent, id, p).await,
            Some(pb::image_command::Op::Remove(r)) => match agent.images.remove(&r.image).await {
                Ok(gc) => gc_reply(gc),
                Err(e) => error(e.to_string()),
            },
            Some(pb::image_command::Op::Prune(_)) => gc_reply(agent.images.prune().await),
            None => error("empty image command".into()),
        };
        agent.send(pb::agent_message::Body::Image(pb::ImageReply {
            request_id: id,
            done: true,
            ..reply
        }));
    });
}

fn error(e: String) -> pb::ImageReply {
    pb::ImageReply {
        error: e,
        ..Default::default()
    }
}

pub fn image_info(s: &ImageSummary) -> pb::ImageInfo {
    pb::ImageInfo {
        digest: s.digest.clone(),
        references: s.references.clone(),
        size: s.size,
        unpacked_size: s.unpacked_size,
        in_use: s.in_use,
        created_ms: s.created_ms,
        last_used_ms: s.last_used_ms,
    }
}

fn list(agent: &AgentInner) -> pb::ImageReply {
    let d = agent.images.disk_usage();
    pb::ImageReply {
        images: agent.images.list().iter().map(image_info).collect(),
        disk: Some(pb::ImageDiskUsage {
            layers_bytes: d.layers,
            blobs_bytes: d.blobs,
            budget_bytes: d.budget.unwrap_or(0),
        }),
        ..Default::default()
    }
}

fn gc_reply(gc: GcReport) -> pb::ImageReply {
    if !gc.images_removed.is_empty() || gc.bytes_freed > 0 {
        info!(images = ?gc.images_removed, bytes = gc.bytes_freed, "images removed");
    }
    pb::ImageReply {
        gc: Some(pb::ImageGcResult {
            images_removed: gc.images_removed,
            layers_removed: gc.layers_removed as u32,
            blobs_removed: gc.blobs_removed as u32,
            bytes_freed: gc.bytes_freed,
        }),
        ..Default::default()
    }
}

async fn pull(agent: &Arc<AgentInner>, request_id: u64, p: pb::ImagePull) -> pb::ImageReply {
    let creds = p.registry_auth.map(|a| Credentials {
        username: a.username,
        password: a.password,
        server: a.server,
    });
    // Forward this image's download progress while the pull runs, and whatever is still
    // queued once it is done (so every progress message precedes the final reply).
    let mut progress = agent.images.subscribe_progress();
    let forward = |ev: crate::images::ProgressEvent| {
        if ev.image == p.image {
            agent.send(pb::agent_message::Body::Image(pb::ImageReply {
                request_id,
                progress: Some(pb::ImagePullProgress {
                    layer: ev.layer,
                    done: ev.done,
                    total: ev.total,
                }),
                ..Default::default()
            }));
        }
    };
    let pulling = agent
        .images
        .ensure(&p.image, PullPolicy::Always, creds.as_ref());
    tokio::pin!(pulling);
    let result = loop {
        tokio::select! {
            biased;
            ev = progress.recv() => match ev {
                Ok(ev) => forward(ev),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break (&mut pulling).await,
            },
            r = &mut pulling => break r,
        }
    };
    while let Ok(ev) = progress.try_recv() {
        forward(ev);
    }
    match result {
        Ok(image) => {
            let digest = image.digest.clone().unwrap_or_default();
            drop(image);
            let summary = agent.images.list().into_iter().find(|s| s.digest == digest);
            pb::ImageReply {
                images: summary.iter().map(image_info).collect(),
                ..Default::default()
            }
        }
        Err(e) => error(e.to_string()),
    }
}
