//! The environment before any data: logs readable in files, fatal errors on
//! one line with the server's own cause, one-shot commands that end, and a
//! database checked before anything is consumed.

mod common;

use common::*;
use lookout_ingester::sample;

/// Logs written to a pipe carry no colour codes.
#[tokio::test]
async fn no_colour_codes_when_stderr_is_not_a_terminal() {
    let db = TestDb::empty().await;
    let out = migrate_cli(&db.url, &[]).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(!out.stderr.is_empty(), "migrate logged nothing");
    assert!(
        !out.stderr.contains("\x1b["),
        "colour codes: {:?}",
        out.stderr
    );
    db.drop_db().await;
}

/// The one line of a fatal error: `error: …` and nothing else at ERROR.
fn fatal_line(out: &CliOutput) -> String {
    let lines: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("error:") || l.contains(" ERROR "))
        .collect();
    assert_eq!(lines.len(), 1, "not one fatal line: {:?}", out.stderr);
    for noise in ["db error", "creating a new object"] {
        assert!(!lines[0].contains(noise), "{noise:?} in {:?}", lines[0]);
    }
    lines[0].to_string()
}

/// A missing database, an unknown role and a closed port: one line each,
/// with the server's own message, from every command that connects.
#[tokio::test]
async fn database_errors_are_one_line_with_their_cause() {
    let admin = admin_url();
    let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
    let host = base
        .rsplit_once('@')
        .map(|(_, h)| h)
        .unwrap_or("127.0.0.1:5432");
    let cases = [
        (
            format!("{base}/no_such_db_h10"),
            "database \"no_such_db_h10\" does not exist",
        ),
        (
            format!("postgres://no_such_role_h10@{host}/postgres"),
            "role \"no_such_role_h10\" does not exist",
        ),
        (
            "postgres://postgres@127.0.0.1:1/postgres".to_string(),
            "Connection refused",
        ),
    ];
    for (url, cause) in &cases {
        let out = migrate_cli(url, &["--retry-for", "1s"]).await;
        assert_eq!(out.code, Some(1), "{}", out.stderr);
        let line = fatal_line(&out);
        assert!(line.contains(cause), "migrate: {line:?} lacks {cause:?}");
        let out = cli([
            "dead-letters",
            "--database-url",
            url,
            "--retry-for",
            "1s",
            "list",
        ])
        .await;
        assert_eq!(out.code, Some(1), "{}", out.stderr);
        let line = fatal_line(&out);
        assert!(
            line.contains(cause),
            "dead-letters: {line:?} lacks {cause:?}"
        );
    }
}

/// One-shot commands end: `replay` against a closed port or a missing
/// database gives up after `--retry-for` with the cause, exit 1, and spools
/// nothing.
#[tokio::test]
async fn replay_gives_up_after_retry_for() {
    let dir = tempfile::tempdir().expect("tmp");
    let file = write_recording(
        dir.path().join("sample.bin"),
        &payloads(&sample::generate(1, 3)),
        false,
    );
    let admin = admin_url();
    let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
    let spool = dir.path().join("spool.jsonl");
    for (url, cause) in [
        (
            "postgres://postgres@127.0.0.1:1/postgres".to_string(),
            "Connection refused",
        ),
        (
            format!("{base}/no_such_db_h10"),
            "database \"no_such_db_h10\" does not exist",
        ),
    ] {
        let started = std::time::Instant::now();
        let run = cli([
            "replay".as_ref(),
            "--database-url".as_ref(),
            url.as_ref(),
            "--retry-for".as_ref(),
            "2s".as_ref(),
            "--dead-letter-spool".as_ref(),
            spool.as_os_str(),
            file.as_os_str(),
        ]);
        let out = tokio::time::timeout(std::time::Duration::from_secs(30), run)
            .await
            .unwrap_or_else(|_| panic!("replay against {url} did not end"));
        assert!(started.elapsed() < std::time::Duration::from_secs(15));
        assert_eq!(out.code, Some(1), "{}", out.stderr);
        let line = fatal_line(&out);
        assert!(line.contains(cause), "{line:?} lacks {cause:?}");
        assert!(line.contains("retryFor"), "{line:?}");
        assert!(!spool.exists(), "spooled: {url}");
    }
    // migrate too.
    let started = std::time::Instant::now();
    let out = migrate_cli(
        "postgres://postgres@127.0.0.1:1/postgres",
        &["--retry-for", "2s"],
    )
    .await;
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(fatal_line(&out).contains("Connection refused"));
    assert!(started.elapsed() >= std::time::Duration::from_secs(2));
    assert!(started.elapsed() < std::time::Duration::from_secs(15));
}

