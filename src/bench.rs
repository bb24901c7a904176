//! `bench`: measures the ingester against the ceiling of the same work, in
//! one run, on databases it creates and drops.
//!
//! 1. A seeded [`Workload`] is written to a recording in a temporary
//!    directory.
//! 2. Replay: `lookout-ingester replay` runs as a child process on a fresh
//!    database; its wall time gives events/s, row operations/s (what its
//!    summary counts as inserted or changed) and final rows/s (the rows the
//!    tables hold afterwards); its peak RSS comes from `wait4`.
//! 3. Ceiling: the replayed tables are copied out (binary COPY) and copied
//!    into a second fresh database at the same schema generation, once on one
//!    connection table after table and once with one connection per table in
//!    parallel. Same rows, same indexes: the fastest way Postgres can hold
//!    exactly what the ingester wrote.
//! 4. Live (unless `--no-live`): the recording is published to pulsar-lite
//!    (started behind the fix-up proxy, or a broker given with
//!    `--pulsar-url`); a receive-and-acknowledge-only consumer reads the
//!    backlog through the same client and path, then `lookout-ingester run`
//!    catches up on it on a fresh database; then once more on the last
//!    backlog with nothing held (`batchHoldOpen: 0`, as under a steady
//!    load): the sustained maximum.
//! 5. Latency: `run` on an empty topic while workload messages are published
//!    at a fixed rate (half the sustained maximum, then 1,000/s, then half
//!    the holding catch-up rate); see [`latency`].
//!
//! Every child, database and file it makes is removed at the end, also after
//! an error or SIGINT/SIGTERM.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _};
use futures::{SinkExt as _, StreamExt as _};
use prost::Message as _;
use serde::Serialize;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::config::{self, Config, PulsarConfig};
use crate::pg::{self, PgSettings};
use crate::proto::armadaevents::event_sequence::event::Event as Kind;
use crate::record::Entries;
use crate::source::file::RecordWriter;
use crate::workload::{FinalRows, Options as WorkloadOptions, Workload};

/// The tables a replay fills, in the order they are copied.
const TABLES: [&str; 4] = ["job", "job_spec", "job_run", "job_error"];

/// What to measure.
#[derive(Debug, Clone)]
pub struct Options {
    pub workload: WorkloadOptions,
    /// Run the live and latency parts.
    pub live: bool,
    /// Use this broker instead of starting pulsar-lite.
    pub pulsar_url: Option<String>,
    /// Seconds of publishing at each latency rate.
    pub latency_secs: u64,
    /// The rate of the first latency measurement instead of half the
    /// catch-up rate (to compare builds at one rate).
    pub latency_rate: Option<f64>,
    /// How the live parts' messages go into broker entries.
    pub entries: Entries,
    /// Also keep the generated recording here.
    pub save_workload: Option<PathBuf>,
    /// The `--config` files, handed to every child.
    pub config_files: Vec<PathBuf>,
}

/// The figures; the JSON line is this, serialised.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Figures {
    pub events: u64,
    pub messages: u64,
    pub jobs: u64,
    pub failure_info: bool,
    /// Messages per broker entry in the live parts (1: unbatched).
    pub producer_batch: u32,
    pub final_rows: u64,
    pub generate_s: f64,
    pub copy_one_connection_rows_per_s: f64,
    pub copy_ceiling_rows_per_s: f64,
    pub replay_s: f64,
    pub replay_rows: u64,
    pub replay_row_ops: u64,
    pub replay_rows_per_s: f64,
    pub replay_row_ops_per_s: f64,
    pub replay_events_per_s: f64,
    pub replay_to_ceiling_ratio: f64,
    pub peak_rss_mib: f64,
    pub live_events_per_s: Option<f64>,
    pub live_messages_per_s: Option<f64>,
    pub consume_ceiling_messages_per_s: Option<f64>,
    /// Times the receive-and-acknowledge consumer was subscribed again
    /// after pulsar-lite stopped dispatching, and the seconds it waited.
    pub consume_stalls: Option<u32>,
    pub consume_stalled_s: Option<f64>,
    pub live_to_consume_ceiling_ratio: Option<f64>,
    pub live_peak_rss_mib: Option<f64>,
    /// Times `run` was started again after pulsar-lite stopped dispatching,
    /// and the seconds of those stalls left out of its time.
    pub live_restarts: Option<u32>,
    pub live_stalled_s: Option<f64>,
    /// The sustained maximum: `run` catching up on the last backlog with
    /// `batchHoldOpen: 0`, writing every batch whole as under a steady
    /// load (where nothing is held, so that jobs show one batch after their
    /// events). The latency part runs at half of it.
    pub steady_max_messages_per_s: Option<f64>,
    /// Its restarts after broker stalls (their waits left out).
    pub steady_restarts: Option<u32>,
    pub latency_rate_per_s: Option<f64>,
    pub live_p50_latency_ms: Option<f64>,
    pub live_p95_latency_ms: Option<f64>,
    pub live_p99_latency_ms: Option<f64>,
    pub live_1k_p50_latency_ms: Option<f64>,
    pub live_1k_p95_latency_ms: Option<f64>,
    pub live_1k_p99_latency_ms: Option<f64>,
    /// Latency at half the (holding) catch-up rate, the fourth session's
    /// rate: above the steady maximum, so batches grow until the store
    /// keeps up.
    pub catch_up_half_rate_per_s: Option<f64>,
    pub catch_up_half_p50_latency_ms: Option<f64>,
    pub catch_up_half_p99_latency_ms: Option<f64>,
    /// The catch-up on the backlog published as Armada publishes
    /// (`producer_batch` messages per entry); the `live_*` and `consume_*`
    /// figures above are for one message per entry.
    pub batched_consume_messages_per_s: Option<f64>,
    pub batched_live_messages_per_s: Option<f64>,
    pub batched_live_events_per_s: Option<f64>,
    pub batched_live_peak_rss_mib: Option<f64>,
    /// Consumer resubscriptions and `run` restarts after broker stalls.
    pub batched_live_restarts: Option<u32>,
}

