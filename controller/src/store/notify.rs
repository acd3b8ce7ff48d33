//! Topics, subscriptions and the notification outbox.
//!
//! A published message becomes one outbox entry per subscription in the same transaction as
//! the rule delivery's record, so a replayed event never enqueues twice and a crash never
//! loses one. An entry leaves the outbox only when delivered (removed) or dead-lettered
//! (moved to `notify_dead` in one transaction).

use super::tree::Tree;
use super::{decode, due_key, encode, Store, StoreError};
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
        let pending: Vec<(String, i64)> = self
            .outbox()?
            .into_iter()
            .filter(|d| d.topic == name)
            .map(|d| (d.id, d.next_attempt_ms))
            .collect();
        let dead: Vec<String> = self
            .notify_dead(Some(name))?
            .into_iter()
            .map(|d| d.id)
            .collect();
        let trees = [
            self.topics.tree(),
            self.subscriptions.tree(),
            &self.outbox,
            &self.outbox_due,
            &self.notify_dead,
        ];
        self.transact(&trees, |tx| {
            tx.remove(self.topics.tree(), name)?;
            for id in &subs {
                tx.remove(self.subscriptions.tree(), id)?;
            }
            for (id, at) in &pending {
                tx.remove(&self.outbox, id)?;
                tx.remove(&self.outbox_due, due_key(*at, id))?;
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
        let first = first.map(|d| (d.id.clone(), encode(d), due_key(d.next_attempt_ms, &d.id)));
        let trees = [self.subscriptions.tree(), &self.outbox, &self.outbox_due];
        self.transact(&trees, |tx| {
            tx.insert(self.subscriptions.tree(), &s.id, &bytes)?;
            if let Some((id, d, at)) = &first {
                tx.insert(&self.outbox, id, d)?;
                tx.insert(&self.outbox_due, at, [])?;
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
        let pending: Vec<(String, i64)> = self
            .outbox()?
            .into_iter()
            .filter(|d| d.subscription == id)
            .map(|d| (d.id, d.next_attempt_ms))
            .collect();
        let trees = [self.subscriptions.tree(), &self.outbox, &self.outbox_due];
        self.transact(&trees, |tx| {
            tx.remove(self.subscriptions.tree(), id)?;
            for (p, at) in &pending {
                tx.remove(&self.outbox, p)?;
                tx.remove(&self.outbox_due, due_key(*at, p))?;
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
        let encoded: Vec<(String, Vec<u8>, Vec<u8>)> = deliveries
            .iter()
            .map(|d| (d.id.clone(), encode(d), due_key(d.next_attempt_ms, &d.id)))
            .collect();
        let marker = format!("notified:{}", deliveries.len());
        let subs = self.subscriptions.tree();
        let trees = [
            &self.deliveries,
            &self.outbox,
            &self.outbox_due,
            &self.retries,
            subs,
        ];
        let done = self.transact(&trees, |tx| {
            if tx.get(&self.deliveries, key)?.is_some() {
                return Ok(false);
            }
            for (id, d, at) in &encoded {
                tx.insert(&self.outbox, id, d)?;
                tx.insert(&self.outbox_due, at, [])?;
            }
            for id in unconfirmed {
                if let Some(bytes) = tx.get(subs, id)? {
                    let mut sub: Subscription = decode("subscriptions", &bytes)?;
                    sub.skipped_unconfirmed += 1;
                    tx.insert(subs, id, encode(&sub))?;
                }
            }
            tx.insert(&self.deliveries, key, &marker)?;
            tx.remove(&self.retries, key)?;
            Ok(true)
        })?;
        if done {
            self.commit().await?;
        }
        Ok(done)
    }

    pub fn outbox(&self) -> Result<Vec<Delivery>, StoreError> {
        list(&self.outbox, "outbox")
    }

    /// Up to `limit` deliveries due at `now_ms`, earliest first, read through the due-time
    /// index; and when the next one after those is due (None: nothing else is waiting).
    ///
    /// The index is a hint kept beside the records, the record decides: an index key whose
    /// record is gone or due at another time (left by a crash between the two writes of a
    /// move below) is dropped here, and every open rebuilds the index from the records.
    pub fn due_deliveries(
        &self,
        now_ms: i64,
        limit: usize,
    ) -> Result<(Vec<Delivery>, Option<i64>), StoreError> {
        let mut due = Vec::new();
        for kv in self.outbox_due.iter() {
            let (k, _) = kv?;
            let at = i64::from_be_bytes(k[..8].try_into().expect("8-byte time prefix"));
            if at > now_ms || due.len() >= limit {
                return Ok((due, Some(at)));
            }
            match self.outbox.get(&k[8..])? {
                Some(v) => {
                    let d: Delivery = decode("outbox", &v)?;
                    if d.next_attempt_ms == at {
                        due.push(d);
                    } else {
                        self.outbox_due.remove(&k)?;
                    }
                }
                None => {
                    self.outbox_due.remove(&k)?;
                }
            }
        }
        Ok((due, None))
    }

    /// Records a failed attempt: the entry stays, due at its new time (`d`), no longer at
    /// `was_due_ms`. The new index key goes first, so a crash never leaves a record the index
    /// does not lead to.
    pub async fn put_delivery(&self, d: &Delivery, was_due_ms: i64) -> Result<(), StoreError> {
        self.outbox_due
            .insert(due_key(d.next_attempt_ms, &d.id), [])?;
        self.outbox.insert(d.id.as_bytes(), encode(d))?;
        if was_due_ms != d.next_attempt_ms {
            self.outbox_due.remove(due_key(was_due_ms, &d.id))?;
        }
        self.commit().await
    }

    /// A delivery done (it was due at `was_due_ms`): out of the outbox and its index.
    pub async fn delivered_notification(
        &self,
        id: &str,
        was_due_ms: i64,
    ) -> Result<(), StoreError> {
        self.outbox.remove(id)?;
        self.outbox_due.remove(due_key(was_due_ms, id))?;
        self.commit().await
    }

    /// Moves a delivery that ran out of attempts (or was refused for good) to the dead
    /// letters, in one transaction; then out of the index (it was due at `was_due_ms`).
    pub async fn dead_letter_delivery(
        &self,
        d: &Delivery,
        was_due_ms: i64,
    ) -> Result<(), StoreError> {
        let bytes = encode(d);
        self.transact(&[&self.outbox, &self.notify_dead], |tx| {
            tx.remove(&self.outbox, &d.id)?;
            tx.insert(&self.notify_dead, &d.id, &bytes)
        })?;
        self.outbox_due.remove(due_key(was_due_ms, &d.id))?;
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
        let encoded: Vec<(String, Vec<u8>, Vec<u8>)> = again
            .iter()
            .map(|d| (d.id.clone(), encode(d), due_key(d.next_attempt_ms, &d.id)))
            .collect();
        self.transact(&[&self.outbox, &self.outbox_due, &self.notify_dead], |tx| {
            for (id, d, at) in &encoded {
                tx.remove(&self.notify_dead, id)?;
                tx.insert(&self.outbox, id, d)?;
                tx.insert(&self.outbox_due, at, [])?;
            }
            Ok(())
        })?;
        self.commit().await
    }
}
