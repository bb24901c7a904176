//! Prometheus metrics: every error path and every write is counted here.
//!
//! Names carry the `lookout_ingester_` prefix. The counters are
//! process-global statics, bumped by the store, the source, the pipeline
//! and `telemetry` (which counts and logs each failure once), never by the
//! converter, which returns what it counted. They are registered together by [`register`] at start-up, so
//! every name is on `/metrics` from the first scrape; `telemetry` also
//! creates the known label values there, so they show as 0.

use std::sync::{LazyLock, Once};

use prometheus::core::Collector;
use prometheus::{
    Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
    TextEncoder,
};

pub static REGISTRY: LazyLock<Registry> = LazyLock::new(Registry::new);

fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    IntCounterVec::new(Opts::new(name, help).namespace("lookout_ingester"), labels)
        .unwrap_or_else(|e| panic!("metric {name} is malformed: {e}"))
}

fn counter(name: &str, help: &str) -> IntCounter {
    IntCounter::with_opts(Opts::new(name, help).namespace("lookout_ingester"))
        .unwrap_or_else(|e| panic!("metric {name} is malformed: {e}"))
}

fn gauge(name: &str, help: &str) -> IntGauge {
    IntGauge::with_opts(Opts::new(name, help).namespace("lookout_ingester"))
        .unwrap_or_else(|e| panic!("metric {name} is malformed: {e}"))
}

/// Messages (or file records) read from the source.
pub static MESSAGES_RECEIVED: LazyLock<IntCounter> =
    LazyLock::new(|| counter("messages_received_total", "Messages read from the source"));

/// Events converted, by event kind.
pub static EVENTS: LazyLock<IntCounterVec> =
    LazyLock::new(|| counter_vec("events_total", "Events seen, by event kind", &["kind"]));

/// Inputs that could not be used whole, by reason (decode, empty_queue, missing_created, ...).
pub static INPUT_ERRORS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "input_errors_total",
        "Messages or events that could not be applied as they are, by reason",
        &["reason"],
    )
});

/// Strings changed to fit a column, by what was done (nul_removed, truncated).
pub static SANITISED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "strings_sanitised_total",
        "Strings altered to fit their column, by action",
        &["action"],
    )
});

/// Rows written, by table and operation (insert, update).
pub static ROWS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "rows_total",
        "Row instructions applied, by table and operation",
        &["table", "operation"],
    )
});

/// Row instructions that could not be written even row by row.
pub static ROWS_FAILED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "rows_failed_total",
        "Row instructions that failed even row by row, by table",
        &["table"],
    )
});

/// Job updates dropped because the job is already terminal.
pub static TERMINAL_FILTERED: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "job_updates_filtered_total",
        "Job updates dropped because the job was already terminal",
    )
});

/// Postgres errors, by class (retryable or not) and operation.
pub static DB_ERRORS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "db_errors_total",
        "Postgres errors, by class and operation",
        &["class", "operation"],
    )
});

/// Batches fallen back to row-by-row writing.
pub static FALLBACKS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "row_fallbacks_total",
        "Batches that fell back to row-by-row writes, by table",
        &["table"],
    )
});

/// Broker-side problems, by kind (connect, stream, ack).
pub static SOURCE_ERRORS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "source_errors_total",
        "Pulsar connect, receive and acknowledge failures, by kind",
        &["kind"],
    )
});

/// Acknowledgements sent to the broker.
pub static ACKS: LazyLock<IntCounter> =
    LazyLock::new(|| counter("acks_total", "Acknowledgements sent to the broker"));

/// Redelivered messages already received in this process, not processed again.
pub static DUPLICATES_SKIPPED: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "duplicates_skipped_total",
        "Redelivered messages at or below the highest id already received on their partition",
    )
});

/// Dead letters stored, by reason.
pub static DEAD_LETTERS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    counter_vec(
        "dead_letters_total",
        "Inputs kept as dead letters, by reason",
        &["reason"],
    )
});

/// Dead letters written to the local spool because Postgres refused them.
pub static DEAD_LETTERS_SPOOLED: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "dead_letters_spooled_total",
        "Dead letters appended to the local spool file",
    )
});

/// Batches committed.
pub static BATCHES: LazyLock<IntCounter> =
    LazyLock::new(|| counter("batches_total", "Batches committed"));

/// Time to write one batch.
pub static BATCH_WRITE_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    Histogram::with_opts(
        HistogramOpts::new("batch_write_seconds", "Time to write one batch to Postgres")
            .namespace("lookout_ingester")
            .buckets(vec![
                0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
            ]),
    )
    .unwrap_or_else(|e| panic!("metric batch_write_seconds is malformed: {e}"))
});

