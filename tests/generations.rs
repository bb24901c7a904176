//! Schema generations 031–035 end to end: one crafted event stream that
//! touches every rule that differs between generations, replayed through the
//! binary into a database at each generation (and at 035 with the hot/cold
//! split of `job`), a stream mixing old-style and new-style events, and a
//! database migrated from 031 to 035 between two replays. The expected rows
//! are written out per generation as data.

mod common;

use std::io::Read;
use std::path::Path;

use common::{hotcold, json_rows, migrate_cli, payloads, replay_cli, write_recording, TestDb};
use lookout_ingester::proto::armadaevents as ev;
use lookout_ingester::sample::{
    self, assigned, cancelled, categorised_error, event, job_errors, leased, pod_error,
    run_cancelled_by, run_debug_info, run_errors, run_preempted_by, running, submit, ts,
    with_external_job_uri,
};
use serde_json::{json, Map, Value};
use tokio_postgres::Client;

use ev::event_sequence::event::Event as Kind;

const QUEUE: &str = "q";
const JOBSET: &str = "js";
/// An owner with surrounding spaces: trimmed at 035 only.
const SPACED: &str = " alice ";
const BOB: &str = "bob";

/// One sequence of one event, as Armada publishes a life-cycle step.
fn step(user: &str, secs: i64, kind: Kind) -> ev::EventSequence {
    sample::sequence(QUEUE, JOBSET, user, vec![event(Some(ts(secs)), kind)])
}

/// A SubmitJob carrying both SubmitJob.external_job_uri (16) and the
/// annotation: 032+ take the field, 031 the annotation.
fn submit_with_uri(job_id: &str) -> Kind {
    let k = submit(
        job_id,
        "ns",
        1,
        &[("cpu", "1")],
        None,
        &[
            (
                "armadaproject.io/externalJobUri",
                "https://annotation.invalid/uri",
            ),
            ("team", "gen"),
        ],
    );
    with_external_job_uri(k, "https://field16.invalid/uri")
}

fn plain_submit(job_id: &str) -> Kind {
    submit(job_id, "ns", 1, &[("cpu", "1")], None, &[])
}

/// An Error with the old FailureInfo (15) and the new category fields (16/17).
fn err(
    terminal: bool,
    reason: ev::error::Reason,
    failure: Option<ev::FailureInfo>,
    category: &str,
    subcategory: &str,
) -> ev::Error {
    ev::Error {
        failure_info: failure,
        ..categorised_error(terminal, reason, category, subcategory)
    }
}

fn preempted_error() -> ev::error::Reason {
    ev::error::Reason::JobRunPreemptedError(Default::default())
}

/// Lease, assignment and running for `job` on node `n1`, from `t`.
fn start(user: &str, t: i64, job: &str, run: &str) -> Vec<ev::EventSequence> {
    vec![
        step(user, t, leased(job, run, "c1", "n1", "pool-a")),
        step(user, t + 1, assigned(job, run)),
        step(user, t + 2, running(job, run, Some("n1"))),
    ]
}

/// A category longer than 63 characters (two bytes each) with a NUL in it.
fn long_category() -> String {
    format!("\u{0}{}", "é".repeat(70))
}

