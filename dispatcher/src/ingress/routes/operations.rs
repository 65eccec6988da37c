//! `/v1/operations-endpoint`: where the tenant is told, as webhooks, when a notification
//! dies (`notification.dead`) or expires (`notification.expired`) and when a destination
//! starts failing (`destination.failing`), recovers (`destination.recovered`) or an
//! endpoint is disabled by its 410 (`destination.disabled`). The events
//! are signed and retried like every webhook (`delivery/operations.rs`).

use super::webhook_secret::{endpoint_url, found, tenant_of};
use super::*;

/// The tenant's operations endpoint.
#[derive(Debug, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct OperationsEndpoint {
    /// An absolute http(s) URL; `null` when none is set.
    pub url: Option<String>,
}

/// `GET /v1/operations-endpoint`.
#[utoipa::path(
    get,
    operation_id = "get_operations_endpoint",
    path = "/v1/operations-endpoint",
    tag = "webhooks",
    responses(
        (status = 200, description = "The operations endpoint (`url` null when none)", body = OperationsEndpoint),
        (status = 409, description = "No tenant: the server runs with `--auth off`", body = crate::error::Body),
    )
)]
pub(super) async fn get(state: &State, caller: &Caller) -> Result<HttpResponse, ApiError> {
    let tenant = tenant_of(caller)?;
    let url = tenants::operations_url(state.tenants.pool(), tenant).await;
    found(url.map(|url| url.map(|url| OperationsEndpoint { url })))
}

/// `PUT /v1/operations-endpoint`: set it (`{"url": null}` clears it). Delivery processes
/// follow within their tenant cache's lifetime (a minute).
#[utoipa::path(
    put,
    operation_id = "set_operations_endpoint",
    path = "/v1/operations-endpoint",
    tag = "webhooks",
    request_body = OperationsEndpoint,
    responses(
        (status = 200, description = "Set", body = OperationsEndpoint),
        (status = 409, description = "No tenant: the server runs with `--auth off`", body = crate::error::Body),
        (status = 422, description = "`url` is invalid or refused by the egress policy", body = crate::error::Body),
    )
)]
pub(super) async fn set<B>(
    state: &State,
    caller: &Caller,
    req: Request<B>,
) -> Result<HttpResponse, ApiError>
where
    B: hyper::body::Body,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let tenant = tenant_of(caller)?;
    let asked: OperationsEndpoint =
        read_one_field(state, req, "url", r#"{"url": "https://…" or null}"#).await?;
    let url = match asked.url.as_deref() {
        Some(text) => {
            let url = endpoint_url(text)?;
            let uri: http::Uri = url.parse().expect("checked by endpoint_url");
            state
                .egress
                .check_uri(&uri)
                .map_err(|refused| ApiError::invalid_field("url", refused.to_string()))?;
            Some(url)
        }
        None => None,
    };
    match tenants::set_operations_url(state.tenants.pool(), tenant, url.as_deref()).await {
        Ok(true) => Ok(json_of(StatusCode::OK, &OperationsEndpoint { url })),
        Ok(false) => Err(ApiError::not_found()),
        Err(err) => Err(ApiError::unavailable(err.to_string())),
    }
}
