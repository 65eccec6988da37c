//! Health and metrics endpoints for roles without the ingress (`dispatcher deliver`):
//! `/healthz`, `/readyz` and `/metrics` on their own address.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Response, StatusCode};
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

use crate::metrics::Metrics;

/// A running health endpoint; serves until the process ends.
pub struct Health {
    ready: Arc<AtomicBool>,
    pub local_addr: SocketAddr,
}

impl Health {
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Release);
    }
}

pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<Health> {
    let listener = TcpListener::bind(addr).await?;
    let local_addr = listener.local_addr()?;
    let ready = Arc::new(AtomicBool::new(false));
    let flag = ready.clone();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let (metrics, ready) = (metrics.clone(), flag.clone());
            let service = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                let (metrics, ready) = (metrics.clone(), ready.clone());
                async move {
                    let (status, body) = match (req.method(), req.uri().path()) {
                        (&Method::GET, "/healthz") => (StatusCode::OK, Bytes::from_static(b"ok")),
                        (&Method::GET, "/readyz") if ready.load(Ordering::Acquire) => {
                            (StatusCode::OK, Bytes::from_static(b"ready"))
                        }
                        (&Method::GET, "/readyz") => (
                            StatusCode::SERVICE_UNAVAILABLE,
                            Bytes::from_static(b"unready"),
                        ),
                        (&Method::GET, "/metrics") => {
                            (StatusCode::OK, Bytes::from(metrics.render(|_| 0)))
                        }
                        _ => (StatusCode::NOT_FOUND, Bytes::from_static(b"not found")),
                    };
                    let mut response = Response::new(Full::new(body));
                    *response.status_mut() = status;
                    Ok::<_, Infallible>(response)
                }
            });
            tokio::spawn(async move {
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    Ok(Health { ready, local_addr })
}
