//! Per-destination health: a circuit breaker, throttling that delays rather than drops,
//! a cap on concurrent sends, and operator pauses.
//!
//! A destination is a tenant's webhook host and port, or the provider of another channel
//! (`sms:api.example.com:443`). Before a send the worker asks [`Destinations::admit`]:
//! - [`Gate::Send`] gives a [`Permit`], settled with the outcome afterwards;
//! - [`Gate::Wait`] says how long the message should wait, and why. The worker hands it
//!   back to JetStream with that delay, and the ledger records a wait, not an attempt.
//!
//! So a destination that is down holds no workers and burns no attempts: after
//! `failures` consecutive failures (connection errors, timeouts, 408 and 5xx) its circuit
//! opens for a period that doubles while probes fail. When the period ends, one message
//! goes out as a probe (half-open) while the rest wait; its success closes the circuit.
//! Each change is an event on `<prefix>events.destinations` (`destination.failing`,
//! `destination.recovered`), a metric, and a record in the `<prefix>DESTINATIONS` bucket
//! (`health.<tenant>.<name>`), which the operator API lists.
//!
//! Operators write `control.<tenant>.<name>` in the same bucket (pause, a rate per second),
//! and `defaults.<tenant>` (the rate of the tenant's destinations that have none of their own),
//! and every delivery process follows those keys. A 429 or 503 with `Retry-After` holds
//! every message to that destination for that long, not only the one that got it.
//!
//! Every process also follows the `health.` records ([`Destinations::adopt`]): once one
//! process opens a circuit, the others hold that destination's messages too; once one
//! sees it recover, they let them go; a Retry-After one process got is honoured by all.
//! The failures are counted once, not once per process. A destination's rate is split
//! between the live delivery processes ([`super::peers`]), so N processes together send at
//! its rate, not N times it. The in-flight cap stays per process. A 410 or a circuit open
//! for `disable_after` disables endpoints (`disabled.<tenant>.<url>`), which every process
//! follows too. The healthy path takes no lock and reads no bucket: a few atomic loads and
//! a semaphore permit for the destination's in-flight cap.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, kv};
use chrono::Utc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::senders::SendOutcome;
use crate::buckets::{
    bucket_key, name_in_key, CircuitState, Control, DestinationEvent, DisabledEndpoint,
    HealthRecord, TenantDefaults,
};
use crate::jetstream::Names;
use crate::metrics::Metrics;

/// How destinations are judged.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HealthConfig {
    /// Consecutive failures that open a circuit.
    pub failures: u32,
    /// The first open period; it doubles while probes fail, up to `open_cap`.
    pub open_base: Duration,
    pub open_cap: Duration,
    /// Concurrent sends to one destination, so a receiver that hangs cannot take every
    /// worker of its channel before its circuit opens. A worker whose message finds them
    /// all taken waits up to `busy_patience` for one, then hands the message back.
    pub max_in_flight: usize,
    pub busy_patience: Duration,
    /// Sends per second to one destination when the operator set none; `None`: no limit.
    pub default_rate: Option<f64>,
    /// How long a message to a paused destination waits before it looks again.
    pub paused_wait: Duration,
    /// A destination failing without a break this long has its endpoints disabled.
    pub disable_after: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            failures: 5,
            open_base: Duration::from_secs(5),
            open_cap: Duration::from_secs(60),
            max_in_flight: 128,
            busy_patience: Duration::from_millis(100),
            default_rate: None,
            paused_wait: Duration::from_secs(5),
            disable_after: Duration::from_secs(5 * 24 * 3600),
        }
    }
}

/// Why a delivery waits instead of sending (the `reason` of `herald_delivery_waits_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitReason {
    Paused,
    Open,
    Probing,
    Held,
    Throttled,
    Busy,
}

impl WaitReason {
    pub fn as_str(self) -> &'static str {
        match self {
            WaitReason::Paused => "paused",
            WaitReason::Open => "open",
            WaitReason::Probing => "probing",
            WaitReason::Held => "held",
            WaitReason::Throttled => "throttled",
            WaitReason::Busy => "busy",
        }
    }
}

/// What a worker may do with one message to a destination.
pub enum Gate {
    Send(Permit),
    Wait(Duration, WaitReason),
    /// It has failed without a break for `--disable-after`: its endpoints are disabled as
    /// their messages come.
    Disabled(Duration),
}

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

type Key = (Uuid, Arc<str>);

