//! Build script of bst-sweep: the shared libtorch link setup (`../../build.rs`, included as a
//! module), plus the commit the binaries are built from, `BST_BUILD_COMMIT` (`-dirty` when the
//! code had uncommitted changes; `unknown` outside git). Results record it, because the checkout
//! can move on while a long sweep runs or a binary is carried to another machine; what ran is the
//! code the binary was built from.

#[allow(dead_code)] // its `main` is the build script of the other packages; only `link_libtorch` is used here
#[path = "../../build.rs"]
mod shared;

#[path = "src/git.rs"]
mod git;

use std::path::Path;

fn main() {
    shared::link_libtorch();
    println!("cargo:rerun-if-changed=build.rs");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let commit = git::commit(&root);
    // rerun after a commit or checkout (the reflog of HEAD) and after any change to the code
    if let Some(log) = git::git(&root, &["rev-parse", "--git-path", "logs/HEAD"]).map(|p| root.join(p)).filter(|p| p.exists()) {
        println!("cargo:rerun-if-changed={}", log.display());
    }
    for dir in ["crates", "Cargo.toml", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    println!("cargo:rustc-env=BST_BUILD_COMMIT={commit}");
}
