//! Delivery (`dispatcher deliver`, and inside `dispatcher run`): JetStream → senders.
//!
//! - One durable pull consumer per priority on NOTIFY (`<prefix>deliver-<priority>`),
//!   explicit acks, bounded ack-pending.
//! - Fetched messages go into one weighted [`Scheduler`] per channel (the type the
//!   ingress uses), whose class bounds equal the consumers' ack-pending bound, so fetching
//!   never blocks on a full queue. Each channel has its own fixed pool of workers (its
//!   concurrency cap): a slow channel cannot take another's workers, and within a channel
//!   backlogged priorities are served by weight, low never starved.
//! - A worker asks the destination's health ([`health`]) first: a destination that is
//!   paused, failing, throttled or busy makes the message wait, without an attempt. A wait
//!   of `--hold-after` or longer (and a `send_at` ahead, and a retry backoff) goes to the
//!   HOLD stream ([`hold`]), out of the consumers' ack-pending window; a shorter one is a
//!   NAK with a delay, recorded in the [`ledger`].
//! - Otherwise it sends (with in-progress acks while a send is slow), then: delivered →
//!   event, ack; retryable with attempts left → event, NAK with the backoff delay (the
//!   attempt number is Herald's, from the ledger; the wait is kept by the server: a crash
//!   loses no retry state); permanent or exhausted → DLQ, event, terminate.
//! - Shutdown: stop fetching, let every worker finish its send, NAK what is still queued so
//!   another instance takes it at once.

pub mod cancels;
pub mod health;
pub mod hold;
pub mod ledger;
pub mod retry;
pub mod senders;

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, AckKind, Message};
use chrono::Utc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::admission::Yielding;
use crate::dlq::{self, Death};
use crate::events::{Event, EventBatcher, EventBatching, EventKind};
use crate::jetstream::{Names, Pull, HEADER_CHANNEL};
use crate::metrics::Metrics;
use crate::model::{Channel, Priority, WireNotification};
use crate::scheduler::{PerClass, Scheduler, SchedulerConfig};
use crate::trace::{Span, Spans, TraceParent};
use health::{Destinations, Gate, HealthConfig, WaitReason};
use hold::Hold;
use ledger::{Count, Ledger};
use opentelemetry::trace::SpanKind;
use opentelemetry::KeyValue;
use retry::RetryPolicy;
use senders::{Attempt, SendOutcome, Sender};

/// A fetched message waiting for a worker.
struct Job {
    message: Message,
    priority: Priority,
}

/// One provider of a channel: its sender and the destination name its health is kept
/// under (`None` for webhooks, named by their URL, and for a channel without a sender).
pub struct Provider {
    pub name: Option<String>,
    pub sender: Arc<dyn Sender>,
}

/// Each channel's providers, in the order they are tried: on a retryable failure of one
/// (or while its circuit is open) the next takes the same attempt.
pub struct Senders(pub [Vec<Provider>; 4]);

/// Builds the sender of a channel's `i`-th provider, at its URL.
type MakeSender<'a> = dyn Fn(usize, &str) -> Result<Arc<dyn Sender>, String> + 'a;

/// The comma-separated values of a setting (several providers).
fn list(value: &str) -> Vec<&str> {
    value
        .split(',')
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .collect()
}

/// The `i`-th value of a per-provider setting; a single value serves every provider.
fn nth(values: &str, i: usize) -> &str {
    let values = list(values);
    values.get(i).or(values.last()).copied().unwrap_or_default()
}

