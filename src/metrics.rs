//! Prometheus metrics: every error path and every write is counted here.
//!
//! Names carry the `lookout_ingester_` prefix. Counters are process-global so
//! that pure code (the converter) can count without threading a handle
//! through every call.

use once_cell::sync::Lazy;
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

pub static REGISTRY: Lazy<Registry> = Lazy::new(Registry::new);

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(name, help).namespace("lookout_ingester"), labels)
        .unwrap_or_else(|e| panic!("metric {name} is malformed: {e}"));
    // Registration only fails on a duplicate name, a programming error caught by the tests.
    let _ = REGISTRY.register(Box::new(c.clone()));
    c
}

fn counter(name: &str, help: &str) -> IntCounter {
    let c = IntCounter::with_opts(Opts::new(name, help).namespace("lookout_ingester"))
        .unwrap_or_else(|e| panic!("metric {name} is malformed: {e}"));
    let _ = REGISTRY.register(Box::new(c.clone()));
    c
}

fn gauge(name: &str, help: &str) -> IntGauge {
    let g = IntGauge::with_opts(Opts::new(name, help).namespace("lookout_ingester"))
        .unwrap_or_else(|e| panic!("metric {name} is malformed: {e}"));
    let _ = REGISTRY.register(Box::new(g.clone()));
    g
}

/// Messages (or file records) read from the source.
pub static MESSAGES_RECEIVED: Lazy<IntCounter> =
    Lazy::new(|| counter("messages_received_total", "Messages read from the source"));

/// Events converted, by event kind.
pub static EVENTS: Lazy<IntCounterVec> =
    Lazy::new(|| counter_vec("events_total", "Events seen, by event kind", &["kind"]));

/// Inputs that could not be used whole, by reason (decode, empty_queue, missing_created, ...).
pub static INPUT_ERRORS: Lazy<IntCounterVec> = Lazy::new(|| {
    counter_vec(
        "input_errors_total",
        "Messages or events that could not be applied as they are, by reason",
        &["reason"],
    )
});

/// Strings changed to fit a column, by what was done (nul_removed, truncated).
pub static SANITISED: Lazy<IntCounterVec> = Lazy::new(|| {
    counter_vec(
        "strings_sanitised_total",
        "Strings altered to fit their column, by action",
        &["action"],
    )
});

/// Rows written, by table and operation (insert, update).
pub static ROWS: Lazy<IntCounterVec> = Lazy::new(|| {
    counter_vec(
        "rows_total",
        "Row instructions applied, by table and operation",
        &["table", "operation"],
    )
});

/// Row instructions that could not be written even row by row.
pub static ROWS_FAILED: Lazy<IntCounterVec> = Lazy::new(|| {
    counter_vec(
        "rows_failed_total",
        "Row instructions that failed even row by row, by table",
        &["table"],
    )
});

/// Job updates dropped because the job is already terminal.
pub static TERMINAL_FILTERED: Lazy<IntCounter> = Lazy::new(|| {
    counter(
        "job_updates_filtered_total",
        "Job updates dropped because the job was already terminal",
    )
});

/// Postgres errors, by class (retryable or not) and operation.
pub static DB_ERRORS: Lazy<IntCounterVec> = Lazy::new(|| {
    counter_vec(
        "db_errors_total",
        "Postgres errors, by class and operation",
        &["class", "operation"],
    )
});

/// Batches fallen back to row-by-row writing.
pub static FALLBACKS: Lazy<IntCounterVec> = Lazy::new(|| {
    counter_vec(
        "row_fallbacks_total",
        "Batches that fell back to row-by-row writes, by table",
        &["table"],
    )
});

/// Broker-side problems, by kind (connect, stream, ack).
pub static SOURCE_ERRORS: Lazy<IntCounterVec> = Lazy::new(|| {
    counter_vec(
        "source_errors_total",
        "Pulsar connect, receive and acknowledge failures, by kind",
        &["kind"],
    )
});

/// Acknowledgements sent to the broker.
pub static ACKS: Lazy<IntCounter> =
    Lazy::new(|| counter("acks_total", "Acknowledgements sent to the broker"));

/// Redelivered messages already received in this process, not processed again.
pub static DUPLICATES_SKIPPED: Lazy<IntCounter> = Lazy::new(|| {
    counter(
        "duplicates_skipped_total",
        "Redelivered messages at or below the highest id already received on their partition",
    )
});

/// Dead letters stored, by reason.
pub static DEAD_LETTERS: Lazy<IntCounterVec> = Lazy::new(|| {
    counter_vec(
        "dead_letters_total",
        "Inputs kept as dead letters, by reason",
        &["reason"],
    )
});

/// Dead letters written to the local spool because Postgres refused them.
pub static DEAD_LETTERS_SPOOLED: Lazy<IntCounter> = Lazy::new(|| {
    counter(
        "dead_letters_spooled_total",
        "Dead letters appended to the local spool file",
    )
});

/// Batches committed.
pub static BATCHES: Lazy<IntCounter> = Lazy::new(|| counter("batches_total", "Batches committed"));

/// Time to write one batch.
pub static BATCH_WRITE_SECONDS: Lazy<Histogram> = Lazy::new(|| {
    let h = Histogram::with_opts(
        HistogramOpts::new("batch_write_seconds", "Time to write one batch to Postgres")
            .namespace("lookout_ingester")
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
    )
    .unwrap_or_else(|e| panic!("metric batch_write_seconds is malformed: {e}"));
    let _ = REGISTRY.register(Box::new(h.clone()));
    h
});

/// Messages waiting in the pipeline (received, not yet acknowledged).
pub static IN_FLIGHT: Lazy<IntGauge> = Lazy::new(|| {
    gauge(
        "messages_in_flight",
        "Messages received and not yet acknowledged",
    )
});

/// The text exposition of every metric, for `/metrics`.
pub fn render() -> String {
    let mut buf = Vec::new();
    // Encoding into a Vec cannot fail for well-formed metrics.
    let _ = TextEncoder::new().encode(&REGISTRY.gather(), &mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}
