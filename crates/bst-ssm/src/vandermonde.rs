//! Kernels of diagonal systems: `K[h, l] = 2 Re sum_n coeff[h, n] * exp(l * log_a[h, n])`.
//!
//! The naive form materialises `exp(l * log_a)` for every (channel, mode, l): channels x N/2 x L
//! complex exponentials and as many complex numbers of memory, which dominates a whole BST layer
//! at long L. The chunked form writes `l = j*c + r` with `c ≈ sqrt(L)` and uses
//! `exp(l log_a) = exp(j c log_a) * exp(r log_a)`: only channels x N/2 x (L/c + c) exponentials,
//! and the sum over modes becomes one batched complex matmul `[J, N/2] x [N/2, c]` per channel.
//! Each power is one `exp` (no repeated multiplication), so there is no error build-up.

use tch::{Kind, Tensor};

/// Chunked Vandermonde product.
///
/// # Shapes
/// - `log_a`, `coeff`: complex `[channels, modes]` -> real `[channels, seq]`
pub fn diagonal_kernel(log_a: &Tensor, coeff: &Tensor, seq: i64) -> Tensor {
    let chunk = ((seq as f64).sqrt().ceil() as i64).max(1);
    let blocks = (seq + chunk - 1) / chunk;
    let opts = (Kind::Float, log_a.device());
    let r = Tensor::arange(chunk, opts);
    let j = Tensor::arange(blocks, opts) * chunk as f64;
    let inner = (log_a.unsqueeze(-1) * r).exp(); // [h, n, chunk]
    let outer = (log_a.unsqueeze(-1) * j).exp(); // [h, n, blocks]
    let weighted = (coeff.unsqueeze(-1) * outer).transpose(-1, -2); // [h, blocks, n]
    let k = weighted.matmul(&inner); // [h, blocks, chunk]
    k.flatten(-2, -1).narrow(-1, 0, seq).real() * 2.0
}

/// The same product, materialising every power: the reference for tests and benches.
pub fn diagonal_kernel_naive(log_a: &Tensor, coeff: &Tensor, seq: i64) -> Tensor {
    let l = Tensor::arange(seq, (Kind::Float, log_a.device()));
    let powers = (log_a.unsqueeze(-1) * l).exp(); // [h, n, seq]
    Tensor::einsum("hn,hnl->hl", &[coeff.shallow_clone(), powers], None::<i64>).real() * 2.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    /// Fixed (not RNG-drawn) modes: decays in (0, 0.1], frequencies up to ~3 rad per step, so
    /// that phases reach thousands of radians at L = 1000 where f32 rounding shows.
    fn modes(kind: Kind) -> (Tensor, Tensor) {
        let i = Tensor::arange(12, (Kind::Double, Device::Cpu)).view([3, 4]);
        let log_a = Tensor::complex(&(-((&i * 0.37).sin().abs() * 0.1 + 1e-3)), &((&i * 1.3).cos() * 3.0));
        let coeff = Tensor::complex(&(&i * 0.7).sin(), &(&i * 0.9).cos());
        (log_a.to_kind(kind), coeff.to_kind(kind))
    }

    #[test]
    fn chunked_is_as_accurate_as_naive_against_an_f64_reference() {
        let (log_a64, coeff64) = modes(Kind::ComplexDouble);
        let (log_a, coeff) = modes(Kind::ComplexFloat);
        for seq in [1, 2, 7, 64, 97, 1000] {
            let exact = diagonal_kernel_naive(&log_a64, &coeff64, seq);
            let fast = diagonal_kernel(&log_a, &coeff, seq);
            assert_eq!(fast.size(), vec![3, seq]);
            let scale = exact.abs().max().double_value(&[]);
            let err_fast = (fast.to_kind(Kind::Double) - &exact).abs().max().double_value(&[]) / scale;
            let err_naive = (diagonal_kernel_naive(&log_a, &coeff, seq).to_kind(Kind::Double) - &exact).abs().max().double_value(&[]) / scale;
            assert!(err_fast < 1e-4, "L={seq}: chunked relative error {err_fast}");
            assert!(err_fast <= 2.0 * err_naive + 1e-6, "L={seq}: chunked {err_fast} much worse than naive {err_naive}");
        }
    }
}
