//! Dead letters end to end: what cannot be applied is kept byte for byte,
//! listed, shown, retried (and removed once it applies), purged, and spooled
//! to a local file when Postgres refuses it.

mod common;

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use common::{bytea, json_row, json_rows, write_recording, CliOutput, TestDb};
use lookout_ingester::proto::armadaevents as ev;
use lookout_ingester::sample::{
    self, error, event, leased, pod_error, run_errors, running, sequence, submit, ts,
};
use prost::Message;
use serde_json::json;

fn write(dir: &Path, name: &str, payloads: &[Vec<u8>]) -> PathBuf {
    write_recording(dir.join(name), payloads, false)
}

/// The binary: the subcommand first, then the shared database and spool
/// options, then the rest of `args`.
async fn run(db: &TestDb, spool: &Path, args: &[&str]) -> CliOutput {
    let (first, rest) = args
        .split_first()
        .map(|(f, r)| (*f, r))
        .unwrap_or(("", &[]));
    let mut all: Vec<&OsStr> = vec![
        first.as_ref(),
        "--database-url".as_ref(),
        db.url.as_ref(),
        "--dead-letter-spool".as_ref(),
        spool.as_os_str(),
    ];
    all.extend(rest.iter().map(|a| OsStr::new(*a)));
    common::cli(all).await
}

fn seq1(events: Vec<ev::event_sequence::Event>) -> Vec<u8> {
    sequence("q", "js", "u", events).encode_to_vec()
}

#[tokio::test]
async fn poison_inputs_are_kept_listed_shown_retried_and_purged() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = dir.path().join("spool.jsonl");
    let garbage = vec![0xff, 0xff, 0xff, 0x01, 0x02];
    let empty_queue = sequence(
        "",
        "js",
        "u",
        vec![event(Some(ts(1)), submit("lost", "ns", 0, &[], None, &[]))],
    )
    .encode_to_vec();
    // A run update that arrives before the run exists.
    let early = seq1(vec![event(
        Some(ts(5)),
        run_errors(
            "dj",
            "dr",
            vec![error(
                true,
                pod_error("boom", "n1", &[3]),
                Some(sample::failure(3, "bad", &["x"], "main")),
            )],
        ),
    )]);
    let good = seq1(vec![event(
        Some(ts(1)),
        submit("ok1", "ns", 0, &[], None, &[]),
    )]);
    let file = write(
        dir.path(),
        "mixed.bin",
        &[good, garbage.clone(), empty_queue.clone(), early.clone()],
    );

    let db = TestDb::migrated().await;
    let out = run(&db, &spool, &["replay", file.to_str().unwrap_or_default()]).await;
    assert_eq!(out.code, Some(3), "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("dead letters: 3"), "{}", out.stdout);

    let client = db.client().await;
    let got = json_rows(
        &client,
        "SELECT source, reason, payload FROM ingester_dead_letter ORDER BY id",
        &[],
    )
    .await;
    let name = file.display().to_string();
    assert_eq!(
        got,
        [
            json!({"source": format!("{name} record 1"), "reason": "decode", "payload": bytea(&garbage)}),
            json!({"source": format!("{name} record 2"), "reason": "empty_queue", "payload": bytea(&empty_queue)}),
            json!({"source": format!("{name} record 3"), "reason": "unknown_run", "payload": bytea(&early)}),
        ]
    );

    // Replaying again does not duplicate them.
    let _ = run(&db, &spool, &["replay", file.to_str().unwrap_or_default()]).await;
    assert_eq!(common::count(&client, "ingester_dead_letter").await, 3);

    // list --json: one object per line with the documented fields.
    let out = run(&db, &spool, &["dead-letters", "list", "--json"]).await;
    assert_eq!(out.code, Some(0));
    let objs: Vec<serde_json::Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("json line"))
        .collect();
    assert_eq!(objs.len(), 3);
    for o in &objs {
        for k in ["id", "source", "reason", "error", "created"] {
            assert!(o.get(k).is_some(), "{k} in {o}");
        }
    }
    let ids: Vec<i64> = objs.iter().filter_map(|o| o["id"].as_i64()).collect();

    // show: decodes the payload.
    let out = run(&db, &spool, &["dead-letters", "show", &ids[2].to_string()]).await;
    assert!(
        out.stdout.contains("job_run_errors") && out.stdout.contains("unknown_run"),
        "{}",
        out.stdout
    );

    // The run arrives; retrying the early update now applies it and removes it.
    let later = write(
        dir.path(),
        "later.bin",
        &[seq1(vec![
            event(Some(ts(1)), submit("dj", "ns", 0, &[], None, &[])),
            event(Some(ts(2)), leased("dj", "dr", "c", "n1", "p")),
            event(Some(ts(3)), running("dj", "dr", Some("n1"))),
        ])],
    );
    let out = run(&db, &spool, &["replay", later.to_str().unwrap_or_default()]).await;
    assert_eq!(out.code, Some(0));
    let out = run(&db, &spool, &["dead-letters", "retry", "--all"]).await;
    assert_eq!(out.code, Some(3), "two still fail: {}", out.stdout);
    assert!(
        out.stdout
            .contains("1 applied and removed, 2 still failing"),
        "{}",
        out.stdout
    );
    let run_row = json_row(
        &client,
        "SELECT job_run_state, exit_code FROM job_run WHERE run_id = 'dr'",
        &[],
    )
    .await;
    assert_eq!(
        run_row,
        json!({"job_run_state": lookout_ingester::model::run_state::FAILED, "exit_code": 3})
    );
    let left = json_rows(
        &client,
        "SELECT reason, retries FROM ingester_dead_letter ORDER BY id",
        &[],
    )
    .await;
    assert_eq!(
        left,
        [
            json!({"reason": "decode", "retries": 1}),
            json!({"reason": "empty_queue", "retries": 1}),
        ]
    );

    // purge: nothing is older than an hour; everything is older than 0s.
    let out = run(
        &db,
        &spool,
        &["dead-letters", "purge", "--older-than", "1h"],
    )
    .await;
    assert!(out.stdout.contains("purged 0"), "{}", out.stdout);
    let out = run(
        &db,
        &spool,
        &["dead-letters", "purge", "--older-than", "0s"],
    )
    .await;
    assert!(out.stdout.contains("purged 2"), "{}", out.stdout);
    assert_eq!(common::count(&client, "ingester_dead_letter").await, 0);
    db.drop_db().await;
}

