//! The ingestion pipeline shared by live mode and replay:
//!
//! ```text
//! messages ─► batcher (decode, cut by events or time) ─► converter ─► store ─► committed reports
//! ```
//!
//! Stages run as tasks joined by bounded channels, so memory stays bounded
//! when Postgres is slower than the source, and converting batch N+1 overlaps
//! storing batch N. Batches leave in the order they were cut; a report is
//! sent only after its batch is committed, carrying the origin of every
//! message in it, so the caller can acknowledge exactly those.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use prost::Message as _;
use prost_types::Timestamp;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::convert::{Converter, Problem, Reason};
use crate::metrics;
use crate::model::InstructionSet;
use crate::proto::armadaevents::EventSequence;
use crate::source::{Message, Origin};
use crate::store::{Store, WriteReport};

/// How batches are cut; defaults are upstream's.
#[derive(Debug, Clone, PartialEq)]
pub struct Settings {
    /// A batch is cut once it holds at least this many events.
    pub batch_size: usize,
    /// ... or this long after its first message arrived.
    pub batch_duration: Duration,
    /// Batches that may wait between two stages.
    pub queue_depth: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            batch_size: 10_000,
            batch_duration: Duration::from_millis(500),
            queue_depth: 2,
        }
    }
}

/// A problem with one message or event, located.
#[derive(Debug, Clone, PartialEq)]
pub struct Located {
    pub origin: Origin,
    pub problem: Problem,
}

impl std::fmt::Display for Located {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.problem.event_index {
            Some(i) => write!(
                f,
                "{} event {}: {}: {}",
                self.origin,
                i,
                self.problem.reason.as_str(),
                self.problem.detail
            ),
            None => write!(
                f,
                "{}: {}: {}",
                self.origin,
                self.problem.reason.as_str(),
                self.problem.detail
            ),
        }
    }
}

/// What one committed batch did.
#[derive(Debug, Default)]
pub struct Committed {
    /// Every message of the batch, in arrival order, including those that
    /// produced no rows (undecodable, empty): all are safe to acknowledge.
    pub origins: Vec<Origin>,
    pub events_by_kind: BTreeMap<&'static str, u64>,
    pub problems: Vec<Located>,
    pub write: WriteReport,
}

/// Decodes one message. A valid protobuf of another type may decode too (all
/// fields unknown); the converter then rejects it for its empty queue.
pub fn decode(payload: &[u8]) -> Result<EventSequence, prost::DecodeError> {
    EventSequence::decode(payload)
}

struct Decoded {
    origin: Origin,
    publish_time: Option<Timestamp>,
    sequence: Option<EventSequence>,
    decode_error: Option<String>,
}

struct Batch {
    messages: Vec<Decoded>,
}

struct Converted {
    origins: Vec<Origin>,
    events_by_kind: BTreeMap<&'static str, u64>,
    problems: Vec<Located>,
    instructions: InstructionSet,
}

/// The running stage tasks of a pipeline.
pub struct Stages {
    tasks: Vec<JoinHandle<anyhow::Result<()>>>,
}

impl Stages {
    /// Waits for every stage; the first error wins. Stages end when their
    /// input closes, so close the source first (and keep draining the
    /// committed receiver until it closes).
    pub async fn join(self) -> anyhow::Result<()> {
        let mut first: anyhow::Result<()> = Ok(());
        for t in self.tasks {
            let r = match t.await {
                Ok(r) => r,
                Err(e) => Err(anyhow::anyhow!(
                    "pipeline stage panicked or was cancelled: {e}"
                )),
            };
            if first.is_ok() {
                first = r;
            }
        }
        first
    }
}

/// Starts the stages. Messages come in on `source`; when it closes, the
/// pipeline flushes what it holds and ends. Committed batches come out of
/// the returned receiver, in order.
pub fn spawn(
    source: mpsc::Receiver<Message>,
    converter: Converter,
    store: Arc<Store>,
    settings: Settings,
) -> (mpsc::Receiver<Committed>, Stages) {
    let depth = settings.queue_depth.max(1);
    let (batch_tx, batch_rx) = mpsc::channel(depth);
    let (conv_tx, conv_rx) = mpsc::channel(depth);
    let (done_tx, done_rx) = mpsc::channel(depth);
    let tasks = vec![
        tokio::spawn(batcher(source, batch_tx, settings)),
        tokio::spawn(converting(batch_rx, conv_tx, converter)),
        tokio::spawn(storing(conv_rx, done_tx, store)),
    ];
    (done_rx, Stages { tasks })
}

