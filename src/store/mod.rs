//! The Postgres writer: applies one [`InstructionSet`] to the Lookout tables.
//!
//! Order as upstream: job and job-spec creations; then job updates, run
//! creations and job errors; then run updates (which must see runs created in
//! the same batch). Updates are first conflated per job/run
//! ([`conflate`]), then everything is written set-based ([`copy`]).
//!
//! Failure handling, from the fast path down:
//! 1. the whole batch in ONE transaction on one connection; retryable errors
//!    ([`retry`]) retry the whole batch with capped exponential backoff;
//! 2. a non-retryable error redoes the batch step by step, each step in its
//!    own transaction (retryable errors retried per step);
//! 3. a step that fails non-retryably again goes row by row, one statement
//!    per row, each in its own transaction; a row that fails non-retryably is reported in
//!    [`WriteReport::failed`] (the caller counts and logs it), the others are written.
//!
//! Nothing is dropped silently: every row is either written, reported as
//! failed, or the call returns [`StoreError`] and the caller must not
//! acknowledge the batch. Updates of rows that do not exist (an event before
//! the one creating its job or run, or for a job never submitted or already
//! pruned) change nothing, which Postgres does not treat as an error; they are
//! listed in [`WriteReport::unmatched`] so the caller can dead-letter the
//! messages that produced them.
//!
//! The schema generation: a batch is converted for one [`Generation`] and
//! written with that generation's columns. Every write transaction (batch,
//! step, row) first takes the locks its statements take anyway (`job`, then
//! `job_run`, ROW EXCLUSIVE), then reads the catalog ([`schema::detect`]):
//! a migration's `ALTER TABLE` waits for our commit, so the columns cannot
//! change between the check and the commit. If the database is at another
//! generation than the batch, nothing is written and the write returns
//! [`StoreError::SchemaChanged`], so the caller converts the batch again; a
//! database that is not at a generation this binary can write returns
//! [`StoreError::Schema`], and nothing is written or reported as failed.
//! Errors that a schema change can cause (undefined column or table, a
//! cached plan whose result changed) re-read the catalog before the usual
//! fallback.

mod conflate;
mod copy;
mod partition;
pub mod retry;
pub mod schema;
mod step;
mod wait;

/// A job creation with fixed values, for tests here and in `hold`.
#[cfg(test)]
pub(crate) use conflate::tests::create as test_job;
pub(crate) use step::STEPS;
pub use step::{Operation, Table};
pub use wait::{SchemaReport, SCHEMA_RECHECK_INTERVAL};

use crate::model::{Generation, InstructionSet};
use crate::{metrics, telemetry};
use copy::{Applied, Conflated, Fresh, OpError};
use deadpool_postgres::{Pool, PoolError};
use regex::Regex;
use retry::{ErrorClass, RetryError, RetryPolicy, RetryableError};
use schema::{Detected, SchemaError};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use step::Step;
use tokio::sync::watch;

/// `retryFor`: a Go-style duration, always set (`run` clears it).
fn retry_for<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    crate::values::duration(d).map(Some)
}

/// Default of `retryFor`.
pub const DEFAULT_RETRY_FOR: Duration = Duration::from_secs(300);

/// Retry behaviour of the store, with upstream's keys and defaults.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(default)]
pub struct StoreSettings {
    /// Longest wait between retries, in whole seconds in configuration; waits
    /// start at 1s (or this, if smaller) and double. Default: 60
    #[serde(rename = "maxBackoff", deserialize_with = "crate::values::seconds")]
    pub max_backoff: Duration,
    /// Retries after the first attempt; `None` retries forever (upstream's default),
    /// so a database outage stalls ingestion instead of losing data. Not
    /// configurable. Default: None
    #[serde(skip)]
    pub max_retries: Option<u32>,
    /// How long a one-shot command (`replay`, `migrate`, `dead-letters`)
    /// keeps retrying an unreachable or refusing database before it gives
    /// up; `None` retries for ever, as `run` does whatever this says.
    /// Default: 5m
    #[serde(rename = "retryFor", deserialize_with = "retry_for")]
    pub retry_for: Option<Duration>,
    /// Errors whose text matches any of these regexes are never retried;
    /// matched against `ERROR: message (SQLSTATE xxxxx)` as pgx formats it.
    /// Default: none
    #[serde(
        rename = "fatalInsertionErrors",
        deserialize_with = "crate::values::regexes"
    )]
    pub fatal_errors: Vec<Regex>,
}

