-- FailureInfo is superseded by the failure category columns (032); its data
-- is dropped. `migrate` asks for --allow-drop first when rows hold any.
ALTER TABLE job_run DROP COLUMN IF EXISTS failure_info;
