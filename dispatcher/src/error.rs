//! The one error type a client can see, and the one place each cause gets its status.
//!
//! Every response body for an error has the shape
//! `{"error":{"code":"...","message":"...","field":"..."}}`; `field` is present when one
//! field of the request is to blame.

use http::StatusCode;
use serde::Serialize;

/// The code of the 429 an overloaded door answers for a class it sheds.
pub const OVERLOADED: &str = "overloaded";

/// An error answered to an HTTP client.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{status} {code}: {message}")]
pub struct ApiError {
    pub status: StatusCode,
    /// Stable, machine-readable cause; also the `reason` label of the rejection metric.
    pub code: &'static str,
    pub message: String,
    pub field: Option<String>,
    /// Seconds a client should wait before retrying (429 and 503).
    pub retry_after: Option<u32>,
    /// Methods the route accepts (405).
    pub allow: Option<Box<str>>,
    /// Further response headers (authentication challenge, rate-limit state).
    pub headers: Vec<(&'static str, String)>,
}

/// The body of every error response (the API contract's `Error`).
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = Error)]
pub struct Body<'a> {
    pub error: Inner<'a>,
}

/// What went wrong (the API contract's `ErrorDetail`).
#[derive(Serialize, utoipa::ToSchema)]
#[schema(as = ErrorDetail)]
pub struct Inner<'a> {
    /// Stable and machine-readable, e.g. `invalid_field`, `rate_limited`, `overloaded`.
    pub code: &'a str,
    /// For people.
    pub message: &'a str,
    /// The request field to blame, when there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<&'a str>,
}

impl From<crate::model::Invalid> for ApiError {
    fn from(invalid: crate::model::Invalid) -> Self {
        use crate::model::Invalid;
        match invalid {
            Invalid::MalformedJson(message) => Self::malformed_json(message),
            Invalid::Field { field, message } => Self::invalid_field(field, message),
            Invalid::Body(message) => Self::invalid_body(message),
            Invalid::BatchTooLarge { len, limit } => Self::batch_too_large(len, limit),
        }
    }
}