#[tokio::test]
async fn refused_dead_letters_go_to_the_spool_and_are_flushed_later() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = dir.path().join("spool.jsonl");
    let db = TestDb::migrated().await;
    let client = db.client().await;
    // Postgres refuses dead letters (a permanent error on that table only).
    client
        .batch_execute(
            "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RAISE EXCEPTION 'refused for the test'; END $$;
             CREATE TRIGGER refuse BEFORE INSERT ON ingester_dead_letter FOR EACH ROW EXECUTE FUNCTION refuse();",
        )
        .await
        .expect("trigger");
    let garbage = vec![0x0a, 0xff, 0x00, 0x13];
    let file = write(
        dir.path(),
        "bad.bin",
        &[
            garbage.clone(),
            seq1(vec![event(
                Some(ts(1)),
                submit("fine", "ns", 0, &[], None, &[]),
            )]),
        ],
    );
    // --force: the file starts with the garbage, so it is not a recording.
    let out = run(
        &db,
        &spool,
        &["replay", "--force", file.to_str().unwrap_or_default()],
    )
    .await;
    assert_eq!(out.code, Some(3), "{}\n{}", out.stdout, out.stderr);
    assert!(out.stderr.contains("appending them to"), "{}", out.stderr);
    assert_eq!(common::count(&client, "ingester_dead_letter").await, 0);
    assert_eq!(
        common::count(&client, "job").await,
        1,
        "the good record is applied"
    );
    let spooled = std::fs::read_to_string(&spool).expect("spool written");
    assert_eq!(spooled.lines().count(), 1);

    // Fixed: the flush moves it into the table, byte for byte, and empties the spool.
    client
        .batch_execute("DROP TRIGGER refuse ON ingester_dead_letter")
        .await
        .expect("drop trigger");
    let out = run(&db, &spool, &["dead-letters", "flush"]).await;
    assert_eq!(out.code, Some(0), "{}\n{}", out.stdout, out.stderr);
    assert!(out.stdout.contains("flushed 1"), "{}", out.stdout);
    let row = json_row(&client, "SELECT payload FROM ingester_dead_letter", &[]).await;
    assert_eq!(row, json!({"payload": bytea(&garbage)}));
    assert_eq!(std::fs::read_to_string(&spool).expect("spool").trim(), "");
    db.drop_db().await;
}

