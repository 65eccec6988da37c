//! What every role shares from start to stop: backoff for what must be retried, a
//! deadline on shutdown, and the health endpoints (`/healthz`, `/readyz`, `/metrics`)
//! answered the same way by every role on its operators' port (`--metrics-listen`).

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::{HeaderValue, CONTENT_TYPE};
use http::{Method, Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::metrics::Metrics;
use crate::model::Priority;

/// Why a role could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("binding {what}: {source}")]
    Bind {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("PostgreSQL: {0}")]
    Postgres(#[from] sqlx::Error),
    #[error("MongoDB (--mongo-url): {0}")]
    Mongo(#[from] mongodb::error::Error),
    #[error("NATS: {0}")]
    Nats(#[from] async_nats::ConnectError),
    /// Names `--redis-url` itself.
    #[error(transparent)]
    Redis(#[from] crate::redis_store::RedisError),
    #[error("{0}")]
    Settings(String),
    #[error("stopped before it started")]
    Stopped,
    /// A dependency was not reached within `--startup-timeout` (the line names it).
    #[error("{0}")]
    Unreachable(String),
}

/// Exponential backoff between `first` and `cap`: the one schedule every retry loop uses.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    cap: Duration,
}

impl Backoff {
    pub fn new(first: Duration, cap: Duration) -> Self {
        Backoff { next: first, cap }
    }

    /// The wait before the next try (doubling up to the cap).
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.cap);
        delay
    }

    /// Waits the next delay; false when `stop` is cancelled first (or already).
    pub async fn wait(&mut self, stop: &CancellationToken) -> bool {
        let delay = self.next_delay();
        tokio::select! {
            biased;
            () = stop.cancelled() => false,
            () = tokio::time::sleep(delay) => true,
        }
    }
}

/// Runs `attempt` until it succeeds, or gives up (`None`) when `stop` is cancelled. A
/// failure is logged as `what` when its text changes, else at most every 10 s: the
/// dependency watch ([`crate::dependencies`]) names the address and cause already.
pub async fn retry<T, E, F, Fut>(
    what: &str,
    mut backoff: Backoff,
    stop: &CancellationToken,
    mut attempt: F,
) -> Option<T>
where
    E: std::fmt::Display,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut last: Option<(String, std::time::Instant)> = None;
    loop {
        match attempt().await {
            Ok(done) => return Some(done),
            Err(err) => {
                let text = err.to_string();
                let due = last.as_ref().is_none_or(|(before, at)| {
                    *before != text || at.elapsed() >= Duration::from_secs(10)
                });
                if due {
                    tracing::warn!(error = %text, "{what} failed; retrying");
                    last = Some((text, std::time::Instant::now()));
                }
                if !backoff.wait(stop).await {
                    return None;
                }
            }
        }
    }
}

/// Waits for `stopping` at most `deadline`; says so in the log when it took longer.
pub async fn within(what: &str, deadline: Duration, stopping: impl Future<Output = ()>) {
    if tokio::time::timeout(deadline, stopping).await.is_err() {
        tracing::warn!(?deadline, "{what} did not stop in time; leaving it");
    }
}

/// What a role reports on its health endpoints.
#[derive(Clone)]
pub struct Health {
    pub metrics: Arc<Metrics>,
    /// Whether the role can do its work now (re-evaluated on every `/readyz`).
    pub ready: Arc<dyn Fn() -> ReadyState + Send + Sync>,
    /// Notifications waiting inside the role, per priority (the queue-depth gauge).
    pub depth: Arc<dyn Fn(Priority) -> usize + Send + Sync>,
    /// NATS and the stores, each listed by `/readyz`; one the role cannot work without
    /// makes it unready.
    pub dependencies: Option<Arc<crate::dependencies::Dependencies>>,
}

/// The answer of `/readyz`.
pub enum ReadyState {
    Ready,
    Unready(&'static str),
}

pub type HttpResponse = Response<Full<Bytes>>;

impl Health {
    /// The answer to `path` on the operators' port (`--metrics-listen`): the probes and
    /// `/metrics`.
    pub fn respond(&self, method: &Method, path: &str) -> Option<HttpResponse> {
        if (path, method) != ("/metrics", &Method::GET) {
            return self.respond_probe(method, path);
        }
        let mut response = Response::new(Full::new(Bytes::from(
            self.metrics.render(|p| (self.depth)(p)),
        )));
        response.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
        );
        Some(response)
    }

