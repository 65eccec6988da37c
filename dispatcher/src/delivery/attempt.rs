//! One attempt at one message, from the worker's hand to its settlement: is it due (not
//! canceled, not expired, its `send_at` passed), which provider takes it, then delivered →
//! event and ack; retryable within its priority's retry horizon → event and a wait for the
//! backoff; past its `expires_at` → `expired` (an outcome of its own, never a dead letter);
//! else the DLQ. A wait spends no attempt: it goes to HOLD when long, else a NAK recorded
//! in the ledger. A destination that keeps a message waiting past its horizon (paused,
//! circuit open) dead-letters it with that reason.

use std::time::Duration;

use async_nats::jetstream::{AckKind, Message};
use chrono::{DateTime, Utc};
use opentelemetry::trace::SpanKind;
use opentelemetry::KeyValue;

use super::health::{self, Gate, WaitReason};
use super::hold;
use super::ledger::Count;
use super::senders::{Attempt, SendOutcome};
use super::{Job, Shared};
use crate::dlq::{self, Death};
use crate::events::{Event, EventKind};
use crate::model::{Channel, Priority, WireNotification};
use crate::trace::{Span, TraceParent};

/// A message in a worker's hand, decoded, with where its attempts stand.
struct Turn<'m> {
    message: &'m Message,
    notification: WireNotification<'m>,
    priority: Priority,
    count: Count,
    /// The attempt this turn makes if it sends (1-based, across holds).
    attempt: u32,
    /// Attempts spent before a hold, when the message came back from HOLD.
    carried: Option<u32>,
    /// Its NOTIFY sequence, which the DLQ deduplicates on.
    sequence: u64,
}

/// Works one fetched message to its settlement (or its wait).
pub(super) async fn deliver(shared: &Shared, job: Job) {
    let Job { message, priority } = job;
    let Some(turn) = take(shared, &message, priority).await else {
        return;
    };
    let n = &turn.notification;
    if n.channel == Channel::Webhook {
        if let Some(disabled) = shared.destinations.disabled(n.tenant, &n.recipient) {
            let outcome = SendOutcome::permanent(format!(
                "endpoint disabled since {}: {}",
                disabled.since.to_rfc3339(),
                disabled.reason
            ));
            bury(shared, &turn, &outcome, None).await;
            return;
        }
    }
    let now = Utc::now();
    if turn.notification.expires_at.is_some_and(|at| at <= now) {
        expire(shared, &turn, None).await;
        return;
    }
    if let Some(send_at) = turn.notification.send_at.filter(|at| *at > now) {
        // Not due yet: come back at send_at.
        let delay = (send_at - now).to_std().unwrap_or_default();
        wait(shared, &turn, delay, Waiting::Scheduled).await;
        return;
    }
    if let Some((outcome, provider, took)) = send(shared, &turn, now).await {
        settle(shared, &turn, &outcome, provider.as_deref(), took).await;
    }
}

/// Reads the message's count and decodes it. `None` when it was settled or given back
/// here: its count unreadable, undecodable, or canceled.
async fn take<'m>(shared: &Shared, message: &'m Message, priority: Priority) -> Option<Turn<'m>> {
    let sequence = message.info().map_or(0, |info| info.stream_sequence);
    let Some(count) = shared.ledger.count(message).await else {
        let _ = message
            .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
            .await;
        return None;
    };
    // A message back from HOLD carries the attempts it spent before; its NOTIFY sequence,
    // and so its ledger count, are new.
    let carried = hold::carried_attempts(message);
    let attempt = carried.unwrap_or(0).saturating_add(count.attempt());
    let notification: WireNotification<'m> = match serde_json::from_slice(&message.payload) {
        Ok(n) => n,
        Err(err) => {
            tracing::error!(error = %err, "undecodable message in NOTIFY; terminating");
            let _ = message.ack_with(AckKind::Term).await;
            return None;
        }
    };
    if shared.cancels.is_canceled(&notification.id) {
        // Its status says canceled already (the cancel API stored that event).
        shared.metrics.delivery_waited("canceled");
        let _ = message.ack_with(AckKind::Term).await;
        return None;
    }
    Some(Turn {
        message,
        notification,
        priority,
        count,
        attempt,
        carried,
        sequence,
    })
}

