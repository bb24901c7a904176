//! `report failures`: the failed runs of a period, grouped by queue and
//! failure category and by exit code, their most common messages, failures
//! over time per category, and the change against the previous period of the
//! same length.
//!
//! This module is pure: [`Aggregator`] folds failed runs (as [`query`] reads
//! them) into a [`Report`], and the report renders itself as text here, as
//! JSON through serde and as HTML in [`html`]. Every string that comes from
//! the database is hostile text: it is cleaned of control characters and
//! cut to a bounded length before it is counted, so nothing a submitter
//! wrote can move a terminal's cursor or grow the process's memory.
//! Memory is bounded by the limits below, whatever the number of runs.

pub mod html;
mod query;

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;

use chrono::{DateTime, NaiveDateTime, TimeDelta, Utc};
use serde::Serialize;

use crate::model::Generation;

pub use query::failures;

/// Most distinct groups (queue, category, subcategory) or exit codes kept;
/// runs beyond them are counted as `other`.
pub const MAX_GROUPS: usize = 10_000;
/// Most distinct messages kept; runs beyond them count as other messages.
pub const MAX_MESSAGES: usize = 10_000;
/// A message is cut to this many characters (after cleaning).
pub const MESSAGE_CHARS: usize = 200;
/// A queue or category name is cut to this many characters.
pub const LABEL_CHARS: usize = 100;
/// The chart shows this many categories; the rest are drawn as one.
pub const CHART_SERIES: usize = 8;
/// At most this many bytes of a run's error text are inflated.
pub const ERROR_TEXT_BYTES: usize = 4096;
/// What the label of runs without a category, or beyond the limits, says.
pub const NONE: &str = "(none)";
pub const OTHER: &str = "(other)";

/// The period reported on, and the one before it of the same length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Period {
    pub until: DateTime<Utc>,
    pub length: TimeDelta,
}

impl Period {
    /// The `length` up to `until`; refused when empty or so long that its
    /// previous period would leave chrono's range.
    pub fn new(until: DateTime<Utc>, length: std::time::Duration) -> Result<Period, String> {
        let bad = || {
            format!(
                "--since: the period must be from 1s to 36500d and start after year 0, got {}s",
                length.as_secs()
            )
        };
        let length = TimeDelta::from_std(length).map_err(|_| bad())?;
        if length < TimeDelta::seconds(1) || length > TimeDelta::days(36_500) {
            return Err(bad());
        }
        until
            .checked_sub_signed(length * 2)
            .ok_or_else(bad)
            .map(|_| Period { until, length })
    }

    pub fn from(&self) -> DateTime<Utc> {
        self.until - self.length
    }

    pub fn previous_from(&self) -> DateTime<Utc> {
        self.until - self.length * 2
    }

    /// The width of the chart's time buckets: the shortest of a few round
    /// widths that cuts the period into at most 60 buckets.
    pub fn bucket(&self) -> TimeDelta {
        const WIDTHS: [i64; 11] = [
            60,
            300,
            900,
            1800,
            3600,
            3 * 3600,
            6 * 3600,
            12 * 3600,
            86_400,
            7 * 86_400,
            30 * 86_400,
        ];
        let secs = self.length.num_seconds().max(1);
        let width = WIDTHS
            .into_iter()
            .find(|w| (secs + w - 1) / w <= 60)
            .unwrap_or((secs + 59) / 60);
        TimeDelta::seconds(width)
    }

    /// How many buckets the period has.
    pub fn buckets(&self) -> usize {
        let w = self.bucket().num_seconds().max(1);
        usize::try_from((self.length.num_seconds() + w - 1) / w).unwrap_or(1)
    }
}