/// The crafted stream, in two parts: the first is what the migration test
/// replays at 031 (every job submitted and started, `gen-fail` failed), the
/// second what it replays at 035.
fn stream() -> (Vec<ev::EventSequence>, Vec<ev::EventSequence>) {
    let mut first = vec![
        step(BOB, 1, submit_with_uri("gen-uri")),
        step(BOB, 2, plain_submit("gen-fail")),
        step(BOB, 3, plain_submit("gen-nonterm")),
        step(BOB, 4, plain_submit("gen-preerr")),
        step(BOB, 5, plain_submit("gen-pre1")),
        step(SPACED, 6, plain_submit("gen-pre2")),
        step(BOB, 7, plain_submit("gen-can1")),
        step(SPACED, 8, plain_submit("gen-can2")),
    ];
    for (i, (user, job, run)) in [
        (BOB, "gen-fail", "run-fail"),
        (BOB, "gen-nonterm", "run-nonterm"),
        (BOB, "gen-preerr", "run-preerr"),
        (BOB, "gen-pre1", "run-pre1"),
        (SPACED, "gen-pre2", "run-pre2"),
        (BOB, "gen-can1", "run-can1"),
        (SPACED, "gen-can2", "run-can2"),
    ]
    .into_iter()
    .enumerate()
    {
        first.extend(start(user, 100 + 10 * i as i64, job, run));
    }
    first.push(step(
        BOB,
        200,
        run_errors(
            "gen-fail",
            "run-fail",
            vec![err(
                true,
                pod_error("boom", "n1", &[3]),
                Some(sample::failure(3, "oom", &["OOM"], "main")),
                &long_category(),
                "oom\u{0}killer",
            )],
        ),
    ));
    first.push(step(
        BOB,
        201,
        job_errors(
            "gen-fail",
            vec![sample::error(true, pod_error("boom", "n1", &[3]), None)],
        ),
    ));
    let second = vec![
        // Event 26 after the failure: only the debug column changes (035).
        step(
            BOB,
            300,
            run_debug_info("gen-fail", "run-fail", "terminated: details"),
        ),
        // A non-terminal first error: no failure columns, even though a
        // terminal one follows.
        step(
            BOB,
            310,
            run_errors(
                "gen-nonterm",
                "run-nonterm",
                vec![
                    err(
                        false,
                        pod_error("flaky", "n1", &[1]),
                        Some(sample::failure(1, "flaky", &["net"], "main")),
                        "transient",
                        "net",
                    ),
                    err(
                        true,
                        pod_error("fatal", "n1", &[2]),
                        Some(sample::failure(2, "fatal", &["x"], "main")),
                        "later",
                        "never",
                    ),
                ],
            ),
        ),
        // A preemption error first: skipped, the second error decides.
        step(
            BOB,
            320,
            run_errors(
                "gen-preerr",
                "run-preerr",
                vec![
                    err(
                        true,
                        preempted_error(),
                        Some(sample::failure(9, "preempted", &["p"], "main")),
                        "preempt-cat",
                        "preempt-sub",
                    ),
                    err(
                        true,
                        pod_error("second", "n2", &[7]),
                        Some(sample::failure(7, "second msg", &["user"], "side")),
                        "user-error",
                        "",
                    ),
                ],
            ),
        ),
        // Preempted with reason, preempting job and requestor (with a NUL).
        step(
            BOB,
            330,
            run_preempted_by(
                "gen-pre1",
                "run-pre1",
                "preempted by gen-winner",
                "gen-winner",
                "car\u{0}ol",
            ),
        ),
        // Event 26 with an empty message on a run without debug text.
        step(BOB, 331, run_debug_info("gen-pre1", "run-pre1", "")),
        // Preempted with nothing: 034 writes no reason, 035 the owner.
        step(
            SPACED,
            340,
            run_preempted_by("gen-pre2", "run-pre2", "", "", ""),
        ),
        step(
            BOB,
            350,
            run_cancelled_by("gen-can1", "run-can1", "user asked", "dave"),
        ),
        step(BOB, 351, cancelled("gen-can1", "user asked", "dave")),
        step(
            SPACED,
            360,
            run_cancelled_by("gen-can2", "run-can2", "", ""),
        ),
        step(SPACED, 361, cancelled("gen-can2", "", "")),
    ];
    (first, second)
}

fn whole_stream() -> Vec<ev::EventSequence> {
    let (mut first, second) = stream();
    first.extend(second);
    first
}

// ---------------------------------------------------------------------------
// Running the binary

/// `migrate --to n` through the binary (`--allow-drop` from 033 on, which
/// drops failure_info).
async fn migrate_to(db: &TestDb, n: i64) {
    let to = n.to_string();
    let mut args = vec!["--to", to.as_str()];
    if n >= 33 {
        args.push("--allow-drop");
    }
    let out = migrate_cli(&db.url, &args).await;
    assert_eq!(
        out.code,
        Some(0),
        "migrate --to {n}\nstdout:\n{}\nstderr:\n{}",
        out.stdout,
        out.stderr
    );
}

/// A fresh database at generation `n`, split hot/cold if asked.
async fn database_at(n: i64, hot_cold: bool) -> TestDb {
    // `migrate` (031 and the ingester's own tables), then `--to n`.
    let db = TestDb::migrated().await;
    migrate_to(&db, n).await;
    if hot_cold {
        hotcold::split_job(&mut db.client().await).await;
    }
    db
}

/// `replay` of `seqs` through the binary; asserts it exited cleanly and
/// that nothing was dead-lettered (in the table or the spool).
async fn replay(db: &TestDb, dir: &Path, name: &str, seqs: &[ev::EventSequence]) {
    let file = write_recording(dir.join(name), &payloads(seqs), false);
    let spool = dir.join(format!("{name}.spool.jsonl"));
    let out = replay_cli(&db.url, &spool, &file).await;
    let client = db.client().await;
    let dead = json_rows(
        &client,
        "SELECT source, reason, error FROM ingester_dead_letter ORDER BY id",
        &[],
    )
    .await;
    assert_eq!(dead, Vec::<Value>::new(), "dead letters after {name}");
    assert!(!spool.exists(), "dead letters spooled after {name}");
    assert_eq!(
        out.code,
        Some(0),
        "replay {name}\nstdout:\n{}\nstderr:\n{}",
        out.stdout,
        out.stderr
    );
}

// ---------------------------------------------------------------------------
// Reading the tables

/// The bytes inside a zlib stream (the error, debug and job_spec columns).
fn unzlib(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::ZlibDecoder::new(b)
        .read_to_end(&mut out)
        .unwrap_or_else(|e| panic!("not a zlib stream ({e}): {b:?}"));
    out
}

/// zlib-compressed text as a string (the error and debug columns).
fn inflate(b: &[u8]) -> String {
    String::from_utf8_lossy(&unzlib(b)).into_owned()
}

