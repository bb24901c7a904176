//! `dead-letters retry`: sends stored dead letters through the normal path
//! again (typically after an upgrade that can handle them, or after the
//! missing row arrived) and removes those that now apply in full.

use prost_types::Timestamp;

use crate::convert::{Converter, Problem, Reason};
use crate::deadletter::{DeadLetters, Stored};
use crate::pipeline::{self, MessageOutcome};
use crate::store::Store;

/// What a retry did.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Outcome {
    /// Applied in full and removed.
    pub applied: Vec<i64>,
    /// Still failing (kept, with the new reason and a retry count).
    pub still_failing: Vec<(i64, String)>,
    pub missing: Vec<i64>,
}

pub async fn retry(
    dead: &DeadLetters,
    store: &Store,
    converter: &Converter,
    ids: &[i64],
) -> anyhow::Result<Outcome> {
    let mut out = Outcome::default();
    for &id in ids {
        let Some(d) = dead.get(id).await? else {
            out.missing.push(id);
            continue;
        };
        match attempt(&d, store, converter).await? {
            None => {
                dead.delete(id).await?;
                out.applied.push(id);
            }
            Some((reason, error)) => {
                dead.retried(id, &reason, &error).await?;
                out.still_failing.push((id, reason));
            }
        }
    }
    Ok(out)
}

/// Applies one dead letter; `None` when everything in it now applies.
async fn attempt(
    d: &Stored,
    store: &Store,
    converter: &Converter,
) -> anyhow::Result<Option<(String, String)>> {
    let publish_time = d.publish_time.map(|t| Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    });
    let mut m = MessageOutcome {
        payload: d.payload.clone(),
        publish_time,
        ..MessageOutcome::default()
    };
    let mut instructions = crate::model::InstructionSet::default();
    match pipeline::decode(&d.payload) {
        Err(e) => m.problems.push(Problem {
            event_index: None,
            reason: Reason::Decode,
            detail: e.to_string(),
            skipped: true,
        }),
        Ok(seq) => {
            let c = converter.convert(&seq, publish_time.as_ref());
            m.problems = c.problems;
            (m.job_ids, m.run_ids) = pipeline::keys(&c.instructions);
            instructions = c.instructions;
        }
    }
    let write = store.write(instructions).await?;
    let letters = pipeline::dead_letters(std::slice::from_ref(&m), &write);
    Ok(letters.into_iter().next().map(|l| (l.reason, l.error)))
}
