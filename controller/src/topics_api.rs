//! The Topics service: topics, subscriptions (with e-mail confirmation and webhook signing
//! secrets), the notification dead letters and their redrive.

use std::collections::HashMap;
use std::sync::Arc;

use skiff_proto::v1 as pb;
use tonic::{Request, Response, Status};

use crate::core::Core;
use crate::model::{Delivery, DeliveryKind, DeliveryPolicy, Protocol, Subscription, Topic};
use skiff_model::validate;

fn invalid(field: &str, msg: impl std::fmt::Display) -> Status {
    Status::invalid_argument(format!("{field}: {msg}"))
}

fn policy_from_pb(p: Option<&pb::DeliveryPolicy>) -> Result<DeliveryPolicy, Status> {
    let d = DeliveryPolicy::default();
    let Some(p) = p else {
        return Ok(d);
    };
    let pick = |v: u32, default: u32| if v == 0 { default } else { v };
    let out = DeliveryPolicy {
        max_attempts: pick(p.max_attempts, d.max_attempts),
        min_delay_ms: pick(p.min_delay_ms, d.min_delay_ms),
        max_delay_ms: pick(p.max_delay_ms, d.max_delay_ms),
        timeout_ms: pick(p.timeout_ms, d.timeout_ms),
    };
    if out.timeout_ms > 60_000 {
        return Err(invalid("delivery.timeout_ms", "at most a minute"));
    }
    if out.max_attempts > 1000 {
        return Err(invalid("delivery.max_attempts", "at most 1000"));
    }
    if out.max_delay_ms > 24 * 3600 * 1000 {
        return Err(invalid("delivery.max_delay_ms", "at most a day"));
    }
    if out.min_delay_ms > out.max_delay_ms {
        return Err(invalid(
            "delivery.min_delay_ms",
            format!(
                "{} is more than max_delay_ms {}",
                out.min_delay_ms, out.max_delay_ms
            ),
        ));
    }
    Ok(out)
}

fn topic_pb(t: &Topic) -> pb::Topic {
    pb::Topic {
        name: t.name.clone(),
        description: t.description.clone(),
        delivery: Some(pb::DeliveryPolicy {
            max_attempts: t.delivery.max_attempts,
            min_delay_ms: t.delivery.min_delay_ms,
            max_delay_ms: t.delivery.max_delay_ms,
            timeout_ms: t.delivery.timeout_ms,
        }),
        created_ms: t.created_ms,
        updated_ms: t.updated_ms,
        dead_letter_queue: t.dead_letter_queue.clone(),
    }
}

fn subscription_pb(s: &Subscription) -> pb::Subscription {
    pb::Subscription {
        id: s.id.clone(),
        topic: s.topic.clone(),
        protocol: match s.protocol {
            Protocol::Webhook => "webhook",
            Protocol::Email => "email",
            Protocol::Queue => "queue",
        }
        .into(),
        endpoint: s.endpoint.clone(),
        filter_json: s.filter.as_ref().map(|f| f.to_string()).unwrap_or_default(),
        raw: Some(s.raw),
        require_confirmation: None,
        status: if s.confirmed {
            "confirmed"
        } else {
            "pending-confirmation"
        }
        .into(),
        created_ms: s.created_ms,
        skipped_unconfirmed: s.skipped_unconfirmed,
    }
}

fn delivery_pb(d: &Delivery) -> pb::NotificationDelivery {
    pb::NotificationDelivery {
        id: d.id.clone(),
        topic: d.topic.clone(),
        subscription: d.subscription.clone(),
        rule: d.rule.clone(),
        event_id: d.event_id.clone(),
        attempts: d.attempts,
        last_error: d.last_error.clone(),
        created_ms: d.created_ms,
        next_attempt_ms: d.next_attempt_ms,
        dead_ms: d.dead_ms.unwrap_or(0),
    }
}

/// Checks an endpoint for its protocol.
fn check_endpoint(protocol: Protocol, endpoint: &str) -> Result<(), Status> {
    match protocol {
        Protocol::Webhook => {
            let u = url::Url::parse(endpoint)
                .map_err(|e| invalid("endpoint", format!("{endpoint:?}: {e}")))?;
            if u.scheme() != "http" && u.scheme() != "https" {
                return Err(invalid(
                    "endpoint",
                    format!("{endpoint:?}: use an http or https URL"),
                ));
            }
            if u.host_str().is_none_or(str::is_empty) {
                return Err(invalid("endpoint", format!("{endpoint:?}: no host")));
            }
        }
        Protocol::Queue => {}
        Protocol::Email => {
            endpoint.parse::<lettre::Address>().map_err(|e| {
                invalid(
                    "endpoint",
                    format!("{endpoint:?} is not an e-mail address ({e})"),
                )
            })?;
        }
    }
    Ok(())
}

