//! Replay against the real Postgres: generated recordings in, table contents out.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::{count, dump, TestDb};
use lookout_ingester::convert::{Converter, Settings};
use lookout_ingester::model::{job_state, run_state};
use lookout_ingester::proto::armadaevents as ev;
use lookout_ingester::sample::{self, Fate};
use lookout_ingester::source::file::{encode_varint, RecordWriter};
use lookout_ingester::store::{self, Store, StoreSettings};
use lookout_ingester::{pipeline, replay};
use prost::Message;

fn write_file(dir: &Path, name: &str, seqs: &[ev::EventSequence], gzip: bool) -> PathBuf {
    let path = dir.join(name);
    let mut w = RecordWriter::create(&path, gzip).expect("create file");
    for s in seqs {
        w.write_record(&s.encode_to_vec()).expect("write record");
    }
    w.finish().expect("finish");
    path
}

async fn replay_into(db: &TestDb, files: Vec<PathBuf>, batch_size: usize) -> replay::Summary {
    let pool = store::connect_pool(&db.url, 4).await.expect("pool");
    let store = Arc::new(Store::new(pool.clone(), StoreSettings::default()));
    let dead = common::dead_letters(pool);
    let settings = pipeline::Settings {
        batch_size,
        ..pipeline::Settings::default()
    };
    replay::replay(
        files,
        Converter::new(Settings::default()),
        store,
        dead,
        settings,
        false,
    )
    .await
    .expect("replay")
}

fn expected_job_state(f: Fate) -> i16 {
    match f {
        Fate::Succeeded => job_state::SUCCEEDED,
        Fate::Failed => job_state::FAILED,
        Fate::Cancelled => job_state::CANCELLED,
        Fate::Preempted => job_state::PREEMPTED,
        Fate::Rejected => job_state::REJECTED,
        Fate::StillRunning => job_state::RUNNING,
    }
}

fn expected_run_state(f: Fate) -> Option<i16> {
    match f {
        Fate::Succeeded => Some(run_state::SUCCEEDED),
        Fate::Failed => Some(run_state::FAILED),
        Fate::Cancelled => Some(run_state::CANCELLED),
        Fate::Preempted => Some(run_state::PREEMPTED),
        Fate::Rejected => None,
        Fate::StillRunning => Some(run_state::RUNNING),
    }
}

#[tokio::test]
async fn replay_generated_file_fills_tables() {
    let dir = tempfile::tempdir().expect("tempdir");
    let generated = sample::generate_jobs(7, 400);
    let path = write_file(dir.path(), "events.bin.gz", &generated.sequences, true);
    let db = TestDb::migrated().await;
    let summary = replay_into(&db, vec![path], 10_000).await;
    assert!(summary.clean(), "{summary}");
    assert_eq!(summary.records as usize, generated.sequences.len());

    let client = db.client().await;
    assert_eq!(count(&client, "job").await, 400);
    assert_eq!(count(&client, "job_spec").await, 400);
    let with_runs = generated
        .jobs
        .iter()
        .filter(|j| j.fate != Fate::Rejected)
        .count() as i64;
    assert_eq!(count(&client, "job_run").await, with_runs);
    let rejected = generated
        .jobs
        .iter()
        .filter(|j| j.fate == Fate::Rejected)
        .count() as i64;
    assert_eq!(count(&client, "job_error").await, rejected);

    for j in &generated.jobs {
        let row = client
            .query_one("SELECT state, latest_run_id, queue, jobset, cpu, annotations::text, external_job_uri FROM job WHERE job_id = $1", &[&j.job_id])
            .await
            .expect("job row");
        let state: i16 = row.get(0);
        assert_eq!(
            state,
            expected_job_state(j.fate),
            "job {} ({:?})",
            j.job_id,
            j.fate
        );
        let latest: Option<String> = row.get(1);
        let annotations: String = row.get(5);
        assert!(
            annotations.contains("\"team\": \"sample\""),
            "{annotations}"
        );
        let uri: Option<String> = row.get(6);
        assert_eq!(uri.as_deref(), Some("https://example.invalid/job"));
        let Some(run_state) = expected_run_state(j.fate) else {
            assert_eq!(latest, None);
            continue;
        };
        assert_eq!(latest.as_deref(), Some(j.run_id.as_str()));
        let run = client
            .query_one(
                "SELECT job_run_state, exit_code, failure_info, node, leased, pending, started, finished FROM job_run WHERE run_id = $1",
                &[&j.run_id],
            )
            .await
            .expect("run row");
        let rs: i16 = run.get(0);
        assert_eq!(rs, run_state, "run of {} ({:?})", j.job_id, j.fate);
        let exit: Option<i32> = run.get(1);
        let fi: Option<serde_json::Value> = run.get(2);
        let node: Option<String> = run.get(3);
        assert!(node.as_deref().is_some_and(|n| n.starts_with("node-")));
        for (i, name) in ["leased", "pending", "started"].iter().enumerate() {
            let v: Option<chrono::NaiveDateTime> = run.get(4 + i);
            assert!(v.is_some(), "{name} of {}", j.run_id);
        }
        let finished: Option<chrono::NaiveDateTime> = run.get(7);
        assert_eq!(finished.is_some(), j.fate != Fate::StillRunning);
        match j.fate {
            Fate::Failed => {
                assert_eq!(exit, j.exit_code);
                let fi = fi.expect("failure_info of a failed run");
                assert_eq!(fi["exitCode"].as_i64(), j.exit_code.map(i64::from));
                assert_eq!(fi["containerName"], "main");
            }
            Fate::Succeeded => {
                assert_eq!(exit, Some(0));
                assert_eq!(fi, None);
            }
            _ => assert_eq!(fi, None),
        }
    }
    db.drop_db().await;
}

