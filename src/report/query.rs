//! The failed runs of both periods, read from `job_run` (joined to `job`
//! for the queue) with the columns the database's generation has, and
//! streamed into an [`Aggregator`] a page at a time, so memory does not grow
//! with the number of runs.

use anyhow::Context;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, IsolationLevel};

use super::{Aggregator, FailedRun, Period, Report};
use crate::model::{run_state, Generation};
use crate::store::schema;

/// Rows fetched per round trip: each row holds at most about 12 KiB (error
/// and termination message prefixes), so a page stays within a few MiB.
const PAGE: i32 = 500;

/// FailureInfo's categories as a text array (none when the field is not an array).
const INFO_CATEGORIES: &str = "CASE WHEN jsonb_typeof(r.failure_info -> 'categories') = 'array'
         THEN ARRAY(SELECT jsonb_array_elements_text(r.failure_info -> 'categories'))
         ELSE '{}'::text[] END";

/// The category, subcategory, FailureInfo exit code and termination message
/// expressions at generation `g`. At 032 both column sets exist: rows
/// written at 031, before the migration, still hold only FailureInfo.
fn columns(g: Generation) -> [String; 4] {
    let category = "CASE WHEN r.failure_category IS NOT NULL
         THEN ARRAY[r.failure_category::text]";
    let categories = match g {
        Generation::G031 => INFO_CATEGORIES.to_string(),
        Generation::G032 => format!("{category} ELSE {INFO_CATEGORIES} END"),
        _ => format!("{category} ELSE '{{}}'::text[] END"),
    };
    let subcategory = if g.has_failure_category() {
        "r.failure_subcategory::text"
    } else {
        "NULL::text"
    };
    let has_info = matches!(g, Generation::G031 | Generation::G032);
    let (exit, message) = if has_info {
        (
            "r.failure_info -> 'exitCode'",
            // Only this period's messages are shown; the start is enough.
            "CASE WHEN r.finished >= $2
                   AND jsonb_typeof(r.failure_info -> 'terminationMessage') = 'string'
              THEN substring(r.failure_info ->> 'terminationMessage' FROM 1 FOR 4096) END",
        )
    } else {
        ("NULL::jsonb", "NULL::text")
    };
    [
        categories,
        subcategory.to_string(),
        exit.to_string(),
        message.to_string(),
    ]
}

/// The query at generation `g`. Parameters: $1 start of the previous
/// period, $2 start of this one, $3 its end, $4 the failed run state,
/// $5 the queue or NULL for all.
pub(crate) fn sql(g: Generation) -> String {
    let [categories, subcategory, exit, message] = columns(g);
    // 8 KiB of a zlib stream inflate to at least the 4 KiB the report reads
    // (zlib's stored blocks add 5 bytes per 64 KiB).
    format!(
        "SELECT j.queue::text, r.finished, {categories}, {subcategory}, r.exit_code, {exit},
                {message},
                CASE WHEN r.finished >= $2 THEN substring(r.error FROM 1 FOR 8192) END
           FROM job_run r
           JOIN job j ON j.job_id = r.job_id
          WHERE r.job_run_state = $4
            AND r.finished >= $1 AND r.finished < $3
            AND ($5::text IS NULL OR j.queue = $5)"
    )
}

/// Reads the failed runs of `period` and the one before, optionally of one
/// queue, and returns the report with `top` messages. One read-only
/// snapshot, so the two periods are counted from the same data.
pub async fn failures(
    client: &mut Client,
    period: Period,
    queue: Option<&str>,
    top: usize,
) -> anyhow::Result<Report> {
    let detected = schema::detect(&*client).await?;
    let g = detected.generation;
    let tx = client
        .build_transaction()
        .read_only(true)
        .isolation_level(IsolationLevel::RepeatableRead)
        .start()
        .await
        .context("cannot start a read-only transaction")?;
    let previous_from = period.previous_from().naive_utc();
    let from = period.from().naive_utc();
    let until = period.until.naive_utc();
    let state = run_state::FAILED;
    let params: [&(dyn ToSql + Sync); 5] = [&previous_from, &from, &until, &state, &queue];
    let portal = tx
        .bind(sql(g).as_str(), &params)
        .await
        .context("cannot read failed runs")?;
    let mut agg = Aggregator::new(period, top);
    loop {
        let rows = tx
            .query_portal(&portal, PAGE)
            .await
            .context("cannot read failed runs")?;
        for row in &rows {
            let run = FailedRun {
                queue: row.try_get(0)?,
                finished: row.try_get(1)?,
                categories: row
                    .try_get::<_, Vec<Option<String>>>(2)?
                    .into_iter()
                    .flatten()
                    .collect(),
                subcategory: row.try_get(3)?,
                exit_code: row.try_get(4)?,
                info_exit_code: row.try_get(5)?,
                termination_message: row.try_get(6)?,
                error: row.try_get(7)?,
            };
            agg.add(&run);
        }
        if rows.len() < PAGE as usize {
            break;
        }
    }
    tx.commit().await.context("cannot end the read")?;
    Ok(agg.finish(g, queue))
}
