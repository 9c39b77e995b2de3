//! Block-causal self-attention over blocks of W tokens, all blocks at once.
//!
//! `BlockScope::Own` is plain block attention: a token sees the tokens before it in its own block.
//! `BlockScope::OwnAndPrevious` is SLIDE (Hutchins et al. 2022, meliad's sliding-window
//! Block Transformer): a token also sees every token of the previous block, through a
//! differentiable cache of that block's keys/values, so it sees between W and 2W-1 past tokens.
//! (meliad masks the previous block the same way: whole block visible, causal in the current
//! one.) Block 0 has no previous block; its missing keys are masked out.

use tch::{nn, nn::Module, Kind, Tensor};

use crate::{AttnConfig, AttnError, HeadDims, Rope};

/// How far back a block of queries looks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockScope {
    /// Causal inside the query's own block only.
    Own,
    /// The previous block in full, and causal inside the own block (SLIDE).
    OwnAndPrevious,
}

/// `[batch, seq, heads, head_dim]` -> `[batch * blocks, heads, window, head_dim]`
pub(crate) fn to_blocks(xs: &Tensor, window: i64) -> Tensor {
    let (b, seq, h, d) = xs.size4().expect("expected [batch, seq, heads, head_dim]");
    let nb = seq / window;
    xs.view([b, nb, window, h, d]).permute([0, 1, 3, 2, 4]).reshape([b * nb, h, window, d])
}

/// `[batch * blocks, heads, window, head_dim]` -> `[batch, seq, heads, head_dim]`
pub(crate) fn from_blocks(xs: &Tensor, batch: i64) -> Tensor {
    let (bnb, h, w, d) = xs.size4().expect("expected [batch*blocks, heads, window, head_dim]");
    let nb = bnb / batch;
    xs.view([batch, nb, h, w, d]).permute([0, 1, 3, 2, 4]).reshape([batch, nb * w, h, d])
}

/// Keys (or values) of the previous block next to the block's own: `[b*nb, h, 2W, d]`.
/// Block 0 gets a zero block in front, which `previous_block_mask` hides. Without `cache_grad`
/// the previous block's copy is a constant (no gradient flows back through it).
fn with_previous_block(xs: &Tensor, batch: i64, cache_grad: bool) -> Tensor {
    let (bnb, h, w, d) = xs.size4().unwrap();
    let nb = bnb / batch;
    let blocks = xs.view([batch, nb, h, w, d]);
    let previous = Tensor::cat(&[blocks.narrow(1, 0, 1).zeros_like(), blocks.narrow(1, 0, nb - 1)], 1);
    let previous = if cache_grad { previous } else { previous.detach() };
    Tensor::cat(&[previous, blocks], 3).view([bnb, h, 2 * w, d])
}

/// Mask of one block's queries over [previous block, own block]: `[batch*blocks, 1, W, 2W]`.
fn previous_block_mask(batch: i64, blocks: i64, window: i64, device: tch::Device) -> Tensor {
    let own = Tensor::ones([window, window], (Kind::Bool, device)).tril(0);
    let prev = Tensor::ones([window, window], (Kind::Bool, device));
    let mask = Tensor::cat(&[prev, own], 1).unsqueeze(0).repeat([blocks, 1, 1]); // [nb, W, 2W]
    let _ = mask.get(0).narrow(1, 0, window).fill_(0); // block 0 has no previous block
    mask.unsqueeze(0).expand([batch, blocks, window, 2 * window], false).reshape([batch * blocks, 1, window, 2 * window])
}

/// Attention of every query over the keys its block may see (see [`BlockScope`]); with
/// `OwnAndPrevious`, `cache_grad` says whether gradients flow through the previous block's copy.
///
/// # Shapes
/// - `q`, `k`, `v`: `[batch, seq, n_heads, head_dim]`, positions already encoded
/// - returns `[batch, seq, n_heads, head_dim]`
///
/// `seq` must be a multiple of `window`.
pub fn block_attention(q: &Tensor, k: &Tensor, v: &Tensor, window: i64, scope: BlockScope, dropout: f64) -> Tensor {
    block_attention_cached(q, k, v, window, scope, dropout, true)
}

