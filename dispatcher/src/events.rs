//! Outcome events (`delivered`, `retrying`, `dead`, `canceled`) on the EVENTS stream, for the recorder
//! and anyone else who wants to follow a notification.
//!
//! Events travel in batches: one message under `<prefix>events.outcomes` holds a JSON array
//! of event documents, from every worker of a delivery process within a linger that grows
//! at low rates from `--event-linger` to `--event-linger-max` (at most `--event-batch`).
//! Each stored message costs JetStream a write and every recorder consumer a delivery and
//! an ack, so a batch of twenty costs what one event did.
//! A batch's `Nats-Msg-Id` is fixed before its first publish, so a retry after a lost
//! PubAck stores it once. Readers take a single event document as well (what earlier
//! versions wrote).

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, message::PublishMessage};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot, Semaphore};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::batch;
use crate::jetstream::Names;
use crate::lifecycle::Backoff;
use crate::model::{Channel, Priority};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    Delivered,
    Retrying,
    Dead,
    /// Canceled before it was sent (`POST /v1/notifications/{id}/cancel`).
    Canceled,
    /// Its deadline (`expires_at`) passed before it was delivered; never dead-lettered.
    Expired,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Delivered => "delivered",
            EventKind::Retrying => "retrying",
            EventKind::Dead => "dead",
            EventKind::Canceled => "canceled",
            EventKind::Expired => "expired",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Event<'a> {
    pub id: Uuid,
    #[serde(default)]
    pub tenant: Uuid,
    pub event: EventKind,
    pub priority: Priority,
    pub channel: Channel,
    /// The attempt this event is about (1-based).
    pub attempt: u32,
    pub at: DateTime<Utc>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// For `retrying`: milliseconds until the next attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_in_ms: Option<u64>,
    /// How long the attempt's send took, in milliseconds (none when nothing was sent, as
    /// for a notification that expired first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
    /// The provider the attempt went through (`<channel>:<host>:<port>`), for channels
    /// with providers.
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<Cow<'a, str>>,
    /// The start of the answer's body (`--response-body-limit` bytes, UTF-8 lossy).
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub response: Option<Cow<'a, str>>,
}

impl<'a> Event<'a> {
    /// The event, naming the provider its attempt went through.
    pub fn by(mut self, provider: Option<&'a str>) -> Self {
        self.provider = provider.map(Cow::Borrowed);
        self
    }
}

impl Event<'_> {
    /// For `retrying`: when the next attempt is due.
    pub fn next_attempt_at(&self) -> Option<DateTime<Utc>> {
        let ms = i64::try_from(self.retry_in_ms?).ok()?;
        Some(self.at + chrono::Duration::milliseconds(ms))
    }

    /// The event with its error owned, to outlive the outcome it borrows from.
    pub fn into_owned(self) -> Event<'static> {
        Event {
            error: self.error.map(|e| Cow::Owned(e.into_owned())),
            provider: self.provider.map(|p| Cow::Owned(p.into_owned())),
            response: self.response.map(|r| Cow::Owned(r.into_owned())),
            ..self
        }
    }
}

/// The events of one EVENTS message in order (an event's position is its index in the
/// message): an array, or a single document.
pub fn decode(payload: &[u8]) -> Result<Vec<Event<'_>>, serde_json::Error> {
    let starts_array = payload
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|&b| b == b'[');
    if starts_array {
        serde_json::from_slice(payload)
    } else {
        serde_json::from_slice(payload).map(|event| vec![event])
    }
}

