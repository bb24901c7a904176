//! A realistic, seeded workload: queues × job sets × jobs whose life cycles
//! interleave in time as on Armada's topic, produced as an iterator of
//! event sequences in topic order. Pure (no I/O). Memory is bounded by the
//! jobs in flight: a job's plan is made when it is submitted and dropped
//! after its last step, and only each in-flight job's next step is queued.
//!
//! Shaped like upstream's lookout-ingester load tester (many jobs active at
//! once, submissions arriving in batches per job set, a large pod spec with
//! many annotations), plus the endings it lacks: failures with FailureInfo
//! (some with long termination messages), cancellations, preemptions and
//! rejections. Every id (job, run, deduplication id, job set) derives from
//! the seed, so two seeds never share a key and one seed always gives the
//! same bytes.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use prost::Message as _;

use crate::proto::armadaevents as ev;
use crate::proto::k8s;
use crate::sample::{self, Rng};
use ev::event_sequence::{event::Event as Kind, Event};

/// What to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    pub seed: u64,
    /// Generation stops submitting once this many events are planned; the
    /// jobs in flight then finish, so the total is this or a few more.
    pub events: u64,
    /// Or stop after this many jobs (whichever comes first).
    pub max_jobs: Option<u64>,
    pub queues: u32,
    pub job_sets_per_queue: u32,
    /// Jobs in flight at once, in the steady state.
    pub in_flight: u32,
    /// A job's events are spread over up to this many seconds (submission to
    /// its end).
    pub window_secs: u32,
    /// Jobs submitted together in one sequence, at most.
    pub submit_batch: u32,
    /// Share of jobs whose run fails (0..=1).
    pub failure_ratio: f64,
    /// Whether failures carry a FailureInfo.
    pub failure_info: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            seed: 1,
            events: 100_000,
            max_jobs: None,
            queues: 3,
            job_sets_per_queue: 4,
            in_flight: 5_000,
            window_secs: 600,
            submit_batch: 20,
            failure_ratio: 0.2,
            failure_info: true,
        }
    }
}

/// How a generated job ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ending {
    Succeeded,
    Failed,
    Cancelled,
    Preempted,
    Rejected,
}

/// What the tables hold once every generated event is applied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FinalRows {
    pub job: u64,
    pub job_spec: u64,
    pub job_run: u64,
    pub job_error: u64,
}

impl FinalRows {
    pub fn total(&self) -> u64 {
        self.job + self.job_spec + self.job_run + self.job_error
    }
}

/// Counts of what the generator has produced so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Produced {
    pub sequences: u64,
    pub events: u64,
    pub rows: FinalRows,
}

/// One step of a job: when, and what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Leased,
    Pending,
    Running,
    End,
}

/// A job in flight: what its later steps need.
#[derive(Debug, Clone)]
struct Job {
    job_id: String,
    run_id: String,
    queue: u32,
    job_set: u32,
    ending: Ending,
    /// Its remaining steps with their times (ms), in order.
    steps: Vec<(u64, Step)>,
    next: usize,
    node: u32,
    cluster: u32,
    exit_code: i32,
    /// Length of a failure's termination message (bytes).
    message_len: usize,
}

/// The workload as an iterator of event sequences, in topic order.
#[derive(Debug)]
pub struct Workload {
    opts: Options,
    names: Names,
    /// Time (ms since the workload's start) of the next submission batch.
    next_submit_ms: u64,
    /// Mean gap between submission batches (ms).
    submit_gap_ms: f64,
    submit_rng: Rng,
    /// Jobs submitted so far (their index is the next job's number).
    jobs: u64,
    /// Events of every submitted job, emitted or not.
    planned_events: u64,
    submitting: bool,
    in_flight: BTreeMap<u64, Job>,
    /// (time ms, tie-break, job number) of each in-flight job's next step.
    due: BinaryHeap<Reverse<(u64, u64, u64)>>,
    tie: u64,
    produced: Produced,
}

/// Names shared by all jobs, from the seed.
#[derive(Debug, Clone)]
struct Names {
    tag: String,
    queues: Vec<String>,
    users: Vec<String>,
}

const CLUSTERS: u32 = 4;
const NODES: u32 = 200;

