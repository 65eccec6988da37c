//! `POST /v1/webhook-secret/rotate`: a fresh signing secret for the calling tenant, with the
//! one it replaces still signing beside it for an overlap, so receivers switch without a gap.

use super::*;

/// Longest overlap a rotation may ask for.
const MAX_OVERLAP_SECONDS: u64 = 7 * 24 * 3600;

/// Default overlap: a day.
const DEFAULT_OVERLAP_SECONDS: u64 = 24 * 3600;

/// Rotate the tenant's webhook signing secret. The new secret is returned once. Until
/// `previous_expires_at` every webhook carries two signatures (Standard Webhooks allows
/// several): one with the new secret and one with the secret it replaced, so a receiver
/// verifies with either. Delivery processes see the rotation within their tenant cache's
/// lifetime (a minute).
#[utoipa::path(
    post,
    operation_id = "rotate_webhook_secret",
    path = "/v1/webhook-secret/rotate",
    tag = "webhooks",
    params(
        ("overlap_seconds" = Option<u64>, Query, description = "How long the replaced secret keeps signing: 0 to 604800 (7 days), default 86400", maximum = 604800),
    ),
    responses(
        (status = 200, description = "The new secret (shown once) and when the previous one stops signing", body = crate::tenants::RotatedSecret),
        (status = 409, description = "No tenant: the server runs with `--auth off`, whose webhooks are signed with `--webhook-secret`", body = crate::error::Body),
        (status = 422, description = "`overlap_seconds` is invalid", body = crate::error::Body),
    )
)]
pub(super) async fn rotate(
    state: &State,
    caller: &Caller,
    query: &str,
) -> Result<HttpResponse, ApiError> {
    let mut overlap = DEFAULT_OVERLAP_SECONDS;
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        match key.as_ref() {
            "overlap_seconds" => {
                overlap = value
                    .parse()
                    .ok()
                    .filter(|s| *s <= MAX_OVERLAP_SECONDS)
                    .ok_or_else(|| {
                        ApiError::invalid_field(
                            "overlap_seconds",
                            format!("overlap_seconds is 0 to {MAX_OVERLAP_SECONDS}"),
                        )
                    })?
            }
            other => return Err(super::query::unknown_parameter(other, &["overlap_seconds"])),
        }
    }
    if caller.tenant == tenants::ANONYMOUS {
        return Err(ApiError::no_tenant(
            "no tenant: with --auth off webhooks are signed with --webhook-secret, which is rotated by restarting delivery with a new one",
        ));
    }
    let overlap = std::time::Duration::from_secs(overlap);
    match tenants::rotate_secret(state.tenants.pool(), caller.tenant, overlap).await {
        Ok(Some(rotated)) => Ok(json_of(StatusCode::OK, &rotated)),
        Ok(None) => Err(ApiError::not_found()),
        Err(err) => Err(ApiError::unavailable(err.to_string())),
    }
}
