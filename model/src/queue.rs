//! Queue decisions, pure: what a receive does to a message (hand it out, invisible until a
//! moment, or move it to the dead-letter queue), receipt handles, retention, and the counts a
//! queue reports. The controller's `queues.rs` applies them to the store.

use crate::model::{Queue, QueueMessage};

/// How long a FIFO queue remembers a deduplication id: a send with one seen this recently is
/// accepted but not queued again (SQS: 5 minutes).
pub const DEDUP_WINDOW_MS: i64 = 5 * 60 * 1000;

/// The FIFO messages a receive may take at `now_ms`, at most `max`, from all of a queue's
/// messages in send order: per message group, in order, and none of a group behind one that
/// is in flight (or still delayed) — so a group is worked on by one receiver at a time.
pub fn fifo_receivable(messages: &[QueueMessage], now_ms: i64, max: usize) -> Vec<usize> {
    let mut blocked: std::collections::HashSet<&str> = std::collections::HashSet::new();
    let mut out = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        if out.len() >= max {
            break;
        }
        if blocked.contains(m.group.as_str()) {
            continue;
        }
        if m.visible_ms <= now_ms {
            out.push(i);
        } else {
            blocked.insert(m.group.as_str());
        }
    }
    out
}

/// What receiving a visible message does.
#[derive(Debug, PartialEq)]
pub enum Receive {
    /// Hand it out: the message as it is now (invisible until `visible_ms`, counted, with the
    /// receipt nonce of this receive).
    Deliver(QueueMessage),
    /// It has been received `max_receive_count` times already: move it to the dead-letter
    /// queue instead, as a fresh message there.
    DeadLetter { to: String, message: QueueMessage },
    /// Older than the queue's retention: delete it.
    Expired,
}

/// Decides what a receive at `now_ms` does to `m` (visible at `now_ms`), with this receive's
/// `visibility_ms` and its receipt `nonce`.
pub fn receive(
    q: &Queue,
    m: &QueueMessage,
    now_ms: i64,
    visibility_ms: i64,
    nonce: &str,
) -> Receive {
    if expired(q, m, now_ms) {
        return Receive::Expired;
    }
    if let Some(r) = &q.redrive {
        if m.receive_count >= r.max_receive_count {
            return Receive::DeadLetter {
                to: r.dead_letter_queue.clone(),
                message: QueueMessage {
                    queue: r.dead_letter_queue.clone(),
                    visible_ms: now_ms,
                    receive_count: 0,
                    first_received_ms: 0,
                    receipt: String::new(),
                    ..m.clone()
                },
            };
        }
    }
    Receive::Deliver(QueueMessage {
        visible_ms: now_ms + visibility_ms,
        receive_count: m.receive_count + 1,
        first_received_ms: if m.first_received_ms == 0 {
            now_ms
        } else {
            m.first_received_ms
        },
        receipt: nonce.to_string(),
        ..m.clone()
    })
}

/// Whether `m` has outlived its queue's retention.
pub fn expired(q: &Queue, m: &QueueMessage, now_ms: i64) -> bool {
    now_ms - m.sent_ms >= i64::from(q.retention_secs) * 1000
}

/// A receipt handle: the message's id and the nonce of the receive that handed it out.
pub fn receipt_handle(m: &QueueMessage) -> String {
    format!("{}.{}", m.id, m.receipt)
}

/// A receipt handle taken apart: (message id, nonce). None if it is not one.
pub fn parse_receipt(handle: &str) -> Option<(&str, &str)> {
    let (id, nonce) = handle.split_once('.')?;
    (!id.is_empty() && !nonce.is_empty()).then_some((id, nonce))
}

/// Why a receipt handle does not act on its message.
#[derive(Debug, PartialEq, thiserror::Error)]
pub enum StaleReceipt {
    #[error("receipt_handle: not a receipt handle")]
    Malformed,
    #[error("receipt_handle: no such message (deleted, moved or expired)")]
    Gone,
    #[error("receipt_handle: the message was received again since; use the newer handle")]
    Superseded,
}

/// Whether `handle` is the latest receive's handle for `m` (None: no such message).
pub fn check_receipt(m: Option<&QueueMessage>, handle: &str) -> Result<(), StaleReceipt> {
    let (id, nonce) = parse_receipt(handle).ok_or(StaleReceipt::Malformed)?;
    let m = m.ok_or(StaleReceipt::Gone)?;
    if m.id != id {
        return Err(StaleReceipt::Gone);
    }
    if m.receipt != nonce {
        return Err(StaleReceipt::Superseded);
    }
    Ok(())
}

/// A queue's approximate numbers at a moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Receivable now.
    pub visible: u64,
    /// Received and not yet visible again.
    pub in_flight: u64,
    /// Never received, still in their delay.
    pub delayed: u64,
    /// When the oldest message was sent (0: none).
    pub oldest_sent_ms: i64,
}

