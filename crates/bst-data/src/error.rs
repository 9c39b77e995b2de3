//! Errors raised while loading and splitting corpora.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("corpus file {path} not found: run scripts/setup.sh (or scripts/fetch_data.sh data) to fetch it")]
    Missing { path: PathBuf },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: no documents found ({reason})")]
    NoDocuments { path: PathBuf, reason: String },
    #[error("data.{key} = {value}: {reason}")]
    InvalidConfig { key: &'static str, value: String, reason: String },
    #[error("the {split} split has {tokens} tokens, fewer than the {needed} one sequence needs")]
    TooShort { split: String, tokens: usize, needed: usize },
    #[error("tokenizer: {reason}")]
    Tokenizer { reason: String },
    #[error("token shard {path}: {reason}")]
    Shard { path: PathBuf, reason: String },
    #[error("{key} = {value}: {reason}")]
    InvalidSetting { key: &'static str, value: String, reason: String },
    #[error("{path}: unexpected format: {reason}")]
    Format { path: PathBuf, reason: String },
    #[error("{task} has {have} usable documents, needs at least {needed}: {reason}")]
    TooFewDocuments { task: String, have: usize, needed: usize, reason: String },
}