// Finding 7: a re-drive applies only the events that did not apply.

/// The messages of finding 7, one per step: jobs j1 and j2 with run r1
/// leased; a message running r1 (known) and r2 (not created yet); r1
/// succeeds; r2 is leased.
fn finding7() -> [Vec<u8>; 4] {
    [
        seq1(vec![
            event(Some(ts(1)), submit("j1", "ns", 0, &[], None, &[])),
            event(Some(ts(1)), submit("j2", "ns", 0, &[], None, &[])),
            event(Some(ts(2)), leased("j1", "r1", "c", "n1", "p")),
        ]),
        seq1(vec![
            event(Some(ts(3)), running("j1", "r1", Some("n1"))),
            event(Some(ts(3)), running("j2", "r2", Some("n2"))),
        ]),
        seq1(vec![event(Some(ts(4)), sample::run_succeeded("j1", "r1"))]),
        seq1(vec![event(Some(ts(2)), leased("j2", "r2", "c", "n2", "p"))]),
    ]
}

async fn runs(client: &tokio_postgres::Client) -> Vec<serde_json::Value> {
    json_rows(
        client,
        "SELECT run_id, job_run_state, finished IS NOT NULL AS finished FROM job_run ORDER BY run_id",
        &[],
    )
    .await
}

/// Replays each message of finding 7 as its own recording, checking the
/// dead letter the second one leaves.
async fn replay_finding7(db: &TestDb, dir: &Path, spool: &Path) {
    let client = db.client().await;
    for (i, payload) in finding7().into_iter().enumerate() {
        let file = write(dir, &format!("step{i}.bin"), &[payload]);
        let out = run(db, spool, &["replay", file.to_str().unwrap_or_default()]).await;
        assert_eq!(
            out.code,
            Some(if i == 1 { 3 } else { 0 }),
            "step {i}: {}\n{}",
            out.stdout,
            out.stderr
        );
        if i == 1 {
            let letter = json_row(
                &client,
                "SELECT reason, unapplied_events FROM ingester_dead_letter",
                &[],
            )
            .await;
            assert_eq!(
                letter,
                json!({"reason": "unknown_run", "unapplied_events": [1]})
            );
        }
    }
}

const RUNNING: i16 = lookout_ingester::model::run_state::RUNNING;
const SUCCEEDED: i16 = lookout_ingester::model::run_state::SUCCEEDED;

#[tokio::test]
async fn redrive_applies_only_the_events_not_applied_in_replay() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = dir.path().join("spool.jsonl");
    let db = TestDb::migrated().await;
    let client = db.client().await;
    replay_finding7(&db, dir.path(), &spool).await;
    let out = run(&db, &spool, &["dead-letters", "show", "1"]).await;
    assert!(
        out.stdout.contains("unapplied:    event(s) 1"),
        "{}",
        out.stdout
    );

    let out = run(&db, &spool, &["dead-letters", "retry", "--all"]).await;
    assert_eq!(out.code, Some(0), "{}\n{}", out.stdout, out.stderr);
    assert!(
        out.stdout.contains("1 applied and removed"),
        "{}",
        out.stdout
    );
    assert_eq!(
        runs(&client).await,
        [
            json!({"run_id": "r1", "job_run_state": SUCCEEDED, "finished": true}),
            json!({"run_id": "r2", "job_run_state": RUNNING, "finished": false}),
        ]
    );
    assert_eq!(common::count(&client, "ingester_dead_letter").await, 0);
    db.drop_db().await;
}

