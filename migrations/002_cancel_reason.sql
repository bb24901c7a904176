-- Why a job was cancelled.
ALTER TABLE job ADD COLUMN IF NOT EXISTS cancel_reason varchar(512) NULL;
