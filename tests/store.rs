//! The store against a real Postgres: every test gets its own migrated database.

mod common;

use chrono::NaiveDateTime;
use common::{bytea, dump, dump_rows, hotcold, json_row, json_rows, TestDb};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use lookout_ingester::model::{
    job_state, run_state, CreateJob, CreateJobError, CreateJobRun, Generation, InstructionSet,
    UpdateJob, UpdateJobRun,
};
use lookout_ingester::store::retry::{classify, ErrorClass};
use lookout_ingester::store::schema::SchemaError;
use lookout_ingester::store::{
    connect_pool, Operation, Store, StoreError, StoreSettings, Table, Unmatched, WriteReport,
};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::time::{Duration, Instant};
use tokio_postgres::{Client, NoTls};

fn ts(secs: i64) -> NaiveDateTime {
    chrono::DateTime::from_timestamp(1_700_000_000 + secs, 123_456_000)
        .unwrap()
        .naive_utc()
}

fn fast() -> StoreSettings {
    StoreSettings {
        max_backoff: Duration::from_millis(10),
        max_retries: Some(50),
        retry_for: None,
        fatal_errors: vec![],
    }
}

/// A pool whose sessions run with extra server options (e.g. `-c lock_timeout=50ms`).
fn pool_with_options(url: &str, options: &str) -> Pool {
    let mut cfg: tokio_postgres::Config = url.parse().unwrap();
    cfg.options(options);
    let mgr = Manager::from_config(
        cfg,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(mgr)
        .max_size(2)
        .runtime(Runtime::Tokio1)
        .build()
        .unwrap()
}

async fn store(db: &TestDb, settings: StoreSettings) -> Store {
    Store::new(connect_pool(&db.url, 2).await.unwrap(), settings)
}

fn job(id: &str) -> CreateJob {
    let mut annotations = BTreeMap::new();
    annotations.insert("team".to_string(), "blue".to_string());
    annotations.insert("a/b".to_string(), "c \"quoted\"".to_string());
    CreateJob {
        job_id: id.to_string(),
        queue: "queue-a".to_string(),
        owner: "alice".to_string(),
        namespace: "ns".to_string(),
        jobset: "set-1".to_string(),
        cpu: 1500,
        memory: 2 << 30,
        ephemeral_storage: 10 << 30,
        gpu: 2,
        priority: 7,
        submitted: ts(0),
        state: job_state::QUEUED,
        last_transition_time: ts(1),
        last_transition_time_seconds: 1_700_000_001,
        job_spec: vec![0x78, 0x9c, 0, 1, 2, 255],
        priority_class: Some("armada-default".to_string()),
        annotations,
        external_job_uri: "https://example.com/job".to_string(),
    }
}

fn job_in(id: &str, state: i16) -> CreateJob {
    CreateJob { state, ..job(id) }
}

fn run(run_id: &str, job_id: &str) -> CreateJobRun {
    CreateJobRun {
        run_id: run_id.to_string(),
        job_id: job_id.to_string(),
        cluster: "cluster-1".to_string(),
        node: Some("node-1".to_string()),
        pool: "default".to_string(),
        leased: Some(ts(2)),
        pending: None,
        job_run_state: run_state::LEASED,
    }
}

fn upd(id: &str) -> UpdateJob {
    UpdateJob {
        job_id: id.to_string(),
        ..Default::default()
    }
}

fn run_upd(id: &str) -> UpdateJobRun {
    UpdateJobRun {
        run_id: id.to_string(),
        ..Default::default()
    }
}

async fn write(store: &Store, set: InstructionSet) -> WriteReport {
    store.write(set, Generation::G031).await.unwrap()
}

/// A stored timestamp as `to_jsonb` writes it (the fixtures' are all at
/// 123456 µs, so six digits).
fn stamp(t: NaiveDateTime) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6f").to_string()
}

/// The whole `job` row that creating `j` stores: every column, so a column
/// added to the table fails the comparison until it is added here.
fn job_row(j: &CreateJob) -> Value {
    json!({
        "job_id": j.job_id,
        "queue": j.queue,
        "owner": j.owner,
        "namespace": j.namespace,
        "jobset": j.jobset,
        "cpu": j.cpu,
        "memory": j.memory,
        "ephemeral_storage": j.ephemeral_storage,
        "gpu": j.gpu,
        "priority": j.priority,
        "submitted": stamp(j.submitted),
        "cancelled": null,
        "state": j.state,
        "last_transition_time": stamp(j.last_transition_time),
        "last_transition_time_seconds": j.last_transition_time_seconds,
        // The spec has a table of its own.
        "job_spec": null,
        "duplicate": false,
        "priority_class": j.priority_class,
        "latest_run_id": null,
        "cancel_reason": null,
        "cancel_user": null,
        "annotations": j.annotations,
        "external_job_uri": j.external_job_uri,
    })
}

/// The whole `job_run` row that creating `r` stores (see [`job_row`]).
fn run_row(r: &CreateJobRun) -> Value {
    json!({
        "run_id": r.run_id,
        "job_id": r.job_id,
        "cluster": r.cluster,
        "node": r.node,
        "pool": r.pool,
        "leased": r.leased.map(stamp),
        "pending": r.pending.map(stamp),
        "started": null,
        "finished": null,
        "job_run_state": r.job_run_state,
        "error": null,
        "exit_code": null,
        "debug": null,
        "ingress_addresses": null,
        "failure_info": null,
    })
}

/// `row` with the columns in `changes` replaced.
fn with(mut row: Value, changes: Value) -> Value {
    if let (Some(row), Value::Object(changes)) = (row.as_object_mut(), changes) {
        row.extend(changes);
    }
    row
}

/// The stored `job` row of `id`, whole.
async fn job_of(c: &Client, id: &str) -> Value {
    json_row(c, "SELECT * FROM job WHERE job_id = $1", &[&id]).await
}

/// The stored `job_run` row of `id`, whole.
async fn run_of(c: &Client, id: &str) -> Value {
    json_row(c, "SELECT * FROM job_run WHERE run_id = $1", &[&id]).await
}

/// `(table, key)` of every unmatched update, in report order.
fn unmatched(report: &WriteReport) -> Vec<(&'static str, String)> {
    report
        .unmatched
        .iter()
        .map(|u| (u.table.as_str(), u.key.clone()))
        .collect()
}

#[tokio::test]
async fn creations_land_with_exact_values() {
    let db = TestDb::migrated().await;
    let c = db.client().await;
    let s = store(&db, fast()).await;

    let j = job("job-1");
    let bare = CreateJob {
        priority_class: None,
        annotations: BTreeMap::new(),
        ..job("job-2")
    };
    let r = run("run-1", "job-1");
    let e = CreateJobError {
        job_id: "job-2".into(),
        error: vec![1, 2, 3, 0, 4],
    };
    let report = write(
        &s,
        InstructionSet {
            jobs_to_create: vec![j.clone(), bare.clone()],
            runs_to_create: vec![r.clone()],
            job_errors_to_create: vec![e.clone()],
            ..Default::default()
        },
    )
    .await;
    assert_eq!(report.job_inserted.attempted, 2);
    assert_eq!(report.job_inserted.affected, 2);
    assert_eq!(report.job_spec_inserted.affected, 2);
    assert_eq!(report.job_run_inserted.affected, 1);
    assert_eq!(report.job_error_inserted.affected, 1);
    assert!(report.failed.is_empty());
    assert!(!report.fell_back);

    assert_eq!(job_of(&c, "job-1").await, job_row(&j));
    assert_eq!(job_of(&c, "job-2").await, job_row(&bare));
    let specs = json_rows(&c, "SELECT * FROM job_spec ORDER BY job_id", &[]).await;
    assert_eq!(
        specs,
        [
            json!({"job_id": "job-1", "job_spec": bytea(&j.job_spec)}),
            json!({"job_id": "job-2", "job_spec": bytea(&bare.job_spec)}),
        ]
    );
    assert_eq!(run_of(&c, "run-1").await, run_row(&r));
    let errors = json_rows(&c, "SELECT * FROM job_error", &[]).await;
    assert_eq!(
        errors,
        [json!({"job_id": "job-2", "error": bytea(&e.error)})]
    );
    db.drop_db().await;
}

