//! `report failures` end to end: one event stream with failed runs in this
//! period, the previous one and before, replayed through the binary into a
//! database at generation 031 (FailureInfo) and one at 035 (failure
//! categories); the report is run through the binary and its counts, top
//! messages, change, `--queue` filter, JSON shape, text and HTML checked.
//! A hostile message (markup, an escape sequence) must reach neither the
//! terminal nor the page raw. An unreachable database ends the command
//! after `--retry-for` with the cause.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{cli, migrate_cli, payloads, replay_cli, write_recording, TestDb};
use lookout_ingester::proto::armadaevents as ev;
use lookout_ingester::sample::{
    self, categorised_error, event, leased, pod_error, run_errors, run_succeeded, running, submit,
};
use prost_types::Timestamp;
use serde_json::{json, Value};

use ev::event_sequence::event::Event as Kind;

/// The end of the reported period: 2026-01-11T00:00:00Z.
const UNTIL: &str = "2026-01-11T00:00:00Z";
const HOSTILE: &str = "<script>alert('x')</script>\u{1b}[2J\nboom";
/// `HOSTILE` as the report shows it: the escape character and the newline
/// are spaces.
const HOSTILE_SHOWN: &str = "<script>alert('x')</script> [2J boom";
const OOM_INFO: &str = "OOMKilled: memory limit 1Gi exceeded";
const OOM_POD: &str = "container main was OOMKilled";

/// `minutes` before [`UNTIL`].
fn before(minutes: i64) -> Timestamp {
    Timestamp {
        seconds: sample::ts(10 * 86_400).seconds - minutes * 60,
        nanos: 0,
    }
}

/// How a run ends.
#[derive(Clone, Copy)]
enum End {
    /// A terminal pod error: category, subcategory, container exit code,
    /// FailureInfo exit code, FailureInfo termination message, pod message.
    Pod(
        &'static str,
        &'static str,
        i32,
        i32,
        &'static str,
        &'static str,
    ),
    /// A terminal reconciliation error: no category, no exit code.
    Reconciliation,
    /// A non-terminal error: the run is not finished, so not counted.
    Transient,
    Succeeded,
}

/// Submit, lease, run and end job `n` in `queue`, ending `minutes` before
/// the end of the period.
fn life(n: usize, queue: &str, minutes: i64, end: End) -> Vec<ev::EventSequence> {
    let job = format!("report-job-{n}");
    let run = format!("report-run-{n}");
    let at = |m: i64, kind: Kind| {
        sample::sequence(queue, "js", "bob", vec![event(Some(before(m)), kind)])
    };
    let last = match end {
        End::Pod(category, sub, exit, info_exit, info_msg, pod_msg) => {
            let codes: &[i32] = if exit == 0 { &[] } else { &[exit] };
            let error = ev::Error {
                failure_info: Some(sample::failure(info_exit, info_msg, &[category], "main")),
                ..categorised_error(true, pod_error(pod_msg, "n1", codes), category, sub)
            };
            run_errors(&job, &run, vec![error])
        }
        End::Reconciliation => run_errors(
            &job,
            &run,
            vec![sample::error(
                true,
                ev::error::Reason::ReconciliationError(ev::ReconciliationError {
                    message: b"reconciliation failed".to_vec(),
                }),
                None,
            )],
        ),
        End::Transient => run_errors(
            &job,
            &run,
            vec![categorised_error(
                false,
                pod_error("transient", "n1", &[9]),
                "oom",
                "memory",
            )],
        ),
        End::Succeeded => run_succeeded(&job, &run),
    };
    vec![
        at(
            minutes + 3,
            submit(&job, "ns", 1, &[("cpu", "1")], None, &[]),
        ),
        at(minutes + 2, leased(&job, &run, "c1", "n1", "pool")),
        at(minutes + 1, running(&job, &run, Some("n1"))),
        at(minutes, last),
    ]
}

const OOM: End = End::Pod("oom", "memory", 137, 137, OOM_INFO, OOM_POD);
/// An OOM whose container reported no exit code: FailureInfo's says 137.
const OOM_NO_CODE: End = End::Pod("oom", "memory", 0, 137, OOM_INFO, OOM_POD);
const APP: End = End::Pod("app", "crash", 1, 1, HOSTILE, HOSTILE);

