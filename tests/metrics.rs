//! `/metrics` on a live `run`: every upstream name with upstream's type and
//! label set (the table below is copied from upstream's code), every name
//! registered before the first message, counts as upstream counts them, and
//! JSON logs with a line per committed batch.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use common::broker::{free_port, Broker, Ingester};
use common::*;
use lookout_ingester::sample::*;

/// Upstream's metrics: (name, type, label names). Sources, at 777e10311 and
/// 207cc9e04 unless said otherwise:
/// I = internal/common/ingest/metrics/metrics.go (NewMetrics; 207cc9e04 line numbers),
/// L = internal/lookoutingester/metrics/metrics.go,
/// G = internal/common/logging/prometheus.go.
const UPSTREAM: &[(&str, &str, &[&str])] = &[
    // I:52-55, 91: dbErrorsCounter, CounterVec{"operation"}
    (
        "armada_lookout_ingester_v2_db_errors",
        "counter",
        &["operation"],
    ),
    // I:56-59, 92: pulsarMessageError, CounterVec{"error"}
    (
        "armada_lookout_ingester_v2_pulsar_message_errors",
        "counter",
        &["error"],
    ),
    // I:60-63, 93: pulsarConnectionError, Counter
    (
        "armada_lookout_ingester_v2_pulsar_connection_errors",
        "counter",
        &[],
    ),
    // I:64-67, 96: pulsarMessagesProcessed, Counter
    (
        "armada_lookout_ingester_v2_pulsar_messages_processed",
        "counter",
        &[],
    ),
    // I:68-71, 95: pulsarMessagePublishTime, GaugeVec{"subscription","partition"}
    (
        "armada_lookout_ingester_v2_pulsar_message_publish_time",
        "gauge",
        &["subscription", "partition"],
    ),
    // I:72-75, 94: pulsarMessageProcessingDelay, GaugeVec{"subscription","partition"}
    (
        "armada_lookout_ingester_v2_pulsar_message_processing_delay",
        "gauge",
        &["subscription", "partition"],
    ),
    // I:76-79, 97: eventsProcessed, CounterVec{"queue","eventType","msgType"}
    (
        "armada_lookout_ingester_v2_events_processed",
        "counter",
        &["queue", "eventType", "msgType"],
    ),
    // L:13-19: avRowChangeTimeHist, Histogram
    (
        "armada_lookout_ingester_v2_average_row_change_time",
        "histogram",
        &[],
    ),
    // L:21-28: avRowChangeTimeByOperationHist, HistogramVec{"table","operation"}
    (
        "armada_lookout_ingester_v2_average_row_change_time_by_operation",
        "histogram",
        &["table", "operation"],
    ),
    // L:30-36: rowsChangedCounter, CounterVec{"table","operation"}
    (
        "armada_lookout_ingester_v2_rows_changed",
        "counter",
        &["table", "operation"],
    ),
    // L:38-44 (207cc9e04 only): stateUpdatesCounter, CounterVec{"state"}
    (
        "armada_lookout_ingester_v2_state_updates",
        "counter",
        &["state"],
    ),
    // G:23-29: one Counter per level, ConstLabels{"level"}
    ("log_messages", "counter", &["level"]),
    // client_golang's process collector (Linux), registered by default.
    ("process_cpu_seconds_total", "counter", &[]),
    ("process_open_fds", "gauge", &[]),
    ("process_max_fds", "gauge", &[]),
    ("process_virtual_memory_bytes", "gauge", &[]),
    ("process_virtual_memory_max_bytes", "gauge", &[]),
    ("process_resident_memory_bytes", "gauge", &[]),
    ("process_start_time_seconds", "gauge", &[]),
    ("process_network_receive_bytes_total", "counter", &[]),
    ("process_network_transmit_bytes_total", "counter", &[]),
];

