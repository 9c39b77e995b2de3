//! The Block-State Transformer layer (Fathi et al. 2023, §3) with its three kinds of context
//! states: SH, MH and MF.
//!
//! 1. The SSM sublayer runs over the whole sequence at once (FFT convolution).
//! 2. The sequence is cut into blocks of W tokens, all processed in parallel (no recurrence
//!    between blocks). Each block runs SLIDE self-attention (the window of `attn.window_mask`,
//!    meliad's W previous tokens by default) and, with separate queries, cross-attends to its
//!    context states.
//! 3. Self- and cross-attention outputs are concatenated per position and projected back to
//!    d_model, as in BRECT's vertical direction (meliad combines the two results with one
//!    projection). The caller adds the residual and the MLP.
//!
//! Context states per variant (paper §3.2; details the paper leaves open are marked *choice*):
//! - **SH**: one SSM output; block k cross-attends to the W states at its own positions under a
//!   causal mask, query i seeing states at positions <= i (S = W). The state at position i
//!   summarises tokens <= i, so the diagonal is allowed (*choice*: the paper does not say; it is
//!   causal). One linear map projects each state to the keys/values of all heads.
//! - **MH**: as SH, but each head gets its own SSM output (the paper's H separate C matrices). We
//!   give each head a whole filter bank (own C and also own A and dt; *choice*: cheaper to build
//!   from banks, strictly more expressive) and its own key/value projection.
//! - **MF**: S separate SSM filters; block k takes each filter's output at the last token of block
//!   k-1, stacked as S states (block 0 gets a learned initial context, *choice*), plus learned
//!   context IDs since the states have no order. Every state comes from the past, so no mask.
//!   S is independent of W (the paper's appendix pseudocode uses S = 32). Each filter is a whole
//!   bank of d/4 kernels, so MF's kernel parameters grow with S: with explicit unstructured taps
//!   that is S x d/4 x L, which is why paper-scale profiles use implicit unstructured filters.
//! The cross-attention has no position embedding: the convolution outputs already carry position.

use bst_core::params::{linear, var};
use bst_core::ParamGroup;
use bst_ssm::{SsmKind, SsmLayerConfig, SsmSublayer};
use tch::{nn, nn::Module, nn::ModuleT, Kind, Tensor};

use crate::block_attention::{from_blocks, split_heads, to_blocks, BlockAttentionHeads};
use crate::{block_attention, BlockPattern, BlockScope, HeadDims, LayerConfig, Mixer, MixerState};

/// How the SSM output is turned into context states.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContextVariant {
    /// Single head: one SSM output, S = W states at the block's own positions, causal mask.
    Sh,
    /// Multi head: one SSM output per attention head, otherwise as SH.
    Mh,
    /// Multi filter: S filters read at the end of the previous block, with context IDs.
    Mf,
}

impl std::fmt::Display for ContextVariant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ContextVariant::Sh => "SH",
            ContextVariant::Mh => "MH",
            ContextVariant::Mf => "MF",
        })
    }
}

/// How the context states become keys and values.
#[derive(Debug)]
enum ContextProjection {
    /// One map for all heads (SH, MF): `[d] -> [2 d]`.
    Shared(nn::Linear),
    /// One map per head (MH): weights `[heads, d, 2 head_dim]`.
    PerHead(Tensor),
}

/// MF's extra parameters.
#[derive(Debug)]
struct MultiFilter {
    context_ids: Tensor,     // [S, d]
    initial_context: Tensor, // [S, d]: the context of block 0
}

/// One BST attention sublayer: SSM context states + SLIDE self-attention + cross-attention.
#[derive(Debug)]
pub struct BstAttention {
    ssm: SsmSublayer,
    self_attn: BlockAttentionHeads,
    cross_q: nn::Linear,
    cross_kv: ContextProjection,
    multi_filter: Option<MultiFilter>,
    out: nn::Linear,
    dims: HeadDims,
    window: i64,
    variant: ContextVariant,
}

