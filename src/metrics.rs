//! Prometheus metrics: every error path and every write is counted here.
//!
//! Names carry the `lookout_ingester_` prefix. The counters are
//! process-global statics, bumped by the store, the source, the pipeline
//! and `telemetry` (which counts and logs each failure once), never by the
//! converter, which returns what it counted. They are registered together by [`register`] at start-up, so
//! every name is on `/metrics` from the first scrape; `telemetry` also
//! creates the known label values there, so they show as 0. A family whose
//! label values come from the data (a queue, a partition) is listed by its
//! `# HELP` and `# TYPE` lines until its first sample.
//!
//! Beside ours: upstream's names ([`upstream`]) and the `process_*`
//! metrics ([`process`] adds what the crate's collector lacks).

pub mod process;
pub mod upstream;

use std::collections::BTreeMap;
use std::sync::{LazyLock, Mutex, Once};

use prometheus::core::Collector;
use prometheus::proto::MetricType;
use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
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

fn histogram(name: &str, help: &str, buckets: &[f64]) -> Histogram {
    Histogram::with_opts(
        HistogramOpts::new(name, help)
            .namespace("lookout_ingester")
            .buckets(buckets.to_vec()),
    )
    .unwrap_or_else(|e| panic!("metric {name} is malformed: {e}"))
}

fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    IntGaugeVec::new(Opts::new(name, help).namespace("lookout_ingester"), labels)
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

/// Job and run rows held back across batches under a backlog (see
/// `hold`), and the bytes held for them.
pub static HELD_ROWS: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "rows_held",
        "Rows of open jobs and runs held back across batches under a backlog, not yet written",
    )
});
pub static HELD_BYTES: LazyLock<IntGauge> = LazyLock::new(|| {
    gauge(
        "held_bytes",
        "Bytes of held rows and of the messages kept for them",
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

/// Seconds the subscription is behind, per partition: now minus the publish
/// time of the oldest message received and not yet acknowledged (the first
/// one not committed); 0 when nothing waits.
pub static LAG_SECONDS: LazyLock<GaugeVec> = LazyLock::new(|| {
    GaugeVec::new(
        Opts::new(
            "lag_seconds",
            "Now minus the publish time of the oldest unacknowledged message, per partition; 0 when nothing waits",
        )
        .namespace("lookout_ingester"),
        &["partition"],
    )
    .unwrap_or_else(|e| panic!("metric lag_seconds is malformed: {e}"))
});

/// Seconds from an event's `created` time to the commit of its batch.
pub static COMMIT_LATENCY_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        "commit_latency_seconds",
        "Seconds from an event's created time to the commit of its batch",
        &[
            0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
            21600.0, 86400.0,
        ],
    )
});

const BATCH_SIZE_BUCKETS: [f64; 12] = [
    1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 25000.0, 50000.0,
];

/// Events per committed batch.
pub static BATCH_EVENTS: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        "batch_events",
        "Events per committed batch",
        &BATCH_SIZE_BUCKETS,
    )
});

/// Messages per committed batch.
pub static BATCH_MESSAGES: LazyLock<Histogram> = LazyLock::new(|| {
    histogram(
        "batch_messages",
        "Messages per committed batch",
        &BATCH_SIZE_BUCKETS,
    )
});

/// Items waiting in each pipeline queue, read at scrape time.
pub static QUEUE_DEPTH: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge_vec(
        "queue_depth",
        "Items waiting in a pipeline queue: received messages, pieces of batches to convert (256 messages or 256 KiB each), batches converted, batches committed",
        &["stage"],
    )
});

/// Consumer rebuilt after the connection to the broker was lost or refused.
pub static BROKER_RECONNECTS: LazyLock<IntCounter> = LazyLock::new(|| {
    counter(
        "broker_reconnects_total",
        "Subscriptions re-established after the connection to the broker was lost",
    )
});

/// Unix seconds of the last committed batch (0 before the first).
pub static LAST_COMMIT_TIMESTAMP: LazyLock<Gauge> = LazyLock::new(|| {
    Gauge::with_opts(
        Opts::new(
            "last_commit_timestamp_seconds",
            "Unix time of the last committed batch",
        )
        .namespace("lookout_ingester"),
    )
    .unwrap_or_else(|e| panic!("metric last_commit_timestamp_seconds is malformed: {e}"))
});

