//! Which database errors are worth retrying, and the retry loop itself.
//!
//! The rule of thumb: an error about the *environment* (connection, server
//! resources, locks, failover, credentials) is retried, because the same
//! statement will succeed once the environment recovers and giving up would
//! dead-letter perfectly good rows. An error about the *statement or its data*
//! (bad value, constraint, unknown column) is not: the same statement fails
//! again forever, so the store isolates it (batch → step → row) and reports the
//! offending rows instead. Upstream retries every error except those matching
//! `fatalInsertionErrors`, so one bad row can wedge it; we keep its fatal regex
//! override and otherwise decide by SQLSTATE.

use crate::backoff::Backoff;
use regex::Regex;
use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use tokio::sync::watch;

/// What to do about an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// Transient: wait and run the same thing again.
    Retryable,
    /// Deterministic: running it again gives the same error.
    NotRetryable,
}

impl ErrorClass {
    pub(crate) fn is_retryable(self) -> bool {
        self == ErrorClass::Retryable
    }

    /// Label value for `metrics::DB_ERRORS`.
    pub(crate) fn label(self) -> &'static str {
        match self {
            ErrorClass::Retryable => "retryable",
            ErrorClass::NotRetryable => "fatal",
        }
    }
}

/// The classification, as documentation: (error, retried?, why).
///
/// Entries starting with a SQLSTATE (`40001`) or a SQLSTATE class (`53xxx`,
/// checked via its `...000` code) are unit-tested against [`classify_sqlstate`];
/// exact codes take precedence over their class. A configured fatal regex
/// beats everything.
pub const CLASSIFICATION: &[(&str, bool, &str)] = &[
    ("message matches a configured fatal regex (fatalInsertionErrors)", false, "operator override, checked before anything else, as upstream"),
    ("connection closed, I/O error, connect error, timeout, TLS error, unexpected or unparsable server message", true, "the connection failed, not the data; the pool hands out a fresh connection"),
    ("authentication error", true, "no row can be written until credentials are fixed; waiting beats dead-lettering everything"),
    ("pool: wait/create/recycle timeout, connection creation failure, post-create hook error", true, "the server is unreachable or slow; nothing row-specific"),
    ("pool: closed or misconfigured", false, "the store is shutting down or mis-built; the write is abandoned with StoreError::Pool, rows are not failed"),
    ("parameter encoding, column decoding, wrong parameter count, bad configuration", false, "a programming or value error; the same statement fails again"),
    ("08xxx connection_exception", true, "the connection broke; retry on a new one"),
    ("28xxx invalid_authorization_specification", true, "credentials or pg_hba problem on connect; environment, not data"),
    ("3D000 invalid_catalog_name", true, "the database is missing on connect (being restored or recreated); environment"),
    ("25006 read_only_sql_transaction", true, "we reached a standby, typically mid-failover; a new connection finds the new primary"),
    ("40001 serialization_failure", true, "concurrency conflict; Postgres documents it as retryable"),
    ("40P01 deadlock_detected", true, "concurrency conflict; the other transaction wins, ours succeeds on retry"),
    ("40003 statement_completion_unknown", true, "the connection failed mid-commit; the whole batch is idempotent, so re-running is safe"),
    ("40xxx transaction_rollback (other, e.g. 40002)", false, "40002 is a deferred constraint violation, i.e. data"),
    ("42501 insufficient_privilege", true, "a missing GRANT is the deployment's fault and hits every row alike; wait for the fix rather than dead-letter everything"),
    ("42xxx syntax_error_or_access_rule_violation", false, "wrong SQL or schema (undefined table/column); fails identically every time"),
    ("53400 configuration_limit_exceeded", false, "a server limit hit by the statement's size (e.g. locks per transaction); smaller step/row statements are the cure, not waiting"),
    ("53xxx insufficient_resources", true, "disk full, out of memory, too many connections (53300): server pressure that passes"),
    ("54xxx program_limit_exceeded", false, "statement too complex or too large; the same statement fails again, smaller ones may not"),
    ("55P03 lock_not_available", true, "lock_timeout expired waiting for another session; the lock will be released"),
    ("55xxx object_not_in_prerequisite_state", false, "not transient for our statements"),
    ("57014 query_canceled", true, "statement_timeout or pg_cancel_backend; load-related, so retry (a batch that always exceeds the timeout would loop: raise the timeout or shrink batches)"),
    ("57P01 admin_shutdown", true, "server shutting down or our backend was terminated; reconnect"),
    ("57P02 crash_shutdown", true, "server crashed and is recovering; reconnect"),
    ("57P03 cannot_connect_now", true, "server starting up or in recovery; reconnect later"),
    ("57P04 database_dropped", true, "environment; dead-lettering every row would not help"),
    ("57P05 idle_session_timeout", true, "the server closed an idle connection; reconnect"),
    ("57xxx operator_intervention (other)", false, "no other code in this class is transient for us"),
    ("58xxx system_error", true, "server-side I/O failure (58030 io_error); not about our rows"),
    ("72000 snapshot_too_old", true, "a fresh snapshot succeeds"),
    ("22xxx data_exception", false, "a value does not fit (too long, out of range, bad encoding); isolate the row"),
    ("23xxx integrity_constraint_violation", false, "NOT NULL, CHECK, FK, unique violation; isolate the row"),
    ("XXxxx internal_error, data_corrupted, index_corrupted", false, "deterministic for the statement; isolate and report rather than loop forever"),
    ("any other SQLSTATE", false, "unknown errors are isolated (batch → step → row) and reported, never retried forever on one bad row"),
];