/// L:17 and L:25: the buckets of both row-change-time histograms.
const UPSTREAM_BUCKETS: [&str; 15] = [
    "0.1", "0.2", "0.5", "1", "2", "3", "5", "7", "10", "15", "25", "50", "100", "1000", "+Inf",
];

/// Ours, from the metric-names contract.
const OURS: &[(&str, &str, &[&str])] = &[
    ("lookout_ingester_messages_received_total", "counter", &[]),
    ("lookout_ingester_events_total", "counter", &["kind"]),
    ("lookout_ingester_acks_total", "counter", &[]),
    ("lookout_ingester_batches_total", "counter", &[]),
    ("lookout_ingester_batch_write_seconds", "histogram", &[]),
    (
        "lookout_ingester_db_errors_total",
        "counter",
        &["class", "operation"],
    ),
    (
        "lookout_ingester_dead_letters_total",
        "counter",
        &["reason"],
    ),
    (
        "lookout_ingester_dead_letters_spooled_total",
        "counter",
        &[],
    ),
    ("lookout_ingester_duplicates_skipped_total", "counter", &[]),
    (
        "lookout_ingester_input_errors_total",
        "counter",
        &["reason"],
    ),
    (
        "lookout_ingester_job_updates_filtered_total",
        "counter",
        &[],
    ),
    ("lookout_ingester_messages_in_flight", "gauge", &[]),
    ("lookout_ingester_rows_held", "gauge", &[]),
    ("lookout_ingester_held_bytes", "gauge", &[]),
    (
        "lookout_ingester_row_fallbacks_total",
        "counter",
        &["table"],
    ),
    ("lookout_ingester_rows_failed_total", "counter", &["table"]),
    (
        "lookout_ingester_rows_total",
        "counter",
        &["table", "operation"],
    ),
    ("lookout_ingester_schema_generation", "gauge", &[]),
    ("lookout_ingester_schema_hot_cold", "gauge", &[]),
    ("lookout_ingester_source_errors_total", "counter", &["kind"]),
    (
        "lookout_ingester_strings_sanitised_total",
        "counter",
        &["action"],
    ),
    ("lookout_ingester_lag_seconds", "gauge", &["partition"]),
    ("lookout_ingester_commit_latency_seconds", "histogram", &[]),
    ("lookout_ingester_batch_events", "histogram", &[]),
    ("lookout_ingester_batch_messages", "histogram", &[]),
    ("lookout_ingester_queue_depth", "gauge", &["stage"]),
    ("lookout_ingester_broker_reconnects_total", "counter", &[]),
    (
        "lookout_ingester_last_commit_timestamp_seconds",
        "gauge",
        &[],
    ),
    ("lookout_ingester_build_info", "gauge", &["version"]),
    ("lookout_ingester_ready", "gauge", &[]),
    ("lookout_ingester_healthy", "gauge", &[]),
];

/// One sample: its labels and value.
#[derive(Debug, Clone)]
struct Sample {
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A scrape: types by family, samples by series name.
#[derive(Debug, Default)]
struct Scrape {
    types: BTreeMap<String, String>,
    samples: BTreeMap<String, Vec<Sample>>,
}

/// Parses `k="v",k2="v2"` (values may hold `\"` and `\\`).
fn parse_labels(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut rest = text;
    while let Some(eq) = rest.find("=\"") {
        let key = rest[..eq].trim_start_matches(',').trim().to_string();
        let mut value = String::new();
        let mut chars = rest[eq + 2..].char_indices();
        let mut end = rest.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, n)) = chars.next() {
                        value.push(if n == 'n' { '\n' } else { n });
                    }
                }
                '"' => {
                    end = eq + 2 + i + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        out.insert(key, value);
        rest = &rest[end..];
    }
    out
}

