//! The records delivery processes and the API share through JetStream key-value buckets,
//! with their keys: the `<prefix>DESTINATIONS` bucket (a destination's health as delivery
//! last saw it, the operator's controls, a tenant's defaults, disabled endpoints) and the
//! `<prefix>CANCELS`
//! bucket. Wire types beside [`crate::dlq`] and [`crate::events`]: delivery writes and
//! follows them, the ingress's routes read and write them, neither imports the other.

use base64::Engine;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// A circuit's state, as the API shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CircuitState {
    Closed,
    Open,
    HalfOpen,
}

/// The operator's settings of one destination (`control.<tenant>.<name>`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Control {
    /// Name of the destination, as the API spells it.
    pub destination: String,
    #[serde(default)]
    pub paused: bool,
    /// Sends per second; absent: the deployment's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_per_sec: Option<f64>,
}

/// An endpoint (one webhook URL, the unit Standard Webhooks disables) Herald stopped
/// sending to (`disabled.<tenant>.<url>`): it answered 410 Gone. Its waiting and new
/// notifications are dead-lettered with the reason until its destination is resumed
/// (`POST /v1/destinations/{id}/resume`). Its neighbours on the same host are not touched.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DisabledEndpoint {
    pub url: String,
    /// Its destination (`webhook:<host>:<port>`), whose resume re-enables it.
    pub destination: String,
    pub since: DateTime<Utc>,
    pub reason: String,
}

/// What a delivery process last saw of one destination (`health.<tenant>.<name>`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HealthRecord {
    pub destination: String,
    pub state: CircuitState,
    /// When the circuit took this state.
    pub since: DateTime<Utc>,
    pub consecutive_failures: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Until when the destination's own `Retry-After` holds its messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_until: Option<DateTime<Utc>>,
}

/// A destination health event on `<prefix>events.destinations`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DestinationEvent {
    /// `destination.failing` or `destination.recovered`.
    pub event: String,
    pub tenant: Uuid,
    pub destination: String,
    pub at: DateTime<Utc>,
    pub consecutive_failures: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The key-value keys of one destination: `<kind>.<tenant>.<name in base64url>` (names
/// hold ':' and '[', which keys may not).
pub fn bucket_key(kind: &str, tenant: &Uuid, destination: &str) -> String {
    format!(
        "{kind}.{}.{}",
        tenant.simple(),
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(destination)
    )
}

/// The destination (or URL) a [`bucket_key`] names, read back from the key.
pub fn name_in_key(key: &str) -> Option<String> {
    let encoded = key.rsplit('.').next()?;
    let name = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(encoded)
        .ok()?;
    String::from_utf8(name).ok()
}

/// Every key of one kind for one tenant.
pub fn bucket_filter(kind: &str, tenant: &Uuid) -> String {
    format!("{kind}.{}.*", tenant.simple())
}

/// A tenant's defaults for its destinations (`defaults.<tenant>`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TenantDefaults {
    /// Sends per second to each destination without a rate of its own; absent: the
    /// deployment's default (`--destination-rate`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_per_sec: Option<f64>,
}

/// The key of a tenant's defaults.
pub fn defaults_key(tenant: &Uuid) -> String {
    format!("defaults.{}", tenant.simple())
}

impl Control {
    /// No pause and the default rate.
    pub fn default_for(destination: &str) -> Self {
        Control {
            destination: destination.to_string(),
            ..Control::default()
        }
    }
}

/// The key of a cancel in the CANCELS bucket.
pub fn cancel_key(tenant: &Uuid, id: &Uuid) -> String {
    format!("{}.{id}", tenant.simple())
}
