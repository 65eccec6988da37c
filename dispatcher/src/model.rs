//! The notification as clients send it, as it is validated, and as it travels on the wire.
//!
//! Parsing is two-speed: the common case is one `serde_json` pass into borrowed types, with
//! `payload` and `metadata` kept as raw JSON slices (never built into a value tree, never
//! re-encoded). Only when that pass fails is the input parsed again, through
//! `serde_path_to_error`, to name the offending field in the error.

use std::fmt;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::egress::EgressPolicy;

/// Why a request body does not make a notification. The HTTP edge (error.rs) decides
/// what a client is told: 400 for broken JSON, 413 for a batch over the limit, 422 for
/// the rest, naming the field when one is to blame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Invalid {
    /// The JSON itself is broken (with serde's line and column).
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    /// One field is to blame.
    #[error("{field}: {message}")]
    Field { field: String, message: String },
    /// The body as a whole (not an object, an empty batch, ...).
    #[error("{0}")]
    Body(String),
    #[error("batch has {len} items, over the limit of {limit}")]
    BatchTooLarge { len: usize, limit: usize },
}

impl Invalid {
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        Invalid::Field {
            field: field.into(),
            message: message.into(),
        }
    }

    pub fn body(message: impl Into<String>) -> Self {
        Invalid::Body(message.into())
    }

    pub fn batch_too_large(len: usize, limit: usize) -> Self {
        Invalid::BatchTooLarge { len, limit }
    }
}

/// Urgency class of a notification. The discriminant is the scheduler's queue index.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize, ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    High = 0,
    Medium = 1,
    Low = 2,
}

impl Priority {
    /// How many priorities there are; exhaustive, as [`Channel::COUNT`] is.
    pub const COUNT: usize = match Priority::Low {
        Priority::High | Priority::Medium | Priority::Low => Priority::Low as usize + 1,
    };

    pub const ALL: [Priority; Priority::COUNT] = [Priority::High, Priority::Medium, Priority::Low];

    pub const fn index(self) -> usize {
        self as usize
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Priority::High => "high",
            Priority::Medium => "medium",
            Priority::Low => "low",
        }
    }

    /// The priority named exactly `name` (`high`, `medium`, `low`).
    pub fn from_name(name: &str) -> Option<Priority> {
        Priority::ALL.into_iter().find(|p| p.as_str() == name)
    }
}

impl fmt::Display for Priority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How a notification reaches its recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    Webhook = 0,
    Email = 1,
    Sms = 2,
    Push = 3,
}

impl Channel {
    /// How many channels there are. The match is exhaustive, so a new variant does not
    /// compile until it is counted here (and then sized into every per-channel array).
    pub const COUNT: usize = match Channel::Push {
        Channel::Webhook | Channel::Email | Channel::Sms | Channel::Push => {
            Channel::Push as usize + 1
        }
    };

    pub const ALL: [Channel; Channel::COUNT] = [
        Channel::Webhook,
        Channel::Email,
        Channel::Sms,
        Channel::Push,
    ];

    pub const fn index(self) -> usize {
        self as usize
    }

    pub const fn as_str(self) -> &'static str {
        match self {
            Channel::Webhook => "webhook",
            Channel::Email => "email",
            Channel::Sms => "sms",
            Channel::Push => "push",
        }
    }
}

impl fmt::Display for Channel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

thread_local! {
    /// One v7 context per thread: ids stay monotonic within a thread (and time-ordered
    /// across threads to the millisecond) without `Uuid::now_v7`'s process-wide mutex.
    static ID_CONTEXT: uuid::timestamp::context::ContextV7 =
        const { uuid::timestamp::context::ContextV7::new() };
}

/// A new notification id: UUIDv7, lock-free.
pub fn new_id() -> Uuid {
    ID_CONTEXT.with(|context| Uuid::new_v7(uuid::Timestamp::now(context)))
}

