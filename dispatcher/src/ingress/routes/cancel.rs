//! Cancel before send: `POST /v1/notifications/{id}/cancel`, and
//! `POST /v1/notifications/cancel` with the idempotency key it was sent with.
//!
//! A cancel is recorded in the `<prefix>CANCELS` bucket, which every delivery process
//! follows (see `delivery::cancels`), and as a `canceled` outcome event, so the status
//! says canceled at once. It applies to a notification not yet delivered: scheduled with
//! `send_at`, waiting for a retry or for its destination. Canceling twice is fine.

use serde::Deserialize;

use super::*;
use crate::events::{Event, EventKind};
use crate::status::NotificationStatus;

/// The answer of a cancel.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct Canceled {
    id: Uuid,
    #[schema(value_type = String, example = "canceled")]
    status: &'static str,
}

/// The body of `POST /v1/notifications/cancel`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct CancelByKey {
    /// The `idempotency_key` the notification was sent with.
    idempotency_key: String,
}

/// `POST /v1/notifications/{id}/cancel`.
#[utoipa::path(
    post,
    operation_id = "cancel_notification",
    path = "/v1/notifications/{id}/cancel",
    tag = "notifications",
    params(("id" = uuid::Uuid, Path, description = "The notification's id")),
    responses(
        (status = 200, description = "Canceled (or canceled before): it will not be sent", body = Canceled),
        (status = 404, description = "No such notification of this tenant (it is known from the moment of its 202)", body = crate::error::Body),
        (status = 409, description = "Already delivered or dead (`error.code` says which)", body = crate::error::Body),
        (status = 422, description = "`id` is not a UUID", body = crate::error::Body),
    )
)]
pub(super) async fn by_id(
    state: &State,
    caller: &Caller,
    id: &str,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(id)?;
    cancel(state, caller, id).await
}

/// `POST /v1/notifications/cancel`: the notification sent with this idempotency key.
#[utoipa::path(
    post,
    operation_id = "cancel_notification_by_key",
    path = "/v1/notifications/cancel",
    tag = "notifications",
    request_body = CancelByKey,
    responses(
        (status = 200, description = "Canceled (or canceled before): it will not be sent", body = Canceled),
        (status = 404, description = "No notification was accepted with this key (or it expired)", body = crate::error::Body),
        (status = 409, description = "Already delivered or dead (`error.code` says which)", body = crate::error::Body),
        (status = 422, description = "`idempotency_key` is missing or invalid", body = crate::error::Body),
    )
)]
pub(super) async fn by_key<B>(
    state: &State,
    caller: &Caller,
    req: Request<B>,
) -> Result<HttpResponse, ApiError>
where
    B: hyper::body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let request: CancelByKey = read_one_field(
        state,
        req,
        "idempotency_key",
        r#"{"idempotency_key": string}"#,
    )
    .await?;
    let key = request.idempotency_key;
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_LEN {
        return Err(ApiError::invalid_field(
            "idempotency_key",
            format!("idempotency_key must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} bytes"),
        ));
    }
    let id = state
        .idempotency
        .accepted_id(&caller.tenant, &key)
        .await?
        .ok_or_else(|| ApiError::no_such("notification with this idempotency key"))?;
    cancel(state, caller, id).await
}

async fn cancel(state: &State, caller: &Caller, id: Uuid) -> Result<HttpResponse, ApiError> {
    ensure_ready(state)?;
    let found = crate::status::find(&state.status_cache, state.tenants.pool(), caller.tenant, id)
        .await
        .map_err(super::status::status_store_down)?
        .ok_or_else(|| ApiError::no_such("notification"))?;
    if matches!(found.status.as_str(), "delivered" | "dead") {
        return Err(ApiError::not_cancelable(&found.status));
    }
    let unavailable = |e: String| ApiError::unavailable(format!("cancel not recorded: {e}"));
    let kv = state
        .js
        .get_key_value(&state.names.cancels_bucket)
        .await
        .map_err(|e| unavailable(e.to_string()))?;
    kv.put(
        crate::buckets::cancel_key(&caller.tenant, &id),
        Utc::now().to_rfc3339().into(),
    )
    .await
    .map_err(|e| unavailable(e.to_string()))?;
    if found.status != "canceled" {
        let event = canceled_event(&found, caller.tenant)?;
        // One message id per notification: a retried cancel is stored once.
        crate::events::publish(&state.js, &state.names, &[event], &format!("cancel-{id}"))
            .await
            .map_err(|e| unavailable(e.to_string()))?;
    }
    let body = Canceled {
        id,
        status: "canceled",
    };
    Ok(json_of(StatusCode::OK, &body))
}

fn canceled_event(found: &NotificationStatus, tenant: Uuid) -> Result<Event<'static>, ApiError> {
    fn parse<T: serde::de::DeserializeOwned>(value: &str) -> Result<T, ApiError> {
        serde_json::from_value(serde_json::Value::String(value.to_string()))
            .map_err(|_| ApiError::unavailable("status store holds an unknown priority or channel"))
    }
    Ok(Event {
        id: found.id,
        tenant,
        event: EventKind::Canceled,
        priority: parse(&found.priority)?,
        channel: parse(&found.channel)?,
        attempt: u32::try_from(found.attempts).unwrap_or(0),
        at: Utc::now(),
        error: None,
        status: None,
        retry_in_ms: None,
        duration_ms: None,
        provider: None,
        response: None,
    })
}
