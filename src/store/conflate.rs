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

use crate::model::{job_state, CreateJob, CreateJobError, CreateJobRun, UpdateJob, UpdateJobRun};
use std::collections::HashMap;

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
    let mut index: HashMap<String, usize> = HashMap::with_capacity(items.len());
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

#[cfg(test)]
mod tests {
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
