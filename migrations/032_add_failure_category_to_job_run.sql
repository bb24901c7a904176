-- The failure category and subcategory of a run's terminal error, as Armada's
-- error categorisation reports them.
ALTER TABLE job_run ADD COLUMN IF NOT EXISTS failure_category varchar(63);
ALTER TABLE job_run ADD COLUMN IF NOT EXISTS failure_subcategory varchar(63);