impl Default for StoreSettings {
    fn default() -> Self {
        StoreSettings {
            max_backoff: Duration::from_secs(60),
            max_retries: None,
            retry_for: Some(DEFAULT_RETRY_FOR),
            fatal_errors: Vec::new(),
        }
    }
}

/// Instructions attempted and rows actually changed, for one table/operation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TableCounts {
    /// Instructions sent (after conflation and de-duplication).
    pub attempted: u64,
    /// Rows inserted or updated (an insert of an existing key or an update of
    /// a missing or terminal row changes nothing).
    pub affected: u64,
}

/// A row instruction that could not be written even on its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedRow {
    pub table: Table,
    pub operation: Operation,
    /// The row's primary key (job id or run id).
    pub key: String,
    /// The database's message, with SQLSTATE.
    pub error: String,
}

/// An update that matched no row: its job or run did not exist when the
/// update was applied (a run created earlier in the same batch does exist).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unmatched {
    /// [`Table::Job`] or [`Table::JobRun`].
    pub table: Table,
    /// The job id (`job`) or run id (`job_run`).
    pub key: String,
}

/// A batch merged, folded and split into parts, ready for
/// [`Store::write_prepared`].
#[derive(Debug, Default)]
pub struct PreparedBatch {
    parts: Vec<partition::Part>,
    rows: usize,
}

/// What [`Store::write`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteReport {
    pub job_inserted: TableCounts,
    pub job_spec_inserted: TableCounts,
    pub job_updated: TableCounts,
    pub job_run_inserted: TableCounts,
    pub job_error_inserted: TableCounts,
    pub job_run_updated: TableCounts,
    /// Job updates not applied because the job was already terminal.
    pub filtered_terminal: u64,
    /// Rows that failed even row by row.
    pub failed: Vec<FailedRow>,
    /// Updates (after conflation) whose job or run did not exist, so they
    /// changed nothing: job updates first, then run updates, each in the
    /// order of the conflated updates, every key at most once per table, the
    /// same in every write mode. Updates merely filtered because the job is
    /// terminal are not here (see `filtered_terminal`), nor are failed rows.
    /// Postgres does not report an UPDATE that matches nothing, so without
    /// this list out-of-order or orphaned events would vanish silently; the
    /// caller dead-letters the messages that asked for these keys.
    pub unmatched: Vec<Unmatched>,
    /// Retries after retryable errors, over all levels.
    pub retries: u32,
    /// True when the single-transaction write failed and the batch was
    /// applied step by step instead (then not atomically).
    pub fell_back: bool,
    /// Time spent on each step of [`STEPS`] (in that order), for upstream's
    /// per-operation row-change time.
    pub step_time: [Duration; 6],
}

impl WriteReport {
    fn counts_mut(&mut self, step: Step) -> &mut TableCounts {
        match step {
            Step::JobInsert => &mut self.job_inserted,
            Step::JobSpecInsert => &mut self.job_spec_inserted,
            Step::JobUpdate => &mut self.job_updated,
            Step::RunInsert => &mut self.job_run_inserted,
            Step::JobErrorInsert => &mut self.job_error_inserted,
            Step::RunUpdate => &mut self.job_run_updated,
        }
    }

    /// What was done for `step`.
    pub(crate) fn counts(&self, step: Step) -> TableCounts {
        match step {
            Step::JobInsert => self.job_inserted,
            Step::JobSpecInsert => self.job_spec_inserted,
            Step::JobUpdate => self.job_updated,
            Step::RunInsert => self.job_run_inserted,
            Step::JobErrorInsert => self.job_error_inserted,
            Step::RunUpdate => self.job_run_updated,
        }
    }

