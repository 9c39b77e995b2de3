//! The commit rule shared by the build script (the build's commit) and provenance (the checkout's):
//! `HEAD`, with `-dirty` when tracked code differs from it. results/ is output, not code, so changes
//! there do not make the code dirty. Plain std, so that build.rs can include this file as a module.

use std::path::Path;
use std::process::Command;

/// Output of `git -C <root> <args>`, trimmed; `None` when git is missing or fails.
pub fn git(root: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git").arg("-C").arg(root).args(args).output().ok()?;
    out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The commit checked out at `root` (`-dirty` with uncommitted code changes), or `unknown`
/// outside a git work tree.
pub fn commit(root: &Path) -> String {
    let Some(head) = git(root, &["rev-parse", "HEAD"]) else { return "unknown".into() };
    let dirty = git(root, &["status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results"]).is_some_and(|s| !s.is_empty());
    if dirty { format!("{head}-dirty") } else { head }
}
