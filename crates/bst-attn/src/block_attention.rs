//! Block-causal self-attention over blocks of W tokens, all blocks at once.
//!
//! The sequence is cut into blocks of W tokens processed in parallel (`[batch * blocks, heads, W,
//! head_dim]`). Each block's queries attend over the previous block's keys/values and their own
//! (2W keys), under one of three patterns ([`BlockScope`]):
//! - `Sliding`: SLIDE as meliad defines it (Hutchins et al. 2022; `transformer/position.py::
//!   causal_mask`): the W tokens strictly before the query, so every token sees exactly W keys
//!   (fewer at the start of a text). The previous block's keys/values act as a cache that is
//!   differentiable within the segment, as meliad's is.
//! - `OwnAndPrevious`: the whole previous block plus the own block causally, the query included
//!   (W to 2W-1 keys); the `"block"` window mask.
//! - `Own`: causal inside the own block only (used by the SH/MH cross-attention to context states).
//!
//! Block 0's previous block is the last block of the previous call when the layer carries one
//! ([`KvCache`], `attn.cache_across_windows`: meliad keeps it, without gradient, from one segment
//! to the next), else it is missing and masked out. Under `Sliding` the first token of a text
//! then has no key at all; it attends to nothing and its output is zero (meliad's `safe_softmax`
//! gives the same when every key is masked). We get that zero without a fully masked row (which
//! some attention kernels turn into NaN): the hidden previous block's values are zero and the
//! query attends to one of them only, so its output is exactly 0 and its gradients vanish.
//!
//! Copies are kept to one per tensor where the layout allows: blocks of queries, outputs and
//! the own-block keys are views of the projections (the fused attention kernel reads strides),
//! and each block's 2W keys/values are overlapping windows over the keys with the previous block
//! prepended (a view for a single sequence, one more copy for a batch).

use bst_core::params::linear;
use tch::{nn, nn::Module, Device, Kind, Tensor};

use crate::mixer::{mask_to_u8, named};
use crate::{HeadDims, LayerConfig, Mixer, MixerState, Rope, WindowMask};

/// Which keys a block's queries see.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockScope {
    /// Causal inside the query's own block only, the query included.
    Own,
    /// The W tokens strictly before the query (meliad's sliding window).
    Sliding,
    /// The previous block in full and the own block causally, the query included.
    OwnAndPrevious,
}

impl From<WindowMask> for BlockScope {
    fn from(mask: WindowMask) -> Self {
        match mask {
            WindowMask::Sliding => BlockScope::Sliding,
            WindowMask::Block => BlockScope::OwnAndPrevious,
        }
    }
}

/// A blocked attention pattern: block length, scope and whether gradients flow into the
/// previous block's keys/values.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BlockPattern {
    pub window: i64,
    pub scope: BlockScope,
    /// Gradients flow through the previous block's keys/values (false: a constant cache).
    pub cache_grad: bool,
}

impl BlockPattern {
    /// The self-attention pattern of a layer configuration.
    pub fn self_attention(cfg: &LayerConfig) -> Self {
        Self { window: cfg.window(), scope: cfg.attn.window_mask.into(), cache_grad: cfg.attn.slide_cache_grad }
    }
}

/// The last block of a call, kept for the next call of a windowed self-attention layer.
#[derive(Debug)]
pub struct KvCache {
    /// Un-rotated keys and values of the last block, `[batch, W, n_heads, head_dim]` each.
    pub keys: Tensor,
    pub values: Tensor,
    /// `[batch]` bool: whether the block belongs to the row's current text.
    pub visible: Tensor,
}

impl KvCache {
    pub fn detached(&self) -> Self {
        Self { keys: self.keys.detach(), values: self.values.detach(), visible: self.visible.shallow_clone() }
    }

    /// `rows` (`[batch]` bool) start a new text: their cached block is hidden.
    pub fn reset_rows(&mut self, rows: &Tensor) {
        self.visible = self.visible.logical_and(&rows.logical_not());
    }

