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
//! Each step's columns are listed once: name, temp-table type, driver type
//! and where the value comes from. Only the run update differs between
//! schema generations ([`RUN_UPDATE_BY_GENERATION`]), so every generation
//! gets its own [`Columns`], and from it its own statements: the temp table,
//! the `COPY`, the insert statements and the `SET` lists of the updates are
//! generated once per process and generation ([`sql`]); only the parts of
//! the statements that are about more than columns (the terminal filter,
//! the unmatched-row detection, the job insert's guard) are written out by
//! hand.
//!
//! Columns and temp-table types are upstream's (insertion.go) at each
//! generation, so values that upstream would reject (e.g. a 33-character job
//! id) are rejected here too, already at `COPY` time.

use super::conflate::{NewJob, NewRun};
use super::retry::{classify, describe, ErrorClass, RetryableError};
use super::step::{Operation, Step, STEPS};
use crate::idhash::HashSet;
use crate::model::{CreateJobError, Generation, UpdateJob, UpdateJobRun};
use futures::pin_mut;
use regex::Regex;
use std::collections::BTreeMap;
use std::sync::LazyLock;
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::{Json, ToSql, Type};

/// A driver error plus what we were doing (the `operation` metric label).
#[derive(Debug)]
pub(crate) struct OpError {
    pub(crate) op: &'static str,
    pub(crate) err: tokio_postgres::Error,
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
pub(crate) struct Applied {
    /// Rows inserted or updated.
    pub(crate) affected: u64,
    /// Job updates not applied because the job is terminal.
    pub(crate) filtered: u64,
    /// Keys (job or run ids) of updates whose row did not exist, in the order
    /// of the step's rows; empty for inserts. An UPDATE that matches nothing
    /// is not an error to Postgres, so without this an out-of-order or
    /// orphaned event would vanish without a trace.
    pub(crate) unmatched: Vec<String>,
    /// Of the creations with an update folded in, the keys this step
    /// inserted (so the row is new): their updates are already applied.
    /// Only known once the step's transaction commits.
    pub(crate) fresh: Vec<String>,
}

/// Keys of the rows created with their update folded in, as committed so far
/// in this write ([`Applied::fresh`]): the update steps skip these updates
/// and count them as applied, which is what they would have done to the new
/// row. A key missing here (its creation not yet known to be inserted) only
/// costs the update being sent: applied to a row that already holds its
/// values it changes nothing.
#[derive(Debug, Default)]
pub(crate) struct Fresh {
    pub(crate) jobs: HashSet<String>,
    pub(crate) runs: HashSet<String>,
}

impl Fresh {
    /// Takes in what a committed step inserted.
    pub(crate) fn add(&mut self, step: Step, applied: &mut Applied) {
        let keys = std::mem::take(&mut applied.fresh);
        match step {
            Step::JobInsert => self.jobs.extend(keys),
            Step::RunInsert => self.runs.extend(keys),
            _ => {}
        }
    }

    /// Whether row `i` of an update step is already applied.
    fn done(&self, batch: &Conflated, step: Step, i: usize) -> bool {
        match step {
            Step::JobUpdate => batch
                .job_updates
                .get(i)
                .is_some_and(|u| self.jobs.contains(&u.job_id)),
            Step::RunUpdate => batch
                .run_updates
                .get(i)
                .is_some_and(|u| self.runs.contains(&u.run_id)),
            _ => false,
        }
    }
}

/// Everything to write, already conflated and de-duplicated.
#[derive(Debug, Default)]
pub(crate) struct Conflated {
    /// Creations, each with the update of the same batch folded in.
    pub(crate) jobs: Vec<NewJob>,
    pub(crate) job_updates: Vec<UpdateJob>,
    pub(crate) runs: Vec<NewRun>,
    pub(crate) run_updates: Vec<UpdateJobRun>,
    pub(crate) job_errors: Vec<CreateJobError>,
    /// Ids whose update is folded into their creation.
    pub(crate) folded_jobs: HashSet<String>,
    pub(crate) folded_runs: HashSet<String>,
}

impl Conflated {
    /// Rows all steps write together.
    pub(crate) fn rows(&self) -> usize {
        STEPS.iter().map(|s| self.len(*s)).sum()
    }

    /// Rows the step writes.
    pub(crate) fn len(&self, step: Step) -> usize {
        match step {
            Step::JobInsert | Step::JobSpecInsert => self.jobs.len(),
            Step::JobUpdate => self.job_updates.len(),
            Step::RunInsert => self.runs.len(),
            Step::JobErrorInsert => self.job_errors.len(),
            Step::RunUpdate => self.run_updates.len(),
        }
    }

    /// The primary key of row `i` of a step, for failure reports.
    pub(crate) fn key(&self, step: Step, i: usize) -> String {
        let k = match step {
            Step::JobInsert | Step::JobSpecInsert => self.jobs.get(i).map(|j| &j.job.job_id),
            Step::JobUpdate => self.job_updates.get(i).map(|u| &u.job_id),
            Step::RunInsert => self.runs.get(i).map(|r| &r.run.run_id),
            Step::JobErrorInsert => self.job_errors.get(i).map(|e| &e.job_id),
            Step::RunUpdate => self.run_updates.get(i).map(|u| &u.run_id),
        };
        k.cloned().unwrap_or_default()
    }

