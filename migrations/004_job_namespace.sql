-- Kubernetes namespace the job runs in.
ALTER TABLE job ADD COLUMN IF NOT EXISTS namespace varchar(512);
