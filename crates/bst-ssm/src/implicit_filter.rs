//! Unstructured SSM with implicitly parameterised filters: the paper's appendix pseudocode for
//! its unstructured kernels (`get_filters_unstruct`: `h = exp(-alpha t) * dense(positional_emb(t))`,
//! `t = linspace(0, 1, L)`), in the form Hyena uses (Poli et al. 2023, `safari` `hyena.py`:
//! positional features `[t, cos, sin]`, exponential modulation with per-channel rates).
//!
//! Each tap is a function of its position, `k_c(t) = exp(-r_c t) * (W f(t) + b)_c`, so the number
//! of parameters does not grow with the filter length: `(1 + 2 F) x channels` for F frequencies,
//! against `L x channels` for explicit taps ([`crate::LongConvKernel`]). That is what makes
//! BST:MF affordable with unstructured kernels: its S filters are S banks of channels each.
//!
//! **Length generalisation.** `t` is the position over the training length, so a longer
//! sequence evaluates the same function at `t > 1`: the sines and cosines repeat and the envelope
//! keeps decaying (by `exp(-r_c)` per training length, at most 1e-2 of the start for the slowest
//! channel after 1.5 training lengths). Unlike explicit taps, nothing is cut at `max_len`, but
//! nothing was trained there either.

use std::f64::consts::PI;

use tch::{nn, Kind, Tensor};

use bst_core::ParamGroup;

use crate::SsmConfig;

/// Decay target of Hyena's `ExponentialModulation`: the envelope falls to this value at a
/// fraction between [`FAST_DECAY`] and [`SLOW_DECAY`] of the training length (channel by channel).
const DECAY_TARGET: f64 = 1e-2;
const FAST_DECAY: f64 = 0.3;
const SLOW_DECAY: f64 = 1.5;
/// Standard deviation of the initial taps (as [`crate::LongConvKernel`]'s, before its decay).
const TAP_SCALE: f64 = 0.02;

/// `channels` filters generated from `1 + 2 F` positional features.
#[derive(Debug)]
pub struct ImplicitFilterKernel {
    /// Frequencies in cycles per training length, `[F]`.
    freqs: Tensor,
    /// The dense map from features to one tap per channel: `[channels, 1 + 2 F]` and `[channels]`.
    weight: Tensor,
    bias: Tensor,
    /// Envelope rates `r_c`, `[channels]`; fixed, as in Hyena (its `modulate` has no parameters).
    /// They spread over all channels of all banks, so BST:MF's filters (and MH's heads) cover
    /// different time scales, as the explicit filters' decays do.
    rates: Tensor,
    max_len: i64,
}

impl ImplicitFilterKernel {
    /// `max_len` is the training length: the position `t` runs over `[0, 1)` on it.
    pub fn new(vs: &nn::Path, channels: usize, max_len: usize, cfg: &SsmConfig) -> Self {
        assert!(max_len >= 1, "implicit filters need the training length (>= 1)");
        let opts = (Kind::Float, vs.device());
        let bands = (cfg.filter_features as i64 - 1) / 2;
        // Hyena's PositionalEmbedding: frequencies linspace(1e-4, bands - 1) over the length
        let freqs = Tensor::linspace(1e-4, (bands - 1).max(0) as f64, bands, opts);
        let features = 1 + 2 * bands;
        // tap variance ~ TAP_SCALE^2 at init: features have mean square about 1/2
        let stdev = TAP_SCALE / (0.5 * features as f64).sqrt();
        // filter parameters: no weight decay (as Hyena), base learning rate
        let dense = ParamGroup::NoDecay.path(&(vs / "dense"));
        let weight = dense.var("weight", &[channels as i64, features], nn::Init::Randn { mean: 0.0, stdev });
        let bias = dense.zeros("bias", &[channels as i64]);
        let (slow, fast) = (DECAY_TARGET.ln().abs() / SLOW_DECAY, DECAY_TARGET.ln().abs() / FAST_DECAY);
        let rates = Tensor::linspace(slow, fast, channels as i64, opts);
        Self { freqs, weight, bias, rates, max_len: max_len as i64 }
    }

    /// Positional features at positions `t` (in training lengths, `[seq]`), `[seq, 1 + 2 F]`, in
    /// `t`'s dtype.
    fn features(&self, t: &Tensor) -> Tensor {
        let freqs = self.freqs.to_device(t.device()).to_kind(t.kind());
        let angle = t.unsqueeze(1) * freqs.unsqueeze(0) * (2.0 * PI); // [seq, F]
        Tensor::cat(&[t.unsqueeze(1), angle.cos(), angle.sin().neg()], 1)
    }

