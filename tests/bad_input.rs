//! The bad-input catalogue: every case goes through the real pipeline into
//! the real Postgres, and each ends with a log line, a metric, and nothing
//! lost: either the data is stored (sanitised) or the message is kept as a
//! dead letter, byte for byte.

mod common;

use std::sync::Arc;

use common::TestDb;
use lookout_ingester::convert::Converter;
use lookout_ingester::metrics;
use lookout_ingester::pipeline::{self, Committed};
use lookout_ingester::proto::armadaevents as ev;
use lookout_ingester::sample::*;
use lookout_ingester::source::{Message, Origin};
use lookout_ingester::store::{self, Store, StoreSettings};
use prost::Message as _;
use tokio::sync::mpsc;

/// Runs payloads through the pipeline (one batch per call) into `db`.
async fn ingest(db: &TestDb, payloads: Vec<Vec<u8>>) -> Vec<Committed> {
    let pool = store::connect_pool(&db.url, 2).await.expect("pool");
    let store = Arc::new(Store::new(pool.clone(), StoreSettings::default()));
    let (tx, rx) = mpsc::channel(16);
    let (mut committed, stages) = pipeline::spawn(
        rx,
        Converter::new(Default::default()),
        store,
        common::dead_letters(pool),
        pipeline::Settings::default(),
    );
    let feeder = tokio::spawn(async move {
        for (i, payload) in payloads.into_iter().enumerate() {
            let origin = Origin::File {
                path: Arc::from("catalogue"),
                index: i as u64,
            };
            if tx
                .send(Message {
                    payload,
                    origin,
                    publish_time: None,
                })
                .await
                .is_err()
            {
                break;
            }
        }
    });
    let mut out = Vec::new();
    while let Some(c) = committed.recv().await {
        out.push(c);
    }
    feeder.await.expect("feeder");
    stages.join().await.expect("pipeline");
    out
}

async fn dead(db: &TestDb) -> Vec<(String, String, Vec<u8>)> {
    db.client()
        .await
        .query(
            "SELECT source, reason, payload FROM ingester_dead_letter ORDER BY source",
            &[],
        )
        .await
        .expect("dead letters")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect()
}

fn seq(events: Vec<ev::event_sequence::Event>) -> Vec<u8> {
    sequence("q", "js", "u", events).encode_to_vec()
}

fn counter(reason: &str) -> u64 {
    metrics::INPUT_ERRORS.with_label_values(&[reason]).get()
}

