//! Routing and the handlers of the ingress API. Every handler returns a response; every
//! failure is an [`ApiError`] rendered in one place.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use chrono::Utc;
use http::header::{HeaderValue, ALLOW, AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, LengthLimitError, Limited};
use serde::Serialize;
use tokio::sync::oneshot;
use uuid::Uuid;

use super::State;
use crate::admission::Decision;
use crate::config::AuthMode;
use crate::dlq;
use crate::error::{ApiError, OVERLOADED};
use crate::idempotency::{self, Claim};
use crate::model::{
    new_id, parse_batch, parse_notification, Channel, Limits, Priority, Validated,
    MAX_IDEMPOTENCY_KEY_LEN,
};
use crate::publisher::{Envelope, PublishOutcome};
use crate::ratelimit::{self, Limit};
use crate::status::{self, ListQuery};
use crate::tenants;

pub type HttpResponse = Response<Full<Bytes>>;

/// Routes one request. Health and metrics are open; every /v1 route needs a tenant.
pub async fn handle<B>(state: Arc<State>, req: Request<B>) -> HttpResponse
where
    B: hyper::body::Body + Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let result = match (req.uri().path(), req.method()) {
        ("/healthz", &Method::GET) => Ok(json(StatusCode::OK, br#"{"status":"ok"}"#.to_vec())),
        ("/readyz", &Method::GET) => Ok(readyz(&state)),
        ("/metrics", &Method::GET) => Ok(metrics(&state)),
        ("/healthz" | "/readyz" | "/metrics", _) => {
            Err(Rejection::from(ApiError::method_not_allowed("GET")))
        }
        (path, _) if path.starts_with("/v1/") => match authenticate(&state, &req).await {
            Ok(caller) => v1(&state, &caller, req).await,
            Err(e) => Err(Rejection::from(e)),
        },
        _ => Err(Rejection::from(ApiError::not_found())),
    };
    match result {
        Ok(response) => response,
        Err(Rejection(priority, err)) => {
            state.metrics.rejected(priority, err.code);
            if err.code == OVERLOADED {
                // Held, not answered at once: a client that ignores Retry-After and sends
                // again as soon as it is answered (an open-loop flood) is paced to one
                // request per hold per connection, so refusals cannot eat the CPU that
                // shedding freed. Waiting costs a timer, not a thread.
                tokio::time::sleep(state.refusal_hold).await;
            }
            error_response(&err)
        }
    }
}

/// The /v1 routes, for an authenticated caller.
async fn v1<B>(state: &State, caller: &Caller, req: Request<B>) -> Result<HttpResponse, Rejection>
where
    B: hyper::body::Body + Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let query = req.uri().query().unwrap_or("");
    match (req.uri().path(), req.method()) {
        ("/v1/notifications", &Method::POST) => single(state, caller, req).await,
        ("/v1/notifications", &Method::GET) => Ok(list_notifications(state, caller, query).await?),
        ("/v1/notifications", _) => Err(ApiError::method_not_allowed("GET, POST").into()),
        ("/v1/notifications/batch", &Method::POST) => batch(state, caller, req).await,
        ("/v1/notifications/batch", _) => Err(ApiError::method_not_allowed("POST").into()),
        (p, &Method::GET) if p.starts_with("/v1/notifications/") => {
            let id = &p["/v1/notifications/".len()..];
            Ok(get_notification(state, caller, id).await?)
        }
        (p, _) if p.starts_with("/v1/notifications/") => {
            Err(ApiError::method_not_allowed("GET").into())
        }
        (p, method) if p == "/v1/dlq" || p.starts_with("/v1/dlq/") => {
            dlq_route(state, caller, p, method, query)
                .await
                .map_err(Rejection::from)
        }
        _ => Err(ApiError::not_found().into()),
    }
}

/// Who is calling: a tenant, or the anonymous tenant when authentication is off.
pub struct Caller {
    pub tenant: Uuid,
    pub limit: Option<Limit>,
    /// The tenant's own `payload` limit, or the server's.
    pub max_payload: usize,
}

impl Caller {
    fn limits<'s>(&self, state: &'s State) -> Limits<'s> {
        Limits {
            max_payload: self.max_payload,
            destinations: &state.destinations,
        }
    }
}

