//! Converts Armada event sequences into row instructions.
//!
//! Pure: no I/O, no clock, no global counters, no configuration beyond
//! [`Settings`] and the schema [`Generation`] it converts for (see
//! [`rules`]). Every rule of the upstream Go ingester's event handling
//! lives here, with its known text bugs fixed (see [`sanitize`]). What it
//! counted (events by kind, strings sanitised) and anything that cannot be
//! applied as it is (a [`Problem`]) come back in [`Converted`], so the
//! pipeline counts, logs and reports them in one place; nothing here panics
//! on input.

pub mod compress;
pub mod jobspec;
pub mod quantity;
pub mod sanitize;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use chrono::{DateTime, NaiveDateTime, Timelike};
use prost_types::Timestamp;
use serde_json::{Map, Value};

use crate::model::{
    job_state, run_state, CreateJob, CreateJobError, CreateJobRun, Generation, InstructionSet,
    UpdateJob, UpdateJobRun,
};
use crate::proto::armadaevents as ev;
use ev::event_sequence::event::Event as Kind;
use sanitize::{Action, Changes};

/// Column limits in bytes. Upstream's where it has them; otherwise the
/// column's width, so a long value cannot fail the row.
pub mod limits {
    pub const QUEUE: usize = 512;
    pub const OWNER: usize = 512;
    pub const JOBSET: usize = 1024;
    pub const CLUSTER: usize = 512;
    pub const NODE: usize = 512;
    pub const ANNOTATION_KEY: usize = 1024;
    pub const ANNOTATION_VALUE: usize = 1024;
    pub const PRIORITY_CLASS: usize = 63;
    pub const TERMINATION_MESSAGE: usize = 4096;
    pub const NAMESPACE: usize = 512;
    pub const CANCEL_REASON: usize = 512;
    pub const CANCEL_USER: usize = 512;
    pub const EXTERNAL_JOB_URI: usize = 1024;
    /// `job_run.failure_category`/`failure_subcategory` are varchar(63); in
    /// characters, as Postgres measures varchar.
    pub const FAILURE_CATEGORY_CHARS: usize = 63;
    /// `job.job_id` is varchar(32): an id is never truncated (that could merge
    /// two jobs), an event with a longer one is reported instead.
    pub const JOB_ID: usize = 32;
    /// `job_run.run_id` and `job.latest_run_id` are varchar(36).
    pub const RUN_ID: usize = 36;
}

/// The annotation whose value becomes `job.external_job_uri`.
pub const EXTERNAL_JOB_URI_ANNOTATION: &str = "armadaproject.io/externalJobUri";

/// Conversion settings, with upstream's keys and defaults.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(default)]
pub struct Settings {
    /// Stripped from user annotation keys before they are stored.
    /// Default: armadaproject.io/
    #[serde(rename = "annotations.userAnnotationPrefix")]
    pub user_annotation_prefix: String,
    /// Annotation keys never stored (compared case-insensitively). Default: none
    #[serde(rename = "annotations.blocklistAnnotations")]
    pub annotation_blocklist: Vec<String>,
    /// Payloads longer than this are zlib-compressed at speed level; shorter
    /// ones are wrapped in an uncompressed zlib stream, as upstream does.
    /// Default: 1024
    #[serde(rename = "minJobSpecCompressionSize")]
    pub min_job_spec_compression_size: usize,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            user_annotation_prefix: "armadaproject.io/".to_string(),
            annotation_blocklist: Vec::new(),
            min_job_spec_compression_size: 1024,
        }
    }
}

/// Why an input could not be used as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Reason {
    /// The bytes are not an EventSequence.
    Decode,
    EmptyQueue,
    EmptyJobSet,
    MissingCreated,
    InvalidCreated,
    /// An event kind this build does not know (from a newer Armada); ignored.
    UnknownEventKind,
    MissingId,
    IdTooLong,
    /// Parts of a submitted job that could not be read (bad quantity,
    /// unsupported object, undecodable pod spec); the job is still stored.
    JobSpec,
    Compression,
    /// A recorded file could not be opened or read to its end (`replay`);
    /// the rest of that file is not read. Never produced by the converter.
    File,
}

