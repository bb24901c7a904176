//! The ingestion pipeline shared by live mode and replay:
//!
//! ```text
//! messages ─► batcher (count events, cut by events, messages, bytes or time)
//!   ─► pieces of the filling batch ─► converter (decode, convert, merge) ─► store ─► committed reports
//! ```
//!
//! Stages run as tasks joined by bounded channels, so memory stays bounded
//! when Postgres is slower than the source, and converting batch N+1 (piece
//! by piece, while it fills) overlaps storing batch N. Batches leave in the order they were cut; a report is
//! sent only after its batch is committed, carrying the origin of every
//! message in it, so the caller can acknowledge exactly those.
//!
//! The rules that decide what becomes of one message are two pure
//! functions, [`judge`] (decode → convert → problems and row keys) and
//! [`dead_letters`] (what the write left unapplied). The converting and
//! storing stages use them, and so does [`redrive`], which sends stored dead
//! letters through again (`dead-letters retry`): a redriven dead letter is
//! judged by exactly the live rules, but only for the events it did not
//! apply ([`DeadLetter::unapplied_events`], traced back by [`dead_letters`]
//! from the failed rows and unmatched updates to the events asking for
//! them), so an event already applied is never applied again. What conversion and writing counted is
//! turned into metrics and logs in one place each (`count_converted`,
//! `count_written`), through `telemetry`, once the batch is written.
//!
//! A batch is converted for the schema generation the store last saw
//! ([`Store::generation`]). If a migration changed it before the batch was
//! written, the store writes nothing and says so; the storing stage then
//! judges the batch's messages again for the new generation and writes them
//! ([`write_planned`], also used by [`redrive`]): nothing is dead-lettered or
//! acknowledged for it, and what is counted is the judgement that was
//! written.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use prost::Message as _;
use prost_types::Timestamp;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::convert::sanitize::Action;
use crate::convert::{Converter, Problem, Reason};
use crate::deadletter::{self, DeadLetter, DeadLetters, Reasons};
use crate::hold::{self, Held, Keys, Tagged};
pub use crate::kept::MessageOutcome;
use crate::kept::{self, Kept};
use crate::model::{Generation, InstructionSet};
use crate::proto::armadaevents::EventSequence;
use crate::source::{Message, Origin};
use crate::store::{PreparedBatch, Store, StoreError, Table, WriteReport};
use crate::{metrics, telemetry};

/// How batches are cut, with upstream's keys and defaults.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(default)]
pub struct Settings {
    /// A batch is cut once it holds at least this many events. Default:
    /// 40000 (upstream's is 10000: larger batches fold more of a job's
    /// updates into one row version; `batch_max_bytes` bounds them)
    #[serde(rename = "batchSize", deserialize_with = "crate::values::at_least_one")]
    pub batch_size: usize,
    /// ... or this long after its first message arrived. Default: 500ms
    #[serde(
        rename = "batchDuration",
        deserialize_with = "crate::values::positive_duration"
    )]
    pub batch_duration: Duration,
    /// ... or once it holds this many messages, whatever they carry (a
    /// message with no events counts too). Default: 40000
    #[serde(
        rename = "batchMaxMessages",
        deserialize_with = "crate::values::at_least_one"
    )]
    pub batch_max_messages: usize,
    /// ... or once its payloads add up to this many bytes. With at most
    /// three batches in memory when cutting adapts (`cut_when_idle`), and
    /// `queue_depth` between two stages otherwise, this bounds the memory
    /// of the whole pipeline. Default: 8388608 (8 MiB)
    #[serde(
        rename = "batchMaxBytes",
        deserialize_with = "crate::values::at_least_one"
    )]
    pub batch_max_bytes: usize,
    /// Batches that may wait between two stages (not configurable). Default: 2
    #[serde(skip)]
    pub queue_depth: usize,
    /// ... or as soon as no earlier batch is still being converted or
    /// written; and a full batch with two ahead waits (the batcher stops
    /// taking messages until one is committed). Under a backlog the store
    /// is busy, so batches fill up to their limits; at a low rate a
    /// message waits for the write in progress instead of the timer.
    /// Default: true
    #[serde(rename = "batchCutWhenIdle")]
    pub cut_when_idle: bool,
    /// In a batch behind the topic ([`BEHIND`]), the rows of jobs and
    /// runs still open at its end are held back for up to this
    /// many batches, and written with the batch in which they end, as one
    /// row each instead of a creation and updates (see `hold`). The
    /// messages they came from are acknowledged only once they are written.
    /// 0: never. Default: 4
    #[serde(rename = "batchHoldOpen")]
    pub hold_open: u64,
    /// Every batch is behind (`replay`: a recording is history), rather
    /// than those whose newest message was published more than [`BEHIND`]
    /// ago. Not configurable. Default: false
    #[serde(skip)]
    pub always_behind: bool,
}

/// A batch whose newest message was published longer ago than this is
/// behind the topic (a backlog): the rows of its open jobs may be held
/// ([`Settings::hold_open`]). A batch closer to the present writes
/// everything, so that a job shows in Lookout one batch after its events
/// under a steady load, whatever the rate.
pub const BEHIND: Duration = Duration::from_secs(10);

/// Held rows may take this many times `batchMaxBytes` (their instructions,
/// estimated): at 1,000,000 events of the benchmark's workload that holds
/// every open job and run for the four batches; half of it held only half
/// of them and replay took a third longer.
const HOLD_BATCHES_OF_BYTES: usize = 4;

/// Messages that may wait for their acknowledgement because rows they asked
/// for are held, from the longest held on (`run`): below Pulsar's default
/// `maxUnackedMessagesPerConsumer` (50,000), at which a broker stops sending
/// to the consumer until it acknowledges (the batches in flight count too).
const HOLD_MESSAGES: u64 = 30_000;