/// Classifies a SQLSTATE code (five characters, e.g. `"40001"`). See [`CLASSIFICATION`].
pub(crate) fn classify_sqlstate(code: &str) -> ErrorClass {
    use ErrorClass::*;
    let class = code.get(..2).unwrap_or("");
    match code {
        "40001" | "40P01" | "40003" => Retryable,
        "25006" | "3D000" | "42501" | "55P03" | "57014" | "72000" => Retryable,
        "57P01" | "57P02" | "57P03" | "57P04" | "57P05" => Retryable,
        "53400" => NotRetryable,
        _ => match class {
            "08" | "28" | "53" | "58" => Retryable,
            _ => NotRetryable,
        },
    }
}

/// Full text of a driver error. `tokio_postgres::Error`'s `Display` only says
/// "db error" or "error communicating with the server"; logs, failed-row
/// reports and the fatal regexes need the server message and SQLSTATE, in the
/// same shape as pgx's (`ERROR: msg (SQLSTATE 23505)`) so upstream's regexes
/// keep working.
pub(crate) fn describe(err: &tokio_postgres::Error) -> String {
    if let Some(db) = err.as_db_error() {
        let mut s = format!(
            "{}: {} (SQLSTATE {})",
            db.severity(),
            db.message(),
            db.code().code()
        );
        if let Some(detail) = db.detail() {
            s.push_str(" DETAIL: ");
            s.push_str(detail);
        }
        if let Some(c) = db.constraint() {
            s.push_str(" CONSTRAINT: ");
            s.push_str(c);
        }
        return s;
    }
    crate::pg::error_chain(err)
}

fn matches_fatal(text: &str, fatal: &[Regex]) -> bool {
    fatal.iter().any(|r| r.is_match(text))
}

/// Classifies a driver error. See [`CLASSIFICATION`].
pub fn classify(err: &tokio_postgres::Error, fatal: &[Regex]) -> ErrorClass {
    if matches_fatal(&describe(err), fatal) {
        return ErrorClass::NotRetryable;
    }
    classify_unforced(err)
}

fn classify_unforced(err: &tokio_postgres::Error) -> ErrorClass {
    if let Some(code) = err.code() {
        return classify_sqlstate(code.code());
    }
    if err.is_closed() {
        return ErrorClass::Retryable;
    }
    // An I/O error anywhere in the chain means the socket failed.
    let mut source = std::error::Error::source(err);
    while let Some(e) = source {
        if e.is::<std::io::Error>() {
            return ErrorClass::Retryable;
        }
        source = e.source();
    }
    // The error kind is private; its Display text is the stable way to tell.
    const CONNECTION_LEVEL: &[&str] = &[
        "error communicating with the server",
        "unexpected message from server",
        "error performing TLS handshake",
        "error parsing response from server",
        "authentication error",
        "error connecting to server",
        "timeout waiting for server",
        "connection closed",
    ];
    let text = err.to_string();
    if CONNECTION_LEVEL.iter().any(|p| text.starts_with(p)) {
        ErrorClass::Retryable
    } else {
        ErrorClass::NotRetryable
    }
}

