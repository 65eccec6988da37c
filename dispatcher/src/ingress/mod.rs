//! The HTTP ingress (`dispatcher serve`): hyper 1.x, HTTP/1.1 and h2c on one port, no
//! framework.
//!
//! [`Ingress::start`] serves with the parts `app.rs` built ([`Door`]: the NATS connection
//! and its readiness, the stores, the scheduler, admission and the publisher) and runs the
//! accept loop. Shutdown runs in the order that
//! keeps the promise "202 means durable": stop accepting connections, let in-flight
//! requests finish (their publishes are still being acknowledged), close the scheduler,
//! let the publishers drain it and collect every ack, flush the NATS connection.

mod connection;
mod console;
mod routes;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::admission::Admission;
use crate::config::{AuthMode, ServeConfig};
use crate::egress::EgressPolicy;
use crate::idempotency::Idempotency;
use crate::jetstream::{Names, Readiness};
use crate::lifecycle::{Health, ReadyState, StartError};
use crate::metrics::Metrics;
use crate::publisher::{Envelope, Publisher, Submitter};
use crate::ratelimit::{Limit, RateLimiter};
use crate::redis_store::RedisStore;
use crate::scheduler::Scheduler;
use crate::status::StatusCache;
use crate::tenants::Directory;
use crate::trace::Spans;

pub use routes::handle;

/// What every request handler shares.
pub struct State {
    /// `payload` limit of tenants without their own.
    pub max_payload: usize,
    /// How far ahead `send_at` may be (from `--stream-max-age`).
    pub schedule_horizon: Duration,
    pub egress: EgressPolicy,
    pub max_body: usize,
    pub max_batch: usize,
    pub body_timeout: Duration,
    /// Where accepted notifications go to be published.
    pub submitter: Submitter,
    /// Which priorities the door admits now.
    pub admission: Arc<Admission>,
    /// How long a request refused as `overloaded` waits for its answer.
    pub refusal_hold: Duration,
    pub metrics: Arc<Metrics>,
    pub readiness: Arc<Readiness>,
    pub client: async_nats::Client,
    pub js: async_nats::jetstream::Context,
    pub names: Names,
    pub idempotency: Idempotency,
    pub auth: AuthMode,
    /// API keys → tenants (and the PostgreSQL pool the status API reads).
    pub tenants: Arc<Directory>,
    pub rate_limiter: RateLimiter,
    /// The bucket of tenants without their own setting (`None`: unlimited).
    pub default_limit: Option<Limit>,
    pub status_cache: StatusCache,
    /// Caches each notification as accepted before its 202 (read-your-writes).
    pub acceptances: crate::status::Acceptances,
    /// The probes on the API port, and `/metrics` beside them on `--metrics-listen`.
    pub health: Health,
    /// Span export (off unless `--otlp-endpoint`).
    pub spans: Spans,
}

/// What the ingress serves with, built by the composition root (`app.rs`): the NATS
/// connection and its readiness, the stores the handlers read, the door's scheduler,
/// admission and publisher, and the background tasks it stops last.
pub struct Door {
    pub client: async_nats::Client,
    /// Publishes with the publisher's timeouts.
    pub js: async_nats::jetstream::Context,
    pub names: Names,
    pub readiness: Arc<Readiness>,
    pub redis: Arc<RedisStore>,
    pub tenants: Arc<Directory>,
    pub scheduler: Arc<Scheduler<Envelope>>,
    pub admission: Arc<Admission>,
    pub publisher: Publisher,
    pub metrics: Arc<Metrics>,
    pub spans: Spans,
    /// NATS and the stores, listed on `/readyz`.
    pub dependencies: Option<Arc<crate::dependencies::Dependencies>>,
    /// Readiness supervision and admission control: cancelled with `stop_background` once
    /// the publishes have drained and the connection is flushed.
    pub background: Vec<JoinHandle<()>>,
    pub stop_background: CancellationToken,
}

/// A running ingress.
pub struct Ingress {
    local_addr: SocketAddr,
    state: Arc<State>,
    shutdown: CancellationToken,
    task: JoinHandle<()>,
}

/// Binds `--listen` (first, so a port in use fails the start at once).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, StartError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind {
            what: "--listen",
            source,
        })
}

