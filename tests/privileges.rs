//! Least privilege: `run`, `replay` and `dead-letters` work as a role that
//! holds only the grants the README lists (`RUNTIME_GRANTS`), after
//! `migrate` ran as the owner; that role cannot migrate. Each grant is also
//! shown to be needed: without it, a replay does not land its rows.

mod common;

use std::time::Duration;

use common::broker::{Broker, Ingester};
use common::{baseline, cli, connect, count, dump, payloads, write_recording, TestDb};
use lookout_ingester::sample;

/// What `run` needs, as in the README ({db} and {role} filled in), one
/// privilege per entry so that `every_runtime_grant_is_needed` checks each.
/// The database's and schema's defaults for PUBLIC are revoked first, so
/// nothing else helps. (`LOCK TABLE job, job_run IN ROW EXCLUSIVE MODE` is
/// covered by their INSERT/UPDATE.)
const RUNTIME_GRANTS: &[&str] = &[
    "GRANT CONNECT ON DATABASE \"{db}\" TO {role}",
    "GRANT TEMPORARY ON DATABASE \"{db}\" TO {role}",
    "GRANT USAGE ON SCHEMA public TO {role}",
    "GRANT SELECT ON job TO {role}",
    "GRANT INSERT ON job TO {role}",
    "GRANT UPDATE ON job TO {role}",
    "GRANT SELECT ON job_run TO {role}",
    "GRANT INSERT ON job_run TO {role}",
    "GRANT UPDATE ON job_run TO {role}",
    // Creations are `INSERT ... ON CONFLICT DO NOTHING`: no SELECT or UPDATE.
    "GRANT INSERT ON job_spec TO {role}",
    "GRANT INSERT ON job_error TO {role}",
    "GRANT SELECT ON ingester_dead_letter TO {role}",
    "GRANT INSERT ON ingester_dead_letter TO {role}",
    "GRANT UPDATE ON ingester_dead_letter TO {role}",
    "GRANT DELETE ON ingester_dead_letter TO {role}",
    "GRANT USAGE ON SEQUENCE ingester_dead_letter_id_seq TO {role}",
    "GRANT SELECT ON database_version TO {role}",
];

/// What `run` needs beyond [`RUNTIME_GRANTS`]: its heartbeat row (an upsert
/// and the retention sweep). `status` needs only the SELECT.
const HEARTBEAT_GRANTS: &[&str] = &[
    "GRANT SELECT ON ingester_heartbeat TO {role}",
    "GRANT INSERT ON ingester_heartbeat TO {role}",
    "GRANT UPDATE ON ingester_heartbeat TO {role}",
    "GRANT DELETE ON ingester_heartbeat TO {role}",
];

