//! Pure: under a backlog, the rows of jobs and runs still open are held back
//! from one batch to the next, so that a job is written once, when it ends,
//! instead of once in every batch its events span.
//!
//! Why: a job's events spread over several batches (submitted and leased in
//! one, running in the next, succeeded in a later one). Written batch by
//! batch, its `job` row is inserted and then updated in each later batch,
//! and every update is a new row version in all of `job`'s indexes: at
//! 1,000,000 events a job row was written 2.4 times and a run 2.2 times,
//! and those updates were most of Postgres' time. Held until the job ends,
//! its creation and updates merge into one inserted row (the store's
//! folding, [`crate::store::Store::prepare`]).
//!
//! A job or run created in a batch (or held already) whose state after the
//! batch is still open stays held, with every later instruction for its
//! key, until it ends, it has been held `max_age` batches, or the held
//! bytes pass `max_bytes` (the longest held go first). Job errors are never
//! held (a job with an error has ended, and an error row needs no other).
//! The pipeline holds only batches cut at their limits (a backlog): a batch
//! cut by its timer or an idle store releases everything, so a steady
//! load's latency is not touched.
//!
//! The guarantees stay:
//! - Same rows: held instructions are written, in event order, with the
//!   batch that releases them, and the store's merging is per key and in
//!   order, so the result is that of any other cut of the stream.
//! - Nothing acknowledged before it is written: [`Passed::floor`] tells the
//!   pipeline which batches no longer have anything held.
//! - Dead letters byte for byte: the messages whose instructions are held
//!   are kept (as the pipeline's message outcome), so that a held row that
//!   fails when it is written traces back to them ([`Passed::released`],
//!   [`Passed::released_keys`]), and so that a change of schema generation
//!   converts their held part again ([`Held::rebuild`]).

use crate::idhash::{HashMap, HashSet};
use crate::model::{job_state, run_state, InstructionSet};
use std::collections::BTreeMap;
use std::sync::Arc;

/// What may be held.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Batches a job or run is held at most (0: nothing is held).
    pub max_age: u64,
    /// Bytes of held instructions (estimated) at most; the kept messages,
    /// compressed, come on top.
    pub max_bytes: usize,
    /// Messages at most from the batch of the longest-held row on (they
    /// all wait for their acknowledgement: a broker stops sending to a
    /// consumer with too many unacknowledged, Pulsar's default 50,000).
    pub max_messages: u64,
}

/// The messages of one batch, kept while any of their instructions is
/// held (the pipeline's are `kept::Kept`).
pub trait Block {
    /// Bytes it takes.
    fn weight(&self) -> usize;
}

/// Instructions, each with the number of the message it came from (job
/// errors are never held, so they carry none).
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Tagged {
    pub set: InstructionSet,
    job_creates: Vec<u64>,
    job_updates: Vec<u64>,
    run_creates: Vec<u64>,
    run_updates: Vec<u64>,
}

impl Tagged {
    /// Appends the instructions of message `number`.
    pub fn extend(&mut self, set: InstructionSet, number: u64) {
        let tag = |v: &mut Vec<u64>, n: usize| v.extend(std::iter::repeat_n(number, n));
        tag(&mut self.job_creates, set.jobs_to_create.len());
        tag(&mut self.job_updates, set.jobs_to_update.len());
        tag(&mut self.run_creates, set.runs_to_create.len());
        tag(&mut self.run_updates, set.runs_to_update.len());
        self.set.extend(set);
    }

    fn append(&mut self, other: Tagged) {
        self.job_creates.extend(other.job_creates);
        self.job_updates.extend(other.job_updates);
        self.run_creates.extend(other.run_creates);
        self.run_updates.extend(other.run_updates);
        self.set.extend(other.set);
    }

    /// The numbers of the messages with an instruction here, ascending.
    fn numbers(&self) -> Numbers {
        let all = [
            &self.job_creates,
            &self.job_updates,
            &self.run_creates,
            &self.run_updates,
        ];
        let mut numbers: Vec<u64> = all.into_iter().flatten().copied().collect();
        numbers.sort_unstable();
        numbers.dedup();
        Numbers(numbers)
    }
}

/// Message numbers, ascending, each once.
struct Numbers(Vec<u64>);

