//! Lookout database schema migrations.
//!
//! The schema is the same as the one Armada's own Lookout migrations build
//! (numbered files `migrations/001_*.sql` … `migrations/035_*.sql`, embedded
//! into the binary), and the version bookkeeping is the same too, so a
//! database migrated by Armada's Go tooling can be taken over as is and vice
//! versa:
//!
//! * The current schema version is `SELECT last_value FROM database_version`,
//!   a sequence created with `START WITH 0 MINVALUE 0` (so an empty database
//!   is version 0). Once migration `N` has been applied, the sequence is set
//!   to `N` with `setval('database_version', N)`.
//! * Every migration whose number is greater than the current version and
//!   not greater than the target is applied, in order. The target is
//!   [`DEFAULT_TARGET`] (031) unless one is given ([`upgrade`], `migrate
//!   --to N`); a database already past the target is left as it is, never
//!   taken backwards (there are no down migrations, upstream neither).
//! * 032 and 034 add their columns `IF NOT EXISTS` and 033 drops with `IF
//!   EXISTS` (upstream's files do not), so a database whose version lags its
//!   columns (a lost `setval`, see below) can still be brought forward.
//!
//! Differences from the Go runner, all of them about safety:
//!
//! * **One transaction per migration.** A migration's SQL and its version bump
//!   commit together or not at all. `setval` on its own is *not*
//!   transactional in PostgreSQL (a rolled back `setval` still sticks), so the
//!   bump is done as `ALTER SEQUENCE database_version RESTART WITH N` (which
//!   gives the sequence new storage inside the transaction, so it is undone on
//!   rollback) followed by `setval('database_version', N)` (which leaves the
//!   sequence in exactly the state the Go runner leaves it in).
//! * **Non-transactional migrations.** `CREATE INDEX CONCURRENTLY` cannot run
//!   inside a transaction block; it is used (as upstream does) for indexes on
//!   the big `job` and `job_run` tables so that building them does not block
//!   ingestion. A file whose first line is
//!   `-- lookout-ingester: no-transaction` ([`NO_TRANSACTION_MARKER`]) holds
//!   exactly one statement (a multi-statement query would run as one
//!   implicit transaction), run outside any transaction; the version is
//!   bumped afterwards in a transaction of its own. Such files must be
//!   idempotent: a `CREATE INDEX CONCURRENTLY` must say `IF NOT EXISTS`, and,
//!   because a failed concurrent build leaves an `INVALID` index behind that
//!   `IF NOT EXISTS` would then silently keep, an invalid index of the same
//!   name on the same schema is dropped (`DROP INDEX CONCURRENTLY`) right
//!   before the build. If the process dies between the statements and the
//!   version bump, the next run simply repeats the file.
//! * **Advisory lock.** The whole run (upstream's migrations, then the
//!   ingester's own, see [`OWN_MIGRATIONS`]) holds the session-level advisory lock
//!   [`MIGRATION_LOCK_KEY`] (scoped to the current database), so replicas
//!   starting together migrate one at a time: the second waits, then finds
//!   the database up to date and applies nothing. The lock is taken by
//!   polling `pg_try_advisory_lock` rather than by a blocking
//!   `pg_advisory_lock`: a session blocked inside `pg_advisory_lock` holds a
//!   snapshot, `CREATE INDEX CONCURRENTLY` in the lock holder waits for every
//!   such snapshot to go away, and PostgreSQL resolves the cycle by killing
//!   one side with "deadlock detected". The lock is released at the end, on
//!   success and on error (if the future is dropped half-way it is released
//!   when the connection closes).
//! * **Newer databases are left alone.** If the database's version is higher
//!   than the newest migration this binary knows, `migrate` fails without
//!   changing anything.
//! * **Dropping data is asked for.** 033 drops `job_run.failure_info`. When
//!   rows hold one, [`upgrade`] applies it only with `allow_drop` (`migrate
//!   --allow-drop`) and otherwise refuses ([`DropRefused`]) before applying
//!   anything. The count is taken again inside 033's transaction, after
//!   locking `job_run`, so rows written by an ingester meanwhile are not
//!   dropped unasked either.
//!
//! The role running the migrations needs to own the tables (as upstream) and
//! the `database_version` sequence (for `ALTER SEQUENCE`).

use std::fmt;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use tokio_postgres::{Client, GenericClient, Transaction};

use crate::store::schema::{self, Detected, SchemaError};

/// One numbered schema migration, of upstream's schema or of the
/// ingester's own tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migration {
    /// The number at the start of the file name; also the schema version the
    /// database is at once this migration has been applied.
    pub version: i64,
    /// The file name under `migrations/` (or `migrations/ingester/`), e.g.
    /// `031_add_failure_info_to_job_run.sql`.
    pub name: &'static str,
    /// The file's contents.
    pub sql: &'static str,
    /// `false` when the file starts with [`NO_TRANSACTION_MARKER`]: its one
    /// statement runs outside a transaction.
    pub transactional: bool,
}

/// First line of a migration file that must not run inside a transaction.
pub const NO_TRANSACTION_MARKER: &str = "-- lookout-ingester: no-transaction";

/// Name from which [`MIGRATION_LOCK_KEY`] is derived.
pub const MIGRATION_LOCK_NAME: &str = "lookout-ingester:schema-migrations";

/// Key of the session-level advisory lock held while migrating: the 64-bit
/// FNV-1a hash of [`MIGRATION_LOCK_NAME`], read as a signed integer
/// (`-942064953667972313`). In `pg_locks` it shows up as `locktype =
/// 'advisory'`, `classid = 4075625706`, `objid = 2034668327`, `objsubid = 1`.
pub const MIGRATION_LOCK_KEY: i64 = fnv1a64(MIGRATION_LOCK_NAME.as_bytes()) as i64;

/// How often a waiting migrator retries the advisory lock.
const LOCK_POLL_INTERVAL: Duration = Duration::from_millis(200);
/// How often a waiting migrator says that it is still waiting.
const LOCK_WAIT_LOG_INTERVAL: Duration = Duration::from_secs(30);

const fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        hash ^= bytes[i] as u64;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        i += 1;
    }
    hash
}