impl Workload {
    pub fn new(opts: Options) -> Workload {
        let mut rng = Rng::new(opts.seed);
        let tag = format!("{:06x}", rng.next_u64() & 0xff_ffff);
        let queues = (0..opts.queues.max(1))
            .map(|q| format!("queue-{q}"))
            .collect();
        let users = (0..opts.queues.max(1))
            .map(|q| format!("user-{q}"))
            .collect();
        // Submissions arrive so that `in_flight` jobs are active in the steady
        // state: a job lives about half the window on average.
        let batch_mean = (f64::from(opts.submit_batch.max(1)) + 1.0) / 2.0;
        let life_ms = f64::from(opts.window_secs.max(1)) * 1000.0 / 2.0;
        let submit_gap_ms = life_ms * batch_mean / f64::from(opts.in_flight.max(1));
        Workload {
            names: Names { tag, queues, users },
            next_submit_ms: 0,
            submit_gap_ms,
            submit_rng: Rng::new(opts.seed ^ 0x5eed_5eed),
            jobs: 0,
            planned_events: 0,
            submitting: opts.events > 0 && opts.max_jobs != Some(0),
            in_flight: BTreeMap::new(),
            due: BinaryHeap::new(),
            tie: 0,
            produced: Produced::default(),
            opts,
        }
    }

    /// What was produced so far; after the iterator ends, the whole
    /// workload's events, sequences and final rows.
    pub fn produced(&self) -> Produced {
        self.produced
    }

    /// Jobs whose life cycle has not ended yet.
    pub fn jobs_in_flight(&self) -> usize {
        self.in_flight.len()
    }

    /// The job set name of queue `q`'s job set `s`.
    fn job_set(&self, q: u32, s: u32) -> String {
        format!(
            "{}-{}-set-{s}",
            self.names.queues[q as usize], self.names.tag
        )
    }

    /// The next submission: a batch of jobs of one job set, in one sequence.
    fn submit_batch(&mut self) -> ev::EventSequence {
        let at = self.next_submit_ms;
        let n_queues = self.names.queues.len() as u64;
        let q = self.submit_rng.below(n_queues) as u32;
        let s = self
            .submit_rng
            .below(u64::from(self.opts.job_sets_per_queue.max(1))) as u32;
        let size = 1 + self
            .submit_rng
            .below(u64::from(self.opts.submit_batch.max(1))) as u32;
        let mut events = Vec::with_capacity(size as usize);
        for _ in 0..size {
            if !self.may_submit() {
                break;
            }
            let number = self.jobs;
            self.jobs += 1;
            let (job, submit) = self.plan(number, q, s, at);
            self.planned_events += job_events(&job);
            self.count_rows(&job);
            let first = job.steps[0].0;
            self.tie += 1;
            self.due.push(Reverse((first, self.tie, number)));
            self.in_flight.insert(number, job);
            events.push(submit);
        }
        let gap = (self.submit_gap_ms * 2.0 * self.submit_rng.below(1000) as f64 / 1000.0) as u64;
        self.next_submit_ms = at + gap.max(1);
        self.submitting = self.may_submit();
        sample::sequence(
            &self.names.queues[q as usize],
            &self.job_set(q, s),
            &self.names.users[q as usize],
            events,
        )
    }

    fn may_submit(&self) -> bool {
        self.planned_events < self.opts.events && self.opts.max_jobs.is_none_or(|m| self.jobs < m)
    }

    fn count_rows(&mut self, job: &Job) {
        let rows = &mut self.produced.rows;
        rows.job += 1;
        rows.job_spec += 1;
        if job.ending == Ending::Rejected {
            rows.job_error += 1;
        } else {
            rows.job_run += 1;
        }
    }