    /// Puts the values of row `i` of `step` into `out` (cleared first), in
    /// column order; false if there is no such row.
    fn values<'a>(
        &'a self,
        columns: &Columns,
        step: Step,
        i: usize,
        out: &mut Vec<Value<'a>>,
    ) -> bool {
        fn fill<'a, R>(cols: &[Column<R>], row: Option<&'a R>, out: &mut Vec<Value<'a>>) -> bool {
            out.clear();
            let Some(row) = row else { return false };
            out.extend(cols.iter().map(|c| (c.get)(row)));
            true
        }
        match step {
            Step::JobInsert => fill(&columns.job, self.jobs.get(i), out),
            Step::JobSpecInsert => fill(columns.job_spec, self.jobs.get(i), out),
            Step::JobUpdate => fill(columns.job_update, self.job_updates.get(i), out),
            Step::RunInsert => fill(&columns.run, self.runs.get(i), out),
            Step::JobErrorInsert => fill(columns.job_error, self.job_errors.get(i), out),
            Step::RunUpdate => fill(&columns.run_update, self.run_updates.get(i), out),
        }
    }
}

// ------------------------------------------------------------------ columns

/// One column's value in one row, borrowed from the row.
#[derive(Debug)]
enum Value<'a> {
    /// A field with its own `ToSql`.
    Sql(&'a (dyn ToSql + Sync)),
    /// A string map as a JSON object (annotations).
    Strings(Json<&'a BTreeMap<String, String>>),
    /// An optional port → address map as a JSON object; serde_json writes
    /// the integer keys as strings (`{"8080": "10.0.0.1"}`), matching
    /// upstream's Go encoding.
    Ports(Option<Json<&'a BTreeMap<i32, String>>>),
}

impl Value<'_> {
    fn as_sql(&self) -> &(dyn ToSql + Sync) {
        match self {
            Value::Sql(v) => *v,
            Value::Strings(v) => v,
            Value::Ports(v) => v,
        }
    }
}

/// One column of a step, in temp-table, `COPY` and parameter order.
pub(crate) struct Column<R: 'static> {
    name: &'static str,
    /// The temp-table type, upstream's.
    sql_type: &'static str,
    /// The `COPY` column and statement parameter type.
    ty: Type,
    get: for<'a> fn(&'a R) -> Value<'a>,
}

// By hand: a derive would ask for `R: Clone`, which the rows need not be.
impl<R> Clone for Column<R> {
    fn clone(&self) -> Self {
        Column {
            name: self.name,
            sql_type: self.sql_type,
            ty: self.ty.clone(),
            get: self.get,
        }
    }
}

const fn col<R>(
    name: &'static str,
    sql_type: &'static str,
    ty: Type,
    get: for<'a> fn(&'a R) -> Value<'a>,
) -> Column<R> {
    Column {
        name,
        sql_type,
        ty,
        get,
    }
}

/// The columns of every step for one Lookout schema generation. An update
/// step's first column is its key; the others are merged with `coalesce`,
/// so a missing (NULL) value keeps what the row has.
pub(crate) struct Columns {
    job: Vec<Column<NewJob>>,
    job_spec: &'static [Column<NewJob>],
    job_update: &'static [Column<UpdateJob>],
    run: Vec<Column<NewRun>>,
    job_error: &'static [Column<CreateJobError>],
    run_update: Vec<Column<UpdateJobRun>>,
}

impl Columns {
    /// What upstream's writer at `generation` writes: the common columns,
    /// plus the run-update columns of that generation.
    fn of(generation: Generation) -> Columns {
        let c = &COMMON;
        let run_update = c
            .run_update
            .iter()
            .cloned()
            .chain(
                RUN_UPDATE_BY_GENERATION
                    .iter()
                    .filter(|(writes, _)| writes(generation))
                    .map(|(_, col)| col.clone()),
            )
            .collect();
        let run = c
            .run
            .iter()
            .cloned()
            .chain(
                RUN_INSERT_BY_GENERATION
                    .iter()
                    .filter(|(writes, _)| writes(generation))
                    .map(|(_, col)| col.clone()),
            )
            .collect();
        Columns {
            job: c.job.to_vec(),
            job_spec: c.job_spec,
            job_update: c.job_update,
            run,
            job_error: c.job_error,
            run_update,
        }
    }
}

/// The columns every generation writes (the run update's are only the
/// common part).
struct Common {
    job: &'static [Column<NewJob>],
    job_spec: &'static [Column<NewJob>],
    job_update: &'static [Column<UpdateJob>],
    run: &'static [Column<NewRun>],
    job_error: &'static [Column<CreateJobError>],
    run_update: &'static [Column<UpdateJobRun>],
}

use Value::Sql;

/// Whether a column is written at a generation.
type WrittenAt = fn(Generation) -> bool;

/// The run-update columns that depend on the generation, each with the
/// generations that write it. 032 has `failure_info` but upstream's 032
/// writer never fills it, so it is 031's alone; the categories are
/// `varchar(63)` in upstream's temp table too.
#[rustfmt::skip]
const RUN_UPDATE_BY_GENERATION: &[(WrittenAt, Column<UpdateJobRun>)] = &[
    (Generation::writes_failure_info,    col("failure_info",                 "jsonb",       Type::JSONB,   |u| Sql(&u.failure_info))),
    (Generation::has_failure_category,   col("failure_category",             "varchar(63)", Type::VARCHAR, |u| Sql(&u.failure_category))),
    (Generation::has_failure_category,   col("failure_subcategory",          "varchar(63)", Type::VARCHAR, |u| Sql(&u.failure_subcategory))),
    (Generation::has_termination_reason, col("scheduler_termination_reason", "jsonb",       Type::JSONB,   |u| Sql(&u.scheduler_termination_reason))),
];

/// The same columns in a run's creation, from the update folded into it.
#[rustfmt::skip]
const RUN_INSERT_BY_GENERATION: &[(WrittenAt, Column<NewRun>)] = &[
    (Generation::writes_failure_info,    col("failure_info",                 "jsonb",       Type::JSONB,   |r| Sql(&r.update.failure_info))),
    (Generation::has_failure_category,   col("failure_category",             "varchar(63)", Type::VARCHAR, |r| Sql(&r.update.failure_category))),
    (Generation::has_failure_category,   col("failure_subcategory",          "varchar(63)", Type::VARCHAR, |r| Sql(&r.update.failure_subcategory))),
    (Generation::has_termination_reason, col("scheduler_termination_reason", "jsonb",       Type::JSONB,   |r| Sql(&r.update.scheduler_termination_reason))),
];

