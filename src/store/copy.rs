//! The SQL: one step per table and operation, each written two ways.
//!
//! *Batch*: a temporary table (dropped at commit) filled with binary `COPY`,
//! then one set-based `INSERT ... SELECT` or `UPDATE ... FROM` into the real
//! table. This is upstream's approach and by far the fastest way to move
//! thousands of rows.
//! *Row*: the same semantics as one typed statement per row, used when the
//! batch statement fails for a reason that the rows themselves might cause, so
//! that one bad row does not stop the others.
//!
//! Columns and temp-table types are upstream's (insertion.go), so values that
//! upstream would reject (e.g. a 33-character job id) are rejected here too,
//! already at `COPY` time.

use super::retry::{classify, describe, ErrorClass, RetryableError};
use crate::model::{CreateJob, CreateJobError, CreateJobRun, UpdateJob, UpdateJobRun};
use futures::pin_mut;
use regex::Regex;
use std::collections::{BTreeMap, HashSet};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{Json, ToSql, Type};

/// A driver error plus what we were doing (the `operation` metric label).
#[derive(Debug)]
pub struct OpError {
    pub op: &'static str,
    pub err: tokio_postgres::Error,
}

impl RetryableError for OpError {
    fn class(&self, fatal: &[Regex]) -> ErrorClass {
        classify(&self.err, fatal)
    }
    fn text(&self) -> String {
        format!("{}: {}", self.op, describe(&self.err))
    }
    fn operation(&self) -> &'static str {
        self.op
    }
}

fn op(op: &'static str) -> impl Fn(tokio_postgres::Error) -> OpError {
    move |err| OpError { op, err }
}

/// What a step did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// Rows inserted or updated.
    pub affected: u64,
    /// Job updates not applied because the job is terminal.
    pub filtered: u64,
    /// Keys (job or run ids) of updates whose row did not exist, in the order
    /// of the step's rows; empty for inserts. An UPDATE that matches nothing
    /// is not an error to Postgres, so without this an out-of-order or
    /// orphaned event would vanish without a trace.
    pub unmatched: Vec<String>,
}

/// One unit of work, in the order upstream applies them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    JobInsert,
    JobSpecInsert,
    JobUpdate,
    RunInsert,
    JobErrorInsert,
    RunUpdate,
}

/// Jobs (and their specs) first, since everything else refers to them; runs
/// before run updates, so an update sees a run created in the same batch.
pub const STEPS: [Step; 6] = [
    Step::JobInsert,
    Step::JobSpecInsert,
    Step::JobUpdate,
    Step::RunInsert,
    Step::JobErrorInsert,
    Step::RunUpdate,
];

impl Step {
    pub fn sql(self) -> &'static TableSql {
        match self {
            Step::JobInsert => &JOB_INSERT,
            Step::JobSpecInsert => &JOB_SPEC_INSERT,
            Step::JobUpdate => &JOB_UPDATE,
            Step::RunInsert => &RUN_INSERT,
            Step::JobErrorInsert => &JOB_ERROR_INSERT,
            Step::RunUpdate => &RUN_UPDATE,
        }
    }
    pub fn table(self) -> &'static str {
        self.sql().table
    }
    pub fn operation(self) -> &'static str {
        self.sql().operation
    }
}

/// Everything to write, already conflated and de-duplicated.
#[derive(Debug, Default)]
pub struct Batch {
    pub jobs: Vec<CreateJob>,
    pub job_updates: Vec<UpdateJob>,
    pub runs: Vec<CreateJobRun>,
    pub run_updates: Vec<UpdateJobRun>,
    pub job_errors: Vec<CreateJobError>,
}

impl Batch {
    /// Rows the step writes.
    pub fn len(&self, step: Step) -> usize {
        match step {
            Step::JobInsert | Step::JobSpecInsert => self.jobs.len(),
            Step::JobUpdate => self.job_updates.len(),
            Step::RunInsert => self.runs.len(),
            Step::JobErrorInsert => self.job_errors.len(),
            Step::RunUpdate => self.run_updates.len(),
        }
    }

