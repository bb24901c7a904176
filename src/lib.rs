//! lookout-ingester: keeps Armada's Lookout database up to date from the
//! job-set event stream.
//!
//! Data flows top to bottom through these modules:
//! `source` (Pulsar, replay file) → `pipeline` (decode, batch) →
//! `convert` (pure: events to row instructions in `model`) →
//! `hold` (pure: under a backlog, open jobs' rows wait for their end) →
//! `store` (Postgres writer) → acknowledgement back to the source.
//! `migrate`, `report` (reads the tables back: `report failures`),
//! `metrics` (with `telemetry`, which counts and logs each failure once)
//! and `cli` sit at the edges.

pub mod ack;
mod backoff;
pub mod bench;
pub mod cli;
pub mod config;
pub mod convert;
pub mod deadletter;
pub mod health;
pub mod heartbeat;
pub mod hold;
pub mod http;
pub mod idhash;
pub mod kept;
pub mod live;
pub mod logging;
pub mod metrics;
pub mod migrate;
pub mod model;
pub mod pg;
pub mod pipeline;
pub mod progress;
pub mod proto;
pub mod record;
pub mod replay;
pub mod report;
pub mod sample;
pub mod source;
pub mod status;
pub mod store;
pub mod telemetry;
pub mod values;
pub mod workload;