    pub(crate) fn tensors(&self) -> Vec<(String, Tensor)> {
        vec![("window.keys".to_owned(), self.keys.shallow_clone()), ("window.values".to_owned(), self.values.shallow_clone()), ("window.visible".to_owned(), mask_to_u8(&self.visible))]
    }

    pub(crate) fn from_tensors(t: &[(String, Tensor)]) -> Result<Self, String> {
        Ok(Self { keys: named(t, "window.keys")?, values: named(t, "window.values")?, visible: named(t, "window.visible")?.to_kind(Kind::Bool) })
    }
}

/// The block before block 0, as [`block_attention`] reads it: keys already rotated to positions
/// `-W..0`, `[batch, W, heads, head_dim]`, and which rows may see it (`[batch]` bool).
#[derive(Debug)]
pub struct PreviousBlock<'a> {
    pub keys: Tensor,
    pub values: &'a Tensor,
    pub visible: &'a Tensor,
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

/// Keys (or values) of each block's previous block next to its own, `[b*nb, h, 2W, d]`, from
/// `xs` `[b, seq, h, d]`. Block 0's previous block is `first` (the carried block, `[b, W, h, d]`)
/// or a zero block, which the mask hides. With `cache_grad` the keys with the previous block
/// prepended are copied once and each block's 2W keys are a window over them (a view when
/// b = 1; batches need one more copy, as windows cannot span two sequences' storage); without
/// it, the previous block's copy is a constant (no gradient flows back through it).
fn with_previous_block(xs: &Tensor, w: i64, cache_grad: bool, first: Option<Tensor>) -> Tensor {
    let (b, seq, h, d) = xs.size4().expect("expected [batch, seq, heads, head_dim]");
    let nb = seq / w;
    let first = first.unwrap_or_else(|| Tensor::zeros([b, w, h, d], (xs.kind(), xs.device()))); // [b, W, h, d]
    if cache_grad {
        let padded = Tensor::cat(&[first, xs.shallow_clone()], 1); // [b, W + seq, h, d]
        let windows = padded.unfold(1, 2 * w, w).permute([0, 1, 2, 4, 3]); // [b, nb, h, 2W, d]
        return windows.reshape([b * nb, h, 2 * w, d]);
    }
    let blocks = xs.view([b, nb, w, h, d]);
    let previous = Tensor::cat(&[first.unsqueeze(1), blocks.narrow(1, 0, nb - 1)], 1).detach(); // [b, nb, W, h, d]
    Tensor::cat(&[previous, blocks], 2).permute([0, 1, 3, 2, 4]).reshape([b * nb, h, 2 * w, d])
}

/// Which of the 2W keys `[previous block; own block]` each of a block's W queries may see:
/// `[W, 2W]` bool. Query i sits at column W + i.
fn pair_mask(scope: BlockScope, w: i64, device: Device) -> Tensor {
    let i = Tensor::arange(w, (Kind::Int64, device)).unsqueeze(1); // [W, 1]
    let c = Tensor::arange(2 * w, (Kind::Int64, device)).unsqueeze(0); // [1, 2W]
    match scope {
        // k - q in [-W, 0): columns i .. W + i - 1
        BlockScope::Sliding => c.ge_tensor(&i).logical_and(&c.lt_tensor(&(&i + w))),
        BlockScope::OwnAndPrevious => c.lt(w).logical_or(&c.le_tensor(&(&i + w))),
        BlockScope::Own => c.ge(w).logical_and(&c.le_tensor(&(&i + w))),
    }
}

