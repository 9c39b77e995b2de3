//! Errors raised while building attention layers.

/// A configuration that cannot build an attention layer (named by its full dotted key), or an
/// SSM sublayer that cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum AttnError {
    #[error(transparent)]
    Invalid(#[from] bst_core::InvalidConfig),
    #[error(transparent)]
    Ssm(#[from] bst_ssm::SsmError),
}
