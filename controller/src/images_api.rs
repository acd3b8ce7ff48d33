//! The Images and RegistryCredentials APIs. Image operations run on the agents: the
//! controller forwards each as an image command on the node's session and relays the replies.

use std::sync::Arc;

use futures::StreamExt;
use skiff_proto::v1 as pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::agent_link::registry_auth;
use crate::api::ApiStream;
use crate::applier::registry_creds;
use crate::core::Core;
use crate::model::RegistryCreds;
use skiff_model::validate;

/// The nodes an image request addresses: one by id, or every connected node.
fn target_nodes(core: &Core, node_id: &str) -> Result<Vec<String>, Status> {
    if !node_id.is_empty() {
        if core.store.nodes.get(node_id)?.is_none() {
            return Err(Status::not_found(format!("node_id: no node {node_id:?}")));
        }
        if !core.is_connected(node_id) {
            return Err(Status::unavailable(format!(
                "node_id: node {node_id} is not connected"
            )));
        }
        return Ok(vec![node_id.to_string()]);
    }
    let nodes: Vec<String> = core
        .store
        .nodes
        .list()?
        .into_iter()
        .map(|n| n.id)
        .filter(|id| core.is_connected(id))
        .collect();
    if nodes.is_empty() {
        return Err(Status::unavailable("no node is connected"));
    }
    Ok(nodes)
}

/// Sends `op` to `node` and waits for its final reply.
async fn ask(core: &Core, node: &str, op: pb::image_command::Op) -> Result<pb::ImageReply, String> {
    let mut rx = core
        .link
        .image_command(node, op)
        .await
        .map_err(|e| e.to_string())?;
    while let Some(reply) = rx.recv().await {
        if reply.done {
            return Ok(reply);
        }
    }
    Err(format!("node {node} disconnected before answering"))
}

pub struct ImagesApi {
    pub core: Arc<Core>,
}

#[tonic::async_trait]
impl pb::images_server::Images for ImagesApi {
    async fn list(
        &self,
        req: Request<pb::ListImagesRequest>,
    ) -> Result<Response<pb::ListImagesResponse>, Status> {
        let nodes = target_nodes(&self.core, &req.get_ref().node_id)?;
        let answers = futures::future::join_all(
            nodes
                .iter()
                .map(|n| ask(&self.core, n, pb::image_command::Op::List(pb::ImageList {}))),
        )
        .await;
        let nodes = nodes
            .into_iter()
            .zip(answers)
            .map(|(node_id, a)| match a {
                Ok(r) => pb::NodeImages {
                    node_id,
                    images: r.images,
                    disk: r.disk,
                    error: r.error,
                },
                Err(error) => pb::NodeImages {
                    node_id,
                    error,
                    ..Default::default()
                },
            })
            .collect();
        Ok(Response::new(pb::ListImagesResponse { nodes }))
    }

    type PullStream = ApiStream<pb::PullImageProgress>;

    async fn pull(
        &self,
        req: Request<pb::PullImageRequest>,
    ) -> Result<Response<Self::PullStream>, Status> {
        let req = req.into_inner();
        validate::check_image("image", &req.image)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let auth = if req.repository_credentials.is_empty() {
            None
        } else {
            if self
                .core
                .store
                .registry_creds
                .get(&req.repository_credentials)?
                .is_none()
            {
                return Err(Status::invalid_argument(format!(
                    "repository_credentials: no registry credentials named {:?}",
                    req.repository_credentials
                )));
            }
            registry_creds(&self.core, &req.repository_credentials).map(|c| registry_auth(&c))
        };
        let nodes = target_nodes(&self.core, &req.node_id)?;
        let (tx, rx) = mpsc::channel(64);
        for node in nodes {
            let op = pb::image_command::Op::Pull(pb::ImagePull {
                image: req.image.clone(),
                registry_auth: auth.clone(),
            });
            let mut replies = match self.core.link.image_command(&node, op).await {
                Ok(r) => r,
                Err(e) => {
                    let _ = tx
                        .send(Ok(pb::PullImageProgress {
                            node_id: node,
                            done: true,
                            error: e.to_string(),
                            ..Default::default()
                        }))
                        .await;
                    continue;
                }
            };
            let tx = tx.clone();
            tokio::spawn(async move {
                while let Some(r) = replies.recv().await {
                    let done = r.done;
                    let msg = pb::PullImageProgress {
                        node_id: node.clone(),
                        progress: r.progress,
                        done,
                        image: r.images.into_iter().next(),
                        error: r.error,
                    };
                    if tx.send(Ok(msg)).await.is_err() || done {
                        return;
                    }
                }
                let _ = tx
                    .send(Ok(pb::PullImageProgress {
                        node_id: node.clone(),
                        done: true,
                        error: format!("node {node} disconnected during the pull"),
                        ..Default::default()
                    }))
                    .await;
            });
        }
        Ok(Response::new(crate::api::until_stopping(
            &self.core,
            ReceiverStream::new(rx),
        )))
    }