impl Numbers {
    /// Those in `range`.
    fn range(&self, range: std::ops::Range<u64>) -> &[u64] {
        let from = self.0.partition_point(|&n| n < range.start);
        let to = self.0.partition_point(|&n| n < range.end);
        self.0.get(from..to).unwrap_or_default()
    }
}

/// Job ids and run ids (only ever looked up, never listed).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Keys {
    pub jobs: HashSet<String>,
    pub runs: HashSet<String>,
}

impl Keys {
    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty() && self.runs.is_empty()
    }
}

/// The instructions of `set` for `keys` only (job errors: none), in order.
pub fn restrict(set: InstructionSet, keys: &Keys) -> InstructionSet {
    InstructionSet {
        jobs_to_create: (set.jobs_to_create.into_iter())
            .filter(|j| keys.jobs.contains(&j.job_id))
            .collect(),
        jobs_to_update: (set.jobs_to_update.into_iter())
            .filter(|u| keys.jobs.contains(&u.job_id))
            .collect(),
        runs_to_create: (set.runs_to_create.into_iter())
            .filter(|r| keys.runs.contains(&r.run_id))
            .collect(),
        runs_to_update: (set.runs_to_update.into_iter())
            .filter(|u| keys.runs.contains(&u.run_id))
            .collect(),
        job_errors_to_create: Vec::new(),
    }
}

/// Messages of one kept block whose held instructions are written now.
#[derive(Debug)]
pub struct Released<B> {
    pub block: Arc<B>,
    /// The number of the block's first message.
    pub first: u64,
    /// The numbers of the messages, ascending.
    pub numbers: Vec<u64>,
}

/// What one batch is to write, once [`Held::pass`] took back what stays held.
#[derive(Debug)]
pub struct Passed<B> {
    /// The batch's number (the first is 1).
    pub batch: u64,
    /// The instructions to write now: those released, then the batch's own
    /// not held, in event order.
    pub write: InstructionSet,
    /// The kept messages of earlier batches whose held instructions are
    /// written now, in message order.
    pub released: Vec<Released<B>>,
    /// The keys held before this batch and written now: a failed row or
    /// unmatched update of one of these traces back to `released`.
    pub released_keys: Keys,
    /// Batches numbered below this hold nothing any more once this one is
    /// committed: their messages may be acknowledged.
    pub floor: u64,
    /// Rows held after this batch (job and run creations).
    pub held_rows: usize,
    /// Bytes held after this batch (see [`Limits::max_bytes`]).
    pub held_bytes: usize,
}

/// A kept block: the messages of batch `batch`, numbered `first` on, of
/// which those in `held` still have instructions held.
#[derive(Debug)]
struct Kept<B> {
    batch: u64,
    /// Its messages' numbers: `first..end`.
    first: u64,
    end: u64,
    block: Arc<B>,
}

/// The instructions held back and the messages kept for them.
#[derive(Debug)]
pub struct Held<B> {
    held: Tagged,
    /// By the number of their first message.
    blocks: BTreeMap<u64, Kept<B>>,
    /// The batch in which each held job (run) was first held.
    jobs_since: HashMap<String, u64>,
    runs_since: HashMap<String, u64>,
    /// The number of the last batch passed.
    batch: u64,
    /// The messages of each recent batch, oldest first.
    recent: std::collections::VecDeque<(u64, u64)>,
}

impl<B> Default for Held<B> {
    fn default() -> Self {
        Held {
            held: Tagged::default(),
            blocks: BTreeMap::new(),
            jobs_since: HashMap::default(),
            runs_since: HashMap::default(),
            batch: 0,
            recent: std::collections::VecDeque::new(),
        }
    }
}

/// Estimated bytes of a held creation (the rest is a few short strings).
fn job_size(j: &crate::model::CreateJob) -> usize {
    const FIXED: usize = 400;
    let annotations: usize = j
        .annotations
        .iter()
        .map(|(k, v)| k.len() + v.len() + 48)
        .sum();
    FIXED + j.job_spec.len() + annotations
}
const RUN_SIZE: usize = 300;
const UPDATE_SIZE: usize = 200;

fn run_open(state: i16) -> bool {
    [run_state::PENDING, run_state::RUNNING, run_state::LEASED].contains(&state)
}

