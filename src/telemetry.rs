//! What the ingester tells an operator about failures: one function per kind
//! of failure, which bumps its counter and writes its log line, so each
//! failure is counted and logged exactly once, in one place (the idea of
//! Vector's `internal_events`). Log lines of one kind repeat at most once
//! per [`WINDOW`]; the next one that gets through says how many were held
//! back, and the counters count every one.
//!
//! Also [`register`]: registers every metric and creates the label values
//! known in advance, so a first scrape shows them at 0.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Display;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use prost_types::Timestamp;
use tokio::sync::mpsc;

use crate::convert::sanitize::Action;
use crate::convert::{self, Problem};
use crate::deadletter::{self, DeadLetter};
use crate::metrics::{self, upstream};
use crate::progress::Progress;
use crate::proto::armadaevents::EventSequence;
use crate::source::pulsar::Ack;
use crate::source::{Origin, PulsarId};
use crate::store::retry::ErrorClass;
use crate::store::schema::Detected;
use crate::store::{FailedRow, Table, Unmatched, WriteReport, STEPS};

/// Log lines with the same key are written at most once per window.
pub const WINDOW: Duration = Duration::from_secs(10);

/// The `operation` label values of `db_errors_total` (see the store's
/// `op("...")` calls; a unit test keeps the two in step).
const DB_OPERATIONS: [&str; 8] = [
    "connect",
    "begin",
    "lock",
    "detect",
    "commit",
    "create_temp_table",
    "copy",
    "update",
];

/// The `kind` label values of `source_errors_total` (see `source::pulsar`;
/// a unit test keeps the two in step).
const SOURCE_ERROR_KINDS: [&str; 3] = ["connect", "stream", "ack"];

/// Holds back repeats of a log line. The clock is passed in, so the
/// behaviour is deterministic and testable. Keys come from fixed
/// vocabularies (reasons, tables), so the map stays small.
#[derive(Debug)]
pub struct RateLimiter {
    window: Duration,
    keys: HashMap<String, Held>,
}

#[derive(Debug)]
struct Held {
    logged_at: Instant,
    suppressed: u64,
}

impl RateLimiter {
    pub fn new(window: Duration) -> RateLimiter {
        RateLimiter {
            window,
            keys: HashMap::new(),
        }
    }

    /// Whether a line under `key` may be written at `now`: `Some(n)` with
    /// the number held back since the last one written, or `None` to hold
    /// this one back.
    pub fn admit(&mut self, key: &str, now: Instant) -> Option<u64> {
        match self.keys.get_mut(key) {
            None => {
                self.keys.insert(
                    key.to_string(),
                    Held {
                        logged_at: now,
                        suppressed: 0,
                    },
                );
                Some(0)
            }
            Some(h) if now.saturating_duration_since(h.logged_at) >= self.window => {
                h.logged_at = now;
                Some(std::mem::take(&mut h.suppressed))
            }
            Some(h) => {
                h.suppressed += 1;
                None
            }
        }
    }
}

static LIMITER: LazyLock<Mutex<RateLimiter>> =
    LazyLock::new(|| Mutex::new(RateLimiter::new(WINDOW)));

#[derive(Clone, Copy)]
enum Level {
    Info,
    Warn,
    Error,
}

/// Writes `line` unless a line with `key` was written within [`WINDOW`].
fn log(level: Level, key: &str, line: impl Display) {
    let admitted = match LIMITER.lock() {
        Ok(mut l) => l.admit(key, Instant::now()),
        // A panic elsewhere while holding the lock: log without limiting.
        Err(_) => Some(0),
    };
    let Some(held_back) = admitted else { return };
    let more = match held_back {
        0 => String::new(),
        n => format!(" ({n} more like it not logged)"),
    };
    match level {
        Level::Info => tracing::info!("{line}{more}"),
        Level::Warn => tracing::warn!("{line}{more}"),
        Level::Error => tracing::error!("{line}{more}"),
    }
}