fn parse(text: &str) -> Scrape {
    let mut s = Scrape::default();
    for line in text.lines() {
        if let Some(t) = line.strip_prefix("# TYPE ") {
            let mut p = t.split_whitespace();
            if let (Some(n), Some(k)) = (p.next(), p.next()) {
                s.types.insert(n.to_string(), k.to_string());
            }
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').expect("sample line");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap_or_else(|_| panic!("value of {line}")),
        };
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n, parse_labels(l.trim_end_matches('}'))),
            None => (series, BTreeMap::new()),
        };
        s.samples
            .entry(name.to_string())
            .or_default()
            .push(Sample { labels, value });
    }
    s
}

impl Scrape {
    /// The value of `name` with exactly `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.samples
            .get(name)?
            .iter()
            .find(|s| s.labels == want)
            .map(|s| s.value)
    }

    fn sum(&self, name: &str) -> f64 {
        self.samples
            .get(name)
            .map_or(0.0, |v| v.iter().map(|s| s.value).sum())
    }

    /// Every family in `table` has its type; every sample its label set
    /// (histograms: `_bucket` with `le` too, `_sum` and `_count`).
    fn check_table(&self, table: &[(&str, &str, &[&str])]) {
        for (name, kind, labels) in table {
            assert_eq!(
                self.types.get(*name).map(String::as_str),
                Some(*kind),
                "type of {name}"
            );
            let want: BTreeSet<&str> = labels.iter().copied().collect();
            let series: Vec<(String, BTreeSet<&str>)> = if *kind == "histogram" {
                let mut with_le = want.clone();
                with_le.insert("le");
                vec![
                    (format!("{name}_bucket"), with_le),
                    (format!("{name}_sum"), want.clone()),
                    (format!("{name}_count"), want.clone()),
                ]
            } else {
                vec![(name.to_string(), want.clone())]
            };
            for (series, want) in series {
                for s in self.samples.get(&series).into_iter().flatten() {
                    let got: BTreeSet<&str> = s.labels.keys().map(String::as_str).collect();
                    assert_eq!(got, want, "labels of {series}: {:?}", s.labels);
                }
            }
        }
    }
}

async fn get(port: u16, path: &str) -> Option<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .ok()?;
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.ok()?;
    let mut buf = Vec::new();
    s.read_to_end(&mut buf).await.ok()?;
    let text = String::from_utf8_lossy(&buf).into_owned();
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
    Some((status, body))
}

async fn scrape(port: u16) -> Scrape {
    let (status, body) = get(port, "/metrics").await.expect("scrape");
    assert_eq!(status, 200);
    parse(&body)
}

fn now_secs() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64()
}