    /// Adds `elapsed` to the time spent on `step`.
    fn spent(&mut self, step: Step, elapsed: Duration) {
        if let Some(i) = STEPS.iter().position(|s| *s == step) {
            self.step_time[i] += elapsed;
        }
    }

    /// Adds the report of another part of the same batch. Step times are
    /// the longest part's, since parts run at the same time; `unmatched` is
    /// left alone: the caller merges the parts' in batch order.
    fn absorb(&mut self, part: WriteReport) {
        for step in STEPS {
            let (mine, theirs) = (self.counts_mut(step), part.counts(step));
            mine.attempted += theirs.attempted;
            mine.affected += theirs.affected;
        }
        self.filtered_terminal += part.filtered_terminal;
        self.failed.extend(part.failed);
        self.retries = self.retries.saturating_add(part.retries);
        self.fell_back |= part.fell_back;
        for (mine, theirs) in self.step_time.iter_mut().zip(part.step_time) {
            *mine = (*mine).max(theirs);
        }
    }

    /// How many updates of `table` matched no row, for a metric.
    pub fn unmatched_count(&self, table: Table) -> u64 {
        self.unmatched.iter().filter(|u| u.table == table).count() as u64
    }

    /// Adds the outcome of (part of) a committed step and counts it in the metrics.
    fn record(&mut self, step: Step, attempted: u64, applied: Applied) {
        let c = self.counts_mut(step);
        c.attempted += attempted;
        c.affected += applied.affected;
        self.filtered_terminal += applied.filtered;
        let table = step.table();
        self.unmatched.extend(
            applied
                .unmatched
                .into_iter()
                .map(|key| Unmatched { table, key }),
        );
        metrics::ROWS
            .with_label_values(&[step.table().as_str(), step.operation().as_str()])
            .inc_by(attempted);
        metrics::TERMINAL_FILTERED.inc_by(applied.filtered);
    }
}

/// Why a write was abandoned. The batch may be partly applied (only after a
/// fallback, see [`WriteReport::fell_back`]); it must not be acknowledged, and
/// writing it again is safe: inserts ignore existing keys and updates are
/// idempotent.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database write failed after {attempts} attempts: {last}")]
    RetriesExhausted { attempts: u32, last: String },
    /// Retrying a retryable error took `retryFor`.
    #[error("gave up after {}s of retries (retryFor): {last}", after.as_secs_f64())]
    GaveUp { after: Duration, last: String },
    #[error("shutdown requested while retrying: {last}")]
    Shutdown { last: String },
    #[error("connection pool unusable: {0}")]
    Pool(String),
    /// The database is at generation `to`, not at `from`, which the batch
    /// was converted for: nothing of it was written in the transaction that
    /// found out (steps committed earlier by a fallback stay; writing again
    /// is safe). Convert the batch for `to` and write it again.
    #[error("the Lookout schema is at generation {to}, not {from} as the batch was converted for")]
    SchemaChanged { from: Generation, to: Generation },
    /// The database is not one this binary can write (not migrated, or
    /// columns of no known generation). Fatal: never dead-lettered or
    /// acknowledged.
    // Not a `#[source]`: the message already says it, and error chains
    // would print it twice.
    #[error("refusing to write to this database: {0}")]
    Schema(SchemaError),
}

impl From<SchemaError> for StoreError {
    fn from(e: SchemaError) -> Self {
        StoreError::Schema(e)
    }
}

/// Any failure of one attempt.
#[derive(Debug)]
enum DbFailure {
    Pool(PoolError),
    Op(OpError),
    /// The catalog read inside the transaction says the database cannot be
    /// written, or could not be read.
    Schema(SchemaError),
}

impl From<OpError> for DbFailure {
    fn from(e: OpError) -> Self {
        DbFailure::Op(e)
    }
}