/// Limits applied while validating a request.
#[derive(Debug, Clone, Copy)]
pub struct Limits<'p> {
    /// Maximum size of `payload` as sent, in bytes (the caller's tenant's, or the server's).
    pub max_payload: usize,
    /// Webhook URLs with an IP literal outside this policy are refused at the door.
    pub egress: &'p EgressPolicy,
    /// How far ahead `send_at` may be ([`schedule_horizon`]).
    pub schedule_horizon: Duration,
}

impl Limits<'static> {
    /// Public webhook destinations only, payloads up to `max_payload`, `send_at` within the
    /// default retention's horizon.
    pub fn public(max_payload: usize) -> Self {
        Limits {
            max_payload,
            egress: &crate::egress::PUBLIC_ONLY,
            schedule_horizon: schedule_horizon(
                crate::jetstream::NatsConfig::default().stream_max_age,
            ),
        }
    }
}

/// How far ahead a `send_at` can be kept: a waiting notification lives in the HOLD stream,
/// which keeps messages `stream_max_age` (`--stream-max-age`) from when they were held, so
/// a `send_at` further ahead would age out unseen. An hour (or half the age, if that is
/// less) is kept back for a backlog between acceptance and the hold. Retries need none:
/// each one waits in HOLD afresh and comes back to NOTIFY as a new message.
pub fn schedule_horizon(stream_max_age: Duration) -> Duration {
    const MARGIN: Duration = Duration::from_secs(3600);
    stream_max_age.saturating_sub(MARGIN.min(stream_max_age / 2))
}

/// Longest accepted recipient, idempotency key and metadata; fixed because no legitimate
/// caller needs more and they are stored per message.
pub const MAX_RECIPIENT_LEN: usize = 2048;
pub const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;
pub const MAX_METADATA_LEN: usize = 16 * 1024;

/// A notification as sent by a client: `POST /v1/notifications` or one batch item. The
/// schema attributes are the API contract's; `parse_notification` enforces them.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = Notification)]
pub struct NotificationRequest<'a> {
    /// Defaults to `medium`, the class for ordinary traffic.
    #[serde(default)]
    #[schema(value_type = Priority, required = false, default = "medium")]
    pub priority: Option<Priority>,
    #[schema(value_type = Channel, required = true)]
    pub channel: Option<Channel>,
    /// A webhook's `http(s)` URL, an email address, an E.164 phone number (`sms`) or a
    /// device token (`push`).
    #[serde(borrow, default)]
    #[schema(value_type = String, required = true, min_length = 1, max_length = 2048)]
    pub recipient: Option<std::borrow::Cow<'a, str>>,
    /// What is delivered: a JSON object (for email `subject` and `text`, for SMS `text`,
    /// for push `title` and `body`).
    #[serde(borrow, default)]
    #[schema(value_type = Object, required = true)]
    pub payload: Option<&'a RawValue>,
    /// Same as the `Idempotency-Key` header.
    #[serde(borrow, default)]
    #[schema(value_type = Option<String>, required = false, min_length = 1, max_length = 255)]
    pub idempotency_key: Option<std::borrow::Cow<'a, str>>,
    /// Deliver no earlier than this.
    #[serde(default)]
    #[schema(required = false)]
    pub send_at: Option<DateTime<Utc>>,
    /// Dead-letter instead of delivering after this; must be in the future and after
    /// `send_at`.
    #[serde(default)]
    #[schema(required = false)]
    pub expires_at: Option<DateTime<Utc>>,
    /// Any JSON object the caller wants kept with the notification (at most 16 KiB). It
    /// stays with Herald: receivers never see it.
    #[serde(borrow, default)]
    #[schema(value_type = Option<Object>, required = false)]
    pub metadata: Option<&'a RawValue>,
    /// The event's type (`invoice.paid`), given to a webhook's receiver as the body's
    /// `type`: 1 to 128 of `A-Z a-z 0-9 . _ - :`.
    #[serde(borrow, default, rename = "type")]
    #[schema(value_type = Option<String>, required = false, min_length = 1, max_length = 128, pattern = "^[A-Za-z0-9._:-]+$")]
    pub event_type: Option<std::borrow::Cow<'a, str>>,
}

