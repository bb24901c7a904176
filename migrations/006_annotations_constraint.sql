-- Every job must carry an annotations object (possibly empty).
-- Added NOT VALID and then validated; skipped if it is already there.
DO $$
BEGIN
    IF NOT EXISTS (
        SELECT 1
        FROM pg_constraint
        WHERE conrelid = 'job'::regclass
          AND conname = 'job_annotations_not_null'
    ) THEN
        ALTER TABLE job
            ADD CONSTRAINT job_annotations_not_null
            CHECK (annotations IS NOT NULL) NOT VALID;
    END IF;
END
$$;

ALTER TABLE job VALIDATE CONSTRAINT job_annotations_not_null;