    /// Plans job `number` submitted at `at` ms: its ids, ending and step
    /// times; returns it with its SubmitJob event.
    fn plan(&self, number: u64, q: u32, s: u32, at: u64) -> (Job, Event) {
        // One generator per job, so a job does not depend on the others.
        let mut rng = Rng::new(self.opts.seed ^ number.wrapping_mul(0xA24B_AED4_963E_E407));
        let job_id = ulid(at, &mut rng);
        let run_id = uuid(&mut rng);
        let roll = rng.below(10_000) as f64 / 10_000.0;
        let failure = self.opts.failure_ratio.clamp(0.0, 1.0);
        let rest = 1.0 - failure;
        let ending = if roll < failure {
            Ending::Failed
        } else if roll < failure + rest * 0.02 {
            Ending::Rejected
        } else if roll < failure + rest * 0.07 {
            Ending::Cancelled
        } else if roll < failure + rest * 0.10 {
            Ending::Preempted
        } else {
            Ending::Succeeded
        };
        let window = u64::from(self.opts.window_secs.max(1)) * 1000;
        let mut steps = Vec::with_capacity(4);
        if ending == Ending::Rejected {
            steps.push((at + 1 + rng.below(2_000), Step::End));
        } else {
            // Queued, leased, pending, running, end: the end anywhere up to the
            // window, the earlier steps in its first fifth.
            let end = at + window / 10 + rng.below(window - window / 10).max(4);
            let early = (end - at) / 5;
            let leased = at + 1 + rng.below(early.max(1));
            let pending = leased + 1 + rng.below(early.max(1));
            let running = pending + 1 + rng.below(early.max(1));
            steps.push((leased, Step::Leased));
            steps.push((pending, Step::Pending));
            steps.push((running, Step::Running));
            steps.push((end.max(running + 1), Step::End));
        }
        let exit_code = [1, 2, 137, 139, 255][rng.below(5) as usize];
        // Most termination messages are short; one in ten is a long trace.
        let message_len = if rng.below(10) == 0 {
            2_000 + rng.below(6_000) as usize
        } else {
            20 + rng.below(100) as usize
        };
        let job = Job {
            job_id,
            run_id,
            queue: q,
            job_set: s,
            ending,
            steps,
            next: 0,
            node: rng.below(u64::from(NODES)) as u32,
            cluster: rng.below(u64::from(CLUSTERS)) as u32,
            exit_code,
            message_len,
        };
        let submit = sample::event(Some(time(at)), self.submit_event(&job, number, &mut rng));
        (job, submit)
    }

    /// A SubmitJob the size of a real one: upstream's load tester's job has
    /// a dozen annotations and a container with a long command line.
    fn submit_event(&self, job: &Job, number: u64, rng: &mut Rng) -> Kind {
        let cpu = ["100m", "500m", "1", "2", "4"][rng.below(5) as usize];
        let mem = ["256Mi", "1Gi", "4Gi", "16Gi", "24Gi"][rng.below(5) as usize];
        let gpu = if rng.below(10) == 0 { "1" } else { "0" };
        let resources: &[(&str, &str)] = &[
            ("cpu", cpu),
            ("memory", mem),
            ("ephemeral-storage", "64Gi"),
            ("nvidia.com/gpu", gpu),
        ];
        let container = k8s::Container {
            name: Some(b"main".to_vec()),
            resources: Some(k8s::ContainerResources {
                limits: entries(resources),
                requests: entries(resources),
            }),
            restart_policy: None,
        };
        let mut container_bytes = container.encode_to_vec();
        // Fields the ingester carries but does not read (image 2, command 3,
        // args 4), so the job spec has a realistic size.
        put_bytes(
            &mut container_bytes,
            2,
            b"registry.example.invalid/team/batch-runner:2026.11.1",
        );
        put_bytes(&mut container_bytes, 3, b"/opt/runner/bin/run-stage.sh");
        for a in 0..(4 + rng.below(16)) {
            let arg = format!(
                "--input-{a}=s3://datasets/{}/features/part-{a:05}/shard-{number:08}.parquet",
                self.names.tag
            );
            put_bytes(&mut container_bytes, 4, arg.as_bytes());
        }
        let mut pod = Vec::with_capacity(container_bytes.len() + 64);
        put_bytes(&mut pod, 2, &container_bytes);
        put_bytes(&mut pod, 24, b"armada-default");
        // restartPolicy (3) and serviceAccountName (8), unread.
        put_bytes(&mut pod, 3, b"Never");
        put_bytes(&mut pod, 8, b"default");
        let guid = format!("{:016x}", rng.next_u64());
        let annotations: Vec<(&str, String)> = vec![
            ("armadaproject.io/attempt", "0".into()),
            ("armadaproject.io/custom_name", format!("job-{number}")),
            (
                "armadaproject.io/stage",
                "first_stage_of_complex_workflow".into(),
            ),
            ("armadaproject.io/grade", "Dev".into()),
            ("armadaproject.io/tracking_guid", guid.clone()),
            (
                "armadaproject.io/tracking_name",
                format!("{:08}", number % 100_000_000),
            ),
            (
                "armadaproject.io/job-request-application",
                "orchestrate".into(),
            ),
            (
                "armadaproject.io/namespace",
                self.names.queues[job.queue as usize].clone(),
            ),
            (
                "armadaproject.io/task",
                format!("task-{guid}-compute-features"),
            ),
            ("armadaproject.io/workflow", "workflow".into()),
            (
                "armadaproject.io/log-path",
                format!("logs/{}/{guid}/stdout", self.names.tag),
            ),
            ("armadaproject.io/version", "1.04.2".into()),
            ("team.example/owner", "data-platform".into()),
        ];
        Kind::SubmitJob(ev::SubmitJob {
            job_id: job.job_id.clone().into_bytes(),
            deduplication_id: format!("dedup-{}", job.job_id).into_bytes(),
            priority: (number % 4) as u32,
            object_meta: Some(ev::ObjectMeta {
                namespace: b"default".to_vec(),
                annotations: annotations
                    .iter()
                    .map(|(k, v)| sample::entry(k, v))
                    .collect(),
                labels: vec![sample::entry("app", "batch")],
                ..Default::default()
            }),
            main_object: Some(ev::KubernetesMainObject {
                object_meta: None,
                object: Some(ev::kubernetes_main_object::Object::PodSpec(
                    ev::PodSpecWithAvoidList {
                        pod_spec: Some(pod),
                        node_avoidlist: vec![],
                    },
                )),
            }),
            ..Default::default()
        })
    }