impl RetryableError for DbFailure {
    fn class(&self, fatal: &[Regex]) -> ErrorClass {
        match self {
            DbFailure::Pool(e) => retry::classify_pool(e, fatal),
            DbFailure::Op(e) => e.class(fatal),
            // The catalog query runs right after the lock succeeded on the
            // same connection, so its failing is the connection's or the
            // server's doing, not the data's.
            DbFailure::Schema(SchemaError::Query(text)) => {
                if fatal.iter().any(|r| r.is_match(text)) {
                    ErrorClass::NotRetryable
                } else {
                    ErrorClass::Retryable
                }
            }
            DbFailure::Schema(_) => ErrorClass::NotRetryable,
        }
    }
    fn text(&self) -> String {
        match self {
            DbFailure::Pool(e) => retry::describe_pool(e),
            DbFailure::Op(e) => e.text(),
            DbFailure::Schema(e) => e.to_string(),
        }
    }
    fn operation(&self) -> &'static str {
        match self {
            DbFailure::Pool(_) => "connect",
            DbFailure::Op(e) => e.op,
            DbFailure::Schema(_) => "detect",
        }
    }
}

fn op(op: &'static str) -> impl Fn(tokio_postgres::Error) -> DbFailure {
    move |err| DbFailure::Op(OpError { op, err })
}

/// How one transaction ended when it did not fail.
enum Checked<T> {
    /// Committed.
    Written(T),
    /// Rolled back before writing: the database is at another generation.
    Changed(Detected),
}

/// How one retried unit of work ended, after the retry loop.
enum Attempt<T> {
    Done(T),
    /// Not retryable: the caller falls back (or reports the row).
    Fatal(String),
}

/// Connections one batch is written on at most, one part each (see
/// [`partition`]): Postgres runs each connection's statements on one core,
/// and the server's backend is the ingester's critical path. Pools must
/// hold this many connections for the store, besides their other users.
pub const WRITE_CONNECTIONS: usize = 2;

/// Rows a part must have at least to be worth its own transaction: a
/// transaction costs a few round trips and a catalog read, so small batches
/// (a quiet topic) stay on one connection.
const MIN_ROWS_PER_PART: usize = 1_000;

/// How many parts a batch of `rows` conflated rows is written in.
fn parts_for(rows: usize) -> usize {
    (rows / MIN_ROWS_PER_PART).clamp(1, WRITE_CONNECTIONS)
}

/// SQLSTATEs a schema change under a running writer can cause:
/// undefined_column, undefined_table, and feature_not_supported, which is
/// how "cached plan must not change result type" comes back.
const SCHEMA_CHANGE_CODES: [&str; 3] = ["42703", "42P01", "0A000"];

/// Writes instruction sets to the Lookout database.
pub struct Store {
    pool: Pool,
    settings: StoreSettings,
    policy: RetryPolicy,
    shutdown: Option<watch::Receiver<bool>>,
    /// What the catalog said last ([`Store::detect`] or a write).
    detected: Mutex<Option<Detected>>,
    /// Wait for a writable schema instead of failing (`run`, see `wait.rs`).
    schema_wait: Option<SchemaReport>,
}

impl Store {
    pub fn new(pool: Pool, settings: StoreSettings) -> Store {
        let policy = RetryPolicy {
            max_backoff: settings.max_backoff,
            max_retries: settings.max_retries,
            retry_for: settings.retry_for,
        };
        Store {
            pool,
            settings,
            policy,
            shutdown: None,
            detected: Mutex::new(None),
            schema_wait: None,
        }
    }

    /// The generation the database was last seen at (by [`Store::detect`]
    /// or a write), to convert the next batch for; `None` before either.
    pub fn generation(&self) -> Option<Generation> {
        self.detected().map(|d| d.generation)
    }

    /// What the catalog said last, in full.
    pub fn detected(&self) -> Option<Detected> {
        self.detected.lock().ok().and_then(|d| d.clone())
    }

    /// Reads the schema generation from the catalog, retrying connection
    /// problems like a write does, and remembers it (logged, and exported
    /// as metrics). A database that cannot be written is
    /// [`StoreError::Schema`].
    pub async fn detect(&self) -> Result<Detected, StoreError> {
        let result = retry::retry(
            &self.policy,
            &self.settings.fatal_errors,
            self.shutdown.as_ref(),
            "detect",
            || async {
                let conn = self.pool.get().await.map_err(DbFailure::Pool)?;
                schema::detect(&**conn).await.map_err(DbFailure::Schema)
            },
        )
        .await;
        match result {
            Ok((d, _)) => {
                self.observe(&d);
                Ok(d)
            }
            Err(e) => Err(self.give_up(e)),
        }
    }