/// Every job_run row as JSON, `error` and `debug` inflated to text.
async fn runs(client: &Client) -> Vec<Value> {
    client
        .query(
            "SELECT to_jsonb(t) - 'error' - 'debug', error, debug FROM job_run t ORDER BY run_id",
            &[],
        )
        .await
        .unwrap_or_else(|e| panic!("job_run rows: {e}"))
        .iter()
        .map(|r| {
            let mut v: Value = r.get(0);
            let error: Option<Vec<u8>> = r.get(1);
            let debug: Option<Vec<u8>> = r.get(2);
            if let Value::Object(m) = &mut v {
                m.insert("error".into(), json!(error.as_deref().map(inflate)));
                m.insert("debug".into(), json!(debug.as_deref().map(inflate)));
            }
            v
        })
        .collect()
}

/// Every job row as JSON, with `spec_owner`: the owner inside its job_spec
/// (trimmed at 035 like the column).
async fn jobs(client: &Client) -> Vec<Value> {
    let mut rows = json_rows(client, "SELECT * FROM job ORDER BY job_id", &[]).await;
    let specs = client
        .query("SELECT job_id::text, job_spec FROM job_spec", &[])
        .await
        .unwrap_or_else(|e| panic!("job_spec rows: {e}"));
    for row in &mut rows {
        let id = row["job_id"].as_str().unwrap_or_default().to_string();
        let owner = specs
            .iter()
            .find(|s| s.get::<_, String>(0) == id)
            .map(|s| spec_owner(s.get(1)));
        if let Value::Object(m) = row {
            m.insert("spec_owner".into(), json!(owner));
        }
    }
    rows
}

/// The owner recorded in a compressed `api.Job`.
fn spec_owner(compressed: Vec<u8>) -> String {
    use prost::Message;
    lookout_ingester::proto::api::Job::decode(unzlib(&compressed).as_slice())
        .unwrap_or_else(|e| panic!("job_spec is not an api.Job: {e}"))
        .owner
}

/// The columns whose values (or presence) depend on the generation.
const JOB_VARYING: [&str; 4] = ["owner", "spec_owner", "external_job_uri", "cancel_user"];
const RUN_VARYING: [&str; 5] = [
    "failure_info",
    "failure_category",
    "failure_subcategory",
    "scheduler_termination_reason",
    "debug",
];

/// Splits each row into the columns every generation writes alike and the
/// generation-dependent ones (present only if the column exists), keyed by
/// `key`.
fn split(rows: &[Value], key: &str, varying: &[&str]) -> (Vec<Value>, Value) {
    let mut same = Vec::new();
    let mut by_key = Map::new();
    for row in rows {
        let mut common = row.as_object().cloned().unwrap_or_default();
        let mut vary = Map::new();
        for c in varying {
            if let Some(v) = common.remove(*c) {
                vary.insert((*c).to_string(), v);
            }
        }
        let k = common
            .get(key)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        by_key.insert(k, Value::Object(vary));
        same.push(Value::Object(common));
    }
    (same, Value::Object(by_key))
}

/// The job and job_run rows, each [`split`] into the columns every
/// generation writes alike and the generation-dependent ones.
struct Tables {
    same_jobs: Vec<Value>,
    jobs_g: Value,
    same_runs: Vec<Value>,
    runs_g: Value,
}

async fn tables(db: &TestDb) -> Tables {
    let client = db.client().await;
    let (same_jobs, jobs_g) = split(&jobs(&client).await, "job_id", &JOB_VARYING);
    let (same_runs, runs_g) = split(&runs(&client).await, "run_id", &RUN_VARYING);
    Tables {
        same_jobs,
        jobs_g,
        same_runs,
        runs_g,
    }
}

/// Asserts the tables after the crafted stream: the columns that never
/// depend on the generation against [`same_jobs`]/[`same_runs`], the others
/// against `jobs_g`/`runs_g`.
async fn assert_tables(db: &TestDb, what: &str, jobs_g: Value, runs_g: Value) {
    let got = tables(db).await;
    assert_eq!(json!(got.same_jobs), same_jobs(), "{what}: job");
    assert_eq!(got.jobs_g, jobs_g, "{what}: job, generation columns");
    assert_eq!(json!(got.same_runs), same_runs(), "{what}: job_run");
    assert_eq!(got.runs_g, runs_g, "{what}: job_run, generation columns");
}

// ---------------------------------------------------------------------------
// Expected rows of the crafted stream

