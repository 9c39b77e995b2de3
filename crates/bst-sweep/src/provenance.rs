//! Where a result came from: git commit, device, date.

use std::process::Command;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Provenance {
    /// `git rev-parse HEAD`, with `-dirty` when the work tree has uncommitted changes.
    pub git_commit: String,
    /// The device runs execute on, e.g. `cpu (2 threads)`.
    pub device: String,
    /// UTC time, RFC 3339.
    pub date: String,
}

impl Provenance {
    pub fn now(device: tch::Device) -> Self {
        Self { git_commit: git_commit(), device: bst_model::device::describe(device), date: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true) }
    }
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