/// Classifies an error from getting a pooled connection. Everything that can
/// go wrong while *creating* a connection is environmental, so retryable,
/// unless a fatal regex says otherwise; a closed or runtime-less pool is not.
pub(crate) fn classify_pool(err: &deadpool_postgres::PoolError, fatal: &[Regex]) -> ErrorClass {
    use deadpool_postgres::PoolError as P;
    if matches_fatal(&describe_pool(err), fatal) {
        return ErrorClass::NotRetryable;
    }
    match err {
        P::Timeout(_) | P::Backend(_) | P::PostCreateHook(_) => ErrorClass::Retryable,
        P::Closed | P::NoRuntimeSpecified => ErrorClass::NotRetryable,
    }
}

/// Full text of a pool error (see [`describe`]).
pub(crate) fn describe_pool(err: &deadpool_postgres::PoolError) -> String {
    match err {
        deadpool_postgres::PoolError::Backend(e) => {
            format!("cannot connect to Postgres: {}", describe(e))
        }
        other => format!(
            "Postgres connection pool: {}",
            crate::pg::error_chain(other)
        ),
    }
}

/// The store's waits: 1s (or `max`, if smaller), doubling up to `max`.
fn store_backoff(max: Duration) -> Backoff {
    Backoff::new(Duration::from_secs(1).min(max), max)
}

/// How long and how often to retry.
#[derive(Debug, Clone)]
pub(crate) struct RetryPolicy {
    pub(crate) max_backoff: Duration,
    /// Retries after the first attempt; `None` retries forever (upstream's default).
    pub(crate) max_retries: Option<u32>,
    /// Give up once retrying has taken this long (`retryFor`); `None`
    /// retries for ever (`run`).
    pub(crate) retry_for: Option<Duration>,
}

/// An error the retry loop can reason about.
pub(crate) trait RetryableError {
    fn class(&self, fatal: &[Regex]) -> ErrorClass;
    /// Full text for logs and reports.
    fn text(&self) -> String;
    /// `operation` label for `metrics::DB_ERRORS`.
    fn operation(&self) -> &'static str;
}

/// Why [`retry`] gave up.
#[derive(Debug)]
pub(crate) enum RetryError<E> {
    /// Not retryable: the caller decides (fallback or report).
    Fatal(E),
    /// Retryable, but `max_retries` retries failed too, or retrying took
    /// `retry_for` (then `after` is that time).
    Exhausted {
        attempts: u32,
        last: E,
        after: Option<Duration>,
    },
    /// Shutdown was requested while waiting to retry.
    Shutdown { last: E },
}

