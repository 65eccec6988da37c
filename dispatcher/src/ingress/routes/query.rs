//! Query strings of the list routes (status and DLQ).

use super::*;

/// The 422 for a query key a route does not take, naming it and the keys it does.
pub(super) fn unknown_parameter(key: &str, allowed: &[&str]) -> ApiError {
    ApiError::invalid_field(
        key,
        format!(
            "unknown query parameter {key:?}; allowed: {}",
            allowed.join(", ")
        ),
    )
}

/// The query string of the read routes: `?priority=&channel=&status=&since=&cursor=&until=&limit=&window=`
/// (each route says which keys it takes; any other key is a 422 naming it).
pub(super) struct ListParams {
    pub(super) priority: Option<Priority>,
    pub(super) channel: Option<Channel>,
    pub(super) status: Option<String>,
    pub(super) since: Option<chrono::DateTime<Utc>>,
    /// Dead letters that died at or after / before these times.
    pub(super) dead_after: Option<chrono::DateTime<Utc>>,
    pub(super) dead_before: Option<chrono::DateTime<Utc>>,
    pub(super) cursor: Option<String>,
    pub(super) until: Option<String>,
    pub(super) limit: usize,
    /// How far back a summary looks.
    pub(super) window: std::time::Duration,
}

impl ListParams {
    const MAX_LIMIT: usize = 1000;
    /// A summary reads every row of its window: an hour bounds what one request costs.
    const MAX_WINDOW_SECONDS: u64 = 3600;
    pub(super) fn parse(query: &str, allowed: &[&str]) -> Result<Self, ApiError> {
        let mut q = ListParams {
            priority: None,
            channel: None,
            status: None,
            since: None,
            dead_after: None,
            dead_before: None,
            cursor: None,
            until: None,
            limit: 100,
            window: std::time::Duration::from_secs(60),
        };
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            if !allowed.contains(&key.as_ref()) {
                return Err(unknown_parameter(&key, allowed));
            }
            let enum_value = || serde_json::Value::String(value.to_string());
            match key.as_ref() {
                "priority" => {
                    q.priority = Some(serde_json::from_value(enum_value()).map_err(|_| {
                        ApiError::invalid_field("priority", "priority must be high, medium or low")
                    })?)
                }
                "channel" => {
                    q.channel = Some(serde_json::from_value(enum_value()).map_err(|_| {
                        ApiError::invalid_field(
                            "channel",
                            "channel must be webhook, email, sms or push",
                        )
                    })?)
                }
                "status" => {
                    // The recorded statuses are the contract's Outcome.
                    serde_json::from_value::<crate::status::Outcome>(enum_value()).map_err(
                        |_| {
                            ApiError::invalid_field(
                                "status",
                                "status must be accepted, retrying, delivered, dead, canceled or expired",
                            )
                        },
                    )?;
                    q.status = Some(value.to_string());
                }
                "since" => q.since = Some(time(&key, &value)?),
                "dead_after" => q.dead_after = Some(time(&key, &value)?),
                "dead_before" => q.dead_before = Some(time(&key, &value)?),
                "cursor" => q.cursor = Some(value.to_string()),
                "until" => q.until = Some(value.to_string()),
                "limit" => {
                    q.limit = value
                        .parse()
                        .ok()
                        .filter(|l| (1..=Self::MAX_LIMIT).contains(l))
                        .ok_or_else(|| {
                            ApiError::invalid_field("limit", "limit must be 1 to 1000")
                        })?
                }
                "window" => {
                    q.window = value
                        .parse()
                        .ok()
                        .filter(|w| (1..=Self::MAX_WINDOW_SECONDS).contains(w))
                        .map(std::time::Duration::from_secs)
                        .ok_or_else(|| {
                            ApiError::invalid_field("window", "window must be 1 to 3600 seconds")
                        })?
                }
                _ => unreachable!("only allowed keys get here"),
            }
        }
        Ok(q)
    }
}

/// An RFC 3339 time in query parameter `name`.
fn time(name: &str, value: &str) -> Result<chrono::DateTime<Utc>, ApiError> {
    chrono::DateTime::parse_from_rfc3339(value)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|_| {
            ApiError::invalid_field(
                name,
                format!("{name} must be an RFC 3339 time like 2026-11-26T10:00:00Z"),
            )
        })
}