    /// Remembers what the catalog said; a first sighting or a change is
    /// logged and sets the schema metrics.
    fn observe(&self, now: &Detected) {
        let Ok(mut last) = self.detected.lock() else {
            return;
        };
        let previous = last.replace(now.clone());
        let same = |p: &Detected| p.generation == now.generation && p.hot_cold == now.hot_cold;
        if !previous.as_ref().is_some_and(same) {
            telemetry::schema_detected(previous.as_ref(), now);
        }
    }

    /// The error for a retry loop that gave up (non-retryable errors other
    /// than the schema's are the caller's to handle before this).
    fn give_up(&self, e: RetryError<DbFailure>) -> StoreError {
        match e {
            RetryError::Fatal(DbFailure::Pool(e)) => StoreError::Pool(retry::describe_pool(&e)),
            RetryError::Fatal(DbFailure::Schema(e)) => StoreError::Schema(e),
            RetryError::Fatal(e) => StoreError::RetriesExhausted {
                attempts: 1,
                last: e.text(),
            },
            RetryError::Exhausted {
                after: Some(after),
                last,
                ..
            } => StoreError::GaveUp {
                after,
                last: last.text(),
            },
            RetryError::Exhausted { attempts, last, .. } => StoreError::RetriesExhausted {
                attempts,
                last: last.text(),
            },
            RetryError::Shutdown { last } => StoreError::Shutdown { last: last.text() },
        }
    }

    /// Inside a fresh transaction: takes the locks the batch's statements
    /// take anyway, so that no `ALTER TABLE` can change the columns before
    /// we commit, then reads the catalog. `Some` if the database is not at
    /// `generation`.
    async fn check_schema(
        &self,
        tx: &tokio_postgres::Transaction<'_>,
        generation: Generation,
    ) -> Result<Option<Detected>, DbFailure> {
        tx.batch_execute("LOCK TABLE job, job_run IN ROW EXCLUSIVE MODE")
            .await
            .map_err(op("lock"))?;
        let now = schema::detect(tx).await.map_err(DbFailure::Schema)?;
        self.observe(&now);
        Ok((now.generation != generation).then_some(now))
    }

    /// Stops retrying (returning [`StoreError::Shutdown`]) once `shutdown`
    /// turns true, so a stalled database does not block a graceful stop.
    /// Attempts in flight are not interrupted.
    pub fn with_shutdown(mut self, shutdown: watch::Receiver<bool>) -> Store {
        self.shutdown = Some(shutdown);
        self
    }

    /// Applies `set`. The fast path is a single transaction, so a crash or a
    /// failed attempt leaves all or nothing of the batch: with at-least-once
    /// delivery the unacknowledged batch is simply written again, and the
    /// database never shows a batch half-applied (e.g. a run update without
    /// the job update of the same event).
    ///
    /// `set` must have been converted for `generation`; if the database is
    /// at another one, the write returns [`StoreError::SchemaChanged`] (see
    /// the module docs).
    pub async fn write(
        &self,
        set: InstructionSet,
        generation: Generation,
    ) -> Result<WriteReport, StoreError> {
        self.write_prepared(Store::prepare(set), generation).await
    }

    /// Merges `set`'s updates per key, folds them into the batch's
    /// creations and splits the batch into the parts written concurrently.
    /// Pure: the pipeline runs it before the store is free (while the
    /// previous batch is written), and the merged batch weighs less than
    /// its events' instructions while it waits.
    pub fn prepare(set: InstructionSet) -> PreparedBatch {
        let job_updates = conflate::conflate_job_updates(set.jobs_to_update);
        let run_updates = conflate::conflate_run_updates(set.runs_to_update);
        let (jobs, folded_jobs) = conflate::fold_job_updates(
            conflate::dedup_job_creations(set.jobs_to_create),
            &job_updates,
        );
        let (runs, folded_runs) = conflate::fold_run_updates(
            conflate::dedup_run_creations(set.runs_to_create),
            &run_updates,
        );
        let batch = Conflated {
            jobs,
            job_updates,
            runs,
            run_updates,
            job_errors: conflate::dedup_job_errors(set.job_errors_to_create),
            folded_jobs,
            folded_runs,
        };
        let rows = batch.rows();
        PreparedBatch {
            parts: partition::partition(batch, parts_for(rows)),
            rows,
        }
    }