impl BstAttention {
    /// A BST layer with `variant` context states from an SSM of family `ssm_kind`; MF reads
    /// `cfg.context_states` filters (S), SH and MH use S = W.
    pub fn new(vs: &nn::Path, cfg: &LayerConfig, variant: ContextVariant, ssm_kind: SsmKind) -> Self {
        let dims = cfg.dims;
        let d = dims.d_model as i64;
        let banks = match variant {
            ContextVariant::Sh => 1,
            ContextVariant::Mh => dims.n_heads,
            ContextVariant::Mf => cfg.context_states,
        };
        let cross_kv = match variant {
            ContextVariant::Mh => {
                let hd = dims.head_dim() as i64;
                let bound = 1.0 / (d as f64).sqrt();
                let init = nn::Init::Uniform { lo: -bound, up: bound };
                ContextProjection::PerHead(var(vs, "cross_kv_heads", &[dims.n_heads as i64, d, 2 * hd], init, ParamGroup::Decay))
            }
            _ => ContextProjection::Shared(linear(&(vs / "cross_kv"), d, 2 * d)),
        };
        let multi_filter = (variant == ContextVariant::Mf).then(|| {
            let s = cfg.context_states as i64;
            let learned = |name: &str| var(vs, name, &[s, d], nn::Init::Randn { mean: 0.0, stdev: 0.02 }, ParamGroup::NoDecay);
            MultiFilter { context_ids: learned("context_ids"), initial_context: learned("initial_context") }
        });
        let ssm = SsmLayerConfig { banks, ..SsmLayerConfig::new(&cfg.ssm, ssm_kind, dims.d_model, cfg.max_len) };
        Self {
            ssm: SsmSublayer::new(&(vs / "ssm"), &ssm),
            self_attn: BlockAttentionHeads::new(&(vs / "self_attn"), cfg),
            cross_q: linear(&(vs / "cross_q"), d, d),
            cross_kv,
            multi_filter,
            out: linear(&(vs / "out"), 2 * d, d),
            dims,
            window: cfg.window(),
            variant,
        }
    }

    /// Context states of every block.
    ///
    /// # Shapes
    /// - `xs`: `[batch, seq, d_model]` -> SH/MH: `[batch, seq, banks, d_model]` (one state per
    ///   position); MF: `[batch, blocks, S, d_model]` (S states per block)
    pub fn context(&self, xs: &Tensor, train: bool) -> Tensor {
        let Some(mf) = &self.multi_filter else {
            return self.ssm.forward_t(xs, train);
        };
        let (b, seq, _) = xs.size3().unwrap();
        let blocks = seq / self.window;
        // each filter's output at the last token of blocks 0..blocks-1, for blocks 1..blocks
        let ends = Tensor::arange_start(1, blocks, (Kind::Int64, xs.device())) * self.window - 1;
        let states = self.ssm.forward_at(xs, &ends, train); // [b, blocks-1, S, d]
        let (s, d) = mf.initial_context.size2().unwrap();
        let first = mf.initial_context.unsqueeze(0).unsqueeze(0).expand([b, 1, s, d], false);
        Tensor::cat(&[first, states], 1) + &mf.context_ids
    }

    /// SH/MH's causal cross-attention mask: the states at the block's own positions up to the query's.
    fn own_block(&self) -> BlockPattern {
        BlockPattern { window: self.window, scope: BlockScope::Own, cache_grad: true }
    }

    /// Cross-attention of each block's tokens to its context states.
    ///
    /// # Shapes
    /// - `xs`: `[batch, seq, d_model]`, `context` as returned by [`Self::context`]
    /// - returns `[batch, seq, n_heads, head_dim]`
    pub fn cross_attend(&self, xs: &Tensor, context: &Tensor, train: bool) -> Tensor {
        let q = split_heads(&self.cross_q.forward(xs), 1, &self.dims).remove(0); // [b, seq, h, hd]
        let dropout = if train { self.dims.dropout } else { 0.0 };
        let (h, hd) = (self.dims.n_heads as i64, self.dims.head_dim() as i64);
        match (&self.cross_kv, self.variant) {
            (ContextProjection::Shared(kv), ContextVariant::Mf) => {
                let (b, blocks, s, _) = context.size4().unwrap();
                let kv = kv.forward(context).view([b * blocks, s, 2, h, hd]).permute([2, 0, 3, 1, 4]); // [2, b*nb, h, S, hd]
                let qb = to_blocks(&q, self.window); // [b*nb, h, W, hd]
                let y = Tensor::scaled_dot_product_attention(&qb, &kv.get(0), &kv.get(1), None::<Tensor>, dropout, false, None, false);
                from_blocks(&y, b)
            }
            (ContextProjection::Shared(kv), _) => {
                let kv = split_heads(&kv.forward(&context.squeeze_dim(2)), 2, &self.dims);
                block_attention(&q, &kv[0], &kv[1], self.own_block(), dropout, None)
            }
            (ContextProjection::PerHead(w), _) => {
                let kv = Tensor::einsum("bshd,hde->bshe", &[context, w], None::<i64>); // [b, seq, h, 2 hd]
                block_attention(&q, &kv.narrow(-1, 0, hd), &kv.narrow(-1, hd, hd), self.own_block(), dropout, None)
            }
        }
    }

