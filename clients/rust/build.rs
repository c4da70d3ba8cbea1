//! Generates the client from the repository's protos at build time: ours
//! (`phoenix.ranking.v1`) and our subset of xAI's (`xai.recsys.v1`). `protox` is a pure-Rust
//! protobuf compiler, so building needs no `protoc` on the machine.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = "../../proto";
    let protos = [
        "phoenix/ranking/v1/ranking.proto",
        "xai/recsys/v1/recsys.proto",
    ];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto_root}/{proto}");
    }
    let descriptors = protox::compile(protos, [proto_root])?;
    tonic_prost_build::configure()
        .build_server(false)
        .compile_fds(descriptors)?;
    Ok(())
}
