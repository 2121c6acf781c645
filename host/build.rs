//! Compiles `proto/discord_api.proto` (the gRPC API) with protox, a protobuf compiler in Rust,
//! so the build needs no `protoc` binary. The descriptor set is kept for server reflection.
//! Also records the commit being built (`EASEL_COMMIT`, for `easel --version`).

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../proto");
    let proto = proto_dir.join("discord_api.proto");
    println!("cargo:rerun-if-changed={}", proto.display());
    // `sqlx::migrate!` embeds these at compile time; a new migration must rebuild the crate.
    println!("cargo:rerun-if-changed=migrations");
    println!("cargo:rustc-env=EASEL_COMMIT={}", commit());
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

/// `COMMIT_SHA` when set (container builds), else `git rev-parse --short=7 HEAD`, else
/// `unknown` (a source tarball).
fn commit() -> String {
    println!("cargo:rerun-if-env-changed=COMMIT_SHA");
    if let Ok(sha) = std::env::var("COMMIT_SHA")
        && !sha.trim().is_empty()
    {
        return sha.trim().chars().take(12).collect();
    }
    let git = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.git");
    for watched in ["HEAD", "refs/heads", "packed-refs"] {
        let path = git.join(watched);
        if path.exists() {
            println!("cargo:rerun-if-changed={}", path.display());
        }
    }
    std::process::Command::new("git")
        .args(["rev-parse", "--short=7", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .ok()
        .filter(|out| out.status.success())
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .map(|sha| sha.trim().to_owned())
        .filter(|sha| !sha.is_empty())
        .unwrap_or_else(|| "unknown".to_owned())
}
