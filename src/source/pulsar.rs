//! The live source: a Pulsar consumer on the job-set events topic.
//!
//! One task owns the client and the consumer. It feeds received messages into
//! the pipeline and performs the acknowledgements the acknowledger asks for,
//! so acks always go through the live consumer. When the consumer stream
//! ends or fails (broker restart, dropped connection, a broker refusing the
//! re-subscribe for a while), it rebuilds client and consumer with capped
//! exponential backoff; messages that were not acknowledged are redelivered
//! by the broker, and writes are idempotent, so nothing is lost or doubled.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use prost_types::Timestamp;
use pulsar::consumer::{ConsumerOptions, InitialPosition};
use pulsar::message::proto::MessageIdData;
use pulsar::{
    ConnectionRetryOptions, Consumer, OperationRetryOptions, Pulsar, SubType, TokioExecutor,
};
use tokio::sync::{mpsc, watch};

use crate::backoff::Backoff;
use crate::config::{PulsarConfig, SubscriptionKind};
use crate::http::Health;
use crate::source::{Message, Origin, PulsarId};
use crate::{metrics, telemetry};

/// An acknowledgement the acknowledger asks the consumer to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ack {
    /// This message and everything before it on its partition.
    Cumulative { topic: Arc<str>, id: PulsarId },
    /// This message only.
    Individual { topic: Arc<str>, id: PulsarId },
}

/// A broker publish time (milliseconds since the epoch) as a protobuf timestamp.
pub fn publish_timestamp(ms: u64) -> Timestamp {
    Timestamp {
        seconds: i64::try_from(ms / 1000).unwrap_or(i64::MAX),
        nanos: ((ms % 1000) * 1_000_000) as i32,
    }
}

fn message_id(id: &PulsarId) -> MessageIdData {
    MessageIdData {
        ledger_id: id.ledger,
        entry_id: id.entry,
        partition: Some(id.partition),
        batch_index: Some(id.batch_index),
        ack_set: Vec::new(),
        batch_size: id.batch_size,
        first_chunk_message_id: None,
    }
}

fn sub_type(kind: SubscriptionKind) -> SubType {
    match kind {
        SubscriptionKind::Exclusive => SubType::Exclusive,
        SubscriptionKind::Failover => SubType::Failover,
        SubscriptionKind::Shared => SubType::Shared,
        SubscriptionKind::KeyShared => SubType::KeyShared,
    }
}

mod auth;
mod diagnose;

/// Where the broker is, for logs: scheme://host:port, never the URL as
/// given (it could carry user info or a query with a secret).
pub fn target(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(u) => format!(
            "{}://{}{}",
            u.scheme(),
            u.host_str().unwrap_or(""),
            u.port().map(|p| format!(":{p}")).unwrap_or_default()
        ),
        Err(_) => "(unparsable pulsar.URL)".into(),
    }
}

/// The fully qualified name of `topic` (`events` is
/// `persistent://public/default/events`) and its namespace.
pub fn qualify_topic(topic: &str) -> (String, String) {
    let (scheme, rest) = match topic.split_once("://") {
        Some((s, r)) => (s, r),
        None => ("persistent", topic),
    };
    let rest = match rest.matches('/').count() {
        0 => format!("public/default/{rest}"),
        _ => rest.to_string(),
    };
    let namespace = rest.rsplit_once('/').map(|(ns, _)| ns).unwrap_or("");
    (format!("{scheme}://{rest}"), namespace.to_string())
}

/// Whether `topic` exists, asked without creating it: the topics of its
/// namespace (a partitioned topic lists as `<topic>-partition-N`). `None`
/// when the broker does not answer that question within a few seconds
/// (pulsar-lite does not; a lookup cannot tell, as brokers create topics on
/// demand). Used by `record`, whose reader would create a misspelled topic.
pub async fn topic_exists(pulsar: &Pulsar<TokioExecutor>, topic: &str) -> Option<bool> {
    use pulsar::message::proto::command_get_topics_of_namespace::Mode;
    let (full, namespace) = qualify_topic(topic);
    let mode = if full.starts_with("non-persistent://") {
        Mode::NonPersistent
    } else {
        Mode::Persistent
    };
    let listed = tokio::time::timeout(
        Duration::from_secs(5),
        pulsar.get_topics_of_namespace(namespace.clone(), mode),
    )
    .await;
    let topics = match listed {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            tracing::warn!(
                "cannot list the topics of namespace {namespace} to check that {full} exists: {e}"
            );
            return None;
        }
        Err(_) => {
            tracing::warn!("the broker did not list the topics of namespace {namespace}; cannot check that {full} exists before reading it");
            return None;
        }
    };
    let partition = format!("{full}-partition-");
    Some(
        topics
            .iter()
            .any(|t| *t == full || t.starts_with(&partition)),
    )
}