impl Figures {
    /// The table printed before the JSON line.
    pub fn table(&self) -> String {
        let mut rows: Vec<(String, String)> = vec![
            (
                "events (messages, jobs)".into(),
                format!("{} ({}, {})", self.events, self.messages, self.jobs),
            ),
            (
                "FailureInfo on failed runs".into(),
                self.failure_info.to_string(),
            ),
            ("final rows".into(), self.final_rows.to_string()),
            (
                "COPY, one connection".into(),
                format!("{:.0} rows/s", self.copy_one_connection_rows_per_s),
            ),
            (
                "COPY, a connection per table (ceiling)".into(),
                format!("{:.0} rows/s", self.copy_ceiling_rows_per_s),
            ),
            ("replay".into(), format!("{:.2} s", self.replay_s)),
            (
                "replay events".into(),
                format!("{:.0} events/s", self.replay_events_per_s),
            ),
            (
                "replay row operations".into(),
                format!(
                    "{} ({:.0}/s)",
                    self.replay_row_ops, self.replay_row_ops_per_s
                ),
            ),
            (
                "replay final rows".into(),
                format!("{} ({:.0}/s)", self.replay_rows, self.replay_rows_per_s),
            ),
            (
                "replay / ceiling".into(),
                format!("{:.3}", self.replay_to_ceiling_ratio),
            ),
            (
                "replay peak RSS".into(),
                format!("{:.1} MiB", self.peak_rss_mib),
            ),
        ];
        let opt =
            |v: Option<f64>, unit: &str| v.map_or("-".to_string(), |v| format!("{v:.0}{unit}"));
        if self.live_events_per_s.is_some() {
            rows.extend([
                (
                    "one message per entry: receive-and-ack consumer".into(),
                    match self.consume_stalls {
                        Some(n) if n > 0 => format!(
                            "{} ({n} broker stalls, {:.0} s left out)",
                            opt(self.consume_ceiling_messages_per_s, " messages/s"),
                            self.consume_stalled_s.unwrap_or(0.0)
                        ),
                        _ => opt(self.consume_ceiling_messages_per_s, " messages/s"),
                    },
                ),
                (
                    "one message per entry: run catching up".into(),
                    format!(
                        "{} ({}){}",
                        opt(self.live_messages_per_s, " messages/s"),
                        opt(self.live_events_per_s, " events/s"),
                        match self.live_restarts {
                            Some(n) if n > 0 => format!(
                                ", {n} restarts after broker stalls, {:.0} s left out",
                                self.live_stalled_s.unwrap_or(0.0)
                            ),
                            _ => String::new(),
                        }
                    ),
                ),
                (
                    "one message per entry: run / consumer".into(),
                    self.live_to_consume_ceiling_ratio
                        .map_or("-".into(), |v| format!("{v:.3}")),
                ),
                (
                    "one message per entry: run peak RSS".into(),
                    self.live_peak_rss_mib
                        .map_or("-".into(), |v| format!("{v:.1} MiB")),
                ),
            ]);
            if self.batched_live_messages_per_s.is_some() {
                let as_armada = format!("up to {} per entry, zlib", self.producer_batch);
                rows.extend([
                    (
                        format!("{as_armada}: receive-and-ack consumer"),
                        opt(self.batched_consume_messages_per_s, " messages/s"),
                    ),
                    (
                        format!("{as_armada}: run catching up"),
                        format!(
                            "{} ({}){}",
                            opt(self.batched_live_messages_per_s, " messages/s"),
                            opt(self.batched_live_events_per_s, " events/s"),
                            match self.batched_live_restarts {
                                Some(n) if n > 0 => format!(", {n} restarts after broker stalls"),
                                _ => String::new(),
                            }
                        ),
                    ),
                    (
                        format!("{as_armada}: run peak RSS"),
                        self.batched_live_peak_rss_mib
                            .map_or("-".into(), |v| format!("{v:.1} MiB")),
                    ),
                ]);
            }
            rows.push((
                "steady maximum (run, nothing held)".into(),
                format!(
                    "{}{}",
                    opt(self.steady_max_messages_per_s, " messages/s"),
                    match self.steady_restarts {
                        Some(n) if n > 0 => format!(", {n} restarts after broker stalls"),
                        _ => String::new(),
                    }
                ),
            ));
            rows.extend([
                (
                    format!(
                        "latency at {}{}",
                        opt(self.latency_rate_per_s, " msgs/s"),
                        if self.producer_batch > 1 {
                            ", batched"
                        } else {
                            ""
                        }
                    ),
                    format!(
                        "p50 {} p95 {} p99 {}",
                        opt(self.live_p50_latency_ms, " ms"),
                        opt(self.live_p95_latency_ms, " ms"),
                        opt(self.live_p99_latency_ms, " ms")
                    ),
                ),
                (
                    "latency at 1000 msgs/s".into(),
                    format!(
                        "p50 {} p95 {} p99 {}",
                        opt(self.live_1k_p50_latency_ms, " ms"),
                        opt(self.live_1k_p95_latency_ms, " ms"),
                        opt(self.live_1k_p99_latency_ms, " ms")
                    ),
                ),
                (
                    format!(
                        "latency at {} (half the catch-up)",
                        opt(self.catch_up_half_rate_per_s, " msgs/s")
                    ),
                    format!(
                        "p50 {} p99 {}",
                        opt(self.catch_up_half_p50_latency_ms, " ms"),
                        opt(self.catch_up_half_p99_latency_ms, " ms")
                    ),
                ),
            ]);
        }
        let width = rows.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        rows.iter()
            .map(|(k, v)| format!("{k:<width$}  {v}\n"))
            .collect()
    }
}

/// What must be undone: children to stop, databases to drop, the directory.
#[derive(Debug, Default)]
struct Owned {
    children: BTreeSet<i32>,
    databases: Vec<String>,
}

/// The run's resources, shared with the cleanup that follows an error or a
/// signal.
#[derive(Clone)]
struct Env {
    exe: PathBuf,
    dir: PathBuf,
    tag: String,
    cfg: Arc<Config>,
    config_files: Vec<PathBuf>,
    owned: Arc<Mutex<Owned>>,
}

/// Runs the benchmark; prints progress on stderr.
pub async fn run(cfg: Config, opts: Options) -> anyhow::Result<Figures> {
    let exe = std::env::current_exe().context("cannot find this executable")?;
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let tag = format!("{}_{:06}", std::process::id(), nanos / 1000);
    let dir = std::env::temp_dir().join(format!("lookout-bench-{tag}"));
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let config_files = opts
        .config_files
        .iter()
        .map(|p| std::path::absolute(p).unwrap_or_else(|_| p.clone()))
        .collect();
    let env = Env {
        exe,
        dir,
        tag,
        cfg: Arc::new(cfg),
        config_files,
        owned: Arc::default(),
    };
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let result = tokio::select! {
        r = measure(&env, &opts) => r,
        _ = tokio::signal::ctrl_c() => Err(anyhow!("interrupted")),
        _ = term.recv() => Err(anyhow!("terminated")),
    };
    env.cleanup().await;
    result
}

