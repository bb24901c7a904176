//! The heartbeat of a `run` replica: its row in `ingester_heartbeat`
//! (migrations/ingester/0003_heartbeat.sql), upserted every
//! `heartbeat.interval` by a task of its own (off the ingestion path, on
//! the pool's spare connection, each write bounded in time), and written a
//! last time when `run` stops, saying how it stopped. `run` also deletes
//! the rows not beaten for `heartbeat.retention`. `status` reads the table.
//!
//! A heartbeat that cannot be written (Postgres down, table not migrated)
//! is logged once when it starts failing and once when it works again;
//! ingestion never waits for it.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;

use crate::health::Health;
use crate::metrics;

/// Heartbeat settings, with their keys.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(default)]
pub struct Settings {
    /// This replica's id in `ingester_heartbeat`; empty means
    /// `<hostname>-<pid>` (in Kubernetes the hostname is the pod's name).
    /// Default: empty
    #[serde(rename = "heartbeat.replicaId")]
    pub replica_id: String,
    /// How often `run` writes its heartbeat. Default: 10s
    #[serde(
        rename = "heartbeat.interval",
        deserialize_with = "crate::values::positive_duration"
    )]
    pub interval: Duration,
    /// A replica not heard from for this long is stale (`status`: crashed,
    /// unless it stopped cleanly). Default: 1m
    #[serde(
        rename = "heartbeat.staleAfter",
        deserialize_with = "crate::values::positive_duration"
    )]
    pub stale_after: Duration,
    /// Rows not beaten for this long are deleted by `run`. Default: 7d
    #[serde(
        rename = "heartbeat.retention",
        deserialize_with = "crate::values::positive_duration"
    )]
    pub retention: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            replica_id: String::new(),
            interval: Duration::from_secs(10),
            stale_after: Duration::from_secs(60),
            retention: Duration::from_secs(7 * 86400),
        }
    }
}

/// Who is beating: fixed for the life of the process.
#[derive(Debug, Clone)]
pub struct Identity {
    pub replica_id: String,
    pub host: String,
    pub pid: i32,
    pub version: &'static str,
    pub topic: String,
    pub subscription: String,
    pub started: DateTime<Utc>,
}

impl Identity {
    pub fn new(settings: &Settings, topic: &str, subscription: &str) -> Identity {
        let host = hostname();
        let pid = std::process::id();
        let replica_id = match settings.replica_id.trim() {
            "" => format!("{host}-{pid}"),
            id => id.to_string(),
        };
        Identity {
            replica_id,
            host,
            pid: i32::try_from(pid).unwrap_or(i32::MAX),
            version: env!("CARGO_PKG_VERSION"),
            topic: topic.to_string(),
            subscription: subscription.to_string(),
            started: Utc::now(),
        }
    }
}

/// The kernel's host name (`$HOSTNAME` is not exported to children by
/// most shells), or `unknown`.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()))
        .unwrap_or_else(|| "unknown".to_string())
}

/// One row's changing part, taken from what `run` knows.
struct Beat {
    last_commit: Option<DateTime<Utc>>,
    batches: i64,
    messages: i64,
    events: i64,
    lag_seconds: Option<f64>,
    schema_generation: Option<i32>,
    ready: bool,
    healthy: bool,
}

impl Beat {
    fn now(health: &Health) -> Beat {
        let p = health.progress();
        let waiting = metrics::IN_FLIGHT.get() > 0;
        let generation = metrics::SCHEMA_GENERATION.get();
        let count = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        Beat {
            last_commit: p.last_commit.map(DateTime::<Utc>::from),
            batches: count(p.batches),
            messages: count(p.messages),
            events: count(p.events),
            lag_seconds: p.lag(SystemTime::now(), waiting),
            schema_generation: (generation > 0).then(|| i32::try_from(generation).unwrap_or(0)),
            ready: health.readiness().is_ok(),
            healthy: health.liveness().is_ok(),
        }
    }
}

/// The upsert: every column, so a replica restarted under the same id
/// replaces its old row (and its stop). `$9` true marks the final beat.
const UPSERT: &str = "INSERT INTO ingester_heartbeat \
    (replica_id, host, pid, version, topic, subscription, started, last_beat, stopped, stop_error, \
     last_commit, batches, messages, events, lag_seconds, schema_generation, ready, healthy) \
    VALUES ($1, $2, $3, $4, $5, $6, $7, now(), CASE WHEN $9 THEN now() END, $8, \
            $10, $11, $12, $13, $14, $15, $16, $17) \
    ON CONFLICT (replica_id) DO UPDATE SET \
    host = EXCLUDED.host, pid = EXCLUDED.pid, version = EXCLUDED.version, topic = EXCLUDED.topic, \
    subscription = EXCLUDED.subscription, started = EXCLUDED.started, last_beat = EXCLUDED.last_beat, \
    stopped = EXCLUDED.stopped, stop_error = EXCLUDED.stop_error, last_commit = EXCLUDED.last_commit, \
    batches = EXCLUDED.batches, messages = EXCLUDED.messages, events = EXCLUDED.events, \
    lag_seconds = EXCLUDED.lag_seconds, schema_generation = EXCLUDED.schema_generation, \
    ready = EXCLUDED.ready, healthy = EXCLUDED.healthy";

