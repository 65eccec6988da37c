//! Generating the load.
//!
//! **Open loop** (`--rate` or a scenario): a dedicated OS thread emits requests on a fixed
//! schedule per priority (precise to the OS sleep, not tokio's 1 ms timer wheel). Each
//! request carries its *intended* start time, and its latency is measured from that time to
//! the end of the response, as wrk2 does: when the server stalls, the requests that should
//! have started meanwhile wait for a free connection and that wait is in their latency, so
//! a stall cannot hide (coordinated omission corrected). Each priority has its own queue
//! and its own `--connections` connections (independent client populations), so at most
//! that many requests of one priority are in flight.
//!
//! **Closed loop** (`--connections` without `--rate`): each connection sends its next
//! request as soon as the previous one is answered, for maximum throughput; latency is
//! from the actual send. This is the mode that hides stalls, and the tests show it does.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::HeaderValue;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use tokio::net::TcpStream;

use crate::request::{accepted_count, accepted_ids, error_code, BodyBuilder};
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
    /// Connections: per priority in the open loop, in all in the closed loop.
    pub connections: usize,
    /// OS threads, each with its own single-threaded event loop and its share of the
    /// connections (as wrk does: no work stealing, no cross-thread wake-ups per request).
    pub threads: usize,
    /// Load offered before recording starts (open loop: at the first phase's rates).
    pub warmup: Duration,
    /// Per-request timeout.
    pub timeout: Duration,
    pub h2: bool,
    pub api_key: Option<String>,
    /// Send `Herald-Priority` with every request (early shedding).
    pub priority_header: bool,
    /// After a 429 with `Retry-After`, make no send of that priority until it has passed
    /// (open loop: the sends due meanwhile are counted as deferred, not made).
    pub honor_retry_after: bool,
    pub body: BodyBuilder,
    /// Keep the ids Herald accepted (for the sink's accounting).
    pub track_ids: bool,
    /// Keep every N-th accepted single request to send again (0: none).
    pub resend_every: u64,
}

/// What a run produced.
pub struct RunResult {
    pub stats: Arc<Stats>,
    /// Ids accepted during the whole run, warm-up included (only with `track_ids`).
    pub accepted_ids: HashSet<String>,
    /// Accepted requests kept to send again (`resend_every`).
    pub kept: Vec<crate::resend::Kept>,
    /// The recorded period (warm-up excluded): the schedule's length, or longer when the
    /// last recorded request finished after it.
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
    h2: bool,
    /// Full URL (h2) and `host:port` + path (HTTP/1.1, one connection per worker).
    uri: http::Uri,
    authority: String,
    host: HeaderValue,
    path: String,
    auth: Option<HeaderValue>,
    /// HTTP/1.1 requests by priority, built once when no sink needs per-request send
    /// times.
    static_requests: Option<[Vec<u8>; 3]>,
    stats: Arc<Stats>,
    ids: Mutex<HashSet<String>>,
    kept: Mutex<Vec<crate::resend::Kept>>,
    seq: AtomicU64,
    origin: Instant,
    /// Per priority, ns since `origin` before which nothing is sent (`honor_retry_after`).
    paused_until: [AtomicU64; 3],
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
    let authority = uri
        .authority()
        .ok_or_else(|| anyhow::anyhow!("--target {:?} has no host", config.target))?
        .to_string();
    let authority = if authority.contains(':') {
        authority
    } else {
        format!("{authority}:80")
    };
    let host = HeaderValue::from_str(uri.authority().map_or("", |a| a.as_str()))?;
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    let auth = match &config.api_key {
        Some(key) => Some(HeaderValue::from_str(&format!("Bearer {key}"))?),
        None => None,
    };
    let origin = Instant::now();
    let shared = Arc::new(Shared {
        h2: config.h2,
        uri,
        authority,
        host,
        path,
        auth,
        static_requests: None,
        stats,
        ids: Mutex::default(),
        kept: Mutex::default(),
        seq: AtomicU64::new(0),
        origin,
        paused_until: Default::default(),
        config,
    });
    // Without a sink (send times) or idempotency keys (one per notification) every request
    // of a priority is the same: build each once.
    let mut shared = shared;
    if !shared.config.track_ids && !shared.config.h2 && !shared.config.body.idempotency_keys {
        let requests =
            Priority::ALL.map(|p| shared.request_bytes(p, &shared.config.body.body(p, 0, 0)));
        Arc::get_mut(&mut shared)
            .expect("not shared yet")
            .static_requests = Some(requests);
    }
    match shared.config.model.clone() {
        LoadModel::Open { phases } => open_loop(&shared, phases).await,
        LoadModel::Closed { duration, mix } => closed_loop(&shared, duration, mix).await,
    }
    // Rates are over the time the recorded requests really took: when the target cannot
    // keep up, the open loop's backlog drains after the schedule ends.
    let recording_started = shared.origin + shared.config.warmup;
    let measured = shared
        .config
        .measured_duration()
        .max(recording_started.elapsed());
    let accepted_ids = std::mem::take(&mut *shared.ids.lock().unwrap());
    let kept = std::mem::take(&mut *shared.kept.lock().unwrap());
    Ok(RunResult {
        stats: shared.stats.clone(),
        accepted_ids,
        kept,
        measured,
    })
}

