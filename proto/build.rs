//! Compiles proto/skiff/v1/*.proto with the protoc shipped inside the protoc-bin-vendored crate,
//! so a fresh machine needs no system protobuf compiler.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    std::env::set_var("PROTOC", protoc);
    let files = [
        "skiff/v1/types.proto",
        "skiff/v1/api.proto",
        "skiff/v1/agent.proto",
    ];
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    tonic_prost_build::configure()
        // JSON output for the CLI (`-o json`) and scripts, in the camelCase of ECS/EventBridge.
        .type_attribute(
            ".skiff.v1",
            "#[derive(serde::Serialize)] #[serde(rename_all = \"camelCase\")]",
        )
        .file_descriptor_set_path(out.join("skiff_descriptor.bin"))
        .compile_protos(&files, &["."])?;
    for f in files {
        println!("cargo:rerun-if-changed={f}");
    }
    Ok(())
}
