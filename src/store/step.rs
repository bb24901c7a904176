//! The store's vocabulary: tables, operations, and the steps that pair them.
//!
//! Each name is spelled once, in an `as_str`, and those strings are the
//! `table` and `operation` metric labels and the words of logs and reports.

use std::fmt;

/// A Lookout table the store writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Table {
    Job,
    JobSpec,
    JobRun,
    JobError,
}

impl Table {
    /// The table's name in SQL and in metric labels.
    pub fn as_str(self) -> &'static str {
        match self {
            Table::Job => "job",
            Table::JobSpec => "job_spec",
            Table::JobRun => "job_run",
            Table::JobError => "job_error",
        }
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a step does to its table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Operation {
    Insert,
    Update,
}

impl Operation {
    /// The operation's metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Operation::Insert => "insert",
            Operation::Update => "update",
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One unit of work, in the order upstream applies them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    JobInsert,
    JobSpecInsert,
    JobUpdate,
    RunInsert,
    JobErrorInsert,
    RunUpdate,
}

/// Jobs (and their specs) first, since everything else refers to them; runs
/// before run updates, so an update sees a run created in the same batch.
pub(crate) const STEPS: [Step; 6] = [
    Step::JobInsert,
    Step::JobSpecInsert,
    Step::JobUpdate,
    Step::RunInsert,
    Step::JobErrorInsert,
    Step::RunUpdate,
];

impl Step {
    pub(crate) fn table(self) -> Table {
        match self {
            Step::JobInsert | Step::JobUpdate => Table::Job,
            Step::JobSpecInsert => Table::JobSpec,
            Step::RunInsert | Step::RunUpdate => Table::JobRun,
            Step::JobErrorInsert => Table::JobError,
        }
    }

    pub(crate) fn operation(self) -> Operation {
        match self {
            Step::JobUpdate | Step::RunUpdate => Operation::Update,
            _ => Operation::Insert,
        }
    }
}

/// `job insert`, `job_run update`, …: how logs name the step.
impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.table(), self.operation())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_metric_labels() {
        let names: Vec<String> = STEPS.iter().map(|s| s.to_string()).collect();
        assert_eq!(
            names,
            [
                "job insert",
                "job_spec insert",
                "job update",
                "job_run insert",
                "job_error insert",
                "job_run update"
            ]
        );
    }
}
