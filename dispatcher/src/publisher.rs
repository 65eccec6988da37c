//! Batched, pipelined publishing from the scheduler to JetStream.
//!
//! Each publisher task takes a batch from the scheduler (at most `batch_max`, lingering at
//! most `linger` for it to fill), sends every message of it without waiting, then hands the
//! ack futures to a completion task and goes for the next batch. Each ack completes its own
//! waiting request as soon as it arrives. A semaphore bounds the acks in flight: when
//! JetStream is slower than ingress, publishers wait, the queues fill, and clients get 429,
//! never unbounded memory.
//!
//! With `direct_max` above 0 (off by default), a single request that finds the scheduler
//! empty skips that hand-off: it publishes from its own task and waits for the ack there
//! (at most `direct_max` at once), saving the wake-ups of a publisher and a completion
//! task. Once anything waits in the scheduler, every request queues, so under load the
//! scheduler alone orders what goes first.

use std::sync::Arc;
use std::time::Instant;

use async_nats::jetstream::{self, message::PublishMessage};
use async_nats::HeaderMap;
use bytes::Bytes;
use futures::stream::{FuturesUnordered, StreamExt};
use tokio::sync::{oneshot, Semaphore};
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::admission::Admission;
use crate::jetstream::{Names, HEADER_CHANNEL, HEADER_PRIORITY};
use crate::metrics::Metrics;
use crate::model::{Channel, Priority};
use crate::scheduler::Scheduler;
use crate::trace::{self, Span, Spans, TraceParent};
use opentelemetry::trace::SpanKind;
use opentelemetry::KeyValue;

/// JetStream's answer for one message: its stream sequence, or why it is not stored.
pub type PublishOutcome = Result<u64, String>;

/// One accepted notification on its way to JetStream, with the request waiting for it.
pub struct Envelope {
    pub id: Uuid,
    pub priority: Priority,
    pub channel: Channel,
    /// The encoded wire document.
    pub body: Bytes,
    pub scheduled_at: Instant,
    /// The publish span: travels as the message's `traceparent` header.
    pub trace: TraceParent,
    /// The span of the request that accepted it (the publish span's parent).
    pub request_span: u64,
    pub reply: oneshot::Sender<PublishOutcome>,
}

/// Runs the publisher tasks until the scheduler is closed and drained and every ack is in.
pub struct Publisher {
    tasks: JoinSet<()>,
    shared: Arc<Shared>,
}

/// The door's way in: queues envelopes for the publisher tasks, or (with `direct_max` above
/// 0) publishes one from the request's own task while the door is idle.
#[derive(Clone)]
pub struct Submitter {
    shared: Arc<Shared>,
}

struct Shared {
    js: jetstream::Context,
    names: Names,
    scheduler: Arc<Scheduler<Envelope>>,
    admission: Arc<Admission>,
    metrics: Arc<Metrics>,
    inflight: Arc<Semaphore>,
    /// Publishes made from request tasks that are awaiting their ack.
    direct: Semaphore,
    config: PublisherConfig,
    spans: Spans,
}

impl Publisher {
    pub fn start(
        js: jetstream::Context,
        names: Names,
        scheduler: Arc<Scheduler<Envelope>>,
        admission: Arc<Admission>,
        metrics: Arc<Metrics>,
        config: PublisherConfig,
        spans: Spans,
    ) -> Self {
        let shared = Arc::new(Shared {
            inflight: Arc::new(Semaphore::new(config.max_inflight)),
            direct: Semaphore::new(config.direct_max),
            js,
            names,
            scheduler,
            admission,
            metrics,
            config,
            spans,
        });
        let mut tasks = JoinSet::new();
        for _ in 0..shared.config.publishers.max(1) {
            tasks.spawn(run(shared.clone()));
        }
        Publisher { tasks, shared }
    }

    /// The handle the door submits with.
    pub fn submitter(&self) -> Submitter {
        Submitter {
            shared: self.shared.clone(),
        }
    }

    /// Waits until the scheduler is closed and drained and every publish is answered.
    pub async fn join(mut self) {
        while let Some(res) = self.tasks.join_next().await {
            if let Err(err) = res {
                tracing::error!(error = %err, "publisher task failed");
            }
        }
    }
}

