//! Schema migrations against a real Postgres (see tests/common).

mod common;

use std::collections::BTreeSet;

use common::{json_row, json_rows, CliOutput, TestDb};
use lookout_ingester::migrate::{self, DropRefused, Migration, MIGRATION_LOCK_KEY};
use lookout_ingester::model::Generation;
use lookout_ingester::store::schema::{self, Detected};
use serde_json::json;
use tokio_postgres::Client;

/// Where `migrate` takes a database without `--to`.
const DEFAULT: i64 = 31;
/// The newest migration the binary knows.
const LATEST: i64 = 35;

/// Every index on the Lookout tables once 001..031 have been applied, as
/// `pg_get_indexdef` prints it.
const EXPECTED_INDEXES: &[(&str, &str, &str)] = &[
    ("job", "job_pkey", "CREATE UNIQUE INDEX job_pkey ON public.job USING btree (job_id)"),
    (
        "job",
        "idx_job_active_queue_jobset",
        "CREATE INDEX idx_job_active_queue_jobset ON public.job USING btree (queue, jobset) \
         WITH (fillfactor='80') WHERE (state = ANY (ARRAY[1, 2, 3, 8]))",
    ),
    (
        "job",
        "idx_job_annotations_path",
        "CREATE INDEX idx_job_annotations_path ON public.job USING gin (annotations) \
         WITH (fastupdate='true', gin_pending_list_limit='33554432')",
    ),
    (
        "job",
        "idx_job_jobset_pattern",
        "CREATE INDEX idx_job_jobset_pattern ON public.job USING btree (jobset varchar_pattern_ops) \
         WITH (fillfactor='80')",
    ),
    (
        "job",
        "idx_job_latest_run_id",
        "CREATE INDEX idx_job_latest_run_id ON public.job USING btree (latest_run_id) WITH (fillfactor='80')",
    ),
    (
        "job",
        "idx_job_ltt_jobid",
        "CREATE INDEX idx_job_ltt_jobid ON public.job USING btree (last_transition_time, job_id) \
         WITH (fillfactor='80')",
    ),
    (
        "job",
        "idx_job_queue_jobset_state",
        "CREATE INDEX idx_job_queue_jobset_state ON public.job USING btree (queue, jobset, state) \
         WITH (fillfactor='80')",
    ),
    (
        "job",
        "idx_job_queue_last_transition_time_seconds",
        "CREATE INDEX idx_job_queue_last_transition_time_seconds ON public.job USING btree \
         (queue, last_transition_time_seconds) WITH (fillfactor='80')",
    ),
    (
        "job",
        "idx_job_queue_namespace",
        "CREATE INDEX idx_job_queue_namespace ON public.job USING btree (queue, namespace) WITH (fillfactor='80')",
    ),
    (
        "job",
        "idx_job_state",
        "CREATE INDEX idx_job_state ON public.job USING btree (state) WITH (fillfactor='80')",
    ),
    (
        "job",
        "idx_job_submitted",
        "CREATE INDEX idx_job_submitted ON public.job USING btree (submitted DESC)",
    ),
    ("job_run", "job_run_pkey", "CREATE UNIQUE INDEX job_run_pkey ON public.job_run USING btree (run_id)"),
    (
        "job_run",
        "idx_job_run_cluster_run_id",
        "CREATE INDEX idx_job_run_cluster_run_id ON public.job_run USING btree (cluster, run_id) \
         WITH (fillfactor='80')",
    ),
    (
        "job_run",
        "idx_job_run_job_id",
        "CREATE INDEX idx_job_run_job_id ON public.job_run USING btree (job_id) WITH (fillfactor='80')",
    ),
    (
        "job_run",
        "idx_job_run_node",
        "CREATE INDEX idx_job_run_node ON public.job_run USING btree (node) WITH (fillfactor='80')",
    ),
    (
        "job_run",
        "idx_job_run_run_id_cluster_node",
        "CREATE INDEX idx_job_run_run_id_cluster_node ON public.job_run USING btree (run_id, cluster, node) \
         WITH (fillfactor='80')",
    ),
    (
        "job_run",
        "idx_job_run_run_id_node",
        "CREATE INDEX idx_job_run_run_id_node ON public.job_run USING btree (run_id, node) WITH (fillfactor='80')",
    ),
    (
        "job_run",
        "idx_job_run_run_id_pool",
        "CREATE INDEX idx_job_run_run_id_pool ON public.job_run USING btree (run_id, pool) WITH (fillfactor='80')",
    ),
    (
        "job_run",
        "idx_job_run_state_pool",
        "CREATE INDEX idx_job_run_state_pool ON public.job_run USING btree (job_run_state, pool)",
    ),
    ("job_spec", "job_spec_pkey", "CREATE UNIQUE INDEX job_spec_pkey ON public.job_spec USING btree (job_id)"),
    ("job_error", "job_error_pkey", "CREATE UNIQUE INDEX job_error_pkey ON public.job_error USING btree (job_id)"),
    ("queue", "queue_pkey", "CREATE UNIQUE INDEX queue_pkey ON public.queue USING btree (name)"),
    (
        "job_deduplication",
        "job_deduplication_pkey",
        "CREATE UNIQUE INDEX job_deduplication_pkey ON public.job_deduplication USING btree (deduplication_id)",
    ),
    (
        "job_deduplication",
        "idx_job_deduplication_inserted",
        "CREATE INDEX idx_job_deduplication_inserted ON public.job_deduplication USING btree (inserted)",
    ),
];

/// (table, column, data type, nullable) for every column, in column order.
const EXPECTED_COLUMNS: &[(&str, &str, &str, bool)] = &[
    ("job", "job_id", "character varying(32)", false),
    ("job", "queue", "character varying(512)", false),
    ("job", "owner", "character varying(512)", false),
    ("job", "jobset", "character varying(1024)", false),
    ("job", "cpu", "bigint", false),
    ("job", "memory", "bigint", false),
    ("job", "ephemeral_storage", "bigint", false),
    ("job", "gpu", "bigint", false),
    ("job", "priority", "bigint", false),
    ("job", "submitted", "timestamp without time zone", false),
    ("job", "cancelled", "timestamp without time zone", true),
    ("job", "state", "smallint", false),
    (
        "job",
        "last_transition_time",
        "timestamp without time zone",
        false,
    ),
    ("job", "last_transition_time_seconds", "bigint", false),
    ("job", "job_spec", "bytea", true),
    ("job", "duplicate", "boolean", false),
    ("job", "priority_class", "character varying(63)", true),
    ("job", "latest_run_id", "character varying(36)", true),
    ("job", "cancel_reason", "character varying(512)", true),
    ("job", "namespace", "character varying(512)", true),
    ("job", "annotations", "jsonb", true),
    ("job", "external_job_uri", "character varying(1024)", true),
    ("job", "cancel_user", "character varying(512)", true),
    ("job_deduplication", "deduplication_id", "text", false),
    ("job_deduplication", "job_id", "text", false),
    (
        "job_deduplication",
        "inserted",
        "timestamp without time zone",
        false,
    ),
    ("job_error", "job_id", "character varying(32)", false),
    ("job_error", "error", "bytea", false),
    ("job_run", "run_id", "character varying(36)", false),
    ("job_run", "job_id", "character varying(32)", false),
    ("job_run", "cluster", "character varying(512)", false),
    ("job_run", "node", "character varying(512)", true),
    ("job_run", "pending", "timestamp without time zone", true),
    ("job_run", "started", "timestamp without time zone", true),
    ("job_run", "finished", "timestamp without time zone", true),
    ("job_run", "job_run_state", "smallint", false),
    ("job_run", "error", "bytea", true),
    ("job_run", "exit_code", "integer", true),
    ("job_run", "leased", "timestamp without time zone", true),
    ("job_run", "debug", "bytea", true),
    ("job_run", "pool", "text", true),
    ("job_run", "ingress_addresses", "jsonb", true),
    ("job_run", "failure_info", "jsonb", true),
    ("job_spec", "job_id", "character varying(32)", false),
    ("job_spec", "job_spec", "bytea", false),
    ("queue", "name", "text", false),
    ("queue", "definition", "bytea", false),
];