    /// The primary key of row `i` of a step, for failure reports.
    pub fn key(&self, step: Step, i: usize) -> String {
        let k = match step {
            Step::JobInsert | Step::JobSpecInsert => self.jobs.get(i).map(|j| &j.job_id),
            Step::JobUpdate => self.job_updates.get(i).map(|u| &u.job_id),
            Step::RunInsert => self.runs.get(i).map(|r| &r.run_id),
            Step::JobErrorInsert => self.job_errors.get(i).map(|e| &e.job_id),
            Step::RunUpdate => self.run_updates.get(i).map(|u| &u.run_id),
        };
        k.cloned().unwrap_or_default()
    }
}

/// The statements of one step, side by side.
pub struct TableSql {
    pub table: &'static str,
    pub operation: &'static str,
    /// `CREATE TEMPORARY TABLE ... ON COMMIT DROP`.
    pub create_tmp: &'static str,
    /// Binary `COPY` into the temp table; columns in `types` order.
    pub copy: &'static str,
    /// Column types for `copy` and parameter types for `row`.
    pub types: &'static [Type],
    /// Temp table → real table.
    pub merge: &'static str,
    /// One row, parameters in `types` order.
    pub row: &'static str,
}

// ---------------------------------------------------------------- job insert

pub const JOB_INSERT: TableSql = TableSql {
    table: "job",
    operation: "insert",
    create_tmp: "
        CREATE TEMPORARY TABLE job_create_tmp (
            job_id                       varchar(32),
            queue                        varchar(512),
            owner                        varchar(512),
            namespace                    varchar(512),
            jobset                       varchar(1024),
            cpu                          bigint,
            memory                       bigint,
            ephemeral_storage            bigint,
            gpu                          bigint,
            priority                     bigint,
            submitted                    timestamp,
            state                        smallint,
            last_transition_time         timestamp,
            last_transition_time_seconds bigint,
            priority_class               varchar(63),
            annotations                  jsonb,
            external_job_uri             varchar(1024)
        ) ON COMMIT DROP",
    copy: "COPY job_create_tmp (job_id, queue, owner, namespace, jobset, cpu, memory,
            ephemeral_storage, gpu, priority, submitted, state, last_transition_time,
            last_transition_time_seconds, priority_class, annotations, external_job_uri)
        FROM STDIN (FORMAT binary)",
    types: &[
        Type::VARCHAR,
        Type::VARCHAR,
        Type::VARCHAR,
        Type::VARCHAR,
        Type::VARCHAR,
        Type::INT8,
        Type::INT8,
        Type::INT8,
        Type::INT8,
        Type::INT8,
        Type::TIMESTAMP,
        Type::INT2,
        Type::TIMESTAMP,
        Type::INT8,
        Type::VARCHAR,
        Type::JSONB,
        Type::VARCHAR,
    ],
    merge: "
        INSERT INTO job (job_id, queue, owner, namespace, jobset, cpu, memory,
            ephemeral_storage, gpu, priority, submitted, state, last_transition_time,
            last_transition_time_seconds, priority_class, annotations, external_job_uri)
        SELECT job_id, queue, owner, namespace, jobset, cpu, memory,
            ephemeral_storage, gpu, priority, submitted, state, last_transition_time,
            last_transition_time_seconds, priority_class, annotations, external_job_uri
        FROM job_create_tmp
        ON CONFLICT DO NOTHING",
    row: "
        INSERT INTO job (job_id, queue, owner, namespace, jobset, cpu, memory,
            ephemeral_storage, gpu, priority, submitted, state, last_transition_time,
            last_transition_time_seconds, priority_class, annotations, external_job_uri)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17)
        ON CONFLICT DO NOTHING",
};

type Annotations<'a> = Json<&'a BTreeMap<String, String>>;