/// A key that may stay held.
struct Candidate<'a> {
    since: u64,
    job: bool,
    key: &'a str,
    bytes: usize,
}

impl<B: Block> Held<B> {
    pub fn is_empty(&self) -> bool {
        self.held.set.is_empty()
    }

    /// The keys held now.
    pub fn keys(&self) -> Keys {
        Keys {
            jobs: self.jobs_since.keys().cloned().collect(),
            runs: self.runs_since.keys().cloned().collect(),
        }
    }

    /// Takes the next batch: its instructions `own`, tagged with the numbers
    /// of its messages `numbers` (above every number passed before), and
    /// returns what to write now. With `hold` false, or
    /// `limits.max_age` 0, everything held is released. `keep` gives the
    /// block of the batch's messages, called if any stays held.
    pub fn pass(
        &mut self,
        own: Tagged,
        numbers: std::ops::Range<u64>,
        hold: bool,
        limits: Limits,
        keep: impl FnOnce() -> Arc<B>,
    ) -> Passed<B> {
        self.batch += 1;
        let batch = self.batch;
        self.recent.push_back((batch, numbers.end - numbers.start));
        while self.recent.len() as u64 > limits.max_age.max(1) {
            self.recent.pop_front();
        }
        let mut all = std::mem::take(&mut self.held);
        all.append(own);
        let kept = if hold && limits.max_age > 0 {
            self.choose(&all, limits)
        } else {
            Keys::default()
        };
        let (write, keep_set) = split(all, &kept);

        // Blocks of earlier batches: their messages with instructions
        // written now are released; a block stays while one of its
        // messages has instructions held.
        let keep_numbers = keep_set.numbers();
        let write_numbers = write.numbers();
        let mut released = Vec::new();
        let mut blocks = BTreeMap::new();
        for k in std::mem::take(&mut self.blocks).into_values() {
            let numbers = write_numbers.range(k.first..k.end).to_vec();
            if !numbers.is_empty() {
                released.push(Released {
                    block: k.block.clone(),
                    first: k.first,
                    numbers,
                });
            }
            if !keep_numbers.range(k.first..k.end).is_empty() {
                blocks.insert(k.first, k);
            }
        }
        if !keep_numbers.range(numbers.clone()).is_empty() {
            let block = keep();
            let (first, end) = (numbers.start, numbers.end);
            blocks.insert(
                first,
                Kept {
                    batch,
                    first,
                    end,
                    block,
                },
            );
        }
        self.blocks = blocks;

        let gone = |since: &HashMap<String, u64>, kept: &HashSet<String>| {
            (since.keys())
                .filter(|k| !kept.contains(*k))
                .cloned()
                .collect()
        };
        let released_keys = Keys {
            jobs: gone(&self.jobs_since, &kept.jobs),
            runs: gone(&self.runs_since, &kept.runs),
        };
        self.jobs_since.retain(|k, _| kept.jobs.contains(k));
        self.runs_since.retain(|k, _| kept.runs.contains(k));
        for k in kept.jobs {
            self.jobs_since.entry(k).or_insert(batch);
        }
        for k in kept.runs {
            self.runs_since.entry(k).or_insert(batch);
        }
        self.held = keep_set;
        let floor = (self.blocks.values())
            .map(|k| k.batch)
            .min()
            .unwrap_or(batch + 1);
        Passed {
            batch,
            write: write.set,
            released,
            released_keys,
            floor,
            held_rows: self.jobs_since.len() + self.runs_since.len(),
            held_bytes: self.bytes(),
        }
    }

    /// The bytes held now (see [`Limits::max_bytes`]).
    pub fn bytes(&self) -> usize {
        let set = &self.held.set;
        let blocks: usize = self.blocks.values().map(|k| k.block.weight()).sum();
        set.jobs_to_create.iter().map(job_size).sum::<usize>()
            + set.runs_to_create.len() * RUN_SIZE
            + (set.jobs_to_update.len() + set.runs_to_update.len()) * UPDATE_SIZE
            + blocks
    }

