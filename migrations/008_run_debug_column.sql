-- Free-form debug information attached to a run.
ALTER TABLE job_run ADD COLUMN IF NOT EXISTS debug bytea NULL;
