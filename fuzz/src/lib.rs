//! Bodies of the fuzz targets, shared between them: each must not panic on
//! any input, and every row instruction the converter produces must respect
//! the database's column rules. A violated rule is an `assert!` failure, so
//! libFuzzer reports it as a crash with the offending input.

use chrono::{NaiveDateTime, Timelike};
use prost::Message as _;
use prost_types::Timestamp;

use lookout_ingester::convert::quantity::Quantity;
use lookout_ingester::convert::{compress, Converted, Converter, Reason};
use lookout_ingester::model::{Generation, InstructionSet};
use lookout_ingester::proto::api;
use lookout_ingester::proto::armadaevents::EventSequence;
use lookout_ingester::source::file::{RecordReader, MAX_RECORD_BYTES};

/// Column limits the output must keep (bytes unless noted): upstream's
/// Lookout schema, written out here rather than taken from
/// `convert::limits` so that a wrong constant there is caught too.
pub mod limits {
    pub const QUEUE: usize = 512;
    pub const JOBSET: usize = 1024;
    pub const OWNER: usize = 512;
    pub const NODE: usize = 512;
    pub const CLUSTER: usize = 512;
    pub const PRIORITY_CLASS: usize = 63;
    pub const ANNOTATION_KEY: usize = 1024;
    pub const ANNOTATION_VALUE: usize = 1024;
    pub const NAMESPACE: usize = 512;
    pub const CANCEL_REASON: usize = 512;
    pub const CANCEL_USER: usize = 512;
    pub const EXTERNAL_JOB_URI: usize = 1024;
    pub const TERMINATION_MESSAGE: usize = 4096;
    /// In characters (varchar(63)).
    pub const FAILURE_CATEGORY_CHARS: usize = 63;
    /// In characters (varchar(32)).
    pub const JOB_ID_CHARS: usize = 32;
    /// In characters (varchar(36)).
    pub const RUN_ID_CHARS: usize = 36;
}

/// Most records read from one fuzz input.
pub const MAX_RECORDS: usize = 10_000;

/// Postgres' earliest timestamp (4713 BC), in Unix seconds.
const PG_MIN_SECONDS: i64 = -210_866_803_200;

/// The fallback `created` time the live source passes (a publish time).
pub fn fallback() -> Timestamp {
    Timestamp {
        seconds: 1,
        nanos: 0,
    }
}

/// Decodes one payload and, when it decodes, converts it with and without a
/// fallback time, checking every output.
pub fn decode_convert(data: &[u8]) {
    let Ok(seq) = lookout_ingester::pipeline::decode(data) else {
        return;
    };
    convert_checked(&seq);
}

/// Converts a decoded sequence both ways, for every schema generation, and
/// checks the results.
pub fn convert_checked(seq: &EventSequence) {
    for g in Generation::ALL {
        convert_checked_at(seq, g);
    }
}

fn convert_checked_at(seq: &EventSequence, g: Generation) {
    let converter = Converter::new(Default::default()).with_generation(g);
    let without = converter.convert(seq, None);
    check_converted(seq, &without);
    check_generation(g, &without.instructions);
    let fb = fallback();
    let with = converter.convert(seq, Some(&fb));
    check_converted(seq, &with);
    check_generation(g, &with.instructions);
    assert!(
        !with
            .problems
            .iter()
            .any(|p| p.reason == Reason::MissingCreated),
        "a fallback time was given, yet an event was skipped for a missing created time"
    );
    // Pure: the same input converts to the same output.
    assert_eq!(
        converter.convert(seq, None),
        without,
        "conversion is not deterministic"
    );
    // The fallback only stands in for missing times.
    if seq.events.iter().all(|e| e.created.is_some()) {
        assert_eq!(
            with, without,
            "every event has a created time, yet the fallback changed the output"
        );
    }
}

/// Reads a recorded-event stream record by record (at most [`MAX_RECORDS`]),
/// decoding and converting each record.
pub fn replay_file(data: &[u8]) {
    let mut reader = RecordReader::new(data);
    let mut consumed: usize = 0;
    for _ in 0..MAX_RECORDS {
        match reader.next_record() {
            Ok(Some(record)) => {
                assert!(record.len() as u64 <= MAX_RECORD_BYTES);
                // Every record has at least one byte of length prefix.
                consumed += record.len() + 1;
                assert!(
                    consumed <= data.len(),
                    "records hold more bytes ({consumed}) than the input ({})",
                    data.len()
                );
                decode_convert(&record);
            }
            Ok(None) | Err(_) => return,
        }
    }
}

