//! Generates the gRPC client from the repository's `protos/` (the single source of
//! truth) with the protoc that the `protoc-bin-vendored` crate ships, so the build
//! needs no system protoc and works offline once the crates are fetched.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let manifest = PathBuf::from(std::env::var("CARGO_MANIFEST_DIR")?);
    let protos = manifest.join("../../protos").canonicalize()?;
    let package = protos.join("agent_recorder/v1");
    let files: Vec<PathBuf> = ["types", "events", "session", "recorder_service"]
        .iter()
        .map(|name| package.join(format!("{name}.proto")))
        .collect();
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    let well_known = protoc_bin_vendored::include_path()?;
    // SAFETY-free: build scripts are single-threaded; prost-build reads PROTOC.
    std::env::set_var("PROTOC", protoc);
    tonic_prost_build::configure()
        .build_server(false)
        .compile_protos(&files, &[protos, well_known])?;
    Ok(())
}
