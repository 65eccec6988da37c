//! `POST /v1/notifications/batch`: many notifications, answered item by item.

use super::*;

/// The answer to a batch: one result per item, in order.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct BatchResponse {
    accepted: usize,
    rejected: usize,
    results: Vec<BatchItem>,
}

/// A batch with no item accepted: every item's own result (the response's status is the
/// most severe of theirs), or an `Error` when the request as a whole was refused. Only
/// the contract uses this type.
#[derive(Serialize, utoipa::ToSchema)]
#[serde(untagged)]
#[allow(dead_code)]
pub(super) enum BatchRefused {
    Items(BatchResponse),
    Request(crate::error::Body<'static>),
}

/// One item's result: its status as a single request would have had it.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct BatchItem {
    index: usize,
    status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    priority: Option<Priority>,
    /// Present (true) when an idempotency key had been seen with the same item.
    #[serde(skip_serializing_if = "Option::is_none")]
    replayed: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<crate::error::Inner>)]
    error: Option<serde_json::Value>,
}

enum Slot {
    /// Its state once stored (for read-your-writes), and the wait for JetStream.
    Waiting(
        Box<NotificationStatus>,
        Priority,
        oneshot::Receiver<PublishOutcome>,
    ),
    /// An idempotency key seen before with the same body: the first id.
    Replayed(Uuid, Priority),
    Failed(ApiError),
}

