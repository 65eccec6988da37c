//! The dead-letter API: `GET /v1/dlq`, `POST /v1/dlq/replay`, `DELETE /v1/dlq`,
//! `POST /v1/dlq/{id}/replay`, `DELETE /v1/dlq/{id}`.

use super::query::ListParams;
use super::*;
use crate::dlq;

/// Which dead letters a list, a bulk replay or a bulk delete takes, as the contract describes the query
/// (`ListParams` parses it).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub(super) struct DeadLetterFilter {
    priority: Option<crate::model::Priority>,
    channel: Option<crate::model::Channel>,
    /// The previous page's `next_cursor`.
    cursor: Option<u64>,
    /// The first page's `until`: paging ends at the dead letters that existed when it
    /// began.
    until: Option<u64>,
    /// Only dead letters that died at or after this time (RFC 3339): with `dead_before`,
    /// the window of an outage to recover.
    dead_after: Option<chrono::DateTime<chrono::Utc>>,
    /// Only dead letters that died before this time (RFC 3339).
    dead_before: Option<chrono::DateTime<chrono::Utc>>,
    /// Page size (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
}

/// The answer of `POST /v1/dlq/replay`.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct BulkReplay {
    replayed: usize,
    /// Dead letters of the page that could not be replayed (they stay).
    failed: usize,
    /// Pass as `cursor`, with `until`, to replay the next page; absent on
    /// the last.
    next_cursor: Option<u64>,
    /// Pass back with `cursor`: the last DLQ sequence this paging covers, so that it
    /// ends at the dead letters that existed when it began.
    until: u64,
}

/// The answer of `DELETE /v1/dlq`.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct BulkDelete {
    deleted: usize,
    /// Dead letters of the page that were gone already or could not be deleted.
    failed: usize,
    /// Pass as `cursor`, with `until`, to delete the next page; absent on
    /// the last.
    next_cursor: Option<u64>,
    /// Pass back with `cursor`: the last DLQ sequence this paging covers, so that it
    /// ends at the dead letters that existed when it began.
    until: u64,
}

/// The answer of `POST /v1/dlq/{id}/replay`.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct Replayed {
    id: Uuid,
    #[schema(value_type = String, example = "replayed")]
    status: &'static str,
    /// Its new sequence in the NOTIFY stream.
    sequence: u64,
}

/// The tenant's dead letters matching the filter, a page of them.
async fn page(state: &State, caller: &Caller, query: &str) -> Result<dlq::Page, ApiError> {
    let filter = ListParams::parse(
        query,
        &[
            "priority",
            "channel",
            "cursor",
            "until",
            "limit",
            "dead_after",
            "dead_before",
        ],
    )?;
    let sequence = |name: &str, value: Option<&str>| match value {
        None => Ok(None),
        Some(v) => v
            .parse::<u64>()
            .map(Some)
            .map_err(|_| ApiError::invalid_field(name, format!("{name} must be a whole number"))),
    };
    let selection = dlq::Selection {
        tenant: &caller.tenant,
        priority: filter.priority,
        channel: filter.channel,
        cursor: sequence("cursor", filter.cursor.as_deref())?.unwrap_or(0),
        until: sequence("until", filter.until.as_deref())?,
        dead_after: filter.dead_after,
        dead_before: filter.dead_before,
        limit: filter.limit,
    };
    ensure_ready(state)?;
    dlq::list(&state.js, &state.names, &selection)
        .await
        .map_err(dlq_error)
}

/// `GET /v1/dlq?priority=&channel=&cursor=&until=&limit=`: oldest first.
#[utoipa::path(
    get,
    operation_id = "list_dead_letters",
    path = "/v1/dlq",
    tag = "dead letters",
    params(DeadLetterFilter),
    responses(
        (status = 200, description = "A page of the tenant's dead letters, oldest first", body = dlq::Page),
        (status = 422, description = "A query parameter is invalid (named in `error.field`)", body = crate::error::Body),
    )
)]
pub(super) async fn list(
    state: &State,
    caller: &Caller,
    query: &str,
) -> Result<HttpResponse, ApiError> {
    let page = page(state, caller, query).await?;
    Ok(json_of(StatusCode::OK, &page))
}

