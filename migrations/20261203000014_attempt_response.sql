-- What the receiver or provider answered, per attempt: the start of the response body
-- (`--response-body-limit` bytes, 1 KiB by default, UTF-8 lossy), beside its status code.
-- Earlier rows quoted it in `error` instead, and keep NULL here.
ALTER TABLE delivery_attempts ADD COLUMN IF NOT EXISTS response text;