    async fn remove(
        &self,
        req: Request<pb::RemoveImageRequest>,
    ) -> Result<Response<pb::ImageGcResponse>, Status> {
        let req = req.into_inner();
        if req.image.is_empty() {
            return Err(Status::invalid_argument("image: must not be empty"));
        }
        let op = pb::image_command::Op::Remove(pb::ImageRemove { image: req.image });
        gc_on(&self.core, &req.node_id, op).await
    }

    async fn prune(
        &self,
        req: Request<pb::PruneImagesRequest>,
    ) -> Result<Response<pb::ImageGcResponse>, Status> {
        let op = pb::image_command::Op::Prune(pb::ImagePrune {});
        gc_on(&self.core, &req.get_ref().node_id, op).await
    }
}

async fn gc_on(
    core: &Core,
    node_id: &str,
    op: pb::image_command::Op,
) -> Result<Response<pb::ImageGcResponse>, Status> {
    let nodes = target_nodes(core, node_id)?;
    let answers = futures::stream::iter(nodes.iter().cloned())
        .then(|n| {
            let op = op.clone();
            async move { ask(core, &n, op).await }
        })
        .collect::<Vec<_>>()
        .await;
    let nodes = nodes
        .into_iter()
        .zip(answers)
        .map(|(node_id, a)| match a {
            Ok(r) => pb::NodeGc {
                node_id,
                result: r.gc,
                error: r.error,
            },
            Err(error) => pb::NodeGc {
                node_id,
                error,
                ..Default::default()
            },
        })
        .collect();
    Ok(Response::new(pb::ImageGcResponse { nodes }))
}

pub struct RegistryCredentialsApi {
    pub core: Arc<Core>,
}

fn info(c: &RegistryCreds) -> pb::RegistryCredentialsInfo {
    pb::RegistryCredentialsInfo {
        name: c.name.clone(),
        server: c.server.clone(),
        username: c.username.clone(),
        created_ms: c.created_ms,
    }
}

#[tonic::async_trait]
impl pb::registry_credentials_server::RegistryCredentials for RegistryCredentialsApi {
    async fn put(
        &self,
        req: Request<pb::PutRegistryCredentialsRequest>,
    ) -> Result<Response<pb::RegistryCredentialsInfo>, Status> {
        let r = req.into_inner();
        validate::check_name("name", &r.name)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let server = validate::registry_server("server", &r.server)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        if r.username.is_empty() {
            return Err(Status::invalid_argument("username: must not be empty"));
        }
        if r.password.is_empty() {
            return Err(Status::invalid_argument("password: must not be empty"));
        }
        let creds =
            crate::registries::put(&self.core, r.name, server, r.username, r.password).await?;
        Ok(Response::new(info(&creds)))
    }

    async fn list(
        &self,
        _: Request<pb::ListRegistryCredentialsRequest>,
    ) -> Result<Response<pb::ListRegistryCredentialsResponse>, Status> {
        let credentials = self
            .core
            .store
            .registry_creds
            .list()?
            .iter()
            .map(info)
            .collect();
        Ok(Response::new(pb::ListRegistryCredentialsResponse {
            credentials,
        }))
    }

    async fn delete(
        &self,
        req: Request<pb::DeleteRegistryCredentialsRequest>,
    ) -> Result<Response<pb::RegistryCredentialsInfo>, Status> {
        let name = &req.get_ref().name;
        match crate::registries::delete(&self.core, name).await? {
            Some(c) => Ok(Response::new(info(&c))),
            None => Err(Status::not_found(format!(
                "name: no registry credentials {name:?}"
            ))),
        }
    }
}
