//! Errors of model construction, training and evaluation.

use bst_core::InvalidConfig;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Invalid(#[from] InvalidConfig),
    #[error(transparent)]
    Ssm(#[from] bst_ssm::SsmError),
    #[error(transparent)]
    Data(#[from] bst_data::DataError),
    #[error("training diverged at step {step}: {what} is {value}")]
    NonFinite { step: usize, what: String, value: f64 },
    #[error("interrupted at step {step}")]
    Interrupted { step: usize },
    #[error("libtorch autocast: {reason}")]
    Autocast { reason: String },
    #[error(transparent)]
    Torch(#[from] tch::TchError),
    #[error("checkpoint {path}: {reason}")]
    Checkpoint { path: std::path::PathBuf, reason: String },
}

impl ModelError {
    pub(crate) fn invalid(key: &str, value: impl std::fmt::Debug, reason: impl Into<String>) -> Self {
        ModelError::Invalid(InvalidConfig::new(key, value, reason))
    }
}
