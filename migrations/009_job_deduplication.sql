-- Maps a client-supplied deduplication id to the job it produced.
CREATE TABLE IF NOT EXISTS job_deduplication (
    deduplication_id text      NOT NULL PRIMARY KEY,
    job_id           text      NOT NULL,
    inserted         timestamp NOT NULL DEFAULT CURRENT_TIMESTAMP
);

-- Lets old entries be pruned by age.
CREATE INDEX IF NOT EXISTS idx_job_deduplication_inserted
    ON job_deduplication (inserted);
