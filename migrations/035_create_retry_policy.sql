-- Retry policies and their assignment to queues. Written by Armada's server,
-- never by the ingester; created here so that both migrators agree on 035.
CREATE TABLE IF NOT EXISTS retry_policy (
    name       text  NOT NULL PRIMARY KEY,
    definition bytea NOT NULL
);

CREATE TABLE IF NOT EXISTS queue_retry_policy (
    queue_name  text NOT NULL,
    policy_name text NOT NULL,
    ordinal     int  NOT NULL,
    PRIMARY KEY (queue_name, policy_name),
    CONSTRAINT queue_retry_policy_queue_name_fkey
        FOREIGN KEY (queue_name) REFERENCES queue (name) ON DELETE CASCADE,
    CONSTRAINT queue_retry_policy_policy_name_fkey
        FOREIGN KEY (policy_name) REFERENCES retry_policy (name) ON DELETE CASCADE
);

CREATE INDEX IF NOT EXISTS idx_queue_retry_policy_policy_name
    ON queue_retry_policy (policy_name);