/// Longest `type`, in bytes.
pub const MAX_EVENT_TYPE_LEN: usize = 128;

/// A validated notification, ready to be given an id and encoded.
#[derive(Debug)]
pub struct Validated<'a> {
    pub priority: Priority,
    pub channel: Channel,
    pub recipient: std::borrow::Cow<'a, str>,
    pub payload: &'a RawValue,
    pub idempotency_key: Option<std::borrow::Cow<'a, str>>,
    pub send_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub metadata: Option<&'a RawValue>,
    pub event_type: Option<std::borrow::Cow<'a, str>>,
}

/// Version of the wire document; bumped on any incompatible change.
pub const WIRE_VERSION: u8 = 1;

/// The document published to JetStream for one accepted notification.
///
/// JSON, because the payload arrives as JSON and is embedded byte for byte (no re-encoding),
/// consumers in any language read it, and `nats stream view` shows it as it is. Priority and
/// channel are also in the subject and headers so consumers can route without parsing.
#[derive(Debug, Serialize, Deserialize)]
pub struct WireNotification<'a> {
    pub v: u8,
    pub id: Uuid,
    /// The tenant that sent it ([`crate::tenants::ANONYMOUS`] without authentication).
    #[serde(default)]
    pub tenant: Uuid,
    pub priority: Priority,
    pub channel: Channel,
    #[serde(borrow)]
    pub recipient: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    pub payload: &'a RawValue,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub idempotency_key: Option<std::borrow::Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub send_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<DateTime<Utc>>,
    #[serde(borrow, default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<&'a RawValue>,
    pub accepted_at: DateTime<Utc>,
    #[serde(
        borrow,
        default,
        rename = "type",
        skip_serializing_if = "Option::is_none"
    )]
    pub event_type: Option<std::borrow::Cow<'a, str>>,
}

impl<'a> Validated<'a> {
    /// Encodes the wire document for this notification under `id`.
    pub fn encode(&self, id: Uuid, tenant: Uuid, accepted_at: DateTime<Utc>) -> Bytes {
        let wire = WireNotification {
            v: WIRE_VERSION,
            id,
            tenant,
            priority: self.priority,
            channel: self.channel,
            recipient: self.recipient.clone(),
            payload: self.payload,
            idempotency_key: self.idempotency_key.clone(),
            send_at: self.send_at,
            expires_at: self.expires_at,
            metadata: self.metadata,
            accepted_at,
            event_type: self.event_type.clone(),
        };
        let mut buf = Vec::with_capacity(self.payload.get().len() + self.recipient.len() + 192);
        serde_json::to_writer(&mut buf, &wire).expect("serializing owned JSON cannot fail");
        Bytes::from(buf)
    }
}

/// Parses one notification from a JSON document and validates it.
pub fn parse_notification<'a>(
    body: &'a [u8],
    limits: &Limits,
    now: DateTime<Utc>,
) -> Result<Validated<'a>, Invalid> {
    // serde also reads a struct from an array of its fields in order; a notification is
    // an object only.
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return Err(
            match serde_json::from_slice::<serde::de::IgnoredAny>(body) {
                Err(err) => describe_parse_error::<serde::de::IgnoredAny>(body, err),
                Ok(_) => Invalid::body("a notification must be a JSON object"),
            },
        );
    }
    match serde_json::from_slice::<NotificationRequest<'a>>(body) {
        Ok(request) => validate(request, limits, now),
        Err(err) => Err(describe_parse_error::<NotificationRequest<'a>>(body, err)),
    }
}

