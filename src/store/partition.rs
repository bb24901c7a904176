//! Pure: splits one conflated batch into parts that can be written at the
//! same time, each in its own transaction on its own connection.
//!
//! The Postgres backend running a batch's statements is the ingester's
//! critical path, and one backend uses one core. Two parts written
//! concurrently keep two backends busy. They must not depend on each
//! other: a statement of one part never needs a row the other inserts, and
//! the two never write the same row (so they cannot deadlock or wait on each
//! other's row locks). Splitting by job gives that: a job's creation, spec,
//! update and error, the runs created for it in the batch and their
//! updates all land in the same part. An update of a run created in an
//! earlier batch needs nothing of this batch (its row is committed) and goes
//! by its run id.
//!
//! Inside a part, rows keep their order in the batch, and every part
//! remembers where its updates came from, so that reports can be put back
//! in batch order whatever the number of parts.

use super::copy::Conflated;
use super::{Table, Unmatched};
use crate::idhash::HashMap;

/// One part of a batch.
#[derive(Debug, Default)]
pub(crate) struct Part {
    pub(crate) batch: Conflated,
    /// For each of `batch.job_updates`, its index in the whole batch's.
    pub(crate) job_update_at: Vec<usize>,
    /// For each of `batch.run_updates`, its index in the whole batch's.
    pub(crate) run_update_at: Vec<usize>,
}

impl Part {
    /// Pairs each of `unmatched` (updates of this part that matched no row)
    /// with its place in the whole batch: job updates before run updates,
    /// each by position, so that sorting the pairs of all parts gives the
    /// order one part would have.
    pub(crate) fn in_batch_order(
        &self,
        unmatched: Vec<Unmatched>,
    ) -> Vec<((u8, usize), Unmatched)> {
        if unmatched.is_empty() {
            return Vec::new();
        }
        let jobs: HashMap<&str, usize> = (self.batch.job_updates.iter().map(|u| u.job_id.as_str()))
            .zip(self.job_update_at.iter().copied())
            .collect();
        let runs: HashMap<&str, usize> = (self.batch.run_updates.iter().map(|u| u.run_id.as_str()))
            .zip(self.run_update_at.iter().copied())
            .collect();
        unmatched
            .into_iter()
            .map(|u| {
                let (rank, at) = match u.table {
                    Table::Job => (0, jobs.get(u.key.as_str())),
                    _ => (1, runs.get(u.key.as_str())),
                };
                ((rank, at.copied().unwrap_or(usize::MAX)), u)
            })
            .collect()
    }
}