/// [`block_attention`] with the SLIDE cache's gradient chosen (`cache_grad`).
pub fn block_attention_cached(q: &Tensor, k: &Tensor, v: &Tensor, window: i64, scope: BlockScope, dropout: f64, cache_grad: bool) -> Tensor {
    let (batch, seq, _, _) = q.size4().expect("q must be [batch, seq, heads, head_dim]");
    assert!(seq % window == 0, "sequence length {seq} is not a multiple of the window {window}");
    let (qb, kb, vb) = (to_blocks(q, window), to_blocks(k, window), to_blocks(v, window));
    let out = match scope {
        BlockScope::Own => Tensor::scaled_dot_product_attention(&qb, &kb, &vb, None::<Tensor>, dropout, true, None, false),
        BlockScope::OwnAndPrevious => {
            let mask = previous_block_mask(batch, seq / window, window, q.device());
            let (k2, v2) = (with_previous_block(&kb, batch, cache_grad), with_previous_block(&vb, batch, cache_grad));
            Tensor::scaled_dot_product_attention(&qb, &k2, &v2, Some(mask), dropout, false, None, false)
        }
    };
    from_blocks(&out, batch)
}

/// Splits a fused projection `[batch, seq, n * d_model]` into n tensors `[batch, seq, heads, head_dim]`.
pub(crate) fn split_heads(xs: &Tensor, n: i64, dims: &HeadDims) -> Vec<Tensor> {
    let (b, seq, _) = xs.size3().unwrap();
    let (h, d) = (dims.n_heads as i64, dims.head_dim() as i64);
    xs.view([b, seq, n, h, d]).unbind(2)
}

/// Fused q/k/v projection with rotary positions and block attention, without the output
/// projection: the part that SLIDE and the BST layer share.
#[derive(Debug)]
pub struct BlockAttentionHeads {
    qkv: nn::Linear,
    rope: Rope,
    dims: HeadDims,
    window: i64,
    scope: BlockScope,
    cache_grad: bool,
}

impl BlockAttentionHeads {
    pub fn new(vs: &nn::Path, dims: HeadDims, cfg: &AttnConfig, scope: BlockScope) -> Result<Self, AttnError> {
        dims.validate()?;
        cfg.validate()?;
        let d = dims.d_model as i64;
        Ok(Self {
            qkv: nn::linear(vs / "qkv", d, 3 * d, Default::default()),
            rope: Rope::new(dims.head_dim(), cfg.rope_base, vs.device()),
            dims,
            window: cfg.window as i64,
            scope,
            cache_grad: cfg.slide_cache_grad,
        })
    }

    /// Per-head attention output.
    ///
    /// # Shapes
    /// - `xs`: `[batch, seq, d_model]` -> `[batch, seq, n_heads, head_dim]`
    pub fn attend(&self, xs: &Tensor, train: bool) -> Tensor {
        let qkv = split_heads(&self.qkv.forward(xs), 3, &self.dims);
        let (q, k) = (self.rope.apply(&qkv[0]), self.rope.apply(&qkv[1]));
        let dropout = if train { self.dims.dropout } else { 0.0 };
        block_attention_cached(&q, &k, &qkv[2], self.window, self.scope, dropout, self.cache_grad)
    }
}

/// Multi-head block self-attention layer with rotary positions (SLIDE when the scope includes
/// the previous block).
#[derive(Debug)]
pub struct BlockSelfAttention {
    heads: BlockAttentionHeads,
    out: nn::Linear,
    dropout: f64,
}

impl BlockSelfAttention {
    pub fn new(vs: &nn::Path, dims: HeadDims, cfg: &AttnConfig, scope: BlockScope) -> Result<Self, AttnError> {
        let d = dims.d_model as i64;
        Ok(Self {
            heads: BlockAttentionHeads::new(vs, dims, cfg, scope)?,
            out: nn::linear(vs / "out", d, d, Default::default()),
            dropout: dims.dropout,
        })
    }
}

impl nn::ModuleT for BlockSelfAttention {
    /// # Shapes
    /// - `xs`: `[batch, seq, d_model]` -> `[batch, seq, d_model]`
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let y = self.heads.attend(xs, train).flatten(2, 3); // [b, seq, d_model]
        self.out.forward(&y).dropout(self.dropout, train)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mask::{block_mask, masked_attention_reference};
    use tch::{nn::ModuleT, Device};

    fn qkv(b: i64, seq: i64, h: i64, d: i64) -> (Tensor, Tensor, Tensor) {
        let r = || Tensor::randn([b, seq, h, d], (Kind::Double, Device::Cpu));
        (r(), r(), r())
    }

