//! Build script of bst-sweep: the shared libtorch link setup (`../../build.rs`, included as a
//! module), plus the commit the binaries are built from, `BST_BUILD_COMMIT` (`-dirty` when the
//! code had uncommitted changes; `unknown` outside git). Results record it, because the checkout
//! can move on while a long sweep runs or a binary is carried to another machine; what ran is the
//! code the binary was built from.

#[allow(dead_code)] // its `main` is the build script of the other packages; only `link_libtorch` is used here
#[path = "../../build.rs"]
mod shared;

use std::path::Path;
use std::process::Command;

fn git(root: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git").arg("-C").arg(root).args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn main() {
    shared::link_libtorch();
    println!("cargo:rerun-if-changed=build.rs");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let commit = match git(&root, &["rev-parse", "HEAD"]) {
        Some(commit) => {
            // the same rule as provenance::git_commit: results/ is output, not code
            let dirty = git(&root, &["status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results"]).is_some_and(|s| !s.is_empty());
            if dirty { format!("{commit}-dirty") } else { commit }
        }
        None => "unknown".into(),
    };
    // rerun after a commit or checkout (the reflog of HEAD) and after any change to the code
    if let Some(log) = git(&root, &["rev-parse", "--git-path", "logs/HEAD"]).map(|p| root.join(p)).filter(|p| p.exists()) {
        println!("cargo:rerun-if-changed={}", log.display());
    }
    for dir in ["crates", "Cargo.toml", "Cargo.lock"] {
        println!("cargo:rerun-if-changed={}", root.join(dir).display());
    }
    println!("cargo:rustc-env=BST_BUILD_COMMIT={commit}");
}
