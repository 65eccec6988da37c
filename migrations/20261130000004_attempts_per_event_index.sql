-- Outcome events travel in batches: one EVENTS message holds many events, so an event is
-- identified by its message's stream sequence and its index in that message. A single-event
-- message (as earlier versions wrote) is index 0, so rows written before keep their keys.
ALTER TABLE delivery_attempts ADD COLUMN IF NOT EXISTS event_index integer NOT NULL DEFAULT 0;
ALTER TABLE delivery_attempts DROP CONSTRAINT IF EXISTS delivery_attempts_pkey;
ALTER TABLE delivery_attempts ADD PRIMARY KEY (notification_id, event_seq, event_index);
