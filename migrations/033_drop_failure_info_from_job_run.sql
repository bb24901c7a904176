-- FailureInfo is superseded by the failure category columns (032); its data
-- is dropped.
ALTER TABLE job_run DROP COLUMN IF EXISTS failure_info;