/// The mask of a block's queries over `[previous block; own block]` for each of `n` blocks, the
/// previous block visible where `previous_visible` (`[n]` bool) says so. Under `Sliding`, a query
/// left without any key (query 0 with a hidden previous block) sees the hidden block's first key
/// instead: callers zero a hidden block's values, so its output is exactly zero and its
/// gradients vanish, as attending to nothing would give, without a fully masked row. Computed
/// without reading tensors back, so a GPU never waits for it.
///
/// # Shapes
/// returns `[n, 1, W, 2W]` bool
pub(crate) fn block_pair_mask(scope: BlockScope, w: i64, previous_visible: &Tensor) -> Tensor {
    let device = previous_visible.device();
    let n = previous_visible.size()[0];
    let seen = pair_mask(scope, w, device); // [W, 2W]
    let own = Tensor::arange(2 * w, (Kind::Int64, device)).ge(w).unsqueeze(0); // [1, 2W]
    let hidden = seen.logical_and(&own); // [W, 2W]: the previous block hidden
    if scope == BlockScope::Sliding {
        let _ = hidden.get(0).get(0).fill_(1); // query 0 reads the hidden block's (zero) first value
    }
    seen.unsqueeze(0).where_self(&previous_visible.view([n, 1, 1]), &hidden).unsqueeze(1)
}

/// The values of the block before block 0 with rows whose block is hidden set to zero (the
/// mask may let a query read one of them, see [`block_pair_mask`]).
///
/// # Shapes
/// - `values`: `[batch, W, heads, head_dim]`, `visible`: `[batch]` bool -> `[batch, W, heads, head_dim]`
pub(crate) fn visible_values(values: &Tensor, visible: &Tensor) -> Tensor {
    values * visible.view([-1, 1, 1, 1]).to_kind(values.kind())
}

/// Attention of every query over the keys its block may see under `pattern`; block 0 sees
/// `previous` (the last block of an earlier call) where given.
///
/// # Shapes
/// - `q`, `k`, `v`: `[batch, seq, n_heads, head_dim]`, positions already encoded
/// - returns `[batch, seq, n_heads, head_dim]`
///
/// `seq` must be a multiple of the window.
pub fn block_attention(q: &Tensor, k: &Tensor, v: &Tensor, pattern: BlockPattern, dropout: f64, previous: Option<&PreviousBlock>) -> Tensor {
    let (batch, seq, _, _) = q.size4().expect("q must be [batch, seq, heads, head_dim]");
    let w = pattern.window;
    assert!(seq % w == 0, "sequence length {seq} is not a multiple of the window {w}");
    let qb = to_blocks(q, w); // a view (the kernel reads strides)
    if pattern.scope == BlockScope::Own {
        assert!(previous.is_none(), "the own-block pattern reads no previous block");
        let out = Tensor::scaled_dot_product_attention(&qb, &to_blocks(k, w), &to_blocks(v, w), None::<Tensor>, dropout, true, None, false);
        return from_blocks(&out, batch);
    }
    let blocks = seq / w;
    let later = Tensor::arange(blocks, (Kind::Int64, q.device())).gt(0).unsqueeze(0); // [1, nb]: not block 0
    let first_visible = match previous {
        Some(p) => p.visible.unsqueeze(1),
        None => Tensor::zeros([batch, 1], (Kind::Bool, q.device())),
    };
    let previous_visible = later.logical_or(&first_visible).flatten(0, 1); // [b*nb]
    let mask = block_pair_mask(pattern.scope, w, &previous_visible);
    let first_k = previous.map(|p| p.keys.to_kind(k.kind()));
    let first_v = previous.map(|p| visible_values(&p.values.to_kind(v.kind()), p.visible));
    let (k2, v2) = (with_previous_block(k, w, pattern.cache_grad, first_k), with_previous_block(v, w, pattern.cache_grad, first_v));
    let out = Tensor::scaled_dot_product_attention(&qb, &k2, &v2, Some(mask), dropout, false, None, false);
    from_blocks(&out, batch)
}

/// Splits a fused projection `[batch, seq, n * d_model]` into n tensors `[batch, seq, heads, head_dim]`.
pub(crate) fn split_heads(xs: &Tensor, n: i64, dims: &HeadDims) -> Vec<Tensor> {
    let (b, seq, _) = xs.size3().expect("expected [batch, seq, n * d_model]");
    let (h, d) = (dims.n_heads as i64, dims.head_dim() as i64);
    xs.view([b, seq, n, h, d]).unbind(2)
}