async fn measure(env: &Env, opts: &Options) -> anyhow::Result<Figures> {
    let mut f = Figures {
        failure_info: opts.workload.failure_info,
        producer_batch: opts.entries.per_entry(),
        ..Figures::default()
    };
    // 1. The workload.
    let file = env.dir.join("events.bin");
    let started = Instant::now();
    let (w_opts, path) = (opts.workload.clone(), file.clone());
    let produced = tokio::task::spawn_blocking(move || write_workload(&path, w_opts))
        .await
        .context("workload writer")??;
    f.generate_s = started.elapsed().as_secs_f64();
    if let Some(keep) = &opts.save_workload {
        std::fs::copy(&file, keep).map_err(|e| anyhow!("cannot write {}: {e}", keep.display()))?;
    }
    f.events = produced.events;
    f.messages = produced.sequences;
    f.jobs = produced.rows.job;
    f.final_rows = produced.rows.total();
    progress(&format!(
        "generated {} events in {} messages ({} jobs) in {:.1}s",
        f.events, f.messages, f.jobs, f.generate_s
    ));

    // 2. Replay.
    let replay_db = env.create_db("replay").await?;
    env.settle().await;
    let started = Instant::now();
    let out = env
        .child(&["replay"], &[file.as_os_str()], &replay_db, "replay")
        .await?;
    f.replay_s = started.elapsed().as_secs_f64();
    if out.code != Some(0) {
        bail!("replay exited with {:?}: {}", out.code, out.tail());
    }
    f.peak_rss_mib = out.maxrss_kib as f64 / 1024.0;
    f.replay_row_ops = row_operations(&out.stdout);
    let client = env.connect(&replay_db).await?;
    let rows = count_rows(&client).await?;
    f.replay_rows = rows.total();
    if rows != produced.rows {
        bail!(
            "the replayed tables hold {rows:?}, the workload should give {:?}",
            produced.rows
        );
    }
    f.replay_events_per_s = rate(f.events, f.replay_s);
    f.replay_row_ops_per_s = rate(f.replay_row_ops, f.replay_s);
    f.replay_rows_per_s = rate(f.replay_rows, f.replay_s);
    progress(&format!(
        "replay: {:.2}s, {:.0} events/s, {:.0} final rows/s",
        f.replay_s, f.replay_events_per_s, f.replay_rows_per_s
    ));

    // 3. The ceiling.
    let (one, parallel) = copy_ceiling(env, &client).await?;
    drop(client);
    env.drop_db(replay_db).await?;
    f.copy_one_connection_rows_per_s = rate(f.replay_rows, one);
    f.copy_ceiling_rows_per_s = rate(f.replay_rows, parallel);
    f.replay_to_ceiling_ratio = ratio(f.replay_rows_per_s, f.copy_ceiling_rows_per_s);
    progress(&format!(
        "COPY of the same rows: {one:.2}s on one connection, {parallel:.2}s on one per table"
    ));

    if opts.live {
        live(env, opts, &file, &produced.rows, &mut f).await?;
    }
    Ok(f)
}

/// Writes the workload as a recording; returns what it produced.
fn write_workload(path: &Path, opts: WorkloadOptions) -> anyhow::Result<crate::workload::Produced> {
    let mut w = RecordWriter::create(path, false)
        .map_err(|e| anyhow!("cannot create {}: {e}", path.display()))?;
    let mut workload = Workload::new(opts);
    let mut buf = Vec::new();
    for seq in workload.by_ref() {
        buf.clear();
        seq.encode(&mut buf)?;
        w.write_record(&buf)?;
    }
    w.finish()?;
    Ok(workload.produced())
}

fn progress(line: &str) {
    eprintln!("bench: {line}");
}