/// Splits a batch body into its items (each parsed later on its own, so one bad item does
/// not fail the others): a non-empty JSON array of at most `max_batch` values.
pub fn parse_batch(body: &[u8], max_batch: usize) -> Result<Vec<&RawValue>, Invalid> {
    let items: Vec<&RawValue> = serde_json::from_slice(body).map_err(|err| {
        match describe_parse_error::<Vec<&RawValue>>(body, err) {
            e @ Invalid::MalformedJson(_) => e,
            _ => Invalid::body("body must be a JSON array of notifications"),
        }
    })?;
    if items.is_empty() {
        return Err(Invalid::body("batch is empty"));
    }
    if items.len() > max_batch {
        return Err(Invalid::batch_too_large(items.len(), max_batch));
    }
    Ok(items)
}

/// Turns a failed parse into the error the client sees: 400 with line and column when the
/// JSON itself is broken, 422 naming the field when a value has the wrong type or name.
pub fn describe_parse_error<'a, T: Deserialize<'a>>(
    body: &'a [u8],
    err: serde_json::Error,
) -> Invalid {
    use serde_json::error::Category;
    match err.classify() {
        Category::Syntax | Category::Eof | Category::Io => Invalid::MalformedJson(err.to_string()),
        Category::Data => {
            // Second pass only on the error path, to learn which field failed.
            let mut de = serde_json::Deserializer::from_slice(body);
            let (path, inner) = match serde_path_to_error::deserialize::<_, T>(&mut de) {
                Err(e) => (e.path().to_string(), e.into_inner()),
                Ok(_) => (String::from("."), err),
            };
            let message = strip_position(&inner.to_string());
            let field = if path == "." {
                // Unknown and missing fields are reported at the containing object.
                field_named_in(&message)
            } else {
                Some(path)
            };
            match field {
                Some(field) => Invalid::field(field, message),
                None => Invalid::body(message),
            }
        }
    }
}

fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message.to_string(),
    }
}

fn field_named_in(message: &str) -> Option<String> {
    let start = message.find('`')? + 1;
    let len = message[start..].find('`')?;
    Some(message[start..start + len].to_string())
}

fn validate<'a>(
    request: NotificationRequest<'a>,
    limits: &Limits,
    now: DateTime<Utc>,
) -> Result<Validated<'a>, Invalid> {
    let priority = request.priority.unwrap_or(Priority::Medium);
    let channel = request
        .channel
        .ok_or_else(|| Invalid::field("channel", "missing field `channel`"))?;
    let recipient = request
        .recipient
        .ok_or_else(|| Invalid::field("recipient", "missing field `recipient`"))?;
    validate_recipient(channel, &recipient, limits.egress)?;
    let payload = request
        .payload
        .ok_or_else(|| Invalid::field("payload", "missing field `payload`"))?;
    if !payload.get().starts_with('{') {
        return Err(Invalid::field("payload", "payload must be a JSON object"));
    }
    if payload.get().len() > limits.max_payload {
        return Err(Invalid::field(
            "payload",
            format!(
                "payload is {} bytes, over the limit of {} bytes",
                payload.get().len(),
                limits.max_payload
            ),
        ));
    }
    if let Some(key) = &request.idempotency_key {
        if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_LEN {
            return Err(Invalid::field(
                "idempotency_key",
                format!("idempotency_key must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} bytes"),
            ));
        }
    }
    if let Some(event_type) = &request.event_type {
        let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | ':');
        if event_type.is_empty()
            || event_type.len() > MAX_EVENT_TYPE_LEN
            || !event_type.chars().all(allowed)
        {
            return Err(Invalid::field(
                "type",
                format!("type must be 1 to {MAX_EVENT_TYPE_LEN} of A-Z a-z 0-9 . _ - :"),
            ));
        }
    }
    if let Some(metadata) = request.metadata {
        if !metadata.get().starts_with('{') {
            return Err(Invalid::field("metadata", "metadata must be a JSON object"));
        }
        if metadata.get().len() > MAX_METADATA_LEN {
            return Err(Invalid::field(
                "metadata",
                format!("metadata is over the limit of {MAX_METADATA_LEN} bytes"),
            ));
        }
    }
    if let Some(send_at) = request.send_at {
        let horizon =
            chrono::Duration::from_std(limits.schedule_horizon).unwrap_or(chrono::Duration::MAX);
        if send_at - now > horizon {
            return Err(Invalid::field(
                "send_at",
                format!(
                    "send_at is more than {} ahead, the longest Herald keeps a waiting notification (--stream-max-age less a margin)",
                    humantime::format_duration(limits.schedule_horizon)
                ),
            ));
        }
    }
    if let Some(expires_at) = request.expires_at {
        if expires_at <= now {
            return Err(Invalid::field("expires_at", "expires_at is in the past"));
        }
        if request.send_at.is_some_and(|send_at| send_at >= expires_at) {
            return Err(Invalid::field(
                "expires_at",
                "expires_at must be after send_at",
            ));
        }
    }
    Ok(Validated {
        priority,
        channel,
        recipient,
        payload,
        idempotency_key: request.idempotency_key,
        send_at: request.send_at,
        expires_at: request.expires_at,
        metadata: request.metadata,
        event_type: request.event_type,
    })
}

