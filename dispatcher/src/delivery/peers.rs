//! The delivery processes that share destinations, counted through the DESTINATIONS
//! bucket, so a destination's rate is split between them instead of multiplied.
//!
//! Each process puts `members.<id>` (its wall-clock time) every [`BEAT`] and deletes it
//! when it stops; every process follows those keys. A member not heard from for
//! [`LIVE_FOR`] (it crashed) no longer counts, and its key is purged. The share is read with one atomic load, so
//! the healthy path gains no round trip. It is a split by count, not a shared bucket of
//! tokens: JetStream spreads a destination's messages over the processes pulling them, so
//! each spends about its share, and the sum never exceeds the rate. For the
//! [`LIVE_FOR`] after a process dies the others keep the smaller share, and for a moment
//! after one starts, the older ones still send at the larger share.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use async_nats::jetstream::kv;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

/// How often a process says it is alive.
pub const BEAT: Duration = Duration::from_secs(5);
/// How long a member counts after its last beat.
pub const LIVE_FOR: Duration = Duration::from_secs(15);

/// The key family of members in the bucket.
pub const KEYS: &str = "members.>";

#[derive(Debug, Serialize, Deserialize)]
struct Beat {
    /// Milliseconds since the epoch, by the member's clock.
    at_ms: i64,
}

/// This process and the others it has heard from.
pub struct Peers {
    me: Uuid,
    members: Mutex<Members>,
    live: AtomicU32,
}

#[derive(Default)]
struct Members {
    /// The other members and when each last beat (milliseconds since the epoch).
    others: HashMap<Uuid, i64>,
    /// Members counted out, whose keys are still to purge.
    gone: Vec<Uuid>,
}

impl Peers {
    pub fn new() -> Self {
        Peers {
            me: Uuid::now_v7(),
            members: Mutex::default(),
            live: AtomicU32::new(1),
        }
    }

    /// The live delivery processes, this one included (at least 1).
    pub fn live(&self) -> u32 {
        self.live.load(Ordering::Relaxed)
    }

    fn key(id: Uuid) -> String {
        format!("members.{}", id.simple())
    }

    /// Takes one `members.` entry of the bucket (a beat, or a member that left).
    pub fn follow(&self, entry: &kv::Entry) {
        let Some(id) = entry
            .key
            .strip_prefix("members.")
            .and_then(|id| Uuid::try_parse(id).ok())
        else {
            return;
        };
        if id == self.me {
            return;
        }
        let mut members = self.members.lock().expect("peers lock");
        match serde_json::from_slice::<Beat>(&entry.value) {
            Ok(beat) if entry.operation == kv::Operation::Put => {
                members.others.insert(id, beat.at_ms);
            }
            _ => {
                members.others.remove(&id);
            }
        }
        self.count(&mut members, Utc::now().timestamp_millis());
    }

    /// Counts the members heard from within [`LIVE_FOR`] of `now_ms`; the rest are gone.
    fn count(&self, members: &mut Members, now_ms: i64) {
        let live_for = LIVE_FOR.as_millis() as i64;
        let Members { others, gone } = members;
        others.retain(|id, at| {
            let live = now_ms - *at < live_for;
            if !live {
                gone.push(*id);
            }
            live
        });
        let live = 1 + others.len() as u32;
        if self.live.swap(live, Ordering::Relaxed) != live {
            tracing::info!(
                delivery_processes = live,
                "destination rates are split between this many delivery processes"
            );
        }
    }

    /// Beats until `stop`, then leaves the bucket. A beat that fails (NATS away) is tried
    /// again at the next one; the others then count this process out for a while, which
    /// only makes them slower.
    pub async fn beat(self: std::sync::Arc<Self>, kv: kv::Store, stop: CancellationToken) {
        let mut ticker = tokio::time::interval(BEAT);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = ticker.tick() => {}
            }
            let now_ms = Utc::now().timestamp_millis();
            let beat = serde_json::to_vec(&Beat { at_ms: now_ms }).expect("serializable");
            if let Err(err) = kv.put(Self::key(self.me), beat.into()).await {
                tracing::debug!(error = %err, "delivery membership beat failed");
            }
            // Members that stopped beating are counted out even if no entry comes.
            let gone = {
                let mut members = self.members.lock().expect("peers lock");
                self.count(&mut members, now_ms);
                std::mem::take(&mut members.gone)
            };
            // A crashed member's key would stay forever; any process may purge it (one
            // that comes back beats again).
            for id in gone {
                let _ = kv.purge(Self::key(id)).await;
            }
        }
        if let Err(err) = kv.purge(Self::key(self.me)).await {
            tracing::debug!(error = %err, "leaving the delivery membership failed");
        }
    }
}

impl Default for Peers {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_count_while_they_beat_and_not_after() {
        let peers = Peers::new();
        let mut members = Members::default();
        let now = 1_000_000_000;
        let (fresh, old) = (Uuid::now_v7(), Uuid::now_v7());
        members.others.insert(fresh, now - 1_000);
        members.others.insert(old, now - 14_000);
        peers.count(&mut members, now);
        assert_eq!(peers.live(), 3);
        assert!(members.gone.is_empty());
        // Past LIVE_FOR without a beat: counted out, its key to purge.
        peers.count(&mut members, now + 2_000);
        assert_eq!(peers.live(), 2);
        assert_eq!(members.gone, [old]);
        peers.count(&mut members, now + 20_000);
        assert_eq!(peers.live(), 1);
        assert_eq!(members.gone, [old, fresh]);
    }
}
