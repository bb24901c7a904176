-- Who cancelled the job.
ALTER TABLE job ADD COLUMN IF NOT EXISTS cancel_user varchar(512) NULL;