    /// The sequence of job `number`'s next step, at `at` ms.
    fn step(&mut self, number: u64, at: u64) -> Option<ev::EventSequence> {
        let job = self.in_flight.get_mut(&number)?;
        let (_, step) = job.steps[job.next];
        job.next += 1;
        let done = job.next >= job.steps.len();
        let next_at = job.steps.get(job.next).map(|&(t, _)| t);
        let job = if done {
            self.in_flight.remove(&number)?
        } else {
            job.clone()
        };
        if let Some(t) = next_at {
            self.tie += 1;
            self.due.push(Reverse((t, self.tie, number)));
        }
        let c = Some(time(at));
        let node = format!("node-{:03}", job.node);
        let cluster = format!("cluster-{}", job.cluster);
        let (j, r) = (job.job_id.as_str(), job.run_id.as_str());
        let events = match step {
            Step::Leased => vec![sample::event(
                c,
                sample::leased(j, r, &cluster, &node, "default"),
            )],
            Step::Pending => vec![sample::event(c, sample::assigned(j, r))],
            Step::Running => vec![sample::event(c, sample::running(j, r, Some(&node)))],
            Step::End => self.end_events(&job, c, &node),
        };
        let user = self.names.users[job.queue as usize].clone();
        Some(sample::sequence(
            &self.names.queues[job.queue as usize],
            &self.job_set(job.queue, job.job_set),
            &user,
            events,
        ))
    }

    fn end_events(&self, job: &Job, c: Option<prost_types::Timestamp>, node: &str) -> Vec<Event> {
        let (j, r) = (job.job_id.as_str(), job.run_id.as_str());
        match job.ending {
            Ending::Succeeded => vec![
                sample::event(c, sample::run_succeeded(j, r)),
                sample::event(c, sample::job_succeeded(j)),
            ],
            Ending::Failed => {
                let code = job.exit_code;
                let mut err = sample::error(
                    true,
                    sample::pod_error(&format!("container main exited with {code}"), node, &[code]),
                    None,
                );
                if self.opts.failure_info {
                    let categories: &[&str] = if code == 137 {
                        &["oom"]
                    } else {
                        &["user-error"]
                    };
                    err.failure_info = Some(sample::failure(
                        code,
                        &termination_message(job, code),
                        categories,
                        "main",
                    ));
                }
                vec![
                    sample::event(c, sample::run_errors(j, r, vec![err.clone()])),
                    sample::event(c, sample::job_errors(j, vec![err])),
                ]
            }
            Ending::Cancelled => vec![
                sample::event(c, sample::cancelled(j, "no longer needed", "user")),
                sample::event(c, sample::run_cancelled(j, r)),
            ],
            Ending::Preempted => vec![
                sample::event(
                    c,
                    sample::run_preempted(j, r, "preempted by a higher priority job"),
                ),
                sample::event(
                    c,
                    sample::job_errors(
                        j,
                        vec![sample::error(
                            true,
                            ev::error::Reason::JobRunPreemptedError(
                                ev::JobRunPreemptedError::default(),
                            ),
                            None,
                        )],
                    ),
                ),
            ],
            Ending::Rejected => vec![sample::event(
                c,
                sample::job_errors(
                    j,
                    vec![sample::error(
                        true,
                        ev::error::Reason::JobRejected(ev::JobRejected {
                            message: b"job does not fit on any node of the pool".to_vec(),
                        }),
                        None,
                    )],
                ),
            )],
        }
    }
}

