//! Tenants and API keys: who is calling, and what they may see.
//!
//! A key is `hk_` + 43 characters of base64url (32 random bytes from the OS-seeded CSPRNG).
//! PostgreSQL stores only its SHA-256; the lookup is one indexed equality on that hash, so
//! the key itself is never compared byte by byte (nothing to time) and never logged.
//! Looked-up keys (and unknown ones, briefly) are cached in process: the hot path does not
//! touch PostgreSQL, and a revoked key stops working within `--key-cache-ttl`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use moka::future::Cache;
use rand::RngCore;
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use uuid::Uuid;

use crate::sealing::{is_sealed, SealError, SealingKey};
use crate::signing::{KeyPair, Secret, SecretError, SigningKeys};

/// The tenant of every request when the ingress runs with `--auth off`.
pub const ANONYMOUS: Uuid = Uuid::nil();

/// What the ingress and delivery need to know about a tenant.
#[derive(Debug, Clone)]
pub struct Tenant {
    pub id: Uuid,
    pub name: String,
    /// The keys its webhooks are signed with (opened from their sealed form); an endpoint
    /// with a secret of its own is signed with that instead ([`Directory::signing`]).
    pub keys: SigningKeys,
    pub limits: TenantLimits,
    /// Where operational events go (`PUT /v1/operations-endpoint`), if anywhere.
    pub operations_url: Option<String>,
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
    #[error("webhook secrets: {0}")]
    Sealing(#[from] SealError),
    #[error("a stored webhook secret is not valid: {0}")]
    Secret(#[from] SecretError),
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

/// A tenant just created, with its webhook secret (shown once).
#[derive(Debug)]
pub struct NewTenant {
    pub id: Uuid,
    pub name: String,
    pub webhook_secret: String,
}

/// Creates a tenant with a fresh webhook secret, stored sealed with `key`.
pub async fn create_tenant(
    pool: &PgPool,
    key: &SealingKey,
    name: &str,
    limits: TenantLimits,
) -> Result<NewTenant, TenantError> {
    let tenant = NewTenant {
        id: Uuid::now_v7(),
        name: name.to_string(),
        webhook_secret: Secret::generate(),
    };
    let as_int = |v: Option<u32>| v.map(|v| i32::try_from(v).unwrap_or(i32::MAX));
    let inserted = sqlx::query(
        "INSERT INTO tenants (id, name, webhook_secret, rate_per_sec, burst, max_payload_bytes)
         VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (name) DO NOTHING",
    )
    .bind(tenant.id)
    .bind(&tenant.name)
    .bind(key.seal(&tenant.webhook_secret))
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

/// What a rotation gives: the new key (shown once; for ed25519, its public key) and
/// when the one it replaced stops signing.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct Rotated {
    /// `whsec_…` (give it to the receivers), or for ed25519 the `whpk_…` public key.
    pub secret: String,
    /// Until then every webhook carries a signature with the replaced key too; absent
    /// when nothing was replaced (an endpoint's or an ed25519 key's first).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_expires_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// Which of a tenant's keys a rotation replaces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    /// The HMAC secret that signs every endpoint without one of its own.
    Secret,
    /// The ed25519 key of the `v1a` signatures.
    Ed25519,
}

/// Gives tenant `id` a fresh key of `kind`; the replaced one keeps signing beside it for
/// `overlap`. A second rotation within the overlap drops the first key at once. `None`
/// when there is no such tenant.
pub async fn rotate_key(
    pool: &PgPool,
    key: &SealingKey,
    id: Uuid,
    kind: KeyKind,
    overlap: Duration,
) -> Result<Option<Rotated>, TenantError> {
    let (fresh, current, previous, expires) = match kind {
        KeyKind::Secret => (
            Secret::generate(),
            "webhook_secret",
            "previous_webhook_secret",
            "previous_secret_expires_at",
        ),
        KeyKind::Ed25519 => (
            KeyPair::generate(),
            "signing_key",
            "previous_signing_key",
            "previous_signing_key_expires_at",
        ),
    };
    let row: Option<(Option<chrono::DateTime<chrono::Utc>>,)> = sqlx::query_as(&format!(
        "UPDATE tenants
         SET {previous} = {current},
             {expires} = CASE WHEN {current} IS NULL THEN NULL
                         ELSE now() + make_interval(secs => $3::float8 / 1000) END,
             {current} = $2
         WHERE id = $1
         RETURNING {expires}"
    ))
    .bind(id)
    .bind(key.seal(&fresh))
    .bind(millis(overlap))
    .fetch_optional(pool)
    .await?;
    let shown = match kind {
        KeyKind::Secret => fresh,
        KeyKind::Ed25519 => KeyPair::parse(&fresh)?.public(),
    };
    Ok(row.map(|(previous_expires_at,)| Rotated {
        secret: shown,
        previous_expires_at,
    }))
}

/// Gives the endpoint `url` of tenant `id` a fresh secret of its own; the secret that
/// signed it before (its previous own one, or at first the tenant's) keeps signing beside
/// it for `overlap`. `None` when there is no such tenant.
pub async fn rotate_endpoint_secret(
    pool: &PgPool,
    key: &SealingKey,
    id: Uuid,
    url: &str,
    overlap: Duration,
) -> Result<Option<Rotated>, TenantError> {
    let fresh = Secret::generate();
    let expires: Option<Option<chrono::DateTime<chrono::Utc>>> = sqlx::query_scalar(
        "INSERT INTO endpoint_secrets
             (tenant_id, url, webhook_secret, previous_webhook_secret, previous_secret_expires_at)
         SELECT id, $2, $3, webhook_secret, now() + make_interval(secs => $4::float8 / 1000)
         FROM tenants WHERE id = $1
         ON CONFLICT (tenant_id, url) DO UPDATE
         SET previous_webhook_secret = endpoint_secrets.webhook_secret,
             previous_secret_expires_at = EXCLUDED.previous_secret_expires_at,
             webhook_secret = EXCLUDED.webhook_secret
         RETURNING previous_secret_expires_at",
    )
    .bind(id)
    .bind(url)
    .bind(key.seal(&fresh))
    .bind(millis(overlap))
    .fetch_optional(pool)
    .await?;
    Ok(expires.map(|previous_expires_at| Rotated {
        secret: fresh,
        previous_expires_at,
    }))
}

/// Drops the endpoint's own secret: the tenant's signs it again. Whether it had one.
pub async fn drop_endpoint_secret(pool: &PgPool, id: Uuid, url: &str) -> Result<bool, TenantError> {
    let deleted = sqlx::query("DELETE FROM endpoint_secrets WHERE tenant_id = $1 AND url = $2")
        .bind(id)
        .bind(url)
        .execute(pool)
        .await?;
    Ok(deleted.rows_affected() > 0)
}

/// Sets (or with `None` clears) tenant `id`'s operations endpoint. Whether the tenant
/// exists.
pub async fn set_operations_url(
    pool: &PgPool,
    id: Uuid,
    url: Option<&str>,
) -> Result<bool, TenantError> {
    let updated = sqlx::query("UPDATE tenants SET operations_url = $2 WHERE id = $1")
        .bind(id)
        .bind(url)
        .execute(pool)
        .await?;
    Ok(updated.rows_affected() > 0)
}

/// Tenant `id`'s operations endpoint as stored; `None` when there is no such tenant.
pub async fn operations_url(
    pool: &PgPool,
    id: Uuid,
) -> Result<Option<Option<String>>, TenantError> {
    Ok(
        sqlx::query_scalar("SELECT operations_url FROM tenants WHERE id = $1")
            .bind(id)
            .fetch_optional(pool)
            .await?,
    )
}

/// An ed25519 public key a receiver verifies `v1a` signatures with.
#[derive(Debug, serde::Serialize, utoipa::ToSchema)]
pub struct PublicKey {
    /// `whpk_…`.
    pub public_key: String,
    /// When it stops signing: absent for the current key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// Tenant `id`'s ed25519 public keys, the current one first (none until a first rotation
/// creates one). `None` when there is no such tenant.
pub async fn public_keys(
    pool: &PgPool,
    key: &SealingKey,
    id: Uuid,
) -> Result<Option<Vec<PublicKey>>, TenantError> {
    type Keys = (
        Option<String>,
        Option<String>,
        Option<chrono::DateTime<chrono::Utc>>,
    );
    let row: Option<Keys> = sqlx::query_as(&format!(
        "SELECT signing_key, {PREVIOUS_SIGNING_KEY}, previous_signing_key_expires_at
             FROM tenants WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(pool)
    .await?;
    let Some((current, previous, expires_at)) = row else {
        return Ok(None);
    };
    let mut keys = Vec::new();
    for (sealed, expires_at) in [(current, None), (previous, expires_at)] {
        if let Some(sealed) = sealed {
            keys.push(PublicKey {
                public_key: KeyPair::parse(&key.open(&sealed)?)?.public(),
                expires_at,
            });
        }
    }
    Ok(Some(keys))
}

fn millis(overlap: Duration) -> i64 {
    i64::try_from(overlap.as_millis()).unwrap_or(i64::MAX)
}

/// Seals every secret still stored in plaintext (an upgrade from a release without
/// sealing), and checks that `key` opens the ones already sealed: a role given the wrong
/// key refuses to start rather than sign with nothing. How many were sealed.
pub async fn seal_stored_secrets(pool: &PgPool, key: &SealingKey) -> Result<u64, TenantError> {
    let sample: Option<String> = sqlx::query_scalar(
        "SELECT webhook_secret FROM tenants WHERE webhook_secret LIKE 'sealed%'
         UNION ALL SELECT webhook_secret FROM endpoint_secrets LIMIT 1",
    )
    .fetch_optional(pool)
    .await?;
    if let Some(sealed) = sample {
        key.open(&sealed)?;
    }
    let plain: Vec<(Uuid, String, Option<String>)> = sqlx::query_as(
        "SELECT id, webhook_secret, previous_webhook_secret FROM tenants
         WHERE webhook_secret NOT LIKE 'sealed%'
            OR previous_webhook_secret NOT LIKE 'sealed%'",
    )
    .fetch_all(pool)
    .await?;
    let seal = |text: &str| {
        if is_sealed(text) {
            text.to_string()
        } else {
            key.seal(text)
        }
    };
    let (ids, current, previous): (Vec<Uuid>, Vec<String>, Vec<Option<String>>) = plain
        .iter()
        .map(|(id, c, p)| (*id, seal(c), p.as_deref().map(seal)))
        .fold(
            Default::default(),
            |(mut i, mut c, mut p), (id, cur, prev)| {
                i.push(id);
                c.push(cur);
                p.push(prev);
                (i, c, p)
            },
        );
    // One statement for every row (an upgrade may have many tenants).
    let sealed = sqlx::query(
        "UPDATE tenants t SET webhook_secret = u.current, previous_webhook_secret = u.previous
         FROM unnest($1::uuid[], $2::text[], $3::text[]) AS u(id, current, previous)
         WHERE t.id = u.id",
    )
    .bind(&ids)
    .bind(&current)
    .bind(&previous)
    .execute(pool)
    .await?;
    Ok(sealed.rows_affected())
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

/// A tenant's row: id, name, limits, then its sealed keys.
#[derive(sqlx::FromRow)]
struct TenantRow {
    id: Uuid,
    name: String,
    rate_per_sec: Option<i32>,
    burst: Option<i32>,
    max_payload_bytes: Option<i32>,
    webhook_secret: String,
    previous_webhook_secret: Option<String>,
    signing_key: Option<String>,
    previous_signing_key: Option<String>,
    operations_url: Option<String>,
}

/// The previous secret of a row, only while its overlap lasts.
const PREVIOUS_SECRET: &str =
    "CASE WHEN previous_secret_expires_at > now() THEN previous_webhook_secret END";

/// The previous ed25519 key of a row, only while its overlap lasts.
const PREVIOUS_SIGNING_KEY: &str =
    "CASE WHEN previous_signing_key_expires_at > now() THEN previous_signing_key END";

/// The columns of a [`TenantRow`], from table alias `t`.
fn tenant_columns() -> String {
    format!(
        "t.id, t.name, t.rate_per_sec, t.burst, t.max_payload_bytes, t.webhook_secret,
         {} AS previous_webhook_secret, t.signing_key, {} AS previous_signing_key,
         t.operations_url",
        PREVIOUS_SECRET.replace("previous_", "t.previous_"),
        PREVIOUS_SIGNING_KEY.replace("previous_", "t.previous_"),
    )
}

/// Opens each sealed value and parses the key it holds, in order.
fn open_all<T>(
    key: &SealingKey,
    sealed: impl IntoIterator<Item = String>,
    parse: fn(&str) -> Result<T, SecretError>,
) -> Result<Vec<T>, TenantError> {
    sealed
        .into_iter()
        .map(|sealed| Ok(parse(&key.open(&sealed)?)?))
        .collect()
}

impl TenantRow {
    fn open(self, key: &SealingKey) -> Result<Tenant, TenantError> {
        let secrets = std::iter::once(self.webhook_secret).chain(self.previous_webhook_secret);
        let secrets = open_all(key, secrets, Secret::parse)?;
        let pairs = self
            .signing_key
            .into_iter()
            .chain(self.previous_signing_key);
        let pairs = open_all(key, pairs, KeyPair::parse)?;
        Ok(Tenant {
            id: self.id,
            name: self.name,
            keys: SigningKeys { secrets, pairs },
            limits: TenantLimits {
                rate_per_sec: self.rate_per_sec.map(|r| r as u32),
                burst: self.burst.map(|b| b as u32),
                max_payload: self.max_payload_bytes.map(|b| b as u32),
            },
            operations_url: self.operations_url,
        })
    }
}

/// A tenant's endpoints with secrets of their own: URL → its secrets, current first.
type EndpointSecrets = HashMap<String, Vec<Secret>>;

/// Cached lookups of tenants by API key hash and by id, and of their endpoints' secrets.
pub struct Directory {
    pool: PgPool,
    key: SealingKey,
    by_key: Cache<[u8; 32], Option<Arc<Tenant>>>,
    by_id: Cache<Uuid, Arc<Tenant>>,
    endpoints: Cache<Uuid, Arc<EndpointSecrets>>,
}

impl Directory {
    /// `ttl`: how long a found key (or tenant, or endpoint secret) is trusted; unknown
    /// keys are remembered for at most 5 s so a flood of bad keys does not reach
    /// PostgreSQL. `key` opens the stored secrets.
    pub fn new(pool: PgPool, ttl: Duration, key: SealingKey) -> Self {
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
            key,
            by_key: Cache::builder()
                .max_capacity(100_000)
                .expire_after(Expiry(ttl))
                .build(),
            by_id: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(ttl)
                .build(),
            endpoints: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(ttl)
                .build(),
        }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The key stored secrets are sealed with.
    pub fn sealing_key(&self) -> &SealingKey {
        &self.key
    }

    /// The tenant owning an unrevoked key, `None` for an unknown or revoked key.
    pub async fn authenticate(&self, key: &str) -> Result<Option<Arc<Tenant>>, TenantError> {
        let hash = hash_key(key);
        if let Some(found) = self.by_key.get(&hash).await {
            return Ok(found);
        }
        let row: Option<TenantRow> = sqlx::query_as(&format!(
            "SELECT {} FROM api_keys k JOIN tenants t ON t.id = k.tenant_id
             WHERE k.key_hash = $1 AND k.revoked_at IS NULL",
            tenant_columns()
        ))
        .bind(&hash[..])
        .fetch_optional(&self.pool)
        .await?;
        let found = row.map(|r| r.open(&self.key)).transpose()?.map(Arc::new);
        self.by_key.insert(hash, found.clone()).await;
        Ok(found)
    }

    /// A tenant by id.
    pub async fn get(&self, id: Uuid) -> Result<Option<Arc<Tenant>>, TenantError> {
        if let Some(found) = self.by_id.get(&id).await {
            return Ok(Some(found));
        }
        let row: Option<TenantRow> = sqlx::query_as(&format!(
            "SELECT {} FROM tenants t WHERE t.id = $1",
            tenant_columns()
        ))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?;
        let found = row.map(|r| r.open(&self.key)).transpose()?.map(Arc::new);
        if let Some(t) = &found {
            self.by_id.insert(id, t.clone()).await;
        }
        Ok(found)
    }

    /// The keys a webhook of tenant `id` to `url` is signed with: the endpoint's own
    /// secrets when it has some, else the tenant's; the tenant's ed25519 keys either way.
    /// `None` when there is no such tenant.
    pub async fn signing(&self, id: Uuid, url: &str) -> Result<Option<SigningKeys>, TenantError> {
        let Some(tenant) = self.get(id).await? else {
            return Ok(None);
        };
        let endpoints = self.endpoint_secrets(id).await?;
        Ok(Some(match endpoints.get(url) {
            Some(secrets) => SigningKeys {
                secrets: secrets.clone(),
                pairs: tenant.keys.pairs.clone(),
            },
            None => tenant.keys.clone(),
        }))
    }

    /// Tenant `id`'s endpoints with secrets of their own (one query per tenant per `ttl`).
    async fn endpoint_secrets(&self, id: Uuid) -> Result<Arc<EndpointSecrets>, TenantError> {
        if let Some(found) = self.endpoints.get(&id).await {
            return Ok(found);
        }
        let rows: Vec<(String, String, Option<String>)> = sqlx::query_as(&format!(
            "SELECT url, webhook_secret, {PREVIOUS_SECRET} FROM endpoint_secrets WHERE tenant_id = $1"
        ))
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        let mut found = EndpointSecrets::with_capacity(rows.len());
        for (url, current, previous) in rows {
            let sealed = std::iter::once(current).chain(previous);
            found.insert(url, open_all(&self.key, sealed, Secret::parse)?);
        }
        let found = Arc::new(found);
        self.endpoints.insert(id, found.clone()).await;
        Ok(found)
    }
}
