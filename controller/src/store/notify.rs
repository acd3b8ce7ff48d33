//! Topics, subscriptions and the notification outbox.
//!
//! A published message becomes one outbox entry per subscription in the same transaction as
//! the rule delivery's record, so a replayed event never enqueues twice and a crash never
//! loses one. An entry leaves the outbox only when delivered (removed) or dead-lettered
//! (moved to `notify_dead` in one transaction).

use super::tree::Tree;
use super::{decode, encode, Store, StoreError};
use crate::model::{Delivery, Subscription, Topic};

fn list<V: serde::de::DeserializeOwned>(
    tree: &Tree,
    name: &'static str,
) -> Result<Vec<V>, StoreError> {
    tree.iter().map(|kv| decode(name, &kv?.1)).collect()
}

fn get<V: serde::de::DeserializeOwned>(
    tree: &Tree,
    name: &'static str,
    key: &str,
) -> Result<Option<V>, StoreError> {
    tree.get(key)?.map(|v| decode(name, &v)).transpose()
}

impl Store {
    /// Removes a topic with its subscriptions, pending deliveries and dead letters.
    pub async fn delete_topic(&self, name: &str) -> Result<Option<Topic>, StoreError> {
        let Some(topic) = self.topics.get(name)? else {
            return Ok(None);
        };
        let subs: Vec<String> = self
            .subscriptions(Some(name))?
            .into_iter()
            .map(|s| s.id)
            .collect();
        let pending: Vec<String> = self
            .outbox
            .list()?
            .into_iter()
            .filter(|d| d.topic == name)
            .map(|d| d.id)
            .collect();
        let dead: Vec<String> = self
            .notify_dead(Some(name))?
            .into_iter()
            .map(|d| d.id)
            .collect();
        let trees = [
            &[
                self.topics.tree(),
                self.subscriptions.tree(),
                &self.notify_dead,
            ][..],
            &self.outbox.trees(),
        ]
        .concat();
        self.transact(&trees, |tx| {
            tx.remove(self.topics.tree(), name)?;
            for id in &subs {
                tx.remove(self.subscriptions.tree(), id)?;
            }
            for id in &pending {
                self.outbox.remove_in(tx, id.as_bytes())?;
            }
            for id in &dead {
                tx.remove(&self.notify_dead, id)?;
            }
            Ok(())
        })?;
        self.commit().await?;
        Ok(Some(topic))
    }

    /// Stores a subscription and, in the same transaction, what it sends first (an e-mail
    /// subscription's confirmation request).
    pub async fn put_subscription(
        &self,
        s: &Subscription,
        first: Option<&Delivery>,
    ) -> Result<(), StoreError> {
        let bytes = encode(s);
        let trees = [&[self.subscriptions.tree()][..], &self.outbox.trees()].concat();
        self.transact(&trees, |tx| {
            tx.insert(self.subscriptions.tree(), &s.id, &bytes)?;
            if let Some(d) = first {
                self.outbox.put_in(tx, d)?;
            }
            Ok(())
        })?;
        self.commit().await
    }

    pub fn subscription(&self, id: &str) -> Result<Option<Subscription>, StoreError> {
        get(self.subscriptions.tree(), "subscriptions", id)
    }

    /// Subscriptions, of one topic or all, oldest first.
    pub fn subscriptions(&self, topic: Option<&str>) -> Result<Vec<Subscription>, StoreError> {
        let mut all: Vec<Subscription> = list(self.subscriptions.tree(), "subscriptions")?;
        all.retain(|s| topic.is_none_or(|t| s.topic == t));
        all.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
        Ok(all)
    }

    /// Removes a subscription and what is still on its way to it.
    pub async fn delete_subscription(&self, id: &str) -> Result<Option<Subscription>, StoreError> {
        let Some(sub) = self.subscriptions.get(id)? else {
            return Ok(None);
        };
        let pending: Vec<String> = self
            .outbox
            .list()?
            .into_iter()
            .filter(|d| d.subscription == id)
            .map(|d| d.id)
            .collect();
        let trees = [&[self.subscriptions.tree()][..], &self.outbox.trees()].concat();
        self.transact(&trees, |tx| {
            tx.remove(self.subscriptions.tree(), id)?;
            for p in &pending {
                self.outbox.remove_in(tx, p.as_bytes())?;
            }
            Ok(())
        })?;
        self.commit().await?;
        Ok(Some(sub))
    }

