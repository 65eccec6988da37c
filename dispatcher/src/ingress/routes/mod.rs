//! Routing of the ingress API, and what every route shares: authentication, rate limits,
//! shedding, body reading and error rendering. Each resource has a file of its own:
//! [`notifications`] (one notification in), [`batch`], [`status`] (reading them back)
//! [`dlq`], [`destinations`], [`webhook_secret`], [`webhook_keys`] and [`operations`].
//! Every failure is an [`ApiError`] rendered in one place.

mod batch;
mod cancel;
mod destinations;
mod dlq;
mod notifications;
pub mod openapi;
mod operations;
mod query;
mod status;
mod webhook_keys;
mod webhook_secret;

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
use crate::error::{ApiError, OVERLOADED};
use crate::idempotency::{self, Claim};
use crate::lifecycle::{json, Health};
use crate::model::{
    new_id, parse_batch, parse_notification, Channel, Limits, Priority, Validated,
    MAX_IDEMPOTENCY_KEY_LEN,
};
use crate::publisher::{Envelope, PublishOutcome, Refused};
use crate::ratelimit::{self, Limit};
use crate::status::NotificationStatus;
use crate::tenants;
use crate::trace::{self, TraceParent};

pub type HttpResponse = Response<Full<Bytes>>;

/// Routes one request. The probes, the contract and the console are open; every /v1 route
/// needs a tenant. `/metrics` is not here: it answers on `--metrics-listen` only.
pub async fn handle<B>(state: Arc<State>, req: Request<B>) -> HttpResponse
where
    B: hyper::body::Body + Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    if let Some(response) = state.health.respond_probe(req.method(), req.uri().path()) {
        return response;
    }
    let result = match (req.uri().path(), req.method()) {
        (openapi::PATH, &Method::GET) => Ok(json(StatusCode::OK, openapi::document().to_vec())),
        (path, method) if super::console::is_console_path(path) => {
            super::console::respond(method, path).map_err(Rejection::from)
        }
        (path, _) if Health::is_probe_path(path) || path == openapi::PATH => {
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

/// Declares the /v1 routes once. Each line names an operation, its handler's contract (the
/// type its `utoipa::path` generates, which holds the method, the path and the OpenAPI
/// operation) and how a request reaches the handler. The router's table ([`routes`]), its
/// dispatch and the contract's /v1 paths all follow from this list, so neither the router
/// nor the contract can have a route the other lacks.
macro_rules! v1_routes {
    (
        |$state:ident, $caller:ident, $req:ident, $id:ident, $query:ident|
        $($operation:ident: $contract:path => $handle:expr;)*
    ) => {
        /// An operation of the /v1 API.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Operation {
            $($operation,)*
        }

        /// Every /v1 route: its method, its path (`{id}` standing for one segment) and
        /// its operation.
        pub fn routes() -> &'static [(Method, String, Operation)] {
            static ROUTES: std::sync::OnceLock<Vec<(Method, String, Operation)>> =
                std::sync::OnceLock::new();
            ROUTES.get_or_init(|| {
                let mut routes = Vec::new();
                $(
                    for method in <$contract as utoipa::Path>::methods() {
                        let path = <$contract as utoipa::Path>::path();
                        routes.push((http_method(&method), path, Operation::$operation));
                    }
                )*
                routes
            })
        }

        /// The contract's /v1 paths, and the schemas they refer to.
        fn v1_contract() -> (
            utoipa::openapi::path::Paths,
            Vec<(String, utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>)>,
        ) {
            // What `#[derive(OpenApi)]` does for each path it lists: the operation with
            // its handler's tags, and the schemas it refers to.
            let mut paths = utoipa::openapi::path::Paths::new();
            let mut schemas = Vec::new();
            $(
                let mut operation = <$contract as utoipa::Path>::operation();
                let tags = <$contract as utoipa::__dev::Tags>::tags();
                operation.tags = Some(tags.into_iter().map(String::from).collect());
                paths.add_path_operation(
                    <$contract as utoipa::Path>::path(),
                    <$contract as utoipa::Path>::methods(),
                    operation,
                );
                <$contract as utoipa::__dev::SchemaReferences>::schemas(&mut schemas);
            )*
            (paths, schemas)
        }

        /// Answers an authenticated /v1 request.
        async fn v1<B>(
            $state: &State,
            $caller: &Caller,
            $req: Request<B>,
        ) -> Result<HttpResponse, Rejection>
        where
            B: hyper::body::Body + Send,
            B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
        {
            let $query = $req.uri().query().unwrap_or("");
            let (operation, $id) = resolve($req.method(), $req.uri().path())?;
            let $id = $id.unwrap_or_default();
            match operation {
                $(Operation::$operation => Ok($handle?),)*
            }
        }
    };
}