/// Why the door could not take a notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Its class's queue is full.
    Full,
    /// The door is shutting down.
    Closed,
}

impl Submitter {
    /// Queues `envelope` for the publisher tasks, unless its class is full or the scheduler
    /// is closed (the envelope is dropped then, and its request told why).
    pub fn queue(&self, envelope: Envelope) -> Result<(), Refused> {
        let scheduler = &self.shared.scheduler;
        match scheduler.try_push(envelope.priority, envelope) {
            Ok(()) => Ok(()),
            Err(_) if scheduler.is_closed() => Err(Refused::Closed),
            Err(_) => Err(Refused::Full),
        }
    }

    /// Publishes `envelope` from the calling task and returns once its ack (or failure) is
    /// in its `reply`, when nothing waits in the scheduler and a direct slot and an ack
    /// slot are free; otherwise queues it like [`Submitter::queue`]. A waiting message is
    /// never overtaken: the check and the publish race only with other arrivals.
    pub async fn publish_or_queue(&self, envelope: Envelope) -> Result<(), Refused> {
        let shared = &self.shared;
        // The direct slot first: with `direct_max` 0 (the default) one atomic load decides.
        let Ok(_direct) = shared.direct.try_acquire() else {
            return self.queue(envelope);
        };
        if !shared.scheduler.is_empty() || shared.scheduler.is_closed() {
            return self.queue(envelope);
        }
        let Ok(_permit) = shared.inflight.try_acquire() else {
            return self.queue(envelope);
        };
        // A guard, not a decrement after the await: a client that hangs up drops this
        // future half way.
        let _counted = CountedAck::new(&shared.metrics.acks_inflight);
        shared.metrics.published_direct.inc();
        publish_one(shared, envelope, Path::Direct).await.await;
        Ok(())
    }
}

/// One ack counted in flight for as long as it lives.
struct CountedAck<'a>(&'a prometheus::IntGauge);

impl<'a> CountedAck<'a> {
    fn new(gauge: &'a prometheus::IntGauge) -> Self {
        gauge.inc();
        CountedAck(gauge)
    }
}

impl Drop for CountedAck<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

async fn run(shared: Arc<Shared>) {
    let batch_max = shared.config.batch_max.max(1);
    let want = batch_max.min(shared.config.max_inflight.max(1));
    let mut acks = JoinSet::new();
    let mut batch = Vec::with_capacity(want);
    loop {
        // Capacity first, items second: while JetStream is slow the items wait in the
        // scheduler, where a later high-priority arrival can still overtake them.
        let mut permits = shared
            .inflight
            .clone()
            .acquire_many_owned(want as u32)
            .await
            .expect("the semaphore is never closed");
        if !next_batch(&shared, &mut batch, want).await {
            break;
        }
        drop(permits.split(want - batch.len()));
        // Reap finished completion tasks so the set does not grow.
        while acks.try_join_next().is_some() {}
        shared.metrics.batch_size.observe(batch.len() as f64);
        shared.metrics.acks_inflight.add(batch.len() as i64);
        let pending = send_batch(&shared, &mut batch).await;
        let metrics = shared.metrics.clone();
        let count = permits.num_permits() as i64;
        acks.spawn(async move {
            pending.collect::<()>().await;
            metrics.acks_inflight.sub(count);
            drop(permits);
        });
    }
    while acks.join_next().await.is_some() {}
}

/// Fills `batch` with the next batch; `false` once the scheduler is closed and empty.
async fn next_batch(shared: &Shared, batch: &mut Vec<Envelope>, batch_max: usize) -> bool {
    let scheduler = &shared.scheduler;
    loop {
        scheduler.wait_for_work().await;
        if scheduler.pop_batch(batch_max, batch) > 0 {
            break;
        }
        if scheduler.is_closed() && scheduler.is_empty() {
            return false;
        }
    }
    if batch.len() < batch_max && !shared.config.linger.is_zero() {
        let deadline = tokio::time::Instant::now() + shared.config.linger;
        while batch.len() < batch_max && !scheduler.is_closed() {
            tokio::select! {
                () = tokio::time::sleep_until(deadline) => break,
                () = scheduler.wait_for_work() => {
                    scheduler.pop_batch(batch_max - batch.len(), batch);
                }
            }
        }
    }
    true
}