    /// Changes a subscription in one transaction (read, `change`, write), so concurrent
    /// changes (a confirmation, a counter) never overwrite each other. None if it is gone.
    pub async fn update_subscription(
        &self,
        id: &str,
        change: impl Fn(&mut Subscription),
    ) -> Result<Option<Subscription>, StoreError> {
        let subs = self.subscriptions.tree();
        let sub = self.transact(&[subs], |tx| {
            let Some(bytes) = tx.get(subs, id)? else {
                return Ok(None);
            };
            let mut sub: Subscription = decode("subscriptions", &bytes)?;
            change(&mut sub);
            tx.insert(subs, id, encode(&sub))?;
            Ok(Some(sub))
        })?;
        self.commit().await?;
        Ok(sub)
    }

    /// Enqueues a published message's deliveries unless delivery `key` (rule, target, event)
    /// already did; also ends that key's pending retry, and counts the message as skipped for
    /// the `unconfirmed` subscriptions (read and written inside the transaction, so a
    /// confirmation at the same moment is kept). Returns whether it enqueued.
    pub async fn enqueue_deliveries(
        &self,
        key: &str,
        deliveries: &[Delivery],
        unconfirmed: &[String],
    ) -> Result<bool, StoreError> {
        let marker = format!("notified:{}", deliveries.len());
        let subs = self.subscriptions.tree();
        let trees = [
            &[&self.deliveries, subs][..],
            &self.outbox.trees(),
            &self.retries.trees(),
        ]
        .concat();
        let done = self.transact(&trees, |tx| {
            if tx.get(&self.deliveries, key)?.is_some() {
                return Ok(false);
            }
            for d in deliveries {
                self.outbox.put_in(tx, d)?;
            }
            for id in unconfirmed {
                if let Some(bytes) = tx.get(subs, id)? {
                    let mut sub: Subscription = decode("subscriptions", &bytes)?;
                    sub.skipped_unconfirmed += 1;
                    tx.insert(subs, id, encode(&sub))?;
                }
            }
            tx.insert(&self.deliveries, key, &marker)?;
            self.retries.remove_in(tx, key.as_bytes())?;
            Ok(true)
        })?;
        if done {
            self.commit().await?;
        }
        Ok(done)
    }

    /// Moves a delivery that ran out of attempts (or was refused for good) from the outbox
    /// to the dead letters and, when given, queues `message` in its topic's dead-letter
    /// queue, in one transaction.
    pub async fn dead_letter_delivery(
        &self,
        d: &Delivery,
        message: Option<&crate::model::QueueMessage>,
    ) -> Result<(), StoreError> {
        let bytes = encode(d);
        let trees = [
            &[&self.notify_dead][..],
            &self.outbox.trees(),
            &self.messages.trees(),
        ]
        .concat();
        self.transact(&trees, |tx| {
            self.outbox.remove_in(tx, d.id.as_bytes())?;
            if let Some(m) = message {
                self.messages.put_in(tx, m)?;
            }
            tx.insert(&self.notify_dead, &d.id, &bytes)
        })?;
        self.commit().await
    }

    pub fn notify_dead(&self, topic: Option<&str>) -> Result<Vec<Delivery>, StoreError> {
        let mut all: Vec<Delivery> = list(&self.notify_dead, "notify_dead")?;
        all.retain(|d| topic.is_none_or(|t| d.topic == t));
        Ok(all)
    }

    /// Moves dead letters back into the outbox (as given: fresh attempts, due now), in one
    /// transaction.
    pub async fn redrive(&self, again: &[Delivery]) -> Result<(), StoreError> {
        let trees = [&[&self.notify_dead][..], &self.outbox.trees()].concat();
        self.transact(&trees, |tx| {
            for d in again {
                tx.remove(&self.notify_dead, &d.id)?;
                self.outbox.put_in(tx, d)?;
            }
            Ok(())
        })?;
        self.commit().await
    }
}
