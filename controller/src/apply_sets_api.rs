//! The ApplySets service: what `skiff apply` applied under each set name, so its `--prune`
//! deletes only what an earlier apply of the same set created.

use std::sync::Arc;

use skiff_proto::v1 as pb;
use tonic::{Request, Response, Status};

use crate::core::Core;
use crate::model::{ApplySet, ApplySetMember};
use skiff_model::validate;

/// The kinds an apply set may name (what `skiff apply` manages).
pub const KINDS: [&str; 9] = [
    "task_definition",
    "role",
    "queue",
    "topic",
    "subscription",
    "source",
    "rule",
    "schedule",
    "service",
];

fn set_pb(s: &ApplySet) -> pb::ApplySet {
    pb::ApplySet {
        name: s.name.clone(),
        members: s
            .members
            .iter()
            .map(|m| pb::ApplySetMember {
                kind: m.kind.clone(),
                name: m.name.clone(),
            })
            .collect(),
        updated_ms: s.updated_ms,
    }
}

fn from_pb(s: &pb::ApplySet, now: i64) -> Result<ApplySet, Status> {
    validate::check_name("name", &s.name).map_err(|e| Status::invalid_argument(e.to_string()))?;
    let mut members = Vec::with_capacity(s.members.len());
    for (i, m) in s.members.iter().enumerate() {
        if !KINDS.contains(&m.kind.as_str()) {
            return Err(Status::invalid_argument(format!(
                "members[{i}].kind: {:?} is not one of {}",
                m.kind,
                KINDS.join(", ")
            )));
        }
        if m.name.is_empty() {
            return Err(Status::invalid_argument(format!(
                "members[{i}].name: empty"
            )));
        }
        members.push(ApplySetMember {
            kind: m.kind.clone(),
            name: m.name.clone(),
        });
    }
    members.sort();
    members.dedup();
    Ok(ApplySet {
        name: s.name.clone(),
        members,
        updated_ms: now,
    })
}

pub struct ApplySetsApi {
    pub core: Arc<Core>,
}

#[tonic::async_trait]
impl pb::apply_sets_server::ApplySets for ApplySetsApi {
    async fn get(&self, req: Request<pb::ApplySetRef>) -> Result<Response<pb::ApplySet>, Status> {
        let name = &req.get_ref().name;
        match self.core.store.apply_sets.get(name)? {
            Some(s) => Ok(Response::new(set_pb(&s))),
            None => Err(Status::not_found(format!("name: no apply set {name:?}"))),
        }
    }

    async fn put(&self, req: Request<pb::ApplySet>) -> Result<Response<pb::ApplySet>, Status> {
        let set = from_pb(req.get_ref(), self.core.clock.now_ms())?;
        crate::apply_sets::put(&self.core, &set).await?;
        Ok(Response::new(set_pb(&set)))
    }

    async fn list(
        &self,
        _: Request<pb::ListApplySetsRequest>,
    ) -> Result<Response<pb::ListApplySetsResponse>, Status> {
        let sets = self
            .core
            .store
            .apply_sets
            .list()?
            .iter()
            .map(set_pb)
            .collect();
        Ok(Response::new(pb::ListApplySetsResponse { sets }))
    }

    async fn delete(
        &self,
        req: Request<pb::ApplySetRef>,
    ) -> Result<Response<pb::ApplySet>, Status> {
        let name = &req.get_ref().name;
        match crate::apply_sets::delete(&self.core, name).await? {
            Some(s) => Ok(Response::new(set_pb(&s))),
            None => Err(Status::not_found(format!("name: no apply set {name:?}"))),
        }
    }
}
