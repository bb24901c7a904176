//! Upstream's experimental hot/cold split of `job`, reproduced with DDL
//! written for these tests (from the shape described in the issue notes,
//! not upstream's file): `job` becomes a table partitioned by `state`, with
//! the active states in `job_active` and the terminal ones in
//! `job_terminated`, the same columns in the same order, and the rows
//! copied over. Upstream's migrator runs it after the numbered chain and
//! leaves `database_version` alone; so does this.
#![allow(dead_code)]

use serde_json::{json, Value};
use tokio_postgres::Client;

use super::json_rows;

/// Splits `job` in the database `client` is connected to, in one
/// transaction; panics if Postgres refuses.
pub async fn split_job(client: &mut Client) {
    let tx = client
        .transaction()
        .await
        .unwrap_or_else(|e| panic!("hot/cold split: begin: {e}"));
    // The old table keeps its name until its rows are copied; its primary
    // key and indexes go with it, so the new ones can take their names.
    let steps = [
        "LOCK TABLE job IN ACCESS EXCLUSIVE MODE",
        "ALTER TABLE job RENAME TO job_unsplit",
        // LIKE keeps the column list, order, types, NOT NULLs and defaults.
        "CREATE TABLE job (LIKE job_unsplit INCLUDING DEFAULTS) PARTITION BY LIST (state)",
        "CREATE TABLE job_active PARTITION OF job FOR VALUES IN (1, 2, 3, 8)
             WITH (fillfactor = 70)",
        "CREATE TABLE job_terminated PARTITION OF job FOR VALUES IN (4, 5, 6, 7, 9)
             WITH (fillfactor = 70)",
        "ALTER TABLE job_active ALTER COLUMN job_spec SET STORAGE EXTERNAL",
        "ALTER TABLE job_terminated ALTER COLUMN job_spec SET STORAGE EXTERNAL",
        "INSERT INTO job SELECT * FROM job_unsplit",
        "DROP TABLE job_unsplit",
        // The key must hold the partition column: job_id alone is no longer unique.
        "ALTER TABLE job ADD CONSTRAINT job_pkey PRIMARY KEY (job_id, state)",
        "CREATE INDEX idx_job_queue_last_transition_time_seconds
             ON job (queue, last_transition_time_seconds)",
        "CREATE INDEX idx_job_queue_jobset_state ON job (queue, jobset, state)",
        "CREATE INDEX idx_job_state ON job (state)",
        "CREATE INDEX idx_job_submitted ON job (submitted DESC)",
        "CREATE INDEX idx_job_jobset_pattern ON job (jobset varchar_pattern_ops)",
        "CREATE INDEX idx_job_annotations_path ON job USING gin (annotations jsonb_path_ops)",
        "CREATE INDEX idx_job_latest_run_id ON job (latest_run_id)",
        "CREATE INDEX idx_job_queue_namespace ON job (queue, namespace)",
        "CREATE INDEX idx_job_ltt_jobid ON job (last_transition_time, job_id)",
        "CREATE INDEX idx_job_active_queue_jobset ON job_active (queue, jobset)",
    ];
    for sql in steps {
        tx.batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("hot/cold split: {sql}: {e}"));
    }
    tx.commit()
        .await
        .unwrap_or_else(|e| panic!("hot/cold split: commit: {e}"));
}

/// `[partition, job_id, state]` of every job row, by job id and state:
/// tests check the routing.
pub async fn partitions(client: &Client) -> Vec<Value> {
    json_rows(
        client,
        "SELECT tableoid::regclass::text AS part, job_id, state FROM job ORDER BY job_id, state",
        &[],
    )
    .await
    .iter()
    .map(|r| json!([r["part"], r["job_id"], r["state"]]))
    .collect()
}
