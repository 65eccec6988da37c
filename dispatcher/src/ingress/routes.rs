//! Routing and the handlers of the ingress API. Every handler returns a response; every
//! failure is an [`ApiError`] rendered in one place.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use chrono::Utc;
use http::header::{HeaderValue, ALLOW, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use serde::Serialize;
use serde_json::value::RawValue;
use tokio::sync::oneshot;
use uuid::Uuid;

use super::State;
use crate::dlq;
use crate::error::ApiError;
use crate::idempotency::{self, Claim};
use crate::model::{
    describe_parse_error, new_id, parse_notification, Channel, Priority, Validated,
    MAX_IDEMPOTENCY_KEY_LEN,
};
use crate::publisher::{Envelope, PublishOutcome};

pub type HttpResponse = Response<Full<Bytes>>;

/// Routes one request.
pub async fn handle<B>(state: Arc<State>, req: Request<B>) -> HttpResponse
where
    B: hyper::body::Body + Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let result = match (req.uri().path(), req.method()) {
        ("/v1/notifications", &Method::POST) => single(&state, req).await,
        ("/v1/notifications/batch", &Method::POST) => batch(&state, req).await,
        ("/v1/notifications" | "/v1/notifications/batch", _) => {
            Err(Rejection::from(ApiError::method_not_allowed("POST")))
        }
        ("/healthz", &Method::GET) => Ok(json(StatusCode::OK, br#"{"status":"ok"}"#.to_vec())),
        ("/readyz", &Method::GET) => Ok(readyz(&state)),
        ("/metrics", &Method::GET) => Ok(metrics(&state)),
        ("/healthz" | "/readyz" | "/metrics", _) => {
            Err(Rejection::from(ApiError::method_not_allowed("GET")))
        }
        (path, method) if path == "/v1/dlq" || path.starts_with("/v1/dlq/") => {
            dlq_route(&state, path, method, req.uri().query().unwrap_or(""))
                .await
                .map_err(Rejection::from)
        }
        _ => Err(Rejection::from(ApiError::not_found())),
    };
    result.unwrap_or_else(|Rejection(priority, err)| {
        state.metrics.rejected(priority, err.code);
        error_response(&err)
    })
}

/// An error answered for the whole request, with the priority it concerned when known
/// (the label of the rejection metric).
struct Rejection(Option<Priority>, ApiError);

impl From<ApiError> for Rejection {
    fn from(err: ApiError) -> Self {
        Rejection(None, err)
    }
}

#[derive(Serialize)]
struct Accepted {
    id: Uuid,
    status: &'static str,
    priority: Priority,
}

async fn single<B>(state: &State, req: Request<B>) -> Result<HttpResponse, Rejection>
where
    B: hyper::body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let header_key = idempotency_header(&req)?;
    let body = read_json_body(state, req).await?;
    let now = Utc::now();
    let mut validated = parse_notification(&body, &state.limits, now)?;
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
    let id = new_id();
    let claim = match &key {
        Some(key) => {
            validated.idempotency_key = Some(std::borrow::Cow::Owned(key.clone()));
            let request = idempotency::Request {
                key,
                id,
                fingerprint: idempotency::fingerprint(&body),
            };
            let claims = state
                .idempotency
                .claim(std::slice::from_ref(&request))
                .await
                .map_err(|e| Rejection(Some(priority), e))?;
            match claims.first() {
                Some(Claim::Replay(original)) => {
                    let mut response = accepted_response(StatusCode::OK, *original, priority);
                    response
                        .headers_mut()
                        .insert("Idempotent-Replayed", HeaderValue::from_static("true"));
                    return Ok(response);
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
    let scheduled = schedule(state, &validated, now, id);
    let outcome = match scheduled {
        Ok(waiting) => waiting.await,
        Err(e) => {
            if let Some(request) = &claim {
                state.idempotency.settle(&[], &[request.key]).await;
            }
            return Err(Rejection(Some(priority), e));
        }
    };
    if let Some(request) = &claim {
        match &outcome {
            Ok(Ok(_)) => {
                state
                    .idempotency
                    .settle(std::slice::from_ref(request), &[])
                    .await
            }
            _ => state.idempotency.settle(&[], &[request.key]).await,
        }
    }
    match outcome {
        Ok(Ok(_sequence)) => {
            state.metrics.accepted(priority);
            Ok(accepted_response(StatusCode::ACCEPTED, id, priority))
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

/// The `Idempotency-Key` header, checked like the body field.
fn idempotency_header<B>(req: &Request<B>) -> Result<Option<String>, ApiError> {
    match req.headers().get("idempotency-key") {
        None => Ok(None),
        Some(v) => match v.to_str() {
            Ok(key) if !key.is_empty() && key.len() <= MAX_IDEMPOTENCY_KEY_LEN => {
                Ok(Some(key.to_string()))
            }
            _ => Err(ApiError::invalid_field(
                "Idempotency-Key",
                format!(
                    "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY_LEN} visible ASCII bytes"
                ),
            )),
        },
    }
}

#[derive(Serialize)]
struct BatchResponse {
    accepted: usize,
    rejected: usize,
    results: Vec<BatchItem>,
}

#[derive(Serialize)]
struct BatchItem {
    index: usize,
    status: u16,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<Uuid>,
    #[serde(skip_serializing_if = "Option::is_none")]
    priority: Option<Priority>,
    #[serde(skip_serializing_if = "Option::is_none")]
    replayed: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<serde_json::Value>,
}

enum Slot {
    Waiting(Uuid, Priority, oneshot::Receiver<PublishOutcome>),
    /// An idempotency key seen before with the same body: the first id.
    Replayed(Uuid, Priority),
    Failed(ApiError),
}

/// `POST /v1/notifications/batch`: every item is validated and scheduled on its own, so one
/// bad item costs only itself; the good ones are queued back to back and leave in the same
/// publish batches. 202 when at least one item was accepted; otherwise the most severe of
/// the item statuses, with the same per-item body.
async fn batch<B>(state: &State, req: Request<B>) -> Result<HttpResponse, Rejection>
where
    B: hyper::body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let body = read_json_body(state, req).await?;
    let items: Vec<&RawValue> = serde_json::from_slice(&body).map_err(|err| {
        match describe_parse_error::<Vec<&RawValue>>(&body, err) {
            e if e.status == StatusCode::BAD_REQUEST => e,
            _ => ApiError::invalid_body("body must be a JSON array of notifications"),
        }
    })?;
    if items.is_empty() {
        return Err(ApiError::invalid_body("batch is empty").into());
    }
    if items.len() > state.max_batch {
        return Err(ApiError::batch_too_large(items.len(), state.max_batch).into());
    }
    let now = Utc::now();
    let parsed: Vec<Result<Validated<'_>, ApiError>> = items
        .iter()
        .map(|item| parse_notification(item.get().as_bytes(), &state.limits, now))
        .collect();
    if parsed.iter().any(Result::is_ok) {
        ensure_ready(state)?;
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
            key,
            id: ids[*i],
            fingerprint: fingerprint.clone(),
        })
        .collect();
    let claims: Vec<Result<Claim, ApiError>> = match state.idempotency.claim(&requests).await {
        Ok(claims) => claims.into_iter().map(Ok).collect(),
        Err(e) => requests.iter().map(|_| Err(e.clone())).collect(),
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
            (Ok(v), _) => match schedule(state, &v, now, id) {
                Ok(rx) => Slot::Waiting(id, v.priority, rx),
                Err(e) => Slot::Failed(reject(state, Some(v.priority), e)),
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
            Slot::Waiting(id, priority, rx) => match rx.await {
                Ok(Ok(_)) => {
                    published.push(id);
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
    let (kept, released): (Vec<_>, Vec<_>) =
        taken.into_iter().partition(|r| published.contains(&r.id));
    let kept: Vec<idempotency::Request<'_>> = kept.into_iter().cloned().collect();
    let released: Vec<&str> = released.into_iter().map(|r| r.key).collect();
    state.idempotency.settle(&kept, &released).await;
    let status = if accepted > 0 {
        StatusCode::ACCEPTED
    } else {
        worst
    };
    let body = serde_json::to_vec(&BatchResponse {
        accepted,
        rejected: results.len() - accepted,
        results,
    })
    .expect("serializing plain fields cannot fail");
    let mut response = json(status, body);
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

/// Gives the notification an id, encodes it and queues it; the receiver yields
/// JetStream's answer.
fn schedule(
    state: &State,
    validated: &Validated<'_>,
    now: chrono::DateTime<Utc>,
    id: Uuid,
) -> Result<oneshot::Receiver<PublishOutcome>, ApiError> {
    let (reply, waiting) = oneshot::channel();
    let envelope = Envelope {
        id,
        priority: validated.priority,
        channel: validated.channel,
        body: validated.encode(id, now),
        scheduled_at: Instant::now(),
        reply,
    };
    match state.scheduler.try_push(validated.priority, envelope) {
        Ok(()) => Ok(waiting),
        Err(_) if state.scheduler.is_closed() => Err(ApiError::shutting_down()),
        Err(_) => Err(ApiError::queue_full(validated.priority)),
    }
}

fn ensure_ready(state: &State) -> Result<(), ApiError> {
    if state.readiness.is_ready(&state.client) {
        Ok(())
    } else {
        Err(ApiError::unavailable(
            "NATS JetStream is not reachable; nothing was accepted",
        ))
    }
}

/// The dead-letter API: `GET /v1/dlq`, `POST /v1/dlq/replay`, `POST /v1/dlq/{id}/replay`,
/// `DELETE /v1/dlq/{id}`.
async fn dlq_route(
    state: &State,
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
    let filter = DlqQuery::parse(query)?;
    ensure_ready(state)?;
    let (js, names) = (&state.js, &state.names);
    let listed = match rest.as_slice() {
        [] | ["replay"] => Some(
            dlq::list(
                js,
                names,
                filter.priority,
                filter.channel,
                filter.cursor,
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
                    Ok(id) if dlq::replay(js, names, &id).await.is_ok() => replayed += 1,
                    _ => failed += 1,
                }
            }
            let body = serde_json::json!({ "replayed": replayed, "failed": failed, "next_cursor": page.next_cursor });
            Ok(json(StatusCode::ACCEPTED, body.to_string().into_bytes()))
        }
        ([id, "replay"], _) => {
            let id = parse_id(id)?;
            let sequence = dlq::replay(js, names, &id).await.map_err(dlq_error)?;
            let body = serde_json::json!({ "id": id, "status": "replayed", "sequence": sequence });
            Ok(json(StatusCode::ACCEPTED, body.to_string().into_bytes()))
        }
        ([id], _) => {
            let id = parse_id(id)?;
            dlq::delete(js, names, &id).await.map_err(dlq_error)?;
            let mut response = json(StatusCode::NO_CONTENT, Vec::new());
            response.headers_mut().remove(CONTENT_TYPE);
            Ok(response)
        }
        _ => Err(ApiError::not_found()),
    }
}

fn parse_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id).map_err(|_| ApiError::invalid_field("id", "id must be a UUID"))
}

fn dlq_error(err: dlq::DlqError) -> ApiError {
    match err {
        dlq::DlqError::NotFound => ApiError::not_found(),
        dlq::DlqError::JetStream(e) => ApiError::unavailable(format!("dead-letter queue: {e}")),
    }
}

/// `?priority=&channel=&cursor=&limit=` of the DLQ routes.
struct DlqQuery {
    priority: Option<Priority>,
    channel: Option<Channel>,
    cursor: u64,
    limit: usize,
}

impl DlqQuery {
    const MAX_LIMIT: usize = 1000;

    fn parse(query: &str) -> Result<Self, ApiError> {
        let mut q = DlqQuery {
            priority: None,
            channel: None,
            cursor: 0,
            limit: 100,
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let enum_value = || serde_json::Value::String(value.to_string());
            match key {
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
                "cursor" => {
                    q.cursor = value.parse().map_err(|_| {
                        ApiError::invalid_field("cursor", "cursor must be a whole number")
                    })?
                }
                "limit" => {
                    q.limit = value
                        .parse()
                        .ok()
                        .filter(|l| (1..=Self::MAX_LIMIT).contains(l))
                        .ok_or_else(|| {
                            ApiError::invalid_field("limit", "limit must be 1 to 1000")
                        })?
                }
                other => {
                    return Err(ApiError::invalid_field(
                        other,
                        format!("unknown query parameter {other:?}"),
                    ))
                }
            }
        }
        Ok(q)
    }
}

/// Counts the rejection of one batch item and passes the error on.
fn reject(state: &State, priority: Option<Priority>, err: ApiError) -> ApiError {
    state.metrics.rejected(priority, err.code);
    err
}

async fn read_json_body<B>(state: &State, req: Request<B>) -> Result<Bytes, ApiError>
where
    B: hyper::body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if !is_json(req.headers().get(CONTENT_TYPE)) {
        return Err(ApiError::unsupported_media_type());
    }
    let declared = req
        .headers()
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|len| len > state.max_body as u64) {
        return Err(ApiError::body_too_large(state.max_body));
    }
    let collect = Limited::new(req.into_body(), state.max_body).collect();
    let mut collect = std::pin::pin!(collect);
    // Small bodies usually arrived with the headers: only arm a timer when they did not.
    let collected = match futures::poll!(collect.as_mut()) {
        std::task::Poll::Ready(done) => done,
        std::task::Poll::Pending => tokio::time::timeout(state.body_timeout, collect)
            .await
            .map_err(|_| ApiError::body_timeout())?,
    };
    match collected {
        Err(err) if err.downcast_ref::<LengthLimitError>().is_some() => {
            Err(ApiError::body_too_large(state.max_body))
        }
        Err(err) => Err(ApiError::body_read(err)),
        Ok(collected) => Ok(collected.to_bytes()),
    }
}

/// `application/json`, or any `application/*+json`, with or without parameters.
fn is_json(content_type: Option<&HeaderValue>) -> bool {
    let Some(value) = content_type.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let essence = value.split(';').next().unwrap_or("").trim();
    let Some((kind, sub)) = essence.split_once('/') else {
        return false;
    };
    kind.eq_ignore_ascii_case("application")
        && (sub.eq_ignore_ascii_case("json")
            || sub.len() > 5 && sub[sub.len() - 5..].eq_ignore_ascii_case("+json"))
}

fn readyz(state: &State) -> HttpResponse {
    if state.readiness.is_ready(&state.client) {
        json(StatusCode::OK, br#"{"status":"ready"}"#.to_vec())
    } else {
        json(
            StatusCode::SERVICE_UNAVAILABLE,
            br#"{"status":"unready","reason":"NATS is disconnected or the stream is not verified"}"#
                .to_vec(),
        )
    }
}

fn metrics(state: &State) -> HttpResponse {
    let body = state.metrics.render(|p| state.scheduler.len(p));
    let mut response = Response::new(Full::new(Bytes::from(body)));
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    response
}

fn json(status: StatusCode, body: Vec<u8>) -> HttpResponse {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

fn error_response(err: &ApiError) -> HttpResponse {
    let mut response = json(err.status, err.body());
    let headers = response.headers_mut();
    if let Some(seconds) = err.retry_after {
        headers.insert(RETRY_AFTER, HeaderValue::from(seconds));
    }
    if let Some(allow) = err.allow {
        headers.insert(ALLOW, HeaderValue::from_static(allow));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_content_types() {
        let ok = [
            "application/json",
            "Application/JSON; charset=utf-8",
            "application/vnd.api+json",
        ];
        for ct in ok {
            assert!(is_json(Some(&HeaderValue::from_static(ct))), "{ct}");
        }
        let bad = ["text/plain", "application/xml", "json", "application/+json"];
        for ct in bad {
            assert!(!is_json(Some(&HeaderValue::from_static(ct))), "{ct}");
        }
        assert!(!is_json(None));
    }
}