/// Parses arbitrary text as a quantity and exercises what the converter uses.
pub fn quantity(s: &str) {
    let Ok(q) = Quantity::parse(s) else {
        return;
    };
    let _ = q.value();
    let _ = q.milli_value();
    let _ = q.scaled_value(-9);
    let _ = q.to_string();
    let canonical = q.canonical();
    assert!(!canonical.is_empty());
    let back = Quantity::parse(&canonical)
        .unwrap_or_else(|e| panic!("canonical form {canonical:?} of {s:?} does not parse: {e}"));
    // Without an exponent (which Kubernetes' parser wraps to 32 bits) the
    // canonical form must be the same number.
    if !canonical.contains('e') {
        assert!(
            back == q,
            "canonical form {canonical:?} of {s:?} reads back as a different value"
        );
    }
    let double = q.add(&q);
    assert_eq!(double.sign(), q.sign(), "{s:?} + itself changed sign");
    let _ = double.value();
    let _ = double.milli_value();
    let _ = double.canonical();
    assert!(q.add(&Quantity::zero()) == q, "{s:?} + 0 != {s:?}");
    assert!(Quantity::zero().add(&q) == q, "0 + {s:?} != {s:?}");
}

/// Checks one conversion result.
pub fn check_converted(seq: &EventSequence, c: &Converted) {
    for p in &c.problems {
        if let Some(i) = p.event_index {
            assert!(
                i < seq.events.len(),
                "problem for event {i} of {}",
                seq.events.len()
            );
        }
    }
    let counted: u64 = c.events_by_kind.values().sum();
    assert!(counted as usize <= seq.events.len());
    check_instructions(&c.instructions);
}

fn check_text(what: &str, s: &str, max_bytes: usize) {
    assert!(!s.contains('\0'), "{what} contains NUL: {s:?}");
    assert!(
        s.len() <= max_bytes,
        "{what} is {} bytes, over its limit of {max_bytes}",
        s.len()
    );
}

fn check_free_text(what: &str, s: &str) {
    check_text(what, s, usize::MAX);
}

fn check_id(what: &str, s: &str, max_chars: usize) {
    check_free_text(what, s);
    assert!(!s.is_empty(), "{what} is empty");
    let n = s.chars().count();
    assert!(
        n <= max_chars,
        "{what} {s:?} has {n} chars, over {max_chars}"
    );
}

fn check_time(what: &str, t: &NaiveDateTime) {
    assert_eq!(
        t.nanosecond() % 1000,
        0,
        "{what} {t} has sub-microsecond precision"
    );
    assert!(
        t.and_utc().timestamp() >= PG_MIN_SECONDS,
        "{what} {t} is before Postgres' earliest timestamp"
    );
}

fn check_zlib(what: &str, b: &[u8]) -> Vec<u8> {
    compress::unzlib(b).unwrap_or_else(|e| panic!("{what} is not a zlib stream: {e}"))
}

/// Every string in the JSON value, keys included, free of NUL.
fn check_json(what: &str, v: &serde_json::Value) {
    match v {
        serde_json::Value::String(s) => check_free_text(what, s),
        serde_json::Value::Array(a) => a.iter().for_each(|v| check_json(what, v)),
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                check_free_text(what, k);
                check_json(what, v);
            }
        }
        _ => {}
    }
}

/// Only the columns generation `g` has are written, and the new ones keep
/// their rules.
pub fn check_generation(g: Generation, set: &InstructionSet) {
    for r in &set.runs_to_update {
        if g != Generation::G031 {
            assert!(r.failure_info.is_none(), "failure_info written at {g}");
        }
        if g < Generation::G032 {
            assert!(
                r.failure_category.is_none() && r.failure_subcategory.is_none(),
                "failure categories written at {g}"
            );
        }
        if g < Generation::G034 {
            assert!(
                r.scheduler_termination_reason.is_none(),
                "scheduler_termination_reason written at {g}"
            );
        }
    }
    if g == Generation::G035 {
        for j in &set.jobs_to_create {
            assert_eq!(j.owner.trim(), j.owner, "owner not trimmed at {g}");
        }
    }
}