/// The folded update's value where it has one, else the creation's.
fn or<'a, T: ToSql + Sync>(update: &'a Option<T>, create: &'a T) -> Value<'a> {
    match update {
        Some(v) => Sql(v),
        None => Sql(create),
    }
}

/// The columns of every generation, as of Lookout migration 031 (the run
/// update's generation-specific ones are in [`RUN_UPDATE_BY_GENERATION`]).
#[rustfmt::skip]
const COMMON: Common = Common {
    // A folded update's columns: its value where it has one (what the
    // update's `coalesce` would leave), the column's default where not.
    job: &[
        col("job_id",                       "varchar(32)",   Type::VARCHAR,   |j| Sql(&j.job.job_id)),
        col("queue",                        "varchar(512)",  Type::VARCHAR,   |j| Sql(&j.job.queue)),
        col("owner",                        "varchar(512)",  Type::VARCHAR,   |j| Sql(&j.job.owner)),
        col("namespace",                    "varchar(512)",  Type::VARCHAR,   |j| Sql(&j.job.namespace)),
        col("jobset",                       "varchar(1024)", Type::VARCHAR,   |j| Sql(&j.job.jobset)),
        col("cpu",                          "bigint",        Type::INT8,      |j| Sql(&j.job.cpu)),
        col("memory",                       "bigint",        Type::INT8,      |j| Sql(&j.job.memory)),
        col("ephemeral_storage",            "bigint",        Type::INT8,      |j| Sql(&j.job.ephemeral_storage)),
        col("gpu",                          "bigint",        Type::INT8,      |j| Sql(&j.job.gpu)),
        col("priority",                     "bigint",        Type::INT8,      |j| or(&j.update.priority, &j.job.priority)),
        col("submitted",                    "timestamp",     Type::TIMESTAMP, |j| Sql(&j.job.submitted)),
        col("state",                        "smallint",      Type::INT2,      |j| or(&j.update.state, &j.job.state)),
        col("last_transition_time",         "timestamp",     Type::TIMESTAMP, |j| or(&j.update.last_transition_time, &j.job.last_transition_time)),
        col("last_transition_time_seconds", "bigint",        Type::INT8,      |j| or(&j.update.last_transition_time_seconds, &j.job.last_transition_time_seconds)),
        col("priority_class",               "varchar(63)",   Type::VARCHAR,   |j| Sql(&j.job.priority_class)),
        col("annotations",                  "jsonb",         Type::JSONB,     |j| Value::Strings(Json(&j.job.annotations))),
        col("external_job_uri",             "varchar(1024)", Type::VARCHAR,   |j| Sql(&j.job.external_job_uri)),
        col("cancelled",                    "timestamp",     Type::TIMESTAMP, |j| Sql(&j.update.cancelled)),
        col("duplicate",                    "bool",          Type::BOOL,      |j| Sql(j.update.duplicate.as_ref().unwrap_or(&false))),
        col("latest_run_id",                "varchar(36)",   Type::VARCHAR,   |j| Sql(&j.update.latest_run_id)),
        col("cancel_reason",                "varchar(512)",  Type::VARCHAR,   |j| Sql(&j.update.cancel_reason)),
        col("cancel_user",                  "varchar(512)",  Type::VARCHAR,   |j| Sql(&j.update.cancel_user)),
    ],
    job_spec: &[
        col("job_id",                       "varchar(32)",   Type::VARCHAR,   |j| Sql(&j.job.job_id)),
        col("job_spec",                     "bytea",         Type::BYTEA,     |j| Sql(&j.job.job_spec)),
    ],
    job_update: &[
        col("job_id",                       "varchar(32)",   Type::VARCHAR,   |u| Sql(&u.job_id)),
        col("priority",                     "bigint",        Type::INT8,      |u| Sql(&u.priority)),
        col("state",                        "smallint",      Type::INT2,      |u| Sql(&u.state)),
        col("cancelled",                    "timestamp",     Type::TIMESTAMP, |u| Sql(&u.cancelled)),
        col("last_transition_time",         "timestamp",     Type::TIMESTAMP, |u| Sql(&u.last_transition_time)),
        col("last_transition_time_seconds", "bigint",        Type::INT8,      |u| Sql(&u.last_transition_time_seconds)),
        col("duplicate",                    "bool",          Type::BOOL,      |u| Sql(&u.duplicate)),
        col("latest_run_id",                "varchar(36)",   Type::VARCHAR,   |u| Sql(&u.latest_run_id)),
        col("cancel_reason",                "varchar(512)",  Type::VARCHAR,   |u| Sql(&u.cancel_reason)),
        col("cancel_user",                  "varchar(512)",  Type::VARCHAR,   |u| Sql(&u.cancel_user)),
    ],
    // `ingress_addresses` arrives with the running event, so it is NULL on
    // creation unless that event was folded in.
    run: &[
        col("run_id",                       "varchar(36)",   Type::VARCHAR,   |r| Sql(&r.run.run_id)),
        col("job_id",                       "varchar(32)",   Type::VARCHAR,   |r| Sql(&r.run.job_id)),
        col("cluster",                      "varchar(512)",  Type::VARCHAR,   |r| Sql(&r.run.cluster)),
        col("node",                         "varchar(512)",  Type::VARCHAR,   |r| Sql(if r.update.node.is_some() { &r.update.node } else { &r.run.node })),
        col("leased",                       "timestamp",     Type::TIMESTAMP, |r| Sql(&r.run.leased)),
        col("pending",                      "timestamp",     Type::TIMESTAMP, |r| Sql(if r.update.pending.is_some() { &r.update.pending } else { &r.run.pending })),
        col("job_run_state",                "smallint",      Type::INT2,      |r| or(&r.update.job_run_state, &r.run.job_run_state)),
        col("pool",                         "text",          Type::TEXT,      |r| Sql(&r.run.pool)),
        col("ingress_addresses",            "jsonb",         Type::JSONB,     |r| Value::Ports(r.update.ingress_addresses.as_ref().map(Json))),
        col("started",                      "timestamp",     Type::TIMESTAMP, |r| Sql(&r.update.started)),
        col("finished",                     "timestamp",     Type::TIMESTAMP, |r| Sql(&r.update.finished)),
        col("error",                        "bytea",         Type::BYTEA,     |r| Sql(&r.update.error)),
        col("debug",                        "bytea",         Type::BYTEA,     |r| Sql(&r.update.debug)),
        col("exit_code",                    "int",           Type::INT4,      |r| Sql(&r.update.exit_code)),
    ],
    job_error: &[
        col("job_id",                       "varchar(32)",   Type::VARCHAR,   |e| Sql(&e.job_id)),
        col("error",                        "bytea",         Type::BYTEA,     |e| Sql(&e.error)),
    ],
    run_update: &[
        col("run_id",                       "varchar(36)",   Type::VARCHAR,   |u| Sql(&u.run_id)),
        col("node",                         "varchar(512)",  Type::VARCHAR,   |u| Sql(&u.node)),
        col("pending",                      "timestamp",     Type::TIMESTAMP, |u| Sql(&u.pending)),
        col("started",                      "timestamp",     Type::TIMESTAMP, |u| Sql(&u.started)),
        col("finished",                     "timestamp",     Type::TIMESTAMP, |u| Sql(&u.finished)),
        col("job_run_state",                "smallint",      Type::INT2,      |u| Sql(&u.job_run_state)),
        col("error",                        "bytea",         Type::BYTEA,     |u| Sql(&u.error)),
        col("debug",                        "bytea",         Type::BYTEA,     |u| Sql(&u.debug)),
        col("exit_code",                    "int",           Type::INT4,      |u| Sql(&u.exit_code)),
        col("ingress_addresses",            "jsonb",         Type::JSONB,     |u| Value::Ports(u.ingress_addresses.as_ref().map(Json))),
    ],
};

