//! The bad-input catalogue: every case goes through the real pipeline into
//! the real Postgres, and each ends with a log line, a metric, and nothing
//! lost: either the data is stored (sanitised) or the message is kept as a
//! dead letter, byte for byte.

mod common;

use std::sync::Arc;

use common::{bytea, json_row, json_rows, TestDb};
use lookout_ingester::convert::Converter;
use lookout_ingester::metrics;
use lookout_ingester::pipeline::{self, Committed};
use lookout_ingester::proto::armadaevents as ev;
use lookout_ingester::sample::*;
use lookout_ingester::source::{Message, Origin};
use lookout_ingester::store::{self, Store, StoreSettings};
use prost::Message as _;
use serde_json::{json, Value};
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

/// The dead letters as JSON: source, reason and payload.
async fn dead(db: &TestDb) -> Vec<Value> {
    json_rows(
        &db.client().await,
        "SELECT source, reason, payload FROM ingester_dead_letter ORDER BY source",
        &[],
    )
    .await
}

/// A dead letter as [`dead`] lists it, from the catalogue's `index`th record.
fn dead_letter(index: usize, reason: &str, payload: &[u8]) -> Value {
    json!({
        "source": format!("catalogue record {index}"),
        "reason": reason,
        "payload": bytea(payload),
    })
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
    assert_eq!(
        dead(&db).await,
        [
            dead_letter(1, "decode", &truncated),
            dead_letter(2, "decode", &garbage),
            // Protobuf is not self-describing: the api.Job parses as a
            // sequence whose job set is empty.
            dead_letter(3, "empty_job_set", &foreign),
            dead_letter(4, "empty_queue", &no_queue),
            dead_letter(5, "empty_job_set", &no_jobset),
        ]
    );
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
    assert_eq!(
        dead(&db).await,
        [
            dead_letter(0, "unknown_event_kind", &newer),
            dead_letter(1, "missing_created", &no_created),
            dead_letter(2, "unknown_job", &unknown_job),
            dead_letter(3, "unknown_job,unknown_run", &run_before_creation),
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
        c.requestor = b"us\xc3\x28er".to_vec();
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
    // Text columns are cut to their limits (in bytes, on a character
    // boundary) and hold no NUL (Postgres text cannot); a NULL would fail
    // the `<=` facts.
    let job = json_row(
        &c,
        "SELECT octet_length(queue) <= 512 AS queue_fits,
                octet_length(jobset) <= 1024 AS jobset_fits,
                octet_length(owner) <= 512 AS owner_fits,
                octet_length(namespace) <= 512 AS namespace_fits,
                octet_length(priority_class) <= 63 AS priority_class_fits,
                octet_length(external_job_uri) <= 1024 AS external_job_uri_fits,
                octet_length(cancel_reason) <= 512 AS cancel_reason_fits,
                annotations->'key' AS annotation_key,
                annotations ? 'bad\u{fffd}key' AS has_bad_key,
                cancel_user, state
         FROM job WHERE job_id = 'tjob'",
        &[],
    )
    .await;
    assert_eq!(
        job,
        json!({
            "queue_fits": true,
            "jobset_fits": true,
            "owner_fits": true,
            "namespace_fits": true,
            "priority_class_fits": true,
            "external_job_uri_fits": true,
            "cancel_reason_fits": true,
            "annotation_key": "value",
            "has_bad_key": true,
            "cancel_user": "us\u{fffd}(er",
            "state": lookout_ingester::model::job_state::CANCELLED,
        })
    );
    let run = json_row(
        &c,
        "SELECT left(cluster, 8) AS cluster_start, octet_length(cluster) <= 512 AS cluster_fits,
                left(node, 6) AS node_start, octet_length(node) <= 512 AS node_fits,
                left(pool, 5) AS pool_start,
                ingress_addresses,
                failure_info->'containerName' AS container,
                failure_info->'categories' AS categories,
                left(failure_info->>'terminationMessage', 5) AS termination_start,
                octet_length(failure_info->>'terminationMessage') <= 4096 AS termination_fits
         FROM job_run WHERE run_id = 'trun'",
        &[],
    )
    .await;
    assert_eq!(
        run,
        json!({
            "cluster_start": "cluster\u{1F600}",
            "cluster_fits": true,
            "node_start": "node3\u{1F600}",
            "node_fits": true,
            "pool_start": "pool\u{1F600}",
            "ingress_addresses": {"80": "addr"},
            "container": "container",
            "categories": ["cat", "bad"],
            "termination_start": "term\u{1F600}",
            "termination_fits": true,
        })
    );
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
    let rows = json_rows(
        &c,
        "SELECT job_id, cpu, memory, octet_length(annotations->>'blob') AS blob_bytes
         FROM job ORDER BY job_id",
        &[],
    )
    .await;
    let gi = 1024 * 1024 * 1024_i64;
    // blob_bytes: annotation values are cut to their limit.
    assert_eq!(
        rows,
        [
            json!({"job_id": "big", "cpu": 0, "memory": 0, "blob_bytes": 1024}),
            json!({"job_id": "dup", "cpu": 0, "memory": 0, "blob_bytes": null}),
            json!({"job_id": "huge", "cpu": i64::MAX, "memory": i64::MAX, "blob_bytes": null}),
            json!({"job_id": "malformed", "cpu": 0, "memory": gi, "blob_bytes": null}),
            json!({"job_id": "neg", "cpu": -2000, "memory": -gi, "blob_bytes": null}),
        ]
    );
    db.drop_db().await;
}