/// Events converted, by kind (not a failure; counted here with the rest of
/// what conversion returns).
pub fn events(by_kind: &BTreeMap<&'static str, u64>) {
    for (kind, n) in by_kind {
        metrics::EVENTS.with_label_values(&[kind]).inc_by(*n);
    }
}

/// Strings altered to fit their column, by action.
pub fn sanitised(by_action: &BTreeMap<Action, u64>) {
    for (action, n) in by_action {
        metrics::SANITISED
            .with_label_values(&[action.as_str()])
            .inc_by(*n);
    }
}

/// A problem with a message or event. `unapplied` problems (the message
/// becomes a dead letter) are warnings; the others, applied with a change,
/// are information. `at` says where, e.g. a `pipeline::Located`.
pub fn input_problem(at: &dyn Display, problem: &Problem, unapplied: bool) {
    let reason = problem.reason.as_str();
    metrics::INPUT_ERRORS.with_label_values(&[reason]).inc();
    if let Some(e) = upstream::message_error(problem.reason) {
        upstream::PULSAR_MESSAGE_ERRORS
            .with_label_values(&[e])
            .inc();
    }
    if unapplied {
        log(
            Level::Warn,
            &format!("input {reason} unapplied"),
            format_args!("not applied: {at}"),
        );
    } else {
        log(Level::Info, &format!("input {reason}"), at);
    }
}

/// A recorded file that could not be opened or read to its end.
pub fn file_unreadable(origin: &Origin, error: &str) {
    let reason = convert::Reason::File.as_str();
    metrics::INPUT_ERRORS.with_label_values(&[reason]).inc();
    log(
        Level::Warn,
        reason,
        format_args!("skipped {origin}: {reason}: {error}"),
    );
}

/// A recorded file that could not be opened at all (`error` says why, e.g.
/// "no such file").
pub fn file_unopenable(path: &str, error: &str) {
    let reason = convert::Reason::File.as_str();
    metrics::INPUT_ERRORS.with_label_values(&[reason]).inc();
    log(
        Level::Warn,
        &format!("{reason} unopenable"),
        format_args!("skipped {path}: {error}"),
    );
}

/// A row that could not be written even on its own (an error: data is
/// missing from the tables until its dead letter is redriven).
pub fn row_failed(f: &FailedRow) {
    metrics::ROWS_FAILED
        .with_label_values(&[f.table.as_str()])
        .inc();
    log(
        Level::Error,
        &format!("row_failed {} {}", f.table, f.operation),
        format_args!(
            "row not written: {} {} {}: {}",
            f.table, f.operation, f.key, f.error
        ),
    );
}

/// An update that matched no row (counted with the dead letter it causes,
/// under `unknown_job` or `unknown_run`).
pub fn update_unmatched(u: &Unmatched) {
    log(
        Level::Warn,
        &format!("unmatched {}", u.table),
        format_args!(
            "update of {} {} matched no row (not created yet, or never)",
            u.table, u.key
        ),
    );
}

/// A message kept as a dead letter. What went wrong was logged by the
/// failure's own function; this says where the message went.
pub fn dead_letter_kept(d: &DeadLetter) {
    for r in d.reasons.iter() {
        metrics::DEAD_LETTERS.with_label_values(&[r.as_str()]).inc();
    }
    log(
        Level::Info,
        &format!("dead letter {}", d.reasons),
        format_args!("kept {} as a dead letter ({})", d.source, d.reasons),
    );
}

/// The schema generation the ingester writes for, read at start-up
/// (`previous` is `None`) or changed under it by a migration (or upstream's
/// hot/cold split): logged and exported. Rare, so never rate-limited.
pub fn schema_detected(previous: Option<&Detected>, now: &Detected) {
    metrics::SCHEMA_GENERATION.set(now.generation.number());
    metrics::SCHEMA_HOT_COLD.set(i64::from(now.hot_cold));
    match previous {
        None if now.version_mismatch() => tracing::warn!("{now}"),
        None => tracing::info!("{now}"),
        Some(p) => tracing::warn!(
            "the Lookout schema changed under the ingester: was generation {}{}, now {now}; \
             batches are converted for {} from now on",
            p.generation,
            if p.hot_cold { " (hot/cold)" } else { "" },
            now.generation
        ),
    }
}