// --------------------------------------------------------------- statements

/// The statements of one step, side by side.
pub(crate) struct StepSql {
    /// `CREATE TEMPORARY TABLE ... ON COMMIT DROP`.
    pub(crate) create_tmp: String,
    /// Binary `COPY` into the temp table; columns in `types` order.
    pub(crate) copy: String,
    /// Column types for `copy` and parameter types for `row`.
    pub(crate) types: Vec<Type>,
    /// Temp table → real table.
    pub(crate) merge: String,
    /// For the job and run inserts: `merge`, returning how many rows it
    /// inserted and their keys (to learn which folded creations are new).
    pub(crate) merge_returning: Option<String>,
    /// One row, parameters in `types` order.
    pub(crate) row: String,
}

/// Every step's statements for one generation, generated from its [`Columns`].
struct Statements {
    columns: Columns,
    /// In [`STEPS`] order.
    steps: Vec<StepSql>,
}

/// One [`Statements`] per generation, in [`Generation::ALL`] order.
static STATEMENTS: LazyLock<Vec<Statements>> = LazyLock::new(|| {
    Generation::ALL
        .into_iter()
        .map(|g| Statements::new(Columns::of(g)))
        .collect()
});

/// The statements for a generation, generated on first use.
fn statements(generation: Generation) -> &'static Statements {
    let i = Generation::ALL
        .iter()
        .position(|g| *g == generation)
        .unwrap_or(0);
    &STATEMENTS[i]
}

/// The statements of `step` at `generation`.
#[cfg(test)]
fn sql(generation: Generation, step: Step) -> &'static StepSql {
    statements(generation).get(step)
}

impl Statements {
    fn new(columns: Columns) -> Statements {
        let steps = STEPS
            .iter()
            .map(|&step| match step {
                Step::JobInsert => insert(step, &columns.job),
                Step::JobSpecInsert => insert(step, columns.job_spec),
                Step::RunInsert => insert(step, &columns.run),
                Step::JobErrorInsert => insert(step, columns.job_error),
                Step::JobUpdate => job_update(columns.job_update),
                Step::RunUpdate => run_update(&columns.run_update),
            })
            .collect();
        Statements { columns, steps }
    }

    fn get(&self, step: Step) -> &StepSql {
        let i = STEPS.iter().position(|s| *s == step).unwrap_or(0);
        &self.steps[i]
    }
}

/// `job_create_tmp_…`, `job_run_update_tmp_…`: the step, then a hash of
/// the columns. A temp table lives as long as its connection (see
/// [`step_sql`]), and a connection may write batches of two generations, so
/// tables with other columns must have other names.
fn tmp_table<R>(step: Step, cols: &[Column<R>]) -> String {
    let verb = match step.operation() {
        Operation::Insert => "create",
        Operation::Update => "update",
    };
    // The same name in every process.
    let defs = cols.iter().flat_map(|c| {
        (c.name.bytes().chain([b' ']))
            .chain(c.sql_type.bytes())
            .chain([b','])
    });
    let hash = super::partition::fnv1a(defs) as u32;
    format!("{}_{verb}_tmp_{hash:08x}", step.table())
}

fn names<R>(cols: &[Column<R>]) -> String {
    cols.iter().map(|c| c.name).collect::<Vec<_>>().join(", ")
}

