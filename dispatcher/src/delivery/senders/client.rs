//! How every HTTP-speaking sender builds its client (each sender has its own pool, sized
//! for its channel, and webhooks alone pass the destination policy): pooled keep-alive connections,
//! HTTPS with the Mozilla root store (webpki-roots) or plain HTTP, no redirects followed,
//! an optional destination policy on every resolved address, and one exchange helper that
//! classifies the answer by its status and reads at most a bounded prefix of its body.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::{parse_retry_after, SendOutcome};
use crate::egress::{refusal_in, EgressPolicy, PolicyConnector};

pub type HttpClient = Client<HttpsConnector<PolicyConnector>, Full<Bytes>>;

/// `policy`: where a request may connect (tenants' webhooks); `None` for the providers the
/// operator configured.
pub fn client(
    timeout: Duration,
    max_idle_per_host: usize,
    policy: Option<Arc<EgressPolicy>>,
) -> HttpClient {
    let http = PolicyConnector::new(policy, timeout);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_webpki_roots()
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(max_idle_per_host)
        .pool_idle_timeout(Duration::from_secs(60))
        .build(https)
}

/// What one exchange with a receiver or provider may take.
#[derive(Debug, Clone, Copy)]
pub struct Bounds {
    /// From sending the request to the end of what is read of the answer.
    pub timeout: Duration,
    /// Bytes of the answer's body read at most, for the attempt's record.
    pub body_prefix: usize,
    /// Which answers are retried.
    pub answers: super::Answers,
}

/// Sends `request` and classifies the answer by its status alone ([`super::Answers`]):
/// 2xx delivered; timeouts and connection errors retryable; the others by who answered
/// (with `Retry-After`). The status must come within the timeout; of the body, at most
/// `body_prefix` bytes are read in what is left of it, and recorded as its response.
/// `what` names the provider in errors.
pub async fn exchange(
    client: &HttpClient,
    request: http::Request<Full<Bytes>>,
    bounds: Bounds,
    what: &str,
) -> SendOutcome {
    let started = tokio::time::Instant::now();
    let timeout = bounds.timeout;
    match tokio::time::timeout(timeout, client.request(request)).await {
        Err(_) => SendOutcome::retryable(format!("{what} timed out after {timeout:?}")),
        Ok(Err(e)) => match refusal_in(&e) {
            Some(refused) => SendOutcome::permanent(refused.to_string()),
            None => SendOutcome::retryable(format!("{what} request failed: {e}")),
        },
        Ok(Ok(response)) => {
            let status = response.status().as_u16();
            let retry_after = parse_retry_after(response.headers().get(http::header::RETRY_AFTER));
            let left = timeout.saturating_sub(started.elapsed());
            let body = body_prefix(response.into_body(), bounds.body_prefix, left).await;
            SendOutcome::from_http_status(status, retry_after, what, bounds.answers).answered(&body)
        }
    }
}

/// At most `limit` bytes of `body`, read within `within`. A body that ends in time is read
/// to its end, so the connection goes back to the pool; a longer or slower one is dropped
/// unread, which closes its connection: an answer is never buffered whole.
async fn body_prefix(mut body: hyper::body::Incoming, limit: usize, within: Duration) -> Bytes {
    let mut prefix = BytesMut::new();
    let read = async {
        while let Some(Ok(frame)) = body.frame().await {
            if let Ok(data) = frame.into_data() {
                let room = limit - prefix.len();
                prefix.extend_from_slice(&data[..data.len().min(room)]);
                if data.len() > room {
                    return;
                }
            }
        }
    };
    let _ = tokio::time::timeout(within, read).await;
    prefix.freeze()
}
