//! The sink: an HTTP server that generated notifications are addressed to (webhook
//! recipient), so loadgen sees what Herald delivers. It records the end-to-end latency per
//! priority and every delivered id; at the end the ids are checked against what Herald
//! accepted: **lost** (accepted, never delivered), **duplicated** (deliveries beyond the
//! first), **unexpected** (delivered, never accepted by this run).
//!
//! A delivery is recognised by the notification id (the Standard Webhooks `webhook-id`
//! header, or an older Herald's `Herald-Id`, else the body's `id`), its priority
//! (`Herald-Priority` header, else the body's `priority`) and the `loadgen` marker in the
//! payload (`data.loadgen` as Herald delivers it, `payload.loadgen`, or `loadgen` at the
//! top level).

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hdrhistogram::Histogram;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::scenario::Priority;
use crate::stats::{new_histogram, MAX_LATENCY_US};

#[derive(Default)]
struct Deliveries {
    /// id → times delivered, for deliveries marked with this run.
    by_id: HashMap<String, u64>,
    /// Deliveries without this run's marker or without an id.
    foreign: u64,
}

/// How the sink misbehaves during a fault window (fault-injection runs, `--sink-fault`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultKind {
    /// Reads the request, never answers; the connection is dropped when the window ends.
    Hang,
    /// Drops the connection without an answer as soon as a request arrives.
    Reset,
    /// Answers every request after this delay (and counts it: a slow receiver still
    /// receives).
    Slow(Duration),
}

/// A fault and its window, relative to the sink's start: `hang:3s:8s`, `reset:3s:8s`,
/// `slow=1500ms:3s:8s`. Requests not answered 2xx are not counted as delivered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SinkFault {
    pub kind: FaultKind,
    pub from: Duration,
    pub until: Duration,
}

impl FromStr for SinkFault {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let usage = || {
            format!("{s:?}: expected hang:FROM:UNTIL, reset:FROM:UNTIL or slow=DELAY:FROM:UNTIL")
        };
        let duration = |v: &str| humantime::parse_duration(v).map_err(|_| usage());
        let mut parts = s.split(':');
        let (Some(kind), Some(from), Some(until), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(usage());
        };
        let kind = match kind.split_once('=') {
            None if kind == "hang" => FaultKind::Hang,
            None if kind == "reset" => FaultKind::Reset,
            Some(("slow", delay)) => FaultKind::Slow(duration(delay)?),
            _ => return Err(usage()),
        };
        let (from, until) = (duration(from)?, duration(until)?);
        if until <= from {
            return Err(format!("{s:?}: the window must end after it starts"));
        }
        Ok(SinkFault { kind, from, until })
    }
}

struct Shared {
    run: String,
    fault: Option<SinkFault>,
    started: Instant,
    deliveries: Mutex<Deliveries>,
    latency: [Mutex<Histogram<u64>>; 3],
}

/// A running sink.
pub struct Sink {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

/// What the sink saw, checked against what was accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accounting {
    pub accepted: u64,
    /// Accepted ids delivered at least once.
    pub delivered: u64,
    pub lost: u64,
    pub duplicated: u64,
    pub unexpected: u64,
    /// Up to [`MAX_LISTED_IDS`] lost ids, sorted (to look them up in Herald).
    pub lost_ids: Vec<String>,
    /// Up to [`MAX_LISTED_IDS`] unexpected ids, sorted.
    pub unexpected_ids: Vec<String>,
}

/// How many lost or unexpected ids a report lists.
pub const MAX_LISTED_IDS: usize = 100;