impl Reason {
    /// Every reason, for pre-creating the `reason` label values.
    pub const ALL: [Reason; 11] = [
        Reason::Decode,
        Reason::EmptyQueue,
        Reason::EmptyJobSet,
        Reason::MissingCreated,
        Reason::InvalidCreated,
        Reason::UnknownEventKind,
        Reason::MissingId,
        Reason::IdTooLong,
        Reason::JobSpec,
        Reason::Compression,
        Reason::File,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Decode => "decode",
            Reason::EmptyQueue => "empty_queue",
            Reason::EmptyJobSet => "empty_job_set",
            Reason::MissingCreated => "missing_created",
            Reason::InvalidCreated => "invalid_created",
            Reason::UnknownEventKind => "unknown_event_kind",
            Reason::MissingId => "missing_id",
            Reason::IdTooLong => "id_too_long",
            Reason::JobSpec => "job_spec",
            Reason::Compression => "compression",
            Reason::File => "file",
        }
    }
}

/// Something about one sequence or event that the caller should report.
#[derive(Debug, Clone, PartialEq)]
pub struct Problem {
    /// Index of the event in its sequence; `None` for the whole sequence.
    pub event_index: Option<usize>,
    pub reason: Reason,
    pub detail: String,
    /// True when the event (or sequence) produced no rows because of it.
    pub skipped: bool,
}

/// `event 3: missing_id: event has no job id`, or without the event for a
/// whole sequence.
impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if let Some(i) = self.event_index {
            write!(f, "event {i}: ")?;
        }
        write!(f, "{}: {}", self.reason.as_str(), self.detail)
    }
}

/// The result of converting one sequence: the rows, and what the caller
/// should count and report.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Converted {
    pub instructions: InstructionSet,
    /// Events seen, by kind name (see [`event_kind`]).
    pub events_by_kind: BTreeMap<&'static str, u64>,
    /// Strings altered to fit their column, by what was done (only actions
    /// that happened are present).
    pub sanitised: BTreeMap<Action, u64>,
    pub problems: Vec<Problem>,
}

impl Converted {
    pub fn skipped(&self) -> usize {
        self.problems.iter().filter(|p| p.skipped).count()
    }
}

/// Every name [`event_kind`] can return, for pre-creating metric labels.
pub const EVENT_KINDS: [&str; 25] = [
    "unknown",
    "submit_job",
    "reprioritise_job",
    "reprioritise_job_set",
    "reprioritised_job",
    "cancel_job",
    "cancel_job_set",
    "cancelled_job",
    "job_succeeded",
    "job_errors",
    "job_run_leased",
    "job_run_assigned",
    "job_run_running",
    "job_run_succeeded",
    "job_run_errors",
    "standalone_ingress_info",
    "resource_utilisation",
    "job_run_preempted",
    "partition_marker",
    "job_run_preemption_requested",
    "job_requeued",
    "job_preemption_requested",
    "job_run_cancelled",
    "job_validated",
    "job_run_terminated_debug_info",
];

/// The name of an event's kind, as used in metrics and summaries.
pub fn event_kind(event: &ev::event_sequence::Event) -> &'static str {
    match &event.event {
        None => "unknown",
        Some(k) => match k {
            Kind::SubmitJob(_) => "submit_job",
            Kind::ReprioritiseJob(_) => "reprioritise_job",
            Kind::ReprioritiseJobSet(_) => "reprioritise_job_set",
            Kind::ReprioritisedJob(_) => "reprioritised_job",
            Kind::CancelJob(_) => "cancel_job",
            Kind::CancelJobSet(_) => "cancel_job_set",
            Kind::CancelledJob(_) => "cancelled_job",
            Kind::JobSucceeded(_) => "job_succeeded",
            Kind::JobErrors(_) => "job_errors",
            Kind::JobRunLeased(_) => "job_run_leased",
            Kind::JobRunAssigned(_) => "job_run_assigned",
            Kind::JobRunRunning(_) => "job_run_running",
            Kind::JobRunSucceeded(_) => "job_run_succeeded",
            Kind::JobRunErrors(_) => "job_run_errors",
            Kind::StandaloneIngressInfo(_) => "standalone_ingress_info",
            Kind::ResourceUtilisation(_) => "resource_utilisation",
            Kind::JobRunPreempted(_) => "job_run_preempted",
            Kind::PartitionMarker(_) => "partition_marker",
            Kind::JobRunPreemptionRequested(_) => "job_run_preemption_requested",
            Kind::JobRequeued(_) => "job_requeued",
            Kind::JobPreemptionRequested(_) => "job_preemption_requested",
            Kind::JobRunCancelled(_) => "job_run_cancelled",
            Kind::JobValidated(_) => "job_validated",
            Kind::JobRunTerminatedDebugInfo(_) => "job_run_terminated_debug_info",
        },
    }
}

/// Which of upstream's rules apply at a schema generation. A database at
/// generation G gets upstream's ingester as of the commit that added
/// migration G (031: 777e10311, 032/033: 8494d0cbb, 034: 9a8187758,
/// 035: 207cc9e04), even where upstream changed behaviour between two
/// migrations.
pub mod rules {
    use crate::model::Generation;