fn rate(n: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

/// The sum of the "rows by table" section of replay's summary: rows
/// inserted or changed.
fn row_operations(summary: &str) -> u64 {
    summary
        .lines()
        .skip_while(|l| !l.starts_with("rows by table:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .filter_map(|l| l.split_whitespace().last()?.parse::<u64>().ok())
        .sum()
}

async fn count_rows(client: &tokio_postgres::Client) -> anyhow::Result<FinalRows> {
    let mut n = [0u64; 4];
    for (i, t) in TABLES.iter().enumerate() {
        let row = client
            .query_one(&format!("SELECT count(*) FROM {t}"), &[])
            .await
            .with_context(|| format!("cannot count {t}"))?;
        n[i] = u64::try_from(row.get::<_, i64>(0)).unwrap_or(0);
    }
    Ok(FinalRows {
        job: n[0],
        job_spec: n[1],
        job_run: n[2],
        job_error: n[3],
    })
}

/// Copies the replayed tables out, then times copying them into a fresh
/// database at the same generation: on one connection, then (after
/// emptying the tables) one connection per table at once. Seconds of each.
async fn copy_ceiling(env: &Env, replay: &tokio_postgres::Client) -> anyhow::Result<(f64, f64)> {
    for t in TABLES {
        let stream = replay
            .copy_out(&format!("COPY {t} TO STDOUT (FORMAT binary)"))
            .await
            .with_context(|| format!("cannot copy {t} out"))?;
        futures::pin_mut!(stream);
        let path = env.dir.join(format!("{t}.copy"));
        let mut file = std::io::BufWriter::new(
            std::fs::File::create(&path)
                .with_context(|| format!("cannot create {}", path.display()))?,
        );
        while let Some(chunk) = stream.next().await {
            file.write_all(&chunk.with_context(|| format!("cannot copy {t} out"))?)?;
        }
        file.flush()?;
    }
    let db = env.create_db("ceiling").await?;
    let one = env.connect(&db).await?;
    env.settle().await;
    let started = Instant::now();
    for t in TABLES {
        copy_in(&one, t, &env.dir).await?;
    }
    let one_s = started.elapsed().as_secs_f64();
    one.batch_execute(&format!("TRUNCATE {}", TABLES.join(", ")))
        .await
        .context("cannot empty the ceiling tables")?;
    let mut clients = Vec::new();
    for _ in TABLES {
        clients.push(env.connect(&db).await?);
    }
    env.settle().await;
    let started = Instant::now();
    let copies = clients
        .iter()
        .zip(TABLES)
        .map(|(c, t)| copy_in(c, t, &env.dir));
    for r in futures::future::join_all(copies).await {
        r?;
    }
    let parallel_s = started.elapsed().as_secs_f64();
    drop((one, clients));
    env.drop_db(db).await?;
    Ok((one_s, parallel_s))
}

async fn copy_in(client: &tokio_postgres::Client, table: &str, dir: &Path) -> anyhow::Result<()> {
    let path = dir.join(format!("{table}.copy"));
    let mut file = tokio::fs::File::open(&path)
        .await
        .with_context(|| format!("cannot open {}", path.display()))?;
    let sink = client
        .copy_in::<_, std::io::Cursor<Vec<u8>>>(&format!("COPY {table} FROM STDIN (FORMAT binary)"))
        .await
        .with_context(|| format!("cannot copy into {table}"))?;
    futures::pin_mut!(sink);
    loop {
        let mut chunk = vec![0u8; 1 << 20];
        let n = file.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        chunk.truncate(n);
        sink.send(std::io::Cursor::new(chunk))
            .await
            .with_context(|| format!("cannot copy into {table}"))?;
    }
    sink.finish()
        .await
        .with_context(|| format!("cannot copy into {table}"))?;
    Ok(())
}

/// A database the run created: its name and the connection string the
/// children get (in their environment, never on a command line).
#[derive(Debug, Clone)]
struct Db {
    name: String,
    conninfo: String,
    settings: PgSettings,
}

/// What a finished child printed and used.
struct ChildOut {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    maxrss_kib: i64,
}

impl ChildOut {
    fn tail(&self) -> String {
        last_lines(&self.stderr, 5)
    }
}

/// The last `n` lines of `text`, on one line.
fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join(" | ")
}

impl Env {
    /// The configured database settings with another database name.
    fn database(&self, name: &str) -> anyhow::Result<(String, PgSettings)> {
        let mut pairs: std::collections::BTreeMap<String, String> =
            pg::parse_conninfo(&self.cfg.postgres.connection_string())?
                .into_iter()
                .collect();
        pairs.insert("dbname".into(), name.into());
        let postgres = config::Postgres {
            connection: config::Connection::Params(pairs),
            password_file: self.cfg.postgres.password_file.clone(),
        };
        let settings = PgSettings::from_config(&postgres)?;
        Ok((postgres.connection_string(), settings))
    }

    async fn connect(&self, db: &Db) -> anyhow::Result<tokio_postgres::Client> {
        pg::connect(&db.settings).await
    }

    /// Creates and migrates (as `lookout-ingester migrate` does, in a child)
    /// a database named after the run and `what`.
    async fn create_db(&self, what: &str) -> anyhow::Result<Db> {
        let name = format!("lookout_bench_{}_{what}", self.tag);
        let admin = self.admin().await?;
        lock(&self.owned).databases.push(name.clone());
        admin
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .map_err(|e| anyhow!("cannot create database {name}: {}", pg::error_chain(&e)))?;
        let (conninfo, settings) = self.database(&name)?;
        let db = Db {
            name,
            conninfo,
            settings,
        };
        let out = self
            .child(&["migrate"], &[], &db, &format!("migrate-{what}"))
            .await?;
        if out.code != Some(0) {
            bail!(
                "migrate {} exited with {:?}: {}",
                db.name,
                out.code,
                out.tail()
            );
        }
        Ok(db)
    }

    /// The last `n` lines of a child's log, on one line.
    fn log_tail(&self, file: &str, n: usize) -> String {
        last_lines(
            &std::fs::read_to_string(self.dir.join(file)).unwrap_or_default(),
            n,
        )
    }

    /// A connection to the server's `postgres` database, for creating,
    /// dropping and checkpointing.
    async fn admin(&self) -> anyhow::Result<tokio_postgres::Client> {
        let (_, admin) = self.database("postgres")?;
        pg::connect(&admin).await
    }

    /// Drops a database this run created once its part is measured, so that
    /// autovacuum and the checkpointer do not work on it during later parts.
    async fn drop_db(&self, db: Db) -> anyhow::Result<()> {
        drop_database(&self.admin().await?, &db.name)
            .await
            .map_err(|e| anyhow!(e))?;
        lock(&self.owned).databases.retain(|n| *n != db.name);
        Ok(())
    }

    /// Before a timed part: a CHECKPOINT, so that the part does not pay for
    /// flushing what the parts before it wrote (a 1M-event run writes
    /// gigabytes of WAL, and a checkpoint it triggered would still be
    /// writing during the next part). Without the privilege (superuser or
    /// `pg_checkpoint`) it says so and goes on.
    async fn settle(&self) {
        let r = match self.admin().await {
            Ok(admin) => admin
                .batch_execute("CHECKPOINT")
                .await
                .map_err(|e| pg::error_chain(&e)),
            Err(e) => Err(format!("{e:#}")),
        };
        if let Err(e) = r {
            progress(&format!("no checkpoint before the next part: {e}"));
        }
    }

    /// A `lookout-ingester` command with the run's config files, the
    /// database `db` in its environment, the work directory as its working
    /// directory (for its dead-letter spool) and output into `log`.
    fn command(&self, args: &[&str], db: &Db, log: &str) -> anyhow::Result<std::process::Command> {
        let mut c = std::process::Command::new(&self.exe);
        c.args(args);
        for f in &self.config_files {
            c.arg("--config").arg(f);
        }
        c.env("LOOKOUT_DATABASE_URL", &db.conninfo)
            .env("RUST_LOG", "warn")
            .current_dir(&self.dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::fs::File::create(self.dir.join(format!("{log}.out")))?)
            .stderr(std::fs::File::create(self.dir.join(format!("{log}.err")))?);
        Ok(c)
    }

    /// Runs a `lookout-ingester` command to its end.
    async fn child(
        &self,
        args: &[&str],
        files: &[&std::ffi::OsStr],
        db: &Db,
        log: &str,
    ) -> anyhow::Result<ChildOut> {
        let mut c = self.command(args, db, log)?;
        c.args(files);
        let pid = self.spawn(c)?;
        let (code, maxrss_kib) = self.wait(pid).await?;
        let read = |ext: &str| {
            std::fs::read_to_string(self.dir.join(format!("{log}.{ext}"))).unwrap_or_default()
        };
        Ok(ChildOut {
            code,
            stdout: read("out"),
            stderr: read("err"),
            maxrss_kib,
        })
    }

    fn spawn(&self, mut c: std::process::Command) -> anyhow::Result<i32> {
        let child = c
            .spawn()
            .with_context(|| format!("cannot start {}", c.get_program().to_string_lossy()))?;
        let pid = i32::try_from(child.id()).context("process id")?;
        // Reaped with wait4 (for its rusage), not through `child`.
        drop(child);
        lock(&self.owned).children.insert(pid);
        Ok(pid)
    }

    /// Waits for a child: its exit code and peak RSS (KiB).
    async fn wait(&self, pid: i32) -> anyhow::Result<(Option<i32>, i64)> {
        let owned = self.owned.clone();
        // Forgotten as soon as it is reaped (also when this future is
        // dropped), so the cleanup never signals a reused process id.
        tokio::task::spawn_blocking(move || {
            let r = wait4(pid);
            lock(&owned).children.remove(&pid);
            r
        })
        .await?
    }

    /// Asks a child to stop (SIGTERM), SIGKILL after `grace`.
    async fn stop(&self, pid: i32, grace: Duration) -> anyhow::Result<(Option<i32>, i64)> {
        signal(pid, libc::SIGTERM);
        let owned = self.owned.clone();
        let killer = tokio::spawn(async move {
            tokio::time::sleep(grace).await;
            if lock(&owned).children.contains(&pid) {
                signal(pid, libc::SIGKILL);
            }
        });
        let r = self.wait(pid).await;
        killer.abort();
        r
    }

    /// Stops every child still running, drops every database, removes the
    /// directory. Problems are reported, not fatal.
    async fn cleanup(&self) {
        let (children, databases) = {
            let mut o = lock(&self.owned);
            (
                std::mem::take(&mut o.children),
                std::mem::take(&mut o.databases),
            )
        };
        for pid in children {
            signal(pid, libc::SIGKILL);
            let _ = tokio::task::spawn_blocking(move || wait4(pid)).await;
        }
        if !databases.is_empty() {
            match self.admin().await {
                Ok(admin) => {
                    for name in databases {
                        if let Err(e) = drop_database(&admin, &name).await {
                            progress(&e);
                        }
                    }
                }
                Err(e) => progress(&format!(
                    "cannot drop the bench databases {databases:?}: {e:#}"
                )),
            }
        }
        if let Err(e) = std::fs::remove_dir_all(&self.dir) {
            progress(&format!("cannot remove {}: {e}", self.dir.display()));
        }
    }
}

/// Drops `name` (connections to it too); the error names the database and
/// carries the server's message.
async fn drop_database(admin: &tokio_postgres::Client, name: &str) -> Result<(), String> {
    admin
        .batch_execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .await
        .map_err(|e| format!("cannot drop database {name}: {}", pg::error_chain(&e)))
}

fn lock(m: &Mutex<Owned>) -> std::sync::MutexGuard<'_, Owned> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn signal(pid: i32, sig: i32) {
    // SAFETY: kill(2) has no memory effects; `pid` is a child not yet reaped
    // (removed from the owned set when it is), so it cannot be reused.
    unsafe {
        libc::kill(pid, sig);
    }
}

/// Reaps child `pid`: its exit code (None when a signal ended it) and its
/// peak resident set (KiB).
fn wait4(pid: i32) -> anyhow::Result<(Option<i32>, i64)> {
    let mut status = 0;
    // SAFETY: zeroed rusage is a valid value; wait4 writes into both.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: pointers to live locals.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == pid {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            bail!("cannot wait for process {pid}: {e}");
        }
    }
    let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    Ok((code, usage.ru_maxrss))
}

