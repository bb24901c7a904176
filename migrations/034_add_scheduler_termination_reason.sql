-- Why the scheduler ended a run (preempted, cancelled), as a JSON object.
-- IF NOT EXISTS for the same reason as 032.
ALTER TABLE job_run ADD COLUMN IF NOT EXISTS scheduler_termination_reason jsonb;
