//! What the ingester tells an operator about failures: one function per kind
//! of failure, which bumps its counter and writes its log line, so each
//! failure is counted and logged exactly once, in one place (the idea of
//! Vector's `internal_events`). Log lines of one kind repeat at most once
//! per [`WINDOW`]; the next one that gets through says how many were held
//! back, and the counters count every one.
//!
//! Also [`register`]: registers every metric and creates the label values
//! known in advance, so a first scrape shows them at 0.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Display;
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use crate::convert::sanitize::Action;
use crate::convert::{self, Problem};
use crate::deadletter::{self, DeadLetter};
use crate::metrics;
use crate::source::Origin;
use crate::store::retry::ErrorClass;
use crate::store::schema::Detected;
use crate::store::{FailedRow, Unmatched, STEPS};

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

/// Registers every metric and creates each label value known in advance,
/// so that every series is on `/metrics` (at 0) from the first scrape.
/// Idempotent; call it at start-up.
pub fn register() {
    metrics::register();
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