    /// The layer with the context given explicitly (tests substitute it), from a fresh state.
    ///
    /// # Shapes
    /// - `xs`: `[batch, seq, d_model]`, `context` as from [`Self::context`] -> `[batch, seq, d_model]`
    pub fn forward_with_context(&self, xs: &Tensor, context: &Tensor, train: bool) -> Tensor {
        self.forward_with_context_and_state(xs, context, &mut MixerState::Fresh, train)
    }

    /// The layer with the context given explicitly, its self-attention reading and updating the
    /// block carried in `state`.
    fn forward_with_context_and_state(&self, xs: &Tensor, context: &Tensor, state: &mut MixerState, train: bool) -> Tensor {
        let y_self = self.self_attn.attend_with_state(xs, state, train).flatten(2, 3); // [b, seq, d]
        let y_cross = self.cross_attend(xs, context, train).flatten(2, 3); // [b, seq, d]
        self.out.forward(&Tensor::cat(&[y_self, y_cross], -1)).dropout(self.dims.dropout, train)
    }
}

impl nn::ModuleT for BstAttention {
    /// # Shapes
    /// - `xs`: `[batch, seq, d_model]` -> `[batch, seq, d_model]`
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let context = self.context(xs, train); // whole sequence at once
        self.forward_with_context(xs, &context, train)
    }
}

