-- Per-tenant limit on a notification's `payload` (bytes as sent); NULL = the server's
-- --max-payload. Nullable without default: adding it rewrites nothing.
ALTER TABLE tenants ADD COLUMN IF NOT EXISTS max_payload_bytes integer
    CHECK (max_payload_bytes > 0);