/// Builds a client with the configured TLS and authentication; `run`,
/// `record` and `publish` all come through here. Its own connection retries
/// are kept short: our loop does the backing off, so a broker outage is
/// visible in logs and metrics. Called again for every reconnect, so the
/// trust file and credentials are re-read then too.
pub async fn client(cfg: &PulsarConfig) -> anyhow::Result<Pulsar<TokioExecutor>> {
    let mut b = Pulsar::builder(cfg.url.clone(), TokioExecutor)
        .with_connection_retry_options(ConnectionRetryOptions {
            min_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(2),
            max_retries: 3,
            connection_timeout: Duration::from_secs(10),
            keep_alive: Duration::from_secs(30),
            ..ConnectionRetryOptions::default()
        })
        .with_operation_retry_options(OperationRetryOptions {
            operation_timeout: Duration::from_secs(30),
            retry_delay: Duration::from_millis(500),
            max_retries: Some(3),
        })
        // As upstream's Go client: with host-name validation off the chain
        // is still checked; only allow-insecure skips that.
        .with_allow_insecure_connection(cfg.tls_allow_insecure_connection)
        .with_tls_hostname_verification_enabled(cfg.tls_validate_hostname);
    if let Some(path) = cfg
        .tls_trust_certs_file_path
        .as_ref()
        .filter(|p| !p.as_os_str().is_empty())
    {
        let pem = std::fs::read(path).map_err(|e| {
            anyhow::anyhow!(
                "cannot read pulsar.TLSTrustCertsFilePath {}: {e}",
                path.display()
            )
        })?;
        b = b.with_certificate_chain(pem);
    }
    if let Some(path) = &cfg.jwt_token_path {
        // Fail fast on an unreadable file; the provider reads it again for
        // every connection, which is how a rotated token gets used.
        auth::read_token(path).map_err(anyhow::Error::msg)?;
    }
    if let Some(p) = provider(cfg) {
        b = b.with_auth_provider(p);
    }
    match b.build().await {
        Ok(c) => Ok(c),
        // pulsar-rs keeps the cause of a failed first connection to its own
        // log line; find it so the error says what is wrong.
        Err(e) => match diagnose::probe(cfg, provider(cfg)).await {
            Some(cause) => Err(anyhow::anyhow!("{cause}")),
            None => Err(e.into()),
        },
    }
}

/// The configured authentication, if any (a fresh provider each call).
fn provider(cfg: &PulsarConfig) -> Option<Box<dyn pulsar::authentication::Authentication>> {
    if let Some(path) = &cfg.jwt_token_path {
        Some(Box::new(auth::TokenFile { path: path.clone() }))
    } else {
        cfg.oauth2_private_key.as_ref().map(|path| {
            Box::new(auth::OAuth2 {
                issuer_url: cfg.oauth2_issuer_url.clone(),
                audience: cfg.oauth2_audience.clone(),
                credentials: path.clone(),
                cached: None,
            }) as Box<dyn pulsar::authentication::Authentication>
        })
    }
}

async fn consumer(
    client: &Pulsar<TokioExecutor>,
    cfg: &PulsarConfig,
) -> anyhow::Result<Consumer<Vec<u8>, TokioExecutor>> {
    let name = format!("lookout-ingester-{}", std::process::id());
    let consumer = client
        .consumer()
        .with_topic(cfg.topic.clone())
        .with_subscription(cfg.subscription.clone())
        .with_subscription_type(sub_type(cfg.subscription_kind))
        .with_consumer_name(name)
        .with_batch_size(cfg.receiver_queue_size)
        .with_options(ConsumerOptions::default().with_initial_position(InitialPosition::Earliest))
        .build()
        .await?;
    Ok(consumer)
}

