//! Compiles the protobuf schemas in proto/ with prost-build.
//!
//! Maps become BTreeMaps so that every encoding we produce (job_spec bytes,
//! recorded files) is the same for the same input.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/armadaevents/events.proto",
        "proto/api/job.proto",
        "proto/k8s/k8s.proto",
    ];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let mut config = prost_build::Config::new();
    config.btree_map(["."]);
    config.compile_protos(&protos, &["proto"])?;
    Ok(())
}
