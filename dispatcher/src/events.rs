//! Outcome events (`delivered`, `retrying`, `dead`) on the EVENTS stream, for the recorder
//! and anyone else who wants to follow a notification. One JSON document per event under
//! `<prefix>events.<event>.<priority>`; `Nats-Msg-Id` = `<id>-<event>-<attempt>`, so a
//! worker that repeats itself after a crash does not record an event twice.

use async_nats::jetstream::{self, message::PublishMessage};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::jetstream::Names;
use crate::model::{Channel, Priority};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    Delivered,
    Retrying,
    Dead,
}

impl EventKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Delivered => "delivered",
            EventKind::Retrying => "retrying",
            EventKind::Dead => "dead",
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Event<'a> {
    pub id: Uuid,
    #[serde(default)]
    pub tenant: Uuid,
    pub event: EventKind,
    pub priority: Priority,
    pub channel: Channel,
    /// The attempt this event is about (1-based).
    pub attempt: u32,
    pub at: DateTime<Utc>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub error: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// For `retrying`: milliseconds until the next attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_in_ms: Option<u64>,
}

/// Publishes an event and waits for JetStream to store it.
pub async fn publish(
    js: &jetstream::Context,
    names: &Names,
    event: &Event<'_>,
) -> Result<(), async_nats::Error> {
    let body = serde_json::to_vec(event)?;
    let message = PublishMessage::build()
        .payload(body.into())
        .message_id(format!(
            "{}-{}-{}",
            event.id,
            event.event.as_str(),
            event.attempt
        ));
    js.send_publish(
        names.event_subject(event.event.as_str(), event.priority),
        message,
    )
    .await?
    .await?;
    Ok(())
}