impl Senders {
    /// The senders the configuration enables. A channel without one (no SMTP relay, SMS or
    /// push provider URL) dead-letters with that reason, so nothing waits forever and a
    /// replay delivers once it is configured. `--smtp-url`, `--sms-url` and `--push-url`
    /// may list several providers (commas), with their credentials listed in the same
    /// order (one value serves all).
    /// `tenants` gives each tenant's webhook secret; without it every webhook is signed
    /// with `--webhook-secret`. `destinations`: where webhooks may go.
    pub fn from_config(
        config: &DeliveryConfig,
        tenants: Option<Arc<crate::tenants::Directory>>,
        destinations: Arc<crate::destination::DestinationPolicy>,
    ) -> Result<Self, String> {
        let caps = config.channel_concurrency.0;
        let webhook = senders::webhook::WebhookSender::new(
            senders::client::client(
                config.webhook_timeout,
                caps[Channel::Webhook.index()],
                Some(destinations),
            ),
            &config.webhook_secret,
            tenants,
            senders::client::Bounds {
                timeout: config.webhook_timeout,
                body_prefix: config.response_body_limit,
            },
        );
        let timeout = config.provider_timeout;
        let bounds = senders::client::Bounds {
            timeout,
            body_prefix: config.response_body_limit,
        };
        let providers = |channel: Channel,
                         urls: &Option<String>,
                         make: &MakeSender|
         -> Result<Vec<Provider>, String> {
            let urls = urls.as_deref().map(list).unwrap_or_default();
            if urls.is_empty() {
                return Ok(vec![Provider {
                    name: None,
                    sender: Arc::new(senders::Unavailable(channel)),
                }]);
            }
            urls.iter()
                .enumerate()
                .map(|(i, url)| {
                    Ok(Provider {
                        name: health::destination_name(channel, url),
                        sender: make(i, url)?,
                    })
                })
                .collect()
        };
        let sms_client = senders::client::client(timeout, caps[Channel::Sms.index()], None);
        let sms = providers(Channel::Sms, &config.sms_url, &|i, url| {
            Ok(Arc::new(senders::sms::SmsSender::new(
                sms_client.clone(),
                url,
                nth(&config.sms_account_sid, i),
                nth(&config.sms_auth_token, i),
                nth(&config.sms_from, i),
                bounds,
            )))
        })?;
        let push_client = senders::client::client(timeout, caps[Channel::Push.index()], None);
        let push = providers(Channel::Push, &config.push_url, &|i, url| {
            Ok(Arc::new(senders::push::PushSender::new(
                push_client.clone(),
                url,
                nth(&config.push_project, i),
                nth(&config.push_token, i),
                bounds,
            )))
        })?;
        let email = providers(Channel::Email, &config.smtp_url, &|_, url| {
            Ok(Arc::new(senders::email::EmailSender::new(
                url,
                &config.smtp_from,
                timeout,
            )?))
        })?;
        let webhook = vec![Provider {
            name: None,
            sender: Arc::new(webhook),
        }];
        Ok(Senders([webhook, email, sms, push]))
    }
}

struct Shared {
    js: jetstream::Context,
    names: Names,
    senders: Senders,
    events: EventBatcher,
    retry: [RetryPolicy; 3],
    ack_wait: Duration,
    metrics: Arc<Metrics>,
    /// Reports backlog ages to the door's admission (`dispatcher run`) and yields to it.
    yielding: Yielding,
    spans: Spans,
    ledger: Ledger,
    destinations: Arc<Destinations>,
    cancels: Arc<cancels::Cancels>,
    hold: Hold,
}

/// The running delivery role.
pub struct Delivery {
    stop: CancellationToken,
    tasks: JoinSet<()>,
    schedulers: Vec<Arc<Scheduler<Job>>>,
}