// ---------------------------------------------------------------------------
// Live.

/// A broker: pulsar-lite behind the fix-up proxy, or the one given.
async fn broker(env: &Env, opts: &Options) -> anyhow::Result<String> {
    if let Some(url) = &opts.pulsar_url {
        return Ok(url.clone());
    }
    let bport = free_port()?;
    let pport = free_port()?;
    // Its metrics endpoint would bind 0.0.0.0:8080; keep everything on loopback.
    let conf = env.dir.join("pulsar-lite.toml");
    std::fs::write(&conf, "[metrics]\nenabled = false\n")?;
    let mut c = std::process::Command::new("pulsar-lite");
    c.arg("--config")
        .arg(&conf)
        .arg("--addr")
        .arg(format!("127.0.0.1:{bport}"))
        .arg("--db-path")
        .arg(env.dir.join("broker"))
        .current_dir(&env.dir)
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(env.dir.join("broker.log"))?)
        .stderr(std::fs::File::create(env.dir.join("broker.err"))?);
    env.spawn(c)
        .context("pulsar-lite (is it on PATH? scripts/setup.sh installs it)")?;
    wait_port(bport)
        .await
        .context("pulsar-lite did not start")?;
    // pulsar-lite needs the proxy (README "A local broker"): next to this
    // executable when built in the workspace, else on PATH.
    let beside = env.exe.with_file_name("pulsar-proxy");
    let proxy = if beside.exists() {
        beside
    } else {
        PathBuf::from("pulsar-proxy")
    };
    let mut c = std::process::Command::new(&proxy);
    c.arg("--listen")
        .arg(format!("127.0.0.1:{pport}"))
        .arg("--broker")
        .arg(format!("127.0.0.1:{bport}"))
        .stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(env.dir.join("proxy.log"))?)
        .stderr(std::fs::File::create(env.dir.join("proxy.err"))?);
    env.spawn(c)
        .context("pulsar-proxy (build it with `cargo build --release -p pulsar-proxy`)")?;
    wait_port(pport)
        .await
        .context("pulsar-proxy did not start")?;
    Ok(format!("pulsar://127.0.0.1:{pport}"))
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

async fn wait_port(port: u16) -> anyhow::Result<()> {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    bail!("nothing listening on 127.0.0.1:{port} after 10s")
}

fn pulsar_config(url: &str, topic: &str) -> PulsarConfig {
    PulsarConfig {
        url: url.into(),
        topic: topic.into(),
        ..PulsarConfig::default()
    }
}

/// One catch-up: the backlog published in one shape, the consumer's
/// ceiling on it, and `run` catching up on it.
struct CatchUp {
    topic: String,
    /// Seconds of the receive-and-acknowledge consumer, stalls left out.
    consumed_s: f64,
    consume_stalls: u32,
    consume_stalled_s: f64,
    run: RunCatchUp,
}

/// `run` catching up on a published backlog.
struct RunCatchUp {
    /// Seconds, stalls left out.
    run_s: f64,
    restarts: u32,
    stalled_s: f64,
    rss_kib: i64,
}

