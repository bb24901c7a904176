//! What `/readyz` and `/healthz` say, and the checks behind them.
//!
//! * **Ready** (`/readyz`): subscribed to the broker, Postgres answering a
//!   periodic probe, and a Lookout schema this binary can write. Each check
//!   keeps the reason it fails, so the 503 body says which one and why
//!   (with the server's own message). A load balancer or rollout should
//!   wait; nothing is wrong with the process.
//! * **Healthy** (`/healthz`): the pipeline makes progress. It fails when
//!   messages wait but nothing was committed for `health.stallTimeout`, or
//!   when the store has been retrying for longer than that: a liveness
//!   probe restarting the process is then the right answer (a wedged
//!   connection, a lock never released).
//!
//! The verdicts are decided by pure functions ([`Stall::observe`],
//! [`Health::readiness`]) and refreshed by a monitor task once a second,
//! which also sets the `ready` and `healthy` gauges and logs each change
//! once, so a long outage is one line, not one per probe.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use crate::metrics;

/// The liveness window, with its key.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(default)]
pub struct Settings {
    /// `/healthz` fails once messages have waited this long with nothing
    /// committed, or the store has retried this long. Default: 3m
    #[serde(
        rename = "health.stallTimeout",
        deserialize_with = "crate::values::positive_duration"
    )]
    pub stall_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            stall_timeout: Duration::from_secs(180),
        }
    }
}

/// What has been committed so far, for `/healthz`, the heartbeat and `status`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Progress {
    pub batches: u64,
    pub messages: u64,
    pub events: u64,
    /// When the last batch was committed.
    pub last_commit: Option<SystemTime>,
    /// The newest publish time in the last committed batch.
    pub last_publish: Option<SystemTime>,
}

impl Progress {
    /// Seconds between `now` and the publish time of the last committed
    /// message while messages wait (`waiting`), 0 when nothing waits, `None`
    /// while nothing with a publish time was committed yet.
    pub fn lag(&self, now: SystemTime, waiting: bool) -> Option<f64> {
        if !waiting {
            return Some(0.0);
        }
        let published = self.last_publish?;
        Some(
            now.duration_since(published)
                .unwrap_or_default()
                .as_secs_f64(),
        )
    }
}

/// Readiness and liveness of the running ingester, shared by the tasks
/// that know (the consumer, the prober, the store's schema wait, the
/// acknowledger) and the HTTP server that tells.
#[derive(Debug)]
pub struct Health {
    pub broker_connected: AtomicBool,
    /// Why Postgres is not usable; `None` while it answers.
    database: Mutex<Option<String>>,
    /// Why the schema cannot be written; `None` once it can.
    schema: Mutex<Option<String>>,
    progress: Mutex<Progress>,
    commits: AtomicU64,
    /// The monitor's last liveness verdict.
    liveness: Mutex<Result<(), String>>,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            broker_connected: AtomicBool::new(false),
            database: Mutex::new(Some("not checked yet".into())),
            schema: Mutex::new(Some("not checked yet".into())),
            progress: Mutex::new(Progress::default()),
            commits: AtomicU64::new(0),
            liveness: Mutex::new(Ok(())),
        }
    }
}

/// Sets a check's reason; true when it changed between failing and passing.
fn set(check: &Mutex<Option<String>>, reason: Option<String>) -> bool {
    let Ok(mut c) = check.lock() else {
        return false;
    };
    let changed = c.is_some() != reason.is_some();
    *c = reason;
    changed
}

fn get(check: &Mutex<Option<String>>) -> Option<String> {
    check.lock().ok().and_then(|c| c.clone())
}

impl Health {
    /// Postgres answered (`None`) or did not (why); true on a change.
    pub fn set_database(&self, reason: Option<String>) -> bool {
        set(&self.database, reason)
    }

    /// The schema can be written (`None`) or not (why); true on a change.
    pub fn set_schema(&self, reason: Option<String>) -> bool {
        set(&self.schema, reason)
    }

    pub fn database_ok(&self) -> bool {
        get(&self.database).is_none()
    }

    /// A batch was committed (Postgres answers, so it is reachable too).
    pub fn committed(&self, messages: u64, events: u64, last_publish: Option<SystemTime>) {
        if let Ok(mut p) = self.progress.lock() {
            p.batches += 1;
            p.messages += messages;
            p.events += events;
            p.last_commit = Some(SystemTime::now());
            if last_publish.is_some() {
                p.last_publish = last_publish;
            }
        }
        self.commits.fetch_add(1, Ordering::Relaxed);
        self.set_database(None);
    }