/// The stream: this period (last 24h), the previous 24h, and older.
fn stream() -> Vec<ev::EventSequence> {
    let runs: Vec<(&str, i64, End)> = vec![
        // This period.
        ("qa", 60, OOM),
        ("qa", 120, OOM),
        ("qa", 180, OOM),
        ("qa", 240, APP),
        ("qb", 300, OOM),
        ("qb", 360, OOM_NO_CODE),
        ("qb", 420, End::Reconciliation),
        ("qa", 30, End::Succeeded),
        ("qb", 30, End::Transient),
        // The previous period.
        ("qa", 25 * 60, OOM),
        ("qb", 26 * 60, APP),
        ("qb", 27 * 60, APP),
        // Before both.
        ("qa", 72 * 60, OOM),
    ];
    runs.into_iter()
        .enumerate()
        .flat_map(|(n, (queue, minutes, end))| life(n, queue, minutes, end))
        .collect()
}

/// A database at generation `n` holding [`stream`], replayed by the binary.
async fn database(n: i64, dir: &Path) -> TestDb {
    let db = TestDb::migrated().await;
    let to = n.to_string();
    let mut args = vec!["--to", to.as_str()];
    if n >= 33 {
        args.push("--allow-drop");
    }
    let out = migrate_cli(&db.url, &args).await;
    assert_eq!(out.code, Some(0), "migrate --to {n}: {}", out.stderr);
    let file = write_recording(
        dir.join(format!("stream-{n}.bin")),
        &payloads(&stream()),
        false,
    );
    let spool = dir.join(format!("spool-{n}.jsonl"));
    let out = replay_cli(&db.url, &spool, &file).await;
    assert_eq!(out.code, Some(0), "replay: {}\n{}", out.stdout, out.stderr);
    db
}

/// `report failures --database-url URL --until UNTIL args…` through the binary.
async fn report(db: &TestDb, args: &[&str]) -> common::CliOutput {
    let mut all = vec![
        "report",
        "failures",
        "--database-url",
        &db.url,
        "--until",
        UNTIL,
    ];
    all.extend_from_slice(args);
    let out = cli(all).await;
    assert_eq!(out.code, Some(0), "report {args:?}: {}", out.stderr);
    out
}

async fn report_json(db: &TestDb, args: &[&str]) -> Value {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let out = report(db, &all).await;
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}): {}", out.stdout))
}

fn counts(runs: u64, previous: u64, change: i64, pct: Option<i64>) -> Value {
    json!({"runs": runs, "previous": previous, "change": change, "change_percent": pct})
}

fn with(mut v: Value, extra: Value) -> Value {
    if let (Some(m), Some(e)) = (v.as_object_mut(), extra.as_object()) {
        m.extend(e.clone());
    }
    v
}

/// The rows expected at a generation: `sub` is the subcategory the oom and
/// app groups have (none at 031).
fn expected_categories(oom_sub: Value, app_sub: Value) -> Value {
    json!([
        with(
            json!({"queue": "qa", "category": "oom", "subcategory": oom_sub}),
            counts(3, 1, 2, Some(200))
        ),
        with(
            json!({"queue": "qb", "category": "oom", "subcategory": oom_sub}),
            counts(2, 0, 2, None)
        ),
        with(
            json!({"queue": "qa", "category": "app", "subcategory": app_sub}),
            counts(1, 0, 1, None)
        ),
        with(
            json!({"queue": "qb", "category": "(none)", "subcategory": null}),
            counts(1, 0, 1, None)
        ),
        with(
            json!({"queue": "qb", "category": "app", "subcategory": app_sub}),
            counts(0, 2, -2, Some(-100))
        ),
    ])
}

fn rows(v: &Value, section: &str) -> Value {
    v[section]["rows"].clone()
}