async fn version(client: &Client) -> i64 {
    client
        .query_one("SELECT last_value FROM database_version", &[])
        .await
        .expect("read database_version")
        .get(0)
}

async fn public_tables(client: &Client) -> BTreeSet<String> {
    client
        .query(
            "SELECT table_name::text FROM information_schema.tables WHERE table_schema = 'public'",
            &[],
        )
        .await
        .expect("list tables")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// True if nobody holds the migration lock in this database.
async fn lock_is_free(db: &TestDb) -> bool {
    let other = db.client().await;
    let got: bool = other
        .query_one("SELECT pg_try_advisory_lock($1)", &[&MIGRATION_LOCK_KEY])
        .await
        .expect("try lock")
        .get(0);
    if got {
        other
            .execute("SELECT pg_advisory_unlock($1)", &[&MIGRATION_LOCK_KEY])
            .await
            .expect("unlock");
    }
    got
}

fn names(list: &[(i64, &'static str)]) -> Vec<i64> {
    list.iter().map(|(v, _)| *v).collect()
}

/// The schema `migrate` (default target) must leave behind: the same as
/// Armada's 001..031.
async fn assert_031_schema(client: &Client) {
    assert_eq!(version(client).await, DEFAULT);
    let is_called: bool = client
        .query_one("SELECT is_called FROM database_version", &[])
        .await
        .unwrap()
        .get(0);
    assert!(is_called, "version set with setval like upstream");

    let tables = public_tables(client).await;
    let expected_tables: BTreeSet<String> = [
        "job",
        "job_run",
        "job_spec",
        "job_error",
        "queue",
        "job_deduplication",
        // The ingester's own stream (migrations/ingester), tracked separately.
        "ingester_dead_letter",
        "ingester_heartbeat",
        "lookout_ingester_schema_version",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(tables, expected_tables);
    let own = json_rows(
        client,
        "SELECT version, name FROM lookout_ingester_schema_version ORDER BY version",
        &[],
    )
    .await;
    assert_eq!(
        own,
        [
            json!({"version": 1, "name": "0001_dead_letter.sql"}),
            json!({"version": 2, "name": "0002_dead_letter_unapplied_events.sql"}),
            json!({"version": 3, "name": "0003_heartbeat.sql"}),
        ]
    );

    // Columns: order, types, nullability.
    let rows = client
        .query(
            "SELECT c.relname::text, a.attname::text, format_type(a.atttypid, a.atttypmod), NOT a.attnotnull \
             FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid \
             WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'r' AND c.relname NOT IN ('ingester_dead_letter', 'ingester_heartbeat', 'lookout_ingester_schema_version') \
               AND a.attnum > 0 AND NOT a.attisdropped \
             ORDER BY c.relname, a.attnum",
            &[],
        )
        .await
        .unwrap();
    let columns: Vec<(String, String, String, bool)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    let expected: Vec<(String, String, String, bool)> = EXPECTED_COLUMNS
        .iter()
        .map(|(t, c, ty, n)| (t.to_string(), c.to_string(), ty.to_string(), *n))
        .collect();
    assert_eq!(columns, expected);

    // The same facts through information_schema for a few key columns.
    let info = |table: &'static str, column: &'static str| async move {
        json_row(
            client,
            "SELECT data_type, is_nullable, column_default FROM information_schema.columns
             WHERE table_schema = 'public' AND table_name = $1 AND column_name = $2",
            &[&table, &column],
        )
        .await
    };
    let column = |data_type: &str, nullable: &str, default: Option<&str>| json!({"data_type": data_type, "is_nullable": nullable, "column_default": default});
    assert_eq!(
        info("job_run", "failure_info").await,
        column("jsonb", "YES", None)
    );
    assert_eq!(info("job_run", "pending").await, column(TS, "YES", None));
    assert_eq!(info("job_run", "leased").await, column(TS, "YES", None));
    assert_eq!(
        info("job", "annotations").await,
        column("jsonb", "YES", None)
    );
    assert_eq!(info("job", "job_spec").await, column("bytea", "YES", None));
    assert_eq!(
        info("job", "duplicate").await,
        column("boolean", "NO", Some("false"))
    );
    assert_eq!(
        info("job_deduplication", "inserted").await,
        column(TS, "NO", Some("CURRENT_TIMESTAMP"))
    );

    // job.annotations is NOT NULL through a validated CHECK constraint.
    let rows = client
        .query(
            "SELECT conname::text, contype::text, convalidated, pg_get_constraintdef(oid) FROM pg_constraint \
             WHERE conrelid = 'job'::regclass AND contype = 'c'",
            &[],
        )
        .await
        .unwrap();
    let checks: Vec<(String, String, bool, String)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    assert_eq!(
        checks,
        vec![(
            "job_annotations_not_null".to_string(),
            "c".to_string(),
            true,
            "CHECK ((annotations IS NOT NULL))".to_string()
        )]
    );

    // Out-of-line storage for the blobs.
    let rows = client
        .query(
            "SELECT c.relname::text || '.' || a.attname::text FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid \
             WHERE c.relnamespace = 'public'::regnamespace AND a.attnum > 0 AND a.attstorage = 'e' AND c.relname NOT IN ('ingester_dead_letter', 'ingester_heartbeat', 'lookout_ingester_schema_version') ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    let external: Vec<String> = rows.iter().map(|r| r.get(0)).collect();
    assert_eq!(
        external,
        vec![
            "job.job_spec",
            "job_error.error",
            "job_run.error",
            "job_spec.job_spec"
        ]
    );

    // Table fillfactors.
    let rows = client
        .query(
            "SELECT relname::text, coalesce(array_to_string(reloptions, ','), '') FROM pg_class \
             WHERE relnamespace = 'public'::regnamespace AND relkind = 'r' AND relname NOT IN ('ingester_dead_letter', 'ingester_heartbeat', 'lookout_ingester_schema_version') ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    let options: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    let want: Vec<(String, String)> = [
        ("job", "fillfactor=70"),
        ("job_deduplication", ""),
        ("job_error", ""),
        ("job_run", "fillfactor=70"),
        ("job_spec", ""),
        ("queue", ""),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(options, want);

    // Indexes: names per table, then full definitions, all valid.
    let rows = client
        .query(
            "SELECT i.indrelid::regclass::text, c.relname::text, pg_get_indexdef(i.indexrelid), i.indisvalid \
             FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
             WHERE c.relnamespace = 'public'::regnamespace \
               AND i.indrelid::regclass::text NOT IN ('ingester_dead_letter', 'ingester_heartbeat', 'lookout_ingester_schema_version')",
            &[],
        )
        .await
        .unwrap();
    let actual: BTreeSet<(String, String, String)> = rows
        .iter()
        .map(|r| {
            assert!(
                r.get::<_, bool>(3),
                "index {} is invalid",
                r.get::<_, String>(1)
            );
            (r.get(0), r.get(1), r.get(2))
        })
        .collect();
    for table in ["job", "job_run"] {
        let got: BTreeSet<&str> = actual
            .iter()
            .filter(|(t, _, _)| t == table)
            .map(|(_, n, _)| n.as_str())
            .collect();
        let want: BTreeSet<&str> = EXPECTED_INDEXES
            .iter()
            .filter(|(t, _, _)| *t == table)
            .map(|(_, n, _)| *n)
            .collect();
        assert_eq!(got, want, "index names on {table}");
    }
    let want: BTreeSet<(String, String, String)> = EXPECTED_INDEXES
        .iter()
        .map(|(t, n, d)| {
            (
                t.to_string(),
                n.to_string(),
                d.split_whitespace().collect::<Vec<_>>().join(" "),
            )
        })
        .collect();
    assert_eq!(actual, want);
}

async fn insert_job_and_run(client: &Client, job_id: &str, run_id: &str) {
    client
        .execute(
            "INSERT INTO job (job_id, queue, owner, jobset, cpu, memory, ephemeral_storage, gpu, priority, \
                 submitted, state, last_transition_time, last_transition_time_seconds, job_spec, annotations) \
             VALUES ($1, 'q', 'o', 'js', 1, 2, 3, 0, 5, now(), 1, now(), 0, '\\x00', '{\"a\": \"b\"}')",
            &[&job_id],
        )
        .await
        .expect("insert job");
    client
        .execute(
            "INSERT INTO job_run (run_id, job_id, cluster, job_run_state) VALUES ($1, $2, 'c', 1)",
            &[&run_id, &job_id],
        )
        .await
        .expect("insert job_run");
}

#[tokio::test]
async fn migrates_an_empty_database_to_the_upstream_schema() {
    let db = TestDb::empty().await;
    let mut client = db.client().await;
    let report = migrate::migrate(&mut client).await.expect("migrate");
    assert_eq!(report.from, 0);
    assert_eq!(report.to, DEFAULT);
    assert_eq!(names(&report.applied), (1..=DEFAULT).collect::<Vec<_>>());
    assert_eq!(
        report.applied[30],
        (31, "031_add_failure_info_to_job_run.sql")
    );
    assert_031_schema(&client).await;
    assert!(lock_is_free(&db).await);
    drop(client);
    db.drop_db().await;
}

#[tokio::test]
async fn a_database_at_30_gets_only_31_and_keeps_its_data() {
    let db = TestDb::empty().await;
    let mut client = db.client().await;
    let report = migrate::migrate_to(&mut client, 30)
        .await
        .expect("migrate to 30");
    assert_eq!((report.from, report.to), (0, 30));
    assert_eq!(names(&report.applied), (1..=30).collect::<Vec<_>>());
    assert_eq!(version(&client).await, 30);
    let has_failure_info: bool = client
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM information_schema.columns \
             WHERE table_name = 'job_run' AND column_name = 'failure_info')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!has_failure_info);
    insert_job_and_run(&client, "job-1", "run-1").await;

    let report = migrate::migrate(&mut client).await.expect("migrate");
    assert_eq!(report.from, 30);
    assert_eq!(report.to, 31);
    assert_eq!(
        report.applied,
        vec![(31, "031_add_failure_info_to_job_run.sql")]
    );
    assert_031_schema(&client).await;

    let row = json_row(
        &client,
        "SELECT j.queue, j.annotations, r.run_id, r.failure_info
         FROM job j JOIN job_run r ON r.job_id = j.job_id WHERE j.job_id = 'job-1'",
        &[],
    )
    .await;
    assert_eq!(
        row,
        json!({"queue": "q", "annotations": {"a": "b"}, "run_id": "run-1", "failure_info": null})
    );
    drop(client);
    db.drop_db().await;
}

#[tokio::test]
async fn migrating_twice_applies_nothing_the_second_time() {
    let db = TestDb::empty().await;
    let mut client = db.client().await;
    let first = migrate::migrate(&mut client).await.expect("first");
    assert_eq!(first.applied.len(), DEFAULT as usize);
    let second = migrate::migrate(&mut client).await.expect("second");
    assert_eq!(
        second,
        migrate::Report {
            from: DEFAULT,
            to: DEFAULT,
            target: DEFAULT,
            applied: vec![],
            own_applied: vec![],
            failure_info_dropped: None,
        }
    );
    // A fresh connection too.
    let mut other = db.client().await;
    let third = migrate::migrate(&mut other).await.expect("third");
    assert!(third.applied.is_empty());
    assert_031_schema(&client).await;
    drop((client, other));
    db.drop_db().await;
}

#[tokio::test]
async fn concurrent_migrations_apply_each_version_once() {
    let db = TestDb::empty().await;
    let mut a = db.client().await;
    let mut b = db.client().await;
    let (ra, rb) = tokio::join!(migrate::migrate(&mut a), migrate::migrate(&mut b));
    let ra = ra.expect("first migrator");
    let rb = rb.expect("second migrator");
    let mut all = names(&ra.applied);
    all.extend(names(&rb.applied));
    all.sort();
    assert_eq!(all, (1..=DEFAULT).collect::<Vec<_>>(), "{ra:?} / {rb:?}");
    // The lock serialises whole runs: one did everything, the other nothing.
    assert!(
        ra.applied.is_empty() || rb.applied.is_empty(),
        "{ra:?} / {rb:?}"
    );
    assert_eq!((ra.to, rb.to), (DEFAULT, DEFAULT));
    assert_031_schema(&a).await;
    assert!(lock_is_free(&db).await);
    drop((a, b));
    db.drop_db().await;
}

#[tokio::test]
async fn a_newer_database_is_refused_and_left_alone() {
    let db = TestDb::empty().await;
    let mut client = db.client().await;
    client
        .batch_execute(
            "CREATE SEQUENCE database_version START WITH 0 MINVALUE 0; \
             SELECT setval('database_version', 99);",
        )
        .await
        .unwrap();
    let err = migrate::migrate(&mut client)
        .await
        .expect_err("must refuse");
    let msg = format!("{err:#}");
    assert!(msg.contains("99"), "{msg}");
    assert!(msg.contains("35"), "{msg}");
    assert_eq!(version(&client).await, 99);
    assert!(public_tables(&client).await.is_empty());
    let status = migrate::status(&client).await.unwrap();
    assert_eq!((status.current, status.latest), (99, LATEST));
    assert!(status.pending.is_empty());
    assert!(status.beyond.is_empty());
    assert!(status.newer_than_binary());
    // migrate_to and upgrade refuse too.
    assert!(migrate::migrate_to(&mut client, 5).await.is_err());
    assert!(migrate::upgrade(&mut client, LATEST, true).await.is_err());
    assert_eq!(version(&client).await, 99);
    assert!(public_tables(&client).await.is_empty());
    assert!(lock_is_free(&db).await, "lock released after the error");
    drop(client);
    db.drop_db().await;
}

#[tokio::test]
async fn status_reports_pending_migrations_without_creating_anything() {
    let db = TestDb::empty().await;
    let mut client = db.client().await;
    let status = migrate::status(&client).await.expect("status");
    assert_eq!(status.current, 0);
    assert_eq!(status.latest, LATEST);
    assert_eq!(status.default_target, DEFAULT);
    assert_eq!(status.pending.len(), 31);
    let all: Vec<(i64, &'static str)> = migrate::migrations()
        .iter()
        .map(|m| (m.version, m.name))
        .collect();
    assert_eq!(status.pending, all[..31]);
    assert_eq!(status.beyond, all[31..]);
    assert_eq!(names(&status.beyond), [32, 33, 34, 35]);
    assert_eq!(
        status.detected,
        Err(schema::SchemaError::MissingTable("job"))
    );
    assert_eq!(status.failure_info_rows, None);
    let sequence: Option<String> = client
        .query_one("SELECT to_regclass('database_version')::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(sequence, None, "status must not create the sequence");

    migrate::migrate_to(&mut client, 12).await.unwrap();
    let status = migrate::status(&client).await.unwrap();
    assert_eq!(status.current, 12);
    assert_eq!(names(&status.pending), (13..=DEFAULT).collect::<Vec<_>>());
    assert_eq!(names(&status.beyond), [32, 33, 34, 35]);

    migrate::migrate(&mut client).await.unwrap();
    let status = migrate::status(&client).await.unwrap();
    assert_eq!(
        status,
        migrate::Status {
            current: DEFAULT,
            latest: LATEST,
            default_target: DEFAULT,
            detected: Ok(Detected {
                generation: Generation::G031,
                version: Some(31),
                hot_cold: false
            }),
            pending: vec![],
            beyond: all[31..].to_vec(),
            failure_info_rows: Some(0),
            own_pending: vec![]
        }
    );
    drop(client);
    db.drop_db().await;
}

#[tokio::test]
async fn migrate_to_rejects_unknown_targets() {
    let db = TestDb::empty().await;
    let mut client = db.client().await;
    assert!(migrate::migrate_to(&mut client, LATEST + 1).await.is_err());
    assert!(migrate::upgrade(&mut client, LATEST + 1, true)
        .await
        .is_err());
    assert!(migrate::migrate_to(&mut client, -1).await.is_err());
    let report = migrate::migrate_to(&mut client, 0).await.unwrap();
    assert_eq!((report.from, report.to, report.applied.len()), (0, 0, 0));
    drop(client);
    db.drop_db().await;
}

const ONE: Migration = Migration {
    version: 1,
    name: "001_one.sql",
    sql: "CREATE TABLE t1 (x int);",
    transactional: true,
};

#[tokio::test]
async fn a_failing_migration_is_rolled_back_with_its_version() {
    let db = TestDb::empty().await;
    let mut client = db.client().await;
    let list = [
        ONE,
        Migration {
            version: 2,
            name: "002_boom.sql",
            sql: "CREATE TABLE t2 (x int); INSERT INTO t2 VALUES (1 / 0);",
            transactional: true,
        },
    ];
    let err = migrate::migrate_with(&mut client, &list, 2)
        .await
        .expect_err("fails");
    let msg = format!("{err:#}");
    assert!(msg.contains("002_boom.sql"), "{msg}");
    assert!(msg.contains("division by zero"), "{msg}");
    assert_eq!(version(&client).await, 1);
    assert_eq!(
        public_tables(&client).await,
        BTreeSet::from(["t1".to_string()])
    );
    assert!(lock_is_free(&db).await);
    // The connection is still usable.
    client.batch_execute("SELECT 1").await.unwrap();
    drop(client);
    db.drop_db().await;
}

#[tokio::test]
async fn a_migration_failing_at_commit_does_not_bump_the_version() {
    // setval alone survives a rollback; the version bump must not.
    let db = TestDb::empty().await;
    let mut client = db.client().await;
    let list = [
        ONE,
        Migration {
            version: 2,
            name: "002_fails_at_commit.sql",
            sql: "CREATE TABLE t2 (x int);
                  CREATE FUNCTION boom() RETURNS trigger LANGUAGE plpgsql AS $$
                  BEGIN RAISE EXCEPTION 'boom at commit'; END $$;
                  CREATE CONSTRAINT TRIGGER t2_boom AFTER INSERT ON t2
                      DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION boom();
                  INSERT INTO t2 VALUES (1);",
            transactional: true,
        },
    ];
    let err = migrate::migrate_with(&mut client, &list, 2)
        .await
        .expect_err("fails");
    let msg = format!("{err:#}");
    assert!(msg.contains("boom at commit"), "{msg}");
    assert_eq!(version(&client).await, 1);
    assert_eq!(
        public_tables(&client).await,
        BTreeSet::from(["t1".to_string()])
    );
    drop(client);
    db.drop_db().await;
}

#[tokio::test]
async fn an_invalid_index_from_a_failed_concurrent_build_is_rebuilt() {
    let db = TestDb::at_version(11).await;
    let mut client = db.client().await;
    insert_job_and_run(&client, "job-1", "run-1").await;
    insert_job_and_run(&client, "job-2", "run-2").await;
    // A concurrent build that fails leaves an INVALID index behind.
    let failed = client
        .batch_execute("CREATE UNIQUE INDEX CONCURRENTLY idx_job_submitted ON job (queue)")
        .await;
    assert!(failed.is_err());
    let valid: bool = client
        .query_one(
            "SELECT indisvalid FROM pg_index WHERE indexrelid = 'idx_job_submitted'::regclass",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(!valid);

    let report = migrate::migrate(&mut client).await.expect("migrate");
    assert_eq!(report.from, 11);
    assert_031_schema(&client).await;
    drop(client);
    db.drop_db().await;
}

#[tokio::test]
async fn an_interrupted_non_transactional_migration_is_repeated() {
    // As if a previous run built the index of 012 and died before the bump.
    let db = TestDb::at_version(11).await;
    let mut client = db.client().await;
    client
        .batch_execute("CREATE INDEX CONCURRENTLY idx_job_submitted ON job (submitted DESC)")
        .await
        .unwrap();
    let report = migrate::migrate_to(&mut client, 12).await.expect("migrate");
    assert_eq!(
        report.applied,
        vec![(12, "012_add_job_submitted_index.sql")]
    );
    migrate::migrate(&mut client).await.unwrap();
    assert_031_schema(&client).await;
    drop(client);
    db.drop_db().await;
}

// ---- Generations 032..035: `upgrade` (migrate --to N), --allow-drop, --status.

const TS: &str = "timestamp without time zone";

/// job_run's columns from 025 on, before any generation's own.
const JOB_RUN_BASE: &[(&str, &str)] = &[
    ("run_id", "character varying(36)"),
    ("job_id", "character varying(32)"),
    ("cluster", "character varying(512)"),
    ("node", "character varying(512)"),
    ("pending", TS),
    ("started", TS),
    ("finished", TS),
    ("job_run_state", "smallint"),
    ("error", "bytea"),
    ("exit_code", "integer"),
    ("leased", TS),
    ("debug", "bytea"),
    ("pool", "text"),
    ("ingress_addresses", "jsonb"),
];

/// Each generation's job_run columns after [`JOB_RUN_BASE`], in column order
/// (upstream's 031..035 files; all nullable, without default).
const GENERATION_COLUMNS: &[(i64, &[(&str, &str)])] = &[
    (31, &[("failure_info", "jsonb")]),
    (
        32,
        &[
            ("failure_info", "jsonb"),
            ("failure_category", "character varying(63)"),
            ("failure_subcategory", "character varying(63)"),
        ],
    ),
    (
        33,
        &[
            ("failure_category", "character varying(63)"),
            ("failure_subcategory", "character varying(63)"),
        ],
    ),
    (
        34,
        &[
            ("failure_category", "character varying(63)"),
            ("failure_subcategory", "character varying(63)"),
            ("scheduler_termination_reason", "jsonb"),
        ],
    ),
    (
        35,
        &[
            ("failure_category", "character varying(63)"),
            ("failure_subcategory", "character varying(63)"),
            ("scheduler_termination_reason", "jsonb"),
        ],
    ),
];

/// job_run's columns: name, type, and whether NULL and no default, in order.
async fn job_run_columns(client: &Client) -> Vec<(String, String)> {
    client
        .query(
            "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), \
                    NOT a.attnotnull AND NOT a.atthasdef \
             FROM pg_attribute a WHERE a.attrelid = 'job_run'::regclass \
               AND a.attnum > 0 AND NOT a.attisdropped ORDER BY a.attnum",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| {
            let name: String = r.get(0);
            let plain_nullable: bool = r.get(2);
            // Only the base columns may be NOT NULL or have a default.
            if !JOB_RUN_BASE.iter().any(|(n, _)| *n == name) {
                assert!(plain_nullable, "{name} must be nullable without default");
            }
            (name, r.get(1))
        })
        .collect()
}

fn expected_job_run_columns(generation: i64) -> Vec<(String, String)> {
    let extra = GENERATION_COLUMNS
        .iter()
        .find(|(g, _)| *g == generation)
        .map(|(_, c)| *c)
        .unwrap_or_else(|| panic!("no columns for {generation}"));
    JOB_RUN_BASE
        .iter()
        .chain(extra)
        .map(|(n, t)| (n.to_string(), t.to_string()))
        .collect()
}

/// The schema as the catalog describes it, one sorted line per fact:
/// columns (with their position, so a dropped column shows), constraints,
/// indexes, relations with their options, the version sequence and the
/// ingester's own bookkeeping. Two databases built the same way print the
/// same lines.
async fn catalog(client: &Client) -> Vec<String> {
    let mut lines = Vec::new();
    for sql in [
        "SELECT format('column %s.%s #%s %s notnull=%s default=%s storage=%s', \
                c.relname, a.attname, a.attnum, format_type(a.atttypid, a.atttypmod), \
                a.attnotnull, pg_get_expr(d.adbin, d.adrelid), a.attstorage) \
         FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid \
         LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum \
         WHERE c.relnamespace = 'public'::regnamespace AND c.relkind IN ('r', 'p') \
           AND a.attnum > 0 AND NOT a.attisdropped",
        "SELECT format('constraint %s.%s %s', conrelid::regclass, conname, pg_get_constraintdef(oid)) \
         FROM pg_constraint WHERE connamespace = 'public'::regnamespace",
        "SELECT format('index %s valid=%s', pg_get_indexdef(i.indexrelid), i.indisvalid) \
         FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
         WHERE c.relnamespace = 'public'::regnamespace",
        "SELECT format('relation %s kind=%s options=%s', relname, relkind, reloptions) \
         FROM pg_class WHERE relnamespace = 'public'::regnamespace",
        "SELECT format('database_version last_value=%s is_called=%s', last_value, is_called) \
         FROM database_version",
        "SELECT format('ingester migration %s %s', version, name) FROM lookout_ingester_schema_version",
    ] {
        for row in client
            .query(sql, &[])
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"))
        {
            lines.push(row.get::<_, String>(0));
        }
    }
    lines.sort();
    lines
}

async fn retry_tables_exist(client: &Client) -> (bool, bool) {
    let row = client
        .query_one(
            "SELECT to_regclass('retry_policy') IS NOT NULL, \
                    to_regclass('queue_retry_policy') IS NOT NULL",
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

/// 035's tables as upstream's server expects them: columns, the constraint
/// names it relies on, the index, and the cascades working.
async fn assert_retry_policy_tables(client: &Client) {
    let columns = json_rows(
        client,
        "SELECT c.relname AS table, a.attname AS column, \
                format_type(a.atttypid, a.atttypmod) AS type, a.attnotnull AS not_null \
         FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid \
         WHERE c.relname IN ('retry_policy', 'queue_retry_policy') \
           AND c.relnamespace = 'public'::regnamespace AND a.attnum > 0 AND NOT a.attisdropped \
         ORDER BY c.relname, a.attnum",
        &[],
    )
    .await;
    assert_eq!(
        columns,
        [
            json!({"table": "queue_retry_policy", "column": "queue_name", "type": "text", "not_null": true}),
            json!({"table": "queue_retry_policy", "column": "policy_name", "type": "text", "not_null": true}),
            json!({"table": "queue_retry_policy", "column": "ordinal", "type": "integer", "not_null": true}),
            json!({"table": "retry_policy", "column": "name", "type": "text", "not_null": true}),
            json!({"table": "retry_policy", "column": "definition", "type": "bytea", "not_null": true}),
        ]
    );
    let constraints = json_rows(
        client,
        "SELECT conrelid::regclass::text AS table, conname AS name, pg_get_constraintdef(oid) AS def \
         FROM pg_constraint \
         WHERE conrelid IN ('retry_policy'::regclass, 'queue_retry_policy'::regclass) \
         ORDER BY 1, 2",
        &[],
    )
    .await;
    assert_eq!(
        constraints,
        [
            json!({"table": "queue_retry_policy", "name": "queue_retry_policy_pkey",
                   "def": "PRIMARY KEY (queue_name, policy_name)"}),
            json!({"table": "queue_retry_policy", "name": "queue_retry_policy_policy_name_fkey",
                   "def": "FOREIGN KEY (policy_name) REFERENCES retry_policy(name) ON DELETE CASCADE"}),
            json!({"table": "queue_retry_policy", "name": "queue_retry_policy_queue_name_fkey",
                   "def": "FOREIGN KEY (queue_name) REFERENCES queue(name) ON DELETE CASCADE"}),
            json!({"table": "retry_policy", "name": "retry_policy_pkey", "def": "PRIMARY KEY (name)"}),
        ]
    );
    let indexes = json_rows(
        client,
        "SELECT c.relname AS name, pg_get_indexdef(i.indexrelid) AS def \
         FROM pg_index i JOIN pg_class c ON c.oid = i.indexrelid \
         WHERE i.indrelid IN ('retry_policy'::regclass, 'queue_retry_policy'::regclass) \
         ORDER BY 1",
        &[],
    )
    .await;
    assert_eq!(
        indexes,
        [
            json!({"name": "idx_queue_retry_policy_policy_name",
                   "def": "CREATE INDEX idx_queue_retry_policy_policy_name ON public.queue_retry_policy USING btree (policy_name)"}),
            json!({"name": "queue_retry_policy_pkey",
                   "def": "CREATE UNIQUE INDEX queue_retry_policy_pkey ON public.queue_retry_policy USING btree (queue_name, policy_name)"}),
            json!({"name": "retry_policy_pkey",
                   "def": "CREATE UNIQUE INDEX retry_policy_pkey ON public.retry_policy USING btree (name)"}),
        ]
    );
    // Deleting a queue or a policy takes its assignments with it, in a
    // transaction rolled back so the database stays as migrate left it.
    client
        .batch_execute(
            "BEGIN;
             INSERT INTO queue (name, definition) VALUES ('q1', '\\x01'), ('q2', '\\x02');
             INSERT INTO retry_policy (name, definition) VALUES ('p1', '\\x03'), ('p2', '\\x04');
             INSERT INTO queue_retry_policy VALUES ('q1', 'p1', 0), ('q1', 'p2', 1), ('q2', 'p2', 0);
             DELETE FROM queue WHERE name = 'q2';
             DELETE FROM retry_policy WHERE name = 'p1';",
        )
        .await
        .unwrap();
    let left = json_rows(
        client,
        "SELECT * FROM queue_retry_policy ORDER BY 1, 2",
        &[],
    )
    .await;
    client.batch_execute("ROLLBACK").await.unwrap();
    assert_eq!(
        left,
        [json!({"queue_name": "q1", "policy_name": "p2", "ordinal": 1})]
    );
    let unknown_queue = client
        .execute(
            "INSERT INTO queue_retry_policy VALUES ('nope', 'p', 0)",
            &[],
        )
        .await
        .expect_err("foreign key");
    assert_eq!(
        unknown_queue.code(),
        Some(&tokio_postgres::error::SqlState::FOREIGN_KEY_VIOLATION)
    );
}

fn detected(generation: Generation, version: i64) -> Detected {
    Detected {
        generation,
        version: Some(version),
        hot_cold: false,
    }
}

/// Runs `lookout-ingester migrate --database-url <db> args…`.
async fn migrate_cli(db: &TestDb, args: &[&str]) -> CliOutput {
    common::migrate_cli(&db.url, args).await
}

/// Runs `migrate args…` through the binary; asserts its exit code and
/// everything it printed on stdout.
async fn assert_migrate_prints(db: &TestDb, args: &[&str], code: i32, stdout: &str) {
    let out = migrate_cli(db, args).await;
    assert_eq!(
        (out.code, out.stdout.as_str()),
        (Some(code), stdout),
        "migrate {args:?}\n{}",
        out.stderr
    );
}

/// Runs with failure_info (two set, one NULL), as a 031 ingester wrote them.
async fn insert_runs_with_failure_info(client: &Client) {
    insert_job_and_run(client, "job-1", "run-1").await;
    insert_job_and_run(client, "job-2", "run-2").await;
    insert_job_and_run(client, "job-3", "run-3").await;
    client
        .batch_execute(
            "UPDATE job_run SET failure_info = '{\"exitCode\": 137}', exit_code = 137 WHERE run_id = 'run-1';
             UPDATE job_run SET failure_info = '{\"containerName\": \"main\"}' WHERE run_id = 'run-2';",
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn each_generation_has_upstreams_job_run_columns() {
    let db = TestDb::empty().await;
    let mut client = db.client().await;
    let report = migrate::upgrade(&mut client, 31, false).await.unwrap();
    assert_eq!((report.from, report.to, report.target), (0, 31, 31));
    for target in 31..=35 {
        if target > 31 {
            let report = migrate::upgrade(&mut client, target, false).await.unwrap();
            let (version, name) = *migrate::migrations()
                .iter()
                .find(|m| m.version == target)
                .map(|m| (m.version, m.name))
                .as_ref()
                .unwrap();
            assert_eq!(
                report,
                migrate::Report {
                    from: target - 1,
                    to: target,
                    target,
                    applied: vec![(version, name)],
                    own_applied: vec![],
                    // 033 on a database without rows in failure_info.
                    failure_info_dropped: (target == 33).then_some(0),
                },
                "to {target}"
            );
        }
        assert_eq!(version(&client).await, target);
        assert_eq!(
            job_run_columns(&client).await,
            expected_job_run_columns(target),
            "generation {target}"
        );
        let generation = Generation::from_number(target).unwrap();
        assert_eq!(
            schema::detect(&client).await.unwrap(),
            detected(generation, target)
        );
        let retry = target >= 35;
        assert_eq!(
            retry_tables_exist(&client).await,
            (retry, retry),
            "{target}"
        );
    }
    assert_retry_policy_tables(&client).await;
    // The other tables are those of 031 (plus the two new ones).
    let mut expected: BTreeSet<String> = public_tables(&db.client().await).await;
    expected.remove("retry_policy");
    expected.remove("queue_retry_policy");
    assert_eq!(
        expected,
        [
            "ingester_dead_letter",
            "ingester_heartbeat",
            "job",
            "job_deduplication",
            "job_error",
            "job_run",
            "job_spec",
            "lookout_ingester_schema_version",
            "queue"
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    );
    drop(client);
    db.drop_db().await;
}

#[tokio::test]
async fn step_by_step_and_straight_to_035_build_the_same_catalog() {
    // Step by step: 031, then one generation at a time.
    let steps = TestDb::empty().await;
    let mut a = steps.client().await;
    migrate::migrate(&mut a).await.unwrap();
    for target in 32..=35 {
        migrate::upgrade(&mut a, target, false).await.unwrap();
    }
    // From 031 straight to 035.
    let jump = TestDb::empty().await;
    let mut b = jump.client().await;
    migrate::migrate(&mut b).await.unwrap();
    let report = migrate::upgrade(&mut b, LATEST, false).await.unwrap();
    assert_eq!(names(&report.applied), [32, 33, 34, 35]);
    // From nothing straight to the latest.
    let fresh = TestDb::empty().await;
    let mut c = fresh.client().await;
    let report = migrate::upgrade(&mut c, LATEST, false).await.unwrap();
    assert_eq!(names(&report.applied), (1..=35).collect::<Vec<_>>());

    let want = catalog(&a).await;
    assert!(want
        .iter()
        .any(|l| l.starts_with("column job_run.scheduler_termination_reason #")));
    assert!(want.contains(&"database_version last_value=35 is_called=t".to_string()));
    assert!(
        !want.iter().any(|l| l.contains("failure_info")),
        "{want:#?}"
    );
    assert_eq!(catalog(&b).await, want);
    assert_eq!(catalog(&c).await, want);
    drop((a, b, c));
    steps.drop_db().await;
    jump.drop_db().await;
    fresh.drop_db().await;
}

#[tokio::test]
async fn a_target_below_the_current_version_changes_nothing() {
    let db = TestDb::empty().await;
    let mut client = db.client().await;
    migrate::upgrade(&mut client, 34, false).await.unwrap();
    let before = catalog(&client).await;
    for target in [31, 32, 33, 34] {
        let report = migrate::upgrade(&mut client, target, false).await.unwrap();
        assert_eq!(
            report,
            migrate::Report {
                from: 34,
                to: 34,
                target,
                applied: vec![],
                own_applied: vec![],
                failure_info_dropped: None,
            }
        );
    }
    assert_eq!(catalog(&client).await, before);

    assert_migrate_prints(
        &db,
        &["--to", "32"],
        0,
        "database at version 34, past the target 32; nothing changed (migrations never go backwards)\n",
    )
    .await;
    assert_migrate_prints(
        &db,
        &[],
        0,
        "database at version 34, past the target 31; nothing changed (migrations never go backwards)\n",
    )
    .await;
    assert_migrate_prints(
        &db,
        &["--to", "34"],
        0,
        "database at version 34; nothing to apply\n",
    )
    .await;
    assert_eq!(catalog(&client).await, before);

    // Unknown targets are usage errors, before connecting.
    for bad in ["36", "30", "newest"] {
        let out = migrate_cli(&db, &["--to", bad]).await;
        assert_eq!(out.code, Some(2), "--to {bad}: {}", out.stderr);
        assert!(out.stderr.contains("--to"), "{}", out.stderr);
    }
    let out = migrate_cli(&db, &["--to", "36"]).await;
    assert!(
        out.stderr
            .contains("this binary knows migrations up to 035; 036 is unknown to it"),
        "{}",
        out.stderr
    );
    assert_eq!(catalog(&client).await, before);
    drop(client);
    db.drop_db().await;
}

#[tokio::test]
async fn dropping_failure_info_needs_allow_drop_and_says_how_many() {
    let db = TestDb::migrated().await;
    let mut client = db.client().await;
    insert_runs_with_failure_info(&client).await;
    let before = catalog(&client).await;

    // Refused before anything is applied, even 032.
    let err = migrate::upgrade(&mut client, LATEST, false)
        .await
        .expect_err("refused");
    assert_eq!(
        err.downcast_ref::<DropRefused>(),
        Some(&DropRefused { rows: 2, at: 31 })
    );
    assert_eq!(catalog(&client).await, before);
    assert!(lock_is_free(&db).await);

    // The CLI: exit 1, the count and the way forward.
    let out = migrate_cli(&db, &["--to", "33"]).await;
    assert_eq!(out.code, Some(1), "{}", out.stdout);
    assert_eq!(out.stdout, "");
    assert!(
        out.stderr.contains(
            "error: migration 033 drops job_run.failure_info, which 2 run(s) still hold; \
             refusing without --allow-drop, the database stays at version 31. Rerun with \
             --allow-drop to drop that data, or with --to 32 to stop before 033"
        ),
        "{}",
        out.stderr
    );
    assert_eq!(catalog(&client).await, before);

    // 032 keeps failure_info: no flag needed.
    assert_migrate_prints(
        &db,
        &["--to", "32"],
        0,
        "migrated from version 31 to 32 (1 applied)\n",
    )
    .await;
    let out = migrate_cli(&db, &["--to", "latest"]).await;
    assert_eq!(out.code, Some(1));
    assert!(
        out.stderr.contains("which 2 run(s) still hold") && out.stderr.contains("at version 32"),
        "{}",
        out.stderr
    );
    assert_eq!(version(&client).await, 32);

    // With the flag: dropped, counted, the rest of each row kept.
    assert_migrate_prints(
        &db,
        &["--to", "latest", "--allow-drop"],
        0,
        "migrated from version 32 to 35 (3 applied)\ndropped job_run.failure_info (2 run(s) held one)\n",
    )
    .await;
    assert_eq!(job_run_columns(&client).await, expected_job_run_columns(35));
    let rows = json_rows(
        &client,
        "SELECT run_id, job_id, exit_code, failure_category, scheduler_termination_reason \
         FROM job_run ORDER BY run_id",
        &[],
    )
    .await;
    let row = |run: &str, job: &str, exit: Option<i32>| {
        json!({"run_id": run, "job_id": job, "exit_code": exit, "failure_category": null,
               "scheduler_termination_reason": null})
    };
    assert_eq!(
        rows,
        [
            row("run-1", "job-1", Some(137)),
            row("run-2", "job-2", None),
            row("run-3", "job-3", None)
        ]
    );
    drop(client);
    db.drop_db().await;
}

#[tokio::test]
async fn failure_info_that_is_all_null_is_dropped_without_the_flag() {
    let db = TestDb::migrated().await;
    let mut client = db.client().await;
    insert_job_and_run(&client, "job-1", "run-1").await;
    let report = migrate::upgrade(&mut client, 33, false).await.unwrap();
    assert_eq!(names(&report.applied), [32, 33]);
    assert_eq!(report.failure_info_dropped, Some(0));
    assert_eq!(job_run_columns(&client).await, expected_job_run_columns(33));
    drop(client);
    db.drop_db().await;
}

#[tokio::test]
async fn failure_info_written_while_migrating_is_not_dropped_unasked() {
    // An ingester's transaction adds a failure_info row after the up-front
    // count: 032 waits for it, and 033 counts again under its lock.
    let db = TestDb::migrated().await;
    let mut client = db.client().await;
    let mut writer = db.client().await;
    let tx = writer.transaction().await.unwrap();
    tx.execute(
        "INSERT INTO job_run (run_id, job_id, cluster, job_run_state, failure_info) \
         VALUES ('run-late', 'job-late', 'c', 5, '{\"exitCode\": 1}')",
        &[],
    )
    .await
    .unwrap();
    let watcher = db.client().await;
    let migration = tokio::spawn(async move {
        let result = migrate::upgrade(&mut client, LATEST, false).await;
        (client, result)
    });
    // Wait until the migration is blocked on job_run (032's ALTER TABLE).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let waiting: i64 = watcher
            .query_one(
                "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = 'job_run'::regclass",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        if waiting > 0 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the migration never waited for job_run"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    tx.commit().await.unwrap();
    let (client, result) = migration.await.unwrap();
    let err = result.expect_err("refused at 033");
    assert_eq!(
        err.downcast_ref::<DropRefused>(),
        Some(&DropRefused { rows: 1, at: 32 }),
        "{err:#}"
    );
    assert_eq!(version(&client).await, 32);
    assert_eq!(job_run_columns(&client).await, expected_job_run_columns(32));
    assert_eq!(
        json_rows(&client, "SELECT run_id, failure_info FROM job_run", &[]).await,
        [json!({"run_id": "run-late", "failure_info": {"exitCode": 1}})]
    );
    assert!(lock_is_free(&db).await);
    drop((client, writer, watcher));
    db.drop_db().await;
}

/// `migrate --status` through the binary; exit code and stdout.
async fn status_cli(db: &TestDb) -> (Option<i32>, String) {
    let out = migrate_cli(db, &["--status"]).await;
    (out.code, out.stdout)
}

const BEYOND_031: &str = "available beyond it (migrate --to N, or --to latest):
  032 032_add_failure_category_to_job_run.sql
";

#[tokio::test]
async fn status_at_several_generations() {
    let db = TestDb::empty().await;
    let mut client = db.client().await;

    // Never migrated: everything pending, nothing created.
    let (code, out) = status_cli(&db).await;
    assert_eq!(code, Some(0));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines[..6],
        [
            "database version: 0",
            "binary's latest:  35",
            "default target:   31",
            "generation:       none: the Lookout tables are missing (no job table): run `lookout-ingester migrate` first",
            "pending up to the default target 031:",
            "  001 001_initial_schema.sql",
        ]
    );
    assert_eq!(
        lines[35..],
        [
            "  031 031_add_failure_info_to_job_run.sql",
            "available beyond it (migrate --to N, or --to latest):",
            "  032 032_add_failure_category_to_job_run.sql",
            "  033 033_drop_failure_info_from_job_run.sql",
            "  034 034_add_scheduler_termination_reason.sql",
            "  035 035_create_retry_policy.sql",
            "ingester tables pending (migrations/ingester):",
            "  0001 0001_dead_letter.sql",
            "  0002 0002_dead_letter_unapplied_events.sql",
            "  0003 0003_heartbeat.sql",
        ]
    );
    assert!(public_tables(&client).await.is_empty());

    // 031 with rows in failure_info.
    migrate::migrate(&mut client).await.unwrap();
    insert_runs_with_failure_info(&client).await;
    assert_eq!(
        status_cli(&db).await,
        (
            Some(0),
            format!(
                "database version: 31
binary's latest:  35
default target:   31
generation:       031 (from job_run's columns)
pending up to the default target 031: none
{BEYOND_031}  033 033_drop_failure_info_from_job_run.sql (drops the failure_info of 2 run(s): needs --allow-drop)
  034 034_add_scheduler_termination_reason.sql
  035 035_create_retry_policy.sql
ingester tables: up to date
"
            )
        )
    );

    // 033.
    migrate::upgrade(&mut client, 33, true).await.unwrap();
    assert_eq!(
        status_cli(&db).await,
        (
            Some(0),
            "database version: 33
binary's latest:  35
default target:   31
generation:       033 (from job_run's columns)
pending up to the default target 031: none
available beyond it (migrate --to N, or --to latest):
  034 034_add_scheduler_termination_reason.sql
  035 035_create_retry_policy.sql
ingester tables: up to date
"
            .to_string()
        )
    );

    // 035.
    migrate::upgrade(&mut client, 35, false).await.unwrap();
    let at_035 = "database version: 35
binary's latest:  35
default target:   31
generation:       035 (from job_run's columns)
pending up to the default target 031: none
available beyond it (migrate --to N, or --to latest): none
ingester tables: up to date
";
    assert_eq!(status_cli(&db).await, (Some(0), at_035.to_string()));

    // Newer than the binary: the same facts, and a non-zero exit.
    client
        .batch_execute("SELECT setval('database_version', 99)")
        .await
        .unwrap();
    let out = migrate_cli(&db, &["--status"]).await;
    assert_eq!(out.code, Some(1));
    assert_eq!(
        out.stdout,
        "database version: 99
binary's latest:  35
default target:   31
generation:       035 (from job_run's columns; database_version says 99)
the database is newer than this binary; migrate will not touch it
"
    );
    assert!(
        out.stderr.contains(
            "error: the database's schema version 99 is newer than this binary's latest (35)"
        ),
        "{}",
        out.stderr
    );
    drop(client);
    db.drop_db().await;
}

#[tokio::test]
async fn a_version_lagging_its_columns_is_reported_as_the_columns_say() {
    let db = TestDb::empty().await;
    let mut client = db.client().await;
    migrate::upgrade(&mut client, LATEST, false).await.unwrap();
    let want = catalog(&client).await;
    // As if upstream's setval after 034 and 035 had been lost.
    client
        .batch_execute("SELECT setval('database_version', 33)")
        .await
        .unwrap();
    let status = migrate::status(&client).await.unwrap();
    assert_eq!(status.current, 33);
    assert_eq!(status.detected, Ok(detected(Generation::G035, 33)));
    assert_eq!(
        status_cli(&db).await,
        (
            Some(0),
            "database version: 33
binary's latest:  35
default target:   31
generation:       035 (from job_run's columns; database_version says 33)
pending up to the default target 031: none
available beyond it (migrate --to N, or --to latest):
  034 034_add_scheduler_termination_reason.sql
  035 035_create_retry_policy.sql
ingester tables: up to date
"
            .to_string()
        )
    );
    // The files are idempotent: migrating brings the number up to the
    // columns and the catalog is the one of a database built straight.
    let report = migrate::upgrade(&mut client, LATEST, false).await.unwrap();
    assert_eq!(names(&report.applied), [34, 35]);
    assert_eq!(catalog(&client).await, want);

    // Back to 31 by hand with 035's columns: 032..035 reapply, and 033 needs
    // no flag, the column being already gone.
    client
        .batch_execute("SELECT setval('database_version', 31)")
        .await
        .unwrap();
    assert_eq!(
        schema::detect(&client).await.unwrap(),
        detected(Generation::G035, 31)
    );
    assert_migrate_prints(
        &db,
        &["--to", "latest"],
        0,
        "migrated from version 31 to 35 (4 applied)\n",
    )
    .await;
    assert_eq!(catalog(&client).await, want);
    drop(client);
    db.drop_db().await;
}

#[tokio::test]
async fn a_hot_cold_database_is_shown_and_migrated_like_any_other() {
    let db = TestDb::empty().await;
    let mut client = db.client().await;
    migrate::upgrade(&mut client, 33, false).await.unwrap();
    // A job table partitioned by state, as upstream's partitioner leaves it
    // (only the facts detection and the migrations depend on).
    client
        .batch_execute(
            "DROP TABLE job;
             CREATE TABLE job (job_id varchar(32) NOT NULL, state smallint NOT NULL,
                               PRIMARY KEY (job_id, state)) PARTITION BY LIST (state);
             CREATE TABLE job_active PARTITION OF job FOR VALUES IN (1, 2, 3, 8);
             CREATE TABLE job_terminated PARTITION OF job FOR VALUES IN (4, 5, 6, 7, 9);",
        )
        .await
        .unwrap();
    let hot_cold = |generation: &str| {
        format!(
            "generation:       {generation} (from job_run's columns)
job table:        partitioned by state (upstream's hot/cold split)
"
        )
    };
    let (code, out) = status_cli(&db).await;
    assert_eq!(code, Some(0));
    assert!(out.contains(&hot_cold("033")), "{out}");
    assert_migrate_prints(
        &db,
        &["--to", "latest"],
        0,
        "migrated from version 33 to 35 (2 applied)\n",
    )
    .await;
    assert_eq!(
        schema::detect(&client).await.unwrap(),
        Detected {
            generation: Generation::G035,
            version: Some(35),
            hot_cold: true
        }
    );
    assert_eq!(
        status_cli(&db).await,
        (
            Some(0),
            format!(
                "database version: 35
binary's latest:  35
default target:   31
{}pending up to the default target 031: none
available beyond it (migrate --to N, or --to latest): none
ingester tables: up to date
",
                hot_cold("035")
            )
        )
    );
    drop(client);
    db.drop_db().await;
}