fn job_params<'a>(
    j: &'a CreateJob,
    annotations: &'a Annotations<'a>,
) -> Vec<&'a (dyn ToSql + Sync)> {
    vec![
        &j.job_id,
        &j.queue,
        &j.owner,
        &j.namespace,
        &j.jobset,
        &j.cpu,
        &j.memory,
        &j.ephemeral_storage,
        &j.gpu,
        &j.priority,
        &j.submitted,
        &j.state,
        &j.last_transition_time,
        &j.last_transition_time_seconds,
        &j.priority_class,
        annotations,
        &j.external_job_uri,
    ]
}

// ----------------------------------------------------------- job spec insert

pub const JOB_SPEC_INSERT: TableSql = TableSql {
    table: "job_spec",
    operation: "insert",
    create_tmp: "
        CREATE TEMPORARY TABLE job_spec_create_tmp (
            job_id   varchar(32),
            job_spec bytea
        ) ON COMMIT DROP",
    copy: "COPY job_spec_create_tmp (job_id, job_spec) FROM STDIN (FORMAT binary)",
    types: &[Type::VARCHAR, Type::BYTEA],
    merge: "
        INSERT INTO job_spec (job_id, job_spec)
        SELECT job_id, job_spec FROM job_spec_create_tmp
        ON CONFLICT DO NOTHING",
    row: "INSERT INTO job_spec (job_id, job_spec) VALUES ($1, $2) ON CONFLICT DO NOTHING",
};

fn job_spec_params(j: &CreateJob) -> Vec<&(dyn ToSql + Sync)> {
    vec![&j.job_id, &j.job_spec]
}

// ---------------------------------------------------------------- job update

/// The terminal filter lives in the `WHERE`: a job in a terminal state
/// (4 SUCCEEDED, 5 FAILED, 6 CANCELLED, 7 PREEMPTED, 9 REJECTED) is left
/// alone, unless the update makes a succeeded/failed/cancelled job PREEMPTED
/// (upstream's rule). Doing it in the statement instead of a prior `SELECT`
/// saves a round trip and cannot race with another writer: Postgres re-checks
/// the condition against the row version it actually updates.
///
/// The statement also returns the ids of updates whose job does not exist
/// (unique, since the temp table is conflated; in no particular order). The
/// anti-join reads the statement's snapshot, so jobs created earlier in the
/// same transaction exist, and a job whose update was merely filtered is not
/// reported. Updates minus unmatched minus updated = filtered by the terminal
/// rule. The anti-join replaces the join that used to count the matched
/// updates, so it costs nothing extra.
pub const JOB_UPDATE: TableSql = TableSql {
    table: "job",
    operation: "update",
    create_tmp: "
        CREATE TEMPORARY TABLE job_update_tmp (
            job_id                       varchar(32),
            priority                     bigint,
            state                        smallint,
            cancelled                    timestamp,
            last_transition_time         timestamp,
            last_transition_time_seconds bigint,
            duplicate                    bool,
            latest_run_id                varchar(36),
            cancel_reason                varchar(512),
            cancel_user                  varchar(512)
        ) ON COMMIT DROP",
    copy: "COPY job_update_tmp (job_id, priority, state, cancelled, last_transition_time,
            last_transition_time_seconds, duplicate, latest_run_id, cancel_reason, cancel_user)
        FROM STDIN (FORMAT binary)",
    types: &[
        Type::VARCHAR,
        Type::INT8,
        Type::INT2,
        Type::TIMESTAMP,
        Type::TIMESTAMP,
        Type::INT8,
        Type::BOOL,
        Type::VARCHAR,
        Type::VARCHAR,
        Type::VARCHAR,
    ],
    merge: "
        WITH updated AS (
            UPDATE job SET
                priority                     = coalesce(tmp.priority, job.priority),
                state                        = coalesce(tmp.state, job.state),
                cancelled                    = coalesce(tmp.cancelled, job.cancelled),
                last_transition_time         = coalesce(tmp.last_transition_time, job.last_transition_time),
                last_transition_time_seconds = coalesce(tmp.last_transition_time_seconds, job.last_transition_time_seconds),
                duplicate                    = coalesce(tmp.duplicate, job.duplicate),
                latest_run_id                = coalesce(tmp.latest_run_id, job.latest_run_id),
                cancel_reason                = coalesce(tmp.cancel_reason, job.cancel_reason),
                cancel_user                  = coalesce(tmp.cancel_user, job.cancel_user)
            FROM job_update_tmp AS tmp
            WHERE tmp.job_id = job.job_id
              AND (job.state NOT IN (4, 5, 6, 7, 9)
                   OR (tmp.state = 7 AND job.state IN (4, 5, 6)))
            RETURNING 1
        )
        SELECT (SELECT count(*) FROM updated) AS updated,
               (SELECT array_agg(tmp.job_id) FROM job_update_tmp AS tmp
                WHERE NOT EXISTS (SELECT 1 FROM job WHERE job.job_id = tmp.job_id)) AS unmatched",
    row: "
        WITH existing AS (SELECT 1 FROM job WHERE job_id = $1),
        updated AS (
            UPDATE job SET
                priority                     = coalesce($2, priority),
                state                        = coalesce($3, state),
                cancelled                    = coalesce($4, cancelled),
                last_transition_time         = coalesce($5, last_transition_time),
                last_transition_time_seconds = coalesce($6, last_transition_time_seconds),
                duplicate                    = coalesce($7, duplicate),
                latest_run_id                = coalesce($8, latest_run_id),
                cancel_reason                = coalesce($9, cancel_reason),
                cancel_user                  = coalesce($10, cancel_user)
            WHERE job_id = $1
              AND (state NOT IN (4, 5, 6, 7, 9)
                   OR ($3 = 7 AND state IN (4, 5, 6)))
            RETURNING 1
        )
        SELECT (SELECT count(*) FROM updated) AS updated,
               (SELECT count(*) FROM existing) AS matched",
};