/// Sends the turn's attempt through its providers and records its span and metrics: the
/// outcome, the provider that answered and how long it took. `None` when nothing was sent
/// and the message waits instead (every provider said wait, or Herald's own store is down).
async fn send(
    shared: &Shared,
    turn: &Turn<'_>,
    now: DateTime<Utc>,
) -> Option<(SendOutcome, Option<String>, Duration)> {
    let (message, notification) = (turn.message, &turn.notification);
    let started = std::time::Instant::now();
    // A message published before traces were carried starts one per attempt.
    let (trace, published_as) =
        TraceParent::continue_or_start(TraceParent::header_of(message), shared.spans.is_on());
    let span_start = shared.spans.clock_for(&trace);
    let attempt = Attempt {
        notification,
        raw: &message.payload,
        number: turn.attempt,
        trace,
    };
    let (outcome, provider) = match try_providers(shared, message, &attempt).await {
        Tried::Sent {
            outcome: SendOutcome::Unsent { error },
            ..
        } => {
            // Herald's own store is down: nothing was sent, so no attempt was spent.
            tracing::debug!(id = %notification.id, %error, "not sent; waiting for the store");
            let delay = STORE_WAIT.mul_f64(1.0 + fastrand::f64());
            wait(shared, turn, delay, Waiting::Store).await;
            return None;
        }
        Tried::Sent { outcome, provider } => (outcome, provider),
        Tried::Wait(delay, reason) => {
            wait(shared, turn, delay, Waiting::Destination(reason)).await;
            return None;
        }
        Tried::Disabled(failing) => {
            let reason = format!(
                "its destination failed without a break for {}",
                humantime::format_duration(Duration::from_secs(failing.as_secs()))
            );
            let outcome = SendOutcome::permanent(format!("endpoint disabled: {reason}"));
            disable_and_bury(shared, turn, &reason, &outcome, None).await;
            return None;
        }
    };
    if turn.count.delivered == 1 && turn.carried.is_none() {
        // Taken at the worker, not at the fetch: a class whose ack-pending window is full
        // is fetched no more, and its backlog must not fall silent. A message back from
        // HOLD waited by design, not in a backlog.
        let waited = (now - notification.accepted_at)
            .to_std()
            .unwrap_or_default();
        shared.yielding.backlog_age(turn.priority, waited);
    }
    let took = started.elapsed();
    if let Some(start) = span_start {
        shared.spans.record(attempt_span(
            notification,
            turn.attempt,
            (trace, published_as),
            start,
            took,
            &outcome,
        ));
    }
    shared
        .metrics
        .delivery_attempt(turn.priority, notification.channel, outcome.label(), took);
    Some((outcome, provider, took))
}

/// Settles a sent attempt: delivered → event, ack; retryable with attempts left → event,
/// wait for the backoff; else the DLQ.
async fn settle(
    shared: &Shared,
    turn: &Turn<'_>,
    outcome: &SendOutcome,
    provider: Option<&str>,
    took: Duration,
) {
    let (message, notification, attempt) = (turn.message, &turn.notification, turn.attempt);
    let policy = shared.retry[turn.priority.index()];
    match outcome {
        SendOutcome::Delivered { .. } => {
            let delivered = event(
                notification,
                EventKind::Delivered,
                attempt,
                Some(outcome),
                None,
                Some(took),
            );
            if !store_event(shared, message, delivered.by(provider)).await {
                let _ = message
                    .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                    .await;
                return;
            }
            // A plain ack: the event is stored, so a lost ack costs one duplicate delivery
            // (at-least-once), where a double ack costs a subscription and a round trip.
            if let Err(err) = message.ack().await {
                tracing::warn!(id = %notification.id, error = %err, "ack after delivery failed; it may be delivered again");
            }
            let age = (Utc::now() - notification.accepted_at)
                .to_std()
                .unwrap_or_default();
            shared.metrics.delivered(turn.priority, age);
        }
        SendOutcome::Retryable { retry_after, .. } => {
            let since_due = since_due(notification, Utc::now());
            let Some(backoff) = policy.next_wait(attempt + 1, since_due, fastrand::f64()) else {
                let gave_up = past_horizon(outcome, policy.horizon);
                bury(shared, turn, &gave_up, Some((took, provider))).await;
                return;
            };
            // A receiver's Retry-After is honoured up to the horizon.
            let left = policy.horizon.saturating_sub(since_due);
            let wait = retry_after.map_or(backoff, |asked| asked.max(backoff).min(left));
            if due_after_deadline(notification, wait) {
                expire(shared, turn, Some((outcome, took, provider))).await;
                return;
            }
            let retrying = event(
                notification,
                EventKind::Retrying,
                attempt,
                Some(outcome),
                Some(wait),
                Some(took),
            );
            // Not stored in the end: the next attempt's event carries the state on.
            let _ = store_event(shared, message, retrying.by(provider)).await;
            if !held(shared, message, notification, attempt, wait).await {
                let _ = message.ack_with(AckKind::Nak(Some(wait))).await;
            }
        }
        _ if notification.channel == Channel::Webhook && outcome.status() == Some(410) => {
            let sent = Some((took, provider));
            disable_and_bury(shared, turn, "it answered 410 Gone", outcome, sent).await;
        }
        _ => bury(shared, turn, outcome, Some((took, provider))).await,
    }
}