/// Now, in Unix milliseconds.
fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn timestamp_ms(t: &Timestamp) -> i64 {
    t.seconds
        .saturating_mul(1000)
        .saturating_add(i64::from(t.nanos) / 1_000_000)
}

/// What the metrics need from events, taken when they are judged: their
/// count by queue and upstream's name, and their `created` times (the
/// publish time standing in, as in conversion). One message's, or a whole
/// batch's summed with [`Observed::absorb`] (kept per batch, not per
/// message: a map per message weighed more than the message).
#[derive(Debug, Clone, Default)]
pub struct Observed {
    pub by_queue: BTreeMap<String, BTreeMap<&'static str, u64>>,
    /// Unix milliseconds.
    pub created_ms: Vec<i64>,
}

impl Observed {
    /// Pure: what `seq` (the events judged of a message) holds.
    pub fn of(seq: &EventSequence, publish_time: Option<&Timestamp>) -> Observed {
        let mut o = Observed::default();
        if seq.events.is_empty() {
            return o;
        }
        let by_msg_type = o
            .by_queue
            .entry(String::from_utf8_lossy(&seq.queue).into_owned())
            .or_default();
        for e in &seq.events {
            let name = upstream::msg_type(convert::event_kind(e));
            *by_msg_type.entry(name).or_insert(0) += 1;
            if let Some(t) = e.created.as_ref().or(publish_time) {
                o.created_ms.push(timestamp_ms(t));
            }
        }
        o
    }

    /// Adds `other`'s counts and times to these.
    pub fn absorb(&mut self, other: Observed) {
        for (queue, by_msg_type) in other.by_queue {
            add_counts(self.by_queue.entry(queue).or_default(), by_msg_type);
        }
        self.created_ms.extend(other.created_ms);
    }
}

/// Adds each count of `from` to `into`'s count of the same key.
pub fn add_counts<K: Ord>(into: &mut BTreeMap<K, u64>, from: impl IntoIterator<Item = (K, u64)>) {
    for (k, n) in from {
        *into.entry(k).or_insert(0) += n;
    }
}

/// Most distinct `queue` label values upstream's `events_processed` gets
/// here; later queues count under [`OTHER_QUEUES`], so a stream of made-up
/// queue names cannot grow the registry without bound.
pub const MAX_QUEUE_LABELS: usize = 1000;
/// The `queue` label of queues past [`MAX_QUEUE_LABELS`].
pub const OTHER_QUEUES: &str = "_other";

static QUEUE_LABELS: LazyLock<Mutex<BTreeSet<String>>> =
    LazyLock::new(|| Mutex::new(BTreeSet::new()));

/// The `queue` label for `queue`: itself (cut to 512 bytes, the column's
/// width) while fewer than [`MAX_QUEUE_LABELS`] are in use.
fn queue_label(queue: &str) -> String {
    let (q, _) = convert::sanitize::clean(queue, 512);
    let Ok(mut seen) = QUEUE_LABELS.lock() else {
        return OTHER_QUEUES.to_string();
    };
    if seen.contains(&q) {
        return q;
    }
    if seen.len() >= MAX_QUEUE_LABELS {
        drop(seen);
        log(
            Level::Warn,
            "queue labels",
            format_args!(
                "more than {MAX_QUEUE_LABELS} queues seen; further queues are counted as \
                 queue=\"{OTHER_QUEUES}\" in events_processed"
            ),
        );
        return OTHER_QUEUES.to_string();
    }
    seen.insert(q.clone());
    q
}