#[tokio::test]
async fn report_at_031_then_032_reads_failure_info() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = database(31, dir.path()).await;
    let r = report_json(&db, &[]).await;
    assert_eq!(r["generation"], "031");
    assert_eq!(r["total"], counts(7, 3, 4, Some(133)));
    assert_eq!(
        rows(&r, "by_category"),
        expected_categories(Value::Null, Value::Null)
    );
    // FailureInfo's exit code stands in where the container gave none.
    assert_eq!(
        rows(&r, "by_exit_code"),
        json!([
            with(json!({"exit_code": 137}), counts(5, 1, 4, Some(400))),
            with(json!({"exit_code": 1}), counts(1, 2, -1, Some(-50))),
            with(json!({"exit_code": null}), counts(1, 0, 1, None)),
        ])
    );
    // Termination messages from FailureInfo, the run's error text otherwise.
    assert_eq!(
        r["messages"],
        json!({
            "top": [
                {"message": OOM_INFO, "runs": 5},
                {"message": HOSTILE_SHOWN, "runs": 1},
                {"message": "reconciliation failed", "runs": 1},
            ],
            "other_runs": 0, "missing": 0, "unreadable": 0
        })
    );

    // Migrated to 032, with one more OOM written at 032: rows written at
    // 031 keep their FailureInfo categories, the new one has
    // failure_category and a subcategory, and its message is the run's
    // error text (032 writes no FailureInfo).
    let out = migrate_cli(&db.url, &["--to", "32"]).await;
    assert_eq!(out.code, Some(0), "migrate --to 32: {}", out.stderr);
    let file = write_recording(
        dir.path().join("at-032.bin"),
        &payloads(&life(100, "qa", 90, OOM)),
        false,
    );
    let out = replay_cli(&db.url, &dir.path().join("spool-032.jsonl"), &file).await;
    assert_eq!(out.code, Some(0), "replay at 032: {}", out.stderr);
    let r = report_json(&db, &[]).await;
    assert_eq!(r["generation"], "032");
    assert_eq!(r["total"], counts(8, 3, 5, Some(167)));
    let groups: Vec<(String, String, Value, u64)> = rows(&r, "by_category")
        .as_array()
        .expect("rows")
        .iter()
        .map(|row| {
            let s = |k: &str| row[k].as_str().unwrap_or_default().to_string();
            (
                s("queue"),
                s("category"),
                row["subcategory"].clone(),
                row["runs"].as_u64().unwrap_or(0),
            )
        })
        .collect();
    assert_eq!(
        groups,
        [
            ("qa".into(), "oom".into(), Value::Null, 3),
            ("qb".into(), "oom".into(), Value::Null, 2),
            ("qa".into(), "app".into(), Value::Null, 1),
            ("qa".into(), "oom".into(), json!("memory"), 1),
            ("qb".into(), "(none)".into(), Value::Null, 1),
            ("qb".into(), "app".into(), Value::Null, 0),
        ]
    );
    // After OOM_INFO (5 runs) and the hostile message, by name.
    assert_eq!(
        r["messages"]["top"][2],
        json!({"message": OOM_POD, "runs": 1})
    );
    db.drop_db().await;
}