/// Disables the turn's endpoint (this URL, not its host) in every delivery process until
/// its destination is resumed, dead-letters the notification with `outcome`, then tells
/// the tenant's operations endpoint. A 410 Gone says "stop" (Standard Webhooks); so does a
/// destination failing for `--disable-after`. Disabled first: once the dead letter shows,
/// so does the endpoint's state.
async fn disable_and_bury(
    shared: &Shared,
    turn: &Turn<'_>,
    reason: &str,
    outcome: &SendOutcome,
    sent: Option<(Duration, Option<&str>)>,
) {
    let n = &turn.notification;
    let record = shared
        .destinations
        .disable(n.tenant, &n.recipient, reason)
        .await;
    bury(shared, turn, outcome, sent).await;
    if let Some(record) = record {
        let data = serde_json::to_value(&record).expect("serializable");
        tell(shared, n, "destination.disabled", data, turn.sequence).await;
    }
}

/// Why a message waits without spending an attempt.
#[derive(Debug, Clone, Copy)]
enum Waiting {
    /// Its `send_at` is still to come.
    Scheduled,
    /// A store of Herald's own it needs to send is down.
    Store,
    /// Its destination holds it (paused, open, throttled…): the only wait bounded by the
    /// retry horizon.
    Destination(super::health::WaitReason),
}

impl Waiting {
    fn as_str(self) -> &'static str {
        match self {
            Waiting::Scheduled => "scheduled",
            Waiting::Store => "store",
            Waiting::Destination(reason) => reason.as_str(),
        }
    }
}

/// Puts off the turn's message by `delay` without spending its attempt: into HOLD
/// when the wait is long, else a NAK recorded in the ledger. A message whose deadline
/// comes first expires now; one that a destination (not Herald's own store, not its
/// schedule) keeps waiting past its retry horizon is dead-lettered with the reason.
async fn wait(shared: &Shared, turn: &Turn<'_>, delay: Duration, why: Waiting) {
    let notification = &turn.notification;
    if due_after_deadline(notification, delay) {
        expire(shared, turn, None).await;
        return;
    }
    let policy = shared.retry[turn.priority.index()];
    let reason = why.as_str();
    let destination_said = matches!(why, Waiting::Destination(_));
    if destination_said && policy.past_horizon(since_due(notification, Utc::now())) {
        let waiting = SendOutcome::retryable(format!("its destination kept it waiting ({reason})"));
        let gave_up = past_horizon(&waiting, policy.horizon);
        bury(shared, turn, &gave_up, None).await;
        return;
    }
    shared.metrics.delivery_waited(reason);
    let spent = turn.attempt - 1;
    if held(shared, turn.message, &turn.notification, spent, delay).await {
        return;
    }
    shared.ledger.waited(turn.message, Some(turn.count)).await;
    let _ = turn.message.ack_with(AckKind::Nak(Some(delay))).await;
}