/// The column rules every instruction set must keep.
pub fn check_instructions(set: &InstructionSet) {
    use limits::*;
    for j in &set.jobs_to_create {
        check_id("job.job_id", &j.job_id, JOB_ID_CHARS);
        check_text("job.queue", &j.queue, QUEUE);
        check_text("job.owner", &j.owner, OWNER);
        check_text("job.namespace", &j.namespace, NAMESPACE);
        check_text("job.jobset", &j.jobset, JOBSET);
        assert!(!j.queue.is_empty(), "job.queue is empty");
        assert!(!j.jobset.is_empty(), "job.jobset is empty");
        if let Some(pc) = &j.priority_class {
            check_text("job.priority_class", pc, PRIORITY_CLASS);
        }
        for (k, v) in &j.annotations {
            check_text("annotation key", k, ANNOTATION_KEY);
            check_text("annotation value", v, ANNOTATION_VALUE);
        }
        check_text(
            "job.external_job_uri",
            &j.external_job_uri,
            EXTERNAL_JOB_URI,
        );
        check_time("job.submitted", &j.submitted);
        check_time("job.last_transition_time", &j.last_transition_time);
        let spec = check_zlib("job_spec.job_spec", &j.job_spec);
        if let Err(e) = api::Job::decode(spec.as_slice()) {
            panic!("job_spec.job_spec does not decode as api.Job: {e}");
        }
    }
    for u in &set.jobs_to_update {
        check_id("job.job_id (update)", &u.job_id, JOB_ID_CHARS);
        if let Some(s) = &u.cancel_reason {
            check_text("job.cancel_reason", s, CANCEL_REASON);
        }
        if let Some(s) = &u.cancel_user {
            check_text("job.cancel_user", s, CANCEL_USER);
        }
        if let Some(r) = &u.latest_run_id {
            check_id("job.latest_run_id", r, RUN_ID_CHARS);
        }
        if let Some(t) = &u.cancelled {
            check_time("job.cancelled", t);
        }
        if let Some(t) = &u.last_transition_time {
            check_time("job.last_transition_time (update)", t);
        }
    }
    for r in &set.runs_to_create {
        check_id("job_run.run_id", &r.run_id, RUN_ID_CHARS);
        check_id("job_run.job_id", &r.job_id, JOB_ID_CHARS);
        check_text("job_run.cluster", &r.cluster, CLUSTER);
        if let Some(n) = &r.node {
            check_text("job_run.node", n, NODE);
        }
        check_free_text("job_run.pool", &r.pool);
        for t in [&r.leased, &r.pending].into_iter().flatten() {
            check_time("job_run time", t);
        }
    }
    for r in &set.runs_to_update {
        check_id("job_run.run_id (update)", &r.run_id, RUN_ID_CHARS);
        if let Some(n) = &r.node {
            check_text("job_run.node (update)", n, NODE);
        }
        for t in [&r.pending, &r.started, &r.finished].into_iter().flatten() {
            check_time("job_run time (update)", t);
        }
        if let Some(e) = &r.error {
            check_zlib("job_run.error", e);
        }
        if let Some(d) = &r.debug {
            check_zlib("job_run.debug", d);
        }
        if let Some(m) = &r.ingress_addresses {
            for a in m.values() {
                check_free_text("job_run.ingress_addresses value", a);
            }
        }
        if let Some(fi) = &r.failure_info {
            check_json("job_run.failure_info", fi);
            let obj = fi
                .as_object()
                .unwrap_or_else(|| panic!("failure_info is not an object: {fi}"));
            assert!(!obj.is_empty(), "failure_info is an empty object, not NULL");
            if let Some(tm) = obj.get("terminationMessage") {
                let tm = tm
                    .as_str()
                    .unwrap_or_else(|| panic!("terminationMessage is not a string: {tm}"));
                check_text("failure_info.terminationMessage", tm, TERMINATION_MESSAGE);
            }
        }
    }
    for r in &set.runs_to_update {
        for (what, c) in [
            ("job_run.failure_category", &r.failure_category),
            ("job_run.failure_subcategory", &r.failure_subcategory),
        ] {
            if let Some(c) = c {
                check_free_text(what, c);
                assert!(!c.is_empty(), "{what} is empty, not NULL");
                let n = c.chars().count();
                assert!(
                    n <= FAILURE_CATEGORY_CHARS,
                    "{what} has {n} chars, over {FAILURE_CATEGORY_CHARS}"
                );
            }
        }
        if let Some(v) = &r.scheduler_termination_reason {
            check_json("job_run.scheduler_termination_reason", v);
            let obj = v
                .as_object()
                .unwrap_or_else(|| panic!("scheduler_termination_reason is not an object: {v}"));
            assert!(
                obj.get("reason").is_some_and(|r| r.is_string()),
                "scheduler_termination_reason has no string reason: {v}"
            );
            if let Some(args) = obj.get("args") {
                let args = args
                    .as_object()
                    .unwrap_or_else(|| panic!("args is not an object: {v}"));
                assert!(!args.is_empty(), "args is an empty object: {v}");
            }
        }
    }
    for e in &set.job_errors_to_create {
        check_id("job_error.job_id", &e.job_id, JOB_ID_CHARS);
        check_zlib("job_error.error", &e.error);
    }
}