/// The job columns no generation rule touches (every generation alike).
fn same_jobs() -> Value {
    json!([
    {
        "job_id": "gen-can1", "queue": "q", "jobset": "js", "namespace": "ns", "priority": 1,
        "priority_class": null, "cpu": 1000, "memory": 0, "ephemeral_storage": 0, "gpu": 0,
        "annotations": {}, "submitted": "2026-01-01T00:00:07", "state": 6,
        "last_transition_time": "2026-01-01T00:05:51",
        "last_transition_time_seconds": 1767225951, "latest_run_id": "run-can1",
        "cancelled": "2026-01-01T00:05:51", "cancel_reason": "user asked", "duplicate": false,
        "job_spec": null
    },
    {
        "job_id": "gen-can2", "queue": "q", "jobset": "js", "namespace": "ns", "priority": 1,
        "priority_class": null, "cpu": 1000, "memory": 0, "ephemeral_storage": 0, "gpu": 0,
        "annotations": {}, "submitted": "2026-01-01T00:00:08", "state": 6,
        "last_transition_time": "2026-01-01T00:06:01",
        "last_transition_time_seconds": 1767225961, "latest_run_id": "run-can2",
        "cancelled": "2026-01-01T00:06:01", "cancel_reason": null, "duplicate": false,
        "job_spec": null
    },
    {
        "job_id": "gen-fail", "queue": "q", "jobset": "js", "namespace": "ns", "priority": 1,
        "priority_class": null, "cpu": 1000, "memory": 0, "ephemeral_storage": 0, "gpu": 0,
        "annotations": {}, "submitted": "2026-01-01T00:00:02", "state": 5,
        "last_transition_time": "2026-01-01T00:03:21",
        "last_transition_time_seconds": 1767225801, "latest_run_id": "run-fail",
        "cancelled": null, "cancel_reason": null, "duplicate": false, "job_spec": null
    },
    {
        "job_id": "gen-nonterm", "queue": "q", "jobset": "js", "namespace": "ns",
        "priority": 1, "priority_class": null, "cpu": 1000, "memory": 0,
        "ephemeral_storage": 0, "gpu": 0, "annotations": {},
        "submitted": "2026-01-01T00:00:03", "state": 3,
        "last_transition_time": "2026-01-01T00:01:52",
        "last_transition_time_seconds": 1767225712, "latest_run_id": "run-nonterm",
        "cancelled": null, "cancel_reason": null, "duplicate": false, "job_spec": null
    },
    {
        "job_id": "gen-pre1", "queue": "q", "jobset": "js", "namespace": "ns", "priority": 1,
        "priority_class": null, "cpu": 1000, "memory": 0, "ephemeral_storage": 0, "gpu": 0,
        "annotations": {}, "submitted": "2026-01-01T00:00:05", "state": 3,
        "last_transition_time": "2026-01-01T00:02:12",
        "last_transition_time_seconds": 1767225732, "latest_run_id": "run-pre1",
        "cancelled": null, "cancel_reason": null, "duplicate": false, "job_spec": null
    },
    {
        "job_id": "gen-pre2", "queue": "q", "jobset": "js", "namespace": "ns", "priority": 1,
        "priority_class": null, "cpu": 1000, "memory": 0, "ephemeral_storage": 0, "gpu": 0,
        "annotations": {}, "submitted": "2026-01-01T00:00:06", "state": 3,
        "last_transition_time": "2026-01-01T00:02:22",
        "last_transition_time_seconds": 1767225742, "latest_run_id": "run-pre2",
        "cancelled": null, "cancel_reason": null, "duplicate": false, "job_spec": null
    },
    {
        "job_id": "gen-preerr", "queue": "q", "jobset": "js", "namespace": "ns", "priority": 1,
        "priority_class": null, "cpu": 1000, "memory": 0, "ephemeral_storage": 0, "gpu": 0,
        "annotations": {}, "submitted": "2026-01-01T00:00:04", "state": 3,
        "last_transition_time": "2026-01-01T00:02:02",
        "last_transition_time_seconds": 1767225722, "latest_run_id": "run-preerr",
        "cancelled": null, "cancel_reason": null, "duplicate": false, "job_spec": null
    },
    {
        "job_id": "gen-uri", "queue": "q", "jobset": "js", "namespace": "ns", "priority": 1,
        "priority_class": null, "cpu": 1000, "memory": 0, "ephemeral_storage": 0, "gpu": 0,
        "annotations": {"externalJobUri": "https://annotation.invalid/uri", "team": "gen"},
        "submitted": "2026-01-01T00:00:01", "state": 1,
        "last_transition_time": "2026-01-01T00:00:01",
        "last_transition_time_seconds": 1767225601, "latest_run_id": null, "cancelled": null,
        "cancel_reason": null, "duplicate": false, "job_spec": null
    },
    ])
}