impl Ingress {
    /// Starts serving on `listener` with `door`'s parts (NATS may still be coming: the
    /// API answers 503 until it is).
    pub fn start(
        listener: TcpListener,
        config: ServeConfig,
        door: Door,
    ) -> Result<Self, StartError> {
        let local_addr = listener.local_addr().map_err(|source| StartError::Bind {
            what: "--listen",
            source,
        })?;
        let Door {
            client,
            js,
            names,
            readiness,
            redis,
            tenants,
            scheduler,
            admission,
            publisher,
            metrics,
            spans,
            dependencies,
            background,
            stop_background,
        } = door;
        let shutdown = CancellationToken::new();
        let health = Health {
            metrics: metrics.clone(),
            ready: {
                let (readiness, client) = (readiness.clone(), client.clone());
                Arc::new(move || {
                    if readiness.is_ready(&client) {
                        ReadyState::Ready
                    } else {
                        ReadyState::Unready("NATS is disconnected or the stream is not verified")
                    }
                })
            },
            depth: {
                let scheduler = scheduler.clone();
                Arc::new(move |p| scheduler.len(p))
            },
            dependencies,
        };
        let state = Arc::new(State {
            max_payload: config.max_payload,
            schedule_horizon: crate::model::schedule_horizon(config.nats.stream_max_age),
            egress: config.egress.policy(),
            max_body: config.max_body,
            max_batch: config.max_batch,
            body_timeout: config.body_timeout,
            submitter: publisher.submitter(),
            admission,
            refusal_hold: config.admission.refusal_hold,
            metrics,
            readiness,
            client: client.clone(),
            js,
            names,
            idempotency: Idempotency::new(redis.clone(), config.idempotency_ttl),
            auth: config.auth,
            tenants,
            rate_limiter: RateLimiter::new(redis.clone()),
            default_limit: (config.rate_limit > 0).then(|| Limit {
                rate: config.rate_limit,
                burst: config.rate_burst.unwrap_or(config.rate_limit).max(1),
            }),
            acceptances: crate::status::Acceptances::start(redis.clone()),
            status_cache: StatusCache::new(redis),
            health,
            spans,
        });
        tracing::info!(%local_addr, prefix = %config.nats.prefix, "ingress listening");
        let stop = shutdown.clone();
        let serving = state.clone();
        let task = tokio::spawn(async move {
            let connections = accept_loop(listener, serving, &config, stop).await;
            tracing::info!("shutting down: finishing in-flight requests");
            // One deadline for every stage, so a stop never takes more than
            // --shutdown-timeout, whatever state NATS is in.
            let deadline = tokio::time::Instant::now() + config.shutdown_timeout;
            let left = || deadline.saturating_duration_since(tokio::time::Instant::now());
            connections.close();
            crate::lifecycle::within("in-flight requests", left(), connections.wait()).await;
            scheduler.close();
            crate::lifecycle::within("publishes", left(), publisher.join()).await;
            // A connection that never came up has nothing to flush, and its flush would
            // wait for a connection that may never come.
            if client.connection_state() == async_nats::connection::State::Connected {
                match tokio::time::timeout(left(), client.flush()).await {
                    Ok(Ok(())) => {}
                    Ok(Err(err)) => {
                        tracing::warn!(error = %err, "flushing the NATS connection failed")
                    }
                    Err(_) => tracing::warn!("flushing the NATS connection did not finish in time"),
                }
            }
            stop_background.cancel();
            for task in background {
                let _ = task.await;
            }
            tracing::info!("shutdown complete");
        });
        Ok(Ingress {
            local_addr,
            state,
            shutdown,
            task,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The handlers' shared state, to drive [`handle`] in-process (benchmarks) without
    /// the HTTP connection in between.
    pub fn state(&self) -> Arc<State> {
        self.state.clone()
    }

    /// What the operators' port (`--metrics-listen`) answers for this ingress.
    pub fn health(&self) -> Health {
        self.state.health.clone()
    }

    /// The door's admission state: background roles in the same process yield while it
    /// sheds.
    pub fn admission(&self) -> Arc<Admission> {
        self.state.admission.clone()
    }

    /// A token that starts a graceful shutdown when cancelled.
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Waits until the ingress has shut down completely.
    pub async fn wait(self) {
        if let Err(err) = self.task.await {
            tracing::error!(error = %err, "ingress task failed");
        }
    }

    /// Starts a graceful shutdown and waits for it to finish.
    pub async fn shutdown(self) {
        self.shutdown.cancel();
        self.wait().await;
    }
}

/// Accepts connections until `stop`, returning the tracker of those still open (each
/// closes gracefully once `stop` is cancelled).
async fn accept_loop(
    listener: TcpListener,
    state: Arc<State>,
    config: &ServeConfig,
    stop: CancellationToken,
) -> TaskTracker {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .keep_alive(config.keep_alive)
        // The header clock is Herald's (connection.rs): hyper's would also run while a
        // kept-alive connection waits for its next request.
        .header_read_timeout(None)
        .max_buf_size(config.max_header_bytes as usize)
        .timer(TokioTimer::new());
    builder
        .http2()
        .keep_alive_interval(config.h2_keep_alive_interval)
        .max_concurrent_streams(512)
        .max_header_list_size(config.max_header_bytes)
        .timer(TokioTimer::new());
    let clocks = connection::Clocks {
        idle: config.idle_timeout,
        header: config.header_timeout,
    };
    // The idle timeout announced to HTTP/1.1 clients: the least time an idle connection
    // stays open, so clients that honour it retire the connection before Herald does.
    let keep_alive = config.keep_alive.then(|| {
        http::HeaderValue::from_str(&format!("timeout={}", config.idle_timeout.as_secs()))
            .expect("digits are a valid header value")
    });
    let connections = TaskTracker::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(config.max_connections));
    // Refusals hold a descriptor for up to a second each; beyond this many at once a flood
    // is simply closed.
    let refusals = Arc::new(tokio::sync::Semaphore::new(1024));
    loop {
        let (stream, peer) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(err) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            state.metrics.connections_refused.inc();
            if let Ok(refusing) = refusals.clone().try_acquire_owned() {
                tokio::spawn(async move {
                    refuse_connection(stream).await;
                    drop(refusing);
                });
            }
            continue;
        };
        let _ = stream.set_nodelay(true);
        let state = state.clone();
        let builder = builder.clone();
        let stop = stop.clone();
        let keep_alive = keep_alive.clone();
        connections.spawn(async move {
            let metrics = state.metrics.clone();
            metrics.connections_open.inc();
            let activity = Arc::new(connection::Activity::new(clocks));
            let io = TokioIo::new(connection::Watched::new(stream, activity.clone()));
            let watched = activity.clone();
            let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let state = state.clone();
                let activity = watched.clone();
                let keep_alive = keep_alive.clone();
                async move {
                    let version = req.version();
                    activity.request_started(version);
                    let mut response = handle(state, req).await;
                    activity.request_finished();
                    if let (Some(value), http::Version::HTTP_11) = (keep_alive, version) {
                        response
                            .headers_mut()
                            .insert(http::HeaderName::from_static("keep-alive"), value);
                    }
                    Ok::<_, Infallible>(response)
                }
            });
            let served = builder.serve_connection(io, service);
            tokio::pin!(served);
            let ended = connection::drive(served, &activity, &stop, || {
                metrics.connections_closed_idle.inc();
            })
            .await;
            match ended {
                connection::Ended::Done(Ok(())) => {}
                connection::Ended::Done(Err(err)) => {
                    tracing::debug!(%peer, error = %err, "connection ended with an error");
                }
                connection::Ended::HeadTimeout => {
                    metrics.connections_closed_header_timeout.inc();
                    tracing::debug!(%peer, "request head not received in time; connection closed");
                }
            }
            metrics.connections_open.dec();
            drop(slot);
        });
    }
    connections
}

/// Over `--max-connections`: a complete 503, then the request is read and discarded until
/// the peer closes (closing with unread input would send a reset that can destroy the 503
/// before the client reads it); one second at most in all.
async fn refuse_connection(mut stream: tokio::net::TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let refusal = crate::error::ApiError::too_many_connections();
    let body = String::from_utf8(refusal.body()).expect("JSON is UTF-8");
    let response = format!(
        "HTTP/1.1 {}\r\ncontent-type: application/json\r\nretry-after: {}\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
        refusal.status,
        refusal.retry_after.unwrap_or(1),
        body.len()
    );
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        stream.write_all(response.as_bytes()).await?;
        stream.shutdown().await?;
        let mut sink = [0u8; 4096];
        while stream.read(&mut sink).await? > 0 {}
        Ok::<_, std::io::Error>(())
    })
    .await;
}
