-- The annotation lookup table is superseded by job.annotations; dropping it
-- also drops its indexes.
DROP TABLE IF EXISTS user_annotation_lookup;

-- Unused job indexes.
DROP INDEX IF EXISTS idx_job_jobset_last_transition_time_seconds;
DROP INDEX IF EXISTS idx_job_queue_jobset_last_transition_time_seconds;
