//! Replay against the real Postgres: generated recordings in, table contents out.

mod common;

use std::path::{Path, PathBuf};

use common::{count, dump, json_row, json_rows, payloads, write_recording, TestDb};
use lookout_ingester::model::{job_state, run_state};
use lookout_ingester::proto::armadaevents as ev;
use lookout_ingester::sample::{self, Fate};
use lookout_ingester::source::file::encode_varint;
use lookout_ingester::{pipeline, replay};
use prost::Message;
use serde_json::{json, Value};

fn write_file(dir: &Path, name: &str, seqs: &[ev::EventSequence], gzip: bool) -> PathBuf {
    write_recording(dir.join(name), &payloads(seqs), gzip)
}

async fn replay_into(db: &TestDb, files: Vec<PathBuf>, batch_size: usize) -> replay::Summary {
    let settings = pipeline::Settings {
        batch_size,
        ..pipeline::Settings::default()
    };
    common::replay_files(&db.url, files, settings).await
}

/// `replay` through the real binary (for the exit status and the printed
/// summary), its dead-letter spool in `dir`.
async fn replay_cli(db: &TestDb, dir: &Path, file: &Path) -> common::CliOutput {
    common::replay_cli(&db.url, &dir.join("spool.jsonl"), file).await
}

/// A sequence of `events` in `queue`, job set `js`, from user `u`.
fn seq_in(queue: &str, events: Vec<ev::event_sequence::Event>) -> ev::EventSequence {
    sample::sequence(queue, "js", "u", events)
}

