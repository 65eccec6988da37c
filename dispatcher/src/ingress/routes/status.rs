//! Reading notifications back: `GET /v1/notifications/{id}`,
//! `GET /v1/notifications/{id}/attempts`, `GET /v1/notifications?status=&priority=&cursor=`
//! and the tenant's summary, `GET /v1/summary?window=`.

use super::query::ListParams;
use super::*;
use crate::status::{self, ListQuery, NotificationStatus};

/// `GET /v1/notifications/{id}`: the Redis cache first (which holds a notification from
/// the moment of its 202), then PostgreSQL. Another tenant's id is a 404, exactly like an
/// unknown one.
#[utoipa::path(
    get,
    path = "/v1/notifications/{id}",
    tag = "notifications",
    params(("id" = uuid::Uuid, Path, description = "The notification's id")),
    responses(
        (status = 200, description = "The notification's state: `accepted` from the moment its 202 is sent, then as recorded", body = NotificationStatus),
        (status = 404, description = "No such notification of this tenant", body = crate::error::Body),
        (status = 422, description = "`id` is not a UUID", body = crate::error::Body),
    )
)]
pub(super) async fn get_notification(
    state: &State,
    caller: &Caller,
    id: &str,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(id)?;
    let found = status::find(&state.status_cache, state.tenants.pool(), caller.tenant, id)
        .await
        .map_err(status_store_down)?;
    match found {
        Some(s) => Ok(json_of(StatusCode::OK, &s)),
        None => Err(ApiError::no_such("notification")),
    }
}

/// `GET /v1/notifications/{id}/attempts`: every recorded attempt, oldest first, from
/// PostgreSQL. Another tenant's id, or one not recorded yet, is a 404.
#[utoipa::path(
    get,
    path = "/v1/notifications/{id}/attempts",
    tag = "notifications",
    params(("id" = uuid::Uuid, Path, description = "The notification's id")),
    responses(
        (status = 200, description = "Every recorded attempt, oldest first", body = status::AttemptList),
        (status = 404, description = "No such notification of this tenant (yet)", body = crate::error::Body),
        (status = 422, description = "`id` is not a UUID", body = crate::error::Body),
    )
)]
pub(super) async fn list_attempts(
    state: &State,
    caller: &Caller,
    id: &str,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(id)?;
    let attempts = status::attempts(state.tenants.pool(), caller.tenant, id)
        .await
        .map_err(status_store_down)?
        .ok_or_else(|| ApiError::no_such("notification"))?;
    Ok(json_of(
        StatusCode::OK,
        &status::AttemptList { id, attempts },
    ))
}

/// `GET /v1/notifications?status=&priority=&channel=&since=&limit=&cursor=`: newest first,
/// keyset-paginated (`cursor` = the previous page's `next_cursor`).
#[utoipa::path(
    get,
    path = "/v1/notifications",
    tag = "notifications",
    params(
        ("status" = Option<status::Outcome>, Query, description = "Only notifications in this state"),
        ("priority" = Option<crate::model::Priority>, Query),
        ("channel" = Option<crate::model::Channel>, Query),
        ("since" = Option<chrono::DateTime<chrono::Utc>>, Query, description = "Accepted at or after this time (RFC 3339)"),
        ("cursor" = Option<uuid::Uuid>, Query, description = "The previous page's `next_cursor`"),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000, description = "Page size (default 100)"),
    ),
    responses(
        (status = 200, description = "A page, newest first", body = status::NotificationPage),
        (status = 422, description = "A query parameter is invalid (named in `error.field`)", body = crate::error::Body),
    )
)]
pub(super) async fn list_notifications(
    state: &State,
    caller: &Caller,
    query: &str,
) -> Result<HttpResponse, ApiError> {
    let p = ListParams::parse(
        query,
        &["status", "priority", "channel", "since", "cursor", "limit"],
    )?;
    let cursor = p
        .cursor
        .as_deref()
        .map(|c| {
            Uuid::parse_str(c).map_err(|_| {
                ApiError::invalid_field("cursor", "cursor must be a next_cursor value")
            })
        })
        .transpose()?;
    let q = ListQuery {
        status: p.status,
        priority: p.priority,
        channel: p.channel,
        since: p.since,
        cursor,
        limit: p.limit,
    };
    let (items, next_cursor) = status::list(state.tenants.pool(), caller.tenant, &q)
        .await
        .map_err(status_store_down)?;
    let page = status::NotificationPage { items, next_cursor };
    Ok(json_of(StatusCode::OK, &page))
}

/// `GET /v1/summary?window=`: the caller's notifications of the last `window` seconds by
/// priority and state, and its dead letters; what the console's overview shows. Only the
/// caller's own traffic: the process's metrics, which count every tenant's, answer on the
/// operators' port.
#[utoipa::path(
    get,
    path = "/v1/summary",
    tag = "notifications",
    params(
        ("window" = Option<u32>, Query, minimum = 1, maximum = 3600, description = "Seconds back from now (default 60)"),
    ),
    responses(
        (status = 200, description = "The tenant's recent notifications by priority and state, as recorded", body = status::Summary),
        (status = 422, description = "`window` is invalid", body = crate::error::Body),
        (status = 503, description = "PostgreSQL or the dead-letter queue cannot be read", body = crate::error::Body),
    )
)]
pub(super) async fn summary(
    state: &State,
    caller: &Caller,
    query: &str,
) -> Result<HttpResponse, ApiError> {
    let p = ListParams::parse(query, &["window"])?;
    let since = Utc::now() - p.window;
    let (counts, dead_letters) = tokio::join!(
        status::counts_since(state.tenants.pool(), caller.tenant, since),
        crate::dlq::count(&state.js, &state.names, &caller.tenant),
    );
    let summary = status::Summary {
        window_seconds: p.window.as_secs(),
        since,
        priorities: counts.map_err(status_store_down)?.to_vec(),
        dead_letters: dead_letters.map_err(super::dlq::dlq_error)?,
    };
    Ok(json_of(StatusCode::OK, &summary))
}

pub(super) fn status_store_down(err: sqlx::Error) -> ApiError {
    ApiError::unavailable(format!("status store (PostgreSQL): {err}"))
}
