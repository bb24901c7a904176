//! Upstream's metrics, as its Go lookout ingester exports them, so that an
//! operator's scrape, dashboards and alerts keep working after the swap.
//!
//! Names, types, labels and label values are upstream's
//! (`internal/common/ingest/metrics/metrics.go`,
//! `internal/lookoutingester/metrics/metrics.go` and
//! `internal/common/logging/prometheus.go` at 777e10311 and 207cc9e04; the
//! union of the two). Counters carry no `_total` suffix, as upstream's Go
//! client writes them. The mappings from our vocabulary (store operations,
//! event kinds, input problems, job states) to upstream's label values are
//! the pure functions here, each unit-tested.

use std::sync::LazyLock;

use prometheus::{
    GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts,
};

use crate::convert::Reason;
use crate::model::job_state;

/// Upstream's `ArmadaLookoutIngesterMetricsPrefix`.
pub const PREFIX: &str = "armada_lookout_ingester_v2_";

/// Upstream's buckets of both row-change-time histograms (milliseconds per row).
pub const ROW_CHANGE_BUCKETS: [f64; 14] = [
    0.1, 0.2, 0.5, 1.0, 2.0, 3.0, 5.0, 7.0, 10.0, 15.0, 25.0, 50.0, 100.0, 1000.0,
];

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(format!("{PREFIX}{name}"), help)
}

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(opts(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name} is malformed: {e}"))
}

fn counter(name: &str, help: &str) -> IntCounter {
    IntCounter::with_opts(opts(name, help))
        .unwrap_or_else(|e| panic!("metric {name} is malformed: {e}"))
}

fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    GaugeVec::new(opts(name, help), labels)
        .unwrap_or_else(|e| panic!("metric {name} is malformed: {e}"))
}

fn histogram_opts(name: &str, help: &str) -> HistogramOpts {
    HistogramOpts::new(format!("{PREFIX}{name}"), help).buckets(ROW_CHANGE_BUCKETS.to_vec())
}

/// Failed database statements (every attempt, retries included), by
/// upstream's operation: `read`, `insert`, `update`, `create_temp_table`.
pub static DB_ERRORS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "db_errors",
        "Number of database errors grouped by database operation",
        &["operation"],
    )
});

/// Messages that could not be decoded (`deserialization`) or events that
/// could not be converted (`processing`).
pub static PULSAR_MESSAGE_ERRORS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "pulsar_message_errors",
        "Number of Pulsar message errors grouped by error type",
        &["error"],
    )
});

/// Failed connections to the broker and lost consumer streams.
pub static PULSAR_CONNECTION_ERRORS: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "pulsar_connection_errors",
        "Number of Pulsar connection errors",
    )
});

/// Messages acknowledged after their batch was committed.
pub static PULSAR_MESSAGES_PROCESSED: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "pulsar_messages_processed",
        "Number of pulsar messages processed",
    )
});

/// Unix seconds of the publish time of the message received last, per partition.
pub static PULSAR_MESSAGE_PUBLISH_TIME: LazyLock<GaugeVec> = LazyLock::new(|| {
    gauge_vec(
        "pulsar_message_publish_time",
        "Publish time of pulsar message being processed",
        &["subscription", "partition"],
    )
});

/// Milliseconds since the oldest unacknowledged message was published, per
/// partition (upstream's topic delay monitor; 0 when nothing waits).
pub static PULSAR_MESSAGE_PROCESSING_DELAY: LazyLock<GaugeVec> = LazyLock::new(|| {
    gauge_vec(
        "pulsar_message_processing_delay",
        "Delay in ms of pulsar messages",
        &["subscription", "partition"],
    )
});

/// Events, by queue, `eventType` (always `jobSet` here) and upstream's
/// event name.
pub static EVENTS_PROCESSED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "events_processed",
        "Number of events processed",
        &["queue", "eventType", "msgType"],
    )
});

/// Milliseconds per row of a whole batch write.
pub static AVERAGE_ROW_CHANGE_TIME: LazyLock<Histogram> = LazyLock::new(|| {
    Histogram::with_opts(histogram_opts(
        "average_row_change_time",
        "Average time take in milliseconds to change one database row",
    ))
    .unwrap_or_else(|e| panic!("metric average_row_change_time is malformed: {e}"))
});

/// Milliseconds per row of one table and operation.
pub static AVERAGE_ROW_CHANGE_TIME_BY_OPERATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    HistogramVec::new(
        histogram_opts(
            "average_row_change_time_by_operation",
            "Average time take in milliseconds to change one database row",
        ),
        &["table", "operation"],
    )
    .unwrap_or_else(|e| panic!("metric average_row_change_time_by_operation is malformed: {e}"))
});

/// Row instructions written, by table and operation, counted as upstream
/// counts them (job updates after the terminal filter).
pub static ROWS_CHANGED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "rows_changed",
        "Number of rows changed in the database",
        &["table", "operation"],
    )
});

