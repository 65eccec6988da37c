//! The recorder (`dispatcher record`, and inside `dispatcher run`): NOTIFY and EVENTS →
//! PostgreSQL (state), MongoDB (message documents) and the Redis status cache.
//!
//! Each store has its own durable pull consumers (`<prefix>record-<store>-notify`,
//! `<prefix>record-<store>-events`), so a store that is down only holds back its own
//! consumers; the others keep going, and it catches up from JetStream when it returns.
//! `--record-consumers shared` trades that for one consumer per stream that writes each
//! batch into every store (one delivery and one ack per message fewer).
//! A consumer takes what arrives within `--record-linger` of a batch's first message (up to
//! `--record-batch`), writes it with one statement per batch, and acknowledges the batch
//! only after the write committed. The linger is what keeps statements few at low rates:
//! recording is asynchronous, so nobody waits on it but the status API's freshness. Writes
//! are idempotent (upserts keyed by notification id and event sequence; duplicate-key inserts
//! count as done), so a batch redelivered after a crash changes nothing twice. A failed
//! write is retried with backoff while the batch is kept alive with in-progress acks.

pub mod mongo;
pub mod postgres;

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer, AckKind, Message};
use futures::future::BoxFuture;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::admission::Yielding;
use crate::batch;
use crate::jetstream::{Names, Pull};
use crate::lifecycle::Backoff;
use crate::metrics::Metrics;
use crate::model::{Priority, WireNotification};
use crate::trace::TraceParent;

/// Which stream a batch came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Notify,
    Events,
}

impl Source {
    fn as_str(self) -> &'static str {
        match self {
            Source::Notify => "notify",
            Source::Events => "events",
        }
    }
}

/// A store the recorder writes into.
pub trait Sink: Send + Sync + 'static {
    /// `postgres` or `mongo`: part of the consumer names and metric labels.
    fn name(&self) -> &'static str;
    /// Writes one batch idempotently; returns once it is committed.
    fn write<'a>(
        &'a self,
        source: Source,
        batch: &'a [Message],
    ) -> BoxFuture<'a, Result<(), String>>;
}

/// The running recorder.
pub struct Recorder {
    stop: CancellationToken,
    tasks: JoinSet<()>,
}

impl Recorder {
    /// Creates (or updates) the consumers of every sink and starts recording.
    pub async fn start(
        js: jetstream::Context,
        names: Names,
        config: &RecorderConfig,
        sinks: Vec<Arc<dyn Sink>>,
        metrics: Arc<Metrics>,
        yielding: Yielding,
    ) -> Result<Self, async_nats::Error> {
        let stop = CancellationToken::new();
        let mut tasks = JoinSet::new();
        // Per store: each sink on its own consumers. Shared: one consumer per stream feeds
        // every sink.
        let groups: Vec<(&str, Vec<Arc<dyn Sink>>)> = match config.record_consumers {
            RecordConsumers::PerStore => sinks
                .into_iter()
                .map(|sink| (sink.name(), vec![sink]))
                .collect(),
            RecordConsumers::Shared => vec![("shared", sinks)],
        };
        for (group, sinks) in groups.into_iter().filter(|(_, s)| !s.is_empty()) {
            for (source, stream_name, filter) in [
                (
                    Source::Notify,
                    &names.notify_stream,
                    names.notify_accepted_filter(),
                ),
                (Source::Events, &names.events_stream, String::new()),
            ] {
                let stream = js.get_stream(stream_name).await?;
                let name = format!("{}record-{group}-{}", names.prefix, source.as_str());
                let into = sinks
                    .iter()
                    .map(|s| s.name())
                    .collect::<Vec<_>>()
                    .join(" and ");
                let consumer: consumer::PullConsumer = stream
                    .create_consumer(consumer::pull::Config {
                        durable_name: Some(name.clone()),
                        description: Some(format!(
                            "Herald recorder: {} into {into}",
                            source.as_str(),
                        )),
                        filter_subject: filter,
                        ack_policy: consumer::AckPolicy::Explicit,
                        ack_wait: config.record_ack_wait,
                        max_deliver: -1,
                        max_ack_pending: config.record_ack_pending.max(1) as i64,
                        ..Default::default()
                    })
                    .await?;
                tasks.spawn(record(
                    consumer,
                    sinks.clone(),
                    source,
                    batch::Limits {
                        max: config.record_batch.max(1),
                        max_bytes: BATCH_BYTES,
                        linger: config.record_linger,
                    },
                    metrics.clone(),
                    yielding.clone(),
                    stop.clone(),
                ));
            }
        }
        tracing::info!(prefix = %names.prefix, "recorder running");
        Ok(Recorder { stop, tasks })
    }

