//! Tenants and API keys: who is calling, and what they may see.
//!
//! A key is `hk_` + 43 characters of base64url (32 random bytes from the OS-seeded CSPRNG).
//! PostgreSQL stores only its SHA-256; the lookup is one indexed equality on that hash, so
//! the key itself is never compared byte by byte (nothing to time) and never logged.
//! Looked-up keys (and unknown ones, briefly) are cached in process: the hot path does not
//! touch PostgreSQL, and a revoked key stops working within `--key-cache-ttl`.

use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use moka::future::Cache;
use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

/// The tenant of every request when the ingress runs with `--auth off`.
pub const ANONYMOUS: Uuid = Uuid::nil();

/// What the ingress and delivery need to know about a tenant.
#[derive(Clone, PartialEq, Eq)]
pub struct Tenant {
    pub id: Uuid,
    pub name: String,
    pub webhook_secret: String,
    /// The secret the last rotation replaced, while its overlap lasts (as read).
    pub previous_webhook_secret: Option<String>,
    pub limits: TenantLimits,
}

impl Tenant {
    /// The secrets a webhook of this tenant is signed with: the current one, and the one
    /// it replaced while the rotation's overlap lasts.
    pub fn signing_secrets(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.webhook_secret.as_str()).chain(self.previous_webhook_secret.as_deref())
    }
}

/// Never prints the webhook secret (a `{:?}` in a log line must not leak it).
impl std::fmt::Debug for Tenant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tenant")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("webhook_secret", &"<redacted>")
            .field("limits", &self.limits)
            .finish()
    }
}

