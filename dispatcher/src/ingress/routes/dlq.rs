//! The dead-letter API: `GET /v1/dlq`, `POST /v1/dlq/replay`, `POST /v1/dlq/{id}/replay`,
//! `DELETE /v1/dlq/{id}`.

use super::query::ListParams;
use super::*;
use crate::dlq;

/// The dead-letter API: `GET /v1/dlq`, `POST /v1/dlq/replay`, `POST /v1/dlq/{id}/replay`,
/// `DELETE /v1/dlq/{id}`.
pub(super) async fn dlq_route(
    state: &State,
    caller: &Caller,
    path: &str,
    method: &Method,
    query: &str,
) -> Result<HttpResponse, ApiError> {
    let rest: Vec<&str> = path
        .trim_start_matches("/v1/dlq")
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    let allow = match rest.as_slice() {
        [] => "GET",
        ["replay"] | [_, "replay"] => "POST",
        [_] => "DELETE",
        _ => return Err(ApiError::not_found()),
    };
    if method.as_str() != allow {
        return Err(ApiError::method_not_allowed(allow));
    }
    let filter = ListParams::parse(query, &["priority", "channel", "cursor", "limit"])?;
    let cursor: u64 = match filter.cursor.as_deref() {
        None => 0,
        Some(c) => c
            .parse()
            .map_err(|_| ApiError::invalid_field("cursor", "cursor must be a whole number"))?,
    };
    ensure_ready(state)?;
    let (js, names) = (&state.js, &state.names);
    let listed = match rest.as_slice() {
        [] | ["replay"] => Some(
            dlq::list(
                js,
                names,
                &caller.tenant,
                filter.priority,
                filter.channel,
                cursor,
                filter.limit,
            )
            .await
            .map_err(dlq_error)?,
        ),
        _ => None,
    };
    match (rest.as_slice(), listed) {
        ([], Some(page)) => {
            let body = serde_json::json!({ "items": page.items, "next_cursor": page.next_cursor });
            Ok(json(StatusCode::OK, body.to_string().into_bytes()))
        }
        (["replay"], Some(page)) => {
            let (mut replayed, mut failed) = (0, 0);
            for item in &page.items {
                match Uuid::parse_str(&item.id) {
                    Ok(id) if dlq::replay(js, names, &caller.tenant, &id).await.is_ok() => {
                        replayed += 1
                    }
                    _ => failed += 1,
                }
            }
            let body = serde_json::json!({ "replayed": replayed, "failed": failed, "next_cursor": page.next_cursor });
            Ok(json(StatusCode::ACCEPTED, body.to_string().into_bytes()))
        }
        ([id, "replay"], _) => {
            let id = parse_id(id)?;
            let sequence = dlq::replay(js, names, &caller.tenant, &id)
                .await
                .map_err(dlq_error)?;
            let body = serde_json::json!({ "id": id, "status": "replayed", "sequence": sequence });
            Ok(json(StatusCode::ACCEPTED, body.to_string().into_bytes()))
        }
        ([id], _) => {
            let id = parse_id(id)?;
            dlq::delete(js, names, &caller.tenant, &id)
                .await
                .map_err(dlq_error)?;
            let mut response = json(StatusCode::NO_CONTENT, Vec::new());
            response.headers_mut().remove(CONTENT_TYPE);
            Ok(response)
        }
        _ => Err(ApiError::not_found()),
    }
}

fn dlq_error(err: dlq::DlqError) -> ApiError {
    match err {
        dlq::DlqError::NotFound => ApiError::no_such("dead letter"),
        dlq::DlqError::JetStream(e) => ApiError::unavailable(format!("dead-letter queue: {e}")),
    }
}
