//! Generates the gRPC code from `walfleet/v1/*.proto` with a vendored `protoc`: no machine
//! needs protoc installed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // prost-build finds protoc through PROTOC.
    std::env::set_var("PROTOC", protoc);
    println!("cargo:rerun-if-changed=walfleet");
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos(&["walfleet/v1/agent.proto", "walfleet/v1/admin.proto"], &["."])?;
    Ok(())
}
