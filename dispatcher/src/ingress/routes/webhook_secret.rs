//! `/v1/webhook-secret`: the calling tenant's HMAC signing secrets. `POST …/rotate` gives a
//! fresh secret to the tenant, or with `url` to one endpoint (the exact receiver URL), with
//! the secret it replaces still signing beside it for an overlap, so receivers switch
//! without a gap. `DELETE ?url=` gives an endpoint back to the tenant's secret.

use super::*;

/// Longest overlap a rotation may ask for.
const MAX_OVERLAP_SECONDS: u64 = 7 * 24 * 3600;

/// Default overlap: a day.
pub(super) const DEFAULT_OVERLAP_SECONDS: u64 = 24 * 3600;

/// Longest endpoint URL (as a notification's recipient).
const MAX_URL_LEN: usize = 2048;

/// Rotate a webhook signing secret: the tenant's, or with `url` that endpoint's own. The
/// new secret is returned once. Until `previous_expires_at` every webhook carries two
/// signatures (Standard Webhooks allows several): one with the new secret and one with
/// the secret it replaced (for an endpoint's first secret, the tenant's), so a receiver
/// verifies with either. An endpoint's own secret signs only the webhooks to that exact
/// URL, so receivers that share a host cannot forge each other's webhooks. Delivery
/// processes see a rotation within their tenant cache's lifetime (a minute).
#[utoipa::path(
    post,
    operation_id = "rotate_webhook_secret",
    path = "/v1/webhook-secret/rotate",
    tag = "webhooks",
    params(
        ("overlap_seconds" = Option<u64>, Query, description = "How long the replaced secret keeps signing: 0 to 604800 (7 days), default 86400", maximum = 604800),
        ("url" = Option<String>, Query, description = "An endpoint: the exact webhook URL notifications name as `recipient`. Absent: the tenant's secret, which signs every endpoint without one of its own"),
    ),
    responses(
        (status = 200, description = "The new secret (shown once) and when the previous one stops signing", body = crate::tenants::Rotated),
        (status = 409, description = "No tenant: the server runs with `--auth off`, whose webhooks are signed with `--webhook-secret`", body = crate::error::Body),
        (status = 422, description = "`overlap_seconds` or `url` is invalid", body = crate::error::Body),
    )
)]
pub(super) async fn rotate(
    state: &State,
    caller: &Caller,
    query: &str,
) -> Result<HttpResponse, ApiError> {
    let mut overlap = DEFAULT_OVERLAP_SECONDS;
    let mut url = None;
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        match key.as_ref() {
            "overlap_seconds" => overlap = overlap_seconds(&value)?,
            "url" => url = Some(endpoint_url(&value)?),
            other => {
                return Err(super::query::unknown_parameter(
                    other,
                    &["overlap_seconds", "url"],
                ))
            }
        }
    }
    let tenant = tenant_of(caller)?;
    let overlap = std::time::Duration::from_secs(overlap);
    let (pool, key) = (state.tenants.pool(), state.tenants.sealing_key());
    let rotated = match url {
        Some(url) => tenants::rotate_endpoint_secret(pool, key, tenant, &url, overlap).await,
        None => tenants::rotate_key(pool, key, tenant, tenants::KeyKind::Secret, overlap).await,
    };
    found(rotated)
}

/// Drop an endpoint's own secret: the tenant's secret signs its webhooks again, at once
/// (within a minute in every delivery process).
#[utoipa::path(
    delete,
    operation_id = "drop_endpoint_secret",
    path = "/v1/webhook-secret",
    tag = "webhooks",
    params(
        ("url" = String, Query, description = "The endpoint: the exact webhook URL its secret was given for"),
    ),
    responses(
        (status = 204, description = "The endpoint is signed with the tenant's secret again"),
        (status = 404, description = "The endpoint has no secret of its own", body = crate::error::Body),
        (status = 409, description = "No tenant: the server runs with `--auth off`", body = crate::error::Body),
        (status = 422, description = "`url` is missing or invalid", body = crate::error::Body),
    )
)]
pub(super) async fn drop_endpoint(
    state: &State,
    caller: &Caller,
    query: &str,
) -> Result<HttpResponse, ApiError> {
    let mut url = None;
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        match key.as_ref() {
            "url" => url = Some(endpoint_url(&value)?),
            other => return Err(super::query::unknown_parameter(other, &["url"])),
        }
    }
    let url = url.ok_or_else(|| ApiError::invalid_field("url", "url is required"))?;
    let tenant = tenant_of(caller)?;
    match tenants::drop_endpoint_secret(state.tenants.pool(), tenant, &url).await {
        Ok(true) => Ok(no_content()),
        Ok(false) => Err(ApiError::not_found()),
        Err(err) => Err(ApiError::unavailable(err.to_string())),
    }
}

/// 200 with what the tenant store found, 404 when the tenant is gone, 503 when the store
/// cannot be asked: the answer of every route on a tenant's keys.
pub(super) fn found<T: Serialize>(
    result: Result<Option<T>, tenants::TenantError>,
) -> Result<HttpResponse, ApiError> {
    match result {
        Ok(Some(found)) => Ok(json_of(StatusCode::OK, &found)),
        Ok(None) => Err(ApiError::not_found()),
        Err(err) => Err(ApiError::unavailable(err.to_string())),
    }
}

/// An `overlap_seconds` value: 0 to 7 days.
pub(super) fn overlap_seconds(value: &str) -> Result<u64, ApiError> {
    value
        .parse()
        .ok()
        .filter(|s| *s <= MAX_OVERLAP_SECONDS)
        .ok_or_else(|| {
            ApiError::invalid_field(
                "overlap_seconds",
                format!("overlap_seconds is 0 to {MAX_OVERLAP_SECONDS}"),
            )
        })
}

/// The calling tenant; with `--auth off` there is none to hold keys.
pub(super) fn tenant_of(caller: &Caller) -> Result<Uuid, ApiError> {
    if caller.tenant == tenants::ANONYMOUS {
        return Err(ApiError::no_tenant(
            "no tenant: with --auth off webhooks are signed with --webhook-secret, which is rotated by restarting delivery with a new one",
        ));
    }
    Ok(caller.tenant)
}

/// An endpoint's URL: absolute http(s), as a webhook recipient.
pub(super) fn endpoint_url(value: &str) -> Result<String, ApiError> {
    let fail = || {
        ApiError::invalid_field(
            "url",
            format!("url is an absolute http or https URL of at most {MAX_URL_LEN} bytes"),
        )
    };
    if value.len() > MAX_URL_LEN {
        return Err(fail());
    }
    match value.parse::<http::Uri>() {
        Ok(uri)
            if matches!(uri.scheme_str(), Some("http" | "https")) && uri.authority().is_some() =>
        {
            Ok(value.to_string())
        }
        _ => Err(fail()),
    }
}