/// The job_run columns no generation rule touches (every generation alike).
fn same_runs() -> Value {
    json!([
    {
        "run_id": "run-can1", "job_id": "gen-can1", "cluster": "c1", "node": "n1",
        "pool": "pool-a", "leased": "2026-01-01T00:02:30", "pending": "2026-01-01T00:02:31",
        "started": "2026-01-01T00:02:32", "finished": "2026-01-01T00:05:50",
        "job_run_state": 12, "exit_code": null, "error": null, "ingress_addresses": null
    },
    {
        "run_id": "run-can2", "job_id": "gen-can2", "cluster": "c1", "node": "n1",
        "pool": "pool-a", "leased": "2026-01-01T00:02:40", "pending": "2026-01-01T00:02:41",
        "started": "2026-01-01T00:02:42", "finished": "2026-01-01T00:06:00",
        "job_run_state": 12, "exit_code": null, "error": null, "ingress_addresses": null
    },
    {
        "run_id": "run-fail", "job_id": "gen-fail", "cluster": "c1", "node": "n1",
        "pool": "pool-a", "leased": "2026-01-01T00:01:40", "pending": "2026-01-01T00:01:41",
        "started": "2026-01-01T00:01:42", "finished": "2026-01-01T00:03:20",
        "job_run_state": 4, "exit_code": 3, "error": "boom", "ingress_addresses": null
    },
    {
        "run_id": "run-nonterm", "job_id": "gen-nonterm", "cluster": "c1", "node": "n1",
        "pool": "pool-a", "leased": "2026-01-01T00:01:50", "pending": "2026-01-01T00:01:51",
        "started": "2026-01-01T00:01:52", "finished": null, "job_run_state": 4, "exit_code": 1,
        "error": "flaky", "ingress_addresses": null
    },
    {
        "run_id": "run-pre1", "job_id": "gen-pre1", "cluster": "c1", "node": "n1",
        "pool": "pool-a", "leased": "2026-01-01T00:02:10", "pending": "2026-01-01T00:02:11",
        "started": "2026-01-01T00:02:12", "finished": "2026-01-01T00:05:30",
        "job_run_state": 6, "exit_code": null, "error": "preempted by gen-winner",
        "ingress_addresses": null
    },
    {
        "run_id": "run-pre2", "job_id": "gen-pre2", "cluster": "c1", "node": "n1",
        "pool": "pool-a", "leased": "2026-01-01T00:02:20", "pending": "2026-01-01T00:02:21",
        "started": "2026-01-01T00:02:22", "finished": "2026-01-01T00:05:40",
        "job_run_state": 6, "exit_code": null, "error": "", "ingress_addresses": null
    },
    {
        "run_id": "run-preerr", "job_id": "gen-preerr", "cluster": "c1", "node": "n2",
        "pool": "pool-a", "leased": "2026-01-01T00:02:00", "pending": "2026-01-01T00:02:01",
        "started": "2026-01-01T00:02:02", "finished": "2026-01-01T00:05:20",
        "job_run_state": 4, "exit_code": 7, "error": "second", "ingress_addresses": null
    },
    ])
}

/// owner (and the job_spec's), external_job_uri and cancel_user, by job.
fn jobs_at(generation: i64) -> Value {
    match generation {
        31 => json!({
            "gen-can1": {"owner": "bob", "spec_owner": "bob", "external_job_uri": "", "cancel_user": "dave"},
            "gen-can2": {"owner": " alice ", "spec_owner": " alice ", "external_job_uri": "", "cancel_user": null},
            "gen-fail": {"owner": "bob", "spec_owner": "bob", "external_job_uri": "", "cancel_user": null},
            "gen-nonterm": {"owner": "bob", "spec_owner": "bob", "external_job_uri": "", "cancel_user": null},
            "gen-pre1": {"owner": "bob", "spec_owner": "bob", "external_job_uri": "", "cancel_user": null},
            "gen-pre2": {"owner": " alice ", "spec_owner": " alice ", "external_job_uri": "", "cancel_user": null},
            "gen-preerr": {"owner": "bob", "spec_owner": "bob", "external_job_uri": "", "cancel_user": null},
            "gen-uri": {"owner": "bob", "spec_owner": "bob", "external_job_uri": "https://annotation.invalid/uri", "cancel_user": null},
        }),
        // 032, 033 and 034 differ from 031 in SubmitJob field 16 only.
        32..=34 => json!({
            "gen-can1": {"owner": "bob", "spec_owner": "bob", "external_job_uri": "", "cancel_user": "dave"},
            "gen-can2": {"owner": " alice ", "spec_owner": " alice ", "external_job_uri": "", "cancel_user": null},
            "gen-fail": {"owner": "bob", "spec_owner": "bob", "external_job_uri": "", "cancel_user": null},
            "gen-nonterm": {"owner": "bob", "spec_owner": "bob", "external_job_uri": "", "cancel_user": null},
            "gen-pre1": {"owner": "bob", "spec_owner": "bob", "external_job_uri": "", "cancel_user": null},
            "gen-pre2": {"owner": " alice ", "spec_owner": " alice ", "external_job_uri": "", "cancel_user": null},
            "gen-preerr": {"owner": "bob", "spec_owner": "bob", "external_job_uri": "", "cancel_user": null},
            "gen-uri": {"owner": "bob", "spec_owner": "bob", "external_job_uri": "https://field16.invalid/uri", "cancel_user": null},
        }),
        35 => json!({
            "gen-can1": {"owner": "bob", "spec_owner": "bob", "external_job_uri": "", "cancel_user": "dave"},
            "gen-can2": {"owner": "alice", "spec_owner": "alice", "external_job_uri": "", "cancel_user": "alice"},
            "gen-fail": {"owner": "bob", "spec_owner": "bob", "external_job_uri": "", "cancel_user": null},
            "gen-nonterm": {"owner": "bob", "spec_owner": "bob", "external_job_uri": "", "cancel_user": null},
            "gen-pre1": {"owner": "bob", "spec_owner": "bob", "external_job_uri": "", "cancel_user": null},
            "gen-pre2": {"owner": "alice", "spec_owner": "alice", "external_job_uri": "", "cancel_user": null},
            "gen-preerr": {"owner": "bob", "spec_owner": "bob", "external_job_uri": "", "cancel_user": null},
            "gen-uri": {"owner": "bob", "spec_owner": "bob", "external_job_uri": "https://field16.invalid/uri", "cancel_user": null},
        }),
        _ => panic!("no expectation for generation {generation}"),
    }
}