/// Events of a job's whole life cycle, its submission included.
fn job_events(job: &Job) -> u64 {
    let end = if job.ending == Ending::Rejected { 1 } else { 2 };
    let before_end = job.steps.iter().filter(|&&(_, s)| s != Step::End).count() as u64;
    1 + before_end + end
}

impl Iterator for Workload {
    type Item = ev::EventSequence;

    fn next(&mut self) -> Option<ev::EventSequence> {
        loop {
            let due = self.due.peek().map(|Reverse((t, _, n))| (*t, *n));
            let seq = match due {
                // Submissions first when they are due no later.
                Some((t, _)) if self.submitting && self.next_submit_ms <= t => self.submit_batch(),
                Some((t, n)) => {
                    self.due.pop();
                    match self.step(n, t) {
                        Some(s) => s,
                        None => continue,
                    }
                }
                None if self.submitting => self.submit_batch(),
                None => return None,
            };
            if seq.events.is_empty() {
                continue;
            }
            self.produced.sequences += 1;
            self.produced.events += seq.events.len() as u64;
            return Some(seq);
        }
    }
}

impl Workload {
    /// Events of every job submitted so far, emitted or not: once the
    /// iterator has ended, exactly the events it produced.
    pub fn planned_events(&self) -> u64 {
        self.planned_events
    }
}

fn entries(list: &[(&str, &str)]) -> Vec<k8s::ResourceEntry> {
    list.iter()
        .map(|(name, value)| k8s::ResourceEntry {
            key: Some(name.as_bytes().to_vec()),
            value: Some(k8s::RawQuantity {
                string: Some(value.as_bytes().to_vec()),
            }),
        })
        .collect()
}

/// Appends a length-delimited field to an encoded message.
fn put_bytes(buf: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    prost::encoding::encode_key(field, prost::encoding::WireType::LengthDelimited, buf);
    prost::encoding::encode_varint(bytes.len() as u64, buf);
    buf.extend_from_slice(bytes);
}

/// `ms` milliseconds after the workload's start (2026-01-01T00:00:00Z).
fn time(ms: u64) -> prost_types::Timestamp {
    let mut t = sample::ts((ms / 1000) as i64);
    t.nanos = ((ms % 1000) * 1_000_000) as i32;
    t
}

const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// A ULID (as Armada's job ids): 48 bits of time, then 80 random bits, in
/// Crockford base 32, lower-cased as Armada writes them.
fn ulid(at_ms: u64, rng: &mut Rng) -> String {
    let time = 1_767_225_600_000u64 + at_ms;
    let value: u128 = (u128::from(time) << 80)
        | (u128::from(rng.next_u64()) << 16)
        | u128::from(rng.next_u64() & 0xffff);
    (0..26)
        .rev()
        .map(|i| CROCKFORD[((value >> (i * 5)) & 31) as usize].to_ascii_lowercase() as char)
        .collect()
}

/// A version 4 UUID from the generator (as Armada's run ids).
fn uuid(rng: &mut Rng) -> String {
    let a = rng.next_u64();
    let b = rng.next_u64();
    format!(
        "{:08x}-{:04x}-4{:03x}-{:04x}-{:012x}",
        a >> 32,
        (a >> 16) & 0xffff,
        a & 0xfff,
        0x8000 | (b >> 48) & 0x3fff,
        b & 0xffff_ffff_ffff
    )
}

