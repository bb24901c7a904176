-- Covered by the other indexes that lead with queue.
DROP INDEX IF EXISTS idx_job_queue;
