-- lookout-ingester: no-transaction
-- Newest-first listing of jobs by submission time.
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_job_submitted
    ON job (submitted DESC);