/// A login role holding `grants` on `db`, and the URL that connects as it
/// (the test server trusts loopback connections).
async fn role_with(db: &TestDb, name: &str, grants: &[&str]) -> String {
    let admin = connect(&common::admin_url()).await;
    admin
        .batch_execute(&format!(
            "DROP ROLE IF EXISTS {name}; CREATE ROLE {name} LOGIN; \
             REVOKE ALL ON DATABASE \"{}\" FROM PUBLIC",
            db.name
        ))
        .await
        .unwrap_or_else(|e| panic!("create role {name}: {e}"));
    let client = db.client().await;
    client
        .batch_execute("REVOKE ALL ON SCHEMA public FROM PUBLIC")
        .await
        .unwrap_or_else(|e| panic!("revoke: {e}"));
    for g in grants {
        let sql = g.replace("{db}", &db.name).replace("{role}", name);
        client
            .batch_execute(&sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    db.url
        .replacen("postgres://postgres@", &format!("postgres://{name}@"), 1)
}

async fn drop_role(db: TestDb, name: &str) {
    db.drop_db().await;
    let admin = connect(&common::admin_url()).await;
    let _ = admin
        .batch_execute(&format!("DROP ROLE IF EXISTS {name}"))
        .await;
}

fn role_name(tag: &str) -> String {
    format!("lookout_priv_{tag}_{}", std::process::id())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_and_dead_letters_work_with_only_the_runtime_grants() {
    let dir = tempfile::tempdir().expect("tempdir");
    let seqs = sample::generate(31, 60);
    let expected = baseline(&seqs, dir.path()).await;
    let good = write_recording(dir.path().join("good.bin"), &payloads(&seqs), false);
    let bad = write_recording(
        dir.path().join("bad.bin"),
        &[b"not an event sequence".to_vec()],
        false,
    );
    let db = TestDb::migrated().await;
    let role = role_name("replay");
    let url = role_with(&db, &role, RUNTIME_GRANTS).await;
    let spool = dir.path().join("spool.jsonl");
    let spool = spool.display().to_string();
    let s = [
        "--database-url",
        url.as_str(),
        "--dead-letter-spool",
        &spool,
    ];

    let out = cli(["replay"]
        .iter()
        .chain(&s)
        .chain(&[good.to_str().expect("path")]))
    .await;
    assert_eq!(out.code, Some(0), "{}{}", out.stdout, out.stderr);
    assert_eq!(dump(&db.client().await).await, expected);

    // A dead letter: written, listed, retried, purged, all as the role
    // (--force: a file of one bad record is not a recording).
    let out = cli(["replay", "--force"]
        .iter()
        .chain(&s)
        .chain(&[bad.to_str().expect("path")]))
    .await;
    assert_eq!(out.code, Some(3), "{}{}", out.stdout, out.stderr);
    let admin_client = db.client().await;
    assert_eq!(count(&admin_client, "ingester_dead_letter").await, 1);
    assert!(
        !std::path::Path::new(&spool).exists(),
        "spooled, not stored"
    );
    for action in [
        &["list"][..],
        &["retry", "--all"],
        &["purge", "--older-than", "0s"],
    ] {
        let out = cli(["dead-letters"].iter().chain(&s).chain(action)).await;
        assert!(
            out.code == Some(0) || out.code == Some(3),
            "{action:?}: {}{}",
            out.stdout,
            out.stderr
        );
        assert!(!out.stderr.contains("permission denied"), "{}", out.stderr);
    }
    assert_eq!(count(&admin_client, "ingester_dead_letter").await, 0);

    // migrate needs more: the role owns nothing and may create nothing.
    let out = cli(["migrate", "--database-url", url.as_str(), "--to", "32"]).await;
    assert_eq!(out.code, Some(1), "{}{}", out.stdout, out.stderr);
    assert!(
        out.stderr.contains("must be owner") || out.stderr.contains("permission denied"),
        "{}",
        out.stderr
    );
    drop(admin_client);
    drop_role(db, &role).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_works_with_only_the_runtime_grants() {
    let broker = Broker::start().await;
    let seqs = sample::generate(32, 80);
    let expected = baseline(&seqs, broker.dir.path()).await;
    broker.publish("events", payloads(&seqs)).await;
    let db = TestDb::migrated().await;
    let role = role_name("run");
    let grants: Vec<&str> = RUNTIME_GRANTS
        .iter()
        .chain(HEARTBEAT_GRANTS)
        .copied()
        .collect();
    let url = role_with(&db, &role, &grants).await;
    let log = broker.dir.path().join("run.log");
    let mut ing = Ingester::spawn(
        &url,
        &broker.url(),
        "events",
        log,
        &["--batch-duration", "100ms"],
    );
    common::wait_equal(&db.url, &expected, Duration::from_secs(90), Some(&ing)).await;
    ing.terminate(Duration::from_secs(10)).await;
    let text = ing.log_text();
    assert!(!text.contains("permission denied"), "{text}");
    // The heartbeat was written, and its final state on the clean stop.
    let admin = db.client().await;
    let stopped: i64 = admin
        .query_one(
            "SELECT count(*) FROM ingester_heartbeat WHERE stopped IS NOT NULL",
            &[],
        )
        .await
        .expect("heartbeat")
        .get(0);
    assert_eq!(stopped, 1, "{text}");
    drop(admin);
    drop_role(db, &role).await;
    broker.stop().await;
}

/// Runs the binary with `args`, killed after 10 seconds (a missing grant
/// can also look like an outage, which is retried). Its exit code, if any.
async fn bounded(args: &[&str]) -> Option<i32> {
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_lookout-ingester"))
        .args(args)
        .env_remove("LOOKOUT_DATABASE_URL")
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(Duration::from_secs(10), run).await {
        Ok(Ok(o)) => o.status.code(),
        _ => None,
    }
}

/// Each grant is needed: without it, a replay of a few jobs does not land
/// its rows, or a dead letter cannot be written, retried and purged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_runtime_grant_is_needed() {
    let dir = tempfile::tempdir().expect("tempdir");
    // Enough jobs that one is rejected, the only event that writes job_error.
    let generated = sample::generate_jobs(33, 200);
    assert!(generated
        .jobs
        .iter()
        .any(|j| j.fate == sample::Fate::Rejected));
    let seqs = generated.sequences;
    let expected = baseline(&seqs, dir.path()).await;
    let good = write_recording(dir.path().join("good.bin"), &payloads(&seqs), false);
    let bad = write_recording(
        dir.path().join("bad.bin"),
        &[b"not an event sequence".to_vec()],
        false,
    );
    let (good, bad) = (good.display().to_string(), bad.display().to_string());
    let mut not_needed = Vec::new();
    for (i, left_out) in RUNTIME_GRANTS.iter().enumerate() {
        let grants: Vec<&str> = RUNTIME_GRANTS
            .iter()
            .copied()
            .filter(|g| g != left_out)
            .collect();
        let db = TestDb::migrated().await;
        let role = role_name(&format!("need{i}"));
        let url = role_with(&db, &role, &grants).await;
        let spool = dir.path().join(format!("spool{i}.jsonl"));
        let spool = spool.display().to_string();
        let s = [
            "--database-url",
            url.as_str(),
            "--max-backoff",
            "1",
            "--dead-letter-spool",
            &spool,
        ];
        let with = |head: &[&'static str], tail: &[&str]| -> Vec<String> {
            head.iter()
                .chain(&s)
                .chain(tail)
                .map(|a| a.to_string())
                .collect()
        };
        let run = |args: Vec<String>| async move {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            bounded(&args).await
        };
        let admin = db.client().await;
        let landed = if left_out.contains("ingester_dead_letter") {
            // Written, retried (which counts the retry), purged.
            run(with(&["replay", "--force"], &[&bad])).await == Some(3)
                && count(&admin, "ingester_dead_letter").await == 1
                && run(with(&["dead-letters"], &["retry", "--all"])).await == Some(3)
                && run(with(&["dead-letters"], &["purge", "--older-than", "0s"])).await == Some(0)
                && count(&admin, "ingester_dead_letter").await == 0
        } else {
            // Small batches, so that updates land in later batches than the
            // rows they update (a same-batch update is folded into the insert).
            run(with(&["replay"], &["--batch-size", "100", &good])).await == Some(0)
                && dump(&admin).await == expected
        };
        if landed {
            not_needed.push(*left_out);
        }
        drop(admin);
        drop_role(db, &role).await;
    }
    assert!(not_needed.is_empty(), "not needed: {not_needed:#?}");
}
