//! Test support shared by the integration tests: a fresh Postgres database
//! per test (dropped at the end), connections, recorded files, clean-run
//! baselines, table dumps and waiting for them, rows as JSON, and the
//! binary's command line. Each test binary uses a part of it.
#![allow(dead_code)]

pub mod broker;
pub mod hotcold;
pub mod pgcluster;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use broker::Ingester;
use lookout_ingester::convert::Converter;
use lookout_ingester::proto::armadaevents as ev;
use lookout_ingester::source::file::RecordWriter;
use lookout_ingester::store::{self, Store, StoreSettings};
use lookout_ingester::{pipeline, replay};
use prost::Message;
use serde_json::Value;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, NoTls};

/// The server the tests use; any database on it works as the admin entry point.
pub fn admin_url() -> String {
    std::env::var("LOOKOUT_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

/// A database of its own for one test. Call `drop_db().await` at the end;
/// if the test panics first, `Drop` removes it from a helper thread.
pub struct TestDb {
    pub name: String,
    pub url: String,
    dropped: bool,
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn with_db(url: &str, db: &str) -> String {
    match url.rfind('/') {
        Some(i) => format!("{}/{}", &url[..i], db),
        None => format!("{url}/{db}"),
    }
}

/// A connection to `url`, its driver on a task; panics if refused.
pub async fn connect(url: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"));
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
}

/// A connection, or `None` while the server is unreachable or refusing.
pub async fn try_connect(url: &str) -> Option<Client> {
    match tokio::time::timeout(Duration::from_secs(5), tokio_postgres::connect(url, NoTls)).await {
        Ok(Ok((client, conn))) => {
            tokio::spawn(async move {
                let _ = conn.await;
            });
            Some(client)
        }
        _ => None,
    }
}

impl TestDb {
    /// An empty database (no schema).
    pub async fn empty() -> TestDb {
        let name = format!(
            "lookout_test_{}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst),
            chrono::Utc::now().timestamp_micros() % 1_000_000
        );
        let admin = connect(&admin_url()).await;
        admin
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .unwrap_or_else(|e| panic!("create database {name}: {e}"));
        let url = with_db(&admin_url(), &name);
        TestDb {
            name,
            url,
            dropped: false,
        }
    }

    /// A database migrated to the latest schema.
    pub async fn migrated() -> TestDb {
        let db = TestDb::empty().await;
        let mut client = db.client().await;
        lookout_ingester::migrate::migrate(&mut client)
            .await
            .unwrap_or_else(|e| panic!("migrate {}: {e:#}", db.name));
        db
    }

    /// A database migrated to `version` with the library's `migrate_to`
    /// (the Lookout tables only, none of the ingester's own).
    pub async fn at_version(version: i64) -> TestDb {
        let db = TestDb::empty().await;
        let mut client = db.client().await;
        lookout_ingester::migrate::migrate_to(&mut client, version)
            .await
            .unwrap_or_else(|e| panic!("migrate {} to {version}: {e:#}", db.name));
        db
    }

    pub async fn client(&self) -> Client {
        connect(&self.url).await
    }

    pub async fn drop_db(mut self) {
        self.dropped = true;
        let admin = connect(&admin_url()).await;
        let _ = admin
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                self.name
            ))
            .await;
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if self.dropped {
            return;
        }
        let name = self.name.clone();
        // Drop runs inside the test's runtime; use a thread with its own.
        let _ = std::thread::spawn(move || {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(async move {
                    if let Ok((client, conn)) = tokio_postgres::connect(&admin_url(), NoTls).await {
                        tokio::spawn(conn);
                        let _ = client
                            .batch_execute(&format!(
                                "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                            ))
                            .await;
                    }
                });
            }
        })
        .join();
    }
}

/// Every row of the tables the ingester writes, as text, in key order: two
/// databases hold the same data exactly when their dumps are equal.
pub async fn dump(client: &Client) -> String {
    let queries = [
        ("job", "SELECT to_jsonb(t)::text FROM job t ORDER BY job_id"),
        (
            "job_spec",
            "SELECT job_id || ' ' || md5(job_spec) FROM job_spec ORDER BY job_id",
        ),
        (
            "job_run",
            "SELECT to_jsonb(t)::text FROM job_run t ORDER BY run_id",
        ),
        (
            "job_error",
            "SELECT job_id || ' ' || md5(error) FROM job_error ORDER BY job_id",
        ),
    ];
    let mut out = String::new();
    for (table, q) in queries {
        out.push_str(&format!("== {table}\n"));
        for row in client
            .query(q, &[])
            .await
            .unwrap_or_else(|e| panic!("dump {table}: {e}"))
        {
            let line: String = row.get(0);
            out.push_str(&line);
            out.push('\n');
        }
    }
    out
}

/// Row count of a table.
pub async fn count(client: &Client, table: &str) -> i64 {
    client
        .query_one(&format!("SELECT count(*) FROM {table}"), &[])
        .await
        .unwrap_or_else(|e| panic!("count {table}: {e}"))
        .get(0)
}

/// Dead letters into the test database; the spool is a per-process temp file
/// (it is used only if Postgres refuses the dead letters).
pub fn dead_letters(
    pool: deadpool_postgres::Pool,
) -> std::sync::Arc<lookout_ingester::deadletter::DeadLetters> {
    let spool =
        std::env::temp_dir().join(format!("lookout-test-spool-{}.jsonl", std::process::id()));
    lookout_ingester::deadletter::DeadLetters::new(pool, spool)
}

/// The last `n` lines of `text` (of a log, for failure messages).
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Each sequence as the bytes of one message.
pub fn payloads(seqs: &[ev::EventSequence]) -> Vec<Vec<u8>> {
    seqs.iter().map(|s| s.encode_to_vec()).collect()
}

/// A recorded file at `path` holding `payloads`, one record each.
pub fn write_recording(path: PathBuf, payloads: &[Vec<u8>], gzip: bool) -> PathBuf {
    let mut w = RecordWriter::create(&path, gzip)
        .unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
    for p in payloads {
        w.write_record(p)
            .unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    }
    w.finish()
        .unwrap_or_else(|e| panic!("finish {}: {e}", path.display()));
    path
}

/// Replays `files` into the (migrated) database at `url` in-process, with
/// the default converter and store settings.
pub async fn replay_files(
    url: &str,
    files: Vec<PathBuf>,
    settings: pipeline::Settings,
) -> replay::Summary {
    let pool = store::connect_pool(url, 4)
        .await
        .unwrap_or_else(|e| panic!("pool for {url}: {e:#}"));
    let store = Arc::new(Store::new(pool.clone(), StoreSettings::default()));
    replay::replay(
        files,
        Converter::new(Default::default()),
        store,
        dead_letters(pool),
        settings,
        false,
    )
    .await
    .unwrap_or_else(|e| panic!("replay into {url}: {e:#}"))
}

/// Replays `seqs` into the (migrated, empty) database at `url` as one
/// uninterrupted run, checks it was clean, and returns its dump.
pub async fn replay_dump(url: &str, seqs: &[ev::EventSequence], dir: &Path) -> String {
    let name = format!("baseline-{}.bin", chrono::Utc::now().timestamp_micros());
    let path = write_recording(dir.join(name), &payloads(seqs), false);
    let s = replay_files(url, vec![path.clone()], pipeline::Settings::default()).await;
    assert!(s.clean(), "{s}");
    let _ = std::fs::remove_file(path);
    dump(&connect(url).await).await
}

/// The tables a clean run of `seqs` leaves, replayed into a database of its
/// own on the shared server.
pub async fn baseline(seqs: &[ev::EventSequence], dir: &Path) -> String {
    let db = TestDb::migrated().await;
    let d = replay_dump(&db.url, seqs, dir).await;
    db.drop_db().await;
    d
}

/// Where two dumps first differ, for failure messages.
pub fn first_difference(got: &str, expected: &str) -> String {
    for (i, (x, y)) in got.lines().zip(expected.lines()).enumerate() {
        if x != y {
            return format!("line {}:\n  got:      {x}\n  expected: {y}", i + 1);
        }
    }
    format!(
        "one is a prefix of the other ({} vs {} lines)",
        got.lines().count(),
        expected.lines().count()
    )
}

/// Waits until the dump of `url` equals `expected` (riding out a server
/// that is down), or fails with the first difference and the ingester's
/// last log lines; both dumps are then written next to its log.
pub async fn wait_equal(url: &str, expected: &str, limit: Duration, ing: Option<&Ingester>) {
    let start = Instant::now();
    let mut last = String::new();
    loop {
        if let Some(client) = try_connect(url).await {
            last = dump(&client).await;
            if last == expected {
                return;
            }
        }
        if start.elapsed() > limit {
            if let Some(dir) = ing.and_then(|i| i.log.parent()) {
                let _ = std::fs::write(dir.join("dump-got.txt"), &last);
                let _ = std::fs::write(dir.join("dump-expected.txt"), expected);
            }
            panic!(
                "tables did not reach the expected state within {limit:?}; first difference: {}\nlast log lines:\n{}",
                first_difference(&last, expected),
                ing.map(|i| i.log_tail(40)).unwrap_or_default()
            );
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Rows of a dump (its lines but the table headers).
pub fn dump_rows(dump: &str) -> usize {
    dump.lines().filter(|l| !l.starts_with("== ")).count()
}

/// Every row `sql` returns as one JSON object (column name → value), in its
/// order: tests compare rows with one `assert_eq!` against `json!`. Postgres
/// writes timestamps as `2023-11-14T22:13:20.123456` and bytea as `\x…` hex
/// (see [`bytea`]).
pub async fn json_rows(client: &Client, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Vec<Value> {
    // A subquery with ORDER BY is scanned in that order.
    let wrapped = format!("SELECT to_jsonb(t) FROM ({sql}) t");
    client
        .query(&wrapped, params)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// The one row `sql` returns, as JSON (see [`json_rows`]).
pub async fn json_row(client: &Client, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Value {
    let mut rows = json_rows(client, sql, params).await;
    assert_eq!(rows.len(), 1, "{sql}: {rows:?}");
    rows.remove(0)
}

/// Bytes as `to_jsonb` writes a bytea value.
pub fn bytea(bytes: &[u8]) -> String {
    let mut s = String::from("\\x");
    for b in bytes {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

/// What the binary printed and how it exited.
pub struct CliOutput {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs the ingester binary to completion with `args`.
pub async fn cli<I, S>(args: I) -> CliOutput
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    cli_with_env(args, &[]).await
}

/// [`cli`] with extra environment variables (`LOOKOUT_DATABASE_URL` is
/// unset unless `env` sets it).
pub async fn cli_with_env<I, S>(args: I, env: &[(&str, &str)]) -> CliOutput
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_lookout-ingester"))
        .args(args)
        .env_remove("LOOKOUT_DATABASE_URL")
        .envs(env.iter().copied())
        .output()
        .await
        .unwrap_or_else(|e| panic!("cannot run lookout-ingester: {e}"));
    CliOutput {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `lookout-ingester replay --database-url <url> --dead-letter-spool <spool>
/// <file>` through the binary.
pub async fn replay_cli(url: &str, spool: &Path, file: &Path) -> CliOutput {
    cli([
        "replay".as_ref(),
        "--database-url".as_ref(),
        url.as_ref(),
        "--dead-letter-spool".as_ref(),
        spool.as_os_str(),
        file.as_os_str(),
    ])
    .await
}

/// `lookout-ingester migrate --database-url <url> args…` through the binary.
pub async fn migrate_cli(url: &str, args: &[&str]) -> CliOutput {
    let mut all = vec!["migrate", "--database-url", url];
    all.extend_from_slice(args);
    cli(all).await
}
