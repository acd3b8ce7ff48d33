//! The controller as `skiff apply` sees it: each kind's current record, the record a file
//! would make (the Put's dry run, so the server's defaults are filled in as they would be),
//! and the calls that create, change and delete — all as comparable JSON.

use serde_json::{json, Value};
use skiff_proto::v1 as pb;
use tonic::{Code, Request, Status};

use super::compare::without;
use super::files::Spec;
use super::kind::Kind;
use crate::conn::{api_error, connect, Conn};

/// Fields the server keeps for itself, never declared in files.
const KEPT: &[&str] = &[
    "createdMs",
    "updatedMs",
    "version",
    "stats",
    "lastError",
    "lastErrorMs",
    "lastListedMs",
    "revision",
    "status",
    "registeredAtMs",
];

fn json_of<T: serde::Serialize>(v: &T) -> Value {
    without(serde_json::to_value(v).unwrap_or(Value::Null), KEPT)
}

fn dry<T>(msg: T) -> Request<T> {
    let mut req = Request::new(msg);
    req.metadata_mut().insert(
        "skiff-dry-run",
        tonic::metadata::MetadataValue::from_static("1"),
    );
    req
}

/// `Ok(None)` for NOT_FOUND.
fn found<T>(r: Result<tonic::Response<T>, Status>) -> anyhow::Result<Option<T>> {
    match r {
        Ok(r) => Ok(Some(r.into_inner())),
        Err(s) if s.code() == Code::NotFound => Ok(None),
        Err(s) => Err(api_error(s)),
    }
}

/// A subscription as compared: what its declaration can say.
fn subscription_json(
    protocol: &str,
    endpoint: &str,
    filter_json: &str,
    raw: Option<bool>,
) -> Value {
    let filter = serde_json::from_str::<Value>(filter_json).unwrap_or(Value::Null);
    json!({
        "protocol": protocol,
        "endpoint": endpoint,
        "filter": filter,
        "raw": raw.unwrap_or(protocol != "email"),
    })
}

fn split_subscription(name: &str) -> Option<(&str, &str, &str)> {
    let (topic, rest) = name.split_once('/')?;
    let (protocol, endpoint) = rest.split_once(':')?;
    Some((topic, protocol, endpoint))
}

pub struct Server {
    roles: pb::roles_client::RolesClient<Conn>,
    queues: pb::queues_client::QueuesClient<Conn>,
    topics: pb::topics_client::TopicsClient<Conn>,
    taskdefs: pb::task_definitions_client::TaskDefinitionsClient<Conn>,
    sources: pb::sources_client::SourcesClient<Conn>,
    rules: pb::rules_client::RulesClient<Conn>,
    schedules: pb::schedules_client::SchedulesClient<Conn>,
    services: pb::services_client::ServicesClient<Conn>,
    sets: pb::apply_sets_client::ApplySetsClient<Conn>,
}

impl Server {
    pub async fn connect(addr: &str) -> anyhow::Result<Server> {
        let c = connect(addr).await?;
        Ok(Server {
            roles: pb::roles_client::RolesClient::new(c.clone()),
            queues: pb::queues_client::QueuesClient::new(c.clone()),
            topics: pb::topics_client::TopicsClient::new(c.clone()),
            taskdefs: pb::task_definitions_client::TaskDefinitionsClient::new(c.clone()),
            sources: pb::sources_client::SourcesClient::new(c.clone()),
            rules: pb::rules_client::RulesClient::new(c.clone()),
            schedules: pb::schedules_client::SchedulesClient::new(c.clone()),
            services: pb::services_client::ServicesClient::new(c.clone()),
            sets: pb::apply_sets_client::ApplySetsClient::new(c),
        })
    }

    /// The resource as the server has it now (None: there is none). A service also shows
    /// the task definition revision its primary deployment runs (`deployedTaskDefinition`).
    pub async fn current(&mut self, kind: Kind, name: &str) -> anyhow::Result<Option<Value>> {
        let name_s = name.to_string();
        Ok(match kind {
            Kind::Role => {
                found(self.roles.get(pb::RoleRef { name: name_s }).await)?.map(|r| json_of(&r))
            }
            Kind::Queue => found(self.queues.describe(pb::QueueRef { name: name_s }).await)?
                .and_then(|s| s.queue)
                .map(|q| json_of(&q)),
            Kind::Topic => found(self.topics.describe(pb::TopicRef { name: name_s }).await)?
                .and_then(|s| s.topic)
                .map(|t| json_of(&t)),
            Kind::Subscription => self
                .find_subscription(name)
                .await?
                .map(|s| subscription_json(&s.protocol, &s.endpoint, &s.filter_json, s.raw)),
            Kind::TaskDefinition => found(
                self.taskdefs
                    .describe(pb::DescribeTaskDefinitionRequest {
                        task_definition: name_s,
                    })
                    .await,
            )?
            .map(|d| json_of(&d)),
            Kind::Source => self
                .sources
                .list(pb::ListSourcesRequest {})
                .await
                .map_err(api_error)?
                .into_inner()
                .sources
                .into_iter()
                .find(|s| s.name == name)
                .map(|s| json_of(&s)),
            Kind::Rule => {
                found(self.rules.get(pb::RuleRef { name: name_s }).await)?.map(|r| json_of(&r))
            }
            Kind::Schedule => found(
                self.schedules
                    .describe(pb::ScheduleRef { name: name_s })
                    .await,
            )?
            .and_then(|s| s.schedule)
            .map(|s| json_of(&s)),
            Kind::Service => found(
                self.services
                    .describe(pb::ServiceRef { name: name_s })
                    .await,
            )?
            .map(|st| {
                let mut v = json_of(&st.service.unwrap_or_default());
                let deployed = st
                    .deployments
                    .iter()
                    .find(|d| d.status == "PRIMARY")
                    .map(|d| d.task_definition.clone())
                    .unwrap_or_default();
                v["deployedTaskDefinition"] = json!(deployed);
                v
            }),
        })
    }