/// The temp table, its `COPY` and the types, which every step shares.
///
/// Each connection creates a step's temp table once and keeps it, emptied
/// at every commit: creating and dropping six tables in every transaction
/// cost about 6 ms each in catalog writes, a fixed cost that dominated small
/// batches. `IF NOT EXISTS` also recreates it after a rollback undid the
/// transaction that created it.
fn step_sql<R>(step: Step, cols: &[Column<R>], merge: String, row: String) -> StepSql {
    let tmp = tmp_table(step, cols);
    let defs = cols
        .iter()
        .map(|c| format!("{} {}", c.name, c.sql_type))
        .collect::<Vec<_>>()
        .join(",\n    ");
    StepSql {
        create_tmp: format!(
            "CREATE TEMPORARY TABLE IF NOT EXISTS {tmp} (\n    {defs}\n) ON COMMIT DELETE ROWS"
        ),
        copy: format!("COPY {tmp} ({}) FROM STDIN (FORMAT binary)", names(cols)),
        types: cols.iter().map(|c| c.ty.clone()).collect(),
        merge,
        merge_returning: None,
        row,
    }
}

/// Inserts ignore existing keys, as upstream: a redelivered creation is a
/// no-op. A job is also not inserted when its id exists in any state: on a
/// `job` split into hot and cold partitions (upstream's experimental
/// layout) the primary key is `(job_id, state)`, so `ON CONFLICT` alone
/// would let a redelivered creation add a second row next to the job that
/// has since moved to the other partition. On an unsplit table the guard
/// changes nothing.
fn insert<R>(step: Step, cols: &[Column<R>]) -> StepSql {
    let (table, tmp, names) = (step.table(), tmp_table(step, cols), names(cols));
    let params = (1..=cols.len())
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ");
    let (merge, row) = if step == Step::JobInsert {
        (
            format!(
                "INSERT INTO job ({names})\nSELECT {names} FROM {tmp} AS tmp\n\
                 WHERE NOT EXISTS (SELECT 1 FROM job j WHERE j.job_id = tmp.job_id)\n\
                 ON CONFLICT DO NOTHING"
            ),
            format!(
                "INSERT INTO job ({names})\nSELECT {params}\n\
                 WHERE NOT EXISTS (SELECT 1 FROM job j WHERE j.job_id = $1)\n\
                 ON CONFLICT DO NOTHING"
            ),
        )
    } else {
        (
            format!(
                "INSERT INTO {table} ({names})\nSELECT {names} FROM {tmp}\nON CONFLICT DO NOTHING"
            ),
            format!("INSERT INTO {table} ({names})\nVALUES ({params})\nON CONFLICT DO NOTHING"),
        )
    };
    let key = cols.first().map_or("", |c| c.name);
    let merge_returning = matches!(step, Step::JobInsert | Step::RunInsert).then(|| {
        format!("WITH ins AS (\n{merge}\nRETURNING {key}\n)\nSELECT count(*), array_agg({key}) FROM ins")
    });
    StepSql {
        merge_returning,
        ..step_sql(step, cols, merge, row)
    }
}

/// The `SET` list of an update: every column but the key (the first),
/// keeping the stored value (`stored` prefixes its name) where the update
/// has none. `new` gives the update's value of the column at a position
/// (1-based, the key being 1) with a name.
fn set_list<R>(cols: &[Column<R>], new: impl Fn(usize, &str) -> String, stored: &str) -> String {
    cols.iter()
        .enumerate()
        .skip(1)
        .map(|(i, c)| {
            format!(
                "{0} = coalesce({1}, {stored}{0})",
                c.name,
                new(i + 1, c.name)
            )
        })
        .collect::<Vec<_>>()
        .join(",\n        ")
}

/// True when the merged row differs from the stored one (`stored` prefixes
/// the stored columns): some column but the key gets a value it does not
/// hold. Exactly the rows the `SET` list would change.
fn changes<R>(cols: &[Column<R>], stored: &str) -> String {
    cols.iter()
        .skip(1)
        .map(|c| {
            format!(
                "tmp.{0} IS NOT NULL AND tmp.{0} IS DISTINCT FROM {stored}{0}",
                c.name
            )
        })
        .collect::<Vec<_>>()
        .join("\n           OR ")
}

/// The 1-based parameter number of column `name` in the row statement.
fn param<R>(cols: &[Column<R>], name: &str) -> usize {
    cols.iter()
        .position(|c| c.name == name)
        .map_or(0, |i| i + 1)
}

