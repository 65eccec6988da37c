-- Tenants and their API keys. Only a SHA-256 of a key is stored: a leaked table does not
-- leak working keys, and lookups stay one indexed equality on the hash.
CREATE TABLE IF NOT EXISTS tenants (
    id              uuid PRIMARY KEY,
    name            text NOT NULL UNIQUE CHECK (length(name) BETWEEN 1 AND 128),
    -- Key of the HMAC-SHA256 signature on this tenant's webhooks.
    webhook_secret  text NOT NULL,
    -- Ingress token bucket (notifications per second, burst); NULL = the server default.
    rate_per_sec    integer CHECK (rate_per_sec > 0),
    burst           integer CHECK (burst > 0),
    created_at      timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS api_keys (
    id          uuid PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    key_hash    bytea NOT NULL UNIQUE CHECK (length(key_hash) = 32),
    -- First characters of the key, to tell keys apart in listings without revealing them.
    key_prefix  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    revoked_at  timestamptz
);
CREATE INDEX IF NOT EXISTS api_keys_tenant ON api_keys (tenant_id);