    /// [`Store::write`] of a batch already prepared.
    pub async fn write_prepared(
        &self,
        prepared: PreparedBatch,
        generation: Generation,
    ) -> Result<WriteReport, StoreError> {
        let started = Instant::now();
        if prepared.rows == 0 {
            return Ok(WriteReport::default());
        }
        let parts = prepared.parts;
        // Concurrently, each part in its own transaction(s) on its own
        // connection; the batch counts as written only once all have
        // committed.
        let reports =
            futures::future::join_all(parts.iter().map(|p| self.write_part(&p.batch, generation)))
                .await;
        let mut report = WriteReport::default();
        let mut unmatched = Vec::new();
        for (part, result) in parts.iter().zip(reports) {
            let mut r = result?;
            unmatched.extend(part.in_batch_order(std::mem::take(&mut r.unmatched)));
            report.absorb(r);
        }
        // Job updates first, then run updates, each in batch order: the
        // same whatever the number of parts.
        unmatched.sort_by_key(|(order, _)| *order);
        report.unmatched = unmatched.into_iter().map(|(_, u)| u).collect();

        metrics::BATCHES.inc();
        metrics::BATCH_WRITE_SECONDS.observe(started.elapsed().as_secs_f64());
        telemetry::store_written(
            &report,
            parts
                .iter()
                .flat_map(|p| p.batch.job_updates.iter().filter_map(|u| u.state)),
            started.elapsed(),
        );
        tracing::debug!(
            jobs_created = report.job_inserted.attempted,
            jobs_updated = report.job_updated.attempted,
            runs_created = report.job_run_inserted.attempted,
            runs_updated = report.job_run_updated.attempted,
            job_errors = report.job_error_inserted.attempted,
            filtered_terminal = report.filtered_terminal,
            unmatched = report.unmatched.len(),
            failed = report.failed.len(),
            parts = parts.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "batch written"
        );
        // Freeing a large batch takes a while; not before the next write.
        tokio::task::spawn_blocking(move || drop(parts));
        Ok(report)
    }

    /// Writes one part of a batch: in one transaction, or, if that fails
    /// for the data's sake, step by step and then row by row.
    async fn write_part(
        &self,
        batch: &Conflated,
        generation: Generation,
    ) -> Result<WriteReport, StoreError> {
        let mut report = WriteReport::default();
        if batch.rows() == 0 {
            return Ok(report);
        }
        match self
            .retrying("batch", generation, &mut report, || {
                self.write_in_one_transaction(batch, generation)
            })
            .await?
        {
            Attempt::Done((applied, times)) => {
                for ((step, a), t) in STEPS.iter().zip(applied).zip(times) {
                    report.record(*step, batch.len(*step) as u64, a);
                    report.spent(*step, t);
                }
            }
            Attempt::Fatal(error) => {
                tracing::warn!(%error, "batch write failed; applying it step by step");
                report.fell_back = true;
                self.write_step_by_step(batch, generation, &mut report)
                    .await?;
            }
        }
        Ok(report)
    }