#[tokio::test]
async fn report_at_035_reads_failure_categories() {
    let dir = tempfile::tempdir().expect("tmp");
    let db = database(35, dir.path()).await;
    let r = report_json(&db, &["--top", "2"]).await;

    // The documented shape.
    let mut keys: Vec<&str> = r
        .as_object()
        .expect("object")
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort();
    assert_eq!(
        keys,
        [
            "by_category",
            "by_exit_code",
            "generation",
            "messages",
            "period",
            "queue",
            "sources",
            "timeline",
            "total"
        ]
    );
    assert_eq!(
        r["period"],
        json!({
            "from": "2026-01-10T00:00:00Z", "until": UNTIL,
            "previous_from": "2026-01-09T00:00:00Z", "seconds": 86400
        })
    );
    assert_eq!(r["queue"], Value::Null);
    assert_eq!(r["generation"], "035");
    assert_eq!(
        r["sources"]["category"],
        "job_run.failure_category/failure_subcategory"
    );

    assert_eq!(r["total"], counts(7, 3, 4, Some(133)));
    assert_eq!(
        rows(&r, "by_category"),
        expected_categories(json!("memory"), json!("crash"))
    );
    assert_eq!(r["by_category"]["other"], counts(0, 0, 0, None));
    // No FailureInfo at 035: the container's missing exit code stays 0.
    assert_eq!(
        rows(&r, "by_exit_code"),
        json!([
            with(json!({"exit_code": 137}), counts(4, 1, 3, Some(300))),
            with(json!({"exit_code": 1}), counts(1, 2, -1, Some(-50))),
            with(json!({"exit_code": 0}), counts(1, 0, 1, None)),
            with(json!({"exit_code": null}), counts(1, 0, 1, None)),
        ])
    );
    // Messages from job_run.error; two listed, the third counted.
    assert_eq!(
        r["messages"],
        json!({
            "top": [{"message": OOM_POD, "runs": 5}, {"message": HOSTILE_SHOWN, "runs": 1}],
            "other_runs": 1, "missing": 0, "unreadable": 0
        })
    );
    // Half-hour buckets over the day; the qa OOM 60 minutes before the end
    // finished at 23:00, in bucket 46.
    let tl = &r["timeline"];
    assert_eq!(tl["bucket_seconds"], 1800);
    assert_eq!(tl["starts"].as_array().map(Vec::len), Some(48));
    let series: Vec<(String, u64)> = tl["series"]
        .as_array()
        .expect("series")
        .iter()
        .map(|s| {
            let total = s["counts"]
                .as_array()
                .expect("counts")
                .iter()
                .filter_map(Value::as_u64)
                .sum();
            (
                s["category"].as_str().unwrap_or_default().to_string(),
                total,
            )
        })
        .collect();
    assert_eq!(
        series,
        [
            ("oom".to_string(), 5),
            ("(none)".to_string(), 1),
            ("app".to_string(), 1)
        ]
    );
    assert_eq!(tl["series"][0]["counts"][46], 1);

    // --queue: only qb's runs, in both periods.
    let qb = report_json(&db, &["--queue", "qb"]).await;
    assert_eq!(qb["queue"], "qb");
    assert_eq!(qb["total"], counts(3, 2, 1, Some(50)));
    let queues: Vec<&str> = qb["by_category"]["rows"]
        .as_array()
        .expect("rows")
        .iter()
        .filter_map(|row| row["queue"].as_str())
        .collect();
    assert_eq!(queues, ["qb", "qb", "qb"]);

    // A longer period takes in the older run and the previous period moves.
    let week = report_json(&db, &["--since", "7d"]).await;
    assert_eq!(week["total"], counts(11, 0, 11, None));
    assert_eq!(week["timeline"]["bucket_seconds"], 3 * 3600);

    // The text: aligned tables, no escape character.
    let text = report(&db, &["--top", "3"]).await.stdout;
    assert!(!text.contains('\u{1b}'), "escape character in {text:?}");
    for line in [
        "Failed runs from 2026-01-10T00:00:00Z to 2026-01-11T00:00:00Z (1d), compared with the 1d before",
        "7 failed run(s); previous period 3; change +4 (+133%)",
        "QUEUE  CATEGORY  SUBCATEGORY  RUNS  PREVIOUS  CHANGE",
        "qa     oom       memory       3     1         +2 (+200%)",
        "qb     app       crash        0     2         -2 (-100%)",
        "137        4     1         +3 (+300%)",
        "none       1     0         +1 (new)",
        "5     container main was OOMKilled",
        "1     <script>alert('x')</script> [2J boom",
    ] {
        assert!(text.lines().any(|l| l == line), "no line {line:?} in\n{text}");
    }

    // The page: one file, nothing outside it, the hostile message escaped.
    let page_path = dir.path().join("failures.html");
    let out = report(&db, &["--html", page_path.to_str().expect("utf-8 path")]).await;
    assert!(out.stdout.contains("7 failed run(s)"));
    let page = std::fs::read_to_string(&page_path).expect("page written");
    assert!(page.starts_with("<!DOCTYPE html>"));
    assert!(page.contains("<svg") && page.contains("<rect"));
    assert!(page.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; [2J boom"));
    for bad in [
        "<script", "\u{1b}", "src=", "href=", "url(", "@import", "http://", "https://", "<link",
    ] {
        assert!(!page.contains(bad), "{bad:?} in the page");
    }
    db.drop_db().await;
}

/// A report against a closed port or a missing database ends after
/// `--retry-for` with the cause on one line, exit 1, and prints nothing.
#[tokio::test]
async fn report_gives_up_on_an_unreachable_database() {
    let admin = common::admin_url();
    let base = admin
        .rsplit_once('/')
        .map(|(b, _)| b)
        .unwrap_or(&admin)
        .to_string();
    for (url, cause) in [
        (
            "postgres://postgres@127.0.0.1:1/postgres".to_string(),
            "Connection refused",
        ),
        (
            format!("{base}/no_such_db_report"),
            "database \"no_such_db_report\" does not exist",
        ),
    ] {
        let started = Instant::now();
        let run = cli([
            "report",
            "failures",
            "--database-url",
            &url,
            "--retry-for",
            "2s",
        ]);
        let out = tokio::time::timeout(Duration::from_secs(30), run)
            .await
            .unwrap_or_else(|_| panic!("report against {url} did not end"));
        let elapsed = started.elapsed();
        assert_eq!(out.code, Some(1), "{}", out.stderr);
        assert_eq!(out.stdout, "");
        let fatal: Vec<&str> = out
            .stderr
            .lines()
            .filter(|l| l.starts_with("error:"))
            .collect();
        assert_eq!(fatal.len(), 1, "{}", out.stderr);
        assert!(fatal[0].contains(cause), "{:?} lacks {cause:?}", fatal[0]);
        assert!(fatal[0].contains("retryFor"), "{}", fatal[0]);
        assert!(elapsed >= Duration::from_secs(2), "{elapsed:?}");
        assert!(elapsed < Duration::from_secs(15), "{elapsed:?}");
    }
}

/// A database without the Lookout tables is refused with what to do.
#[tokio::test]
async fn report_refuses_an_unmigrated_database() {
    let db = TestDb::empty().await;
    let out = cli(["report", "failures", "--database-url", &db.url]).await;
    assert_eq!(out.code, Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains("lookout-ingester migrate"),
        "{}",
        out.stderr
    );
    db.drop_db().await;
}
