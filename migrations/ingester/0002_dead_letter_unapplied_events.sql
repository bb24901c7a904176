-- Which events of a dead letter were not applied (indexes into its sequence,
-- in order), so `dead-letters retry` applies exactly those and never one
-- that was applied already. NULL (letters kept before this column existed,
-- or a payload that is not a sequence at all) means every event.
ALTER TABLE ingester_dead_letter ADD COLUMN IF NOT EXISTS unapplied_events integer[] NULL;