/// One failed run as [`query`] reads it, before any cleaning.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FailedRun {
    pub queue: String,
    /// `job_run.finished` (UTC, as the ingester writes it).
    pub finished: NaiveDateTime,
    /// FailureInfo's categories (031) or `failure_category` (032 on).
    pub categories: Vec<String>,
    pub subcategory: Option<String>,
    /// `job_run.exit_code`.
    pub exit_code: Option<i32>,
    /// FailureInfo's `exitCode` (031, 032), as stored.
    pub info_exit_code: Option<serde_json::Value>,
    /// FailureInfo's `terminationMessage` (031, 032).
    pub termination_message: Option<String>,
    /// A prefix of `job_run.error` (a zlib stream).
    pub error: Option<Vec<u8>>,
}

/// The exit code a failed run is counted under: `job_run.exit_code` when it
/// is not 0 (the first failing container's), else FailureInfo's `exitCode`
/// when it is an integer, else `job_run.exit_code` as stored (0, or `None`
/// for failures that are not pod errors).
pub fn exit_code(column: Option<i32>, info: Option<&serde_json::Value>) -> Option<i64> {
    if let Some(c) = column.filter(|&c| c != 0) {
        return Some(i64::from(c));
    }
    info.and_then(|v| v.as_i64())
        .filter(|&c| c != 0)
        .or(column.map(i64::from))
}

/// Whether a character must not reach a terminal: control characters (C0,
/// C1, DEL) and the invisible format characters that reorder or hide text
/// (bidirectional overrides, zero-width characters, BOM).
fn unsafe_char(c: char) -> bool {
    c.is_control()
        || matches!(c,
            '\u{200B}'..='\u{200F}'
            | '\u{202A}'..='\u{202E}'
            | '\u{2060}'..='\u{2069}'
            | '\u{FEFF}'
            | '\u{FFF9}'..='\u{FFFB}')
}

/// Text fit for a terminal, a JSON document and (escaped) a web page: unsafe
/// characters become spaces, runs of white space one space, cut to `max`
/// characters (with `…`); `None` when nothing is left.
pub fn clean_text(s: &str, max: usize) -> Option<String> {
    let mut out = String::new();
    let mut n = 0;
    let mut space = false;
    for c in s.chars() {
        if unsafe_char(c) || c.is_whitespace() {
            space = n > 0;
            continue;
        }
        if n + usize::from(space) + 1 > max {
            out.push('…');
            return Some(out);
        }
        if space {
            out.push(' ');
            n += 1;
            space = false;
        }
        out.push(c);
        n += 1;
    }
    (n > 0).then_some(out)
}

/// A queue or category name, cleaned ([`clean_text`]); `(none)` when empty.
pub fn label(s: &str) -> String {
    clean_text(s, LABEL_CHARS).unwrap_or_else(|| NONE.to_string())
}

/// What a run's message is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Text(String),
    /// The run has no message.
    Missing,
    /// `job_run.error` is not a zlib stream.
    Unreadable,
}

/// A run's message: FailureInfo's termination message when it has one,
/// else the start of the inflated `job_run.error`; cleaned.
pub fn message(termination: Option<&str>, error: Option<&[u8]>) -> Message {
    if let Some(t) = termination.and_then(|t| clean_text(t, MESSAGE_CHARS)) {
        return Message::Text(t);
    }
    let Some(error) = error else {
        return Message::Missing;
    };
    match inflate_prefix(error, ERROR_TEXT_BYTES) {
        Some(text) => match clean_text(&String::from_utf8_lossy(&text), MESSAGE_CHARS) {
            Some(t) => Message::Text(t),
            None => Message::Missing,
        },
        None => Message::Unreadable,
    }
}

/// The first `limit` bytes a zlib stream inflates to. The stream may be cut
/// short (the query reads only its start), so an error after some output
/// still yields that output; `None` when nothing inflates at all.
pub fn inflate_prefix(z: &[u8], limit: usize) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut decoder = flate2::read::ZlibDecoder::new(z).take(limit as u64);
    match decoder.read_to_end(&mut out) {
        Ok(_) => Some(out),
        Err(_) if !out.is_empty() => Some(out),
        Err(_) => None,
    }
}

/// Runs counted in this period and the previous one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub runs: u64,
    pub previous: u64,
}

impl Counts {
    fn add(&mut self, current: bool) {
        if current {
            self.runs += 1;
        } else {
            self.previous += 1;
        }
    }

