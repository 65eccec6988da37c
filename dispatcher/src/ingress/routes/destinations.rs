//! The destinations API, for the operator on call: `GET /v1/destinations`,
//! `GET /v1/destinations/{destination}`, `POST .../pause`, `POST .../resume`, and
//! `PUT /v1/destinations/{destination}` (its rate), and `GET`/`PUT /v1/destinations/defaults`
//! (the rate of the tenant's destinations that have none of their own).
//!
//! A destination is `<channel>:<host>:<port>`, such as `webhook:hooks.example.com:443`
//! (percent-encode it in the path). Its health is what the delivery processes last wrote
//! to the `<prefix>DESTINATIONS` bucket; its controls are written there by this API, and
//! every delivery process follows them within moments. Both belong to the caller's tenant.

use async_nats::jetstream::kv;
use futures::TryStreamExt;

use serde::Deserialize;

use super::*;
use crate::buckets::{
    bucket_filter, bucket_key, defaults_key, name_in_key, CircuitState, Control, DisabledEndpoint,
    HealthRecord, TenantDefaults,
};

/// One destination as the API shows it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub(super) struct DestinationView {
    /// `<channel>:<host>:<port>`.
    destination: String,
    /// `closed` (healthy), `open` (failing: its messages wait) or `half_open` (a probe is
    /// out). `closed` for one no delivery process has reported on.
    state: CircuitState,
    /// Set by `pause`: its messages wait, without spending attempts, until `resume`.
    paused: bool,
    /// The operator's rate; absent: the deployment's default (`--destination-rate`).
    rate_per_sec: Option<f64>,
    /// The last report of a delivery process, if any.
    health: Option<HealthRecord>,
    /// Its endpoints (URLs) that are disabled, by a 410 or by failing for
    /// `--disable-after`: their notifications are dead-lettered until `resume`.
    disabled: Vec<DisabledEndpoint>,
}

/// The answer of `GET /v1/destinations`.
#[derive(Serialize, utoipa::ToSchema)]
pub(super) struct DestinationList {
    /// Every destination of the tenant that has a report or a control, by name.
    destinations: Vec<DestinationView>,
}

/// The body of `PUT /v1/destinations/{destination}`.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct RateRequest {
    /// Sends per second to this destination (above 0); `null`: back to the default.
    rate_per_sec: Option<f64>,
}

async fn bucket(state: &State) -> Result<kv::Store, ApiError> {
    ensure_ready(state)?;
    state
        .js
        .get_key_value(&state.names.destinations_bucket)
        .await
        .map_err(|e| ApiError::unavailable(format!("destinations bucket: {e}")))
}

fn unavailable(e: impl std::fmt::Display) -> ApiError {
    ApiError::unavailable(format!("destinations bucket: {e}"))
}

/// A destination named in a path: percent-decoded and checked.
fn parse_destination(segment: &str) -> Result<String, ApiError> {
    let invalid = || {
        ApiError::invalid_field(
            "destination",
            "destination must be <channel>:<host>:<port>, such as webhook:hooks.example.com:443",
        )
    };
    let name = percent_encoding::percent_decode_str(segment)
        .decode_utf8()
        .map_err(|_| invalid())?;
    let (channel, rest) = name.split_once(':').ok_or_else(invalid)?;
    let (host, port) = rest.rsplit_once(':').ok_or_else(invalid)?;
    let known_channel = Channel::ALL.iter().any(|c| c.as_str() == channel);
    let host_ok = !host.is_empty()
        && host.len() <= 255
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-._[]:".contains(c));
    if !known_channel || !host_ok || port.parse::<u16>().is_err() {
        return Err(invalid());
    }
    Ok(format!("{channel}:{}:{port}", host.to_ascii_lowercase()))
}

async fn read<T: serde::de::DeserializeOwned>(
    kv: &kv::Store,
    key: String,
) -> Result<Option<T>, ApiError> {
    let value = kv.get(key).await.map_err(unavailable)?;
    Ok(value.and_then(|v| serde_json::from_slice(&v).ok()))
}

/// Every key of the bucket (all tenants: keys hold no secrets, and each caller filters by
/// its own prefix).
async fn all_keys(kv: &kv::Store) -> Result<Vec<String>, ApiError> {
    kv.keys()
        .await
        .map_err(unavailable)?
        .try_collect()
        .await
        .map_err(unavailable)
}

/// Every disabled endpoint of the tenant, from the bucket.
async fn disabled_endpoints(
    kv: &kv::Store,
    keys: &[String],
    tenant: &Uuid,
) -> Result<Vec<(String, DisabledEndpoint)>, ApiError> {
    let prefix = bucket_filter("disabled", tenant);
    let prefix = prefix.trim_end_matches('*');
    let mut found = Vec::new();
    for key in keys.iter().filter(|k| k.starts_with(prefix)) {
        if let Some(record) = read::<DisabledEndpoint>(kv, key.clone()).await? {
            found.push((key.clone(), record));
        }
    }
    Ok(found)
}

