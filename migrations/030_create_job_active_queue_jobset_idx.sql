-- lookout-ingester: no-transaction
-- Partial index over the non-terminal states only (queued, leased, pending,
-- running), so "which queue/job set pairs are active" is a small
-- index-only scan.
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_job_active_queue_jobset
    ON job (queue, jobset)
    WITH (fillfactor = 80)
    WHERE state IN (1, 2, 3, 8);