impl Default for Settings {
    fn default() -> Self {
        Settings {
            batch_size: 40_000,
            batch_duration: Duration::from_millis(500),
            batch_max_messages: 40_000,
            batch_max_bytes: 8 * 1024 * 1024,
            queue_depth: 2,
            cut_when_idle: true,
            hold_open: 4,
            always_behind: false,
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
            Some(_) => write!(f, "{} {}", self.origin, self.problem),
            None => write!(f, "{}: {}", self.origin, self.problem),
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
    /// The newest publish time of the batch's messages (for the lag).
    pub last_publish: Option<Timestamp>,
}

/// Decodes one message. A valid protobuf of another type may decode too (all
/// fields unknown); the converter then rejects it for its empty queue.
pub fn decode(payload: &[u8]) -> Result<EventSequence, prost::DecodeError> {
    EventSequence::decode(payload)
}

/// One message as received, not yet decoded: the batcher only counts its
/// events ([`count_events`]); the converter decodes it, converts it and
/// drops the decoded form at once. Decoding as messages arrive kept whole
/// batches of decoded sequences (several times their payloads) waiting
/// between the stages.
pub struct Decoded {
    /// `None` for a redriven dead letter (its source is only text).
    pub origin: Option<Origin>,
    pub publish_time: Option<Timestamp>,
    pub payload: Vec<u8>,
    /// Events in the payload, for cutting batches (0 if it is not protobuf).
    pub events: usize,
    /// The indexes of the events to judge, ascending; `None` for all. A
    /// redriven dead letter judges only the events it did not apply.
    pub only: Option<Vec<usize>>,
}

impl Decoded {
    pub fn new(origin: Option<Origin>, payload: Vec<u8>, publish_time: Option<Timestamp>) -> Self {
        Decoded {
            origin,
            publish_time,
            events: count_events(&payload).unwrap_or(0),
            payload,
            only: None,
        }
    }

    /// A stored dead letter, to judge only its events `only` (`None`: all).
    pub fn redriven(
        payload: Vec<u8>,
        publish_time: Option<Timestamp>,
        only: Option<Vec<usize>>,
    ) -> Self {
        // In their original order, each once, whatever the column held.
        let only = only.map(|mut v| {
            v.sort_unstable();
            v.dedup();
            v
        });
        Decoded {
            only,
            ..Decoded::new(None, payload, publish_time)
        }
    }
}

/// How many events an `EventSequence` payload holds, read off its top-level
/// fields (`events` is field 5) without decoding or allocating anything.
/// `None` if the top level is not well-formed protobuf; a payload counted
/// here may still fail the full decode, which the converter reports.
pub fn count_events(payload: &[u8]) -> Option<usize> {
    const EVENTS: u64 = 5;
    let mut buf = payload;
    let mut events = 0;
    while !buf.is_empty() {
        let key = prost::encoding::decode_varint(&mut buf).ok()?;
        let skip = match key & 7 {
            0 => {
                prost::encoding::decode_varint(&mut buf).ok()?;
                0
            }
            1 => 8,
            2 => {
                if key >> 3 == EVENTS {
                    events += 1;
                }
                usize::try_from(prost::encoding::decode_varint(&mut buf).ok()?).ok()?
            }
            5 => 4,
            // Groups (3, 4) are not in these messages; 6 and 7 do not exist.
            _ => return None,
        };
        buf = buf.get(skip..)?;
    }
    Some(events)
}

/// Consecutive messages of the batch being filled, not yet converted;
/// `last` when the batch is cut after them. Under a steady load the batcher
/// hands a batch on in pieces as it fills, so that the converter converts it
/// meanwhile and, once it is cut, only its last piece and merging it are
/// left before the store can take it (converting a whole batch at the cut
/// kept the store idle that long, a tenth of each cycle); see [`add`].
struct Piece {
    messages: Vec<Decoded>,
    last: bool,
    /// `last`, and the batch is behind the topic ([`BEHIND`]): the rows of
    /// its open jobs may be held back.
    behind: bool,
}

/// A piece is handed on at this many messages or payload bytes.
const PIECE_MESSAGES: usize = 256;
const PIECE_BYTES: usize = 256 * 1024;
/// Pieces that may wait for the converter (2 MiB at most): the converter
/// keeps up, and when it waits for the store the batcher waits too.
const PIECES_QUEUED: usize = 8;

/// A batch after conversion: what to write, for which generation, each
/// message as judged (its instructions merged into `prepared`), and what
/// converting them counted, summed over the batch.
struct ConvertedBatch {
    generation: Generation,
    /// Every message of the batch, its payload compressed.
    messages: Arc<Kept>,
    /// The messages' instructions, merged and split for the store.
    prepared: PreparedBatch,
    counted: Counted,
    /// Messages of earlier batches whose held rows this batch writes
    /// ([`hold`]; their problems were counted with their own batch), and
    /// the keys of those rows.
    released: Vec<hold::Released<Kept>>,
    released_keys: Keys,
    /// The batch's number, and the lowest batch number that still has rows
    /// held once it is committed (every batch below may be acknowledged).
    number: u64,
    floor: u64,
    /// Cut by the batcher (counted in its `pending`), not a release of held
    /// rows by the converter.
    cut: bool,
}

/// What converting a batch's messages counted, summed: kept per batch
/// rather than per message, where a message's maps weighed more than its
/// payload (a 40,000-event batch held 65 MB of them).
#[derive(Default)]
struct Counted {
    events_by_kind: BTreeMap<&'static str, u64>,
    sanitised: BTreeMap<Action, u64>,
    observed: telemetry::Observed,
}

impl Counted {
    fn add(&mut self, j: Judged) {
        telemetry::add_counts(&mut self.events_by_kind, j.events_by_kind);
        telemetry::add_counts(&mut self.sanitised, j.sanitised);
        self.observed.absorb(j.observed);
    }
}

impl ConvertedBatch {
    /// Judges `messages` with `converter`, which converts for `generation`.
    fn plan(
        messages: impl IntoIterator<Item = Decoded>,
        converter: &Converter,
        generation: Generation,
    ) -> ConvertedBatch {
        let mut p = Planning::new(generation, 0);
        p.add(messages, converter);
        p.finish()
    }

    /// Converts the batch again for `generation` with `converter`: its
    /// messages in full, and the released messages for the released keys
    /// only (their other rows were written with their own batch).
    fn replan(self, converter: &Converter, generation: Generation) -> ConvertedBatch {
        let mut p = Planning::new(generation, 0);
        for m in released_messages(&self.released) {
            let set = judge(m.into_decoded(), converter).instructions;
            p.instructions
                .extend(hold::restrict(set, &self.released_keys), 0);
        }
        p.add(
            self.messages
                .all()
                .into_iter()
                .map(MessageOutcome::into_decoded),
            converter,
        );
        ConvertedBatch {
            released: self.released,
            released_keys: self.released_keys,
            number: self.number,
            floor: self.floor,
            cut: self.cut,
            ..p.finish()
        }
    }
}

/// A batch being converted, piece by piece.
struct Planning {
    batch: ConvertedBatch,
    /// Each tagged with its message's number: `first` + its index in the
    /// batch.
    instructions: Tagged,
    /// The batch's messages as judged, their payloads compressed as they
    /// come (see `kept`).
    kept: kept::Builder,
    first: u64,
}

impl Planning {
    fn new(generation: Generation, first: u64) -> Planning {
        Planning {
            batch: ConvertedBatch {
                generation,
                messages: Arc::default(),
                prepared: PreparedBatch::default(),
                counted: Counted::default(),
                released: Vec::new(),
                released_keys: Keys::default(),
                number: 0,
                floor: 0,
                cut: true,
            },
            instructions: Tagged::default(),
            kept: kept::Builder::default(),
            first,
        }
    }

    fn add(&mut self, messages: impl IntoIterator<Item = Decoded>, converter: &Converter) {
        for m in messages {
            let mut j = judge(m, converter);
            let number = self.first + self.kept.len() as u64;
            self.instructions
                .extend(std::mem::take(&mut j.instructions), number);
            self.kept.push(std::mem::take(&mut j.message));
            self.batch.counted.add(j);
        }
    }

    /// Messages added so far.
    fn len(&self) -> u64 {
        self.kept.len() as u64
    }

    /// Merges and splits the instructions for the store.
    fn finish(mut self) -> ConvertedBatch {
        self.batch.prepared = Store::prepare(std::mem::take(&mut self.instructions.set));
        self.batch.messages = Arc::new(self.kept.finish());
        self.batch
    }

    /// A batch of no messages of its own that writes everything `held`
    /// holds, converted for `converter`'s generation (as the held rows
    /// are); its first message would be `next`.
    fn release(
        held: &mut Held<Kept>,
        converter: &Converter,
        next: u64,
        limits: hold::Limits,
    ) -> ConvertedBatch {
        ConvertedBatch {
            cut: false,
            ..Planning::new(converter.generation(), next).finish_holding(held, false, limits)
        }
    }

    /// [`Planning::finish`], after `held` took back the rows that stay
    /// held (only if `hold`) and added those it releases.
    fn finish_holding(
        mut self,
        held: &mut Held<Kept>,
        hold: bool,
        limits: hold::Limits,
    ) -> ConvertedBatch {
        let own = std::mem::take(&mut self.instructions);
        let messages = Arc::new(std::mem::take(&mut self.kept).finish());
        let numbers = self.first..self.first + messages.len() as u64;
        self.batch.messages = Arc::clone(&messages);
        let passed = held.pass(own, numbers, hold, limits, || messages);
        metrics::HELD_ROWS.set(passed.held_rows as i64);
        metrics::HELD_BYTES.set(passed.held_bytes as i64);
        self.batch.prepared = Store::prepare(passed.write);
        self.batch.released = passed.released;
        self.batch.released_keys = passed.released_keys;
        self.batch.number = passed.batch;
        self.batch.floor = passed.floor;
        self.batch
    }
}

/// Writes a converted batch. When the store finds the database at another
/// generation, the batch's messages are judged again for it (with
/// `converter`, whatever generation it was set to) and written again, until
/// a write goes through or fails for another reason. Returns the batch as
/// written.
async fn write_planned(
    store: &Store,
    converter: &Converter,
    mut c: ConvertedBatch,
) -> Result<(ConvertedBatch, WriteReport), StoreError> {
    loop {
        let prepared = std::mem::take(&mut c.prepared);
        match store.write_prepared(prepared, c.generation).await {
            Ok(write) => return Ok((c, write)),
            Err(StoreError::SchemaChanged { from, to }) => {
                tracing::info!(
                    messages = c.messages.len(),
                    "batch converted for schema generation {from} is converted again for {to}"
                );
                let converter = converter.clone().with_generation(to);
                c = c.replan(&converter, to);
            }
            // Tables or columns gone mid-stream: `run` waits for them
            // (nothing acknowledged), then writes the batch for what is there.
            Err(StoreError::Schema(_)) if store.waits_for_schema() => {
                let to = store.detect_waiting().await?.generation;
                let converter = converter.clone().with_generation(to);
                c = c.replan(&converter, to);
            }
            Err(e) => return Err(e),
        }
    }
}

/// The generation to convert the next batch for: the store's, read from
/// the catalog if it has not been yet.
async fn current_generation(store: &Store) -> Result<Generation, StoreError> {
    match store.generation() {
        Some(g) => Ok(g),
        None => Ok(store.detect().await?.generation),
    }
}

impl MessageOutcome {
    /// The message again as received, to be judged anew.
    fn into_decoded(self) -> Decoded {
        Decoded {
            only: self.only,
            ..Decoded::new(self.origin, self.payload, self.publish_time)
        }
    }
}

/// The messages of `released`, in order.
fn released_messages(released: &[hold::Released<Kept>]) -> Vec<MessageOutcome> {
    (released.iter())
        .flat_map(|r| r.block.messages(r.first, &r.numbers))
        .collect()
}

/// One message judged by [`judge`]: its outcome so far, the rows it asks
/// for, and what converting it counted.
#[derive(Debug, Clone, Default)]
pub struct Judged {
    pub message: MessageOutcome,
    pub instructions: InstructionSet,
    pub events_by_kind: BTreeMap<&'static str, u64>,
    pub sanitised: BTreeMap<Action, u64>,
    /// What the metrics need from its events.
    pub observed: telemetry::Observed,
}

/// Converts one decoded message and collects its problems (an undecodable
/// payload is one) and the keys of the rows it asks for. Pure: the one
/// rule for live mode, replay and redrive.
pub fn judge(m: Decoded, converter: &Converter) -> Judged {
    let mut j = Judged {
        message: MessageOutcome {
            origin: m.origin,
            payload: m.payload,
            publish_time: m.publish_time,
            only: m.only,
            ..MessageOutcome::default()
        },
        ..Judged::default()
    };
    match decode(&j.message.payload).map_err(|e| e.to_string()) {
        Err(detail) => j.message.problems.push(Problem {
            event_index: None,
            reason: Reason::Decode,
            detail,
            skipped: true,
        }),
        Ok(seq) => {
            let seq = select(seq, j.message.only.as_deref());
            j.observed = telemetry::Observed::of(&seq, m.publish_time.as_ref());
            let c = converter.convert(&seq, m.publish_time.as_ref());
            j.message.problems = c.problems;
            // Problems name events by their index in the whole message.
            for p in &mut j.message.problems {
                p.event_index = p
                    .event_index
                    .map(|i| original(j.message.only.as_deref(), i));
            }
            j.instructions = c.instructions;
            j.events_by_kind = c.events_by_kind;
            j.sanitised = c.sanitised;
        }
    }
    j
}

/// The one place where what conversion counted becomes metrics and logs.
fn count_converted(counted: &Counted, messages: &Kept) {
    telemetry::events(&counted.events_by_kind);
    telemetry::sanitised(&counted.sanitised);
    messages.headers().iter().for_each(count_problems);
}

fn count_problems(m: &kept::Header) {
    for problem in &m.problems {
        let unapplied = unapplied(problem);
        match &m.origin {
            Some(origin) => {
                let at = Located {
                    origin: origin.clone(),
                    problem: problem.clone(),
                };
                telemetry::input_problem(&at, problem, unapplied);
            }
            None => telemetry::input_problem(problem, problem, unapplied),
        }
    }
}

/// The one place where the write's failures become metrics and logs.
fn count_written(write: &WriteReport) {
    write.failed.iter().for_each(telemetry::row_failed);
    write.unmatched.iter().for_each(telemetry::update_unmatched);
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

/// The events of `seq` at the indexes `only` (all if `None`), in order.
fn select(mut seq: EventSequence, only: Option<&[usize]>) -> EventSequence {
    if let Some(only) = only {
        let mut events: Vec<Option<_>> = std::mem::take(&mut seq.events)
            .into_iter()
            .map(Some)
            .collect();
        seq.events = only
            .iter()
            .filter_map(|&i| events.get_mut(i).and_then(Option::take))
            .collect();
    }
    seq
}

/// The index in the whole message of the `i`th event judged.
fn original(only: Option<&[usize]>, i: usize) -> usize {
    only.and_then(|o| o.get(i).copied()).unwrap_or(i)
}

/// For each event judged of `m` (see [`MessageOutcome::only`]), the job
/// and run ids of the rows it asks for, found by converting it on its own
/// (as the converter converts every event independently of the others).
/// Only called for a message with a failed row or an unmatched update, so
/// the messages that apply pay nothing for it.
fn event_keys(
    m: &MessageOutcome,
    converter: &Converter,
) -> Vec<(BTreeSet<String>, BTreeSet<String>)> {
    let Ok(seq) = decode(&m.payload) else {
        return Vec::new();
    };
    let mut seq = select(seq, m.only.as_deref());
    let events = std::mem::take(&mut seq.events);
    events
        .into_iter()
        .map(|e| {
            let one = EventSequence {
                events: vec![e],
                ..seq.clone()
            };
            keys(
                &converter
                    .convert(&one, m.publish_time.as_ref())
                    .instructions,
            )
        })
        .collect()
}

/// Whether a problem means part of the message was not applied (and so the
/// message is kept as a dead letter): everything skipped, and event kinds
/// this build cannot apply.
fn unapplied(p: &Problem) -> bool {
    p.skipped || p.reason == Reason::UnknownEventKind
}

/// Whether rows of the store's `table` are keyed by run id (`job_run`);
/// the others are keyed by job id.
fn keyed_by_run(table: Table) -> bool {
    table == Table::JobRun
}

/// Whether an event with these (job ids, run ids) asks for `table`'s row
/// `key`.
fn asks_for((jobs, runs): &(BTreeSet<String>, BTreeSet<String>), table: Table, key: &str) -> bool {
    if keyed_by_run(table) {
        runs.contains(key)
    } else {
        jobs.contains(key)
    }
}

/// The dead letters of a committed batch: every message with an unapplied
/// problem, a row that failed even on its own, or an update that found no
/// row (an event for an unknown job or run, or one that arrived before the
/// event creating its row). Pure, so the rule is unit-tested.
///
/// Each letter names the events not applied ([`DeadLetter::unapplied_events`],
/// indexes in the whole message): those with a skipped problem, and those
/// asking for a row that failed or an update that matched nothing (traced by
/// their keys, converting with `converter`, which must convert for the
/// generation the batch was written for); every judged event when the
/// problem is the message's own (undecodable, refused header).
pub fn dead_letters(
    messages: &[MessageOutcome],
    write: &WriteReport,
    converter: &Converter,
) -> Vec<DeadLetter> {
    let mut out = Vec::new();
    // Which message asked for a failed row is found by converting it again
    // (kept keys per message weighed more than the message), so only
    // batches with a failed row or an unmatched update pay for it.
    let traced = !write.failed.is_empty() || !write.unmatched.is_empty();
    for m in messages {
        let keys = if traced {
            event_keys(m, converter)
        } else {
            Vec::new()
        };
        let mine = |table: Table, key: &String| keys.iter().any(|k| asks_for(k, table, key));
        let mut reasons: Vec<deadletter::Reason> = Vec::new();
        let mut errors: Vec<String> = Vec::new();
        // Indexes in the whole message; `all` once the message itself failed.
        let mut events: BTreeSet<usize> = BTreeSet::new();
        let mut all = false;
        for p in m.problems.iter().filter(|p| unapplied(p)) {
            reasons.push(deadletter::Reason::Input(p.reason));
            match p.event_index {
                Some(i) => {
                    events.insert(i);
                    errors.push(format!("event {i}: {}", p.detail))
                }
                None => {
                    all = true;
                    errors.push(p.detail.clone())
                }
            }
        }
        let failed: Vec<(Table, &String)> = write
            .failed
            .iter()
            .map(|f| (f.table, &f.key))
            .chain(write.unmatched.iter().map(|u| (u.table, &u.key)))
            .filter(|(t, k)| mine(*t, k))
            .collect();
        if !failed.is_empty() && !all {
            for (i, event) in keys.iter().enumerate() {
                if failed.iter().any(|(t, k)| asks_for(event, *t, k)) {
                    events.insert(original(m.only.as_deref(), i));
                }
            }
        }
        for f in write.failed.iter().filter(|f| mine(f.table, &f.key)) {
            reasons.push(deadletter::Reason::RowFailed);
            errors.push(format!(
                "{} {} {}: {}",
                f.table, f.operation, f.key, f.error
            ));
        }
        for u in write.unmatched.iter().filter(|u| mine(u.table, &u.key)) {
            reasons.push(if keyed_by_run(u.table) {
                deadletter::Reason::UnknownRun
            } else {
                deadletter::Reason::UnknownJob
            });
            errors.push(format!("update of {} {}: no such row", u.table, u.key));
        }
        if reasons.is_empty() {
            continue;
        }
        // Nothing traced to an event (cannot happen while every row comes
        // from an event): keep every event rather than lose one.
        let unapplied_events = if all || events.is_empty() {
            m.only.clone()
        } else {
            Some(events.into_iter().collect())
        };
        out.push(DeadLetter {
            unapplied_events,
            source: m
                .origin
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_default(),
            reasons: Reasons::from_iter(reasons),
            error: errors.join("; "),
            payload: m.payload.clone(),
            publish_time: m.publish_time.and_then(|t| {
                chrono::DateTime::from_timestamp(t.seconds, u32::try_from(t.nanos).unwrap_or(0))
            }),
        });
    }
    out
}

/// [`dead_letters`] of a batch's kept messages, whose payloads are read
/// back only when there is a letter: a message with an unapplied problem,
/// a failed row or an unmatched update (the only reasons it gives one).
fn kept_dead_letters(
    messages: &Kept,
    write: &WriteReport,
    converter: &Converter,
) -> Vec<DeadLetter> {
    let none = write.failed.is_empty()
        && write.unmatched.is_empty()
        && !(messages.headers().iter()).any(|m| m.problems.iter().any(unapplied));
    if none {
        return Vec::new();
    }
    dead_letters(&messages.all(), write, converter)
}

/// What a redrive did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct RedriveReport {
    /// Applied in full and removed.
    pub applied: Vec<i64>,
    /// Still failing: kept, with this time's reasons and one more in `retries`.
    pub still_failing: Vec<(i64, Reasons)>,
    pub missing: Vec<i64>,
}

/// Sends stored dead letters through the live rules again (`dead-letters
/// retry`; typically after an upgrade that can handle them, or after the
/// missing row arrived) and removes those that now apply in full.
pub async fn redrive(
    dead: &DeadLetters,
    store: &Store,
    converter: &Converter,
    ids: &[i64],
) -> anyhow::Result<RedriveReport> {
    let mut out = RedriveReport::default();
    for &id in ids {
        let Some(d) = dead.get(id).await? else {
            out.missing.push(id);
            continue;
        };
        let publish_time = d.publish_time.map(|t| Timestamp {
            seconds: t.timestamp(),
            nanos: t.timestamp_subsec_nanos() as i32,
        });
        let generation = current_generation(store).await?;
        // Only the events not applied the first time (all for an old letter).
        let c = ConvertedBatch::plan(
            [Decoded::redriven(
                d.payload,
                publish_time,
                d.unapplied_events,
            )],
            &converter.clone().with_generation(generation),
            generation,
        );
        let (c, write) = write_planned(store, converter, c).await?;
        count_converted(&c.counted, &c.messages);
        count_written(&write);
        let written = converter.with_generation(c.generation);
        match kept_dead_letters(&c.messages, &write, &written).pop() {
            None => {
                dead.delete(id).await?;
                out.applied.push(id);
            }
            Some(letter) => {
                dead.redrive_failed(id, &letter).await?;
                out.still_failing.push((id, letter.reasons));
            }
        }
    }
    Ok(out)
}

/// A stage could not hand on its output: the stage after it stopped (and
/// says why itself).
#[derive(Debug, thiserror::Error)]
#[error("{0} stopped")]
pub struct Stopped(&'static str);

/// The running stage tasks of a pipeline.
pub struct Stages {
    tasks: Vec<JoinHandle<anyhow::Result<()>>>,
}

impl Stages {
    /// Waits for every stage; the first error wins, but one that only says
    /// the next stage stopped ([`Stopped`]) yields to that stage's own.
    /// Stages end when their input closes, so close the source first (and
    /// keep draining the committed receiver until it closes).
    pub async fn join(self) -> anyhow::Result<()> {
        let mut first: anyhow::Result<()> = Ok(());
        for t in self.tasks {
            let r = match t.await {
                Ok(r) => r,
                Err(e) => Err(anyhow::anyhow!(
                    "pipeline stage panicked or was cancelled: {e}"
                )),
            };
            let secondary =
                |r: &anyhow::Result<()>| r.as_ref().err().is_some_and(|e| e.is::<Stopped>());
            if first.is_ok() || (secondary(&first) && r.is_err() && !secondary(&r)) {
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
    let (batch_tx, batch_rx) = mpsc::channel(PIECES_QUEUED);
    // One converted batch waiting is enough to keep the store busy (the
    // converter is the faster stage), and a converted batch, with its
    // rows and every message's outcome, weighs several raw ones.
    let (conv_tx, conv_rx) = mpsc::channel(1);
    let (done_tx, done_rx) = mpsc::channel(depth);
    // Batches cut and not yet written (the batcher adds, the store takes).
    let pending = Arc::new(watch::channel(0usize).0);
    telemetry::watch_queue("batched", &batch_tx);
    telemetry::watch_queue("converted", &conv_tx);
    telemetry::watch_queue("committed", &done_tx);
    let limits = hold::Limits {
        max_age: settings.hold_open,
        // Held rows take about what four batches' worth of payloads
        // convert to; the kept messages (see `kept`) come on top.
        max_bytes: (settings.batch_max_bytes).saturating_mul(HOLD_BATCHES_OF_BYTES),
        // `replay` acknowledges nothing.
        max_messages: if settings.always_behind {
            u64::MAX
        } else {
            HOLD_MESSAGES
        },
    };
    let idle = settings.batch_duration;
    let tasks = vec![
        tokio::spawn(batcher(source, batch_tx, settings, pending.clone())),
        tokio::spawn(converting(
            batch_rx,
            conv_tx,
            converter.clone(),
            store.clone(),
            limits,
            idle,
            pending.subscribe(),
        )),
        tokio::spawn(storing(conv_rx, done_tx, converter, store, dead, pending)),
    ];
    (done_rx, Stages { tasks })
}

/// What the batch being filled holds, to decide when to cut it.
#[derive(Default)]
struct Fill {
    messages: usize,
    events: usize,
    bytes: usize,
    deadline: Option<Instant>,
    /// The newest publish time of its messages.
    newest: Option<Timestamp>,
}

impl Fill {
    /// Whether the batch is behind the topic (see [`BEHIND`]) at `now`.
    fn behind(&self, settings: &Settings, now: std::time::SystemTime) -> bool {
        if settings.always_behind {
            return true;
        }
        let Some(newest) = self.newest else {
            return false;
        };
        let published = std::time::UNIX_EPOCH
            + Duration::new(
                u64::try_from(newest.seconds).unwrap_or(0),
                u32::try_from(newest.nanos).unwrap_or(0),
            );
        now.duration_since(published).is_ok_and(|lag| lag > BEHIND)
    }

    fn full(&self, settings: &Settings) -> bool {
        self.events >= settings.batch_size
            || self.messages >= settings.batch_max_messages
            || self.bytes >= settings.batch_max_bytes
    }
}

/// The batch being filled: what it holds, and its messages not yet handed
/// on to the converter.
#[derive(Default)]
struct Filling {
    fill: Fill,
    piece: Vec<Decoded>,
    piece_bytes: usize,
}

async fn batcher(
    mut source: mpsc::Receiver<Message>,
    out: mpsc::Sender<Piece>,
    settings: Settings,
    pending: Arc<watch::Sender<usize>>,
) -> anyhow::Result<()> {
    let mut batch = Filling::default();
    let mut idle = pending.subscribe();
    let adaptive = settings.cut_when_idle;
    loop {
        let waiting = batch.fill.messages > 0;
        let full = batch.fill.full(&settings);
        let ahead = *idle.borrow_and_update();
        // Adaptive cutting: a batch is cut at once when nothing is ahead of
        // it (the store is idle), on its timer, and at its limits while at
        // most one batch is ahead (being converted or written, so converting
        // this one overlaps writing that one). Full with two ahead, it
        // would only be queued: the batcher stops taking messages until one
        // is committed, so at most three batches are in memory (one
        // written, one converted, one filling). Holding a batch past its
        // timer too made batches larger still, but tripled the p99 latency
        // at half the maximum rate, so the timer is kept.
        let expired = batch.fill.deadline.is_some_and(|d| d <= Instant::now());
        if waiting && adaptive && (ahead == 0 || expired || (ahead <= 1 && full)) {
            // Take what has arrived already and cut.
            while !batch.fill.full(&settings) {
                let Ok(msg) = source.try_recv() else { break };
                add(&mut batch, msg, &settings, &out, ahead <= 1).await?;
            }
            cut(&mut batch, &settings, &out, &pending).await?;
            continue;
        }
        if full {
            // Adaptive, two batches ahead: wait for a commit.
            if idle.changed().await.is_err() {
                break;
            }
            continue;
        }
        let msg = tokio::select! {
            m = source.recv() => m,
            _ = sleep_until(batch.fill.deadline) => {
                cut(&mut batch, &settings, &out, &pending).await?;
                continue;
            }
            // The store finished a batch: look again.
            _ = idle.changed(), if waiting && adaptive => continue,
        };
        let Some(msg) = msg else { break };
        let ahead = *idle.borrow();
        add(&mut batch, msg, &settings, &out, ahead <= 1).await?;
        if !adaptive && batch.fill.full(&settings) {
            cut(&mut batch, &settings, &out, &pending).await?;
        }
    }
    cut(&mut batch, &settings, &out, &pending).await
}

/// The later of two publish times (either may be missing).
fn newest(a: Option<Timestamp>, b: Option<Timestamp>) -> Option<Timestamp> {
    match (a, b) {
        (Some(x), Some(y)) if (y.seconds, y.nanos) > (x.seconds, x.nanos) => Some(y),
        (Some(x), _) => Some(x),
        (None, y) => y,
    }
}

/// Until `deadline`, or for ever without one.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Adds a received message to the batch being filled, handing its piece on
/// when that is large enough and `in_pieces`. The batcher hands pieces on
/// while at most one batch is ahead (a steady load, where the batch is cut
/// once the store is idle and the store would wait for its conversion);
/// with two ahead (a backlog) the batch is converted whole once cut, while
/// the batch ahead of it is written, as before pieces: converting it early
/// only held a third batch converted, which made replay slower.
async fn add(
    batch: &mut Filling,
    msg: Message,
    settings: &Settings,
    out: &mpsc::Sender<Piece>,
    in_pieces: bool,
) -> anyhow::Result<()> {
    metrics::MESSAGES_RECEIVED.inc();
    metrics::IN_FLIGHT.inc();
    let decoded = Decoded::new(Some(msg.origin), msg.payload, msg.publish_time);
    let fill = &mut batch.fill;
    fill.messages += 1;
    fill.events += decoded.events;
    fill.bytes += decoded.payload.len();
    fill.newest = newest(fill.newest, decoded.publish_time);
    batch.piece_bytes += decoded.payload.len();
    batch.piece.push(decoded);
    if fill.deadline.is_none() {
        fill.deadline = Some(Instant::now() + settings.batch_duration);
    }
    if in_pieces && (batch.piece.len() >= PIECE_MESSAGES || batch.piece_bytes >= PIECE_BYTES) {
        hand_on(batch, false, false, out).await?;
    }
    Ok(())
}

async fn hand_on(
    batch: &mut Filling,
    last: bool,
    behind: bool,
    out: &mpsc::Sender<Piece>,
) -> anyhow::Result<()> {
    batch.piece_bytes = 0;
    let messages = std::mem::take(&mut batch.piece);
    out.send(Piece {
        messages,
        last,
        behind,
    })
    .await
    .map_err(|_| Stopped("converter stage").into())
}

/// Cuts the batch being filled (if it holds anything).
async fn cut(
    batch: &mut Filling,
    settings: &Settings,
    out: &mpsc::Sender<Piece>,
    pending: &watch::Sender<usize>,
) -> anyhow::Result<()> {
    if batch.fill.messages == 0 {
        return Ok(());
    }
    let behind = batch.fill.behind(settings, std::time::SystemTime::now());
    batch.fill = Fill::default();
    pending.send_modify(|n| *n += 1);
    hand_on(batch, true, behind, out).await
}

/// Converts each batch as its pieces come, and hands it on once cut, with
/// the rows of open jobs held back while batches are behind (see [`hold`]).
/// Held rows are released by the next batch that is not behind, or, when
/// the store is idle (`pending` is 0) and no piece came for `idle`, by a
/// batch of their own, so that a quiet topic does not keep them (and their
/// messages' acknowledgement) waiting.
async fn converting(
    mut input: mpsc::Receiver<Piece>,
    out: mpsc::Sender<ConvertedBatch>,
    mut converter: Converter,
    store: Arc<Store>,
    limits: hold::Limits,
    idle: Duration,
    pending: watch::Receiver<usize>,
) -> anyhow::Result<()> {
    let mut planning: Option<Planning> = None;
    let mut held: Held<Kept> = Held::default();
    // The number of the next message.
    let mut next: u64 = 0;
    let send = |c: ConvertedBatch| async {
        out.send(c)
            .await
            .map_err(|_| anyhow::Error::from(Stopped("store stage")))
    };
    loop {
        let piece = if planning.is_none() && !held.is_empty() {
            match tokio::time::timeout(idle, input.recv()).await {
                Ok(piece) => piece,
                // The batcher waits for the store, not for messages.
                Err(_) if *pending.borrow() > 0 => continue,
                Err(_) => {
                    send(Planning::release(&mut held, &converter, next, limits)).await?;
                    continue;
                }
            }
        } else {
            input.recv().await
        };
        let Some(piece) = piece else { break };
        let p = match &mut planning {
            Some(p) => p,
            None => {
                // A batch is converted for the generation of its first piece.
                let generation = current_generation(&store).await?;
                if converter.generation() != generation {
                    converter = converter.with_generation(generation);
                    // Held rows too: they are written with this batch.
                    held.rebuild(|block, first, numbers| {
                        let messages = block.messages(first, numbers);
                        (numbers.iter().copied())
                            .zip(messages)
                            .map(|(n, m)| (n, judge(m.into_decoded(), &converter).instructions))
                            .collect()
                    });
                }
                planning.insert(Planning::new(generation, next))
            }
        };
        p.add(piece.messages, &converter);
        if piece.last {
            if let Some(p) = planning.take() {
                next += p.len();
                send(p.finish_holding(&mut held, piece.behind, limits)).await?;
            }
        }
    }
    // The batcher cuts what it holds before it ends; should a batch still
    // be open, it is written rather than lost. Then what is held.
    if let Some(p) = planning {
        next += p.len();
        send(p.finish_holding(&mut held, false, limits)).await?;
    }
    if !held.is_empty() {
        send(Planning::release(&mut held, &converter, next, limits)).await?;
    }
    Ok(())
}

async fn storing(
    mut input: mpsc::Receiver<ConvertedBatch>,
    out: mpsc::Sender<Committed>,
    converter: Converter,
    store: Arc<Store>,
    dead: Arc<DeadLetters>,
    pending: Arc<watch::Sender<usize>>,
) -> anyhow::Result<()> {
    // Committed batches whose messages still have rows held (by number),
    // each with its count of messages.
    let mut waiting: VecDeque<(u64, usize, Committed)> = VecDeque::new();
    while let Some(c) = input.recv().await {
        // The store counts batches and their write time itself.
        let started = std::time::Instant::now();
        let (c, write) = write_planned(&store, &converter, c).await?;
        let (number, floor, cut) = (c.number, c.floor, c.cut);
        let committed_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as i64);
        let c_generation = c.generation;
        count_converted(&c.counted, &c.messages);
        telemetry::events_committed(&c.counted.observed, committed_ms);
        let events_by_kind = c.counted.events_by_kind;
        let messages = c.messages;
        count_written(&write);
        let written = converter.with_generation(c_generation);
        let mut letters = kept_dead_letters(&messages, &write, &written);
        // Held rows written now that failed trace back to the messages kept
        // for them, for those rows only.
        let held = released_only(&write, &c.released_keys);
        if !held.failed.is_empty() || !held.unmatched.is_empty() {
            let released = released_messages(&c.released);
            letters.extend(dead_letters(&released, &held, &written));
        }
        letters.iter().for_each(telemetry::dead_letter_kept);
        // Only once the dead letters are safe may the batch be acknowledged.
        dead.record(&letters).await?;
        telemetry::batch_committed(&telemetry::BatchCommitted {
            messages: messages.len(),
            events: events_by_kind.values().sum(),
            write: &write,
            dead_letters: letters.len(),
            took: started.elapsed(),
            oldest_publish: (messages.headers().iter())
                .filter_map(|m| m.publish_time)
                .min_by_key(|t| (t.seconds, t.nanos)),
        });
        let count = messages.len();
        let mut origins = Vec::with_capacity(messages.len());
        let mut problems = Vec::new();
        let mut last_publish: Option<Timestamp> = None;
        // Held rows may still share the batch's messages.
        for m in messages.headers() {
            last_publish = newest(last_publish, m.publish_time);
            let Some(origin) = &m.origin else { continue };
            problems.extend(m.problems.iter().map(|problem| Located {
                origin: origin.clone(),
                problem: problem.clone(),
            }));
            origins.push(origin.clone());
        }
        let done = Committed {
            origins,
            events_by_kind,
            problems,
            write,
            dead_letters: letters.len(),
            last_publish,
        };
        waiting.push_back((number, count, done));
        // In order, and only the batches with nothing held any more.
        while waiting.front().is_some_and(|(n, _, _)| *n < floor) {
            let Some((_, count, done)) = waiting.pop_front() else {
                break;
            };
            metrics::IN_FLIGHT.sub(count as i64);
            if out.send(done).await.is_err() {
                return Err(Stopped("acknowledger").into());
            }
        }
        if cut {
            pending.send_modify(|n| *n = n.saturating_sub(1));
        }
    }
    // The converter releases everything it holds before it ends, so
    // nothing waits here; should a batch still, it is not acknowledged.
    if !waiting.is_empty() {
        tracing::error!(
            batches = waiting.len(),
            "committed batches with rows still held at the end were not acknowledged"
        );
    }
    Ok(())
}

/// The failures of `write` among the rows of `keys` (the released held
/// rows), to trace them to the messages kept for those rows only.
fn released_only(write: &WriteReport, keys: &Keys) -> WriteReport {
    let of = |table: Table, key: &str| {
        if keyed_by_run(table) {
            keys.runs.contains(key)
        } else {
            keys.jobs.contains(key)
        }
    };
    WriteReport {
        failed: (write.failed.iter())
            .filter(|f| of(f.table, &f.key))
            .cloned()
            .collect(),
        unmatched: (write.unmatched.iter())
            .filter(|u| of(u.table, &u.key))
            .cloned()
            .collect(),
        ..WriteReport::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::*;
    use crate::store::{FailedRow, Operation, Unmatched};

    fn origin(index: u64) -> Origin {
        Origin::File {
            path: Arc::from("f"),
            index,
        }
    }

    /// An empty message from record `index`, for the batcher.
    fn msg(index: u64) -> Message {
        Message {
            payload: vec![],
            origin: origin(index),
            publish_time: None,
        }
    }

    fn conv() -> Converter {
        Converter::new(Default::default())
    }

    fn judged(index: u64, payload: Vec<u8>) -> Judged {
        judge(Decoded::new(Some(origin(index)), payload, None), &conv())
    }

    fn payload(events: Vec<crate::proto::armadaevents::event_sequence::Event>) -> Vec<u8> {
        sequence("q", "js", "u", events).encode_to_vec()
    }

    #[test]
    fn events_are_counted_without_decoding() {
        let mut generated = crate::sample::generate(3, 40);
        let mut several = sequence("q", "js", "u", vec![]);
        several.events = generated.iter().flat_map(|s| s.events.clone()).collect();
        assert!(several.events.len() > 40);
        generated.push(several);
        for seq in &generated {
            let bytes = seq.encode_to_vec();
            assert_eq!(count_events(&bytes), Some(seq.events.len()));
        }
        let mut many = sequence("q", "js", "u", vec![]);
        many.groups = vec![b"g1".to_vec(), b"g2".to_vec()];
        assert_eq!(count_events(&many.encode_to_vec()), Some(0));
        assert_eq!(count_events(&[]), Some(0));
        // Not protobuf, or cut short inside a field.
        assert_eq!(count_events(&[0xff, 0xff]), None);
        let bytes = generated[0].encode_to_vec();
        assert_eq!(count_events(&bytes[..bytes.len() - 1]), None);
        assert_eq!(count_events(&[0x0b]), None); // a group
    }

    #[test]
    fn judge_reports_undecodable_payloads_and_keys_and_counts() {
        let j = judged(0, vec![0xff, 0xff]);
        assert_eq!(j.message.problems.len(), 1);
        assert_eq!(j.message.problems[0].reason, Reason::Decode);
        assert!(j.message.problems[0].skipped);
        assert!(j.instructions.is_empty() && j.events_by_kind.is_empty());

        let j = judged(
            1,
            payload(vec![
                event(Some(ts(1)), leased("j1", "r1", "c", "n\0", "p")),
                event(Some(ts(2)), job_succeeded("j2")),
            ]),
        );
        assert!(j.message.problems.is_empty());
        let (jobs, runs) = keys(&j.instructions);
        assert_eq!(jobs, BTreeSet::from(["j1".into(), "j2".into()]));
        assert_eq!(runs, BTreeSet::from(["r1".into()]));
        assert_eq!(
            j.events_by_kind,
            BTreeMap::from([("job_run_leased", 1), ("job_succeeded", 1)])
        );
        assert_eq!(j.sanitised, BTreeMap::from([(Action::NulRemoved, 1)]));
        assert_eq!(j.message.origin, Some(origin(1)));
    }

    #[test]
    fn dead_letters_trace_failures_to_their_messages() {
        let undecodable = judged(0, vec![0xff, 0xff]).message;
        let runs = judged(
            1,
            payload(vec![event(Some(ts(1)), run_succeeded("j1", "r1"))]),
        )
        .message;
        let jobs = judged(
            2,
            payload(vec![
                event(Some(ts(1)), job_succeeded("j1")),
                event(Some(ts(1)), job_succeeded("")),
            ]),
        )
        .message;
        let clean = judged(3, payload(vec![event(Some(ts(1)), job_succeeded("j9"))])).message;
        let write = WriteReport {
            failed: vec![FailedRow {
                table: Table::Job,
                operation: Operation::Update,
                key: "j1".into(),
                error: "boom (SQLSTATE 22001)".into(),
            }],
            unmatched: vec![
                Unmatched {
                    table: Table::JobRun,
                    key: "r1".into(),
                },
                Unmatched {
                    table: Table::Job,
                    key: "j1".into(),
                },
            ],
            ..WriteReport::default()
        };
        let letters = dead_letters(&[undecodable, runs, jobs, clean], &write, &conv());
        let got: Vec<(String, String)> = letters
            .iter()
            .map(|d| (d.source.clone(), d.reasons.to_string()))
            .collect();
        assert_eq!(
            got,
            vec![
                ("f record 0".to_string(), "decode".to_string()),
                ("f record 1".to_string(), "unknown_run".to_string()),
                (
                    "f record 2".to_string(),
                    "missing_id,row_failed,unknown_job".to_string()
                ),
            ]
        );
        assert_eq!(
            letters[2].error,
            "event 1: event has no job id; job update j1: boom (SQLSTATE 22001); update of job j1: no such row"
        );
        assert_eq!(letters[1].error, "update of job_run r1: no such row");
        // Which events were not applied: none of an undecodable payload can
        // be told apart (all); the run update; both events of record 2 (one
        // has no id, the other asks for the failed job j1).
        let unapplied: Vec<Option<Vec<usize>>> =
            letters.iter().map(|d| d.unapplied_events.clone()).collect();
        assert_eq!(unapplied, vec![None, Some(vec![0]), Some(vec![0, 1])]);
    }

    #[test]
    fn dead_letters_name_only_the_events_not_applied() {
        // Finding 7: a run update for a known run and one for an unknown run.
        let m = judged(
            0,
            payload(vec![
                event(Some(ts(1)), running("j1", "r1", Some("n"))),
                event(Some(ts(2)), job_succeeded("j3")),
                event(Some(ts(3)), running("j2", "r2", Some("n"))),
                event(Some(ts(4)), run_succeeded("j1", "r1")),
            ]),
        )
        .message;
        let unknown_r2 = WriteReport {
            unmatched: vec![Unmatched {
                table: Table::JobRun,
                key: "r2".into(),
            }],
            ..WriteReport::default()
        };
        let letters = dead_letters(std::slice::from_ref(&m), &unknown_r2, &conv());
        assert_eq!(letters[0].reasons.to_string(), "unknown_run");
        assert_eq!(letters[0].unapplied_events, Some(vec![2]));

        // Redriven, only event 2 is judged, and what fails again is named
        // by its index in the whole message.
        let again = judge(
            Decoded::redriven(m.payload.clone(), None, Some(vec![1, 2])),
            &conv(),
        );
        assert_eq!(again.events_by_kind.values().sum::<u64>(), 2);
        assert_eq!(keys(&again.instructions).1, BTreeSet::from(["r2".into()]));
        let letters = dead_letters(std::slice::from_ref(&again.message), &unknown_r2, &conv());
        assert_eq!(letters[0].unapplied_events, Some(vec![2]));

        // A skipped problem in a redriven event keeps its original index.
        let bad = payload(vec![
            event(Some(ts(1)), job_succeeded("j1")),
            event(Some(ts(2)), job_succeeded("")),
        ]);
        let again = judge(Decoded::redriven(bad, None, Some(vec![1])), &conv());
        assert_eq!(again.message.problems[0].event_index, Some(1));
        let letters = dead_letters(&[again.message], &WriteReport::default(), &conv());
        assert_eq!(letters[0].unapplied_events, Some(vec![1]));
        assert_eq!(letters[0].error, "event 1: event has no job id");
    }

    #[test]
    fn applied_problems_do_not_dead_letter_but_unknown_kinds_do() {
        let mut m = judged(0, payload(vec![])).message;
        m.problems.push(Problem {
            event_index: Some(0),
            reason: Reason::JobSpec,
            detail: "bad quantity".into(),
            skipped: false,
        });
        assert!(
            dead_letters(std::slice::from_ref(&m), &WriteReport::default(), &conv()).is_empty()
        );
        m.problems.push(Problem {
            event_index: Some(1),
            reason: Reason::UnknownEventKind,
            detail: "newer Armada".into(),
            skipped: false,
        });
        let letters = dead_letters(&[m], &WriteReport::default(), &conv());
        assert_eq!(letters[0].reasons.to_string(), "unknown_event_kind");
        assert_eq!(letters[0].error, "event 1: newer Armada");
    }

    /// A batcher under test: its input, its output, the count of batches
    /// cut and not yet written, and its task.
    struct Harness {
        tx: mpsc::Sender<Message>,
        out: mpsc::Receiver<Piece>,
        /// Pieces received of a batch not yet cut.
        partial: Vec<Decoded>,
        pending: Arc<watch::Sender<usize>>,
        task: JoinHandle<anyhow::Result<()>>,
    }

    /// Default settings with the batch timer far away.
    fn without_timer() -> Settings {
        Settings {
            batch_duration: Duration::from_secs(3600),
            ..Settings::default()
        }
    }

    impl Harness {
        /// Closes the input and waits for the batcher to end cleanly.
        async fn end(self) {
            drop(self.tx);
            self.task.await.unwrap().unwrap();
        }

        /// The next batch cut within `within`, its pieces put together.
        async fn batch(&mut self, within: Duration) -> Option<Vec<Decoded>> {
            let by = tokio::time::Instant::now() + within;
            loop {
                let piece = tokio::time::timeout_at(by, self.out.recv()).await.ok()??;
                self.partial.extend(piece.messages);
                if piece.last {
                    return Some(std::mem::take(&mut self.partial));
                }
            }
        }
    }

    /// A batcher on channels of 16, with `ahead` batches already cut and
    /// not yet written.
    fn spawn_batcher(settings: Settings, ahead: usize) -> Harness {
        let (tx, rx) = mpsc::channel(16);
        let (out_tx, out) = mpsc::channel(16);
        let pending = Arc::new(watch::channel(ahead).0);
        let task = tokio::spawn(batcher(rx, out_tx, settings, pending.clone()));
        Harness {
            tx,
            out,
            partial: Vec::new(),
            pending,
            task,
        }
    }

    fn indexes(b: &[Decoded]) -> Vec<u64> {
        b.iter()
            .filter_map(|m| match &m.origin {
                Some(Origin::File { index, .. }) => Some(*index),
                _ => None,
            })
            .collect()
    }

    /// Cut at once while nothing is being written; while a batch is, fill
    /// up until it is done (the timer here is far away).
    #[tokio::test]
    async fn batches_are_cut_when_the_store_is_idle() {
        let settings = without_timer();
        let mut h = spawn_batcher(settings, 0);
        let five = Duration::from_secs(5);
        h.tx.send(msg(0)).await.unwrap();
        let first = h.batch(five).await.expect("cut without the timer");
        assert_eq!(indexes(&first), [0]);
        assert_eq!(*h.pending.borrow(), 1, "the batcher counts what it cut");
        // The store is busy with batch 0: messages wait.
        for i in 1..4 {
            h.tx.send(msg(i)).await.unwrap();
        }
        let wait = h.batch(Duration::from_millis(300)).await;
        assert!(wait.is_none(), "cut while the store was busy");
        h.pending.send_modify(|n| *n -= 1);
        let second = h.batch(five).await.expect("cut once idle");
        assert_eq!(indexes(&second), [1, 2, 3]);
        h.end().await;
    }

    /// A batch filling while the store is busy goes to the converter in
    /// pieces before it is cut, in order, and is whole once cut.
    #[tokio::test]
    async fn a_filling_batch_is_handed_on_in_pieces() {
        let settings = without_timer();
        let mut h = spawn_batcher(settings, 1);
        let n = PIECE_MESSAGES as u64 + 10;
        let tx = h.tx.clone();
        let feeder = tokio::spawn(async move {
            for i in 0..n {
                tx.send(msg(i)).await.unwrap();
            }
        });
        let five = Duration::from_secs(5);
        let piece = tokio::time::timeout(five, h.out.recv())
            .await
            .expect("a piece before the cut")
            .unwrap();
        assert!(!piece.last, "the batch was cut with the store busy");
        assert_eq!(
            indexes(&piece.messages),
            (0..PIECE_MESSAGES as u64).collect::<Vec<_>>()
        );
        h.partial = piece.messages;
        feeder.await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        h.pending.send_modify(|n| *n = 0);
        let batch = h.batch(five).await.expect("cut once idle");
        assert_eq!(indexes(&batch), (0..n).collect::<Vec<_>>());
        h.end().await;
    }

    /// Under a backlog (two batches ahead) the filling batch stays in the
    /// batcher and goes on whole once cut.
    #[tokio::test]
    async fn with_two_batches_ahead_a_batch_goes_on_whole() {
        let settings = without_timer();
        let mut h = spawn_batcher(settings, 2);
        let n = PIECE_MESSAGES as u64 + 10;
        for i in 0..n {
            h.tx.send(msg(i)).await.unwrap();
        }
        let early = tokio::time::timeout(Duration::from_millis(300), h.out.recv()).await;
        assert!(early.is_err(), "a piece went on with two batches ahead");
        h.pending.send_modify(|n| *n = 0);
        let piece = tokio::time::timeout(Duration::from_secs(5), h.out.recv())
            .await
            .expect("cut once idle")
            .unwrap();
        assert!(piece.last);
        assert_eq!(indexes(&piece.messages), (0..n).collect::<Vec<_>>());
        h.end().await;
    }

    /// With two batches ahead a full batch is not cut and the batcher takes
    /// no more messages until a commit; with one ahead it is cut.
    #[tokio::test]
    async fn with_two_batches_ahead_a_full_batch_waits() {
        let settings = Settings {
            batch_max_messages: 3,
            ..without_timer()
        };
        let mut h = spawn_batcher(settings, 2);
        for i in 0..5 {
            h.tx.send(msg(i)).await.unwrap();
        }
        // Nothing cut, and the source holds the rest.
        let wait = h.batch(Duration::from_millis(400)).await;
        assert!(wait.is_none(), "cut with two batches ahead");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(
            h.tx.capacity(),
            16 - 2,
            "the batcher took messages past a full batch"
        );
        h.pending.send_modify(|n| *n -= 1);
        let five = Duration::from_secs(5);
        let first = h.batch(five).await.expect("cut once one batch is ahead");
        assert_eq!(first.len(), 3);
        assert_eq!(*h.pending.borrow(), 2);
        h.pending.send_modify(|n| *n = 0);
        let second = h.batch(five).await.expect("cut once idle");
        assert_eq!(second.len(), 2);
        h.end().await;
    }

    #[test]
    fn batches_are_cut_by_events_messages_or_bytes() {
        let settings = Settings {
            batch_size: 10,
            batch_max_messages: 3,
            batch_max_bytes: 100,
            ..Settings::default()
        };
        let fill = |messages, events, bytes| Fill {
            messages,
            events,
            bytes,
            ..Fill::default()
        };
        assert!(!fill(2, 0, 0).full(&settings));
        assert!(
            fill(3, 0, 0).full(&settings),
            "messages without events count"
        );
        assert!(fill(1, 10, 0).full(&settings));
        assert!(fill(1, 0, 100).full(&settings));
        assert!(!fill(2, 9, 99).full(&settings));
    }

    #[test]
    fn a_batch_is_behind_once_its_newest_message_is_older_than_behind() {
        let now = std::time::UNIX_EPOCH + Duration::from_secs(1_000);
        let at = |seconds| Timestamp { seconds, nanos: 0 };
        let with = |newest| Fill {
            newest,
            ..Fill::default()
        };
        let live = Settings::default();
        assert!(with(Some(at(989))).behind(&live, now));
        assert!(!with(Some(at(990))).behind(&live, now));
        // Published "later" than now (a clock ahead of ours): not behind.
        assert!(!with(Some(at(2_000))).behind(&live, now));
        // No publish time: nothing says it is behind.
        assert!(!with(None).behind(&live, now));
        let replay = Settings {
            always_behind: true,
            ..Settings::default()
        };
        assert!(with(None).behind(&replay, now));
        assert!(with(Some(at(1_000))).behind(&replay, now));
    }

    #[test]
    fn located_problems_read_as_before() {
        let p = Problem {
            event_index: Some(2),
            reason: Reason::IdTooLong,
            detail: "long".into(),
            skipped: true,
        };
        let at = Located {
            origin: origin(7),
            problem: p.clone(),
        };
        assert_eq!(at.to_string(), "f record 7 event 2: id_too_long: long");
        let at = Located {
            origin: origin(7),
            problem: Problem {
                event_index: None,
                ..p
            },
        };
        assert_eq!(at.to_string(), "f record 7: id_too_long: long");
    }
}
