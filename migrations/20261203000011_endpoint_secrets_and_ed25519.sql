-- Secrets per endpoint, and ed25519 keys per tenant. Every secret column holds a sealed
-- value (AES-256-GCM under HERALD_SECRETS_KEY, `sealed1:`); plaintext `whsec_` values of
-- older releases are sealed when a role starts (tenants::seal_stored_secrets).

-- A receiver URL with a secret of its own: the tenant's secret does not sign webhooks to
-- it, so receivers that share a host cannot forge each other's webhooks. The unit is the
-- exact URL a notification names.
CREATE TABLE IF NOT EXISTS endpoint_secrets (
    tenant_id                  uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    url                        text NOT NULL,
    webhook_secret             text NOT NULL,
    previous_webhook_secret    text,
    previous_secret_expires_at timestamptz,
    created_at                 timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, url)
);

-- An optional ed25519 key (`whsk_`, sealed) whose `v1a` signature goes beside `v1`.
ALTER TABLE tenants
    ADD COLUMN IF NOT EXISTS signing_key text,
    ADD COLUMN IF NOT EXISTS previous_signing_key text,
    ADD COLUMN IF NOT EXISTS previous_signing_key_expires_at timestamptz;