#[tokio::test]
async fn undecodable_foreign_and_headerless_messages_are_dead_lettered() {
    let good = seq(vec![event(
        Some(ts(1)),
        submit("ok", "ns", 0, &[], None, &[]),
    )]);
    let mut truncated = good.clone();
    truncated.truncate(good.len() / 2);
    let garbage: Vec<u8> = (0..200u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    // A valid protobuf of another message type: an api.Job.
    let foreign = lookout_ingester::proto::api::Job {
        id: "x".into(),
        queue: "q".into(),
        ..Default::default()
    }
    .encode_to_vec();
    let no_queue = sequence(
        "",
        "js",
        "u",
        vec![event(Some(ts(1)), submit("a", "ns", 0, &[], None, &[]))],
    )
    .encode_to_vec();
    let no_jobset = sequence(
        "q",
        "",
        "u",
        vec![event(Some(ts(1)), submit("b", "ns", 0, &[], None, &[]))],
    )
    .encode_to_vec();
    let before = counter("decode");
    let db = TestDb::migrated().await;
    let inputs = vec![
        good,
        truncated.clone(),
        garbage.clone(),
        foreign.clone(),
        no_queue.clone(),
        no_jobset.clone(),
    ];
    let committed = ingest(&db, inputs).await;
    assert_eq!(
        committed.iter().map(|c| c.origins.len()).sum::<usize>(),
        6,
        "every message is released"
    );
    assert!(counter("decode") > before);
    let got = dead(&db).await;
    let sources: Vec<&str> = got.iter().map(|(s, _, _)| s.as_str()).collect();
    assert_eq!(
        sources,
        vec![
            "catalogue record 1",
            "catalogue record 2",
            "catalogue record 3",
            "catalogue record 4",
            "catalogue record 5"
        ]
    );
    assert_eq!(got[0].2, truncated);
    assert_eq!(got[1].2, garbage);
    assert_eq!(got[2].2, foreign);
    assert_eq!(
        got[3],
        (
            "catalogue record 4".to_string(),
            "empty_queue".to_string(),
            no_queue
        )
    );
    assert_eq!(
        got[4],
        (
            "catalogue record 5".to_string(),
            "empty_job_set".to_string(),
            no_jobset
        )
    );
    assert_eq!(got[0].1, "decode");
    assert_eq!(common::count(&db.client().await, "job").await, 1);
    db.drop_db().await;
}

#[tokio::test]
async fn unknown_kinds_missing_times_and_unknown_jobs_are_kept() {
    // An event kind from a newer Armada: field 99 of Event.
    let mut unknown_event = Vec::new();
    prost::encoding::message::encode(18, &ts(1), &mut unknown_event);
    prost::encoding::message::encode(99, &ev::JobSucceeded::default(), &mut unknown_event);
    let mut newer = Vec::new();
    prost::encoding::string::encode(1, &"q".to_string(), &mut newer);
    prost::encoding::string::encode(2, &"js".to_string(), &mut newer);
    prost::encoding::bytes::encode(5, &unknown_event, &mut newer);

    let no_created = seq(vec![event(None, submit("nc", "ns", 0, &[], None, &[]))]);
    let unknown_job = seq(vec![event(Some(ts(3)), job_succeeded("ghost"))]);
    let run_before_creation = seq(vec![event(Some(ts(3)), running("rj", "rr", Some("n")))]);
    let before = counter("unknown_event_kind");
    let db = TestDb::migrated().await;
    ingest(
        &db,
        vec![
            newer.clone(),
            no_created.clone(),
            unknown_job.clone(),
            run_before_creation.clone(),
        ],
    )
    .await;
    assert!(counter("unknown_event_kind") > before);
    let got = dead(&db).await;
    assert_eq!(
        got,
        vec![
            (
                "catalogue record 0".to_string(),
                "unknown_event_kind".to_string(),
                newer
            ),
            (
                "catalogue record 1".to_string(),
                "missing_created".to_string(),
                no_created
            ),
            (
                "catalogue record 2".to_string(),
                "unknown_job".to_string(),
                unknown_job
            ),
            (
                "catalogue record 3".to_string(),
                "unknown_job,unknown_run".to_string(),
                run_before_creation
            ),
        ]
    );
    db.drop_db().await;
}

#[tokio::test]
async fn nul_invalid_utf8_and_oversized_text_in_every_column_is_stored_sanitised() {
    let long = "ä".repeat(3000); // 6000 bytes
    let mut e_submit = submit(
        "tjob",
        &format!("ns\0{long}"),
        1,
        &[("cpu", "1")],
        Some(&format!("pc\0{long}")),
        &[
            ("armadaproject.io/k\0ey", "va\0lue"),
            ("armadaproject.io/externalJobUri", &format!("u\0{long}")),
        ],
    );
    if let ev::event_sequence::event::Event::SubmitJob(s) = &mut e_submit {
        if let Some(m) = &mut s.object_meta {
            m.annotations.push(ev::StringEntry {
                key: b"bad\xffkey".to_vec(),
                value: b"bad\xfevalue".to_vec(),
            });
        }
    }
    let weird = |s: &str| format!("{s}\0\u{1F600}{long}");
    let mut events = vec![
        event(Some(ts(1)), e_submit),
        event(
            Some(ts(2)),
            leased(
                "tjob",
                "trun",
                &weird("cluster"),
                &weird("node"),
                &weird("pool"),
            ),
        ),
        event(Some(ts(3)), running("tjob", "trun", Some(&weird("node2")))),
        event(Some(ts(4)), ingress("tjob", "trun", &[(80, "ad\0dr")])),
        event(
            Some(ts(5)),
            run_errors(
                "tjob",
                "trun",
                vec![error(
                    true,
                    pod_error("m\0sg", &weird("node3"), &[9]),
                    Some(failure(9, &weird("term"), &["c\0at", "bad"], "con\0tainer")),
                )],
            ),
        ),
        event(
            Some(ts(6)),
            cancelled("tjob", &weird("reason"), &weird("user")),
        ),
    ];
    // Invalid UTF-8 in the cancel user.
    if let Some(ev::event_sequence::event::Event::CancelledJob(c)) = &mut events[5].event {
        c.cancel_user = b"us\xc3\x28er".to_vec();
    }
    let payload =
        sequence(&weird("queue"), &weird("jobset"), &weird("owner"), events).encode_to_vec();
    let before = metrics::SANITISED.with_label_values(&["nul_removed"]).get();
    let db = TestDb::migrated().await;
    ingest(&db, vec![payload]).await;
    assert!(
        dead(&db).await.is_empty(),
        "nothing is dead-lettered: {:?}",
        dead(&db).await
    );
    assert!(metrics::SANITISED.with_label_values(&["nul_removed"]).get() > before);
    let c = db.client().await;
    let job = c
        .query_one(
            "SELECT queue, jobset, owner, namespace, priority_class, annotations::text, external_job_uri, cancel_reason, cancel_user, state
             FROM job WHERE job_id = 'tjob'",
            &[],
        )
        .await
        .expect("job row");
    for (i, limit) in [
        (0usize, 512usize),
        (1, 1024),
        (2, 512),
        (3, 512),
        (4, 63),
        (6, 1024),
        (7, 512),
    ] {
        let v: String = job.get(i);
        assert!(
            !v.contains('\0') && v.len() <= limit,
            "column {i}: {} bytes",
            v.len()
        );
    }
    let annotations: String = job.get(5);
    assert!(
        annotations.contains("\"key\": \"value\"") && annotations.contains("bad\u{fffd}key"),
        "{annotations}"
    );
    assert_eq!(
        job.get::<_, Option<String>>(8).as_deref(),
        Some("us\u{fffd}(er")
    );
    assert_eq!(
        job.get::<_, i16>(9),
        lookout_ingester::model::job_state::CANCELLED
    );
    let run = c
        .query_one("SELECT cluster, node, pool, ingress_addresses::text, failure_info FROM job_run WHERE run_id = 'trun'", &[])
        .await
        .expect("run row");
    let cluster: String = run.get(0);
    let node: String = run.get(1);
    let pool: String = run.get(2);
    assert!(cluster.starts_with("cluster\u{1F600}") && cluster.len() <= 512);
    assert!(node.starts_with("node3\u{1F600}") && node.len() <= 512);
    assert!(pool.starts_with("pool\u{1F600}") && !pool.contains('\0'));
    assert_eq!(run.get::<_, String>(3), "{\"80\": \"addr\"}");
    let fi: serde_json::Value = run.get(4);
    assert_eq!(fi["containerName"], "container");
    assert_eq!(fi["categories"], serde_json::json!(["cat", "bad"]));
    let tm = fi["terminationMessage"].as_str().unwrap_or_default();
    assert!(tm.starts_with("term\u{1F600}") && tm.len() <= 4096);
    db.drop_db().await;
}

#[tokio::test]
async fn bad_quantities_duplicates_and_a_50_mb_message() {
    let quantities = seq(vec![
        event(
            Some(ts(1)),
            submit(
                "neg",
                "ns",
                0,
                &[("cpu", "-2"), ("memory", "-1Gi")],
                None,
                &[],
            ),
        ),
        event(
            Some(ts(1)),
            submit(
                "huge",
                "ns",
                0,
                &[("cpu", "9E"), ("memory", "99999999999999999999999Ei")],
                None,
                &[],
            ),
        ),
        event(
            Some(ts(1)),
            submit(
                "malformed",
                "ns",
                0,
                &[("cpu", "lots"), ("memory", "1Gi")],
                None,
                &[],
            ),
        ),
    ]);
    let dup = seq(vec![event(
        Some(ts(1)),
        submit("dup", "ns", 0, &[], None, &[]),
    )]);
    // 50 MB: one submission whose annotation is 50 MB of text.
    let big_value = "x".repeat(50 * 1024 * 1024);
    let big = seq(vec![event(
        Some(ts(1)),
        submit(
            "big",
            "ns",
            0,
            &[],
            None,
            &[("armadaproject.io/blob", &big_value)],
        ),
    )]);
    assert!(big.len() > 50 * 1024 * 1024);
    let db = TestDb::migrated().await;
    let committed = ingest(&db, vec![quantities, dup.clone(), dup, big]).await;
    let warnings: usize = committed
        .iter()
        .flat_map(|c| c.problems.iter())
        .filter(|p| p.problem.reason.as_str() == "job_spec")
        .count();
    assert!(warnings >= 1, "the malformed quantity is reported");
    assert!(dead(&db).await.is_empty());
    let c = db.client().await;
    let rows: Vec<(String, i64, i64)> = c
        .query("SELECT job_id, cpu, memory FROM job ORDER BY job_id", &[])
        .await
        .expect("jobs")
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        rows,
        vec![
            ("big".to_string(), 0, 0),
            ("dup".to_string(), 0, 0),
            ("huge".to_string(), i64::MAX, i64::MAX),
            ("malformed".to_string(), 0, 1024 * 1024 * 1024),
            ("neg".to_string(), -2000, -1024 * 1024 * 1024),
        ]
    );
    let ann: String = c
        .query_one(
            "SELECT annotations->>'blob' FROM job WHERE job_id = 'big'",
            &[],
        )
        .await
        .expect("big")
        .get(0);
    assert_eq!(ann.len(), 1024, "annotation values are cut to their limit");
    db.drop_db().await;
}