/// Job updates that set a state, by state (207cc9e04).
pub static STATE_UPDATES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "state_updates",
        "Number of job state updates, labelled by state",
        &["state"],
    )
});

/// Log lines written, by level. No prefix: upstream's logging counts every
/// Armada component's lines under this one name.
pub static LOG_MESSAGES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    IntCounterVec::new(
        Opts::new("log_messages", "Total number of log lines logged by level"),
        &["level"],
    )
    .unwrap_or_else(|e| panic!("metric log_messages is malformed: {e}"))
});

/// upstream's `DBOperation` values.
pub const DB_OPERATIONS: [&str; 4] = ["read", "insert", "update", "create_temp_table"];

/// upstream's `PulsarMessageError` values.
pub const MESSAGE_ERRORS: [&str; 2] = ["deserialization", "processing"];

/// The zerolog levels upstream counts.
pub const LOG_LEVELS: [&str; 4] = ["debug", "info", "warn", "error"];

/// The states upstream's `recordStateUpdates` names.
pub const STATES: [&str; 9] = [
    "queued",
    "pending",
    "running",
    "leased",
    "succeeded",
    "failed",
    "cancelled",
    "preempted",
    "rejected",
];

/// Upstream's `db_errors` operation for a failure of one of our store
/// operations (the `operation` label of `lookout_ingester_db_errors_total`).
/// Upstream counts only failed statements: creating the temp table, the
/// insert or update into the real table (batch or row by row) and reads.
/// It does not count getting a connection, BEGIN, COMMIT or the COPY into
/// the temp table, so neither do we here; our catalog read is a read.
pub fn db_operation(ours: &str) -> Option<&'static str> {
    match ours {
        "create_temp_table" => Some("create_temp_table"),
        "insert" => Some("insert"),
        "update" => Some("update"),
        "detect" => Some("read"),
        _ => None,
    }
}

/// Counts a failed statement attempt under upstream's operation, if upstream counts it.
pub fn db_error(ours: &str) {
    if let Some(op) = db_operation(ours) {
        DB_ERRORS.with_label_values(&[op]).inc();
    }
}

/// Upstream's `pulsar_message_errors` value for an input problem: an
/// undecodable message is `deserialization`; an event upstream's converter
/// fails on (no or bad created time, ids missing or too long, a job spec
/// that cannot be read, no queue or job set) is `processing`. Upstream
/// ignores unknown event kinds and compression failures without counting.
pub fn message_error(reason: Reason) -> Option<&'static str> {
    match reason {
        Reason::Decode => Some("deserialization"),
        Reason::EmptyQueue
        | Reason::EmptyJobSet
        | Reason::MissingCreated
        | Reason::InvalidCreated
        | Reason::MissingId
        | Reason::IdTooLong
        | Reason::JobSpec => Some("processing"),
        Reason::UnknownEventKind | Reason::Compression | Reason::File => None,
    }
}

/// Upstream's `msgType` (its `GetEventName`, misspellings included) for
/// one of our event kinds (`convert::event_kind`).
pub fn msg_type(kind: &str) -> &'static str {
    match kind {
        "submit_job" => "SubmitJob",
        "job_run_leased" => "JobRunLeased",
        "job_run_running" => "JobRunRunning",
        "job_run_succeeded" => "JobRunSucceeded",
        "job_run_errors" => "JobRunErrors",
        "job_succeeded" => "JobSucceeded",
        "job_errors" => "JobErrors",
        "job_preemption_requested" => "JobPreemptionRequested",
        "job_run_preemption_requested" => "JobRunPreemptionRequested",
        "reprioritise_job" => "ReprioritiseJob",
        "reprioritise_job_set" => "ReprioritiseJobSet",
        "cancel_job" => "CancelJob",
        "cancel_job_set" => "CancelJobSet",
        "cancelled_job" => "CancelledJob",
        "job_run_cancelled" => "JobRunCancelled",
        // Named from 207cc9e04 on; 777e10311 said "Unknown".
        "job_run_terminated_debug_info" => "JobRunTerminatedDebugInfo",
        "job_requeued" => "JobRequeued",
        "partition_marker" => "PartitionMarker",
        "job_run_preempted" => "JobRunPreemped",
        "job_run_assigned" => "JobRunAssigned",
        "job_validated" => "JobValidated",
        "reprioritised_job" => "ReprioritisedJob",
        "resource_utilisation" => "ResourceUtilisation",
        "standalone_ingress_info" => "StandloneIngressIngo",
        _ => "Unknown",
    }
}

/// Upstream's `state` label for a job state ordinal.
pub fn state_name(state: i16) -> Option<&'static str> {
    Some(match state {
        job_state::QUEUED => "queued",
        job_state::PENDING => "pending",
        job_state::RUNNING => "running",
        job_state::LEASED => "leased",
        job_state::SUCCEEDED => "succeeded",
        job_state::FAILED => "failed",
        job_state::CANCELLED => "cancelled",
        job_state::PREEMPTED => "preempted",
        job_state::REJECTED => "rejected",
        _ => return None,
    })
}