    /// The parameters the kernel is generated from.
    pub fn parameters(&self) -> Vec<&Tensor> {
        vec![&self.weight, &self.bias]
    }

    /// The length-`seq` kernel `[channels, seq]` (any length: see the module docs).
    pub fn kernel(&self, seq: i64) -> Tensor {
        let device = self.weight.device(); // the constants follow the weights if they move
        // features and the dense map in f64: autocast leaves f64 alone (a bf16 matmul would round
        // every tap), and the phases 2 pi f t stay exact far past the training length
        let t = Tensor::arange(seq, (Kind::Double, device)) / self.max_len as f64; // [seq]
        let taps = self.weight.to_kind(Kind::Double).matmul(&self.features(&t).transpose(0, 1));
        let taps = (taps + self.bias.to_kind(Kind::Double).unsqueeze(1)).to_kind(Kind::Float); // [channels, seq]
        let t = t.to_kind(Kind::Float);
        let envelope = (self.rates.to_device(device).unsqueeze(1) * t.unsqueeze(0)).neg().exp(); // [channels, seq]
        taps * envelope
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn filters(channels: usize, max_len: usize) -> (nn::VarStore, ImplicitFilterKernel) {
        tch::manual_seed(11);
        let vs = nn::VarStore::new(Device::Cpu);
        let k = ImplicitFilterKernel::new(&vs.root(), channels, max_len, &SsmConfig::default());
        (vs, k)
    }

    #[test]
    fn parameters_do_not_grow_with_the_filter_length() {
        let count = |max_len| filters(6, max_len).0.variables().values().map(|v| v.numel()).sum::<usize>();
        let features = SsmConfig::default().filter_features;
        assert_eq!(count(32), (features + 1) * 6, "weights and bias of the feature map");
        assert_eq!(count(32), count(4096));
    }

    #[test]
    fn a_short_kernel_is_the_prefix_of_a_long_one_and_extends_past_the_training_length() {
        let (_vs, f) = filters(4, 32);
        let long = f.kernel(96);
        assert_eq!(long.size(), vec![4, 96]);
        for seq in [1, 7, 32] {
            assert!(f.kernel(seq).allclose(&long.narrow(1, 0, seq), 1e-6, 1e-7, false), "L={seq}");
        }
        assert!(long.narrow(1, 32, 64).abs().max().double_value(&[]) > 0.0, "taps past max_len are generated, not cut");
    }

    #[test]
    fn taps_are_the_features_through_the_dense_map_under_the_envelope() {
        let (_vs, f) = filters(3, 16);
        let k = f.kernel(16);
        // tap 5 of channel 2 by hand
        let t = 5.0 / 16.0;
        let mut feats = vec![t];
        let freqs = Vec::<f64>::try_from(&f.freqs).unwrap();
        feats.extend(freqs.iter().map(|w| (2.0 * PI * w * t).cos()));
        feats.extend(freqs.iter().map(|w| -(2.0 * PI * w * t).sin()));
        let w = Vec::<f64>::try_from(&f.weight.get(2)).unwrap();
        let b = f.bias.get(2).double_value(&[]);
        let rate = f.rates.get(2).double_value(&[]);
        let expected = (feats.iter().zip(&w).map(|(x, w)| x * w).sum::<f64>() + b) * (-rate * t).exp();
        assert!((k.get(2).get(5).double_value(&[]) - expected).abs() < 1e-6);
        // the envelope: the fastest channel decays to 1e-2 at 0.3 training lengths, the slowest at 1.5
        let rates = Vec::<f64>::try_from(&f.rates).unwrap();
        assert!(((-rates[2] * FAST_DECAY).exp() - DECAY_TARGET).abs() < 1e-6);
        assert!(((-rates[0] * SLOW_DECAY).exp() - DECAY_TARGET).abs() < 1e-6);
    }

    #[test]
    fn initial_taps_have_the_explicit_filters_scale_and_gradients_reach_the_map() {
        let (vs, f) = filters(64, 256);
        let k = f.kernel(256);
        let first = k.narrow(1, 0, 8).std(true).double_value(&[]);
        assert!((0.5 * TAP_SCALE..2.0 * TAP_SCALE).contains(&first), "std of the first taps {first}");
        k.square().sum(Kind::Float).backward();
        for (name, v) in vs.variables() {
            assert!(v.grad().abs().sum(Kind::Float).double_value(&[]) > 0.0, "{name} gets no gradient");
        }
    }
}
