//! Results as they come in: one HdrHistogram of latency per priority (for the whole run and
//! for the current progress interval), counts of requests and accepted notifications, and
//! errors by HTTP status (and the error code of Herald's JSON body) and by transport failure.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use hdrhistogram::Histogram;

use crate::scenario::Priority;

/// Highest latency recorded, in microseconds (one minute); longer is clamped to it.
pub const MAX_LATENCY_US: u64 = 60_000_000;

pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds")
}

/// Why a request got no HTTP response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum TransportError {
    Connect,
    Timeout,
    /// A reused keep-alive connection turned out closed before any byte of the answer:
    /// the server retired it while idle (or raced the request). The request may or may
    /// not have been processed; a client would retry it with its idempotency key.
    Stale,
    Io,
}

impl TransportError {
    pub fn as_str(self) -> &'static str {
        match self {
            TransportError::Connect => "connect",
            TransportError::Timeout => "timeout",
            TransportError::Stale => "stale_connection",
            TransportError::Io => "io",
        }
    }
}

/// How one request ended.
#[derive(Debug)]
pub enum Outcome {
    /// `code`: the `error.code` of a non-2xx answer's JSON body, when it has one (two 429s
    /// differ: `overloaded` is the door shedding, `rate_limited` a tenant's quota).
    Response {
        status: u16,
        accepted: u64,
        code: Option<String>,
    },
    Failed(TransportError),
}

#[derive(Default)]
struct Errors {
    by_status: BTreeMap<u16, u64>,
    /// `"429 overloaded"`; the bare status when the body named no code.
    by_code: BTreeMap<String, u64>,
    by_transport: BTreeMap<TransportError, u64>,
}

struct Class {
    histogram: Mutex<Histogram<u64>>,
    interval: Mutex<Histogram<u64>>,
    requests: AtomicU64,
    ok: AtomicU64,
    accepted: AtomicU64,
    /// Sends not made: the target's Retry-After was still running.
    deferred: AtomicU64,
    /// Sends not made: loadgen could not make them before its schedule ended.
    unsent: AtomicU64,
    errors: Mutex<Errors>,
}

impl Class {
    fn new() -> Self {
        Class {
            histogram: Mutex::new(new_histogram()),
            interval: Mutex::new(new_histogram()),
            requests: AtomicU64::new(0),
            ok: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            deferred: AtomicU64::new(0),
            unsent: AtomicU64::new(0),
            errors: Mutex::new(Errors::default()),
        }
    }
}

/// Shared by every request task; cheap to record into.
pub struct Stats {
    classes: [Class; 3],
}

impl Default for Stats {
    fn default() -> Self {
        Stats {
            classes: std::array::from_fn(|_| Class::new()),
        }
    }
}

/// Counts and errors of one priority at the end of a run.
#[derive(Debug, Clone, Default)]
pub struct ClassTotals {
    pub requests: u64,
    pub ok: u64,
    pub accepted: u64,
    pub deferred: u64,
    pub unsent: u64,
    pub by_status: BTreeMap<u16, u64>,
    pub by_code: BTreeMap<String, u64>,
    pub by_transport: BTreeMap<&'static str, u64>,
}

impl ClassTotals {
    pub fn errors(&self) -> u64 {
        self.by_status.values().sum::<u64>() + self.by_transport.values().sum::<u64>()
    }
}

impl Stats {
    /// Records one finished request. Latency counts only when the request got a response;
    /// a transport failure is counted as an error and not as a latency.
    pub fn record(&self, priority: Priority, latency: Duration, outcome: &Outcome) {
        let class = &self.classes[priority.index()];
        class.requests.fetch_add(1, Ordering::Relaxed);
        match outcome {
            Outcome::Response {
                status,
                accepted,
                code,
            } => {
                let us = (latency.as_micros() as u64).clamp(1, MAX_LATENCY_US);
                class.histogram.lock().unwrap().saturating_record(us);
                class.interval.lock().unwrap().saturating_record(us);
                if (200..300).contains(status) {
                    class.ok.fetch_add(1, Ordering::Relaxed);
                    class.accepted.fetch_add(*accepted, Ordering::Relaxed);
                } else {
                    let mut errors = class.errors.lock().unwrap();
                    *errors.by_status.entry(*status).or_default() += 1;
                    let key = match code {
                        Some(code) => format!("{status} {code}"),
                        None => status.to_string(),
                    };
                    *errors.by_code.entry(key).or_default() += 1;
                }
            }
            Outcome::Failed(kind) => {
                *class
                    .errors
                    .lock()
                    .unwrap()
                    .by_transport
                    .entry(*kind)
                    .or_default() += 1;
            }
        }
    }

    /// A send not made because the target asked to wait (`--honor-retry-after`).
    pub fn deferred(&self, priority: Priority) {
        self.classes[priority.index()]
            .deferred
            .fetch_add(1, Ordering::Relaxed);
    }

    /// A send loadgen could not make before its schedule ended.
    pub fn unsent(&self, priority: Priority) {
        self.classes[priority.index()]
            .unsent
            .fetch_add(1, Ordering::Relaxed);
    }

    /// The latency histogram of the whole run.
    pub fn histogram(&self, priority: Priority) -> Histogram<u64> {
        self.classes[priority.index()]
            .histogram
            .lock()
            .unwrap()
            .clone()
    }

    /// Takes the histogram of the interval since the last call, leaving an empty one.
    pub fn take_interval(&self, priority: Priority) -> Histogram<u64> {
        std::mem::replace(
            &mut *self.classes[priority.index()].interval.lock().unwrap(),
            new_histogram(),
        )
    }

    pub fn totals(&self, priority: Priority) -> ClassTotals {
        let class = &self.classes[priority.index()];
        let errors = class.errors.lock().unwrap();
        ClassTotals {
            requests: class.requests.load(Ordering::Relaxed),
            ok: class.ok.load(Ordering::Relaxed),
            accepted: class.accepted.load(Ordering::Relaxed),
            deferred: class.deferred.load(Ordering::Relaxed),
            unsent: class.unsent.load(Ordering::Relaxed),
            by_status: errors.by_status.clone(),
            by_code: errors.by_code.clone(),
            by_transport: errors
                .by_transport
                .iter()
                .map(|(k, v)| (k.as_str(), *v))
                .collect(),
        }
    }
}
