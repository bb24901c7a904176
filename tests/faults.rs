//! The fault suite: the real binary (`run`) against pulsar-lite (through the
//! fix-up proxy) and Postgres, with something going wrong mid-stream:
//!
//! - Postgres restarted (twice, and once down while poison input arrives);
//! - Postgres's connection limit reached;
//! - a statement timeout;
//! - a permanent write error on some rows (a trigger refusing them);
//! - the broker killed and restarted;
//! - the ingester killed with SIGKILL at 20+ random points.
//!
//! After each, the tables must equal those of a clean run (a replay of the
//! same non-poison messages into a fresh database), compared by full dump,
//! and `ingester_dead_letter` must hold exactly the poison inputs, once
//! each, byte for byte. Postgres faults use a private cluster per test
//! (tests/common/pgcluster.rs), never the shared server. Everything is on
//! loopback and bounded in time; a failing test keeps its ingester logs
//! (the path is printed).

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::broker::{Broker, Ingester};
use common::pgcluster::{PgCluster, Settings};
use common::{
    baseline, bytea, connect, dump, json_rows, payloads, replay_dump, tail, try_connect, TestDb,
};
use lookout_ingester::pipeline;
use lookout_ingester::proto::armadaevents as ev;
use lookout_ingester::sample::{self, Rng};
use prost::Message;
use serde_json::{json, Value};
use tokio_postgres::{Client, NoTls};

/// Upper bound for any one test (they take 4-35 s on a 2-core machine).
const TEST_LIMIT: Duration = Duration::from_secs(120);
/// Upper bound for catching up after the last fault.
const CATCH_UP: Duration = Duration::from_secs(60);

/// The private clusters and the broker each use a core; running more than
/// two scenarios at once on a 2-core machine only makes all of them slow.
static SLOTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);

async fn bounded<F: std::future::Future<Output = ()>>(name: &str, f: F) {
    let _slot = SLOTS.acquire().await.expect("semaphore");
    let started = Instant::now();
    if tokio::time::timeout(TEST_LIMIT, f).await.is_err() {
        panic!("{name}: not finished within {TEST_LIMIT:?}");
    }
    eprintln!("{name}: {:.1}s", started.elapsed().as_secs_f64());
}

// ---------------------------------------------------------------- logs

/// A directory for the ingester's logs and dead-letter spool. Removed when
/// the test passes (`pass`), kept (and its path printed) otherwise or when
/// `FAULTS_KEEP_LOGS` is set.
struct Logs {
    dir: Option<tempfile::TempDir>,
    passed: bool,
}

impl Logs {
    fn new(name: &str) -> Logs {
        let dir = tempfile::Builder::new()
            .prefix(&format!("lookout-faults-{name}-"))
            .tempdir()
            .expect("tempdir");
        Logs {
            dir: Some(dir),
            passed: false,
        }
    }

    fn path(&self) -> &Path {
        self.dir.as_ref().expect("logs").path()
    }

    fn log(&self) -> PathBuf {
        self.path().join("ingester.log")
    }

    fn spool(&self) -> PathBuf {
        self.path().join("dead-letter-spool.jsonl")
    }

    fn pass(mut self) {
        self.passed = true;
    }
}

impl Drop for Logs {
    fn drop(&mut self) {
        if let Some(dir) = self.dir.take() {
            if !self.passed || std::env::var_os("FAULTS_KEEP_LOGS").is_some() {
                eprintln!("ingester logs kept in {}", dir.keep().display());
            }
        }
    }
}

// ---------------------------------------------------------------- ingester

/// Runs the binary (the harness's one way, from the log directory) with
/// short retry backoffs and the dead-letter spool in the test's log
/// directory, set by an upstream-style config file.
fn spawn(db_url: &str, broker: &Broker, logs: &Logs, extra: &[&str]) -> Ingester {
    let config = logs.path().join("faults.yaml");
    std::fs::write(
        &config,
        format!(
            "maxBackoff: 1\npulsar:\n  backoffTime: 200ms\ndeadLetterSpool: {}\n",
            logs.spool().display()
        ),
    )
    .expect("config");
    let config = config.display().to_string();
    let mut args = vec!["--config", config.as_str()];
    args.extend_from_slice(extra);
    Ingester::spawn(db_url, &broker.url(), "events", logs.log(), &args)
}

