-- Link to the job in an external system.
ALTER TABLE job ADD COLUMN IF NOT EXISTS external_job_uri varchar(1024) NULL;
