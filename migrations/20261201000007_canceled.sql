-- Cancel before send (POST /v1/notifications/{id}/cancel): `canceled` becomes a status of
-- a notification and an outcome of its attempts log. Only `delivered` overrides it (a send
-- already on the wire when the cancel came is recorded as what happened).
ALTER TABLE notifications DROP CONSTRAINT IF EXISTS notifications_status_check;
ALTER TABLE notifications ADD CONSTRAINT notifications_status_check
    CHECK (status IN ('accepted', 'retrying', 'delivered', 'dead', 'canceled'));
ALTER TABLE delivery_attempts DROP CONSTRAINT IF EXISTS delivery_attempts_outcome_check;
ALTER TABLE delivery_attempts ADD CONSTRAINT delivery_attempts_outcome_check
    CHECK (outcome IN ('delivered', 'retrying', 'dead', 'canceled'));
