-- Rotation of a tenant's webhook secret: the secret it replaced keeps signing beside the
-- new one until previous_secret_expires_at, so receivers can switch without a gap.
ALTER TABLE tenants
    ADD COLUMN IF NOT EXISTS previous_webhook_secret text,
    ADD COLUMN IF NOT EXISTS previous_secret_expires_at timestamptz;