    /// `SubmitJob.external_job_uri` (field 16) is preferred to the annotation.
    pub fn external_job_uri_field(g: Generation) -> bool {
        g >= Generation::G032
    }

    /// A terminal error's FailureInfo (field 15) becomes `failure_info`.
    pub fn failure_info(g: Generation) -> bool {
        g.writes_failure_info()
    }

    /// A terminal error's category and subcategory (fields 16, 17) are stored.
    pub fn failure_category(g: Generation) -> bool {
        g.has_failure_category()
    }

    /// Preempted runs get `scheduler_termination_reason`.
    pub fn preemption_reason(g: Generation) -> bool {
        g.has_termination_reason()
    }

    /// The 035 rules: cancelled runs' termination reason, requestors (with
    /// the owner as fallback), trimmed owner, run debug info events.
    pub fn requestors(g: Generation) -> bool {
        g >= Generation::G035
    }
}

/// Converts event sequences into row instructions for one schema generation.
/// Cloning is cheap: the settings are shared.
#[derive(Debug, Clone)]
pub struct Converter {
    settings: Arc<Settings>,
    blocklist: Arc<BTreeSet<String>>,
    generation: Generation,
}

/// A sequence's header fields, cleaned.
#[derive(Debug, Clone, PartialEq)]
pub struct Header {
    pub queue: String,
    pub jobset: String,
    pub owner: String,
}

/// An event's time, in the forms the rows need.
#[derive(Clone, Copy)]
struct Time {
    ts: NaiveDateTime,
    seconds: i64,
    proto: Timestamp,
}

/// Per-event conversion state: where rows, problems and counts go.
struct Out<'a> {
    set: &'a mut InstructionSet,
    problems: &'a mut Vec<Problem>,
    sanitised: &'a mut BTreeMap<Action, u64>,
    index: usize,
}

impl Out<'_> {
    fn problem(&mut self, reason: Reason, detail: String, skipped: bool) {
        self.problems.push(Problem {
            event_index: Some(self.index),
            reason,
            detail,
            skipped,
        });
    }

    fn text(&mut self, b: &[u8], limit: usize) -> String {
        text(b, limit, self.sanitised)
    }

    fn free_text(&mut self, b: &[u8]) -> String {
        text(b, usize::MAX, self.sanitised)
    }
}

/// Tallies what sanitising did, so an operator can see text being altered.
fn count(sanitised: &mut BTreeMap<Action, u64>, changes: Changes) {
    for action in changes.actions() {
        *sanitised.entry(action).or_insert(0) += 1;
    }
}

/// Text for a column with a byte limit (`usize::MAX` for text and jsonb
/// columns without one).
fn text(b: &[u8], limit: usize, sanitised: &mut BTreeMap<Action, u64>) -> String {
    let (s, c) = sanitize::clean_bytes(b, limit);
    count(sanitised, c);
    s
}

/// Text that is only ever carried inside job_spec bytes (no column limit,
/// NULs allowed in bytea), decoded lossily.
fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Converts a protobuf timestamp to the `timestamp` column's form (UTC wall
/// clock, microseconds, truncated as Postgres' binary format requires).
fn to_time(ts: &Timestamp) -> Option<Time> {
    if !(0..1_000_000_000).contains(&ts.nanos) {
        return None;
    }
    let dt = DateTime::from_timestamp(ts.seconds, ts.nanos as u32)?;
    let naive = dt.naive_utc();
    // Postgres' timestamp starts at 4713 BC; chrono reaches further back.
    if naive.and_utc().timestamp() < -210_866_803_200 {
        return None;
    }
    // Postgres keeps microseconds; drop the rest as its binary format does.
    let naive = naive.with_nanosecond(naive.nanosecond() / 1000 * 1000)?;
    Some(Time {
        ts: naive,
        seconds: ts.seconds,
        proto: *ts,
    })
}

impl Converter {
    /// A converter for generation 031, the schema this project started from.
    pub fn new(settings: Settings) -> Converter {
        let blocklist = settings
            .annotation_blocklist
            .iter()
            .map(|k| k.to_lowercase())
            .collect();
        Converter {
            settings: Arc::new(settings),
            blocklist: Arc::new(blocklist),
            generation: Generation::G031,
        }
    }

    /// The same converter, writing for `generation`.
    pub fn with_generation(&self, generation: Generation) -> Converter {
        Converter {
            generation,
            ..self.clone()
        }
    }

