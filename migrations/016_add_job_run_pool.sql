-- Scheduling pool a run was placed in.
ALTER TABLE job_run ADD COLUMN IF NOT EXISTS pool text;