// ---------------------------------------------------------------- input

/// An input that must end up in `ingester_dead_letter`, once.
#[derive(Clone)]
struct Poison {
    payload: Vec<u8>,
    /// The dead letter's `reason`.
    reason: &'static str,
    /// Texts its `error` must contain.
    mentions: Vec<String>,
}

/// Random bytes that do not decode as an EventSequence.
fn garbage(rng: &mut Rng, n: usize) -> Vec<Poison> {
    let mut out: Vec<Poison> = Vec::new();
    while out.len() < n {
        let len = 16 + rng.below(240) as usize;
        let bytes: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
        if pipeline::decode(&bytes).is_ok() || out.iter().any(|p| p.payload == bytes) {
            continue;
        }
        out.push(Poison {
            payload: bytes,
            reason: "decode",
            mentions: vec![],
        });
    }
    out
}

fn submit_event(job_id: &str, secs: i64) -> ev::event_sequence::Event {
    sample::event(
        Some(sample::ts(secs)),
        sample::submit(
            job_id,
            "poison-ns",
            1,
            &[("cpu", "1"), ("memory", "1Gi")],
            None,
            &[],
        ),
    )
}

/// A valid sequence with an empty queue (nothing of it can be stored).
fn empty_queue(i: usize) -> Poison {
    let seq = sample::sequence(
        "",
        "poison-set",
        "poison-user",
        vec![submit_event(&format!("emptyq-{i}"), i as i64)],
    );
    Poison {
        payload: seq.encode_to_vec(),
        reason: "empty_queue",
        mentions: vec![],
    }
}

/// SubmitJob messages whose rows the trigger refuses.
fn refused(i: usize, jobs: &[String]) -> Poison {
    let seq = sample::sequence(
        "poison-queue",
        "poison-set",
        "poison-user",
        jobs.iter()
            .enumerate()
            .map(|(k, j)| submit_event(j, (i * 10 + k) as i64))
            .collect(),
    );
    let mut mentions: Vec<String> = jobs.to_vec();
    mentions.push(REFUSAL.to_string());
    Poison {
        payload: seq.encode_to_vec(),
        reason: "row_failed",
        mentions,
    }
}

/// The stream with the poison spread evenly through it.
fn interleave(stream: Vec<Vec<u8>>, poison: &[Poison]) -> Vec<Vec<u8>> {
    let n = stream.len();
    let k = poison.len();
    let mut out = Vec::with_capacity(n + k);
    let mut next = 0;
    for (i, p) in stream.into_iter().enumerate() {
        while next < k && (next + 1) * n / (k + 1) <= i {
            out.push(poison[next].payload.clone());
            next += 1;
        }
        out.push(p);
    }
    for p in &poison[next..] {
        out.push(p.payload.clone());
    }
    out
}

// ---------------------------------------------------------------- databases

/// Rows written so far, counting run state changes, so it grows while
/// ingestion makes progress. `None` while the database is unreachable.
async fn progress(url: &str) -> Option<i64> {
    progress_on(&try_connect(url).await?).await
}

/// [`progress`] on an open connection; `None` if the query fails.
async fn progress_on(client: &Client) -> Option<i64> {
    client
        .query_one(
            "SELECT (SELECT count(*) FROM job) + (SELECT count(*) FROM job_run)
                  + (SELECT count(*) FROM job_run WHERE started IS NOT NULL)
                  + (SELECT count(*) FROM job_run WHERE finished IS NOT NULL)",
            &[],
        )
        .await
        .ok()
        .map(|r| r.get(0))
}

