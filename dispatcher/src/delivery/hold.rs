//! Holding: a message that must wait longer than a moment leaves the work window.
//!
//! A NAK with a delay keeps the message ack-pending in its priority's consumer, and that
//! window (`--max-ack-pending`) is shared by every tenant and destination of the priority:
//! a campaign scheduled for tomorrow, or one dead receiver's backlog, would stop every
//! deliverable message behind it. So a wait of `--hold-after` or longer goes to the HOLD
//! stream instead:
//!
//! 1. the message is published to `<prefix>hold.<id>` as a JetStream message schedule
//!    (`Nats-Schedule: @at <due>`), with the attempts it has spent in `Herald-Attempts`;
//! 2. only once HOLD acknowledged it is the NOTIFY original acknowledged, so a crash in
//!    between redelivers the original (the worst case is a duplicate, never a loss);
//! 3. when due, the server copies it to `<prefix>due.<priority>.<channel>` inside HOLD, and
//!    NOTIFY sources that back as `<prefix>notify.<priority>.<channel>.due`: delivery reads
//!    it like any message, the recorder does not (it was recorded when accepted).
//!
//! One subject per notification means a second hold of the same notification replaces the
//! first (schedules roll up per subject), so a redelivered original does not fire twice.
//! Shorter waits (a busy destination, a hand-back) stay NAKs: they leave the window at once.

use std::time::Duration;

use async_nats::header::HeaderMap;
use async_nats::jetstream::{self, Message};
use chrono::Utc;

use crate::jetstream::Names;
use crate::model::{Channel, Priority};

/// Header of a held message: the attempts it spent before it was held. Present on every
/// message that came back from HOLD, so it also tells a re-entry from an acceptance.
pub const HEADER_ATTEMPTS: &str = "Herald-Attempts";

/// The attempts a message spent before it was last held; `None` when it was never held.
pub fn carried_attempts(message: &Message) -> Option<u32> {
    message
        .headers
        .as_ref()?
        .get(HEADER_ATTEMPTS)?
        .as_str()
        .parse()
        .ok()
}

/// Puts messages into HOLD.
pub struct Hold {
    js: jetstream::Context,
    names: Names,
    /// Waits at least this long are held; shorter ones are NAKed.
    pub after: Duration,
}

impl Hold {
    pub fn new(js: jetstream::Context, names: Names, after: Duration) -> Self {
        Hold { js, names, after }
    }

    /// Whether a wait of `delay` leaves the work window.
    pub fn takes(&self, delay: Duration) -> bool {
        delay >= self.after
    }

    /// Schedules `message` (notification `id`) to come back in `delay`, having spent
    /// `spent` attempts. `Ok` once HOLD has it: the caller then acknowledges the original.
    pub async fn hold(
        &self,
        message: &Message,
        id: &uuid::Uuid,
        (priority, channel): (Priority, Channel),
        spent: u32,
        delay: Duration,
    ) -> Result<(), async_nats::Error> {
        let due = Utc::now() + chrono::Duration::from_std(delay).unwrap_or_default();
        let mut headers = HeaderMap::new();
        if let Some(original) = &message.headers {
            // The original's own headers (trace, priority, channel) travel with it; the
            // server's (`Nats-Msg-Id` above all, which would de-duplicate a later hold of
            // the same notification away) do not.
            for (name, values) in original.iter() {
                let name: &str = name.as_ref();
                if name.starts_with("Nats-") || name == HEADER_ATTEMPTS {
                    continue;
                }
                for value in values {
                    headers.append(name, value.as_str());
                }
            }
        }
        headers.insert(HEADER_ATTEMPTS, spent.to_string().as_str());
        headers.insert(
            "Nats-Schedule",
            format!(
                "@at {}",
                due.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
            )
            .as_str(),
        );
        headers.insert(
            "Nats-Schedule-Target",
            self.names.due_subject(priority, channel).as_str(),
        );
        self.js
            .publish_with_headers(
                self.names.hold_subject(id),
                headers,
                message.payload.clone(),
            )
            .await?
            .await?;
        Ok(())
    }
}
