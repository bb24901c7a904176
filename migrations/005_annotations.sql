-- User annotations as a JSON object on the job row, with a GIN index
-- (jsonb_path_ops: containment queries only; replaced in 018/019).
ALTER TABLE job ADD COLUMN IF NOT EXISTS annotations jsonb;

CREATE INDEX IF NOT EXISTS idx_job_annotations_path
    ON job USING gin (annotations jsonb_path_ops);
