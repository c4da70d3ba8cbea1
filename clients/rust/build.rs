//! Generates the client from the repository's proto at build time. `protox` is a pure-Rust
//! protobuf compiler, so building needs no `protoc` on the machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = "../../proto";
    let proto = "phoenix/ranking/v1/ranking.proto";
    println!("cargo:rerun-if-changed={proto_root}/{proto}");
    let descriptors = protox::compile([proto], [proto_root])?;
    tonic_prost_build::configure()
        .build_server(false)
        .compile_fds(descriptors)?;
    Ok(())
}
