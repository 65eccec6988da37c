//! The dead-letter queue: a JetStream stream of notifications that failed permanently or
//! ran out of attempts, each with why. Workers write it; the API lists, replays and
//! deletes from it.
//!
//! A dead letter is the original wire document under
//! `<prefix>dlq.<tenant>.<priority>.<channel>.<id>`
//! with headers `Herald-Error`, `Herald-Status` (the provider's HTTP status, when there was
//! one), `Herald-Attempts` and `Herald-Dead-At`. Replay republishes the document to NOTIFY
//! as a new JetStream message (so it gets a fresh attempt budget) and then deletes the dead
//! letter.

use async_nats::jetstream::{self, message::PublishMessage, stream::Stream};
use async_nats::HeaderMap;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::Serialize;
use uuid::Uuid;

use crate::jetstream::{Names, HEADER_CHANNEL, HEADER_PRIORITY};
use crate::model::{Channel, Priority};
use crate::trace::{self, TraceParent};

pub const HEADER_ERROR: &str = "Herald-Error";
pub const HEADER_STATUS: &str = "Herald-Status";
pub const HEADER_ATTEMPTS: &str = "Herald-Attempts";
pub const HEADER_DEAD_AT: &str = "Herald-Dead-At";

#[derive(Debug, thiserror::Error)]
pub enum DlqError {
    #[error("JetStream: {0}")]
    JetStream(String),
    #[error("no dead letter with that id")]
    NotFound,
}

fn js_err(e: impl std::fmt::Display) -> DlqError {
    DlqError::JetStream(e.to_string())
}

/// Why a notification died.
pub struct Death<'a> {
    pub id: Uuid,
    pub tenant: Uuid,
    pub priority: Priority,
    pub channel: Channel,
    pub error: &'a str,
    pub status: Option<u16>,
    pub attempts: u32,
    /// Stream sequence of the original, so a repeated dead-lettering of the same message
    /// is dropped by JetStream's duplicate window.
    pub source_sequence: u64,
    /// The last attempt's `traceparent`; a replay continues the trace from it.
    pub trace: Option<TraceParent>,
}

/// Writes a dead letter and waits for JetStream to store it.
pub async fn dead_letter(
    js: &jetstream::Context,
    names: &Names,
    death: &Death<'_>,
    document: Bytes,
) -> Result<(), DlqError> {
    let mut headers = HeaderMap::new();
    headers.insert(HEADER_PRIORITY, death.priority.as_str());
    headers.insert(HEADER_CHANNEL, death.channel.as_str());
    // Header values are single lines.
    let error: String = death
        .error
        .chars()
        .filter(|c| !c.is_control())
        .take(1024)
        .collect();
    headers.insert(HEADER_ERROR, error.as_str());
    if let Some(status) = death.status {
        headers.insert(HEADER_STATUS, status.to_string().as_str());
    }
    headers.insert(HEADER_ATTEMPTS, death.attempts.to_string().as_str());
    headers.insert(HEADER_DEAD_AT, Utc::now().to_rfc3339().as_str());
    if let Some(parent) = death.trace {
        headers.insert(trace::HEADER, parent.to_header().as_str());
    }
    let message = PublishMessage::build()
        .payload(document)
        .headers(headers)
        .message_id(format!("dlq-{}-{}", death.id, death.source_sequence));
    js.send_publish(
        names.dlq_subject(&death.tenant, death.priority, death.channel, &death.id),
        message,
    )
    .await
    .map_err(js_err)?
    .await
    .map_err(js_err)?;
    Ok(())
}

/// One dead letter as the API lists it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct DeadLetter {
    pub id: String,
    /// Its sequence in the DLQ stream.
    pub sequence: u64,
    #[schema(value_type = Priority)]
    pub priority: String,
    #[schema(value_type = Channel)]
    pub channel: String,
    /// Why the last attempt failed.
    pub error: String,
    /// The receiver's or provider's HTTP status on the last attempt, if it answered.
    pub status: Option<u16>,
    pub attempts: u32,
    /// RFC 3339.
    pub dead_at: String,
    /// The notification as accepted (its wire document).
    #[schema(value_type = Object)]
    pub notification: serde_json::Value,
}