fn job_update_params(u: &UpdateJob) -> Vec<&(dyn ToSql + Sync)> {
    vec![
        &u.job_id,
        &u.priority,
        &u.state,
        &u.cancelled,
        &u.last_transition_time,
        &u.last_transition_time_seconds,
        &u.duplicate,
        &u.latest_run_id,
        &u.cancel_reason,
        &u.cancel_user,
    ]
}

/// Reads `(updated, unmatched)` from a set-based update statement. `keys`
/// are the rows' keys in batch order; the unmatched ones are returned in that
/// order (the database's order is arbitrary), so reports are reproducible.
fn merge_result<'a>(
    row: &tokio_postgres::Row,
    keys: impl Iterator<Item = &'a str>,
) -> Result<(u64, Vec<String>), OpError> {
    let updated: i64 = row.try_get(0).map_err(op("update"))?;
    let found: Option<Vec<String>> = row.try_get(1).map_err(op("update"))?;
    let unmatched = in_batch_order(keys, found.unwrap_or_default());
    Ok((u64::try_from(updated).unwrap_or(0), unmatched))
}

/// The `keys` that are in `found`, in `keys` order.
fn in_batch_order<'a>(keys: impl Iterator<Item = &'a str>, found: Vec<String>) -> Vec<String> {
    if found.is_empty() {
        return Vec::new();
    }
    let found: HashSet<String> = found.into_iter().collect();
    keys.filter(|k| found.contains(*k))
        .map(str::to_owned)
        .collect()
}

/// Reads `(updated, matched)` from the single-row job update.
fn row_update_counts(row: &tokio_postgres::Row, key: &str) -> Result<Applied, OpError> {
    let updated: i64 = row.try_get(0).map_err(op("update"))?;
    let matched: i64 = row.try_get(1).map_err(op("update"))?;
    Ok(Applied {
        affected: u64::try_from(updated).unwrap_or(0),
        filtered: u64::try_from(matched.saturating_sub(updated)).unwrap_or(0),
        unmatched: if matched == 0 {
            vec![key.to_owned()]
        } else {
            Vec::new()
        },
    })
}

// ---------------------------------------------------------------- run insert