async fn live(
    env: &Env,
    opts: &Options,
    file: &Path,
    expected: &FinalRows,
    f: &mut Figures,
) -> anyhow::Result<()> {
    let url = broker(env, opts).await?;
    // One message per entry first: the shape of the earlier rounds, and
    // the one where the consumer's ceiling is the broker path's (batched,
    // the consumer unpacks a thousand messages per entry and is no
    // ceiling for anything that writes them).
    let single = catch_up(env, &url, file, expected, f, Entries::Single).await?;
    let mut last_topic = single.topic.clone();
    let messages_per_s = rate(f.messages, single.run.run_s);
    f.consume_ceiling_messages_per_s = Some(rate(f.messages, single.consumed_s));
    (f.consume_stalls, f.consume_stalled_s) =
        (Some(single.consume_stalls), Some(single.consume_stalled_s));
    f.live_restarts = Some(single.run.restarts);
    f.live_stalled_s = Some(single.run.stalled_s);
    f.live_messages_per_s = Some(messages_per_s);
    f.live_events_per_s = Some(rate(f.events, single.run.run_s));
    f.live_to_consume_ceiling_ratio =
        Some(ratio(messages_per_s, rate(f.messages, single.consumed_s)));
    f.live_peak_rss_mib = Some(single.run.rss_kib as f64 / 1024.0);
    // Then as Armada publishes: the holding catch-up rate on Armada's
    // topics, whose half is the last latency measurement.
    let mut catch_up_rate = messages_per_s;
    if let Entries::Batched(_) = opts.entries {
        let b = catch_up(env, &url, file, expected, f, opts.entries).await?;
        last_topic = b.topic.clone();
        catch_up_rate = rate(f.messages, b.run.run_s);
        f.batched_consume_messages_per_s = Some(rate(f.messages, b.consumed_s));
        f.batched_live_messages_per_s = Some(catch_up_rate);
        f.batched_live_events_per_s = Some(rate(f.events, b.run.run_s));
        f.batched_live_peak_rss_mib = Some(b.run.rss_kib as f64 / 1024.0);
        f.batched_live_restarts = Some(b.run.restarts + b.consume_stalls);
    }

    // The sustained maximum: the last backlog again, nothing held.
    let steady = run_catch_up(env, &url, &last_topic, "steady", expected, f, false).await?;
    let steady_max = rate(f.messages, steady.run_s);
    f.steady_max_messages_per_s = Some(steady_max);
    f.steady_restarts = Some(steady.restarts);

    let half = opts
        .latency_rate
        .unwrap_or(steady_max / 2.0)
        .max(1.0)
        .round();
    let seed = opts.workload.seed.wrapping_add(1);
    let at_half = latency(env, opts, &url, half, seed, "half").await?;
    f.latency_rate_per_s = Some(half);
    (
        f.live_p50_latency_ms,
        f.live_p95_latency_ms,
        f.live_p99_latency_ms,
    ) = (Some(at_half[0]), Some(at_half[1]), Some(at_half[2]));
    let at_1k = latency(env, opts, &url, 1000.0, seed.wrapping_add(1), "1k").await?;
    (
        f.live_1k_p50_latency_ms,
        f.live_1k_p95_latency_ms,
        f.live_1k_p99_latency_ms,
    ) = (Some(at_1k[0]), Some(at_1k[1]), Some(at_1k[2]));
    if opts.latency_rate.is_none() {
        let half_catch_up = (catch_up_rate / 2.0).max(1.0).round();
        let at = latency(
            env,
            opts,
            &url,
            half_catch_up,
            seed.wrapping_add(2),
            "catch-up-half",
        )
        .await?;
        f.catch_up_half_rate_per_s = Some(half_catch_up);
        (
            f.catch_up_half_p50_latency_ms,
            f.catch_up_half_p99_latency_ms,
        ) = (Some(at[0]), Some(at[2]));
    }
    Ok(())
}

/// Publishes the workload to a fresh topic in the shape `entries`, reads it
/// with the receive-and-acknowledge consumer, then times `run` catching up
/// on it into a fresh database.
async fn catch_up(
    env: &Env,
    url: &str,
    file: &Path,
    expected: &FinalRows,
    f: &Figures,
    entries: Entries,
) -> anyhow::Result<CatchUp> {
    let batch = entries.per_entry();
    let shape = match entries {
        Entries::Single => "one message per entry".to_string(),
        Entries::Batched(n) => format!("up to {n} messages per entry"),
    };
    let topic = format!("bench-{}-{batch}", env.tag);
    // `publish` reads the usual settings, a database among them.
    let db = env.create_db(&format!("publish_{batch}")).await?;
    let url_arg = ["--pulsar-url", url, "--topic", topic.as_str()];
    let batch = batch.to_string();
    let out = env
        .child(
            &[&["publish", "--batch", batch.as_str()][..], &url_arg].concat(),
            &[file.as_os_str()],
            &db,
            &format!("publish-{batch}"),
        )
        .await?;
    env.drop_db(db).await?;
    if out.code != Some(0) {
        bail!("publish exited with {:?}: {}", out.code, out.tail());
    }
    progress(&format!(
        "published {} messages to {topic}, {shape}",
        f.messages
    ));

    let (consumed_s, consume_stalls, consume_stalled_s) =
        consume_only(&pulsar_config(url, &topic), f.messages).await?;
    progress(&format!(
        "receive-and-acknowledge consumer: {consumed_s:.2}s ({consume_stalls} broker stalls, {consume_stalled_s:.1}s left out)"
    ));

    let run = run_catch_up(env, url, &topic, &batch, expected, f, true).await?;
    Ok(CatchUp {
        topic,
        consumed_s,
        consume_stalls,
        consume_stalled_s,
        run,
    })
}

/// Times `run` catching up on `topic` (published already) into a fresh
/// database named for `name`, holding open jobs' rows (`hold`, the
/// default) or not.
async fn run_catch_up(
    env: &Env,
    url: &str,
    topic: &str,
    name: &str,
    expected: &FinalRows,
    f: &Figures,
    hold: bool,
) -> anyhow::Result<RunCatchUp> {
    let db = env.create_db(&format!("live_{name}")).await?;
    env.settle().await;
    let started = Instant::now();
    let mut log = format!("run-{name}");
    let (mut pid, mut port) = env.start_run(&db, url, topic, &log, hold)?;
    let client = env.connect(&db).await?;
    // Done once it has received as many messages as were published (counting
    // redeliveries, so the tables are checked too) with none in flight.
    // As for the consumer above: when pulsar-lite stops dispatching (nothing
    // received for RUN_STALL, nothing in flight, not done), `run` is stopped (it
    // acknowledges what it committed) and started again, at most
    // RUN_RESTARTS times; the stall's wait is left out of the time, the
    // restart itself is not. `acked` counts what earlier processes
    // acknowledged, so the new one has the rest to receive.
    let (mut last_got, mut last_change) = (-1.0, Instant::now());
    let (mut acked, mut restarts, mut stalled, mut rss) = (0.0, 0u32, Duration::ZERO, 0i64);
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        if started.elapsed() > Duration::from_secs(3600) {
            bail!("run did not catch up within an hour");
        }
        let Some(m) = scrape(port).await else {
            continue;
        };
        let got = acked
            + m.get("lookout_ingester_messages_received_total")
            + m.get("lookout_ingester_duplicates_skipped_total");
        let in_flight = m.get("lookout_ingester_messages_in_flight");
        if got > last_got {
            (last_got, last_change) = (got, Instant::now());
        }
        let received_all = got >= f.messages as f64 && in_flight == 0.0;
        let quiet = in_flight == 0.0 && last_change.elapsed() > RUN_STALL;
        if received_all && count_rows(&client).await? == *expected {
            break;
        }
        if quiet {
            if restarts >= RUN_RESTARTS {
                bail!(
                    "run received nothing for {RUN_STALL:?} ({got} of {} messages), {restarts} restarts; its last lines: {}",
                    f.messages,
                    env.log_tail(&format!("{log}.err"), 5)
                );
            }
            restarts += 1;
            stalled += RUN_STALL;
            acked += m.get("armada_lookout_ingester_v2_pulsar_messages_processed");
            progress(&format!(
                "run received nothing for {RUN_STALL:?} ({got} of {} messages); starting it again",
                f.messages
            ));
            let (_, r) = env.stop(pid, Duration::from_secs(15)).await?;
            rss = rss.max(r);
            log = format!("run-{name}-{restarts}");
            (pid, port) = env.start_run(&db, url, topic, &log, hold)?;
            (last_got, last_change) = (-1.0, Instant::now());
        }
    }
    let run_s = started.elapsed().saturating_sub(stalled).as_secs_f64();
    let (_, r) = env.stop(pid, Duration::from_secs(15)).await?;
    progress(&format!(
        "run{} caught up in {run_s:.2}s ({restarts} restarts after broker stalls, {:.0}s left out)",
        if hold { "" } else { " (nothing held)" },
        stalled.as_secs_f64()
    ));
    drop(client);
    env.drop_db(db).await?;
    Ok(RunCatchUp {
        run_s,
        restarts,
        stalled_s: stalled.as_secs_f64(),
        rss_kib: rss.max(r),
    })
}

