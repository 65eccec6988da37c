//! Webhook: an HTTP POST of the notification's wire document to the recipient URL.
//!
//! Headers: `traceparent` (W3C; the trace of the request that sent the notification),
//! `Herald-Id`, `Herald-Attempt`, `Herald-Timestamp` (Unix seconds) and
//! `Herald-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>.<body>")>`, where the secret
//! is the sending tenant's (`dispatcher tenant create` prints it), or `--webhook-secret`
//! for notifications accepted without authentication. A receiver
//! recomputes the HMAC over the timestamp header, a dot and the raw body with the shared
//! secret, compares in constant time, and rejects timestamps older than a few minutes
//! (replay). 2xx is delivered; 408, 425, 429, 5xx, timeouts and connection errors are
//! retried (honouring `Retry-After`); any other status is permanent. Redirects are not
//! followed. Destinations outside the SSRF policy (destination.rs) are permanent failures.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::Full;
use sha2::Sha256;

use super::client::{exchange, Bounds, HttpClient};
use super::{Attempt, SendFuture, SendOutcome, Sender};
use crate::tenants::{Directory, ANONYMOUS};

pub struct WebhookSender {
    client: HttpClient,
    /// The secret of notifications without a tenant.
    secret: Vec<u8>,
    tenants: Option<Arc<Directory>>,
    bounds: Bounds,
}

impl WebhookSender {
    /// `client` carries the destination policy (see `client::client`).
    pub fn new(
        client: HttpClient,
        secret: &str,
        tenants: Option<Arc<Directory>>,
        bounds: Bounds,
    ) -> Self {
        WebhookSender {
            client,
            secret: secret.as_bytes().to_vec(),
            tenants,
            bounds,
        }
    }

    /// The signing key of a notification's tenant. A tenant that cannot be looked up now
    /// is a retry (PostgreSQL down); one that does not exist is permanent.
    async fn secret_of(&self, tenant: uuid::Uuid) -> Result<Vec<u8>, SendOutcome> {
        let Some(directory) = self.tenants.as_ref().filter(|_| tenant != ANONYMOUS) else {
            return Ok(self.secret.clone());
        };
        match directory.get(tenant).await {
            Ok(Some(t)) => Ok(t.webhook_secret.as_bytes().to_vec()),
            Ok(None) => Err(SendOutcome::Permanent {
                error: format!("tenant {tenant} does not exist"),
                status: None,
            }),
            Err(e) => Err(SendOutcome::Unsent {
                error: format!("webhook secret unavailable: {e}"),
            }),
        }
    }
}

/// `v1=<hex>` over `"<timestamp>.<body>"`.
pub fn signature(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes any key length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1={}", hex::encode(mac.finalize().into_bytes()))
}

impl Sender for WebhookSender {
    fn send<'a>(&'a self, attempt: &'a Attempt<'a>) -> SendFuture<'a> {
        Box::pin(async move {
            let secret = match self.secret_of(attempt.notification.tenant).await {
                Ok(secret) => secret,
                Err(outcome) => return outcome,
            };
            let timestamp = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs();
            let request = http::Request::post(attempt.notification.recipient.as_ref())
                .header(http::header::CONTENT_TYPE, "application/json")
                .header("Herald-Id", attempt.notification.id.to_string())
                .header("Herald-Attempt", attempt.number.to_string())
                .header("Herald-Priority", attempt.notification.priority.as_str())
                .header("Herald-Timestamp", timestamp.to_string())
                .header(crate::trace::HEADER, attempt.trace.to_header())
                .header(
                    "Herald-Signature",
                    signature(&secret, timestamp, attempt.raw),
                )
                .body(Full::new(Bytes::copy_from_slice(attempt.raw)));
            let request = match request {
                Ok(r) => r,
                Err(e) => {
                    return SendOutcome::Permanent {
                        error: format!("invalid webhook request: {e}"),
                        status: None,
                    }
                }
            };
            exchange(&self.client, request, self.bounds, "webhook").await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_hmac_sha256_over_timestamp_dot_body() {
        // Computed independently: printf '1700000000.{"a":1}' | openssl dgst -sha256 -hmac secret
        assert_eq!(
            signature(b"secret", 1_700_000_000, br#"{"a":1}"#),
            "v1=49f24e537407743fa4a0242bb63b94b9a47ee99cbbe071ccd8a22550ae411686"
        );
    }
}