/// `POST /v1/dlq/replay?priority=&channel=&cursor=&until=&limit=`: replays one page of matches.
#[utoipa::path(
    post,
    operation_id = "replay_dead_letters",
    path = "/v1/dlq/replay",
    tag = "dead letters",
    params(DeadLetterFilter),
    responses(
        (status = 202, description = "One page of matching dead letters replayed: back in NOTIFY with a fresh attempt budget", body = BulkReplay),
        (status = 422, description = "A query parameter is invalid (named in `error.field`)", body = crate::error::Body),
    )
)]
pub(super) async fn replay_matching(
    state: &State,
    caller: &Caller,
    query: &str,
) -> Result<HttpResponse, ApiError> {
    let (replayed, failed, page) = bulk(state, caller, query, Bulk::Replay).await?;
    let body = BulkReplay {
        replayed,
        failed,
        next_cursor: page.next_cursor,
        until: page.until,
    };
    Ok(json_of(StatusCode::ACCEPTED, &body))
}

/// `DELETE /v1/dlq?priority=&channel=&cursor=&until=&limit=`: deletes one page of matches.
#[utoipa::path(
    delete,
    operation_id = "delete_dead_letters",
    path = "/v1/dlq",
    tag = "dead letters",
    params(DeadLetterFilter),
    responses(
        (status = 200, description = "One page of matching dead letters deleted for good", body = BulkDelete),
        (status = 422, description = "A query parameter is invalid (named in `error.field`)", body = crate::error::Body),
    )
)]
pub(super) async fn delete_matching(
    state: &State,
    caller: &Caller,
    query: &str,
) -> Result<HttpResponse, ApiError> {
    let (deleted, failed, page) = bulk(state, caller, query, Bulk::Delete).await?;
    let body = BulkDelete {
        deleted,
        failed,
        next_cursor: page.next_cursor,
        until: page.until,
    };
    Ok(json_of(StatusCode::OK, &body))
}

enum Bulk {
    Replay,
    Delete,
}

/// Applies `action` to one page of the tenant's matching dead letters, one at a time:
/// how many it did, how many failed, and the page (its items emptied).
async fn bulk(
    state: &State,
    caller: &Caller,
    query: &str,
    action: Bulk,
) -> Result<(usize, usize, dlq::Page), ApiError> {
    let mut page = page(state, caller, query).await?;
    let (mut done, mut failed) = (0, 0);
    for item in page.items.drain(..) {
        let Ok(id) = Uuid::parse_str(&item.id) else {
            failed += 1;
            continue;
        };
        let result = match action {
            Bulk::Replay => dlq::replay(&state.js, &state.names, &caller.tenant, &id)
                .await
                .map(drop),
            Bulk::Delete => dlq::delete(&state.js, &state.names, &caller.tenant, &id).await,
        };
        match result {
            Ok(()) => done += 1,
            Err(_) => failed += 1,
        }
    }
    Ok((done, failed, page))
}

/// `POST /v1/dlq/{id}/replay`: back into NOTIFY with a fresh attempt budget.
#[utoipa::path(
    post,
    operation_id = "replay_dead_letter",
    path = "/v1/dlq/{id}/replay",
    tag = "dead letters",
    params(("id" = uuid::Uuid, Path, description = "The dead notification's id")),
    responses(
        (status = 202, description = "Back in NOTIFY with a fresh attempt budget", body = Replayed),
        (status = 404, description = "No such dead letter of this tenant", body = crate::error::Body),
        (status = 422, description = "`id` is not a UUID", body = crate::error::Body),
    )
)]
pub(super) async fn replay(
    state: &State,
    caller: &Caller,
    id: &str,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(id)?;
    ensure_ready(state)?;
    let sequence = dlq::replay(&state.js, &state.names, &caller.tenant, &id)
        .await
        .map_err(dlq_error)?;
    let body = Replayed {
        id,
        status: "replayed",
        sequence,
    };
    Ok(json_of(StatusCode::ACCEPTED, &body))
}

/// `DELETE /v1/dlq/{id}`.
#[utoipa::path(
    delete,
    operation_id = "delete_dead_letter",
    path = "/v1/dlq/{id}",
    tag = "dead letters",
    params(("id" = uuid::Uuid, Path, description = "The dead notification's id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such dead letter of this tenant", body = crate::error::Body),
        (status = 422, description = "`id` is not a UUID", body = crate::error::Body),
    )
)]
pub(super) async fn delete(
    state: &State,
    caller: &Caller,
    id: &str,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(id)?;
    ensure_ready(state)?;
    dlq::delete(&state.js, &state.names, &caller.tenant, &id)
        .await
        .map_err(dlq_error)?;
    Ok(no_content())
}

pub(super) fn dlq_error(err: dlq::DlqError) -> ApiError {
    match err {
        dlq::DlqError::NotFound => ApiError::no_such("dead letter"),
        dlq::DlqError::JetStream(e) => ApiError::unavailable(format!("dead-letter queue: {e}")),
    }
}