    /// The schema generation this converter writes for.
    pub fn generation(&self) -> Generation {
        self.generation
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Converts one sequence. `fallback_created` stands in for events that
    /// lack a `created` time (live mode passes the message's publish time,
    /// as upstream does); without it such events are skipped and reported.
    pub fn convert(
        &self,
        seq: &ev::EventSequence,
        fallback_created: Option<&Timestamp>,
    ) -> Converted {
        let mut out = Converted::default();
        let header = match check_sequence(seq, &mut out.sanitised) {
            // Upstream trims the owner after cutting it, from 035 on.
            Ok(h) if rules::requestors(self.generation) => Header {
                owner: h.owner.trim().to_string(),
                ..h
            },
            Ok(h) => h,
            Err(p) => {
                out.problems.push(p);
                return out;
            }
        };
        for (index, event) in seq.events.iter().enumerate() {
            let kind = event_kind(event);
            *out.events_by_kind.entry(kind).or_insert(0) += 1;
            let mut o = Out {
                set: &mut out.instructions,
                problems: &mut out.problems,
                sanitised: &mut out.sanitised,
                index,
            };
            let created = match (&event.created, fallback_created) {
                (Some(c), _) => c,
                (None, Some(f)) => f,
                (None, None) => {
                    o.problem(
                        Reason::MissingCreated,
                        format!("{kind} event has no created time"),
                        true,
                    );
                    continue;
                }
            };
            let Some(time) = to_time(created) else {
                o.problem(
                    Reason::InvalidCreated,
                    format!(
                        "{kind} event has an out-of-range created time {}s {}ns",
                        created.seconds, created.nanos
                    ),
                    true,
                );
                continue;
            };
            self.convert_event(&header, time, event, &mut o);
        }
        out
    }

    fn convert_event(&self, h: &Header, t: Time, event: &ev::event_sequence::Event, o: &mut Out) {
        let Some(kind) = &event.event else {
            o.problem(
                Reason::UnknownEventKind,
                "event of a kind this version does not know (newer Armada?); ignored".into(),
                false,
            );
            return;
        };
        match kind {
            Kind::SubmitJob(e) => self.submit_job(h, t, e, o),
            Kind::ReprioritisedJob(e) => {
                let Some(job_id) = job_id(&e.job_id, o) else {
                    return;
                };
                o.set.jobs_to_update.push(UpdateJob {
                    job_id,
                    priority: Some(i64::from(e.priority)),
                    ..Default::default()
                });
            }
            Kind::CancelledJob(e) => {
                let Some(job_id) = job_id(&e.job_id, o) else {
                    return;
                };
                let reason = o.text(&e.reason, limits::CANCEL_REASON);
                let mut user = o.text(&e.requestor, limits::CANCEL_USER);
                if user.is_empty() && rules::requestors(self.generation) {
                    // Already cut to the owner column's 512 and trimmed.
                    user = h.owner.clone();
                }
                o.set.jobs_to_update.push(UpdateJob {
                    job_id,
                    state: Some(job_state::CANCELLED),
                    cancelled: Some(t.ts),
                    cancel_reason: (!reason.is_empty()).then_some(reason),
                    cancel_user: (!user.is_empty()).then_some(user),
                    ..transition(t)
                });
            }
            Kind::JobSucceeded(e) => job_transition(&e.job_id, job_state::SUCCEEDED, t, o),
            Kind::JobRequeued(e) => job_transition(&e.job_id, job_state::QUEUED, t, o),
            Kind::JobErrors(e) => self.job_errors(t, e, o),
            Kind::JobRunLeased(e) => {
                let Some((job_id, run_id)) = ids(&e.job_id, &e.run_id, o) else {
                    return;
                };
                o.set.jobs_to_update.push(UpdateJob {
                    job_id: job_id.clone(),
                    state: Some(job_state::LEASED),
                    latest_run_id: Some(run_id.clone()),
                    ..transition(t)
                });
                let cluster = o.text(&e.executor_id, limits::CLUSTER);
                // Upstream stores the node even when empty.
                let node = Some(o.text(&e.node_id, limits::NODE));
                let pool = o.free_text(&e.pool);
                o.set.runs_to_create.push(CreateJobRun {
                    run_id,
                    job_id,
                    cluster,
                    node,
                    pool,
                    leased: Some(t.ts),
                    pending: None,
                    job_run_state: run_state::LEASED,
                });
            }
            Kind::JobRunAssigned(e) => {
                let Some((job_id, run_id)) = ids(&e.job_id, &e.run_id, o) else {
                    return;
                };
                o.set.jobs_to_update.push(UpdateJob {
                    job_id,
                    state: Some(job_state::PENDING),
                    latest_run_id: Some(run_id.clone()),
                    ..transition(t)
                });
                o.set.runs_to_update.push(UpdateJobRun {
                    run_id,
                    pending: Some(t.ts),
                    job_run_state: Some(run_state::PENDING),
                    ..Default::default()
                });
            }
            Kind::JobRunRunning(e) => {
                let Some((job_id, run_id)) = ids(&e.job_id, &e.run_id, o) else {
                    return;
                };
                o.set.jobs_to_update.push(UpdateJob {
                    job_id,
                    state: Some(job_state::RUNNING),
                    latest_run_id: Some(run_id.clone()),
                    ..transition(t)
                });
                let node = Some(running_node(&e.resource_infos, o));
                o.set.runs_to_update.push(UpdateJobRun {
                    run_id,
                    node,
                    started: Some(t.ts),
                    job_run_state: Some(run_state::RUNNING),
                    ..Default::default()
                });
            }
            Kind::JobRunSucceeded(e) => {
                let Some(run_id) = run_id(&e.run_id, o) else {
                    return;
                };
                o.set.runs_to_update.push(UpdateJobRun {
                    run_id,
                    finished: Some(t.ts),
                    job_run_state: Some(run_state::SUCCEEDED),
                    exit_code: Some(0),
                    ..Default::default()
                });
            }
            Kind::JobRunCancelled(e) => {
                let Some(run_id) = run_id(&e.run_id, o) else {
                    return;
                };
                let scheduler_termination_reason =
                    rules::requestors(self.generation).then(|| cancellation_reason(e, o));
                o.set.runs_to_update.push(UpdateJobRun {
                    run_id,
                    finished: Some(t.ts),
                    job_run_state: Some(run_state::CANCELLED),
                    scheduler_termination_reason,
                    ..Default::default()
                });
            }
            Kind::JobRunErrors(e) => self.job_run_errors(t, e, o),
            Kind::JobRunPreempted(e) => {
                let Some(run_id) = run_id(&e.preempted_run_id, o) else {
                    return;
                };
                let error = self.compress(&e.reason, o);
                let scheduler_termination_reason = if rules::preemption_reason(self.generation) {
                    self.preemption_reason(h, e, o)
                } else {
                    None
                };
                o.set.runs_to_update.push(UpdateJobRun {
                    run_id,
                    job_run_state: Some(run_state::PREEMPTED),
                    finished: Some(t.ts),
                    error,
                    scheduler_termination_reason,
                    ..Default::default()
                });
            }
            Kind::JobRunTerminatedDebugInfo(e) => {
                // Before 035 upstream did not know this kind: no rows.
                if !rules::requestors(self.generation) {
                    return;
                }
                let Some(run_id) = run_id(&e.run_id, o) else {
                    return;
                };
                let debug = self.compress(&e.debug_message, o);
                if debug.is_none() {
                    return;
                }
                o.set.runs_to_update.push(UpdateJobRun {
                    run_id,
                    debug,
                    ..Default::default()
                });
            }
            Kind::StandaloneIngressInfo(e) => {
                let Some(run_id) = run_id(&e.run_id, o) else {
                    return;
                };
                let addresses: BTreeMap<i32, String> = e
                    .ingress_addresses
                    .iter()
                    .map(|a| (a.port, o.free_text(&a.address)))
                    .collect();
                o.set.runs_to_update.push(UpdateJobRun {
                    run_id,
                    // An empty map leaves what is stored, as upstream's nil map does.
                    ingress_addresses: (!addresses.is_empty()).then_some(addresses),
                    ..Default::default()
                });
            }
            // Kinds the Lookout tables do not reflect; upstream ignores them too.
            Kind::ReprioritiseJob(_)
            | Kind::ReprioritiseJobSet(_)
            | Kind::CancelJob(_)
            | Kind::CancelJobSet(_)
            | Kind::ResourceUtilisation(_)
            | Kind::PartitionMarker(_)
            | Kind::JobValidated(_)
            | Kind::JobRunPreemptionRequested(_)
            | Kind::JobPreemptionRequested(_) => {}
        }
    }

    fn submit_job(&self, h: &Header, t: Time, e: &ev::SubmitJob, o: &mut Out) {
        let Some(job_id) = job_id(&e.job_id, o) else {
            return;
        };
        let ctx = jobspec::SubmitContext {
            owner: &h.owner,
            queue: &h.queue,
            jobset: &h.jobset,
            created: t.proto,
        };
        let built = jobspec::build(&ctx, e);
        for p in &built.problems {
            o.problem(Reason::JobSpec, format!("job {job_id}: {p}"), false);
        }
        let job_spec =
            match compress::zlib(&built.encoded, self.settings.min_job_spec_compression_size) {
                Ok(b) => b,
                Err(err) => {
                    o.problem(
                        Reason::Compression,
                        format!("job {job_id}: cannot compress job spec: {err}"),
                        true,
                    );
                    return;
                }
            };
        let meta_annotations = e
            .object_meta
            .as_ref()
            .map(|m| m.annotations.as_slice())
            .unwrap_or(&[]);
        let (annotations, annotation_uri) = self.user_annotations(meta_annotations, o);
        // Emptiness is judged on the raw field, as upstream does.
        let uri =
            if rules::external_job_uri_field(self.generation) && !e.external_job_uri.is_empty() {
                Some(e.external_job_uri.as_slice())
            } else {
                annotation_uri
            };
        let external_job_uri = uri
            .map(|u| o.text(u, limits::EXTERNAL_JOB_URI))
            .unwrap_or_default();
        let priority_class = built
            .facts
            .priority_class
            .as_deref()
            .map(|pc| o.text(pc.as_bytes(), limits::PRIORITY_CLASS));
        let namespace = o.text(built.namespace.as_bytes(), limits::NAMESPACE);
        o.set.jobs_to_create.push(CreateJob {
            job_id,
            queue: h.queue.clone(),
            owner: h.owner.clone(),
            namespace,
            jobset: h.jobset.clone(),
            cpu: built.facts.cpu_millis,
            memory: built.facts.memory,
            ephemeral_storage: built.facts.ephemeral_storage,
            gpu: built.facts.gpu,
            priority: i64::from(e.priority),
            submitted: t.ts,
            state: job_state::QUEUED,
            last_transition_time: t.ts,
            last_transition_time_seconds: t.seconds,
            job_spec,
            priority_class,
            annotations,
            external_job_uri,
        });
    }

    /// Strips the user prefix from keys, drops blocklisted keys (compared
    /// case-insensitively, before stripping, as upstream) and cleans keys and
    /// values. Also returns the raw external job URI annotation, if any.
    /// Entries are applied in wire order, so a repeated key keeps its last
    /// value (protobuf map semantics); keys that collide after stripping keep
    /// the later entry.
    fn user_annotations<'e>(
        &self,
        entries: &'e [ev::StringEntry],
        o: &mut Out,
    ) -> (BTreeMap<String, String>, Option<&'e [u8]>) {
        let mut out = BTreeMap::new();
        let mut external = None;
        let prefix = self.settings.user_annotation_prefix.as_bytes();
        for entry in entries {
            let key_raw = lossy(&entry.key);
            if key_raw == EXTERNAL_JOB_URI_ANNOTATION {
                external = Some(entry.value.as_slice());
            }
            if self.blocklist.contains(&key_raw.to_lowercase()) {
                continue;
            }
            let stripped = entry.key.strip_prefix(prefix).unwrap_or(&entry.key);
            out.insert(
                o.text(stripped, limits::ANNOTATION_KEY),
                o.text(&entry.value, limits::ANNOTATION_VALUE),
            );
        }
        (out, external)
    }

