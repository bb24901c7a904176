-- A run now exists from the moment it is leased, before it is pending.
ALTER TABLE job_run ALTER COLUMN pending DROP NOT NULL;
ALTER TABLE job_run ADD COLUMN IF NOT EXISTS leased timestamp NULL;
