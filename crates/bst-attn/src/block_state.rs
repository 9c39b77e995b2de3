//! The Block-State Transformer layer (Fathi et al. 2023, §3), single-head (SH) context states.
//!
//! 1. The SSM sublayer runs over the whole sequence at once (FFT convolution), giving one
//!    context state per position: `[batch, seq, d_model]`.
//! 2. The sequence is cut into blocks of W tokens, all processed in parallel (no recurrence
//!    between blocks). Each block runs SLIDE self-attention (own block causal + previous block)
//!    and, with separate queries, cross-attends to the W context states at its own positions
//!    under a causal mask: query i sees context states at positions <= i (S = W). The state at
//!    position i summarises tokens <= i, so the diagonal is allowed (the paper leaves the
//!    diagonal unstated; including it is still causal and lets a token see its own summary).
//! 3. Self- and cross-attention outputs are concatenated per position and projected back to
//!    d_model, as in BRECT's vertical direction (meliad combines the two attention results with
//!    one projection). The caller adds the residual and the MLP.
//!
//! SH projects the one SSM output to keys/values of all heads with one linear map ("FFN/linear
//! layers project each context vector to the H heads"); the cross-attention has no position
//! embedding, since the convolution outputs already carry position.

use tch::{nn, nn::Module, Tensor};

use crate::block_attention::split_heads;
use crate::block_attention::BlockAttentionHeads;
use crate::{block_attention, AttnConfig, AttnError, BlockScope, HeadDims};
use bst_ssm::{SsmConfig, SsmKind, SsmSublayer};

/// How the SSM output is turned into context states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContextVariant {
    /// Single head: one SSM output, S = W states at the block's own positions, causal mask.
    Sh,
}

impl std::fmt::Display for ContextVariant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ContextVariant::Sh => "SH",
        })
    }
}

/// One BST attention sublayer: SSM context states + SLIDE self-attention + cross-attention.
#[derive(Debug)]
pub struct BstAttention {
    ssm: SsmSublayer,
    self_attn: BlockAttentionHeads,
    cross_q: nn::Linear,
    cross_kv: nn::Linear,
    out: nn::Linear,
    dims: HeadDims,
    window: i64,
}

impl BstAttention {
    pub fn new(
        vs: &nn::Path,
        dims: HeadDims,
        attn: &AttnConfig,
        variant: ContextVariant,
        ssm_kind: SsmKind,
        ssm: &SsmConfig,
        max_len: usize,
    ) -> Result<Self, AttnError> {
        let ContextVariant::Sh = variant;
        let d = dims.d_model as i64;
        let self_attn = BlockAttentionHeads::new(&(vs / "self_attn"), dims, attn, BlockScope::OwnAndPrevious)?;
        Ok(Self {
            ssm: SsmSublayer::new(&(vs / "ssm"), dims.d_model, dims.d_model, 1, ssm_kind, ssm, max_len)?,
            self_attn,
            cross_q: nn::linear(vs / "cross_q", d, d, Default::default()),
            cross_kv: nn::linear(vs / "cross_kv", d, 2 * d, Default::default()),
            out: nn::linear(vs / "out", 2 * d, d, Default::default()),
            dims,
            window: attn.window as i64,
        })
    }

    /// Cross-attention of each block's tokens to the context states at the block's own
    /// positions, causal (query i sees states <= i).
    ///
    /// # Shapes
    /// - `xs`, `context`: `[batch, seq, d_model]` -> `[batch, seq, n_heads, head_dim]`
    pub fn cross_attend(&self, xs: &Tensor, context: &Tensor, train: bool) -> Tensor {
        let q = split_heads(&self.cross_q.forward(xs), 1, &self.dims).remove(0);
        let kv = split_heads(&self.cross_kv.forward(context), 2, &self.dims);
        let dropout = if train { self.dims.dropout } else { 0.0 };
        block_attention(&q, &kv[0], &kv[1], self.window, BlockScope::Own, dropout)
    }

