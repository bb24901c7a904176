//! `run`: live ingestion from the Pulsar topic.
//!
//! ```text
//! pulsar consumer ─► pipeline (batch, convert, store) ─► acknowledger ─► acks back to the consumer
//! ```
//!
//! Before consuming, the Lookout schema generation is read from the catalog;
//! on a database this binary cannot write (not migrated) it waits there, not
//! ready and subscribed to nothing, until the schema is migrated. A message
//! is acknowledged only after every row it produced is committed
//! (at-least-once). On SIGTERM or SIGINT the consumer stops receiving, the
//! pipeline commits what is in flight, the acks are sent, and the process
//! exits as soon as that is done; if it takes longer than the grace period,
//! it exits anyway, non-zero, and the unacknowledged messages are
//! redelivered to the next consumer.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use crate::config::Config;
use crate::convert::Converter;
use crate::deadletter::DeadLetters;
use crate::health::{self, Health};
use crate::heartbeat::{Heartbeat, Identity};
use crate::http;
use crate::source::pulsar::{self, Ack};
use crate::store::{SchemaReport, Store};
use crate::{ack, pipeline, telemetry};

/// Stops a background task when `run` returns, however it returns.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// How often `run` tries again to move spooled dead letters into the table.
pub const SPOOL_FLUSH_INTERVAL: Duration = Duration::from_secs(5);

/// How long shutdown may take before the process gives up on the in-flight batch.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(9);

/// Runs until `stop` is set (see [`signal_stop`]) or the pipeline fails.
/// The heartbeat beats throughout, and its last write says how `run` ended.
pub async fn run(mut config: Config, stop: watch::Receiver<bool>) -> anyhow::Result<()> {
    // `run` waits for the database however long it takes (retryFor is for
    // one-shot commands).
    config.store.retry_for = None;
    // Every series exists from the first scrape.
    telemetry::register();
    let health = Arc::new(Health::default());
    // Stopped whichever way `run` returns.
    let _metrics_task = match config.service.metrics_port {
        0 => None,
        port => {
            let addr = SocketAddr::from((config.service.metrics_bind, port));
            let task = http::serve(addr, health.clone()).await.map_err(|e| {
                anyhow::anyhow!("cannot serve metrics on {addr} (metricsBind, metricsPort): {e}")
            })?;
            Some(AbortOnDrop(task))
        }
    };
    let _monitor = AbortOnDrop(health::spawn_monitor(health.clone(), config.health.clone()));
    // The store's, plus one each for dead letters, the heartbeat and the prober.
    let pool = crate::pg::pool(
        &crate::pg::PgSettings::from_config(&config.postgres)?,
        crate::store::WRITE_CONNECTIONS + 3,
    )?;
    let id = Identity::new(
        &config.heartbeat,
        &config.pulsar.topic,
        &config.pulsar.subscription,
    );
    let beat = Heartbeat::start(pool.clone(), id, health.clone(), &config.heartbeat);
    let result = consume(config, stop, pool, health).await;
    beat.finish(&result).await;
    result
}