    fn job_errors(&self, t: Time, e: &ev::JobErrors, o: &mut Out) {
        // The first terminal error decides; non-terminal ones change nothing.
        let Some(first) = e.errors.iter().find(|err| err.terminal) else {
            return;
        };
        let Some(job_id) = job_id(&e.job_id, o) else {
            return;
        };
        use ev::error::Reason as R;
        let state = match &first.reason {
            Some(R::JobRunPreemptedError(_)) => job_state::PREEMPTED,
            Some(R::JobRejected(r)) => {
                let Some(error) = self.compress(&r.message, o) else {
                    return;
                };
                o.set.job_errors_to_create.push(CreateJobError {
                    job_id: job_id.clone(),
                    error,
                });
                job_state::REJECTED
            }
            _ => job_state::FAILED,
        };
        job_transition_id(job_id, state, t, o);
    }

    fn job_run_errors(&self, t: Time, e: &ev::JobRunErrors, o: &mut Out) {
        use ev::error::Reason as R;
        // The first error that is not a preemption decides: preemption is
        // recorded from the JobRunPreempted event instead.
        let Some(first) = e
            .errors
            .iter()
            .find(|err| !matches!(err.reason, Some(R::JobRunPreemptedError(_))))
        else {
            return;
        };
        let Some(run_id) = run_id(&e.run_id, o) else {
            return;
        };
        let mut update = UpdateJobRun {
            run_id,
            finished: first.terminal.then_some(t.ts),
            ..Default::default()
        };
        match &first.reason {
            Some(R::PodError(p)) => {
                update.node = non_empty_node(&p.node_name, o);
                update.job_run_state = Some(run_state::FAILED);
                update.error = self.compress(&p.message, o);
                update.debug = self.compress(&p.debug_message, o);
                let exit = p
                    .container_errors
                    .iter()
                    .map(|c| c.exit_code)
                    .find(|&c| c != 0);
                update.exit_code = Some(exit.unwrap_or(0));
            }
            Some(R::PodLeaseReturned(p)) => {
                update.job_run_state = Some(run_state::LEASE_RETURNED);
                update.error = self.compress(&p.message, o);
                update.debug = self.compress(&p.debug_message, o);
            }
            Some(R::LeaseExpired(_)) => {
                update.job_run_state = Some(run_state::LEASE_EXPIRED);
                update.error = self.compress(b"Lease expired", o);
            }
            Some(R::ReconciliationError(r)) => {
                update.job_run_state = Some(run_state::FAILED);
                update.error = self.compress(&r.message, o);
            }
            _ => {
                update.job_run_state = Some(run_state::FAILED);
                update.error = self.compress(b"Unknown error", o);
            }
        }
        // Only a terminal error's failure detail is final; a transient one
        // may be followed by a retry.
        if first.terminal && rules::failure_info(self.generation) {
            update.failure_info = first
                .failure_info
                .as_ref()
                .and_then(|fi| failure_info_json(fi, o.sanitised));
        }
        if first.terminal && rules::failure_category(self.generation) {
            update.failure_category = failure_category(&first.failure_category, o);
            update.failure_subcategory = failure_category(&first.failure_subcategory, o);
        }
        o.set.runs_to_update.push(update);
    }

