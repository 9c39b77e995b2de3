//! Attention layers of the Block-State Transformer (Fathi et al. 2023) and its baselines.
//!
//! The sequence is cut into blocks of `W` tokens that are all processed at once
//! (`[batch, blocks, W, d]`): windowed self-attention over the block and the previous one (SLIDE,
//! Hutchins et al. 2022, with meliad's window of the W previous tokens), and, in BST layers,
//! cross-attention to context states taken from an SSM run over the whole sequence. Every
//! sequence mixer implements [`Mixer`]: one `forward(xs, state, train)`, the state explicit.
//! Layer inputs and outputs are `[batch, seq, d_model]`; heads are `[batch, seq, n_heads,
//! head_dim]` before blocking.

pub mod block_attention; // blocked self-attention over W-token blocks: sliding window, block window, own block
pub mod block_state; // the BST layer: SLIDE self-attention + cross-attention to SSM context states (SH, MH, MF)
pub mod brect; // BRECT:FIXED:SKIP, the Block-Recurrent Transformer cell, blocks in sequence
pub mod config; // AttnConfig (the [attn] table), WindowMask, HeadDims, LayerConfig (what every mixer is built from)
pub mod mask; // the attention patterns as explicit [seq, seq] masks: the reference definitions
pub mod mixer; // the Mixer trait (one forward for every sequence mixer) and MixerState (what one carries)
pub mod rope; // rotary position embedding, applied at absolute token positions
pub mod xl; // Transformer-XL attention with a stop-gradient memory; full causal attention

pub use block_attention::{block_attention, BlockAttentionHeads, BlockPattern, BlockScope, BlockSelfAttention, KvCache, PreviousBlock};
pub use block_state::{BstAttention, ContextVariant};
pub use brect::{BrectCell, BrectState};
pub use config::{AttnConfig, HeadDims, LayerConfig, WindowMask};
pub use mixer::{Mixer, MixerState};
pub use rope::Rope;
pub use xl::{XlAttention, XlMemory};