/// Moves `message` into HOLD for `delay` when the wait is long enough to be held, then
/// acknowledges the original. `false` when it stays: a short wait, or HOLD did not take it
/// (the caller then NAKs, which keeps the message as safely, only inside the window).
async fn held(
    shared: &Shared,
    message: &Message,
    notification: &WireNotification<'_>,
    spent: u32,
    delay: Duration,
) -> bool {
    if !shared.hold.takes(delay) {
        return false;
    }
    let class = (notification.priority, notification.channel);
    match shared
        .hold
        .hold(message, &notification.id, class, spent, delay)
        .await
    {
        Ok(()) => {
            // A lost ack redelivers the original, whose hold then replaces this one.
            let _ = message.ack().await;
            true
        }
        Err(err) => {
            tracing::warn!(id = %notification.id, error = %err, "hold failed; waiting in the consumer instead");
            false
        }
    }
}

/// What trying a channel's providers came to.
enum Tried {
    /// The outcome of the last provider tried, and its name.
    Sent {
        outcome: SendOutcome,
        provider: Option<String>,
    },
    /// No provider could take it now: wait this long (the shortest of their waits).
    Wait(Duration, WaitReason),
    /// Its destination has failed without a break this long (`--disable-after`).
    Disabled(Duration),
}

/// Sends `attempt` through its channel's providers in order: each one whose destination
/// admits it, until one delivers or fails for good. A retryable failure, or a destination
/// that says wait, passes the same attempt to the next provider.
async fn try_providers(shared: &Shared, message: &Message, attempt: &Attempt<'_>) -> Tried {
    let notification = attempt.notification;
    let mut tried = None;
    let mut shortest: Option<(Duration, WaitReason)> = None;
    for provider in &shared.senders.0[notification.channel.index()] {
        let name = match notification.channel {
            Channel::Webhook => health::destination_name(Channel::Webhook, &notification.recipient),
            _ => provider.name.clone(),
        };
        let permit = match &name {
            Some(name) => match shared.destinations.admit(notification.tenant, name).await {
                Gate::Send(permit) => Some(permit),
                Gate::Wait(delay, reason) => {
                    if shortest.is_none_or(|(d, _)| delay < d) {
                        shortest = Some((delay, reason));
                    }
                    continue;
                }
                Gate::Disabled(failing) if notification.channel == Channel::Webhook => {
                    return Tried::Disabled(failing);
                }
                // A provider is not an endpoint to disable: it waits as an open circuit.
                Gate::Disabled(_) => {
                    shortest.get_or_insert((shared.ack_wait, WaitReason::Open));
                    continue;
                }
            },
            None => None,
        };
        let outcome = with_progress(provider.sender.send(attempt), message, shared.ack_wait).await;
        if let Some(permit) = permit {
            permit.settle(&outcome);
        }
        let retryable = matches!(outcome, SendOutcome::Retryable { .. });
        tried = Some((outcome, name));
        if !retryable {
            break;
        }
    }
    match (tried, shortest) {
        (Some((outcome, provider)), _) => Tried::Sent { outcome, provider },
        (None, Some((delay, reason))) => Tried::Wait(delay, reason),
        (None, None) => Tried::Sent {
            outcome: SendOutcome::permanent(format!("no {} provider", notification.channel)),
            provider: None,
        },
    }
}

/// The span of one delivery attempt: a child of the publish, across NATS; the parent of
/// the receiver's span (its `traceparent`).
fn attempt_span(
    notification: &WireNotification<'_>,
    attempt: u32,
    (context, parent): (TraceParent, Option<u64>),
    start: std::time::SystemTime,
    took: Duration,
    outcome: &SendOutcome,
) -> Span {
    let mut attributes = vec![
        KeyValue::new("herald.id", notification.id.to_string()),
        KeyValue::new("herald.attempt", i64::from(attempt)),
        KeyValue::new("herald.channel", notification.channel.as_str()),
        KeyValue::new("herald.priority", notification.priority.as_str()),
        KeyValue::new("herald.outcome", outcome.label()),
    ];
    if let Some(status) = outcome.status() {
        attributes.push(KeyValue::new(
            "http.response.status_code",
            i64::from(status),
        ));
    }
    Span {
        name: "herald.deliver",
        kind: SpanKind::Client,
        context,
        parent,
        parent_is_remote: true,
        start,
        end: start + took,
        attributes,
        error: outcome.error().map(str::to_string),
    }
}