/// Runs the consumer until `shutdown` is set, then stops receiving (dropping
/// `out`, which lets the pipeline flush) and keeps sending the acks that
/// still arrive until `acks` closes.
pub async fn run(
    cfg: PulsarConfig,
    out: mpsc::Sender<Message>,
    mut acks: mpsc::UnboundedReceiver<Vec<Ack>>,
    mut shutdown: watch::Receiver<bool>,
    health: Arc<Health>,
) -> anyhow::Result<()> {
    let mut out = Some(out);
    let mut backoff = Backoff::new(cfg.backoff.max(Duration::from_millis(50)), cfg.max_backoff);
    let mut seen = Redeliveries::new(cfg.subscription_kind.ordered(), cfg.skip_redelivered);
    let mut topics: BTreeMap<String, Arc<str>> = BTreeMap::new();
    let mut first = true;
    loop {
        let stopping = *shutdown.borrow();
        if stopping {
            out = None;
        }
        let connected = async {
            let c = client(&cfg).await?;
            let k = consumer(&c, &cfg).await?;
            anyhow::Ok((c, k))
        };
        let (_client, mut consumer) = tokio::select! {
            r = connected => match r {
                Ok(pair) => pair,
                Err(e) => {
                    metrics::SOURCE_ERRORS.with_label_values(&["connect"]).inc();
                    telemetry::broker_connection_error();
                    let wait = backoff.next_wait();
                    tracing::warn!("cannot subscribe to {} on {}: {e:#}; retrying in {:?}", cfg.topic, target(&cfg.url), wait);
                    if wait_or_done(wait, &mut shutdown, &mut acks, stopping).await {
                        return Ok(());
                    }
                    continue;
                }
            },
            _ = shutdown.changed(), if !stopping => continue,
        };
        tracing::info!(
            "subscribed to {} as {} ({:?}) on {}",
            cfg.topic,
            cfg.subscription,
            cfg.subscription_kind,
            target(&cfg.url)
        );
        health.broker_connected.store(true, Ordering::Relaxed);
        telemetry::subscribed(&cfg.subscription, std::mem::take(&mut first));
        backoff.reset();
        let ended = loop {
            let receiving = out.is_some();
            tokio::select! {
                biased;
                _ = shutdown.changed(), if receiving => {
                    tracing::info!("stopping: no more messages are received; committing what is in flight");
                    out = None;
                }
                batch = acks.recv() => match batch {
                    None => {
                        // Closing asks the broker; a broker that does not
                        // answer must not hold the exit up.
                        let _ = tokio::time::timeout(Duration::from_secs(2), consumer.close()).await;
                        return Ok(());
                    }
                    Some(batch) => {
                        for ack in batch {
                            seen.committed(&ack);
                            let (topic, r) = match &ack {
                                Ack::Cumulative { topic, id } => (topic, consumer.cumulative_ack_with_id(topic, message_id(id)).await),
                                Ack::Individual { topic, id } => (topic, consumer.ack_with_id(topic, message_id(id)).await),
                            };
                            telemetry::acknowledged(&ack, r.is_ok());
                            match r {
                                Ok(()) => metrics::ACKS.inc(),
                                Err(e) => {
                                    // The broker will redeliver; idempotent writes make that harmless.
                                    metrics::SOURCE_ERRORS.with_label_values(&["ack"]).inc();
                                    tracing::warn!("acknowledgement on {topic} failed: {e}; the message will be redelivered");
                                }
                            }
                        }
                    }
                },
                // Polled after a stop too: during a catch-up the client's
                // engine blocks delivering into a full queue, and processes
                // no acknowledgements until it is read. What is read after
                // the stop is dropped unacknowledged (redelivered later).
                msg = consumer.next() => match msg {
                    None => break "the consumer stream ended".to_string(),
                    Some(Err(e)) => break format!("receive failed: {e}"),
                    Some(Ok(_)) if !receiving => {}
                    Some(Ok(m)) => {
                        let topic = topics.entry(m.topic.clone()).or_insert_with(|| Arc::from(m.topic.as_str())).clone();
                        let publish_ms = m.metadata().publish_time;
                        telemetry::message_received(&topic, publish_ms);
                        let raw = m.message_id();
                        let id = PulsarId {
                            ledger: raw.ledger_id,
                            entry: raw.entry_id,
                            partition: raw.partition.unwrap_or(-1),
                            batch_index: raw.batch_index.unwrap_or(-1),
                            batch_size: m.message_id.batch_size.or(raw.batch_size),
                        };
                        if !seen.received(&topic, &id) {
                            metrics::DUPLICATES_SKIPPED.inc();
                            continue;
                        }
                        let publish_time = Some(publish_timestamp(publish_ms));
                        let msg = Message { payload: m.payload.data, origin: Origin::Pulsar { topic: topic.clone(), id }, publish_time };
                        if let Some(o) = &out {
                            if o.send(msg).await.is_err() {
                                break "the pipeline stopped".to_string();
                            }
                            telemetry::message_waiting(&topic, &id, publish_ms);
                        }
                    }
                },
            }
        };
        health.broker_connected.store(false, Ordering::Relaxed);
        metrics::SOURCE_ERRORS.with_label_values(&["stream"]).inc();
        telemetry::broker_connection_error();
        let wait = backoff.next_wait();
        tracing::warn!("{ended}; reconnecting in {wait:?}");
        drop(consumer);
        let stopping = out.is_none();
        if wait_or_done(wait, &mut shutdown, &mut acks, stopping).await {
            return Ok(());
        }
    }
}

