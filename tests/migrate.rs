//! Schema migrations against a real Postgres (see tests/common).

mod common;

use std::collections::BTreeSet;

use common::{json_row, json_rows, TestDb};
use lookout_ingester::migrate::{self, Migration, MIGRATION_LOCK_KEY};
use serde_json::json;
use tokio_postgres::Client;

const LATEST: i64 = 31;

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

/// The schema `migrate` must leave behind: the same as Armada's 001..031.
async fn assert_latest_schema(client: &Client) {
    assert_eq!(version(client).await, LATEST);
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
    assert_eq!(own, [json!({"version": 1, "name": "0001_dead_letter.sql"})]);

    // Columns: order, types, nullability.
    let rows = client
        .query(
            "SELECT c.relname::text, a.attname::text, format_type(a.atttypid, a.atttypmod), NOT a.attnotnull \
             FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid \
             WHERE c.relnamespace = 'public'::regnamespace AND c.relkind = 'r' AND c.relname NOT IN ('ingester_dead_letter', 'lookout_ingester_schema_version') \
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
    const TS: &str = "timestamp without time zone";
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
             WHERE c.relnamespace = 'public'::regnamespace AND a.attnum > 0 AND a.attstorage = 'e' AND c.relname NOT IN ('ingester_dead_letter', 'lookout_ingester_schema_version') ORDER BY 1",
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
             WHERE relnamespace = 'public'::regnamespace AND relkind = 'r' AND relname NOT IN ('ingester_dead_letter', 'lookout_ingester_schema_version') ORDER BY 1",
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
               AND i.indrelid::regclass::text NOT IN ('ingester_dead_letter', 'lookout_ingester_schema_version')",
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
    assert_eq!(report.to, LATEST);
    assert_eq!(names(&report.applied), (1..=LATEST).collect::<Vec<_>>());
    assert_eq!(
        report.applied[30],
        (31, "031_add_failure_info_to_job_run.sql")
    );
    assert_latest_schema(&client).await;
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
    assert_latest_schema(&client).await;

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
    assert_eq!(first.applied.len(), LATEST as usize);
    let second = migrate::migrate(&mut client).await.expect("second");
    assert_eq!(
        second,
        migrate::Report {
            from: LATEST,
            to: LATEST,
            applied: vec![],
            own_applied: vec![]
        }
    );
    // A fresh connection too.
    let mut other = db.client().await;
    let third = migrate::migrate(&mut other).await.expect("third");
    assert!(third.applied.is_empty());
    assert_latest_schema(&client).await;
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
    assert_eq!(all, (1..=LATEST).collect::<Vec<_>>(), "{ra:?} / {rb:?}");
    // The lock serialises whole runs: one did everything, the other nothing.
    assert!(
        ra.applied.is_empty() || rb.applied.is_empty(),
        "{ra:?} / {rb:?}"
    );
    assert_eq!((ra.to, rb.to), (LATEST, LATEST));
    assert_latest_schema(&a).await;
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
    assert!(msg.contains("31"), "{msg}");
    assert_eq!(version(&client).await, 99);
    assert!(public_tables(&client).await.is_empty());
    let status = migrate::status(&client).await.unwrap();
    assert_eq!((status.current, status.latest), (99, LATEST));
    assert!(status.pending.is_empty());
    // migrate_to refuses too.
    assert!(migrate::migrate_to(&mut client, 5).await.is_err());
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
    assert_eq!(status.pending.len(), 31);
    let all: Vec<(i64, &'static str)> = migrate::migrations()
        .iter()
        .map(|m| (m.version, m.name))
        .collect();
    assert_eq!(status.pending, all);
    let sequence: Option<String> = client
        .query_one("SELECT to_regclass('database_version')::text", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(sequence, None, "status must not create the sequence");

    migrate::migrate_to(&mut client, 12).await.unwrap();
    let status = migrate::status(&client).await.unwrap();
    assert_eq!(status.current, 12);
    assert_eq!(names(&status.pending), (13..=LATEST).collect::<Vec<_>>());

    migrate::migrate(&mut client).await.unwrap();
    let status = migrate::status(&client).await.unwrap();
    assert_eq!(
        status,
        migrate::Status {
            current: LATEST,
            latest: LATEST,
            pending: vec![],
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
    let db = TestDb::empty().await;
    let mut client = db.client().await;
    migrate::migrate_to(&mut client, 11).await.unwrap();
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
    assert_latest_schema(&client).await;
    drop(client);
    db.drop_db().await;
}

#[tokio::test]
async fn an_interrupted_non_transactional_migration_is_repeated() {
    // As if a previous run built the index of 012 and died before the bump.
    let db = TestDb::empty().await;
    let mut client = db.client().await;
    migrate::migrate_to(&mut client, 11).await.unwrap();
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
    assert_latest_schema(&client).await;
    drop(client);
    db.drop_db().await;
}