/// Dead-letters a notification, then terminates the original. If the DLQ cannot take it,
/// the original comes back later instead of being lost. `took`: how long the last send
/// took, if there was one.
async fn bury(
    shared: &Shared,
    turn: &Turn<'_>,
    outcome: &SendOutcome,
    sent: Option<(Duration, Option<&str>)>,
) {
    let (message, notification, attempt) = (turn.message, &turn.notification, turn.attempt);
    let (took, provider) = sent.map_or((None, None), |(took, provider)| (Some(took), provider));
    let death = Death {
        id: notification.id,
        tenant: notification.tenant,
        priority: notification.priority,
        channel: notification.channel,
        error: outcome.error().unwrap_or("unknown"),
        status: outcome.status(),
        attempts: attempt,
        source_sequence: turn.sequence,
        trace: TraceParent::header_of(message).and_then(TraceParent::parse),
    };
    match dlq::dead_letter(&shared.js, &shared.names, &death, message.payload.clone()).await {
        Ok(()) => {
            if !store_event(
                shared,
                message,
                event(
                    notification,
                    EventKind::Dead,
                    attempt,
                    Some(outcome),
                    None,
                    took,
                )
                .by(provider),
            )
            .await
            {
                // Comes back; the DLQ drops the repeat (same source sequence).
                let _ = message
                    .ack_with(AckKind::Nak(Some(Duration::from_secs(5))))
                    .await;
                return;
            }
            let _ = message.double_ack_with(AckKind::Term).await;
            shared.metrics.dead_lettered(notification.priority);
            let mut data = fate(notification, attempt, Some(outcome));
            data["dead_at"] = serde_json::json!(Utc::now());
            tell(
                shared,
                notification,
                "notification.dead",
                data,
                turn.sequence,
            )
            .await;
        }
        Err(err) => {
            tracing::warn!(id = %notification.id, error = %err, "dead-lettering failed; will retry");
            let _ = message
                .ack_with(AckKind::Nak(Some(Duration::from_secs(5))))
                .await;
        }
    }
}

/// When the notification became due: its `send_at`, or when it was accepted.
fn since_due(n: &WireNotification<'_>, now: DateTime<Utc>) -> Duration {
    let due = n.send_at.map_or(n.accepted_at, |at| at.max(n.accepted_at));
    (now - due).to_std().unwrap_or_default()
}

/// Whether a try `wait` from now would come at or after the notification's deadline.
fn due_after_deadline(n: &WireNotification<'_>, wait: Duration) -> bool {
    let next = Utc::now() + chrono::Duration::from_std(wait).unwrap_or(chrono::TimeDelta::MAX);
    n.expires_at.is_some_and(|deadline| deadline <= next)
}

/// The dead letter's outcome of a notification whose retry horizon passed: `last`'s error
/// (the receiver's answer first, as every attempt records it) and status, then why it
/// stopped.
fn past_horizon(last: &SendOutcome, horizon: Duration) -> SendOutcome {
    SendOutcome::Permanent {
        error: format!(
            "{} (not delivered within its {} retry horizon)",
            last.error().unwrap_or("unknown"),
            humantime::format_duration(horizon),
        ),
        status: last.status(),
        response: last.response().map(str::to_owned),
    }
}

/// Ends a notification whose deadline (`expires_at`) passed, or would pass before its next
/// try: an `expired` event (with the last attempt's answer, if one was just made), then
/// the message is terminated. Not a dead letter: a late OTP is worse than none, so no
/// replay brings it back. If the event cannot be stored the message comes back.
async fn expire(
    shared: &Shared,
    turn: &Turn<'_>,
    last: Option<(&SendOutcome, Duration, Option<&str>)>,
) {
    let (outcome, took, provider) = match last {
        Some((outcome, took, provider)) => (Some(outcome), Some(took), provider),
        None => (None, None, None),
    };
    // Attempts made: this turn's only if it sent one.
    let attempts = turn.attempt.saturating_sub(u32::from(last.is_none()));
    let mut expired = event(
        &turn.notification,
        EventKind::Expired,
        attempts,
        outcome,
        None,
        took,
    );
    if outcome.is_none() {
        expired.error = Some(std::borrow::Cow::Borrowed(
            "its deadline (expires_at) passed before it could be delivered",
        ));
    }
    if !store_event(shared, turn.message, expired.by(provider)).await {
        let _ = turn
            .message
            .ack_with(AckKind::Nak(Some(Duration::from_secs(5))))
            .await;
        return;
    }
    let _ = turn.message.double_ack_with(AckKind::Term).await;
    shared.metrics.delivery_waited("expired");
    let n = &turn.notification;
    let mut data = fate(n, attempts, outcome);
    data["expires_at"] = serde_json::json!(n.expires_at);
    tell(shared, n, "notification.expired", data, turn.sequence).await;
}