#[tokio::test]
async fn replaying_twice_leaves_identical_tables() {
    let dir = tempfile::tempdir().expect("tempdir");
    let seqs = sample::generate(11, 250);
    let path = write_file(dir.path(), "events.bin", &seqs, false);
    let db = TestDb::migrated().await;
    replay_into(&db, vec![path.clone()], 500).await;
    let client = db.client().await;
    let first = dump(&client).await;
    replay_into(&db, vec![path], 500).await;
    assert_eq!(dump(&client).await, first);
    db.drop_db().await;
}

#[tokio::test]
async fn batch_boundaries_do_not_change_the_result() {
    // Upstream's conflation lost cancel reasons and run pending times when an
    // earlier update for the same job or run shared the batch, so its tables
    // depended on where batches split. Ours must not.
    let dir = tempfile::tempdir().expect("tempdir");
    let mut seqs = sample::generate(3, 150);
    // One sequence holding a whole life cycle, with cancellation after other updates.
    seqs.push(sample::sequence(
        "q",
        "js",
        "u",
        vec![
            sample::event(
                Some(sample::ts(1)),
                sample::submit("cjob", "ns", 1, &[("cpu", "1")], None, &[]),
            ),
            sample::event(
                Some(sample::ts(2)),
                sample::leased("cjob", "crun", "c", "n", "p"),
            ),
            sample::event(Some(sample::ts(3)), sample::assigned("cjob", "crun")),
            sample::event(
                Some(sample::ts(4)),
                sample::running("cjob", "crun", Some("n")),
            ),
            sample::event(Some(sample::ts(5)), sample::reprioritised("cjob", 9)),
            sample::event(
                Some(sample::ts(6)),
                sample::cancelled("cjob", "user asked", "carol"),
            ),
            sample::event(Some(sample::ts(6)), sample::run_cancelled("cjob", "crun")),
        ],
    ));
    let path = write_file(dir.path(), "events.bin", &seqs, false);
    let a = TestDb::migrated().await;
    let b = TestDb::migrated().await;
    replay_into(&a, vec![path.clone()], 1).await;
    replay_into(&b, vec![path], 100_000).await;
    let (ca, cb) = (a.client().await, b.client().await);
    let dump_a = dump(&ca).await;
    assert_eq!(dump_a, dump(&cb).await);
    let row = cb
        .query_one(
            "SELECT cancel_reason, cancel_user, priority, state FROM job WHERE job_id = 'cjob'",
            &[],
        )
        .await
        .expect("row");
    assert_eq!(
        row.get::<_, Option<String>>(0).as_deref(),
        Some("user asked")
    );
    assert_eq!(row.get::<_, Option<String>>(1).as_deref(), Some("carol"));
    assert_eq!(row.get::<_, i64>(2), 9);
    assert_eq!(row.get::<_, i16>(3), job_state::CANCELLED);
    let pending: Option<chrono::NaiveDateTime> = cb
        .query_one("SELECT pending FROM job_run WHERE run_id = 'crun'", &[])
        .await
        .expect("run")
        .get(0);
    assert!(
        pending.is_some(),
        "pending survives conflation with later run updates"
    );
    a.drop_db().await;
    b.drop_db().await;
}

