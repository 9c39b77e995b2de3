//! Errors raised while building or stepping SSM layers.

use bst_core::InvalidConfig;

/// A configuration that cannot build an SSM, or a request the kernel family cannot serve.
#[derive(Debug, thiserror::Error)]
pub enum SsmError {
    #[error(transparent)]
    Invalid(#[from] InvalidConfig),
    #[error("{kind:?} kernels have no recurrent (step) mode")]
    NoRecurrentMode { kind: crate::SsmKind },
}

impl SsmError {
    /// An invalid `[ssm]` value: `key` is the name inside the table (`state_size`), the error
    /// names the full key (`ssm.state_size`).
    pub(crate) fn invalid(key: &str, value: impl std::fmt::Debug, reason: impl Into<String>) -> Self {
        SsmError::Invalid(InvalidConfig::new(format!("ssm.{key}"), value, reason))
    }
}