#[tokio::test]
async fn updates_keep_columns_they_lack() {
    let db = TestDb::migrated().await;
    let c = db.client().await;
    let s = store(&db, fast()).await;
    write(
        &s,
        InstructionSet {
            jobs_to_create: vec![job("job-1")],
            runs_to_create: vec![run("run-1", "job-1")],
            ..Default::default()
        },
    )
    .await;

    // Only the state, then only the latest run id.
    let report = write(
        &s,
        InstructionSet {
            jobs_to_update: vec![UpdateJob {
                state: Some(job_state::RUNNING),
                ..upd("job-1")
            }],
            runs_to_update: vec![UpdateJobRun {
                started: Some(ts(10)),
                job_run_state: Some(run_state::RUNNING),
                ..run_upd("run-1")
            }],
            ..Default::default()
        },
    )
    .await;
    assert_eq!(report.job_updated.affected, 1);
    assert_eq!(report.job_run_updated.affected, 1);
    write(
        &s,
        InstructionSet {
            jobs_to_update: vec![UpdateJob {
                latest_run_id: Some("run-1".into()),
                ..upd("job-1")
            }],
            ..Default::default()
        },
    )
    .await;
    let created_job = job_row(&job("job-1"));
    let created_run = run_row(&run("run-1", "job-1"));
    assert_eq!(
        job_of(&c, "job-1").await,
        with(
            created_job.clone(),
            json!({"state": job_state::RUNNING, "latest_run_id": "run-1"})
        )
    );
    assert_eq!(
        run_of(&c, "run-1").await,
        with(
            created_run.clone(),
            json!({"started": stamp(ts(10)), "job_run_state": run_state::RUNNING})
        )
    );

    // Every run column at once, then an empty update that must change nothing.
    let mut ingress = BTreeMap::new();
    ingress.insert(8080, "10.0.0.1:8080".to_string());
    ingress.insert(443, "10.0.0.2".to_string());
    let full = UpdateJobRun {
        node: Some("node-2".into()),
        pending: Some(ts(3)),
        started: Some(ts(11)),
        finished: Some(ts(20)),
        job_run_state: Some(run_state::FAILED),
        error: Some(vec![9, 8, 7]),
        debug: Some(vec![6, 5]),
        exit_code: Some(137),
        ingress_addresses: Some(ingress),
        failure_info: Some(json!({"exitCode": 137, "terminationMessage": "oom"})),
        ..run_upd("run-1")
    };
    write(
        &s,
        InstructionSet {
            runs_to_update: vec![full],
            jobs_to_update: vec![UpdateJob {
                priority: Some(1),
                duplicate: Some(true),
                cancelled: Some(ts(30)),
                last_transition_time: Some(ts(30)),
                last_transition_time_seconds: Some(30),
                ..upd("job-1")
            }],
            ..Default::default()
        },
    )
    .await;
    let before = dump(&c).await;
    write(
        &s,
        InstructionSet {
            jobs_to_update: vec![upd("job-1")],
            runs_to_update: vec![run_upd("run-1")],
            ..Default::default()
        },
    )
    .await;
    assert_eq!(dump(&c).await, before);

    assert_eq!(
        run_of(&c, "run-1").await,
        with(
            created_run,
            json!({
                "node": "node-2",
                "pending": stamp(ts(3)),
                "started": stamp(ts(11)),
                "finished": stamp(ts(20)),
                "job_run_state": run_state::FAILED,
                "error": bytea(&[9, 8, 7]),
                "debug": bytea(&[6, 5]),
                "exit_code": 137,
                "ingress_addresses": {"443": "10.0.0.2", "8080": "10.0.0.1:8080"},
                "failure_info": {"exitCode": 137, "terminationMessage": "oom"},
            })
        )
    );
    assert_eq!(
        job_of(&c, "job-1").await,
        with(
            created_job,
            json!({
                "state": job_state::RUNNING,
                "latest_run_id": "run-1",
                "priority": 1,
                "duplicate": true,
                "cancelled": stamp(ts(30)),
                "last_transition_time": stamp(ts(30)),
                "last_transition_time_seconds": 30,
            })
        )
    );
    db.drop_db().await;
}

#[tokio::test]
async fn cancel_fields_survive_conflation() {
    let db = TestDb::migrated().await;
    let c = db.client().await;
    let s = store(&db, fast()).await;
    write(
        &s,
        InstructionSet {
            jobs_to_create: vec![job("job-1"), job("job-2")],
            ..Default::default()
        },
    )
    .await;
    let cancel = |id: &str| UpdateJob {
        state: Some(job_state::CANCELLED),
        cancelled: Some(ts(5)),
        cancel_reason: Some("user asked".into()),
        cancel_user: Some("bob".into()),
        ..upd(id)
    };
    let other = |id: &str| UpdateJob {
        priority: Some(3),
        ..upd(id)
    };
    // Cancel after another update, and before one, in the same batch.
    let report = write(
        &s,
        InstructionSet {
            jobs_to_update: vec![
                other("job-1"),
                cancel("job-1"),
                cancel("job-2"),
                other("job-2"),
            ],
            ..Default::default()
        },
    )
    .await;
    assert_eq!(report.job_updated.attempted, 2);
    // job-2's later priority update came after its terminal state: ignored.
    for (id, priority) in [("job-1", 3i64), ("job-2", 7)] {
        let cancelled = json!({
            "state": job_state::CANCELLED,
            "cancel_reason": "user asked",
            "cancel_user": "bob",
            "cancelled": stamp(ts(5)),
            "priority": priority,
        });
        assert_eq!(
            job_of(&c, id).await,
            with(job_row(&job(id)), cancelled),
            "{id}"
        );
    }
    db.drop_db().await;
}

