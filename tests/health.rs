//! Health that tells the truth, and the fleet's heartbeats: `/readyz`
//! follows Postgres and the broker, `/healthz` notices a stalled pipeline,
//! tables dropped under a running `run` make it wait (not ready) instead of
//! exiting, and `status` tells alive, stopped-cleanly and crashed replicas
//! apart from their heartbeats.

mod common;

use std::time::{Duration, Instant};

use common::broker::{free_port, Broker, Ingester};
use common::pgcluster::PgCluster;
use common::*;
use lookout_ingester::sample;
use serde_json::Value;

/// `GET path` on the local port: status code and body (0 and "" if nothing answers).
async fn get(port: u16, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return (0, String::new());
    };
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return (0, String::new());
    }
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, body.to_string())
}

/// Polls `path` until it answers `want`; returns the body.
async fn wait_for(port: u16, path: &str, want: u16, limit: Duration, ing: &Ingester) -> String {
    let start = Instant::now();
    loop {
        let (code, body) = get(port, path).await;
        if code == want {
            eprintln!("{path} answered {want} after {:?}", start.elapsed());
            return body;
        }
        assert!(
            start.elapsed() < limit,
            "{path} still {code} ({body:?}), not {want}, after {limit:?}\n{}",
            ing.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// `run` with the HTTP server on `port` and short batches.
fn spawn_run(db_url: &str, broker: &Broker, port: u16, log: &str, extra: &[&str]) -> Ingester {
    let port = port.to_string();
    let url = broker.url();
    let mut args = vec![
        "run",
        "--database-url",
        db_url,
        "--pulsar-url",
        &url,
        "--topic",
        "events",
        "--metrics-port",
        &port,
        "--batch-duration",
        "100ms",
    ];
    args.extend_from_slice(extra);
    Ingester::spawn_args(&args, broker.dir.path().join(log))
}

/// Postgres stopped under a running `run` while messages arrive: `/readyz`
/// turns 503 naming Postgres with the server's own cause, logged once; once
/// it is back, 200 again and what waited is committed. The broker killed
/// and restarted does the same for the broker check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_follows_postgres_and_the_broker_and_what_waited_is_committed() {
    let mut pg = PgCluster::start().await;
    let url = pg.create_migrated_db("lookout").await;
    let mut broker = Broker::start().await;
    let seqs = sample::generate(41, 40);
    let expected = baseline(&seqs, broker.dir.path()).await;
    let (first, second) = seqs.split_at(seqs.len() / 2);
    broker.publish("events", payloads(first)).await;
    let port = free_port();
    let mut ing = spawn_run(&url, &broker, port, "ing.log", &[]);
    assert_eq!(
        wait_for(port, "/readyz", 200, Duration::from_secs(30), &ing).await,
        "ready\n"
    );

    pg.stop();
    let body = wait_for(port, "/readyz", 503, Duration::from_secs(15), &ing).await;
    assert!(body.starts_with("not ready: postgres: "), "{body}");
    assert!(!body.contains("broker"), "{body}");
    broker.publish("events", payloads(second)).await;
    // Several probes later: still down, still running, said once.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(ing.child.try_wait().expect("wait").is_none());
    assert_eq!(get(port, "/readyz").await.0, 503);
    assert_eq!(
        ing.log_text().matches("Postgres is not reachable").count(),
        1,
        "{}",
        ing.log_tail(30)
    );
    let metrics = get(port, "/metrics").await.1;
    assert!(
        metrics.contains("lookout_ingester_ready 0"),
        "ready gauge: {metrics}"
    );

    pg.start_again().await;
    wait_for(port, "/readyz", 200, Duration::from_secs(30), &ing).await;
    wait_equal(&url, &expected, Duration::from_secs(60), Some(&ing)).await;
    assert!(ing.log_text().contains("Postgres answers again; ready"));
    let metrics = get(port, "/metrics").await.1;
    assert!(
        metrics.contains("lookout_ingester_ready 1"),
        "ready gauge: {metrics}"
    );

    broker.kill().await;
    let body = wait_for(port, "/readyz", 503, Duration::from_secs(30), &ing).await;
    assert_eq!(body, "not ready: broker: not subscribed\n");
    broker.restart().await;
    wait_for(port, "/readyz", 200, Duration::from_secs(60), &ing).await;

    ing.terminate(Duration::from_secs(15)).await;
    broker.stop().await;
    pg.stop();
}

/// Another session holds `job` locked while messages wait: with a 3 s
/// window `/healthz` turns 503 saying the pipeline is stalled (readiness
/// is unaffected: Postgres answers); released, it is 200 again and
/// everything is committed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stall_flips_healthz_and_releasing_it_flips_it_back() {
    let db = TestDb::migrated().await;
    let broker = Broker::start().await;
    let seqs = sample::generate(42, 40);
    let expected = baseline(&seqs, broker.dir.path()).await;
    let (first, second) = seqs.split_at(seqs.len() / 2);
    let expected_first = baseline(first, broker.dir.path()).await;
    broker.publish("events", payloads(first)).await;
    let port = free_port();
    let mut ing = spawn_run(
        &db.url,
        &broker,
        port,
        "ing.log",
        &["--stall-timeout", "3s"],
    );
    wait_equal(
        &db.url,
        &expected_first,
        Duration::from_secs(60),
        Some(&ing),
    )
    .await;
    assert_eq!(get(port, "/healthz").await, (200, "ok\n".to_string()));

    let mut locker = db.client().await;
    let tx = locker.transaction().await.expect("begin");
    tx.batch_execute("LOCK TABLE job IN ACCESS EXCLUSIVE MODE")
        .await
        .expect("lock");
    broker.publish("events", payloads(second)).await;
    let body = wait_for(port, "/healthz", 503, Duration::from_secs(30), &ing).await;
    assert!(
        body.starts_with("unhealthy: stalled: messages have waited"),
        "{body}"
    );
    assert!(body.contains("health.stallTimeout 3s"), "{body}");
    assert_eq!(get(port, "/readyz").await.0, 200);
    assert!(get(port, "/metrics")
        .await
        .1
        .contains("lookout_ingester_healthy 0"));

    tx.rollback().await.expect("release");
    wait_for(port, "/healthz", 200, Duration::from_secs(30), &ing).await;
    wait_equal(&db.url, &expected, Duration::from_secs(60), Some(&ing)).await;
    let log = ing.log_text();
    assert_eq!(log.matches("unhealthy (/healthz 503)").count(), 1, "{log}");
    assert!(log.contains("healthy again"), "{log}");
    ing.terminate(Duration::from_secs(15)).await;
    db.drop_db().await;
    broker.stop().await;
}

/// The tables dropped under a running `run` (the whole schema, as a
/// restore would): it does not exit but turns not ready saying what to do,
/// acknowledges nothing, and once the database is migrated again writes
/// what waited; nothing is dead-lettered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_dropped_under_run_make_it_wait_not_ready_and_resume() {
    let db = TestDb::migrated().await;
    let broker = Broker::start().await;
    let before = sample::generate(43, 20);
    let after = sample::generate(44, 30);
    let expected_before = baseline(&before, broker.dir.path()).await;
    let expected_after = baseline(&after, broker.dir.path()).await;
    broker.publish("events", payloads(&before)).await;
    let port = free_port();
    let mut ing = spawn_run(&db.url, &broker, port, "ing.log", &[]);
    wait_equal(
        &db.url,
        &expected_before,
        Duration::from_secs(60),
        Some(&ing),
    )
    .await;
    wait_for(port, "/readyz", 200, Duration::from_secs(30), &ing).await;

    let client = db.client().await;
    client
        .batch_execute("DROP SCHEMA public CASCADE; CREATE SCHEMA public")
        .await
        .expect("drop the tables");
    broker.publish("events", payloads(&after)).await;
    let body = wait_for(port, "/readyz", 503, Duration::from_secs(30), &ing).await;
    assert!(
        body.starts_with("not ready: schema: the Lookout tables are missing")
            && body.contains("lookout-ingester migrate"),
        "{body}"
    );
    // Several re-checks later: still running, told once.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        ing.child.try_wait().expect("wait").is_none(),
        "{}",
        ing.log_tail(30)
    );
    let log = ing.log_text();
    assert_eq!(
        log.matches("cannot write to this database").count(),
        1,
        "{log}"
    );

    let out = migrate_cli(&db.url, &[]).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    wait_equal(
        &db.url,
        &expected_after,
        Duration::from_secs(60),
        Some(&ing),
    )
    .await;
    wait_for(port, "/readyz", 200, Duration::from_secs(30), &ing).await;
    assert_eq!(count(&client, "ingester_dead_letter").await, 0);
    let spool = broker
        .dir
        .path()
        .join("lookout-ingester-dead-letters.jsonl");
    assert!(
        std::fs::read_to_string(&spool)
            .unwrap_or_default()
            .is_empty(),
        "dead letters spooled"
    );
    assert!(ing.log_text().contains("can be written now; resuming"));
    ing.terminate(Duration::from_secs(15)).await;
    db.drop_db().await;
    broker.stop().await;
}