    /// The keys of `all` to hold: created there and still open, held fewer
    /// than `max_age` batches, the most recently held first until their
    /// instructions reach `max_bytes` (the kept blocks, compressed and at
    /// most `max_age`, come on top).
    fn choose(&self, all: &Tagged, limits: Limits) -> Keys {
        let set = &all.set;
        // State after the instructions, of each job and run created here.
        let mut jobs: HashMap<&str, (i16, usize)> = HashMap::default();
        for j in &set.jobs_to_create {
            jobs.entry(j.job_id.as_str())
                .or_insert((j.state, job_size(j)));
        }
        for u in &set.jobs_to_update {
            if let Some(job) = jobs.get_mut(u.job_id.as_str()) {
                job.1 += UPDATE_SIZE;
                if let Some(s) = u.state {
                    // The store's rule: an ended job only turns preempted.
                    if !job_state::is_terminal(job.0) || s == job_state::PREEMPTED {
                        job.0 = s;
                    }
                }
            }
        }
        let mut runs: HashMap<&str, (bool, usize)> = HashMap::default();
        for r in &set.runs_to_create {
            runs.entry(r.run_id.as_str())
                .or_insert((run_open(r.job_run_state), RUN_SIZE));
        }
        for u in &set.runs_to_update {
            if let Some(run) = runs.get_mut(u.run_id.as_str()) {
                run.1 += UPDATE_SIZE;
                if let Some(s) = u.job_run_state {
                    run.0 = run_open(s);
                }
                if u.finished.is_some() {
                    run.0 = false;
                }
            }
        }
        // The messages from each recent batch on.
        let mut from: HashMap<u64, u64> = HashMap::default();
        let mut total = 0u64;
        for &(batch, messages) in self.recent.iter().rev() {
            total += messages;
            from.insert(batch, total);
        }
        // Open, and not held too long, in creation order.
        let young = |since: Option<&u64>| {
            let since = since.copied().unwrap_or(self.batch);
            let waiting = from.get(&since).copied().unwrap_or(u64::MAX);
            (self.batch - since < limits.max_age && waiting <= limits.max_messages).then_some(since)
        };
        let mut candidates: Vec<Candidate> = Vec::new();
        for j in &set.jobs_to_create {
            let key = j.job_id.as_str();
            if let Some((state, bytes)) = jobs.remove(key) {
                if let Some(since) = young(self.jobs_since.get(key)) {
                    if !job_state::is_terminal(state) {
                        candidates.push(Candidate {
                            since,
                            job: true,
                            key,
                            bytes,
                        });
                    }
                }
            }
        }
        for r in &set.runs_to_create {
            let key = r.run_id.as_str();
            if let Some((open, bytes)) = runs.remove(key) {
                if let Some(since) = young(self.runs_since.get(key)) {
                    if open {
                        candidates.push(Candidate {
                            since,
                            job: false,
                            key,
                            bytes,
                        });
                    }
                }
            }
        }
        // Most recently held first (stable: creation order among equals).
        candidates.sort_by_key(|c| std::cmp::Reverse(c.since));

        let mut bytes = 0usize;
        let mut keys = Keys::default();
        for c in candidates {
            if bytes + c.bytes > limits.max_bytes {
                break;
            }
            bytes += c.bytes;
            if c.job {
                keys.jobs.insert(c.key.to_string());
            } else {
                keys.runs.insert(c.key.to_string());
            }
        }
        keys
    }

    /// Replaces the held instructions with those `convert` gives for the
    /// kept messages, for the held keys only (after a change of schema
    /// generation: instructions are converted for one). `convert` gets a
    /// block and the numbers of its messages to convert, and returns their
    /// instructions in message order, each with its number.
    pub fn rebuild(
        &mut self,
        mut convert: impl FnMut(&B, u64, &[u64]) -> Vec<(u64, InstructionSet)>,
    ) {
        let keys = self.keys();
        let numbers = self.held.numbers();
        let mut held = Tagged::default();
        for k in self.blocks.values() {
            for (n, set) in convert(&k.block, k.first, numbers.range(k.first..k.end)) {
                held.extend(restrict(set, &keys), n);
            }
        }
        self.held = held;
    }
}