impl Delivery {
    /// Creates (or updates) the consumers and starts fetching and delivering.
    pub async fn start(
        js: jetstream::Context,
        names: Names,
        config: &DeliveryConfig,
        senders: Senders,
        metrics: Arc<Metrics>,
        yielding: Yielding,
        spans: Spans,
    ) -> Result<Self, async_nats::Error> {
        let stop = CancellationToken::new();
        let max_ack_pending = config.max_ack_pending.max(1);
        let schedulers: Vec<Arc<Scheduler<Job>>> = Channel::ALL
            .iter()
            .map(|_| {
                Arc::new(Scheduler::new(SchedulerConfig {
                    weights: config.delivery_weights,
                    capacities: PerClass([max_ack_pending; 3]),
                }))
            })
            .collect();
        let mut tasks = JoinSet::new();
        let events = EventBatcher::start(
            js.clone(),
            names.clone(),
            EventBatching {
                max: config.event_batch.max(1),
                linger: config.event_linger,
                patience: EVENT_PATIENCE,
            },
            stop.clone(),
            &mut tasks,
        );
        let ledger = Ledger::open(&js, &names).await?;
        let destinations = Destinations::start(
            js.clone(),
            names.clone(),
            config.health,
            metrics.clone(),
            stop.clone(),
            &mut tasks,
        )
        .await?;
        let cancels = cancels::Cancels::start(&js, &names, stop.clone(), &mut tasks).await?;
        let shared = Arc::new(Shared {
            js: js.clone(),
            names: names.clone(),
            senders,
            events,
            retry: [config.retry_high, config.retry_medium, config.retry_low],
            ack_wait: config.ack_wait,
            metrics,
            yielding: yielding.clone(),
            spans,
            ledger,
            destinations,
            cancels,
            hold: Hold::new(js.clone(), names.clone(), config.hold_after),
        });
        let stream = js.get_stream(&names.notify_stream).await?;
        for priority in Priority::ALL {
            let consumer: consumer::PullConsumer = stream
                .create_consumer(consumer::pull::Config {
                    durable_name: Some(names.delivery_consumer(priority)),
                    description: Some(format!("Herald delivery, {priority} priority")),
                    filter_subject: names.notify_priority_filter(priority),
                    ack_policy: consumer::AckPolicy::Explicit,
                    ack_wait: config.ack_wait,
                    max_deliver: -1,
                    max_ack_pending: max_ack_pending as i64,
                    ..Default::default()
                })
                .await?;
            tasks.spawn(fetch(
                consumer,
                priority,
                schedulers.clone(),
                config.fetch_batch.max(1),
                shared.clone(),
                stop.clone(),
            ));
        }
        tasks.spawn(watch_dlq(
            js.clone(),
            names.clone(),
            config.dlq_size_interval,
            shared.metrics.clone(),
            stop.clone(),
        ));
        for channel in Channel::ALL {
            let workers = config.channel_concurrency.0[channel.index()];
            for _ in 0..workers {
                tasks.spawn(work(shared.clone(), schedulers[channel.index()].clone()));
            }
        }
        tracing::info!(prefix = %names.prefix, "delivery running");
        Ok(Delivery {
            stop,
            tasks,
            schedulers,
        })
    }

    /// Ends every task at once without acking or NAKing anything, as a crash would (for
    /// tests of redelivery).
    pub fn abort(mut self) {
        self.tasks.abort_all();
        self.tasks.detach_all();
    }

    /// Stops fetching, finishes in-flight sends, NAKs what is still queued, and returns
    /// once every task has ended.
    /// Notifications fetched and waiting for a worker, per priority (all channels).
    pub fn depth(&self) -> Arc<dyn Fn(Priority) -> usize + Send + Sync> {
        let schedulers = self.schedulers.clone();
        Arc::new(move |priority| schedulers.iter().map(|s| s.len(priority)).sum())
    }

    pub async fn shutdown(mut self) {
        self.stop.cancel();
        for scheduler in &self.schedulers {
            scheduler.close();
        }
        while let Some(res) = self.tasks.join_next().await {
            if let Err(err) = res {
                tracing::error!(error = %err, "delivery task failed");
            }
        }
    }
}

/// Pulls one priority's messages into the channel schedulers until `stop`.
async fn fetch(
    consumer: consumer::PullConsumer,
    priority: Priority,
    schedulers: Vec<Arc<Scheduler<Job>>>,
    batch: usize,
    shared: Arc<Shared>,
    stop: CancellationToken,
) {
    /// Messages taken between pauses while the door sheds this priority.
    const BURST: usize = 32;
    let mut pull = Pull::new(consumer, batch, stop, format!("deliver-{priority}"));
    let mut burst = 0;
    while let Some(message) = pull.next().await {
        burst += 1;
        if burst >= BURST {
            burst = 0;
            shared.yielding.pause(priority).await;
        }
        if let Ok(info) = message.info() {
            shared.metrics.consumer_lag(priority, info.pending);
        }
        let channel = channel_of(&message);
        let job = Job { message, priority };
        if let Err(job) = schedulers[channel.index()].try_push(priority, job) {
            // Closed (shutting down) or, against the sizing, full: let it come back.
            hand_back(&shared.ledger, &shared.metrics, &job.message).await;
        }
    }
}