    #[test]
    fn blocked_equals_dense_masked_reference() {
        tch::manual_seed(0);
        for scope in [BlockScope::Own, BlockScope::OwnAndPrevious] {
            for &(b, seq, window) in &[(2, 24, 8), (1, 12, 12), (1, 15, 5), (3, 8, 1)] {
                let (q, k, v) = qkv(b, seq, 3, 4);
                let fast = block_attention(&q, &k, &v, window, scope, 0.0);
                let slow = masked_attention_reference(&q, &k, &v, &block_mask(seq, window, scope, Device::Cpu));
                let err = (&fast - &slow).abs().max().double_value(&[]);
                assert!(err < 1e-9, "{scope:?} seq={seq} W={window}: blocked vs dense differ by {err}");
            }
        }
    }

    #[test]
    fn slide_reaches_into_the_previous_block_only() {
        // The dense mask itself: query 9 (block 2 at W=4) sees keys 4..=9, not 3.
        let m = block_mask(12, 4, BlockScope::OwnAndPrevious, Device::Cpu);
        let row: Vec<i64> = Vec::try_from(m.get(9).to_kind(Kind::Int64)).unwrap();
        assert_eq!(row, vec![0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0]);
        let m = block_mask(12, 4, BlockScope::Own, Device::Cpu);
        let row: Vec<i64> = Vec::try_from(m.get(9).to_kind(Kind::Int64)).unwrap();
        assert_eq!(row, vec![0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0]);
    }

    #[test]
    fn layer_is_causal_and_has_finite_gradients() {
        tch::manual_seed(1);
        let vs = nn::VarStore::new(Device::Cpu);
        let dims = HeadDims { d_model: 16, n_heads: 2, dropout: 0.0 };
        let cfg = AttnConfig { window: 4, ..AttnConfig::default() };
        for (i, scope) in [BlockScope::Own, BlockScope::OwnAndPrevious].into_iter().enumerate() {
            let layer = BlockSelfAttention::new(&(vs.root() / i), dims, &cfg, scope).unwrap();
            let xs = Tensor::randn([2, 16, 16], (Kind::Float, Device::Cpu));
            let ys = layer.forward_t(&xs, false);
            for t in [3, 4, 9, 15] {
                let xs2 = xs.copy();
                let _ = xs2.narrow(1, t, 1).fill_(2.5);
                let ys2 = layer.forward_t(&xs2, false);
                let diff = (ys.narrow(1, 0, t) - ys2.narrow(1, 0, t)).abs().max().double_value(&[]);
                assert!(diff < 1e-5, "{scope:?}: perturbing token {t} changed earlier outputs by {diff}");
            }
            ys.square().sum(Kind::Float).backward();
        }
        for (name, var) in vs.variables() {
            let g = var.grad();
            assert!(g.defined() && g.isfinite().all().int64_value(&[]) == 1, "{name}: bad gradient");
        }
    }

    #[test]
    fn slide_cache_gradient_is_configurable() {
        // d(output of block 1)/d(keys of block 0) is non-zero only through the cache
        for cache_grad in [true, false] {
            let (q, k, v) = qkv(1, 8, 1, 4);
            let k = k.set_requires_grad(true);
            let y = block_attention_cached(&q, &k, &v, 4, BlockScope::OwnAndPrevious, 0.0, cache_grad);
            y.narrow(1, 4, 4).sum(Kind::Double).backward();
            let g = k.grad().narrow(1, 0, 4).abs().sum(Kind::Double).double_value(&[]);
            assert_eq!(g > 0.0, cache_grad, "cache_grad = {cache_grad}: gradient into the previous block {g}");
            // the forward values do not depend on it
            let y2 = block_attention_cached(&q, &k, &v, 4, BlockScope::OwnAndPrevious, 0.0, !cache_grad);
            assert!(y.allclose(&y2, 1e-12, 1e-12, false));
        }
    }

    #[test]
    fn rejects_heads_that_do_not_divide_width() {
        let vs = nn::VarStore::new(Device::Cpu);
        let dims = HeadDims { d_model: 16, n_heads: 3, dropout: 0.0 };
        let err = BlockSelfAttention::new(&vs.root(), dims, &AttnConfig::default(), BlockScope::Own).unwrap_err();
        assert!(err.to_string().contains("model.n_heads"), "{err}");
    }
}
