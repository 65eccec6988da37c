//! Generating the load.
//!
//! **Open loop** (`--rate` or a scenario): a dedicated OS thread emits requests on a fixed
//! schedule per priority (precise to the OS sleep, not tokio's 1 ms timer wheel). Each
//! request carries its *intended* start time, and its latency is measured from that time to
//! the end of the response, as wrk2 does: when the server stalls, the requests that should
//! have started meanwhile wait for a free connection and that wait is in their latency, so
//! a stall cannot hide (coordinated omission corrected). At most `--connections` requests
//! are in flight.
//!
//! **Closed loop** (`--connections` without `--rate`): each connection sends its next
//! request as soon as the previous one is answered, for maximum throughput; latency is
//! from the actual send. This is the mode that hides stalls, and the tests show it does.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::HeaderValue;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use tokio::sync::Semaphore;

use crate::request::{accepted_count, accepted_ids, BodyBuilder};
use crate::scenario::{Mix, Phase, Priority};
use crate::stats::{Outcome, Stats, TransportError};

/// How load is offered.
#[derive(Debug, Clone)]
pub enum LoadModel {
    /// Requests on a schedule; `phases` follow the warm-up.
    Open { phases: Vec<Phase> },
    /// Each connection back to back for `duration`, priorities by `mix`.
    Closed { duration: Duration, mix: Mix },
}

#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// Base URL, e.g. `http://127.0.0.1:8080`.
    pub target: String,
    pub model: LoadModel,
    /// Requests in flight at most (and connections opened at most).
    pub connections: usize,
    /// Load offered before recording starts (open loop: at the first phase's rates).
    pub warmup: Duration,
    /// Per-request timeout.
    pub timeout: Duration,
    pub h2: bool,
    pub api_key: Option<String>,
    pub body: BodyBuilder,
    /// Keep the ids Herald accepted (for the sink's accounting).
    pub track_ids: bool,
}

/// What a run produced.
pub struct RunResult {
    pub stats: Arc<Stats>,
    /// Ids accepted during the whole run, warm-up included (only with `track_ids`).
    pub accepted_ids: HashSet<String>,
    /// The recorded period (warm-up excluded).
    pub measured: Duration,
}

impl LoadConfig {
    /// Total run time including warm-up.
    pub fn total_duration(&self) -> Duration {
        self.warmup + self.measured_duration()
    }

    pub fn measured_duration(&self) -> Duration {
        match &self.model {
            LoadModel::Open { phases } => phases.iter().map(|p| p.duration).sum(),
            LoadModel::Closed { duration, .. } => *duration,
        }
    }
}

struct Shared {
    config: LoadConfig,
    client: Client<HttpConnector, Full<Bytes>>,
    uri: http::Uri,
    auth: Option<HeaderValue>,
    stats: Arc<Stats>,
    ids: Mutex<HashSet<String>>,
    seq: AtomicU64,
    /// Unix time (ns) of `origin`, to stamp payloads with wall-clock send times.
    origin: Instant,
    origin_unix_ns: u128,
}

/// Runs the load to completion, recording into `stats` (which a monitor may read meanwhile).
pub async fn run(config: LoadConfig, stats: Arc<Stats>) -> anyhow::Result<RunResult> {
    let uri: http::Uri = format!(
        "{}{}",
        config.target.trim_end_matches('/'),
        config.body.path()
    )
    .parse()
    .map_err(|e| anyhow::anyhow!("--target {:?} is not a URL: {e}", config.target))?;
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(config.timeout));
    let mut builder = Client::builder(TokioExecutor::new());
    builder
        .pool_max_idle_per_host(config.connections)
        .http2_only(config.h2);
    let client = builder.build(connector);
    let auth = match &config.api_key {
        Some(key) => Some(HeaderValue::from_str(&format!("Bearer {key}"))?),
        None => None,
    };
    let origin = Instant::now();
    let origin_unix_ns = SystemTime::now().duration_since(UNIX_EPOCH)?.as_nanos();
    let shared = Arc::new(Shared {
        client,
        uri,
        auth,
        stats,
        ids: Mutex::default(),
        seq: AtomicU64::new(0),
        origin,
        origin_unix_ns,
        config,
    });
    match shared.config.model.clone() {
        LoadModel::Open { phases } => open_loop(&shared, phases).await,
        LoadModel::Closed { duration, mix } => closed_loop(&shared, duration, mix).await,
    }
    let measured = shared.config.measured_duration();
    let accepted_ids = std::mem::take(&mut *shared.ids.lock().unwrap());
    Ok(RunResult {
        stats: shared.stats.clone(),
        accepted_ids,
        measured,
    })
}

struct Event {
    intended: Instant,
    priority: Priority,
    record: bool,
}