/// Events, once their batch is committed: upstream's
/// `events_processed`, and how long after `created` they were committed.
pub fn events_committed(o: &Observed, now_ms: i64) {
    for (queue, by_msg_type) in &o.by_queue {
        let queue = queue_label(queue);
        for (msg_type, n) in by_msg_type {
            upstream::EVENTS_PROCESSED
                .with_label_values(&[&queue, "jobSet", msg_type])
                .inc_by(*n);
        }
    }
    for created in &o.created_ms {
        let secs = now_ms.saturating_sub(*created).max(0) as f64 / 1000.0;
        metrics::COMMIT_LATENCY_SECONDS.observe(secs);
    }
}

/// What the store did with one batch, counted as upstream counts it:
/// `rows_changed` per step (job updates after the terminal filter, failed
/// rows included), milliseconds per row per step and for the whole write,
/// and the states the job updates set. `job_states` are the states of the
/// conflated job updates.
pub fn store_written(
    report: &WriteReport,
    job_states: impl Iterator<Item = i16>,
    elapsed: Duration,
) {
    let mut all_rows = 0;
    for (i, step) in STEPS.iter().enumerate() {
        let (table, op) = (step.table().as_str(), step.operation().as_str());
        let attempted = report.counts(*step).attempted;
        let rows = if step.table() == Table::Job && op == "update" {
            attempted.saturating_sub(report.filtered_terminal)
        } else {
            attempted
        };
        if step.table() != Table::JobSpec {
            all_rows += attempted;
        }
        if rows == 0 {
            continue;
        }
        upstream::ROWS_CHANGED
            .with_label_values(&[table, op])
            .inc_by(rows);
        if let Some(ms) = upstream::ms_per_row(report.step_time[i], rows) {
            upstream::AVERAGE_ROW_CHANGE_TIME_BY_OPERATION
                .with_label_values(&[table, op])
                .observe(ms);
        }
    }
    if let Some(ms) = upstream::ms_per_row(elapsed, all_rows) {
        upstream::AVERAGE_ROW_CHANGE_TIME.observe(ms);
    }
    let mut states: BTreeMap<&'static str, u64> = BTreeMap::new();
    for s in job_states.filter_map(upstream::state_name) {
        *states.entry(s).or_insert(0) += 1;
    }
    for (state, n) in states {
        upstream::STATE_UPDATES
            .with_label_values(&[state])
            .inc_by(n);
    }
}

/// One committed batch, for its metrics and its log line.
#[derive(Debug)]
pub struct BatchCommitted<'a> {
    pub messages: usize,
    pub events: u64,
    pub write: &'a WriteReport,
    pub dead_letters: usize,
    /// From handing the batch to the store to its commit.
    pub took: Duration,
    /// The oldest publish time of the batch's messages.
    pub oldest_publish: Option<Timestamp>,
}

/// A committed batch: the batch-size histograms, the time of the last
/// commit, and one INFO line with what it did.
pub fn batch_committed(b: &BatchCommitted) {
    let now = now_ms();
    metrics::BATCH_MESSAGES.observe(b.messages as f64);
    metrics::BATCH_EVENTS.observe(b.events as f64);
    metrics::LAST_COMMIT_TIMESTAMP.set(now as f64 / 1000.0);
    // Seconds since the batch's oldest message was published (0 without publish times).
    let lag_s = b.oldest_publish.as_ref().map_or(0.0, |t| {
        now.saturating_sub(timestamp_ms(t)).max(0) as f64 / 1000.0
    });
    let w = b.write;
    tracing::info!(
        messages = b.messages,
        events = b.events,
        job_inserted = w.job_inserted.attempted,
        job_spec_inserted = w.job_spec_inserted.attempted,
        job_updated = w.job_updated.attempted,
        job_run_inserted = w.job_run_inserted.attempted,
        job_run_updated = w.job_run_updated.attempted,
        job_error_inserted = w.job_error_inserted.attempted,
        filtered_terminal = w.filtered_terminal,
        failed_rows = w.failed.len(),
        dead_letters = b.dead_letters,
        duration_ms = b.took.as_millis() as u64,
        lag_s,
        "batch committed"
    );
}

