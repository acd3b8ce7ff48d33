//! Topic operations in the core layer: put, delete (with its subscriptions and what is still
//! on its way), subscribe, confirm, unsubscribe and redrive (dead letters back into the
//! outbox). The Topics service
//! (`topics_api.rs`) checks its input and calls these.

use crate::core::{Core, CoreError};
use crate::model::{Delivery, DeliveryPolicy, Subscription, Topic};
use crate::wake::Loop;

/// Creates or replaces a topic, keeping its creation time.
pub async fn put(
    core: &Core,
    name: &str,
    description: &str,
    delivery: DeliveryPolicy,
    dead_letter_queue: &str,
) -> Result<Topic, CoreError> {
    if !dead_letter_queue.is_empty() && core.store.queues.get(dead_letter_queue)?.is_none() {
        return Err(CoreError::BadReference(format!(
            "dead_letter_queue: {dead_letter_queue:?}: no such queue (skiff queues create {dead_letter_queue})"
        )));
    }
    let now = core.clock.now_ms();
    Ok(core
        .store
        .topics
        .upsert(name, |old| Topic {
            name: name.to_string(),
            description: description.to_string(),
            delivery,
            dead_letter_queue: dead_letter_queue.to_string(),
            created_ms: old.as_ref().map_or(now, |o| o.created_ms),
            updated_ms: now,
        })
        .await?)
}

pub async fn delete(core: &Core, name: &str) -> Result<Option<Topic>, CoreError> {
    Ok(core.store.delete_topic(name).await?)
}

/// Puts a topic's dead letters (of one subscription, or all) back in the outbox as fresh
/// deliveries due now; returns how many.
pub async fn redrive(core: &Core, topic: &str, subscription: &str) -> Result<usize, CoreError> {
    let now = core.clock.now_ms();
    let again: Vec<Delivery> = core
        .store
        .notify_dead(Some(topic))?
        .into_iter()
        .filter(|d| subscription.is_empty() || d.subscription == subscription)
        .map(|mut d| {
            d.attempts = 0;
            d.next_attempt_ms = now;
            d.dead_ms = None;
            d
        })
        .collect();
    core.store.redrive(&again).await?;
    core.loops.wake(Loop::Notifications);
    Ok(again.len())
}

/// Stores a subscription (checked already) with what it sends first, if anything (an e-mail
/// subscription's confirmation request), in one transaction.
pub async fn subscribe(
    core: &Core,
    sub: &Subscription,
    first: Option<&Delivery>,
) -> Result<(), CoreError> {
    core.store.put_subscription(sub, first).await?;
    core.loops.wake(Loop::Notifications);
    Ok(())
}

/// Marks a subscription confirmed if its confirmation token's digest is still `digest` (read
/// and written in one transaction). None: no such subscription.
pub async fn confirm(
    core: &Core,
    id: &str,
    digest: &str,
) -> Result<Option<Subscription>, CoreError> {
    Ok(core
        .store
        .update_subscription(id, |s| {
            if s.confirm_token_sha256 == digest {
                s.confirmed = true;
                s.confirm_token_sha256.clear();
            }
        })
        .await?)
}

/// Removes a subscription and what is still on its way to it.
pub async fn unsubscribe(core: &Core, id: &str) -> Result<Option<Subscription>, CoreError> {
    Ok(core.store.delete_subscription(id).await?)
}