/// 63 of the long category's 70 characters, its NUL removed.
fn cut_category() -> String {
    "é".repeat(63)
}

/// The failure and termination columns and the debug text, by run; a
/// column the generation does not have is absent.
fn runs_at(generation: i64) -> Value {
    let failure_info_fail = json!({
        "exitCode": 3, "terminationMessage": "oom", "categories": ["OOM"], "containerName": "main"
    });
    let failure_info_preerr = json!({
        "exitCode": 7, "terminationMessage": "second msg", "categories": ["user"],
        "containerName": "side"
    });
    match generation {
        31 => json!({
            "run-can1": {"failure_info": null, "debug": null},
            "run-can2": {"failure_info": null, "debug": null},
            "run-fail": {"failure_info": failure_info_fail, "debug": "debug: boom"},
            "run-nonterm": {"failure_info": null, "debug": "debug: flaky"},
            "run-pre1": {"failure_info": null, "debug": null},
            "run-pre2": {"failure_info": null, "debug": null},
            "run-preerr": {"failure_info": failure_info_preerr, "debug": "debug: second"},
        }),
        // failure_info still exists but is never written.
        32 => json!({
            "run-can1": {"failure_info": null, "failure_category": null, "failure_subcategory": null, "debug": null},
            "run-can2": {"failure_info": null, "failure_category": null, "failure_subcategory": null, "debug": null},
            "run-fail": {"failure_info": null, "failure_category": cut_category(), "failure_subcategory": "oomkiller", "debug": "debug: boom"},
            "run-nonterm": {"failure_info": null, "failure_category": null, "failure_subcategory": null, "debug": "debug: flaky"},
            "run-pre1": {"failure_info": null, "failure_category": null, "failure_subcategory": null, "debug": null},
            "run-pre2": {"failure_info": null, "failure_category": null, "failure_subcategory": null, "debug": null},
            "run-preerr": {"failure_info": null, "failure_category": "user-error", "failure_subcategory": null, "debug": "debug: second"},
        }),
        33 => json!({
            "run-can1": {"failure_category": null, "failure_subcategory": null, "debug": null},
            "run-can2": {"failure_category": null, "failure_subcategory": null, "debug": null},
            "run-fail": {"failure_category": cut_category(), "failure_subcategory": "oomkiller", "debug": "debug: boom"},
            "run-nonterm": {"failure_category": null, "failure_subcategory": null, "debug": "debug: flaky"},
            "run-pre1": {"failure_category": null, "failure_subcategory": null, "debug": null},
            "run-pre2": {"failure_category": null, "failure_subcategory": null, "debug": null},
            "run-preerr": {"failure_category": "user-error", "failure_subcategory": null, "debug": "debug: second"},
        }),
        // Only a preemption with a reason or a preempting job writes the reason.
        34 => json!({
            "run-can1": {"failure_category": null, "failure_subcategory": null, "scheduler_termination_reason": null, "debug": null},
            "run-can2": {"failure_category": null, "failure_subcategory": null, "scheduler_termination_reason": null, "debug": null},
            "run-fail": {"failure_category": cut_category(), "failure_subcategory": "oomkiller", "scheduler_termination_reason": null, "debug": "debug: boom"},
            "run-nonterm": {"failure_category": null, "failure_subcategory": null, "scheduler_termination_reason": null, "debug": "debug: flaky"},
            "run-pre1": {"failure_category": null, "failure_subcategory": null, "scheduler_termination_reason": {"reason": "preempted by gen-winner", "args": {"preemptingJobId": "gen-winner"}}, "debug": null},
            "run-pre2": {"failure_category": null, "failure_subcategory": null, "scheduler_termination_reason": null, "debug": null},
            "run-preerr": {"failure_category": "user-error", "failure_subcategory": null, "scheduler_termination_reason": null, "debug": "debug: second"},
        }),
        // Requestors (the trimmed owner as fallback for preemption only),
        // cancellation reasons, and event 26's debug text.
        35 => json!({
            "run-can1": {"failure_category": null, "failure_subcategory": null, "scheduler_termination_reason": {"reason": "user asked", "args": {"requestor": "dave"}}, "debug": null},
            "run-can2": {"failure_category": null, "failure_subcategory": null, "scheduler_termination_reason": {"reason": "no reason provided"}, "debug": null},
            "run-fail": {"failure_category": cut_category(), "failure_subcategory": "oomkiller", "scheduler_termination_reason": null, "debug": "terminated: details"},
            "run-nonterm": {"failure_category": null, "failure_subcategory": null, "scheduler_termination_reason": null, "debug": "debug: flaky"},
            "run-pre1": {"failure_category": null, "failure_subcategory": null, "scheduler_termination_reason": {"reason": "preempted by gen-winner", "args": {"preemptingJobId": "gen-winner", "requestor": "carol"}}, "debug": ""},
            "run-pre2": {"failure_category": null, "failure_subcategory": null, "scheduler_termination_reason": {"reason": "", "args": {"requestor": "alice"}}, "debug": null},
            "run-preerr": {"failure_category": "user-error", "failure_subcategory": null, "scheduler_termination_reason": null, "debug": "debug: second"},
        }),
        _ => panic!("no expectation for generation {generation}"),
    }
}