/// One destination's state in this process.
struct Destination {
    key: Key,
    mode: AtomicU8,
    paused: AtomicBool,
    failures: AtomicU32,
    /// Sends in flight: `max_in_flight` permits.
    slots: Arc<tokio::sync::Semaphore>,
    /// Microseconds since [`Destinations::epoch`]; 0: none.
    held_until: AtomicU64,
    /// Sends per second (f64 bits) the operator set for it; 0: none.
    rate: AtomicU64,
    /// Its tenant's default rate (f64 bits); 0: none, the deployment's default applies.
    tenant_rate: AtomicU64,
    /// The rate's theoretical arrival time (GCRA), microseconds since the epoch.
    rate_tat: AtomicU64,
    /// Taken only when the circuit changes or is open.
    circuit: Mutex<Circuit>,
}

#[derive(Default)]
struct Circuit {
    open_until: Option<Instant>,
    /// Since when it has been failing without a break (set when it opens from closed).
    failing_since: Option<Instant>,
    /// Open periods in a row (the next one doubles).
    opened: u32,
    probing: bool,
    last_error: Option<String>,
}

/// How a send went, for the destination's health.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Verdict {
    /// It answered (delivered, or refused the message itself: a 4xx).
    Up,
    /// It did not (connection error, timeout, 408, 5xx).
    Down,
}

/// `None` when nothing was sent, so the destination showed nothing.
fn verdict(outcome: &SendOutcome) -> Option<Verdict> {
    Some(match outcome {
        SendOutcome::Delivered { .. } | SendOutcome::Permanent { .. } => Verdict::Up,
        // A 4xx (a 429, or a 401 or 404 retried as Standard Webhooks asks) is an answer
        // about one URL or one request: the host is up, and its other URLs are not held.
        SendOutcome::Retryable { status, .. } => match status {
            Some(400..=499) => Verdict::Up,
            _ => Verdict::Down,
        },
        SendOutcome::Unsent { .. } => return None,
    })
}

/// Every destination this process has sent to, with the operator's controls.
pub struct Destinations {
    map: moka::sync::Cache<Key, Arc<Destination>>,
    /// The operators' controls, kept apart from `map`: a destination forgotten while idle
    /// takes its pause and rate again when it comes back. Read only when one is created.
    controls: std::sync::RwLock<std::collections::HashMap<Key, Control>>,
    /// Each tenant's default rate (f64 bits), read when a destination is created.
    tenant_rates: std::sync::RwLock<std::collections::HashMap<Uuid, u64>>,
    /// Endpoints that answered 410, per tenant then URL (as the bucket has them).
    disabled: std::sync::RwLock<
        std::collections::HashMap<Uuid, std::collections::HashMap<String, DisabledEndpoint>>,
    >,
    config: HealthConfig,
    epoch: Instant,
    js: jetstream::Context,
    kv: kv::Store,
    names: Names,
    metrics: Arc<Metrics>,
    /// The delivery processes a destination's rate is split between.
    peers: Arc<super::peers::Peers>,
    /// Tells the tenant's operations endpoint when a circuit opens or closes.
    operations: Arc<super::operations::Operations>,
}

impl Destinations {
    /// Opens the bucket and follows the operators' controls until `stop`.
    pub async fn start(
        js: jetstream::Context,
        names: Names,
        config: HealthConfig,
        metrics: Arc<Metrics>,
        operations: Arc<super::operations::Operations>,
        stop: CancellationToken,
        tasks: &mut tokio::task::JoinSet<()>,
    ) -> Result<Arc<Self>, async_nats::Error> {
        let kv = js.get_key_value(&names.destinations_bucket).await?;
        let destinations = Arc::new(Destinations {
            // A destination idle for an hour is forgotten (its controls stay in the
            // bucket and are read again when it comes back).
            map: moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_idle(Duration::from_secs(3600))
                .build(),
            controls: Default::default(),
            tenant_rates: Default::default(),
            disabled: Default::default(),
            config,
            epoch: Instant::now(),
            js,
            kv: kv.clone(),
            names,
            metrics,
            peers: Arc::new(super::peers::Peers::new()),
            operations,
        });
        tasks.spawn(destinations.peers.clone().beat(kv.clone(), stop.clone()));
        // Every control in the bucket first, then each change.
        let watch = kv.watch_many_with_history(WATCHED).await?;
        let following = destinations.clone();
        tasks.spawn(crate::jetstream::follow_bucket(
            watch,
            move |_| {
                let kv = kv.clone();
                async move { kv.watch_many_with_history(WATCHED).await }
            },
            move |entry| following.follow(entry),
            "destination controls",
            stop,
        ));
        Ok(destinations)
    }

