-- Queue definitions (serialised protobuf), keyed by queue name.
CREATE TABLE IF NOT EXISTS queue (
    name       text  NOT NULL PRIMARY KEY,
    definition bytea NOT NULL
);