impl Sink {
    /// Starts the sink on `addr` (port 0 picks one) for the run `run`, misbehaving as
    /// `fault` says.
    pub async fn start(
        addr: SocketAddr,
        run: String,
        fault: Option<SinkFault>,
    ) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            run,
            fault,
            started: Instant::now(),
            deliveries: Mutex::default(),
            latency: std::array::from_fn(|_| Mutex::new(new_histogram())),
        });
        let task = tokio::spawn(serve(listener, shared.clone()));
        Ok(Sink { addr, shared, task })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The URL notifications should be addressed to.
    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// End-to-end latency (µs) of first deliveries of one priority.
    pub fn latency(&self, priority: Priority) -> Histogram<u64> {
        self.shared.latency[priority.index()]
            .lock()
            .unwrap()
            .clone()
    }

    /// How many of `accepted` have been delivered so far.
    pub fn delivered_of(&self, accepted: &HashSet<String>) -> usize {
        let deliveries = self.shared.deliveries.lock().unwrap();
        accepted
            .iter()
            .filter(|id| deliveries.by_id.contains_key(*id))
            .count()
    }

    pub fn account(&self, accepted: &HashSet<String>) -> Accounting {
        let deliveries = self.shared.deliveries.lock().unwrap();
        let mut delivered = 0;
        let mut duplicated = 0;
        let mut unexpected = deliveries.foreign;
        let mut unexpected_ids = Vec::new();
        for (id, &count) in &deliveries.by_id {
            duplicated += count - 1;
            if accepted.contains(id) {
                delivered += 1;
            } else {
                unexpected += count;
                unexpected_ids.push(id.clone());
            }
        }
        let mut lost_ids: Vec<String> = accepted
            .iter()
            .filter(|id| !deliveries.by_id.contains_key(*id))
            .cloned()
            .collect();
        lost_ids.sort();
        lost_ids.truncate(MAX_LISTED_IDS);
        unexpected_ids.sort();
        unexpected_ids.truncate(MAX_LISTED_IDS);
        Accounting {
            accepted: accepted.len() as u64,
            delivered,
            lost: accepted.len() as u64 - delivered,
            duplicated,
            unexpected,
            lost_ids,
            unexpected_ids,
        }
    }
}

impl Shared {
    /// The fault in force now, and when its window ends.
    fn active_fault(&self) -> Option<(FaultKind, Instant)> {
        let fault = self.fault?;
        let elapsed = self.started.elapsed();
        (fault.from..fault.until)
            .contains(&elapsed)
            .then(|| (fault.kind, self.started + fault.until))
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let shared = shared.clone();
                async move {
                    // An error makes hyper drop the connection without an answer.
                    let dropped = || std::io::Error::other("sink fault: no answer");
                    match shared.active_fault() {
                        Some((FaultKind::Reset, _)) => Err(dropped()),
                        Some((FaultKind::Hang, until)) => {
                            tokio::time::sleep_until(until.into()).await;
                            Err(dropped())
                        }
                        Some((FaultKind::Slow(delay), _)) => {
                            tokio::time::sleep(delay).await;
                            Ok(receive(&shared, req).await)
                        }
                        None => Ok::<_, std::io::Error>(receive(&shared, req).await),
                    }
                }
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

async fn receive(shared: &Shared, req: Request<hyper::body::Incoming>) -> Response<Full<Bytes>> {
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let header_id = header("webhook-id").or_else(|| header("herald-id"));
    let header_priority = header("herald-priority");
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return status(StatusCode::BAD_REQUEST),
    };
    let doc: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let id = header_id.or_else(|| doc["id"].as_str().map(str::to_string));
    let priority = header_priority
        .or_else(|| doc["priority"].as_str().map(str::to_string))
        .and_then(|p| p.parse::<Priority>().ok());
    let marker = ["data", "payload"]
        .iter()
        .map(|field| &doc[field]["loadgen"])
        .find(|m| m.is_object())
        .unwrap_or(&doc["loadgen"]);
    let ours = marker["run"].as_str() == Some(shared.run.as_str());
    let mut deliveries = shared.deliveries.lock().unwrap();
    match id {
        Some(id) if ours => {
            let count = deliveries.by_id.entry(id).or_default();
            *count += 1;
            if *count == 1 {
                if let (Some(p), Some(sent)) = (priority, marker["sent_ns"].as_u64()) {
                    let now = crate::clock::unix_ns(Instant::now()) as u64;
                    let us = (now.saturating_sub(sent) / 1000).clamp(1, MAX_LATENCY_US);
                    shared.latency[p.index()]
                        .lock()
                        .unwrap()
                        .saturating_record(us);
                }
            }
        }
        _ => deliveries.foreign += 1,
    }
    status(StatusCode::OK)
}

fn status(code: StatusCode) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(b"{}")));
    *r.status_mut() = code;
    r
}