/// `Authorization: Bearer <key>` → the key's tenant. 401 for a missing, malformed,
/// unknown or revoked key (the reason is not told apart, to give probing nothing); 503
/// when the key is not cached and PostgreSQL cannot be asked.
async fn authenticate<B>(state: &State, req: &Request<B>) -> Result<Caller, ApiError> {
    if state.auth == AuthMode::Off {
        return Ok(Caller {
            tenant: tenants::ANONYMOUS,
            limit: state.default_limit,
            max_payload: state.max_payload,
        });
    }
    let key = req
        .headers()
        .get(AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(str::trim)
        .filter(|k| !k.is_empty() && k.len() <= 256)
        .ok_or_else(|| ApiError::unauthorized("Authorization: Bearer <API key> is required"))?;
    match state.tenants.authenticate(key).await {
        Ok(Some(tenant)) => Ok(Caller {
            tenant: tenant.id,
            limit: match (tenant.limits.rate_per_sec, state.default_limit) {
                (Some(rate), _) => Some(Limit {
                    rate,
                    burst: tenant.limits.burst.unwrap_or(rate),
                }),
                (None, default) => default,
            },
            max_payload: tenant
                .limits
                .max_payload
                .map_or(state.max_payload, |bytes| bytes as usize),
        }),
        Ok(None) => Err(ApiError::unauthorized("the API key is not valid")),
        Err(e) => Err(ApiError::unavailable(format!(
            "API keys cannot be checked: {e}"
        ))),
    }
}

/// Takes `cost` tokens from the caller's bucket: the headers to send on success, or 429.
/// Redis unreachable: allowed (see ratelimit.rs).
async fn rate_limit(
    state: &State,
    caller: &Caller,
    cost: usize,
) -> Result<Vec<(&'static str, String)>, ApiError> {
    let Some(limit) = caller.limit else {
        return Ok(Vec::new());
    };
    let cost = u32::try_from(cost).unwrap_or(u32::MAX);
    match state.rate_limiter.take(caller.tenant, limit, cost).await {
        Ok(d) if d.allowed => {
            state.metrics.rate_limit("allowed", cost as usize);
            Ok(ratelimit::headers(&d))
        }
        Ok(d) => {
            state.metrics.rate_limit("limited", cost as usize);
            Err(ApiError::rate_limited(&d, cost))
        }
        Err(e) => {
            state.metrics.rate_limit("unchecked", cost as usize);
            tracing::debug!(error = %e, "rate limit not checked (Redis unreachable); allowed");
            Ok(Vec::new())
        }
    }
}

fn with_headers(mut response: HttpResponse, headers: Vec<(&'static str, String)>) -> HttpResponse {
    for (name, value) in headers {
        if let Ok(value) = HeaderValue::from_str(&value) {
            response.headers_mut().insert(name, value);
        }
    }
    response
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

async fn single<B>(
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
                .map_err(|e| Rejection(Some(priority), e))?;
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
    let scheduled = schedule(state, caller, &validated, now, id);
    let outcome = match scheduled {
        Ok(waiting) => waiting.await,
        Err(e) => {
            if let Some(request) = &claim {
                state
                    .idempotency
                    .settle(&[], std::slice::from_ref(request))
                    .await;
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
            _ => {
                state
                    .idempotency
                    .settle(&[], std::slice::from_ref(request))
                    .await
            }
        }
    }
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

/// The `Herald-Priority` header: a client that sends it lets an overloaded door refuse the
/// request before reading its body.
fn priority_header<B>(req: &Request<B>) -> Result<Option<Priority>, ApiError> {
    let Some(value) = req.headers().get(PRIORITY_HEADER) else {
        return Ok(None);
    };
    match value.to_str().ok().and_then(Priority::from_name) {
        Some(priority) => Ok(Some(priority)),
        None => Err(ApiError::invalid_field(
            "Herald-Priority",
            "Herald-Priority must be high, medium or low",
        )),
    }
}

const PRIORITY_HEADER: &str = "herald-priority";

/// Admission at the door (admission.rs): the 429 `overloaded` to answer while the class is
/// shed.
fn shed(state: &State, priority: Priority) -> Option<Rejection> {
    match state.admission.admit(priority) {
        Decision::Admit => None,
        Decision::Shed => Some(Rejection(Some(priority), ApiError::overloaded(priority))),
    }
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
async fn batch<B>(
    state: &State,
    caller: &Caller,
    req: Request<B>,
) -> Result<HttpResponse, Rejection>
where
    B: hyper::body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    // A batch that declares one priority for all its items can be shed unread.
    if let Some(refusal) = priority_header(&req)?.and_then(|p| shed(state, p)) {
        return Err(refusal);
    }
    let body = read_json_body(state, req).await?;
    let items = parse_batch(&body, state.max_batch)?;
    let now = Utc::now();
    let limits = caller.limits(state);
    let parsed: Vec<Result<Validated<'_>, ApiError>> = items
        .iter()
        .map(|item| parse_notification(item.get().as_bytes(), &limits, now))
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
            (Ok(v), _) => match shed(state, v.priority) {
                Some(Rejection(priority, e)) => Slot::Failed(reject(state, priority, e)),
                None => match schedule(state, caller, &v, now, id) {
                    Ok(rx) => Slot::Waiting(id, v.priority, rx),
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
    let released: Vec<idempotency::Request<'_>> = released.into_iter().cloned().collect();
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
    let mut response = with_headers(json(status, body), limit_headers);
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
    caller: &Caller,
    validated: &Validated<'_>,
    now: chrono::DateTime<Utc>,
    id: Uuid,
) -> Result<oneshot::Receiver<PublishOutcome>, ApiError> {
    let (reply, waiting) = oneshot::channel();
    let envelope = Envelope {
        id,
        priority: validated.priority,
        channel: validated.channel,
        body: validated.encode(id, caller.tenant, now),
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

fn parse_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id).map_err(|_| ApiError::invalid_field("id", "id must be a UUID"))
}

fn dlq_error(err: dlq::DlqError) -> ApiError {
    match err {
        dlq::DlqError::NotFound => ApiError::no_such("dead letter"),
        dlq::DlqError::JetStream(e) => ApiError::unavailable(format!("dead-letter queue: {e}")),
    }
}

/// The query string of the list routes: `?priority=&channel=&status=&since=&cursor=&limit=`
/// (each route says which keys it takes; any other key is a 422 naming it).
struct ListParams {
    priority: Option<Priority>,
    channel: Option<Channel>,
    status: Option<String>,
    since: Option<chrono::DateTime<Utc>>,
    cursor: Option<String>,
    limit: usize,
}

impl ListParams {
    const MAX_LIMIT: usize = 1000;
    const STATUSES: [&'static str; 4] = ["accepted", "retrying", "delivered", "dead"];

    fn parse(query: &str, allowed: &[&str]) -> Result<Self, ApiError> {
        let mut q = ListParams {
            priority: None,
            channel: None,
            status: None,
            since: None,
            cursor: None,
            limit: 100,
        };
        for (key, value) in form_urlencoded::parse(query.as_bytes()) {
            if !allowed.contains(&key.as_ref()) {
                return Err(ApiError::invalid_field(
                    key.as_ref(),
                    format!(
                        "unknown query parameter {key:?}; allowed: {}",
                        allowed.join(", ")
                    ),
                ));
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
                    if !Self::STATUSES.contains(&value.as_ref()) {
                        return Err(ApiError::invalid_field(
                            "status",
                            "status must be accepted, retrying, delivered or dead",
                        ));
                    }
                    q.status = Some(value.to_string());
                }
                "since" => {
                    q.since = Some(
                        chrono::DateTime::parse_from_rfc3339(&value)
                            .map_err(|_| {
                                ApiError::invalid_field(
                                    "since",
                                    "since must be an RFC 3339 time like 2026-11-26T10:00:00Z",
                                )
                            })?
                            .with_timezone(&Utc),
                    )
                }
                "cursor" => q.cursor = Some(value.to_string()),
                "limit" => {
                    q.limit = value
                        .parse()
                        .ok()
                        .filter(|l| (1..=Self::MAX_LIMIT).contains(l))
                        .ok_or_else(|| {
                            ApiError::invalid_field("limit", "limit must be 1 to 1000")
                        })?
                }
                _ => unreachable!("only allowed keys get here"),
            }
        }
        Ok(q)
    }
}

/// `GET /v1/notifications/{id}`: the Redis cache first, then PostgreSQL. Another tenant's
/// id is a 404, exactly like an unknown one.
async fn get_notification(
    state: &State,
    caller: &Caller,
    id: &str,
) -> Result<HttpResponse, ApiError> {
    let id = parse_id(id)?;
    let cached = state
        .status_cache
        .read(id)
        .await
        .filter(|s| s.tenant == caller.tenant);
    let found = match cached {
        Some(s) => Some(s),
        None => status::get(state.tenants.pool(), caller.tenant, id)
            .await
            .map_err(|e| ApiError::unavailable(format!("status store (PostgreSQL): {e}")))?,
    };
    match found {
        Some(s) => Ok(json(
            StatusCode::OK,
            serde_json::to_vec(&s).expect("serializing plain fields cannot fail"),
        )),
        None => Err(ApiError::no_such("notification")),
    }
}

/// `GET /v1/notifications?status=&priority=&channel=&since=&limit=&cursor=`: newest first,
/// keyset-paginated (`cursor` = the previous page's `next_cursor`).
async fn list_notifications(
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
    let (items, next) = status::list(state.tenants.pool(), caller.tenant, &q)
        .await
        .map_err(|e| ApiError::unavailable(format!("status store (PostgreSQL): {e}")))?;
    let body = serde_json::json!({ "items": items, "next_cursor": next });
    Ok(json(StatusCode::OK, body.to_string().into_bytes()))
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
    for (name, value) in &err.headers {
        if let Ok(value) = HeaderValue::from_str(value) {
            headers.insert(*name, value);
        }
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
