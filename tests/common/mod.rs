//! Test support shared by the integration tests: a fresh Postgres database
//! per test, dropped at the end.
#![allow(dead_code)]

pub mod broker;
pub mod pgcluster;

use std::sync::atomic::{AtomicU32, Ordering};
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

async fn connect(url: &str) -> Client {
    let (client, conn) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to {url}: {e}"));
    tokio::spawn(async move {
        let _ = conn.await;
    });
    client
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