/// Everything `run` does once the endpoints and the heartbeat are up.
async fn consume(
    config: Config,
    stop: watch::Receiver<bool>,
    pool: deadpool_postgres::Pool,
    health: Arc<Health>,
) -> anyhow::Result<()> {
    // The store stops retrying only when shutdown is forced (grace expired),
    // and waits for a schema it can write, not ready meanwhile.
    let (force_tx, force_rx) = watch::channel(false);
    let report: SchemaReport = {
        let health = health.clone();
        Arc::new(move |reason| {
            health.set_schema(reason);
        })
    };
    let store = Arc::new(
        Store::new(pool.clone(), config.store)
            .with_shutdown(force_rx)
            .with_schema_wait(report),
    );
    crate::deadletter::check_spool(&config.service.dead_letter_spool)?;
    // Readiness follows Postgres: a probe every few seconds.
    let _prober = AbortOnDrop(health::spawn_prober(pool.clone(), health.clone()));
    // Which generation to write for, before consuming anything. A database
    // this binary cannot write (not migrated, unknown columns) keeps `run`
    // not ready and consuming nothing until it is migrated. Retried while
    // Postgres is unreachable, unless asked to stop meanwhile.
    let mut stop_wait = stop.clone();
    tokio::select! {
        r = store.detect_waiting() => { r?; }
        _ = async {
            // A dropped sender never stops us.
            if stop_wait.wait_for(|v| *v).await.is_err() {
                std::future::pending::<()>().await;
            }
        } => return Ok(()),
    }
    let spool = config.service.dead_letter_spool;
    let dead = DeadLetters::new(pool.clone(), spool.clone());
    match dead.flush_spool().await {
        Ok(0) => {}
        Ok(n) => tracing::info!("flushed {n} spooled dead letter(s)"),
        Err(e) => tracing::warn!(
            "dead-letter spool {} not flushed yet: {e:#}",
            spool.display()
        ),
    }
    // Dead letters spooled during a Postgres outage reach the table once it
    // is back, even if no further batch comes.
    let _flusher = AbortOnDrop({
        let dead = dead.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SPOOL_FLUSH_INTERVAL);
            loop {
                tick.tick().await;
                dead.flush_if_pending().await;
            }
        })
    });

    let (msg_tx, msg_rx) = mpsc::channel(config.pulsar.receiver_queue_size.max(1) as usize);
    telemetry::watch_queue("received", &msg_tx);
    let (ack_tx, ack_rx) = mpsc::unbounded_channel::<Vec<Ack>>();
    let source = tokio::spawn(pulsar::run(
        config.pulsar.clone(),
        msg_tx,
        ack_rx,
        stop.clone(),
        health.clone(),
    ));

    let (mut committed, stages) = pipeline::spawn(
        msg_rx,
        Converter::new(config.convert),
        store,
        dead,
        config.pipeline,
    );
    let ordered = config.pulsar.subscription_kind.ordered();
    let acknowledger = {
        let health = health.clone();
        tokio::spawn(async move {
            while let Some(c) = committed.recv().await {
                let events = c.events_by_kind.values().sum();
                let published = c.last_publish.and_then(|t| {
                    let d =
                        Duration::new(u64::try_from(t.seconds).ok()?, u32::try_from(t.nanos).ok()?);
                    std::time::UNIX_EPOCH.checked_add(d)
                });
                health.committed(c.origins.len() as u64, events, published);
                // Failed rows were counted and logged by the pipeline.
                let acks = ack::plan(&c.origins, ordered);
                if ack_tx.send(acks).is_err() {
                    // The consumer is gone; the broker redelivers what was not acknowledged.
                    break;
                }
            }
        })
    };

    // Wait for the pipeline to end: on its own (an error) or after a stop.
    let mut stop_wait = stop.clone();
    let stages_result = tokio::select! {
        r = stages.join() => r,
        _ = async {
            while !*stop_wait.borrow_and_update() {
                if stop_wait.changed().await.is_err() {
                    break;
                }
            }
        } => return drain_after_stop(source, acknowledger, &force_tx).await,
    };
    if stages_result.is_ok() && *stop.borrow() {
        // Stopped, and the pipeline drained before the stop branch noticed.
        return drain_after_stop(source, acknowledger, &force_tx).await;
    }
    // The pipeline ended without a stop: that is an error (the store gave up).
    source.abort();
    acknowledger.abort();
    match stages_result {
        Ok(()) => anyhow::bail!("the pipeline ended unexpectedly"),
        Err(e) => Err(e),
    }
}

/// After a stop, gives the pipeline the grace period to commit and
/// acknowledge what is in flight, returning as soon as that is done; past
/// it, stops the store's retries, leaves the rest to redelivery and fails
/// (the process exits non-zero).
async fn drain_after_stop(
    source: tokio::task::JoinHandle<anyhow::Result<()>>,
    acknowledger: tokio::task::JoinHandle<()>,
    force: &watch::Sender<bool>,
) -> anyhow::Result<()> {
    match tokio::time::timeout(SHUTDOWN_GRACE, stages_join_after_stop(source, acknowledger)).await {
        Ok(r) => r,
        Err(_) => {
            let _ = force.send(true);
            anyhow::bail!(
                "shutdown grace period ({SHUTDOWN_GRACE:?}) expired before the in-flight batches \
                 were committed and acknowledged; the unacknowledged messages will be redelivered"
            )
        }
    }
}

/// After a stop: the source drops its sender, the pipeline drains and ends,
/// the acknowledger forwards the last acks and ends, the source sends them
/// and ends.
async fn stages_join_after_stop(
    source: tokio::task::JoinHandle<anyhow::Result<()>>,
    acknowledger: tokio::task::JoinHandle<()>,
) -> anyhow::Result<()> {
    let _ = acknowledger.await;
    match source.await {
        Ok(r) => r,
        Err(e) => Err(anyhow::anyhow!("consumer task failed: {e}")),
    }
}

/// A watch that turns true on SIGTERM or SIGINT.
pub fn signal_stop() -> anyhow::Result<(watch::Sender<bool>, watch::Receiver<bool>)> {
    let (tx, rx) = watch::channel(false);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())?;
    let tx2 = tx.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => tracing::info!("SIGTERM received"),
            _ = int.recv() => tracing::info!("SIGINT received"),
        }
        let _ = tx2.send(true);
    });
    Ok((tx, rx))
}
