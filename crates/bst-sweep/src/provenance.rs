//! Where a result came from: the commit the code was built from, the checkout, device, date.

use std::process::Command;

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

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The checked-out commit, or `unknown` outside a git work tree.
pub fn git_commit() -> String {
    match git(&["rev-parse", "HEAD"]) {
        Some(commit) => {
            // results/ is output, not input: changes there do not make the code dirty
            let dirty = git(&["status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results"]).is_some_and(|s| !s.is_empty());
            if dirty { format!("{commit}-dirty") } else { commit }
        }
        None => "unknown".into(),
    }
}