/// Sends every message of the batch, returning the futures that complete each request.
async fn send_batch(
    shared: &Arc<Shared>,
    batch: &mut Vec<Envelope>,
) -> FuturesUnordered<impl std::future::Future<Output = ()>> {
    let pending = FuturesUnordered::new();
    for envelope in batch.drain(..) {
        // Bound first: `pending.push(x.await)` would hold a borrow of `pending` across
        // the await, and the ack futures are not `Sync`.
        let answer = publish_one(shared, envelope, Path::Queued).await;
        pending.push(answer);
    }
    pending
}

/// How a message reached [`publish_one`].
#[derive(Clone, Copy, PartialEq, Eq)]
enum Path {
    /// Through the scheduler and a publisher task.
    Queued,
    /// From its request's task, the scheduler being empty.
    Direct,
}

/// Sends one message without waiting for its ack; the future returned waits for it and
/// answers the envelope's request.
async fn publish_one(
    shared: &Arc<Shared>,
    envelope: Envelope,
    path: Path,
) -> impl std::future::Future<Output = ()> {
    let Envelope {
        id,
        priority,
        channel,
        body,
        scheduled_at,
        trace: trace_parent,
        request_span,
        reply,
    } = envelope;
    let mut headers = HeaderMap::new();
    headers.insert(HEADER_PRIORITY, priority.as_str());
    headers.insert(HEADER_CHANNEL, channel.as_str());
    headers.insert(trace::HEADER, trace_parent.to_header().as_str());
    let mut id_text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let message = PublishMessage::build()
        .payload(body)
        .headers(headers)
        .message_id(id.hyphenated().encode_lower(&mut id_text));
    let subject = shared.names.subject(priority, channel);
    let sent = shared.js.send_publish(subject, message).await;
    let shared = shared.clone();
    async move {
        let outcome = match sent {
            Ok(ack) => ack.await.map(|a| a.sequence).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        match &outcome {
            Ok(_) => {
                let sojourn = scheduled_at.elapsed();
                // Admission's door signal is the minimum sojourn through the scheduler: a
                // direct publish skipped it, and its short sojourn would hide the queue
                // the others stood in (a flood kept low admitted).
                if path == Path::Queued {
                    shared.admission.publish_delay(sojourn);
                }
                shared.metrics.published(priority, sojourn.as_secs_f64());
            }
            Err(err) => {
                shared.metrics.publish_failed(priority);
                tracing::debug!(%id, error = %err, "publish not acknowledged");
            }
        }
        if let Some(end) = shared.spans.clock_for(&trace_parent) {
            shared.spans.record(Span {
                name: "herald.publish",
                kind: SpanKind::Producer,
                context: trace_parent,
                parent: Some(request_span),
                parent_is_remote: false,
                start: end - scheduled_at.elapsed(),
                end,
                attributes: vec![
                    KeyValue::new("herald.id", id.to_string()),
                    KeyValue::new("herald.priority", priority.as_str()),
                    KeyValue::new("messaging.system", "nats"),
                ],
                error: outcome.as_ref().err().cloned(),
            });
        }
        // The request may have gone (client disconnected); the message is stored anyway.
        let _ = reply.send(outcome);
    }
}

/// How accepted notifications are batched into JetStream.
#[derive(Debug, Clone)]
pub struct PublisherConfig {
    pub batch_max: usize,
    /// Longest a batch waits to fill once its first message is in.
    pub linger: std::time::Duration,
    /// Concurrent publisher tasks.
    pub publishers: usize,
    /// Most publishes awaiting their ack at once.
    pub max_inflight: usize,
    /// Most single requests publishing from their own task at once while the scheduler is
    /// empty (0: every request goes through the scheduler).
    pub direct_max: usize,
    /// How long to wait for an ack before answering 503.
    pub publish_timeout: std::time::Duration,
}

impl Default for PublisherConfig {
    fn default() -> Self {
        PublisherConfig {
            batch_max: 256,
            linger: std::time::Duration::ZERO,
            publishers: 2,
            max_inflight: 8192,
            // Off until its effect on admission's door signal is understood: with it on,
            // a 1 ms-target flood test shed low in only most runs (results/2026-12-04-86915b5).
            direct_max: 0,
            publish_timeout: std::time::Duration::from_secs(5),
        }
    }
}