    /// `{"reason": R, "args": {...}}` for a preempted run, or `None` when
    /// there is nothing to say. Args: `preemptingJobId` (034 on) and
    /// `requestor`, falling back to the trimmed owner (035 on).
    fn preemption_reason(&self, h: &Header, e: &ev::JobRunPreempted, o: &mut Out) -> Option<Value> {
        let reason = o.free_text(&e.reason);
        let mut args = Map::new();
        let preempting = o.free_text(&e.preempting_job_id);
        if !preempting.is_empty() {
            args.insert("preemptingJobId".into(), Value::from(preempting));
        }
        if rules::requestors(self.generation) {
            let mut requestor = o.free_text(&e.requestor);
            if requestor.is_empty() {
                requestor = h.owner.clone();
            }
            if !requestor.is_empty() {
                args.insert("requestor".into(), Value::from(requestor));
            }
        }
        if reason.is_empty() && args.is_empty() {
            return None;
        }
        Some(termination_reason(reason, args))
    }

    /// Compresses error text for a bytea column. NULs are kept: bytea takes them.
    fn compress(&self, b: &[u8], o: &mut Out) -> Option<Vec<u8>> {
        match compress::zlib(b, self.settings.min_job_spec_compression_size) {
            Ok(v) => Some(v),
            Err(err) => {
                o.problem(
                    Reason::Compression,
                    format!("cannot compress error text: {err}"),
                    false,
                );
                None
            }
        }
    }
}