    /// Runs `op` (a transaction written for `generation`) under the retry
    /// policy; non-retryable errors come back as [`Attempt::Fatal`], except
    /// an unusable pool, which aborts the write (failing rows because the
    /// pool is closed would lose them), and the schema's verdicts: another
    /// generation is [`StoreError::SchemaChanged`], an unwritable database
    /// [`StoreError::Schema`]. An error a schema change can cause reads the
    /// catalog again before it counts as the rows' fault.
    async fn retrying<T, F, Fut>(
        &self,
        what: &str,
        generation: Generation,
        report: &mut WriteReport,
        op: F,
    ) -> Result<Attempt<T>, StoreError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<Checked<T>, DbFailure>>,
    {
        let mut op = op;
        let started = Instant::now();
        let mut backoff = crate::backoff::Backoff::new(
            Duration::from_secs(1).min(self.settings.max_backoff),
            self.settings.max_backoff,
        );
        let changed = |to: Generation| StoreError::SchemaChanged {
            from: generation,
            to,
        };
        loop {
            let result = retry::retry(
                &self.policy,
                &self.settings.fatal_errors,
                self.shutdown.as_ref(),
                what,
                &mut op,
            )
            .await;
            match result {
                Ok((Checked::Written(v), retries)) => {
                    report.retries = report.retries.saturating_add(retries);
                    return Ok(Attempt::Done(v));
                }
                Ok((Checked::Changed(now), _)) => return Err(changed(now.generation)),
                Err(RetryError::Fatal(DbFailure::Op(e))) if caused_by_schema_change(&e) => {
                    let now = self.detect().await?;
                    if now.generation != generation {
                        return Err(changed(now.generation));
                    }
                    if !missing_relation_or_column(&e) {
                        return Ok(Attempt::Fatal(e.text()));
                    }
                    // A table or column the generation has is missing: the
                    // environment's fault (a half-restored or hand-edited
                    // database), never the rows'. Wait, as for an outage.
                    let last = e.text();
                    if let Some(limit) = self.settings.retry_for {
                        if started.elapsed() >= limit {
                            return Err(StoreError::GaveUp { after: limit, last });
                        }
                    }
                    report.retries = report.retries.saturating_add(1);
                    let mut wait = backoff.next_wait();
                    if let Some(limit) = self.settings.retry_for {
                        wait = wait.min(limit.saturating_sub(started.elapsed()));
                    }
                    tracing::warn!(
                        what,
                        wait_ms = wait.as_millis() as u64,
                        error = %last,
                        "a table or column of the Lookout schema is missing; nothing is \
                         dead-lettered, will retry (run `lookout-ingester migrate`?)"
                    );
                    match &self.shutdown {
                        Some(rx) => {
                            if *rx.borrow() {
                                return Err(StoreError::Shutdown { last });
                            }
                            let mut rx = rx.clone();
                            tokio::select! {
                                _ = tokio::time::sleep(wait) => {}
                                stopped = async { rx.wait_for(|v| *v).await.is_ok() } => if stopped {
                                    return Err(StoreError::Shutdown { last });
                                } else {
                                    tokio::time::sleep(wait).await
                                },
                            }
                        }
                        None => tokio::time::sleep(wait).await,
                    }
                }
                Err(RetryError::Fatal(e @ DbFailure::Op(_))) => {
                    return Ok(Attempt::Fatal(e.text()))
                }
                Err(e) => return Err(self.give_up(e)),
            }
        }
    }

    /// Every step in one transaction on one connection.
    async fn write_in_one_transaction(
        &self,
        batch: &Conflated,
        generation: Generation,
    ) -> Result<Checked<([Applied; 6], [Duration; 6])>, DbFailure> {
        let mut conn = self.pool.get().await.map_err(DbFailure::Pool)?;
        let tx = conn.transaction().await.map_err(op("begin"))?;
        if let Some(now) = self.check_schema(&tx, generation).await? {
            return Ok(Checked::Changed(now));
        }
        // Inserted in this transaction: known-new once it commits, which
        // is when the whole attempt counts.
        let mut fresh = Fresh::default();
        let mut applied: [Applied; 6] = Default::default();
        let mut times = [Duration::ZERO; 6];
        for ((slot, time), step) in applied.iter_mut().zip(times.iter_mut()).zip(STEPS) {
            let started = Instant::now();
            *slot = copy::run_batch(&tx, generation, batch, step, &fresh).await?;
            *time = started.elapsed();
            fresh.add(step, slot);
        }
        tx.commit().await.map_err(op("commit"))?;
        Ok(Checked::Written((applied, times)))
    }