async fn batcher(
    mut source: mpsc::Receiver<Message>,
    out: mpsc::Sender<Batch>,
    settings: Settings,
) -> anyhow::Result<()> {
    let mut batch = Batch {
        messages: Vec::new(),
    };
    let mut events = 0usize;
    let mut deadline: Option<Instant> = None;
    loop {
        let msg = match deadline {
            Some(d) => tokio::select! {
                m = source.recv() => m,
                _ = tokio::time::sleep_until(d) => {
                    flush(&mut batch, &mut events, &mut deadline, &out).await?;
                    continue;
                }
            },
            None => source.recv().await,
        };
        let Some(msg) = msg else { break };
        metrics::MESSAGES_RECEIVED.inc();
        metrics::IN_FLIGHT.inc();
        let (sequence, decode_error) = match decode(&msg.payload) {
            Ok(s) => {
                events += s.events.len();
                (Some(s), None)
            }
            Err(e) => (None, Some(e.to_string())),
        };
        batch.messages.push(Decoded {
            origin: msg.origin,
            publish_time: msg.publish_time,
            sequence,
            decode_error,
        });
        if deadline.is_none() {
            deadline = Some(Instant::now() + settings.batch_duration);
        }
        if events >= settings.batch_size {
            flush(&mut batch, &mut events, &mut deadline, &out).await?;
        }
    }
    flush(&mut batch, &mut events, &mut deadline, &out).await
}

async fn flush(
    batch: &mut Batch,
    events: &mut usize,
    deadline: &mut Option<Instant>,
    out: &mpsc::Sender<Batch>,
) -> anyhow::Result<()> {
    *deadline = None;
    *events = 0;
    if batch.messages.is_empty() {
        return Ok(());
    }
    let full = std::mem::replace(
        batch,
        Batch {
            messages: Vec::new(),
        },
    );
    out.send(full)
        .await
        .map_err(|_| anyhow::anyhow!("converter stage stopped"))
}

async fn converting(
    mut input: mpsc::Receiver<Batch>,
    out: mpsc::Sender<Converted>,
    converter: Converter,
) -> anyhow::Result<()> {
    while let Some(batch) = input.recv().await {
        let mut c = Converted {
            origins: Vec::with_capacity(batch.messages.len()),
            events_by_kind: BTreeMap::new(),
            problems: Vec::new(),
            instructions: InstructionSet::default(),
        };
        for m in batch.messages {
            if let Some(detail) = m.decode_error {
                metrics::INPUT_ERRORS
                    .with_label_values(&[Reason::Decode.as_str()])
                    .inc();
                c.problems.push(Located {
                    origin: m.origin.clone(),
                    problem: Problem {
                        event_index: None,
                        reason: Reason::Decode,
                        detail,
                        skipped: true,
                    },
                });
            }
            if let Some(seq) = &m.sequence {
                let one = converter.convert(seq, m.publish_time.as_ref());
                for (k, n) in one.events_by_kind {
                    *c.events_by_kind.entry(k).or_insert(0) += n;
                }
                c.problems
                    .extend(one.problems.into_iter().map(|problem| Located {
                        origin: m.origin.clone(),
                        problem,
                    }));
                c.instructions.extend(one.instructions);
            }
            c.origins.push(m.origin);
        }
        for p in &c.problems {
            if p.problem.skipped {
                tracing::warn!("skipped {p}");
            } else {
                tracing::info!("{p}");
            }
        }
        if out.send(c).await.is_err() {
            anyhow::bail!("store stage stopped");
        }
    }
    Ok(())
}

async fn storing(
    mut input: mpsc::Receiver<Converted>,
    out: mpsc::Sender<Committed>,
    store: Arc<Store>,
) -> anyhow::Result<()> {
    while let Some(c) = input.recv().await {
        // The store counts batches and their write time itself.
        let write = store.write(c.instructions).await?;
        metrics::IN_FLIGHT.sub(c.origins.len() as i64);
        let done = Committed {
            origins: c.origins,
            events_by_kind: c.events_by_kind,
            problems: c.problems,
            write,
        };
        if out.send(done).await.is_err() {
            anyhow::bail!("acknowledger stopped");
        }
    }
    Ok(())
}