    async fn find_subscription(&mut self, name: &str) -> anyhow::Result<Option<pb::Subscription>> {
        let Some((topic, protocol, endpoint)) = split_subscription(name) else {
            return Ok(None);
        };
        let status = found(
            self.topics
                .describe(pb::TopicRef {
                    name: topic.to_string(),
                })
                .await,
        )?;
        Ok(status.and_then(|st| {
            st.subscriptions
                .into_iter()
                .find(|s| s.protocol == protocol && s.endpoint == endpoint)
        }))
    }

    /// What the server would store from the declaration (its Put's dry run: checked, with
    /// the defaults filled in). A subscription has no dry run: its defaults are the
    /// documented ones (raw for webhooks, readable mail for e-mail).
    pub async fn normalized(&mut self, spec: &Spec) -> Result<Value, Status> {
        Ok(match spec.clone() {
            Spec::Role(r) => json_of(&self.roles.put(dry(r)).await?.into_inner()),
            Spec::Queue(q) => json_of(&self.queues.put(dry(q)).await?.into_inner()),
            Spec::Topic(t) => json_of(&self.topics.put(dry(t)).await?.into_inner()),
            Spec::Subscription(s) => {
                if !s.filter_json.is_empty()
                    && serde_json::from_str::<Value>(&s.filter_json).is_err()
                {
                    return Err(Status::invalid_argument("filter: not JSON"));
                }
                subscription_json(&s.protocol, &s.endpoint, &s.filter_json, s.raw)
            }
            Spec::TaskDefinition(d) => json_of(
                &self
                    .taskdefs
                    .register(dry(pb::RegisterTaskDefinitionRequest {
                        definition: Some(d),
                    }))
                    .await?
                    .into_inner(),
            ),
            Spec::Source(s) => json_of(&self.sources.put(dry(s)).await?.into_inner()),
            Spec::Rule(r) => json_of(&self.rules.put(dry(r)).await?.into_inner()),
            Spec::Schedule(s) => json_of(&self.schedules.put(dry(s)).await?.into_inner()),
            Spec::Service(s) => json_of(
                &self
                    .services
                    .put(dry(pb::PutServiceRequest {
                        service: Some(s),
                        force_new_deployment: false,
                    }))
                    .await?
                    .into_inner()
                    .service
                    .unwrap_or_default(),
            ),
        })
    }

    /// The newest ACTIVE revision of a family, as `family:revision`.
    pub async fn latest_revision(&mut self, family: &str) -> anyhow::Result<Option<String>> {
        Ok(found(
            self.taskdefs
                .describe(pb::DescribeTaskDefinitionRequest {
                    task_definition: family.to_string(),
                })
                .await,
        )?
        .map(|d| format!("{}:{}", d.family, d.revision)))
    }