/// The channel of a message: its header, else the last subject token.
fn channel_of(message: &Message) -> Channel {
    let from_header = message
        .headers
        .as_ref()
        .and_then(|h| h.get(HEADER_CHANNEL))
        .map(|v| v.as_str().to_string());
    let name = from_header.unwrap_or_else(|| {
        message
            .subject
            .rsplit('.')
            .next()
            .unwrap_or_default()
            .to_string()
    });
    serde_json::from_value(serde_json::Value::String(name)).unwrap_or(Channel::Webhook)
}

/// One worker of one channel: delivers jobs until the scheduler is closed, then NAKs
/// whatever is left so nothing waits for the ack timeout.
async fn work(shared: Arc<Shared>, scheduler: Arc<Scheduler<Job>>) {
    loop {
        scheduler.wait_for_work().await;
        if scheduler.is_closed() {
            while let Some(job) = scheduler.pop() {
                hand_back(&shared.ledger, &shared.metrics, &job.message).await;
            }
            return;
        }
        if let Some(job) = scheduler.pop() {
            deliver(&shared, job).await;
        }
    }
}

/// Gives a message that was never worked on back to JetStream at once, as a wait.
async fn hand_back(ledger: &Ledger, metrics: &Metrics, message: &Message) {
    ledger.waited(message, None).await;
    metrics.delivery_waited("handed_back");
    let _ = message.ack_with(AckKind::Nak(None)).await;
}