/// `replay` into a database that was never migrated exits 1 at once with
/// what to do, and keeps no dead letter.
#[tokio::test]
async fn replay_refuses_an_unmigrated_database_at_once() {
    let dir = tempfile::tempdir().expect("tmp");
    let seqs = lookout_ingester::sample::generate(5, 20);
    let file = write_recording(dir.path().join("r.bin"), &payloads(&seqs), false);
    let db = TestDb::empty().await;
    let spool = dir.path().join("spool.jsonl");
    let started = std::time::Instant::now();
    let out = replay_cli(&db.url, &spool, &file).await;
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    let line = fatal_line(&out);
    assert!(line.contains("lookout-ingester migrate"), "{line}");
    assert!(!spool.exists());
    db.drop_db().await;
}

/// An unwritable spool path is found at start, named, and stops the command.
#[tokio::test]
async fn unwritable_spool_is_refused_at_start() {
    let dir = tempfile::tempdir().expect("tmp");
    let seqs = lookout_ingester::sample::generate(6, 5);
    let file = write_recording(dir.path().join("r.bin"), &payloads(&seqs), false);
    let db = TestDb::migrated().await;
    let spool = dir.path().join("no-such-dir").join("spool.jsonl");
    let out = replay_cli(&db.url, &spool, &file).await;
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    let line = fatal_line(&out);
    assert!(line.contains(&spool.display().to_string()), "{line}");
    assert!(line.contains("not writable"), "{line}");
    assert_eq!(count(&db.client().await, "job").await, 0);
    db.drop_db().await;
}

/// A table missing mid-stream (here `job_error`, which the generation check
/// does not look at) is the environment's fault: retried, never turned into
/// failed rows or dead letters; a one-shot command gives up after retryFor.
#[tokio::test]
async fn missing_table_mid_stream_is_retried_not_dead_lettered() {
    let dir = tempfile::tempdir().expect("tmp");
    let file = write_recording(
        dir.path().join("sample.bin"),
        &payloads(&sample::generate(1, 50)),
        false,
    );
    let db = TestDb::migrated().await;
    let client = db.client().await;
    client
        .batch_execute("DROP TABLE job_error")
        .await
        .expect("drop");
    let spool = dir.path().join("spool.jsonl");
    let out = cli([
        "replay".as_ref(),
        "--database-url".as_ref(),
        db.url.as_ref(),
        "--retry-for".as_ref(),
        "2s".as_ref(),
        "--dead-letter-spool".as_ref(),
        spool.as_os_str(),
        file.as_os_str(),
    ])
    .await;
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    let line = fatal_line(&out);
    assert!(
        line.contains("relation \"job_error\" does not exist"),
        "{line}"
    );
    assert_eq!(count(&client, "ingester_dead_letter").await, 0);
    assert!(!spool.exists());
    db.drop_db().await;
}

/// `GET path` on the local metrics port: the status code, or 0 if nothing
/// answers.
async fn http_status(port: u16, path: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return 0;
    };
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return 0;
    }
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf).await;
    let text = String::from_utf8_lossy(&buf);
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

/// `run` on a database that was never migrated: stays up and not ready,
/// consumes and acknowledges nothing, says once what to do; once migrated,
/// ingests everything that was waiting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_waits_not_ready_until_the_database_is_migrated() {
    use common::broker::{free_port, Broker, Ingester};
    use std::time::{Duration, Instant};
    let broker = Broker::start().await;
    let seqs = lookout_ingester::sample::generate(31, 60);
    let expected = baseline(&seqs, broker.dir.path()).await;
    broker.publish("events", payloads(&seqs)).await;
    let db = TestDb::empty().await;
    let port = free_port();
    let port_text = port.to_string();
    let url = broker.url();
    let mut ing = Ingester::spawn_args(
        &[
            "run",
            "--database-url",
            &db.url,
            "--pulsar-url",
            &url,
            "--topic",
            "events",
            "--metrics-port",
            &port_text,
            "--batch-duration",
            "100ms",
        ],
        broker.dir.path().join("ing.log"),
    );
    let start = Instant::now();
    while !ing.log_text().contains("lookout-ingester migrate") {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{}",
            ing.log_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Several re-checks later: still running, still not ready, said once.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        ing.child.try_wait().expect("wait").is_none(),
        "{}",
        ing.log_tail(20)
    );
    assert_eq!(http_status(port, "/readyz").await, 503);
    assert_eq!(http_status(port, "/healthz").await, 200);
    assert_eq!(
        ing.log_text().matches("lookout-ingester migrate").count(),
        1,
        "{}",
        ing.log_text()
    );
    assert!(
        !ing.log_text().contains("dead letter"),
        "{}",
        ing.log_text()
    );

    // Migrated: everything published before is ingested (nothing was
    // acknowledged meanwhile), and the ingester turns ready.
    let out = migrate_cli(&db.url, &[]).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    wait_equal(&db.url, &expected, Duration::from_secs(90), Some(&ing)).await;
    let start = Instant::now();
    while http_status(port, "/readyz").await != 200 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{}",
            ing.log_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(count(&db.client().await, "ingester_dead_letter").await, 0);
    ing.terminate(Duration::from_secs(15)).await;
    db.drop_db().await;
    broker.stop().await;
}