v1_routes! {
    |state, caller, req, id, query|
    ListNotifications: status::__path_list_notifications =>
        status::list_notifications(state, caller, query).await;
    SendNotification: notifications::__path_single =>
        traced(state, "herald.ingest", req, async |req, trace| {
            notifications::single(state, caller, req, &trace).await
        })
        .await;
    SendBatch: batch::__path_batch =>
        traced(state, "herald.ingest.batch", req, async |req, trace| {
            batch::batch(state, caller, req, &trace).await
        })
        .await;
    GetNotification: status::__path_get_notification =>
        status::get_notification(state, caller, id).await;
    ListAttempts: status::__path_list_attempts => status::list_attempts(state, caller, id).await;
    CancelNotification: cancel::__path_by_id => cancel::by_id(state, caller, id).await;
    CancelByKey: cancel::__path_by_key => cancel::by_key(state, caller, req).await;
    GetSummary: status::__path_summary => status::summary(state, caller, query).await;
    ListDeadLetters: dlq::__path_list => dlq::list(state, caller, query).await;
    ReplayDeadLetters: dlq::__path_replay_matching => dlq::replay_matching(state, caller, query).await;
    DeleteDeadLetters: dlq::__path_delete_matching => dlq::delete_matching(state, caller, query).await;
    ReplayDeadLetter: dlq::__path_replay => dlq::replay(state, caller, id).await;
    DeleteDeadLetter: dlq::__path_delete => dlq::delete(state, caller, id).await;
    ListDestinations: destinations::__path_list => destinations::list(state, caller).await;
    GetDestinationDefaults: destinations::__path_get_defaults =>
        destinations::get_defaults(state, caller).await;
    SetDestinationDefaults: destinations::__path_set_defaults =>
        destinations::set_defaults(state, caller, req).await;
    GetDestination: destinations::__path_get => destinations::get(state, caller, id).await;
    SetDestinationRate: destinations::__path_set_rate => {
        let id = id.to_string();
        destinations::set_rate(state, caller, &id, req).await
    };
    PauseDestination: destinations::__path_pause => destinations::pause(state, caller, id).await;
    ResumeDestination: destinations::__path_resume => destinations::resume(state, caller, id).await;
    RotateWebhookSecret: webhook_secret::__path_rotate =>
        webhook_secret::rotate(state, caller, query).await;
    DropEndpointSecret: webhook_secret::__path_drop_endpoint =>
        webhook_secret::drop_endpoint(state, caller, query).await;
    RotateWebhookKey: webhook_keys::__path_rotate => webhook_keys::rotate(state, caller, query).await;
    ListWebhookKeys: webhook_keys::__path_list => webhook_keys::list(state, caller).await;
    GetOperationsEndpoint: operations::__path_get => operations::get(state, caller).await;
    SetOperationsEndpoint: operations::__path_set => operations::set(state, caller, req).await;
}

/// The `http` method of a contract's method.
fn http_method(method: &utoipa::openapi::path::HttpMethod) -> Method {
    use utoipa::openapi::path::HttpMethod;
    match method {
        HttpMethod::Get => Method::GET,
        HttpMethod::Post => Method::POST,
        HttpMethod::Put => Method::PUT,
        HttpMethod::Delete => Method::DELETE,
        HttpMethod::Patch => Method::PATCH,
        HttpMethod::Head => Method::HEAD,
        HttpMethod::Options => Method::OPTIONS,
        HttpMethod::Trace => Method::TRACE,
    }
}

/// A send request (one or a batch) under its span: the request's `traceparent` is
/// continued (or one started), and the span exported with the answer's status.
async fn traced<B>(
    state: &State,
    name: &'static str,
    req: Request<B>,
    send: impl AsyncFnOnce(Request<B>, TraceParent) -> Result<HttpResponse, Rejection>,
) -> Result<HttpResponse, Rejection> {
    let trace = trace_of(state, &req);
    let start = state.spans.clock_for(&trace.0);
    let result = send(req, trace.0).await;
    let status = match &result {
        Ok(response) => response.status(),
        Err(Rejection(_, err)) => err.status,
    };
    record_request(state, name, trace, start, status);
    result
}