#[tokio::test]
async fn update_without_a_column_keeps_the_stored_value() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = vec![sample::sequence(
        "q",
        "js",
        "u",
        vec![
            sample::event(
                Some(sample::ts(1)),
                sample::submit("kjob", "ns", 0, &[], None, &[]),
            ),
            sample::event(
                Some(sample::ts(2)),
                sample::leased("kjob", "krun", "c", "n0", "p"),
            ),
            sample::event(
                Some(sample::ts(3)),
                sample::running("kjob", "krun", Some("node-a")),
            ),
        ],
    )];
    // A later batch: a pod error without a node name must not erase the node.
    let second = vec![sample::sequence(
        "q",
        "js",
        "u",
        vec![sample::event(
            Some(sample::ts(4)),
            sample::run_errors(
                "kjob",
                "krun",
                vec![sample::error(
                    true,
                    sample::pod_error("oops", "", &[2]),
                    None,
                )],
            ),
        )],
    )];
    let p1 = write_file(dir.path(), "a.bin", &first, false);
    let p2 = write_file(dir.path(), "b.bin", &second, false);
    let db = TestDb::migrated().await;
    replay_into(&db, vec![p1], 10).await;
    replay_into(&db, vec![p2], 10).await;
    let client = db.client().await;
    let row = client
        .query_one(
            "SELECT node, started, exit_code, job_run_state FROM job_run WHERE run_id = 'krun'",
            &[],
        )
        .await
        .expect("run");
    assert_eq!(row.get::<_, Option<String>>(0).as_deref(), Some("node-a"));
    assert!(row.get::<_, Option<chrono::NaiveDateTime>>(1).is_some());
    assert_eq!(row.get::<_, Option<i32>>(2), Some(2));
    assert_eq!(row.get::<_, i16>(3), run_state::FAILED);
    db.drop_db().await;
}

#[tokio::test]
async fn bad_records_are_skipped_reported_and_the_rest_applied() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = sample::sequence(
        "q",
        "js",
        "u",
        vec![sample::event(
            Some(sample::ts(1)),
            sample::submit("good1", "ns", 0, &[], None, &[]),
        )],
    );
    let empty_queue = sample::sequence(
        "",
        "js",
        "u",
        vec![sample::event(
            Some(sample::ts(1)),
            sample::submit("lost1", "ns", 0, &[], None, &[]),
        )],
    );
    let no_created = sample::sequence(
        "q",
        "js",
        "u",
        vec![
            sample::event(None, sample::submit("nocreated", "ns", 0, &[], None, &[])),
            sample::event(
                Some(sample::ts(2)),
                sample::submit("good2", "ns", 0, &[], None, &[]),
            ),
        ],
    );
    let path = dir.path().join("mixed.bin");
    let mut bytes = Vec::new();
    for payload in [
        good.encode_to_vec(),
        vec![0xff, 0xff, 0xff, 0x01, 0x02], // not a protobuf message
        empty_queue.encode_to_vec(),
        no_created.encode_to_vec(),
    ] {
        encode_varint(payload.len() as u64, &mut bytes);
        bytes.extend(payload);
    }
    // A record cut short by a crash while recording.
    encode_varint(1000, &mut bytes);
    bytes.extend([1, 2, 3]);
    std::fs::write(&path, &bytes).expect("write");

    let db = TestDb::migrated().await;
    // Through the real binary, for the exit status and the printed summary.
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_lookout-ingester"))
        .args(["replay", "--database-url", &db.url, "--dead-letter-spool"])
        .arg(dir.path().join("spool.jsonl"))
        .arg(&path)
        .output()
        .await
        .expect("run binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(3),
        "exit status says input was skipped\n{stdout}\n{stderr}"
    );
    for reason in ["decode", "empty_queue", "missing_created", "file"] {
        assert!(stdout.contains(reason), "summary names {reason}:\n{stdout}");
    }
    assert!(
        stderr.contains("record 1"),
        "log locates the undecodable record:\n{stderr}"
    );
    assert!(
        stderr.contains("record 3 event 0"),
        "log locates the event:\n{stderr}"
    );
    let client = db.client().await;
    let ids: Vec<String> = client
        .query("SELECT job_id FROM job ORDER BY job_id", &[])
        .await
        .expect("jobs")
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(ids, vec!["good1".to_string(), "good2".to_string()]);
    db.drop_db().await;
}

#[tokio::test]
async fn clean_replay_exits_zero_and_prints_summary() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_file(dir.path(), "events.bin.gz", &sample::generate(5, 50), true);
    let db = TestDb::migrated().await;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_lookout-ingester"))
        .args(["replay", "--database-url", &db.url, "--dead-letter-spool"])
        .arg(dir.path().join("spool.jsonl"))
        .arg(&path)
        .output()
        .await
        .expect("run binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("submit_job") && stdout.contains("events/s"),
        "{stdout}"
    );
    assert!(stdout.contains("job insert"), "{stdout}");
    db.drop_db().await;
}