/// A live `run` with JSON logs over three messages: one job's whole life
/// (queue q1), an undecodable payload, and a job whose row the database
/// refuses (queue poison, refused by a trigger).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_run_exports_upstreams_metrics_and_ours() {
    let db = TestDb::migrated().await;
    db.client()
        .await
        .batch_execute(
            "CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS $$ \
             BEGIN IF NEW.queue = 'poison' THEN RAISE EXCEPTION 'poisoned row'; END IF; \
             RETURN NEW; END $$; \
             CREATE TRIGGER poison BEFORE INSERT ON job FOR EACH ROW EXECUTE FUNCTION poison();",
        )
        .await
        .expect("trigger");
    let broker = Broker::start().await;
    let port = free_port();
    let port_text = port.to_string();
    let url = broker.url();
    let mut ing = Ingester::spawn_args(
        &[
            "run",
            "--database-url",
            &db.url,
            "--pulsar-url",
            &url,
            "--topic",
            "events",
            "--metrics-port",
            &port_text,
            "--batch-duration",
            "100ms",
            "--log-format",
            "json",
        ],
        broker.dir.path().join("ing.log"),
    );

    // Registered at start-up: every name is there before any message.
    let start = Instant::now();
    let first = loop {
        if let Some((200, body)) = get(port, "/metrics").await {
            break parse(&body);
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "{}",
            ing.log_tail(20)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    for (name, kind, _) in UPSTREAM.iter().chain(OURS) {
        assert_eq!(
            first.types.get(*name).map(String::as_str),
            Some(*kind),
            "{name} not registered at start-up"
        );
    }
    first.check_table(UPSTREAM);
    first.check_table(OURS);
    assert_eq!(
        first.value(
            "armada_lookout_ingester_v2_db_errors",
            &[("operation", "read")]
        ),
        Some(0.0)
    );
    assert_eq!(
        first.value(
            "lookout_ingester_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        Some(1.0)
    );
    assert_eq!(first.sum("lookout_ingester_queue_depth"), 0.0);
    assert_eq!(
        first.samples["lookout_ingester_queue_depth"].len(),
        4,
        "received, batched, converted, committed"
    );

    let life = sequence(
        "q1",
        "js",
        "alice",
        vec![
            event(
                Some(ts(1_700_000_000)),
                submit("job-metrics-1", "ns", 1, &[("cpu", "1")], None, &[]),
            ),
            event(
                Some(ts(1_700_000_001)),
                leased("job-metrics-1", "run-metrics-1", "c", "n", "p"),
            ),
            event(
                Some(ts(1_700_000_002)),
                running("job-metrics-1", "run-metrics-1", Some("n")),
            ),
            event(
                Some(ts(1_700_000_003)),
                run_succeeded("job-metrics-1", "run-metrics-1"),
            ),
            event(Some(ts(1_700_000_004)), job_succeeded("job-metrics-1")),
        ],
    );
    let poisoned = sequence(
        "poison",
        "js",
        "bob",
        vec![event(
            Some(ts(1_700_000_005)),
            submit("job-metrics-2", "ns", 1, &[("cpu", "1")], None, &[]),
        )],
    );
    let mut messages = payloads(&[life]);
    messages.push(vec![0xff, 0xff]);
    messages.extend(payloads(&[poisoned]));
    broker.publish("events", messages).await;

    // Every message acknowledged.
    let start = Instant::now();
    let s = loop {
        let s = scrape(port).await;
        if s.value("armada_lookout_ingester_v2_pulsar_messages_processed", &[]) == Some(3.0) {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "not all processed: {:?}\n{}",
            s.samples
                .get("armada_lookout_ingester_v2_pulsar_messages_processed"),
            ing.log_tail(30)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    s.check_table(UPSTREAM);
    s.check_table(OURS);

    // Upstream's counts.
    let up = |name: &str, labels: &[(&str, &str)]| {
        s.value(&format!("armada_lookout_ingester_v2_{name}"), labels)
    };
    for msg_type in [
        "SubmitJob",
        "JobRunLeased",
        "JobRunRunning",
        "JobRunSucceeded",
        "JobSucceeded",
    ] {
        assert_eq!(
            up(
                "events_processed",
                &[
                    ("queue", "q1"),
                    ("eventType", "jobSet"),
                    ("msgType", msg_type)
                ]
            ),
            Some(1.0),
            "{msg_type}"
        );
    }
    assert_eq!(
        up(
            "events_processed",
            &[
                ("queue", "poison"),
                ("eventType", "jobSet"),
                ("msgType", "SubmitJob")
            ]
        ),
        Some(1.0)
    );
    assert_eq!(
        up("pulsar_message_errors", &[("error", "deserialization")]),
        Some(1.0)
    );
    assert_eq!(
        up("pulsar_message_errors", &[("error", "processing")]),
        Some(0.0)
    );
    // Both job creations are instructions, the refused one too (as upstream).
    assert_eq!(
        up("rows_changed", &[("table", "job"), ("operation", "insert")]),
        Some(2.0)
    );
    assert_eq!(
        up(
            "rows_changed",
            &[("table", "job_run"), ("operation", "insert")]
        ),
        Some(1.0)
    );
    // The refused insert failed as a batch and again on its own at least.
    let insert_errors = up("db_errors", &[("operation", "insert")]).unwrap_or(0.0);
    assert!(insert_errors >= 2.0, "db_errors insert {insert_errors}");
    assert!(s.sum("armada_lookout_ingester_v2_state_updates") >= 1.0);
    assert!(up("average_row_change_time_count", &[]).unwrap_or(0.0) >= 1.0);
    assert!(
        up(
            "average_row_change_time_by_operation_count",
            &[("table", "job"), ("operation", "insert")]
        )
        .unwrap_or(0.0)
            >= 1.0
    );
    let les: Vec<String> = s.samples["armada_lookout_ingester_v2_average_row_change_time_bucket"]
        .iter()
        .map(|b| b.labels["le"].clone())
        .collect();
    assert_eq!(les, UPSTREAM_BUCKETS);
    let sub = [("subscription", "lookout-ingester-v2"), ("partition", "0")];
    let published = up("pulsar_message_publish_time", &sub).expect("publish time");
    assert!(
        (published - now_secs()).abs() < 600.0,
        "publish time {published}"
    );
    assert_eq!(up("pulsar_message_processing_delay", &sub), Some(0.0));
    assert!(s.value("log_messages", &[("level", "info")]).unwrap_or(0.0) > 0.0);
    assert!(
        s.value("log_messages", &[("level", "error")])
            .unwrap_or(0.0)
            >= 1.0
    );
    assert!(s.value("process_start_time_seconds", &[]).unwrap_or(0.0) > 1.6e9);

    // Ours.
    assert_eq!(
        s.value("lookout_ingester_lag_seconds", &[("partition", "0")]),
        Some(0.0),
        "nothing waits"
    );
    assert_eq!(
        s.value("lookout_ingester_commit_latency_seconds_count", &[]),
        Some(6.0),
        "one per event"
    );
    assert!(s.value("lookout_ingester_batch_messages_sum", &[]) == Some(3.0));
    assert!(s.value("lookout_ingester_batch_events_sum", &[]) == Some(6.0));
    let last = s
        .value("lookout_ingester_last_commit_timestamp_seconds", &[])
        .unwrap_or(0.0);
    assert!((now_secs() - last).abs() < 120.0, "last commit {last}");
    assert_eq!(s.value("lookout_ingester_ready", &[]), Some(1.0));
    assert_eq!(s.value("lookout_ingester_healthy", &[]), Some(1.0));
    assert_eq!(
        s.value("lookout_ingester_broker_reconnects_total", &[]),
        Some(0.0)
    );
    assert_eq!(
        s.value(
            "lookout_ingester_dead_letters_total",
            &[("reason", "decode")]
        ),
        Some(1.0)
    );

    ing.terminate(Duration::from_secs(15)).await;

    // JSON logs: every line an object with timestamp, level and message;
    // one `batch committed` line per batch, with its counts.
    let log = ing.log_text();
    let mut batch_lines = Vec::new();
    for line in log.lines() {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        for field in ["timestamp", "level", "message"] {
            assert!(v.get(field).is_some(), "no {field}: {line}");
        }
        if v["message"] == "batch committed" {
            assert_eq!(v["level"], "INFO");
            batch_lines.push(v);
        }
    }
    assert!(!batch_lines.is_empty(), "{log}");
    let total = |f: &str| -> u64 { batch_lines.iter().filter_map(|v| v[f].as_u64()).sum() };
    assert_eq!(total("messages"), 3, "{batch_lines:?}");
    assert_eq!(total("events"), 6);
    assert_eq!(total("job_inserted"), 2);
    assert_eq!(total("job_run_inserted"), 1);
    assert!(batch_lines
        .iter()
        .all(|v| v["duration_ms"].is_u64() && v["lag_s"].as_f64().is_some_and(|l| l >= 0.0)));
    assert_eq!(
        count(&db.client().await, "job").await,
        1,
        "the poisoned job is not written"
    );

    broker.stop().await;
    db.drop_db().await;
}
