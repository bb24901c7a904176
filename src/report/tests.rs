use super::*;
use crate::convert::compress::zlib;
use chrono::TimeZone;

fn until() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 1, 10, 0, 0, 0)
        .single()
        .expect("time")
}

fn day() -> Period {
    Period::new(until(), std::time::Duration::from_secs(86_400)).expect("period")
}

/// A failed run `hours_ago` before the end of the period.
fn run(
    queue: &str,
    hours_ago: i64,
    categories: &[&str],
    exit: Option<i32>,
    msg: &str,
) -> FailedRun {
    FailedRun {
        queue: queue.into(),
        finished: (until() - TimeDelta::hours(hours_ago) + TimeDelta::minutes(1)).naive_utc(),
        categories: categories.iter().map(|c| c.to_string()).collect(),
        exit_code: exit,
        error: Some(zlib(msg.as_bytes(), 1024).expect("zlib")),
        ..Default::default()
    }
}

#[test]
fn buckets_follow_the_period() {
    let p = |secs: u64| Period::new(until(), std::time::Duration::from_secs(secs)).expect("p");
    assert_eq!(
        (p(3600).bucket().num_seconds(), p(3600).buckets()),
        (60, 60)
    );
    assert_eq!((day().bucket().num_seconds(), day().buckets()), (1800, 48));
    assert_eq!(
        (
            p(7 * 86_400).bucket().num_seconds(),
            p(7 * 86_400).buckets()
        ),
        (3 * 3600, 56)
    );
    assert_eq!(p(30 * 86_400).buckets(), 60);
    assert_eq!(p(90).buckets(), 2);
    assert!(Period::new(until(), std::time::Duration::ZERO).is_err());
    assert!(Period::new(until(), std::time::Duration::from_secs(u64::MAX / 4)).is_err());
}

#[test]
fn exit_code_prefers_the_column_then_failure_info() {
    let v = serde_json::json!(137);
    assert_eq!(exit_code(Some(3), Some(&v)), Some(3));
    assert_eq!(exit_code(Some(0), Some(&v)), Some(137));
    assert_eq!(exit_code(None, Some(&v)), Some(137));
    assert_eq!(exit_code(Some(0), None), Some(0));
    assert_eq!(exit_code(None, Some(&serde_json::json!("x"))), None);
    assert_eq!(exit_code(None, None), None);
}

#[test]
fn text_is_cleaned_for_terminals() {
    assert_eq!(
        clean_text("\u{1b}[31mred\u{1b}[0m\r\n  and\u{202e}\u{0}rev\t", 100).as_deref(),
        Some("[31mred [0m and rev")
    );
    assert_eq!(clean_text(" \n\u{7}", 100), None);
    assert_eq!(clean_text("abcdef", 3).as_deref(), Some("abc…"));
    assert_eq!(clean_text("ab cd", 3).as_deref(), Some("ab…"));
    assert_eq!(clean_text("ééé", 3).as_deref(), Some("ééé"));
    for s in ["\u{9b}2J", "a\u{85}b", "\u{feff}x"] {
        let c = clean_text(s, 100).unwrap_or_default();
        assert!(
            !c.chars().any(|c| c.is_control() || c == '\u{feff}'),
            "{c:?}"
        );
    }
    assert_eq!(label(""), NONE);
}

#[test]
fn messages_come_from_failure_info_then_the_error_text() {
    let z = zlib(b"pod failed\n", 1024).expect("zlib");
    assert_eq!(message(Some("OOM"), Some(&z)), Message::Text("OOM".into()));
    assert_eq!(
        message(Some(" "), Some(&z)),
        Message::Text("pod failed".into())
    );
    assert_eq!(message(None, None), Message::Missing);
    assert_eq!(message(None, Some(b"not zlib")), Message::Unreadable);
    // A compressed text cut short still yields its start.
    let long: String = (0..20_000)
        .map(|i| char::from(b'a' + (i * 7 % 26) as u8))
        .collect();
    let z = zlib(long.as_bytes(), 10).expect("zlib");
    let cut = &z[..z.len() / 2];
    let Message::Text(t) = message(None, Some(cut)) else {
        panic!("not text");
    };
    assert!(long.starts_with(t.trim_end_matches('…')));
    // A zlib bomb inflates only to the limit.
    let bomb = zlib(&vec![b'x'; 50_000_000], 10).expect("zlib");
    assert_eq!(inflate_prefix(&bomb, 4096).map(|v| v.len()), Some(4096));
}

/// Queue, category, runs, previous, change, change in percent.
type GroupRow<'a> = (&'a str, &'a str, u64, u64, i64, Option<i64>);