const fn starts_with(text: &str, prefix: &str) -> bool {
    let (text, prefix) = (text.as_bytes(), prefix.as_bytes());
    if text.len() < prefix.len() {
        return false;
    }
    let mut i = 0;
    while i < prefix.len() {
        if text[i] != prefix[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// A [`Migration`] from `migrations/` (or a subdirectory of it).
macro_rules! migration {
    ($version:literal, $file:literal) => {
        migration!($version, "", $file)
    };
    ($version:literal, $dir:literal, $file:literal) => {
        Migration {
            version: $version,
            name: $file,
            sql: include_str!(concat!("../migrations/", $dir, $file)),
            transactional: !starts_with(
                include_str!(concat!("../migrations/", $dir, $file)),
                NO_TRANSACTION_MARKER,
            ),
        }
    };
}

static MIGRATIONS: &[Migration] = &[
    migration!(1, "001_initial_schema.sql"),
    migration!(2, "002_cancel_reason.sql"),
    migration!(3, "003_run_leased_column.sql"),
    migration!(4, "004_job_namespace.sql"),
    migration!(5, "005_annotations.sql"),
    migration!(6, "006_annotations_constraint.sql"),
    migration!(7, "007_queue.sql"),
    migration!(8, "008_run_debug_column.sql"),
    migration!(9, "009_job_deduplication.sql"),
    migration!(10, "010_drop_unused_table_and_indexes.sql"),
    migration!(11, "011_add_job_error.sql"),
    migration!(12, "012_add_job_submitted_index.sql"),
    migration!(13, "013_add_job_spec_table.sql"),
    migration!(14, "014_add_external_job_uri.sql"),
    migration!(15, "015_add_cancel_user.sql"),
    migration!(16, "016_add_job_run_pool.sql"),
    migration!(17, "017_create_job_run_state_pool_idx.sql"),
    migration!(18, "018_optimise_ingest_performance.sql"),
    migration!(
        19,
        "019_optimise_ingest_performance_new_annotation_index.sql"
    ),
    migration!(20, "020_readd_jobset_index.sql"),
    migration!(21, "021_create_job_run_run_id_cluster_node_idx.sql"),
    migration!(22, "022_create_job_run_run_id_node_idx.sql"),
    migration!(23, "023_create_job_latest_run_id_idx.sql"),
    migration!(24, "024_create_job_queue_namespace_idx.sql"),
    migration!(25, "025_create_job_run_ingress_addresses_column.sql"),
    migration!(26, "026_create_job_run_run_id_pool_idx.sql"),
    migration!(27, "027_create_job_ltt_jobid_idx.sql"),
    migration!(28, "028_drop_redundant_idx_job_queue.sql"),
    migration!(29, "029_create_job_run_cluster_run_id_idx.sql"),
    migration!(30, "030_create_job_active_queue_jobset_idx.sql"),
    migration!(31, "031_add_failure_info_to_job_run.sql"),
    migration!(32, "032_add_failure_category_to_job_run.sql"),
    migration!(33, "033_drop_failure_info_from_job_run.sql"),
    migration!(34, "034_add_scheduler_termination_reason.sql"),
    migration!(35, "035_create_retry_policy.sql"),
];

/// Where `migrate` takes a database when no target is given: 031, the
/// generation whose FailureInfo map this project was built around. Later
/// generations are opted into (033 drops data).
pub const DEFAULT_TARGET: i64 = 31;

/// The one migration that drops data: `job_run.failure_info` and its
/// contents.
pub const DROPS_FAILURE_INFO: &str = "033_drop_failure_info_from_job_run.sql";

/// Why [`upgrade`] did not apply 033: `job_run.failure_info` holds data
/// and dropping it was not allowed. Nothing of 033 was applied.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "migration 033 drops job_run.failure_info, which {rows} run(s) still hold; refusing without \
     --allow-drop, the database stays at version {at}. Rerun with --allow-drop to drop that data, \
     or with --to 32 to stop before 033"
)]
pub struct DropRefused {
    /// Rows with a non-NULL `failure_info`.
    pub rows: i64,
    /// The database's version after the refusal.
    pub at: i64,
}

/// Parses `migrate --to`: `latest`, or a generation this binary serves,
/// [`DEFAULT_TARGET`] to [`latest_version`] (`35` or `035`).
pub fn parse_target(text: &str) -> std::result::Result<i64, String> {
    let latest = latest_version();
    if text.eq_ignore_ascii_case("latest") {
        return Ok(latest);
    }
    let n: i64 = text
        .parse()
        .map_err(|_| format!("`{text}` is neither a migration number nor `latest`"))?;
    if n > latest {
        Err(format!(
            "this binary knows migrations up to {latest:03}; {n:03} is unknown to it \
             (a newer lookout-ingester is needed)"
        ))
    } else if n < DEFAULT_TARGET {
        Err(format!(
            "the ingester serves Lookout schema generations {DEFAULT_TARGET:03} to {latest:03}; \
             --to takes one of them or `latest`"
        ))
    } else {
        Ok(n)
    }
}

/// All migrations this binary knows, sorted by version.
pub fn migrations() -> &'static [Migration] {
    MIGRATIONS
}

/// The version a fully migrated database is at.
pub fn latest_version() -> i64 {
    MIGRATIONS.last().map_or(0, |m| m.version)
}

