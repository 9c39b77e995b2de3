//! The errors of a sweep. Binaries wrap them in `anyhow`; the library names what went wrong.

use std::path::{Path, PathBuf};

use bst_core::InvalidConfig;
use bst_data::DataError;
use bst_model::ModelError;

use crate::GridError;

#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    /// The sweep file cannot be expanded into runs.
    #[error(transparent)]
    Grid(#[from] GridError),
    #[error(transparent)]
    Invalid(#[from] InvalidConfig),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Model(#[from] ModelError),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// A file's content (CSV, JSON, TOML) or a plot could not be read, written or drawn.
    #[error("{path}: {reason}")]
    File { path: PathBuf, reason: String },
    /// A run's checkpoint cannot be resumed.
    #[error("resuming {run} (delete {checkpoint} to restart it from scratch): {source}")]
    Resume { run: String, checkpoint: PathBuf, source: ModelError },
    /// Ctrl-C (or a stop request) ended the sweep during a run; its checkpoint is saved.
    #[error("interrupted during {run} (checkpoint saved): {finished} finished runs are in {csv}; rerun the same command to resume")]
    Interrupted { run: String, finished: usize, csv: PathBuf },
    /// Another launch is running on the same results folder.
    #[error("{dir} is in use by {holder}: wait for it to finish, or stop it (its finished runs are kept)")]
    Locked { dir: PathBuf, holder: String },
    /// No run of the sweep matches `--only` / `--run`.
    #[error("{what}: no run of the sweep matches (studies: {studies})")]
    NoSuchRun { what: String, studies: String },
    /// A child process running one run (`--jobs`) ended abnormally.
    #[error("run {run}: its process {status}")]
    Child { run: String, status: String },
    /// A job array could not be written or submitted (`bst-sweep slurm`).
    #[error("slurm: {0}")]
    Slurm(String),
    /// A run failed; the runs finished before it are kept.
    #[error("run {run} failed (finished runs are kept in {csv}): {source}")]
    RunFailed { run: String, csv: PathBuf, source: Box<SweepError> },
}

impl SweepError {
    /// Maps an I/O error on `path` (for `map_err`).
    pub(crate) fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SweepError + '_ {
        move |source| SweepError::Io { path: path.to_owned(), source }
    }

    /// Maps any error about the content of `path` (for `map_err`).
    pub(crate) fn file<E: std::fmt::Display>(path: &Path) -> impl FnOnce(E) -> SweepError + '_ {
        move |e| SweepError::File { path: path.to_owned(), reason: e.to_string() }
    }

    /// Whether this is a stop request rather than a failure.
    pub fn is_interrupt(&self) -> bool {
        matches!(self, SweepError::Model(ModelError::Interrupted { .. }))
    }
}

/// [`bst_core::write_atomically`], the error naming the path.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<(), SweepError> {
    bst_core::write_atomically(path, bytes).map_err(SweepError::io(path))
}
