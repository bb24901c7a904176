//! Dead letters end to end: what cannot be applied is kept byte for byte,
//! listed, shown, retried (and removed once it applies), purged, and spooled
//! to a local file when Postgres refuses it.

mod common;

use std::path::{Path, PathBuf};

use common::TestDb;
use lookout_ingester::proto::armadaevents as ev;
use lookout_ingester::sample::{
    self, error, event, leased, pod_error, run_errors, running, sequence, submit, ts,
};
use lookout_ingester::source::file::RecordWriter;
use prost::Message;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_lookout-ingester")
}

fn write(dir: &Path, name: &str, payloads: &[Vec<u8>]) -> PathBuf {
    let p = dir.join(name);
    let mut w = RecordWriter::create(&p, false).expect("file");
    for x in payloads {
        w.write_record(x).expect("record");
    }
    w.finish().expect("finish");
    p
}

async fn cli(db: &TestDb, spool: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    // Subcommand first, then the shared database and spool options.
    let (first, rest) = args
        .split_first()
        .map(|(f, r)| (*f, r))
        .unwrap_or(("", &[]));
    let mut cmd = tokio::process::Command::new(bin());
    cmd.arg(first)
        .args(["--database-url", &db.url, "--dead-letter-spool"])
        .arg(spool)
        .args(rest);
    let out = cmd.output().await.expect("run binary");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
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
    let (code, stdout, stderr) =
        cli(&db, &spool, &["replay", file.to_str().unwrap_or_default()]).await;
    assert_eq!(code, Some(3), "{stdout}\n{stderr}");
    assert!(stdout.contains("dead letters: 3"), "{stdout}");

    let client = db.client().await;
    let rows = client
        .query(
            "SELECT source, reason, payload FROM ingester_dead_letter ORDER BY id",
            &[],
        )
        .await
        .expect("dead letters");
    let got: Vec<(String, String, Vec<u8>)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    let name = file.display().to_string();
    assert_eq!(
        got,
        vec![
            (
                format!("{name} record 1"),
                "decode".to_string(),
                garbage.clone()
            ),
            (
                format!("{name} record 2"),
                "empty_queue".to_string(),
                empty_queue.clone()
            ),
            (
                format!("{name} record 3"),
                "unknown_run".to_string(),
                early.clone()
            ),
        ]
    );

    // Replaying again does not duplicate them.
    let _ = cli(&db, &spool, &["replay", file.to_str().unwrap_or_default()]).await;
    assert_eq!(common::count(&client, "ingester_dead_letter").await, 3);

    // list --json: one object per line with the documented fields.
    let (code, stdout, _) = cli(&db, &spool, &["dead-letters", "list", "--json"]).await;
    assert_eq!(code, Some(0));
    let objs: Vec<serde_json::Value> = stdout
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
    let (_, stdout, _) = cli(&db, &spool, &["dead-letters", "show", &ids[2].to_string()]).await;
    assert!(
        stdout.contains("job_run_errors") && stdout.contains("unknown_run"),
        "{stdout}"
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
    let (code, ..) = cli(&db, &spool, &["replay", later.to_str().unwrap_or_default()]).await;
    assert_eq!(code, Some(0));
    let (code, stdout, _) = cli(&db, &spool, &["dead-letters", "retry", "--all"]).await;
    assert_eq!(code, Some(3), "two still fail: {stdout}");
    assert!(
        stdout.contains("1 applied and removed, 2 still failing"),
        "{stdout}"
    );
    let run = client
        .query_one(
            "SELECT job_run_state, exit_code, failure_info FROM job_run WHERE run_id = 'dr'",
            &[],
        )
        .await
        .expect("run");
    assert_eq!(
        run.get::<_, i16>(0),
        lookout_ingester::model::run_state::FAILED
    );
    assert_eq!(run.get::<_, Option<i32>>(1), Some(3));
    let left: Vec<(String, i32)> = client
        .query(
            "SELECT reason, retries FROM ingester_dead_letter ORDER BY id",
            &[],
        )
        .await
        .expect("left")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        left,
        vec![("decode".to_string(), 1), ("empty_queue".to_string(), 1)]
    );

    // purge: nothing is older than an hour; everything is older than 0s.
    let (_, stdout, _) = cli(
        &db,
        &spool,
        &["dead-letters", "purge", "--older-than", "1h"],
    )
    .await;
    assert!(stdout.contains("purged 0"), "{stdout}");
    let (_, stdout, _) = cli(
        &db,
        &spool,
        &["dead-letters", "purge", "--older-than", "0s"],
    )
    .await;
    assert!(stdout.contains("purged 2"), "{stdout}");
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
    let (code, stdout, stderr) =
        cli(&db, &spool, &["replay", file.to_str().unwrap_or_default()]).await;
    assert_eq!(code, Some(3), "{stdout}\n{stderr}");
    assert!(stderr.contains("appending them to"), "{stderr}");
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
    let (code, stdout, stderr) = cli(&db, &spool, &["dead-letters", "flush"]).await;
    assert_eq!(code, Some(0), "{stdout}\n{stderr}");
    assert!(stdout.contains("flushed 1"), "{stdout}");
    let payload: Vec<u8> = client
        .query_one("SELECT payload FROM ingester_dead_letter", &[])
        .await
        .expect("row")
        .get(0);
    assert_eq!(payload, garbage);
    assert_eq!(std::fs::read_to_string(&spool).expect("spool").trim(), "");
    db.drop_db().await;
}