// ---------------------------------------------------------------------------
// Tests

/// The crafted stream replayed into a fresh database at `generation`.
async fn crafted_stream_at(generation: i64, hot_cold: bool) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = database_at(generation, hot_cold).await;
    replay(&db, dir.path(), "crafted.bin", &whole_stream()).await;
    let what = format!("generation {generation}, hot/cold {hot_cold}");
    assert_tables(&db, &what, jobs_at(generation), runs_at(generation)).await;
    if hot_cold {
        // Terminal jobs in job_terminated, the others in job_active, each once.
        let want = [
            json!(["job_terminated", "gen-can1", 6]),
            json!(["job_terminated", "gen-can2", 6]),
            json!(["job_terminated", "gen-fail", 5]),
            json!(["job_active", "gen-nonterm", 3]),
            json!(["job_active", "gen-pre1", 3]),
            json!(["job_active", "gen-pre2", 3]),
            json!(["job_active", "gen-preerr", 3]),
            json!(["job_active", "gen-uri", 1]),
        ];
        assert_eq!(hotcold::partitions(&db.client().await).await, want);
        // Again: a terminal job's submit must not create a second row in
        // job_active (job_id alone is no longer a key there).
        replay(&db, dir.path(), "crafted-again.bin", &whole_stream()).await;
        assert_eq!(hotcold::partitions(&db.client().await).await, want);
        assert_tables(
            &db,
            &format!("{what}, replayed twice"),
            jobs_at(generation),
            runs_at(generation),
        )
        .await;
    }
    db.drop_db().await;
}

#[tokio::test]
async fn crafted_stream_at_031() {
    crafted_stream_at(31, false).await;
}

#[tokio::test]
async fn crafted_stream_at_032() {
    crafted_stream_at(32, false).await;
}

#[tokio::test]
async fn crafted_stream_at_033() {
    crafted_stream_at(33, false).await;
}

#[tokio::test]
async fn crafted_stream_at_034() {
    crafted_stream_at(34, false).await;
}

#[tokio::test]
async fn crafted_stream_at_035() {
    crafted_stream_at(35, false).await;
}

#[tokio::test]
async fn crafted_stream_at_035_with_the_hot_cold_split() {
    crafted_stream_at(35, true).await;
}

/// Old-style events (FailureInfo, the URI only as an annotation) and
/// new-style ones (categories, SubmitJob field 16, event 26) in one stream.
fn mixed_stream() -> Vec<ev::EventSequence> {
    let old_submit = submit(
        "mix-old",
        "ns",
        1,
        &[("cpu", "1")],
        None,
        &[(
            "armadaproject.io/externalJobUri",
            "https://annotation.invalid/old",
        )],
    );
    let new_submit = with_external_job_uri(plain_submit("mix-new"), "https://field16.invalid/new");
    let mut seqs = vec![step(BOB, 1, old_submit), step(BOB, 2, new_submit)];
    seqs.extend(start(BOB, 10, "mix-old", "run-old"));
    seqs.extend(start(BOB, 20, "mix-new", "run-new"));
    seqs.push(step(
        BOB,
        30,
        run_errors(
            "mix-old",
            "run-old",
            vec![sample::error(
                true,
                pod_error("old boom", "n1", &[4]),
                Some(sample::failure(4, "old", &["legacy"], "main")),
            )],
        ),
    ));
    seqs.push(step(
        BOB,
        31,
        run_errors(
            "mix-new",
            "run-new",
            vec![err(
                true,
                pod_error("new boom", "n1", &[5]),
                None,
                "cat-new",
                "sub-new",
            )],
        ),
    ));
    seqs.push(step(
        BOB,
        32,
        run_debug_info("mix-new", "run-new", "new debug"),
    ));
    seqs
}

/// The generation-dependent columns after [`mixed_stream`], as
/// (jobs, runs).
fn mixed_at(generation: i64) -> (Value, Value) {
    match generation {
        31 => (
            json!({
                "mix-new": {"owner": "bob", "spec_owner": "bob", "external_job_uri": "", "cancel_user": null},
                "mix-old": {"owner": "bob", "spec_owner": "bob", "external_job_uri": "https://annotation.invalid/old", "cancel_user": null},
            }),
            json!({
                "run-new": {"failure_info": null, "debug": "debug: new boom"},
                "run-old": {
                    "failure_info": {"exitCode": 4, "terminationMessage": "old", "categories": ["legacy"], "containerName": "main"},
                    "debug": "debug: old boom"
                },
            }),
        ),
        35 => (
            json!({
                "mix-new": {"owner": "bob", "spec_owner": "bob", "external_job_uri": "https://field16.invalid/new", "cancel_user": null},
                "mix-old": {"owner": "bob", "spec_owner": "bob", "external_job_uri": "https://annotation.invalid/old", "cancel_user": null},
            }),
            json!({
                "run-new": {"failure_category": "cat-new", "failure_subcategory": "sub-new", "scheduler_termination_reason": null, "debug": "new debug"},
                "run-old": {"failure_category": null, "failure_subcategory": null, "scheduler_termination_reason": null, "debug": "debug: old boom"},
            }),
        ),
        _ => panic!("no expectation for generation {generation}"),
    }
}