    pub fn progress(&self) -> Progress {
        self.progress.lock().map(|p| p.clone()).unwrap_or_default()
    }

    /// `Ok` when ready, else every failing check with its reason.
    pub fn readiness(&self) -> Result<(), String> {
        let mut reasons = Vec::new();
        if !self.broker_connected.load(Ordering::Relaxed) {
            reasons.push("broker: not subscribed".to_string());
        }
        if let Some(r) = get(&self.database) {
            reasons.push(format!("postgres: {r}"));
        }
        if let Some(r) = get(&self.schema) {
            reasons.push(format!("schema: {r}"));
        }
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(reasons.join("; "))
        }
    }

    /// The monitor's last verdict: `Ok`, or why the pipeline is stuck.
    pub fn liveness(&self) -> Result<(), String> {
        self.liveness
            .lock()
            .map(|l| l.clone())
            .unwrap_or_else(|_| Ok(()))
    }
}

/// Tracks when the pipeline last made progress; pure (time is passed in).
#[derive(Debug, Clone)]
pub struct Stall {
    progress_at: Instant,
    commits: u64,
}

impl Stall {
    pub fn new(now: Instant) -> Stall {
        Stall {
            progress_at: now,
            commits: 0,
        }
    }

    /// One observation: whether messages wait, how many batches were
    /// committed so far, and the store's longest running retry. Nothing
    /// waiting counts as progress (an idle topic is healthy), and so does a
    /// commit.
    pub fn observe(
        &mut self,
        now: Instant,
        waiting: bool,
        commits: u64,
        retrying: Option<(Duration, String)>,
        timeout: Duration,
    ) -> Result<(), String> {
        if !waiting || commits != self.commits {
            self.progress_at = now;
            self.commits = commits;
        }
        if let Some((for_, error)) = retrying.filter(|(d, _)| *d > timeout) {
            return Err(format!(
                "the store has been retrying for {}s (health.stallTimeout {}s): {error}",
                for_.as_secs(),
                timeout.as_secs()
            ));
        }
        let stuck = now.saturating_duration_since(self.progress_at);
        if waiting && stuck > timeout {
            return Err(format!(
                "stalled: messages have waited {}s with nothing committed (health.stallTimeout {}s)",
                stuck.as_secs(),
                timeout.as_secs()
            ));
        }
        Ok(())
    }
}

/// How often the monitor refreshes the liveness verdict.
const MONITOR_INTERVAL: Duration = Duration::from_secs(1);

/// Refreshes liveness every second, logging each change once, and makes the
/// `ready`/`healthy` gauges read the endpoints' verdicts at each scrape (a
/// value set on a tick would lag a scrape right after a change). Runs until
/// aborted.
pub fn spawn_monitor(health: Arc<Health>, settings: Settings) -> tokio::task::JoinHandle<()> {
    {
        let health = health.clone();
        metrics::on_scrape("health", move || {
            metrics::READY.set(i64::from(health.readiness().is_ok()));
            metrics::HEALTHY.set(i64::from(health.liveness().is_ok()));
        });
    }
    tokio::spawn(async move {
        let mut stall = Stall::new(Instant::now());
        let mut tick = tokio::time::interval(MONITOR_INTERVAL);
        loop {
            tick.tick().await;
            let verdict = stall.observe(
                Instant::now(),
                metrics::IN_FLIGHT.get() > 0,
                health.commits.load(Ordering::Relaxed),
                crate::store::retry::longest_retry(),
                settings.stall_timeout,
            );
            let before = health.liveness();
            match (&before, &verdict) {
                (Ok(()), Err(why)) => tracing::error!("unhealthy (/healthz 503): {why}"),
                (Err(_), Ok(())) => tracing::info!("healthy again: committing"),
                _ => {}
            }
            if let Ok(mut l) = health.liveness.lock() {
                *l = verdict;
            }
        }
    })
}

/// How often `run` checks Postgres for `/readyz`.
pub const DATABASE_PROBE_INTERVAL: Duration = Duration::from_secs(2);

/// How long a probe may take before Postgres counts as unreachable.
const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// Checks Postgres with `SELECT 1` every [`DATABASE_PROBE_INTERVAL`],
/// first at once. Runs until aborted.
pub fn spawn_prober(
    pool: deadpool_postgres::Pool,
    health: Arc<Health>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut first = true;
        let mut tick = tokio::time::interval(DATABASE_PROBE_INTERVAL);
        loop {
            tick.tick().await;
            probe_database(&pool, &health, first).await;
            first = false;
        }
    })
}

