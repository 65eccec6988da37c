-- The attempt history API (`GET /v1/notifications/{id}/attempts`) reports how long each
-- send took and, for a retry, when the next attempt is due. Rows written before have
-- neither (NULL).
ALTER TABLE delivery_attempts ADD COLUMN IF NOT EXISTS duration_ms integer;
ALTER TABLE delivery_attempts ADD COLUMN IF NOT EXISTS next_attempt_at timestamptz;