/// Resolves when `shutdown` becomes true (never, if the sender is gone).
async fn shutdown_requested(shutdown: &watch::Receiver<bool>) {
    let mut rx = shutdown.clone();
    if rx.wait_for(|v| *v).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Runs `op` until it succeeds, fails non-retryably, exhausts the policy, or
/// shutdown is requested during a backoff wait (an attempt in flight is never
/// interrupted: every attempt is a transaction or a single statement, so
/// stopping between attempts leaves nothing half-done).
/// Returns the value and how many retries it took. Every failure is counted
/// in `metrics::DB_ERRORS`.
/// Retry loops now waiting out retryable errors: since when, and the last
/// error, per loop. `/healthz` reads it through [`longest_retry`]: a store
/// retrying for longer than `health.stallTimeout` is unhealthy.
static RETRYING: Mutex<BTreeMap<u64, (Instant, String)>> = Mutex::new(BTreeMap::new());
static NEXT_LOOP: AtomicU64 = AtomicU64::new(0);

/// One loop's entry in [`RETRYING`], removed when the loop ends however it ends.
struct Retrying(u64);

impl Retrying {
    fn start() -> Retrying {
        Retrying(NEXT_LOOP.fetch_add(1, Ordering::Relaxed))
    }

    fn note(&self, error: String) {
        if let Ok(mut m) = RETRYING.lock() {
            m.entry(self.0)
                .and_modify(|e| e.1 = error.clone())
                .or_insert_with(|| (Instant::now(), error));
        }
    }
}

impl Drop for Retrying {
    fn drop(&mut self) {
        if let Ok(mut m) = RETRYING.lock() {
            m.remove(&self.0);
        }
    }
}

/// The loop that has been retrying longest: for how long, and its last error.
pub fn longest_retry() -> Option<(Duration, String)> {
    let m = RETRYING.lock().ok()?;
    m.values()
        .min_by_key(|(since, _)| *since)
        .map(|(since, error)| (since.elapsed(), error.clone()))
}

pub(crate) async fn retry<T, E, F, Fut>(
    policy: &RetryPolicy,
    fatal: &[Regex],
    shutdown: Option<&watch::Receiver<bool>>,
    what: &str,
    mut op: F,
) -> Result<(T, u32), RetryError<E>>
where
    E: RetryableError,
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let mut backoff = store_backoff(policy.max_backoff);
    let mut retries: u32 = 0;
    let started = std::time::Instant::now();
    let retrying = Retrying::start();
    loop {
        let err = match op().await {
            Ok(v) => return Ok((v, retries)),
            Err(e) => e,
        };
        let class = err.class(fatal);
        crate::metrics::DB_ERRORS
            .with_label_values(&[class.label(), err.operation()])
            .inc();
        crate::metrics::upstream::db_error(err.operation());
        if !class.is_retryable() {
            return Err(RetryError::Fatal(err));
        }
        if policy.max_retries.is_some_and(|max| retries >= max) {
            return Err(RetryError::Exhausted {
                attempts: retries.saturating_add(1),
                last: err,
                after: None,
            });
        }
        let mut wait = backoff.next_wait();
        if let Some(limit) = policy.retry_for {
            let left = limit.saturating_sub(started.elapsed());
            if left.is_zero() {
                return Err(RetryError::Exhausted {
                    attempts: retries.saturating_add(1),
                    last: err,
                    after: Some(limit),
                });
            }
            // The last attempt comes at the deadline, not after it.
            wait = wait.min(left);
        }
        retries = retries.saturating_add(1);
        retrying.note(err.text());
        tracing::warn!(
            what,
            retry = retries,
            max_retries = ?policy.max_retries,
            wait_ms = wait.as_millis() as u64,
            error = %err.text(),
            "retryable database error; will retry"
        );
        match shutdown {
            Some(rx) => {
                if *rx.borrow() {
                    return Err(RetryError::Shutdown { last: err });
                }
                tokio::select! {
                    _ = tokio::time::sleep(wait) => {}
                    _ = shutdown_requested(rx) => return Err(RetryError::Shutdown { last: err }),
                }
            }
            None => tokio::time::sleep(wait).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[test]
    fn table_agrees_with_classifier() {
        let mut checked = 0;
        for (error, retried, why) in CLASSIFICATION {
            assert!(!why.is_empty());
            let token = error.split_whitespace().next().unwrap_or("");
            let code = if token.len() == 5 && token.ends_with("xxx") {
                format!("{}000", &token[..2])
            } else if token.len() == 5
                && token
                    .chars()
                    .all(|c| c.is_ascii_digit() || c.is_ascii_uppercase())
            {
                token.to_string()
            } else {
                continue;
            };
            assert_eq!(
                classify_sqlstate(&code).is_retryable(),
                *retried,
                "{code} ({error})"
            );
            checked += 1;
        }
        assert!(checked >= 25, "only {checked} SQLSTATE entries checked");
    }

    #[test]
    fn sqlstate_examples() {
        use ErrorClass::*;
        for (code, want) in [
            ("08006", Retryable), // connection_failure
            ("08003", Retryable), // connection_does_not_exist
            ("40001", Retryable),
            ("40P01", Retryable),
            ("40002", NotRetryable),
            ("53300", Retryable), // too_many_connections
            ("53100", Retryable), // disk_full
            ("53200", Retryable), // out_of_memory
            ("53400", NotRetryable),
            ("55P03", Retryable),
            ("55006", NotRetryable),
            ("57014", Retryable),
            ("57P01", Retryable),
            ("57P02", Retryable),
            ("57P03", Retryable),
            ("57000", NotRetryable),
            ("28P01", Retryable),
            ("22001", NotRetryable), // string_data_right_truncation
            ("22P02", NotRetryable), // invalid_text_representation
            ("23505", NotRetryable), // unique_violation
            ("23514", NotRetryable), // check_violation
            ("23502", NotRetryable), // not_null_violation
            ("42P01", NotRetryable), // undefined_table
            ("42703", NotRetryable), // undefined_column
            ("42601", NotRetryable), // syntax_error
            ("42501", Retryable),
            ("XX000", NotRetryable),
            ("58030", Retryable),
            ("", NotRetryable),
            ("Z", NotRetryable),
        ] {
            assert_eq!(classify_sqlstate(code), want, "{code}");
        }
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let mut b = store_backoff(Duration::from_secs(60));
        let waits: Vec<u64> = (0..9).map(|_| b.next_wait().as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        let mut b = store_backoff(Duration::from_millis(5));
        assert_eq!(b.next_wait(), Duration::from_millis(5));
        assert_eq!(b.next_wait(), Duration::from_millis(5));
    }

    #[derive(Debug)]
    struct Fake(ErrorClass, &'static str);
    impl RetryableError for Fake {
        fn class(&self, fatal: &[Regex]) -> ErrorClass {
            if fatal.iter().any(|r| r.is_match(self.1)) {
                ErrorClass::NotRetryable
            } else {
                self.0
            }
        }
        fn text(&self) -> String {
            self.1.to_string()
        }
        fn operation(&self) -> &'static str {
            "test"
        }
    }

    fn policy(max_retries: Option<u32>) -> RetryPolicy {
        RetryPolicy {
            max_backoff: Duration::from_millis(1),
            max_retries,
            retry_for: None,
        }
    }

    #[tokio::test]
    async fn retries_until_success() {
        let calls = Cell::new(0);
        let r = retry(&policy(None), &[], None, "t", || {
            calls.set(calls.get() + 1);
            let n = calls.get();
            async move {
                if n < 4 {
                    Err(Fake(ErrorClass::Retryable, "closed"))
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert!(matches!(r, Ok((4, 3))), "{r:?}");
    }

    #[tokio::test]
    async fn fatal_is_not_retried() {
        let calls = Cell::new(0);
        let r: Result<((), u32), _> = retry(&policy(None), &[], None, "t", || {
            calls.set(calls.get() + 1);
            async { Err(Fake(ErrorClass::NotRetryable, "bad value")) }
        })
        .await;
        assert!(matches!(r, Err(RetryError::Fatal(_))));
        assert_eq!(calls.get(), 1);
    }

    #[tokio::test]
    async fn fatal_regex_overrides() {
        let calls = Cell::new(0);
        let fatal = [Regex::new("SQLSTATE 55P03").expect("regex")];
        let r: Result<((), u32), _> = retry(&policy(None), &fatal, None, "t", || {
            calls.set(calls.get() + 1);
            async { Err(Fake(ErrorClass::Retryable, "ERROR: x (SQLSTATE 55P03)")) }
        })
        .await;
        assert!(matches!(r, Err(RetryError::Fatal(_))));
        assert_eq!(calls.get(), 1);
    }

    #[tokio::test]
    async fn max_retries_bounds_attempts() {
        let calls = Cell::new(0);
        let r: Result<((), u32), _> = retry(&policy(Some(2)), &[], None, "t", || {
            calls.set(calls.get() + 1);
            async { Err(Fake(ErrorClass::Retryable, "closed")) }
        })
        .await;
        assert!(
            matches!(r, Err(RetryError::Exhausted { attempts: 3, .. })),
            "{r:?}"
        );
        assert_eq!(calls.get(), 3);

        calls.set(0);
        let r: Result<((), u32), _> = retry(&policy(Some(0)), &[], None, "t", || {
            calls.set(calls.get() + 1);
            async { Err(Fake(ErrorClass::Retryable, "closed")) }
        })
        .await;
        assert!(matches!(r, Err(RetryError::Exhausted { attempts: 1, .. })));
        assert_eq!(calls.get(), 1);
    }

    #[tokio::test]
    async fn retry_for_bounds_the_time() {
        let p = RetryPolicy {
            max_backoff: Duration::from_secs(3600),
            max_retries: None,
            retry_for: Some(Duration::from_millis(300)),
        };
        let started = std::time::Instant::now();
        let r: Result<((), u32), _> = retry(&p, &[], None, "test", || async {
            Err::<(), _>(Fake(ErrorClass::Retryable, "refused"))
        })
        .await;
        assert!(
            matches!(r, Err(RetryError::Exhausted { after: Some(_), .. })),
            "{r:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(2));
    }

    #[tokio::test]
    async fn shutdown_stops_waiting() {
        let (tx, rx) = watch::channel(false);
        let slow = RetryPolicy {
            max_backoff: Duration::from_secs(3600),
            max_retries: None,
            retry_for: None,
        };
        let started = std::time::Instant::now();
        let stopper = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let _ = tx.send(true);
            tx
        });
        let r: Result<((), u32), _> = retry(&slow, &[], Some(&rx), "t", || async {
            Err(Fake(ErrorClass::Retryable, "closed"))
        })
        .await;
        assert!(matches!(r, Err(RetryError::Shutdown { .. })), "{r:?}");
        assert!(started.elapsed() < Duration::from_secs(5));
        let _ = stopper.await;
    }
}
