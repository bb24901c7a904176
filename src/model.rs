//! Row instructions: what the converter asks the store to do.
//!
//! Plain data, one struct per kind of write, field for field the columns they
//! touch. `None` in an update means "leave the stored value alone" (the store
//! merges with `coalesce`). Every string here is already sanitised and within
//! its column's limit.

use chrono::NaiveDateTime;
use std::collections::BTreeMap;

/// Lookout's job states (`job.state`), as upstream numbers them.
pub mod job_state {
    pub const QUEUED: i16 = 1;
    pub const PENDING: i16 = 2;
    pub const RUNNING: i16 = 3;
    pub const SUCCEEDED: i16 = 4;
    pub const FAILED: i16 = 5;
    pub const CANCELLED: i16 = 6;
    pub const PREEMPTED: i16 = 7;
    pub const LEASED: i16 = 8;
    pub const REJECTED: i16 = 9;

    /// States after which a job takes no further updates (but see preemption).
    pub const TERMINAL: [i16; 5] = [SUCCEEDED, FAILED, CANCELLED, PREEMPTED, REJECTED];

    pub fn is_terminal(state: i16) -> bool {
        TERMINAL.contains(&state)
    }
}

/// Lookout's job-run states (`job_run.job_run_state`), as upstream numbers them.
pub mod run_state {
    pub const PENDING: i16 = 1;
    pub const RUNNING: i16 = 2;
    pub const SUCCEEDED: i16 = 3;
    pub const FAILED: i16 = 4;
    pub const TERMINATED: i16 = 5;
    pub const PREEMPTED: i16 = 6;
    pub const UNABLE_TO_SCHEDULE: i16 = 7;
    pub const LEASE_RETURNED: i16 = 8;
    pub const LEASE_EXPIRED: i16 = 9;
    pub const MAX_RUNS_EXCEEDED: i16 = 10;
    pub const LEASED: i16 = 11;
    pub const CANCELLED: i16 = 12;
}

/// A Lookout schema generation: the upstream migration a database is at,
/// from 031 (the oldest this binary writes) to 035. It decides which columns
/// exist and which of upstream's conversion rules apply: the rules of
/// upstream's ingester as of the commit that added that migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Generation {
    /// `job_run.failure_info` (upstream 777e10311).
    G031,
    /// + `failure_category`, `failure_subcategory`; SubmitJob's
    ///   `external_job_uri` field (upstream 8494d0cbb).
    G032,
    /// − `failure_info` (upstream c56104d38, same rules as 032).
    G033,
    /// + `scheduler_termination_reason`, written for preempted runs
    ///   (upstream 9a8187758).
    G034,
    /// `retry_policy` tables; cancelled runs' termination reason, requestors,
    /// run debug info events (upstream 207cc9e04).
    G035,
}

impl Generation {
    /// Every generation, oldest first.
    pub const ALL: [Generation; 5] = [
        Generation::G031,
        Generation::G032,
        Generation::G033,
        Generation::G034,
        Generation::G035,
    ];

    /// The migration number (31..=35).
    pub fn number(self) -> i64 {
        match self {
            Generation::G031 => 31,
            Generation::G032 => 32,
            Generation::G033 => 33,
            Generation::G034 => 34,
            Generation::G035 => 35,
        }
    }

    /// The generation of migration `n`, if this binary knows it.
    pub fn from_number(n: i64) -> Option<Generation> {
        Generation::ALL.into_iter().find(|g| g.number() == n)
    }

    /// Whether `job_run.failure_info` is written (031 only: upstream's 032
    /// writer no longer fills it, and 033 drops it).
    pub fn writes_failure_info(self) -> bool {
        self == Generation::G031
    }

    /// Whether `job_run.failure_category`/`failure_subcategory` exist.
    pub fn has_failure_category(self) -> bool {
        self >= Generation::G032
    }

    /// Whether `job_run.scheduler_termination_reason` exists.
    pub fn has_termination_reason(self) -> bool {
        self >= Generation::G034
    }
}

impl std::fmt::Display for Generation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:03}", self.number())
    }
}

