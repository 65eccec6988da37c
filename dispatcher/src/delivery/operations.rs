//! Operational webhooks: a tenant's operations endpoint is told, without polling, when one
//! of its notifications dies or expires and when one of its destinations starts failing or
//! recovers. Each event is a notification like any other (high priority, a webhook to the
//! endpoint, signed like every webhook, retried by the same machinery), with `type`
//! `notification.dead`, `notification.expired`, `destination.failing`,
//! `destination.recovered` or `destination.disabled` (an endpoint that answered 410).
//!
//! The endpoint's own failures never emit events to itself: nothing addressed to it, and
//! no failure of its host, is reported to it (else a dead endpoint would feed itself).

use std::sync::Arc;

use async_nats::jetstream::{self, message::PublishMessage};
use async_nats::HeaderMap;
use chrono::Utc;
use serde_json::value::RawValue;
use uuid::Uuid;

use crate::jetstream::{Names, HEADER_CHANNEL, HEADER_PRIORITY};
use crate::model::{new_id, Channel, Priority, WireNotification, WIRE_VERSION};
use crate::tenants::{Directory, ANONYMOUS};

/// Publishes operational events into NOTIFY for tenants with an operations endpoint.
pub struct Operations {
    js: jetstream::Context,
    names: Names,
    tenants: Option<Arc<Directory>>,
}

/// What an event is about, to keep the endpoint from being told about itself.
pub enum About<'a> {
    /// A notification to this recipient.
    Notification(&'a str),
    /// A destination (`webhook:<host>:<port>`).
    Destination(&'a str),
}

impl Operations {
    pub fn new(js: jetstream::Context, names: Names, tenants: Option<Arc<Directory>>) -> Self {
        Operations { js, names, tenants }
    }

    /// Tells `tenant`'s operations endpoint `kind` with `data`, once per `dedupe` (the
    /// stream's duplicate window drops a repeat, as when a settlement is retried). Does
    /// nothing for a tenant without an endpoint, or when the event is about the endpoint.
    pub async fn tell(
        &self,
        tenant: Uuid,
        kind: &str,
        about: About<'_>,
        data: serde_json::Value,
        dedupe: &str,
    ) {
        let Some(directory) = self.tenants.as_ref().filter(|_| tenant != ANONYMOUS) else {
            return;
        };
        let endpoint = match directory.get(tenant).await {
            Ok(Some(t)) => match t.operations_url.clone() {
                Some(url) => url,
                None => return,
            },
            Ok(None) => return,
            Err(err) => {
                tracing::warn!(%tenant, kind, error = %err, "operations endpoint unknown: event not sent");
                return;
            }
        };
        let itself = match about {
            About::Notification(recipient) => recipient == endpoint,
            About::Destination(name) => {
                super::health::destination_name(Channel::Webhook, &endpoint).as_deref()
                    == Some(name)
            }
        };
        if itself {
            return;
        }
        let payload = RawValue::from_string(data.to_string()).expect("JSON is JSON");
        let wire = WireNotification {
            v: WIRE_VERSION,
            id: new_id(),
            tenant,
            priority: Priority::High,
            channel: Channel::Webhook,
            recipient: endpoint.into(),
            payload: &payload,
            idempotency_key: None,
            send_at: None,
            expires_at: None,
            metadata: None,
            accepted_at: Utc::now(),
            event_type: Some(kind.to_string().into()),
        };
        let body = serde_json::to_vec(&wire).expect("serializing owned JSON cannot fail");
        let mut headers = HeaderMap::new();
        headers.insert(HEADER_PRIORITY, Priority::High.as_str());
        headers.insert(HEADER_CHANNEL, Channel::Webhook.as_str());
        let publish = PublishMessage::build()
            .payload(body.into())
            .headers(headers)
            .message_id(format!("ops-{kind}-{dedupe}"));
        let subject = self.names.subject(Priority::High, Channel::Webhook);
        let stored = match self.js.send_publish(subject, publish).await {
            Ok(ack) => ack.await.map(drop).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(err) = stored {
            tracing::warn!(%tenant, kind, error = %err, "operational event not published");
        }
    }
}