async fn view(
    kv: &kv::Store,
    tenant: &Uuid,
    destination: &str,
    disabled: &[(String, DisabledEndpoint)],
) -> Result<DestinationView, ApiError> {
    let health: Option<HealthRecord> = read(kv, bucket_key("health", tenant, destination)).await?;
    let control: Option<Control> = read(kv, bucket_key("control", tenant, destination)).await?;
    let control = control.unwrap_or_else(|| Control::default_for(destination));
    Ok(DestinationView {
        destination: destination.to_string(),
        state: health.as_ref().map_or(CircuitState::Closed, |h| h.state),
        paused: control.paused,
        rate_per_sec: control.rate_per_sec,
        health,
        disabled: disabled
            .iter()
            .filter(|(_, d)| d.destination == destination)
            .map(|(_, d)| d.clone())
            .collect(),
    })
}

/// One destination's view, its disabled endpoints read from the bucket for it alone.
async fn view_alone(
    kv: &kv::Store,
    tenant: &Uuid,
    destination: &str,
) -> Result<DestinationView, ApiError> {
    let disabled = disabled_endpoints(kv, &all_keys(kv).await?, tenant).await?;
    view(kv, tenant, destination, &disabled).await
}

/// `GET /v1/destinations`: the tenant's destinations with a report or a control.
#[utoipa::path(
    get,
    operation_id = "list_destinations",
    path = "/v1/destinations",
    tag = "destinations",
    responses(
        (status = 200, description = "The tenant's destinations, by name", body = DestinationList),
    )
)]
pub(super) async fn list(state: &State, caller: &Caller) -> Result<HttpResponse, ApiError> {
    let kv = bucket(state).await?;
    let keys = all_keys(&kv).await?;
    let mut names = std::collections::BTreeSet::new();
    for kind in ["health", "control"] {
        let prefix = bucket_filter(kind, &caller.tenant);
        let prefix = prefix.trim_end_matches('*');
        let of_kind = keys.iter().filter(|k| k.starts_with(prefix));
        names.extend(of_kind.filter_map(|k| name_in_key(k)));
    }
    let disabled = disabled_endpoints(&kv, &keys, &caller.tenant).await?;
    names.extend(disabled.iter().map(|(_, d)| d.destination.clone()));
    let mut destinations = Vec::with_capacity(names.len());
    for name in &names {
        destinations.push(view(&kv, &caller.tenant, name, &disabled).await?);
    }
    Ok(json_of(StatusCode::OK, &DestinationList { destinations }))
}

/// `GET /v1/destinations/{destination}`.
#[utoipa::path(
    get,
    operation_id = "get_destination",
    path = "/v1/destinations/{id}",
    tag = "destinations",
    params(("id" = String, Path, description = "`<channel>:<host>:<port>`, percent-encoded")),
    responses(
        (status = 200, description = "The destination's health and controls", body = DestinationView),
        (status = 404, description = "No report and no control for this destination", body = crate::error::Body),
        (status = 422, description = "`destination` is malformed", body = crate::error::Body),
    )
)]
pub(super) async fn get(
    state: &State,
    caller: &Caller,
    destination: &str,
) -> Result<HttpResponse, ApiError> {
    let destination = parse_destination(destination)?;
    let kv = bucket(state).await?;
    let view = view_alone(&kv, &caller.tenant, &destination).await?;
    if view.health.is_none()
        && !view.paused
        && view.rate_per_sec.is_none()
        && view.disabled.is_empty()
    {
        return Err(ApiError::no_such("destination"));
    }
    Ok(json_of(StatusCode::OK, &view))
}

/// Changes the tenant's control of `destination` and answers with the destination.
async fn control(
    state: &State,
    caller: &Caller,
    destination: &str,
    change: impl FnOnce(&mut Control),
) -> Result<HttpResponse, ApiError> {
    let destination = parse_destination(destination)?;
    let kv = bucket(state).await?;
    let key = bucket_key("control", &caller.tenant, &destination);
    let mut control: Control = read(&kv, key.clone())
        .await?
        .unwrap_or_else(|| Control::default_for(&destination));
    change(&mut control);
    if control == Control::default_for(&destination) {
        kv.delete(&key).await.map_err(unavailable)?;
    } else {
        let body = serde_json::to_vec(&control).expect("serializable");
        kv.put(&key, body.into()).await.map_err(unavailable)?;
    }
    let view = view_alone(&kv, &caller.tenant, &destination).await?;
    Ok(json_of(StatusCode::OK, &view))
}

/// `POST /v1/destinations/{destination}/pause`: its messages wait, spending no attempts.
#[utoipa::path(
    post,
    operation_id = "pause_destination",
    path = "/v1/destinations/{id}/pause",
    tag = "destinations",
    params(("id" = String, Path, description = "`<channel>:<host>:<port>`, percent-encoded")),
    responses(
        (status = 200, description = "Paused (idempotent)", body = DestinationView),
        (status = 422, description = "`destination` is malformed", body = crate::error::Body),
    )
)]
pub(super) async fn pause(
    state: &State,
    caller: &Caller,
    destination: &str,
) -> Result<HttpResponse, ApiError> {
    control(state, caller, destination, |c| c.paused = true).await
}