/// The mixed stream at `generation`; returns the columns every generation
/// writes alike, for comparison across generations.
async fn mixed_stream_at(generation: i64) -> (Vec<Value>, Vec<Value>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = database_at(generation, false).await;
    replay(&db, dir.path(), "mixed.bin", &mixed_stream()).await;
    let got = tables(&db).await;
    let (want_jobs, want_runs) = mixed_at(generation);
    assert_eq!(got.jobs_g, want_jobs, "generation {generation}: job");
    assert_eq!(got.runs_g, want_runs, "generation {generation}: job_run");
    db.drop_db().await;
    (got.same_jobs, got.same_runs)
}

#[tokio::test]
async fn mixed_old_and_new_events_at_031_and_035() {
    let at_031 = mixed_stream_at(31).await;
    let at_035 = mixed_stream_at(35).await;
    // Nothing else differs; both runs failed at their error.
    assert_eq!(at_031, at_035);
    let states: Vec<(Value, Value, Value)> = at_035
        .1
        .iter()
        .map(|r| {
            (
                r["run_id"].clone(),
                r["job_run_state"].clone(),
                r["exit_code"].clone(),
            )
        })
        .collect();
    assert_eq!(
        states,
        vec![
            (json!("run-new"), json!(4), json!(5)),
            (json!("run-old"), json!(4), json!(4)),
        ]
    );
}

#[tokio::test]
async fn migrating_from_031_to_035_between_two_replays() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (first, second) = stream();
    let db = database_at(31, false).await;
    replay(&db, dir.path(), "first.bin", &first).await;
    let client = db.client().await;
    let before = json_rows(
        &client,
        "SELECT run_id, failure_info FROM job_run WHERE failure_info IS NOT NULL",
        &[],
    )
    .await;
    assert_eq!(
        before,
        vec![json!({
            "run_id": "run-fail",
            "failure_info": {"exitCode": 3, "terminationMessage": "oom", "categories": ["OOM"], "containerName": "main"}
        })]
    );
    migrate_to(&db, 35).await;
    replay(&db, dir.path(), "second.bin", &second).await;
    // Jobs submitted at 031 keep their owner and annotation URI; the
    // cancellation at 035 falls back to the trimmed owner.
    let jobs_g = json!({
        "gen-can1": {"owner": "bob", "spec_owner": "bob", "external_job_uri": "", "cancel_user": "dave"},
        "gen-can2": {"owner": " alice ", "spec_owner": " alice ", "external_job_uri": "", "cancel_user": "alice"},
        "gen-fail": {"owner": "bob", "spec_owner": "bob", "external_job_uri": "", "cancel_user": null},
        "gen-nonterm": {"owner": "bob", "spec_owner": "bob", "external_job_uri": "", "cancel_user": null},
        "gen-pre1": {"owner": "bob", "spec_owner": "bob", "external_job_uri": "", "cancel_user": null},
        "gen-pre2": {"owner": " alice ", "spec_owner": " alice ", "external_job_uri": "", "cancel_user": null},
        "gen-preerr": {"owner": "bob", "spec_owner": "bob", "external_job_uri": "", "cancel_user": null},
        "gen-uri": {"owner": "bob", "spec_owner": "bob", "external_job_uri": "https://annotation.invalid/uri", "cancel_user": null},
    });
    // run-fail failed at 031: its failure_info went with the column and it
    // has no category; everything after follows 035 (the preemption's
    // requestor falls back to the owner the event carries, trimmed).
    let runs_g = json!({
        "run-can1": {"failure_category": null, "failure_subcategory": null, "scheduler_termination_reason": {"reason": "user asked", "args": {"requestor": "dave"}}, "debug": null},
        "run-can2": {"failure_category": null, "failure_subcategory": null, "scheduler_termination_reason": {"reason": "no reason provided"}, "debug": null},
        "run-fail": {"failure_category": null, "failure_subcategory": null, "scheduler_termination_reason": null, "debug": "terminated: details"},
        "run-nonterm": {"failure_category": null, "failure_subcategory": null, "scheduler_termination_reason": null, "debug": "debug: flaky"},
        "run-pre1": {"failure_category": null, "failure_subcategory": null, "scheduler_termination_reason": {"reason": "preempted by gen-winner", "args": {"preemptingJobId": "gen-winner", "requestor": "carol"}}, "debug": ""},
        "run-pre2": {"failure_category": null, "failure_subcategory": null, "scheduler_termination_reason": {"reason": "", "args": {"requestor": "alice"}}, "debug": null},
        "run-preerr": {"failure_category": "user-error", "failure_subcategory": null, "scheduler_termination_reason": null, "debug": "debug: second"},
    });
    assert_tables(&db, "031, then migrated to 035", jobs_g, runs_g).await;
    db.drop_db().await;
}
