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
//!   event, ack; retryable within its priority's retry horizon → event, a wait for the
//!   backoff (the attempt number is Herald's, from the ledger; the wait is kept by the
//!   server: a crash loses no retry state); past its `expires_at` → `expired` event,
//!   terminate; permanent or past the horizon → DLQ, event, terminate.
//! - Shutdown: stop fetching, let every worker finish its send, NAK what is still queued so
//!   another instance takes it at once.

mod attempt;
pub mod cancels;
pub mod health;
pub mod hold;
pub mod ledger;
pub mod operations;
pub mod peers;
pub mod retry;
pub mod senders;
mod settings;

pub use senders::{Provider, Senders};
pub use settings::{DeliveryConfig, PerChannel};

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, AckKind, Message};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::admission::Yielding;
use crate::events::{EventBatcher, EventBatching};
use crate::jetstream::{Names, Pull, HEADER_CHANNEL};
use crate::metrics::Metrics;
use crate::model::{Channel, Priority};
use crate::scheduler::{PerClass, Scheduler, SchedulerConfig};
use crate::trace::Spans;
use attempt::{deliver, EVENT_PATIENCE};
use health::Destinations;
use hold::Hold;
use ledger::Ledger;
use retry::RetryPolicy;

/// A fetched message waiting for a worker.
struct Job {
    message: Message,
    priority: Priority,
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
    operations: Arc<operations::Operations>,
}

/// The running delivery role.
pub struct Delivery {
    stop: CancellationToken,
    tasks: JoinSet<()>,
    schedulers: Vec<Arc<Scheduler<Job>>>,
}

impl Delivery {
    /// Creates (or updates) the consumers and starts fetching and delivering. `tenants`
    /// tells operational events where to go (none: no tenants, no events).
    #[allow(clippy::too_many_arguments)]
    pub async fn start(
        js: jetstream::Context,
        names: Names,
        config: &DeliveryConfig,
        senders: Senders,
        tenants: Option<Arc<crate::tenants::Directory>>,
        metrics: Arc<Metrics>,
        yielding: Yielding,
        spans: Spans,
    ) -> Result<Self, async_nats::Error> {
        let operations = Arc::new(operations::Operations::new(
            js.clone(),
            names.clone(),
            tenants,
        ));
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
                linger_max: config.event_linger_max,
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
            operations.clone(),
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
            operations,
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

    /// Notifications fetched and waiting for a worker, per priority (all channels).
    pub fn depth(&self) -> Arc<dyn Fn(Priority) -> usize + Send + Sync> {
        let schedulers = self.schedulers.clone();
        Arc::new(move |priority| schedulers.iter().map(|s| s.len(priority)).sum())
    }

    /// Stops fetching, finishes in-flight sends, NAKs what is still queued, and returns
    /// once every task has ended.
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