/// Sleeps for `d` (cut short by shutdown). Returns true when there is
/// nothing left to do: stopping and the ack channel closed (acks that arrive
/// while disconnected are dropped; those messages get redelivered).
async fn wait_or_done(
    d: Duration,
    shutdown: &mut watch::Receiver<bool>,
    acks: &mut mpsc::UnboundedReceiver<Vec<Ack>>,
    stopping: bool,
) -> bool {
    let sleep = tokio::time::sleep(d);
    tokio::pin!(sleep);
    loop {
        tokio::select! {
            _ = &mut sleep => return false,
            _ = shutdown.changed(), if !stopping => return false,
            a = acks.recv(), if stopping => {
                if a.is_none() {
                    return true;
                }
                // Disconnected: the ack cannot be sent; the broker redelivers.
                metrics::SOURCE_ERRORS.with_label_values(&["ack"]).inc();
            }
        }
    }
}

/// Recognises redeliveries of messages this process already has.
///
/// A message is skipped only when it is certainly handled: it is still in
/// the pipeline (received, not yet committed), or, in ordered subscriptions,
/// at or below the position already committed and cumulatively acknowledged
/// on its partition. A message never seen before is always processed, even
/// if it arrives out of order.
#[derive(Debug, Default)]
pub struct Redeliveries {
    ordered: bool,
    enabled: bool,
    in_flight: BTreeMap<Arc<str>, std::collections::BTreeSet<(u64, u64, i32)>>,
    committed: BTreeMap<Arc<str>, (u64, u64, i32)>,
}

impl Redeliveries {
    pub fn new(ordered: bool, enabled: bool) -> Self {
        Redeliveries {
            ordered,
            enabled,
            ..Default::default()
        }
    }

    /// Records a received message; false when it is a redelivery to skip.
    pub fn received(&mut self, topic: &Arc<str>, id: &PulsarId) -> bool {
        if !self.enabled {
            return true;
        }
        let pos = id.position();
        if self.ordered && self.committed.get(topic).is_some_and(|c| pos <= *c) {
            return false;
        }
        self.in_flight.entry(topic.clone()).or_default().insert(pos)
    }

    /// Records that the acknowledger released a message (or a prefix).
    pub fn committed(&mut self, ack: &Ack) {
        match ack {
            Ack::Cumulative { topic, id } => {
                let pos = id.position();
                let c = self.committed.entry(topic.clone()).or_insert(pos);
                if pos > *c {
                    *c = pos;
                }
                if let Some(set) = self.in_flight.get_mut(topic) {
                    // Keep only positions above the acknowledged one.
                    let above = set.split_off(&(pos.0, pos.1, pos.2.saturating_add(1)));
                    *set = above;
                }
            }
            Ack::Individual { topic, id } => {
                if let Some(set) = self.in_flight.get_mut(topic) {
                    set.remove(&id.position());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(entry: u64) -> PulsarId {
        PulsarId {
            ledger: 7,
            entry,
            partition: -1,
            batch_index: -1,
            batch_size: None,
        }
    }

    #[test]
    fn skips_only_what_is_certainly_handled() {
        let t: Arc<str> = Arc::from("t");
        let mut r = Redeliveries::new(true, true);
        assert!(r.received(&t, &id(1)));
        assert!(r.received(&t, &id(3)));
        assert!(!r.received(&t, &id(1)), "in flight");
        assert!(
            r.received(&t, &id(2)),
            "never seen, even though out of order"
        );
        r.committed(&Ack::Cumulative {
            topic: t.clone(),
            id: id(2),
        });
        assert!(!r.received(&t, &id(1)), "committed");
        assert!(!r.received(&t, &id(3)), "still in flight");
        assert!(r.received(&t, &id(4)));
        r.committed(&Ack::Cumulative {
            topic: t.clone(),
            id: id(4),
        });
        assert!(!r.received(&t, &id(3)));
        assert!(r.in_flight.get(&t).is_some_and(|s| s.is_empty()));
    }

    #[test]
    fn shared_subscriptions_use_only_the_in_flight_set() {
        let t: Arc<str> = Arc::from("t");
        let mut r = Redeliveries::new(false, true);
        assert!(r.received(&t, &id(5)));
        r.committed(&Ack::Individual {
            topic: t.clone(),
            id: id(5),
        });
        assert!(r.received(&t, &id(5)), "no watermark without ordering");
        let mut off = Redeliveries::new(true, false);
        assert!(off.received(&t, &id(1)) && off.received(&t, &id(1)));
    }
}
