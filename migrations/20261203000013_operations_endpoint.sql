-- A tenant's operations endpoint: told (as a webhook) when a notification dies or expires
-- and when a destination fails or recovers, so the sender does not have to poll.
ALTER TABLE tenants ADD COLUMN IF NOT EXISTS operations_url text;