/// `ingress_addresses` is NULL on creation; it arrives with the running event.
pub const RUN_INSERT: TableSql = TableSql {
    table: "job_run",
    operation: "insert",
    create_tmp: "
        CREATE TEMPORARY TABLE job_run_create_tmp (
            run_id            varchar(36),
            job_id            varchar(32),
            cluster           varchar(512),
            node              varchar(512),
            leased            timestamp,
            pending           timestamp,
            job_run_state     smallint,
            pool              text,
            ingress_addresses jsonb
        ) ON COMMIT DROP",
    copy: "COPY job_run_create_tmp (run_id, job_id, cluster, node, leased, pending,
            job_run_state, pool, ingress_addresses)
        FROM STDIN (FORMAT binary)",
    types: &[
        Type::VARCHAR,
        Type::VARCHAR,
        Type::VARCHAR,
        Type::VARCHAR,
        Type::TIMESTAMP,
        Type::TIMESTAMP,
        Type::INT2,
        Type::TEXT,
        Type::JSONB,
    ],
    merge: "
        INSERT INTO job_run (run_id, job_id, cluster, node, leased, pending,
            job_run_state, pool, ingress_addresses)
        SELECT run_id, job_id, cluster, node, leased, pending,
            job_run_state, pool, ingress_addresses
        FROM job_run_create_tmp
        ON CONFLICT DO NOTHING",
    row: "
        INSERT INTO job_run (run_id, job_id, cluster, node, leased, pending,
            job_run_state, pool, ingress_addresses)
        VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
        ON CONFLICT DO NOTHING",
};

/// A typed SQL NULL for `ingress_addresses` on creation.
const NO_INGRESS: Option<serde_json::Value> = None;

fn run_params(r: &CreateJobRun) -> Vec<&(dyn ToSql + Sync)> {
    vec![
        &r.run_id,
        &r.job_id,
        &r.cluster,
        &r.node,
        &r.leased,
        &r.pending,
        &r.job_run_state,
        &r.pool,
        &NO_INGRESS,
    ]
}

// ---------------------------------------------------------- job error insert

pub const JOB_ERROR_INSERT: TableSql = TableSql {
    table: "job_error",
    operation: "insert",
    create_tmp: "
        CREATE TEMPORARY TABLE job_error_create_tmp (
            job_id varchar(32),
            error  bytea
        ) ON COMMIT DROP",
    copy: "COPY job_error_create_tmp (job_id, error) FROM STDIN (FORMAT binary)",
    types: &[Type::VARCHAR, Type::BYTEA],
    merge: "
        INSERT INTO job_error (job_id, error)
        SELECT job_id, error FROM job_error_create_tmp
        ON CONFLICT DO NOTHING",
    row: "INSERT INTO job_error (job_id, error) VALUES ($1, $2) ON CONFLICT DO NOTHING",
};

fn job_error_params(e: &CreateJobError) -> Vec<&(dyn ToSql + Sync)> {
    vec![&e.job_id, &e.error]
}

// ---------------------------------------------------------------- run update

