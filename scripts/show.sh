#!/usr/bin/env bash
# Prints what the ingester wrote: rows per table and a few failed job runs
# with their FailureInfo.
set -euo pipefail
URL=${1:-${LOOKOUT_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/lookout}}
psql "$URL" -P pager=off -c "
  SELECT 'job' AS table_name, count(*) AS rows FROM job
  UNION ALL SELECT 'job_spec', count(*) FROM job_spec
  UNION ALL SELECT 'job_run', count(*) FROM job_run
  UNION ALL SELECT 'job_error', count(*) FROM job_error
  UNION ALL SELECT 'ingester_dead_letter', count(*) FROM ingester_dead_letter"
psql "$URL" -P pager=off -c "
  SELECT r.run_id, j.queue, r.node, r.exit_code, r.failure_info
  FROM job_run r JOIN job j USING (job_id)
  WHERE r.job_run_state = 4
  ORDER BY r.run_id LIMIT 5"
