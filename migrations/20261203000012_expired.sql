-- `expired`: a notification whose deadline (expires_at) passed before it was delivered
-- ends with a status of its own, not as a dead letter (no replay brings a late OTP back).
ALTER TABLE notifications DROP CONSTRAINT IF EXISTS notifications_status_check;
ALTER TABLE notifications ADD CONSTRAINT notifications_status_check
    CHECK (status IN ('accepted', 'retrying', 'delivered', 'dead', 'canceled', 'expired'));
ALTER TABLE delivery_attempts DROP CONSTRAINT IF EXISTS delivery_attempts_outcome_check;
ALTER TABLE delivery_attempts ADD CONSTRAINT delivery_attempts_outcome_check
    CHECK (outcome IN ('delivered', 'retrying', 'dead', 'canceled', 'expired'));