/// A tenant's own limits; `None` = the server's defaults.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TenantLimits {
    /// Ingress token bucket: notifications per second, and its burst.
    pub rate_per_sec: Option<u32>,
    pub burst: Option<u32>,
    /// Largest `payload` this tenant may send; `None` = the server's `--max-payload`.
    pub max_payload: Option<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum TenantError {
    #[error("tenant store (PostgreSQL): {0}")]
    Store(#[from] sqlx::Error),
    #[error("no tenant named {0:?}")]
    UnknownTenant(String),
    #[error("a tenant named {0:?} exists already")]
    Exists(String),
    #[error("no API key with id {0}")]
    UnknownKey(Uuid),
}

/// SHA-256 of a key as presented.
pub fn hash_key(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

fn random_token(prefix: &str) -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    format!(
        "{prefix}{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    )
}

/// Creates a tenant with a fresh webhook secret.
pub async fn create_tenant(
    pool: &PgPool,
    name: &str,
    limits: TenantLimits,
) -> Result<Tenant, TenantError> {
    let tenant = Tenant {
        id: Uuid::now_v7(),
        name: name.to_string(),
        webhook_secret: crate::signing::Secret::generate(),
        previous_webhook_secret: None,
        limits,
    };
    let as_int = |v: Option<u32>| v.map(|v| i32::try_from(v).unwrap_or(i32::MAX));
    let inserted = sqlx::query(
        "INSERT INTO tenants (id, name, webhook_secret, rate_per_sec, burst, max_payload_bytes)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (name) DO NOTHING",
    )
    .bind(tenant.id)
    .bind(&tenant.name)
    .bind(&tenant.webhook_secret)
    .bind(as_int(limits.rate_per_sec))
    .bind(as_int(limits.burst))
    .bind(as_int(limits.max_payload))
    .execute(pool)
    .await?;
    if inserted.rows_affected() == 0 {
        return Err(TenantError::Exists(name.to_string()));
    }
    Ok(tenant)
}

/// What a rotation of a tenant's webhook secret gives: the new secret (shown once) and
/// when the one it replaced stops signing.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct RotatedSecret {
    /// `whsec_…`: give it to the tenant's receivers.
    pub secret: String,
    /// Until then every webhook carries a signature with the previous secret too.
    pub previous_expires_at: chrono::DateTime<chrono::Utc>,
}

/// Gives tenant `id` a fresh webhook secret; the replaced one keeps signing beside it for
/// `overlap`. A second rotation within the overlap drops the first secret at once.
/// `None` when there is no such tenant.
pub async fn rotate_secret(
    pool: &PgPool,
    id: Uuid,
    overlap: Duration,
) -> Result<Option<RotatedSecret>, TenantError> {
    let secret = crate::signing::Secret::generate();
    let overlap_ms = i64::try_from(overlap.as_millis()).unwrap_or(i64::MAX);
    let expires: Option<chrono::DateTime<chrono::Utc>> = sqlx::query_scalar(
        "UPDATE tenants
         SET previous_webhook_secret = webhook_secret,
             previous_secret_expires_at = now() + make_interval(secs => $3::float8 / 1000),
             webhook_secret = $2
         WHERE id = $1
         RETURNING previous_secret_expires_at",
    )
    .bind(id)
    .bind(&secret)
    .bind(overlap_ms)
    .fetch_optional(pool)
    .await?;
    Ok(expires.map(|previous_expires_at| RotatedSecret {
        secret,
        previous_expires_at,
    }))
}

/// The id of the tenant named `name`.
pub async fn id_of(pool: &PgPool, name: &str) -> Result<Uuid, TenantError> {
    sqlx::query_scalar("SELECT id FROM tenants WHERE name = $1")
        .bind(name)
        .fetch_optional(pool)
        .await?
        .ok_or_else(|| TenantError::UnknownTenant(name.to_string()))
}

/// A new API key: its id and the key itself (shown once).
pub struct NewKey {
    pub id: Uuid,
    pub key: String,
}

pub async fn create_key(pool: &PgPool, tenant_name: &str) -> Result<NewKey, TenantError> {
    let key = random_token("hk_");
    let id = Uuid::now_v7();
    let inserted = sqlx::query(
        "INSERT INTO api_keys (id, tenant_id, key_hash, key_prefix)
         SELECT $1, id, $2, $3 FROM tenants WHERE name = $4",
    )
    .bind(id)
    .bind(&hash_key(&key)[..])
    .bind(&key[..7])
    .bind(tenant_name)
    .execute(pool)
    .await?;
    if inserted.rows_affected() == 0 {
        return Err(TenantError::UnknownTenant(tenant_name.to_string()));
    }
    Ok(NewKey { id, key })
}

pub async fn revoke_key(pool: &PgPool, id: Uuid) -> Result<(), TenantError> {
    let updated =
        sqlx::query("UPDATE api_keys SET revoked_at = coalesce(revoked_at, now()) WHERE id = $1")
            .bind(id)
            .execute(pool)
            .await?;
    if updated.rows_affected() == 0 {
        return Err(TenantError::UnknownKey(id));
    }
    Ok(())
}

type TenantRow = (
    Uuid,
    String,
    String,
    Option<i32>,
    Option<i32>,
    Option<i32>,
    Option<String>,
);

/// The previous secret of a row, only while its overlap lasts.
const PREVIOUS_SECRET: &str =
    "CASE WHEN previous_secret_expires_at > now() THEN previous_webhook_secret END";

fn tenant_from(row: TenantRow) -> Tenant {
    Tenant {
        id: row.0,
        name: row.1,
        webhook_secret: row.2,
        previous_webhook_secret: row.6,
        limits: TenantLimits {
            rate_per_sec: row.3.map(|r| r as u32),
            burst: row.4.map(|b| b as u32),
            max_payload: row.5.map(|b| b as u32),
        },
    }
}

/// Cached lookups of tenants by API key hash and by id.
pub struct Directory {
    pool: PgPool,
    by_key: Cache<[u8; 32], Option<Arc<Tenant>>>,
    by_id: Cache<Uuid, Arc<Tenant>>,
}

impl Directory {
    /// `ttl`: how long a found key (or tenant) is trusted; unknown keys are remembered for
    /// at most 5 s so a flood of bad keys does not reach PostgreSQL.
    pub fn new(pool: PgPool, ttl: Duration) -> Self {
        struct Expiry(Duration);
        impl moka::Expiry<[u8; 32], Option<Arc<Tenant>>> for Expiry {
            fn expire_after_create(
                &self,
                _key: &[u8; 32],
                value: &Option<Arc<Tenant>>,
                _now: std::time::Instant,
            ) -> Option<Duration> {
                Some(match value {
                    Some(_) => self.0,
                    None => self.0.min(Duration::from_secs(5)),
                })
            }
        }
        Directory {
            pool,
            by_key: Cache::builder()
                .max_capacity(100_000)
                .expire_after(Expiry(ttl))
                .build(),
            by_id: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(ttl)
                .build(),
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The tenant owning an unrevoked key, `None` for an unknown or revoked key.
    pub async fn authenticate(&self, key: &str) -> Result<Option<Arc<Tenant>>, TenantError> {
        let hash = hash_key(key);
        if let Some(found) = self.by_key.get(&hash).await {
            return Ok(found);
        }
        let row: Option<TenantRow> = sqlx::query_as(&format!(
            "SELECT t.id, t.name, t.webhook_secret, t.rate_per_sec, t.burst,
                    t.max_payload_bytes, {PREVIOUS_SECRET}
             FROM api_keys k JOIN tenants t ON t.id = k.tenant_id
             WHERE k.key_hash = $1 AND k.revoked_at IS NULL"
        ))
        .bind(&hash[..])
        .fetch_optional(&self.pool)
        .await?;
        let found = row.map(|r| Arc::new(tenant_from(r)));
        self.by_key.insert(hash, found.clone()).await;
        Ok(found)
    }

    /// A tenant by id (delivery needs its webhook secret).
    pub async fn get(&self, id: Uuid) -> Result<Option<Arc<Tenant>>, TenantError> {
        if let Some(found) = self.by_id.get(&id).await {
            return Ok(Some(found));
        }
        let row: Option<TenantRow> = sqlx::query_as(&format!(
            "SELECT id, name, webhook_secret, rate_per_sec, burst, max_payload_bytes,
                    {PREVIOUS_SECRET}
             FROM tenants WHERE id = $1"
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        let found = row.map(|r| Arc::new(tenant_from(r)));
        if let Some(t) = &found {
            self.by_id.insert(id, t.clone()).await;
        }
        Ok(found)
    }
}