/// Confirms an e-mail subscription with its token (from the API or the mail's link).
pub async fn confirm(core: &Core, id: &str, token: &str) -> Result<Subscription, Status> {
    let sub = core
        .store
        .subscriptions
        .get(id)?
        .ok_or_else(|| Status::not_found(format!("id: no subscription {id:?}")))?;
    if sub.confirmed {
        return Ok(sub);
    }
    let digest = crate::auth::sha256_hex(token);
    if token.is_empty() || digest != sub.confirm_token_sha256 {
        return Err(Status::permission_denied(
            "token: does not match this subscription's confirmation token",
        ));
    }
    crate::topics::confirm(core, id, &digest)
        .await?
        .ok_or_else(|| Status::not_found(format!("id: no subscription {id:?}")))
}

pub struct TopicsApi {
    pub core: Arc<Core>,
}

impl TopicsApi {
    fn status(&self, t: &Topic) -> Result<pb::TopicStatus, Status> {
        let subs = self.core.store.subscriptions(Some(&t.name))?;
        let mut pending: HashMap<String, u32> = HashMap::new();
        for d in self
            .core
            .store
            .outbox
            .list()?
            .iter()
            .filter(|d| d.topic == t.name)
        {
            *pending.entry(d.subscription.clone()).or_default() += 1;
        }
        let mut dead: HashMap<String, u32> = HashMap::new();
        for d in self.core.store.notify_dead(Some(&t.name))? {
            *dead.entry(d.subscription).or_default() += 1;
        }
        let delivered = subs
            .iter()
            .map(|s| (s.id.clone(), self.core.notifier.delivered(&s.id)))
            .collect();
        Ok(pb::TopicStatus {
            topic: Some(topic_pb(t)),
            subscriptions: subs.iter().map(subscription_pb).collect(),
            pending,
            dead,
            delivered,
        })
    }
}

#[tonic::async_trait]
impl pb::topics_server::Topics for TopicsApi {
    async fn put(&self, req: Request<pb::Topic>) -> Result<Response<pb::Topic>, Status> {
        let t = req.get_ref();
        validate::check_name("name", &t.name)
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let delivery = policy_from_pb(t.delivery.as_ref())?;
        if !t.dead_letter_queue.is_empty() {
            validate::check_name("dead_letter_queue", &t.dead_letter_queue)
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
        }
        if crate::auth::dry_run(&req) {
            return Ok(Response::new(topic_pb(&Topic {
                name: t.name.clone(),
                description: t.description.clone(),
                delivery,
                dead_letter_queue: t.dead_letter_queue.clone(),
                created_ms: 0,
                updated_ms: 0,
            })));
        }
        let topic = crate::topics::put(
            &self.core,
            &t.name,
            &t.description,
            delivery,
            &t.dead_letter_queue,
        )
        .await?;
        Ok(Response::new(topic_pb(&topic)))
    }

    async fn describe(
        &self,
        req: Request<pb::TopicRef>,
    ) -> Result<Response<pb::TopicStatus>, Status> {
        let name = &req.get_ref().name;
        let t = self
            .core
            .store
            .topics
            .get(name)?
            .ok_or_else(|| Status::not_found(format!("name: no topic {name:?}")))?;
        Ok(Response::new(self.status(&t)?))
    }

    async fn list(
        &self,
        _: Request<pb::ListTopicsRequest>,
    ) -> Result<Response<pb::ListTopicsResponse>, Status> {
        let topics = self
            .core
            .store
            .topics
            .list()?
            .iter()
            .map(|t| self.status(t))
            .collect::<Result<_, _>>()?;
        Ok(Response::new(pb::ListTopicsResponse { topics }))
    }

    async fn delete(&self, req: Request<pb::TopicRef>) -> Result<Response<pb::Topic>, Status> {
        let name = &req.get_ref().name;
        let users: Vec<String> = self
            .core
            .store
            .rules
            .list()?
            .into_iter()
            .filter(|r| {
                r.targets
                    .iter()
                    .any(|t| matches!(&t.kind, crate::model::TargetKind::Topic(n) if n == name))
            })
            .map(|r| r.name)
            .collect();
        if !users.is_empty() {
            return Err(Status::failed_precondition(format!(
                "name: topic {name:?} is the target of rule(s) {}; change them first",
                users.join(", ")
            )));
        }
        match crate::topics::delete(&self.core, name).await? {
            Some(t) => Ok(Response::new(topic_pb(&t))),
            None => Err(Status::not_found(format!("name: no topic {name:?}"))),
        }
    }