#[test]
fn groups_counts_change_and_order() {
    let mut a = Aggregator::new(day(), 2);
    for r in [
        run("qa", 1, &["oom"], Some(137), "killed"),
        run("qa", 2, &["oom"], Some(137), "killed"),
        run("qa", 3, &["oom", "gpu"], Some(1), "gpu gone"),
        run("qb", 4, &[], None, "lease"),
        run("qb", 5, &["app"], Some(2), "x"),
        // The previous day.
        run("qa", 30, &["oom"], Some(137), "old"),
        run("qb", 30, &["app"], Some(2), "old"),
        run("qb", 31, &["app"], Some(2), "old"),
        run("qc", 40, &["net"], Some(3), "old"),
        // Outside both periods.
        run("qa", 49, &["oom"], Some(137), "older"),
        run("qa", -1, &["oom"], Some(137), "future"),
    ] {
        a.add(&r);
    }
    let r = a.finish(Generation::G031, None);
    assert_eq!(
        r.total,
        Change {
            runs: 5,
            previous: 4,
            change: 1,
            change_percent: Some(25)
        }
    );
    let rows: Vec<GroupRow> = r
        .by_category
        .rows
        .iter()
        .map(|c| {
            (
                c.queue.as_str(),
                c.category.as_str(),
                c.counts.runs,
                c.counts.previous,
                c.counts.change,
                c.counts.change_percent,
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("qa", "oom", 3, 1, 2, Some(200)),
            ("qb", "app", 1, 2, -1, Some(-50)),
            ("qa", "gpu", 1, 0, 1, None),
            ("qb", NONE, 1, 0, 1, None),
            ("qc", "net", 0, 1, -1, Some(-100)),
        ]
    );
    let codes: Vec<(Option<i64>, u64, u64)> = r
        .by_exit_code
        .rows
        .iter()
        .map(|c| (c.exit_code, c.counts.runs, c.counts.previous))
        .collect();
    assert_eq!(
        codes,
        [
            (Some(137), 2, 1),
            (Some(2), 1, 2),
            (Some(1), 1, 0),
            (None, 1, 0),
            (Some(3), 0, 1)
        ]
    );
    assert_eq!(
        r.messages.top,
        [
            MessageRow {
                message: "killed".into(),
                runs: 2
            },
            MessageRow {
                message: "gpu gone".into(),
                runs: 1
            },
        ]
    );
    assert_eq!(r.messages.other_runs, 2);
    // Timeline: half-hour buckets; the run 1h (minus a minute) before the
    // end is in bucket 46.
    assert_eq!(r.timeline.bucket_seconds, 1800);
    assert_eq!(r.timeline.starts.len(), 48);
    assert_eq!(r.timeline.starts[0], "2026-01-09T00:00:00Z");
    let oom = r
        .timeline
        .series
        .iter()
        .find(|s| s.category == "oom")
        .expect("oom series");
    assert_eq!(oom.counts.iter().sum::<u64>(), 3);
    assert_eq!(oom.counts[46], 1);
    assert_eq!(r.timeline.series[0].category, "oom");
    let text = r.to_string();
    assert!(
        text.contains("5 failed run(s); previous period 4; change +1 (+25%)"),
        "{text}"
    );
    assert!(
        text.contains("qa     oom       -            3     1         +2 (+200%)"),
        "{text}"
    );
}

#[test]
fn limits_bound_groups_messages_and_series() {
    let mut a = Aggregator::new(day(), 10);
    let n = MAX_GROUPS + 5;
    for i in 0..n {
        let q = format!("q{i}");
        let c = format!("c{i}");
        a.add(&run(&q, 1, &[c.as_str()], Some(i as i32), &format!("m{i}")));
    }
    assert_eq!(a.groups.map.len(), MAX_GROUPS);
    assert_eq!(a.messages.len(), MAX_MESSAGES);
    let r = a.finish(Generation::G035, None);
    assert_eq!(r.by_category.other.runs, 5);
    assert_eq!(r.by_exit_code.other.runs, 5);
    assert_eq!(r.messages.top.len(), 10);
    assert_eq!(r.messages.other_runs, n as u64 - 10);
    assert_eq!(r.timeline.series.len(), CHART_SERIES + 1);
    assert_eq!(r.timeline.series[CHART_SERIES].category, OTHER);
    let drawn: u64 = r.timeline.series.iter().flat_map(|s| s.counts.iter()).sum();
    assert_eq!(drawn, n as u64);
}

#[test]
fn html_escapes_and_is_self_contained() {
    let mut a = Aggregator::new(day(), 10);
    let hostile = "<script>alert('x')</script> & \"q\"";
    a.add(&run("<b>q</b>", 1, &["<i>c</i>"], Some(1), hostile));
    let page = html::render(&a.finish(Generation::G035, Some("<b>q</b>")));
    assert!(page.contains("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; &quot;q&quot;"));
    assert!(page.contains("&lt;b&gt;q&lt;/b&gt;"));
    for bad in [
        "<script", "<b>q", "<i>c", "src=", "href=", "url(", "@import", "http://", "https://",
    ] {
        assert!(!page.contains(bad), "{bad} in page");
    }
    assert!(page.contains("<svg") && page.contains("<rect"));
}

#[test]
fn an_empty_report_says_so() {
    let r = Aggregator::new(day(), 10).finish(Generation::G033, Some("q"));
    let text = r.to_string();
    assert!(
        text.contains("0 failed run(s); previous period 0; change 0"),
        "{text}"
    );
    assert!(!text.contains("By exit code"));
    assert!(html::render(&r).contains("No failed runs in this period."));
}

#[test]
fn human_durations() {
    assert_eq!(human(86_400), "1d");
    assert_eq!(human(36 * 3600), "36h");
    assert_eq!(human(90 * 60), "90m");
    assert_eq!(human(45), "45s");
}