    /// The answer to `path` on the public API port, when it is one of the probes. Load
    /// balancers need those there; the metrics count every tenant's traffic, so they do not
    /// belong there.
    pub fn respond_probe(&self, method: &Method, path: &str) -> Option<HttpResponse> {
        let response = match (path, method) {
            ("/healthz", &Method::GET) => json(StatusCode::OK, br#"{"status":"ok"}"#.to_vec()),
            ("/readyz", &Method::GET) => self.readiness(),
            _ => return None,
        };
        Some(response)
    }

    /// `/readyz`: 200 `ready` or 503 `unready` with the first reason, and every
    /// dependency's state (a store the role can serve without shows `down` while the role
    /// stays ready: degraded).
    fn readiness(&self) -> HttpResponse {
        let dependencies = self.dependencies.as_ref();
        let reason = match (self.ready)() {
            ReadyState::Unready(reason) => Some(reason.to_string()),
            ReadyState::Ready => dependencies.and_then(|d| {
                // Ready means the role's own NATS connection is up.
                d.nats_connected();
                d.unready_reason()
            }),
        };
        let mut body = serde_json::json!({
            "status": if reason.is_some() { "unready" } else { "ready" },
        });
        if let Some(reason) = &reason {
            body["reason"] = reason.as_str().into();
        }
        if let Some(d) = dependencies {
            let statuses = d.statuses();
            if statuses.iter().any(|s| s.state != "up") && reason.is_none() {
                body["degraded"] = true.into();
            }
            body["dependencies"] = serde_json::to_value(statuses).expect("plain data");
        }
        let status = match reason {
            None => StatusCode::OK,
            Some(_) => StatusCode::SERVICE_UNAVAILABLE,
        };
        json(status, serde_json::to_vec(&body).expect("a JSON object"))
    }

    /// The probes, each answered to GET on every port.
    pub const PROBE_PATHS: [&'static str; 2] = ["/healthz", "/readyz"];

    /// Whether `path` is a probe (any method).
    pub fn is_probe_path(path: &str) -> bool {
        Self::PROBE_PATHS.contains(&path)
    }
}

/// A JSON response.
pub fn json(status: StatusCode, body: Vec<u8>) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// The health endpoints of a role without the ingress (`deliver`, `record`), on their own
/// address.
pub struct HealthServer {
    local_addr: SocketAddr,
    stop: CancellationToken,
    connections: TaskTracker,
    task: tokio::task::JoinHandle<()>,
}

impl HealthServer {
    pub async fn start(addr: SocketAddr, health: Health) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let local_addr = listener.local_addr()?;
        let stop = CancellationToken::new();
        let connections = TaskTracker::new();
        let (stopping, tracker) = (stop.clone(), connections.clone());
        let task = tokio::spawn(async move {
            loop {
                let stream = tokio::select! {
                    () = stopping.cancelled() => break,
                    accepted = listener.accept() => match accepted {
                        Ok((stream, _)) => stream,
                        Err(_) => {
                            tokio::time::sleep(Duration::from_millis(20)).await;
                            continue;
                        }
                    },
                };
                let health = health.clone();
                let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let response = health
                        .respond(req.method(), req.uri().path())
                        .unwrap_or_else(|| {
                            let body = crate::error::ApiError::not_found().body();
                            json(StatusCode::NOT_FOUND, body)
                        });
                    async move { Ok::<_, Infallible>(response) }
                });
                tracker.spawn(async move {
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(HealthServer {
            local_addr,
            stop,
            connections,
            task,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops accepting; connections still open get a second to finish.
    pub async fn shutdown(self) {
        self.stop.cancel();
        let _ = self.task.await;
        self.connections.close();
        within(
            "health connections",
            Duration::from_secs(1),
            self.connections.wait(),
        )
        .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(350));
        let delays: Vec<_> = (0..4).map(|_| b.next_delay().as_millis()).collect();
        assert_eq!(delays, [100, 200, 350, 350]);
    }

    #[tokio::test(start_paused = true)]
    async fn retry_tries_until_success_and_stops_when_told() {
        let stop = CancellationToken::new();
        let mut tries = 0;
        let got = retry(
            "test",
            Backoff::new(Duration::from_secs(1), Duration::from_secs(4)),
            &stop,
            || {
                tries += 1;
                let now = tries;
                async move {
                    if now < 3 {
                        Err("not yet")
                    } else {
                        Ok(now)
                    }
                }
            },
        )
        .await;
        assert_eq!(got, Some(3));
        stop.cancel();
        let never = retry(
            "test",
            Backoff::new(Duration::from_secs(1), Duration::from_secs(4)),
            &stop,
            || async { Err::<(), _>("down") },
        )
        .await;
        assert_eq!(never, None);
    }

    #[tokio::test(start_paused = true)]
    async fn readiness_is_asked_each_time_and_can_turn_false() {
        let flag = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let seen = flag.clone();
        let health = Health {
            metrics: Arc::new(Metrics::new()),
            ready: Arc::new(move || {
                if seen.load(std::sync::atomic::Ordering::Relaxed) {
                    ReadyState::Ready
                } else {
                    ReadyState::Unready("NATS is disconnected")
                }
            }),
            depth: Arc::new(|_| 7),
            dependencies: None,
        };
        let status = |h: &Health| h.respond(&Method::GET, "/readyz").unwrap().status();
        assert_eq!(status(&health), StatusCode::OK);
        flag.store(false, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(status(&health), StatusCode::SERVICE_UNAVAILABLE);
        assert!(health.respond(&Method::GET, "/v1/x").is_none());
        assert_eq!(
            health.respond(&Method::GET, "/metrics").unwrap().status(),
            StatusCode::OK
        );
        assert!(health.respond_probe(&Method::GET, "/metrics").is_none());
    }
}