/// Counts `messages` of `q` at `now_ms` (expired ones are not counted).
pub fn counts<'a>(
    q: &Queue,
    messages: impl IntoIterator<Item = &'a QueueMessage>,
    now_ms: i64,
) -> Counts {
    let mut c = Counts::default();
    for m in messages {
        if expired(q, m, now_ms) {
            continue;
        }
        if m.visible_ms <= now_ms {
            c.visible += 1;
        } else if m.receive_count > 0 {
            c.in_flight += 1;
        } else {
            c.delayed += 1;
        }
        if c.oldest_sent_ms == 0 || m.sent_ms < c.oldest_sent_ms {
            c.oldest_sent_ms = m.sent_ms;
        }
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::RedrivePolicy;

    fn queue() -> Queue {
        Queue {
            name: "jobs".into(),
            visibility_timeout_secs: 30,
            delay_secs: 0,
            retention_secs: 60,
            max_message_bytes: 262_144,
            receive_wait_secs: 0,
            redrive: Some(RedrivePolicy {
                dead_letter_queue: "jobs-dlq".into(),
                max_receive_count: 2,
            }),
            created_ms: 0,
            updated_ms: 0,
            fifo: false,
            content_based_deduplication: false,
        }
    }

    fn message(sent_ms: i64) -> QueueMessage {
        QueueMessage {
            queue: "jobs".into(),
            id: "01M".into(),
            body: "b".into(),
            attributes: Default::default(),
            sent_ms,
            visible_ms: sent_ms,
            receive_count: 0,
            first_received_ms: 0,
            receipt: String::new(),
            group: String::new(),
            dedup_id: String::new(),
        }
    }

    #[test]
    fn fifo_receives_each_group_in_order_and_none_behind_a_message_in_flight() {
        let m = |group: &str, visible_ms: i64| QueueMessage {
            group: group.into(),
            visible_ms,
            ..message(0)
        };
        // a1 in flight until 100; a2 behind it; b1, b2 visible; c1 delayed; c2 behind it.
        let all = [
            m("a", 100),
            m("a", 0),
            m("b", 0),
            m("c", 50),
            m("b", 0),
            m("c", 0),
        ];
        assert_eq!(fifo_receivable(&all, 10, 10), [2, 4], "only group b");
        assert_eq!(
            fifo_receivable(&all, 10, 1),
            [2],
            "at most max, first in first"
        );
        // At 100 a1 is visible again (its receive's visibility ended): it comes first.
        assert_eq!(fifo_receivable(&all, 100, 10), [0, 1, 2, 3, 4, 5]);
    }

    #[test]
    fn a_receive_hides_counts_and_stamps_then_the_receive_after_the_limit_dead_letters() {
        let q = queue();
        let Receive::Deliver(m1) = receive(&q, &message(0), 1_000, 30_000, "n1") else {
            panic!("first receive delivers");
        };
        assert_eq!(
            (m1.visible_ms, m1.receive_count, m1.first_received_ms),
            (31_000, 1, 1_000)
        );
        assert_eq!(receipt_handle(&m1), "01M.n1");
        let Receive::Deliver(m2) = receive(&q, &m1, 31_000, 5_000, "n2") else {
            panic!("second receive delivers");
        };
        assert_eq!(
            (m2.visible_ms, m2.receive_count, m2.first_received_ms),
            (36_000, 2, 1_000)
        );
        // Received twice (the limit): the third receive moves it, as a fresh message there.
        match receive(&q, &m2, 36_000, 30_000, "n3") {
            Receive::DeadLetter { to, message } => {
                assert_eq!(to, "jobs-dlq");
                assert_eq!(
                    (message.queue.as_str(), message.receive_count),
                    ("jobs-dlq", 0)
                );
                assert_eq!((message.id.as_str(), message.body.as_str()), ("01M", "b"));
            }
            other => panic!("{other:?}"),
        }
        // Past retention (60 s after it was sent): expired, whatever else.
        assert_eq!(receive(&q, &m2, 60_000, 30_000, "n4"), Receive::Expired);
    }

    #[test]
    fn only_the_latest_receipt_acts_on_a_message() {
        let q = queue();
        let Receive::Deliver(m1) = receive(&q, &message(0), 0, 30_000, "n1") else {
            panic!()
        };
        let first = receipt_handle(&m1);
        assert_eq!(check_receipt(Some(&m1), &first), Ok(()));
        let Receive::Deliver(m2) = receive(&q, &m1, 30_000, 30_000, "n2") else {
            panic!()
        };
        assert_eq!(
            check_receipt(Some(&m2), &first),
            Err(StaleReceipt::Superseded)
        );
        assert_eq!(check_receipt(Some(&m2), &receipt_handle(&m2)), Ok(()));
        assert_eq!(check_receipt(None, &first), Err(StaleReceipt::Gone));
        assert_eq!(
            check_receipt(Some(&m2), "nonsense"),
            Err(StaleReceipt::Malformed)
        );
    }

    #[test]
    fn counts_tell_visible_in_flight_and_delayed_apart() {
        let q = queue();
        let visible = message(1_000);
        let delayed = QueueMessage {
            visible_ms: 9_000,
            ..message(2_000)
        };
        let in_flight = QueueMessage {
            visible_ms: 9_000,
            receive_count: 1,
            ..message(500)
        };
        let expired = message(-100_000);
        let c = counts(&q, [&visible, &delayed, &in_flight, &expired], 5_000);
        assert_eq!(
            c,
            Counts {
                visible: 1,
                in_flight: 1,
                delayed: 1,
                oldest_sent_ms: 500
            }
        );
    }
}