    fn change(self) -> Change {
        let runs = i64::try_from(self.runs).unwrap_or(i64::MAX);
        let previous = i64::try_from(self.previous).unwrap_or(i64::MAX);
        let change = runs.saturating_sub(previous);
        // Rounded half away from zero, in integers so the output is exact.
        let change_percent = (previous > 0).then(|| {
            let scaled = i128::from(change) * 200 / i128::from(previous);
            let rounded = (scaled + scaled.signum()) / 2;
            i64::try_from(rounded).unwrap_or(i64::MAX)
        });
        Change {
            runs: self.runs,
            previous: self.previous,
            change,
            change_percent,
        }
    }
}

/// Counts per key, keeping at most `limit` keys; runs under further keys are
/// counted in `other`.
#[derive(Debug, Clone)]
struct Tally<K: Ord> {
    map: BTreeMap<K, Counts>,
    other: Counts,
    limit: usize,
}

impl<K: Ord> Tally<K> {
    fn new(limit: usize) -> Self {
        Tally {
            map: BTreeMap::new(),
            other: Counts::default(),
            limit,
        }
    }

    fn add(&mut self, key: K, current: bool) {
        if let Some(c) = self.map.get_mut(&key) {
            c.add(current);
        } else if self.map.len() < self.limit {
            self.map.entry(key).or_default().add(current);
        } else {
            self.other.add(current);
        }
    }
}

/// Folds failed runs into a [`Report`].
#[derive(Debug, Clone)]
pub struct Aggregator {
    period: Period,
    top: usize,
    total: Counts,
    groups: Tally<(String, String, Option<String>)>,
    exit_codes: Tally<Option<i64>>,
    messages: BTreeMap<String, u64>,
    other_messages: u64,
    unreadable: u64,
    missing: u64,
    /// Category → runs per bucket (this period).
    timeline: BTreeMap<String, Vec<u64>>,
    timeline_other: Vec<u64>,
}

impl Aggregator {
    /// `top`: how many messages the report lists.
    pub fn new(period: Period, top: usize) -> Aggregator {
        Aggregator {
            period,
            top,
            total: Counts::default(),
            groups: Tally::new(MAX_GROUPS),
            exit_codes: Tally::new(MAX_GROUPS),
            messages: BTreeMap::new(),
            other_messages: 0,
            unreadable: 0,
            missing: 0,
            timeline: BTreeMap::new(),
            timeline_other: vec![0; period.buckets()],
        }
    }

    /// Counts one run; one outside both periods is ignored.
    pub fn add(&mut self, run: &FailedRun) {
        let finished = run.finished.and_utc();
        if finished < self.period.previous_from() || finished >= self.period.until {
            return;
        }
        let current = finished >= self.period.from();
        self.total.add(current);
        let queue = label(&run.queue);
        let subcategory = run
            .subcategory
            .as_deref()
            .and_then(|s| clean_text(s, LABEL_CHARS));
        let mut categories: Vec<String> = run
            .categories
            .iter()
            .filter_map(|c| clean_text(c, LABEL_CHARS))
            .collect();
        categories.sort();
        categories.dedup();
        if categories.is_empty() {
            categories.push(NONE.to_string());
        }
        for c in &categories {
            self.groups
                .add((queue.clone(), c.clone(), subcategory.clone()), current);
        }
        self.exit_codes.add(
            exit_code(run.exit_code, run.info_exit_code.as_ref()),
            current,
        );
        if !current {
            return;
        }
        let bucket = usize::try_from(
            (finished - self.period.from()).num_seconds() / self.period.bucket().num_seconds(),
        )
        .unwrap_or(0)
        .min(self.timeline_other.len().saturating_sub(1));
        let buckets = self.timeline_other.len();
        for c in categories {
            let series = if self.timeline.contains_key(&c) || self.timeline.len() < MAX_GROUPS {
                self.timeline.entry(c).or_insert_with(|| vec![0; buckets])
            } else {
                &mut self.timeline_other
            };
            if let Some(n) = series.get_mut(bucket) {
                *n += 1;
            }
        }
        match message(run.termination_message.as_deref(), run.error.as_deref()) {
            Message::Text(t) => {
                if let Some(n) = self.messages.get_mut(&t) {
                    *n += 1;
                } else if self.messages.len() < MAX_MESSAGES {
                    self.messages.insert(t, 1);
                } else {
                    self.other_messages += 1;
                }
            }
            Message::Missing => self.missing += 1,
            Message::Unreadable => self.unreadable += 1,
        }
    }