#[tokio::test]
async fn run_pending_survives_conflation_and_same_batch_creation() {
    let db = TestDb::migrated().await;
    let c = db.client().await;
    let s = store(&db, fast()).await;
    // Run created, then pending, then running, all in one batch with its job.
    write(
        &s,
        InstructionSet {
            jobs_to_create: vec![job("job-1")],
            runs_to_create: vec![run("run-1", "job-1")],
            runs_to_update: vec![
                UpdateJobRun {
                    pending: Some(ts(4)),
                    job_run_state: Some(run_state::PENDING),
                    ..run_upd("run-1")
                },
                UpdateJobRun {
                    started: Some(ts(5)),
                    job_run_state: Some(run_state::RUNNING),
                    node: Some("node-9".into()),
                    ..run_upd("run-1")
                },
            ],
            jobs_to_update: vec![UpdateJob {
                state: Some(job_state::RUNNING),
                latest_run_id: Some("run-1".into()),
                ..upd("job-1")
            }],
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        run_of(&c, "run-1").await,
        with(
            run_row(&run("run-1", "job-1")),
            json!({
                "pending": stamp(ts(4)),
                "started": stamp(ts(5)),
                "job_run_state": run_state::RUNNING,
                "node": "node-9",
            })
        )
    );
    assert_eq!(
        job_of(&c, "job-1").await,
        with(
            job_row(&job("job-1")),
            json!({"state": job_state::RUNNING, "latest_run_id": "run-1"})
        )
    );
    db.drop_db().await;
}

/// Jobs for the terminal-filter tests and the updates sent to them.
fn terminal_fixture() -> (InstructionSet, Vec<UpdateJob>) {
    let create = InstructionSet {
        jobs_to_create: vec![
            job_in("succ-run", job_state::SUCCEEDED),
            job_in("succ-pre", job_state::SUCCEEDED),
            job_in("canc-pre", job_state::CANCELLED),
            job_in("pre-fail", job_state::PREEMPTED),
            job_in("rej-pre", job_state::REJECTED),
            job_in("queued", job_state::QUEUED),
        ],
        ..Default::default()
    };
    let to = |id: &str, state: i16| UpdateJob {
        state: Some(state),
        priority: Some(99),
        ..upd(id)
    };
    let updates = vec![
        to("succ-run", job_state::RUNNING),
        to("succ-pre", job_state::PREEMPTED),
        to("canc-pre", job_state::PREEMPTED),
        to("pre-fail", job_state::FAILED),
        to("rej-pre", job_state::PREEMPTED),
        to("queued", job_state::RUNNING),
        to("missing", job_state::RUNNING),
    ];
    (create, updates)
}

async fn check_terminal(c: &Client, report: &WriteReport) {
    let ids = [
        "canc-pre", "pre-fail", "queued", "rej-pre", "succ-pre", "succ-run",
    ];
    let rows = json_rows(
        c,
        "SELECT job_id, state, priority FROM job WHERE job_id = ANY($1) ORDER BY job_id",
        &[&&ids[..]],
    )
    .await;
    let want: Vec<Value> = [
        ("canc-pre", job_state::PREEMPTED, 99),
        ("pre-fail", job_state::PREEMPTED, 7),
        ("queued", job_state::RUNNING, 99),
        ("rej-pre", job_state::REJECTED, 7),
        ("succ-pre", job_state::PREEMPTED, 99),
        ("succ-run", job_state::SUCCEEDED, 7),
    ]
    .iter()
    .map(|(id, state, priority)| json!({"job_id": id, "state": state, "priority": priority}))
    .collect();
    assert_eq!(rows, want);
    assert_eq!(report.filtered_terminal, 3);
    assert_eq!(report.job_updated.affected, 3);
    // The terminal ones were filtered, not unmatched; "missing" never existed.
    assert_eq!(unmatched(report), [("job", "missing".to_string())]);
}

#[tokio::test]
async fn terminal_jobs_ignore_updates_except_preemption() {
    let db = TestDb::migrated().await;
    let c = db.client().await;
    let s = store(&db, fast()).await;
    let (create, updates) = terminal_fixture();
    write(&s, create).await;
    let report = write(
        &s,
        InstructionSet {
            jobs_to_update: updates,
            ..Default::default()
        },
    )
    .await;
    assert!(!report.fell_back);
    check_terminal(&c, &report).await;
    db.drop_db().await;
}

#[tokio::test]
async fn terminal_filter_also_applies_row_by_row() {
    let db = TestDb::migrated().await;
    let c = db.client().await;
    let s = store(&db, fast()).await;
    let (mut create, mut updates) = terminal_fixture();
    create.jobs_to_create.push(job("bad-update"));
    write(&s, create).await;
    // cancel_reason is varchar(512): this row forces the row-by-row path.
    updates.insert(
        2,
        UpdateJob {
            cancel_reason: Some("x".repeat(600)),
            ..upd("bad-update")
        },
    );
    let report = write(
        &s,
        InstructionSet {
            jobs_to_update: updates,
            ..Default::default()
        },
    )
    .await;
    assert!(report.fell_back);
    assert_eq!(report.failed.len(), 1, "{:?}", report.failed);
    assert_eq!(report.failed[0].key, "bad-update");
    assert_eq!(report.failed[0].table, Table::Job);
    assert_eq!(report.failed[0].operation, Operation::Update);
    assert!(
        report.failed[0].error.contains("22001"),
        "{}",
        report.failed[0].error
    );
    assert_eq!(report.job_updated.attempted, 8);
    check_terminal(&c, &report).await;
    db.drop_db().await;
}

fn rich_set() -> InstructionSet {
    let mut ingress = BTreeMap::new();
    ingress.insert(80, "1.2.3.4".to_string());
    InstructionSet {
        jobs_to_create: vec![
            job("job-1"),
            job("job-2"),
            job_in("job-3", job_state::REJECTED),
        ],
        jobs_to_update: vec![
            UpdateJob {
                state: Some(job_state::LEASED),
                latest_run_id: Some("run-1".into()),
                ..upd("job-1")
            },
            UpdateJob {
                state: Some(job_state::SUCCEEDED),
                last_transition_time: Some(ts(9)),
                last_transition_time_seconds: Some(9),
                ..upd("job-1")
            },
            UpdateJob {
                state: Some(job_state::CANCELLED),
                cancel_reason: Some("r".into()),
                cancel_user: Some("u".into()),
                cancelled: Some(ts(8)),
                ..upd("job-2")
            },
        ],
        runs_to_create: vec![run("run-1", "job-1"), run("run-2", "job-2")],
        runs_to_update: vec![
            UpdateJobRun {
                pending: Some(ts(3)),
                ..run_upd("run-1")
            },
            UpdateJobRun {
                finished: Some(ts(9)),
                job_run_state: Some(run_state::SUCCEEDED),
                exit_code: Some(0),
                ingress_addresses: Some(ingress),
                ..run_upd("run-1")
            },
        ],
        job_errors_to_create: vec![CreateJobError {
            job_id: "job-3".into(),
            error: vec![42],
        }],
    }
}

#[tokio::test]
async fn same_set_twice_gives_identical_tables() {
    let db = TestDb::migrated().await;
    let c = db.client().await;
    let s = store(&db, fast()).await;
    let first = write(&s, rich_set()).await;
    let after_first = dump(&c).await;
    assert_eq!(dump_rows(&after_first), 3 + 3 + 2 + 1);
    let second = write(&s, rich_set()).await;
    assert_eq!(dump(&c).await, after_first);
    assert_eq!(first.job_inserted.affected, 3);
    assert_eq!(second.job_inserted.affected, 0);
    assert_eq!(second.job_run_inserted.affected, 0);
    assert_eq!(second.job_error_inserted.affected, 0);
    // Second time round both jobs are terminal.
    assert_eq!(second.filtered_terminal, 2);
    // Filtered is not unmatched; run-1 was created in the same batch.
    assert!(first.unmatched.is_empty(), "{:?}", first.unmatched);
    assert!(second.unmatched.is_empty(), "{:?}", second.unmatched);
    db.drop_db().await;
}

#[tokio::test]
async fn bad_rows_do_not_stop_the_others() {
    let db = TestDb::migrated().await;
    let c = db.client().await;
    c.batch_execute(
        "ALTER TABLE job ADD CONSTRAINT test_no_bad_queue CHECK (queue <> 'bad-queue')",
    )
    .await
    .unwrap();
    let s = store(&db, fast()).await;
    let long_job = "j".repeat(40); // job_id is varchar(32)
    let long_run = "r".repeat(40); // run_id is varchar(36)
    let set = InstructionSet {
        jobs_to_create: vec![
            job("good-1"),
            job(&long_job),
            CreateJob {
                queue: "bad-queue".into(),
                ..job("check-fail")
            },
            job("good-2"),
        ],
        jobs_to_update: vec![UpdateJob {
            state: Some(job_state::RUNNING),
            ..upd("good-2")
        }],
        runs_to_create: vec![run("run-1", "good-1"), run(&long_run, "good-1")],
        runs_to_update: vec![UpdateJobRun {
            started: Some(ts(6)),
            ..run_upd("run-1")
        }],
        ..Default::default()
    };
    let report = write(&s, set).await;
    assert!(report.fell_back);
    let mut failed: Vec<(&str, &str, String)> = report
        .failed
        .iter()
        .map(|f| (f.table.as_str(), f.operation.as_str(), f.key.clone()))
        .collect();
    failed.sort();
    let mut want = vec![
        ("job", "insert", long_job.clone()),
        ("job", "insert", "check-fail".to_string()),
        ("job_spec", "insert", long_job.clone()),
        ("job_run", "insert", long_run.clone()),
    ];
    want.sort();
    assert_eq!(failed, want);
    for f in &report.failed {
        if f.key == "check-fail" {
            assert!(f.error.contains("SQLSTATE 23514"), "{}", f.error);
            assert!(f.error.contains("test_no_bad_queue"), "{}", f.error);
        } else {
            assert!(f.error.contains("SQLSTATE 22001"), "{}", f.error);
        }
    }
    assert_eq!(report.job_inserted.attempted, 4);
    assert_eq!(report.job_inserted.affected, 2);

    let jobs = json_rows(&c, "SELECT job_id, state FROM job ORDER BY job_id", &[]).await;
    assert_eq!(
        jobs,
        [
            json!({"job_id": "good-1", "state": job_state::QUEUED}),
            json!({"job_id": "good-2", "state": job_state::RUNNING}),
        ]
    );
    // check-fail's spec row is valid.
    let specs = json_rows(&c, "SELECT job_id FROM job_spec ORDER BY job_id", &[]).await;
    assert_eq!(
        specs,
        [
            json!({"job_id": "check-fail"}),
            json!({"job_id": "good-1"}),
            json!({"job_id": "good-2"}),
        ]
    );
    let runs = json_rows(
        &c,
        "SELECT run_id, started FROM job_run ORDER BY run_id",
        &[],
    )
    .await;
    assert_eq!(runs, [json!({"run_id": "run-1", "started": stamp(ts(6))})]);
    db.drop_db().await;
}

/// Whole job life cycles: creation, a running update, a run created and
/// finished, an error for about every seventh; `bad` gets a 40-character run id
/// (run_id is varchar(36)), which fails its part of a batch.
fn lifecycles(ids: &[String], bad: &str) -> InstructionSet {
    let mut set = InstructionSet::default();
    for id in ids {
        let n: u8 = id
            .bytes()
            .fold(0, |h, b| h.wrapping_mul(31).wrapping_add(b));
        let run_id = if id == bad {
            "r".repeat(40)
        } else {
            format!("run-{id}")
        };
        set.jobs_to_create.push(job(id));
        set.jobs_to_update.push(UpdateJob {
            state: Some(job_state::RUNNING),
            latest_run_id: Some(format!("run-{id}")),
            last_transition_time: Some(ts(3)),
            last_transition_time_seconds: Some(3),
            ..upd(id)
        });
        set.runs_to_create.push(run(&run_id, id));
        set.runs_to_update.push(UpdateJobRun {
            started: Some(ts(4)),
            finished: Some(ts(5)),
            job_run_state: Some(run_state::SUCCEEDED),
            exit_code: Some(0),
            ..run_upd(&run_id)
        });
        if n.is_multiple_of(7) {
            set.job_errors_to_create.push(CreateJobError {
                job_id: id.clone(),
                error: vec![0x78, 0x9c, n],
            });
        }
    }
    // Runs of an earlier batch, and updates of things that do not exist.
    for id in ids.iter().step_by(50) {
        set.runs_to_update.push(UpdateJobRun {
            node: Some("node-9".into()),
            ..run_upd(&format!("old-{id}"))
        });
        set.jobs_to_update.push(UpdateJob {
            priority: Some(3),
            ..upd(&format!("gone-{id}"))
        });
    }
    set
}

#[tokio::test]
async fn a_batch_split_over_connections_writes_what_small_batches_write() {
    // 2,000 jobs make ~8,000 rows: written in two parts at once.
    let ids: Vec<String> = (0..2_000).map(|i| format!("job-{i:05}")).collect();
    let bad = ids[777].clone();
    let old_runs = |set: &mut InstructionSet| {
        for id in ids.iter().step_by(50) {
            set.jobs_to_create.push(job(&format!("old-job-{id}")));
            set.runs_to_create
                .push(run(&format!("old-{id}"), &format!("old-job-{id}")));
        }
    };

    let split = TestDb::migrated().await;
    let s = store(&split, fast()).await;
    let mut earlier = InstructionSet::default();
    old_runs(&mut earlier);
    write(&s, earlier).await;
    let report = write(&s, lifecycles(&ids, &bad)).await;
    // Only the bad run's part fell back; its row alone failed.
    assert!(report.fell_back);
    let failed: Vec<(&str, String)> = report
        .failed
        .iter()
        .map(|f| (f.table.as_str(), f.key.clone()))
        .collect();
    assert_eq!(failed, [("job_run", "r".repeat(40))]);
    assert_eq!(report.job_inserted.affected, 2_000);
    let errors = ids
        .iter()
        .filter(|id| {
            id.bytes()
                .fold(0u8, |h, b| h.wrapping_mul(31).wrapping_add(b))
                % 7
                == 0
        })
        .count();
    assert!(errors > 100, "{errors} job errors");
    assert_eq!(report.job_error_inserted.affected, errors as u64);
    // Unmatched in batch order (job updates, then run updates), the bad
    // run's update among them, as it has no row.
    let mut want: Vec<(&str, String)> = ids
        .iter()
        .step_by(50)
        .map(|id| ("job", format!("gone-{id}")))
        .collect();
    want.push(("job_run", "r".repeat(40)));
    assert_eq!(unmatched(&report), want);

    let small = TestDb::migrated().await;
    let s = store(&small, fast()).await;
    let mut earlier = InstructionSet::default();
    old_runs(&mut earlier);
    write(&s, earlier).await;
    for chunk in ids.chunks(100) {
        write(&s, lifecycles(chunk, &bad)).await;
    }
    let split_dump = dump(&split.client().await).await;
    assert_eq!(split_dump, dump(&small.client().await).await);
    assert!(split_dump.contains("node-9"));
    split.drop_db().await;
    small.drop_db().await;
}

/// Holds `LOCK TABLE job IN ACCESS EXCLUSIVE MODE` in another session until
/// the returned sender fires (or is dropped).
async fn lock_job_table(db: &TestDb) -> tokio::sync::oneshot::Sender<()> {
    let c = db.client().await;
    c.batch_execute("BEGIN; LOCK TABLE job IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = rx.await;
        let _ = c.batch_execute("ROLLBACK").await;
    });
    tx
}