/// Publishes `events` as one EVENTS message with the given `Nats-Msg-Id` and waits for
/// JetStream to store it.
pub async fn publish(
    js: &jetstream::Context,
    names: &Names,
    events: &[Event<'_>],
    message_id: &str,
) -> Result<(), async_nats::Error> {
    let body = serde_json::to_vec(events)?;
    let message = PublishMessage::build()
        .payload(body.into())
        .message_id(message_id);
    js.send_publish(names.event_subject(), message)
        .await?
        .await?;
    Ok(())
}

/// How outcome events are batched.
#[derive(Debug, Clone, Copy)]
pub struct EventBatching {
    /// Most events per EVENTS message.
    pub max: usize,
    /// How long a batch waits for more events after its first, at least ...
    pub linger: Duration,
    /// ... and at most (see `linger_at`).
    pub linger_max: Duration,
    /// How long a batch is retried before its waiters are told it was not stored.
    pub patience: Duration,
}

/// Batches in flight (published, PubAck awaited) at once.
const BATCHES_IN_FLIGHT: usize = 8;

struct Pending {
    event: Event<'static>,
    stored: oneshot::Sender<bool>,
}

/// The delivery side's handle for storing events in batches. Cloned by every worker;
/// the batching task ends once every clone is dropped and its batches are settled.
#[derive(Clone)]
pub struct EventBatcher {
    pending: mpsc::Sender<Pending>,
}

impl EventBatcher {
    /// Starts the batching task in `tasks`. `stop` ends retries early (shutdown): their
    /// waiters hear `false` and give their messages back.
    pub fn start(
        js: jetstream::Context,
        names: Names,
        batching: EventBatching,
        stop: CancellationToken,
        tasks: &mut JoinSet<()>,
    ) -> Self {
        let (pending, receiver) = mpsc::channel(batching.max.max(1) * 2);
        tasks.spawn(batch_events(js, names, batching, receiver, stop));
        EventBatcher { pending }
    }

    /// Stores `event` with the next batch: true once JetStream has it, false when it could
    /// not be stored within the patience (or before shutdown).
    pub async fn store(&self, event: Event<'static>) -> bool {
        let (stored, answer) = oneshot::channel();
        if self.pending.send(Pending { event, stored }).await.is_err() {
            return false;
        }
        answer.await.unwrap_or(false)
    }
}

async fn batch_events(
    js: jetstream::Context,
    names: Names,
    batching: EventBatching,
    mut receiver: mpsc::Receiver<Pending>,
    stop: CancellationToken,
) {
    let in_flight = Arc::new(Semaphore::new(BATCHES_IN_FLIGHT));
    let mut publishing = JoinSet::new();
    let mut previous = None;
    while let Some(first) = receiver.recv().await {
        let opened = tokio::time::Instant::now();
        let limits = batch::Limits {
            max: batching.max.max(1),
            max_bytes: usize::MAX,
            linger: linger_at(previous, opened, &batching),
        };
        let batch = batch::collect(first, &mut receiver, limits, |_| 0).await;
        previous = Some((opened, batch.len()));
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            break;
        };
        let (js, names, stop) = (js.clone(), names.clone(), stop.clone());
        publishing.spawn(async move {
            store_batch(&js, &names, batch, batching.patience, &stop).await;
            drop(permit);
        });
        while publishing.try_join_next().is_some() {}
    }
    while publishing.join_next().await.is_some() {}
}

/// Events a batch waits to gather at the recent rate, within the linger's bounds.
const GATHER: f64 = 8.0;

/// The linger of a batch opened at `now`, after one of `previous` = (opened, events): what
/// it takes for `GATHER` events to arrive at the rate since that batch opened, between the
/// configured least and most. At low rates that is the most, so a lone event waits for
/// company instead of costing an EVENTS message of its own; from a few hundred events a
/// second on, the least, so workers (each waits for its event's batch before it acks) are
/// held no longer than with a fixed linger. The first batch takes the least.
fn linger_at(
    previous: Option<(tokio::time::Instant, usize)>,
    now: tokio::time::Instant,
    batching: &EventBatching,
) -> Duration {
    let Some((opened, events)) = previous else {
        return batching.linger;
    };
    let since = now.saturating_duration_since(opened).as_secs_f64();
    let wanted = since * GATHER / events.max(1) as f64;
    let least = batching.linger.as_secs_f64();
    Duration::from_secs_f64(wanted.clamp(least, batching.linger_max.as_secs_f64().max(least)))
}