/// A failure category for a varchar(63) column: NULs removed, cut to 63
/// characters (upstream stores them as sent, and one too long stalls its
/// ingester); `None` when empty, so the stored value is kept.
fn failure_category(raw: &[u8], o: &mut Out) -> Option<String> {
    let (s, c) = sanitize::clean_bytes_chars(raw, limits::FAILURE_CATEGORY_CHARS);
    count(o.sanitised, c);
    (!s.is_empty()).then_some(s)
}

/// `{"reason": R}`, with `"args"` only when it has a key.
fn termination_reason(reason: String, args: Map<String, Value>) -> Value {
    let mut m = Map::new();
    m.insert("reason".into(), Value::from(reason));
    if !args.is_empty() {
        m.insert("args".into(), Value::Object(args));
    }
    Value::Object(m)
}

/// A cancelled run's termination reason (035 on): always written, with a
/// placeholder for an empty reason and the requestor only when the event
/// names one (no owner fallback here, as upstream).
fn cancellation_reason(e: &ev::JobRunCancelled, o: &mut Out) -> Value {
    let mut reason = o.free_text(&e.reason);
    if reason.is_empty() {
        reason = "no reason provided".into();
    }
    let mut args = Map::new();
    let requestor = o.free_text(&e.requestor);
    if !requestor.is_empty() {
        args.insert("requestor".into(), Value::from(requestor));
    }
    termination_reason(reason, args)
}