    /// The layer with the SSM output given explicitly (used by tests to substitute the context).
    ///
    /// # Shapes
    /// - `xs`, `context`: `[batch, seq, d_model]` -> `[batch, seq, d_model]`
    pub fn forward_with_context(&self, xs: &Tensor, context: &Tensor, train: bool) -> Tensor {
        let y_self = self.self_attn.attend(xs, train).flatten(2, 3); // [b, seq, d]
        let y_cross = self.cross_attend(xs, context, train).flatten(2, 3); // [b, seq, d]
        self.out.forward(&Tensor::cat(&[y_self, y_cross], -1)).dropout(self.dims.dropout, train)
    }
}

impl nn::ModuleT for BstAttention {
    /// # Shapes
    /// - `xs`: `[batch, seq, d_model]` -> `[batch, seq, d_model]`
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let context = self.ssm.forward_t(xs, train).squeeze_dim(2); // [b, seq, d]: whole sequence at once
        self.forward_with_context(xs, &context, train)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{nn::ModuleT, Device, Kind};

    fn layer(vs: &nn::VarStore, window: usize) -> BstAttention {
        let dims = HeadDims { d_model: 16, n_heads: 2, dropout: 0.0 };
        let attn = AttnConfig { window, ..AttnConfig::default() };
        BstAttention::new(&vs.root(), dims, &attn, ContextVariant::Sh, SsmKind::S4d, &SsmConfig::default(), 64).unwrap()
    }

    #[test]
    fn changing_token_t_never_changes_outputs_before_t() {
        tch::manual_seed(2);
        let vs = nn::VarStore::new(Device::Cpu);
        let bst = layer(&vs, 4);
        let xs = Tensor::randn([2, 16, 16], (Kind::Float, Device::Cpu));
        let ys = bst.forward_t(&xs, false);
        assert_eq!(ys.size(), vec![2, 16, 16]);
        for t in [1, 4, 7, 8, 15] {
            let xs2 = xs.copy();
            let _ = xs2.narrow(1, t, 1).fill_(-4.0);
            let ys2 = bst.forward_t(&xs2, false);
            let before = (ys.narrow(1, 0, t) - ys2.narrow(1, 0, t)).abs().max().double_value(&[]);
            assert!(before < 1e-5, "token {t} changed earlier outputs by {before}");
            let at = (ys.narrow(1, t, 1) - ys2.narrow(1, t, 1)).abs().max().double_value(&[]);
            assert!(at > 1e-4, "token {t} should change its own output");
        }
    }

    #[test]
    fn context_from_an_earlier_block_reaches_later_tokens_only_through_the_ssm() {
        // With W = 4, token 0 lies two blocks before token 12: SLIDE cannot see it, so any
        // influence on token 12 must come through the SSM context states.
        tch::manual_seed(3);
        let vs = nn::VarStore::new(Device::Cpu);
        let bst = layer(&vs, 4);
        let xs = Tensor::randn([1, 16, 16], (Kind::Float, Device::Cpu));
        let xs2 = xs.copy();
        let _ = xs2.narrow(1, 0, 1).fill_(3.0);
        let context = xs.zeros_like();
        let far = |a: &Tensor, b: &Tensor| (a.narrow(1, 12, 4) - b.narrow(1, 12, 4)).abs().max().double_value(&[]);
        let without_ssm = far(&bst.forward_with_context(&xs, &context, false), &bst.forward_with_context(&xs2, &context, false));
        assert!(without_ssm < 1e-6, "SLIDE alone leaked across two blocks: {without_ssm}");
        let with_ssm = far(&bst.forward_t(&xs, false), &bst.forward_t(&xs2, false));
        assert!(with_ssm > 1e-5, "the SSM context should carry token 0 to block 3 ({with_ssm})");
    }

    #[test]
    fn gradients_reach_every_parameter() {
        tch::manual_seed(4);
        let vs = nn::VarStore::new(Device::Cpu);
        let bst = layer(&vs, 8);
        let xs = Tensor::randn([1, 16, 16], (Kind::Float, Device::Cpu));
        bst.forward_t(&xs, false).square().sum(Kind::Float).backward();
        for (name, var) in vs.variables() {
            let g = var.grad();
            assert!(g.defined(), "{name} has no gradient");
            assert!(g.isfinite().all().int64_value(&[]) == 1, "{name} has a non-finite gradient");
            assert!(g.abs().sum(Kind::Float).double_value(&[]) > 0.0, "{name} has an all-zero gradient");
        }
    }
}