    /// Stops fetching, lets the batch being written commit and be acknowledged, returns.
    pub async fn shutdown(mut self) {
        self.stop.cancel();
        while let Some(res) = self.tasks.join_next().await {
            if let Err(err) = res {
                tracing::error!(error = %err, "recorder task failed");
            }
        }
    }

    /// Ends every task at once, acknowledging nothing more (a crash, for tests).
    pub fn abort(mut self) {
        self.tasks.abort_all();
        self.tasks.detach_all();
    }
}

/// Payload bytes per statement at most: an EVENTS message holds up to `--event-batch`
/// events, so a backlog of full ones would otherwise make statements of a quarter million
/// rows.
const BATCH_BYTES: usize = 4 << 20;

/// One consumer's loop: take what has arrived, write it into every sink, acknowledge it.
async fn record(
    consumer: consumer::PullConsumer,
    sinks: Vec<Arc<dyn Sink>>,
    source: Source,
    limits: batch::Limits,
    metrics: Arc<Metrics>,
    yielding: Yielding,
    stop: CancellationToken,
) {
    let label = consumer.cached_info().name.clone();
    let mut pull = Pull::new(consumer, limits.max, stop.clone(), label);
    while let Some(first) = pull.next().await {
        // While the door sheds anything, record in larger, rarer batches (cheaper per
        // message); the lag this builds is bounded by one pause's arrivals and reported.
        yielding.pause(Priority::Low).await;
        let batch = batch::collect(first, &mut pull, limits, |m| m.payload.len()).await;
        if let Some(Ok(info)) = batch.last().map(Message::info) {
            for sink in &sinks {
                metrics.record_lag(sink.name(), source.as_str(), info.pending);
            }
        }
        if !write_until_committed(&sinks, source, &batch, &metrics, &stop).await {
            return;
        }
        for message in &batch {
            if let Err(err) = message.ack().await {
                tracing::warn!(error = %err, "ack after commit failed; the batch will be written again (idempotently)");
            }
        }
    }
}

/// Writes the batch into every sink, retrying with backoff those that failed, until all
/// committed (true) or the recorder stops (false: the batch stays unacknowledged and is
/// redelivered). In-progress acks keep JetStream from handing the batch to another
/// recorder meanwhile.
async fn write_until_committed(
    sinks: &[Arc<dyn Sink>],
    source: Source,
    batch: &[Message],
    metrics: &Metrics,
    stop: &CancellationToken,
) -> bool {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let mut pending: Vec<&dyn Sink> = sinks.iter().map(|s| &**s).collect();
    loop {
        let outcomes = futures::future::join_all(pending.iter().map(|sink| async move {
            let started = std::time::Instant::now();
            let written = sink.write(source, batch).await;
            (written, started.elapsed())
        }))
        .await;
        let mut failed = Vec::new();
        for (sink, (written, took)) in pending.into_iter().zip(outcomes) {
            match written {
                Ok(()) => metrics.recorded(sink.name(), source.as_str(), batch.len(), took),
                Err(err) => {
                    metrics.record_failed(sink.name(), source.as_str());
                    tracing::warn!(store = sink.name(), source = source.as_str(), batch = batch.len(), error = %err, "recording failed; retrying");
                    failed.push(sink);
                }
            }
        }
        if failed.is_empty() {
            return true;
        }
        pending = failed;
        if !backoff.wait(stop).await {
            return false;
        }
        for message in batch {
            let _ = message.ack_with(AckKind::Progress).await;
        }
    }
}

/// The stream sequence of a message (0 when it has no JetStream metadata).
pub fn sequence(message: &Message) -> u64 {
    message.info().map_or(0, |i| i.stream_sequence)
}