/// Where a database stands relative to this binary's migrations.
#[derive(Debug, Clone, PartialEq)]
pub struct Status {
    /// The database's schema version (0 if it has never been migrated).
    pub current: i64,
    /// [`latest_version`].
    pub latest: i64,
    /// [`DEFAULT_TARGET`].
    pub default_target: i64,
    /// The generation `job_run`'s columns say (see [`schema::detect`]), or
    /// why they match none.
    pub detected: std::result::Result<Detected, SchemaError>,
    /// Migrations `migrate` (without `--to`) would apply, in order.
    pub pending: Vec<(i64, &'static str)>,
    /// Migrations past the default target up to [`latest_version`], that
    /// `migrate --to N` would apply, in order.
    pub beyond: Vec<(i64, &'static str)>,
    /// Rows 033 would drop the `failure_info` of: `None` when 033 is not
    /// ahead or the column does not exist.
    pub failure_info_rows: Option<i64>,
    /// The ingester's own migrations ([`OWN_MIGRATIONS`]) not yet applied.
    pub own_pending: Vec<(i64, &'static str)>,
}

impl Status {
    /// The database's version is past every migration this binary knows:
    /// `migrate` refuses it, and `migrate --status` exits non-zero.
    pub fn newer_than_binary(&self) -> bool {
        self.current > self.latest
    }
}

/// What `migrate --status` prints.
impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "database version: {}", self.current)?;
        writeln!(f, "binary's latest:  {}", self.latest)?;
        writeln!(f, "default target:   {}", self.default_target)?;
        match &self.detected {
            Ok(d) => {
                write!(
                    f,
                    "generation:       {} (from job_run's columns",
                    d.generation
                )?;
                match d.version {
                    Some(v) if v != d.generation.number() => {
                        writeln!(f, "; database_version says {v})")?
                    }
                    Some(_) => writeln!(f, ")")?,
                    None => writeln!(f, "; no database_version sequence)")?,
                }
                if d.hot_cold {
                    writeln!(
                        f,
                        "job table:        partitioned by state (upstream's hot/cold split)"
                    )?;
                }
            }
            Err(e) => writeln!(f, "generation:       none: {e}")?,
        }
        if self.newer_than_binary() {
            return writeln!(
                f,
                "the database is newer than this binary; migrate will not touch it"
            );
        }
        let list = |f: &mut fmt::Formatter<'_>, heading: &str, items: &[(i64, &str)]| {
            if items.is_empty() {
                return writeln!(f, "{heading}: none");
            }
            writeln!(f, "{heading}:")?;
            for (v, name) in items {
                write!(f, "  {v:03} {name}")?;
                match self.failure_info_rows {
                    Some(rows) if *name == DROPS_FAILURE_INFO && rows > 0 => writeln!(
                        f,
                        " (drops the failure_info of {rows} run(s): needs --allow-drop)"
                    )?,
                    Some(_) if *name == DROPS_FAILURE_INFO => {
                        writeln!(f, " (drops failure_info; no run holds one)")?
                    }
                    _ => writeln!(f)?,
                }
            }
            Ok(())
        };
        list(
            f,
            &format!(
                "pending up to the default target {:03}",
                self.default_target
            ),
            &self.pending,
        )?;
        list(
            f,
            "available beyond it (migrate --to N, or --to latest)",
            &self.beyond,
        )?;
        if self.own_pending.is_empty() {
            writeln!(f, "ingester tables: up to date")
        } else {
            writeln!(f, "ingester tables pending (migrations/ingester):")?;
            for (v, name) in &self.own_pending {
                writeln!(f, "  {v:04} {name}")?;
            }
            Ok(())
        }
    }
}

/// The outcome of a migration run.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    /// Version before the run.
    pub from: i64,
    /// Version after the run.
    pub to: i64,
    /// The version the run was asked to reach.
    pub target: i64,
    /// Migrations applied by this run, in order (empty if it was up to date).
    pub applied: Vec<(i64, &'static str)>,
    /// The ingester's own migrations applied by this run (see [`OWN_MIGRATIONS`]).
    pub own_applied: Vec<(i64, &'static str)>,
    /// When this run applied 033 on a database that still had
    /// `job_run.failure_info`: how many rows held one (their data is gone).
    pub failure_info_dropped: Option<i64>,
}

/// What `migrate` prints.
impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (v, name) in &self.own_applied {
            writeln!(f, "applied ingester migration {v:04} {name}")?;
        }
        if self.applied.is_empty() {
            if self.from > self.target {
                return writeln!(
                    f,
                    "database at version {}, past the target {}; nothing changed \
                     (migrations never go backwards)",
                    self.from, self.target
                );
            }
            return writeln!(f, "database at version {}; nothing to apply", self.to);
        }
        writeln!(
            f,
            "migrated from version {} to {} ({} applied)",
            self.from,
            self.to,
            self.applied.len()
        )?;
        if let Some(rows) = self.failure_info_dropped {
            writeln!(f, "dropped job_run.failure_info ({rows} run(s) held one)")?;
        }
        Ok(())
    }
}

/// Migrations of tables only this ingester uses (`migrations/ingester/`).
///
/// They are numbered and tracked separately from upstream's, in the table
/// `lookout_ingester_schema_version`, so a number upstream assigns later
/// can never collide with ours and upstream's `database_version` keeps its
/// meaning for both binaries. Each runs in one transaction with its
/// bookkeeping row, under the same advisory lock as upstream's.
pub static OWN_MIGRATIONS: &[Migration] = &[
    migration!(1, "ingester/", "0001_dead_letter.sql"),
    migration!(2, "ingester/", "0002_dead_letter_unapplied_events.sql"),
    migration!(3, "ingester/", "0003_heartbeat.sql"),
];

const OWN_VERSION_TABLE: &str = "CREATE TABLE IF NOT EXISTS lookout_ingester_schema_version (
    version    integer     PRIMARY KEY,
    name       text        NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)";

/// Which list a migration belongs to, and so where its version is recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stream {
    /// Upstream's schema ([`MIGRATIONS`]): the `database_version` sequence.
    Lookout,
    /// The ingester's own tables ([`OWN_MIGRATIONS`]): one row per
    /// migration in `lookout_ingester_schema_version`.
    Ingester,
}

impl Stream {
    /// Records `m` as applied, inside the caller's transaction.
    async fn record(self, tx: &Transaction<'_>, m: &Migration) -> Result<()> {
        match self {
            Stream::Lookout => bump_version(tx, m.version).await,
            Stream::Ingester => {
                tx.execute(
                    "INSERT INTO lookout_ingester_schema_version (version, name) VALUES ($1::bigint::integer, $2)",
                    &[&m.version, &m.name],
                )
                .await
                .with_context(|| format!("{}: recording the version", m.name))?;
                Ok(())
            }
        }
    }
}

/// The ingester's own migrations not yet applied (creates nothing).
/// [`status`] carries them as [`Status::own_pending`].
pub(crate) async fn own_pending(client: &Client) -> Result<Vec<(i64, &'static str)>> {
    let exists: bool = client
        .query_one(
            "SELECT to_regclass('lookout_ingester_schema_version') IS NOT NULL",
            &[],
        )
        .await
        .context("reading the ingester's schema version")?
        .try_get(0)
        .context("reading the ingester's schema version")?;
    let mut applied = Vec::new();
    if exists {
        for row in client
            .query(
                "SELECT version::bigint FROM lookout_ingester_schema_version",
                &[],
            )
            .await
            .context("reading the ingester's schema version")?
        {
            applied.push(row.try_get::<_, i64>(0)?);
        }
    }
    Ok(OWN_MIGRATIONS
        .iter()
        .filter(|m| !applied.contains(&m.version))
        .map(|m| (m.version, m.name))
        .collect())
}

