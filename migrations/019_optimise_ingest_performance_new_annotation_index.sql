-- lookout-ingester: no-transaction
-- Annotation index with the default jsonb operator class (so key-exists
-- queries can use it too) and a large pending list to batch GIN updates.
CREATE INDEX CONCURRENTLY IF NOT EXISTS idx_job_annotations_path
    ON job USING gin (annotations jsonb_ops)
    WITH (fastupdate = true, gin_pending_list_limit = 33554432);
