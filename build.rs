//! Generates the example service from `proto/` with a vendored `protoc`, so a fresh
//! machine builds with cargo alone (no system protoc, nothing downloaded).
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY-free: build scripts are single-threaded, so setting the env var is sound.
    unsafe { std::env::set_var("PROTOC", protoc) };
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure().compile_protos(&["proto/demo/v1/echo.proto"], &["proto"])?;
    Ok(())
}
