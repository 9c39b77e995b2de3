//! The attention patterns written out as dense `[seq, seq]` masks (true = may attend), each from
//! its own definition, and plain masked attention over them.
//!
//! These are the reference definitions that the blocked, parallel implementations are tested
//! against; they are O(L^2) and never used in a model's forward pass. Each mask is written
//! independently of the blocked code (positions, not blocks, wherever the definition allows).

use tch::{Device, Kind, Tensor};

/// Query and key positions as `[seq, 1]` and `[1, seq]`.
fn positions(seq: i64, device: Device) -> (Tensor, Tensor) {
    let pos = Tensor::arange(seq, (Kind::Int64, device));
    (pos.unsqueeze(1), pos.unsqueeze(0))
}

/// meliad's sliding window (`transformer/position.py::causal_mask`): query q sees keys k with
/// `-window <= k - q < 0`, the `window` tokens strictly before it. Row 0 is empty.
///
/// # Shapes
/// returns `[seq, seq]` bool (query, key)
pub fn sliding_window_mask(seq: i64, window: i64, device: Device) -> Tensor {
    let (q, k) = positions(seq, device);
    let rel = k - q;
    rel.lt(0).logical_and(&rel.ge(-window))
}

/// The block window: query q sees every key of the previous block of `window` tokens and the keys
/// at or before it in its own block.
///
/// # Shapes
/// returns `[seq, seq]` bool (query, key)
pub fn block_window_mask(seq: i64, window: i64, device: Device) -> Tensor {
    let (q, k) = positions(seq, device);
    let previous_block_start = (q.divide_scalar_mode(window, "floor") - 1) * window;
    k.le_tensor(&q).logical_and(&k.ge_tensor(&previous_block_start))
}

/// Causal within the query's own block of `window` tokens, the query included (the SH/MH
/// cross-attention to context states at the block's own positions).
///
/// # Shapes
/// returns `[seq, seq]` bool (query, key)
pub fn own_block_mask(seq: i64, window: i64, device: Device) -> Tensor {
    let (q, k) = positions(seq, device);
    let same_block = q.divide_scalar_mode(window, "floor").eq_tensor(&k.divide_scalar_mode(window, "floor"));
    k.le_tensor(&q).logical_and(&same_block)
}

/// Plain softmax attention under a dense mask, in the input's precision: the slow reference. A
/// query whose row of the mask is empty attends to nothing: its output is zero.
///
/// # Shapes
/// - `q`, `k`, `v`: `[batch, seq, n_heads, head_dim]`, `mask`: `[seq, seq]` -> `[batch, seq, n_heads, head_dim]`
pub fn masked_attention_reference(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor) -> Tensor {
    let head_dim = *q.size().last().expect("q has a head dimension") as f64;
    let (q, k, v) = (q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)); // [b, h, seq, d]
    let scores = q.matmul(&k.transpose(-2, -1)) / head_dim.sqrt();
    let scores = scores.masked_fill(&mask.logical_not(), f64::NEG_INFINITY);
    let probs = scores.softmax(-1, q.kind()).nan_to_num(0.0, None, None); // empty rows: 0/0 -> 0
    probs.matmul(&v).transpose(1, 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(mask: &Tensor, q: i64) -> Vec<i64> {
        Vec::try_from(mask.get(q).to_kind(Kind::Int64)).unwrap()
    }

    /// The definitions, spelled out on a 12-token text with W = 4.
    #[test]
    fn the_three_patterns_by_hand() {
        let cpu = Device::Cpu;
        // query 9 (block 2): sliding sees 5..=8; block sees 4..=9; own block sees 8..=9
        assert_eq!(row(&sliding_window_mask(12, 4, cpu), 9), vec![0, 0, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0]);
        assert_eq!(row(&block_window_mask(12, 4, cpu), 9), vec![0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0]);
        assert_eq!(row(&own_block_mask(12, 4, cpu), 9), vec![0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0]);
        // every sliding row after the first W holds exactly W keys; row 0 none
        let counts: Vec<i64> = Vec::try_from(sliding_window_mask(12, 4, cpu).sum_dim_intlist(1, false, Kind::Int64)).unwrap();
        assert_eq!(counts, vec![0, 1, 2, 3, 4, 4, 4, 4, 4, 4, 4, 4]);
    }

    #[test]
    fn an_empty_row_attends_to_nothing() {
        let r = |s: i64| Tensor::randn([1, s, 1, 2], (Kind::Double, Device::Cpu));
        let (q, k, v) = (r(3), r(3), r(3));
        let y = masked_attention_reference(&q, &k, &v, &sliding_window_mask(3, 2, Device::Cpu));
        assert_eq!(y.get(0).get(0).abs().sum(Kind::Double).double_value(&[]), 0.0);
        assert!(y.get(0).get(1).allclose(&v.get(0).get(0), 1e-12, 1e-12, false), "one visible key: its value");
    }
}