/// The sparse JSON form of a FailureInfo: only its non-zero fields; `None`
/// when all are zero (stored as SQL NULL). Tallies sanitising in `sanitised`.
pub fn failure_info_json(
    fi: &ev::FailureInfo,
    sanitised: &mut BTreeMap<Action, u64>,
) -> Option<Value> {
    let mut m = Map::new();
    if fi.exit_code != 0 {
        m.insert("exitCode".into(), Value::from(fi.exit_code));
    }
    if !fi.termination_message.is_empty() {
        m.insert(
            "terminationMessage".into(),
            Value::from(text(
                &fi.termination_message,
                limits::TERMINATION_MESSAGE,
                sanitised,
            )),
        );
    }
    if !fi.categories.is_empty() {
        let cats: Vec<Value> = fi
            .categories
            .iter()
            .map(|c| Value::from(text(c, usize::MAX, sanitised)))
            .collect();
        m.insert("categories".into(), Value::Array(cats));
    }
    if !fi.container_name.is_empty() {
        m.insert(
            "containerName".into(),
            Value::from(text(&fi.container_name, usize::MAX, sanitised)),
        );
    }
    (!m.is_empty()).then_some(Value::Object(m))
}

/// Validates and cleans a sequence's header. A sequence without a queue or
/// job set cannot be attributed to anything in Lookout; upstream rejects it
/// at decode time and so do we. Tallies sanitising in `sanitised`.
pub fn check_sequence(
    seq: &ev::EventSequence,
    sanitised: &mut BTreeMap<Action, u64>,
) -> Result<Header, Problem> {
    let queue = text(&seq.queue, limits::QUEUE, sanitised);
    let jobset = text(&seq.job_set_name, limits::JOBSET, sanitised);
    let owner = text(&seq.user_id, limits::OWNER, sanitised);
    let fail = |reason: Reason, what: &str| Problem {
        event_index: None,
        reason,
        detail: format!(
            "sequence of {} event(s) has an empty {what}",
            seq.events.len()
        ),
        skipped: true,
    };
    if queue.is_empty() {
        return Err(fail(Reason::EmptyQueue, "queue"));
    }
    if jobset.is_empty() {
        return Err(fail(Reason::EmptyJobSet, "job set name"));
    }
    Ok(Header {
        queue,
        jobset,
        owner,
    })
}

fn transition(t: Time) -> UpdateJob {
    UpdateJob {
        last_transition_time: Some(t.ts),
        last_transition_time_seconds: Some(t.seconds),
        ..Default::default()
    }
}

fn job_transition(raw_id: &[u8], state: i16, t: Time, o: &mut Out) {
    let Some(job_id) = job_id(raw_id, o) else {
        return;
    };
    job_transition_id(job_id, state, t, o);
}

fn job_transition_id(job_id: String, state: i16, t: Time, o: &mut Out) {
    o.set.jobs_to_update.push(UpdateJob {
        job_id,
        state: Some(state),
        ..transition(t)
    });
}

/// An id for a key column: NULs removed, never truncated.
fn id(raw: &[u8], what: &str, limit: usize, o: &mut Out) -> Option<String> {
    let s = o.free_text(raw);
    if s.is_empty() {
        o.problem(Reason::MissingId, format!("event has no {what}"), true);
        return None;
    }
    if s.chars().count() > limit {
        o.problem(
            Reason::IdTooLong,
            format!("{what} {s:?} is longer than the column's {limit} characters"),
            true,
        );
        return None;
    }
    Some(s)
}

fn job_id(raw: &[u8], o: &mut Out) -> Option<String> {
    id(raw, "job id", limits::JOB_ID, o)
}

fn run_id(raw: &[u8], o: &mut Out) -> Option<String> {
    id(raw, "run id", limits::RUN_ID, o)
}

fn ids(job: &[u8], run: &[u8], o: &mut Out) -> Option<(String, String)> {
    let j = job_id(job, o)?;
    let r = run_id(run, o)?;
    Some((j, r))
}

fn non_empty_node(raw: &[u8], o: &mut Out) -> Option<String> {
    let n = o.text(raw, limits::NODE);
    (!n.is_empty()).then_some(n)
}

/// The node of the first pod that names one, else `UNKNOWN` (as upstream).
fn running_node(infos: &[ev::KubernetesResourceInfo], o: &mut Out) -> String {
    use ev::kubernetes_resource_info::Info;
    // Lazily, as before: only nodes up to the first non-empty one are
    // cleaned (and counted).
    infos
        .iter()
        .filter_map(|r| match &r.info {
            Some(Info::PodInfo(p)) => non_empty_node(&p.node_name, o),
            _ => None,
        })
        .next()
        .unwrap_or_else(|| "UNKNOWN".to_string())
}

#[cfg(test)]
mod tests;