struct Event {
    intended: Instant,
    priority: Priority,
    record: bool,
}

async fn open_loop(shared: &Arc<Shared>, phases: Vec<Phase>) {
    // One queue and one set of connections per priority: each priority is its own client
    // population, so high never waits in loadgen behind a flood of low.
    let (senders, receivers): (Vec<_>, Vec<_>) =
        (0..3).map(|_| async_channel::unbounded::<Event>()).unzip();
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
    // A send still queued a second after the schedule's end is not made: a loadgen that
    // cannot offer its rate would otherwise flood on long after the run it measures (and
    // after every other loadgen beside it has stopped). Those are counted as unsent.
    let send_until =
        start + schedule.iter().map(|(p, _)| p.duration).sum::<Duration>() + Duration::from_secs(1);
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
                if senders[class].send_blocking(event).is_err() {
                    return;
                }
                next[class] += intervals[class].expect("filtered to scheduled classes");
            }
            phase_start = phase_end;
        }
    });
    // Each worker owns one connection. An event waits in the channel until a worker is
    // free, and that wait is part of its latency (the coordinated-omission correction).
    let connections = shared.config.connections;
    let workers = run_workers(shared, 3 * connections, move |shared, index| {
        let rx = receivers[index / connections].clone();
        async move {
            let mut transport = Transport::new(&shared);
            while let Ok(event) = rx.recv().await {
                if Instant::now() > send_until {
                    if event.record {
                        shared.stats.unsent(event.priority);
                    }
                    continue;
                }
                if shared.paused(event.priority) {
                    if event.record {
                        shared.stats.deferred(event.priority);
                    }
                    continue;
                }
                let outcome = send(&shared, &mut transport, event.priority, event.intended).await;
                if event.record {
                    shared
                        .stats
                        .record(event.priority, event.intended.elapsed(), &outcome);
                }
            }
        }
    });
    let _ = tokio::task::spawn_blocking(move || {
        let _ = generator.join();
        workers.join();
    })
    .await;
}

/// Worker threads, joined together.
struct Workers(Vec<std::thread::JoinHandle<()>>);

impl Workers {
    fn join(self) {
        for t in self.0 {
            let _ = t.join();
        }
    }
}

/// Runs `worker(shared, index)` for `connections` indices, spread over the configured
/// number of OS threads, each a single-threaded tokio runtime.
fn run_workers<F, Fut>(shared: &Arc<Shared>, connections: usize, worker: F) -> Workers
where
    F: Fn(Arc<Shared>, usize) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + 'static,
{
    let threads = shared.config.threads.clamp(1, connections.max(1));
    let worker = Arc::new(worker);
    Workers(
        (0..threads)
            .map(|t| {
                let (shared, worker) = (shared.clone(), worker.clone());
                std::thread::spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("tokio runtime");
                    let local = tokio::task::LocalSet::new();
                    local.block_on(&runtime, async move {
                        let tasks: Vec<_> = (t..connections)
                            .step_by(threads)
                            .map(|i| tokio::task::spawn_local(worker(shared.clone(), i)))
                            .collect();
                        for task in tasks {
                            let _ = task.await;
                        }
                    });
                })
            })
            .collect(),
    )
}