/// The operation for `method` on `path`, with the `{id}` segment if its route has one:
/// 404 when no route has the path, 405 (naming the methods it has) when none has the
/// method. A route without `{id}` wins over one with it (`/v1/notifications/batch` is
/// not a notification id).
pub fn resolve<'p>(
    method: &Method,
    path: &'p str,
) -> Result<(Operation, Option<&'p str>), ApiError> {
    // Literal routes first; no allocation unless the answer is a 405.
    for literal in [true, false] {
        let fitting = || {
            routes().iter().filter_map(move |(m, template, op)| {
                let id = path_match(template, path)?;
                (id.is_none() == literal).then_some((m, *op, id))
            })
        };
        if let Some((_, op, id)) = fitting().find(|(m, _, _)| *m == method) {
            return Ok((op, id));
        }
        if fitting().next().is_some() {
            let allow: Vec<&str> = fitting().map(|(m, _, _)| m.as_str()).collect();
            return Err(ApiError::method_not_allowed(allow.join(", ")));
        }
    }
    Err(ApiError::not_found())
}

/// `Some(id)` or `Some(None)` when `path` fits `template`, `None` when it does not.
fn path_match<'p>(template: &str, path: &'p str) -> Option<Option<&'p str>> {
    let mut id = None;
    let mut segments = path.split('/');
    for expected in template.split('/') {
        let segment = segments.next()?;
        if expected == "{id}" {
            if segment.is_empty() {
                return None;
            }
            id = Some(segment);
        } else if expected != segment {
            return None;
        }
    }
    segments.next().is_none().then_some(id)
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
            egress: &state.egress,
            schedule_horizon: state.schedule_horizon,
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

impl From<crate::model::Invalid> for Rejection {
    fn from(invalid: crate::model::Invalid) -> Self {
        Rejection(None, ApiError::from(invalid))
    }
}

