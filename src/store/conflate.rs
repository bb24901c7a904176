//! Pure batch pre-processing: merge the updates of one batch per key.
//!
//! Several events for the same job or run usually land in one batch (leased,
//! pending, running, succeeded...). Writing them as one row each is cheaper and,
//! more importantly, the set-based `UPDATE ... FROM tmp` needs at most one
//! source row per target row to be well defined.
//!
//! Output order is the order of first appearance in the input, so the same
//! batch always produces the same statements (reproducible failures).
//! Unlike upstream, every field is carried over (upstream loses
//! `cancel_reason`, `cancel_user` and a run's `pending`).

use crate::idhash::{HashMap, HashSet};
use crate::model::{job_state, CreateJob, CreateJobError, CreateJobRun, UpdateJob, UpdateJobRun};

/// Replaces `slot` with `new` when `new` is set: "later non-None value wins".
fn take<T>(slot: &mut Option<T>, new: Option<T>) {
    if new.is_some() {
        *slot = new;
    }
}

fn merge_job(existing: &mut UpdateJob, u: UpdateJob) {
    take(&mut existing.priority, u.priority);
    take(&mut existing.state, u.state);
    take(&mut existing.cancelled, u.cancelled);
    take(&mut existing.cancel_reason, u.cancel_reason);
    take(&mut existing.cancel_user, u.cancel_user);
    take(&mut existing.last_transition_time, u.last_transition_time);
    take(
        &mut existing.last_transition_time_seconds,
        u.last_transition_time_seconds,
    );
    take(&mut existing.duplicate, u.duplicate);
    take(&mut existing.latest_run_id, u.latest_run_id);
}

fn merge_run(existing: &mut UpdateJobRun, u: UpdateJobRun) {
    take(&mut existing.node, u.node);
    take(&mut existing.pending, u.pending);
    take(&mut existing.started, u.started);
    take(&mut existing.finished, u.finished);
    take(&mut existing.job_run_state, u.job_run_state);
    take(&mut existing.error, u.error);
    take(&mut existing.debug, u.debug);
    take(&mut existing.exit_code, u.exit_code);
    take(&mut existing.ingress_addresses, u.ingress_addresses);
    take(&mut existing.failure_info, u.failure_info);
    take(&mut existing.failure_category, u.failure_category);
    take(&mut existing.failure_subcategory, u.failure_subcategory);
    take(
        &mut existing.scheduler_termination_reason,
        u.scheduler_termination_reason,
    );
}

/// Groups `items` by `key`, keeping first-appearance order, folding later
/// items into the first with `merge`.
fn conflate_by<T>(
    items: Vec<T>,
    key: impl Fn(&T) -> &str,
    mut merge: impl FnMut(&mut T, T),
) -> Vec<T> {
    let mut index: HashMap<String, usize> =
        HashMap::with_capacity_and_hasher(items.len(), Default::default());
    let mut out: Vec<T> = Vec::with_capacity(items.len());
    for item in items {
        match index.get(key(&item)) {
            Some(&i) => {
                if let Some(existing) = out.get_mut(i) {
                    merge(existing, item);
                }
            }
            None => {
                index.insert(key(&item).to_string(), out.len());
                out.push(item);
            }
        }
    }
    out
}

/// One update per job. Once the merged update is terminal, later updates are
/// dropped (Armada keeps emitting e.g. "running" after a job finished, which
/// would resurrect it), except PREEMPTED, which overrides a terminal state
/// (a job can be reported failed after being preempted; it stays preempted).
pub(crate) fn conflate_job_updates(updates: Vec<UpdateJob>) -> Vec<UpdateJob> {
    conflate_by(
        updates,
        |u| u.job_id.as_str(),
        |existing, u| {
            let terminal = existing.state.is_some_and(job_state::is_terminal);
            if !terminal || u.state == Some(job_state::PREEMPTED) {
                merge_job(existing, u);
            }
        },
    )
}

/// One update per run; no terminal rule for runs (as upstream).
pub(crate) fn conflate_run_updates(updates: Vec<UpdateJobRun>) -> Vec<UpdateJobRun> {
    conflate_by(updates, |u| u.run_id.as_str(), merge_run)
}

/// Keeps the first creation per key. The database would do the same through
/// `ON CONFLICT DO NOTHING`; doing it here keeps which row wins deterministic
/// and the temp tables small.
fn first_by_key<T>(items: Vec<T>, key: impl Fn(&T) -> &str) -> Vec<T> {
    conflate_by(items, key, |_, _| {})
}

pub(crate) fn dedup_job_creations(jobs: Vec<CreateJob>) -> Vec<CreateJob> {
    first_by_key(jobs, |j| j.job_id.as_str())
}