/// The live source's progress, and the subscription it reads for.
static PROGRESS: LazyLock<Mutex<(Progress, String)>> =
    LazyLock::new(|| Mutex::new((Progress::default(), String::new())));

/// The live source subscribed as `subscription` (upstream's label).
pub fn subscribed(subscription: &str, first: bool) {
    if let Ok(mut p) = PROGRESS.lock() {
        p.1 = subscription.to_string();
    }
    if !first {
        metrics::BROKER_RECONNECTS.inc();
    }
}

/// The broker could not be reached, or the consumer stream broke.
pub fn broker_connection_error() {
    upstream::PULSAR_CONNECTION_ERRORS.inc();
}

/// A message arrived from the broker (redeliveries too, as upstream
/// records them): upstream's publish-time gauge.
pub fn message_received(topic: &str, publish_ms: u64) {
    let subscription = PROGRESS.lock().map(|p| p.1.clone()).unwrap_or_default();
    upstream::PULSAR_MESSAGE_PUBLISH_TIME
        .with_label_values(&[&subscription, &upstream::partition_label(topic)])
        .set((publish_ms / 1000) as f64);
}

/// A message entered the pipeline and waits for its acknowledgement.
pub fn message_waiting(topic: &Arc<str>, id: &PulsarId, publish_ms: u64) {
    if let Ok(mut p) = PROGRESS.lock() {
        p.0.received(topic, id, i64::try_from(publish_ms).unwrap_or(i64::MAX));
    }
}

/// An acknowledgement was sent (`ok`: the broker took it); the messages it
/// releases are upstream's processed messages.
pub fn acknowledged(ack: &Ack, ok: bool) {
    let released = PROGRESS.lock().map_or(0, |mut p| p.0.acknowledged(ack));
    if ok {
        upstream::PULSAR_MESSAGES_PROCESSED.inc_by(released);
    }
}

/// Sets the lag gauges from the live source's progress (at scrape time).
fn refresh_lag() {
    let Ok(p) = PROGRESS.lock() else { return };
    for (topic, lag) in p.0.lag(now_ms()) {
        let partition = upstream::partition_label(&topic);
        metrics::LAG_SECONDS
            .with_label_values(&[&partition])
            .set(lag);
        upstream::PULSAR_MESSAGE_PROCESSING_DELAY
            .with_label_values(&[&p.1, &partition])
            .set((lag * 1000.0).floor());
    }
}

/// Reports the depth of the queue fed by `tx` as `queue_depth{stage}` at
/// each scrape, without keeping the channel open.
pub fn watch_queue<T: Send + 'static>(stage: &'static str, tx: &mpsc::Sender<T>) {
    let weak = tx.downgrade();
    metrics::on_scrape(stage, move || {
        let depth = weak
            .upgrade()
            .map_or(0, |s| s.max_capacity().saturating_sub(s.capacity()));
        metrics::QUEUE_DEPTH
            .with_label_values(&[stage])
            .set(i64::try_from(depth).unwrap_or(i64::MAX));
    });
}

