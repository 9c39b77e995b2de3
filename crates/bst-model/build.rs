//! Build script of bst-model: the shared libtorch link setup (`../../build.rs`, included as a
//! module so that it stays the one source of truth), plus the C++ shim `csrc/autocast.cpp`, which
//! exposes libtorch's per-device autocast controls that tch does not wrap (see `src/autocast.rs`).
//!
//! The shim is compiled against the headers of the same libtorch that torch-sys links, with the
//! same C++ standard and `_GLIBCXX_USE_CXX11_ABI` that torch-sys uses for its own wrapper
//! (`LIBTORCH_CXX11_ABI`, default 1: PyTorch wheels since 2.7 use the new ABI; our torch 2.11
//! reports `torch.compiled_with_cxx11_abi() == True`). Its symbols resolve against
//! `libtorch_cpu.so`, which torch-sys already links.

#[allow(dead_code)] // its `main` is the build script of the other packages; only `link_libtorch` is used here
#[path = "../../build.rs"]
mod shared;

fn main() {
    let libtorch = shared::link_libtorch();
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=csrc/autocast.cpp");
    println!("cargo:rerun-if-env-changed=LIBTORCH_CXX11_ABI");
    let abi = std::env::var("LIBTORCH_CXX11_ABI").unwrap_or_else(|_| "1".to_owned());
    let include = libtorch.join("include");
    let mut build = cc::Build::new();
    build.cpp(true).std("c++17").define("_GLIBCXX_USE_CXX11_ABI", abi.as_str()).file("csrc/autocast.cpp");
    // -isystem: warnings stay on for the shim but not for libtorch's own headers
    for dir in [include.clone(), include.join("torch/csrc/api/include")] {
        build.flag("-isystem").flag(dir.as_os_str());
    }
    build.compile("bst_autocast");
}