pub(crate) fn dedup_run_creations(runs: Vec<CreateJobRun>) -> Vec<CreateJobRun> {
    first_by_key(runs, |r| r.run_id.as_str())
}

pub(crate) fn dedup_job_errors(errors: Vec<CreateJobError>) -> Vec<CreateJobError> {
    first_by_key(errors, |e| e.job_id.as_str())
}

/// A job to create, with the update of the same batch folded in (empty if
/// none): the row is inserted as the update would leave it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct NewJob {
    pub(crate) job: CreateJob,
    /// `job_id` is empty when nothing was folded.
    pub(crate) update: UpdateJob,
}

/// A run to create, with the update of the same batch folded in.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct NewRun {
    pub(crate) run: CreateJobRun,
    /// `run_id` is empty when nothing was folded.
    pub(crate) update: UpdateJobRun,
}

/// Whether the store's terminal rule lets an update with state `new` change
/// a job in `state` (the same rule as the job update's `WHERE`).
fn applies(state: i16, new: Option<i16>) -> bool {
    !job_state::is_terminal(state)
        || (new == Some(job_state::PREEMPTED)
            && [
                job_state::SUCCEEDED,
                job_state::FAILED,
                job_state::CANCELLED,
            ]
            .contains(&state))
}

/// Folds each (conflated) job update into the creation of its job in the
/// same batch, where the terminal rule would let the update change the
/// freshly created row. Returns the creations and the ids folded. The
/// updates themselves stay: the store skips one only once its job's
/// creation was actually inserted (the job may exist already, e.g. on a
/// redelivery, and then the update applies to the stored row as before).
pub(crate) fn fold_job_updates(
    jobs: Vec<CreateJob>,
    updates: &[UpdateJob],
) -> (Vec<NewJob>, HashSet<String>) {
    let by_id: HashMap<&str, &UpdateJob> = updates.iter().map(|u| (u.job_id.as_str(), u)).collect();
    let mut folded = HashSet::default();
    let jobs = jobs
        .into_iter()
        .map(|job| {
            let update = match by_id.get(job.job_id.as_str()) {
                Some(u) if applies(job.state, u.state) => {
                    folded.insert(job.job_id.clone());
                    (*u).clone()
                }
                _ => UpdateJob::default(),
            };
            NewJob { job, update }
        })
        .collect();
    (jobs, folded)
}

