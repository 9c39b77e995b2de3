//! Causal long convolution by FFT, and the slow direct form it is tested against.
//!
//! A causal convolution `y_t = sum_{s<=t} k_{t-s} u_s` over length L equals the first L outputs of
//! the *linear* convolution; computing it with FFTs of size 2L (zero padding) keeps the circular
//! wrap-around out of those outputs (s4d.py: `rfft(k, n=2L) * rfft(u, n=2L)`, `irfft(n=2L)[..., :L]`).

use tch::{Kind, Tensor};

/// Causal convolution of every channel of `u` with its own kernel, by FFT.
///
/// # Shapes
/// - `u`: `[..., channels, seq]`
/// - `k`: `[channels, seq]` (or broadcastable to `u`)
/// - returns `[..., channels, seq]`, in `u`'s dtype
///
/// The FFTs run in f32 even for half-precision inputs: bf16 FFTs lose too much precision over
/// long kernels.
pub fn causal_fft_conv(u: &Tensor, k: &Tensor) -> Tensor {
    let seq = *u.size().last().expect("u must have a sequence dimension");
    assert_eq!(
        k.size().last(),
        Some(&seq),
        "kernel length {:?} must equal the sequence length {seq}",
        k.size()
    );
    let n = 2 * seq;
    let u_f = u.to_kind(Kind::Float).fft_rfft(n, -1, "backward");
    let k_f = k.to_kind(Kind::Float).fft_rfft(n, -1, "backward");
    (u_f * k_f).fft_irfft(n, -1, "backward").narrow(-1, 0, seq).to_kind(u.kind())
}

/// The same causal convolution computed directly as a product with a Toeplitz matrix, in
/// O(channels * L^2): slow but obviously correct, the reference for tests and benches.
///
/// # Shapes
/// - `u`: `[batch, channels, seq]`, `k`: `[channels, seq]` -> `[batch, channels, seq]`
pub fn direct_causal_conv(u: &Tensor, k: &Tensor) -> Tensor {
    let (channels, seq) = k.size2().expect("k must be [channels, seq]");
    let t = Tensor::arange(seq, (Kind::Int64, u.device()));
    let lag = t.unsqueeze(1) - t.unsqueeze(0); // [seq(t), seq(s)]: t - s
    let causal = lag.ge(0).to_kind(k.kind());
    let toeplitz = k.index_select(1, &lag.clamp_min(0).flatten(0, 1)).view([channels, seq, seq]) * causal;
    Tensor::einsum("hts,bhs->bht", &[toeplitz, u.shallow_clone()], None::<i64>)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn randn(shape: &[i64]) -> Tensor {
        Tensor::randn(shape, (Kind::Double, Device::Cpu))
    }

    #[test]
    fn fft_equals_direct_for_awkward_lengths() {
        tch::manual_seed(0);
        // odd, prime, not a power of two, and batch 1
        for &(batch, channels, seq) in &[(1, 3, 1), (2, 4, 7), (1, 5, 97), (3, 2, 128), (1, 1, 250)] {
            let u = randn(&[batch, channels, seq]);
            let k = randn(&[channels, seq]);
            let fast = causal_fft_conv(&u.to_kind(Kind::Float), &k.to_kind(Kind::Float)).to_kind(Kind::Double);
            let slow = direct_causal_conv(&u, &k);
            assert_eq!(fast.size(), vec![batch, channels, seq]);
            let err = (&fast - &slow).abs().max().double_value(&[]);
            let scale = slow.abs().max().double_value(&[]).max(1.0);
            assert!(err / scale < 1e-5, "L={seq}: max |fft - direct| = {err} (scale {scale})");
        }
    }

    #[test]
    fn fft_conv_is_not_circular() {
        // A kernel tap at lag L-1 must not wrap the last input around onto early outputs.
        let seq = 16;
        let mut k = vec![0f32; seq];
        k[seq - 1] = 1.0;
        let k = Tensor::from_slice(&k).view([1, seq as i64]);
        let mut u = vec![0f32; seq];
        u[seq - 1] = 1.0;
        let u = Tensor::from_slice(&u).view([1, 1, seq as i64]);
        let y = causal_fft_conv(&u, &k);
        assert!(y.abs().max().double_value(&[]) < 1e-6, "circular wrap-around: {y}");
    }

    #[test]
    fn output_before_t_ignores_input_after_t() {
        tch::manual_seed(1);
        let (seq, t) = (33, 20);
        let u = Tensor::randn([2, 3, seq], (Kind::Float, Device::Cpu));
        let k = Tensor::randn([3, seq], (Kind::Float, Device::Cpu));
        let u2 = u.copy();
        let _ = u2.narrow(-1, t, seq - t).fill_(7.0);
        let y1 = causal_fft_conv(&u, &k);
        let y2 = causal_fft_conv(&u2, &k);
        // f32 FFT rounding scales with the largest output (the fill of 7s makes outputs of ~200,
        // measured rounding ~1.4e-5 on one CPU); a real leak moves outputs by the fill times |k|
        let tolerance = 1e-6 * y2.abs().max().double_value(&[]).max(1.0);
        let before = (y1.narrow(-1, 0, t) - y2.narrow(-1, 0, t)).abs().max().double_value(&[]);
        assert!(before < tolerance, "outputs before t changed by {before} (tolerance {tolerance})");
        let at = (y1.narrow(-1, t, 1) - y2.narrow(-1, t, 1)).abs().max().double_value(&[]);
        assert!(at > 1e-3, "the perturbation should reach output t (changed by {at})");
    }
}
