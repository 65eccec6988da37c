-- Transactional state of every accepted notification, written by the recorder in batches
-- (one UNNEST statement per fetched batch) from the NOTIFY and EVENTS streams.
--
-- Ids are UUIDv7 (time-ordered), so `ORDER BY id DESC` is newest first and keyset
-- pagination needs no separate timestamp column in the index.
--
-- Partitioning plan (not applied yet; one table is right below ~1e9 rows): convert
-- `notifications` and `delivery_attempts` to `PARTITION BY RANGE (accepted_at)` /
-- `(at)` with one partition per month, created ahead by `dispatcher migrate`; retention
-- becomes `DROP TABLE <old partition>` instead of DELETE. Primary keys then include the
-- partition column ((id, accepted_at)), which the recorder's upserts already know.
CREATE TABLE IF NOT EXISTS notifications (
    id              uuid PRIMARY KEY,
    -- The nil UUID when the ingress runs without authentication.
    tenant_id       uuid NOT NULL,
    priority        text NOT NULL CHECK (priority IN ('high', 'medium', 'low')),
    channel         text NOT NULL CHECK (channel IN ('webhook', 'email', 'sms', 'push')),
    -- NULL only while an outcome event was recorded before the notification itself.
    recipient       text,
    status          text NOT NULL CHECK (status IN ('accepted', 'retrying', 'delivered', 'dead')),
    attempts        integer NOT NULL DEFAULT 0,
    accepted_at     timestamptz,
    -- Time of the event the status comes from; a later event wins, an older one is ignored.
    updated_at      timestamptz NOT NULL,
    delivered_at    timestamptz,
    last_error      text,
    last_status     integer,
    next_attempt_at timestamptz,
    -- Bumped by every write; the Redis status cache keeps only the newest version.
    version         bigint NOT NULL DEFAULT 1
);
CREATE INDEX IF NOT EXISTS notifications_tenant_id ON notifications (tenant_id, id DESC);
CREATE INDEX IF NOT EXISTS notifications_tenant_status ON notifications (tenant_id, status, id DESC);

-- One row per outcome event (delivered, retrying, dead) of a notification. `event_seq` is
-- the EVENTS stream sequence: a redelivered recorder batch inserts nothing twice.
CREATE TABLE IF NOT EXISTS delivery_attempts (
    notification_id uuid NOT NULL,
    event_seq       bigint NOT NULL,
    attempt         integer NOT NULL,
    outcome         text NOT NULL CHECK (outcome IN ('delivered', 'retrying', 'dead')),
    at              timestamptz NOT NULL,
    error           text,
    status_code     integer,
    PRIMARY KEY (notification_id, event_seq)
);

-- Notifications that ended in the dead-letter queue (the DLQ stream holds the document).
CREATE TABLE IF NOT EXISTS dead_letters (
    notification_id uuid PRIMARY KEY,
    tenant_id       uuid NOT NULL,
    attempts        integer NOT NULL,
    error           text,
    dead_at         timestamptz NOT NULL
);
CREATE INDEX IF NOT EXISTS dead_letters_tenant ON dead_letters (tenant_id, notification_id DESC);