/// Puts off `message` by `delay` without an attempt (`spent` were made before): into HOLD
/// when the wait is long, else a NAK recorded in the ledger.
async fn wait(
    shared: &Shared,
    message: &Message,
    notification: &WireNotification<'_>,
    (count, spent): (Count, u32),
    delay: Duration,
    reason: &str,
) {
    shared.metrics.delivery_waited(reason);
    if held(shared, message, notification, spent, delay).await {
        return;
    }
    shared.ledger.waited(message, Some(count)).await;
    let _ = message.ack_with(AckKind::Nak(Some(delay))).await;
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

async fn deliver(shared: &Shared, job: Job) {
    let Job { message, priority } = job;
    let sequence = message.info().map_or(0, |info| info.stream_sequence);
    let Some(count) = shared.ledger.count(&message).await else {
        let _ = message
            .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
            .await;
        return;
    };
    // A message back from HOLD carries the attempts it spent before; its NOTIFY sequence,
    // and so its ledger count, are new.
    let carried = hold::carried_attempts(&message);
    let attempt = carried.unwrap_or(0).saturating_add(count.attempt());
    let notification: WireNotification<'_> = match serde_json::from_slice(&message.payload) {
        Ok(n) => n,
        Err(err) => {
            tracing::error!(error = %err, "undecodable message in NOTIFY; terminating");
            let _ = message.ack_with(AckKind::Term).await;
            return;
        }
    };
    if shared.cancels.is_canceled(&notification.id) {
        // Its status says canceled already (the cancel API stored that event).
        shared.metrics.delivery_waited("canceled");
        let _ = message.ack_with(AckKind::Term).await;
        return;
    }
    let now = Utc::now();
    if notification.expires_at.is_some_and(|at| at <= now) {
        let outcome = SendOutcome::Permanent {
            error: String::from("expired before it could be delivered"),
            status: None,
        };
        bury(
            shared,
            &message,
            &notification,
            attempt,
            sequence,
            &outcome,
            None,
        )
        .await;
        return;
    }
    if let Some(send_at) = notification.send_at.filter(|at| *at > now) {
        // Not due yet: come back at send_at.
        let delay = (send_at - now).to_std().unwrap_or_default();
        let spent = (count, attempt - 1);
        wait(shared, &message, &notification, spent, delay, "scheduled").await;
        return;
    }
    let channel = notification.channel;
    let started = std::time::Instant::now();
    // A message published before traces were carried starts one per attempt.
    let (trace, published_as) =
        TraceParent::continue_or_start(TraceParent::header_of(&message), shared.spans.is_on());
    let span_start = shared.spans.clock_for(&trace);
    let attempt_info = Attempt {
        notification: &notification,
        raw: &message.payload,
        number: attempt,
        trace,
    };
    let (outcome, provider) = match try_providers(shared, &message, &attempt_info).await {
        Tried::Sent {
            outcome: SendOutcome::Unsent { error },
            ..
        } => {
            // Herald's own store is down: nothing was sent, so no attempt was spent.
            tracing::debug!(id = %notification.id, %error, "not sent; waiting for the store");
            let spent = (count, attempt - 1);
            let delay = STORE_WAIT.mul_f64(1.0 + fastrand::f64());
            wait(shared, &message, &notification, spent, delay, "store").await;
            return;
        }
        Tried::Sent { outcome, provider } => (outcome, provider),
        Tried::Wait(delay, reason) => {
            let spent = (count, attempt - 1);
            wait(
                shared,
                &message,
                &notification,
                spent,
                delay,
                reason.as_str(),
            )
            .await;
            return;
        }
    };
    if count.delivered == 1 && carried.is_none() {
        // Taken at the worker, not at the fetch: a class whose ack-pending window is full
        // is fetched no more, and its backlog must not fall silent. A message back from
        // HOLD waited by design, not in a backlog.
        let waited = (now - notification.accepted_at)
            .to_std()
            .unwrap_or_default();
        shared.yielding.backlog_age(priority, waited);
    }
    let took = started.elapsed();
    if let Some(start) = span_start {
        shared.spans.record(attempt_span(
            &notification,
            attempt,
            (trace, published_as),
            start,
            took,
            &outcome,
        ));
    }
    shared
        .metrics
        .delivery_attempt(priority, channel, outcome.label(), took);
    let policy = shared.retry[priority.index()];
    match &outcome {
        SendOutcome::Delivered => {
            if !store_event(
                shared,
                &message,
                event(
                    &notification,
                    EventKind::Delivered,
                    attempt,
                    None,
                    None,
                    Some(took),
                )
                .by(provider.as_deref()),
            )
            .await
            {
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
            shared.metrics.delivered(priority, age);
        }
        SendOutcome::Retryable { retry_after, .. } if !policy.exhausted(attempt) => {
            let backoff = policy.delay(attempt + 1, fastrand::f64());
            let wait = retry_after.map_or(backoff, |asked| asked.max(backoff));
            // Not stored in the end: the next attempt's event carries the state on.
            let _ = store_event(
                shared,
                &message,
                event(
                    &notification,
                    EventKind::Retrying,
                    attempt,
                    Some(&outcome),
                    Some(wait),
                    Some(took),
                )
                .by(provider.as_deref()),
            )
            .await;
            if !held(shared, &message, &notification, attempt, wait).await {
                let _ = message.ack_with(AckKind::Nak(Some(wait))).await;
            }
        }
        _ => {
            let sent = Some((took, provider.as_deref()));
            bury(
                shared,
                &message,
                &notification,
                attempt,
                sequence,
                &outcome,
                sent,
            )
            .await
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
            outcome: SendOutcome::Permanent {
                error: format!("no {} provider", notification.channel),
                status: None,
            },
            provider: None,
        },
    }
}

/// Keeps `herald_dlq_messages` at the DLQ stream's size (for dashboards and alerts; the
/// API lists dead letters per tenant), looking every `interval` until `stop`.
async fn watch_dlq(
    js: jetstream::Context,
    names: Names,
    interval: Duration,
    metrics: Arc<Metrics>,
    stop: CancellationToken,
) {
    let mut every = tokio::time::interval(interval.max(Duration::from_millis(100)));
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = every.tick() => {}
        }
        match js.get_stream(&names.dlq_stream).await {
            Ok(stream) => metrics.dlq_messages(stream.cached_info().state.messages),
            Err(err) => tracing::debug!(error = %err, "DLQ size not read"),
        }
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
    message: &Message,
    notification: &WireNotification<'_>,
    attempt: u32,
    sequence: u64,
    outcome: &SendOutcome,
    sent: Option<(Duration, Option<&str>)>,
) {
    let (took, provider) = sent.map_or((None, None), |(took, provider)| (Some(took), provider));
    let death = Death {
        id: notification.id,
        tenant: notification.tenant,
        priority: notification.priority,
        channel: notification.channel,
        error: outcome.error().unwrap_or("unknown"),
        status: outcome.status(),
        attempts: attempt,
        source_sequence: sequence,
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
        }
        Err(err) => {
            tracing::warn!(id = %notification.id, error = %err, "dead-lettering failed; will retry");
            let _ = message
                .ack_with(AckKind::Nak(Some(Duration::from_secs(5))))
                .await;
        }
    }
}