/// A new `job` row plus its `job_spec` row.
#[derive(Debug, Clone, PartialEq)]
pub struct CreateJob {
    pub job_id: String,
    pub queue: String,
    pub owner: String,
    pub namespace: String,
    pub jobset: String,
    pub cpu: i64,
    pub memory: i64,
    pub ephemeral_storage: i64,
    pub gpu: i64,
    pub priority: i64,
    pub submitted: NaiveDateTime,
    pub state: i16,
    pub last_transition_time: NaiveDateTime,
    pub last_transition_time_seconds: i64,
    /// zlib stream of the encoded `api.Job`, for `job_spec.job_spec`.
    pub job_spec: Vec<u8>,
    pub priority_class: Option<String>,
    /// User annotations, prefix stripped; stored as a JSON object.
    pub annotations: BTreeMap<String, String>,
    pub external_job_uri: String,
}

/// A change to an existing `job` row; `None` keeps the stored value.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UpdateJob {
    pub job_id: String,
    pub priority: Option<i64>,
    pub state: Option<i16>,
    pub cancelled: Option<NaiveDateTime>,
    pub cancel_reason: Option<String>,
    pub cancel_user: Option<String>,
    pub last_transition_time: Option<NaiveDateTime>,
    pub last_transition_time_seconds: Option<i64>,
    pub duplicate: Option<bool>,
    pub latest_run_id: Option<String>,
}

/// A new `job_run` row.
#[derive(Debug, Clone, PartialEq)]
pub struct CreateJobRun {
    pub run_id: String,
    pub job_id: String,
    pub cluster: String,
    pub node: Option<String>,
    pub pool: String,
    pub leased: Option<NaiveDateTime>,
    pub pending: Option<NaiveDateTime>,
    pub job_run_state: i16,
}

/// A change to an existing `job_run` row; `None` keeps the stored value.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UpdateJobRun {
    pub run_id: String,
    pub node: Option<String>,
    pub pending: Option<NaiveDateTime>,
    pub started: Option<NaiveDateTime>,
    pub finished: Option<NaiveDateTime>,
    pub job_run_state: Option<i16>,
    /// zlib stream of the error text.
    pub error: Option<Vec<u8>>,
    /// zlib stream of the debug text.
    pub debug: Option<Vec<u8>>,
    pub exit_code: Option<i32>,
    /// Port → address, stored as a JSON object with the ports as keys.
    pub ingress_addresses: Option<BTreeMap<i32, String>>,
    /// Sparse FailureInfo object, already built (generation 031 only).
    pub failure_info: Option<serde_json::Value>,
    /// Category of the terminal error (generation 032 on).
    pub failure_category: Option<String>,
    /// Subcategory of the terminal error (generation 032 on).
    pub failure_subcategory: Option<String>,
    /// Why the scheduler ended the run, already built (generation 034 on).
    pub scheduler_termination_reason: Option<serde_json::Value>,
}

/// A new `job_error` row (the reason a job was rejected).
#[derive(Debug, Clone, PartialEq)]
pub struct CreateJobError {
    pub job_id: String,
    /// zlib stream of the error text.
    pub error: Vec<u8>,
}

/// Everything one batch of events asks of the database, in event order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct InstructionSet {
    pub jobs_to_create: Vec<CreateJob>,
    pub jobs_to_update: Vec<UpdateJob>,
    pub runs_to_create: Vec<CreateJobRun>,
    pub runs_to_update: Vec<UpdateJobRun>,
    pub job_errors_to_create: Vec<CreateJobError>,
}

impl InstructionSet {
    pub fn is_empty(&self) -> bool {
        self.jobs_to_create.is_empty()
            && self.jobs_to_update.is_empty()
            && self.runs_to_create.is_empty()
            && self.runs_to_update.is_empty()
            && self.job_errors_to_create.is_empty()
    }

    /// Appends another set, keeping event order.
    pub fn extend(&mut self, other: InstructionSet) {
        self.jobs_to_create.extend(other.jobs_to_create);
        self.jobs_to_update.extend(other.jobs_to_update);
        self.runs_to_create.extend(other.runs_to_create);
        self.runs_to_update.extend(other.runs_to_update);
        self.job_errors_to_create.extend(other.job_errors_to_create);
    }
}
