//! `POST /v1/notifications`: one notification, answered 202 once JetStream holds it.

use super::*;

/// The answer to an accepted notification (the API contract's `Accepted`).
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct Accepted {
    id: Uuid,
    /// Always `accepted`: stored in JetStream, to be delivered.
    #[schema(value_type = String, example = "accepted")]
    status: &'static str,
    priority: Priority,
}

/// Send one notification. Answered 202 only once JetStream has stored it: an accepted
/// notification is never lost.
#[utoipa::path(
    post,
    operation_id = "send_notification",
    path = "/v1/notifications",
    tag = "notifications",
    request_body = crate::model::NotificationRequest,
    params(
        ("Idempotency-Key" = Option<String>, Header, description = "1 to 255 visible ASCII bytes; a repeat with the same body gets the first id back (200), with another body 422"),
        ("Herald-Priority" = Option<crate::model::Priority>, Header, description = "The body's priority, repeated: lets an overloaded server refuse the request before reading it"),
        ("traceparent" = Option<String>, Header, description = "W3C Trace Context: every delivery attempt's webhook carries a child of it (an invalid one is ignored)"),
    ),
    responses(
        (status = 202, description = "Stored in JetStream; it will be delivered", body = Accepted, headers(
            ("RateLimit-Limit" = u32, description = "The tenant's bucket size (sent when the tenant has a rate limit)"),
            ("RateLimit-Remaining" = u32, description = "Tokens left"),
            ("RateLimit-Reset" = u32, description = "Seconds until the bucket is full again"),
        )),
        (status = 200, description = "An idempotent repeat: the first notification's id", body = Accepted, headers(
            ("Idempotent-Replayed" = String, description = "`true`"),
        )),
        (status = 409, description = "A request with the same Idempotency-Key is still in progress", body = crate::error::Body),
        (status = 422, description = "A field is invalid (named in `error.field`), or the Idempotency-Key was used with another body", body = crate::error::Body),
        (status = 429, description = "`rate_limited`: the tenant's bucket is empty; `overloaded`: the door sheds this priority now (low first); `queue_full`", body = crate::error::Body),
    )
)]
pub(super) async fn single<B>(
    state: &State,
    caller: &Caller,
    req: Request<B>,
    trace: &TraceParent,
) -> Result<HttpResponse, Rejection>
where
    B: hyper::body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let header_key = idempotency_header(&req)?;
    // Shed before the body costs a read and a parse, when the client says its priority.
    let hinted = priority_header(&req)?;
    if let Some(refusal) = hinted.and_then(|p| shed(state, caller, p)) {
        return Err(refusal);
    }
    let body = read_json_body(state, req).await?;
    let now = Utc::now();
    let mut validated = parse_notification(&body, &caller.limits(state), now)?;
    match hinted {
        None => {
            if let Some(refusal) = shed(state, caller, validated.priority) {
                return Err(refusal);
            }
        }
        Some(hint) if hint != validated.priority => {
            return Err(ApiError::invalid_field(
                "priority",
                "the Herald-Priority header and the priority field differ",
            )
            .into())
        }
        Some(_) => {}
    }
    let key = match (header_key, validated.idempotency_key.as_deref()) {
        (Some(h), Some(b)) if h != b => {
            return Err(ApiError::invalid_field(
                "idempotency_key",
                "the Idempotency-Key header and the idempotency_key field differ",
            )
            .into())
        }
        (Some(h), _) => Some(h),
        (None, b) => b.map(str::to_string),
    };
    ensure_ready(state)?;
    let priority = validated.priority;
    let limit_headers = rate_limit(state, caller, 1)
        .await
        .map_err(|e| Rejection(Some(priority), e))?;
    let id = new_id();
    let claim = match &key {
        Some(key) => {
            validated.idempotency_key = Some(std::borrow::Cow::Owned(key.clone()));
            let request = idempotency::Request {
                tenant: caller.tenant,
                key,
                id,
                fingerprint: idempotency::fingerprint(&body),
            };
            let claims = state
                .idempotency
                .claim(std::slice::from_ref(&request))
                .await
                .map_err(|e| Rejection(Some(priority), e.into()))?;
            match claims.first() {
                Some(Claim::Replay(original)) => {
                    let mut response = accepted_response(StatusCode::OK, *original, priority);
                    response
                        .headers_mut()
                        .insert("Idempotent-Replayed", HeaderValue::from_static("true"));
                    return Ok(with_headers(response, limit_headers));
                }
                Some(Claim::Mismatch) => {
                    return Err(Rejection(Some(priority), ApiError::idempotency_mismatch()))
                }
                Some(Claim::InProgress) => {
                    return Err(Rejection(
                        Some(priority),
                        ApiError::idempotency_in_progress(),
                    ))
                }
                _ => Some(request),
            }
        }
        None => None,
    };
    // From this task when the door is idle and --publish-direct-max allows (publisher.rs),
    // else through the scheduler.
    let (envelope, waiting) = envelope(caller, &validated, now, id, trace);
    let outcome = match state.submitter.publish_or_queue(envelope).await {
        Ok(()) => Ok(waiting.await),
        Err(refused) => Err(refusal(refused, priority)),
    };
    if let Some(request) = &claim {
        // Keep the key only if JetStream stored the notification; otherwise release it so
        // the client's retry is not refused as "in progress".
        let request = std::slice::from_ref(request);
        match &outcome {
            Ok(Ok(Ok(_))) => state.idempotency.settle(request, &[]).await,
            _ => state.idempotency.settle(&[], request).await,
        }
    }
    let outcome = outcome.map_err(|e| Rejection(Some(priority), e))?;
    match outcome {
        Ok(Ok(_sequence)) => {
            let row = NotificationStatus::accepted(
                id,
                caller.tenant,
                &validated,
                now,
                trace.trace_id_hex(),
            );
            state.acceptances.record(vec![row]).await;
            state.metrics.accepted(priority);
            Ok(with_headers(
                accepted_response(StatusCode::ACCEPTED, id, priority),
                limit_headers,
            ))
        }
        Ok(Err(reason)) => Err(Rejection(Some(priority), ApiError::publish_failed(reason))),
        Err(_) => Err(Rejection(Some(priority), ApiError::shutting_down())),
    }
}

fn accepted_response(status: StatusCode, id: Uuid, priority: Priority) -> HttpResponse {
    let body = Accepted {
        id,
        status: "accepted",
        priority,
    };
    json_of(status, &body)
}
