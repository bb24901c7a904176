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

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use prost::Message as _;
use prost_types::Timestamp;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::convert::{Converter, Problem, Reason};
use crate::deadletter::{DeadLetter, DeadLetters};
use crate::metrics;
use crate::model::InstructionSet;
use crate::proto::armadaevents::EventSequence;
use crate::source::{Message, Origin};
use crate::store::{Store, WriteReport};

/// How batches are cut, with upstream's keys and defaults.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(default)]
pub struct Settings {
    /// A batch is cut once it holds at least this many events. Default: 10000
    #[serde(rename = "batchSize", deserialize_with = "crate::values::at_least_one")]
    pub batch_size: usize,
    /// ... or this long after its first message arrived. Default: 500ms
    #[serde(
        rename = "batchDuration",
        deserialize_with = "crate::values::positive_duration"
    )]
    pub batch_duration: Duration,
    /// Batches that may wait between two stages (not configurable). Default: 2
    #[serde(skip)]
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
    /// Messages kept as dead letters (in the table or the spool).
    pub dead_letters: usize,
}

/// Decodes one message. A valid protobuf of another type may decode too (all
/// fields unknown); the converter then rejects it for its empty queue.
pub fn decode(payload: &[u8]) -> Result<EventSequence, prost::DecodeError> {
    EventSequence::decode(payload)
}

struct Decoded {
    origin: Origin,
    publish_time: Option<Timestamp>,
    payload: Vec<u8>,
    sequence: Option<EventSequence>,
    decode_error: Option<String>,
}

struct Batch {
    messages: Vec<Decoded>,
}

struct Converted {
    messages: Vec<MessageOutcome>,
    events_by_kind: BTreeMap<&'static str, u64>,
    instructions: InstructionSet,
}

/// One message after conversion: kept until its batch is committed, so that
/// what could not be applied can be dead-lettered byte for byte.
#[derive(Debug, Clone, Default)]
pub struct MessageOutcome {
    pub origin: Option<Origin>,
    pub payload: Vec<u8>,
    pub publish_time: Option<Timestamp>,
    pub problems: Vec<Problem>,
    /// Keys of the rows this message asked for, to trace failed rows back.
    pub job_ids: BTreeSet<String>,
    pub run_ids: BTreeSet<String>,
}

/// The job and run ids an instruction set touches.
pub fn keys(set: &InstructionSet) -> (BTreeSet<String>, BTreeSet<String>) {
    let mut jobs = BTreeSet::new();
    let mut runs = BTreeSet::new();
    jobs.extend(set.jobs_to_create.iter().map(|j| j.job_id.clone()));
    jobs.extend(set.jobs_to_update.iter().map(|j| j.job_id.clone()));
    jobs.extend(set.job_errors_to_create.iter().map(|j| j.job_id.clone()));
    runs.extend(set.runs_to_create.iter().map(|r| r.run_id.clone()));
    runs.extend(set.runs_to_update.iter().map(|r| r.run_id.clone()));
    (jobs, runs)
}

/// Whether a problem means part of the message was not applied (and so the
/// message is kept as a dead letter): everything skipped, and event kinds
/// this build cannot apply.
fn unapplied(p: &Problem) -> bool {
    p.skipped || p.reason == Reason::UnknownEventKind
}

