-- Ingress addresses exposed by a run.
ALTER TABLE job_run ADD COLUMN IF NOT EXISTS ingress_addresses jsonb NULL;