/// 1, labelled with this binary's version.
pub static BUILD_INFO: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    gauge_vec(
        "build_info",
        "Always 1; the version label is this binary's",
        &["version"],
    )
});

/// 1 while `/readyz` answers 200, else 0 (read at scrape time).
pub static READY: LazyLock<IntGauge> =
    LazyLock::new(|| gauge("ready", "1 while /readyz answers 200, else 0"));

/// 1 while `/healthz` answers 200, else 0 (read at scrape time).
pub static HEALTHY: LazyLock<IntGauge> =
    LazyLock::new(|| gauge("healthy", "1 while /healthz answers 200, else 0"));

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
        Box::new(HELD_ROWS.clone()),
        Box::new(HELD_BYTES.clone()),
        Box::new(SCHEMA_GENERATION.clone()),
        Box::new(SCHEMA_HOT_COLD.clone()),
        Box::new(LAG_SECONDS.clone()),
        Box::new(COMMIT_LATENCY_SECONDS.clone()),
        Box::new(BATCH_EVENTS.clone()),
        Box::new(BATCH_MESSAGES.clone()),
        Box::new(QUEUE_DEPTH.clone()),
        Box::new(BROKER_RECONNECTS.clone()),
        Box::new(LAST_COMMIT_TIMESTAMP.clone()),
        Box::new(BUILD_INFO.clone()),
        Box::new(READY.clone()),
        Box::new(HEALTHY.clone()),
    ]
}

/// Every collector: ours, upstream's, and (Linux) the process metrics.
fn collectors() -> Vec<Box<dyn Collector>> {
    let mut c = all();
    c.extend(upstream::all());
    #[cfg(target_os = "linux")]
    {
        c.push(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ));
        c.push(Box::new(process::Extra::new()));
    }
    c
}

/// Every family exported, as (name, type), sorted by name: what the README
/// table must list. Process metrics only on Linux.
pub fn families() -> Vec<(String, &'static str)> {
    let mut out: Vec<(String, &'static str)> = collectors()
        .iter()
        .flat_map(|c| c.collect())
        .map(|mf| (mf.get_name().to_string(), type_name(mf.get_field_type())))
        .collect();
    out.sort();
    out.dedup();
    out
}

fn type_name(t: MetricType) -> &'static str {
    match t {
        MetricType::COUNTER => "counter",
        MetricType::GAUGE => "gauge",
        MetricType::HISTOGRAM => "histogram",
        MetricType::SUMMARY => "summary",
        MetricType::UNTYPED => "untyped",
    }
}

/// Work to do just before each scrape (gauges read from live state),
/// by name: registering a name again replaces its hook.
type Hook = Box<dyn Fn() + Send + Sync>;
static SCRAPE_HOOKS: LazyLock<Mutex<BTreeMap<&'static str, Hook>>> =
    LazyLock::new(|| Mutex::new(BTreeMap::new()));

/// Runs `hook` before every scrape from now on (replacing one under `name`).
pub fn on_scrape(name: &'static str, hook: impl Fn() + Send + Sync + 'static) {
    if let Ok(mut hooks) = SCRAPE_HOOKS.lock() {
        hooks.insert(name, Box::new(hook));
    }
}

/// Label values known in advance for the new metrics and upstream's.
fn precreate() {
    BUILD_INFO
        .with_label_values(&[env!("CARGO_PKG_VERSION")])
        .set(1);
    for stage in QUEUE_STAGES {
        QUEUE_DEPTH.with_label_values(&[stage]);
    }
    let steps: Vec<(&str, &str)> = crate::store::STEPS
        .iter()
        .map(|s| (s.table().as_str(), s.operation().as_str()))
        .collect();
    upstream::precreate(&steps);
}

/// The `stage` values of [`QUEUE_DEPTH`], in flow order.
pub const QUEUE_STAGES: [&str; 4] = ["received", "batched", "converted", "committed"];

/// Registers every metric into `registry`; fails on a name registered twice.
fn register_into(registry: &Registry) -> prometheus::Result<()> {
    collectors()
        .into_iter()
        .try_for_each(|c| registry.register(c))
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
        precreate();
    });
}