impl Mixer for BstAttention {
    /// The SSM runs over this call's input only (no SSM state across calls: the paper's BST has
    /// no recurrence across segments); the self-attention carries its last block if configured.
    fn forward(&self, xs: &Tensor, state: &mut MixerState, train: bool) -> Tensor {
        let context = self.context(xs, train);
        self.forward_with_context_and_state(xs, &context, state, train)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mask::{masked_attention_reference, own_block_mask};
    use tch::Device;

    const VARIANTS: [ContextVariant; 3] = [ContextVariant::Sh, ContextVariant::Mh, ContextVariant::Mf];

    fn layer(vs: &nn::VarStore, window: usize, variant: ContextVariant) -> BstAttention {
        let mut cfg = LayerConfig::small(16, 2, window);
        (cfg.context_states, cfg.max_len) = (3, 64);
        BstAttention::new(&vs.root(), &cfg, variant, SsmKind::S4d)
    }

    #[test]
    fn changing_token_t_never_changes_outputs_before_t() {
        for variant in VARIANTS {
            tch::manual_seed(2);
            let vs = nn::VarStore::new(Device::Cpu);
            let bst = layer(&vs, 4, variant);
            let xs = Tensor::randn([2, 16, 16], (Kind::Float, Device::Cpu));
            let ys = bst.forward_t(&xs, false);
            assert_eq!(ys.size(), vec![2, 16, 16]);
            for t in [1, 3, 4, 7, 8, 15] {
                let xs2 = xs.copy();
                let _ = xs2.narrow(1, t, 1).fill_(-4.0);
                let ys2 = bst.forward_t(&xs2, false);
                let before = (ys.narrow(1, 0, t) - ys2.narrow(1, 0, t)).abs().max().double_value(&[]);
                assert!(before < 1e-5, "{variant}: token {t} changed earlier outputs by {before}");
                let at = (ys.narrow(1, t, 1) - ys2.narrow(1, t, 1)).abs().max().double_value(&[]);
                assert!(at > 1e-4, "{variant}: token {t} should change its own output");
            }
        }
    }

    #[test]
    fn context_from_an_earlier_block_reaches_later_tokens_only_through_the_ssm() {
        // With W = 4, token 0 lies two blocks before token 12: SLIDE cannot see it, so any
        // influence on token 12 must come through the SSM context states.
        for variant in VARIANTS {
            tch::manual_seed(3);
            let vs = nn::VarStore::new(Device::Cpu);
            let bst = layer(&vs, 4, variant);
            let xs = Tensor::randn([1, 16, 16], (Kind::Float, Device::Cpu));
            let xs2 = xs.copy();
            let _ = xs2.narrow(1, 0, 1).fill_(3.0);
            let far = |a: &Tensor, b: &Tensor| (a.narrow(1, 12, 4) - b.narrow(1, 12, 4)).abs().max().double_value(&[]);
            let fixed = bst.context(&xs, false).zeros_like();
            let without_ssm = far(&bst.forward_with_context(&xs, &fixed, false), &bst.forward_with_context(&xs2, &fixed, false));
            assert!(without_ssm < 1e-6, "{variant}: SLIDE alone leaked across two blocks: {without_ssm}");
            let with_ssm = far(&bst.forward_t(&xs, false), &bst.forward_t(&xs2, false));
            assert!(with_ssm > 1e-5, "{variant}: the SSM context should carry token 0 to block 3 ({with_ssm})");
        }
    }

    /// With the SSM output replaced by the identity (context = the layer input), SH is SLIDE
    /// self-attention next to block-causal cross-attention, both against the dense masks.
    #[test]
    fn sh_with_identity_ssm_is_the_expected_masked_attention() {
        tch::manual_seed(6);
        let vs = nn::VarStore::new(Device::Cpu);
        let bst = layer(&vs, 4, ContextVariant::Sh);
        let xs = Tensor::randn([2, 12, 16], (Kind::Float, Device::Cpu));
        let y = bst.forward_with_context(&xs, &xs.unsqueeze(2), false);

        let dims = bst.dims;
        let q = split_heads(&bst.cross_q.forward(&xs), 1, &dims).remove(0);
        let ContextProjection::Shared(kv) = &bst.cross_kv else { unreachable!() };
        let kv = split_heads(&kv.forward(&xs), 2, &dims);
        let cross = masked_attention_reference(&q, &kv[0], &kv[1], &own_block_mask(12, 4, Device::Cpu));
        let own_self = bst.self_attn.attend(&xs, false);
        let reference = bst.out.forward(&Tensor::cat(&[own_self.flatten(2, 3), cross.flatten(2, 3)], -1));
        let err = (&y - reference).abs().max().double_value(&[]);
        assert!(err < 1e-5, "SH with identity context differs from the dense reference by {err}");
    }

    #[test]
    fn mf_context_is_read_at_the_end_of_the_previous_block() {
        tch::manual_seed(7);
        let vs = nn::VarStore::new(Device::Cpu);
        let bst = layer(&vs, 4, ContextVariant::Mf);
        let xs = Tensor::randn([1, 12, 16], (Kind::Float, Device::Cpu));
        let ctx = bst.context(&xs, false);
        assert_eq!(ctx.size(), vec![1, 3, 3, 16]);
        let mf = bst.multi_filter.as_ref().unwrap();
        let full = bst.ssm.forward_t(&xs, false); // [1, 12, S, d]
        assert!((ctx.get(0).get(0) - (&mf.initial_context + &mf.context_ids)).abs().max().double_value(&[]) < 1e-6);
        assert!((ctx.get(0).get(2) - (full.get(0).get(7) + &mf.context_ids)).abs().max().double_value(&[]) < 1e-5);
    }

    #[test]
    fn gradients_reach_every_parameter() {
        for variant in VARIANTS {
            tch::manual_seed(4);
            let vs = nn::VarStore::new(Device::Cpu);
            let bst = layer(&vs, 8, variant);
            let xs = Tensor::randn([1, 16, 16], (Kind::Float, Device::Cpu));
            bst.forward_t(&xs, true).square().sum(Kind::Float).backward();
            for (name, var) in vs.variables() {
                let g = var.grad();
                assert!(g.defined(), "{variant} {name} has no gradient");
                assert!(g.isfinite().all().int64_value(&[]) == 1, "{variant} {name} has a non-finite gradient");
                assert!(g.abs().sum(Kind::Float).double_value(&[]) > 0.0, "{variant} {name} has an all-zero gradient");
            }
        }
    }
}
