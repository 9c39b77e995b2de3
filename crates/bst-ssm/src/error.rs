//! Errors raised while building SSM layers from a configuration.

/// A configuration that cannot build an SSM; the message names the offending key.
#[derive(Debug, thiserror::Error)]
pub enum SsmError {
    #[error("ssm.{key} = {value}: {reason}")]
    InvalidConfig { key: &'static str, value: String, reason: String },
}

impl SsmError {
    pub(crate) fn invalid(key: &'static str, value: impl ToString, reason: impl ToString) -> Self {
        SsmError::InvalidConfig { key, value: value.to_string(), reason: reason.to_string() }
    }
}