async fn open_loop(shared: &Arc<Shared>, phases: Vec<Phase>) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Event>();
    let warmup = shared.config.warmup;
    let start = shared.origin + Duration::from_millis(20);
    let mut schedule = Vec::new();
    if let Some(first) = phases.first() {
        if !warmup.is_zero() {
            schedule.push((
                Phase {
                    duration: warmup,
                    rates: first.rates,
                },
                false,
            ));
        }
    }
    schedule.extend(phases.into_iter().map(|p| (p, true)));
    let generator = std::thread::spawn(move || {
        let mut phase_start = start;
        for (phase, record) in schedule {
            let phase_end = phase_start + phase.duration;
            let intervals = phase
                .rates
                .map(|r| (r > 0.0).then(|| Duration::from_secs_f64(1.0 / r)));
            let mut next = [phase_start; 3];
            loop {
                let Some((class, at)) = (0..3)
                    .filter(|&c| intervals[c].is_some())
                    .map(|c| (c, next[c]))
                    .min_by_key(|&(_, at)| at)
                else {
                    std::thread::sleep(phase_end.saturating_duration_since(Instant::now()));
                    break;
                };
                if at >= phase_end {
                    break;
                }
                let now = Instant::now();
                if at > now {
                    std::thread::sleep(at - now);
                }
                let event = Event {
                    intended: at,
                    priority: Priority::ALL[class],
                    record,
                };
                if tx.send(event).is_err() {
                    return;
                }
                next[class] += intervals[class].expect("filtered to scheduled classes");
            }
            phase_start = phase_end;
        }
    });

    let permits = Arc::new(Semaphore::new(shared.config.connections));
    while let Some(event) = rx.recv().await {
        // Waiting here for a free connection is part of the latency (CO correction).
        let permit = permits.clone().acquire_owned().await.expect("never closed");
        let shared = shared.clone();
        tokio::spawn(async move {
            let outcome = send(&shared, event.priority, event.intended).await;
            if event.record {
                shared
                    .stats
                    .record(event.priority, event.intended.elapsed(), &outcome);
            }
            drop(permit);
        });
    }
    let _ = generator.join();
    // Every request finished once all permits are back.
    let _ = permits
        .acquire_many(shared.config.connections as u32)
        .await
        .expect("never closed");
}

async fn closed_loop(shared: &Arc<Shared>, duration: Duration, mix: Mix) {
    let sequence = Arc::new(priority_sequence(mix, 1000));
    let next = Arc::new(AtomicUsize::new(0));
    let record_from = shared.origin + shared.config.warmup;
    let end = record_from + duration;
    let workers: Vec<_> = (0..shared.config.connections)
        .map(|_| {
            let shared = shared.clone();
            let sequence = sequence.clone();
            let next = next.clone();
            tokio::spawn(async move {
                loop {
                    let started = Instant::now();
                    if started >= end {
                        return;
                    }
                    let priority = sequence[next.fetch_add(1, Ordering::Relaxed) % sequence.len()];
                    let outcome = send(&shared, priority, started).await;
                    if started >= record_from {
                        shared.stats.record(priority, started.elapsed(), &outcome);
                    }
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.await;
    }
}

/// A deterministic order of priorities whose shares follow `mix` over every prefix as
/// closely as integers allow.
pub fn priority_sequence(mix: Mix, len: usize) -> Vec<Priority> {
    let shares = mix.shares();
    let mut counts = [0.0f64; 3];
    (0..len)
        .map(|k| {
            let best = (0..3)
                .filter(|&c| shares[c] > 0.0)
                .max_by(|&a, &b| {
                    let da = shares[a] * (k + 1) as f64 - counts[a];
                    let db = shares[b] * (k + 1) as f64 - counts[b];
                    da.total_cmp(&db).then(b.cmp(&a))
                })
                .expect("a mix has a positive share");
            counts[best] += 1.0;
            Priority::ALL[best]
        })
        .collect()
}

async fn send(shared: &Shared, priority: Priority, intended: Instant) -> Outcome {
    let config = &shared.config;
    let seq = shared.seq.fetch_add(1, Ordering::Relaxed);
    let sent_ns = shared.origin_unix_ns + (intended - shared.origin).as_nanos();
    let body = config.body.body(priority, seq, sent_ns);
    let mut req = http::Request::post(shared.uri.clone())
        .header(CONTENT_TYPE, "application/json")
        .body(Full::new(body))
        .expect("valid request parts");
    if let Some(auth) = &shared.auth {
        req.headers_mut().insert(AUTHORIZATION, auth.clone());
    }
    let response = async {
        let response = shared.client.request(req).await.map_err(|e| {
            if e.is_connect() {
                TransportError::Connect
            } else {
                TransportError::Io
            }
        })?;
        let status = response.status().as_u16();
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|_| TransportError::Io)?
            .to_bytes();
        Ok::<_, TransportError>((status, body))
    };
    let (status, body) = match tokio::time::timeout(config.timeout, response).await {
        Err(_) => return Outcome::Failed(TransportError::Timeout),
        Ok(Err(kind)) => return Outcome::Failed(kind),
        Ok(Ok(answer)) => answer,
    };
    let batch = config.body.batch > 0;
    let accepted = if !(200..300).contains(&status) {
        0
    } else if config.track_ids {
        let ids = accepted_ids(&body, batch);
        let n = ids.len() as u64;
        shared.ids.lock().unwrap().extend(ids);
        n
    } else {
        accepted_count(&body, batch)
    };
    Outcome::Response { status, accepted }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_sequence_follows_the_mix() {
        let seq = priority_sequence(Mix([10.0, 30.0, 60.0]), 1000);
        let count = |p| seq.iter().filter(|&&q| q == p).count();
        assert_eq!(count(Priority::High), 100);
        assert_eq!(count(Priority::Medium), 300);
        assert_eq!(count(Priority::Low), 600);
        // Smooth: every window of 10 has exactly one high.
        assert!(seq
            .chunks(10)
            .all(|w| w.iter().filter(|&&p| p == Priority::High).count() == 1));
    }
}