/// Splits `all` into what to write now and what stays held (`kept`'s keys).
fn split(all: Tagged, kept: &Keys) -> (Tagged, Tagged) {
    let mut write = Tagged::default();
    let mut keep = Tagged::default();
    let Tagged {
        set,
        job_creates,
        job_updates,
        run_creates,
        run_updates,
    } = all;
    (
        (write.set.jobs_to_create, write.job_creates),
        (keep.set.jobs_to_create, keep.job_creates),
    ) = divide(set.jobs_to_create, job_creates, |j| {
        kept.jobs.contains(&j.job_id)
    });
    (
        (write.set.jobs_to_update, write.job_updates),
        (keep.set.jobs_to_update, keep.job_updates),
    ) = divide(set.jobs_to_update, job_updates, |u| {
        kept.jobs.contains(&u.job_id)
    });
    (
        (write.set.runs_to_create, write.run_creates),
        (keep.set.runs_to_create, keep.run_creates),
    ) = divide(set.runs_to_create, run_creates, |r| {
        kept.runs.contains(&r.run_id)
    });
    (
        (write.set.runs_to_update, write.run_updates),
        (keep.set.runs_to_update, keep.run_updates),
    ) = divide(set.runs_to_update, run_updates, |u| {
        kept.runs.contains(&u.run_id)
    });
    write.set.job_errors_to_create = set.job_errors_to_create;
    (write, keep)
}

/// Instructions and the numbers of their messages.
type Numbered<T> = (Vec<T>, Vec<u64>);

