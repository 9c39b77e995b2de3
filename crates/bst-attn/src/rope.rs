//! Rotary position embedding (Su et al. 2021), in the half-split (GPT-NeoX) layout.
//!
//! Rotating queries and keys by their *absolute* positions makes their dot product depend only on
//! the relative offset, which is what lets a block attend to the previous block's keys without
//! any bookkeeping. Every self-attention layer in bst uses it, so the baselines share one scheme.

use tch::{Device, Kind, Tensor};

/// Precomputed inverse frequencies for one head width.
#[derive(Debug)]
pub struct Rope {
    inv_freq: Tensor, // [head_dim / 2]
}

impl Rope {
    pub fn new(head_dim: usize, base: f64, device: Device) -> Self {
        let half = (head_dim / 2) as i64;
        let exponents = Tensor::arange(half, (Kind::Float, device)) * (-2.0 * base.ln() / head_dim as f64);
        Self { inv_freq: exponents.exp() }
    }

    /// Rotates `xs` by positions `0..seq`.
    ///
    /// # Shapes
    /// - `xs`: `[batch, seq, n_heads, head_dim]` -> same
    pub fn apply(&self, xs: &Tensor) -> Tensor {
        self.apply_at(xs, 0)
    }

    /// Rotates `xs` by positions `start..start + seq`.
    ///
    /// # Shapes
    /// - `xs`: `[batch, seq, ..., head_dim]` (e.g. `[batch, seq, n_heads, head_dim]`, or
    ///   `[batch, seq, 2, n_heads, head_dim]` to rotate queries and keys in one pass) -> same,
    ///   contiguous
    pub fn apply_at(&self, xs: &Tensor, start: i64) -> Tensor {
        let size = xs.size();
        assert!(size.len() >= 3, "rope input must be [batch, seq, ..., head_dim], got {size:?}");
        let (seq, half) = (size[1], size[size.len() - 1] / 2);
        let pos = Tensor::arange_start(start, start + seq, (Kind::Float, xs.device()));
        let mut shape = vec![1; size.len() - 1];
        (shape[0], shape[size.len() - 2]) = (seq, half);
        let angles = pos.outer(&self.inv_freq).view(shape.as_slice()); // [seq, 1, ..., half]
        let (cos, sin) = (angles.cos().to_kind(xs.kind()), angles.sin().to_kind(xs.kind()));
        let x1 = xs.narrow(-1, 0, half);
        let x2 = xs.narrow(-1, half, half);
        Tensor::cat(&[&x1 * &cos - &x2 * &sin, &x1 * &sin + &x2 * &cos], -1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_depend_only_on_relative_offset() {
        tch::manual_seed(0);
        let rope = Rope::new(8, 10_000.0, Device::Cpu);
        let q = Tensor::randn([1, 1, 1, 8], (Kind::Double, Device::Cpu)).repeat([1, 12, 1, 1]);
        let k = Tensor::randn([1, 1, 1, 8], (Kind::Double, Device::Cpu)).repeat([1, 12, 1, 1]);
        let (qr, kr) = (rope.apply(&q.to_kind(Kind::Float)), rope.apply(&k.to_kind(Kind::Float)));
        let score = |i: i64, j: i64| (qr.get(0).get(i) * kr.get(0).get(j)).sum(Kind::Float).double_value(&[]);
        assert!((score(5, 2) - score(9, 6)).abs() < 1e-4);
        assert!((score(3, 3) - score(10, 10)).abs() < 1e-4);
        assert!((score(5, 2) - score(5, 4)).abs() > 1e-4, "different offsets should differ");
        let shifted = rope.apply_at(&q.to_kind(Kind::Float).narrow(1, 0, 5), 7);
        assert!(shifted.allclose(&qr.narrow(1, 7, 5), 1e-6, 1e-6, false), "apply_at(start) = positions start..");
        // queries and keys stacked in one tensor rotate as each does alone
        let both = rope.apply(&Tensor::stack(&[q.to_kind(Kind::Float), k.to_kind(Kind::Float)], 2)); // [1, 12, 2, 1, 8]
        assert!(both.select(2, 0).equal(&qr) && both.select(2, 1).equal(&kr));
    }
}
