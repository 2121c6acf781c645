//! Compiles `proto/discord_api.proto` (the gRPC API) with protox, a protobuf compiler in Rust,
//! so the build needs no `protoc` binary. The descriptor set is kept for server reflection.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../proto");
    let proto = proto_dir.join("discord_api.proto");
    println!("cargo:rerun-if-changed={}", proto.display());
    // `sqlx::migrate!` embeds these at compile time; a new migration must rebuild the crate.
    println!("cargo:rerun-if-changed=migrations");
    let fds = protox::compile([&proto], [&proto_dir])?;
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out.join("discord_api_descriptor.bin"),
        prost::Message::encode_to_vec(&fds),
    )?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    Ok(())
}