/// Registers every metric and creates each label value known in advance,
/// so that every series is on `/metrics` (at 0) from the first scrape.
/// Idempotent; call it at start-up.
pub fn register() {
    metrics::register();
    metrics::on_scrape("lag", refresh_lag);
    for kind in convert::EVENT_KINDS {
        metrics::EVENTS.with_label_values(&[kind]);
    }
    for reason in convert::Reason::ALL {
        metrics::INPUT_ERRORS.with_label_values(&[reason.as_str()]);
    }
    for action in Action::ALL {
        metrics::SANITISED.with_label_values(&[action.as_str()]);
    }
    for reason in deadletter::Reason::all() {
        metrics::DEAD_LETTERS.with_label_values(&[reason.as_str()]);
    }
    for step in STEPS {
        metrics::ROWS.with_label_values(&[step.table().as_str(), step.operation().as_str()]);
        metrics::ROWS_FAILED.with_label_values(&[step.table().as_str()]);
        metrics::FALLBACKS.with_label_values(&[step.table().as_str()]);
    }
    for class in [ErrorClass::Retryable, ErrorClass::NotRetryable] {
        for op in DB_OPERATIONS {
            metrics::DB_ERRORS.with_label_values(&[class.label(), op]);
        }
    }
    for kind in SOURCE_ERROR_KINDS {
        metrics::SOURCE_ERRORS.with_label_values(&[kind]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeats_are_held_back_for_a_window_then_counted() {
        let mut l = RateLimiter::new(Duration::from_secs(10));
        let t0 = Instant::now();
        let at = |s: u64| t0 + Duration::from_secs(s);
        assert_eq!(l.admit("a", at(0)), Some(0));
        assert_eq!(l.admit("a", at(1)), None);
        assert_eq!(l.admit("a", at(9)), None);
        // Another key has its own window.
        assert_eq!(l.admit("b", at(9)), Some(0));
        // The window is over: the line is written with the two held back.
        assert_eq!(l.admit("a", at(10)), Some(2));
        assert_eq!(l.admit("a", at(15)), None);
        assert_eq!(l.admit("a", at(20)), Some(1));
        // Nothing held back since: the count starts again at 0.
        assert_eq!(l.admit("a", at(31)), Some(0));
        assert_eq!(l.admit("b", at(12)), None);
    }

    /// The label strings in `op("...")` calls (or `SOURCE_ERRORS` calls) of a file.
    fn literals(source: &str, before: &str) -> Vec<String> {
        source
            .split(before)
            .skip(1)
            .filter_map(|rest| rest.split('"').next())
            .map(str::to_string)
            .collect()
    }

    #[test]
    fn known_db_operations_and_source_kinds_match_the_code() {
        let store = [include_str!("store/mod.rs"), include_str!("store/copy.rs")].concat();
        let ops = literals(&store, "op(\"");
        assert!(!ops.is_empty(), "no op(\"...\") calls found in the store");
        for op in &ops {
            assert!(DB_OPERATIONS.contains(&op.as_str()), "{op} is not listed");
        }
        assert!(DB_OPERATIONS.contains(&"connect"));
        let pulsar = include_str!("source/pulsar.rs");
        let kinds = literals(pulsar, "SOURCE_ERRORS.with_label_values(&[\"");
        assert!(!kinds.is_empty());
        for k in &kinds {
            assert!(
                SOURCE_ERROR_KINDS.contains(&k.as_str()),
                "{k} is not listed"
            );
        }
    }

    #[test]
    fn registration_creates_known_label_values_at_zero() {
        register();
        let text = metrics::render();
        for line in [
            "lookout_ingester_events_total{kind=\"job_run_leased\"}",
            "lookout_ingester_input_errors_total{reason=\"file\"}",
            "lookout_ingester_strings_sanitised_total{action=\"truncated\"}",
            "lookout_ingester_dead_letters_total{reason=\"unknown_run\"}",
            "lookout_ingester_rows_total{operation=\"update\",table=\"job_run\"}",
            "lookout_ingester_rows_failed_total{table=\"job_spec\"}",
            "lookout_ingester_row_fallbacks_total{table=\"job_error\"}",
            "lookout_ingester_db_errors_total{class=\"fatal\",operation=\"connect\"}",
            "lookout_ingester_source_errors_total{kind=\"ack\"}",
            "lookout_ingester_schema_generation ",
            "lookout_ingester_schema_hot_cold ",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
    }

    #[test]
    fn counts_what_conversion_returned() {
        let before = metrics::SANITISED.with_label_values(&["nul_removed"]).get();
        let events = metrics::EVENTS.with_label_values(&["job_validated"]).get();
        sanitised(&BTreeMap::from([(Action::NulRemoved, 3)]));
        self::events(&BTreeMap::from([("job_validated", 2)]));
        assert!(metrics::SANITISED.with_label_values(&["nul_removed"]).get() >= before + 3);
        assert!(metrics::EVENTS.with_label_values(&["job_validated"]).get() >= events + 2);
    }
}
