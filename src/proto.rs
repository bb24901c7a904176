//! Generated protobuf types (see build.rs and proto/).

#![allow(clippy::all, missing_docs)]

/// Armada's event stream, as published on the jobset events topic.
pub mod armadaevents {
    include!(concat!(env!("OUT_DIR"), "/armadaevents.rs"));
}

/// The `api.Job` stored, compressed, in `job_spec`.
pub mod api {
    include!(concat!(env!("OUT_DIR"), "/api.rs"));
}

/// The small part of the Kubernetes schema we read or re-emit.
pub mod k8s {
    include!(concat!(env!("OUT_DIR"), "/k8s.rs"));
}