/// Instructions and their message numbers, divided in order into those
/// not `held` and those held. Each goes straight into a vector of its final
/// size: pushing into growing ones copied the held rows (a few hundred bytes
/// each, tens of megabytes under a backlog) two or three times a batch.
fn divide<T>(
    items: Vec<T>,
    numbers: Vec<u64>,
    held: impl Fn(&T) -> bool,
) -> (Numbered<T>, Numbered<T>) {
    let flags: Vec<bool> = items.iter().map(held).collect();
    let kept = flags.iter().filter(|&&f| f).count();
    let mut write = (
        Vec::with_capacity(items.len() - kept),
        Vec::with_capacity(items.len() - kept),
    );
    let mut keep = (Vec::with_capacity(kept), Vec::with_capacity(kept));
    for ((item, n), f) in items.into_iter().zip(numbers).zip(flags) {
        let to = if f { &mut keep } else { &mut write };
        to.0.push(item);
        to.1.push(n);
    }
    (write, keep)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{CreateJob, CreateJobError, CreateJobRun, UpdateJob, UpdateJobRun};
    use job_state::*;

    /// A block: the numbers of its messages.
    #[derive(Debug, PartialEq)]
    struct Messages(Vec<u64>);

    impl Block for Messages {
        fn weight(&self) -> usize {
            self.0.len()
        }
    }

    fn t(s: i64) -> chrono::NaiveDateTime {
        chrono::DateTime::from_timestamp(s, 0)
            .expect("valid timestamp")
            .naive_utc()
    }

    fn create(id: &str) -> InstructionSet {
        InstructionSet {
            jobs_to_create: vec![CreateJob {
                job_spec: vec![0; 100],
                ..crate::store::test_job(id, QUEUED)
            }],
            ..Default::default()
        }
    }

    fn state(id: &str, state: i16) -> InstructionSet {
        InstructionSet {
            jobs_to_update: vec![UpdateJob {
                job_id: id.into(),
                state: Some(state),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    fn lease(job: &str, run: &str) -> InstructionSet {
        InstructionSet {
            runs_to_create: vec![CreateJobRun {
                run_id: run.into(),
                job_id: job.into(),
                cluster: "c".into(),
                node: None,
                pool: "p".into(),
                leased: Some(t(2)),
                pending: None,
                job_run_state: run_state::LEASED,
            }],
            ..state(job, LEASED)
        }
    }

    fn run_ends(run: &str) -> InstructionSet {
        InstructionSet {
            runs_to_update: vec![UpdateJobRun {
                run_id: run.into(),
                finished: Some(t(3)),
                job_run_state: Some(run_state::SUCCEEDED),
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    const LIMITS: Limits = Limits {
        max_age: 4,
        max_bytes: 1 << 20,
        max_messages: u64::MAX,
    };

    /// Passes one batch of messages (one instruction set each), numbered
    /// from `first` on; the block kept is the list of its numbers.
    fn pass(
        held: &mut Held<Messages>,
        first: u64,
        messages: Vec<InstructionSet>,
        hold: bool,
        limits: Limits,
    ) -> Passed<Messages> {
        let end = first + messages.len() as u64;
        let mut own = Tagged::default();
        for (i, m) in messages.into_iter().enumerate() {
            own.extend(m, first + i as u64);
        }
        held.pass(own, first..end, hold, limits, || {
            Arc::new(Messages((first..end).collect()))
        })
    }

    fn job_ids(set: &InstructionSet) -> (Vec<&str>, Vec<&str>) {
        (
            set.jobs_to_create
                .iter()
                .map(|j| j.job_id.as_str())
                .collect(),
            set.jobs_to_update
                .iter()
                .map(|u| u.job_id.as_str())
                .collect(),
        )
    }

    fn keys(jobs: &[&str], runs: &[&str]) -> Keys {
        Keys {
            jobs: jobs.iter().map(|k| k.to_string()).collect(),
            runs: runs.iter().map(|k| k.to_string()).collect(),
        }
    }

    #[test]
    fn an_open_job_is_held_with_its_updates_until_it_ends() {
        let mut held = Held::default();
        // Batch 1: a and b submitted, b ends at once.
        let p = pass(
            &mut held,
            0,
            vec![create("a"), create("b"), state("b", SUCCEEDED)],
            true,
            LIMITS,
        );
        assert_eq!(job_ids(&p.write), (vec!["b"], vec!["b"]));
        assert!(p.released.is_empty() && p.released_keys.is_empty());
        // Message 0 is kept, so batch 1 may not be acknowledged yet.
        assert_eq!((p.batch, p.floor, p.held_rows), (1, 1, 1));

        // Batch 2: a runs (still open): nothing of a is written.
        let p = pass(&mut held, 3, vec![state("a", RUNNING)], true, LIMITS);
        assert_eq!(job_ids(&p.write), (vec![], vec![]));
        assert_eq!((p.floor, p.held_rows), (1, 1));

        // Batch 3: a fails: its creation and both updates, in order.
        let p = pass(&mut held, 4, vec![state("a", FAILED)], true, LIMITS);
        assert_eq!(job_ids(&p.write), (vec!["a"], vec!["a", "a"]));
        let states: Vec<_> = p.write.jobs_to_update.iter().map(|u| u.state).collect();
        assert_eq!(states, [Some(RUNNING), Some(FAILED)]);
        // Traced back to messages 0 (batch 1) and 3 (batch 2).
        let released: Vec<_> = (p.released.iter())
            .map(|r| (r.block.0.clone(), r.numbers.clone()))
            .collect();
        assert_eq!(released, [(vec![0, 1, 2], vec![0]), (vec![3], vec![3])]);
        assert_eq!(p.released_keys, keys(&["a"], &[]));
        // Nothing held: every batch up to this one may be acknowledged.
        assert_eq!((p.floor, p.held_rows, p.held_bytes), (4, 0, 0));
        assert!(held.is_empty());
    }

    #[test]
    fn runs_are_held_while_open_and_job_errors_never() {
        let mut held = Held::default();
        let error = InstructionSet {
            job_errors_to_create: vec![CreateJobError {
                job_id: "x".into(),
                error: vec![1],
            }],
            ..Default::default()
        };
        let p = pass(
            &mut held,
            0,
            vec![create("a"), lease("a", "r1"), error],
            true,
            LIMITS,
        );
        assert!(p.write.runs_to_create.is_empty());
        assert_eq!(p.write.job_errors_to_create.len(), 1);
        assert_eq!(held.keys(), keys(&["a"], &["r1"]));
        // The run ends (the job does not): the run is written, the job held.
        let p = pass(&mut held, 3, vec![run_ends("r1")], true, LIMITS);
        assert_eq!(p.write.runs_to_create.len(), 1);
        assert_eq!(p.write.runs_to_update.len(), 1);
        assert!(p.write.jobs_to_create.is_empty());
        assert_eq!(p.released_keys, keys(&[], &["r1"]));
        assert_eq!(held.keys(), keys(&["a"], &[]));
        // Message 1 (the lease) is still needed: it also updated job a.
        assert_eq!(p.floor, 1);
    }

    #[test]
    fn without_hold_everything_is_released() {
        let mut held = Held::default();
        pass(&mut held, 0, vec![create("a"), create("b")], true, LIMITS);
        assert_eq!(held.keys(), keys(&["a", "b"], &[]));
        let p = pass(&mut held, 2, vec![state("a", RUNNING)], false, LIMITS);
        assert_eq!(job_ids(&p.write), (vec!["a", "b"], vec!["a"]));
        assert_eq!(p.released_keys, keys(&["a", "b"], &[]));
        assert_eq!((p.floor, p.held_rows), (3, 0));
        // max_age 0 holds nothing either.
        let limits = Limits {
            max_age: 0,
            ..LIMITS
        };
        let p = pass(&mut held, 3, vec![create("c")], true, limits);
        assert_eq!(job_ids(&p.write), (vec!["c"], vec![]));
    }

    #[test]
    fn a_job_is_held_at_most_max_age_batches() {
        let mut held = Held::default();
        let limits = Limits {
            max_age: 2,
            ..LIMITS
        };
        let p = pass(&mut held, 0, vec![create("a")], true, limits);
        assert!(p.write.is_empty());
        let p = pass(&mut held, 1, vec![create("b")], true, limits);
        assert!(p.write.is_empty());
        // Third batch: a was held in two, so it goes; b stays.
        let p = pass(&mut held, 2, vec![state("b", RUNNING)], true, limits);
        assert_eq!(job_ids(&p.write), (vec!["a"], vec![]));
        assert_eq!(held.keys(), keys(&["b"], &[]));
        // Batch 1 is done with, batch 2 still has b's creation.
        assert_eq!(p.floor, 2);
    }

    #[test]
    fn a_job_is_held_while_at_most_max_messages_wait_for_it() {
        let mut held = Held::default();
        let limits = Limits {
            max_messages: 3,
            ..LIMITS
        };
        // Two messages, then one: a (from batch 1) may still wait.
        pass(&mut held, 0, vec![create("a"), create("b")], true, limits);
        let p = pass(&mut held, 2, vec![create("c")], true, limits);
        assert!(p.write.is_empty());
        // One more: batch 1 on is four messages, so a and b go.
        let p = pass(&mut held, 3, vec![create("d")], true, limits);
        assert_eq!(job_ids(&p.write), (vec!["a", "b"], vec![]));
        assert_eq!(held.keys(), keys(&["c", "d"], &[]));
        assert_eq!(p.floor, 2);
    }

    #[test]
    fn over_max_bytes_the_longest_held_go_first() {
        let mut held = Held::default();
        let one = job_size(&create("a").jobs_to_create[0]);
        let limits = Limits {
            max_age: 8,
            max_bytes: 2 * one,
            ..LIMITS
        };
        pass(&mut held, 0, vec![create("a")], true, limits);
        pass(&mut held, 1, vec![create("b")], true, limits);
        let p = pass(&mut held, 2, vec![create("c")], true, limits);
        assert_eq!(job_ids(&p.write), (vec!["a"], vec![]));
        assert_eq!(held.keys(), keys(&["b", "c"], &[]));
    }

    #[test]
    fn rebuild_converts_the_kept_messages_for_the_held_keys_only() {
        let mut held = Held::default();
        // Message 0 creates a (held) and ends b (written).
        let mut m = create("a");
        m.extend(create("b"));
        m.extend(state("b", SUCCEEDED));
        pass(&mut held, 0, vec![m.clone()], true, LIMITS);
        let mut asked = Vec::new();
        held.rebuild(|block, first, numbers| {
            asked.push((block.0.clone(), first, numbers.to_vec()));
            let mut again = m.clone();
            again.jobs_to_create[0].priority = 9;
            vec![(0, again)]
        });
        assert_eq!(asked, [(vec![0], 0, vec![0])]);
        let p = pass(&mut held, 1, vec![], false, LIMITS);
        assert_eq!(job_ids(&p.write), (vec!["a"], vec![]));
        assert_eq!(p.write.jobs_to_create[0].priority, 9);
    }

    #[test]
    fn restrict_keeps_the_keys_in_order() {
        let mut set = create("a");
        set.extend(lease("b", "r"));
        set.extend(state("a", RUNNING));
        set.extend(run_ends("r"));
        let only = restrict(set, &keys(&["a"], &["r"]));
        assert_eq!(job_ids(&only), (vec!["a"], vec!["a"]));
        assert_eq!(only.runs_to_create.len(), 1);
        assert_eq!(only.runs_to_update.len(), 1);
    }
}
