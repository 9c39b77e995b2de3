//! Attention layers of the Block-State Transformer (Fathi et al. 2023) and its baselines.
//!
//! The sequence is cut into blocks of `W` tokens that are all processed at once
//! (`[batch, blocks, W, d]`): causal self-attention inside a block, optionally over the previous
//! block's keys/values as well (SLIDE, Hutchins et al. 2022), and, in BST layers, cross-attention
//! to context states taken from an SSM run over the whole sequence. Layer inputs and outputs are
//! `[batch, seq, d_model]`; heads are `[batch, seq, n_heads, head_dim]` before blocking.

pub mod block_attention; // block-causal self-attention over W-token blocks, own block or +previous (SLIDE)
pub mod block_state; // the BST layer: SLIDE self-attention + cross-attention to SSM context states (SH, MH, MF)
pub mod brect; // BRECT:FIXED:SKIP, the Block-Recurrent Transformer cell, blocks in sequence
pub mod config; // AttnConfig (the [attn] table) and HeadDims (widths from the model config)
pub mod error; // AttnError: invalid layer configurations
pub mod mask; // the attention patterns as explicit [seq, seq] masks: the reference definition
pub mod rope; // rotary position embedding, applied at absolute token positions
pub mod xl; // Transformer-XL attention with a stop-gradient memory of the previous segment

pub use block_attention::{block_attention, block_attention_cached, BlockAttentionHeads, BlockScope, BlockSelfAttention};
pub use block_state::{BstAttention, BstSpec, ContextVariant};
pub use brect::{BrectCell, BrectState};
pub use xl::XlAttention;
pub use config::{AttnConfig, HeadDims};
pub use error::AttnError;
pub use rope::Rope;
