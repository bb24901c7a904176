-- Why the scheduler ended a run (preempted, cancelled), as a JSON object.
ALTER TABLE job_run ADD COLUMN IF NOT EXISTS scheduler_termination_reason jsonb;
