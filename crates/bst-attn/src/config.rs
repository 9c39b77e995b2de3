//! Attention configuration: the `[attn]` table of a run, and [`LayerConfig`], the one struct every
//! sequence mixer is built from.

use bst_core::InvalidConfig;
use bst_ssm::SsmConfig;
use serde::{Deserialize, Serialize};

/// Which earlier tokens a query of a windowed self-attention layer sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WindowMask {
    /// meliad's window (`position.causal_mask`: `-W <= k - q < 0`): exactly the W tokens
    /// strictly before the query, not the query itself. The first token of a text has no earlier
    /// token: its self-attention output is zero (meliad's `safe_softmax` attends to nothing when
    /// everything is masked).
    #[default]
    Sliding,
    /// The whole previous block plus the own block causally, the query included: W to 2W-1 keys
    /// depending on the position in the block (this lab's behaviour before it followed meliad).
    Block,
}

impl std::fmt::Display for WindowMask {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WindowMask::Sliding => "sliding",
            WindowMask::Block => "block",
        })
    }
}

/// The `[attn]` table of a run configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AttnConfig {
    /// Block length W: windowed attention runs over blocks of W tokens (paper: 512).
    pub window: usize,
    /// Which earlier tokens SLIDE, the BST layers' self-attention and BRECT's vertical path see:
    /// `"sliding"` (default, meliad: the W tokens before the query) or `"block"` (the previous
    /// block whole and the own block causally, query included).
    pub window_mask: WindowMask,
    /// Base of the rotary position embedding's frequencies.
    pub rope_base: f64,
    /// Whether gradients flow through the previous block's keys/values that SLIDE attends to
    /// (meliad's differentiable cache within a segment); false makes the cache a constant.
    pub slide_cache_grad: bool,
    /// Whether windowed self-attention (SLIDE layers, the BST layers' self-attention) keeps the
    /// last block's keys/values, without gradient, for the next window of the same text, as
    /// meliad does across segments (BRECT's cell always does). Makes those models stateful: they
    /// train on consecutive windows (`data.sampling = "auto"`) and carry the block through
    /// evaluation. false: every window starts cold.
    pub cache_across_windows: bool,
}

impl Default for AttnConfig {
    fn default() -> Self {
        Self { window: 512, window_mask: WindowMask::Sliding, rope_base: 10_000.0, slide_cache_grad: true, cache_across_windows: true }
    }
}

impl AttnConfig {
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        if self.window == 0 {
            return Err(InvalidConfig::new("attn.window", self.window, "must be >= 1"));
        }
        if !(self.rope_base > 1.0) {
            return Err(InvalidConfig::new("attn.rope_base", self.rope_base, "must be > 1"));
        }
        Ok(())
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
    pub fn validate(&self) -> Result<(), InvalidConfig> {
        if self.n_heads == 0 || self.d_model % self.n_heads != 0 {
            return Err(InvalidConfig::new("model.n_heads", self.n_heads, format!("must be >= 1 and divide model.d_model = {}", self.d_model)));
        }
        if self.head_dim() % 2 != 0 {
            return Err(InvalidConfig::new("model.n_heads", self.n_heads, format!("head width d_model/n_heads = {} must be even for rotary embeddings", self.head_dim())));
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(InvalidConfig::new("model.dropout", self.dropout, "must be in [0, 1)"));
        }
        Ok(())
    }
}

/// Everything a sequence mixer may read, in one struct (candle's `new(cfg, vb)`): built once per
/// model from a validated run configuration, so constructors do not re-check it. Each mixer reads
/// the fields it needs.
#[derive(Debug, Clone, PartialEq)]
pub struct LayerConfig {
    pub dims: HeadDims,
    pub attn: AttnConfig,
    pub ssm: SsmConfig,
    /// Training length L (the number of taps of explicit unstructured filters).
    pub max_len: usize,
    /// S: BST:MF's filters, BRECT's recurrent states.
    pub context_states: usize,
    /// Transformer-XL: tokens per segment.
    pub segment_len: usize,
    /// Transformer-XL: positions of earlier segments kept in memory.
    pub memory_len: usize,
}

impl LayerConfig {
    /// A small configuration for tests and benchmarks: `d_model` wide, `n_heads` heads, window
    /// W, no dropout, S = 4 states, XL segments of 2W with memory 2W, training length 4W.
    pub fn small(d_model: usize, n_heads: usize, window: usize) -> Self {
        Self {
            dims: HeadDims { d_model, n_heads, dropout: 0.0 },
            attn: AttnConfig { window, ..AttnConfig::default() },
            ssm: SsmConfig::default(),
            max_len: 4 * window,
            context_states: 4,
            segment_len: 2 * window,
            memory_len: 2 * window,
        }
    }

    pub fn window(&self) -> i64 {
        self.attn.window as i64
    }
}