#[tokio::test]
async fn a_redrive_that_still_fails_keeps_only_the_events_not_applied() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = dir.path().join("spool.jsonl");
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let [setup, mixed, succeeded, _] = finding7();
    let file = write(dir.path(), "a.bin", &[setup]);
    let _ = run(&db, &spool, &["replay", file.to_str().unwrap_or_default()]).await;
    // The first event (r1 running) applies; r2 and r3 do not exist.
    let mut events = mixed.clone();
    events = {
        let mut seq = ev::EventSequence::decode(events.as_slice()).expect("decodes");
        seq.events
            .push(event(Some(ts(3)), running("j2", "r3", Some("n3"))));
        seq.encode_to_vec()
    };
    let file = write(dir.path(), "b.bin", &[events, succeeded]);
    let out = run(&db, &spool, &["replay", file.to_str().unwrap_or_default()]).await;
    assert_eq!(out.code, Some(3), "{}\n{}", out.stdout, out.stderr);
    let unapplied = || async {
        json_row(
            &client,
            "SELECT unapplied_events, retries FROM ingester_dead_letter",
            &[],
        )
        .await
    };
    assert_eq!(
        unapplied().await,
        json!({"unapplied_events": [1, 2], "retries": 0})
    );
    // r2 arrives, r3 does not: the letter keeps only event 2.
    let file = write(
        dir.path(),
        "c.bin",
        &[seq1(vec![event(
            Some(ts(2)),
            leased("j2", "r2", "c", "n2", "p"),
        )])],
    );
    let _ = run(&db, &spool, &["replay", file.to_str().unwrap_or_default()]).await;
    let out = run(&db, &spool, &["dead-letters", "retry", "--all"]).await;
    assert_eq!(out.code, Some(3), "{}\n{}", out.stdout, out.stderr);
    assert_eq!(
        unapplied().await,
        json!({"unapplied_events": [2], "retries": 1})
    );
    assert_eq!(
        runs(&client).await,
        [
            json!({"run_id": "r1", "job_run_state": SUCCEEDED, "finished": true}),
            json!({"run_id": "r2", "job_run_state": RUNNING, "finished": false}),
        ]
    );
    db.drop_db().await;
}

#[tokio::test]
async fn old_letters_without_unapplied_events_retry_every_event() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = dir.path().join("spool.jsonl");
    let db = TestDb::migrated().await;
    let client = db.client().await;
    replay_finding7(&db, dir.path(), &spool).await;
    // A letter kept before the column existed: NULL, every event.
    client
        .batch_execute("UPDATE ingester_dead_letter SET unapplied_events = NULL")
        .await
        .expect("update");
    let out = run(&db, &spool, &["dead-letters", "show", "1"]).await;
    assert!(
        out.stdout.contains("unapplied:    every event"),
        "{}",
        out.stdout
    );
    let out = run(&db, &spool, &["dead-letters", "retry", "--all"]).await;
    assert_eq!(out.code, Some(0), "{}\n{}", out.stdout, out.stderr);
    // As before the column: the whole message again, r1 running once more.
    assert_eq!(
        runs(&client).await,
        [
            json!({"run_id": "r1", "job_run_state": RUNNING, "finished": true}),
            json!({"run_id": "r2", "job_run_state": RUNNING, "finished": false}),
        ]
    );
    assert_eq!(common::count(&client, "ingester_dead_letter").await, 0);
    db.drop_db().await;
}