    /// Creates or replaces the resource; returns what the user must see once (a new
    /// revision, a webhook's signing secret).
    pub async fn put(&mut self, spec: &Spec) -> anyhow::Result<Option<String>> {
        Ok(match spec.clone() {
            Spec::Role(r) => {
                self.roles.put(r).await.map_err(api_error)?;
                None
            }
            Spec::Queue(q) => {
                self.queues.put(q).await.map_err(api_error)?;
                None
            }
            Spec::Topic(t) => {
                self.topics.put(t).await.map_err(api_error)?;
                None
            }
            Spec::Subscription(s) => {
                // A subscription cannot be changed in place: the old one goes, a new one
                // (with a new signing secret, or a new confirmation) comes.
                if let Some(old) = self.find_subscription(&spec.name()).await? {
                    self.topics
                        .unsubscribe(pb::SubscriptionRef { id: old.id })
                        .await
                        .map_err(api_error)?;
                }
                let r = self
                    .topics
                    .subscribe(s)
                    .await
                    .map_err(api_error)?
                    .into_inner();
                let sub = r.subscription.unwrap_or_default();
                Some(if !r.signing_secret.is_empty() {
                    format!(
                        "id {}, signing secret {} (shown once)",
                        sub.id, r.signing_secret
                    )
                } else {
                    format!("id {}, {}", sub.id, sub.status)
                })
            }
            Spec::TaskDefinition(d) => {
                let def = self
                    .taskdefs
                    .register(pb::RegisterTaskDefinitionRequest {
                        definition: Some(d),
                    })
                    .await
                    .map_err(api_error)?
                    .into_inner();
                Some(format!("{}:{}", def.family, def.revision))
            }
            Spec::Source(s) => {
                self.sources.put(s).await.map_err(api_error)?;
                None
            }
            Spec::Rule(r) => {
                self.rules.put(r).await.map_err(api_error)?;
                None
            }
            Spec::Schedule(s) => {
                self.schedules.put(s).await.map_err(api_error)?;
                None
            }
            Spec::Service(s) => {
                let st = self
                    .services
                    .put(pb::PutServiceRequest {
                        service: Some(s),
                        force_new_deployment: false,
                    })
                    .await
                    .map_err(api_error)?
                    .into_inner();
                st.deployments
                    .first()
                    .map(|d| format!("deployment of {}", d.task_definition))
            }
        })
    }

    /// Deletes the resource (a task definition: deregisters its ACTIVE revisions); false
    /// when it was not there.
    pub async fn delete(&mut self, kind: Kind, name: &str) -> anyhow::Result<bool> {
        let n = name.to_string();
        let gone = |r: Result<(), Status>| match r {
            Ok(()) => Ok(true),
            Err(s) if s.code() == Code::NotFound => Ok(false),
            Err(s) => Err(api_error(s)),
        };
        match kind {
            Kind::Role => gone(self.roles.delete(pb::RoleRef { name: n }).await.map(drop)),
            Kind::Queue => gone(self.queues.delete(pb::QueueRef { name: n }).await.map(drop)),
            Kind::Topic => gone(self.topics.delete(pb::TopicRef { name: n }).await.map(drop)),
            Kind::Subscription => match self.find_subscription(name).await? {
                Some(s) => gone(
                    self.topics
                        .unsubscribe(pb::SubscriptionRef { id: s.id })
                        .await
                        .map(drop),
                ),
                None => Ok(false),
            },
            Kind::TaskDefinition => {
                let defs = self
                    .taskdefs
                    .list(pb::ListTaskDefinitionsRequest {
                        family: n,
                        include_inactive: false,
                    })
                    .await
                    .map_err(api_error)?
                    .into_inner()
                    .definitions;
                for d in &defs {
                    self.taskdefs
                        .deregister(pb::DescribeTaskDefinitionRequest {
                            task_definition: format!("{}:{}", d.family, d.revision),
                        })
                        .await
                        .map_err(api_error)?;
                }
                Ok(!defs.is_empty())
            }
            Kind::Source => gone(
                self.sources
                    .delete(pb::SourceRef { name: n })
                    .await
                    .map(drop),
            ),
            Kind::Rule => gone(self.rules.delete(pb::RuleRef { name: n }).await.map(drop)),
            Kind::Schedule => gone(
                self.schedules
                    .delete(pb::ScheduleRef { name: n })
                    .await
                    .map(drop),
            ),
            Kind::Service => gone(
                self.services
                    .delete(pb::ServiceRef { name: n })
                    .await
                    .map(drop),
            ),
        }
    }

    /// The members of an apply set (none when it was never recorded).
    pub async fn set_members(&mut self, set: &str) -> anyhow::Result<Vec<(Kind, String)>> {
        let Some(s) = found(
            self.sets
                .get(pb::ApplySetRef {
                    name: set.to_string(),
                })
                .await,
        )?
        else {
            return Ok(vec![]);
        };
        Ok(s.members
            .into_iter()
            .filter_map(|m| Kind::parse(&m.kind).map(|k| (k, m.name)))
            .collect())
    }

    /// Records the set's members (durable on return).
    pub async fn put_set(&mut self, set: &str, members: &[(Kind, String)]) -> anyhow::Result<()> {
        self.sets
            .put(pb::ApplySet {
                name: set.to_string(),
                members: members
                    .iter()
                    .map(|(k, n)| pb::ApplySetMember {
                        kind: k.as_str().to_string(),
                        name: n.clone(),
                    })
                    .collect(),
                updated_ms: 0,
            })
            .await
            .map_err(api_error)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn subscription_names_split_back() {
        let n =
            super::super::files::subscription_name("admins", "webhook", "https://h.lan:8443/x?a=b");
        assert_eq!(
            super::split_subscription(&n),
            Some(("admins", "webhook", "https://h.lan:8443/x?a=b"))
        );
    }
}
