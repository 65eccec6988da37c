//! Herald's own attempt count.
//!
//! JetStream's delivery count also counts deliveries that only waited: a destination that
//! is paused, failing or throttled, a `send_at` not yet due, a worker handing work back at
//! shutdown. Taken as the attempt number, it let a receiver that was down burn every
//! message's attempt budget while nothing was sent. So the attempt number is the delivery
//! count less the waits recorded here.
//!
//! Only the short waits stay in the consumer as NAKs (a busy destination, a hand-back, or
//! any wait HOLD refused); longer ones leave for the HOLD stream (`hold.rs`) and come back
//! as new NOTIFY messages carrying their spent attempts, which this count is added to.
//!
//! - Only a wait writes: one key-value put, keyed by the message's NOTIFY sequence (a
//!   replay is a new message, with a fresh budget). A first delivery reads nothing, so the
//!   common path costs nothing.
//! - A delivery that ended without a record (a crash mid-send) counts as one attempt.
//! - One message is with one worker at a time (explicit acks, progress while working), so
//!   read, add one and put needs no compare-and-set.

use async_nats::jetstream::{self, kv, Message};

use crate::jetstream::Names;

/// Where a message stands: its deliveries so far (this one included) and how many of the
/// earlier ones only waited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Count {
    pub delivered: u64,
    pub waits: u64,
}

impl Count {
    /// The attempt this delivery makes if it sends (1-based).
    pub fn attempt(&self) -> u32 {
        u32::try_from(self.delivered.saturating_sub(self.waits).max(1)).unwrap_or(u32::MAX)
    }
}

/// The waits of every message in delivery, in the `<prefix>ATTEMPTS` bucket.
#[derive(Clone)]
pub struct Ledger {
    kv: kv::Store,
}

impl Ledger {
    pub async fn open(js: &jetstream::Context, names: &Names) -> Result<Self, async_nats::Error> {
        Ok(Ledger {
            kv: js.get_key_value(&names.attempts_bucket).await?,
        })
    }

    /// The count of `message`. `None` when the bucket could not be read: the caller hands
    /// the message back rather than guess (a guess too high would dead-letter early).
    pub async fn count(&self, message: &Message) -> Option<Count> {
        let info = message.info().ok()?;
        let delivered = info.delivered.max(1) as u64;
        if delivered == 1 {
            return Some(Count {
                delivered,
                waits: 0,
            });
        }
        match self.kv.get(key(info.stream_sequence)).await {
            Ok(value) => Some(Count {
                delivered,
                waits: value.as_deref().and_then(parse).unwrap_or(0),
            }),
            Err(err) => {
                tracing::warn!(seq = info.stream_sequence, error = %err, "attempt count not read");
                None
            }
        }
    }

    /// Records that this delivery of `message` waits instead of sending. `count`: what
    /// [`Ledger::count`] gave, or `None` to read it now (hand-backs that never looked). A
    /// failed put is logged: the wait then counts as an attempt, the safe side.
    pub async fn waited(&self, message: &Message, count: Option<Count>) {
        let Ok(info) = message.info() else { return };
        let count = match count {
            Some(count) => count,
            None => match self.count(message).await {
                Some(count) => count,
                None => return,
            },
        };
        let waits = (count.waits + 1).min(count.delivered);
        if let Err(err) = self
            .kv
            .put(key(info.stream_sequence), waits.to_string().into())
            .await
        {
            tracing::warn!(seq = info.stream_sequence, error = %err, "wait not recorded; it will count as an attempt");
        }
    }
}

fn key(sequence: u64) -> String {
    sequence.to_string()
}

fn parse(value: &[u8]) -> Option<u64> {
    std::str::from_utf8(value).ok()?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_attempt_is_deliveries_less_waits() {
        let count = |delivered, waits| Count { delivered, waits }.attempt();
        assert_eq!(count(1, 0), 1);
        // Two waits (send_at, an open circuit), then a send: the first attempt.
        assert_eq!(count(3, 2), 1);
        // One wait and one attempt that ended unrecorded (a crash): this is the second.
        assert_eq!(count(3, 1), 2);
        // Never below 1, whatever a stale record says.
        assert_eq!(count(2, 5), 1);
        assert_eq!(parse(b"12"), Some(12));
        assert_eq!(parse(b"x"), None);
    }
}