/// No filter here, so an update changes nothing exactly when its run does not
/// exist: the ids of the temp rows that `RETURNING` did not yield are the
/// unmatched ones (unique, as the temp table is conflated; in no particular
/// order). A run created earlier in the same transaction is updated, so it
/// is not reported, and a run deleted concurrently before the update reached
/// it is. The anti-join only runs when fewer rows were updated than sent (an
/// uncorrelated subquery in a `CASE` branch is evaluated lazily), so the
/// usual all-matched batch pays only for the `RETURNING`: on 10k updates
/// about 4ms over the plain `UPDATE`'s ~47ms (best of 31), 7ms when some
/// are unmatched. Alternatives measured: always anti-joining costs ~7ms,
/// anti-joining against `job_run` ~25ms; a second statement only when the
/// count falls short would race with concurrent writers.
pub const RUN_UPDATE: TableSql = TableSql {
    table: "job_run",
    operation: "update",
    create_tmp: "
        CREATE TEMPORARY TABLE job_run_update_tmp (
            run_id            varchar(36),
            node              varchar(512),
            pending           timestamp,
            started           timestamp,
            finished          timestamp,
            job_run_state     smallint,
            error             bytea,
            debug             bytea,
            exit_code         int,
            ingress_addresses jsonb,
            failure_info      jsonb
        ) ON COMMIT DROP",
    copy: "COPY job_run_update_tmp (run_id, node, pending, started, finished, job_run_state,
            error, debug, exit_code, ingress_addresses, failure_info)
        FROM STDIN (FORMAT binary)",
    types: &[
        Type::VARCHAR,
        Type::VARCHAR,
        Type::TIMESTAMP,
        Type::TIMESTAMP,
        Type::TIMESTAMP,
        Type::INT2,
        Type::BYTEA,
        Type::BYTEA,
        Type::INT4,
        Type::JSONB,
        Type::JSONB,
    ],
    merge: "
        WITH updated AS (
            UPDATE job_run SET
                node              = coalesce(tmp.node, job_run.node),
                pending           = coalesce(tmp.pending, job_run.pending),
                started           = coalesce(tmp.started, job_run.started),
                finished          = coalesce(tmp.finished, job_run.finished),
                job_run_state     = coalesce(tmp.job_run_state, job_run.job_run_state),
                error             = coalesce(tmp.error, job_run.error),
                debug             = coalesce(tmp.debug, job_run.debug),
                exit_code         = coalesce(tmp.exit_code, job_run.exit_code),
                ingress_addresses = coalesce(tmp.ingress_addresses, job_run.ingress_addresses),
                failure_info      = coalesce(tmp.failure_info, job_run.failure_info)
            FROM job_run_update_tmp AS tmp
            WHERE tmp.run_id = job_run.run_id
            RETURNING job_run.run_id
        ),
        n AS (SELECT count(*) AS updated FROM updated)
        SELECT n.updated,
               CASE WHEN n.updated < (SELECT count(*) FROM job_run_update_tmp) THEN
                   (SELECT array_agg(tmp.run_id) FROM job_run_update_tmp AS tmp
                    WHERE NOT EXISTS (SELECT 1 FROM updated WHERE updated.run_id = tmp.run_id))
               END AS unmatched
        FROM n",
    row: "
        UPDATE job_run SET
            node              = coalesce($2, node),
            pending           = coalesce($3, pending),
            started           = coalesce($4, started),
            finished          = coalesce($5, finished),
            job_run_state     = coalesce($6, job_run_state),
            error             = coalesce($7, error),
            debug             = coalesce($8, debug),
            exit_code         = coalesce($9, exit_code),
            ingress_addresses = coalesce($10, ingress_addresses),
            failure_info      = coalesce($11, failure_info)
        WHERE run_id = $1",
};

/// Port → address as a JSON object; serde_json writes integer keys as
/// strings (`{"8080": "10.0.0.1"}`), matching upstream's Go encoding.
type Ingress<'a> = Option<Json<&'a BTreeMap<i32, String>>>;

fn ingress(u: &UpdateJobRun) -> Ingress<'_> {
    u.ingress_addresses.as_ref().map(Json)
}

fn run_update_params<'a>(
    u: &'a UpdateJobRun,
    ingress: &'a Ingress<'a>,
) -> Vec<&'a (dyn ToSql + Sync)> {
    vec![
        &u.run_id,
        &u.node,
        &u.pending,
        &u.started,
        &u.finished,
        &u.job_run_state,
        &u.error,
        &u.debug,
        &u.exit_code,
        ingress,
        &u.failure_info,
    ]
}

// ------------------------------------------------------------------ running

/// Streams rows into the step's temp table.
async fn copy_rows<'a>(
    tx: &tokio_postgres::Transaction<'_>,
    sql: &TableSql,
    rows: impl Iterator<Item = Vec<&'a (dyn ToSql + Sync)>>,
) -> Result<(), OpError> {
    let sink = tx.copy_in(sql.copy).await.map_err(op("copy"))?;
    let writer = BinaryCopyInWriter::new(sink, sql.types);
    pin_mut!(writer);
    for params in rows {
        writer.as_mut().write(&params).await.map_err(op("copy"))?;
    }
    writer.finish().await.map_err(op("copy"))?;
    Ok(())
}

