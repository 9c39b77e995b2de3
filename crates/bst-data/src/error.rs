//! Errors raised while loading and splitting corpora and building tasks.

use std::path::PathBuf;

use bst_core::InvalidConfig;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("corpus file {path} not found: run scripts/setup.sh (or scripts/fetch_data.sh data) to fetch it")]
    Missing { path: PathBuf },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: no documents found ({reason})")]
    NoDocuments { path: PathBuf, reason: String },
    #[error(transparent)]
    Invalid(#[from] bst_core::InvalidConfig),
    #[error("the {split} split has {tokens} tokens, fewer than the {needed} one sequence needs")]
    TooShort { split: String, tokens: usize, needed: usize },
    #[error("tokenizer: {reason}")]
    Tokenizer { reason: String },
    #[error("token shard {path}: {reason}")]
    Shard { path: PathBuf, reason: String },
    #[error("{path}: unexpected format: {reason}")]
    Format { path: PathBuf, reason: String },
    #[error("{task} has {have} usable documents, needs at least {needed}: {reason}")]
    TooFewDocuments { task: String, have: usize, needed: usize, reason: String },
}

/// An invalid configuration value, named by its full dotted key (`data.vocab_size`,
/// `lra.listops.min_len`).
pub(crate) fn invalid(key: impl Into<String>, value: impl std::fmt::Debug, reason: impl Into<String>) -> DataError {
    DataError::Invalid(InvalidConfig::new(key, value, reason))
}

impl DataError {
    /// Maps an I/O error on `path` (for `map_err`).
    pub(crate) fn io(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> DataError + '_ {
        move |source| DataError::Io { path: path.to_owned(), source }
    }
}

/// [`bst_core::write_atomically`], the error naming the path.
pub(crate) fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> Result<(), DataError> {
    bst_core::write_atomically(path, bytes).map_err(DataError::io(path))
}