/// What an operational event says of a notification that ended: which one, its attempts,
/// and the last answer (`outcome`), if there was one.
fn fate(
    n: &WireNotification<'_>,
    attempts: u32,
    outcome: Option<&SendOutcome>,
) -> serde_json::Value {
    serde_json::json!({
        "id": n.id,
        "priority": n.priority,
        "channel": n.channel,
        "recipient": n.recipient,
        "attempts": attempts,
        "error": outcome.and_then(SendOutcome::error),
        "status": outcome.and_then(SendOutcome::status),
        "response": outcome.and_then(SendOutcome::response),
    })
}

/// Tells the tenant's operations endpoint what became of `n` (see `operations`); once per
/// NOTIFY message, so a settlement done again tells it once.
async fn tell(
    shared: &Shared,
    n: &WireNotification<'_>,
    kind: &str,
    data: serde_json::Value,
    sequence: u64,
) {
    let about = super::operations::About::Notification(&n.recipient);
    let dedupe = format!("{}-{sequence}", n.id);
    shared
        .operations
        .tell(n.tenant, kind, about, data, &dedupe)
        .await;
}

/// How long a message waits, at least, when a store Herald needs to send it is down.
const STORE_WAIT: Duration = Duration::from_secs(2);

/// How long a worker keeps trying to store an outcome event before it gives the message
/// back instead of settling it.
pub(super) const EVENT_PATIENCE: Duration = Duration::from_secs(60);

/// Stores an outcome event (with the next batch) before the message is settled, with
/// in-progress acks meanwhile so the message stays with this worker: the recorder learns a
/// notification's fate only from this event, and on a NATS cluster the EVENTS stream can be
/// without a leader for seconds while NOTIFY works. `false` once the batcher gave up
/// ([`EVENT_PATIENCE`], or shutdown): the caller then gives the message back rather than
/// settle it without its event (a duplicate delivery beats a lost status).
async fn store_event(shared: &Shared, message: &Message, event: Event<'_>) -> bool {
    let id = event.id;
    let kind = event.event;
    let stored = with_progress(
        shared.events.store(event.into_owned()),
        message,
        shared.ack_wait,
    )
    .await;
    if !stored {
        tracing::warn!(%id, event = kind.as_str(), "event not stored; giving the message back");
    }
    stored
}

fn event<'a>(
    n: &WireNotification<'_>,
    kind: EventKind,
    attempt: u32,
    outcome: Option<&'a SendOutcome>,
    retry_in: Option<Duration>,
    took: Option<Duration>,
) -> Event<'a> {
    Event {
        id: n.id,
        tenant: n.tenant,
        event: kind,
        priority: n.priority,
        channel: n.channel,
        attempt,
        at: Utc::now(),
        error: outcome
            .and_then(SendOutcome::error)
            .map(std::borrow::Cow::Borrowed),
        status: outcome.and_then(SendOutcome::status),
        retry_in_ms: retry_in.map(millis),
        duration_ms: took.map(millis),
        provider: None,
        response: outcome
            .and_then(SendOutcome::response)
            .map(std::borrow::Cow::Borrowed),
    }
}

fn millis(d: Duration) -> u64 {
    d.as_millis().try_into().unwrap_or(u64::MAX)
}

/// Runs `work` (a send, storing an event), telling JetStream the message is still being
/// worked on every third of the ack wait, so a slow provider does not cause a redelivery in
/// parallel.
async fn with_progress<T>(
    work: impl std::future::Future<Output = T>,
    message: &Message,
    ack_wait: Duration,
) -> T {
    let mut send = std::pin::pin!(work);
    let period = (ack_wait / 3).max(Duration::from_millis(100));
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    loop {
        tokio::select! {
            outcome = &mut send => return outcome,
            _ = ticker.tick() => {
                let _ = message.ack_with(AckKind::Progress).await;
            }
        }
    }
}