/// Runs one step set-based inside `tx` (temp table, COPY, merge).
/// The caller owns the transaction: the step is only durable once it commits.
pub async fn run_batch(
    tx: &tokio_postgres::Transaction<'_>,
    batch: &Batch,
    step: Step,
) -> Result<Applied, OpError> {
    if batch.len(step) == 0 {
        return Ok(Applied::default());
    }
    let sql = step.sql();
    tx.batch_execute(sql.create_tmp)
        .await
        .map_err(op("create_temp_table"))?;
    match step {
        Step::JobInsert => {
            let anns: Vec<Annotations> = batch.jobs.iter().map(|j| Json(&j.annotations)).collect();
            copy_rows(
                tx,
                sql,
                batch.jobs.iter().zip(&anns).map(|(j, a)| job_params(j, a)),
            )
            .await?
        }
        Step::JobSpecInsert => copy_rows(tx, sql, batch.jobs.iter().map(job_spec_params)).await?,
        Step::JobUpdate => {
            copy_rows(tx, sql, batch.job_updates.iter().map(job_update_params)).await?
        }
        Step::RunInsert => copy_rows(tx, sql, batch.runs.iter().map(run_params)).await?,
        Step::JobErrorInsert => {
            copy_rows(tx, sql, batch.job_errors.iter().map(job_error_params)).await?
        }
        Step::RunUpdate => {
            let ings: Vec<Ingress> = batch.run_updates.iter().map(ingress).collect();
            copy_rows(
                tx,
                sql,
                batch
                    .run_updates
                    .iter()
                    .zip(&ings)
                    .map(|(u, i)| run_update_params(u, i)),
            )
            .await?
        }
    }
    match step {
        Step::JobUpdate => {
            let row = tx.query_one(sql.merge, &[]).await.map_err(op("update"))?;
            let keys = batch.job_updates.iter().map(|u| u.job_id.as_str());
            let (updated, unmatched) = merge_result(&row, keys)?;
            let matched = (batch.job_updates.len() - unmatched.len()) as u64;
            Ok(Applied {
                affected: updated,
                filtered: matched.saturating_sub(updated),
                unmatched,
            })
        }
        Step::RunUpdate => {
            let row = tx.query_one(sql.merge, &[]).await.map_err(op("update"))?;
            let keys = batch.run_updates.iter().map(|u| u.run_id.as_str());
            let (affected, unmatched) = merge_result(&row, keys)?;
            Ok(Applied {
                affected,
                filtered: 0,
                unmatched,
            })
        }
        _ => {
            let affected = tx
                .execute(sql.merge, &[])
                .await
                .map_err(op(sql.operation))?;
            Ok(Applied {
                affected,
                ..Applied::default()
            })
        }
    }
}