    fn now_micros(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    fn get(&self, tenant: Uuid, name: &str) -> Arc<Destination> {
        let key: Key = (tenant, Arc::from(name));
        self.map.get_with_by_ref(&key, || {
            let control = self
                .controls
                .read()
                .expect("controls lock")
                .get(&key)
                .cloned()
                .unwrap_or_default();
            let tenant_rate = self
                .tenant_rates
                .read()
                .expect("tenant rates lock")
                .get(&tenant)
                .copied()
                .unwrap_or(0);
            Arc::new(Destination {
                key: key.clone(),
                mode: AtomicU8::new(CLOSED),
                paused: AtomicBool::new(control.paused),
                failures: AtomicU32::new(0),
                slots: Arc::new(tokio::sync::Semaphore::new(
                    self.config.max_in_flight.max(1),
                )),
                held_until: AtomicU64::new(0),
                rate: AtomicU64::new(rate_bits(&control)),
                tenant_rate: AtomicU64::new(tenant_rate),
                rate_tat: AtomicU64::new(0),
                circuit: Mutex::new(Circuit::default()),
            })
        })
    }

    /// May a message to `name` (of `tenant`) be sent now?
    pub async fn admit(self: &Arc<Self>, tenant: Uuid, name: &str) -> Gate {
        let d = self.get(tenant, name);
        if d.paused.load(Ordering::Relaxed) {
            return Gate::Wait(jitter(self.config.paused_wait), WaitReason::Paused);
        }
        let now = self.now_micros();
        let held = d.held_until.load(Ordering::Relaxed);
        if held > now {
            return Gate::Wait(jitter(Duration::from_micros(held - now)), WaitReason::Held);
        }
        let mut probe = false;
        if d.mode.load(Ordering::Acquire) != CLOSED {
            let mut circuit = d.circuit.lock().expect("circuit lock");
            let failing = circuit.failing_since.map(|since| since.elapsed());
            if let Some(failing) = failing.filter(|f| *f >= self.config.disable_after) {
                return Gate::Disabled(failing);
            }
            match d.mode.load(Ordering::Acquire) {
                OPEN => {
                    let left = circuit.open_until.map_or(Duration::ZERO, |t| {
                        t.saturating_duration_since(Instant::now())
                    });
                    if !left.is_zero() {
                        // Spread the waiting messages over one more period, so they do
                        // not all come back at the same instant.
                        let period = self.open_period(circuit.opened);
                        return Gate::Wait(
                            left + period.mul_f64(fastrand::f64()),
                            WaitReason::Open,
                        );
                    }
                    d.mode.store(HALF_OPEN, Ordering::Release);
                    circuit.probing = true;
                    probe = true;
                }
                HALF_OPEN if circuit.probing => {
                    return Gate::Wait(jitter(self.config.open_base), WaitReason::Probing);
                }
                HALF_OPEN => {
                    circuit.probing = true;
                    probe = true;
                }
                _ => {}
            }
        }
        if !probe {
            if let Some(wait) = self.throttle(&d, now) {
                return Gate::Wait(wait, WaitReason::Throttled);
            }
        }
        // A probe is one message and needs no slot.
        let slot = if probe {
            None
        } else {
            match d.slots.clone().try_acquire_owned() {
                Ok(slot) => Some(slot),
                Err(_) => {
                    let waited = tokio::time::timeout(
                        self.config.busy_patience,
                        d.slots.clone().acquire_owned(),
                    )
                    .await;
                    match waited {
                        Ok(Ok(slot)) => Some(slot),
                        _ => {
                            return Gate::Wait(
                                Duration::from_millis(100 + fastrand::u64(..400)),
                                WaitReason::Busy,
                            )
                        }
                    }
                }
            }
        };
        Gate::Send(Permit {
            destinations: self.clone(),
            destination: d,
            probe,
            settled: false,
            _slot: slot,
        })
    }

    /// GCRA: the wait before the next send if this process's share of the destination's
    /// rate is used up.
    fn throttle(&self, d: &Destination, now: u64) -> Option<Duration> {
        let rate = [&d.rate, &d.tenant_rate]
            .into_iter()
            .map(|bits| f64::from_bits(bits.load(Ordering::Relaxed)))
            .find(|r| *r > 0.0)
            .or(self.config.default_rate.filter(|r| *r > 0.0))?;
        let rate = rate / f64::from(self.peers.live());
        let interval = (1e6 / rate).max(1.0) as u64;
        // A burst of one second's sends is allowed.
        let tolerance = (1e6 as u64).max(interval);
        let mut tat = d.rate_tat.load(Ordering::Relaxed);
        loop {
            let start = tat.max(now);
            if start - now > tolerance {
                return Some(Duration::from_micros(start - now - tolerance) + jitter_small());
            }
            match d.rate_tat.compare_exchange_weak(
                tat,
                start + interval,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return None,
                Err(current) => tat = current,
            }
        }
    }

    fn open_period(&self, opened: u32) -> Duration {
        self.config
            .open_base
            .saturating_mul(1u32 << opened.saturating_sub(1).min(16))
            .min(self.config.open_cap)
    }

    fn settle(&self, d: &Destination, probe: bool, outcome: &SendOutcome) {
        let Some(verdict) = verdict(outcome) else {
            // Nothing reached it; a probe that did not probe leaves the circuit half open.
            if probe {
                d.circuit.lock().expect("circuit lock").probing = false;
            }
            return;
        };
        if let SendOutcome::Retryable {
            retry_after: Some(after),
            status: Some(429 | 503),
            ..
        } = outcome
        {
            let until = self.now_micros() + after.as_micros() as u64;
            let before = d.held_until.fetch_max(until, Ordering::Relaxed);
            // A hold a second or more longer than the one known is shared (the record
            // carries `held_until`), so every process honours the receiver's Retry-After.
            if until > before + 1_000_000 {
                let state = match d.mode.load(Ordering::Acquire) {
                    CLOSED => CircuitState::Closed,
                    _ => CircuitState::Open,
                };
                let failures = d.failures.load(Ordering::Relaxed);
                self.record(d, state, failures, outcome.error().map(str::to_string));
            }
        }
        match verdict {
            Verdict::Up => {
                if d.failures.load(Ordering::Relaxed) != 0 {
                    d.failures.store(0, Ordering::Relaxed);
                }
                if probe || d.mode.load(Ordering::Acquire) != CLOSED {
                    let mut circuit = d.circuit.lock().expect("circuit lock");
                    if d.mode.swap(CLOSED, Ordering::AcqRel) != CLOSED {
                        *circuit = Circuit::default();
                        drop(circuit);
                        self.changed(d, CircuitState::Closed, 0, None);
                    }
                }
            }
            Verdict::Down => {
                let failures = d.failures.fetch_add(1, Ordering::Relaxed) + 1;
                let mode = d.mode.load(Ordering::Acquire);
                if !(probe || (mode == CLOSED && failures >= self.config.failures)) {
                    return;
                }
                let mut circuit = d.circuit.lock().expect("circuit lock");
                // Another worker may have opened it meanwhile.
                if !probe && d.mode.load(Ordering::Acquire) != CLOSED {
                    return;
                }
                circuit.opened += 1;
                circuit.failing_since.get_or_insert_with(Instant::now);
                circuit.probing = false;
                circuit.open_until = Some(Instant::now() + self.open_period(circuit.opened));
                circuit.last_error = outcome.error().map(str::to_string);
                let first = d.mode.swap(OPEN, Ordering::AcqRel) == CLOSED;
                let error = circuit.last_error.clone();
                drop(circuit);
                if first {
                    self.changed(d, CircuitState::Open, failures, error);
                } else {
                    self.record(d, CircuitState::Open, failures, error);
                }
            }
        }
    }

    /// A circuit opened or closed: metric, event and record.
    fn changed(&self, d: &Destination, to: CircuitState, failures: u32, error: Option<String>) {
        let opened = to == CircuitState::Open;
        self.metrics.destination_transition(opened);
        let (tenant, name) = (&d.key.0, &d.key.1);
        tracing::warn!(%tenant, destination = %name, failures, error = error.as_deref().unwrap_or(""),
            "destination {}", if opened { "failing: circuit open" } else { "recovered: circuit closed" });
        let event = DestinationEvent {
            event: String::from(if opened {
                "destination.failing"
            } else {
                "destination.recovered"
            }),
            tenant: *tenant,
            destination: name.to_string(),
            at: Utc::now(),
            consecutive_failures: failures,
            error: error.clone(),
        };
        let (js, subject) = (self.js.clone(), self.names.destination_event_subject());
        let operations = self.operations.clone();
        tokio::spawn(async move {
            let body = serde_json::to_vec(&event).expect("serializable");
            let stored = match js.publish(subject, body.into()).await {
                Ok(ack) => ack.await.map(|_| ()).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            if let Err(err) = stored {
                tracing::warn!(destination = %event.destination, error = %err, "destination event not stored");
            }
            let dedupe = format!(
                "{}-{}-{}",
                event.tenant,
                event.destination,
                event.at.timestamp_micros()
            );
            let data = serde_json::to_value(&event).expect("serializable");
            let about = super::operations::About::Destination(&event.destination);
            operations
                .tell(event.tenant, &event.event, about, data, &dedupe)
                .await;
        });
        self.record(d, to, failures, error);
    }

    /// Puts what this process knows of `d` into the bucket, for the operator API.
    fn record(&self, d: &Destination, state: CircuitState, failures: u32, error: Option<String>) {
        let held = d.held_until.load(Ordering::Relaxed);
        let now = self.now_micros();
        let record = HealthRecord {
            destination: d.key.1.to_string(),
            state,
            since: Utc::now(),
            consecutive_failures: failures,
            last_error: error,
            held_until: (held > now)
                .then(|| Utc::now() + chrono::Duration::microseconds((held - now) as i64)),
        };
        let key = bucket_key("health", &d.key.0, &d.key.1);
        let kv = self.kv.clone();
        tokio::spawn(async move {
            let body = serde_json::to_vec(&record).expect("serializable");
            if let Err(err) = kv.put(key, body.into()).await {
                tracing::warn!(destination = %record.destination, error = %err, "destination state not recorded");
            }
        });
    }

    fn apply(&self, tenant: Uuid, control: Control) {
        let key: Key = (tenant, Arc::from(control.destination.as_str()));
        let (paused, rate) = (control.paused, rate_bits(&control));
        // The controls first, then the live entry: one created meanwhile reads the new.
        {
            let mut controls = self.controls.write().expect("controls lock");
            if control == Control::default_for(&control.destination) {
                controls.remove(&key);
            } else {
                controls.insert(key.clone(), control);
            }
        }
        if let Some(d) = self.map.get(&key) {
            d.paused.store(paused, Ordering::Relaxed);
            d.rate.store(rate, Ordering::Relaxed);
        }
    }
}

impl Destinations {
    /// A tenant's default rate changed: every destination of the tenant follows it.
    fn apply_tenant_default(&self, tenant: Uuid, rate: Option<f64>) {
        let bits = rate.filter(|r| *r > 0.0).unwrap_or(0.0).to_bits();
        {
            let mut rates = self.tenant_rates.write().expect("tenant rates lock");
            if bits == 0 {
                rates.remove(&tenant);
            } else {
                rates.insert(tenant, bits);
            }
        }
        for (key, d) in self.map.iter() {
            if key.0 == tenant {
                d.tenant_rate.store(bits, Ordering::Relaxed);
            }
        }
    }
}

/// The keys every delivery process follows.
const WATCHED: [&str; 5] = [
    "control.>",
    "defaults.>",
    "disabled.>",
    "health.>",
    super::peers::KEYS,
];

/// A control's rate as the bits of an f64; 0: the default.
fn rate_bits(control: &Control) -> u64 {
    control
        .rate_per_sec
        .filter(|r| *r > 0.0)
        .unwrap_or(0.0)
        .to_bits()
}

impl Destinations {
    /// Takes on what another delivery process (or this one, whose own records come back
    /// unchanged) found of a destination, so that every process holds its messages once
    /// one saw its circuit open, lets them go once one saw it recover, and honours its
    /// Retry-After: the failures are counted once, not once per process. Nothing is
    /// written back, so records do not echo; the healthy path reads no bucket.
    fn adopt(&self, tenant: Uuid, record: &HealthRecord) {
        let d = self.get(tenant, &record.destination);
        match record.state {
            CircuitState::Open | CircuitState::HalfOpen => {
                if d.mode.load(Ordering::Acquire) == CLOSED {
                    let mut circuit = d.circuit.lock().expect("circuit lock");
                    if d.mode.load(Ordering::Acquire) == CLOSED {
                        circuit.opened = circuit.opened.max(1);
                        circuit.probing = false;
                        circuit.open_until =
                            Some(Instant::now() + self.open_period(circuit.opened));
                        let failing = (Utc::now() - record.since).to_std().unwrap_or_default();
                        let since = Instant::now().checked_sub(failing);
                        circuit.failing_since = since.or(Some(Instant::now()));
                        circuit.last_error = record.last_error.clone();
                        d.mode.store(OPEN, Ordering::Release);
                    }
                }
            }
            CircuitState::Closed => {
                if d.mode.load(Ordering::Acquire) != CLOSED {
                    let mut circuit = d.circuit.lock().expect("circuit lock");
                    if d.mode.swap(CLOSED, Ordering::AcqRel) != CLOSED {
                        *circuit = Circuit::default();
                        d.failures.store(0, Ordering::Relaxed);
                    }
                }
            }
        }
        if let Some(until) = record.held_until {
            let left = (until - Utc::now()).to_std().unwrap_or_default();
            if !left.is_zero() {
                let until = self.now_micros() + left.as_micros() as u64;
                d.held_until.fetch_max(until, Ordering::Relaxed);
            }
        }
    }

    /// Why the endpoint `url` of `tenant` is disabled, if it is.
    pub fn disabled(&self, tenant: Uuid, url: &str) -> Option<DisabledEndpoint> {
        let disabled = self.disabled.read().expect("disabled lock");
        disabled.get(&tenant)?.get(url).cloned()
    }

    /// Disables the endpoint `url` of `tenant` in every delivery process (the bucket),
    /// because of `reason`.
    pub async fn disable(&self, tenant: Uuid, url: &str, reason: &str) -> Option<DisabledEndpoint> {
        let destination = destination_name(crate::model::Channel::Webhook, url)?;
        let record = DisabledEndpoint {
            url: url.to_string(),
            destination,
            since: Utc::now(),
            reason: reason.to_string(),
        };
        let body = serde_json::to_vec(&record).expect("serializable");
        let key = bucket_key("disabled", &tenant, url);
        if let Err(err) = self.kv.put(&key, body.into()).await {
            tracing::warn!(%tenant, url, error = %err, "endpoint not disabled");
            return None;
        }
        // At once in this process too; the watch confirms it.
        self.remember_disabled(tenant, record.clone());
        Some(record)
    }

    fn remember_disabled(&self, tenant: Uuid, record: DisabledEndpoint) {
        let mut disabled = self.disabled.write().expect("disabled lock");
        disabled
            .entry(tenant)
            .or_default()
            .insert(record.url.clone(), record);
    }

    fn follow_disabled(&self, tenant: Uuid, entry: &kv::Entry, put: bool) {
        if put {
            match serde_json::from_slice::<DisabledEndpoint>(&entry.value) {
                Ok(record) => self.remember_disabled(tenant, record),
                Err(err) => {
                    tracing::warn!(key = %entry.key, error = %err, "unreadable disabled endpoint")
                }
            }
            return;
        }
        if let Some(url) = name_in_key(&entry.key) {
            {
                let mut disabled = self.disabled.write().expect("disabled lock");
                if let Some(urls) = disabled.get_mut(&tenant) {
                    urls.remove(&url);
                    if urls.is_empty() {
                        disabled.remove(&tenant);
                    }
                }
            }
            // Enabled again (a resume): its destination's failing time starts over, or
            // the next message would disable it at once.
            let name = destination_name(crate::model::Channel::Webhook, &url);
            if let Some(d) = name.and_then(|name| self.map.get(&(tenant, Arc::from(name.as_str()))))
            {
                d.circuit.lock().expect("circuit lock").failing_since = None;
            }
        }
    }

    /// Applies one operator control (or tenant default) from the bucket.
    fn follow(&self, entry: kv::Entry) {
        if entry.key.starts_with("members.") {
            self.peers.follow(&entry);
            return;
        }
        let Some(tenant) = entry
            .key
            .split('.')
            .nth(1)
            .and_then(|t| Uuid::try_parse(t).ok())
        else {
            return;
        };
        let put = entry.operation == kv::Operation::Put;
        if entry.key.starts_with("health.") {
            if put {
                match serde_json::from_slice::<HealthRecord>(&entry.value) {
                    Ok(record) => self.adopt(tenant, &record),
                    Err(err) => {
                        tracing::warn!(key = %entry.key, error = %err, "unreadable health record")
                    }
                }
            }
            return;
        }
        if entry.key.starts_with("disabled.") {
            self.follow_disabled(tenant, &entry, put);
            return;
        }
        if entry.key.starts_with("defaults.") {
            let defaults = if put {
                serde_json::from_slice::<TenantDefaults>(&entry.value).unwrap_or_else(|err| {
                    tracing::warn!(key = %entry.key, error = %err, "unreadable tenant defaults");
                    TenantDefaults::default()
                })
            } else {
                TenantDefaults::default()
            };
            self.apply_tenant_default(tenant, defaults.rate_per_sec);
            return;
        }
        let control = if put {
            match serde_json::from_slice::<Control>(&entry.value) {
                Ok(control) => control,
                Err(err) => {
                    tracing::warn!(key = %entry.key, error = %err, "unreadable destination control");
                    return;
                }
            }
        } else {
            // A deleted control resumes the destination at the default rate; its name is
            // in the key.
            match name_in_key(&entry.key) {
                Some(destination) => Control::default_for(&destination),
                None => return,
            }
        };
        self.apply(tenant, control);
    }
}

/// Leave to send one message; settle it with the outcome.
pub struct Permit {
    destinations: Arc<Destinations>,
    destination: Arc<Destination>,
    probe: bool,
    settled: bool,
    _slot: Option<tokio::sync::OwnedSemaphorePermit>,
}

impl Permit {
    pub fn settle(mut self, outcome: &SendOutcome) {
        self.settled = true;
        self.destinations
            .settle(&self.destination, self.probe, outcome);
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if self.probe && !self.settled {
            // A probe cut short (shutdown): let the next message probe.
            self.destination
                .circuit
                .lock()
                .expect("circuit lock")
                .probing = false;
        }
    }
}

/// `d` plus up to a fifth more, so waits that began together end apart.
fn jitter(d: Duration) -> Duration {
    d + d.mul_f64(fastrand::f64() * 0.2)
}

fn jitter_small() -> Duration {
    Duration::from_micros(fastrand::u64(..20_000))
}

/// The destination behind `url` for `channel`, `<channel>:<host>:<port>`: a webhook's URL, or
/// a provider's.
pub fn destination_name(channel: crate::model::Channel, url: &str) -> Option<String> {
    let uri: http::Uri = url.parse().ok()?;
    let host = uri.host()?;
    let port = uri.port_u16().unwrap_or(match uri.scheme_str() {
        Some("http") => 80,
        Some("smtp") => 25,
        Some("smtps") => 465,
        _ => 443,
    });
    Some(format!("{channel}:{}:{port}", host.to_ascii_lowercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_are_named_by_channel_host_and_port() {
        assert_eq!(
            destination_name(
                crate::model::Channel::Webhook,
                "https://Hooks.Example.com/a/b?c"
            )
            .as_deref(),
            Some("webhook:hooks.example.com:443")
        );
        assert_eq!(
            destination_name(crate::model::Channel::Webhook, "http://127.0.0.1:8080/x").as_deref(),
            Some("webhook:127.0.0.1:8080")
        );
        assert_eq!(
            destination_name(crate::model::Channel::Email, "smtp://relay.local").as_deref(),
            Some("email:relay.local:25")
        );
        assert_eq!(
            destination_name(crate::model::Channel::Webhook, "not a url"),
            None
        );
        let key = bucket_key("health", &Uuid::nil(), "webhook:[::1]:80");
        assert!(key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)));
    }

    #[test]
    fn retry_after_holds_and_4xx_counts_as_up() {
        assert_eq!(verdict(&SendOutcome::DELIVERED), Some(Verdict::Up));
        let answered = |status| {
            SendOutcome::from_http_status(
                status,
                None,
                "x",
                crate::delivery::senders::Answers::Receiver,
            )
        };
        assert_eq!(verdict(&answered(410)), Some(Verdict::Up));
        assert_eq!(verdict(&answered(429)), Some(Verdict::Up));
        assert_eq!(verdict(&answered(404)), Some(Verdict::Up));
        assert_eq!(verdict(&answered(503)), Some(Verdict::Down));
        assert_eq!(
            verdict(&SendOutcome::retryable("reset".into())),
            Some(Verdict::Down)
        );
        // A store of Herald's own was down: the destination showed nothing.
        let unsent = SendOutcome::Unsent {
            error: "secret unavailable".into(),
        };
        assert_eq!(verdict(&unsent), None);
    }
}