async fn closed_loop(shared: &Arc<Shared>, duration: Duration, mix: Mix) {
    let sequence = Arc::new(priority_sequence(mix, 1000));
    let next = Arc::new(AtomicUsize::new(0));
    let record_from = shared.origin + shared.config.warmup;
    let end = record_from + duration;
    let workers = run_workers(shared, shared.config.connections, move |shared, _| {
        let (sequence, next) = (sequence.clone(), next.clone());
        async move {
            let mut transport = Transport::new(&shared);
            loop {
                let started = Instant::now();
                if started >= end {
                    return;
                }
                let priority = sequence[next.fetch_add(1, Ordering::Relaxed) % sequence.len()];
                let outcome = send(&shared, &mut transport, priority, started).await;
                if started >= record_from {
                    shared.stats.record(priority, started.elapsed(), &outcome);
                }
            }
        }
    });
    let _ = tokio::task::spawn_blocking(move || workers.join()).await;
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

/// One HTTP answer.
struct Answer {
    status: u16,
    /// `Retry-After` in seconds (the delay form; an HTTP date is not sent by Herald).
    retry_after: Option<u32>,
    body: Bytes,
}

fn seconds(value: &[u8]) -> Option<u32> {
    std::str::from_utf8(value).ok()?.trim().parse().ok()
}

impl Shared {
    /// Whether sends of `priority` wait for a Retry-After now.
    fn paused(&self, priority: Priority) -> bool {
        let until = self.paused_until[priority.index()].load(Ordering::Relaxed);
        until > 0 && (self.origin.elapsed().as_nanos() as u64) < until
    }

    /// No send of `priority` for `wait` from now (a later pause is kept).
    fn pause(&self, priority: Priority, wait: Duration) {
        let until = (self.origin.elapsed() + wait).as_nanos() as u64;
        self.paused_until[priority.index()].fetch_max(until, Ordering::Relaxed);
    }
}

/// How one worker reaches the target: its own HTTP/1.1 connection spoken directly (a
/// request written in one call, the answer parsed with httparse, as wrk does: no pool, no
/// hand-off to a connection task), or an h2 client of the worker's thread.
enum Transport {
    H1(Option<H1>),
    H2(Box<Client<HttpConnector, Full<Bytes>>>),
}

struct H1 {
    stream: TcpStream,
    buf: Vec<u8>,
    /// Exchanges completed on this connection: a failure before the first byte of an
    /// answer on a reused connection is a stale connection, not a broken server.
    exchanges: u64,
}

impl H1 {
    /// Writes one request and reads one answer (`Content-Length` framed).
    async fn exchange(&mut self, request: &[u8]) -> Result<Answer, TransportError> {
        let answer = self.exchange_once(request).await;
        match answer {
            Ok(_) => self.exchanges += 1,
            Err(TransportError::Io) if self.exchanges > 0 && self.buf.is_empty() => {
                return Err(TransportError::Stale)
            }
            Err(_) => {}
        }
        answer
    }

    async fn exchange_once(&mut self, request: &[u8]) -> Result<Answer, TransportError> {
        use tokio::io::AsyncWriteExt;
        self.buf.clear();
        self.stream
            .write_all(request)
            .await
            .map_err(|_| TransportError::Io)?;
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut response = httparse::Response::new(&mut headers);
            match response.parse(&self.buf) {
                Ok(httparse::Status::Complete(head)) => {
                    let status = response.code.unwrap_or(0);
                    let retry_after = response
                        .headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case("retry-after"))
                        .and_then(|h| seconds(h.value));
                    let length = response
                        .headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                        .and_then(|h| {
                            std::str::from_utf8(h.value)
                                .ok()?
                                .trim()
                                .parse::<usize>()
                                .ok()
                        })
                        .ok_or(TransportError::Io)?;
                    while self.buf.len() < head + length {
                        self.read_more().await?;
                    }
                    let body = Bytes::copy_from_slice(&self.buf[head..head + length]);
                    return Ok(Answer {
                        status,
                        retry_after,
                        body,
                    });
                }
                Ok(httparse::Status::Partial) => self.read_more().await?,
                Err(_) => return Err(TransportError::Io),
            }
        }
    }

    async fn read_more(&mut self) -> Result<(), TransportError> {
        use tokio::io::AsyncReadExt;
        if self.buf.capacity() - self.buf.len() < 4096 {
            self.buf.reserve(16 * 1024);
        }
        match self.stream.read_buf(&mut self.buf).await {
            Ok(0) | Err(_) => Err(TransportError::Io),
            Ok(_) => Ok(()),
        }
    }
}

impl Transport {
    fn new(shared: &Shared) -> Self {
        if shared.h2 {
            let mut connector = HttpConnector::new();
            connector.set_nodelay(true);
            connector.set_connect_timeout(Some(shared.config.timeout));
            Transport::H2(Box::new(
                Client::builder(TokioExecutor::new())
                    .http2_only(true)
                    .build(connector),
            ))
        } else {
            Transport::H1(None)
        }
    }