    /// The report, every list in its documented order.
    pub fn finish(self, generation: Generation, queue: Option<&str>) -> Report {
        let p = self.period;
        let mut by_category: Vec<CategoryRow> = self
            .groups
            .map
            .into_iter()
            .map(|((queue, category, subcategory), c)| CategoryRow {
                queue,
                category,
                subcategory,
                counts: c.change(),
            })
            .collect();
        by_category.sort_by(|a, b| {
            order(&a.counts, &b.counts).then_with(|| {
                (&a.queue, &a.category, &a.subcategory).cmp(&(
                    &b.queue,
                    &b.category,
                    &b.subcategory,
                ))
            })
        });
        let mut by_exit_code: Vec<ExitCodeRow> = self
            .exit_codes
            .map
            .into_iter()
            .map(|(exit_code, c)| ExitCodeRow {
                exit_code,
                counts: c.change(),
            })
            .collect();
        // `None` (no exit code) after every code with the same counts.
        by_exit_code.sort_by(|a, b| {
            order(&a.counts, &b.counts)
                .then_with(|| a.exit_code.is_none().cmp(&b.exit_code.is_none()))
                .then_with(|| a.exit_code.cmp(&b.exit_code))
        });
        let mut messages: Vec<MessageRow> = self
            .messages
            .into_iter()
            .map(|(message, runs)| MessageRow { message, runs })
            .collect();
        messages.sort_by(|a, b| b.runs.cmp(&a.runs).then_with(|| a.message.cmp(&b.message)));
        let other_runs =
            self.other_messages + messages.iter().skip(self.top).map(|m| m.runs).sum::<u64>();
        messages.truncate(self.top);
        Report {
            generation: generation.to_string(),
            sources: Sources::of(generation),
            period: PeriodView {
                from: time(p.from()),
                until: time(p.until),
                previous_from: time(p.previous_from()),
                seconds: p.length.num_seconds(),
            },
            queue: queue.map(label),
            total: self.total.change(),
            by_category: Section {
                rows: by_category,
                other: self.groups.other.change(),
            },
            by_exit_code: Section {
                rows: by_exit_code,
                other: self.exit_codes.other.change(),
            },
            messages: Messages {
                top: messages,
                other_runs,
                missing: self.missing,
                unreadable: self.unreadable,
            },
            timeline: timeline(p, self.timeline, self.timeline_other),
        }
    }
}

/// Counts descending: this period's runs, then the previous period's.
fn order(a: &Change, b: &Change) -> std::cmp::Ordering {
    b.runs
        .cmp(&a.runs)
        .then_with(|| b.previous.cmp(&a.previous))
}

fn time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// The chart's series: the [`CHART_SERIES`] categories with the most runs
/// (then by name), the rest summed as `(other)`.
fn timeline(p: Period, series: BTreeMap<String, Vec<u64>>, other: Vec<u64>) -> Timeline {
    let mut all: Vec<(String, Vec<u64>)> = series.into_iter().collect();
    all.sort_by(|a, b| {
        let (x, y): (u64, u64) = (a.1.iter().sum(), b.1.iter().sum());
        y.cmp(&x).then_with(|| a.0.cmp(&b.0))
    });
    let mut rest = other;
    for (_, counts) in all.iter().skip(CHART_SERIES) {
        for (r, n) in rest.iter_mut().zip(counts) {
            *r += n;
        }
    }
    all.truncate(CHART_SERIES);
    let mut out: Vec<Series> = all
        .into_iter()
        .map(|(category, counts)| Series { category, counts })
        .collect();
    if rest.iter().any(|&n| n > 0) {
        out.push(Series {
            category: OTHER.to_string(),
            counts: rest,
        });
    }
    let width = p.bucket();
    let starts = (0..p.buckets())
        .map(|i| time(p.from() + width * i32::try_from(i).unwrap_or(0)))
        .collect();
    Timeline {
        bucket_seconds: width.num_seconds(),
        starts,
        series: out,
    }
}