/// Upstream's `partition` label: the partition index of a topic
/// (`…-partition-N`), 0 for a topic that is not partitioned (as the Go
/// client numbers it).
pub fn partition_label(topic: &str) -> String {
    topic
        .rsplit_once("-partition-")
        .and_then(|(_, n)| n.parse::<u32>().ok())
        .unwrap_or(0)
        .to_string()
}

/// Milliseconds per row, as upstream's `RecordAvRowChangeTime*` compute it
/// (but from the exact duration, not whole milliseconds).
pub fn ms_per_row(elapsed: std::time::Duration, rows: u64) -> Option<f64> {
    (rows > 0).then(|| elapsed.as_secs_f64() * 1000.0 / rows as f64)
}

/// Every upstream metric, for registration.
pub(super) fn all() -> Vec<Box<dyn prometheus::core::Collector>> {
    vec![
        Box::new(DB_ERRORS.clone()),
        Box::new(PULSAR_MESSAGE_ERRORS.clone()),
        Box::new(PULSAR_CONNECTION_ERRORS.clone()),
        Box::new(PULSAR_MESSAGES_PROCESSED.clone()),
        Box::new(PULSAR_MESSAGE_PUBLISH_TIME.clone()),
        Box::new(PULSAR_MESSAGE_PROCESSING_DELAY.clone()),
        Box::new(EVENTS_PROCESSED.clone()),
        Box::new(AVERAGE_ROW_CHANGE_TIME.clone()),
        Box::new(AVERAGE_ROW_CHANGE_TIME_BY_OPERATION.clone()),
        Box::new(ROWS_CHANGED.clone()),
        Box::new(STATE_UPDATES.clone()),
        Box::new(LOG_MESSAGES.clone()),
    ]
}

/// Creates the label values known in advance, so they show as 0 from the
/// first scrape (`tables` as the store names its steps).
pub(super) fn precreate(steps: &[(&str, &str)]) {
    for op in DB_OPERATIONS {
        DB_ERRORS.with_label_values(&[op]);
    }
    for e in MESSAGE_ERRORS {
        PULSAR_MESSAGE_ERRORS.with_label_values(&[e]);
    }
    for level in LOG_LEVELS {
        LOG_MESSAGES.with_label_values(&[level]);
    }
    for state in STATES {
        STATE_UPDATES.with_label_values(&[state]);
    }
    for (table, op) in steps {
        ROWS_CHANGED.with_label_values(&[table, op]);
        AVERAGE_ROW_CHANGE_TIME_BY_OPERATION.with_label_values(&[table, op]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_event_kind_has_upstreams_name() {
        for kind in crate::convert::EVENT_KINDS {
            let name = msg_type(kind);
            assert_eq!(name == "Unknown", kind == "unknown", "{kind} -> {name}");
        }
        let names: std::collections::BTreeSet<&str> = crate::convert::EVENT_KINDS
            .iter()
            .map(|k| msg_type(k))
            .collect();
        assert_eq!(names.len(), crate::convert::EVENT_KINDS.len());
    }

    #[test]
    fn store_operations_map_to_upstreams() {
        assert_eq!(db_operation("create_temp_table"), Some("create_temp_table"));
        assert_eq!(db_operation("insert"), Some("insert"));
        assert_eq!(db_operation("update"), Some("update"));
        assert_eq!(db_operation("detect"), Some("read"));
        for uncounted in ["connect", "begin", "lock", "commit", "copy"] {
            assert_eq!(db_operation(uncounted), None);
        }
    }

    #[test]
    fn problems_map_to_upstreams_message_errors() {
        assert_eq!(message_error(Reason::Decode), Some("deserialization"));
        assert_eq!(message_error(Reason::MissingId), Some("processing"));
        assert_eq!(message_error(Reason::UnknownEventKind), None);
        for r in Reason::ALL {
            if let Some(e) = message_error(r) {
                assert!(MESSAGE_ERRORS.contains(&e));
            }
        }
    }

    #[test]
    fn states_partitions_and_times() {
        assert_eq!(state_name(job_state::LEASED), Some("leased"));
        assert_eq!(state_name(0), None);
        let named: Vec<&str> = (1..=9).filter_map(state_name).collect();
        assert_eq!(named.len(), STATES.len());
        assert_eq!(partition_label("persistent://public/default/events"), "0");
        assert_eq!(
            partition_label("persistent://public/default/events-partition-3"),
            "3"
        );
        let ms = ms_per_row(std::time::Duration::from_millis(30), 10);
        assert_eq!(ms, Some(3.0));
        assert_eq!(ms_per_row(std::time::Duration::from_millis(30), 0), None);
    }
}
