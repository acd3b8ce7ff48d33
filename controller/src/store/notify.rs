//! Topics, subscriptions and the notification outbox.
//!
//! A published message becomes one outbox entry per subscription in the same transaction as
//! the rule delivery's record, so a replayed event never enqueues twice and a crash never
//! loses one. An entry leaves the outbox only when delivered (removed) or dead-lettered
//! (moved to `notify_dead` in one transaction).

use sled::transaction::{ConflictableTransactionError, Transactional};

use super::{decode, due_key, encode, tx_error, Store, StoreError};
use crate::model::{Delivery, Subscription, Topic};

fn list<V: serde::de::DeserializeOwned>(
    tree: &sled::Tree,
    name: &'static str,
) -> Result<Vec<V>, StoreError> {
    tree.iter().map(|kv| decode(name, &kv?.1)).collect()
}

/// A transaction's error: the engine's, or the store error it was aborted with.
fn aborted(e: sled::transaction::TransactionError<StoreError>) -> StoreError {
    match e {
        sled::transaction::TransactionError::Abort(e) => e,
        sled::transaction::TransactionError::Storage(e) => e.into(),
    }
}

fn get<V: serde::de::DeserializeOwned>(
    tree: &sled::Tree,
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
        (
            self.topics.tree(),
            self.subscriptions.tree(),
            &self.outbox,
            &self.outbox_due,
            &self.notify_dead,
        )
            .transaction(|(t, s, o, due, d)| {
                t.remove(name)?;
                for id in &subs {
                    s.remove(id.as_bytes())?;
                }
                for (id, at) in &pending {
                    o.remove(id.as_bytes())?;
                    due.remove(due_key(*at, id))?;
                }
                for id in &dead {
                    d.remove(id.as_bytes())?;
                }
                Ok::<(), ConflictableTransactionError<()>>(())
            })
            .map_err(tx_error)?;
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
        (self.subscriptions.tree(), &self.outbox, &self.outbox_due)
            .transaction(|(subs, outbox, due)| {
                subs.insert(s.id.as_bytes(), bytes.as_slice())?;
                if let Some((id, d, at)) = &first {
                    outbox.insert(id.as_bytes(), d.as_slice())?;
                    due.insert(at.as_slice(), &[])?;
                }
                Ok::<(), ConflictableTransactionError<()>>(())
            })
            .map_err(tx_error)?;
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
        (self.subscriptions.tree(), &self.outbox, &self.outbox_due)
            .transaction(|(s, o, due)| {
                s.remove(id)?;
                for (p, at) in &pending {
                    o.remove(p.as_bytes())?;
                    due.remove(due_key(*at, p))?;
                }
                Ok::<(), ConflictableTransactionError<()>>(())
            })
            .map_err(tx_error)?;
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
        let res = self.subscriptions.tree().transaction(|subs| {
            let Some(bytes) = subs.get(id)? else {
                return Ok(None);
            };
            let mut sub: Subscription =
                decode("subscriptions", &bytes).map_err(ConflictableTransactionError::Abort)?;
            change(&mut sub);
            subs.insert(id.as_bytes(), encode(&sub))?;
            Ok(Some(sub))
        });
        let sub = res.map_err(aborted)?;
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
        let done = (
            &self.deliveries,
            &self.outbox,
            &self.outbox_due,
            &self.retries,
            self.subscriptions.tree(),
        )
            .transaction(|(del, outbox, due, retries, s)| {
                if del.get(key)?.is_some() {
                    return Ok(false);
                }
                for (id, d, at) in &encoded {
                    outbox.insert(id.as_bytes(), d.as_slice())?;
                    due.insert(at.as_slice(), &[])?;
                }
                for id in unconfirmed {
                    if let Some(bytes) = s.get(id.as_bytes())? {
                        let mut sub: Subscription = decode("subscriptions", &bytes)
                            .map_err(ConflictableTransactionError::Abort)?;
                        sub.skipped_unconfirmed += 1;
                        s.insert(id.as_bytes(), encode(&sub))?;
                    }
                }
                del.insert(key, marker.as_bytes())?;
                retries.remove(key)?;
                Ok(true)
            })
            .map_err(aborted)?;
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
            .insert(due_key(d.next_attempt_ms, &d.id), &[])?;
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
        (&self.outbox, &self.notify_dead)
            .transaction(|(o, dead)| {
                o.remove(d.id.as_bytes())?;
                dead.insert(d.id.as_bytes(), bytes.as_slice())?;
                Ok::<(), ConflictableTransactionError<()>>(())
            })
            .map_err(tx_error)?;
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
        (&self.outbox, &self.outbox_due, &self.notify_dead)
            .transaction(|(o, due, dead)| {
                for (id, d, at) in &encoded {
                    dead.remove(id.as_bytes())?;
                    o.insert(id.as_bytes(), d.as_slice())?;
                    due.insert(at.as_slice(), &[])?;
                }
                Ok::<(), ConflictableTransactionError<()>>(())
            })
            .map_err(tx_error)?;
        self.commit().await
    }
}