/// 64-bit FNV-1a of `bytes`: the same on every run and platform, unlike
/// std's hashers.
pub(crate) fn fnv1a(bytes: impl IntoIterator<Item = u8>) -> u64 {
    bytes.into_iter().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// Which of `parts` parts `key` belongs to: FNV-1a, then MurmurHash3's
/// finaliser (FNV's low bits alone are poorly mixed: its lowest is the
/// parity of the odd bytes), so the same key goes to the same part on every
/// run and platform.
pub(crate) fn part_of(key: &str, parts: usize) -> usize {
    let mut hash = fnv1a(key.bytes());
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    hash ^= hash >> 33;
    (hash % parts.max(1) as u64) as usize
}

/// Splits `batch` into `parts` parts (at least one), by job. A part may be
/// empty.
pub(crate) fn partition(batch: Conflated, parts: usize) -> Vec<Part> {
    let parts = parts.max(1);
    if parts == 1 {
        return vec![Part {
            job_update_at: (0..batch.job_updates.len()).collect(),
            run_update_at: (0..batch.run_updates.len()).collect(),
            batch,
        }];
    }
    // Runs created in this batch go with their job, and so do their updates.
    let run_part: HashMap<&str, usize> = batch
        .runs
        .iter()
        .map(|r| (r.run.run_id.as_str(), part_of(&r.run.job_id, parts)))
        .collect();
    let run_update_parts: Vec<usize> = batch
        .run_updates
        .iter()
        .map(|u| {
            run_part
                .get(u.run_id.as_str())
                .copied()
                .unwrap_or_else(|| part_of(&u.run_id, parts))
        })
        .collect();
    drop(run_part);

    let Conflated {
        jobs,
        job_updates,
        runs,
        run_updates,
        job_errors,
        mut folded_jobs,
        mut folded_runs,
    } = batch;
    let mut out: Vec<Part> = (0..parts).map(|_| Part::default()).collect();
    // `part_of` is below `parts`, so `get_mut` cannot miss; it keeps that
    // from being a panic if it ever did.
    fn at(out: &mut [Part], p: usize) -> Option<&mut Conflated> {
        out.get_mut(p).map(|p| &mut p.batch)
    }
    for job in jobs {
        if let Some(b) = at(&mut out, part_of(&job.job.job_id, parts)) {
            if let Some(id) = folded_jobs.take(&job.job.job_id) {
                b.folded_jobs.insert(id);
            }
            b.jobs.push(job);
        }
    }
    for error in job_errors {
        if let Some(b) = at(&mut out, part_of(&error.job_id, parts)) {
            b.job_errors.push(error);
        }
    }
    for run in runs {
        if let Some(b) = at(&mut out, part_of(&run.run.job_id, parts)) {
            if let Some(id) = folded_runs.take(&run.run.run_id) {
                b.folded_runs.insert(id);
            }
            b.runs.push(run);
        }
    }
    for (i, update) in job_updates.into_iter().enumerate() {
        let p = part_of(&update.job_id, parts);
        if let Some(part) = out.get_mut(p) {
            part.batch.job_updates.push(update);
            part.job_update_at.push(i);
        }
    }
    for ((i, update), p) in run_updates.into_iter().enumerate().zip(run_update_parts) {
        if let Some(part) = out.get_mut(p) {
            part.batch.run_updates.push(update);
            part.run_update_at.push(i);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{CreateJob, CreateJobError, CreateJobRun, UpdateJob, UpdateJobRun};
    use crate::store::conflate::{fold_job_updates, fold_run_updates};

    fn job(id: &str) -> CreateJob {
        crate::store::conflate::tests::create(id, 1)
    }

    fn run(id: &str, job_id: &str) -> CreateJobRun {
        CreateJobRun {
            run_id: id.into(),
            job_id: job_id.into(),
            cluster: "c".into(),
            node: None,
            pool: "p".into(),
            leased: None,
            pending: None,
            job_run_state: 1,
        }
    }

    fn batch(n: usize) -> Conflated {
        let ids: Vec<String> = (0..n).map(|i| format!("job-{i:04}")).collect();
        let job_updates: Vec<UpdateJob> = ids
            .iter()
            .step_by(2)
            .map(|id| UpdateJob {
                job_id: id.clone(),
                state: Some(2),
                ..Default::default()
            })
            .collect();
        let mut run_updates: Vec<UpdateJobRun> = ids
            .iter()
            .map(|id| UpdateJobRun {
                run_id: format!("run-of-{id}"),
                job_run_state: Some(3),
                ..Default::default()
            })
            .collect();
        // Runs created in an earlier batch.
        run_updates.extend((0..n).map(|i| UpdateJobRun {
            run_id: format!("old-run-{i}"),
            ..Default::default()
        }));
        let (jobs, folded_jobs) =
            fold_job_updates(ids.iter().map(|id| job(id)).collect(), &job_updates);
        let (runs, folded_runs) = fold_run_updates(
            ids.iter()
                .map(|id| run(&format!("run-of-{id}"), id))
                .collect(),
            &run_updates,
        );
        Conflated {
            jobs,
            job_updates,
            runs,
            run_updates,
            job_errors: ids
                .iter()
                .step_by(3)
                .map(|id| CreateJobError {
                    job_id: id.clone(),
                    error: vec![1],
                })
                .collect(),
            folded_jobs,
            folded_runs,
        }
    }

    #[test]
    fn part_of_is_stable_and_spreads() {
        assert_eq!(part_of("job-0001", 1), 0);
        assert_eq!(part_of("abc", 2), part_of("abc", 2));
        let ones = (0..1000)
            .filter(|i| part_of(&format!("job-{i}"), 2) == 1)
            .count();
        assert!((400..600).contains(&ones), "{ones} of 1000 in part 1");
        // A prefix with an even number of odd bytes does not keep the part
        // (it would with FNV's low bit).
        let same = (0..1000)
            .filter(|i| part_of(&format!("job-{i}"), 2) == part_of(&format!("run-of-job-{i}"), 2))
            .count();
        assert!((400..600).contains(&same), "{same} of 1000 keep their part");
    }

    #[test]
    fn one_part_is_the_batch() {
        let parts = partition(batch(10), 1);
        assert_eq!(parts.len(), 1);
        let p = &parts[0];
        assert_eq!(p.batch.jobs.len(), 10);
        assert_eq!(p.job_update_at, (0..5).collect::<Vec<_>>());
        assert_eq!(p.run_update_at, (0..20).collect::<Vec<_>>());
    }

    #[test]
    fn a_job_and_everything_of_it_share_a_part() {
        let whole = batch(200);
        let folded_jobs = whole.folded_jobs.len();
        let folded_runs = whole.folded_runs.len();
        let parts = partition(whole, 2);
        assert_eq!(parts.len(), 2);
        let mut owner: HashMap<String, usize> = HashMap::default();
        for (p, part) in parts.iter().enumerate() {
            assert!(!part.batch.jobs.is_empty(), "part {p} is empty");
            for j in &part.batch.jobs {
                owner.insert(j.job.job_id.clone(), p);
            }
        }
        let run_job: HashMap<String, String> = parts
            .iter()
            .flat_map(|p| p.batch.runs.iter())
            .map(|r| (r.run.run_id.clone(), r.run.job_id.clone()))
            .collect();
        for (p, part) in parts.iter().enumerate() {
            let b = &part.batch;
            assert!(b.job_updates.iter().all(|u| owner[&u.job_id] == p));
            assert!(b.job_errors.iter().all(|e| owner[&e.job_id] == p));
            assert!(b.runs.iter().all(|r| owner[&r.run.job_id] == p));
            for u in &b.run_updates {
                if let Some(job) = run_job.get(&u.run_id) {
                    assert_eq!(owner[job], p, "update of {} away from its run", u.run_id);
                }
            }
            assert!(b.folded_jobs.iter().all(|id| owner[id] == p));
            assert!(b.folded_runs.iter().all(|id| owner[&run_job[id]] == p));
            // Batch order is kept, and the positions say where each came from.
            assert!(part.job_update_at.windows(2).all(|w| w[0] < w[1]));
            assert!(part.run_update_at.windows(2).all(|w| w[0] < w[1]));
            assert_eq!(part.job_update_at.len(), b.job_updates.len());
            assert_eq!(part.run_update_at.len(), b.run_updates.len());
        }
        let total = |f: fn(&Part) -> usize| parts.iter().map(f).sum::<usize>();
        assert_eq!(total(|p| p.batch.jobs.len()), 200);
        assert_eq!(total(|p| p.batch.runs.len()), 200);
        assert_eq!(total(|p| p.batch.job_updates.len()), 100);
        assert_eq!(total(|p| p.batch.run_updates.len()), 400);
        assert_eq!(total(|p| p.batch.job_errors.len()), 67);
        assert_eq!(total(|p| p.batch.folded_jobs.len()), folded_jobs);
        assert_eq!(total(|p| p.batch.folded_runs.len()), folded_runs);
        // Unmatched keys of both parts sort back into batch order.
        let mut pairs: Vec<((u8, usize), Unmatched)> = Vec::new();
        for part in parts.iter().rev() {
            let keys = (part
                .batch
                .run_updates
                .iter()
                .map(|u| (Table::JobRun, u.run_id.clone())))
            .chain(
                part.batch
                    .job_updates
                    .iter()
                    .map(|u| (Table::Job, u.job_id.clone())),
            );
            pairs.extend(
                part.in_batch_order(keys.map(|(table, key)| Unmatched { table, key }).collect()),
            );
        }
        pairs.sort_by_key(|(order, _)| *order);
        let keys: Vec<String> = pairs.into_iter().map(|(_, u)| u.key).collect();
        let expected: Vec<String> = (0..200)
            .step_by(2)
            .map(|i| format!("job-{i:04}"))
            .chain((0..200).map(|i| format!("run-of-job-{i:04}")))
            .chain((0..200).map(|i| format!("old-run-{i}")))
            .collect();
        assert_eq!(keys, expected);
        // Every position appears once.
        let mut seen: Vec<usize> = parts
            .iter()
            .flat_map(|p| p.run_update_at.iter().copied())
            .collect();
        seen.sort_unstable();
        assert_eq!(seen, (0..400).collect::<Vec<_>>());
    }
}