/// Fused q/k/v projection with rotary positions and blocked self-attention, without the output
/// projection: the part that SLIDE and the BST layer share.
#[derive(Debug)]
pub struct BlockAttentionHeads {
    qkv: nn::Linear,
    rope: Rope,
    dims: HeadDims,
    pattern: BlockPattern,
    /// Keep the last block for the next call (`attn.cache_across_windows`).
    carry: bool,
}

impl BlockAttentionHeads {
    pub fn new(vs: &nn::Path, cfg: &LayerConfig) -> Self {
        let d = cfg.dims.d_model as i64;
        Self {
            qkv: linear(&(vs / "qkv"), d, 3 * d),
            rope: Rope::new(cfg.dims.head_dim(), cfg.attn.rope_base, vs.device()),
            dims: cfg.dims,
            pattern: BlockPattern::self_attention(cfg),
            carry: cfg.attn.cache_across_windows,
        }
    }

    /// Per-head attention output from a fresh state.
    ///
    /// # Shapes
    /// - `xs`: `[batch, seq, d_model]` -> `[batch, seq, n_heads, head_dim]`
    pub fn attend(&self, xs: &Tensor, train: bool) -> Tensor {
        self.attend_with_state(xs, &mut MixerState::Fresh, train)
    }

    /// Per-head attention output, block 0 reading the block `state` carries (if the layer keeps
    /// one), which is then replaced by this call's last block.
    ///
    /// # Shapes
    /// - `xs`: `[batch, seq, d_model]` -> `[batch, seq, n_heads, head_dim]`
    pub fn attend_with_state(&self, xs: &Tensor, state: &mut MixerState, train: bool) -> Tensor {
        let (b, seq, _) = xs.size3().expect("xs must be [batch, seq, d_model]");
        let (h, hd) = (self.dims.n_heads as i64, self.dims.head_dim() as i64);
        let qkv = self.qkv.forward(xs).view([b, seq, 3, h, hd]);
        let qk = self.rope.apply(&qkv.narrow(2, 0, 2)); // [b, seq, 2, h, hd]: both rotated in one pass
        let (q, k, v) = (qk.select(2, 0), qk.select(2, 1), qkv.select(2, 2));
        let dropout = if train { self.dims.dropout } else { 0.0 };
        let w = self.pattern.window;
        let cached = match state {
            MixerState::Window(cache) if self.carry => Some(cache),
            _ => None,
        };
        let previous = cached.map(|c| PreviousBlock { keys: self.rope.apply_at(&c.keys, -w), values: &c.values, visible: &c.visible });
        let y = block_attention(&q, &k, &v, self.pattern, dropout, previous.as_ref());
        if self.carry {
            let visible = Tensor::ones([b], (Kind::Bool, xs.device()));
            let last = |i: i64| qkv.select(2, i).narrow(1, seq - w, w); // un-rotated
            *state = MixerState::Window(KvCache { keys: last(1), values: last(2), visible });
        }
        y
    }
}

/// SLIDE: multi-head windowed self-attention with rotary positions (the pattern of
/// `attn.window_mask`), then an output projection.
#[derive(Debug)]
pub struct BlockSelfAttention {
    heads: BlockAttentionHeads,
    out: nn::Linear,
    dropout: f64,
}

impl BlockSelfAttention {
    pub fn new(vs: &nn::Path, cfg: &LayerConfig) -> Self {
        let d = cfg.dims.d_model as i64;
        Self { heads: BlockAttentionHeads::new(vs, cfg), out: linear(&(vs / "out"), d, d), dropout: cfg.dims.dropout }
    }
}