/// The terminal filter lives in the `WHERE`: a job in a terminal state
/// (4 SUCCEEDED, 5 FAILED, 6 CANCELLED, 7 PREEMPTED, 9 REJECTED) is left
/// alone, unless the update makes a succeeded/failed/cancelled job PREEMPTED
/// (upstream's rule). Doing it in the statement instead of a prior `SELECT`
/// saves a round trip and cannot race with another writer: Postgres re-checks
/// the condition against the row version it actually updates.
///
/// A row the update would leave as it is ([`changes`]) is not
/// written: every `job` update is a non-HOT update (`state` and the
/// transition times are indexed), and maintaining the ten secondary indexes
/// is about 85% of its cost, so a redelivered update, or one already folded
/// into its job's creation ([`super::conflate::fold_job_updates`]), would
/// pay that for nothing. Such a row still counts as updated, as it did when
/// it was rewritten, so reports do not depend on what the row held.
///
/// The statement also returns the ids of updates whose job does not exist
/// (unique, since the temp table is conflated; in no particular order). Only
/// the temp rows that were not updated (a hash anti-join against `updated`,
/// nothing to probe when all were) are looked up in `job`, in the
/// statement's snapshot, so jobs created earlier in the same transaction
/// exist; of those, the ones the terminal filter lets through were
/// unchanged. Updates minus unmatched minus updated = filtered by the
/// terminal rule. Probing every temp row instead cost ~5µs a row (10% of
/// the statement) on 10k updates.
fn job_update(cols: &[Column<UpdateJob>]) -> StepSql {
    let tmp = tmp_table(Step::JobUpdate, cols);
    let merge_set = set_list(cols, |_, name| format!("tmp.{name}"), "job.");
    let row_set = set_list(cols, |i, _| format!("${i}"), "");
    let state = param(cols, "state");
    let changed = changes(cols, "job.");
    let merge = format!(
        "WITH updated AS (
    UPDATE job SET
        {merge_set}
    FROM {tmp} AS tmp
    WHERE tmp.job_id = job.job_id
      AND (job.state NOT IN (4, 5, 6, 7, 9)
           OR (tmp.state = 7 AND job.state IN (4, 5, 6)))
      AND ({changed})
    RETURNING job.job_id
),
rest AS (
    SELECT tmp.job_id, tmp.state AS new_state,
           (SELECT job.state FROM job WHERE job.job_id = tmp.job_id LIMIT 1) AS state
    FROM {tmp} AS tmp
    WHERE NOT EXISTS (SELECT 1 FROM updated WHERE updated.job_id = tmp.job_id)
)
SELECT (SELECT count(*) FROM updated)
       + (SELECT count(*) FROM rest
          WHERE state NOT IN (4, 5, 6, 7, 9) OR (new_state = 7 AND state IN (4, 5, 6))) AS updated,
       (SELECT array_agg(job_id) FROM rest WHERE state IS NULL) AS unmatched"
    );
    let row = format!(
        "WITH existing AS (SELECT 1 FROM job WHERE job_id = $1),
updated AS (
    UPDATE job SET
        {row_set}
    WHERE job_id = $1
      AND (state NOT IN (4, 5, 6, 7, 9)
           OR (${state} = 7 AND state IN (4, 5, 6)))
    RETURNING 1
)
SELECT (SELECT count(*) FROM updated) AS updated,
       (SELECT count(*) FROM existing) AS matched"
    );
    step_sql(Step::JobUpdate, cols, merge, row)
}

/// No filter here but [`changes`] (see [`job_update`]): an update
/// not written either leaves its run as it is (counted as updated) or has no
/// run (unmatched). Those two are told apart, and the ids of the unmatched
/// returned (unique, as the temp table is conflated; in no particular
/// order), only when fewer rows were updated than sent (an uncorrelated
/// subquery in a `CASE` branch is evaluated lazily), so the usual
/// all-written batch pays only for the `RETURNING`. The look-up reads the
/// statement's snapshot: a run created earlier in the same transaction
/// exists. Measured before the unchanged filter: on 10k updates about 4ms
/// over the plain `UPDATE`'s ~47ms (best of 31); always anti-joining cost
/// ~7ms, anti-joining against `job_run` ~25ms; a second statement only when
/// the count falls short would race with concurrent writers.
fn run_update(cols: &[Column<UpdateJobRun>]) -> StepSql {
    let tmp = tmp_table(Step::RunUpdate, cols);
    let merge_set = set_list(cols, |_, name| format!("tmp.{name}"), "job_run.");
    let row_set = set_list(cols, |i, _| format!("${i}"), "");
    let changed = changes(cols, "job_run.");
    let merge = format!(
        "WITH updated AS (
    UPDATE job_run SET
        {merge_set}
    FROM {tmp} AS tmp
    WHERE tmp.run_id = job_run.run_id
      AND ({changed})
    RETURNING job_run.run_id
),
n AS (SELECT count(*) AS updated FROM updated),
rest AS (
    SELECT tmp.run_id,
           EXISTS (SELECT 1 FROM job_run WHERE job_run.run_id = tmp.run_id) AS found
    FROM {tmp} AS tmp
    WHERE NOT EXISTS (SELECT 1 FROM updated WHERE updated.run_id = tmp.run_id)
)
SELECT CASE WHEN n.updated < (SELECT count(*) FROM {tmp}) THEN
           n.updated + (SELECT count(*) FROM rest WHERE found)
       ELSE n.updated END AS updated,
       CASE WHEN n.updated < (SELECT count(*) FROM {tmp}) THEN
           (SELECT array_agg(run_id) FROM rest WHERE NOT found)
       END AS unmatched
FROM n"
    );
    let row = format!("UPDATE job_run SET\n        {row_set}\nWHERE run_id = $1");
    step_sql(Step::RunUpdate, cols, merge, row)
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
        ..Applied::default()
    })
}

// ------------------------------------------------------------------ running

/// Streams the step's rows (but those `skip` marks) into its temp table,
/// each row's values straight from the row, without a parameter vector per
/// row.
async fn copy_rows(
    tx: &deadpool_postgres::Transaction<'_>,
    columns: &Columns,
    sql: &StepSql,
    batch: &Conflated,
    step: Step,
    skip: &[bool],
) -> Result<(), OpError> {
    let copy = tx.prepare_cached(&sql.copy).await.map_err(op("copy"))?;
    let sink = tx.copy_in(&copy).await.map_err(op("copy"))?;
    let writer = BinaryCopyInWriter::new(sink, &sql.types);
    pin_mut!(writer);
    let mut values = Vec::with_capacity(sql.types.len());
    for i in 0..batch.len(step) {
        if skip.get(i) == Some(&true) {
            continue;
        }
        batch.values(columns, step, i, &mut values);
        let params: Vec<&(dyn ToSql + Sync)> = values.iter().map(Value::as_sql).collect();
        writer.as_mut().write(&params).await.map_err(op("copy"))?;
    }
    writer.finish().await.map_err(op("copy"))?;
    Ok(())
}

