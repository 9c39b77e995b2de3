//! Errors raised while building or stepping SSM layers.

/// A configuration that cannot build an SSM (the message names the offending key), or a request
/// the kernel family cannot serve.
#[derive(Debug, thiserror::Error)]
pub enum SsmError {
    #[error("ssm.{key} = {value}: {reason}")]
    InvalidConfig { key: &'static str, value: String, reason: String },
    #[error("{kind:?} kernels have no recurrent (step) mode")]
    NoRecurrentMode { kind: crate::SsmKind },
}

impl SsmError {
    pub(crate) fn invalid(key: &'static str, value: impl ToString, reason: impl ToString) -> Self {
        SsmError::InvalidConfig { key, value: value.to_string(), reason: reason.to_string() }
    }
}