/// `/readyz` follows Postgres: ready while it answers, 503 while it is
/// down, ready again once it is back; `run` keeps running throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_is_503_while_postgres_is_unreachable() {
    use common::broker::{free_port, Broker, Ingester};
    use common::pgcluster::PgCluster;
    use std::time::{Duration, Instant};
    let mut pg = PgCluster::start().await;
    let url = pg.create_migrated_db("lookout").await;
    let broker = Broker::start().await;
    let seqs = lookout_ingester::sample::generate(32, 10);
    broker.publish("events", payloads(&seqs)).await;
    let port = free_port();
    let port_text = port.to_string();
    let broker_url = broker.url();
    let mut ing = Ingester::spawn_args(
        &[
            "run",
            "--database-url",
            &url,
            "--pulsar-url",
            &broker_url,
            "--topic",
            "events",
            "--metrics-port",
            &port_text,
            "--batch-duration",
            "100ms",
        ],
        broker.dir.path().join("ing.log"),
    );
    let wait_for = |want: u16, limit: Duration| async move {
        let start = Instant::now();
        loop {
            let got = http_status(port, "/readyz").await;
            if got == want {
                return;
            }
            assert!(start.elapsed() < limit, "/readyz {got}, not {want}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    wait_for(200, Duration::from_secs(30)).await;
    pg.stop();
    wait_for(503, Duration::from_secs(15)).await;
    assert!(
        ing.child.try_wait().expect("wait").is_none(),
        "{}",
        ing.log_tail(20)
    );
    pg.start_again().await;
    wait_for(200, Duration::from_secs(30)).await;
    ing.terminate(Duration::from_secs(15)).await;
    broker.stop().await;
}

/// Every `dead-letters` action waits for the database as `retry`, `replay`
/// and `migrate` do (one shared start-up wait): started against a stopped
/// server that comes up within `--retry-for`, `list` waits and then lists;
/// against one that never does, `show` exits 1 after the window with the
/// server's own message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_wait_for_a_database_within_retry_for() {
    use common::pgcluster::PgCluster;
    use std::time::{Duration, Instant};
    let mut cluster = PgCluster::start().await;
    let url = cluster.create_migrated_db("late").await;
    cluster.stop();
    let started = Instant::now();
    let list = tokio::spawn({
        let url = url.clone();
        async move {
            cli([
                "dead-letters",
                "list",
                "--database-url",
                &url,
                "--retry-for",
                "60s",
            ])
            .await
        }
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        !list.is_finished(),
        "list gave up while the server was down"
    );
    cluster.start_again().await;
    let out = tokio::time::timeout(Duration::from_secs(60), list)
        .await
        .expect("list did not end once the server was up")
        .expect("join");
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    assert!(out.stdout.contains("no dead letters"), "{}", out.stdout);
    assert!(
        out.stderr.contains("retrying in"),
        "no retry logged: {}",
        out.stderr
    );
    assert!(started.elapsed() >= Duration::from_secs(3));

    // Never reachable: each action gives up after the window, one line, the cause.
    cluster.stop();
    for action in [
        &["list"][..],
        &["show", "1"],
        &["purge", "--older-than", "1d"],
        &["flush"],
    ] {
        let started = Instant::now();
        let mut args = vec!["dead-letters"];
        args.extend_from_slice(action);
        args.extend_from_slice(&["--database-url", &url, "--retry-for", "2s"]);
        let out = cli(args).await;
        assert_eq!(out.code, Some(1), "{action:?}: {}", out.stderr);
        let line = fatal_line(&out);
        assert!(line.contains("Connection refused"), "{action:?}: {line}");
        assert!(
            line.contains("gave up after 2s, retryFor"),
            "{action:?}: {line}"
        );
        assert!(
            started.elapsed() >= Duration::from_secs(2),
            "{action:?} did not wait: {:?}",
            started.elapsed()
        );
    }
}