/// Messages waiting in the pipeline (received, not yet acknowledged).
pub static IN_FLIGHT: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "messages_in_flight",
        "Messages received and not yet acknowledged",
    )
});

/// The Lookout schema generation the ingester writes for (31..35; 0 until
/// it is known).
pub static SCHEMA_GENERATION: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "schema_generation",
        "Lookout schema generation (upstream migration number) the ingester writes for",
    )
});

/// 1 when `job` is split into hot and cold partitions (upstream's
/// experimental layout), else 0.
pub static SCHEMA_HOT_COLD: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "schema_hot_cold",
        "1 if the job table is split into hot and cold partitions, else 0",
    )
});

/// 1 while `/readyz` says ready, else 0.
pub static READY: LazyLock<IntGauge> =
    LazyLock::new(|| gauge("ready", "1 while /readyz says ready, else 0"));

/// 1 while `/healthz` says healthy, else 0.
pub static HEALTHY: LazyLock<IntGauge> =
    LazyLock::new(|| gauge("healthy", "1 while /healthz says healthy, else 0"));

/// Every metric, in exposition order: the one list [`register`] uses.
fn all() -> Vec<Box<dyn Collector>> {
    vec![
        Box::new(MESSAGES_RECEIVED.clone()),
        Box::new(EVENTS.clone()),
        Box::new(INPUT_ERRORS.clone()),
        Box::new(SANITISED.clone()),
        Box::new(ROWS.clone()),
        Box::new(ROWS_FAILED.clone()),
        Box::new(TERMINAL_FILTERED.clone()),
        Box::new(DB_ERRORS.clone()),
        Box::new(FALLBACKS.clone()),
        Box::new(SOURCE_ERRORS.clone()),
        Box::new(ACKS.clone()),
        Box::new(DUPLICATES_SKIPPED.clone()),
        Box::new(DEAD_LETTERS.clone()),
        Box::new(DEAD_LETTERS_SPOOLED.clone()),
        Box::new(BATCHES.clone()),
        Box::new(BATCH_WRITE_SECONDS.clone()),
        Box::new(IN_FLIGHT.clone()),
        Box::new(SCHEMA_GENERATION.clone()),
        Box::new(SCHEMA_HOT_COLD.clone()),
        Box::new(READY.clone()),
        Box::new(HEALTHY.clone()),
    ]
}

/// Registers every metric into `registry`; fails on a name registered twice.
fn register_into(registry: &Registry) -> prometheus::Result<()> {
    all().into_iter().try_for_each(|c| registry.register(c))
}

/// Registers every metric in [`REGISTRY`], once per process; later calls do
/// nothing. Called at start-up and by [`render`], so a scrape never misses
/// a name. Label values are pre-created by `telemetry::register`.
pub fn register() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        if let Err(e) = register_into(&REGISTRY) {
            // Only a programming error (a duplicate name) gets here; the
            // unit tests rule it out, and counting still works unexported.
            tracing::error!("metrics not registered: {e}");
        }
    });
}

/// The text exposition of every metric, for `/metrics`.
pub fn render() -> String {
    register();
    let mut buf = Vec::new();
    // Encoding into a Vec cannot fail for well-formed metrics.
    let _ = TextEncoder::new().encode(&REGISTRY.gather(), &mut buf);
    String::from_utf8_lossy(&buf).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The full names, from the metrics themselves.
    fn names() -> Vec<String> {
        all()
            .iter()
            .flat_map(|c| c.desc().into_iter().map(|d| d.fq_name.clone()))
            .collect()
    }

    #[test]
    fn each_name_is_registered_exactly_once() {
        let names = names();
        assert_eq!(names.len(), 21);
        let unique: std::collections::BTreeSet<&String> = names.iter().collect();
        assert_eq!(unique.len(), names.len(), "{names:?}");
        // A fresh registry takes every metric once and refuses a second copy.
        let registry = Registry::new();
        register_into(&registry).expect("every metric registers once");
        assert!(register_into(&registry).is_err());
        // And the process registry holds exactly these, however often
        // `register` is called (label values created so none is pruned).
        register();
        crate::telemetry::register();
        let mut registered: Vec<String> = REGISTRY
            .gather()
            .iter()
            .map(|mf| mf.get_name().to_string())
            .collect();
        registered.sort();
        let mut expected = names.clone();
        expected.sort();
        assert_eq!(registered, expected);
    }

    #[test]
    fn render_shows_every_name_after_registration() {
        crate::telemetry::register();
        let text = render();
        for name in names() {
            assert!(
                text.contains(&format!("# TYPE {name} ")),
                "{name} missing from:\n{text}"
            );
        }
    }
}
