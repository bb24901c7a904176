//! Rows of open jobs held back across batches under a backlog
//! (`batchHoldOpen`): written once, acknowledged only once written, and
//! dead-lettered byte for byte when they fail, against the real database.

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;

use common::{dump, json_rows, TestDb};
use lookout_ingester::convert::Converter;
use lookout_ingester::pipeline::{self, decode, Committed};
use lookout_ingester::proto::armadaevents as ev;
use lookout_ingester::sample::{event, job_succeeded, leased, running, sequence, submit, ts};
use lookout_ingester::source::{Message, Origin};
use lookout_ingester::store::{self, Store, StoreSettings};
use lookout_ingester::workload::{Options, Workload};
use prost::Message as _;
use tokio::sync::mpsc;

fn origin(index: u64) -> Origin {
    Origin::File {
        path: Arc::from("held"),
        index,
    }
}

/// Small batches, every one behind the topic (as in `replay`).
fn small_batches(hold_open: u64) -> pipeline::Settings {
    pipeline::Settings {
        batch_size: 200,
        batch_max_messages: 200,
        cut_when_idle: false,
        always_behind: true,
        hold_open,
        ..pipeline::Settings::default()
    }
}

/// Runs `payloads` through the pipeline into `db`, calling `check` with
/// each committed batch as it comes out (while later ones are written).
async fn ingest<F, Fut>(
    db: &TestDb,
    payloads: &[Vec<u8>],
    settings: pipeline::Settings,
    mut check: F,
) -> Vec<Committed>
where
    F: FnMut(&Committed) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let pool = store::connect_pool(&db.url, 4).await.unwrap();
    let s = Arc::new(Store::new(pool.clone(), StoreSettings::default()));
    let (tx, rx) = mpsc::channel(payloads.len().max(1));
    for (i, p) in payloads.iter().enumerate() {
        tx.send(Message {
            payload: p.clone(),
            origin: origin(i as u64),
            publish_time: None,
        })
        .await
        .unwrap();
    }
    drop(tx);
    let (mut committed, stages) = pipeline::spawn(
        rx,
        Converter::new(Default::default()),
        s,
        common::dead_letters(pool),
        settings,
    );
    let mut out = Vec::new();
    while let Some(c) = committed.recv().await {
        check(&c).await;
        out.push(c);
    }
    stages.join().await.unwrap();
    out
}

fn index(o: &Origin) -> u64 {
    match o {
        Origin::File { index, .. } => *index,
        other => panic!("not from the test: {other}"),
    }
}

/// The job ids a message submits.
fn submitted(payload: &[u8]) -> Vec<String> {
    let seq = decode(payload).unwrap();
    (seq.events.iter())
        .filter_map(|e| match &e.event {
            Some(ev::event_sequence::event::Event::SubmitJob(s)) => {
                Some(String::from_utf8_lossy(&s.job_id).into_owned())
            }
            _ => None,
        })
        .collect()
}

fn job_updates(batches: &[Committed]) -> u64 {
    batches.iter().map(|c| c.write.job_updated.attempted).sum()
}

#[tokio::test]
async fn held_rows_are_written_before_their_messages_are_acknowledged() {
    let payloads: Vec<Vec<u8>> = Workload::new(Options {
        seed: 11,
        events: 8_000,
        in_flight: 300,
        window_secs: 60,
        ..Options::default()
    })
    .map(|s| s.encode_to_vec())
    .collect();

    // Without holding, for the expected tables and the updates it sends.
    let plain = TestDb::migrated().await;
    let without = ingest(&plain, &payloads, small_batches(0), |_| async {}).await;
    let expected = dump(&plain.client().await).await;
    plain.drop_db().await;

    let db = TestDb::migrated().await;
    let c = db.client().await;
    let mut acknowledged: Vec<u64> = Vec::new();
    let with = ingest(&db, &payloads, small_batches(20), |batch| {
        let new: Vec<u64> = batch.origins.iter().map(index).collect();
        // In order, each message once.
        assert!(
            new.first() > acknowledged.last() || acknowledged.is_empty(),
            "{new:?} after {:?}",
            acknowledged.last()
        );
        acknowledged.extend(&new);
        let jobs: Vec<String> = new
            .iter()
            .flat_map(|&i| submitted(&payloads[i as usize]))
            .collect();
        let c = &c;
        async move {
            // Every job a message submitted is in the table by the time
            // the message may be acknowledged, held or not.
            let found: i64 = c
                .query_one("SELECT count(*) FROM job WHERE job_id = ANY($1)", &[&jobs])
                .await
                .unwrap()
                .get(0);
            assert_eq!(found, jobs.len() as i64, "messages {new:?}");
        }
    })
    .await;
    assert_eq!(acknowledged, (0..payloads.len() as u64).collect::<Vec<_>>());
    assert_eq!(dump(&c).await, expected);
    // Held rows were written as one row each: far fewer job updates.
    let (held, plain) = (job_updates(&with), job_updates(&without));
    assert!(
        held * 2 < plain,
        "job updates {held} with holding, {plain} without"
    );
    assert!(with.iter().all(|b| b.dead_letters == 0));
    db.drop_db().await;
}

