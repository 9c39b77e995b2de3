//! Errors raised while building attention layers.

/// A configuration that cannot build an attention layer; the message names the offending key.
#[derive(Debug, thiserror::Error)]
pub enum AttnError {
    #[error("{key} = {value}: {reason}")]
    InvalidConfig { key: &'static str, value: String, reason: String },
    #[error(transparent)]
    Ssm(#[from] bst_ssm::SsmError),
}

impl AttnError {
    pub(crate) fn invalid(key: &'static str, value: impl ToString, reason: impl ToString) -> Self {
        AttnError::InvalidConfig { key, value: value.to_string(), reason: reason.to_string() }
    }
}
