//! Unit tests for the converter: one per event kind and per edge case.

use super::*;
use crate::proto::armadaevents as ev;
use crate::sample::*;
use ev::error::Reason as R;
use serde_json::json;

fn conv() -> Converter {
    Converter::new(Settings::default())
}

fn one(kind: ev::event_sequence::event::Event) -> Converted {
    conv().convert(
        &sequence("q", "js", "alice", vec![event(Some(ts(10)), kind)]),
        None,
    )
}

fn t(secs: i64) -> NaiveDateTime {
    to_time(&ts(secs)).expect("valid").ts
}

fn inflate(b: &Option<Vec<u8>>) -> String {
    let raw = compress::unzlib(b.as_deref().expect("compressed bytes")).expect("zlib");
    String::from_utf8(raw).expect("utf8")
}

#[test]
fn submit_job_creates_job_row() {
    let c = one(submit(
        "job1",
        "ns1",
        3,
        &[
            ("cpu", "500m"),
            ("memory", "2Gi"),
            ("ephemeral-storage", "1G"),
            ("nvidia.com/gpu", "1"),
        ],
        Some("armada-preemptible"),
        &[
            ("armadaproject.io/team", "x"),
            ("other", "y"),
            ("armadaproject.io/externalJobUri", "http://u"),
        ],
    ));
    assert!(c.problems.is_empty(), "{:?}", c.problems);
    let j = &c.instructions.jobs_to_create[0];
    assert_eq!(j.job_id, "job1");
    assert_eq!(
        (j.queue.as_str(), j.jobset.as_str(), j.owner.as_str()),
        ("q", "js", "alice")
    );
    assert_eq!(j.namespace, "ns1");
    assert_eq!(j.priority, 3);
    assert_eq!(j.state, job_state::QUEUED);
    assert_eq!(j.submitted, t(10));
    assert_eq!(j.last_transition_time, t(10));
    assert_eq!(j.last_transition_time_seconds, ts(10).seconds);
    assert_eq!(j.priority_class.as_deref(), Some("armada-preemptible"));
    assert_eq!(j.external_job_uri, "http://u");
    let want: BTreeMap<String, String> = [
        ("team", "x"),
        ("other", "y"),
        ("externalJobUri", "http://u"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    assert_eq!(j.annotations, want);
    assert!(!j.job_spec.is_empty());
    // The job spec is a zlib stream of an api.Job.
    let raw = compress::unzlib(&j.job_spec).expect("job spec inflates");
    let api: crate::proto::api::Job = prost::Message::decode(raw.as_slice()).expect("api.Job");
    assert_eq!(api.id, "job1");
    assert!(c.instructions.jobs_to_update.is_empty());
}

#[test]
fn submit_job_resources_are_summed() {
    let c = one(submit(
        "job1",
        "ns",
        0,
        &[("cpu", "1.5"), ("memory", "1G"), ("nvidia.com/gpu", "2")],
        None,
        &[],
    ));
    let j = &c.instructions.jobs_to_create[0];
    assert_eq!(j.cpu, 1500);
    assert_eq!(j.memory, 1_000_000_000);
    assert_eq!(j.gpu, 2);
    assert_eq!(j.ephemeral_storage, 0);
    assert_eq!(j.priority_class, None);
}

#[test]
fn annotation_blocklist_is_case_insensitive_and_applies_before_stripping() {
    let conv = Converter::new(Settings {
        annotation_blocklist: vec!["ArmadaProject.io/Secret".into()],
        ..Settings::default()
    });
    let c = conv.convert(
        &sequence(
            "q",
            "js",
            "u",
            vec![event(
                Some(ts(1)),
                submit(
                    "j",
                    "ns",
                    0,
                    &[],
                    None,
                    &[
                        ("armadaproject.io/secret", "s"),
                        ("armadaproject.io/keep", "k"),
                    ],
                ),
            )],
        ),
        None,
    );
    let a = &c.instructions.jobs_to_create[0].annotations;
    assert_eq!(a.len(), 1);
    assert_eq!(a.get("keep").map(String::as_str), Some("k"));
}

#[test]
fn annotations_are_sanitised_and_truncated() {
    let long_val = "v".repeat(2000);
    let c = one(submit("j", "ns", 0, &[], None, &[("k\0ey", &long_val)]));
    let a = &c.instructions.jobs_to_create[0].annotations;
    assert_eq!(
        a.get("key").map(String::len),
        Some(limits::ANNOTATION_VALUE)
    );
}

#[test]
fn reprioritised_sets_priority_only() {
    let c = one(reprioritised("j", 7));
    assert_eq!(
        c.instructions.jobs_to_update,
        vec![UpdateJob {
            job_id: "j".into(),
            priority: Some(7),
            ..Default::default()
        }]
    );
}

#[test]
fn cancelled_job_carries_reason_and_user() {
    let c = one(cancelled("j", "because", "bob"));
    let u = &c.instructions.jobs_to_update[0];
    assert_eq!(u.state, Some(job_state::CANCELLED));
    assert_eq!(u.cancelled, Some(t(10)));
    assert_eq!(u.cancel_reason.as_deref(), Some("because"));
    assert_eq!(u.cancel_user.as_deref(), Some("bob"));
    assert_eq!(u.last_transition_time, Some(t(10)));
    assert_eq!(u.last_transition_time_seconds, Some(ts(10).seconds));
}

#[test]
fn cancelled_job_empty_reason_is_null_and_long_reason_fits_column() {
    let c = one(cancelled("j", "", ""));
    let u = &c.instructions.jobs_to_update[0];
    assert_eq!(
        (u.cancel_reason.clone(), u.cancel_user.clone()),
        (None, None)
    );
    let long = "é".repeat(400); // 800 bytes
    let c = one(cancelled("j", &long, "u"));
    let r = c.instructions.jobs_to_update[0]
        .cancel_reason
        .clone()
        .expect("reason");
    assert!(r.len() <= limits::CANCEL_REASON && r.chars().all(|ch| ch == 'é'));
}

#[test]
fn job_succeeded_and_requeued() {
    let c = one(job_succeeded("j"));
    assert_eq!(
        c.instructions.jobs_to_update[0].state,
        Some(job_state::SUCCEEDED)
    );
    let c = one(requeued("j"));
    assert_eq!(
        c.instructions.jobs_to_update[0].state,
        Some(job_state::QUEUED)
    );
    assert_eq!(
        c.instructions.jobs_to_update[0].last_transition_time,
        Some(t(10))
    );
}

#[test]
fn job_errors_terminal_only_and_kinds() {
    // Non-terminal only: nothing.
    let c = one(job_errors(
        "j",
        vec![error(false, pod_error("m", "n", &[1]), None)],
    ));
    assert!(c.instructions.is_empty());
    // First terminal decides.
    let c = one(job_errors(
        "j",
        vec![
            error(false, R::JobRunPreemptedError(Default::default()), None),
            error(true, pod_error("m", "n", &[1]), None),
            error(true, R::JobRunPreemptedError(Default::default()), None),
        ],
    ));
    assert_eq!(c.instructions.jobs_to_update.len(), 1);
    assert_eq!(
        c.instructions.jobs_to_update[0].state,
        Some(job_state::FAILED)
    );
    let c = one(job_errors(
        "j",
        vec![error(
            true,
            R::JobRunPreemptedError(Default::default()),
            None,
        )],
    ));
    assert_eq!(
        c.instructions.jobs_to_update[0].state,
        Some(job_state::PREEMPTED)
    );
    assert!(c.instructions.job_errors_to_create.is_empty());
}

#[test]
fn job_rejected_writes_job_error() {
    let c = one(job_errors(
        "j",
        vec![error(
            true,
            R::JobRejected(ev::JobRejected {
                message: b"no such queue".to_vec(),
            }),
            None,
        )],
    ));
    assert_eq!(
        c.instructions.jobs_to_update[0].state,
        Some(job_state::REJECTED)
    );
    let e = &c.instructions.job_errors_to_create[0];
    assert_eq!(e.job_id, "j");
    assert_eq!(inflate(&Some(e.error.clone())), "no such queue");
}

#[test]
fn leased_creates_run_and_updates_job() {
    let c = one(leased("j", "r", "cluster-a", "", ""));
    assert_eq!(
        c.instructions.jobs_to_update,
        vec![UpdateJob {
            job_id: "j".into(),
            state: Some(job_state::LEASED),
            latest_run_id: Some("r".into()),
            last_transition_time: Some(t(10)),
            last_transition_time_seconds: Some(ts(10).seconds),
            ..Default::default()
        }]
    );
    assert_eq!(
        c.instructions.runs_to_create,
        vec![CreateJobRun {
            run_id: "r".into(),
            job_id: "j".into(),
            cluster: "cluster-a".into(),
            // Empty node and pool are stored as empty strings, as upstream.
            node: Some(String::new()),
            pool: String::new(),
            leased: Some(t(10)),
            pending: None,
            job_run_state: run_state::LEASED,
        }]
    );
}

#[test]
fn assigned_sets_pending() {
    let c = one(assigned("j", "r"));
    assert_eq!(
        c.instructions.jobs_to_update[0].state,
        Some(job_state::PENDING)
    );
    assert_eq!(
        c.instructions.jobs_to_update[0].latest_run_id.as_deref(),
        Some("r")
    );
    assert_eq!(
        c.instructions.runs_to_update,
        vec![UpdateJobRun {
            run_id: "r".into(),
            pending: Some(t(10)),
            job_run_state: Some(run_state::PENDING),
            ..Default::default()
        }]
    );
}

#[test]
fn running_takes_node_from_pod_info_else_unknown() {
    let c = one(running("j", "r", Some("node-7")));
    assert_eq!(
        c.instructions.jobs_to_update[0].state,
        Some(job_state::RUNNING)
    );
    let u = &c.instructions.runs_to_update[0];
    assert_eq!(u.node.as_deref(), Some("node-7"));
    assert_eq!(u.started, Some(t(10)));
    assert_eq!(u.job_run_state, Some(run_state::RUNNING));
    let c = one(running("j", "r", None));
    assert_eq!(
        c.instructions.runs_to_update[0].node.as_deref(),
        Some("UNKNOWN")
    );
    let c = one(running("j", "r", Some("")));
    assert_eq!(
        c.instructions.runs_to_update[0].node.as_deref(),
        Some("UNKNOWN")
    );
}

#[test]
fn run_succeeded_cancelled_preempted() {
    let c = one(run_succeeded("j", "r"));
    let u = &c.instructions.runs_to_update[0];
    assert_eq!(
        (u.job_run_state, u.exit_code, u.finished),
        (Some(run_state::SUCCEEDED), Some(0), Some(t(10)))
    );
    let c = one(run_cancelled("j", "r"));
    let u = &c.instructions.runs_to_update[0];
    assert_eq!(
        (u.job_run_state, u.finished),
        (Some(run_state::CANCELLED), Some(t(10)))
    );
    let c = one(run_preempted("j", "r", "higher priority"));
    let u = &c.instructions.runs_to_update[0];
    assert_eq!(
        (u.job_run_state, u.finished),
        (Some(run_state::PREEMPTED), Some(t(10)))
    );
    assert_eq!(inflate(&u.error), "higher priority");
}

#[test]
fn pod_error_is_failed_with_first_nonzero_exit_code_and_failure_info() {
    let fi = failure(137, "OOMKilled", &["oom", "memory"], "main");
    let c = one(run_errors(
        "j",
        "r",
        vec![error(
            true,
            pod_error("boom", "node-1", &[0, 137, 2]),
            Some(fi),
        )],
    ));
    let u = &c.instructions.runs_to_update[0];
    assert_eq!(u.job_run_state, Some(run_state::FAILED));
    assert_eq!(u.exit_code, Some(137));
    assert_eq!(u.node.as_deref(), Some("node-1"));
    assert_eq!(u.finished, Some(t(10)));
    assert_eq!(inflate(&u.error), "boom");
    assert_eq!(inflate(&u.debug), "debug: boom");
    assert_eq!(
        u.failure_info,
        Some(
            json!({"exitCode": 137, "terminationMessage": "OOMKilled", "categories": ["oom", "memory"], "containerName": "main"})
        )
    );
}

#[test]
fn pod_error_without_message_stores_compressed_empty_and_zero_exit() {
    let c = one(run_errors(
        "j",
        "r",
        vec![error(true, pod_error("", "", &[0]), None)],
    ));
    let u = &c.instructions.runs_to_update[0];
    assert_eq!(inflate(&u.error), "");
    assert_eq!(u.exit_code, Some(0));
    assert_eq!(u.node, None, "an empty node keeps the stored one");
    assert_eq!(u.failure_info, None);
}

#[test]
fn failure_info_is_sparse_and_null_when_all_zero() {
    let c = one(run_errors(
        "j",
        "r",
        vec![error(
            true,
            pod_error("m", "n", &[1]),
            Some(failure(0, "", &[], "")),
        )],
    ));
    assert_eq!(c.instructions.runs_to_update[0].failure_info, None);
    let c = one(run_errors(
        "j",
        "r",
        vec![error(
            true,
            pod_error("m", "n", &[1]),
            Some(failure(0, "", &[], "c")),
        )],
    ));
    assert_eq!(
        c.instructions.runs_to_update[0].failure_info,
        Some(json!({"containerName": "c"}))
    );
}

#[test]
fn failure_info_ignored_on_non_terminal_error() {
    let c = one(run_errors(
        "j",
        "r",
        vec![error(
            false,
            pod_error("m", "n", &[3]),
            Some(failure(3, "x", &["c"], "main")),
        )],
    ));
    let u = &c.instructions.runs_to_update[0];
    assert_eq!(u.failure_info, None);
    assert_eq!(u.finished, None, "finished only for terminal errors");
    assert_eq!(u.job_run_state, Some(run_state::FAILED));
    assert_eq!(u.exit_code, Some(3));
}

#[test]
fn termination_message_truncated_at_char_boundary() {
    for ch in ["é", "中", "😀"] {
        let msg = format!("{}{}", "a".repeat(4095), ch);
        let c = one(run_errors(
            "j",
            "r",
            vec![error(
                true,
                pod_error("m", "n", &[1]),
                Some(failure(1, &msg, &[], "")),
            )],
        ));
        let fi = c.instructions.runs_to_update[0]
            .failure_info
            .clone()
            .expect("fi");
        let tm = fi["terminationMessage"]
            .as_str()
            .expect("string")
            .to_string();
        assert_eq!(tm, "a".repeat(4095));
    }
}

#[test]
fn failure_info_strings_lose_nul() {
    let c = one(run_errors(
        "j",
        "r",
        vec![error(
            true,
            pod_error("m", "n", &[1]),
            Some(failure(1, "a\0b", &["c\0at"], "ma\0in")),
        )],
    ));
    assert_eq!(
        c.instructions.runs_to_update[0].failure_info,
        Some(
            json!({"exitCode": 1, "terminationMessage": "ab", "categories": ["cat"], "containerName": "main"})
        )
    );
}

#[test]
fn several_errors_first_non_preempted_decides() {
    let c = one(run_errors(
        "j",
        "r",
        vec![
            error(
                true,
                R::JobRunPreemptedError(Default::default()),
                Some(failure(9, "p", &[], "")),
            ),
            error(
                true,
                R::LeaseExpired(ev::LeaseExpired {}),
                Some(failure(0, "", &["lease"], "")),
            ),
            error(true, pod_error("later", "n", &[1]), None),
        ],
    ));
    assert_eq!(c.instructions.runs_to_update.len(), 1);
    let u = &c.instructions.runs_to_update[0];
    assert_eq!(u.job_run_state, Some(run_state::LEASE_EXPIRED));
    assert_eq!(inflate(&u.error), "Lease expired");
    assert_eq!(u.failure_info, Some(json!({"categories": ["lease"]})));
    // Only preemption errors: nothing.
    let c = one(run_errors(
        "j",
        "r",
        vec![error(
            true,
            R::JobRunPreemptedError(Default::default()),
            None,
        )],
    ));
    assert!(c.instructions.runs_to_update.is_empty());
}

#[test]
fn other_run_error_reasons() {
    let c = one(run_errors(
        "j",
        "r",
        vec![error(
            false,
            R::PodLeaseReturned(ev::PodLeaseReturned {
                message: b"returned".to_vec(),
                debug_message: b"dbg".to_vec(),
                ..Default::default()
            }),
            None,
        )],
    ));
    let u = &c.instructions.runs_to_update[0];
    assert_eq!(u.job_run_state, Some(run_state::LEASE_RETURNED));
    assert_eq!(
        (inflate(&u.error).as_str(), inflate(&u.debug).as_str()),
        ("returned", "dbg")
    );
    assert_eq!(u.exit_code, None);
    let c = one(run_errors(
        "j",
        "r",
        vec![error(
            true,
            R::ReconciliationError(ev::ReconciliationError {
                message: b"rec".to_vec(),
            }),
            None,
        )],
    ));
    let u = &c.instructions.runs_to_update[0];
    assert_eq!(
        (u.job_run_state, inflate(&u.error).as_str()),
        (Some(run_state::FAILED), "rec")
    );
    assert_eq!(u.debug, None);
    let c = one(run_errors(
        "j",
        "r",
        vec![error(true, R::ExecutorError(ev::ExecutorError {}), None)],
    ));
    assert_eq!(
        inflate(&c.instructions.runs_to_update[0].error),
        "Unknown error"
    );
    let c = one(run_errors(
        "j",
        "r",
        vec![ev::Error {
            terminal: true,
            reason: None,
            failure_info: None,
        }],
    ));
    assert_eq!(
        inflate(&c.instructions.runs_to_update[0].error),
        "Unknown error"
    );
}

#[test]
fn ingress_info_sets_addresses() {
    let c = one(ingress("j", "r", &[(8080, "10.0.0.1:8080"), (443, "a\0b")]));
    let want: BTreeMap<i32, String> =
        [(443, "ab".to_string()), (8080, "10.0.0.1:8080".to_string())].into();
    assert_eq!(
        c.instructions.runs_to_update[0].ingress_addresses,
        Some(want)
    );
    let c = one(ingress("j", "r", &[]));
    assert_eq!(c.instructions.runs_to_update[0].ingress_addresses, None);
}

#[test]
fn ignored_kinds_produce_nothing_and_no_problem() {
    let c = one(ev::event_sequence::event::Event::CancelJob(
        ev::CancelJob::default(),
    ));
    assert!(c.instructions.is_empty() && c.problems.is_empty());
    assert_eq!(c.events_by_kind.get("cancel_job"), Some(&1));
}

#[test]
fn unknown_event_kind_is_reported_not_skipped() {
    // An event whose oneof is a field this build does not know decodes as None.
    let mut bytes = Vec::new();
    prost::encoding::message::encode(18, &ts(1), &mut bytes);
    prost::encoding::message::encode(99, &ev::JobSucceeded::default(), &mut bytes);
    let e: ev::event_sequence::Event = prost::Message::decode(bytes.as_slice()).expect("decodes");
    assert!(e.event.is_none());
    let c = conv().convert(&sequence("q", "js", "u", vec![e]), None);
    assert_eq!(c.problems.len(), 1);
    assert_eq!(c.problems[0].reason, Reason::UnknownEventKind);
    assert!(!c.problems[0].skipped);
}

#[test]
fn missing_created_is_skipped_or_uses_fallback() {
    let seq = sequence(
        "q",
        "js",
        "u",
        vec![
            event(None, job_succeeded("j")),
            event(Some(ts(5)), job_succeeded("k")),
        ],
    );
    let c = conv().convert(&seq, None);
    assert_eq!(c.instructions.jobs_to_update.len(), 1);
    assert_eq!(c.problems.len(), 1);
    assert_eq!(
        (
            c.problems[0].reason,
            c.problems[0].event_index,
            c.problems[0].skipped
        ),
        (Reason::MissingCreated, Some(0), true)
    );
    let c = conv().convert(&seq, Some(&ts(3)));
    assert!(c.problems.is_empty());
    assert_eq!(
        c.instructions.jobs_to_update[0].last_transition_time,
        Some(t(3))
    );
}

#[test]
fn empty_queue_or_jobset_rejects_sequence() {
    let c = conv().convert(
        &sequence("", "js", "u", vec![event(Some(ts(1)), job_succeeded("j"))]),
        None,
    );
    assert!(c.instructions.is_empty());
    assert_eq!(
        (c.problems[0].reason, c.problems[0].event_index),
        (Reason::EmptyQueue, None)
    );
    let c = conv().convert(
        &sequence("q", "\0", "u", vec![event(Some(ts(1)), job_succeeded("j"))]),
        None,
    );
    assert_eq!(c.problems[0].reason, Reason::EmptyJobSet);
}

#[test]
fn header_text_is_cleaned_and_truncated() {
    let q = format!("{}\0", "中".repeat(200)); // 600 bytes
    let c = conv().convert(
        &sequence(
            &q,
            "js",
            "u",
            vec![event(Some(ts(1)), submit("j", "ns", 0, &[], None, &[]))],
        ),
        None,
    );
    let j = &c.instructions.jobs_to_create[0];
    assert_eq!(j.queue, "中".repeat(170)); // 510 bytes: the longest whole-char prefix within 512
}

#[test]
fn invalid_utf8_is_replaced() {
    let mut seq = sequence(
        "q",
        "js",
        "u",
        vec![event(Some(ts(1)), cancelled("j", "x", "y"))],
    );
    if let Some(Kind::CancelledJob(c)) = &mut seq.events[0].event {
        c.reason = b"bad\xffbyte".to_vec();
    }
    let c = conv().convert(&seq, None);
    assert_eq!(
        c.instructions.jobs_to_update[0].cancel_reason.as_deref(),
        Some("bad\u{fffd}byte")
    );
}

#[test]
fn overlong_or_missing_ids_are_reported() {
    let c = one(job_succeeded(&"x".repeat(33)));
    assert!(c.instructions.is_empty());
    assert_eq!(
        (c.problems[0].reason, c.problems[0].skipped),
        (Reason::IdTooLong, true)
    );
    let c = one(job_succeeded(""));
    assert_eq!(c.problems[0].reason, Reason::MissingId);
    let c = one(run_succeeded("j", &"r".repeat(37)));
    assert_eq!(c.problems[0].reason, Reason::IdTooLong);
}

#[test]
fn out_of_range_created_is_reported() {
    let bad = Timestamp {
        seconds: i64::MAX,
        nanos: 0,
    };
    let c = conv().convert(
        &sequence("q", "js", "u", vec![event(Some(bad), job_succeeded("j"))]),
        None,
    );
    assert_eq!(c.problems[0].reason, Reason::InvalidCreated);
    let bad = Timestamp {
        seconds: 0,
        nanos: -1,
    };
    let c = conv().convert(
        &sequence("q", "js", "u", vec![event(Some(bad), job_succeeded("j"))]),
        None,
    );
    assert_eq!(c.problems[0].reason, Reason::InvalidCreated);
}

#[test]
fn timestamps_keep_microseconds() {
    let c = conv().convert(
        &sequence(
            "q",
            "js",
            "u",
            vec![event(
                Some(Timestamp {
                    seconds: 100,
                    nanos: 123_456_789,
                }),
                job_succeeded("j"),
            )],
        ),
        None,
    );
    let ltt = c.instructions.jobs_to_update[0]
        .last_transition_time
        .expect("ltt");
    assert_eq!(ltt.and_utc().timestamp_subsec_nanos(), 123_456_000);
    assert_eq!(
        c.instructions.jobs_to_update[0].last_transition_time_seconds,
        Some(100)
    );
}

#[test]
fn events_keep_order_across_a_sequence() {
    let seq = sequence(
        "q",
        "js",
        "u",
        vec![
            event(Some(ts(1)), submit("j", "ns", 0, &[], None, &[])),
            event(Some(ts(2)), leased("j", "r", "c", "n", "p")),
            event(Some(ts(3)), running("j", "r", Some("n"))),
            event(Some(ts(4)), run_succeeded("j", "r")),
            event(Some(ts(4)), job_succeeded("j")),
        ],
    );
    let c = conv().convert(&seq, None);
    let states: Vec<_> = c
        .instructions
        .jobs_to_update
        .iter()
        .map(|u| u.state)
        .collect();
    assert_eq!(
        states,
        vec![
            Some(job_state::LEASED),
            Some(job_state::RUNNING),
            Some(job_state::SUCCEEDED)
        ]
    );
    assert_eq!(c.events_by_kind.values().sum::<u64>(), 5);
}

#[test]
fn generated_stream_converts_without_problems() {
    let conv = conv();
    for seq in generate(1, 200) {
        let c = conv.convert(&seq, None);
        assert!(c.problems.is_empty(), "{:?}", c.problems);
    }
}

#[test]
fn counts_come_back_in_the_output() {
    let mut seq = sequence(
        "q\0",
        "js",
        "u",
        vec![
            event(Some(ts(1)), cancelled("j", "x", "y")),
            event(Some(ts(2)), job_succeeded("j")),
            event(Some(ts(3)), job_succeeded("")),
        ],
    );
    if let Some(Kind::CancelledJob(c)) = &mut seq.events[0].event {
        c.reason = b"bad\xffbyte".to_vec();
        c.cancel_user = "u".repeat(limits::CANCEL_USER + 1).into_bytes();
    }
    let c = conv().convert(&seq, None);
    assert_eq!(
        c.events_by_kind,
        BTreeMap::from([("cancelled_job", 1), ("job_succeeded", 2)])
    );
    assert_eq!(
        c.sanitised,
        BTreeMap::from([
            (Action::InvalidUtf8Replaced, 1),
            (Action::NulRemoved, 1),
            (Action::Truncated, 1),
        ])
    );
    assert_eq!(
        c.problems.iter().map(|p| p.reason).collect::<Vec<_>>(),
        vec![Reason::MissingId]
    );
    // A rejected header still reports what cleaning it did, and no events.
    let c = conv().convert(
        &sequence(
            "\0",
            "js",
            "u",
            vec![event(Some(ts(1)), job_succeeded("j"))],
        ),
        None,
    );
    assert_eq!(c.sanitised, BTreeMap::from([(Action::NulRemoved, 1)]));
    assert!(c.events_by_kind.is_empty());
    assert_eq!(c.problems[0].reason, Reason::EmptyQueue);
}

#[test]
fn the_converter_touches_no_global_counter() {
    // Pure by construction: nothing under src/convert/ names the metrics.
    for (file, text) in [
        ("mod.rs", include_str!("mod.rs")),
        ("jobspec.rs", include_str!("jobspec.rs")),
        ("sanitize.rs", include_str!("sanitize.rs")),
        ("quantity.rs", include_str!("quantity.rs")),
        ("compress.rs", include_str!("compress.rs")),
    ] {
        for forbidden in ["crate::metrics", "metrics::", "telemetry", "tracing"] {
            assert!(!text.contains(forbidden), "{file} uses {forbidden}");
        }
    }
}

#[test]
fn every_event_kind_name_is_known_in_advance() {
    use ev::event_sequence::event::Event as K;
    let kinds = [
        K::SubmitJob(Default::default()),
        K::ReprioritiseJob(Default::default()),
        K::ReprioritiseJobSet(Default::default()),
        K::ReprioritisedJob(Default::default()),
        K::CancelJob(Default::default()),
        K::CancelJobSet(Default::default()),
        K::CancelledJob(Default::default()),
        K::JobSucceeded(Default::default()),
        K::JobErrors(Default::default()),
        K::JobRunLeased(Default::default()),
        K::JobRunAssigned(Default::default()),
        K::JobRunRunning(Default::default()),
        K::JobRunSucceeded(Default::default()),
        K::JobRunErrors(Default::default()),
        K::StandaloneIngressInfo(Default::default()),
        K::ResourceUtilisation(Default::default()),
        K::JobRunPreempted(Default::default()),
        K::PartitionMarker(Default::default()),
        K::JobRunPreemptionRequested(Default::default()),
        K::JobRequeued(Default::default()),
        K::JobPreemptionRequested(Default::default()),
        K::JobRunCancelled(Default::default()),
        K::JobValidated(Default::default()),
    ];
    let mut names: Vec<&str> = kinds
        .into_iter()
        .map(|k| event_kind(&event(None, k)))
        .collect();
    names.push(event_kind(&ev::event_sequence::Event::default()));
    let unique: BTreeSet<&str> = names.iter().copied().collect();
    assert_eq!(unique.len(), names.len());
    assert_eq!(unique, EVENT_KINDS.into_iter().collect::<BTreeSet<_>>());
}

#[test]
fn problems_display_with_their_event() {
    let p = Problem {
        event_index: Some(3),
        reason: Reason::MissingId,
        detail: "event has no job id".into(),
        skipped: true,
    };
    assert_eq!(p.to_string(), "event 3: missing_id: event has no job id");
    let p = Problem {
        event_index: None,
        ..p
    };
    assert_eq!(p.to_string(), "missing_id: event has no job id");
}