/// `POST /v1/notifications/batch`: every item is validated and scheduled on its own, so one
/// bad item costs only itself; the good ones are queued back to back and leave in the same
/// publish batches. 202 when at least one item was accepted; otherwise the most severe of
/// the item statuses, with the same per-item body.
#[utoipa::path(
    post,
    operation_id = "send_batch",
    path = "/v1/notifications/batch",
    tag = "notifications",
    request_body(content = Vec<crate::model::NotificationRequest>, description = "Up to `--max-batch` notifications"),
    params(
        ("Herald-Priority" = Option<crate::model::Priority>, Header, description = "Every item's priority: lets an overloaded server refuse the batch before reading it"),
        ("traceparent" = Option<String>, Header, description = "W3C Trace Context: each item is a span of it, continued to its deliveries"),
    ),
    responses(
        (status = 202, description = "At least one item was accepted; each item has its own status", body = BatchResponse, headers(
            ("RateLimit-Limit" = u32, description = "The tenant's bucket size (sent when the tenant has a rate limit)"),
            ("RateLimit-Remaining" = u32, description = "Tokens left"),
            ("RateLimit-Reset" = u32, description = "Seconds until the bucket is full again"),
        )),
        (status = 400, description = "The body is not JSON, or no item was accepted and the most severe item status is 400", body = BatchRefused),
        (status = 409, description = "No item was accepted and the most severe item status is 409", body = BatchRefused),
        (status = 422, description = "No item was accepted (each item's error is in `results`), or the request as a whole is invalid", body = BatchRefused),
        (status = 503, description = "No item was accepted and the most severe item status is 503, or the server cannot take the batch now", body = BatchRefused),
        (status = 429, description = "`rate_limited`: the tenant's bucket is empty; `overloaded`: the door sheds this priority now (low first); `queue_full`", body = BatchRefused),
    )
)]
pub(super) async fn batch<B>(
    state: &State,
    caller: &Caller,
    req: Request<B>,
    // Every item's publish is its own span of the request's trace.
    trace: &TraceParent,
) -> Result<HttpResponse, Rejection>
where
    B: hyper::body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // A batch that declares one priority for all its items can be shed unread.
    if let Some(refusal) = priority_header(&req)?.and_then(|p| shed(state, caller, p)) {
        return Err(refusal);
    }
    let body = read_json_body(state, req).await?;
    let items = parse_batch(&body, state.max_batch)?;
    let now = Utc::now();
    let limits = caller.limits(state);
    let parsed: Vec<Result<Validated<'_>, ApiError>> = items
        .iter()
        .map(|item| parse_notification(item.get().as_bytes(), &limits, now).map_err(ApiError::from))
        .collect();
    let valid = parsed.iter().filter(|p| p.is_ok()).count();
    let mut limit_headers = Vec::new();
    if valid > 0 {
        ensure_ready(state)?;
        // The batch takes one token per valid item, all or nothing.
        limit_headers = rate_limit(state, caller, valid).await?;
    }
    // Every item's id up front, so idempotency keys can be claimed in one pipeline.
    let ids: Vec<Uuid> = parsed.iter().map(|_| new_id()).collect();
    let keyed: Vec<(usize, String, String)> = parsed
        .iter()
        .enumerate()
        .filter_map(|(i, item)| {
            let key = item.as_ref().ok()?.idempotency_key.as_deref()?;
            let fingerprint = idempotency::fingerprint(items[i].get().as_bytes());
            Some((i, key.to_string(), fingerprint))
        })
        .collect();
    let requests: Vec<idempotency::Request<'_>> = keyed
        .iter()
        .map(|(i, key, fingerprint)| idempotency::Request {
            tenant: caller.tenant,
            key,
            id: ids[*i],
            fingerprint: fingerprint.clone(),
        })
        .collect();
    let claims: Vec<Result<Claim, ApiError>> = match state.idempotency.claim(&requests).await {
        Ok(claims) => claims.into_iter().map(Ok).collect(),
        Err(e) => requests
            .iter()
            .map(|_| Err(ApiError::from(e.clone())))
            .collect(),
    };
    // Keys this batch took (to keep or release once JetStream has answered).
    let taken: Vec<&idempotency::Request<'_>> = requests
        .iter()
        .zip(&claims)
        .filter(|(_, c)| matches!(c, Ok(Claim::New)))
        .map(|(r, _)| r)
        .collect();
    let mut claim_of: Vec<Option<Result<Claim, ApiError>>> = parsed.iter().map(|_| None).collect();
    for ((i, _, _), claim) in keyed.iter().zip(claims) {
        claim_of[*i] = Some(claim);
    }
    let slots: Vec<Slot> = parsed
        .into_iter()
        .zip(ids)
        .zip(claim_of)
        .map(|((item, id), claim)| match (item, claim) {
            (Err(e), _) => Slot::Failed(reject(state, None, e)),
            (Ok(v), Some(Err(e))) => Slot::Failed(reject(state, Some(v.priority), e)),
            (Ok(v), Some(Ok(Claim::Replay(original)))) => Slot::Replayed(original, v.priority),
            (Ok(v), Some(Ok(Claim::Mismatch))) => Slot::Failed(reject(
                state,
                Some(v.priority),
                ApiError::idempotency_mismatch(),
            )),
            (Ok(v), Some(Ok(Claim::InProgress))) => Slot::Failed(reject(
                state,
                Some(v.priority),
                ApiError::idempotency_in_progress(),
            )),
            (Ok(v), _) => match shed(state, caller, v.priority) {
                Some(Rejection(priority, e)) => Slot::Failed(reject(state, priority, e)),
                None => match schedule(state, caller, &v, now, id, trace) {
                    Ok(rx) => {
                        let row = NotificationStatus::accepted(
                            id,
                            caller.tenant,
                            &v,
                            now,
                            trace.trace_id_hex(),
                        );
                        Slot::Waiting(Box::new(row), v.priority, rx)
                    }
                    Err(e) => Slot::Failed(reject(state, Some(v.priority), e)),
                },
            },
        })
        .collect();

    let mut results = Vec::with_capacity(slots.len());
    let mut accepted = 0;
    let mut worst = StatusCode::ACCEPTED;
    let mut published = Vec::new();
    for (index, slot) in slots.into_iter().enumerate() {
        let mut replayed = false;
        let outcome = match slot {
            Slot::Waiting(row, priority, rx) => match rx.await {
                Ok(Ok(_)) => {
                    let id = row.id;
                    published.push(*row);
                    Ok((id, priority))
                }
                Ok(Err(reason)) => Err(reject(
                    state,
                    Some(priority),
                    ApiError::publish_failed(reason),
                )),
                Err(_) => Err(reject(state, Some(priority), ApiError::shutting_down())),
            },
            Slot::Replayed(id, priority) => {
                replayed = true;
                Ok((id, priority))
            }
            Slot::Failed(e) => Err(e),
        };
        results.push(match outcome {
            Ok((id, priority)) => {
                if !replayed {
                    state.metrics.accepted(priority);
                }
                accepted += 1;
                BatchItem {
                    index,
                    status: if replayed { 200 } else { 202 },
                    id: Some(id),
                    priority: Some(priority),
                    replayed: replayed.then_some(true),
                    error: None,
                }
            }
            Err(e) => {
                worst = worst.max(e.status);
                BatchItem {
                    index,
                    status: e.status.as_u16(),
                    id: None,
                    priority: None,
                    replayed: None,
                    error: Some(e.to_json()),
                }
            }
        });
    }
    // Keys we took: keep those whose notification JetStream stored, release the rest.
    let (kept, released): (Vec<_>, Vec<_>) = taken
        .into_iter()
        .partition(|r| published.iter().any(|p| p.id == r.id));
    let kept: Vec<idempotency::Request<'_>> = kept.into_iter().cloned().collect();
    let released: Vec<idempotency::Request<'_>> = released.into_iter().cloned().collect();
    state.idempotency.settle(&kept, &released).await;
    state.acceptances.record(published).await;
    let status = if accepted > 0 {
        StatusCode::ACCEPTED
    } else {
        worst
    };
    let body = BatchResponse {
        accepted,
        rejected: results.len() - accepted,
        results,
    };
    let mut response = with_headers(json_of(status, &body), limit_headers);
    if matches!(
        status,
        StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE
    ) {
        response
            .headers_mut()
            .insert(RETRY_AFTER, HeaderValue::from_static("1"));
    }
    Ok(response)
}
