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

/// The `api.Job` inside a created job's compressed job_spec.
fn api_job(j: &CreateJob) -> crate::proto::api::Job {
    let raw = compress::unzlib(&j.job_spec).expect("job spec inflates");
    prost::Message::decode(raw.as_slice()).expect("api.Job")
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
    assert_eq!(api_job(j).id, "job1");
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
            ..Default::default()
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
        c.requestor = "u".repeat(limits::CANCEL_USER + 1).into_bytes();
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
        K::JobRunTerminatedDebugInfo(Default::default()),
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

// ---- Schema generations: upstream's rules as of each migration's commit ----

use crate::model::Generation::{self, G031, G032, G033, G034, G035};

/// Converts one event, owned by `owner`, for generation `g`.
fn at(g: Generation, owner: &str, kind: ev::event_sequence::event::Event) -> Converted {
    conv().with_generation(g).convert(
        &sequence("q", "js", owner, vec![event(Some(ts(10)), kind)]),
        None,
    )
}

/// The compressed form of `s`, as the error and debug columns hold it.
fn z(s: &str) -> Vec<u8> {
    compress::zlib(
        s.as_bytes(),
        Settings::default().min_job_spec_compression_size,
    )
    .expect("compresses")
}

#[test]
fn converter_generation_defaults_to_031_and_is_chosen_per_clone() {
    let base = conv();
    assert_eq!(base.generation(), G031);
    let newer = base.with_generation(G035);
    assert_eq!(newer.generation(), G035);
    assert_eq!(base.generation(), G031, "the original is unchanged");
    assert_eq!(newer.settings(), base.settings());
    assert_eq!(newer.with_generation(G032).generation(), G032);
}

/// A SubmitJob with the URI annotation `annotation` and SubmitJob field 16
/// set to `field`.
fn submit_with_uris(annotation: &str, field: &str) -> Kind {
    with_external_job_uri(
        submit(
            "j",
            "ns",
            0,
            &[],
            None,
            &[("armadaproject.io/externalJobUri", annotation)],
        ),
        field,
    )
}

#[test]
fn external_job_uri_field_wins_from_032() {
    let submit_both = || submit_with_uris("http://annotation", "http://field");
    let uri = |c: &Converted| c.instructions.jobs_to_create[0].external_job_uri.clone();
    assert_eq!(uri(&at(G031, "u", submit_both())), "http://annotation");
    for g in [G032, G033, G034, G035] {
        let c = at(g, "u", submit_both());
        assert!(c.problems.is_empty(), "{g}: {:?}", c.problems);
        assert_eq!(uri(&c), "http://field", "{g}");
        // The annotation itself is still stored, prefix stripped.
        assert_eq!(
            c.instructions.jobs_to_create[0]
                .annotations
                .get("externalJobUri")
                .map(String::as_str),
            Some("http://annotation")
        );
    }
    // An empty field falls back to the annotation.
    let c = at(G035, "u", submit_with_uris("http://annotation", ""));
    assert_eq!(uri(&c), "http://annotation");
    // Field only: ignored at 031, used from 032.
    let field_only = || with_external_job_uri(submit("j", "ns", 0, &[], None, &[]), "http://f");
    assert_eq!(uri(&at(G031, "u", field_only())), "");
    assert_eq!(uri(&at(G032, "u", field_only())), "http://f");
    // Neither: empty, at every generation.
    for g in Generation::ALL {
        assert_eq!(uri(&at(g, "u", submit("j", "ns", 0, &[], None, &[]))), "");
    }
}

#[test]
fn external_job_uri_field_is_judged_raw_then_cleaned_and_cut() {
    // Only NULs: not empty as sent, so it wins over the annotation and
    // cleans to "" (counted).
    let c = at(G032, "u", submit_with_uris("http://annotation", "\0\0"));
    assert_eq!(c.instructions.jobs_to_create[0].external_job_uri, "");
    assert_eq!(c.sanitised, BTreeMap::from([(Action::NulRemoved, 1)]));
    let c = at(
        G034,
        "u",
        with_external_job_uri(submit("j", "ns", 0, &[], None, &[]), &"x".repeat(1100)),
    );
    assert_eq!(
        c.instructions.jobs_to_create[0].external_job_uri,
        "x".repeat(1024)
    );
    assert_eq!(c.sanitised, BTreeMap::from([(Action::Truncated, 1)]));
    // The annotation's value is counted once as an annotation; the URI taken
    // from the field does not count the annotation again.
    let c = at(G035, "u", submit_with_uris("a\0b", "http://f"));
    assert_eq!(
        c.instructions.jobs_to_create[0].external_job_uri,
        "http://f"
    );
    assert_eq!(c.sanitised, BTreeMap::from([(Action::NulRemoved, 1)]));
}

/// A terminal pod error carrying both kinds of failure detail (no real event
/// has both; it shows which one each generation reads).
fn error_with_both(terminal: bool) -> ev::Error {
    ev::Error {
        failure_info: Some(failure(137, "OOMKilled", &["oom"], "main")),
        ..categorised_error(
            terminal,
            pod_error("killed", "n1", &[137]),
            "oom",
            "container-killed",
        )
    }
}

fn failed_run(
    failure_info: Option<serde_json::Value>,
    cat: Option<&str>,
    sub: Option<&str>,
) -> UpdateJobRun {
    UpdateJobRun {
        run_id: "r".into(),
        node: Some("n1".into()),
        finished: Some(t(10)),
        job_run_state: Some(run_state::FAILED),
        error: Some(z("killed")),
        debug: Some(z("debug: killed")),
        exit_code: Some(137),
        failure_info,
        failure_category: cat.map(str::to_string),
        failure_subcategory: sub.map(str::to_string),
        ..Default::default()
    }
}

#[test]
fn failure_detail_is_failure_info_at_031_and_categories_from_032() {
    let runs = |g| {
        at(g, "u", run_errors("j", "r", vec![error_with_both(true)]))
            .instructions
            .runs_to_update
    };
    assert_eq!(
        runs(G031),
        vec![failed_run(
            Some(
                json!({"exitCode": 137, "terminationMessage": "OOMKilled", "categories": ["oom"], "containerName": "main"})
            ),
            None,
            None
        )]
    );
    for g in [G032, G033, G034, G035] {
        assert_eq!(
            runs(g),
            vec![failed_run(None, Some("oom"), Some("container-killed"))],
            "{g}"
        );
    }
}

#[test]
fn failure_categories_come_from_the_first_non_preempted_error_if_terminal() {
    for g in [G031, G032, G034, G035] {
        // A preemption error is skipped; the next one decides.
        let c = at(
            g,
            "u",
            run_errors(
                "j",
                "r",
                vec![
                    categorised_error(true, R::JobRunPreemptedError(Default::default()), "p", "p"),
                    categorised_error(true, R::LeaseExpired(ev::LeaseExpired {}), "lease", ""),
                ],
            ),
        );
        let cat = (g >= G032).then(|| "lease".to_string());
        assert_eq!(
            c.instructions.runs_to_update,
            vec![UpdateJobRun {
                run_id: "r".into(),
                finished: Some(t(10)),
                job_run_state: Some(run_state::LEASE_EXPIRED),
                error: Some(z("Lease expired")),
                failure_category: cat,
                ..Default::default()
            }],
            "{g}"
        );
        // A non-terminal first error writes no failure detail, even when a
        // later one is terminal.
        let c = at(
            g,
            "u",
            run_errors(
                "j",
                "r",
                vec![error_with_both(false), error_with_both(true)],
            ),
        );
        assert_eq!(
            c.instructions.runs_to_update,
            vec![UpdateJobRun {
                finished: None,
                ..failed_run(None, None, None)
            }],
            "{g}"
        );
    }
}

/// Run errors of one terminal executor error with `category` and
/// `subcategory` (fields 16 and 17).
fn executor_error(category: &str, subcategory: &str) -> Kind {
    run_errors(
        "j",
        "r",
        vec![categorised_error(
            true,
            R::ExecutorError(ev::ExecutorError {}),
            category,
            subcategory,
        )],
    )
}

#[test]
fn failure_categories_are_cleaned_and_cut_to_63_characters() {
    let c = at(
        G032,
        "u",
        executor_error(&format!("{}tail", "é".repeat(62)), "sub\0category"),
    );
    let u = &c.instructions.runs_to_update[0];
    assert_eq!(
        (
            u.failure_category.as_deref(),
            u.failure_subcategory.as_deref()
        ),
        (
            Some(format!("{}t", "é".repeat(62)).as_str()),
            Some("subcategory")
        )
    );
    assert_eq!(
        c.sanitised,
        BTreeMap::from([(Action::NulRemoved, 1), (Action::Truncated, 1)])
    );
    // Exactly 63 characters (126 bytes) is kept whole; empty stays NULL.
    let c = at(G035, "u", executor_error(&"é".repeat(63), ""));
    let u = &c.instructions.runs_to_update[0];
    assert_eq!(
        (u.failure_category.clone(), u.failure_subcategory.clone()),
        (Some("é".repeat(63)), None)
    );
    assert!(c.sanitised.is_empty());
    // A value that cleans to nothing keeps the stored one.
    let c = at(G033, "u", executor_error("\0", ""));
    assert_eq!(c.instructions.runs_to_update[0].failure_category, None);
    assert_eq!(c.sanitised, BTreeMap::from([(Action::NulRemoved, 1)]));
}

fn preempted_run(reason: &str, termination: Option<serde_json::Value>) -> Vec<UpdateJobRun> {
    vec![UpdateJobRun {
        run_id: "r".into(),
        finished: Some(t(10)),
        job_run_state: Some(run_state::PREEMPTED),
        error: Some(z(reason)),
        scheduler_termination_reason: termination,
        ..Default::default()
    }]
}

#[test]
fn preemption_termination_reason_per_generation() {
    let runs = |g, owner| {
        at(
            g,
            owner,
            run_preempted_by("j", "r", "higher priority", "pj", "bob"),
        )
        .instructions
        .runs_to_update
    };
    for g in [G031, G032, G033] {
        assert_eq!(
            runs(g, "alice"),
            preempted_run("higher priority", None),
            "{g}"
        );
    }
    assert_eq!(
        runs(G034, "alice"),
        preempted_run(
            "higher priority",
            Some(json!({"reason": "higher priority", "args": {"preemptingJobId": "pj"}}))
        )
    );
    assert_eq!(
        runs(G035, "alice"),
        preempted_run(
            "higher priority",
            Some(
                json!({"reason": "higher priority", "args": {"preemptingJobId": "pj", "requestor": "bob"}})
            )
        )
    );
    // Old events (no fields 8, 9) at 034 and 035.
    let old = |g, owner| {
        at(g, owner, run_preempted("j", "r", "old"))
            .instructions
            .runs_to_update
    };
    assert_eq!(
        old(G034, "alice"),
        preempted_run("old", Some(json!({"reason": "old"})))
    );
    assert_eq!(
        old(G035, " alice\t"),
        preempted_run(
            "old",
            Some(json!({"reason": "old", "args": {"requestor": "alice"}}))
        )
    );
}

#[test]
fn preemption_termination_reason_only_when_there_is_something_to_say() {
    let runs = |g, owner, reason, preempting, requestor| {
        at(
            g,
            owner,
            run_preempted_by("j", "r", reason, preempting, requestor),
        )
        .instructions
        .runs_to_update
    };
    // 034: the requestor is not read, so nothing but an empty reason is nothing.
    assert_eq!(runs(G034, "alice", "", "", "bob"), preempted_run("", None));
    assert_eq!(
        runs(G034, "alice", "", "pj", ""),
        preempted_run(
            "",
            Some(json!({"reason": "", "args": {"preemptingJobId": "pj"}}))
        )
    );
    // 035: the owner stands in for a missing requestor, so only a blank
    // owner leaves nothing.
    assert_eq!(
        runs(G035, "alice", "", "", ""),
        preempted_run(
            "",
            Some(json!({"reason": "", "args": {"requestor": "alice"}}))
        )
    );
    assert_eq!(runs(G035, " \t", "", "", ""), preempted_run("", None));
    assert_eq!(
        runs(G035, "", "why", "", ""),
        preempted_run("why", Some(json!({"reason": "why"})))
    );
}

#[test]
fn termination_reason_text_is_cleaned_not_cut() {
    let long = "r".repeat(5000);
    let mut kind = run_preempted_by("j", "r", &long, "p\0j", "x");
    if let Kind::JobRunPreempted(p) = &mut kind {
        p.requestor = b"b\xffob".to_vec();
    }
    let c = at(G035, "alice", kind);
    assert_eq!(
        c.instructions.runs_to_update[0].scheduler_termination_reason,
        Some(
            json!({"reason": long, "args": {"preemptingJobId": "pj", "requestor": "b\u{fffd}ob"}})
        )
    );
    assert_eq!(
        c.sanitised,
        BTreeMap::from([(Action::InvalidUtf8Replaced, 1), (Action::NulRemoved, 1)])
    );
    let c = at(G035, "alice", run_cancelled_by("j", "r", "st\0op", "b\0ob"));
    assert_eq!(
        c.instructions.runs_to_update[0].scheduler_termination_reason,
        Some(json!({"reason": "stop", "args": {"requestor": "bob"}}))
    );
    assert_eq!(c.sanitised, BTreeMap::from([(Action::NulRemoved, 2)]));
}

fn cancelled_run(termination: Option<serde_json::Value>) -> Vec<UpdateJobRun> {
    vec![UpdateJobRun {
        run_id: "r".into(),
        finished: Some(t(10)),
        job_run_state: Some(run_state::CANCELLED),
        scheduler_termination_reason: termination,
        ..Default::default()
    }]
}

#[test]
fn cancelled_run_termination_reason_only_at_035() {
    let runs = |g, reason, requestor| {
        at(g, "alice", run_cancelled_by("j", "r", reason, requestor))
            .instructions
            .runs_to_update
    };
    for g in [G031, G032, G033, G034] {
        assert_eq!(runs(g, "too slow", "bob"), cancelled_run(None), "{g}");
    }
    assert_eq!(
        runs(G035, "too slow", "bob"),
        cancelled_run(Some(
            json!({"reason": "too slow", "args": {"requestor": "bob"}})
        ))
    );
    // Always written at 035; no owner fallback for the requestor.
    assert_eq!(
        runs(G035, "", ""),
        cancelled_run(Some(json!({"reason": "no reason provided"})))
    );
    assert_eq!(
        at(G035, "alice", run_cancelled("j", "r"))
            .instructions
            .runs_to_update,
        cancelled_run(Some(json!({"reason": "no reason provided"})))
    );
}

#[test]
fn run_debug_info_writes_debug_only_at_035() {
    for g in [G031, G032, G033, G034] {
        let c = at(g, "u", run_debug_info("j", "r", "{\"why\":\"x\"}"));
        assert!(c.instructions.is_empty(), "{g}");
        assert!(c.problems.is_empty(), "{g}: known kind, ignored");
        assert_eq!(
            c.events_by_kind,
            BTreeMap::from([("job_run_terminated_debug_info", 1)])
        );
        // Ignored entirely: not even the ids are checked.
        assert!(at(g, "u", run_debug_info("", "", "")).problems.is_empty());
    }
    let c = at(G035, "u", run_debug_info("j", "r", "{\"why\":\"x\"}"));
    assert!(c.problems.is_empty(), "{:?}", c.problems);
    assert_eq!(
        c.instructions,
        InstructionSet {
            runs_to_update: vec![UpdateJobRun {
                run_id: "r".into(),
                debug: Some(z("{\"why\":\"x\"}")),
                ..Default::default()
            }],
            ..Default::default()
        }
    );
    // An empty message still writes a compressed empty string; NULs stay
    // (bytea takes them) and are not counted.
    let c = at(G035, "u", run_debug_info("j", "r", ""));
    assert_eq!(c.instructions.runs_to_update[0].debug, Some(z("")));
    let c = at(G035, "u", run_debug_info("j", "r", "a\0b"));
    assert_eq!(c.instructions.runs_to_update[0].debug, Some(z("a\0b")));
    assert!(c.sanitised.is_empty());
    let c = at(G035, "u", run_debug_info("j", "", "m"));
    assert!(c.instructions.is_empty());
    assert_eq!(c.problems[0].reason, Reason::MissingId);
}

#[test]
fn cancelled_job_user_falls_back_to_trimmed_owner_at_035() {
    let user = |g, owner, requestor| {
        at(g, owner, cancelled("j", "why", requestor))
            .instructions
            .jobs_to_update[0]
            .cancel_user
            .clone()
    };
    for g in Generation::ALL {
        assert_eq!(user(g, " alice ", "bob"), Some("bob".into()), "{g}");
    }
    for g in [G031, G032, G033, G034] {
        assert_eq!(user(g, " alice ", ""), None, "{g}");
    }
    assert_eq!(user(G035, " alice ", ""), Some("alice".into()));
    assert_eq!(user(G035, " \n", ""), None);
    assert_eq!(
        at(G035, " alice ", cancelled("j", "why", ""))
            .instructions
            .jobs_to_update,
        vec![UpdateJob {
            job_id: "j".into(),
            state: Some(job_state::CANCELLED),
            cancelled: Some(t(10)),
            cancel_reason: Some("why".into()),
            cancel_user: Some("alice".into()),
            last_transition_time: Some(t(10)),
            last_transition_time_seconds: Some(ts(10).seconds),
            ..Default::default()
        }]
    );
}

#[test]
fn owner_is_trimmed_at_035_in_the_row_and_the_job_spec() {
    for (g, want) in [
        (G031, " alice\t"),
        (G032, " alice\t"),
        (G034, " alice\t"),
        (G035, "alice"),
    ] {
        let c = at(g, " alice\t", submit("j", "ns", 0, &[], None, &[]));
        let j = &c.instructions.jobs_to_create[0];
        assert_eq!(j.owner, want, "{g}");
        assert_eq!(api_job(j).owner, want, "{g}");
    }
    // Cut to 512 bytes first, then trimmed.
    let owner = format!("{}  x", "a".repeat(510));
    let c = at(G035, &owner, submit("j", "ns", 0, &[], None, &[]));
    assert_eq!(c.instructions.jobs_to_create[0].owner, "a".repeat(510));
    assert_eq!(c.sanitised, BTreeMap::from([(Action::Truncated, 1)]));
}

#[test]
fn reprioritised_requestor_and_retry_policy_name_are_ignored() {
    let mut kind = reprioritised("j", 7);
    if let Kind::ReprioritisedJob(r) = &mut kind {
        r.requestor = b"bob".to_vec();
    }
    for g in Generation::ALL {
        assert_eq!(
            at(g, "u", kind.clone()).instructions.jobs_to_update,
            vec![UpdateJob {
                job_id: "j".into(),
                priority: Some(7),
                ..Default::default()
            }],
            "{g}"
        );
        let with_policy = ev::Error {
            retry_policy_name: b"policy\0".to_vec(),
            ..error_with_both(true)
        };
        let c = at(g, "u", run_errors("j", "r", vec![with_policy]));
        assert_eq!(
            c.instructions,
            at(g, "u", run_errors("j", "r", vec![error_with_both(true)])).instructions,
            "{g}"
        );
        assert!(c.sanitised.is_empty(), "{g}: the name is not even read");
    }
}

#[test]
fn events_of_either_age_decode_and_convert_at_every_generation() {
    use prost::Message as _;
    // Old: FailureInfo in field 15. New: fields 16/17, 8/9, 5/6, 26.
    let old = sequence(
        "q",
        "js",
        "alice",
        vec![
            event(
                Some(ts(1)),
                run_errors(
                    "j",
                    "r",
                    vec![error(
                        true,
                        pod_error("m", "n", &[1]),
                        Some(failure(1, "t", &["c"], "main")),
                    )],
                ),
            ),
            event(Some(ts(2)), cancelled("j", "why", "bob")),
            event(Some(ts(3)), run_preempted("j", "r", "p")),
        ],
    );
    let new = sequence(
        "q",
        "js",
        "alice",
        vec![
            event(
                Some(ts(1)),
                run_errors(
                    "j",
                    "r",
                    vec![categorised_error(
                        true,
                        pod_error("m", "n", &[1]),
                        "cat",
                        "sub",
                    )],
                ),
            ),
            event(Some(ts(2)), run_cancelled_by("j", "r", "why", "bob")),
            event(Some(ts(3)), run_preempted_by("j", "r", "p", "pj", "bob")),
            event(Some(ts(4)), run_debug_info("j", "r", "d")),
            event(
                Some(ts(5)),
                with_external_job_uri(submit("k", "ns", 0, &[], None, &[]), "http://f"),
            ),
        ],
    );
    for g in Generation::ALL {
        for seq in [&old, &new] {
            let decoded =
                ev::EventSequence::decode(seq.encode_to_vec().as_slice()).expect("decodes");
            let c = conv().with_generation(g).convert(&decoded, None);
            assert!(c.problems.is_empty(), "{g}: {:?}", c.problems);
            assert!(c.sanitised.is_empty(), "{g}");
        }
    }
    // Old events at 035: the FailureInfo is not read, and nothing else breaks.
    let c = conv().with_generation(G035).convert(&old, None);
    let u = &c.instructions.runs_to_update[0];
    assert_eq!(
        (
            u.failure_info.clone(),
            u.failure_category.clone(),
            u.failure_subcategory.clone()
        ),
        (None, None, None)
    );
    // New events at 031: today's rows; the new fields are not read.
    let c = conv().convert(&new, None);
    assert_eq!(
        c.instructions.runs_to_update.len(),
        3,
        "no debug-info update at 031"
    );
    assert!(c
        .instructions
        .runs_to_update
        .iter()
        .all(|u| u.failure_category.is_none()
            && u.failure_subcategory.is_none()
            && u.scheduler_termination_reason.is_none()
            && u.failure_info.is_none()));
    assert_eq!(c.instructions.jobs_to_create[0].external_job_uri, "");
    // The generated stream (old-style events) converts cleanly everywhere.
    for g in Generation::ALL {
        let conv = conv().with_generation(g);
        for seq in generate(1, 100) {
            let c = conv.convert(&seq, None);
            assert!(c.problems.is_empty(), "{g}: {:?}", c.problems);
        }
    }
}

#[test]
fn sanitising_counts_cover_the_new_columns() {
    let seq = sequence(
        "q",
        "js",
        "alice",
        vec![
            event(Some(ts(1)), executor_error("c\0at", &"s".repeat(64))),
            event(
                Some(ts(2)),
                run_cancelled_by("j", "r", "why\0", "placeholder"),
            ),
            event(Some(ts(3)), run_preempted_by("j", "r", "\0", "pj\0", "")),
        ],
    );
    // The byte 0xC3 followed by '(' cannot be a &str literal; patch it in.
    let mut seq = seq;
    if let Some(Kind::JobRunCancelled(e)) = &mut seq.events[1].event {
        e.requestor = b"b\xc3\x28ob".to_vec();
    }
    let c = conv().with_generation(G035).convert(&seq, None);
    assert_eq!(
        c.sanitised,
        BTreeMap::from([
            (Action::InvalidUtf8Replaced, 1),
            (Action::NulRemoved, 4),
            (Action::Truncated, 1),
        ])
    );
    let stored: Vec<_> = c
        .instructions
        .runs_to_update
        .iter()
        .map(|u| {
            (
                u.failure_category.clone(),
                u.failure_subcategory.clone(),
                u.scheduler_termination_reason.clone(),
            )
        })
        .collect();
    assert_eq!(
        stored,
        vec![
            (Some("cat".into()), Some("s".repeat(63)), None),
            (
                None,
                None,
                Some(json!({"reason": "why", "args": {"requestor": "b\u{fffd}(ob"}}))
            ),
            (
                None,
                None,
                Some(
                    json!({"reason": "", "args": {"preemptingJobId": "pj", "requestor": "alice"}})
                )
            ),
        ]
    );
    // At 031 none of those strings is read, so nothing is counted.
    let c = conv().convert(&seq, None);
    assert!(c.sanitised.is_empty(), "{:?}", c.sanitised);
}