/// The submission of `job_id` (namespace `ns`, nothing requested) at `secs`.
fn submit_at(secs: i64, job_id: &str) -> ev::event_sequence::Event {
    sample::event(
        Some(sample::ts(secs)),
        sample::submit(job_id, "ns", 0, &[], None, &[]),
    )
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

    // Each job's row, and its run's, by key; what the generator cannot
    // predict (times, node suffixes, failure texts) is checked as a fact.
    let mut jobs = generated.jobs.clone();
    jobs.sort_by(|a, b| a.job_id.cmp(&b.job_id));
    let want_jobs: Vec<Value> = jobs
        .iter()
        .map(|j| {
            let latest = expected_run_state(j.fate).map(|_| j.run_id.clone());
            json!({
                "job_id": j.job_id,
                "state": expected_job_state(j.fate),
                "latest_run_id": latest,
                "team": "sample",
                "external_job_uri": "https://example.invalid/job",
            })
        })
        .collect();
    let got_jobs = json_rows(
        &client,
        "SELECT job_id, state, latest_run_id, annotations->>'team' AS team, external_job_uri
         FROM job ORDER BY job_id",
        &[],
    )
    .await;
    assert_eq!(got_jobs, want_jobs);

    jobs.sort_by(|a, b| a.run_id.cmp(&b.run_id));
    let want_runs: Vec<Value> = jobs
        .iter()
        .filter_map(|j| {
            let state = expected_run_state(j.fate)?;
            let failed = j.fate == Fate::Failed;
            let exit_code = match j.fate {
                Fate::Failed => j.exit_code,
                Fate::Succeeded => Some(0),
                _ => None,
            };
            Some(json!({
                "run_id": j.run_id,
                "job_id": j.job_id,
                "job_run_state": state,
                "exit_code": exit_code,
                "on_a_node": true,
                "leased": true,
                "pending": true,
                "started": true,
                "finished": j.fate != Fate::StillRunning,
                "has_failure_info": failed,
                "failure_exit_code": if failed { j.exit_code } else { None },
                "failure_container": if failed { Some("main") } else { None },
            }))
        })
        .collect();
    let got_runs = json_rows(
        &client,
        "SELECT run_id, job_id, job_run_state, exit_code,
                coalesce(node LIKE 'node-%', false) AS on_a_node,
                leased IS NOT NULL AS leased, pending IS NOT NULL AS pending,
                started IS NOT NULL AS started, finished IS NOT NULL AS finished,
                failure_info IS NOT NULL AS has_failure_info,
                failure_info->'exitCode' AS failure_exit_code,
                failure_info->>'containerName' AS failure_container
         FROM job_run ORDER BY run_id",
        &[],
    )
    .await;
    assert_eq!(got_runs, want_runs);
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
    seqs.push(seq_in(
        "q",
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
    let row = json_row(
        &cb,
        "SELECT cancel_reason, cancel_user, priority, state,
                (SELECT pending IS NOT NULL FROM job_run WHERE run_id = 'crun') AS run_pending
         FROM job WHERE job_id = 'cjob'",
        &[],
    )
    .await;
    // run_pending: pending survives conflation with later run updates.
    assert_eq!(
        row,
        json!({
            "cancel_reason": "user asked",
            "cancel_user": "carol",
            "priority": 9,
            "state": job_state::CANCELLED,
            "run_pending": true,
        })
    );
    a.drop_db().await;
    b.drop_db().await;
}

#[tokio::test]
async fn update_without_a_column_keeps_the_stored_value() {
    let dir = tempfile::tempdir().expect("tempdir");
    let first = vec![seq_in(
        "q",
        vec![
            submit_at(1, "kjob"),
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
    let second = vec![seq_in(
        "q",
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
    let row = json_row(
        &client,
        "SELECT node, started IS NOT NULL AS started, exit_code, job_run_state
         FROM job_run WHERE run_id = 'krun'",
        &[],
    )
    .await;
    assert_eq!(
        row,
        json!({
            "node": "node-a",
            "started": true,
            "exit_code": 2,
            "job_run_state": run_state::FAILED,
        })
    );
    db.drop_db().await;
}

#[tokio::test]
async fn bad_records_are_skipped_reported_and_the_rest_applied() {
    let dir = tempfile::tempdir().expect("tempdir");
    let good = seq_in("q", vec![submit_at(1, "good1")]);
    let empty_queue = seq_in("", vec![submit_at(1, "lost1")]);
    let no_created = seq_in(
        "q",
        vec![
            sample::event(None, sample::submit("nocreated", "ns", 0, &[], None, &[])),
            submit_at(2, "good2"),
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
    let out = replay_cli(&db, dir.path(), &path).await;
    let (stdout, stderr) = (&out.stdout, &out.stderr);
    assert_eq!(
        out.code,
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
    let ids = json_rows(&client, "SELECT job_id FROM job ORDER BY job_id", &[]).await;
    assert_eq!(
        ids,
        [json!({"job_id": "good1"}), json!({"job_id": "good2"})]
    );
    db.drop_db().await;
}

#[tokio::test]
async fn clean_replay_exits_zero_and_prints_summary() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = write_file(dir.path(), "events.bin.gz", &sample::generate(5, 50), true);
    let db = TestDb::migrated().await;
    let out = replay_cli(&db, dir.path(), &path).await;
    let stdout = &out.stdout;
    assert_eq!(out.code, Some(0), "{stdout}\n{}", out.stderr);
    assert!(
        stdout.contains("submit_job") && stdout.contains("events/s"),
        "{stdout}"
    );
    assert!(stdout.contains("job insert"), "{stdout}");
    db.drop_db().await;
}

/// Replays `file` through the binary with `extra` arguments.
async fn replay_cli_with(
    db: &TestDb,
    dir: &Path,
    extra: &[&str],
    file: &Path,
) -> common::CliOutput {
    let spool = dir.join("spool.jsonl");
    let mut args: Vec<std::ffi::OsString> = vec![
        "replay".into(),
        "--database-url".into(),
        db.url.clone().into(),
        "--dead-letter-spool".into(),
        spool.into(),
    ];
    args.extend(extra.iter().map(Into::into));
    args.push(file.into());
    common::cli(args).await
}

/// Files that are not recordings are refused before anything is stored:
/// exit 1, "<file> does not look like a recording", no rows, no dead
/// letters; `--force` reads one anyway.
#[tokio::test]
async fn files_that_are_not_recordings_are_refused_unless_forced() {
    let dir = tempfile::tempdir().expect("tempdir");
    let readme = dir.path().join("README.md");
    std::fs::write(&readme, include_str!("../README.md")).expect("write");
    let png = dir.path().join("image.png");
    let mut png_bytes = vec![0x89, b'P', b'N', b'G', 0x0d, 0x0a, 0x1a, 0x0a];
    png_bytes.extend((0..2000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
    std::fs::write(&png, &png_bytes).expect("write");
    let inner = write_file(dir.path(), "inner.bin.gz", &sample::generate(3, 5), true);
    let double = dir.path().join("double.bin.gz");
    {
        use std::io::Write;
        let mut w = flate2::write::GzEncoder::new(
            std::fs::File::create(&double).expect("create"),
            flate2::Compression::default(),
        );
        w.write_all(&std::fs::read(&inner).expect("read"))
            .expect("gzip");
        w.finish().expect("finish");
    }
    let random = dir.path().join("random.bin");
    let mut seed = 7u64;
    let bytes: Vec<u8> = (0..10_000)
        .map(|_| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) as u8
        })
        .collect();
    std::fs::write(&random, bytes).expect("write");

    let db = TestDb::migrated().await;
    let client = db.client().await;
    for file in [&readme, &png, &double, &random] {
        let out = replay_cli_with(&db, dir.path(), &[], file).await;
        assert_eq!(
            out.code,
            Some(1),
            "{}: {}\n{}",
            file.display(),
            out.stdout,
            out.stderr
        );
        let message = format!("{} does not look like a recording", file.display());
        assert!(out.stderr.contains(&message), "{}", out.stderr);
        assert_eq!(count(&client, "job").await, 0);
        assert_eq!(count(&client, "ingester_dead_letter").await, 0);
        assert!(!dir.path().join("spool.jsonl").exists());
    }
    let out = replay_cli_with(&db, dir.path(), &["--force"], &readme).await;
    assert_eq!(out.code, Some(3), "{}\n{}", out.stdout, out.stderr);
    db.drop_db().await;
}

/// A long run of records that are not event sequences stops the file as
/// corrupt from the run's first record, reported once, with no dead letter
/// per record; what came before is stored. A shorter run is a few bad
/// records among good ones: dead letters, and reading goes on.
#[tokio::test]
async fn a_long_corrupt_region_stops_the_file_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let record = |bytes: &mut Vec<u8>, payload: &[u8]| {
        encode_varint(payload.len() as u64, bytes);
        bytes.extend(payload);
    };
    let good = |id: &str| seq_in("q", vec![submit_at(1, id)]).encode_to_vec();
    let garbage = [0xff, 0xff, 0xff, 0x01];
    let mut short = Vec::new();
    record(&mut short, &good("a1"));
    for _ in 0..replay::CORRUPT_RUN_RECORDS - 1 {
        record(&mut short, &garbage);
    }
    record(&mut short, &good("a2"));
    let mut long = Vec::new();
    record(&mut long, &good("b1"));
    for _ in 0..replay::CORRUPT_RUN_RECORDS + 50 {
        record(&mut long, &garbage);
    }
    record(&mut long, &good("b2"));
    let (short_path, long_path) = (dir.path().join("short.bin"), dir.path().join("long.bin"));
    std::fs::write(&short_path, short).expect("write");
    std::fs::write(&long_path, long).expect("write");

    let db = TestDb::migrated().await;
    let client = db.client().await;
    let out = replay_cli_with(&db, dir.path(), &[], &long_path).await;
    assert_eq!(out.code, Some(3), "{}\n{}", out.stdout, out.stderr);
    let message = format!(
        "{} record 1: file: corrupt from record 1",
        long_path.display()
    );
    assert_eq!(
        out.stderr.matches("corrupt from record").count(),
        1,
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains(&message), "{}", out.stderr);
    let ids = json_rows(&client, "SELECT job_id FROM job ORDER BY job_id", &[]).await;
    assert_eq!(ids, [json!({"job_id": "b1"})]);
    assert_eq!(count(&client, "ingester_dead_letter").await, 0);

    let out = replay_cli_with(&db, dir.path(), &[], &short_path).await;
    assert_eq!(out.code, Some(3), "{}\n{}", out.stdout, out.stderr);
    assert!(!out.stderr.contains("corrupt from"), "{}", out.stderr);
    assert_eq!(
        count(&client, "ingester_dead_letter").await,
        replay::CORRUPT_RUN_RECORDS as i64 - 1
    );
    let ids = json_rows(&client, "SELECT job_id FROM job ORDER BY job_id", &[]).await;
    assert_eq!(
        ids,
        [
            json!({"job_id": "a1"}),
            json!({"job_id": "a2"}),
            json!({"job_id": "b1"})
        ]
    );
    db.drop_db().await;
}

/// The two switches are separate: `--force` reads a file that does not look
/// like a recording but still stops at a long corrupt region;
/// `--read-past-corrupt` reads through such a region (each record a dead
/// letter) but does not let a non-recording in.
#[tokio::test]
async fn force_and_read_past_corrupt_are_separate_switches() {
    let dir = tempfile::tempdir().expect("tempdir");
    let record = |bytes: &mut Vec<u8>, payload: &[u8]| {
        encode_varint(payload.len() as u64, bytes);
        bytes.extend(payload);
    };
    let good = |id: &str| seq_in("q", vec![submit_at(1, id)]).encode_to_vec();
    let garbage = [0xff, 0xff, 0xff, 0x01];
    let region = replay::CORRUPT_RUN_RECORDS + 50;
    // A recording with a long corrupt region in the middle.
    let mut long = Vec::new();
    record(&mut long, &good("c1"));
    for _ in 0..region {
        record(&mut long, &garbage);
    }
    record(&mut long, &good("c2"));
    // Not a recording: it starts with the garbage, then a long run of it.
    let mut headless = Vec::new();
    for _ in 0..region {
        record(&mut headless, &garbage);
    }
    record(&mut headless, &good("d1"));
    let (long_path, headless_path) = (dir.path().join("long.bin"), dir.path().join("headless.bin"));
    std::fs::write(&long_path, long).expect("write");
    std::fs::write(&headless_path, headless).expect("write");
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let jobs = || async {
        json_rows(&client, "SELECT job_id FROM job ORDER BY job_id", &[])
            .await
            .into_iter()
            .map(|r| r["job_id"].as_str().unwrap_or_default().to_string())
            .collect::<Vec<_>>()
    };

    // --force does not read past the region any more.
    let out = replay_cli_with(&db, dir.path(), &["--force"], &long_path).await;
    assert_eq!(out.code, Some(3), "{}\n{}", out.stdout, out.stderr);
    assert_eq!(
        out.stderr.matches("corrupt from record 1").count(),
        1,
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("--read-past-corrupt"), "{}", out.stderr);
    assert_eq!(jobs().await, ["c1"]);
    assert_eq!(count(&client, "ingester_dead_letter").await, 0);

    // --read-past-corrupt does: every garbage record a dead letter, c2 stored.
    let out = replay_cli_with(&db, dir.path(), &["--read-past-corrupt"], &long_path).await;
    assert_eq!(out.code, Some(3), "{}\n{}", out.stdout, out.stderr);
    assert!(!out.stderr.contains("corrupt from"), "{}", out.stderr);
    assert_eq!(jobs().await, ["c1", "c2"]);
    assert_eq!(count(&client, "ingester_dead_letter").await, region as i64);

    // --read-past-corrupt alone does not let a non-recording in.
    let out = replay_cli_with(&db, dir.path(), &["--read-past-corrupt"], &headless_path).await;
    assert_eq!(out.code, Some(1), "{}\n{}", out.stdout, out.stderr);
    let refused = format!("{} does not look like a recording", headless_path.display());
    assert!(out.stderr.contains(&refused), "{}", out.stderr);
    // --force alone lets it in but stops at once: the file is one corrupt region.
    let out = replay_cli_with(&db, dir.path(), &["--force"], &headless_path).await;
    assert_eq!(out.code, Some(3), "{}\n{}", out.stdout, out.stderr);
    assert_eq!(
        out.stderr.matches("corrupt from record 0").count(),
        1,
        "{}",
        out.stderr
    );
    assert_eq!(jobs().await, ["c1", "c2"]);
    // Both: read through, d1 stored.
    let out = replay_cli_with(
        &db,
        dir.path(),
        &["--force", "--read-past-corrupt"],
        &headless_path,
    )
    .await;
    assert_eq!(out.code, Some(3), "{}\n{}", out.stdout, out.stderr);
    assert_eq!(jobs().await, ["c1", "c2", "d1"]);
    assert_eq!(
        count(&client, "ingester_dead_letter").await,
        2 * region as i64
    );
    db.drop_db().await;
}

/// A missing file is named as missing (not "record 0"); an empty file is
/// remarked on and is no error.
#[tokio::test]
async fn missing_and_empty_files_are_reported_plainly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = TestDb::migrated().await;
    let missing = dir.path().join("missing.bin");
    let out = replay_cli_with(&db, dir.path(), &[], &missing).await;
    assert_eq!(out.code, Some(3), "{}\n{}", out.stdout, out.stderr);
    let message = format!("{}: no such file", missing.display());
    assert!(out.stderr.contains(&message), "{}", out.stderr);
    assert!(!out.stderr.contains("record 0"), "{}", out.stderr);

    let empty = dir.path().join("empty.bin");
    std::fs::write(&empty, b"").expect("write");
    let out = replay_cli_with(&db, dir.path(), &[], &empty).await;
    assert_eq!(out.code, Some(0), "{}\n{}", out.stdout, out.stderr);
    let remark = format!("{} is empty", empty.display());
    assert!(out.stdout.contains(&remark), "{}", out.stdout);
    db.drop_db().await;
}

/// SIGTERM (or SIGINT) during a replay: what was read is committed, the
/// summary of it is printed, and the exit status says it was interrupted.
#[tokio::test(flavor = "multi_thread")]
async fn an_interrupted_replay_prints_what_was_committed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let seqs = sample::generate(9, 3000);
    let total = seqs.len();
    let path = write_file(dir.path(), "big.bin", &seqs, false);
    let db = TestDb::migrated().await;
    let client = db.client().await;
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_lookout-ingester"))
            .args(["replay", "--database-url", &db.url, "--batch-size", "1"])
            .arg("--dead-letter-spool")
            .arg(dir.path().join("spool.jsonl"))
            .arg(&path)
            .env_remove("LOOKOUT_DATABASE_URL")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn");
        let pid = child.id().expect("pid") as i32;
        let before = count(&client, "job").await;
        let waited = std::time::Instant::now();
        while count(&client, "job").await == before {
            assert!(waited.elapsed().as_secs() < 60, "no progress");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(pid, signal);
        }
        let out =
            tokio::time::timeout(std::time::Duration::from_secs(60), child.wait_with_output())
                .await
                .expect("exits after the signal")
                .expect("output");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(130), "{stdout}\n{stderr}");
        assert!(stdout.contains("interrupted"), "{stdout}");
        let records: usize = stdout
            .split("replayed ")
            .nth(1)
            .and_then(|s| s.split(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no record count:\n{stdout}"));
        assert!(
            records > 0 && records < total,
            "{records} of {total}\n{stdout}"
        );
    }
    db.drop_db().await;
}
