-- Provider failover: the provider an attempt went through (`sms:api.example.com:443`),
-- for channels with several providers. NULL for webhooks and for earlier rows.
ALTER TABLE delivery_attempts ADD COLUMN IF NOT EXISTS provider text;