/// Publishes one batch, retrying it under the same message id with backoff until it is
/// stored, the patience ends, or shutdown; then tells every waiter.
async fn store_batch(
    js: &jetstream::Context,
    names: &Names,
    batch: Vec<Pending>,
    patience: Duration,
    stop: &CancellationToken,
) {
    let (events, waiters): (Vec<_>, Vec<_>) =
        batch.into_iter().map(|p| (p.event, p.stored)).unzip();
    let message_id = Uuid::now_v7().to_string();
    let deadline = tokio::time::Instant::now() + patience;
    let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
    let stored = loop {
        match publish(js, names, &events, &message_id).await {
            Ok(()) => break true,
            Err(err) => {
                if tokio::time::Instant::now() >= deadline || stop.is_cancelled() {
                    tracing::warn!(events = events.len(), error = %err, "events not stored; their messages go back");
                    break false;
                }
                tracing::debug!(events = events.len(), error = %err, "events not stored yet; retrying");
                if !backoff.wait(stop).await {
                    break false;
                }
            }
        }
    };
    for waiter in waiters {
        let _ = waiter.send(stored);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_event_linger_grows_as_the_rate_falls_within_its_bounds() {
        let batching = EventBatching {
            max: 256,
            linger: Duration::from_millis(10),
            linger_max: Duration::from_millis(50),
            patience: Duration::from_secs(1),
        };
        let now = tokio::time::Instant::now();
        let after = |ms: u64, events: usize| {
            linger_at(
                Some((now, events)),
                now + Duration::from_millis(ms),
                &batching,
            )
        };
        assert_eq!(linger_at(None, now, &batching), batching.linger);
        // 100/s: five events in the last 50 ms → wait the most.
        assert_eq!(after(50, 5), Duration::from_millis(50));
        // An event after a long idle: the most.
        assert_eq!(after(600_000, 1), Duration::from_millis(50));
        // 400/s: eight events take 20 ms.
        assert_eq!(after(50, 20), Duration::from_millis(20));
        // 2,000/s and a full batch: the least, as with a fixed linger.
        assert_eq!(after(10, 20), Duration::from_millis(10));
        assert_eq!(after(0, 256), Duration::from_millis(10));
        // A fixed linger when both bounds are one.
        let fixed = EventBatching {
            linger_max: batching.linger,
            ..batching
        };
        assert_eq!(
            linger_at(Some((now, 1)), now + Duration::from_secs(1), &fixed),
            fixed.linger
        );
    }

    fn event(kind: EventKind) -> Event<'static> {
        Event {
            id: Uuid::now_v7(),
            tenant: Uuid::nil(),
            event: kind,
            priority: Priority::High,
            channel: Channel::Webhook,
            attempt: 2,
            at: Utc::now(),
            error: Some(Cow::Owned(String::from("503 from the receiver"))),
            status: Some(503),
            retry_in_ms: Some(400),
            duration_ms: Some(12),
            provider: None,
            response: Some(Cow::Owned(String::from("database down"))),
        }
    }

    #[test]
    fn a_batch_and_a_single_document_both_decode() {
        let batch = [event(EventKind::Retrying), event(EventKind::Delivered)];
        let body = serde_json::to_vec(&batch).unwrap();
        let decoded = decode(&body).unwrap();
        assert_eq!(decoded.len(), 2);
        assert_eq!(decoded[0].id, batch[0].id);
        assert_eq!(decoded[1].event, EventKind::Delivered);
        assert_eq!(decoded[0].error.as_deref(), Some("503 from the receiver"));

        let single = serde_json::to_vec(&batch[0]).unwrap();
        let decoded = decode(&single).unwrap();
        assert_eq!(decoded.len(), 1);
        assert_eq!(decoded[0].retry_in_ms, Some(400));
        assert_eq!(decoded[0].duration_ms, Some(12));
        assert_eq!(decoded[0].response.as_deref(), Some("database down"));

        assert!(decode(b" {\"id\": 1}").is_err());
    }
}