/// How long a message waits, at least, when a store Herald needs to send it is down.
const STORE_WAIT: Duration = Duration::from_secs(2);

/// How long a worker keeps trying to store an outcome event before it gives the message
/// back instead of settling it.
const EVENT_PATIENCE: Duration = Duration::from_secs(60);

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

/// How notifications are delivered.
#[derive(Debug, Clone)]
pub struct DeliveryConfig {
    /// Shares of high, medium and low while all are backlogged.
    pub delivery_weights: PerClass,
    /// Concurrent sends per channel; each channel has its own workers.
    pub channel_concurrency: PerChannel,
    /// Messages each priority's consumer may hold unacknowledged.
    pub max_ack_pending: usize,
    /// Messages per pull request.
    pub fetch_batch: usize,
    /// Most outcome events per EVENTS message.
    pub event_batch: usize,
    /// How long a batch of outcome events waits for more after its first.
    pub event_linger: Duration,
    /// JetStream redelivers a message not acknowledged in this time.
    pub ack_wait: Duration,
    /// Waits at least this long go to the HOLD stream, out of the ack-pending window;
    /// shorter ones are NAKs with a delay.
    pub hold_after: Duration,
    /// How often `herald_dlq_messages` is brought up to date.
    pub dlq_size_interval: Duration,
    /// Circuit breaking, throttling and concurrency per destination.
    pub health: HealthConfig,
    pub retry_high: RetryPolicy,
    pub retry_medium: RetryPolicy,
    pub retry_low: RetryPolicy,
    /// Webhook signing key when authentication is off (tenants have their own).
    pub webhook_secret: String,
    pub webhook_timeout: Duration,
    /// SMTP relay; without it email is dead-lettered as undeliverable here.
    pub smtp_url: Option<String>,
    pub smtp_from: String,
    /// Twilio-shaped SMS API; without it SMS is dead-lettered as undeliverable here.
    pub sms_url: Option<String>,
    pub sms_account_sid: String,
    pub sms_auth_token: String,
    pub sms_from: String,
    /// FCM HTTP v1 API; without it push is dead-lettered as undeliverable here.
    pub push_url: Option<String>,
    pub push_project: String,
    pub push_token: String,
    /// Timeout of one SMS or push provider request.
    pub provider_timeout: Duration,
    /// Bytes of a receiver's or provider's answer read at most (a failure's error quotes
    /// them); past it the connection is dropped, never buffered.
    pub response_body_limit: usize,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        let policy = |base_ms, cap_s, max_attempts| RetryPolicy {
            base: Duration::from_millis(base_ms),
            cap: Duration::from_secs(cap_s),
            max_attempts,
        };
        DeliveryConfig {
            delivery_weights: SchedulerConfig::default().weights,
            channel_concurrency: PerChannel([256, 16, 64, 64]),
            max_ack_pending: 2048,
            fetch_batch: 256,
            event_batch: 256,
            event_linger: Duration::from_millis(10),
            ack_wait: Duration::from_secs(30),
            hold_after: Duration::from_secs(1),
            dlq_size_interval: Duration::from_secs(15),
            health: HealthConfig::default(),
            retry_high: policy(200, 30, 8),
            retry_medium: policy(1000, 300, 8),
            retry_low: policy(5000, 1800, 6),
            webhook_secret: String::from("herald-development-secret"),
            webhook_timeout: Duration::from_secs(10),
            smtp_url: None,
            smtp_from: String::from("Herald <herald@localhost>"),
            sms_url: None,
            sms_account_sid: String::new(),
            sms_auth_token: String::new(),
            sms_from: String::new(),
            push_url: None,
            push_project: String::new(),
            push_token: String::new(),
            provider_timeout: Duration::from_secs(10),
            response_body_limit: 1024,
        }
    }
}

/// A value per channel, written `webhook:email:sms:push`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PerChannel(pub [usize; 4]);

impl std::str::FromStr for PerChannel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        crate::scheduler::parse_positive_list(s, "webhook:email:sms:push").map(PerChannel)
    }
}

impl std::fmt::Display for PerChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let [a, b, c, d] = self.0;
        write!(f, "{a}:{b}:{c}:{d}")
    }
}