async fn migrate_own_locked(client: &mut Client) -> Result<Vec<(i64, &'static str)>> {
    client
        .batch_execute(OWN_VERSION_TABLE)
        .await
        .context("creating lookout_ingester_schema_version")?;
    let pending = own_pending(client).await?;
    let mut done = Vec::new();
    for m in OWN_MIGRATIONS
        .iter()
        .filter(|m| pending.contains(&(m.version, m.name)))
    {
        tracing::info!(name = m.name, "applying ingester migration");
        apply(client, Stream::Ingester, m, false)
            .await
            .with_context(|| format!("applying migrations/ingester/{}", m.name))?;
        done.push((m.version, m.name));
    }
    Ok(done)
}

/// Reads the schema versions of both streams and the generation the
/// columns say, without creating or changing anything: a database without
/// the `database_version` sequence reports version 0.
pub async fn status(client: &Client) -> Result<Status> {
    let current = read_version(client).await?.unwrap_or(0);
    let ahead = |m: &&Migration| m.version > current;
    let pending = MIGRATIONS
        .iter()
        .filter(ahead)
        .filter(|m| m.version <= DEFAULT_TARGET)
        .map(|m| (m.version, m.name))
        .collect();
    let beyond: Vec<(i64, &'static str)> = MIGRATIONS
        .iter()
        .filter(ahead)
        .filter(|m| m.version > DEFAULT_TARGET)
        .map(|m| (m.version, m.name))
        .collect();
    let detected = match schema::detect(client).await {
        Err(SchemaError::Query(e)) => bail!("reading the Lookout schema: {e}"),
        other => other,
    };
    let drops_ahead = MIGRATIONS
        .iter()
        .any(|m| m.name == DROPS_FAILURE_INFO && m.version > current);
    let failure_info_rows = if drops_ahead {
        schema::failure_info_rows(client)
            .await
            .context("counting job_run rows with failure_info")?
    } else {
        None
    };
    Ok(Status {
        current,
        latest: latest_version(),
        default_target: DEFAULT_TARGET,
        detected,
        pending,
        beyond,
        failure_info_rows,
        own_pending: own_pending(client).await?,
    })
}

/// Brings the database up to [`DEFAULT_TARGET`], then applies the
/// ingester's own migrations ([`OWN_MIGRATIONS`]). See the module docs.
pub async fn migrate(client: &mut Client) -> Result<Report> {
    upgrade(client, DEFAULT_TARGET, false).await
}

/// `migrate --to target [--allow-drop]`: applies the pending migrations up
/// to and including `target` (a database already past it is left as it
/// is), then the ingester's own migrations. 033 is applied on a database
/// whose `job_run.failure_info` holds rows only with `allow_drop`;
/// otherwise the run fails with [`DropRefused`] before applying anything.
pub async fn upgrade(client: &mut Client, target: i64, allow_drop: bool) -> Result<Report> {
    run(client, MIGRATIONS, target, true, allow_drop).await
}

/// Applies the pending migrations up to and including `target` only (for
/// tests and tools, e.g. to build a database as an older release left it).
/// A database already at or past `target` is left as it is (but one past
/// [`latest_version`] is still an error). The ingester's own migrations are
/// not applied, and 033 drops `failure_info` without asking, as upstream's
/// migrator does; operators go through [`upgrade`].
pub async fn migrate_to(client: &mut Client, target: i64) -> Result<Report> {
    run(client, MIGRATIONS, target, false, true).await
}

/// [`migrate_to`] over an arbitrary list of migrations (sorted by strictly
/// increasing version). Exposed for tests that need migrations that fail;
/// production code uses [`migrate`].
#[doc(hidden)]
pub async fn migrate_with(client: &mut Client, list: &[Migration], target: i64) -> Result<Report> {
    run(client, list, target, false, true).await
}

/// The runner: upstream's `list` up to `target`, then (if `own`) the
/// ingester's own migrations, all under one hold of the advisory lock.
async fn run(
    client: &mut Client,
    list: &[Migration],
    target: i64,
    own: bool,
    allow_drop: bool,
) -> Result<Report> {
    check_list(list)?;
    let known_latest = list.last().map_or(0, |m| m.version);
    if !(0..=known_latest).contains(&target) {
        bail!("cannot migrate to version {target}: known versions are 0..={known_latest}");
    }

    acquire_lock(client).await?;
    let result = async {
        let mut report = migrate_locked(client, list, known_latest, target, allow_drop).await?;
        if own {
            report.own_applied = migrate_own_locked(client).await?;
        }
        Ok(report)
    }
    .await;
    let released = release_lock(client).await;
    match (result, released) {
        (Ok(report), Ok(())) => Ok(report),
        (Ok(_), Err(e)) => Err(e),
        (Err(e), Ok(())) => Err(e),
        (Err(e), Err(unlock_err)) => {
            tracing::warn!(error = %format!("{unlock_err:#}"), "releasing the migration lock failed");
            Err(e)
        }
    }
}

fn check_list(list: &[Migration]) -> Result<()> {
    let mut previous = 0;
    for m in list {
        if m.version <= previous {
            bail!(
                "migration list is not sorted by strictly increasing positive version at {} (version {})",
                m.name,
                m.version
            );
        }
        previous = m.version;
    }
    Ok(())
}

async fn migrate_locked(
    client: &mut Client,
    list: &[Migration],
    known_latest: i64,
    target: i64,
    allow_drop: bool,
) -> Result<Report> {
    let existing = read_version(&*client).await?;
    let from = existing.unwrap_or(0);
    if from > known_latest {
        bail!(
            "database schema version {from} is newer than the newest migration this binary knows \
             ({known_latest}); refusing to touch it (run a lookout-ingester built for that schema)"
        );
    }
    if existing.is_none() {
        client
            .batch_execute("CREATE SEQUENCE IF NOT EXISTS database_version START WITH 0 MINVALUE 0")
            .await
            .context("creating the database_version sequence")?;
    }

    let pending: Vec<&Migration> = list
        .iter()
        .filter(|m| m.version > from && m.version <= target)
        .collect();
    if pending.is_empty() {
        tracing::info!(
            version = from,
            target,
            latest = known_latest,
            "Lookout schema is at or past the target"
        );
        return Ok(Report {
            own_applied: Vec::new(),
            from,
            to: from,
            target,
            applied: Vec::new(),
            failure_info_dropped: None,
        });
    }
    // Refuse before applying anything (033 checks again under its lock).
    if !allow_drop && pending.iter().any(|m| m.name == DROPS_FAILURE_INFO) {
        if let Some(rows) = schema::failure_info_rows(&*client).await? {
            if rows > 0 {
                return Err(DropRefused { rows, at: from }.into());
            }
        }
    }
    tracing::info!(
        from,
        to = target,
        count = pending.len(),
        "applying Lookout schema migrations"
    );

    let mut version = from;
    let mut applied = Vec::with_capacity(pending.len());
    let mut failure_info_dropped = None;
    for m in pending {
        tracing::info!(
            version = m.version,
            name = m.name,
            transactional = m.transactional,
            "applying migration"
        );
        let started = Instant::now();
        let dropped = apply(client, Stream::Lookout, m, allow_drop)
            .await
            .with_context(|| {
                format!(
                    "migration {} failed; the database is still at version {version}",
                    m.name
                )
            })?;
        if dropped.is_some() {
            failure_info_dropped = dropped;
        }
        version = m.version;
        applied.push((m.version, m.name));
        tracing::info!(
            version = m.version,
            name = m.name,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "applied migration"
        );
    }
    tracing::info!(from, to = version, "Lookout schema migrated");
    Ok(Report {
        own_applied: Vec::new(),
        from,
        to: version,
        target,
        applied,
        failure_info_dropped,
    })
}

/// `None` if there is no `database_version` sequence (never migrated).
async fn read_version(client: &impl GenericClient) -> Result<Option<i64>> {
    let row = client
        .query_one("SELECT to_regclass('database_version') IS NOT NULL", &[])
        .await
        .context("looking for the database_version sequence")?;
    let exists: bool = row
        .try_get(0)
        .context("looking for the database_version sequence")?;
    if !exists {
        return Ok(None);
    }
    let row = client
        .query_one("SELECT last_value FROM database_version", &[])
        .await
        .context("reading the schema version from database_version")?;
    let version: i64 = row
        .try_get(0)
        .context("reading the schema version from database_version")?;
    Ok(Some(version))
}

/// Sets the schema version inside the caller's transaction; see the module
/// docs for why this is more than a `setval`.
async fn bump_version(tx: &impl GenericClient, version: i64) -> Result<()> {
    tx.batch_execute(&format!(
        "ALTER SEQUENCE database_version RESTART WITH {version}"
    ))
    .await
    .with_context(|| format!("setting the schema version to {version}"))?;
    tx.execute("SELECT setval('database_version', $1)", &[&version])
        .await
        .with_context(|| format!("setting the schema version to {version}"))?;
    Ok(())
}

/// Applies `m` and records it in its stream's bookkeeping. A transactional
/// migration commits together with its record; the one statement of a
/// no-transaction file runs on its own first, and the record follows in a
/// transaction of its own. For 033 ([`DROPS_FAILURE_INFO`]) returns how
/// many rows held the dropped `failure_info` (`None` without the column),
/// counted under the lock the drop takes anyway, and refuses to drop any
/// unless `allow_drop`.
async fn apply(
    client: &mut Client,
    stream: Stream,
    m: &Migration,
    allow_drop: bool,
) -> Result<Option<i64>> {
    if !m.transactional {
        let stmt = single_statement(m.sql)?;
        if let Some(index) = parse_concurrent_index(&stmt)? {
            drop_invalid_index(client, &index).await?;
        }
        client
            .batch_execute(&stmt)
            .await
            .with_context(|| format!("executing `{}`", one_line(&stmt)))?;
    }
    let tx = client
        .transaction()
        .await
        .context("starting a transaction")?;
    let mut dropped = None;
    if stream == Stream::Lookout && m.name == DROPS_FAILURE_INFO {
        // ALTER TABLE takes this lock anyway; taking it first keeps an
        // ingester from adding failure_info rows after they were counted.
        tx.batch_execute("LOCK TABLE job_run IN ACCESS EXCLUSIVE MODE")
            .await
            .context("locking job_run")?;
        dropped = schema::failure_info_rows(&tx).await?;
        if let Some(rows) = dropped.filter(|rows| *rows > 0 && !allow_drop) {
            let at = read_version(&tx).await?.unwrap_or(0);
            return Err(DropRefused { rows, at }.into());
        }
    }
    if m.transactional {
        tx.batch_execute(m.sql).await.context("executing the SQL")?;
    }
    stream.record(&tx, m).await?;
    tx.commit().await.context("committing")?;
    Ok(dropped)
}

/// Drops `index` if it exists, next to its table, and is INVALID (what a
/// failed or interrupted `CREATE INDEX CONCURRENTLY` leaves behind).
async fn drop_invalid_index(client: &Client, index: &ConcurrentIndex) -> Result<()> {
    let rows = client
        .query(
            "SELECT quote_ident(n.nspname) || '.' || quote_ident(ic.relname) \
             FROM pg_catalog.pg_index i \
             JOIN pg_catalog.pg_class ic ON ic.oid = i.indexrelid \
             JOIN pg_catalog.pg_namespace n ON n.oid = ic.relnamespace \
             WHERE ic.relname::text = $1::text \
               AND ic.relnamespace = (SELECT t.relnamespace FROM pg_catalog.pg_class t \
                                      WHERE t.oid = to_regclass($2::text)) \
               AND NOT i.indisvalid",
            &[&index.name, &index.table],
        )
        .await
        .with_context(|| format!("checking for an invalid index {}", index.name))?;
    for row in rows {
        let qualified: String = row
            .try_get(0)
            .with_context(|| format!("checking for an invalid index {}", index.name))?;
        tracing::warn!(
            index = %qualified,
            "dropping INVALID index left behind by an earlier failed concurrent build"
        );
        client
            .batch_execute(&format!("DROP INDEX CONCURRENTLY IF EXISTS {qualified}"))
            .await
            .with_context(|| format!("dropping invalid index {qualified}"))?;
    }
    Ok(())
}

async fn acquire_lock(client: &Client) -> Result<()> {
    let started = Instant::now();
    let mut last_log: Option<Instant> = None;
    loop {
        let row = client
            .query_one("SELECT pg_try_advisory_lock($1)", &[&MIGRATION_LOCK_KEY])
            .await
            .context("taking the migration advisory lock")?;
        let locked: bool = row
            .try_get(0)
            .context("taking the migration advisory lock")?;
        if locked {
            if last_log.is_some() {
                tracing::info!(
                    waited_ms = started.elapsed().as_millis() as u64,
                    "got the migration lock"
                );
            }
            return Ok(());
        }
        if last_log.is_none_or(|t| t.elapsed() >= LOCK_WAIT_LOG_INTERVAL) {
            tracing::info!(
                lock_key = MIGRATION_LOCK_KEY,
                waited_s = started.elapsed().as_secs(),
                "another process is migrating the Lookout schema; waiting for it"
            );
            last_log = Some(Instant::now());
        }
        tokio::time::sleep(LOCK_POLL_INTERVAL).await;
    }
}

async fn release_lock(client: &Client) -> Result<()> {
    let row = client
        .query_one("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK_KEY])
        .await
        .context("releasing the migration advisory lock")?;
    let released: bool = row
        .try_get(0)
        .context("releasing the migration advisory lock")?;
    if !released {
        tracing::warn!(
            lock_key = MIGRATION_LOCK_KEY,
            "the migration lock was not held at release"
        );
    }
    Ok(())
}

/// A `CREATE [UNIQUE] INDEX CONCURRENTLY IF NOT EXISTS name ON table` statement.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ConcurrentIndex {
    name: String,
    table: String,
}

/// The one statement of a no-transaction file: its text without whole-line
/// `--` comments and the final `;`. Postgres runs a query string of several
/// statements as one implicit transaction, which `CREATE INDEX CONCURRENTLY`
/// refuses, so such a file may hold only one statement; a second one (any
/// other `;`, even in a string or a trailing comment) is refused rather
/// than split.
fn single_statement(sql: &str) -> Result<String> {
    let code: Vec<&str> = sql
        .lines()
        .filter(|l| !l.trim_start().starts_with("--"))
        .collect();
    let code = code.join("\n");
    let code = code.trim();
    let stmt = code.strip_suffix(';').unwrap_or(code).trim();
    if stmt.is_empty() {
        bail!("a no-transaction migration must hold one statement; this one holds none");
    }
    if stmt.contains(';') {
        bail!(
            "a no-transaction migration must hold exactly one statement \
             (split it into one file per statement): `{}`",
            one_line(stmt)
        );
    }
    Ok(stmt.to_string())
}

/// Recognises `CREATE [UNIQUE] INDEX CONCURRENTLY ...`; such a statement must
/// be idempotent and name its index plainly, or it is refused.
fn parse_concurrent_index(stmt: &str) -> Result<Option<ConcurrentIndex>> {
    let spaced = stmt.replace('(', " ( ");
    let tokens: Vec<String> = spaced
        .split_whitespace()
        .map(|t| t.to_ascii_uppercase())
        .collect();
    let raw: Vec<&str> = spaced.split_whitespace().collect();
    let mut i = 0;
    let expect = |word: &str, i: &mut usize| -> bool {
        if tokens.get(*i).map(String::as_str) == Some(word) {
            *i += 1;
            true
        } else {
            false
        }
    };
    if !expect("CREATE", &mut i) {
        return Ok(None);
    }
    expect("UNIQUE", &mut i);
    if !(expect("INDEX", &mut i) && expect("CONCURRENTLY", &mut i)) {
        return Ok(None);
    }
    let refuse = |why: &str| anyhow!("{why}: `{}`", one_line(stmt));
    if !(expect("IF", &mut i) && expect("NOT", &mut i) && expect("EXISTS", &mut i)) {
        return Err(refuse(
            "CREATE INDEX CONCURRENTLY in a non-transactional migration must say IF NOT EXISTS",
        ));
    }
    let name = raw.get(i).copied().unwrap_or_default();
    i += 1;
    if !expect("ON", &mut i) {
        return Err(refuse(
            "cannot find the index name (an unnamed index is not idempotent)",
        ));
    }
    expect("ONLY", &mut i);
    let table = raw.get(i).copied().unwrap_or_default();
    if !is_plain_identifier(name) || !is_plain_identifier(table) {
        return Err(refuse(
            "index and table must be plain lower-case identifiers (no quoting or schema)",
        ));
    }
    Ok(Some(ConcurrentIndex {
        name: name.to_string(),
        table: table.to_string(),
    }))
}

fn is_plain_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

fn one_line(sql: &str) -> String {
    sql.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_are_contiguous_from_one() {
        let versions: Vec<i64> = migrations().iter().map(|m| m.version).collect();
        assert_eq!(versions, (1..=35).collect::<Vec<_>>());
        assert_eq!(latest_version(), 35);
        check_list(migrations()).expect("sorted");
        // The default target is a known generation short of the latest, and
        // the one migration that drops data is upstream's 033.
        assert_eq!(DEFAULT_TARGET, 31);
        assert!(versions.contains(&DEFAULT_TARGET));
        let drops: Vec<i64> = migrations()
            .iter()
            .filter(|m| m.name == DROPS_FAILURE_INFO)
            .map(|m| m.version)
            .collect();
        assert_eq!(drops, [33]);
        let dropping: Vec<&str> = migrations()
            .iter()
            .filter(|m| code(m.sql).to_ascii_uppercase().contains("DROP COLUMN"))
            .map(|m| m.name)
            .collect();
        assert_eq!(dropping, [DROPS_FAILURE_INFO]);
    }

    #[test]
    fn targets_parse() {
        assert_eq!(parse_target("latest"), Ok(35));
        assert_eq!(parse_target("LATEST"), Ok(35));
        assert_eq!(parse_target("31"), Ok(31));
        assert_eq!(parse_target("033"), Ok(33));
        assert_eq!(parse_target("35"), Ok(35));
        assert_eq!(
            parse_target("36"),
            Err(
                "this binary knows migrations up to 035; 036 is unknown to it \
                 (a newer lookout-ingester is needed)"
                    .to_string()
            )
        );
        assert_eq!(
            parse_target("30"),
            Err(
                "the ingester serves Lookout schema generations 031 to 035; \
                 --to takes one of them or `latest`"
                    .to_string()
            )
        );
        assert_eq!(
            parse_target("3x"),
            Err("`3x` is neither a migration number nor `latest`".to_string())
        );
        assert!(parse_target("-1").is_err());
        assert!(parse_target(" 32").is_err());
    }

    /// The names of the `.sql` files in `dir` (below the crate), sorted.
    fn sql_files(dir: &std::path::Path) -> Vec<String> {
        let mut files: Vec<String> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
            .map(|e| {
                e.expect("dir entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .filter(|n| n.ends_with(".sql"))
            .collect();
        files.sort();
        files
    }

    /// Asserts that `list` names exactly the `.sql` files of `dir`, each
    /// with its number as a prefix of `digits` digits and its text as on disk.
    fn assert_matches_files(dir: &std::path::Path, list: &[Migration], digits: usize) {
        let names: Vec<&str> = list.iter().map(|m| m.name).collect();
        assert_eq!(names, sql_files(dir));
        for m in list {
            assert_eq!(
                &m.name[..digits],
                format!("{:0digits$}", m.version),
                "{}",
                m.name
            );
            let on_disk = std::fs::read_to_string(dir.join(m.name)).expect("read file");
            assert_eq!(on_disk, m.sql, "{}", m.name);
        }
    }

    #[test]
    fn names_match_the_migration_files() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations");
        assert_matches_files(&dir, migrations(), 3);
        for m in migrations() {
            let prefix: i64 = m
                .name
                .split('_')
                .next()
                .and_then(|p| p.parse().ok())
                .expect("numbered");
            assert_eq!(prefix, m.version, "{}", m.name);
        }
    }

    #[test]
    fn own_names_match_the_migration_files() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("migrations/ingester");
        assert_matches_files(&dir, OWN_MIGRATIONS, 4);
        check_list(OWN_MIGRATIONS).expect("sorted");
    }

    /// The SQL of a file without its whole-line comments, on one line.
    fn code(sql: &str) -> String {
        let lines: Vec<&str> = sql
            .lines()
            .filter(|l| !l.trim_start().starts_with("--"))
            .collect();
        one_line(&lines.join(" "))
    }

    #[test]
    fn concurrently_iff_non_transactional() {
        let non_tx: Vec<i64> = migrations()
            .iter()
            .filter(|m| !m.transactional)
            .map(|m| m.version)
            .collect();
        assert_eq!(non_tx, vec![12, 17, 19, 20, 21, 22, 23, 24, 26, 27, 29, 30]);
        for m in migrations().iter().chain(OWN_MIGRATIONS) {
            let code = code(m.sql).to_ascii_uppercase();
            assert!(!code.is_empty(), "{}", m.name);
            assert_eq!(
                code.contains("CONCURRENTLY"),
                !m.transactional,
                "{}",
                m.name
            );
            // Statement-level transaction control (a PL/pgSQL `BEGIN … END`
            // block is not one).
            for control in [
                "BEGIN;",
                "BEGIN TRANSACTION",
                "BEGIN WORK",
                "START TRANSACTION",
                "COMMIT",
                "ROLLBACK",
                "END;",
                "SAVEPOINT",
            ] {
                assert!(
                    !code.starts_with(control) && !code.contains(&format!("; {control}")),
                    "{}: transaction control inside a migration",
                    m.name
                );
            }
            if !m.transactional {
                let stmt = single_statement(m.sql).expect("one statement");
                let index = parse_concurrent_index(&stmt).expect("idempotent");
                assert!(index.is_some(), "{}: {stmt}", m.name);
            }
        }
    }

    #[test]
    fn no_transaction_files_hold_one_statement() {
        let one = "-- lookout-ingester: no-transaction\n-- why\nCREATE INDEX CONCURRENTLY IF NOT EXISTS i\n    ON job (a);\n";
        assert_eq!(
            single_statement(one).expect("one"),
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS i\n    ON job (a)"
        );
        assert_eq!(single_statement("SELECT 1").expect("no ;"), "SELECT 1");
        for bad in [
            "CREATE INDEX CONCURRENTLY IF NOT EXISTS i ON job (a);\nCREATE INDEX CONCURRENTLY IF NOT EXISTS j ON job (b);",
            "SELECT 1;;",
            "SELECT 1; -- trailing",
            "-- only a comment\n  ",
            ";",
        ] {
            assert!(single_statement(bad).is_err(), "{bad}");
        }
    }

    fn detected(
        generation: crate::model::Generation,
        version: Option<i64>,
        hot_cold: bool,
    ) -> std::result::Result<Detected, SchemaError> {
        Ok(Detected {
            generation,
            version,
            hot_cold,
        })
    }

    #[test]
    fn status_prints_like_the_cli() {
        use crate::model::Generation::*;
        const BEYOND: [(i64, &str); 4] = [
            (32, "032_add_failure_category_to_job_run.sql"),
            (33, DROPS_FAILURE_INFO),
            (34, "034_add_scheduler_termination_reason.sql"),
            (35, "035_create_retry_policy.sql"),
        ];
        let base = Status {
            current: 31,
            latest: 35,
            default_target: 31,
            detected: detected(G031, Some(31), false),
            pending: vec![],
            beyond: BEYOND.to_vec(),
            failure_info_rows: Some(0),
            own_pending: vec![],
        };
        assert_eq!(
            base.to_string(),
            "database version: 31\n\
             binary's latest:  35\n\
             default target:   31\n\
             generation:       031 (from job_run's columns)\n\
             pending up to the default target 031: none\n\
             available beyond it (migrate --to N, or --to latest):\n\
             \x20 032 032_add_failure_category_to_job_run.sql\n\
             \x20 033 033_drop_failure_info_from_job_run.sql (drops failure_info; no run holds one)\n\
             \x20 034 034_add_scheduler_termination_reason.sql\n\
             \x20 035 035_create_retry_policy.sql\n\
             ingester tables: up to date\n"
        );
        // Rows in failure_info; the ingester's own tables pending.
        let s = Status {
            current: 32,
            detected: detected(G032, Some(32), false),
            beyond: BEYOND[1..].to_vec(),
            failure_info_rows: Some(12),
            own_pending: vec![(1, "0001_dead_letter.sql")],
            ..base.clone()
        };
        assert_eq!(
            s.to_string(),
            "database version: 32\n\
             binary's latest:  35\n\
             default target:   31\n\
             generation:       032 (from job_run's columns)\n\
             pending up to the default target 031: none\n\
             available beyond it (migrate --to N, or --to latest):\n\
             \x20 033 033_drop_failure_info_from_job_run.sql (drops the failure_info of 12 run(s): needs --allow-drop)\n\
             \x20 034 034_add_scheduler_termination_reason.sql\n\
             \x20 035 035_create_retry_policy.sql\n\
             ingester tables pending (migrations/ingester):\n\
             \x20 0001 0001_dead_letter.sql\n"
        );
        // The number lags the columns (033 without failure_info), the job
        // table split hot/cold.
        let s = Status {
            current: 31,
            detected: detected(G033, Some(31), true),
            failure_info_rows: None,
            ..base.clone()
        };
        assert_eq!(
            s.to_string(),
            "database version: 31\n\
             binary's latest:  35\n\
             default target:   31\n\
             generation:       033 (from job_run's columns; database_version says 31)\n\
             job table:        partitioned by state (upstream's hot/cold split)\n\
             pending up to the default target 031: none\n\
             available beyond it (migrate --to N, or --to latest):\n\
             \x20 032 032_add_failure_category_to_job_run.sql\n\
             \x20 033 033_drop_failure_info_from_job_run.sql\n\
             \x20 034 034_add_scheduler_termination_reason.sql\n\
             \x20 035 035_create_retry_policy.sql\n\
             ingester tables: up to date\n"
        );
        // Never migrated.
        let s = Status {
            current: 0,
            detected: Err(SchemaError::MissingTable("job")),
            pending: vec![(1, "001_a.sql"), (31, "031_b.sql")],
            failure_info_rows: None,
            own_pending: vec![(1, "0001_dead_letter.sql")],
            ..base.clone()
        };
        assert_eq!(
            s.to_string(),
            "database version: 0\n\
             binary's latest:  35\n\
             default target:   31\n\
             generation:       none: the Lookout tables are missing (no job table): run `lookout-ingester migrate` first\n\
             pending up to the default target 031:\n\
             \x20 001 001_a.sql\n\
             \x20 031 031_b.sql\n\
             available beyond it (migrate --to N, or --to latest):\n\
             \x20 032 032_add_failure_category_to_job_run.sql\n\
             \x20 033 033_drop_failure_info_from_job_run.sql\n\
             \x20 034 034_add_scheduler_termination_reason.sql\n\
             \x20 035 035_create_retry_policy.sql\n\
             ingester tables pending (migrations/ingester):\n\
             \x20 0001 0001_dead_letter.sql\n"
        );
        // At the latest, columns present but no sequence.
        let s = Status {
            current: 35,
            detected: detected(G035, None, false),
            beyond: vec![],
            failure_info_rows: None,
            ..base.clone()
        };
        assert!(!s.newer_than_binary());
        assert_eq!(
            s.to_string(),
            "database version: 35\n\
             binary's latest:  35\n\
             default target:   31\n\
             generation:       035 (from job_run's columns; no database_version sequence)\n\
             pending up to the default target 031: none\n\
             available beyond it (migrate --to N, or --to latest): none\n\
             ingester tables: up to date\n"
        );
        // Newer than the binary: nothing is pending, and the CLI exits non-zero.
        let s = Status {
            current: 99,
            detected: detected(G035, Some(99), false),
            beyond: vec![],
            failure_info_rows: None,
            own_pending: vec![(1, "0001_x.sql")],
            ..base.clone()
        };
        assert!(s.newer_than_binary());
        assert_eq!(
            s.to_string(),
            "database version: 99\n\
             binary's latest:  35\n\
             default target:   31\n\
             generation:       035 (from job_run's columns; database_version says 99)\n\
             the database is newer than this binary; migrate will not touch it\n"
        );
        assert!(!base.newer_than_binary());
    }

    #[test]
    fn report_prints_like_the_cli() {
        let upto = |n: i64| -> Vec<(i64, &'static str)> {
            migrations()
                .iter()
                .filter(|m| m.version <= n)
                .map(|m| (m.version, m.name))
                .collect()
        };
        let report = Report {
            from: 0,
            to: 31,
            target: 31,
            applied: upto(31),
            own_applied: vec![(1, "0001_dead_letter.sql")],
            failure_info_dropped: None,
        };
        assert_eq!(
            report.to_string(),
            "applied ingester migration 0001 0001_dead_letter.sql\n\
             migrated from version 0 to 31 (31 applied)\n"
        );
        let report = Report {
            from: 31,
            to: 35,
            target: 35,
            applied: upto(35)[31..].to_vec(),
            own_applied: vec![],
            failure_info_dropped: Some(12),
        };
        assert_eq!(
            report.to_string(),
            "migrated from version 31 to 35 (4 applied)\n\
             dropped job_run.failure_info (12 run(s) held one)\n"
        );
        let report = Report {
            from: 31,
            to: 31,
            target: 31,
            applied: vec![],
            own_applied: vec![],
            failure_info_dropped: None,
        };
        assert_eq!(
            report.to_string(),
            "database at version 31; nothing to apply\n"
        );
        let report = Report {
            from: 35,
            to: 35,
            target: 31,
            ..report
        };
        assert_eq!(
            report.to_string(),
            "database at version 35, past the target 31; nothing changed \
             (migrations never go backwards)\n"
        );
    }

    #[test]
    fn drop_refusal_says_how_many_and_how_to_proceed() {
        assert_eq!(
            DropRefused { rows: 3, at: 32 }.to_string(),
            "migration 033 drops job_run.failure_info, which 3 run(s) still hold; refusing without \
             --allow-drop, the database stays at version 32. Rerun with --allow-drop to drop that \
             data, or with --to 32 to stop before 033"
        );
    }

    #[test]
    fn lock_key_is_stable() {
        assert_eq!(MIGRATION_LOCK_KEY, -942064953667972313);
        let k = MIGRATION_LOCK_KEY as u64;
        assert_eq!((k >> 32, k & 0xffff_ffff), (4075625706, 2034668327));
    }

    #[test]
    fn recognises_concurrent_index_builds() {
        let idx = |s: &str| parse_concurrent_index(s);
        assert_eq!(
            idx("create index concurrently if not exists idx_a on job(a)").unwrap(),
            Some(ConcurrentIndex {
                name: "idx_a".into(),
                table: "job".into()
            })
        );
        assert_eq!(
            idx("CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS idx_b\n ON ONLY job_run USING gin (x)")
                .unwrap(),
            Some(ConcurrentIndex {
                name: "idx_b".into(),
                table: "job_run".into()
            })
        );
        assert_eq!(
            idx("CREATE INDEX IF NOT EXISTS idx_a ON job (a)").unwrap(),
            None
        );
        assert_eq!(
            idx("DROP INDEX CONCURRENTLY IF EXISTS idx_a").unwrap(),
            None
        );
        assert!(idx("CREATE INDEX CONCURRENTLY idx_a ON job (a)").is_err());
        assert!(idx("CREATE INDEX CONCURRENTLY IF NOT EXISTS ON job (a)").is_err());
        assert!(idx("CREATE INDEX CONCURRENTLY IF NOT EXISTS \"Idx\" ON job (a)").is_err());
        assert!(idx("CREATE INDEX CONCURRENTLY IF NOT EXISTS idx ON public.job (a)").is_err());
    }
}