#[tokio::test]
async fn lock_timeout_is_retried_until_the_lock_goes() {
    let db = TestDb::migrated().await;
    let c = db.client().await;
    let s = Store::new(pool_with_options(&db.url, "-c lock_timeout=50ms"), fast());
    let release = lock_job_table(&db).await;
    let releaser = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let _ = release.send(());
    });
    let started = Instant::now();
    let report = write(&s, rich_set()).await;
    releaser.await.unwrap();
    assert!(report.retries >= 1, "{report:?}");
    assert!(!report.fell_back);
    assert!(started.elapsed() >= Duration::from_millis(350));
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_eq!(dump_rows(&dump(&c).await), 9);
    db.drop_db().await;
}

#[tokio::test]
async fn exhausted_retries_leave_nothing_behind() {
    let db = TestDb::migrated().await;
    let c = db.client().await;
    let s = Store::new(
        pool_with_options(&db.url, "-c lock_timeout=20ms"),
        StoreSettings {
            max_retries: Some(2),
            ..fast()
        },
    );
    let release = lock_job_table(&db).await;
    let err = s.write(rich_set(), Generation::G031).await.unwrap_err();
    let _ = release.send(());
    match &err {
        StoreError::RetriesExhausted { attempts, last } => {
            assert_eq!(*attempts, 3);
            assert!(last.contains("55P03"), "{last}");
        }
        other => panic!("unexpected {other:?}"),
    }
    // The batch is one transaction: nothing of it is visible.
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(dump_rows(&dump(&c).await), 0);
    db.drop_db().await;
}

#[tokio::test]
async fn shutdown_stops_retrying() {
    let db = TestDb::migrated().await;
    let (stop, stop_rx) = tokio::sync::watch::channel(false);
    let s = Store::new(
        pool_with_options(&db.url, "-c lock_timeout=20ms"),
        StoreSettings {
            max_retries: None,
            ..fast()
        },
    )
    .with_shutdown(stop_rx);
    let release = lock_job_table(&db).await;
    let stopper = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let _ = stop.send(true);
        stop
    });
    let started = Instant::now();
    let err = s.write(rich_set(), Generation::G031).await.unwrap_err();
    assert!(matches!(err, StoreError::Shutdown { .. }), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    let _ = release.send(());
    let _ = stopper.await;
    db.drop_db().await;
}

