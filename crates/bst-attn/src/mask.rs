//! The attention patterns written out as dense `[seq, seq]` masks (true = may attend).
//!
//! These are the reference definitions that the blocked, parallel implementations are tested
//! against; they are O(L^2) and never used in a model's forward pass.

use tch::{Device, Kind, Tensor};

use crate::BlockScope;

/// Which keys each query may see when the sequence is cut into blocks of `window` tokens:
/// keys at or before the query, in the query's block (and, for `OwnAndPrevious`, the block before).
///
/// # Shapes
/// returns `[seq, seq]` bool (query, key)
pub fn block_mask(seq: i64, window: i64, scope: BlockScope, device: Device) -> Tensor {
    let pos = Tensor::arange(seq, (Kind::Int64, device));
    let (q, k) = (pos.unsqueeze(1), pos.unsqueeze(0));
    let causal = k.le_tensor(&q);
    let (qb, kb) = (q.divide_scalar_mode(window, "floor"), k.divide_scalar_mode(window, "floor"));
    let lookback = match scope {
        BlockScope::Own => 0,
        BlockScope::OwnAndPrevious => 1,
    };
    let near = kb.ge_tensor(&(qb - lookback));
    causal.logical_and(&near)
}

/// Plain softmax attention under a dense mask, in the input's precision: the slow reference.
///
/// # Shapes
/// - `q`, `k`, `v`: `[batch, seq, n_heads, head_dim]`, `mask`: `[seq, seq]` -> `[batch, seq, n_heads, head_dim]`
pub fn masked_attention_reference(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor) -> Tensor {
    let head_dim = *q.size().last().unwrap() as f64;
    let (q, k, v) = (q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)); // [b, h, seq, d]
    let scores = q.matmul(&k.transpose(-2, -1)) / head_dim.sqrt();
    let scores = scores.masked_fill(&mask.logical_not(), f64::NEG_INFINITY);
    scores.softmax(-1, q.kind()).matmul(&v).transpose(1, 2)
}