/// Runs one step set-based inside `tx` (temp table, COPY, merge) with the
/// columns of `generation`. The caller owns the transaction (and has checked
/// the generation in it): the step is only durable once it commits. Updates
/// whose row `fresh` says was created with them folded in are not sent and
/// count as applied.
pub(crate) async fn run_batch(
    tx: &deadpool_postgres::Transaction<'_>,
    generation: Generation,
    batch: &Conflated,
    step: Step,
    fresh: &Fresh,
) -> Result<Applied, OpError> {
    let n = batch.len(step);
    // Empty when nothing is skipped, as for every insert step.
    let skip: Vec<bool> = if fresh.jobs.is_empty() && fresh.runs.is_empty() {
        Vec::new()
    } else {
        (0..n).map(|i| fresh.done(batch, step, i)).collect()
    };
    let done = skip.iter().filter(|s| **s).count();
    if n == done {
        return Ok(Applied {
            affected: done as u64,
            ..Applied::default()
        });
    }
    let statements = statements(generation);
    let sql = statements.get(step);
    tx.batch_execute(&sql.create_tmp)
        .await
        .map_err(op("create_temp_table"))?;
    copy_rows(tx, &statements.columns, sql, batch, step, &skip).await?;
    let sent = |i: usize| skip.get(i) != Some(&true);
    match step {
        Step::JobUpdate => {
            let merge = tx.prepare_cached(&sql.merge).await.map_err(op("update"))?;
            let row = tx.query_one(&merge, &[]).await.map_err(op("update"))?;
            let keys = (batch.job_updates.iter().enumerate())
                .filter(|(i, _)| sent(*i))
                .map(|(_, u)| u.job_id.as_str());
            let (updated, unmatched) = merge_result(&row, keys)?;
            let matched = (n - done - unmatched.len()) as u64;
            Ok(Applied {
                affected: updated + done as u64,
                filtered: matched.saturating_sub(updated),
                unmatched,
                ..Applied::default()
            })
        }
        Step::RunUpdate => {
            let merge = tx.prepare_cached(&sql.merge).await.map_err(op("update"))?;
            let row = tx.query_one(&merge, &[]).await.map_err(op("update"))?;
            let keys = (batch.run_updates.iter().enumerate())
                .filter(|(i, _)| sent(*i))
                .map(|(_, u)| u.run_id.as_str());
            let (affected, unmatched) = merge_result(&row, keys)?;
            Ok(Applied {
                affected: affected + done as u64,
                unmatched,
                ..Applied::default()
            })
        }
        _ => {
            let folded = match step {
                Step::JobInsert => &batch.folded_jobs,
                Step::RunInsert => &batch.folded_runs,
                _ => return insert_count(tx, sql, step).await,
            };
            let Some(returning) = sql.merge_returning.as_ref().filter(|_| !folded.is_empty())
            else {
                return insert_count(tx, sql, step).await;
            };
            let insert = step.operation().as_str();
            let returning = tx.prepare_cached(returning).await.map_err(op(insert))?;
            let row = tx.query_one(&returning, &[]).await.map_err(op(insert))?;
            let affected: i64 = row.try_get(0).map_err(op(insert))?;
            let keys: Option<Vec<String>> = row.try_get(1).map_err(op(insert))?;
            Ok(Applied {
                affected: u64::try_from(affected).unwrap_or(0),
                fresh: keys
                    .unwrap_or_default()
                    .into_iter()
                    .filter(|k| folded.contains(k))
                    .collect(),
                ..Applied::default()
            })
        }
    }
}

/// Runs an insert step's merge, counting the rows it inserted.
async fn insert_count(
    tx: &deadpool_postgres::Transaction<'_>,
    sql: &StepSql,
    step: Step,
) -> Result<Applied, OpError> {
    let insert = op(step.operation().as_str());
    let merge = tx.prepare_cached(&sql.merge).await.map_err(&insert)?;
    let affected = tx.execute(&merge, &[]).await.map_err(insert)?;
    Ok(Applied {
        affected,
        ..Applied::default()
    })
}