fn header(headers: &HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .map(|v| v.as_str().to_string())
        .unwrap_or_default()
}

fn to_dead_letter(message: jetstream::message::StreamMessage) -> DeadLetter {
    let id = message
        .subject
        .rsplit('.')
        .next()
        .unwrap_or_default()
        .to_string();
    DeadLetter {
        id,
        sequence: message.sequence,
        priority: header(&message.headers, HEADER_PRIORITY),
        channel: header(&message.headers, HEADER_CHANNEL),
        error: header(&message.headers, HEADER_ERROR),
        status: header(&message.headers, HEADER_STATUS).parse().ok(),
        attempts: header(&message.headers, HEADER_ATTEMPTS)
            .parse()
            .unwrap_or(0),
        dead_at: header(&message.headers, HEADER_DEAD_AT),
        notification: serde_json::from_slice(&message.payload).unwrap_or(serde_json::Value::Null),
    }
}

/// A page of dead letters, oldest first, from stream sequence `cursor` on.
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(as = DeadLetterPage)]
pub struct Page {
    pub items: Vec<DeadLetter>,
    /// Where the next page starts, when there may be more.
    pub next_cursor: Option<u64>,
    /// The last DLQ sequence this paging covers. Pass it back with `cursor`, so that
    /// paging (a bulk replay above all) ends at the dead letters that existed when it
    /// began instead of chasing replays that die again.
    pub until: u64,
}

/// Which of a tenant's dead letters a page holds.
pub struct Selection<'a> {
    pub tenant: &'a Uuid,
    pub priority: Option<Priority>,
    pub channel: Option<Channel>,
    /// The first DLQ sequence to look at.
    pub cursor: u64,
    /// The last; `None`: the stream's last as of this call.
    pub until: Option<u64>,
    /// Only those that died at or after this time.
    pub dead_after: Option<DateTime<Utc>>,
    /// Only those that died before this time: the first later one ends the paging (the
    /// stream is in the order they died).
    pub dead_before: Option<DateTime<Utc>>,
    pub limit: usize,
}

pub async fn list(
    js: &jetstream::Context,
    names: &Names,
    selection: &Selection<'_>,
) -> Result<Page, DlqError> {
    // get_stream asks for the stream's info, so its last sequence is as of now.
    let stream = js.get_stream(&names.dlq_stream).await.map_err(js_err)?;
    let until = selection
        .until
        .unwrap_or(stream.cached_info().state.last_sequence);
    let filter = names.dlq_filter(selection.tenant, selection.priority, selection.channel);
    let mut items = Vec::new();
    let mut next = selection.cursor.max(1);
    while items.len() < selection.limit && next <= until {
        match stream
            .direct_get_next_for_subject(filter.clone(), Some(next))
            .await
        {
            Ok(message) if message.sequence <= until => {
                next = message.sequence + 1;
                let died = died_at(&message);
                if selection.dead_before.is_some_and(|before| died >= before) {
                    next = until + 1;
                    break;
                }
                if selection.dead_after.is_none_or(|after| died >= after) {
                    items.push(to_dead_letter(message));
                }
            }
            Ok(_) => break,
            Err(e) if is_not_found(&e) => break,
            Err(e) => return Err(js_err(e)),
        }
    }
    let next_cursor = (items.len() == selection.limit && next <= until).then_some(next);
    Ok(Page {
        items,
        next_cursor,
        until,
    })
}

/// How many dead letters `tenant` has: the pending count of a throwaway consumer filtered
/// to the tenant's subjects, which the server counts without sending a message.
pub async fn count(js: &jetstream::Context, names: &Names, tenant: &Uuid) -> Result<u64, DlqError> {
    let stream = js.get_stream(&names.dlq_stream).await.map_err(js_err)?;
    let counter = stream
        .create_consumer(jetstream::consumer::pull::Config {
            filter_subject: names.dlq_filter(tenant, None, None),
            ack_policy: jetstream::consumer::AckPolicy::None,
            memory_storage: true,
            // Gone by itself should the delete below not arrive.
            inactive_threshold: std::time::Duration::from_secs(5),
            ..Default::default()
        })
        .await
        .map_err(js_err)?;
    // The creation's answer already counts what the filter matches.
    let info = counter.cached_info();
    let (pending, name) = (info.num_pending, info.name.clone());
    let _ = stream.delete_consumer(&name).await;
    Ok(pending)
}

