-- The failure category and subcategory of a run's terminal error, as Armada's
-- error categorisation reports them. IF NOT EXISTS (upstream's file has none)
-- so that a database whose version lags its columns can be brought forward.
ALTER TABLE job_run ADD COLUMN IF NOT EXISTS failure_category varchar(63);
ALTER TABLE job_run ADD COLUMN IF NOT EXISTS failure_subcategory varchar(63);
