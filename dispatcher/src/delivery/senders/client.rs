//! How every HTTP-speaking sender builds its client (each sender has its own pool, sized
//! for its channel, and webhooks alone pass the destination policy): pooled keep-alive connections,
//! HTTPS with the Mozilla root store (webpki-roots) or plain HTTP, no redirects followed,
//! an optional destination policy on every resolved address, and one exchange helper that
//! classifies the answer.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

use super::{parse_retry_after, SendOutcome};
use crate::destination::{refusal_in, DestinationPolicy, PolicyConnector};

pub type HttpClient = Client<HttpsConnector<PolicyConnector>, Full<Bytes>>;

/// `policy`: where a request may connect (tenants' webhooks); `None` for the providers the
/// operator configured.
pub fn client(
    timeout: Duration,
    max_idle_per_host: usize,
    policy: Option<Arc<DestinationPolicy>>,
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

/// Sends `request` within `timeout` and classifies the answer: 2xx delivered; 408, 425,
/// 429, 5xx, timeouts and connection errors retryable (with `Retry-After`); others
/// permanent. `what` names the provider in errors.
pub async fn exchange(
    client: &HttpClient,
    request: http::Request<Full<Bytes>>,
    timeout: Duration,
    what: &str,
) -> SendOutcome {
    let call = async {
        let response = client.request(request).await?;
        let status = response.status().as_u16();
        let retry_after = parse_retry_after(response.headers().get(http::header::RETRY_AFTER));
        // Drain the body so the connection goes back to the pool.
        let _ = response.into_body().collect().await;
        Ok::<_, hyper_util::client::legacy::Error>((status, retry_after))
    };
    match tokio::time::timeout(timeout, call).await {
        Err(_) => SendOutcome::Retryable {
            error: format!("{what} timed out after {timeout:?}"),
            status: None,
            retry_after: None,
        },
        Ok(Err(e)) => match refusal_in(&e) {
            Some(refused) => SendOutcome::Permanent {
                error: refused.to_string(),
                status: None,
            },
            None => SendOutcome::Retryable {
                error: format!("{what} request failed: {e}"),
                status: None,
                retry_after: None,
            },
        },
        Ok(Ok((status, retry_after))) => SendOutcome::from_http_status(status, retry_after, what),
    }
}
