//! Live mode against a real broker (pulsar-lite behind the fix-up proxy) and
//! the real Postgres. Each test compares the final tables with those of a
//! replay of the same messages (an uninterrupted run), by full dump.

mod common;

use std::time::{Duration, Instant};

use common::broker::{Broker, Ingester};
use common::{baseline, cli, dump, payloads, replay_files, wait_equal, TestDb};
use lookout_ingester::{pipeline, sample};

async fn job_count(db: &TestDb) -> i64 {
    common::count(&db.client().await, "job").await
}

/// A broker with the `n` sequences `sample::generate(seed, n)` published to
/// `events`, the tables a clean run of them leaves, and an empty database.
async fn published(seed: u64, n: usize) -> (Broker, String, TestDb) {
    let broker = Broker::start().await;
    let seqs = sample::generate(seed, n);
    let expected = baseline(&seqs, broker.dir.path()).await;
    broker.publish("events", payloads(&seqs)).await;
    (broker, expected, TestDb::migrated().await)
}

/// `run` from the broker's `events` into `db`, its log in the broker's
/// directory.
fn ingest(db: &TestDb, broker: &Broker, log: &str, extra: &[&str]) -> Ingester {
    let log = broker.dir.path().join(log);
    Ingester::spawn(&db.url, &broker.url(), "events", log, extra)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_ingestion_matches_replay_and_sigterm_exits_cleanly() {
    let (broker, expected, db) = published(21, 300).await;
    let mut ing = ingest(&db, &broker, "ing.log", &["--batch-duration", "100ms"]);
    wait_equal(&db.url, &expected, Duration::from_secs(90), Some(&ing)).await;
    let started = Instant::now();
    ing.terminate(Duration::from_secs(10)).await;
    assert!(started.elapsed() < Duration::from_secs(10));
    db.drop_db().await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_commits_and_acknowledges_the_in_flight_batch() {
    let (broker, expected, db) = published(22, 120).await;
    // A batch that would wait a minute to fill (and is not cut when the
    // store is idle): everything received is in flight.
    let config = broker.dir.path().join("no-idle-cut.yaml");
    std::fs::write(&config, "batchCutWhenIdle: false\n").unwrap();
    let config = config.to_string_lossy().into_owned();
    let mut ing = ingest(
        &db,
        &broker,
        "ing.log",
        &[
            "--config",
            &config,
            "--batch-duration",
            "60s",
            "--batch-size",
            "1000000",
        ],
    );
    // Wait until the consumer has received everything (nothing committed yet).
    let start = Instant::now();
    while !ing.log_text().contains("subscribed to events") {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{}",
            ing.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        job_count(&db).await,
        0,
        "nothing is committed before the batch is cut"
    );
    ing.terminate(Duration::from_secs(10)).await;
    // Committed: the tables are complete now, without another run.
    wait_equal(&db.url, &expected, Duration::from_secs(1), Some(&ing)).await;
    // Acknowledged: the same subscription delivers nothing more, so a second
    // ingester writing into an empty database writes nothing.
    let other = TestDb::migrated().await;
    let mut second = ingest(&other, &broker, "ing2.log", &["--batch-duration", "100ms"]);
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        job_count(&other).await,
        0,
        "acknowledged messages are not delivered again\n{}",
        second.log_text()
    );
    second.signal(libc::SIGTERM);
    let _ = second.wait_exit(Duration::from_secs(10)).await;
    other.drop_db().await;
    db.drop_db().await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_then_restart_gives_the_same_tables() {
    let (broker, expected, db) = published(23, 1200).await;
    let args = ["--batch-size", "200", "--batch-duration", "50ms"];
    let mut kills = 0;
    let mut last_jobs = -1;
    // Kill as soon as progress is seen, repeatedly, while rows are still arriving.
    let deadline = Instant::now() + Duration::from_secs(120);
    while kills < 6 && Instant::now() < deadline {
        let ing = ingest(&db, &broker, "ing.log", &args);
        let start = Instant::now();
        loop {
            let n = job_count(&db).await;
            if n > last_jobs || start.elapsed() > Duration::from_secs(10) {
                last_jobs = n;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        ing.sigkill().await;
        kills += 1;
    }
    let ing = ingest(&db, &broker, "ing.log", &args);
    wait_equal(&db.url, &expected, Duration::from_secs(120), Some(&ing)).await;
    ing.sigkill().await;
    assert!(
        kills >= 3,
        "the ingester was killed mid-stream {kills} times"
    );
    db.drop_db().await;
    broker.stop().await;
}

/// Armada's producers batch and compress: many messages share one entry,
/// and the broker acknowledges entries. A batch of ours that ends inside a
/// producer's batch must not acknowledge its entry: a crash would lose the
/// rest of it. Here the ingester commits the submissions (published
/// first), then blocks on its first `job_run` insert, held by the test, and
/// is killed; the next run must still find the leases that share an entry
/// with the last submissions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_inside_a_producer_batch_loses_nothing() {
    use lookout_ingester::proto::armadaevents::event_sequence::event::Event as Kind;
    let broker = Broker::start().await;
    // Every submission first (300, one job each, in entries of 50), then
    // the rest, each job's events in order.
    let (mut seqs, rest): (Vec<_>, Vec<_>) = sample::generate(26, 300).into_iter().partition(|s| {
        s.events
            .iter()
            .any(|e| matches!(e.event, Some(Kind::SubmitJob(_))))
    });
    seqs.extend(rest);
    // Few enough after the submissions that the ingester, blocked, still
    // receives them all and so keeps acknowledging (a full pipeline stops
    // the consumer loop, acknowledgements included, until it drains).
    seqs.truncate(330);
    let expected = baseline(&seqs, broker.dir.path()).await;
    broker.publish_batched("events", payloads(&seqs), 50).await;
    let db = TestDb::migrated().await;
    // Inserts into job_run wait while the test holds advisory lock 26.
    let lock = db.client().await;
    lock.batch_execute(
        "CREATE FUNCTION wait_for_test() RETURNS trigger LANGUAGE plpgsql AS
             $$ BEGIN PERFORM pg_advisory_xact_lock(26); RETURN NEW; END $$;
         CREATE TRIGGER wait_for_test BEFORE INSERT ON job_run
             FOR EACH ROW EXECUTE FUNCTION wait_for_test();
         SELECT pg_advisory_lock(26);",
    )
    .await
    .unwrap();
    let args = ["--batch-size", "7", "--batch-duration", "20ms"];
    let ing = ingest(&db, &broker, "ing.log", &args);
    // The submissions are committed once the job count stops growing.
    let (mut last, mut since) = (-1, Instant::now());
    let start = Instant::now();
    while last <= 0 || since.elapsed() < Duration::from_secs(2) {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{}",
            ing.log_tail(20)
        );
        let n = job_count(&db).await;
        if n != last {
            (last, since) = (n, Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    ing.sigkill().await;
    // The killed ingester's backend may still wait in the trigger; unlocked,
    // its transaction ends uncommitted, as its client is gone.
    lock.batch_execute("SELECT pg_advisory_unlock(26)")
        .await
        .unwrap();
    let ing = ingest(&db, &broker, "ing2.log", &args);
    wait_equal(&db.url, &expected, Duration::from_secs(60), Some(&ing)).await;
    ing.sigkill().await;
    db.drop_db().await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_mid_stream_gives_the_same_tables() {
    let mut broker = Broker::start().await;
    let seqs = sample::generate(24, 600);
    let expected = baseline(&seqs, broker.dir.path()).await;
    let (first, second) = seqs.split_at(seqs.len() / 2);
    broker.publish("events", payloads(first)).await;
    let db = TestDb::migrated().await;
    let ing = ingest(
        &db,
        &broker,
        "ing.log",
        &["--batch-size", "300", "--batch-duration", "50ms"],
    );
    let start = Instant::now();
    while job_count(&db).await == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "{}",
            ing.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    broker.restart().await;
    broker.publish("events", payloads(second)).await;
    wait_equal(&db.url, &expected, Duration::from_secs(120), Some(&ing)).await;
    assert!(
        ing.log_text().contains("reconnecting"),
        "the ingester noticed the restart"
    );
    ing.sigkill().await;
    db.drop_db().await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cut_connections_give_the_same_tables() {
    let (broker, expected, db) = published(25, 800).await;
    let ing = ingest(
        &db,
        &broker,
        "ing.log",
        &["--batch-size", "200", "--batch-duration", "50ms"],
    );
    for _ in 0..3 {
        let before = job_count(&db).await;
        let start = Instant::now();
        while job_count(&db).await == before && start.elapsed() < Duration::from_secs(20) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Cut only a live connection, so each cut is a real one: a
        // connection can close between the wait and the cut, so repeat
        // until the proxy counts one more cut.
        let cuts = broker.proxy.stats().cut;
        tokio::time::timeout(Duration::from_secs(20), async {
            while broker.proxy.stats().cut == cuts {
                broker.proxy.wait_connections(|n| n > 0).await;
                broker.proxy.cut_all();
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the ingester reconnects");
    }
    wait_equal(&db.url, &expected, Duration::from_secs(120), Some(&ing)).await;
    let stats = broker.proxy.stats();
    assert!(
        stats.cut >= 3 && stats.accepted >= 4,
        "connections were cut and re-made: {stats:?}"
    );
    ing.sigkill().await;
    db.drop_db().await;
    broker.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn record_then_replay_equals_live_ingestion_with_an_upstream_config_file() {
    let broker = Broker::start().await;
    let mut seqs = sample::generate(26, 150);
    // Events without `created`: live mode gives them the publish time, and so
    // does `record`, so the replayed file writes the same rows.
    for s in seqs.iter_mut().step_by(7) {
        for e in &mut s.events {
            e.created = None;
        }
    }
    broker.publish("events", payloads(&seqs)).await;

    // Live, configured through an upstream-style YAML file (keys in upstream's spelling).
    let live_db = TestDb::migrated().await;
    let cfg = broker.dir.path().join("lookoutingester.yaml");
    let db_name = live_db
        .url
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_string();
    std::fs::write(
        &cfg,
        format!(
            "postgres:\n  connection:\n    host: 127.0.0.1\n    port: 5432\n    user: postgres\n    dbname: {db_name}\n    sslmode: disable\n\
             metricsPort: 0\npulsar:\n  URL: \"{}\"\n  jobsetEventsTopic: events\n  receiverQueueSize: 50\n  backoffTime: 200ms\n\
             subscriptionName: lookout-ingester-v2\nbatchSize: 500\nbatchDuration: 100ms\nmaxBackoff: 2\n",
            broker.url()
        ),
    )
    .expect("config");
    let cfg_arg = cfg.display().to_string();
    let ing = Ingester::spawn_args(
        &["run", "--config", &cfg_arg],
        broker.dir.path().join("ing.log"),
    );

    // Record the topic (no subscription touched), then replay the file.
    let file = broker.dir.path().join("recorded.bin.gz");
    let file_arg = file.display().to_string();
    let url = broker.url();
    let rec = cli([
        "record",
        "--pulsar-url",
        &url,
        "--topic",
        "events",
        "--gzip",
        "--idle",
        "3s",
        "--out",
        &file_arg,
    ])
    .await;
    assert_eq!(rec.code, Some(0), "{}\n{}", rec.stdout, rec.stderr);
    assert!(
        rec.stdout
            .contains(&format!("recorded {} messages", seqs.len())),
        "{}",
        rec.stdout
    );
    let replay_db = TestDb::migrated().await;
    let summary = replay_files(&replay_db.url, vec![file], pipeline::Settings::default()).await;
    assert!(summary.clean(), "{summary}");
    let replayed = dump(&replay_db.client().await).await;
    assert!(replayed.contains("\"job_id\""), "the replay wrote rows");
    // Live ingestion converges on exactly what the recorded file produced.
    wait_equal(&live_db.url, &replayed, Duration::from_secs(90), Some(&ing)).await;
    ing.sigkill().await;
    live_db.drop_db().await;
    replay_db.drop_db().await;
    broker.stop().await;
}

/// One job of the migration test: submitted, leased and running in one
/// message; its end in another (even jobs fail with a category and a
/// FailureInfo, odd ones are preempted by a named job).
fn migration_job(i: i64) -> (Vec<u8>, Vec<u8>) {
    use prost::Message;
    use sample::{event, ts};
    let job = format!("mig{i:05}");
    let run = format!("run-mig-{i:05}");
    let t = i * 10;
    let start = sample::sequence(
        "q",
        "js",
        "bob",
        vec![
            event(
                Some(ts(t)),
                sample::submit(&job, "ns", 1, &[("cpu", "1")], None, &[]),
            ),
            event(Some(ts(t + 1)), sample::leased(&job, &run, "c1", "n1", "p")),
            event(Some(ts(t + 2)), sample::running(&job, &run, Some("n1"))),
        ],
    );
    let end = if i % 2 == 0 {
        let mut error = sample::categorised_error(
            true,
            sample::pod_error("boom", "n1", &[3]),
            &format!("cat-{i}"),
            "sub",
        );
        error.failure_info = Some(sample::failure(3, "oom", &["OOM"], "main"));
        vec![
            event(
                Some(ts(t + 3)),
                sample::run_errors(&job, &run, vec![error.clone()]),
            ),
            event(Some(ts(t + 4)), sample::job_errors(&job, vec![error])),
        ]
    } else {
        vec![event(
            Some(ts(t + 3)),
            sample::run_preempted_by(&job, &run, &format!("r-{i}"), &format!("w-{i}"), ""),
        )]
    };
    (
        start.encode_to_vec(),
        sample::sequence("q", "js", "bob", end).encode_to_vec(),
    )
}

/// Waits until `sql` (one bigint) returns `want`, or fails with the
/// ingester's log.
async fn wait_count(db: &TestDb, sql: &str, want: i64, limit: Duration, ing: &Ingester) {
    let start = Instant::now();
    loop {
        let got: i64 = match db.client().await.query_one(sql, &[]).await {
            Ok(row) => row.get(0),
            Err(e) => panic!("{sql}: {e}"),
        };
        if got == want {
            return;
        }
        assert!(
            start.elapsed() < limit,
            "{sql}: {got}, not {want}, within {limit:?}\n{}",
            ing.log_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrating_031_to_035_under_the_running_ingester() {
    use serde_json::json;
    const JOBS: i64 = 240;
    let broker = Broker::start().await;
    let db = TestDb::migrated().await; // 031, the default target
    let messages: Vec<(Vec<u8>, Vec<u8>)> = (0..JOBS).map(migration_job).collect();
    let all = |r: std::ops::Range<i64>| -> Vec<Vec<u8>> {
        r.flat_map(|i| {
            let (s, e) = &messages[i as usize];
            [s.clone(), e.clone()]
        })
        .collect()
    };
    let ended = "SELECT count(*) FROM job_run WHERE finished IS NOT NULL";
    let mut ing = ingest(
        &db,
        &broker,
        "ing.log",
        &["--batch-size", "20", "--batch-duration", "20ms"],
    );

    // A third written at 031.
    broker.publish("events", all(0..80)).await;
    wait_count(&db, ended, 80, Duration::from_secs(60), &ing).await;

    // The next third flows while the schema goes to 035 (033 drops
    // failure_info, which the 031 writer fills).
    let url = db.url.clone();
    let migration = tokio::spawn(async move {
        cli([
            "migrate",
            "--database-url",
            &url,
            "--to",
            "35",
            "--allow-drop",
        ])
        .await
    });
    for chunk in all(80..160).chunks(10) {
        broker.publish("events", chunk.to_vec()).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let out = migration.await.expect("migration task");
    assert_eq!(out.code, Some(0), "{}\n{}", out.stdout, out.stderr);

    // The last third is written at 035.
    broker.publish("events", all(160..JOBS)).await;
    wait_count(&db, ended, JOBS, Duration::from_secs(120), &ing).await;

    assert!(
        ing.log_text()
            .contains("the Lookout schema changed under the ingester"),
        "the ingester noticed the migration\n{}",
        ing.log_tail(40)
    );
    assert!(
        matches!(ing.child.try_wait(), Ok(None)),
        "the ingester is still running\n{}",
        ing.log_tail(40)
    );
    let client = db.client().await;
    let dead = common::json_rows(
        &client,
        "SELECT source, reason, error FROM ingester_dead_letter ORDER BY id",
        &[],
    )
    .await;
    assert_eq!(dead, Vec::<serde_json::Value>::new(), "dead letters");
    assert_eq!(job_count(&db).await, JOBS);
    let detected = lookout_ingester::store::schema::detect(&client).await;
    assert_eq!(
        detected.map(|d| d.generation.number()),
        Ok(35),
        "generation after the migration"
    );
    // Written at 031: no category, no termination reason (failure_info
    // went with its column).
    let early = common::json_rows(
        &client,
        "SELECT count(*) AS runs,
                count(failure_category) AS categories,
                count(scheduler_termination_reason) AS reasons
         FROM job_run WHERE run_id < 'run-mig-00080'",
        &[],
    )
    .await;
    assert_eq!(
        early,
        vec![json!({"runs": 80, "categories": 0, "reasons": 0})]
    );
    // Published after the migration: 035's columns.
    let late = common::json_rows(
        &client,
        "SELECT run_id, failure_category, failure_subcategory, scheduler_termination_reason
         FROM job_run WHERE run_id >= 'run-mig-00160' ORDER BY run_id",
        &[],
    )
    .await;
    let want: Vec<serde_json::Value> = (160..JOBS)
        .map(|i| {
            let run = format!("run-mig-{i:05}");
            if i % 2 == 0 {
                json!({"run_id": run, "failure_category": format!("cat-{i}"),
                       "failure_subcategory": "sub", "scheduler_termination_reason": null})
            } else {
                json!({"run_id": run, "failure_category": null, "failure_subcategory": null,
                       "scheduler_termination_reason": {"reason": format!("r-{i}"),
                           "args": {"preemptingJobId": format!("w-{i}"), "requestor": "bob"}}})
            }
        })
        .collect();
    assert_eq!(
        late,
        want,
        "runs ended after the migration\n{}",
        ing.log_tail(20)
    );
    ing.terminate(Duration::from_secs(10)).await;
    db.drop_db().await;
    broker.stop().await;
}

/// Finding 6: SIGTERM during catch-up returns once the in-flight batches are
/// committed and acknowledged, well inside the grace period.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_catch_up_returns_when_the_work_is_done() {
    let (broker, expected, db) = published(31, 1500).await;
    let args = ["--batch-size", "50", "--batch-duration", "50ms"];
    for round in 0..3 {
        let mut ing = ingest(&db, &broker, &format!("ing{round}.log"), &args);
        let before = job_count(&db).await;
        let start = Instant::now();
        while job_count(&db).await <= before {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "{}",
                ing.log_tail(20)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let stopped = Instant::now();
        ing.terminate(Duration::from_secs(20)).await;
        let took = stopped.elapsed();
        let log = ing.log_text();
        assert!(
            !log.contains("grace period expired"),
            "{}",
            ing.log_tail(30)
        );
        assert!(
            took < Duration::from_secs(4),
            "round {round}: SIGTERM took {took:?}\n{}",
            ing.log_tail(30)
        );
    }
    // What was committed was acknowledged: the rest arrives and the tables
    // converge (idempotent either way); no stop left a gap.
    let ing = ingest(&db, &broker, "last.log", &args);
    wait_equal(&db.url, &expected, Duration::from_secs(120), Some(&ing)).await;
    ing.sigkill().await;
    db.drop_db().await;
    broker.stop().await;
}

/// Finding 6: a stop that cannot finish (writes blocked by a lock) runs out
/// the grace period, says so and exits non-zero.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_stalled_database_runs_out_the_grace_period_and_fails() {
    let (broker, _expected, db) = published(32, 100).await;
    // Writes block (reads, such as the schema check, do not).
    let mut locker = db.client().await;
    let tx = locker.transaction().await.expect("begin");
    tx.batch_execute("LOCK TABLE job IN EXCLUSIVE MODE")
        .await
        .expect("lock");
    let mut ing = ingest(&db, &broker, "ing.log", &["--batch-duration", "50ms"]);
    let start = Instant::now();
    while !ing.log_text().contains("subscribed to events") {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{}",
            ing.log_text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stopped = Instant::now();
    ing.signal(libc::SIGTERM);
    let code = ing.wait_exit(Duration::from_secs(30)).await;
    let took = stopped.elapsed();
    assert_ne!(code, Some(0), "{}", ing.log_tail(20));
    assert!(
        ing.log_text().contains("shutdown grace period"),
        "{}",
        ing.log_tail(20)
    );
    assert!(took >= Duration::from_secs(8), "{took:?}");
    tx.rollback().await.expect("rollback");
    db.drop_db().await;
    broker.stop().await;
}
