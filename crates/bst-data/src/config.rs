//! The `[data]` table of a run configuration.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::DataError;

/// Which corpus to train and evaluate on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CorpusKind {
    /// Four public-domain Gutenberg books (big.txt): `books/gutenberg_big.txt` under `data.dir`.
    Books,
}

/// Which tokenizer turns text into ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenizerKind {
    /// One token per byte, vocabulary 256.
    Byte,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DataConfig {
    /// Corpus to use.
    pub corpus: CorpusKind,
    /// Folder the fetch script wrote to (relative paths are relative to the working directory).
    pub dir: PathBuf,
    /// Tokenizer.
    pub tokenizer: TokenizerKind,
    /// Fraction of each document (or of the documents) held out for validation.
    pub valid_fraction: f64,
    /// Fraction of each document (or of the documents) held out for test.
    pub test_fraction: f64,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            corpus: CorpusKind::Books,
            dir: PathBuf::from("data"),
            tokenizer: TokenizerKind::Byte,
            valid_fraction: 0.05,
            test_fraction: 0.05,
        }
    }
}

impl DataConfig {
    pub fn validate(&self) -> Result<(), DataError> {
        for (key, v) in [("valid_fraction", self.valid_fraction), ("test_fraction", self.test_fraction)] {
            if !(v > 0.0 && v < 0.5) {
                return Err(DataError::InvalidConfig { key, value: v.to_string(), reason: "must be in (0, 0.5)".into() });
            }
        }
        Ok(())
    }
}
