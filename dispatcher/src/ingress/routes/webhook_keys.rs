//! `/v1/webhook-keys`: the calling tenant's ed25519 keys. With one, every webhook carries a
//! `v1a` signature beside `v1`, which a receiver verifies with the `whpk_` public key alone:
//! whoever can verify cannot forge. `POST …/rotate` creates or replaces the key; `GET`
//! lists the public keys.

use super::webhook_secret::{found, overlap_seconds, tenant_of, DEFAULT_OVERLAP_SECONDS};
use super::*;

/// The tenant's ed25519 public keys.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct PublicKeys {
    /// The current key first, then the one it replaced while the overlap lasts; empty
    /// until a first rotation creates one.
    pub keys: Vec<tenants::PublicKey>,
}

/// Create the tenant's ed25519 signing key, or replace it. Returns the new public key
/// (`whpk_…`); the private key never leaves Herald and is stored sealed. A replaced key
/// keeps signing beside the new one until `previous_expires_at`.
#[utoipa::path(
    post,
    operation_id = "rotate_webhook_key",
    path = "/v1/webhook-keys/rotate",
    tag = "webhooks",
    params(
        ("overlap_seconds" = Option<u64>, Query, description = "How long the replaced key keeps signing: 0 to 604800 (7 days), default 86400", maximum = 604800),
    ),
    responses(
        (status = 200, description = "The new public key, in `secret`, and when the previous key stops signing", body = crate::tenants::Rotated),
        (status = 409, description = "No tenant: the server runs with `--auth off`", body = crate::error::Body),
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
            "overlap_seconds" => overlap = overlap_seconds(&value)?,
            other => return Err(super::query::unknown_parameter(other, &["overlap_seconds"])),
        }
    }
    let tenant = tenant_of(caller)?;
    let overlap = std::time::Duration::from_secs(overlap);
    let (pool, key) = (state.tenants.pool(), state.tenants.sealing_key());
    found(tenants::rotate_key(pool, key, tenant, tenants::KeyKind::Ed25519, overlap).await)
}

/// The tenant's ed25519 public keys, for receivers that verify `v1a` signatures.
#[utoipa::path(
    get,
    operation_id = "list_webhook_keys",
    path = "/v1/webhook-keys",
    tag = "webhooks",
    responses(
        (status = 200, description = "The public keys", body = PublicKeys),
        (status = 409, description = "No tenant: the server runs with `--auth off`", body = crate::error::Body),
    )
)]
pub(super) async fn list(state: &State, caller: &Caller) -> Result<HttpResponse, ApiError> {
    let tenant = tenant_of(caller)?;
    let (pool, key) = (state.tenants.pool(), state.tenants.sealing_key());
    let keys = tenants::public_keys(pool, key, tenant).await;
    found(keys.map(|keys| keys.map(|keys| PublicKeys { keys })))
}
