-- Structured failure details of a run.
ALTER TABLE job_run ADD COLUMN IF NOT EXISTS failure_info jsonb;
