//! Generates the gRPC types from `proto/`.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let admin = root.join("stowage/v1/admin.proto");
    println!("cargo:rerun-if-changed={}", admin.display());
    tonic_prost_build::configure().compile_protos(&[admin], &[root])?;
    Ok(())
}