/// Cheap, channel-specific checks that catch a wrong recipient at the door instead of in the
/// dead-letter queue. Providers do the full validation.
fn validate_recipient(
    channel: Channel,
    recipient: &str,
    egress: &EgressPolicy,
) -> Result<(), Invalid> {
    let fail = |why: &str| Err(Invalid::field("recipient", why));
    if recipient.trim().is_empty() {
        return fail("recipient must not be empty");
    }
    if recipient.len() > MAX_RECIPIENT_LEN {
        return fail("recipient is over 2048 bytes");
    }
    match channel {
        Channel::Webhook => match recipient.parse::<http::Uri>() {
            Ok(uri)
                if matches!(uri.scheme_str(), Some("http" | "https"))
                    && uri.authority().is_some() =>
            {
                egress
                    .check_uri(&uri)
                    .map_err(|refused| Invalid::field("recipient", refused.to_string()))
            }
            _ => fail("webhook recipient must be an absolute http or https URL"),
        },
        Channel::Email => match recipient.split_once('@') {
            Some((local, domain))
                if !local.is_empty()
                    && !domain.is_empty()
                    && !domain.contains('@')
                    && !recipient.contains(char::is_whitespace) =>
            {
                Ok(())
            }
            _ => fail("email recipient must be an address like name@example.com"),
        },
        Channel::Sms => {
            let digits = recipient.strip_prefix('+').unwrap_or("");
            if (8..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit()) {
                Ok(())
            } else {
                fail("sms recipient must be an E.164 number like +4915112345678")
            }
        }
        Channel::Push => {
            if recipient.contains(char::is_whitespace) {
                fail("push recipient must be a device token without whitespace")
            } else {
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ApiError;

    fn limits() -> Limits<'static> {
        Limits::public(64)
    }

    /// SQL cannot read the enums, so the table's CHECK lists are held to them here.
    #[test]
    fn the_notifications_table_admits_exactly_the_channels_and_priorities() {
        let sql = include_str!("../../migrations/20261126000002_notifications.sql");
        let listed = |column: &str| -> Vec<String> {
            let check = format!("CHECK ({column} IN (");
            let start = sql.find(&check).expect("the column has a CHECK list") + check.len();
            let end = start + sql[start..].find(')').unwrap();
            sql[start..end]
                .split(',')
                .map(|v| v.trim().trim_matches('\'').to_string())
                .collect()
        };
        assert_eq!(
            listed("channel"),
            Channel::ALL.map(|c| c.as_str().to_string())
        );
        assert_eq!(
            listed("priority"),
            Priority::ALL.map(|p| p.as_str().to_string())
        );
    }

    /// Parses as the ingress does, and tells the error as a client would see it.
    fn parse(body: &str) -> Result<Validated<'_>, ApiError> {
        parse_notification(body.as_bytes(), &limits(), Utc::now()).map_err(ApiError::from)
    }

    /// Found by the fuzz checks: serde reads a struct from an array of its fields, so this
    /// array was accepted as a notification; and a non-object body was an `invalid_field`
    /// naming no field.
    #[test]
    fn only_an_object_is_a_notification() {
        for body in [
            r#"["high","sms","+4915112345678",{},null,null,null,null]"#,
            r#""text""#,
            "42",
            " null ",
        ] {
            let err = parse(body).expect_err(body);
            assert_eq!(
                (err.status.as_u16(), err.code),
                (422, "invalid_body"),
                "{body}"
            );
            assert_eq!(err.field, None);
        }
        assert_eq!(parse("[1,").unwrap_err().code, "malformed_json");
    }

    #[test]
    fn valid_request_defaults_priority_to_medium() {
        let v =
            parse(r#"{"channel":"sms","recipient":"+4915112345678","payload":{"t":1}}"#).unwrap();
        assert_eq!(v.priority, Priority::Medium);
        assert_eq!(v.channel, Channel::Sms);
        assert_eq!(v.payload.get(), r#"{"t":1}"#);
    }

    #[test]
    fn wire_document_embeds_payload_verbatim_and_round_trips() {
        let body = r#"{"priority":"high","channel":"webhook","recipient":"http://x/y","payload":{"a":[1,2,{"b":null}]},"metadata":{"k":"v"}}"#;
        let v = parse(body).unwrap();
        let id = new_id();
        let bytes = v.encode(id, Uuid::nil(), Utc::now());
        let wire: WireNotification<'_> = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(wire.id, id);
        assert_eq!(wire.priority, Priority::High);
        assert_eq!(wire.payload.get(), r#"{"a":[1,2,{"b":null}]}"#);
        assert_eq!(wire.metadata.unwrap().get(), r#"{"k":"v"}"#);
        assert_eq!(wire.v, WIRE_VERSION);
    }

    #[test]
    fn ids_are_v7_and_increase_within_a_thread() {
        let ids: Vec<Uuid> = (0..10_000).map(|_| new_id()).collect();
        assert!(ids.iter().all(|id| id.get_version_num() == 7));
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn syntax_error_is_400_with_position() {
        let err = parse(r#"{"channel": "sms",,}"#).unwrap_err();
        assert_eq!(err.status, http::StatusCode::BAD_REQUEST);
        assert_eq!(err.code, "malformed_json");
        assert!(err.message.contains("line 1 column"), "{}", err.message);
    }

    #[test]
    fn field_errors_name_the_field() {
        let cases = [
            (
                r#"{"priority":"urgent","channel":"sms","recipient":"+4915112345678","payload":{}}"#,
                "priority",
            ),
            (
                r#"{"channel":"fax","recipient":"x","payload":{}}"#,
                "channel",
            ),
            (
                r#"{"channel":"sms","recipient":"","payload":{}}"#,
                "recipient",
            ),
            (
                r#"{"channel":"sms","recipient":"+4915112345678","payload":[1]}"#,
                "payload",
            ),
            (
                r#"{"channel":"sms","recipient":"+4915112345678"}"#,
                "payload",
            ),
            (
                r#"{"channel":"sms","recipient":"+4915112345678","payload":{},"colour":1}"#,
                "colour",
            ),
            (
                r#"{"channel":"sms","recipient":12,"payload":{}}"#,
                "recipient",
            ),
            (
                r#"{"channel":"webhook","recipient":"ftp://x","payload":{}}"#,
                "recipient",
            ),
            (
                r#"{"channel":"sms","recipient":"+4915112345678","payload":{},"send_at":"tomorrow"}"#,
                "send_at",
            ),
            (
                r#"{"channel":"sms","recipient":"+4915112345678","payload":{},"expires_at":"2001-01-01T00:00:00Z"}"#,
                "expires_at",
            ),
            (
                r#"{"channel":"sms","recipient":"+4915112345678","payload":{"big":"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx"}}"#,
                "payload",
            ),
        ];
        for (body, field) in cases {
            let err = parse(body).unwrap_err();
            assert_eq!(err.status, http::StatusCode::UNPROCESSABLE_ENTITY, "{body}");
            assert_eq!(err.field.as_deref(), Some(field), "{body}: {}", err.message);
        }
    }

    mod round_trip {
        use super::*;
        use proptest::prelude::*;

        /// Any JSON value, nested a little, with strings that need escaping.
        fn json_value() -> impl Strategy<Value = serde_json::Value> {
            let leaf = prop_oneof![
                Just(serde_json::Value::Null),
                any::<bool>().prop_map(serde_json::Value::Bool),
                any::<i64>().prop_map(|n| serde_json::json!(n)),
                any::<f64>()
                    .prop_filter("finite", |f| f.is_finite())
                    .prop_map(|f| serde_json::json!(f)),
                "\\PC{0,12}|[\"\\\\\u{0}-\u{1f}\u{2028}é😀]{0,6}"
                    .prop_map(serde_json::Value::String),
            ];
            leaf.prop_recursive(3, 24, 4, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::Array),
                    prop::collection::btree_map("\\PC{0,8}", inner, 0..4)
                        .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
                ]
            })
        }

        fn object() -> impl Strategy<Value = serde_json::Value> {
            prop::collection::btree_map("\\PC{0,8}", json_value(), 0..5)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect()))
        }

        proptest! {
            /// Whatever a client sends that validates is carried in the wire document with
            /// the payload byte for byte as sent, and every field decodes to what was sent.
            #[test]
            fn the_wire_document_carries_the_request_exactly(
                payload in object(),
                metadata in proptest::option::of(object()),
                key in proptest::option::of("[ -~]{1,40}"),
                local in "[a-z0-9._%+-]{1,20}",
                priority in prop_oneof![Just(Priority::High), Just(Priority::Medium), Just(Priority::Low)],
            ) {
                let mut request = serde_json::json!({
                    "priority": priority,
                    "channel": "email",
                    "recipient": format!("{local}@example.com"),
                    "payload": payload,
                });
                if let Some(m) = &metadata {
                    request["metadata"] = m.clone();
                }
                if let Some(k) = &key {
                    request["idempotency_key"] = serde_json::json!(k);
                }
                let body = serde_json::to_vec(&request).unwrap();
                let limits = Limits::public(usize::MAX);
                let validated = parse_notification(&body, &limits, Utc::now()).unwrap();
                let id = new_id();
                let tenant = Uuid::new_v4();
                let at = Utc::now();
                let bytes = validated.encode(id, tenant, at);
                let wire: WireNotification<'_> = serde_json::from_slice(&bytes).unwrap();
                prop_assert_eq!(wire.id, id);
                prop_assert_eq!(wire.tenant, tenant);
                prop_assert_eq!(wire.priority, priority);
                prop_assert_eq!(wire.channel, Channel::Email);
                prop_assert_eq!(wire.recipient.as_ref(), format!("{local}@example.com"));
                prop_assert_eq!(wire.accepted_at, at);
                prop_assert_eq!(wire.idempotency_key.as_deref(), key.as_deref());
                // Byte for byte: the raw slice of the request is what travels.
                let sent_payload = serde_json::to_string(&request["payload"]).unwrap();
                prop_assert_eq!(wire.payload.get(), sent_payload.as_str());
                let decoded: serde_json::Value = serde_json::from_str(wire.payload.get()).unwrap();
                prop_assert_eq!(&decoded, &request["payload"]);
                prop_assert_eq!(
                    wire.metadata.map(|m| serde_json::from_str::<serde_json::Value>(m.get()).unwrap()),
                    metadata
                );
            }
        }
    }
}