#[tokio::test]
async fn a_held_row_that_fails_is_dead_lettered_from_the_messages_kept_for_it() {
    let db = TestDb::migrated().await;
    let c = db.client().await;
    c.batch_execute("ALTER TABLE job ADD CONSTRAINT test_no_bad_queue CHECK (queue <> 'bad')")
        .await
        .unwrap();
    let job = |id: &str| submit(id, "ns", 1, &[("cpu", "1")], None, &[]);
    let bad = |events| sequence("bad", "js", "u", events).encode_to_vec();
    let good = |events| sequence("q", "js", "u", events).encode_to_vec();
    let mut payloads = vec![
        // The job of queue "bad" is submitted and leased; it stays open,
        // so it is held while filler jobs go by in batches of their own.
        bad(vec![event(Some(ts(1)), job("bad-job"))]),
        bad(vec![event(
            Some(ts(2)),
            leased("bad-job", "bad-run", "c", "n", "p"),
        )]),
    ];
    let fillers: Vec<String> = (0..600).map(|i| format!("filler-{i:04}")).collect();
    for f in &fillers {
        payloads.push(good(vec![event(Some(ts(3)), job(f))]));
    }
    // It runs and ends: now it is written, and its creation fails.
    payloads.push(bad(vec![
        event(Some(ts(4)), running("bad-job", "bad-run", Some("n"))),
        event(Some(ts(5)), job_succeeded("bad-job")),
    ]));
    let last = payloads.len() - 1;

    let batches = ingest(&db, &payloads, small_batches(8), |_| async {}).await;
    assert!(batches.len() > 2, "{} batches", batches.len());
    // Every message is acknowledged, in order, once its fate is recorded.
    let acknowledged: Vec<u64> = (batches.iter())
        .flat_map(|b| b.origins.iter().map(index))
        .collect();
    assert_eq!(acknowledged, (0..payloads.len() as u64).collect::<Vec<_>>());

    // The job's messages are dead letters, byte for byte: the two kept for
    // the held row (from the first batch) and the one that ended it.
    let letters = json_rows(
        &c,
        "SELECT source, encode(payload, 'hex') AS payload, error FROM ingester_dead_letter ORDER BY source",
        &[],
    )
    .await;
    let sources: BTreeSet<String> = (letters.iter())
        .map(|l| l["source"].as_str().unwrap().to_string())
        .collect();
    let want: BTreeSet<String> = [0, 1, last]
        .iter()
        .map(|&i| origin(i as u64).to_string())
        .collect();
    assert_eq!(sources, want, "{letters:#?}");
    for l in &letters {
        let source = l["source"].as_str().unwrap();
        let i = [0, 1, last]
            .into_iter()
            .find(|&i| origin(i as u64).to_string() == source)
            .unwrap();
        assert_eq!(l["payload"], hex(&payloads[i]), "{source}");
        assert!(
            l["error"].as_str().unwrap().contains("test_no_bad_queue"),
            "{l}"
        );
    }
    // The rest is written: every filler, and the bad job's run.
    let jobs: i64 = c
        .query_one("SELECT count(*) FROM job WHERE job_id LIKE 'filler-%'", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(jobs, fillers.len() as i64);
    assert_eq!(common::count(&c, "job_run").await, 1);
    db.drop_db().await;
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
