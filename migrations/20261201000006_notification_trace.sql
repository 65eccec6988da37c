-- The W3C trace id (32 hex digits) of the request that accepted a notification, from its
-- NOTIFY message's traceparent: an operator goes from a notification to its spans. Rows
-- written before, and messages published without the header, have none (NULL).
ALTER TABLE notifications ADD COLUMN IF NOT EXISTS trace_id text;