/// A termination message: usually a line, sometimes a long stack trace.
fn termination_message(job: &Job, code: i32) -> String {
    let mut m = format!("process exited with code {code}");
    let mut frame = 0;
    while m.len() < job.message_len {
        m.push_str(&format!(
            "\n  at worker.stage.compute_features(stage_{frame}.py:{})",
            100 + frame * 7
        ));
        frame += 1;
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small(seed: u64, events: u64) -> Options {
        Options {
            seed,
            events,
            in_flight: 200,
            window_secs: 60,
            ..Options::default()
        }
    }

    #[test]
    fn counts_match_what_is_produced_and_planned() {
        let mut w = Workload::new(small(3, 5_000));
        let mut events = 0u64;
        let mut submits = 0u64;
        for seq in w.by_ref() {
            events += seq.events.len() as u64;
            submits += seq
                .events
                .iter()
                .filter(|e| matches!(e.event, Some(Kind::SubmitJob(_))))
                .count() as u64;
        }
        let p = w.produced();
        assert_eq!(p.events, events);
        assert_eq!(p.events, w.planned_events());
        assert!((5_000..5_000 + 40).contains(&events), "{events}");
        assert_eq!(p.rows.job, submits);
        assert_eq!(w.jobs_in_flight(), 0);
    }

    #[test]
    fn topic_order_is_time_order_and_each_job_in_life_cycle_order() {
        let mut last = (0i64, 0i32);
        let mut stage: BTreeMap<Vec<u8>, u8> = BTreeMap::new();
        for seq in Workload::new(small(5, 3_000)) {
            for e in &seq.events {
                let c = e.created.expect("created");
                assert!((c.seconds, c.nanos) >= last, "time went backwards");
                last = (c.seconds, c.nanos);
                let (id, rank) = match e.event.as_ref().expect("event") {
                    Kind::SubmitJob(s) => (s.job_id.to_vec(), 0),
                    Kind::JobRunLeased(x) => (x.job_id.to_vec(), 1),
                    Kind::JobRunAssigned(x) => (x.job_id.to_vec(), 2),
                    Kind::JobRunRunning(x) => (x.job_id.to_vec(), 3),
                    Kind::JobRunSucceeded(x) => (x.job_id.to_vec(), 4),
                    Kind::JobRunErrors(x) => (x.job_id.to_vec(), 4),
                    Kind::CancelledJob(x) => (x.job_id.to_vec(), 4),
                    Kind::JobRunPreempted(x) => (x.preempted_job_id.to_vec(), 4),
                    Kind::JobSucceeded(x) => (x.job_id.to_vec(), 5),
                    Kind::JobErrors(x) => (x.job_id.to_vec(), 5),
                    Kind::JobRunCancelled(x) => (x.job_id.to_vec(), 5),
                    other => panic!("unexpected {other:?}"),
                };
                let before = stage.insert(id, rank);
                assert!(before.is_none_or(|b| b < rank), "out of order");
            }
        }
    }

    #[test]
    fn jobs_interleave_and_memory_is_bounded_by_jobs_in_flight() {
        let mut w = Workload::new(small(7, 20_000));
        let mut peak = 0;
        let mut first_end = None;
        let mut n = 0u64;
        while let Some(seq) = w.next() {
            n += 1;
            peak = peak.max(w.jobs_in_flight());
            let ends = seq.events.iter().any(|e| {
                matches!(
                    e.event,
                    Some(Kind::JobSucceeded(_)) | Some(Kind::JobErrors(_))
                )
            });
            if ends && first_end.is_none() {
                first_end = Some(n);
            }
        }
        // Many jobs in flight at once, but far fewer than all of them.
        assert!(peak > 50, "peak {peak}");
        assert!((peak as u64) < w.produced().rows.job / 2, "peak {peak}");
        // Jobs end while others are still being submitted.
        assert!(first_end.expect("an end") < n / 4);
    }

    #[test]
    fn ids_derive_from_the_seed() {
        let ids = |seed| {
            let mut jobs = Vec::new();
            let mut runs = Vec::new();
            for seq in Workload::new(small(seed, 500)) {
                for e in seq.events {
                    match e.event {
                        Some(Kind::SubmitJob(s)) => jobs.push(s.job_id.to_vec()),
                        Some(Kind::JobRunLeased(l)) => runs.push(l.run_id.to_vec()),
                        _ => {}
                    }
                }
            }
            (jobs, runs)
        };
        let (a_jobs, a_runs) = ids(1);
        assert_eq!(ids(1), (a_jobs.clone(), a_runs.clone()));
        let (b_jobs, b_runs) = ids(2);
        assert!(a_jobs.iter().all(|j| !b_jobs.contains(j)));
        assert!(a_runs.iter().all(|r| !b_runs.contains(r)));
        assert_eq!(a_jobs[0].len(), 26);
        assert_eq!(a_runs[0].len(), 36);
    }

    #[test]
    fn failure_info_can_be_left_out() {
        let has_info = |failure_info| {
            Workload::new(Options {
                failure_info,
                failure_ratio: 0.5,
                ..small(9, 2_000)
            })
            .flat_map(|s| s.events)
            .any(|e| match e.event {
                Some(Kind::JobRunErrors(r)) => r.errors.iter().any(|e| e.failure_info.is_some()),
                _ => false,
            })
        };
        assert!(has_info(true));
        assert!(!has_info(false));
    }
}
