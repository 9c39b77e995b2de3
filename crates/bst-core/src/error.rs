//! The one configuration error of the workspace.
//!
//! Every crate validates its own table, but the user wrote one file: the error always names the
//! full dotted key as it appears there (`ssm.state_size`, `model.context_states`, `data.vocab_size`),
//! the value found and what is allowed. The other crates wrap it (`#[from] InvalidConfig`), so the
//! message is written once, where the rule lives.

use std::fmt;

/// A configuration value that cannot be used: `key = value: reason`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key} = {value}: {reason}")]
pub struct InvalidConfig {
    /// Full dotted key, e.g. `ssm.state_size`.
    pub key: String,
    /// The offending value, as Rust's `Debug` prints it (strings quoted, lists bracketed).
    pub value: String,
    /// What is wrong and what is allowed.
    pub reason: String,
}

impl InvalidConfig {
    pub fn new(key: impl Into<String>, value: impl fmt::Debug, reason: impl Into<String>) -> Self {
        Self { key: key.into(), value: format!("{value:?}"), reason: reason.into() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_the_key_the_value_and_the_rule() {
        let e = InvalidConfig::new("ssm.state_size", 3usize, "must be an even number >= 2");
        assert_eq!(e.to_string(), "ssm.state_size = 3: must be an even number >= 2");
        let e = InvalidConfig::new("data.corpus", "poems", "expected one of books, latex, code");
        assert_eq!(e.to_string(), "data.corpus = \"poems\": expected one of books, latex, code");
    }
}