/// A batch's messages decoded by `parse`, each with its message. One that does not decode
/// is logged and left out: it would fail the same way on every redelivery.
pub fn decode<'a, T>(
    batch: impl IntoIterator<Item = &'a Message>,
    what: &str,
    parse: impl Fn(&'a [u8]) -> Result<T, serde_json::Error>,
) -> Vec<(T, &'a Message)> {
    batch
        .into_iter()
        .filter_map(|message| match parse(&message.payload) {
            Ok(decoded) => Some((decoded, message)),
            Err(err) => {
                tracing::error!(seq = sequence(message), error = %err, "undecodable {what}; not recorded");
                None
            }
        })
        .collect()
}

/// An EVENTS batch's outcome events, each with its message's stream sequence and its index
/// in that message (the pair that keys it). Destination health events (`<prefix>events.destinations`) are for other readers and
/// are passed over.
pub fn events(batch: &[Message]) -> Vec<(crate::events::Event<'_>, u64, u32)> {
    let outcomes = batch
        .iter()
        .filter(|m| !m.subject.ends_with(".destinations"));
    decode(outcomes, "events", crate::events::decode)
        .into_iter()
        .flat_map(|(events, message)| {
            let seq = sequence(message);
            events
                .into_iter()
                .enumerate()
                .map(move |(index, event)| (event, seq, index as u32))
        })
        .collect()
}

/// A NOTIFY batch's notifications, the first copy of each id only: a replay can put one id
/// in a batch twice, and one upsert statement may not touch a row twice. Each comes with
/// its stream sequence and the `traceparent` it was published with, if any.
pub fn notifications(batch: &[Message]) -> Vec<(WireNotification<'_>, u64, Option<TraceParent>)> {
    let mut seen = std::collections::HashSet::with_capacity(batch.len());
    decode(batch, "notification", serde_json::from_slice)
        .into_iter()
        .filter(|(n, _): &(WireNotification<'_>, _)| seen.insert(n.id))
        .map(|(n, message)| {
            let trace = TraceParent::header_of(message).and_then(TraceParent::parse);
            (n, sequence(message), trace)
        })
        .collect()
}

/// How the recorder batches.
#[derive(Debug, Clone)]
pub struct RecorderConfig {
    /// Most messages written per statement.
    pub record_batch: usize,
    /// How long a batch waits for more messages after its first one. Long enough that a
    /// low rate's batch holds tens of messages: each statement, insert_many and ack costs
    /// the stores about as much for five rows as for fifty. The lag it adds reaches only
    /// reads of outcomes and the delivery log, not delivery.
    pub record_linger: Duration,
    /// Messages each recorder consumer may hold unacknowledged.
    pub record_ack_pending: usize,
    /// How soon a batch that is not acknowledged goes to another recorder.
    pub record_ack_wait: Duration,
    /// How long a status stays in the Redis cache.
    pub status_cache_ttl: Duration,
    /// How long MongoDB keeps a message document.
    pub message_retention: Duration,
    /// Stores not recorded into.
    pub record_skip: Vec<RecordStore>,
    /// Whether each store has its own consumers or one per stream feeds them all.
    pub record_consumers: RecordConsumers,
}

impl Default for RecorderConfig {
    fn default() -> Self {
        RecorderConfig {
            record_batch: 1000,
            record_linger: Duration::from_millis(500),
            record_ack_pending: 8192,
            record_ack_wait: Duration::from_secs(60),
            status_cache_ttl: Duration::from_secs(3600),
            message_retention: Duration::from_secs(30 * 24 * 3600),
            record_skip: Vec::new(),
            record_consumers: RecordConsumers::default(),
        }
    }
}

/// How the recorder's consumers map onto the stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RecordConsumers {
    #[default]
    /// Each store its own consumers: a store that is down holds back only its own.
    PerStore,
    /// One consumer per stream writes each batch into every store: one delivery and one
    /// ack per message fewer, but a store that is down holds back the other.
    Shared,
}

/// A store the recorder can leave out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordStore {
    Postgres,
    Mongo,
}
