//! The sink: an HTTP server that generated notifications are addressed to (webhook
//! recipient), so loadgen sees what Herald delivers. It records the end-to-end latency per
//! priority and every delivered id; at the end the ids are checked against what Herald
//! accepted: **lost** (accepted, never delivered), **duplicated** (deliveries beyond the
//! first), **unexpected** (delivered, never accepted by this run).
//!
//! A delivery is recognised by the notification id (`Herald-Id` header, else the body's
//! `id`), its priority (`Herald-Priority` header, else the body's `priority`) and the
//! `loadgen` marker in the payload (`payload.loadgen`, or `loadgen` at the top level).

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

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

struct Shared {
    run: String,
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
    /// Starts the sink on `addr` (port 0 picks one) for the run `run`.
    pub async fn start(addr: SocketAddr, run: String) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared {
            run,
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
                async move { Ok::<_, Infallible>(receive(&shared, req).await) }
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
    let header_id = header("herald-id");
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
    let marker = if doc["payload"]["loadgen"].is_object() {
        &doc["payload"]["loadgen"]
    } else {
        &doc["loadgen"]
    };
    let ours = marker["run"].as_str() == Some(shared.run.as_str());
    let mut deliveries = shared.deliveries.lock().unwrap();
    match id {
        Some(id) if ours => {
            let count = deliveries.by_id.entry(id).or_default();
            *count += 1;
            if *count == 1 {
                if let (Some(p), Some(sent)) = (priority, marker["sent_ns"].as_u64()) {
                    let now = SystemTime::now()
                        .duration_since(UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_nanos() as u64;
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