    async fn exchange(
        &mut self,
        shared: &Shared,
        priority: Priority,
        body: Bytes,
    ) -> Result<Answer, TransportError> {
        match self {
            Transport::H2(client) => {
                let mut request = http::Request::post(shared.uri.clone())
                    .header(CONTENT_TYPE, "application/json")
                    .body(Full::new(body))
                    .expect("valid request parts");
                if let Some(auth) = &shared.auth {
                    request.headers_mut().insert(AUTHORIZATION, auth.clone());
                }
                if shared.config.priority_header {
                    request.headers_mut().insert(
                        "herald-priority",
                        http::HeaderValue::from_static(priority.as_str()),
                    );
                }
                let response = client.request(request).await.map_err(|e| {
                    if e.is_connect() {
                        TransportError::Connect
                    } else if closed_before_answer(&e) {
                        TransportError::Stale
                    } else {
                        TransportError::Io
                    }
                })?;
                let status = response.status().as_u16();
                let retry_after = response
                    .headers()
                    .get(http::header::RETRY_AFTER)
                    .and_then(|v| seconds(v.as_bytes()));
                let body = response
                    .into_body()
                    .collect()
                    .await
                    .map_err(|_| TransportError::Io)?;
                Ok(Answer {
                    status,
                    retry_after,
                    body: body.to_bytes(),
                })
            }
            Transport::H1(slot) => {
                if slot.is_none() {
                    let stream = TcpStream::connect(&shared.authority)
                        .await
                        .map_err(|_| TransportError::Connect)?;
                    let _ = stream.set_nodelay(true);
                    *slot = Some(H1 {
                        stream,
                        buf: Vec::with_capacity(16 * 1024),
                        exchanges: 0,
                    });
                }
                let connection = slot.as_mut().expect("connected above");
                let outcome = match &shared.static_requests {
                    Some(requests) => connection.exchange(&requests[priority.index()]).await,
                    None => {
                        connection
                            .exchange(&shared.request_bytes(priority, &body))
                            .await
                    }
                };
                if outcome.is_err() {
                    *slot = None;
                }
                outcome
            }
        }
    }
}

/// h2: the server closed the connection (GOAWAY or FIN) before answering. hyper's pool
/// already retries requests the server refused unprocessed; what is left is a close that
/// raced a request.
fn closed_before_answer(error: &hyper_util::client::legacy::Error) -> bool {
    std::error::Error::source(error)
        .and_then(|source| source.downcast_ref::<hyper::Error>())
        .is_some_and(|e| e.is_incomplete_message() || e.is_canceled())
}

impl Shared {
    /// The complete HTTP/1.1 request for `body`.
    fn request_bytes(&self, priority: Priority, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(body.len() + 256);
        out.extend_from_slice(b"POST ");
        out.extend_from_slice(self.path.as_bytes());
        out.extend_from_slice(b" HTTP/1.1\r\nHost: ");
        out.extend_from_slice(self.host.as_bytes());
        out.extend_from_slice(b"\r\nContent-Type: application/json\r\n");
        if let Some(auth) = &self.auth {
            out.extend_from_slice(b"Authorization: ");
            out.extend_from_slice(auth.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        if self.config.priority_header {
            out.extend_from_slice(b"Herald-Priority: ");
            out.extend_from_slice(priority.as_str().as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        out.extend_from_slice(format!("Content-Length: {}\r\n\r\n", body.len()).as_bytes());
        out.extend_from_slice(body);
        out
    }
}

async fn send(
    shared: &Shared,
    transport: &mut Transport,
    priority: Priority,
    intended: Instant,
) -> Outcome {
    let config = &shared.config;
    let (body, seq) = match &shared.static_requests {
        Some(_) => (Bytes::new(), 0),
        None => {
            let seq = shared.seq.fetch_add(1, Ordering::Relaxed);
            let sent_ns = crate::clock::unix_ns(intended);
            (config.body.body(priority, seq, sent_ns), seq)
        }
    };
    let keep =
        (config.resend_every > 0 && config.body.batch == 0 && seq % config.resend_every == 0)
            .then(|| body.clone());
    let answer = match tokio::time::timeout(
        config.timeout,
        transport.exchange(shared, priority, body),
    )
    .await
    {
        Err(_) => {
            // The connection may hold a half-read answer: start over.
            if let Transport::H1(slot) = transport {
                *slot = None;
            }
            return Outcome::Failed(TransportError::Timeout);
        }
        Ok(Err(kind)) => return Outcome::Failed(kind),
        Ok(Ok(answer)) => answer,
    };
    let Answer {
        status,
        retry_after,
        body,
    } = answer;
    if let (true, 429, Some(wait)) = (config.honor_retry_after, status, retry_after) {
        shared.pause(priority, Duration::from_secs(u64::from(wait)));
    }
    let batch = config.body.batch > 0;
    if let (Some(sent), 202) = (keep, status) {
        if let Some(id) = accepted_ids(&body, false).into_iter().next() {
            shared.kept.lock().unwrap().push(crate::resend::Kept {
                priority,
                body: sent,
                id,
            });
        }
    }
    if !(200..300).contains(&status) {
        return Outcome::Response {
            status,
            accepted: 0,
            code: error_code(&body),
        };
    }
    let accepted = if config.track_ids {
        let ids = accepted_ids(&body, batch);
        let n = ids.len() as u64;
        shared.ids.lock().unwrap().extend(ids);
        n
    } else {
        accepted_count(&body, batch)
    };
    Outcome::Response {
        status,
        accepted,
        code: None,
    }
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