/// The same for runs, which have no terminal rule: every run update whose
/// run is created in the batch is folded.
pub(crate) fn fold_run_updates(
    runs: Vec<CreateJobRun>,
    updates: &[UpdateJobRun],
) -> (Vec<NewRun>, HashSet<String>) {
    let by_id: HashMap<&str, &UpdateJobRun> =
        updates.iter().map(|u| (u.run_id.as_str(), u)).collect();
    let mut folded = HashSet::default();
    let runs = runs
        .into_iter()
        .map(|run| {
            let update = match by_id.get(run.run_id.as_str()) {
                Some(u) => {
                    folded.insert(run.run_id.clone());
                    (*u).clone()
                }
                None => UpdateJobRun::default(),
            };
            NewRun { run, update }
        })
        .collect();
    (runs, folded)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::model::job_state::*;
    use chrono::NaiveDateTime;
    use std::collections::BTreeMap;

    fn t(s: i64) -> NaiveDateTime {
        chrono::DateTime::from_timestamp(s, 0)
            .expect("valid timestamp")
            .naive_utc()
    }

    fn ju(id: &str, state: Option<i16>) -> UpdateJob {
        UpdateJob {
            job_id: id.to_string(),
            state,
            ..Default::default()
        }
    }

    #[test]
    fn keeps_first_appearance_order() {
        let ids = ["c", "a", "b", "a", "c", "d", "b"];
        let out = conflate_job_updates(ids.iter().map(|i| ju(i, None)).collect());
        let got: Vec<&str> = out.iter().map(|u| u.job_id.as_str()).collect();
        assert_eq!(got, ["c", "a", "b", "d"]);

        let runs: Vec<UpdateJobRun> = ids
            .iter()
            .map(|i| UpdateJobRun {
                run_id: i.to_string(),
                ..Default::default()
            })
            .collect();
        let got: Vec<String> = conflate_run_updates(runs)
            .into_iter()
            .map(|u| u.run_id)
            .collect();
        assert_eq!(got, ["c", "a", "b", "d"]);
    }

    #[test]
    fn merges_every_job_field_later_wins() {
        let first = UpdateJob {
            job_id: "j".into(),
            priority: Some(1),
            state: Some(QUEUED),
            cancelled: Some(t(1)),
            cancel_reason: Some("r1".into()),
            cancel_user: Some("u1".into()),
            last_transition_time: Some(t(1)),
            last_transition_time_seconds: Some(1),
            duplicate: Some(false),
            latest_run_id: Some("run1".into()),
        };
        let second = UpdateJob {
            job_id: "j".into(),
            priority: Some(2),
            state: Some(RUNNING),
            cancelled: Some(t(2)),
            cancel_reason: Some("r2".into()),
            cancel_user: Some("u2".into()),
            last_transition_time: Some(t(2)),
            last_transition_time_seconds: Some(2),
            duplicate: Some(true),
            latest_run_id: Some("run2".into()),
        };
        let out = conflate_job_updates(vec![first, second.clone()]);
        assert_eq!(out, vec![second.clone()]);

        // None never erases an earlier value.
        let out = conflate_job_updates(vec![second.clone(), ju("j", None)]);
        assert_eq!(out, vec![second]);
    }

    #[test]
    fn cancel_reason_and_user_survive() {
        // Upstream's bug: cancel_reason/cancel_user of a later update were lost.
        let a = UpdateJob {
            job_id: "j".into(),
            priority: Some(3),
            ..Default::default()
        };
        let b = UpdateJob {
            job_id: "j".into(),
            state: Some(CANCELLED),
            cancel_reason: Some("because".into()),
            cancel_user: Some("alice".into()),
            ..Default::default()
        };
        let out = conflate_job_updates(vec![a, b]);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].priority, Some(3));
        assert_eq!(out[0].state, Some(CANCELLED));
        assert_eq!(out[0].cancel_reason.as_deref(), Some("because"));
        assert_eq!(out[0].cancel_user.as_deref(), Some("alice"));
    }

    #[test]
    fn terminal_state_blocks_later_updates_except_preempted() {
        for terminal in TERMINAL {
            let out = conflate_job_updates(vec![
                ju("j", Some(terminal)),
                UpdateJob {
                    job_id: "j".into(),
                    state: Some(RUNNING),
                    priority: Some(9),
                    ..Default::default()
                },
            ]);
            assert_eq!(out, vec![ju("j", Some(terminal))], "state {terminal}");

            // A later update without a state is also ignored.
            let out = conflate_job_updates(vec![
                ju("j", Some(terminal)),
                UpdateJob {
                    job_id: "j".into(),
                    priority: Some(9),
                    ..Default::default()
                },
            ]);
            assert_eq!(out[0].priority, None);

            // PREEMPTED merges whole.
            let out = conflate_job_updates(vec![
                ju("j", Some(terminal)),
                UpdateJob {
                    job_id: "j".into(),
                    state: Some(PREEMPTED),
                    priority: Some(9),
                    ..Default::default()
                },
            ]);
            assert_eq!(out[0].state, Some(PREEMPTED));
            assert_eq!(out[0].priority, Some(9));
        }
        // Failed after preempted: stays preempted.
        let out = conflate_job_updates(vec![ju("j", Some(PREEMPTED)), ju("j", Some(FAILED))]);
        assert_eq!(out[0].state, Some(PREEMPTED));
        // Non-terminal states keep merging.
        let out = conflate_job_updates(vec![
            ju("j", Some(QUEUED)),
            ju("j", Some(LEASED)),
            ju("j", Some(PENDING)),
            ju("j", Some(RUNNING)),
            ju("j", Some(SUCCEEDED)),
            ju("j", Some(RUNNING)),
        ]);
        assert_eq!(out[0].state, Some(SUCCEEDED));
    }

    #[test]
    fn merges_every_run_field_including_pending() {
        let mut ingress = BTreeMap::new();
        ingress.insert(8080, "10.0.0.1".to_string());
        let a = UpdateJobRun {
            run_id: "r".into(),
            pending: Some(t(5)),
            node: Some("n1".into()),
            ..Default::default()
        };
        let b = UpdateJobRun {
            run_id: "r".into(),
            node: Some("n2".into()),
            started: Some(t(6)),
            ..Default::default()
        };
        let c = UpdateJobRun {
            run_id: "r".into(),
            finished: Some(t(7)),
            job_run_state: Some(crate::model::run_state::FAILED),
            error: Some(vec![1, 2]),
            debug: Some(vec![3]),
            exit_code: Some(137),
            ingress_addresses: Some(ingress.clone()),
            failure_info: Some(serde_json::json!({"exitCode": 137})),
            failure_category: Some("oom".into()),
            failure_subcategory: Some("container".into()),
            scheduler_termination_reason: Some(serde_json::json!({"reason": "x"})),
            ..Default::default()
        };
        let out = conflate_run_updates(vec![a, b, c]);
        assert_eq!(
            out,
            vec![UpdateJobRun {
                run_id: "r".into(),
                node: Some("n2".into()),
                pending: Some(t(5)),
                started: Some(t(6)),
                finished: Some(t(7)),
                job_run_state: Some(crate::model::run_state::FAILED),
                error: Some(vec![1, 2]),
                debug: Some(vec![3]),
                exit_code: Some(137),
                ingress_addresses: Some(ingress),
                failure_info: Some(serde_json::json!({"exitCode": 137})),
                failure_category: Some("oom".into()),
                failure_subcategory: Some("container".into()),
                scheduler_termination_reason: Some(serde_json::json!({"reason": "x"})),
            }]
        );
    }

    #[test]
    fn runs_have_no_terminal_rule() {
        let a = UpdateJobRun {
            run_id: "r".into(),
            job_run_state: Some(crate::model::run_state::SUCCEEDED),
            ..Default::default()
        };
        let b = UpdateJobRun {
            run_id: "r".into(),
            job_run_state: Some(crate::model::run_state::RUNNING),
            ..Default::default()
        };
        let out = conflate_run_updates(vec![a, b]);
        assert_eq!(out[0].job_run_state, Some(crate::model::run_state::RUNNING));
    }

    /// A job creation with fixed values (also for `partition`'s and
    /// `hold`'s tests).
    pub(crate) fn create(id: &str, state: i16) -> CreateJob {
        CreateJob {
            job_id: id.into(),
            queue: "q".into(),
            owner: "o".into(),
            namespace: "n".into(),
            jobset: "s".into(),
            cpu: 1,
            memory: 2,
            ephemeral_storage: 3,
            gpu: 0,
            priority: 5,
            submitted: t(1),
            state,
            last_transition_time: t(1),
            last_transition_time_seconds: 1,
            job_spec: vec![],
            priority_class: None,
            annotations: BTreeMap::new(),
            external_job_uri: String::new(),
        }
    }

    #[test]
    fn updates_fold_into_creations_the_terminal_rule_lets_them_change() {
        let running = UpdateJob {
            state: Some(RUNNING),
            latest_run_id: Some("r".into()),
            ..ju("new", None)
        };
        let updates = vec![
            running.clone(),
            ju("elsewhere", Some(FAILED)),
            ju("rejected", Some(RUNNING)),
            ju("succeeded", Some(PREEMPTED)),
        ];
        let jobs = vec![
            create("new", QUEUED),
            create("rejected", REJECTED),
            create("succeeded", SUCCEEDED),
            create("alone", QUEUED),
        ];
        let (jobs, folded) = fold_job_updates(jobs, &updates);
        let got: Vec<(&str, &UpdateJob)> = jobs
            .iter()
            .map(|j| (j.job.job_id.as_str(), &j.update))
            .collect();
        let none = UpdateJob::default();
        assert_eq!(
            got,
            [
                ("new", &running),
                // A terminal job takes no update, but PREEMPTED.
                ("rejected", &none),
                ("succeeded", &ju("succeeded", Some(PREEMPTED))),
                ("alone", &none),
            ]
        );
        // The creations are untouched; "elsewhere" has none in the batch.
        assert_eq!(jobs[0].job, create("new", QUEUED));
        let mut folded: Vec<String> = folded.into_iter().collect();
        folded.sort();
        assert_eq!(folded, ["new", "succeeded"]);
    }

    #[test]
    fn every_run_update_folds_into_its_creation() {
        let run = |id: &str| CreateJobRun {
            run_id: id.into(),
            job_id: "j".into(),
            cluster: "c".into(),
            node: Some("n1".into()),
            pool: "p".into(),
            leased: Some(t(1)),
            pending: None,
            job_run_state: crate::model::run_state::LEASED,
        };
        let finished = UpdateJobRun {
            run_id: "r1".into(),
            finished: Some(t(9)),
            job_run_state: Some(crate::model::run_state::SUCCEEDED),
            ..Default::default()
        };
        let updates = vec![
            UpdateJobRun {
                run_id: "other".into(),
                ..Default::default()
            },
            finished.clone(),
        ];
        let (runs, folded) = fold_run_updates(vec![run("r1"), run("r2")], &updates);
        assert_eq!(runs[0].run, run("r1"));
        assert_eq!(runs[0].update, finished);
        assert_eq!(runs[1].update, UpdateJobRun::default());
        assert_eq!(folded, HashSet::from_iter(["r1".to_string()]));
    }

    #[test]
    fn creations_keep_first() {
        let e = |id: &str, b: u8| CreateJobError {
            job_id: id.into(),
            error: vec![b],
        };
        let out = dedup_job_errors(vec![e("x", 1), e("y", 2), e("x", 3)]);
        assert_eq!(out, vec![e("x", 1), e("y", 2)]);
    }
}