impl Mixer for BlockSelfAttention {
    fn forward(&self, xs: &Tensor, state: &mut MixerState, train: bool) -> Tensor {
        let y = self.heads.attend_with_state(xs, state, train).flatten(2, 3); // [b, seq, d_model]
        self.out.forward(&y).dropout(self.dropout, train)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mask::{block_window_mask, masked_attention_reference, own_block_mask, sliding_window_mask};

    fn qkv(b: i64, seq: i64, h: i64, d: i64) -> (Tensor, Tensor, Tensor) {
        let r = || Tensor::randn([b, seq, h, d], (Kind::Double, Device::Cpu));
        (r(), r(), r())
    }

    fn pattern(window: i64, scope: BlockScope) -> BlockPattern {
        BlockPattern { window, scope, cache_grad: true }
    }

    /// Each blocked pattern against its own dense definition (mask.rs), and the patterns differ.
    #[test]
    fn blocked_equals_its_dense_reference() {
        tch::manual_seed(0);
        let dense = |scope, seq, w| match scope {
            BlockScope::Own => own_block_mask(seq, w, Device::Cpu),
            BlockScope::Sliding => sliding_window_mask(seq, w, Device::Cpu),
            BlockScope::OwnAndPrevious => block_window_mask(seq, w, Device::Cpu),
        };
        for scope in [BlockScope::Own, BlockScope::Sliding, BlockScope::OwnAndPrevious] {
            for &(b, seq, window) in &[(2, 24, 8), (1, 12, 12), (1, 15, 5), (3, 8, 1)] {
                let (q, k, v) = qkv(b, seq, 3, 4);
                let fast = block_attention(&q, &k, &v, pattern(window, scope), 0.0, None);
                let slow = masked_attention_reference(&q, &k, &v, &dense(scope, seq, window));
                let err = (&fast - &slow).abs().max().double_value(&[]);
                assert!(err < 1e-9, "{scope:?} seq={seq} W={window}: blocked vs dense differ by {err}");
            }
        }
        let (q, k, v) = qkv(1, 16, 2, 4);
        let sliding = block_attention(&q, &k, &v, pattern(4, BlockScope::Sliding), 0.0, None);
        let block = block_attention(&q, &k, &v, pattern(4, BlockScope::OwnAndPrevious), 0.0, None);
        assert!((&sliding - &block).abs().max().double_value(&[]) > 1e-3, "the two window masks must differ");
    }

    /// meliad's window: the first token attends to nothing (zero output, finite gradients); the
    /// second sees exactly the first.
    #[test]
    fn first_token_has_no_key_and_a_zero_output() {
        let (q, k, v) = qkv(2, 8, 2, 4);
        let (q, k, v) = (q.set_requires_grad(true), k.set_requires_grad(true), v.set_requires_grad(true));
        let y = block_attention(&q, &k, &v, pattern(4, BlockScope::Sliding), 0.0, None);
        assert_eq!(y.narrow(1, 0, 1).abs().sum(Kind::Double).double_value(&[]), 0.0);
        assert!(y.narrow(1, 1, 1).allclose(&v.narrow(1, 0, 1), 1e-12, 1e-12, false));
        y.sum(Kind::Double).backward();
        for g in [q.grad(), k.grad(), v.grad()] {
            assert_eq!(g.isfinite().all().int64_value(&[]), 1, "non-finite gradient");
        }
        assert_eq!(q.grad().narrow(1, 0, 1).abs().sum(Kind::Double).double_value(&[]), 0.0, "token 0's query is unused");
    }

    #[test]
    fn layer_is_causal_and_has_finite_gradients() {
        tch::manual_seed(1);
        let vs = nn::VarStore::new(Device::Cpu);
        for (i, mask) in [WindowMask::Sliding, WindowMask::Block].into_iter().enumerate() {
            let mut cfg = LayerConfig::small(16, 2, 4);
            cfg.attn.window_mask = mask;
            let layer = BlockSelfAttention::new(&(vs.root() / i), &cfg);
            let xs = Tensor::randn([2, 16, 16], (Kind::Float, Device::Cpu));
            let ys = layer.forward(&xs, &mut MixerState::Fresh, false);
            for t in [3, 4, 9, 15] {
                let xs2 = xs.copy();
                let _ = xs2.narrow(1, t, 1).fill_(2.5);
                let ys2 = layer.forward(&xs2, &mut MixerState::Fresh, false);
                let diff = (ys.narrow(1, 0, t) - ys2.narrow(1, 0, t)).abs().max().double_value(&[]);
                assert!(diff < 1e-5, "{mask:?}: perturbing token {t} changed earlier outputs by {diff}");
            }
            ys.square().sum(Kind::Float).backward();
        }
        for (name, var) in vs.variables() {
            let g = var.grad();
            assert!(g.defined() && g.isfinite().all().int64_value(&[]) == 1, "{name}: bad gradient");
        }
    }

    /// With the cache across windows, two calls over halves equal one call over the whole
    /// (both masks); without it the second call starts cold; a reset row starts cold too.
    #[test]
    fn the_last_block_carries_into_the_next_call() {
        tch::manual_seed(3);
        for mask in [WindowMask::Sliding, WindowMask::Block] {
            let vs = nn::VarStore::new(Device::Cpu);
            let mut cfg = LayerConfig::small(16, 2, 4);
            cfg.attn.window_mask = mask;
            let layer = BlockSelfAttention::new(&vs.root(), &cfg);
            let xs = Tensor::randn([2, 16, 16], (Kind::Float, Device::Cpu));
            let whole = layer.forward(&xs, &mut MixerState::Fresh, false);
            let mut state = MixerState::Fresh;
            let first = layer.forward(&xs.narrow(1, 0, 8), &mut state, false);
            let restored = MixerState::from_tensors(&state.tensors()).unwrap();
            let second = layer.forward(&xs.narrow(1, 8, 8), &mut state, false);
            let err = (&whole - Tensor::cat(&[&first, &second], 1)).abs().max().double_value(&[]);
            assert!(err < 1e-5, "{mask:?}: two calls differ from one by {err}");
            let mut reset = restored;
            reset.reset_rows(&Tensor::from_slice(&[true, false]));
            let y = layer.forward(&xs.narrow(1, 8, 8), &mut reset, false);
            let cold = layer.forward(&xs.narrow(1, 8, 8), &mut MixerState::Fresh, false);
            assert!((y.get(0) - cold.get(0)).abs().max().double_value(&[]) < 1e-6, "{mask:?}: a reset row starts cold");
            assert!((y.get(1) - second.get(1)).abs().max().double_value(&[]) < 1e-6, "{mask:?}: the other row carries on");
            assert!((cold.get(1) - second.get(1)).abs().max().double_value(&[]) > 1e-4, "{mask:?}: the cache matters");
            cfg.attn.cache_across_windows = false;
            let stateless = BlockSelfAttention::new(&(vs.root() / "stateless"), &cfg);
            let mut state = MixerState::Fresh;
            let _ = stateless.forward(&xs.narrow(1, 0, 8), &mut state, false);
            assert!(matches!(state, MixerState::Fresh), "{mask:?}: without the cache nothing is carried");
        }
    }

    #[test]
    fn slide_cache_gradient_is_configurable() {
        // d(output of block 1)/d(keys of block 0) is non-zero only through the cache
        for scope in [BlockScope::Sliding, BlockScope::OwnAndPrevious] {
            for cache_grad in [true, false] {
                let (q, k, v) = qkv(1, 8, 1, 4);
                let k = k.set_requires_grad(true);
                let p = BlockPattern { window: 4, scope, cache_grad };
                let y = block_attention(&q, &k, &v, p, 0.0, None);
                y.narrow(1, 4, 4).sum(Kind::Double).backward();
                let g = k.grad().narrow(1, 0, 4).abs().sum(Kind::Double).double_value(&[]);
                assert_eq!(g > 0.0, cache_grad, "{scope:?} cache_grad = {cache_grad}: gradient into the previous block {g}");
                let y2 = block_attention(&q, &k, &v, BlockPattern { cache_grad: !cache_grad, ..p }, 0.0, None);
                assert!(y.allclose(&y2, 1e-12, 1e-12, false), "the forward values do not depend on it");
            }
        }
    }
}