/// Runs row `i` of a step as one auto-committed statement (prepared once per
/// connection, parameters typed as the temp-table columns).
pub async fn run_row(
    client: &deadpool_postgres::ClientWrapper,
    batch: &Batch,
    step: Step,
    i: usize,
) -> Result<Applied, OpError> {
    let sql = step.sql();
    let stmt = client
        .prepare_typed_cached(sql.row, sql.types)
        .await
        .map_err(op(sql.operation))?;
    let exec_op = sql.operation;
    let done = |n: u64| Applied {
        affected: n,
        ..Applied::default()
    };
    match step {
        Step::JobInsert => {
            let Some(j) = batch.jobs.get(i) else {
                return Ok(Applied::default());
            };
            let a = Json(&j.annotations);
            execute(client, &stmt, &job_params(j, &a), exec_op)
                .await
                .map(done)
        }
        Step::JobSpecInsert => match batch.jobs.get(i) {
            Some(j) => execute(client, &stmt, &job_spec_params(j), exec_op)
                .await
                .map(done),
            None => Ok(Applied::default()),
        },
        Step::JobUpdate => match batch.job_updates.get(i) {
            Some(u) => {
                let row = client
                    .query_one(&stmt, &job_update_params(u))
                    .await
                    .map_err(op("update"))?;
                row_update_counts(&row, &u.job_id)
            }
            None => Ok(Applied::default()),
        },
        Step::RunInsert => match batch.runs.get(i) {
            Some(r) => execute(client, &stmt, &run_params(r), exec_op)
                .await
                .map(done),
            None => Ok(Applied::default()),
        },
        Step::JobErrorInsert => match batch.job_errors.get(i) {
            Some(e) => execute(client, &stmt, &job_error_params(e), exec_op)
                .await
                .map(done),
            None => Ok(Applied::default()),
        },
        Step::RunUpdate => {
            let Some(u) = batch.run_updates.get(i) else {
                return Ok(Applied::default());
            };
            let ing = ingress(u);
            // Nothing filters run updates: no row changed means no such run.
            let affected = execute(client, &stmt, &run_update_params(u, &ing), exec_op).await?;
            Ok(Applied {
                affected,
                filtered: 0,
                unmatched: if affected == 0 {
                    vec![u.run_id.clone()]
                } else {
                    Vec::new()
                },
            })
        }
    }
}

async fn execute(
    client: &tokio_postgres::Client,
    stmt: &tokio_postgres::Statement,
    params: &[&(dyn ToSql + Sync)],
    operation: &'static str,
) -> Result<u64, OpError> {
    client.execute(stmt, params).await.map_err(op(operation))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::job_state;

    fn count_params(sql: &str) -> usize {
        (1..=40).filter(|n| sql.contains(&format!("${n}"))).count()
    }

    #[test]
    fn statements_agree_with_types() {
        for step in STEPS {
            let sql = step.sql();
            // Row statements take one parameter per temp-table column.
            assert_eq!(count_params(sql.row), sql.types.len(), "{step:?}");
            // COPY lists as many columns as there are types.
            let cols = sql
                .copy
                .split_once('(')
                .and_then(|(_, rest)| rest.split_once(')'))
                .map(|(cols, _)| cols.split(',').count())
                .unwrap_or(0);
            assert_eq!(cols, sql.types.len(), "{step:?}");
            assert!(sql.create_tmp.contains("ON COMMIT DROP"));
        }
    }

    #[test]
    fn terminal_filter_matches_model() {
        let mut t = job_state::TERMINAL.to_vec();
        t.sort();
        let list = t
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>()
            .join(", ");
        for sql in [JOB_UPDATE.merge, JOB_UPDATE.row] {
            assert!(sql.contains(&format!("NOT IN ({list})")), "{sql}");
            assert!(sql.contains(&format!("= {} AND", job_state::PREEMPTED)));
            assert!(sql.contains(&format!(
                "IN ({}, {}, {})",
                job_state::SUCCEEDED,
                job_state::FAILED,
                job_state::CANCELLED
            )));
        }
    }

    #[test]
    fn unmatched_keys_follow_batch_order() {
        let keys = ["c", "a", "d", "b"];
        let found = vec!["b".to_string(), "c".to_string(), "zz".to_string()];
        assert_eq!(in_batch_order(keys.into_iter(), found), ["c", "b"]);
        assert!(in_batch_order(keys.into_iter(), vec![]).is_empty());
    }

    #[test]
    fn update_merges_report_unmatched_keys() {
        for sql in [JOB_UPDATE.merge, RUN_UPDATE.merge] {
            assert!(sql.contains("AS updated"), "{sql}");
            assert!(sql.contains("AS unmatched"), "{sql}");
        }
    }

    #[test]
    fn ingress_keys_are_strings() {
        let mut m = BTreeMap::new();
        m.insert(8080, "10.0.0.1".to_string());
        m.insert(443, "10.0.0.2".to_string());
        let v = serde_json::to_value(&m).expect("serialisable");
        assert_eq!(
            v,
            serde_json::json!({"443": "10.0.0.2", "8080": "10.0.0.1"})
        );
    }
}
