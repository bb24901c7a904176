-- Heartbeats: one row per `run` replica, upserted every few seconds and
-- finalised on a clean stop, so `lookout-ingester status` can tell which
-- replicas are alive, which stopped cleanly and which crashed (stale
-- without a clean stop), and how far each got. Rows not beaten for
-- heartbeat.retention are deleted by `run`.
-- Ours, not upstream's: tracked in lookout_ingester_schema_version.
CREATE TABLE IF NOT EXISTS ingester_heartbeat (
    -- heartbeat.replicaId, or <hostname>-<pid>
    replica_id        text             PRIMARY KEY,
    host              text             NOT NULL,
    pid               integer          NOT NULL,
    version           text             NOT NULL,
    topic             text             NOT NULL,
    subscription      text             NOT NULL,
    started           timestamptz      NOT NULL,
    -- the database's clock, so replicas with skewed clocks compare fairly
    last_beat         timestamptz      NOT NULL,
    -- set by a stop that wrote its final state; NULL while running or
    -- after a crash
    stopped           timestamptz      NULL,
    -- why `run` failed, for a stop that was not clean; NULL otherwise
    stop_error        text             NULL,
    last_commit       timestamptz      NULL,
    batches           bigint           NOT NULL DEFAULT 0,
    messages          bigint           NOT NULL DEFAULT 0,
    events            bigint           NOT NULL DEFAULT 0,
    -- now minus the publish time of the last committed message while
    -- messages wait, 0 when none wait, NULL before the first commit
    lag_seconds       double precision NULL,
    schema_generation integer          NULL,
    ready             boolean          NOT NULL DEFAULT false,
    healthy           boolean          NOT NULL DEFAULT true
);
CREATE INDEX IF NOT EXISTS idx_ingester_heartbeat_last_beat ON ingester_heartbeat (last_beat);
