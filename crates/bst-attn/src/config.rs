//! Attention configuration: the `[attn]` table of a run, plus the widths the model decides.

use serde::{Deserialize, Serialize};

use crate::AttnError;

/// The `[attn]` table of a run configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AttnConfig {
    /// Block length W: attention runs over blocks of W tokens (paper: 512).
    pub window: usize,
    /// Base of the rotary position embedding's frequencies.
    pub rope_base: f64,
    /// Whether gradients flow through the previous block's keys/values that SLIDE attends to
    /// (meliad's differentiable cache within a segment); false makes the cache a constant.
    pub slide_cache_grad: bool,
}

impl Default for AttnConfig {
    fn default() -> Self {
        Self { window: 512, rope_base: 10_000.0, slide_cache_grad: true }
    }
}

/// Widths an attention layer gets from the model configuration.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HeadDims {
    pub d_model: usize,
    pub n_heads: usize,
    /// Dropout on attention probabilities and on the layer output, in training mode.
    pub dropout: f64,
}

impl HeadDims {
    pub fn head_dim(&self) -> usize {
        self.d_model / self.n_heads
    }

    /// Checks that heads split d_model evenly into an even head width (RoPE rotates pairs).
    pub fn validate(&self) -> Result<(), AttnError> {
        if self.n_heads == 0 || self.d_model % self.n_heads != 0 {
            return Err(AttnError::invalid(
                "model.n_heads",
                self.n_heads,
                format!("must be >= 1 and divide model.d_model = {}", self.d_model),
            ));
        }
        if self.head_dim() % 2 != 0 {
            return Err(AttnError::invalid(
                "model.n_heads",
                self.n_heads,
                format!("head width d_model/n_heads = {} must be even for rotary embeddings", self.head_dim()),
            ));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(AttnError::invalid("model.dropout", self.dropout, "must be in [0, 1)"));
        }
        Ok(())
    }
}

impl AttnConfig {
    pub fn validate(&self) -> Result<(), AttnError> {
        if self.window == 0 {
            return Err(AttnError::invalid("attn.window", self.window, "must be >= 1"));
        }
        if !(self.rope_base > 1.0) {
            return Err(AttnError::invalid("attn.rope_base", self.rope_base, "must be > 1"));
        }
        Ok(())
    }
}
