// protoc comes from the system (Debian's protobuf-compiler), never a download.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=roomy.proto");
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("roomy_descriptor.bin"))
        .compile_protos(&["roomy.proto"], &["."])?;
    Ok(())
}
