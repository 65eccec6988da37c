//! `bare202`: the reference point for ingest benchmarks. A hyper server with the same
//! connection setup as Herald's ingress (HTTP/1.1 + h2c, keep-alive, mimalloc) that reads
//! the whole body and answers 202 with a body shaped like Herald's, doing nothing else.
//! Herald's single-request rate is reported as a share of this one's.
//!
//! Usage: `bare202 [ADDR]` (default 127.0.0.1:18081).

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper::{Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BODY: &[u8] =
    br#"{"id":"019ac0de-0000-7000-8000-000000000000","status":"accepted","priority":"high"}"#;

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:18081".into());
    let listener = TcpListener::bind(&addr).await?;
    eprintln!("bare202 listening on {addr}");
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        tokio::spawn(async move {
            let service = service_fn(|req: hyper::Request<hyper::body::Incoming>| async move {
                let _ = req.into_body().collect().await;
                let mut resp = Response::new(Full::new(Bytes::from_static(BODY)));
                *resp.status_mut() = StatusCode::ACCEPTED;
                resp.headers_mut().insert(
                    hyper::header::CONTENT_TYPE,
                    hyper::header::HeaderValue::from_static("application/json"),
                );
                Ok::<_, Infallible>(resp)
            });
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