/// The report; its JSON form is documented in the README
/// ("report failures").
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Report {
    /// The Lookout schema generation, e.g. `"035"`.
    pub generation: String,
    pub sources: Sources,
    pub period: PeriodView,
    /// The `--queue` filter, if any.
    pub queue: Option<String>,
    pub total: Change,
    pub by_category: Section<CategoryRow>,
    pub by_exit_code: Section<ExitCodeRow>,
    pub messages: Messages,
    pub timeline: Timeline,
}

/// Which columns the numbers come from at the database's generation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Sources {
    pub category: &'static str,
    pub exit_code: &'static str,
    pub message: &'static str,
}

impl Sources {
    pub fn of(g: Generation) -> Sources {
        let (category, exit_code, message) = match g {
            Generation::G031 => (
                "job_run.failure_info categories",
                "job_run.exit_code, else failure_info exitCode",
                "failure_info terminationMessage, else job_run.error",
            ),
            Generation::G032 => (
                "job_run.failure_category/failure_subcategory, else failure_info categories",
                "job_run.exit_code, else failure_info exitCode",
                "failure_info terminationMessage, else job_run.error",
            ),
            _ => (
                "job_run.failure_category/failure_subcategory",
                "job_run.exit_code",
                "job_run.error",
            ),
        };
        Sources {
            category,
            exit_code,
            message,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PeriodView {
    /// Start of the period (inclusive), RFC 3339 UTC.
    pub from: String,
    /// End of the period (exclusive).
    pub until: String,
    /// Start of the previous period, which ends at `from`.
    pub previous_from: String,
    pub seconds: i64,
}

/// Runs in this period and the previous one, and the change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Change {
    pub runs: u64,
    pub previous: u64,
    /// `runs - previous`.
    pub change: i64,
    /// The change in percent of `previous`, rounded; `null` when `previous` is 0.
    pub change_percent: Option<i64>,
}

/// Rows, and the runs beyond [`MAX_GROUPS`] distinct keys.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Section<T> {
    pub rows: Vec<T>,
    pub other: Change,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CategoryRow {
    pub queue: String,
    pub category: String,
    pub subcategory: Option<String>,
    #[serde(flatten)]
    pub counts: Change,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ExitCodeRow {
    /// `null`: no exit code recorded (a failure that is not a pod error).
    pub exit_code: Option<i64>,
    #[serde(flatten)]
    pub counts: Change,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MessageRow {
    pub message: String,
    pub runs: u64,
}

/// This period's messages.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Messages {
    pub top: Vec<MessageRow>,
    /// Runs with a message not in `top`.
    pub other_runs: u64,
    /// Runs without a message.
    pub missing: u64,
    /// Runs whose `job_run.error` does not inflate.
    pub unreadable: u64,
}

/// Runs per category per time bucket, this period.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Timeline {
    pub bucket_seconds: i64,
    /// Start of each bucket.
    pub starts: Vec<String>,
    pub series: Vec<Series>,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Series {
    pub category: String,
    /// One count per bucket.
    pub counts: Vec<u64>,
}

/// A duration as its largest whole unit: `1d`, `36h`, `90m`, `45s`.
pub fn human(secs: i64) -> String {
    for (unit, n) in [("d", 86_400), ("h", 3600), ("m", 60)] {
        if secs % n == 0 && secs >= n {
            return format!("{}{unit}", secs / n);
        }
    }
    format!("{secs}s")
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.change_percent {
            _ if self.change == 0 => write!(f, "0"),
            Some(p) => write!(f, "{:+} ({p:+}%)", self.change),
            None => write!(f, "{:+} (new)", self.change),
        }
    }
}

/// Lines of cells as a left-aligned table, columns two spaces apart.
fn table(f: &mut fmt::Formatter<'_>, rows: &[Vec<String>]) -> fmt::Result {
    let mut widths: Vec<usize> = Vec::new();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            let w = cell.chars().count();
            match widths.get_mut(i) {
                Some(x) => *x = (*x).max(w),
                None => widths.push(w),
            }
        }
    }
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 < row.len() {
                let pad = widths[i] - cell.chars().count() + 2;
                line.push_str(cell);
                line.push_str(&" ".repeat(pad));
            } else {
                line.push_str(cell);
            }
        }
        writeln!(f, "{}", line.trim_end())?;
    }
    Ok(())
}