/// `POST /v1/destinations/{destination}/resume`.
#[utoipa::path(
    post,
    operation_id = "resume_destination",
    path = "/v1/destinations/{id}/resume",
    tag = "destinations",
    params(("id" = String, Path, description = "`<channel>:<host>:<port>`, percent-encoded")),
    responses(
        (status = 200, description = "Resumed (idempotent): waiting messages go out within seconds", body = DestinationView),
        (status = 422, description = "`destination` is malformed", body = crate::error::Body),
    )
)]
pub(super) async fn resume(
    state: &State,
    caller: &Caller,
    destination: &str,
) -> Result<HttpResponse, ApiError> {
    enable_endpoints(state, caller, &parse_destination(destination)?).await?;
    control(state, caller, destination, |c| c.paused = false).await
}

/// Re-enables every endpoint of `destination` that was disabled (a 410).
async fn enable_endpoints(
    state: &State,
    caller: &Caller,
    destination: &str,
) -> Result<(), ApiError> {
    let kv = bucket(state).await?;
    let keys = all_keys(&kv).await?;
    for (key, record) in disabled_endpoints(&kv, &keys, &caller.tenant).await? {
        if record.destination == destination {
            kv.delete(&key).await.map_err(unavailable)?;
        }
    }
    Ok(())
}

/// `PUT /v1/destinations/{destination}`: sets or clears its rate.
#[utoipa::path(
    put,
    operation_id = "set_destination_rate",
    path = "/v1/destinations/{id}",
    tag = "destinations",
    params(("id" = String, Path, description = "`<channel>:<host>:<port>`, percent-encoded")),
    request_body = RateRequest,
    responses(
        (status = 200, description = "The rate is set; messages beyond it wait", body = DestinationView),
        (status = 422, description = "`destination` or `rate_per_sec` is invalid", body = crate::error::Body),
    )
)]
pub(super) async fn set_rate<B>(
    state: &State,
    caller: &Caller,
    destination: &str,
    req: Request<B>,
) -> Result<HttpResponse, ApiError>
where
    B: hyper::body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let rate = rate_of(state, req).await?;
    control(state, caller, destination, |c| c.rate_per_sec = rate).await
}

/// The `rate_per_sec` of a `PUT` body, checked.
async fn rate_of<B>(state: &State, req: Request<B>) -> Result<Option<f64>, ApiError>
where
    B: hyper::body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let request: RateRequest = read_one_field(
        state,
        req,
        "rate_per_sec",
        r#"{"rate_per_sec": number or null}"#,
    )
    .await?;
    let rate = request.rate_per_sec;
    if rate.is_some_and(|r| !(r.is_finite() && r > 0.0 && r <= 1e6)) {
        return Err(ApiError::invalid_field(
            "rate_per_sec",
            "rate_per_sec must be above 0 and at most 1000000, or null",
        ));
    }
    Ok(rate)
}

/// `GET /v1/destinations/defaults`.
#[utoipa::path(
    get,
    operation_id = "get_destination_defaults",
    path = "/v1/destinations/defaults",
    tag = "destinations",
    responses(
        (status = 200, description = "The tenant's defaults for its destinations", body = TenantDefaults),
    )
)]
pub(super) async fn get_defaults(state: &State, caller: &Caller) -> Result<HttpResponse, ApiError> {
    let kv = bucket(state).await?;
    let defaults: TenantDefaults = read(&kv, defaults_key(&caller.tenant))
        .await?
        .unwrap_or_default();
    Ok(json_of(StatusCode::OK, &defaults))
}

/// `PUT /v1/destinations/defaults`: the rate of every destination of the tenant that has
/// none of its own.
#[utoipa::path(
    put,
    operation_id = "set_destination_defaults",
    path = "/v1/destinations/defaults",
    tag = "destinations",
    request_body = RateRequest,
    responses(
        (status = 200, description = "Set; delivery processes follow within moments", body = TenantDefaults),
        (status = 422, description = "`rate_per_sec` is invalid", body = crate::error::Body),
    )
)]
pub(super) async fn set_defaults<B>(
    state: &State,
    caller: &Caller,
    req: Request<B>,
) -> Result<HttpResponse, ApiError>
where
    B: hyper::body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let defaults = TenantDefaults {
        rate_per_sec: rate_of(state, req).await?,
    };
    let kv = bucket(state).await?;
    let key = defaults_key(&caller.tenant);
    if defaults == TenantDefaults::default() {
        kv.delete(&key).await.map_err(unavailable)?;
    } else {
        let body = serde_json::to_vec(&defaults).expect("serializable");
        kv.put(&key, body.into()).await.map_err(unavailable)?;
    }
    Ok(json_of(StatusCode::OK, &defaults))
}