#[tokio::test]
async fn terminated_backend_is_retried() {
    let db = TestDb::migrated().await;
    let admin = db.client().await;
    let s = store(&db, fast()).await;
    let release = lock_job_table(&db).await;
    let writer = tokio::spawn(async move {
        let report = s.write(rich_set(), Generation::G031).await;
        (s, report)
    });
    // Wait until the store's backend blocks on the lock (taken before the
    // schema check, ahead of any statement), then kill it.
    let deadline = Instant::now() + Duration::from_secs(10);
    let pid: i32 = loop {
        let rows = admin
            .query(
                "SELECT pid FROM pg_stat_activity
                 WHERE datname = current_database() AND wait_event_type = 'Lock'
                   AND query LIKE 'LOCK TABLE job, job_run%'",
                &[],
            )
            .await
            .unwrap();
        if let Some(r) = rows.first() {
            break r.get(0);
        }
        assert!(Instant::now() < deadline, "store never blocked on the lock");
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let killed: bool = admin
        .query_one("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap()
        .get(0);
    assert!(killed);
    let _ = release.send(());
    let (_s, report) = writer.await.unwrap();
    let report = report.unwrap();
    assert!(report.retries >= 1, "{report:?}");
    assert!(!report.fell_back);
    assert_eq!(dump_rows(&dump(&admin).await), 9);
    db.drop_db().await;
}

#[tokio::test]
async fn real_errors_are_classified() {
    let db = TestDb::migrated().await;
    let c = db.client().await;
    let none: &[regex::Regex] = &[];
    let e = c.query("SELECT 1/0", &[]).await.unwrap_err();
    assert_eq!(classify(&e, none), ErrorClass::NotRetryable);
    let e = c
        .query("SELECT * FROM no_such_table", &[])
        .await
        .unwrap_err();
    assert_eq!(classify(&e, none), ErrorClass::NotRetryable);
    // 55P03, made for real.
    let release = lock_job_table(&db).await;
    let e = c
        .batch_execute("BEGIN; SET LOCAL lock_timeout = '10ms'; LOCK TABLE job; COMMIT")
        .await
        .unwrap_err();
    let _ = c.batch_execute("ROLLBACK").await;
    let _ = release.send(());
    assert_eq!(e.code().map(|c| c.code()), Some("55P03"));
    assert_eq!(classify(&e, none), ErrorClass::Retryable);
    // A fatal regex wins, matched against pgx-style text.
    let fatal = [regex::Regex::new(r"SQLSTATE 55P03").unwrap()];
    assert_eq!(classify(&e, &fatal), ErrorClass::NotRetryable);
    let fatal = [regex::Regex::new(r"lock").unwrap()];
    assert_eq!(classify(&e, &fatal), ErrorClass::NotRetryable);

    // Our own backend terminated: the error and the closed connection both retry.
    let victim = db.client().await;
    let pid: i32 = victim
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .unwrap()
        .get(0);
    c.query_one("SELECT pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    let e = victim.query("SELECT 1", &[]).await.unwrap_err();
    assert_eq!(classify(&e, none), ErrorClass::Retryable, "{e:?}");
    let e = victim.query("SELECT 1", &[]).await.unwrap_err();
    assert_eq!(classify(&e, none), ErrorClass::Retryable, "{e:?}");
    db.drop_db().await;
}

#[tokio::test]
async fn bulk_batch_10k() {
    let db = TestDb::migrated().await;
    let c = db.client().await;
    let s = store(&db, fast()).await;
    let n = 10_000;
    let ids: Vec<String> = (0..n).map(|i| format!("{i:026}")).collect();
    let set = InstructionSet {
        jobs_to_create: ids.iter().map(|id| job(id)).collect(),
        jobs_to_update: ids
            .iter()
            .map(|id| UpdateJob {
                state: Some(job_state::PENDING),
                last_transition_time: Some(ts(5)),
                last_transition_time_seconds: Some(5),
                ..upd(id)
            })
            .collect(),
        ..Default::default()
    };
    let started = Instant::now();
    let report = write(&s, set).await;
    let elapsed = started.elapsed();
    eprintln!("10k job creations + 10k job updates written in {elapsed:?}");
    assert_eq!(report.job_inserted.affected, n as u64);
    assert_eq!(report.job_updated.affected, n as u64);
    let pending: i64 = c
        .query_one(
            "SELECT count(*) FROM job WHERE state = $1",
            &[&job_state::PENDING],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(pending, n as i64);
    db.drop_db().await;
}

#[tokio::test]
async fn run_update_without_run_is_unmatched() {
    let db = TestDb::migrated().await;
    let s = store(&db, fast()).await;
    // A run event before the run's creation (e.g. out of order), for a known job.
    write(
        &s,
        InstructionSet {
            jobs_to_create: vec![job("job-1")],
            ..Default::default()
        },
    )
    .await;
    let report = write(
        &s,
        InstructionSet {
            runs_to_update: vec![UpdateJobRun {
                started: Some(ts(5)),
                ..run_upd("run-early")
            }],
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        report.unmatched,
        [Unmatched {
            table: Table::JobRun,
            key: "run-early".into()
        }]
    );
    assert_eq!(report.unmatched_count(Table::JobRun), 1);
    assert_eq!(report.unmatched_count(Table::Job), 0);
    assert_eq!(report.job_run_updated.attempted, 1);
    assert_eq!(report.job_run_updated.affected, 0);
    assert!(report.failed.is_empty());
    assert!(!report.fell_back);
    db.drop_db().await;
}

#[tokio::test]
async fn job_update_without_job_is_unmatched() {
    let db = TestDb::migrated().await;
    let s = store(&db, fast()).await;
    let report = write(
        &s,
        InstructionSet {
            jobs_to_update: vec![UpdateJob {
                state: Some(job_state::RUNNING),
                ..upd("never-submitted")
            }],
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        report.unmatched,
        [Unmatched {
            table: Table::Job,
            key: "never-submitted".into()
        }]
    );
    assert_eq!(report.unmatched_count(Table::Job), 1);
    assert_eq!(report.job_updated.attempted, 1);
    assert_eq!(report.job_updated.affected, 0);
    // Missing is not terminal.
    assert_eq!(report.filtered_terminal, 0);
    assert!(!report.fell_back);
    db.drop_db().await;
}

/// Existing rows for [`unmatched_set`]: a live job with a run, a terminal
/// job, and a job and a run that the row-by-row tests break updates of.
fn unmatched_setup() -> InstructionSet {
    InstructionSet {
        jobs_to_create: vec![
            job("job-1"),
            job_in("done", job_state::SUCCEEDED),
            job("bad-job"),
        ],
        runs_to_create: vec![run("run-1", "job-1"), run("bad-run", "job-1")],
        ..Default::default()
    }
}

/// Updates of existing, terminal, same-batch-created and missing rows, with
/// missing keys repeated (conflated to one) and out of alphabetical order.
fn unmatched_set() -> InstructionSet {
    let running = |id: &str| UpdateJob {
        state: Some(job_state::RUNNING),
        ..upd(id)
    };
    let started = |id: &str| UpdateJobRun {
        started: Some(ts(7)),
        job_run_state: Some(run_state::RUNNING),
        ..run_upd(id)
    };
    InstructionSet {
        jobs_to_create: vec![job("new-job")],
        runs_to_create: vec![run("new-run", "new-job")],
        jobs_to_update: vec![
            running("ghost-b"),
            running("job-1"),
            running("done"),
            running("ghost-a"),
            UpdateJob {
                priority: Some(1),
                ..upd("ghost-b")
            },
            running("new-job"),
        ],
        runs_to_update: vec![
            started("run-z"),
            started("new-run"),
            started("run-1"),
            started("run-a"),
            UpdateJobRun {
                exit_code: Some(1),
                ..run_upd("run-z")
            },
        ],
        ..Default::default()
    }
}

fn unmatched_want() -> Vec<(&'static str, String)> {
    vec![
        ("job", "ghost-b".to_string()),
        ("job", "ghost-a".to_string()),
        ("job_run", "run-z".to_string()),
        ("job_run", "run-a".to_string()),
    ]
}

/// What the unmatched scenario must leave, whichever way it was written.
async fn check_unmatched(c: &Client, report: &WriteReport) {
    assert_eq!(unmatched(report), unmatched_want());
    assert_eq!(report.unmatched_count(Table::Job), 2);
    assert_eq!(report.unmatched_count(Table::JobRun), 2);
    assert_eq!(report.filtered_terminal, 1); // "done"
    assert_eq!(report.job_updated.affected, 2); // job-1, new-job
    assert_eq!(report.job_run_updated.affected, 2); // run-1, new-run
                                                    // No ghost job: an update must not create a row.
    let jobs = json_rows(c, "SELECT job_id, state FROM job ORDER BY job_id", &[]).await;
    assert_eq!(
        jobs,
        [
            json!({"job_id": "bad-job", "state": job_state::QUEUED}),
            json!({"job_id": "done", "state": job_state::SUCCEEDED}),
            json!({"job_id": "job-1", "state": job_state::RUNNING}),
            json!({"job_id": "new-job", "state": job_state::RUNNING}),
        ]
    );
    let runs = json_rows(
        c,
        "SELECT run_id, started FROM job_run ORDER BY run_id",
        &[],
    )
    .await;
    assert_eq!(
        runs,
        [
            json!({"run_id": "bad-run", "started": null}),
            json!({"run_id": "new-run", "started": stamp(ts(7))}),
            json!({"run_id": "run-1", "started": stamp(ts(7))}),
        ]
    );
}

#[tokio::test]
async fn unmatched_updates_are_reported_in_order() {
    let db = TestDb::migrated().await;
    let c = db.client().await;
    let s = store(&db, fast()).await;
    write(&s, unmatched_setup()).await;
    let report = write(&s, unmatched_set()).await;
    assert!(!report.fell_back);
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_eq!(report.job_updated.attempted, 5);
    assert_eq!(report.job_run_updated.attempted, 4);
    check_unmatched(&c, &report).await;
    // The same batch again: the same report, nothing new in the tables.
    let before = dump(&c).await;
    let again = write(&s, unmatched_set()).await;
    assert_eq!(unmatched(&again), unmatched_want());
    assert_eq!(dump(&c).await, before);
    db.drop_db().await;
}

#[tokio::test]
async fn unmatched_updates_are_reported_step_by_step() {
    let db = TestDb::migrated().await;
    let c = db.client().await;
    let s = store(&db, fast()).await;
    write(&s, unmatched_setup()).await;
    // A job id longer than varchar(32) fails the job and job_spec inserts:
    // the batch goes step by step, the update steps still set-based.
    let long_job = "j".repeat(40);
    let mut set = unmatched_set();
    set.jobs_to_create.push(job(&long_job));
    let report = write(&s, set).await;
    assert!(report.fell_back);
    let failed: Vec<(&str, &str)> = report
        .failed
        .iter()
        .map(|f| (f.table.as_str(), f.operation.as_str()))
        .collect();
    assert_eq!(failed, [("job", "insert"), ("job_spec", "insert")]);
    check_unmatched(&c, &report).await;
    db.drop_db().await;
}

#[tokio::test]
async fn unmatched_updates_are_reported_row_by_row() {
    let db = TestDb::migrated().await;
    let c = db.client().await;
    let s = store(&db, fast()).await;
    write(&s, unmatched_setup()).await;
    // cancel_reason and node are varchar(512): these rows make both update
    // steps fail and go row by row.
    let mut set = unmatched_set();
    set.jobs_to_update.insert(
        3,
        UpdateJob {
            cancel_reason: Some("x".repeat(600)),
            ..upd("bad-job")
        },
    );
    set.runs_to_update.insert(
        1,
        UpdateJobRun {
            node: Some("n".repeat(600)),
            ..run_upd("bad-run")
        },
    );
    let report = write(&s, set).await;
    assert!(report.fell_back);
    let failed: Vec<(&str, &str, &str)> = report
        .failed
        .iter()
        .map(|f| (f.table.as_str(), f.operation.as_str(), f.key.as_str()))
        .collect();
    assert_eq!(
        failed,
        [
            ("job", "update", "bad-job"),
            ("job_run", "update", "bad-run")
        ]
    );
    // Failed rows are failed, not unmatched.
    check_unmatched(&c, &report).await;
    assert_eq!(report.job_updated.attempted, 6);
    assert_eq!(report.job_run_updated.attempted, 5);
    db.drop_db().await;
}

#[tokio::test]
async fn bulk_updates_10k_with_unmatched() {
    let db = TestDb::migrated().await;
    let s = store(&db, fast()).await;
    let n = 10_000;
    let ids: Vec<String> = (0..n).map(|i| format!("{i:026}")).collect();
    write(
        &s,
        InstructionSet {
            jobs_to_create: ids.iter().map(|id| job(id)).collect(),
            runs_to_create: ids.iter().map(|id| run(&format!("r{id}"), id)).collect(),
            ..Default::default()
        },
    )
    .await;
    // Every 100th update (from the end, so not in key order) has no row.
    let key = |i: usize| {
        let id = &ids[n - 1 - i];
        if i.is_multiple_of(100) {
            format!("x{id}")
        } else {
            id.clone()
        }
    };
    let set = InstructionSet {
        jobs_to_update: (0..n)
            .map(|i| UpdateJob {
                priority: Some(1),
                ..upd(&key(i))
            })
            .collect(),
        runs_to_update: (0..n)
            .map(|i| UpdateJobRun {
                exit_code: Some(1),
                ..run_upd(&format!("r{}", key(i)))
            })
            .collect(),
        ..Default::default()
    };
    let started = Instant::now();
    let report = write(&s, set).await;
    eprintln!(
        "10k job updates + 10k run updates (1% unmatched) written in {:?}",
        started.elapsed()
    );
    let missing: Vec<String> = (0..n).step_by(100).map(key).collect();
    let mut want: Vec<(&str, String)> = missing.iter().map(|k| ("job", k.clone())).collect();
    want.extend(missing.iter().map(|k| ("job_run", format!("r{k}"))));
    assert_eq!(unmatched(&report), want);
    assert_eq!(report.job_updated.affected, (n - n / 100) as u64);
    assert_eq!(report.job_run_updated.affected, (n - n / 100) as u64);
    assert_eq!(report.filtered_terminal, 0);
    assert!(!report.fell_back);
    db.drop_db().await;
}

// ------------------------------------------------------------ generations

/// A database migrated to `generation` (no ingester tables of our own).
async fn at_generation(generation: Generation) -> TestDb {
    TestDb::at_version(generation.number()).await
}

/// A run update carrying every generation's new fields, so each
/// generation's writer must pick its own.
fn failing_run_update(id: &str) -> UpdateJobRun {
    UpdateJobRun {
        job_run_state: Some(run_state::FAILED),
        finished: Some(ts(9)),
        exit_code: Some(3),
        failure_info: Some(json!({"exitCode": 3, "containerName": "main"})),
        failure_category: Some("user".to_string()),
        failure_subcategory: Some("oom".to_string()),
        scheduler_termination_reason: Some(
            json!({"reason": "preempted", "args": {"preemptingJobId": "j9"}}),
        ),
        ..run_upd(id)
    }
}

/// The `job_run` row a create of `r` and [`failing_run_update`] leave at
/// `generation`: only the columns the generation has, and only the ones
/// upstream's writer at that generation fills.
fn failed_run_row(r: &CreateJobRun, generation: Generation) -> Value {
    let mut row = with(
        run_row(r),
        json!({"job_run_state": run_state::FAILED, "finished": stamp(ts(9)), "exit_code": 3}),
    );
    let fields = row.as_object_mut().unwrap();
    match generation {
        Generation::G031 => {
            fields.insert(
                "failure_info".into(),
                json!({"exitCode": 3, "containerName": "main"}),
            );
        }
        // The column exists at 032, but upstream's 032 writer leaves it alone.
        Generation::G032 => {}
        _ => {
            fields.remove("failure_info");
        }
    }
    if generation.has_failure_category() {
        fields.insert("failure_category".into(), json!("user"));
        fields.insert("failure_subcategory".into(), json!("oom"));
    }
    if generation.has_termination_reason() {
        fields.insert(
            "scheduler_termination_reason".into(),
            json!({"reason": "preempted", "args": {"preemptingJobId": "j9"}}),
        );
    }
    row
}

#[tokio::test]
async fn each_generation_writes_its_own_columns() {
    for g in Generation::ALL {
        let db = at_generation(g).await;
        let s = store(&db, fast()).await;
        assert_eq!(s.detect().await.unwrap().generation, g);
        assert_eq!(s.generation(), Some(g));
        let (j, r) = (job("j1"), run("r1", "j1"));
        let set = InstructionSet {
            jobs_to_create: vec![j.clone()],
            runs_to_create: vec![r.clone()],
            runs_to_update: vec![failing_run_update("r1")],
            ..Default::default()
        };
        let report = s.write(set, g).await.unwrap();
        assert_eq!(report.job_run_updated.affected, 1, "{g}");
        assert!(!report.fell_back, "{g}");
        let c = db.client().await;
        assert_eq!(run_of(&c, "r1").await, failed_run_row(&r, g), "{g}");
        assert_eq!(job_of(&c, "j1").await, job_row(&j), "{g}");
        db.drop_db().await;
    }
}

/// The same, row by row: a 33-character job id fails the batch (at COPY)
/// and its step, so the other rows go one by one.
#[tokio::test]
async fn each_generation_writes_its_own_columns_row_by_row() {
    for g in [Generation::G031, Generation::G032, Generation::G035] {
        let db = at_generation(g).await;
        let s = store(&db, fast()).await;
        let r = run("r1", "j1");
        let mut bad = run("r2", "j1");
        bad.job_id = "x".repeat(33);
        let set = InstructionSet {
            jobs_to_create: vec![job("j1")],
            runs_to_create: vec![r.clone(), bad],
            runs_to_update: vec![failing_run_update("r1")],
            ..Default::default()
        };
        let report = s.write(set, g).await.unwrap();
        assert!(report.fell_back, "{g}");
        assert_eq!(report.failed.len(), 1, "{g}");
        assert_eq!(report.job_run_updated.affected, 1, "{g}");
        let c = db.client().await;
        assert_eq!(run_of(&c, "r1").await, failed_run_row(&r, g), "{g}");
        db.drop_db().await;
    }
}

/// Asserts that `err` is the store's refusal of a batch converted for
/// `from` in a database now at `to`.
fn assert_schema_changed(err: &StoreError, from: Generation, to: Generation) {
    assert!(
        matches!(err, StoreError::SchemaChanged { from: f, to: t } if *f == from && *t == to),
        "{err:?}"
    );
}

#[tokio::test]
async fn a_stale_generation_writes_nothing_and_says_where_the_database_is() {
    let db = at_generation(Generation::G031).await;
    let s = store(&db, fast()).await;
    let r = run("r1", "j1");
    let first = InstructionSet {
        jobs_to_create: vec![job("j1")],
        runs_to_create: vec![r.clone()],
        runs_to_update: vec![failing_run_update("r1")],
        ..Default::default()
    };
    s.write(first, Generation::G031).await.unwrap();
    let c = db.client().await;
    let written_at_031 = run_of(&c, "r1").await;
    assert_eq!(written_at_031, failed_run_row(&r, Generation::G031));

    // A migration runs between two batches.
    let mut admin = db.client().await;
    lookout_ingester::migrate::migrate_to(&mut admin, 32)
        .await
        .unwrap();
    let second = || InstructionSet {
        jobs_to_create: vec![job("j2")],
        runs_to_update: vec![UpdateJobRun {
            failure_category: Some("platform".into()),
            failure_subcategory: Some("node".into()),
            failure_info: Some(json!({"exitCode": 9})),
            ..run_upd("r1")
        }],
        ..Default::default()
    };
    let err = s.write(second(), Generation::G031).await.unwrap_err();
    assert_schema_changed(&err, Generation::G031, Generation::G032);
    assert_eq!(s.generation(), Some(Generation::G032));
    // Nothing of the stale batch was written.
    assert_eq!(common::count(&c, "job").await, 1);
    let after_031 = with(
        written_at_031.clone(),
        json!({"failure_category": null, "failure_subcategory": null}),
    );
    assert_eq!(run_of(&c, "r1").await, after_031);

    // Converted again for 032, it goes through; failure_info written at 031 stays.
    s.write(second(), Generation::G032).await.unwrap();
    assert_eq!(common::count(&c, "job").await, 2);
    assert_eq!(
        run_of(&c, "r1").await,
        with(
            written_at_031,
            json!({"failure_category": "platform", "failure_subcategory": "node"})
        )
    );

    // 033 drops failure_info: a 032 batch is refused the same way.
    lookout_ingester::migrate::migrate_to(&mut admin, 33)
        .await
        .unwrap();
    let err = s
        .write(
            InstructionSet {
                runs_to_update: vec![run_upd("r1")],
                ..Default::default()
            },
            Generation::G032,
        )
        .await
        .unwrap_err();
    assert_schema_changed(&err, Generation::G032, Generation::G033);
    db.drop_db().await;
}

/// Asserts that the database holds no table at all.
async fn assert_no_tables(db: &TestDb) {
    let tables = json_rows(
        &db.client().await,
        "SELECT relname FROM pg_class WHERE relkind IN ('r', 'p') AND relnamespace = 'public'::regnamespace",
        &[],
    )
    .await;
    assert_eq!(tables, Vec::<Value>::new());
}

#[tokio::test]
async fn an_unmigrated_database_is_refused_and_left_alone() {
    // No tables at all.
    let db = TestDb::empty().await;
    let s = store(&db, fast()).await;
    let set = || InstructionSet {
        jobs_to_create: vec![job("j1")],
        runs_to_update: vec![run_upd("r1")],
        ..Default::default()
    };
    let err = s.write(set(), Generation::G031).await.unwrap_err();
    assert!(
        matches!(err, StoreError::Schema(SchemaError::MissingTable("job"))),
        "{err:?}"
    );
    assert!(matches!(
        s.detect().await,
        Err(StoreError::Schema(SchemaError::MissingTable("job")))
    ));
    assert_no_tables(&db).await;
    db.drop_db().await;

    // Migrated, but not as far as 031: the tables exist, the failure columns do not.
    let db = TestDb::at_version(30).await;
    let c = db.client().await;
    let s = store(&db, fast()).await;
    let err = s.write(set(), Generation::G031).await.unwrap_err();
    assert!(
        matches!(
            err,
            StoreError::Schema(SchemaError::TooOld { version: Some(30) })
        ),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains("run `lookout-ingester migrate` first"),
        "{err}"
    );
    assert_eq!(common::count(&c, "job").await, 0);
    db.drop_db().await;
}

/// job's column names, in column order.
async fn job_columns(c: &Client) -> Vec<Value> {
    json_rows(
        c,
        "SELECT attname::text FROM pg_attribute WHERE attrelid = 'job'::regclass AND attnum > 0 AND NOT attisdropped ORDER BY attnum",
        &[],
    )
    .await
}

#[tokio::test]
async fn hot_cold_split_job_table_is_written_like_the_plain_one() {
    let db = at_generation(Generation::G035).await;
    let mut c = db.client().await;
    let columns_before = job_columns(&c).await;
    hotcold::split_job(&mut c).await;
    let s = store(&db, fast()).await;
    let d = s.detect().await.unwrap();
    assert!(d.hot_cold && d.generation == Generation::G035, "{d:?}");

    let g = Generation::G035;
    let (j1, j2) = (job("j1"), job_in("j2", job_state::RUNNING));
    s.write(
        InstructionSet {
            jobs_to_create: vec![j1.clone(), j2.clone()],
            ..Default::default()
        },
        g,
    )
    .await
    .unwrap();
    assert_eq!(
        hotcold::partitions(&c).await,
        [
            json!(["job_active", "j1", 1]),
            json!(["job_active", "j2", 3])
        ]
    );

    // j1 ends: the update moves its row to the cold partition.
    let done = UpdateJob {
        state: Some(job_state::SUCCEEDED),
        last_transition_time: Some(ts(5)),
        last_transition_time_seconds: Some(5),
        ..upd("j1")
    };
    let report = s
        .write(
            InstructionSet {
                jobs_to_update: vec![done],
                ..Default::default()
            },
            g,
        )
        .await
        .unwrap();
    assert_eq!(report.job_updated.affected, 1);
    assert_eq!(
        hotcold::partitions(&c).await,
        [
            json!(["job_terminated", "j1", 4]),
            json!(["job_active", "j2", 3])
        ]
    );

    // A redelivered creation of j1 (queued) must not add a second row next
    // to the cold one: batch, then row by row (a bad job id makes the batch
    // and its step fail).
    let report = s
        .write(
            InstructionSet {
                jobs_to_create: vec![j1.clone()],
                ..Default::default()
            },
            g,
        )
        .await
        .unwrap();
    assert_eq!(report.job_inserted.affected, 0);
    let mut bad = job("j3");
    bad.job_id = "y".repeat(33);
    let report = s
        .write(
            InstructionSet {
                jobs_to_create: vec![j1.clone(), bad, job("j4")],
                ..Default::default()
            },
            g,
        )
        .await
        .unwrap();
    assert!(report.fell_back);
    assert_eq!(report.failed.len(), 2, "{report:?}"); // the job and its spec
    assert_eq!(report.job_inserted.affected, 1);
    assert_eq!(
        hotcold::partitions(&c).await,
        [
            json!(["job_terminated", "j1", 4]),
            json!(["job_active", "j2", 3]),
            json!(["job_active", "j4", 1])
        ]
    );
    // The moved row is whole.
    assert_eq!(
        job_of(&c, "j1").await,
        with(
            job_row(&j1),
            json!({"state": 4, "last_transition_time": stamp(ts(5)), "last_transition_time_seconds": 5})
        )
    );
    // Same columns, same order, as before the split.
    assert_eq!(job_columns(&c).await, columns_before);
    db.drop_db().await;
}

/// Through the pipeline: a batch converted for the generation the store saw
/// at start-up, written after a migration, is converted again for the new
/// generation and written whole: no dead letter, acknowledged once.
#[tokio::test]
async fn pipeline_converts_again_when_the_schema_changes() {
    use lookout_ingester::convert::Converter;
    use lookout_ingester::pipeline;
    use lookout_ingester::sample::{
        error, event, failure, leased, pod_error, run_errors, sequence, submit, ts as pts,
    };
    use lookout_ingester::source::{Message, Origin};
    use prost::Message as _;
    use std::sync::Arc;

    let db = TestDb::migrated().await;
    let pool = connect_pool(&db.url, 2).await.unwrap();
    let s = Arc::new(Store::new(pool.clone(), fast()));
    assert_eq!(s.detect().await.unwrap().generation, Generation::G031);
    // The migration runs after start-up detection, before the first batch.
    let mut admin = db.client().await;
    lookout_ingester::migrate::migrate_to(&mut admin, 32)
        .await
        .unwrap();

    let seq = sequence(
        "queue-a",
        "set-1",
        "alice",
        vec![
            event(Some(pts(1)), submit("j1", "ns", 1, &[], None, &[])),
            event(Some(pts(2)), leased("j1", "r1", "c", "n", "p")),
            event(
                Some(pts(3)),
                run_errors(
                    "j1",
                    "r1",
                    vec![error(
                        true,
                        pod_error("oom", "n", &[137]),
                        Some(failure(137, "killed", &["oom"], "main")),
                    )],
                ),
            ),
        ],
    );
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    let origin = Origin::File {
        path: Arc::from("f"),
        index: 0,
    };
    tx.send(Message {
        payload: seq.encode_to_vec(),
        origin: origin.clone(),
        publish_time: None,
    })
    .await
    .unwrap();
    drop(tx);
    let (mut committed, stages) = pipeline::spawn(
        rx,
        Converter::new(Default::default()),
        s.clone(),
        common::dead_letters(pool),
        pipeline::Settings::default(),
    );
    let mut batches = Vec::new();
    while let Some(c) = committed.recv().await {
        batches.push(c);
    }
    stages.join().await.unwrap();
    assert_eq!(batches.len(), 1);
    assert_eq!(batches[0].origins, [origin]);
    assert_eq!(batches[0].dead_letters, 0);
    assert_eq!(s.generation(), Some(Generation::G032));

    let c = db.client().await;
    let row = run_of(&c, "r1").await;
    // Written by the 032 writer: a 031 write would have filled failure_info.
    assert_eq!(
        (
            &row["job_run_state"],
            &row["exit_code"],
            &row["failure_info"],
            row.get("failure_category").is_some()
        ),
        (&json!(run_state::FAILED), &json!(137), &Value::Null, true),
        "{row}"
    );
    assert_eq!(common::count(&c, "ingester_dead_letter").await, 0);
    db.drop_db().await;
}

/// `replay` into a database without the Lookout tables exits non-zero with
/// one line saying why and what to do, and writes nothing anywhere.
#[tokio::test]
async fn replay_refuses_an_unmigrated_database() {
    use lookout_ingester::sample::{event, sequence, submit, ts as pts};

    let db = TestDb::empty().await;
    let dir = tempfile::tempdir().unwrap();
    let seq = sequence(
        "queue-a",
        "set-1",
        "alice",
        vec![event(Some(pts(1)), submit("j1", "ns", 1, &[], None, &[]))],
    );
    let file = common::write_recording(dir.path().join("in.bin"), &common::payloads(&[seq]), false);
    let spool = dir.path().join("spool.jsonl");
    let out = common::replay_cli(&db.url, &spool, &file).await;
    assert_ne!(out.code, Some(0), "{}\n{}", out.stdout, out.stderr);
    let wanted = "refusing to write to this database: the Lookout tables are missing (no job table): run `lookout-ingester migrate` first";
    // The CLI's last word, once, on one line.
    let last = out.stderr.lines().last().unwrap_or_default();
    assert_eq!(last, format!("error: {wanted}"), "{}", out.stderr);
    assert_eq!(out.stdout, "");
    assert!(!spool.exists());
    assert_no_tables(&db).await;
    db.drop_db().await;
}

/// Row versions of every job and run, as `(key, xmin)`: a rewritten row gets
/// a new `xmin` even when its values are the same.
async fn versions(c: &Client) -> Vec<Value> {
    json_rows(
        c,
        "SELECT job_id AS key, xmin::text AS v FROM job
         UNION ALL SELECT run_id, xmin::text FROM job_run ORDER BY 1",
        &[],
    )
    .await
}

/// An update that would leave its row as it is (a redelivery) writes no new
/// row version, yet is reported exactly as the first application was; an
/// update that changes one column still writes.
#[tokio::test]
async fn updates_that_change_nothing_rewrite_nothing() {
    let db = TestDb::migrated().await;
    let c = db.client().await;
    let s = store(&db, fast()).await;
    let create = InstructionSet {
        jobs_to_create: vec![job("job-1"), job("job-2")],
        runs_to_create: vec![run("run-1", "job-1")],
        ..Default::default()
    };
    write(&s, create).await;
    let updates = || InstructionSet {
        jobs_to_update: vec![
            UpdateJob {
                state: Some(job_state::RUNNING),
                latest_run_id: Some("run-1".into()),
                ..upd("job-1")
            },
            // Terminal: a second application is filtered, not unchanged.
            UpdateJob {
                state: Some(job_state::SUCCEEDED),
                ..upd("job-2")
            },
            upd("missing"),
        ],
        runs_to_update: vec![
            UpdateJobRun {
                started: Some(ts(5)),
                job_run_state: Some(run_state::RUNNING),
                ..run_upd("run-1")
            },
            run_upd("no-run"),
        ],
        ..Default::default()
    };
    let first = write(&s, updates()).await;
    let (tables, rows) = (dump(&c).await, versions(&c).await);
    let second = write(&s, updates()).await;
    assert_eq!(dump(&c).await, tables);
    assert_eq!(versions(&c).await, rows, "an unchanged row was rewritten");
    assert_eq!(first.job_updated.affected, 2);
    assert_eq!(
        second.job_updated.affected, 1,
        "job-1 unchanged, job-2 terminal"
    );
    assert_eq!(second.filtered_terminal, 1);
    assert_eq!(first.job_run_updated.affected, 1);
    assert_eq!(second.job_run_updated.affected, 1);
    let want = [
        ("job", "missing".to_string()),
        ("job_run", "no-run".to_string()),
    ];
    assert_eq!(unmatched(&first), want);
    assert_eq!(unmatched(&second), want);

    // One changed column is written.
    let third = write(
        &s,
        InstructionSet {
            runs_to_update: vec![UpdateJobRun {
                exit_code: Some(3),
                ..run_upd("run-1")
            }],
            ..Default::default()
        },
    )
    .await;
    assert_eq!(third.job_run_updated.affected, 1);
    assert_ne!(versions(&c).await, rows);
    assert_eq!(run_of(&c, "run-1").await["exit_code"], json!(3));
    db.drop_db().await;
}
