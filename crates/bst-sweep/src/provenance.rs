//! Where a result came from: the commit the code was built from, the checkout, device, date.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    /// The commit the running binary was built from ([`build_commit`]; `-dirty` when the code had
    /// uncommitted changes), or the checkout's when the build's is unknown.
    pub git_commit: String,
    /// The checkout's commit when the run started (the sweep file is read from it): differs from
    /// `git_commit` when the checkout moved on after the build. Empty in results from before it.
    #[serde(default)]
    pub checkout_commit: String,
    /// The device runs execute on, e.g. `cpu (2 threads)`.
    pub device: String,
    /// UTC time, RFC 3339.
    pub date: String,
}

impl Provenance {
    pub fn now(device: tch::Device) -> Self {
        let checkout_commit = git_commit();
        let git_commit = if build_commit() == "unknown" { checkout_commit.clone() } else { build_commit().to_owned() };
        Self { git_commit, checkout_commit, device: bst_model::device::describe(device), date: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true) }
    }
}

/// The commit these binaries were built from (set by bst-sweep's build script).
pub fn build_commit() -> &'static str {
    env!("BST_BUILD_COMMIT")
}

/// The checked-out commit of the current directory (`-dirty` with uncommitted code changes), or
/// `unknown` outside a git work tree.
pub fn git_commit() -> String {
    crate::git::commit(std::path::Path::new("."))
}
