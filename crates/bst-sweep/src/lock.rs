//! One launch per results folder at a time: an OS file lock on `<results>/.lock`, held for the
//! whole sweep. The kernel releases it when the process ends, however it ends (Ctrl-C, a crash,
//! `kill -9`), so a killed launch never leaves the folder stuck; a second launch while the first
//! runs refuses, naming the running one (from `.lock.info`).

use std::fs::{File, OpenOptions};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{write_atomically, SweepError};

/// Who holds the lock.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Holder {
    pub pid: u32,
    pub started: String,
    pub command: String,
}

/// A held lock; released when dropped.
#[derive(Debug)]
pub struct ResultsLock {
    _file: File,
    pub path: PathBuf,
}

impl ResultsLock {
    /// Takes the lock of `dir` (creating the folder), or says who holds it.
    pub fn acquire(dir: &Path, command: &str) -> Result<Self, SweepError> {
        std::fs::create_dir_all(dir).map_err(SweepError::io(dir))?;
        let path = dir.join(".lock");
        let file = OpenOptions::new().create(true).truncate(false).write(true).open(&path).map_err(SweepError::io(&path))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let info = std::fs::read_to_string(dir.join(".lock.info")).ok().and_then(|t| serde_json::from_str::<Holder>(&t).ok());
                let holder = info.map_or("another process (no .lock.info)".to_string(), |h| format!("process {} (started {}: `{}`)", h.pid, h.started, h.command));
                return Err(SweepError::Locked { dir: dir.to_owned(), holder });
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(SweepError::io(&path)(e)),
        }
        let holder = Holder { pid: std::process::id(), started: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true), command: command.to_owned() };
        write_atomically(&dir.join(".lock.info"), serde_json::to_string_pretty(&holder).expect("holder serialises").as_bytes())?;
        Ok(Self { _file: file, path })
    }
}

/// Whether a process holds the lock of `dir` now (without creating anything; the check takes
/// the lock for an instant when it is free). `bst-sweep slurm` leaves out runs being trained.
pub fn is_held(dir: &Path) -> bool {
    let Ok(file) = OpenOptions::new().write(true).open(dir.join(".lock")) else { return false };
    matches!(file.try_lock(), Err(std::fs::TryLockError::WouldBlock))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_is_refused_and_dropping_releases_it() {
        let dir = tempfile::tempdir().unwrap();
        let first = ResultsLock::acquire(dir.path(), "bst-sweep a.toml").unwrap();
        let err = ResultsLock::acquire(dir.path(), "bst-sweep a.toml --again").unwrap_err().to_string();
        assert!(err.contains(&format!("process {}", std::process::id())) && err.contains("bst-sweep a.toml`"), "{err}");
        assert!(is_held(dir.path()));
        drop(first);
        assert!(!is_held(dir.path()) && !is_held(&dir.path().join("absent")));
        ResultsLock::acquire(dir.path(), "third").unwrap();
    }
}
