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
