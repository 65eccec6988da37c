-- Webhook secrets as Standard Webhooks libraries read them: "whsec_" and the *standard*
-- base64 (padded) of the key. Earlier secrets were written in base64url without padding;
-- the same key bytes are re-encoded here, so no tenant's key changes.
UPDATE tenants
SET webhook_secret = 'whsec_' || encode(
        decode(
            translate(substr(webhook_secret, 7), '-_', '+/')
                || repeat('=', (4 - length(substr(webhook_secret, 7)) % 4) % 4),
            'base64'),
        'base64')
WHERE webhook_secret LIKE 'whsec\_%'
  AND substr(webhook_secret, 7) !~ '[+/=]';