impl Env {
    /// Starts `run` on `topic` with its own subscription and metrics port.
    fn start_run(
        &self,
        db: &Db,
        url: &str,
        topic: &str,
        log: &str,
        hold: bool,
    ) -> anyhow::Result<(i32, u16)> {
        let port = free_port()?;
        let port_s = port.to_string();
        let subscription = format!("bench-{log}");
        let mut c = self.command(
            &[
                "run",
                "--pulsar-url",
                url,
                "--topic",
                topic,
                "--subscription",
                &subscription,
                "--metrics-port",
                &port_s,
                "--bind",
                "127.0.0.1",
            ],
            db,
            log,
        )?;
        if !hold {
            c.env("ARMADA_BATCHHOLDOPEN", "0");
        }
        Ok((self.spawn(c)?, port))
    }
}

/// The receive-and-acknowledge-only consumer: the client, options and
/// subscription type `run` uses, acknowledging cumulatively every 1,000
/// messages (as `run` acknowledges a committed batch); seconds until it has
/// seen `messages` distinct messages.
///
/// pulsar-lite sometimes stops dispatching to a consumer in the middle of a
/// large backlog, without an error or a disconnect (see "A local broker").
/// After [`CONSUMER_STALL`] without a message the consumer is closed and
/// subscribed again (the broker rewinds to the last acknowledgement), at
/// most [`CONSUMER_RESUBSCRIPTIONS`] times; the seconds spent waiting are
/// left out of the returned time (the ceiling is the consumer's, not the
/// broker's pauses) and returned with the count.
async fn consume_only(cfg: &PulsarConfig, messages: u64) -> anyhow::Result<(f64, u32, f64)> {
    let started = Instant::now();
    let client = crate::source::pulsar::client(cfg).await?;
    let subscribe = || async {
        let c: pulsar::Consumer<Vec<u8>, _> = client
            .consumer()
            .with_topic(cfg.topic.clone())
            .with_subscription("bench-consume-only")
            .with_subscription_type(pulsar::SubType::Failover)
            .with_batch_size(cfg.receiver_queue_size)
            .with_options(
                pulsar::ConsumerOptions::default()
                    .with_initial_position(pulsar::consumer::InitialPosition::Earliest),
            )
            .build()
            .await?;
        anyhow::Ok(c)
    };
    let mut consumer = subscribe().await?;
    let mut seen = BTreeSet::new();
    let mut since_ack = 0u32;
    let (mut stalls, mut stalled) = (0u32, Duration::ZERO);
    while (seen.len() as u64) < messages {
        let m = match tokio::time::timeout(CONSUMER_STALL, consumer.next()).await {
            Ok(m) => m.ok_or_else(|| anyhow!("the consumer stream ended"))??,
            Err(_) if stalls < CONSUMER_RESUBSCRIPTIONS => {
                stalls += 1;
                stalled += CONSUMER_STALL;
                progress(&format!(
                    "the consumer received nothing for {CONSUMER_STALL:?} ({} of {messages}); subscribing again",
                    seen.len()
                ));
                let _ = tokio::time::timeout(Duration::from_secs(2), consumer.close()).await;
                consumer = subscribe().await?;
                continue;
            }
            Err(_) => bail!(
                "the consumer received nothing for {CONSUMER_STALL:?} ({} of {messages}), {stalls} times",
                seen.len()
            ),
        };
        let id = m.message_id();
        seen.insert((id.ledger_id, id.entry_id, id.batch_index.unwrap_or(-1)));
        since_ack += 1;
        if since_ack >= 1000 || seen.len() as u64 >= messages {
            consumer.cumulative_ack(&m).await?;
            since_ack = 0;
        }
    }
    let secs = started.elapsed().saturating_sub(stalled).as_secs_f64();
    let _ = tokio::time::timeout(Duration::from_secs(2), consumer.close()).await;
    Ok((secs, stalls, stalled.as_secs_f64()))
}

/// Silence (nothing in flight) after which `run`'s catch-up is restarted.
const RUN_STALL: Duration = Duration::from_secs(10);
const RUN_RESTARTS: u32 = 5;

/// Silence after which the receive-and-acknowledge consumer subscribes again.
const CONSUMER_STALL: Duration = Duration::from_secs(5);
const CONSUMER_RESUBSCRIPTIONS: u32 = 10;

/// A /metrics scrape.
struct Scrape(String);

impl Scrape {
    fn get(&self, name: &str) -> f64 {
        self.0
            .lines()
            .filter_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
            .next()
            .unwrap_or(0.0)
    }
}

/// How `run` cut and wrote its batches, from its metrics.
#[derive(Default)]
struct Batches {
    count: f64,
    messages: f64,
    write_s: f64,
}

impl std::fmt::Display for Batches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.count.max(1.0);
        write!(
            f,
            "{} batches, {:.0} messages and {:.0} ms of writing each on average",
            self.count,
            self.messages / n,
            self.write_s * 1000.0 / n
        )
    }
}

impl Scrape {
    fn batches(&self) -> Batches {
        Batches {
            count: self.get("lookout_ingester_batches_total"),
            messages: self.get("lookout_ingester_batch_messages_sum"),
            write_s: self.get("lookout_ingester_batch_write_seconds_sum"),
        }
    }
}

async fn http_get(port: u16, path: &str) -> Option<(bool, String)> {
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut body = String::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_string(&mut body))
        .await
        .ok()?
        .ok()?;
    Some((
        body.starts_with("HTTP/1.1 200") || body.starts_with("HTTP/1.0 200"),
        body,
    ))
}

