//! Generates the gRPC types from `proto/`.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    // Read at run time: `env!` would bake in the folder this script was first compiled in, and a
    // shared target dir reuses the compiled script for clones in other folders.
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR")?;
    let root = std::path::Path::new(&manifest_dir).join("../../proto");
    let protos = [
        root.join("stowage/v1/admin.proto"),
        root.join("stowage/v1/access.proto"),
        root.join("stowage/v1/fsck.proto"),
        root.join("stowage/v1/replication.proto"),
        root.join("stowage/v1/scrub.proto"),
    ];
    for p in &protos {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    // Blob chunks as `bytes::Bytes`: a received chunk is handed on without a copy.
    tonic_prost_build::configure()
        .bytes(".stowage.v1.BlobChunk.data")
        .compile_protos(&protos, &[root])?;
    Ok(())
}