/// One probe: sets the database check, logging when Postgres goes away
/// (with the server's own message) and when it is back, once each.
async fn probe_database(pool: &deadpool_postgres::Pool, health: &Health, first: bool) {
    let probe = async {
        let c = pool.get().await.map_err(|e| crate::pg::error_chain(&e))?;
        c.simple_query("SELECT 1")
            .await
            .map_err(|e| crate::pg::error_chain(&e))
    };
    let reason = match tokio::time::timeout(PROBE_TIMEOUT, probe).await {
        Ok(Ok(_)) => None,
        Ok(Err(e)) => Some(e),
        Err(_) => Some(format!(
            "did not answer within {}s",
            PROBE_TIMEOUT.as_secs()
        )),
    };
    let changed = health.set_database(reason.clone());
    match reason {
        Some(e) if changed || first => {
            tracing::warn!("Postgres is not reachable: {e}; not ready, writes will retry")
        }
        None if changed && !first => tracing::info!("Postgres answers again; ready"),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(60);

    #[test]
    fn waiting_without_commits_stalls_after_the_window() {
        let t0 = Instant::now();
        let mut s = Stall::new(t0);
        assert_eq!(s.observe(t0, true, 0, None, T), Ok(()));
        assert_eq!(s.observe(t0 + T, true, 0, None, T), Ok(()));
        let err = s
            .observe(t0 + T + Duration::from_secs(1), true, 0, None, T)
            .expect_err("stalled");
        assert!(err.contains("waited 61s"), "{err}");
        // A commit is progress: healthy again, the window starts anew.
        assert_eq!(s.observe(t0 + 2 * T, true, 1, None, T), Ok(()));
        assert!(s
            .observe(t0 + 3 * T + Duration::from_secs(1), true, 1, None, T)
            .is_err());
    }

    #[test]
    fn an_idle_pipeline_is_healthy_and_waiting_starts_the_window() {
        let t0 = Instant::now();
        let mut s = Stall::new(t0);
        // Idle for an hour, nothing committed: healthy.
        assert_eq!(s.observe(t0 + 60 * T, false, 0, None, T), Ok(()));
        // Then a message waits: the window starts when it does.
        assert_eq!(s.observe(t0 + 61 * T, true, 0, None, T), Ok(()));
        assert!(s
            .observe(t0 + 62 * T + Duration::from_secs(1), true, 0, None, T)
            .is_err());
    }

    #[test]
    fn a_store_retrying_longer_than_the_window_is_unhealthy() {
        let t0 = Instant::now();
        let mut s = Stall::new(t0);
        let short = Some((Duration::from_secs(10), "x".to_string()));
        assert_eq!(s.observe(t0, false, 0, short, T), Ok(()));
        let long = Some((T + Duration::from_secs(5), "connection refused".to_string()));
        let err = s.observe(t0, false, 0, long, T).expect_err("unhealthy");
        assert!(
            err.contains("retrying for 65s") && err.contains("connection refused"),
            "{err}"
        );
    }

    #[test]
    fn readiness_names_every_failing_check() {
        let h = Health::default();
        let err = h.readiness().expect_err("not ready at first");
        assert!(err.contains("broker") && err.contains("postgres") && err.contains("schema"));
        h.broker_connected.store(true, Ordering::Relaxed);
        assert!(h.set_database(None));
        assert!(h.set_schema(None));
        assert_eq!(h.readiness(), Ok(()));
        assert!(h.set_database(Some("connection refused".into())));
        assert!(!h.set_database(Some("connection refused again".into())));
        assert_eq!(
            h.readiness(),
            Err("postgres: connection refused again".to_string())
        );
        h.committed(3, 5, None);
        assert_eq!(h.readiness(), Ok(()));
        let p = h.progress();
        assert_eq!((p.batches, p.messages, p.events), (1, 3, 5));
        assert!(p.last_commit.is_some());
    }

    #[test]
    fn lag_is_zero_when_nothing_waits() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1000);
        let mut p = Progress::default();
        assert_eq!(p.lag(now, false), Some(0.0));
        assert_eq!(p.lag(now, true), None);
        p.last_publish = Some(SystemTime::UNIX_EPOCH + Duration::from_secs(990));
        assert_eq!(p.lag(now, true), Some(10.0));
    }
}