/// Runs row `i` of a step as one statement inside `client`'s transaction
/// (prepared once per connection, parameters typed as the temp-table
/// columns), with the columns of `generation`.
pub(crate) async fn run_row(
    client: &deadpool_postgres::Transaction<'_>,
    generation: Generation,
    batch: &Conflated,
    step: Step,
    i: usize,
    fresh: &Fresh,
) -> Result<Applied, OpError> {
    if fresh.done(batch, step, i) {
        return Ok(Applied {
            affected: 1,
            ..Applied::default()
        });
    }
    let statements = statements(generation);
    let sql = statements.get(step);
    let exec_op = step.operation().as_str();
    let stmt = client
        .prepare_typed_cached(&sql.row, &sql.types)
        .await
        .map_err(op(exec_op))?;
    let mut values = Vec::with_capacity(sql.types.len());
    if !batch.values(&statements.columns, step, i, &mut values) {
        return Ok(Applied::default());
    }
    let params: Vec<&(dyn ToSql + Sync)> = values.iter().map(|v| v.as_sql()).collect();
    match step {
        Step::JobUpdate => {
            let row = client
                .query_one(&stmt, &params)
                .await
                .map_err(op("update"))?;
            row_update_counts(&row, &batch.key(step, i))
        }
        Step::RunUpdate => {
            // Nothing filters run updates: no row changed means no such run.
            let affected = client.execute(&stmt, &params).await.map_err(op(exec_op))?;
            Ok(Applied {
                affected,
                filtered: 0,
                unmatched: if affected == 0 {
                    vec![batch.key(step, i)]
                } else {
                    Vec::new()
                },
                ..Applied::default()
            })
        }
        _ => {
            let affected = client.execute(&stmt, &params).await.map_err(op(exec_op))?;
            let key = batch.key(step, i);
            let folded = match step {
                Step::JobInsert => batch.folded_jobs.contains(&key),
                Step::RunInsert => batch.folded_runs.contains(&key),
                _ => false,
            };
            Ok(Applied {
                affected,
                fresh: if affected == 1 && folded {
                    vec![key]
                } else {
                    Vec::new()
                },
                ..Applied::default()
            })
        }
    }
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
        for (g, step) in Generation::ALL
            .into_iter()
            .flat_map(|g| STEPS.map(|s| (g, s)))
        {
            let sql = sql(g, step);
            // Row statements take one parameter per temp-table column.
            assert_eq!(count_params(&sql.row), sql.types.len(), "{step:?}");
            // COPY lists as many columns as there are types.
            let cols: Vec<&str> = sql
                .copy
                .split_once('(')
                .and_then(|(_, rest)| rest.split_once(')'))
                .map(|(cols, _)| cols.split(',').map(str::trim).collect())
                .unwrap_or_default();
            assert_eq!(cols.len(), sql.types.len(), "{step:?}");
            assert!(sql.create_tmp.contains("ON COMMIT DELETE ROWS"));
            assert!(sql.create_tmp.contains(&format!(" {}_", step.table())));
            match step.operation() {
                Operation::Insert => {
                    assert!(sql
                        .merge
                        .starts_with(&format!("INSERT INTO {} (", step.table())));
                    assert!(sql.merge.ends_with("ON CONFLICT DO NOTHING"), "{step:?}");
                    assert!(sql.row.ends_with("ON CONFLICT DO NOTHING"), "{step:?}");
                }
                // Every column but the key is merged, keeping the stored
                // value where the update has none.
                Operation::Update => {
                    for (i, c) in cols.iter().enumerate().skip(1) {
                        let n = i + 1;
                        let t = step.table();
                        assert!(
                            sql.merge
                                .contains(&format!("{c} = coalesce(tmp.{c}, {t}.{c})")),
                            "{step:?} {c}"
                        );
                        assert!(
                            sql.row.contains(&format!("{c} = coalesce(${n}, {c})")),
                            "{step:?} {c}"
                        );
                    }
                }
            }
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
        let job_update = sql(Generation::G031, Step::JobUpdate);
        for sql in [&job_update.merge, &job_update.row] {
            assert!(sql.contains(&format!("NOT IN ({list})")), "{sql}");
            assert!(sql.contains(&format!("= {} AND", job_state::PREEMPTED)));
            assert!(sql.contains(&format!(
                "IN ({}, {}, {})",
                job_state::SUCCEEDED,
                job_state::FAILED,
                job_state::CANCELLED
            )));
        }
        // The row statement's filter reads the update's own state.
        assert!(job_update.row.contains("($3 = 7 AND"), "{}", job_update.row);
    }

    /// The run update's columns beyond the common ones, per generation, as
    /// upstream's writer at that generation has them.
    #[test]
    fn run_update_columns_follow_the_generation() {
        let extra = |g: Generation| -> Vec<(&str, &str)> {
            statements(g)
                .columns
                .run_update
                .iter()
                .skip(COMMON.run_update.len())
                .map(|c| (c.name, c.sql_type))
                .collect()
        };
        let categories = [
            ("failure_category", "varchar(63)"),
            ("failure_subcategory", "varchar(63)"),
        ];
        let reason = ("scheduler_termination_reason", "jsonb");
        assert_eq!(extra(Generation::G031), [("failure_info", "jsonb")]);
        // 032 still has failure_info, but upstream's 032 writer never writes it.
        assert_eq!(extra(Generation::G032), categories);
        assert_eq!(extra(Generation::G033), categories);
        for g in [Generation::G034, Generation::G035] {
            assert_eq!(extra(g), [categories[0], categories[1], reason]);
        }
        let sql = sql(Generation::G032, Step::RunUpdate);
        assert!(!sql.merge.contains("failure_info") && !sql.row.contains("failure_info"));
        assert!(sql.create_tmp.contains("failure_category varchar(63)"));
        // A run's creation carries the same columns (an update folds in).
        for g in Generation::ALL {
            let insert = &statements(g).columns.run;
            let tail: Vec<&str> = insert[insert.len() - extra(g).len()..]
                .iter()
                .map(|c| c.name)
                .collect();
            let want: Vec<&str> = extra(g).iter().map(|(n, _)| *n).collect();
            assert_eq!(tail, want, "{g}");
        }
        // The other steps are the same at every generation.
        let varies = [Step::RunUpdate, Step::RunInsert];
        for step in STEPS.into_iter().filter(|s| !varies.contains(s)) {
            let first = sql_text(Generation::G031, step);
            for g in Generation::ALL {
                assert_eq!(sql_text(g, step), first, "{g} {step:?}");
            }
        }
    }

    fn sql_text(g: Generation, step: Step) -> [String; 4] {
        let s = sql(g, step);
        [
            s.create_tmp.clone(),
            s.copy.clone(),
            s.merge.clone(),
            s.row.clone(),
        ]
    }

    /// Both job inserts skip a job id that exists in any state, which an
    /// untargeted `ON CONFLICT` alone does not on a hot/cold split `job`.
    #[test]
    fn job_insert_is_guarded_by_job_id() {
        for g in Generation::ALL {
            let s = sql(g, Step::JobInsert);
            assert!(s
                .merge
                .contains("WHERE NOT EXISTS (SELECT 1 FROM job j WHERE j.job_id = tmp.job_id)"));
            assert!(s
                .row
                .contains("WHERE NOT EXISTS (SELECT 1 FROM job j WHERE j.job_id = $1)"));
            assert!(!sql(g, Step::RunInsert).merge.contains("NOT EXISTS"));
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
        let g = Generation::G035;
        for sql in [
            &sql(g, Step::JobUpdate).merge,
            &sql(g, Step::RunUpdate).merge,
        ] {
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