/// `status --json` as JSON.
async fn status_json(url: &str, extra: &[&str]) -> Value {
    let mut args = vec!["status", "--database-url", url, "--json"];
    args.extend_from_slice(extra);
    let out = cli(args).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stdout))
}

/// Waits until the heartbeat table holds `n` rows.
async fn wait_heartbeats(url: &str, n: i64, ing: &Ingester) {
    let start = Instant::now();
    let client = connect(url).await;
    while count(&client, "ingester_heartbeat").await < n {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{}",
            ing.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Two replicas: one stopped with SIGTERM writes its final state (stopped
/// cleanly), the other SIGKILLed stops beating and turns crashed once
/// stale; progress is counted on the replica that consumed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_tells_a_clean_stop_from_a_crash() {
    let db = TestDb::migrated().await;
    let broker = Broker::start().await;
    let seqs = sample::generate(45, 30);
    let expected = baseline(&seqs, broker.dir.path()).await;
    broker.publish("events", payloads(&seqs)).await;
    let beat = ["--heartbeat-interval", "500ms"];
    let mut clean = spawn_run(
        &db.url,
        &broker,
        free_port(),
        "clean.log",
        &[&beat[..], &["--replica-id", "replica-clean"]].concat(),
    );
    wait_equal(&db.url, &expected, Duration::from_secs(60), Some(&clean)).await;
    let killed = spawn_run(
        &db.url,
        &broker,
        free_port(),
        "killed.log",
        &[&beat[..], &["--replica-id", "replica-killed"]].concat(),
    );
    wait_heartbeats(&db.url, 2, &killed).await;
    // The first replica's counts reach its row with the next beat.
    let start = Instant::now();
    let fleet = loop {
        let fleet = status_json(&db.url, &[]).await;
        if fleet["replicas"][0]["messages"].as_i64().unwrap_or(0) >= seqs.len() as i64 {
            break fleet;
        }
        assert!(start.elapsed() < Duration::from_secs(30), "{fleet:#}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    assert_eq!(fleet["counts"]["alive"], 2, "{fleet:#}");
    let r = &fleet["replicas"][0];
    assert_eq!(r["replica_id"], "replica-clean", "{fleet:#}");
    assert_eq!(
        (
            &r["state"],
            &r["topic"],
            &r["subscription"],
            &r["schema_generation"]
        ),
        (
            &Value::from("alive"),
            &Value::from("events"),
            &Value::from("lookout-ingester-v2"),
            &Value::from(31)
        ),
        "{fleet:#}"
    );
    assert_eq!(r["version"], env!("CARGO_PKG_VERSION"));
    assert!(r["batches"].as_i64().unwrap_or(0) >= 1, "{fleet:#}");
    assert!(r["last_commit"].is_string(), "{fleet:#}");
    assert_eq!(r["lag_seconds"], 0.0, "nothing waits: {fleet:#}");
    assert_eq!(fleet["replicas"][1]["replica_id"], "replica-killed");

    clean.terminate(Duration::from_secs(15)).await;
    killed.sigkill().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let fleet = status_json(&db.url, &["--stale-after", "2s"]).await;
    let states: Vec<(&str, &str, bool)> = fleet["replicas"]
        .as_array()
        .expect("replicas")
        .iter()
        .map(|r| {
            (
                r["replica_id"].as_str().unwrap_or(""),
                r["state"].as_str().unwrap_or(""),
                r["stale"].as_bool().unwrap_or(false),
            )
        })
        .collect();
    assert_eq!(
        states,
        [
            ("replica-killed", "crashed", true),
            ("replica-clean", "stopped-cleanly", true)
        ],
        "{fleet:#}"
    );
    let stopped = &fleet["replicas"][1];
    assert!(stopped["stopped"].is_string(), "{fleet:#}");
    assert!(stopped["stop_error"].is_null(), "{fleet:#}");
    assert!(stopped["messages"].as_i64().unwrap_or(0) >= seqs.len() as i64);
    assert!(fleet["replicas"][0]["stopped"].is_null());

    // The text view says the same, one line each.
    let out = cli(["status", "--database-url", &db.url, "--stale-after", "2s"]).await;
    assert_eq!(out.code, Some(0), "{}", out.stderr);
    let lines: Vec<&str> = out.stdout.lines().collect();
    assert_eq!(lines.len(), 3, "{}", out.stdout);
    assert!(
        lines[0].starts_with("2 replica(s): 1 crashed, 1 stopped-cleanly"),
        "{}",
        out.stdout
    );
    assert!(
        lines[1].starts_with("replica-killed crashed: host "),
        "{}",
        out.stdout
    );
    assert!(
        lines[2].starts_with("replica-clean stopped-cleanly: host "),
        "{}",
        out.stdout
    );
    db.drop_db().await;
    broker.stop().await;
}

/// `run` deletes heartbeat rows older than `heartbeat.retention` and keeps
/// the younger ones; `status` gives up on an unreachable database after
/// `retryFor` with one line.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_heartbeats_are_swept_and_status_gives_up_in_time() {
    let db = TestDb::migrated().await;
    let broker = Broker::start().await;
    let client = db.client().await;
    client
        .batch_execute(
            "INSERT INTO ingester_heartbeat (replica_id, host, pid, version, topic, subscription, started, last_beat) VALUES \
             ('old', 'h', 1, '0.0.1', 'events', 's', now() - interval '10 days', now() - interval '9 days'), \
             ('young', 'h', 2, '0.0.1', 'events', 's', now() - interval '2 hours', now() - interval '1 hour')",
        )
        .await
        .expect("insert heartbeats");
    let mut ing = spawn_run(
        &db.url,
        &broker,
        free_port(),
        "ing.log",
        &["--heartbeat-retention", "1d", "--replica-id", "sweeper"],
    );
    let start = Instant::now();
    loop {
        let ids: Vec<String> = client
            .query(
                "SELECT replica_id FROM ingester_heartbeat ORDER BY replica_id",
                &[],
            )
            .await
            .expect("ids")
            .iter()
            .map(|r| r.get(0))
            .collect();
        if ids == ["sweeper", "young"] {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{ids:?}\n{}",
            ing.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(ing
        .log_text()
        .contains("deleted 1 heartbeat row(s) not beaten for 86400s"));
    let fleet = status_json(&db.url, &[]).await;
    assert_eq!(fleet["counts"]["alive"], 1, "{fleet:#}");
    assert_eq!(fleet["counts"]["crashed"], 1, "{fleet:#}");
    assert_eq!(fleet["replicas"][1]["replica_id"], "young");
    ing.terminate(Duration::from_secs(15)).await;

    let started = Instant::now();
    let out = cli([
        "status",
        "--database-url",
        "postgres://postgres@127.0.0.1:1/postgres",
        "--retry-for",
        "2s",
    ])
    .await;
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(started.elapsed() < Duration::from_secs(20));
    let errors: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("error:"))
        .collect();
    assert_eq!(errors.len(), 1, "{}", out.stderr);
    assert!(errors[0].contains("gave up after 2s"), "{}", out.stderr);
    db.drop_db().await;
    broker.stop().await;
}