    async fn subscribe(
        &self,
        req: Request<pb::Subscription>,
    ) -> Result<Response<pb::SubscribeResponse>, Status> {
        let admin = crate::auth::caller_role(&req) == crate::auth::Role::Admin;
        let s = req.get_ref();
        if self.core.store.topics.get(&s.topic)?.is_none() {
            return Err(Status::not_found(format!("topic: no topic {:?}", s.topic)));
        }
        let protocol = match s.protocol.as_str() {
            "webhook" => Protocol::Webhook,
            "email" => Protocol::Email,
            "queue" => Protocol::Queue,
            p => {
                return Err(invalid(
                    "protocol",
                    format!("{p:?}: use webhook, email or queue"),
                ))
            }
        };
        check_endpoint(protocol, &s.endpoint)?;
        if protocol == Protocol::Queue && self.core.store.queues.get(&s.endpoint)?.is_none() {
            return Err(invalid(
                "endpoint",
                format!(
                    "{:?}: no such queue (skiff queues create {})",
                    s.endpoint, s.endpoint
                ),
            ));
        }
        if protocol == Protocol::Email && !self.core.notifier.can_mail() {
            return Err(Status::failed_precondition(
                "protocol: email needs a mail server: start the controller with --smtp-url and --smtp-from",
            ));
        }
        let filter = if s.filter_json.trim().is_empty() {
            None
        } else {
            let v: serde_json::Value = serde_json::from_str(&s.filter_json)
                .map_err(|e| invalid("filter", format!("not JSON: {e}")))?;
            crate::notify::compile_filter(&v).map_err(Status::invalid_argument)?;
            Some(v)
        };
        let confirm = protocol == Protocol::Email && s.require_confirmation.unwrap_or(true);
        if protocol == Protocol::Email && !confirm && !admin {
            return Err(Status::permission_denied(
                "require_confirmation: only an admin token may skip the confirmation of an e-mail subscription",
            ));
        }
        let id = ulid::Ulid::new().to_string().to_lowercase();
        let now = self.core.clock.now_ms();
        let (secret, sealed) = if protocol == Protocol::Webhook {
            let secret = format!("whsec_{}", crate::notify::random_token(24));
            let name = format!("subscription/{id}");
            let (nonce, ciphertext) = self.core.secrets.seal(&name, secret.as_bytes());
            (
                secret.clone(),
                Some(crate::model::SealedSecret {
                    name,
                    version: 1,
                    nonce,
                    ciphertext,
                    size: secret.len() as u64,
                    created_ms: now,
                    updated_ms: now,
                }),
            )
        } else {
            (String::new(), None)
        };
        let token = confirm.then(|| crate::notify::random_token(16));
        let sub = Subscription {
            id: id.clone(),
            topic: s.topic.clone(),
            protocol,
            endpoint: s.endpoint.clone(),
            filter,
            raw: s.raw.unwrap_or(protocol != Protocol::Email),
            confirmed: !confirm,
            confirm_token_sha256: token
                .as_deref()
                .map(crate::auth::sha256_hex)
                .unwrap_or_default(),
            signing_secret: sealed,
            skipped_unconfirmed: 0,
            created_ms: now,
        };
        let first = token.map(|token| Delivery {
            id: ulid::Ulid::new().to_string(),
            topic: sub.topic.clone(),
            subscription: id.clone(),
            kind: DeliveryKind::Confirmation { token },
            rule: String::new(),
            event_id: String::new(),
            message: String::new(),
            attempts: 0,
            last_error: String::new(),
            created_ms: now,
            next_attempt_ms: now,
            dead_ms: None,
        });
        crate::topics::subscribe(&self.core, &sub, first.as_ref()).await?;
        Ok(Response::new(pb::SubscribeResponse {
            subscription: Some(subscription_pb(&sub)),
            signing_secret: secret,
        }))
    }

    async fn unsubscribe(
        &self,
        req: Request<pb::SubscriptionRef>,
    ) -> Result<Response<pb::Subscription>, Status> {
        let id = &req.get_ref().id;
        match crate::topics::unsubscribe(&self.core, id).await? {
            Some(s) => Ok(Response::new(subscription_pb(&s))),
            None => Err(Status::not_found(format!("id: no subscription {id:?}"))),
        }
    }

    async fn confirm(
        &self,
        req: Request<pb::ConfirmSubscriptionRequest>,
    ) -> Result<Response<pb::Subscription>, Status> {
        let r = req.get_ref();
        let sub = confirm(&self.core, &r.id, &r.token).await?;
        Ok(Response::new(subscription_pb(&sub)))
    }

    async fn list_dead_letters(
        &self,
        req: Request<pb::ListNotificationDeadLettersRequest>,
    ) -> Result<Response<pb::ListNotificationDeadLettersResponse>, Status> {
        let topic = &req.get_ref().topic;
        let deliveries = self
            .core
            .store
            .notify_dead((!topic.is_empty()).then_some(topic.as_str()))?
            .iter()
            .map(delivery_pb)
            .collect();
        Ok(Response::new(pb::ListNotificationDeadLettersResponse {
            deliveries,
        }))
    }

    async fn redrive(
        &self,
        req: Request<pb::RedriveRequest>,
    ) -> Result<Response<pb::RedriveResponse>, Status> {
        let r = req.get_ref();
        if self.core.store.topics.get(&r.topic)?.is_none() {
            return Err(Status::not_found(format!("topic: no topic {:?}", r.topic)));
        }
        let redriven = crate::topics::redrive(&self.core, &r.topic, &r.subscription).await?;
        Ok(Response::new(pb::RedriveResponse {
            redriven: redriven as u32,
        }))
    }
}