#[tokio::test]
async fn a_row_failed_letter_retries_only_the_failed_row() {
    let dir = tempfile::tempdir().expect("tempdir");
    let spool = dir.path().join("spool.jsonl");
    let db = TestDb::migrated().await;
    let client = db.client().await;
    client
        .batch_execute(
            "CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN
                IF NEW.job_id LIKE 'poison%' THEN RAISE EXCEPTION 'poison row refused by the test'; END IF;
                RETURN NEW; END $$;
             CREATE TRIGGER refuse_poison BEFORE INSERT ON job FOR EACH ROW EXECUTE FUNCTION refuse_poison();",
        )
        .await
        .expect("trigger");
    let message = seq1(vec![
        event(Some(ts(1)), submit("a", "ns", 0, &[], None, &[])),
        event(Some(ts(1)), submit("poison", "ns", 0, &[], None, &[])),
        event(Some(ts(2)), sample::reprioritised("a", 5)),
    ]);
    let file = write(dir.path(), "m.bin", &[message]);
    let out = run(&db, &spool, &["replay", file.to_str().unwrap_or_default()]).await;
    assert_eq!(out.code, Some(3), "{}\n{}", out.stdout, out.stderr);
    let letter = json_row(
        &client,
        "SELECT reason, unapplied_events FROM ingester_dead_letter",
        &[],
    )
    .await;
    assert_eq!(
        letter,
        json!({"reason": "row_failed", "unapplied_events": [1]})
    );
    // Later a's priority changes again; re-applying event 2 would undo it.
    let file = write(
        dir.path(),
        "later.bin",
        &[seq1(vec![event(
            Some(ts(3)),
            sample::reprioritised("a", 9),
        )])],
    );
    let _ = run(&db, &spool, &["replay", file.to_str().unwrap_or_default()]).await;
    let rows = |id: &'static str| {
        let client = &client;
        async move {
            json_rows(
                client,
                "SELECT to_jsonb(j) - 'job_id' AS row FROM job j WHERE job_id = $1",
                &[&id],
            )
            .await
        }
    };
    let before = rows("a").await;
    assert_eq!(before.len(), 1);
    assert_eq!(before[0]["row"]["priority"], json!(9));
    assert!(rows("poison").await.is_empty());

    client
        .batch_execute("DROP TRIGGER refuse_poison ON job")
        .await
        .expect("drop trigger");
    let out = run(&db, &spool, &["dead-letters", "retry", "--all"]).await;
    assert_eq!(out.code, Some(0), "{}\n{}", out.stdout, out.stderr);
    assert_eq!(rows("a").await, before, "the applied rows are untouched");
    assert_eq!(rows("poison").await.len(), 1, "the failed row is written");
    assert_eq!(common::count(&client, "ingester_dead_letter").await, 0);
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redrive_applies_only_the_events_not_applied_in_live_mode() {
    use common::broker::{Broker, Ingester};
    use std::time::{Duration, Instant};
    let broker = Broker::start().await;
    let spool = broker.dir.path().join("spool.jsonl");
    let db = TestDb::migrated().await;
    let client = db.client().await;
    let mut ing = Ingester::spawn(
        &db.url,
        &broker.url(),
        "events",
        broker.dir.path().join("ing.log"),
        &[
            "--batch-duration",
            "50ms",
            "--dead-letter-spool",
            spool.to_str().unwrap_or_default(),
        ],
    );
    let wait = |sql: &'static str| {
        let client = &client;
        let ing = &ing;
        async move {
            let start = Instant::now();
            loop {
                let done: bool = client.query_one(sql, &[]).await.expect("query").get(0);
                if done {
                    return;
                }
                assert!(
                    start.elapsed() < Duration::from_secs(60),
                    "waiting for {sql}:\n{}",
                    ing.log_tail(40)
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    };
    // One message at a time, each committed before the next is published.
    let steps = [
        "SELECT count(*) = 1 FROM job_run",
        "SELECT count(*) = 1 FROM ingester_dead_letter",
        "SELECT count(*) = 1 FROM job_run WHERE job_run_state = 3",
        "SELECT count(*) = 2 FROM job_run",
    ];
    for (payload, done) in finding7().into_iter().zip(steps) {
        broker.publish("events", vec![payload]).await;
        wait(done).await;
    }
    let letter = json_row(
        &client,
        "SELECT reason, unapplied_events FROM ingester_dead_letter",
        &[],
    )
    .await;
    assert_eq!(
        letter,
        json!({"reason": "unknown_run", "unapplied_events": [1]})
    );
    ing.terminate(Duration::from_secs(10)).await;
    let out = run(&db, &spool, &["dead-letters", "retry", "--all"]).await;
    assert_eq!(out.code, Some(0), "{}\n{}", out.stdout, out.stderr);
    assert_eq!(
        runs(&client).await,
        [
            json!({"run_id": "r1", "job_run_state": SUCCEEDED, "finished": true}),
            json!({"run_id": "r2", "job_run_state": RUNNING, "finished": false}),
        ]
    );
    db.drop_db().await;
    broker.stop().await;
}