async fn scrape(port: u16) -> Option<Scrape> {
    http_get(port, "/metrics").await.map(|(_, b)| Scrape(b))
}

/// Publish → commit latency at `rate` messages/s: `run` consumes an empty
/// topic into a fresh database while workload messages (seed `seed`) are
/// published at that rate for `latency_secs`. A message that submits jobs
/// is committed when `job` holds the last job it submits (messages commit
/// in topic order, in whole batches), looked up every 10 ms; its latency is
/// that moment minus when it was handed to the producer. Messages without
/// submissions (most: jobs are submitted in batches) are published but not
/// timed.
/// Returns p50, p95 and p99 in ms.
async fn latency(
    env: &Env,
    opts: &Options,
    url: &str,
    rate_per_s: f64,
    seed: u64,
    what: &str,
) -> anyhow::Result<[f64; 3]> {
    let topic = format!("bench-{}-latency-{what}", env.tag);
    let db = env.create_db(&format!("latency_{what}")).await?;
    env.settle().await;
    let (pid, port) = env.start_run(&db, url, &topic, &format!("latency-{what}"), true)?;
    // Ready: subscribed and the database answering.
    let ready_by = Instant::now() + Duration::from_secs(60);
    while !matches!(http_get(port, "/readyz").await, Some((true, _))) {
        if Instant::now() > ready_by {
            bail!("run on {topic} was not ready after 60s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let client = env.connect(&db).await?;
    let cfg = pulsar_config(url, &topic);
    let pulsar = crate::source::pulsar::client(&cfg).await?;
    let mut producer = pulsar
        .producer()
        .with_topic(topic.clone())
        .with_options(opts.entries.producer_options())
        .build()
        .await?;
    // Receipts are awaited apart from sending, so sending keeps its pace;
    // but only so many wait, or pulsar-rs refuses sends (SlowDown) once its
    // 100-entry outbound queue is full, as it did when the broker lagged.
    // Batched, a whole entry's receipts come at once, so the window holds
    // many entries (64 receipts held a batching producer to ~6k msgs/s).
    let (receipts_tx, mut receipts_rx) =
        tokio::sync::mpsc::channel::<pulsar::producer::SendFuture>(opts.entries.window());
    let receipts = tokio::spawn(async move {
        while let Some(r) = receipts_rx.recv().await {
            r.await?;
        }
        anyhow::Ok(())
    });
    // The poller: a timed message is committed once its last submitted job
    // is in `job` (messages commit in topic order, in whole batches, so the
    // earlier ones are too). One primary-key lookup per check, every 10 ms,
    // so the poller itself takes almost nothing from Postgres (counting
    // `job` every 10 ms took a share of a core as the table grew).
    let (sent_tx, mut sent_rx) = tokio::sync::mpsc::unbounded_channel::<(Instant, String)>();
    let poll_client = client;
    let poller = tokio::spawn(async move {
        let exists = poll_client
            .prepare("SELECT 1 FROM job WHERE job_id = $1")
            .await?;
        let mut ms: Vec<f64> = Vec::new();
        let mut next: Option<(Instant, String)> = None;
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        loop {
            tick.tick().await;
            loop {
                if next.is_none() {
                    next = match sent_rx.try_recv() {
                        Ok(n) => Some(n),
                        Err(tokio::sync::mpsc::error::TryRecvError::Empty) => break,
                        Err(tokio::sync::mpsc::error::TryRecvError::Disconnected) => {
                            return anyhow::Ok(ms);
                        }
                    };
                }
                let Some((at, job)) = &next else { break };
                if poll_client.query_opt(&exists, &[job]).await?.is_none() {
                    break;
                }
                ms.push(at.elapsed().as_secs_f64() * 1000.0);
                next = None;
            }
        }
    });
    let mut workload = Workload::new(WorkloadOptions {
        seed,
        events: u64::MAX,
        ..opts.workload.clone()
    });
    let started = Instant::now();
    let total = (rate_per_s * opts.latency_secs as f64).round().max(1.0) as u64;
    for i in 0..total {
        let due = started + Duration::from_secs_f64(i as f64 / rate_per_s);
        tokio::time::sleep_until(due.into()).await;
        let Some(seq) = workload.next() else { break };
        let last_submitted = seq.events.iter().rev().find_map(|e| match &e.event {
            Some(Kind::SubmitJob(s)) => Some(String::from_utf8_lossy(&s.job_id).into_owned()),
            _ => None,
        });
        let at = Instant::now();
        let receipt = producer.send_non_blocking(seq.encode_to_vec()).await?;
        if receipts_tx.send(receipt).await.is_err() {
            break;
        }
        if let Some(job) = last_submitted {
            // The poller only stops when this sender is dropped.
            let _ = sent_tx.send((at, job));
        }
    }
    drop(receipts_tx);
    receipts.await??;
    drop(sent_tx);
    let mut ms = tokio::time::timeout(Duration::from_secs(120), poller)
        .await
        .map_err(|_| anyhow!("run on {topic} did not commit every job within 120s"))???;
    drop(producer);
    let batches = scrape(port).await.map(|m| m.batches()).unwrap_or_default();
    env.stop(pid, Duration::from_secs(15)).await?;
    env.drop_db(db).await?;
    ms.sort_by(f64::total_cmp);
    progress(&format!(
        "latency at {rate_per_s:.0} messages/s: {} messages timed, p50 {:.0} ms, p99 {:.0} ms; {batches}",
        ms.len(),
        percentile(&ms, 50.0),
        percentile(&ms, 99.0)
    ));
    Ok([
        percentile(&ms, 50.0),
        percentile(&ms, 95.0),
        percentile(&ms, 99.0),
    ])
}

/// Nearest-rank percentile of sorted values (0 when there are none).
fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn row_operations_sums_the_rows_section_only() {
        let s = "replayed 3 records, 9 events in 1.00s (9 events/s)\nevents by type:\n  submit_job 3\nrows by table:\n  job insert                          3\n  job update                          5\nskipped by reason: none\n";
        assert_eq!(row_operations(s), 8);
        assert_eq!(row_operations("rows by table: none\n"), 0);
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&[7.0], 95.0), 7.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
    }

    #[test]
    fn scrape_reads_a_metric_by_exact_name() {
        let s = Scrape("# HELP x\nlookout_ingester_acks_total 4\nlookout_ingester_acks 9\n".into());
        assert_eq!(s.get("lookout_ingester_acks"), 9.0);
        assert_eq!(s.get("lookout_ingester_acks_total"), 4.0);
        assert_eq!(s.get("missing"), 0.0);
    }
}