/// Waits until progress exceeds `above`; returns it.
async fn wait_progress(url: &str, above: i64, limit: Duration, ing: &Ingester) -> i64 {
    let start = Instant::now();
    loop {
        if let Some(p) = progress(url).await {
            if p > above {
                return p;
            }
        }
        assert!(
            start.elapsed() < limit,
            "no progress beyond {above} within {limit:?}\n{}",
            ing.log_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Waits until `ingester_dead_letter` holds at least `n` rows.
async fn wait_dead_letters(url: &str, n: i64, limit: Duration, ing: &Ingester) {
    let start = Instant::now();
    loop {
        if let Some(client) = try_connect(url).await {
            if let Ok(row) = client
                .query_one("SELECT count(*) FROM ingester_dead_letter", &[])
                .await
            {
                if row.get::<_, i64>(0) >= n {
                    return;
                }
            }
        }
        assert!(
            start.elapsed() < limit,
            "fewer than {n} dead letters after {limit:?}\n{}",
            ing.log_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The dead letters as JSON, by payload: what [`expected_dead_letters`]
/// describes, plus the `error` text.
async fn dead_letter_rows(client: &Client) -> Vec<Value> {
    json_rows(
        client,
        "SELECT reason, payload, source LIKE 'events message %' AS from_topic, error
         FROM ingester_dead_letter ORDER BY payload, id",
        &[],
    )
    .await
}

/// One dead letter per poison input, by payload (as `ORDER BY payload`
/// sorts them: the hex text sorts as the bytes do).
fn expected_dead_letters(poison: &[Poison]) -> Vec<Value> {
    let mut want: Vec<Value> = poison
        .iter()
        .map(|p| json!({"reason": p.reason, "payload": bytea(&p.payload), "from_topic": true}))
        .collect();
    want.sort_by(|a, b| a["payload"].as_str().cmp(&b["payload"].as_str()));
    want
}

/// `ingester_dead_letter` holds exactly `poison`, one row each, byte for
/// byte, with the expected reason, from the topic, and an error naming what
/// it must; nothing is left in the spool. Waits a little, as dead letters
/// are stored just after their batch commits.
async fn check_dead_letters(url: &str, poison: &[Poison], logs: &Logs, ing: Option<&Ingester>) {
    let client = connect(url).await;
    let start = Instant::now();
    let mut rows = dead_letter_rows(&client).await;
    while rows.len() < poison.len() && start.elapsed() < Duration::from_secs(20) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        rows = dead_letter_rows(&client).await;
    }
    let log = || {
        ing.map(|i| i.log_tail(40))
            .unwrap_or_else(|| tail(&std::fs::read_to_string(logs.log()).unwrap_or_default(), 40))
    };
    let spool = std::fs::read_to_string(logs.spool()).unwrap_or_default();
    // The error texts are checked below, by what they must mention.
    let errors: Vec<String> = rows
        .iter_mut()
        .map(
            |r| match r.as_object_mut().and_then(|o| o.remove("error")) {
                Some(Value::String(e)) => e,
                other => panic!("dead letter without an error text: {other:?}"),
            },
        )
        .collect();
    assert_eq!(
        rows,
        expected_dead_letters(poison),
        "dead letters: expected exactly the {} poison inputs, once each\nerrors:\n{}\nspool: {} line(s)\nlog:\n{}",
        poison.len(),
        errors.join("\n"),
        spool.lines().count(),
        log()
    );
    for p in poison {
        let at = rows
            .iter()
            .position(|r| r["payload"] == bytea(&p.payload))
            .unwrap_or_else(|| panic!("poison input ({}) not stored", p.reason));
        for m in &p.mentions {
            assert!(
                errors[at].contains(m.as_str()),
                "dead letter error does not mention {m:?}: {}",
                errors[at]
            );
        }
    }
    assert!(
        spool.trim().is_empty(),
        "dead letters left in the spool, not in the table:\n{spool}"
    );
}

/// The end of every scenario: the tables catch up with the clean run's, the
/// dead letters are exactly the poison, SIGTERM still stops the ingester
/// cleanly, and the dead letters are still exactly the poison after it.
async fn converges(url: &str, expected: &str, poison: &[Poison], logs: &Logs, ing: Ingester) {
    converges_within(url, expected, CATCH_UP, poison, logs, ing).await;
}

/// [`converges`], the tables given `limit` to catch up.
async fn converges_within(
    url: &str,
    expected: &str,
    limit: Duration,
    poison: &[Poison],
    logs: &Logs,
    mut ing: Ingester,
) {
    common::wait_equal(url, expected, limit, Some(&ing)).await;
    check_dead_letters(url, poison, logs, Some(&ing)).await;
    ing.terminate(Duration::from_secs(15)).await;
    check_dead_letters(url, poison, logs, None).await;
}

/// Client backends other than `ours` (the ingester's, and any stragglers).
async fn other_backends(client: &Client, ours: &[i32]) -> Vec<i32> {
    client
        .query(
            "SELECT pid FROM pg_stat_activity
             WHERE backend_type = 'client backend' AND pid <> ALL($1::int[])",
            &[&ours],
        )
        .await
        .expect("pg_stat_activity")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

// ---------------------------------------------------------------- scenarios

const BATCH: [&str; 4] = ["--batch-size", "100", "--batch-duration", "50ms"];

/// Postgres restarted mid-stream: twice with `pg_ctl restart -m fast`
/// while batches are being written, then stopped as by a crash (`-m
/// immediate`) while the rest of the stream, with poison in it, is
/// published, and started again seconds later. Then, with everything
/// ingested, stopped once more while a last poison message arrives alone:
/// its dead letter can only go to the spool, and must reach the table once
/// Postgres is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restarted_mid_stream() {
    bounded("postgres_restarted_mid_stream", async {
        let logs = Logs::new("pg-restart");
        let mut pg = PgCluster::start().await;
        eprintln!("private cluster: initdb + start took {:?}", pg.startup);
        let broker = Broker::start().await;
        let seqs = sample::generate(31, 1200);
        let base_url = pg.create_migrated_db("baseline").await;
        let expected = replay_dump(&base_url, &seqs, logs.path()).await;
        let mut rng = Rng::new(31);
        let mut poison = garbage(&mut rng, 2);
        poison.push(empty_queue(1));
        let (first, second) = seqs.split_at(seqs.len() / 2);
        let url = pg.create_migrated_db("lookout").await;

        broker
            .publish("events", interleave(payloads(first), &poison[..1]))
            .await;
        let ing = spawn(&url, &broker, &logs, &BATCH);
        let mut p = 0;
        for _ in 0..2 {
            p = wait_progress(&url, p, Duration::from_secs(60), &ing).await;
            pg.restart().await;
        }
        p = wait_progress(&url, p, Duration::from_secs(60), &ing).await;
        pg.stop();
        broker
            .publish("events", interleave(payloads(second), &poison[2..]))
            .await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        pg.start_again().await;
        wait_progress(&url, p, Duration::from_secs(60), &ing).await;
        common::wait_equal(&url, &expected, CATCH_UP, Some(&ing)).await;
        let log = ing.log_text();
        assert!(
            log.contains("retryable database error"),
            "the restarts were noticed and retried\n{}",
            tail(&log, 40)
        );

        // Down while only poison arrives: its batch writes no rows, so its
        // dead letter is spooled (checked), and nothing else comes after.
        pg.stop();
        broker
            .publish("events", vec![poison[1].payload.clone()])
            .await;
        let start = Instant::now();
        while std::fs::read_to_string(logs.spool())
            .unwrap_or_default()
            .lines()
            .count()
            < 1
        {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "the dead letter was not spooled while Postgres was down\n{}",
                ing.log_tail(40)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        pg.start_again().await;
        converges_within(
            &url,
            &expected,
            Duration::from_secs(10),
            &poison,
            &logs,
            ing,
        )
        .await;
        broker.stop().await;
        pg.stop();
        logs.pass();
    })
    .await;
}

/// Every connection slot taken (max_connections = 8, none reserved for
/// superusers) for 4 s mid-stream: the ingester's sessions are terminated
/// and its reconnects are refused with 53300 until the slots are released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_limit_reached_mid_stream() {
    bounded("connection_limit_reached_mid_stream", async {
        let logs = Logs::new("conn-limit");
        let pg = PgCluster::start_with(Settings {
            max_connections: 8,
            extra: vec![],
            ..Settings::default()
        })
        .await;
        let broker = Broker::start().await;
        let seqs = sample::generate(32, 1200);
        let base_url = pg.create_migrated_db("baseline").await;
        let expected = replay_dump(&base_url, &seqs, logs.path()).await;
        let mut rng = Rng::new(32);
        let mut poison = garbage(&mut rng, 2);
        poison.push(empty_queue(2));
        let url = pg.create_migrated_db("lookout").await;
        broker
            .publish("events", interleave(payloads(&seqs), &poison))
            .await;
        let ing = spawn(&url, &broker, &logs, &BATCH);
        wait_progress(&url, 0, Duration::from_secs(60), &ing).await;

        // Take every slot: fill until refused, terminate the ingester's
        // sessions, fill the freed slots, until only ours are left.
        let mut fillers: Vec<Client> = Vec::new();
        let mut ours: Vec<i32> = Vec::new();
        let start = Instant::now();
        loop {
            loop {
                match tokio_postgres::connect(&pg.admin_url(), NoTls).await {
                    Ok((c, conn)) => {
                        tokio::spawn(async move {
                            let _ = conn.await;
                        });
                        let pid: i32 = c
                            .query_one("SELECT pg_backend_pid()", &[])
                            .await
                            .expect("pid")
                            .get(0);
                        ours.push(pid);
                        fillers.push(c);
                    }
                    Err(e) => {
                        let code = e.code().map(|c| c.code().to_string());
                        assert_eq!(
                            code.as_deref(),
                            Some("53300"),
                            "connecting past the limit: {e}"
                        );
                        break;
                    }
                }
            }
            assert!(!fillers.is_empty(), "no slot could be taken");
            let others = other_backends(&fillers[0], &ours).await;
            if others.is_empty() {
                break;
            }
            fillers[0]
                .execute(
                    "SELECT pg_terminate_backend(pid) FROM unnest($1::int[]) AS pid",
                    &[&others],
                )
                .await
                .expect("terminate");
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "could not take every connection slot"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let held_from = progress_on(&fillers[0]).await.unwrap_or(-1);
        tokio::time::sleep(Duration::from_secs(4)).await;
        let held_to = progress_on(&fillers[0]).await.unwrap_or(-1);
        assert_eq!(
            held_from, held_to,
            "nothing is written while every slot is taken"
        );
        assert_eq!(
            fillers.len(),
            8,
            "the test held all 8 slots ({} held)",
            fillers.len()
        );
        drop(fillers);
        let log = ing.log_text();
        assert!(
            log.contains("53300"),
            "the ingester was refused with 53300 (too many connections)\n{}",
            tail(&log, 40)
        );

        converges(&url, &expected, &poison, &logs, ing).await;
        broker.stop().await;
        drop(pg);
        logs.pass();
    })
    .await;
}

/// `statement_timeout = 1ms` for the whole server (ALTER SYSTEM and a
/// reload, so the ingester's existing sessions get it too) for 4 s
/// mid-stream, then reset the same way: statements are cancelled (57014,
/// retried) until then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_timeout_mid_stream() {
    bounded("statement_timeout_mid_stream", async {
        let logs = Logs::new("stmt-timeout");
        let pg = PgCluster::start().await;
        let broker = Broker::start().await;
        let seqs = sample::generate(33, 1200);
        let base_url = pg.create_migrated_db("baseline").await;
        let expected = replay_dump(&base_url, &seqs, logs.path()).await;
        let mut rng = Rng::new(33);
        let mut poison = garbage(&mut rng, 2);
        poison.push(empty_queue(3));
        let url = pg.create_migrated_db("lookout").await;
        // The test's own session is exempt (a session setting wins over the
        // server's).
        let admin = pg.connect("lookout").await;
        admin
            .batch_execute("SET statement_timeout = 0")
            .await
            .expect("set");
        broker
            .publish("events", interleave(payloads(&seqs), &poison))
            .await;
        let ing = spawn(&url, &broker, &logs, &BATCH);
        wait_progress(&url, 0, Duration::from_secs(60), &ing).await;

        admin
            .batch_execute("ALTER SYSTEM SET statement_timeout = '1ms'")
            .await
            .expect("statement_timeout on");
        admin
            .batch_execute("SELECT pg_reload_conf()")
            .await
            .expect("reload");
        tokio::time::sleep(Duration::from_secs(4)).await;
        admin
            .batch_execute("ALTER SYSTEM RESET statement_timeout")
            .await
            .expect("statement_timeout off");
        admin
            .batch_execute("SELECT pg_reload_conf()")
            .await
            .expect("reload");
        let log = ing.log_text();
        assert!(
            log.contains("57014"),
            "statements were cancelled by the timeout (57014)\n{}",
            tail(&log, 40)
        );

        converges(&url, &expected, &poison, &logs, ing).await;
        broker.stop().await;
        drop(pg);
        logs.pass();
    })
    .await;
}

const REFUSAL: &str = "poison row refused by the test trigger";

/// A permanent write error on some rows: a trigger refuses `job` and
/// `job_spec` rows of jobs named `poison…`. Everything else lands as in a
/// clean run of the other messages; each poison message becomes one dead
/// letter naming its failed rows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_row_errors_are_dead_lettered() {
    bounded("permanent_row_errors_are_dead_lettered", async {
        let logs = Logs::new("row-errors");
        let broker = Broker::start().await;
        let seqs = sample::generate(34, 600);
        let expected = baseline(&seqs, logs.path()).await;
        let poison = vec![
            refused(1, &["poison-1".into()]),
            refused(2, &["poison-2".into()]),
            refused(3, &["poison-3a".into(), "poison-3b".into()]),
            refused(4, &["poison-4".into()]),
        ];
        let db = TestDb::migrated().await;
        connect(&db.url)
            .await
            .batch_execute(&format!(
                "CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$
                 BEGIN
                     IF NEW.job_id LIKE 'poison%' THEN
                         RAISE EXCEPTION '{REFUSAL}: %', NEW.job_id;
                     END IF;
                     RETURN NEW;
                 END $$;
                 CREATE TRIGGER refuse_poison BEFORE INSERT ON job
                     FOR EACH ROW EXECUTE FUNCTION refuse_poison();
                 CREATE TRIGGER refuse_poison BEFORE INSERT ON job_spec
                     FOR EACH ROW EXECUTE FUNCTION refuse_poison();"
            ))
            .await
            .expect("trigger");
        broker
            .publish("events", interleave(payloads(&seqs), &poison))
            .await;
        let ing = spawn(&db.url, &broker, &logs, &BATCH);
        converges(&db.url, &expected, &poison, &logs, ing).await;
        let left = json_rows(
            &db.client().await,
            "SELECT 'job' AS t, job_id FROM job WHERE job_id LIKE 'poison%'
             UNION ALL SELECT 'job_spec', job_id FROM job_spec WHERE job_id LIKE 'poison%'",
            &[],
        )
        .await;
        assert_eq!(left, Vec::<Value>::new(), "no poison row was written");
        db.drop_db().await;
        broker.stop().await;
        logs.pass();
    })
    .await;
}

/// The broker killed and restarted twice mid-stream, with garbage and
/// empty-queue sequences before, between and after the restarts: pulsar-lite
/// redelivers, yet each poison input is stored exactly once. Each part of
/// the stream published after a restart starts with a poison message; its
/// dead letter shows the consumer is live again, and the next restart comes
/// while the rest of that part is being ingested.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restarted_mid_stream_with_poison() {
    bounded("broker_restarted_mid_stream_with_poison", async {
        let logs = Logs::new("broker-restart");
        let mut broker = Broker::start().await;
        let seqs = sample::generate(35, 900);
        let expected = baseline(&seqs, logs.path()).await;
        let mut rng = Rng::new(35);
        let mut poison = garbage(&mut rng, 3);
        poison.push(empty_queue(4));
        poison.push(empty_queue(5));
        let third = seqs.len() / 3;
        // Part 0: garbage at 1/3 and 2/3. Parts 1 and 2: a poison message
        // first (the marker), and part 2 one more at its end.
        let mut part0 = interleave(payloads(&seqs[..third]), &poison[..2]);
        let mut part1 = vec![poison[2].payload.clone()];
        part1.extend(payloads(&seqs[third..2 * third]));
        let mut part2 = vec![poison[3].payload.clone()];
        part2.extend(payloads(&seqs[2 * third..]));
        part2.push(poison[4].payload.clone());
        let db = TestDb::migrated().await;
        broker.publish("events", std::mem::take(&mut part0)).await;
        let ing = spawn(&db.url, &broker, &logs, &BATCH);
        for (seen, next) in [(1, part1), (3, part2)] {
            wait_dead_letters(&db.url, seen, Duration::from_secs(60), &ing).await;
            broker.restart().await;
            broker.publish("events", next).await;
        }
        converges(&db.url, &expected, &poison, &logs, ing).await;
        let stats = broker.proxy.stats();
        assert!(
            stats.accepted >= 3,
            "the ingester connected again after the restarts: {stats:?}"
        );
        db.drop_db().await;
        broker.stop().await;
        logs.pass();
    })
    .await;
}

/// SIGKILL at 20+ random points (50 ms to 1 s after each start, from a
/// seeded PRNG) while an 8000-job backlog (44,814 messages) is being ingested, then a last run
/// to completion.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_points() {
    bounded("sigkill_at_random_points", async {
        const KILLS: usize = 20;
        let logs = Logs::new("sigkill");
        let broker = Broker::start().await;
        let seqs = sample::generate(36, 8000);
        let expected = baseline(&seqs, logs.path()).await;
        let mut rng = Rng::new(36);
        let mut poison = garbage(&mut rng, 3);
        poison.push(empty_queue(6));
        let db = TestDb::migrated().await;
        broker
            .publish("events", interleave(payloads(&seqs), &poison))
            .await;
        let args = ["--batch-size", "200", "--batch-duration", "50ms"];
        // Kill points are random but tied to progress, not to the clock, so
        // that a faster machine cannot finish the backlog before the last
        // kill: a quarter of the kills land at a random moment of start-up
        // or the first batches, the others a random few milliseconds after
        // the ingester has committed something new.
        let mut at = Vec::new();
        let mut seen = progress(&db.url).await.unwrap_or(0);
        for _ in 0..KILLS {
            let ing = spawn(&db.url, &broker, &logs, &args);
            let delay = if rng.below(4) == 0 {
                Duration::from_millis(rng.below(301))
            } else {
                wait_progress(&db.url, seen, Duration::from_secs(60), &ing).await;
                Duration::from_millis(rng.below(41))
            };
            tokio::time::sleep(delay).await;
            ing.sigkill().await;
            seen = progress(&db.url).await.unwrap_or(seen);
            at.push((delay.as_millis(), seen));
        }
        eprintln!("killed after (ms, progress): {at:?}");
        // Every kill was mid-stream: the tables were not complete yet.
        let after_kills = dump(&db.client().await).await;
        assert!(
            after_kills != expected,
            "the backlog was ingested before the last kill: {at:?}"
        );
        let ing = spawn(&db.url, &broker, &logs, &args);
        converges(&db.url, &expected, &poison, &logs, ing).await;
        db.drop_db().await;
        broker.stop().await;
        logs.pass();
    })
    .await;
}
