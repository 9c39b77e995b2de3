//! Errors of model construction, training and evaluation.

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("{key} = {value}: {reason}")]
    InvalidConfig { key: &'static str, value: String, reason: String },
    #[error(transparent)]
    Attn(#[from] bst_attn::AttnError),
    #[error(transparent)]
    Ssm(#[from] bst_ssm::SsmError),
    #[error(transparent)]
    Data(#[from] bst_data::DataError),
    #[error("training diverged at step {step}: {what} is {value}")]
    NonFinite { step: usize, what: String, value: f64 },
    #[error("interrupted at step {step}")]
    Interrupted { step: usize },
    #[error(transparent)]
    Torch(#[from] tch::TchError),
    #[error("checkpoint {path}: {reason}")]
    Checkpoint { path: std::path::PathBuf, reason: String },
}

impl ModelError {
    pub(crate) fn invalid(key: &'static str, value: impl std::fmt::Debug, reason: impl ToString) -> Self {
        ModelError::InvalidConfig { key, value: format!("{value:?}"), reason: reason.to_string() }
    }
}