impl From<ApiError> for Rejection {
    fn from(err: ApiError) -> Self {
        Rejection(None, err)
    }
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
fn shed(state: &State, caller: &Caller, priority: Priority) -> Option<Rejection> {
    match state.admission.admit(caller.tenant, priority) {
        Decision::Admit => None,
        Decision::Shed { retry_after } => Some(Rejection(
            Some(priority),
            ApiError::overloaded(priority, retry_after),
        )),
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

/// The request's span: a child of its `traceparent` (and that parent's span id), or a
/// new trace, sampled when spans are exported.
fn trace_of<B>(state: &State, req: &Request<B>) -> (TraceParent, Option<u64>) {
    TraceParent::continue_or_start(
        req.headers()
            .get(trace::HEADER)
            .and_then(|v| v.to_str().ok()),
        state.spans.is_on(),
    )
}

/// Exports the span of a send request (when spans are on), from `start` to now.
fn record_request(
    state: &State,
    name: &'static str,
    (request, parent): (TraceParent, Option<u64>),
    start: Option<std::time::SystemTime>,
    status: StatusCode,
) {
    let (Some(start), Some(end)) = (start, state.spans.clock_for(&request)) else {
        return;
    };
    state.spans.record(trace::Span {
        name,
        kind: opentelemetry::trace::SpanKind::Server,
        context: request,
        parent,
        parent_is_remote: true,
        start,
        end,
        attributes: vec![opentelemetry::KeyValue::new(
            "http.response.status_code",
            i64::from(status.as_u16()),
        )],
        error: status.is_server_error().then(|| status.to_string()),
    });
}

/// Encodes the notification and queues it for the publishers; the receiver yields
/// JetStream's answer.
fn schedule(
    state: &State,
    caller: &Caller,
    validated: &Validated<'_>,
    now: chrono::DateTime<Utc>,
    id: Uuid,
    request: &TraceParent,
) -> Result<oneshot::Receiver<PublishOutcome>, ApiError> {
    let (envelope, waiting) = envelope(caller, validated, now, id, request);
    match state.submitter.queue(envelope) {
        Ok(()) => Ok(waiting),
        Err(refused) => Err(refusal(refused, validated.priority)),
    }
}

/// The notification with its id, encoded, and the receiver of JetStream's answer.
fn envelope(
    caller: &Caller,
    validated: &Validated<'_>,
    now: chrono::DateTime<Utc>,
    id: Uuid,
    request: &TraceParent,
) -> (Envelope, oneshot::Receiver<PublishOutcome>) {
    let (reply, waiting) = oneshot::channel();
    let envelope = Envelope {
        id,
        priority: validated.priority,
        channel: validated.channel,
        body: validated.encode(id, caller.tenant, now),
        scheduled_at: Instant::now(),
        // Its publish is a span of the request's trace.
        trace: request.child(),
        request_span: request.span_id,
        reply,
    };
    (envelope, waiting)
}

/// The answer to a request whose notification the door could not take.
fn refusal(refused: Refused, priority: Priority) -> ApiError {
    match refused {
        Refused::Closed => ApiError::shutting_down(),
        Refused::Full => ApiError::queue_full(priority),
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

fn parse_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id).map_err(|_| ApiError::invalid_field("id", "id must be a UUID"))
}
/// Counts the rejection of one batch item and passes the error on.
fn reject(state: &State, priority: Option<Priority>, err: ApiError) -> ApiError {
    state.metrics.rejected(priority, err.code);
    err
}

/// A small JSON body of one field, read and decoded: anything else is a 422 naming
/// `field`, with the `shape` expected.
async fn read_one_field<T, B>(
    state: &State,
    req: Request<B>,
    field: &str,
    shape: &str,
) -> Result<T, ApiError>
where
    T: serde::de::DeserializeOwned,
    B: hyper::body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let body = read_json_body(state, req).await?;
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::invalid_field(field, format!("expected {shape}: {e}")))
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

/// A JSON response with `body`, one of the contract's types.
/// 204, with no body and so no content type.
fn no_content() -> HttpResponse {
    let mut response = json(StatusCode::NO_CONTENT, Vec::new());
    response.headers_mut().remove(CONTENT_TYPE);
    response
}

fn json_of(status: StatusCode, body: &impl Serialize) -> HttpResponse {
    json(
        status,
        serde_json::to_vec(body).expect("the contract's types serialize"),
    )
}

fn error_response(err: &ApiError) -> HttpResponse {
    let mut response = json(err.status, err.body());
    let headers = response.headers_mut();
    if let Some(seconds) = err.retry_after {
        headers.insert(RETRY_AFTER, HeaderValue::from(seconds));
    }
    if let Some(allow) = err
        .allow
        .as_deref()
        .and_then(|a| HeaderValue::from_str(a).ok())
    {
        headers.insert(ALLOW, allow);
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

    #[test]
    fn requests_resolve_to_their_route_or_to_404_and_405() {
        let id = "019ac0e1-0000-7000-8000-000000000000";
        fn ok(method: Method, path: &str) -> Result<(Operation, Option<&str>), StatusCode> {
            resolve(&method, path).map_err(|e| e.status)
        }
        assert_eq!(
            ok(Method::GET, &format!("/v1/notifications/{id}/attempts")),
            Ok((Operation::ListAttempts, Some(id)))
        );
        assert_eq!(
            ok(Method::POST, "/v1/notifications/batch"),
            Ok((Operation::SendBatch, None))
        );
        assert_eq!(
            ok(Method::DELETE, &format!("/v1/dlq/{id}")),
            Ok((Operation::DeleteDeadLetter, Some(id)))
        );
        // A literal route wins over `{id}`: GET on the batch route is a 405, not a lookup.
        let wrong = resolve(&Method::GET, "/v1/notifications/batch").unwrap_err();
        assert_eq!(wrong.allow.as_deref(), Some("POST"));
        let wrong = resolve(&Method::PUT, "/v1/notifications").unwrap_err();
        assert_eq!(wrong.allow.as_deref(), Some("GET, POST"));
        let wrong = resolve(&Method::DELETE, "/v1/dlq/replay").unwrap_err();
        assert_eq!(wrong.allow.as_deref(), Some("POST"));
        for path in [
            "/v1/notifications/",
            "/v1/notifications/a/b",
            "/v1/dlq//replay",
            "/v1/nothing",
        ] {
            assert_eq!(ok(Method::GET, path), Err(StatusCode::NOT_FOUND), "{path}");
        }
    }
}