/// The dead letters of a committed batch: every message with an unapplied
/// problem, a row that failed even on its own, or an update that found no
/// row (an event for an unknown job or run, or one that arrived before the
/// event creating its row). Pure, so the rule is unit-tested.
pub fn dead_letters(messages: &[MessageOutcome], write: &WriteReport) -> Vec<DeadLetter> {
    let mut out = Vec::new();
    for m in messages {
        let mut reasons: Vec<String> = Vec::new();
        let mut errors: Vec<String> = Vec::new();
        for p in m.problems.iter().filter(|p| unapplied(p)) {
            reasons.push(p.reason.as_str().to_string());
            match p.event_index {
                Some(i) => errors.push(format!("event {i}: {}", p.detail)),
                None => errors.push(p.detail.clone()),
            }
        }
        for f in &write.failed {
            let mine = match f.table {
                "job_run" => m.run_ids.contains(&f.key),
                _ => m.job_ids.contains(&f.key),
            };
            if mine {
                reasons.push("row_failed".into());
                errors.push(format!(
                    "{} {} {}: {}",
                    f.table, f.operation, f.key, f.error
                ));
            }
        }
        for u in &write.unmatched {
            let (mine, reason) = match u.table {
                "job_run" => (m.run_ids.contains(&u.key), "unknown_run"),
                _ => (m.job_ids.contains(&u.key), "unknown_job"),
            };
            if mine {
                reasons.push(reason.into());
                errors.push(format!("update of {} {}: no such row", u.table, u.key));
            }
        }
        if reasons.is_empty() {
            continue;
        }
        reasons.sort();
        reasons.dedup();
        out.push(DeadLetter {
            source: m
                .origin
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            reason: reasons.join(","),
            error: errors.join("; "),
            payload: m.payload.clone(),
            publish_time: m.publish_time.and_then(|t| {
                chrono::DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0))
            }),
        });
    }
    out
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
    dead: Arc<DeadLetters>,
    settings: Settings,
) -> (mpsc::Receiver<Committed>, Stages) {
    let depth = settings.queue_depth.max(1);
    let (batch_tx, batch_rx) = mpsc::channel(depth);
    let (conv_tx, conv_rx) = mpsc::channel(depth);
    let (done_tx, done_rx) = mpsc::channel(depth);
    let tasks = vec![
        tokio::spawn(batcher(source, batch_tx, settings)),
        tokio::spawn(converting(batch_rx, conv_tx, converter)),
        tokio::spawn(storing(conv_rx, done_tx, store, dead)),
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
            payload: msg.payload,
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
            messages: Vec::with_capacity(batch.messages.len()),
            events_by_kind: BTreeMap::new(),
            instructions: InstructionSet::default(),
        };
        for m in batch.messages {
            let mut outcome = MessageOutcome {
                origin: Some(m.origin),
                payload: m.payload,
                publish_time: m.publish_time,
                ..MessageOutcome::default()
            };
            if let Some(detail) = m.decode_error {
                metrics::INPUT_ERRORS
                    .with_label_values(&[Reason::Decode.as_str()])
                    .inc();
                outcome.problems.push(Problem {
                    event_index: None,
                    reason: Reason::Decode,
                    detail,
                    skipped: true,
                });
            }
            if let Some(seq) = &m.sequence {
                let one = converter.convert(seq, m.publish_time.as_ref());
                for (k, n) in one.events_by_kind {
                    *c.events_by_kind.entry(k).or_insert(0) += n;
                }
                outcome.problems.extend(one.problems);
                (outcome.job_ids, outcome.run_ids) = keys(&one.instructions);
                c.instructions.extend(one.instructions);
            }
            for problem in &outcome.problems {
                let Some(origin) = outcome.origin.clone() else {
                    continue;
                };
                let located = Located {
                    origin,
                    problem: problem.clone(),
                };
                if unapplied(problem) {
                    tracing::warn!("not applied: {located}");
                } else {
                    tracing::info!("{located}");
                }
            }
            c.messages.push(outcome);
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
    dead: Arc<DeadLetters>,
) -> anyhow::Result<()> {
    while let Some(c) = input.recv().await {
        // The store counts batches and their write time itself.
        let write = store.write(c.instructions).await?;
        let letters = dead_letters(&c.messages, &write);
        // Only once the dead letters are safe may the batch be acknowledged.
        dead.record(&letters).await?;
        metrics::IN_FLIGHT.sub(c.messages.len() as i64);
        let mut origins = Vec::with_capacity(c.messages.len());
        let mut problems = Vec::new();
        for m in c.messages {
            let Some(origin) = m.origin else { continue };
            problems.extend(m.problems.into_iter().map(|problem| Located {
                origin: origin.clone(),
                problem,
            }));
            origins.push(origin);
        }
        let done = Committed {
            origins,
            events_by_kind: c.events_by_kind,
            problems,
            write,
            dead_letters: letters.len(),
        };
        if out.send(done).await.is_err() {
            anyhow::bail!("acknowledger stopped");
        }
    }
    Ok(())
}