/// The text exposition of every metric, for `/metrics`. A family without
/// samples yet (its labels come from the data) is listed by its `# HELP`
/// and `# TYPE` lines, so every name is there from the first scrape.
pub fn render() -> String {
    register();
    if let Ok(hooks) = SCRAPE_HOOKS.lock() {
        hooks.values().for_each(|h| h());
    }
    let gathered = REGISTRY.gather();
    let mut buf = Vec::new();
    // Encoding into a Vec cannot fail for well-formed metrics.
    let _ = TextEncoder::new().encode(&gathered, &mut buf);
    let mut text = String::from_utf8_lossy(&buf).into_owned();
    let present: std::collections::BTreeSet<&str> =
        gathered.iter().map(|mf| mf.get_name()).collect();
    // Process metrics always have samples; only ours and upstream's can lack them.
    let mut empty: Vec<(String, String, &str)> = all()
        .into_iter()
        .chain(upstream::all())
        .flat_map(|c| c.collect())
        .filter(|mf| !present.contains(mf.get_name()))
        .map(|mf| {
            let help = mf.get_help().replace('\\', "\\\\").replace('\n', "\\n");
            (
                mf.get_name().to_string(),
                help,
                type_name(mf.get_field_type()),
            )
        })
        .collect();
    empty.sort();
    empty.dedup();
    for (name, help, kind) in empty {
        text.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The full names of ours and upstream's, from the metrics themselves.
    fn names() -> Vec<String> {
        all()
            .into_iter()
            .chain(upstream::all())
            .flat_map(|c| {
                c.desc()
                    .into_iter()
                    .map(|d| d.fq_name.clone())
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn each_name_is_registered_exactly_once() {
        let names = names();
        assert_eq!(names.len(), 31 + 12);
        let unique: std::collections::BTreeSet<&String> = names.iter().collect();
        assert_eq!(unique.len(), names.len(), "{names:?}");
        // A fresh registry takes every metric once and refuses a second copy.
        let registry = Registry::new();
        register_into(&registry).expect("every metric registers once");
        assert!(register_into(&registry).is_err());
        // And the process registry holds these (those with samples), however
        // often `register` is called.
        register();
        crate::telemetry::register();
        let registered: std::collections::BTreeSet<String> = REGISTRY
            .gather()
            .iter()
            .map(|mf| mf.get_name().to_string())
            .collect();
        for name in &registered {
            assert!(
                names.contains(name) || name.starts_with("process_"),
                "{name} is registered but not listed"
            );
        }
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
        #[cfg(target_os = "linux")]
        for name in [
            "process_cpu_seconds_total",
            "process_resident_memory_bytes",
            "process_start_time_seconds",
            "process_virtual_memory_max_bytes",
        ] {
            assert!(text.contains(&format!("# TYPE {name} ")), "{name}");
        }
        // Counters of upstream's are written without `_total`, as its Go client does.
        assert!(text.contains("# TYPE armada_lookout_ingester_v2_db_errors counter"));
        assert!(text.contains("armada_lookout_ingester_v2_db_errors{operation=\"read\"} 0"));
        assert!(text.contains("log_messages{level=\"warn\"}"));
    }

    /// The README's metrics table: (name, type) of every row.
    fn readme_table() -> Vec<(String, String)> {
        let readme = include_str!("../README.md");
        let section = readme
            .split("\n## Metrics\n")
            .nth(1)
            .and_then(|s| s.split("\n## ").next())
            .unwrap_or("");
        section
            .lines()
            .filter_map(|l| {
                let cells: Vec<&str> = l.split('|').map(str::trim).collect();
                // | `name` | type | labels | meaning |
                let name = cells.get(1)?.strip_prefix('`')?.strip_suffix('`')?;
                Some((name.to_string(), cells.get(2)?.to_string()))
            })
            .collect()
    }

    #[test]
    fn readme_lists_every_metric_with_its_type() {
        let table = readme_table();
        assert!(
            !table.is_empty(),
            "no metrics table in README's Metrics section"
        );
        let documented: std::collections::BTreeSet<(String, String)> =
            table.iter().cloned().collect();
        assert_eq!(documented.len(), table.len(), "a metric is listed twice");
        let exported: std::collections::BTreeSet<(String, String)> = families()
            .into_iter()
            .map(|(n, t)| (n, t.to_string()))
            .collect();
        #[cfg(target_os = "linux")]
        assert_eq!(documented, exported);
        #[cfg(not(target_os = "linux"))]
        assert!(exported.is_subset(&documented));
    }
}
