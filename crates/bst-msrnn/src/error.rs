//! The crate's error type: every failure names the file, key, tensor or value it is about.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum MsrnnError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path} does not exist: scripts/setup.sh (or scripts/fetch_data.sh data model) fetches the SmolLM2 GGUF")]
    ModelMissing { path: PathBuf },
    #[error("{path}: not a GGUF v2/v3 file: {reason}")]
    Format { path: PathBuf, reason: String },
    #[error("{path}: metadata key `{key}` {reason}")]
    Metadata { path: PathBuf, key: String, reason: String },
    #[error("{path}: tensor `{name}` {reason}")]
    Tensor { path: PathBuf, name: String, reason: String },
    #[error("tensor `{name}` has type {ty}; only F32, F16, Q4_1 and Q8_0 are dequantised")]
    UnsupportedType { name: String, ty: String },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("unknown policy `{name}`: allowed are full, window, window+I (I sinks, e.g. window+4), h2o, tova, tova-headwise, tova-keepnew")]
    UnknownPolicy { name: String },
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error(transparent)]
    Torch(#[from] tch::TchError),
}

pub type Result<T> = std::result::Result<T, MsrnnError>;
