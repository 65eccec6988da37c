//! Prometheus metrics of one process, registered per role it runs.
//!
//! Each instance owns its registry (tests run many servers in one process). Per-priority
//! handles are resolved once, so the hot path increments an atomic and never looks up a
//! label set.

use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::model::Priority;

pub struct Metrics {
    registry: Registry,
    accepted: [IntCounter; 3],
    rejected: IntCounterVec,
    queue_depth: [IntGauge; 3],
    publish_latency: [Histogram; 3],
    publish_failures: [IntCounter; 3],
    pub batch_size: Histogram,
    pub acks_inflight: IntGauge,
    /// Single requests that published from their own task (the scheduler was empty).
    pub published_direct: IntCounter,
    attempts: IntCounterVec,
    send_latency: [Histogram; 3],
    end_to_end: [Histogram; 3],
    dead_letters: [IntCounter; 3],
    consumer_lag: [IntGauge; 3],
    dlq_messages: IntGauge,
    recorded: IntCounterVec,
    record_batch: HistogramVec,
    record_failures: IntCounterVec,
    rate_limited: IntCounterVec,
    pub connections_open: IntGauge,
    pub connections_refused: IntCounter,
    pub connections_closed_idle: IntCounter,
    pub connections_closed_header_timeout: IntCounter,
    admission_delay: Gauge,
    admission_ceiling: Gauge,
    admission_backlog: Gauge,
    admission_fraction: [Gauge; 3],
    record_lag: IntGaugeVec,
    delivery_waits: IntCounterVec,
    destination_transitions: IntCounterVec,
    destinations_open: IntGauge,
}

fn per_priority<T>(f: impl Fn(Priority) -> T) -> [T; 3] {
    Priority::ALL.map(f)
}

/// Which roles a process runs: only their metric families are exposed, so `deliver`'s
/// /metrics does not list the ingress's counters at zero.
#[derive(Debug, Clone, Copy)]
pub struct Roles {
    pub ingress: bool,
    pub delivery: bool,
    pub recorder: bool,
}

impl Roles {
    pub const ALL: Roles = Roles {
        ingress: true,
        delivery: true,
        recorder: true,
    };
    pub const INGRESS: Roles = Roles {
        ingress: true,
        delivery: false,
        recorder: false,
    };
    pub const DELIVERY: Roles = Roles {
        ingress: false,
        delivery: true,
        recorder: false,
    };
    pub const RECORDER: Roles = Roles {
        ingress: false,
        delivery: false,
        recorder: true,
    };
}

impl Metrics {
    /// Every role's families (`dispatcher run`, tests, benchmarks).
    pub fn new() -> Self {
        Self::for_roles(Roles::ALL)
    }

