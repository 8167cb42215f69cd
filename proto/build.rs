//! Compiles `proto/samkor.proto` with the protoc binary shipped by the
//! `protoc-bin-vendored` crate, so no protoc needs to be installed.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; prost-build reads PROTOC.
    unsafe { std::env::set_var("PROTOC", protoc) };
    println!("cargo:rerun-if-changed=proto/samkor.proto");
    prost_build::compile_protos(&["proto/samkor.proto"], &["proto"])?;
    Ok(())
}
