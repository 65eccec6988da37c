//! `POST /v1/notifications`: one notification, answered 202 once JetStream holds it.

use super::*;

#[derive(Serialize)]
struct Accepted {
    id: Uuid,
    status: &'static str,
    priority: Priority,
}

pub(super) async fn single<B>(
    state: &State,
    caller: &Caller,
    req: Request<B>,
) -> Result<HttpResponse, Rejection>
where
    B: hyper::body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let header_key = idempotency_header(&req)?;
    // Shed before the body costs a read and a parse, when the client says its priority.
    let hinted = priority_header(&req)?;
    if let Some(refusal) = hinted.and_then(|p| shed(state, p)) {
        return Err(refusal);
    }
    let body = read_json_body(state, req).await?;
    let now = Utc::now();
    let mut validated = parse_notification(&body, &caller.limits(state), now)?;
    match hinted {
        None => {
            if let Some(refusal) = shed(state, validated.priority) {
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
    let outcome = match schedule(state, caller, &validated, now, id) {
        Ok(waiting) => Ok(waiting.await),
        Err(e) => Err(e),
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
    let body = serde_json::to_vec(&Accepted {
        id,
        status: "accepted",
        priority,
    })
    .expect("serializing plain fields cannot fail");
    json(status, body)
}