    /// The families of `roles` only.
    pub fn for_roles(roles: Roles) -> Self {
        let registry = Registry::new();
        let accepted = IntCounterVec::new(
            Opts::new(
                "herald_ingest_accepted_total",
                "Notifications acknowledged by JetStream and answered 202",
            ),
            &["priority"],
        )
        .expect("valid metric");
        let rejected = IntCounterVec::new(
            Opts::new(
                "herald_ingest_rejected_total",
                "Notifications refused, by priority (unknown when unparsed) and reason code",
            ),
            &["priority", "reason"],
        )
        .expect("valid metric");
        let queue_depth = IntGaugeVec::new(
            Opts::new(
                "herald_queue_depth",
                "Notifications waiting in the scheduler",
            ),
            &["priority"],
        )
        .expect("valid metric");
        let publish_latency = HistogramVec::new(
            HistogramOpts::new(
                "herald_publish_latency_seconds",
                "From scheduling to JetStream's ack",
            )
            .buckets(prometheus::exponential_buckets(0.000_05, 2.0, 18).expect("valid buckets")),
            &["priority"],
        )
        .expect("valid metric");
        let publish_failures = IntCounterVec::new(
            Opts::new(
                "herald_publish_failures_total",
                "Publishes that JetStream did not acknowledge (answered 503)",
            ),
            &["priority"],
        )
        .expect("valid metric");
        let batch_size = Histogram::with_opts(
            HistogramOpts::new("herald_publish_batch_size", "Messages per publish batch")
                .buckets(prometheus::exponential_buckets(1.0, 2.0, 12).expect("valid buckets")),
        )
        .expect("valid metric");
        let acks_inflight = IntGauge::new(
            "herald_publish_acks_inflight",
            "Publishes awaiting their JetStream ack",
        )
        .expect("valid metric");
        let published_direct = IntCounter::new(
            "herald_publish_direct_total",
            "Single requests published from their own task because nothing waited in the scheduler",
        )
        .expect("valid metric");

        let attempts = IntCounterVec::new(
            Opts::new(
                "herald_delivery_attempts_total",
                "Delivery attempts by priority, channel and outcome (delivered, retryable, permanent)",
            ),
            &["priority", "channel", "outcome"],
        )
        .expect("valid metric");
        let send_latency = HistogramVec::new(
            HistogramOpts::new(
                "herald_delivery_send_seconds",
                "Duration of one send to the provider",
            )
            .buckets(prometheus::exponential_buckets(0.000_1, 2.0, 18).expect("valid buckets")),
            &["priority"],
        )
        .expect("valid metric");
        let end_to_end = HistogramVec::new(
            HistogramOpts::new(
                "herald_delivery_end_to_end_seconds",
                "From acceptance to successful delivery",
            )
            .buckets(prometheus::exponential_buckets(0.000_5, 2.0, 22).expect("valid buckets")),
            &["priority"],
        )
        .expect("valid metric");
        let dead_letters = IntCounterVec::new(
            Opts::new(
                "herald_dead_letters_total",
                "Notifications moved to the DLQ",
            ),
            &["priority"],
        )
        .expect("valid metric");
        let consumer_lag = IntGaugeVec::new(
            Opts::new(
                "herald_consumer_lag",
                "Messages in NOTIFY not yet delivered to the priority's consumer (as of the last fetch)",
            ),
            &["priority"],
        )
        .expect("valid metric");
        let dlq_messages = IntGauge::new(
            "herald_dlq_messages",
            "Dead letters waiting in the DLQ stream, every tenant's (as of the last look, --dlq-size-interval)",
        )
        .expect("valid metric");
        let recorded = IntCounterVec::new(
            Opts::new(
                "herald_recorded_total",
                "Messages written by the recorder, by store and stream",
            ),
            &["store", "source"],
        )
        .expect("valid metric");
        let record_batch = HistogramVec::new(
            HistogramOpts::new(
                "herald_record_write_seconds",
                "Time to write one recorder batch, by store and stream",
            )
            .buckets(prometheus::exponential_buckets(0.000_25, 2.0, 16).expect("valid buckets")),
            &["store", "source"],
        )
        .expect("valid metric");
        let record_failures = IntCounterVec::new(
            Opts::new(
                "herald_record_failures_total",
                "Recorder batch writes that failed (and were retried)",
            ),
            &["store", "source"],
        )
        .expect("valid metric");
        let rate_limited = IntCounterVec::new(
            Opts::new(
                "herald_rate_limit_decisions_total",
                "Ingress rate-limit decisions: allowed, limited, or unchecked (Redis unreachable: allowed)",
            ),
            &["decision"],
        )
        .expect("valid metric");
        let connections_open = IntGauge::new("herald_http_connections", "Open ingress connections")
            .expect("valid metric");
        let connections_refused = IntCounter::new(
            "herald_http_connections_refused_total",
            "Connections answered 503 and closed because --max-connections were open",
        )
        .expect("valid metric");
        let connections_closed = IntCounterVec::new(
            Opts::new(
                "herald_http_connections_closed_total",
                "Connections Herald closed: idle (graceful, after --idle-timeout) or header_timeout (a request head late)",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let admission_delay = Gauge::new(
            "herald_admission_delay_seconds",
            "Standing delay of the last interval (the larger of the minimum publish sojourn and the minimum runtime lag) that admission judges overload by",
        )
        .expect("valid metric");
        let admission_ceiling = Gauge::new(
            "herald_admission_ceiling_per_second",
            "The door's ceiling on the admitted rate of all priorities together (0: none, nothing is shed)",
        )
        .expect("valid metric");
        let admission_backlog = Gauge::new(
            "herald_admission_backlog_seconds",
            "Standing delivery backlog of the last interval: per class the larger of the minimum age of first attempts (dispatcher run) and the due messages over the admitted rate; the largest class",
        )
        .expect("valid metric");
        let admission_fraction = GaugeVec::new(
            Opts::new(
                "herald_admission_fraction",
                "Share of each priority's requests the door admitted in the last interval (1: all; below 1: shedding)",
            ),
            &["priority"],
        )
        .expect("valid metric");
        let record_lag = IntGaugeVec::new(
            Opts::new(
                "herald_record_lag",
                "Messages a recorder consumer has yet to record (its JetStream pending count at the last batch)",
            ),
            &["store", "source"],
        )
        .expect("valid metric");
        let delivery_waits = IntCounterVec::new(
            Opts::new(
                "herald_delivery_waits_total",
                "Deliveries that sent nothing, by reason: put off without an attempt (paused, open, probing, held, throttled, busy, scheduled, handed_back) or terminated unsent (canceled)",
            ),
            &["reason"],
        )
        .expect("valid metric");
        let destination_transitions = IntCounterVec::new(
            Opts::new(
                "herald_destination_transitions_total",
                "Circuit changes of destinations: to=open (failing) or to=closed (recovered)",
            ),
            &["to"],
        )
        .expect("valid metric");
        let destinations_open = IntGauge::new(
            "herald_destinations_open",
            "Destinations whose circuit is open or probing in this process",
        )
        .expect("valid metric");
        type Collectors = Vec<Box<dyn prometheus::core::Collector>>;
        let ingress: Collectors = vec![
            Box::new(accepted.clone()),
            Box::new(rejected.clone()),
            Box::new(publish_latency.clone()),
            Box::new(publish_failures.clone()),
            Box::new(batch_size.clone()),
            Box::new(acks_inflight.clone()),
            Box::new(published_direct.clone()),
            Box::new(rate_limited.clone()),
            Box::new(connections_open.clone()),
            Box::new(connections_refused.clone()),
            Box::new(connections_closed.clone()),
            Box::new(admission_delay.clone()),
            Box::new(admission_ceiling.clone()),
            Box::new(admission_backlog.clone()),
            Box::new(admission_fraction.clone()),
        ];
        let delivery: Collectors = vec![
            Box::new(attempts.clone()),
            Box::new(send_latency.clone()),
            Box::new(end_to_end.clone()),
            Box::new(dead_letters.clone()),
            Box::new(consumer_lag.clone()),
            Box::new(dlq_messages.clone()),
            Box::new(delivery_waits.clone()),
            Box::new(destination_transitions.clone()),
            Box::new(destinations_open.clone()),
        ];
        let recorder: Collectors = vec![
            Box::new(recorded.clone()),
            Box::new(record_batch.clone()),
            Box::new(record_failures.clone()),
            Box::new(record_lag.clone()),
        ];
        let mut families: Collectors = Vec::new();
        if roles.ingress || roles.delivery {
            // The ingress's scheduler, or delivery's when it runs alone.
            families.push(Box::new(queue_depth.clone()));
        }
        for (on, group) in [
            (roles.ingress, ingress),
            (roles.delivery, delivery),
            (roles.recorder, recorder),
        ] {
            if on {
                families.extend(group);
            }
        }
        for c in families {
            registry.register(c).expect("metric names are unique");
        }
        Metrics {
            accepted: per_priority(|p| accepted.with_label_values(&[p.as_str()])),
            queue_depth: per_priority(|p| queue_depth.with_label_values(&[p.as_str()])),
            publish_latency: per_priority(|p| publish_latency.with_label_values(&[p.as_str()])),
            publish_failures: per_priority(|p| publish_failures.with_label_values(&[p.as_str()])),
            send_latency: per_priority(|p| send_latency.with_label_values(&[p.as_str()])),
            end_to_end: per_priority(|p| end_to_end.with_label_values(&[p.as_str()])),
            dead_letters: per_priority(|p| dead_letters.with_label_values(&[p.as_str()])),
            consumer_lag: per_priority(|p| consumer_lag.with_label_values(&[p.as_str()])),
            dlq_messages,
            attempts,
            rejected,
            recorded,
            record_batch,
            record_failures,
            rate_limited,
            registry,
            batch_size,
            acks_inflight,
            published_direct,
            connections_open,
            connections_refused,
            connections_closed_idle: connections_closed.with_label_values(&["idle"]),
            connections_closed_header_timeout: connections_closed
                .with_label_values(&["header_timeout"]),
            admission_delay,
            admission_ceiling,
            admission_backlog,
            admission_fraction: per_priority(|p| {
                admission_fraction.with_label_values(&[p.as_str()])
            }),
            record_lag,
            delivery_waits,
            destination_transitions,
            destinations_open,
        }
    }

    /// A delivery put off without an attempt.
    pub fn delivery_waited(&self, reason: &str) {
        self.delivery_waits.with_label_values(&[reason]).inc();
    }

    /// A destination's circuit opened (`opened`) or closed again.
    pub fn destination_transition(&self, opened: bool) {
        let to = if opened { "open" } else { "closed" };
        self.destination_transitions.with_label_values(&[to]).inc();
        if opened {
            self.destinations_open.inc();
        } else {
            self.destinations_open.dec();
        }
    }

    pub fn delivery_attempt(
        &self,
        priority: Priority,
        channel: crate::model::Channel,
        outcome: &str,
        took: std::time::Duration,
    ) {
        self.attempts
            .with_label_values(&[priority.as_str(), channel.as_str(), outcome])
            .inc();
        self.send_latency[priority.index()].observe(took.as_secs_f64());
    }

    pub fn delivered(&self, priority: Priority, since_accepted: std::time::Duration) {
        self.end_to_end[priority.index()].observe(since_accepted.as_secs_f64());
    }

    /// The admission controller's last judgement: standing delays and admitted fractions.
    pub fn admission(
        &self,
        door_seconds: f64,
        backlog_seconds: f64,
        fractions: [f64; 3],
        ceiling: f64,
    ) {
        self.admission_ceiling.set(ceiling);
        self.admission_delay.set(door_seconds);
        self.admission_backlog.set(backlog_seconds);
        for (gauge, fraction) in self.admission_fraction.iter().zip(fractions) {
            gauge.set(fraction);
        }
    }

    pub fn record_lag(&self, store: &str, source: &str, pending: u64) {
        self.record_lag
            .with_label_values(&[store, source])
            .set(pending as i64);
    }

    pub fn consumer_lag(&self, priority: Priority, pending: u64) {
        self.consumer_lag[priority.index()].set(pending as i64);
    }

    pub fn dlq_messages(&self, messages: u64) {
        self.dlq_messages
            .set(i64::try_from(messages).unwrap_or(i64::MAX));
    }

    pub fn recorded(&self, store: &str, source: &str, messages: usize, took: std::time::Duration) {
        self.recorded
            .with_label_values(&[store, source])
            .inc_by(messages as u64);
        self.record_batch
            .with_label_values(&[store, source])
            .observe(took.as_secs_f64());
    }

    /// Messages a store's recorder has written from one stream so far.
    pub fn recorded_count(&self, store: &str, source: &str) -> u64 {
        self.recorded.with_label_values(&[store, source]).get()
    }

    pub fn record_failed(&self, store: &str, source: &str) {
        self.record_failures
            .with_label_values(&[store, source])
            .inc();
    }

    /// `decision`: `allowed`, `limited` or `unchecked`.
    pub fn rate_limit(&self, decision: &str, n: usize) {
        self.rate_limited
            .with_label_values(&[decision])
            .inc_by(n as u64);
    }

    pub fn dead_lettered(&self, priority: Priority) {
        self.dead_letters[priority.index()].inc();
    }

    pub fn accepted(&self, priority: Priority) {
        self.accepted[priority.index()].inc();
    }

    pub fn rejected(&self, priority: Option<Priority>, reason: &str) {
        let p = priority.map_or("unknown", Priority::as_str);
        self.rejected.with_label_values(&[p, reason]).inc();
    }

    pub fn published(&self, priority: Priority, seconds: f64) {
        self.publish_latency[priority.index()].observe(seconds);
    }

    pub fn publish_failed(&self, priority: Priority) {
        self.publish_failures[priority.index()].inc();
    }

    /// Renders the Prometheus text format, sampling queue depths first.
    pub fn render(&self, depth: impl Fn(Priority) -> usize) -> Vec<u8> {
        for p in Priority::ALL {
            self.queue_depth[p.index()].set(depth(p) as i64);
        }
        let mut out = Vec::with_capacity(8 * 1024);
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("encoding to a Vec cannot fail");
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn families(roles: Roles) -> String {
        String::from_utf8(Metrics::for_roles(roles).render(|_| 0)).unwrap()
    }

    #[test]
    fn each_role_exposes_its_own_families() {
        let delivery = families(Roles::DELIVERY);
        assert!(delivery.contains("herald_consumer_lag{"), "{delivery}");
        assert!(delivery.contains("herald_queue_depth{"));
        assert!(!delivery.contains("herald_ingest_accepted_total"));
        let ingress = families(Roles::INGRESS);
        assert!(ingress.contains("herald_ingest_accepted_total{"));
        assert!(!ingress.contains("herald_consumer_lag"));
        let recorder = families(Roles::RECORDER);
        assert!(!recorder.contains("herald_queue_depth"));
        assert!(!recorder.contains("herald_ingest_accepted_total"));
        let all = families(Roles::ALL);
        assert!(
            all.contains("herald_consumer_lag{") && all.contains("herald_ingest_accepted_total{")
        );
    }
}
