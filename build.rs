//! Generates the Cerbos gRPC client from `proto/` (the subset of Cerbos's public API heimdall
//! calls). The `.proto` files are parsed by `protox`, in pure Rust, so no `protoc` is needed.

use std::error::Error;
use std::path::{Path, PathBuf};

/// The directory holding heimdall's `.proto` files.
const PROTO_DIR: &str = "proto";

fn main() -> Result<(), Box<dyn Error>> {
    println!("cargo:rerun-if-changed={PROTO_DIR}");

    let mut files = Vec::new();
    collect_protos(Path::new(PROTO_DIR), &mut files)?;
    files.sort();
    for file in &files {
        println!("cargo:rerun-if-changed={}", file.display());
    }

    let descriptors = protox::compile(&files, [PROTO_DIR])?;
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(false)
        .include_file("cerbos_api.rs")
        .compile_fds(descriptors)?;
    Ok(())
}

/// Every `*.proto` file under `dir`, recursively.
fn collect_protos(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), Box<dyn Error>> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.is_dir() {
            collect_protos(&path, out)?;
        } else if path.extension().is_some_and(|ext| ext == "proto") {
            out.push(path);
        }
    }
    Ok(())
}