    /// One step in its own transaction.
    async fn write_step(
        &self,
        batch: &Conflated,
        generation: Generation,
        step: Step,
        fresh: &Fresh,
    ) -> Result<Checked<Applied>, DbFailure> {
        let mut conn = self.pool.get().await.map_err(DbFailure::Pool)?;
        let tx = conn.transaction().await.map_err(op("begin"))?;
        if let Some(now) = self.check_schema(&tx, generation).await? {
            return Ok(Checked::Changed(now));
        }
        let applied = copy::run_batch(&tx, generation, batch, step, fresh).await?;
        tx.commit().await.map_err(op("commit"))?;
        Ok(Checked::Written(applied))
    }

    /// One row as one statement, in a transaction of its own so that its
    /// columns are checked like a batch's.
    async fn write_row(
        &self,
        batch: &Conflated,
        generation: Generation,
        step: Step,
        i: usize,
        fresh: &Fresh,
    ) -> Result<Checked<Applied>, DbFailure> {
        let mut conn = self.pool.get().await.map_err(DbFailure::Pool)?;
        let tx = conn.transaction().await.map_err(op("begin"))?;
        if let Some(now) = self.check_schema(&tx, generation).await? {
            return Ok(Checked::Changed(now));
        }
        let applied = copy::run_row(&tx, generation, batch, step, i, fresh).await?;
        tx.commit().await.map_err(op("commit"))?;
        Ok(Checked::Written(applied))
    }

    async fn write_step_by_step(
        &self,
        batch: &Conflated,
        generation: Generation,
        report: &mut WriteReport,
    ) -> Result<(), StoreError> {
        // Filled as the insert steps commit.
        let mut fresh = Fresh::default();
        for step in STEPS {
            let n = batch.len(step);
            if n == 0 {
                continue;
            }
            let what = step.to_string();
            let started = Instant::now();
            match self
                .retrying(&what, generation, report, || {
                    self.write_step(batch, generation, step, &fresh)
                })
                .await?
            {
                Attempt::Done(mut applied) => {
                    fresh.add(step, &mut applied);
                    report.record(step, n as u64, applied);
                    report.spent(step, started.elapsed());
                }
                Attempt::Fatal(error) => {
                    tracing::warn!(step = %what, rows = n, %error, "step failed; writing its rows one by one");
                    metrics::FALLBACKS
                        .with_label_values(&[step.table().as_str()])
                        .inc();
                    self.write_rows(batch, generation, step, report, &mut fresh)
                        .await?;
                }
            }
        }
        Ok(())
    }

    async fn write_rows(
        &self,
        batch: &Conflated,
        generation: Generation,
        step: Step,
        report: &mut WriteReport,
        fresh: &mut Fresh,
    ) -> Result<(), StoreError> {
        let what = step.to_string();
        for i in 0..batch.len(step) {
            let started = Instant::now();
            let attempt = self
                .retrying(&what, generation, report, || {
                    self.write_row(batch, generation, step, i, fresh)
                })
                .await?;
            report.spent(step, started.elapsed());
            match attempt {
                Attempt::Done(mut applied) => {
                    fresh.add(step, &mut applied);
                    report.record(step, 1, applied)
                }
                Attempt::Fatal(error) => {
                    // Counted and logged once, from the report, by `telemetry::row_failed`.
                    let key = batch.key(step, i);
                    report.counts_mut(step).attempted += 1;
                    report.failed.push(FailedRow {
                        table: step.table(),
                        operation: step.operation(),
                        key,
                        error,
                    });
                }
            }
        }
        Ok(())
    }
}

/// Whether `e` is an error that a schema change under the writer can cause.
/// undefined_table or undefined_column.
fn missing_relation_or_column(e: &OpError) -> bool {
    e.err
        .code()
        .is_some_and(|c| ["42P01", "42703"].contains(&c.code()))
}

fn caused_by_schema_change(e: &OpError) -> bool {
    e.err
        .code()
        .is_some_and(|c| SCHEMA_CHANGE_CODES.contains(&c.code()))
}

/// A pool from a URL or key=value string: see [`crate::pg::connect_pool`].
pub use crate::pg::connect_pool;
