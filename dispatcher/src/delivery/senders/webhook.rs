//! Webhook: an HTTP POST to the recipient URL, signed as Standard Webhooks defines, so a
//! receiver verifies it with any of that spec's libraries (`standardwebhooks` on PyPI and
//! npm, Svix's SDKs).
//!
//! - Body: `{"id", "type" (when the sender gave one), "timestamp" (accepted, RFC 3339),
//!   "priority", "data" (the sender's payload, byte for byte)}`. Nothing else of Herald's
//!   goes out: not the tenant, the idempotency key or the metadata.
//! - Headers: `webhook-id` (the notification id, the same on every attempt, which a
//!   receiver deduplicates on), `webhook-timestamp` (this attempt's Unix seconds, so a late
//!   retry is never older than a receiver's tolerance), `webhook-signature`
//!   ([`crate::signing`]), `traceparent` (W3C), and `Herald-Attempt` and `Herald-Priority`
//!   for a receiver's logs.
//! - The key is the endpoint's own secret when the tenant gave the URL one, else the
//!   sending tenant's secret (`dispatcher tenant create` prints it), or `--webhook-secret`
//!   for notifications accepted without authentication. A tenant with an ed25519 key adds
//!   a `v1a` signature. During a rotation the replaced key signs too: one signature per
//!   key in the header.
//!
//! 2xx is delivered; 410 Gone is permanent; any other status, timeouts and connection
//! errors are retried (honouring `Retry-After`), as Standard Webhooks recommends
//! ([`super::Answers::Receiver`]). Redirects are not followed. Destinations outside the
//! egress policy (`egress.rs`) are permanent failures.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use http_body_util::Full;
use serde::Serialize;
use serde_json::value::RawValue;

use super::client::{exchange, Bounds, HttpClient};
use super::{Attempt, SendFuture, SendOutcome, Sender};
use crate::model::{Priority, WireNotification};
use crate::signing::{Secret, SigningKeys};
use crate::tenants::{Directory, ANONYMOUS};

pub struct WebhookSender {
    client: HttpClient,
    /// The secret of notifications without a tenant (`--webhook-secret`).
    secret: Option<Secret>,
    tenants: Option<Arc<Directory>>,
    bounds: Bounds,
}

/// What a receiver gets.
#[derive(Serialize)]
struct Body<'a> {
    id: uuid::Uuid,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    event_type: Option<&'a str>,
    timestamp: DateTime<Utc>,
    priority: Priority,
    data: &'a RawValue,
}

/// The body a receiver gets for `notification`.
pub fn body(notification: &WireNotification<'_>) -> Vec<u8> {
    let body = Body {
        id: notification.id,
        event_type: notification.event_type.as_deref(),
        timestamp: notification.accepted_at,
        priority: notification.priority,
        data: notification.payload,
    };
    let mut out = Vec::with_capacity(notification.payload.get().len() + 160);
    serde_json::to_writer(&mut out, &body).expect("serializing owned JSON cannot fail");
    out
}

impl WebhookSender {
    /// `client` carries the egress policy (see `client::client`).
    pub fn new(
        client: HttpClient,
        secret: Option<Secret>,
        tenants: Option<Arc<Directory>>,
        bounds: Bounds,
    ) -> Self {
        WebhookSender {
            client,
            secret,
            tenants,
            bounds,
        }
    }

    /// The keys a notification to `url` is signed with: its tenant's (the endpoint's own
    /// secret when it has one, and during a rotation the key it replaced too). A tenant
    /// that cannot be looked up now is a retry (PostgreSQL down); one that does not exist
    /// is permanent.
    async fn keys_of(&self, tenant: uuid::Uuid, url: &str) -> Result<SigningKeys, SendOutcome> {
        let Some(directory) = self.tenants.as_ref().filter(|_| tenant != ANONYMOUS) else {
            // Permanent: a replay delivers once the process has the secret.
            return self
                .secret
                .clone()
                .map(|s| SigningKeys {
                    secrets: vec![s],
                    pairs: Vec::new(),
                })
                .ok_or_else(|| SendOutcome::permanent(String::from(
                        "accepted without authentication, and this delivery process has no --webhook-secret to sign it",
                    )));
        };
        match directory.signing(tenant, url).await {
            Ok(Some(keys)) => Ok(keys),
            Ok(None) => Err(SendOutcome::permanent(format!(
                "tenant {tenant} does not exist"
            ))),
            Err(e) => Err(SendOutcome::Unsent {
                error: format!("webhook secret unavailable: {e}"),
            }),
        }
    }
}

impl Sender for WebhookSender {
    fn send<'a>(&'a self, attempt: &'a Attempt<'a>) -> SendFuture<'a> {
        Box::pin(async move {
            let notification = attempt.notification;
            let keys = match self
                .keys_of(notification.tenant, &notification.recipient)
                .await
            {
                Ok(keys) => keys,
                Err(outcome) => return outcome,
            };
            let timestamp = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_secs();
            let id = notification.id.to_string();
            let body = body(notification);
            let signature = keys.header(&id, timestamp, &body);
            let request = http::Request::post(notification.recipient.as_ref())
                .header(http::header::CONTENT_TYPE, "application/json")
                .header("webhook-id", &id)
                .header("webhook-timestamp", timestamp.to_string())
                .header("webhook-signature", signature)
                .header("Herald-Attempt", attempt.number.to_string())
                .header("Herald-Priority", notification.priority.as_str())
                .header(crate::trace::HEADER, attempt.trace.to_header())
                .body(Full::new(Bytes::from(body)));
            let request = match request {
                Ok(r) => r,
                Err(e) => return SendOutcome::permanent(format!("invalid webhook request: {e}")),
            };
            exchange(&self.client, request, self.bounds, "webhook").await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_body_carries_the_payload_and_nothing_of_herald_s_own() {
        let payload = RawValue::from_string(String::from(r#"{"amount": 5}"#)).unwrap();
        let metadata = RawValue::from_string(String::from(r#"{"internal":1}"#)).unwrap();
        let wire = WireNotification {
            v: 1,
            id: uuid::Uuid::nil(),
            tenant: uuid::Uuid::from_u128(7),
            priority: Priority::High,
            channel: crate::model::Channel::Webhook,
            recipient: "https://example.com/hook".into(),
            payload: &payload,
            idempotency_key: Some("key-1".into()),
            send_at: None,
            expires_at: None,
            metadata: Some(&metadata),
            accepted_at: DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
            event_type: Some("invoice.paid".into()),
        };
        let text = String::from_utf8(body(&wire)).unwrap();
        assert_eq!(
            text,
            r#"{"id":"00000000-0000-0000-0000-000000000000","type":"invoice.paid","timestamp":"2023-11-14T22:13:20Z","priority":"high","data":{"amount": 5}}"#
        );
    }
}