/// Deletes the rows not beaten for `$1` seconds.
const SWEEP: &str =
    "DELETE FROM ingester_heartbeat WHERE last_beat < now() - make_interval(secs => $1)";

/// How long one heartbeat statement may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// How long the final beat may hold up the exit.
const FINAL_TIMEOUT: Duration = Duration::from_secs(2);

/// How often `run` deletes old rows.
const SWEEP_INTERVAL: Duration = Duration::from_secs(300);

/// `stop`: `None` for a beat, `Some(error)` for the final one (`Some(None)`
/// for a clean stop).
async fn write(
    pool: &Pool,
    id: &Identity,
    beat: &Beat,
    stop: Option<Option<&str>>,
    limit: Duration,
) -> Result<(), String> {
    let run = async {
        let c = pool.get().await.map_err(|e| crate::pg::error_chain(&e))?;
        c.execute(
            UPSERT,
            &[
                &id.replica_id,
                &id.host,
                &id.pid,
                &id.version,
                &id.topic,
                &id.subscription,
                &id.started,
                &stop.flatten(),
                &stop.is_some(),
                &beat.last_commit,
                &beat.batches,
                &beat.messages,
                &beat.events,
                &beat.lag_seconds,
                &beat.schema_generation,
                &beat.ready,
                &beat.healthy,
            ],
        )
        .await
        .map_err(|e| crate::pg::error_chain(&e))
    };
    match tokio::time::timeout(limit, run).await {
        Ok(r) => r.map(|_| ()),
        Err(_) => Err(format!(
            "Postgres did not answer within {}s",
            limit.as_secs()
        )),
    }
}

/// Deletes heartbeat rows not beaten for `retention`; how many.
pub async fn sweep(pool: &Pool, retention: Duration) -> Result<u64, String> {
    let run = async {
        let c = pool.get().await.map_err(|e| crate::pg::error_chain(&e))?;
        c.execute(SWEEP, &[&retention.as_secs_f64()])
            .await
            .map_err(|e| crate::pg::error_chain(&e))
    };
    match tokio::time::timeout(WRITE_TIMEOUT, run).await {
        Ok(r) => r,
        Err(_) => Err(format!(
            "Postgres did not answer within {}s",
            WRITE_TIMEOUT.as_secs()
        )),
    }
}

/// The running heartbeat of this process.
pub struct Heartbeat {
    task: tokio::task::JoinHandle<()>,
    pool: Pool,
    id: Arc<Identity>,
    health: Arc<Health>,
}

impl Heartbeat {
    /// Starts beating at once, then every `settings.interval`, and sweeping
    /// old rows at once, then every few minutes.
    pub fn start(pool: Pool, id: Identity, health: Arc<Health>, settings: &Settings) -> Heartbeat {
        let id = Arc::new(id);
        tracing::info!("heartbeat as replica {:?}", id.replica_id);
        let task = tokio::spawn({
            let (pool, id, health) = (pool.clone(), id.clone(), health.clone());
            let (interval, retention) = (settings.interval, settings.retention);
            async move {
                let mut failing = false;
                let mut swept: Option<tokio::time::Instant> = None;
                let mut tick = tokio::time::interval(interval);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    match write(&pool, &id, &Beat::now(&health), None, WRITE_TIMEOUT).await {
                        Ok(()) if failing => {
                            tracing::info!("heartbeat written again");
                            failing = false;
                        }
                        Ok(()) => {}
                        Err(e) if !failing => {
                            tracing::warn!(
                                "heartbeat not written: {e}; ingestion goes on (`migrate` \
                                 creates the table)"
                            );
                            failing = true;
                        }
                        Err(_) => {}
                    }
                    if failing || swept.is_some_and(|t| t.elapsed() < SWEEP_INTERVAL) {
                        continue;
                    }
                    swept = Some(tokio::time::Instant::now());
                    match sweep(&pool, retention).await {
                        Ok(0) => {}
                        Ok(n) => tracing::info!(
                            "deleted {n} heartbeat row(s) not beaten for {}s (heartbeat.retention)",
                            retention.as_secs()
                        ),
                        Err(e) => tracing::warn!("old heartbeat rows not deleted: {e}"),
                    }
                }
            }
        });
        Heartbeat {
            task,
            pool,
            id,
            health,
        }
    }

    /// Stops beating and writes the final state: when, and the error for a
    /// stop that was not clean.
    pub async fn finish(self, result: &anyhow::Result<()>) {
        self.task.abort();
        let error = result
            .as_ref()
            .err()
            .map(|e| crate::config::scrub(&crate::pg::error_chain(e.as_ref())).into_owned());
        let beat = Beat::now(&self.health);
        if let Err(e) = write(
            &self.pool,
            &self.id,
            &beat,
            Some(error.as_deref()),
            FINAL_TIMEOUT,
        )
        .await
        {
            tracing::warn!("final heartbeat not written: {e}");
        }
    }
}
