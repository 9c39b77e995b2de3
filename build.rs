//! Shared build script of every bst package: makes the binaries find libtorch at run time and see CUDA.
//!
//! torch-sys links libtorch but cannot give the final binaries an rpath, and the default
//! `-Wl,--as-needed` drops `libtorch_cuda.so` because no symbol of it is referenced directly, after
//! which `tch::Cuda::is_available()` is false even on a GPU machine. Both are fixed here with
//! link arguments that apply to every target of the package (lib tests, bins, benches, examples).
//!
//! Packages that build more (bst-model compiles a C++ shim) include this file as a module
//! (`#[path = "../../build.rs"] mod shared;`) and call [`link_libtorch`] from their own `main`,
//! so this stays the one place that knows how libtorch is found and linked.
use std::path::PathBuf;

/// Emits the rpath and CUDA link arguments; returns the libtorch folder (`include/`, `lib/`).
pub fn link_libtorch() -> PathBuf {
    println!("cargo:rerun-if-env-changed=LIBTORCH");
    println!("cargo:rerun-if-changed=../../build.rs");
    let Some(libtorch) = std::env::var_os("LIBTORCH").map(PathBuf::from) else {
        panic!("LIBTORCH is not set: run scripts/setup.sh (it creates .libtorch, used by .cargo/config.toml)");
    };
    let lib = libtorch.join("lib");
    if !lib.join("libtorch_cpu.so").exists() {
        panic!("{} has no libtorch_cpu.so: run scripts/setup.sh to install torch into .venv", lib.display());
    }
    println!("cargo:rustc-link-arg=-Wl,-rpath,{}", lib.display());
    let cuda = lib.join("libtorch_cuda.so");
    if cuda.exists() {
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,{},--as-needed", cuda.display());
    }
    libtorch
}

fn main() {
    link_libtorch();
}
