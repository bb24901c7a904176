//! `lookout-ingester bench` end to end: a small run without the broker and
//! one with it, checking the figures' JSON line (present, positive, the
//! replayed rows equal to what the workload should give) and that nothing
//! it created is left behind. No timing targets.

mod common;

use serde_json::Value;

/// The bench databases that exist now.
async fn bench_databases() -> Vec<String> {
    let admin = common::connect(&common::admin_url()).await;
    admin
        .query(
            "SELECT datname FROM pg_database WHERE datname LIKE 'lookout\\_bench\\_%' ORDER BY 1",
            &[],
        )
        .await
        .expect("list databases")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// The tests of this file one at a time, so that one's databases are not
/// taken for another's leftovers.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Runs `bench` with `args`; its JSON line, after checking the run.
async fn bench(args: &[&str]) -> Value {
    let _one_at_a_time = SERIAL.lock().await;
    let before = bench_databases().await;
    let url = common::admin_url();
    let mut all = vec!["bench", "--database-url", url.as_str()];
    all.extend_from_slice(args);
    let out = common::cli(&all).await;
    assert_eq!(out.code, Some(0), "bench: {}\n{}", out.stdout, out.stderr);
    let last = out.stdout.lines().last().expect("output");
    let json: Value = serde_json::from_str(last).expect("the last line is JSON");
    // The table comes before it.
    assert!(out.stdout.contains("replay / ceiling"), "{}", out.stdout);
    assert_eq!(bench_databases().await, before, "bench left databases");
    json
}

fn positive(j: &Value, key: &str) -> f64 {
    let v = j[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} missing in {j}"));
    assert!(v > 0.0 && v.is_finite(), "{key} = {v} in {j}");
    v
}

fn check_replay(j: &Value, events: u64) {
    let got = j["events"].as_u64().expect("events");
    assert!(got >= events && got < events + 50, "events {got}");
    for key in [
        "copy_ceiling_rows_per_s",
        "copy_one_connection_rows_per_s",
        "replay_rows_per_s",
        "replay_row_ops_per_s",
        "replay_events_per_s",
        "replay_to_ceiling_ratio",
        "peak_rss_mib",
    ] {
        positive(j, key);
    }
    assert_eq!(j["replay_rows"], j["final_rows"], "{j}");
    // Every job has a job and a job_spec row; every replayed row is at
    // least one operation.
    let jobs = j["jobs"].as_u64().expect("jobs");
    assert!(j["final_rows"].as_u64().expect("final_rows") > 2 * jobs);
    assert!(j["replay_row_ops"].as_u64() >= j["replay_rows"].as_u64());
}

#[tokio::test]
async fn bench_without_live_reports_replay_and_ceiling() {
    let j = bench(&["--events", "3000", "--no-live", "--seed", "4"]).await;
    check_replay(&j, 3000);
    assert_eq!(j["failure_info"], Value::Bool(true));
    for key in [
        "live_events_per_s",
        "live_to_consume_ceiling_ratio",
        "live_p50_latency_ms",
        "live_p99_latency_ms",
        "latency_rate_per_s",
    ] {
        assert!(j[key].is_null(), "{key} in {j}");
    }
    // Without FailureInfo the same workload replays the same rows.
    let without = bench(&[
        "--events",
        "3000",
        "--no-live",
        "--seed",
        "4",
        "--no-failure-info",
    ])
    .await;
    assert_eq!(without["failure_info"], Value::Bool(false));
    assert_eq!(without["final_rows"], j["final_rows"]);
}

#[tokio::test]
async fn bench_with_live_reports_catch_up_and_latency() {
    let broker = common::broker::Broker::start().await;
    let url = broker.url();
    let j = bench(&[
        "--events",
        "2000",
        "--pulsar-url",
        &url,
        "--latency-secs",
        "2",
    ])
    .await;
    check_replay(&j, 2000);
    // Published as Armada publishes, batched (the default).
    assert_eq!(j["producer_batch"], 1000);
    for key in [
        "live_events_per_s",
        "live_messages_per_s",
        "consume_ceiling_messages_per_s",
        "live_to_consume_ceiling_ratio",
        "live_peak_rss_mib",
        "latency_rate_per_s",
        "live_p50_latency_ms",
        "live_p95_latency_ms",
        "live_p99_latency_ms",
        "live_1k_p50_latency_ms",
        "live_1k_p99_latency_ms",
        "batched_consume_messages_per_s",
        "batched_live_messages_per_s",
        "batched_live_events_per_s",
        "batched_live_peak_rss_mib",
        "steady_max_messages_per_s",
        "catch_up_half_rate_per_s",
        "catch_up_half_p50_latency_ms",
        "catch_up_half_p99_latency_ms",
    ] {
        positive(&j, key);
    }
    assert!(positive(&j, "live_p99_latency_ms") >= positive(&j, "live_p50_latency_ms"));
    // The latency part runs at half the sustained maximum (nothing held),
    // and again at half the holding catch-up rate.
    let half = (positive(&j, "steady_max_messages_per_s") / 2.0)
        .max(1.0)
        .round();
    assert_eq!(positive(&j, "latency_rate_per_s"), half);
    let catch_up = (positive(&j, "batched_live_messages_per_s") / 2.0)
        .max(1.0)
        .round();
    assert_eq!(positive(&j, "catch_up_half_rate_per_s"), catch_up);
    broker.stop().await;
}