impl From<crate::idempotency::Unavailable> for ApiError {
    fn from(err: crate::idempotency::Unavailable) -> Self {
        Self::unavailable(err.to_string())
    }
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
            retry_after: None,
            allow: None,
            headers: Vec::new(),
        }
    }

    /// `detail`: serde's description, with line and column.
    pub fn malformed_json(detail: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "malformed_json",
            format!("malformed JSON: {detail}"),
        )
    }

    pub fn invalid_field(field: impl Into<String>, message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_field", message);
        e.field = Some(field.into());
        e
    }

    pub fn invalid_body(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid_body", message)
    }

    pub fn body_too_large(limit: usize) -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            format!("request body is over the limit of {limit} bytes"),
        )
    }

    pub fn batch_too_large(len: usize, limit: usize) -> Self {
        let mut e = Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "batch_too_large",
            format!("batch has {len} items, over the limit of {limit}"),
        );
        e.field = Some(String::from("."));
        e
    }

    pub fn unsupported_media_type() -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "Content-Type must be application/json",
        )
    }

    pub fn body_timeout() -> Self {
        Self::new(
            StatusCode::REQUEST_TIMEOUT,
            "body_timeout",
            "request body was not received in time",
        )
    }

    pub fn body_read(err: impl std::fmt::Display) -> Self {
        Self::new(
            StatusCode::BAD_REQUEST,
            "body_read",
            format!("request body could not be read: {err}"),
        )
    }

    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "no such route")
    }

    /// `allow`: the route's methods, as the `Allow` header lists them.
    pub fn method_not_allowed(allow: impl Into<Box<str>>) -> Self {
        let allow = allow.into();
        let mut e = Self::new(
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
            format!("method not allowed; allowed: {allow}"),
        );
        e.allow = Some(allow);
        e
    }

    /// 401: no, a malformed, an unknown or a revoked API key (which one is not said).
    pub fn unauthorized(message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message);
        e.headers
            .push(("www-authenticate", String::from("Bearer realm=\"herald\"")));
        e
    }

    /// 404 for a resource that does not exist *or belongs to another tenant*: a tenant
    /// cannot learn that another's id exists.
    pub fn no_such(what: &str) -> Self {
        Self::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no such {what}"),
        )
    }

    /// 429: the tenant's token bucket is empty.
    pub fn rate_limited(decision: &crate::ratelimit::Decision, cost: u32) -> Self {
        let message = if cost > decision.limit {
            format!(
                "a request of {cost} notifications exceeds the tenant's burst of {}; send smaller batches",
                decision.limit
            )
        } else {
            String::from("the tenant's rate limit is exhausted; retry after the indicated time")
        };
        let mut e = Self::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message);
        e.retry_after = Some(decision.retry_after_secs.min(u64::from(u32::MAX)) as u32);
        e.headers = crate::ratelimit::headers(decision);
        e
    }

    pub fn queue_full(priority: crate::model::Priority) -> Self {
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            "queue_full",
            format!("the {priority} queue is full; retry later"),
        );
        e.retry_after = Some(1);
        e
    }

    /// The door sheds this class to keep higher ones fast (admission.rs); its code is
    /// [`OVERLOADED`].
    pub fn overloaded(priority: crate::model::Priority, retry_after: u32) -> Self {
        let mut e = Self::new(
            StatusCode::TOO_MANY_REQUESTS,
            OVERLOADED,
            format!(
                "Herald is overloaded and sheds {priority} priority first; retry after Retry-After, with jitter"
            ),
        );
        e.retry_after = Some(retry_after);
        e
    }

    pub fn idempotency_mismatch() -> Self {
        let mut e = Self::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency_key_reused",
            "this idempotency key was used for a different notification",
        );
        e.field = Some(String::from("idempotency_key"));
        e
    }

    /// A cancel of a notification that is past canceling.
    pub fn not_cancelable(status: &str) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            if status == "dead" {
                "already_dead"
            } else {
                "already_delivered"
            },
            format!("the notification is {status}; only one not yet delivered can be canceled"),
        )
    }

    /// A tenant's operation asked of the server's anonymous tenant (`--auth off`).
    pub fn no_tenant(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "no_tenant", message)
    }

    pub fn idempotency_in_progress() -> Self {
        let mut e = Self::new(
            StatusCode::CONFLICT,
            "idempotency_in_progress",
            "a request with this idempotency key is being processed; retry shortly",
        );
        e.retry_after = Some(1);
        e
    }

    pub fn unavailable(message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message);
        e.retry_after = Some(1);
        e
    }

    pub fn publish_failed(message: impl Into<String>) -> Self {
        let mut e = Self::new(StatusCode::SERVICE_UNAVAILABLE, "publish_failed", message);
        e.retry_after = Some(1);
        e
    }

    /// Over `--max-connections`: answered on the raw connection, before HTTP is served.
    pub fn too_many_connections() -> Self {
        let mut e = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "too_many_connections",
            "the server is at its connection limit; retry shortly",
        );
        e.retry_after = Some(1);
        e
    }

    pub fn shutting_down() -> Self {
        let mut e = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the server is shutting down",
        );
        e.retry_after = Some(1);
        e
    }

    /// The JSON body `{"error":{...}}`.
    pub fn body(&self) -> Vec<u8> {
        serde_json::to_vec(&Body {
            error: self.inner(),
        })
        .expect("serializing strings cannot fail")
    }

    /// The inner object, for embedding in batch results.
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self.inner()).expect("serializing strings cannot fail")
    }

    fn inner(&self) -> Inner<'_> {
        Inner {
            code: self.code,
            message: &self.message,
            field: self.field.as_deref(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_has_the_documented_shape() {
        let e = ApiError::invalid_field("recipient", "recipient must not be empty");
        let v: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
        assert_eq!(v["error"]["code"], "invalid_field");
        assert_eq!(v["error"]["field"], "recipient");
        assert_eq!(v["error"]["message"], "recipient must not be empty");
        let e = ApiError::not_found();
        let v: serde_json::Value = serde_json::from_slice(&e.body()).unwrap();
        assert!(v["error"].get("field").is_none());
    }
}
