//! Compiles the `.proto` files with the `protoc` shipped by `protoc-bin-vendored`, so a fresh
//! machine builds with `cargo` alone (no system protoc).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY: build scripts are single-threaded; nothing else reads the environment concurrently.
    #[allow(unsafe_code)]
    unsafe {
        std::env::set_var("PROTOC", protoc);
    }
    println!("cargo:rerun-if-changed=proto");
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_protos(
            &[
                "proto/multiverse/discovery/v1/discovery.proto",
                "proto/tei/v1/tei.proto",
                "proto/multiverse/embed/v1/embed.proto",
            ],
            &["proto"],
        )?;
    Ok(())
}
