-- Dead letters: inputs the ingester could not apply, kept byte for byte with
-- where they came from and why, so nothing is lost and they can be retried.
-- Ours, not upstream's: tracked in lookout_ingester_schema_version.
CREATE TABLE IF NOT EXISTS ingester_dead_letter (
    id           bigserial   PRIMARY KEY,
    -- "pulsar <topic> <ledger>:<entry>:<partition>:<batch index>" or "file <path> <record index>"
    source       text        NOT NULL,
    -- the failure class, e.g. decode, empty_queue, row_failed, unknown_job
    reason       text        NOT NULL,
    error        text        NOT NULL,
    -- the message exactly as received
    payload      bytea       NOT NULL,
    -- the broker's publish time, stands in for a missing event time on retry
    publish_time timestamptz NULL,
    created      timestamptz NOT NULL DEFAULT now(),
    retries      integer     NOT NULL DEFAULT 0,
    last_retry   timestamptz NULL,
    -- the same input failing the same way twice (a redelivery) is kept once
    fingerprint  text        NOT NULL UNIQUE
);
ALTER TABLE ingester_dead_letter ALTER COLUMN payload SET STORAGE EXTERNAL;
CREATE INDEX IF NOT EXISTS idx_ingester_dead_letter_created ON ingester_dead_letter (created);