/// When a dead letter died: its time in the DLQ stream.
fn died_at(message: &jetstream::message::StreamMessage) -> DateTime<Utc> {
    DateTime::from_timestamp_nanos(
        i64::try_from(message.time.unix_timestamp_nanos()).unwrap_or(i64::MAX),
    )
}

fn is_not_found(e: &jetstream::stream::DirectGetError) -> bool {
    matches!(e.kind(), jetstream::stream::DirectGetErrorKind::NotFound)
}

async fn find(
    js: &jetstream::Context,
    names: &Names,
    tenant: &Uuid,
    id: &Uuid,
) -> Result<(Stream, jetstream::message::StreamMessage), DlqError> {
    let stream = js.get_stream(&names.dlq_stream).await.map_err(js_err)?;
    match stream
        .direct_get_next_for_subject(names.dlq_by_id(tenant, id), None)
        .await
    {
        Ok(message) => Ok((stream, message)),
        Err(e) if is_not_found(&e) => Err(DlqError::NotFound),
        Err(e) => Err(js_err(e)),
    }
}

/// Republishes a dead letter to NOTIFY (a new message, a fresh attempt budget), then
/// removes it from the DLQ. Returns the stream sequence in NOTIFY.
pub async fn replay(
    js: &jetstream::Context,
    names: &Names,
    tenant: &Uuid,
    id: &Uuid,
) -> Result<u64, DlqError> {
    let (stream, message) = find(js, names, tenant, id).await?;
    let dead = to_dead_letter(message.clone());
    let priority: Priority = serde_json::from_value(serde_json::Value::String(dead.priority))
        .map_err(|_| js_err("dead letter without a valid priority header"))?;
    let channel: Channel = serde_json::from_value(serde_json::Value::String(dead.channel))
        .map_err(|_| js_err("dead letter without a valid channel header"))?;
    let mut headers = HeaderMap::new();
    headers.insert(HEADER_PRIORITY, priority.as_str());
    headers.insert(HEADER_CHANNEL, channel.as_str());
    headers.insert("Herald-Replay-Of", message.sequence.to_string().as_str());
    let parent = message.headers.get(trace::HEADER).map(|v| v.as_str());
    let replayed = TraceParent::continue_from(parent);
    headers.insert(trace::HEADER, replayed.to_header().as_str());
    let publish = PublishMessage::build()
        .payload(message.payload.clone())
        .headers(headers)
        .message_id(format!("{id}-replay-{}", message.sequence));
    let ack = js
        .send_publish(names.subject(priority, channel), publish)
        .await
        .map_err(js_err)?
        .await
        .map_err(js_err)?;
    // Gone already: a concurrent replay (whose publish the message id made this one) or
    // delete removed it after we found it. The notification is back in NOTIFY either way.
    remove(&stream, message.sequence).await?;
    Ok(ack.sequence)
}

/// Deletes the DLQ message at `sequence`: `Ok(false)` when it was gone already.
async fn remove(stream: &Stream, sequence: u64) -> Result<bool, DlqError> {
    match stream.delete_message(sequence).await {
        Ok(_) => Ok(true),
        Err(e) => match e.kind() {
            jetstream::stream::DeleteMessageErrorKind::JetStream(err)
                if err.error_code() == jetstream::ErrorCode::SEQUENCE_NOT_FOUND =>
            {
                Ok(false)
            }
            _ => Err(js_err(e)),
        },
    }
}

/// Removes a dead letter for good.
pub async fn delete(
    js: &jetstream::Context,
    names: &Names,
    tenant: &Uuid,
    id: &Uuid,
) -> Result<(), DlqError> {
    let (stream, message) = find(js, names, tenant, id).await?;
    match remove(&stream, message.sequence).await? {
        true => Ok(()),
        false => Err(DlqError::NotFound),
    }
}