fn counts_cells(c: &Change) -> [String; 3] {
    [c.runs.to_string(), c.previous.to_string(), c.to_string()]
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let len = human(self.period.seconds);
        writeln!(
            f,
            "Failed runs from {} to {} ({len}), compared with the {len} before",
            self.period.from, self.period.until
        )?;
        if let Some(q) = &self.queue {
            writeln!(f, "Queue: {q}")?;
        }
        writeln!(
            f,
            "Lookout schema generation {}: categories from {}; exit codes from {}; messages from {}",
            self.generation, self.sources.category, self.sources.exit_code, self.sources.message
        )?;
        writeln!(f)?;
        let t = &self.total;
        writeln!(
            f,
            "{} failed run(s); previous period {}; change {t}",
            t.runs, t.previous
        )?;
        if t.runs == 0 && t.previous == 0 {
            return Ok(());
        }
        writeln!(f)?;
        writeln!(f, "By queue and category")?;
        let mut rows = vec![[
            "QUEUE",
            "CATEGORY",
            "SUBCATEGORY",
            "RUNS",
            "PREVIOUS",
            "CHANGE",
        ]
        .map(String::from)
        .to_vec()];
        for r in &self.by_category.rows {
            let mut row = vec![
                r.queue.clone(),
                r.category.clone(),
                r.subcategory.clone().unwrap_or_else(|| "-".into()),
            ];
            row.extend(counts_cells(&r.counts));
            rows.push(row);
        }
        let other = &self.by_category.other;
        if other.runs + other.previous > 0 {
            let mut row = vec![OTHER.to_string(), OTHER.to_string(), "-".to_string()];
            row.extend(counts_cells(other));
            rows.push(row);
        }
        table(f, &rows)?;
        writeln!(f)?;
        writeln!(f, "By exit code")?;
        let mut rows = vec![["EXIT CODE", "RUNS", "PREVIOUS", "CHANGE"]
            .map(String::from)
            .to_vec()];
        for r in &self.by_exit_code.rows {
            let mut row = vec![r
                .exit_code
                .map(|c| c.to_string())
                .unwrap_or_else(|| "none".into())];
            row.extend(counts_cells(&r.counts));
            rows.push(row);
        }
        let other = &self.by_exit_code.other;
        if other.runs + other.previous > 0 {
            let mut row = vec![OTHER.to_string()];
            row.extend(counts_cells(other));
            rows.push(row);
        }
        table(f, &rows)?;
        let m = &self.messages;
        if t.runs == 0 {
            return Ok(());
        }
        writeln!(f)?;
        writeln!(f, "Most common messages")?;
        let mut rows = vec![["RUNS", "MESSAGE"].map(String::from).to_vec()];
        for r in &m.top {
            rows.push(vec![r.runs.to_string(), r.message.clone()]);
        }
        for (n, what) in [
            (m.other_runs, "(other messages)"),
            (m.missing, "(no message)"),
            (m.unreadable, "(error text not readable)"),
        ] {
            if n > 0 {
                rows.push(vec![n.to_string(), what.to_string()]);
            }
        }
        table(f, &rows)
    }
}

#[cfg(test)]
mod tests;
