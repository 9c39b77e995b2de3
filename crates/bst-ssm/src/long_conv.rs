//! Unstructured SSM: explicit length-L filters (the paper's "UNSTRUCT"), regularised as in
//! Fu et al. 2023, "Simple Hardware-Efficient Long Convolutions" (hyena-dna `long_conv_kernel.py`):
//! taps smoothed by a moving average and squashed by a soft threshold
//! `sign(k) * relu(|k| - lambda)`, initialised with exponentially decaying noise (their
//! `double_exp`: channel i decays at rate `(H/2)^(i/H)` over the filter length).
//!
//! **Length generalisation.** The filter has `max_len` taps (the training length). On a longer
//! sequence the taps beyond `max_len` are zero: the layer then sees at most `max_len - 1` tokens
//! back, and nothing has been learned about farther context. S4/S4D kernels, generated from a
//! state-space model, extend to any length instead. The paper reports that unstructured variants
//! degrade at 16k and 65k tokens after training at 4k; evaluating at 2x-16x the training length
//! measures exactly this.

use tch::{nn, Kind, Tensor};

use bst_core::ParamGroup;

use crate::SsmConfig;

/// `channels` explicit filters of `max_len` taps.
#[derive(Debug)]
pub struct LongConvKernel {
    taps: Tensor, // [channels, max_len]
    squash: f64,
    smooth_window: i64,
}

impl LongConvKernel {
    /// `max_len` taps per channel (the training length, >= 1).
    pub fn new(vs: &nn::Path, channels: usize, max_len: usize, cfg: &SsmConfig) -> Self {
        assert!(max_len >= 1, "unstructured filters need the training length (>= 1 taps)");
        let (h, l) = (channels as i64, max_len as i64);
        let opts = (Kind::Float, vs.device());
        let t = Tensor::arange(l, opts) / l as f64; // [l]: position in the filter, 0..1
        let rate = Tensor::full([h], (h as f64 / 2.0).max(1.0), opts).pow(&(Tensor::arange(h, opts) / h as f64)); // [h]
        let decay = (rate.unsqueeze(1) * t.unsqueeze(0)).neg().exp(); // [h, l]
        let taps = ParamGroup::NoDecay.path(vs).var_copy("taps", &(Tensor::randn([h, l], opts) * 0.02 * decay));
        Self { taps, squash: cfg.squash, smooth_window: cfg.smooth_window as i64 }
    }

    /// The parameters the kernel is generated from.
    pub fn parameters(&self) -> Vec<&Tensor> {
        vec![&self.taps]
    }

    /// Number of learned taps.
    pub fn max_len(&self) -> i64 {
        self.taps.size()[1]
    }

    /// The length-`seq` kernel `[channels, seq]`: the regularised taps, cut to `seq` or
    /// zero-padded past `max_len` (see the module docs). Only the taps the result depends on are
    /// smoothed (the first `seq` plus half the smoothing window), so the cost is O(seq), not
    /// O(max_len).
    pub fn kernel(&self, seq: i64) -> Tensor {
        let max_len = self.max_len();
        let used = seq.min(max_len);
        let half = self.smooth_window / 2;
        let mut k = self.taps.narrow(1, 0, (used + half).min(max_len));
        if self.smooth_window > 1 {
            let w = self.smooth_window;
            k = k.unsqueeze(0).avg_pool1d([w], [1], [half], false, false).squeeze_dim(0);
        }
        let mut k = k.narrow(1, 0, used);
        if self.squash > 0.0 {
            k = (k.abs() - self.squash).relu() * k.sign();
        }
        if seq > max_len {
            k = k.constant_pad_nd([0, seq - max_len]);
        }
        k
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn filters(squash: f64, smooth_window: usize) -> (nn::VarStore, LongConvKernel) {
        tch::manual_seed(4);
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = SsmConfig { squash, smooth_window, proj_factor: 1, ..SsmConfig::default() };
        let k = LongConvKernel::new(&vs.root(), 4, 32, &cfg);
        (vs, k)
    }

    #[test]
    fn squash_soft_thresholds_and_smoothing_averages() {
        let (_vs, raw) = filters(0.0, 1);
        let taps = raw.kernel(32);
        assert!(taps.equal(&raw.taps), "no regularisation = the taps themselves");
        let (_vs, squashed) = filters(0.01, 1);
        let k = squashed.kernel(32);
        let expected = (squashed.taps.abs() - 0.01).relu() * squashed.taps.sign();
        assert!(k.allclose(&expected, 1e-6, 1e-7, false));
        let (_vs, smooth) = filters(0.0, 3);
        let k = smooth.kernel(32);
        let mid = (smooth.taps.narrow(1, 4, 3).sum_dim_intlist(1, false, None::<Kind>) / 3.0).get(0);
        assert!((k.get(0).get(5) - mid).abs().double_value(&[]) < 1e-6);
    }

    #[test]
    fn a_short_kernel_is_the_prefix_of_the_full_one() {
        // smoothing only the needed taps must not change them
        let (_vs, f) = filters(0.001, 7);
        let full = f.kernel(32);
        for seq in [1, 5, 13, 29] {
            assert!(f.kernel(seq).allclose(&full.narrow(1, 0, seq), 1e-7, 1e-7, false), "L={seq}");
        }
    }

    #[test]
    fn longer_sequences_get_zero_taps_beyond_the_training_length() {
        let (_vs, f) = filters(0.001, 7);
        let k = f.kernel(80);
        assert_eq!(k.size(), vec![4, 80]);
        assert_eq!(k.narrow(1, 32, 48).abs().max().double_value(&[]), 0.0);
        assert!(k.narrow(1, 0, 32).equal(&f.kernel(32)), "the first max_len taps do not depend on the length asked for");
    }

    #[test]
    fn default_regularisation_leaves_gradients_alive() {
        let (vs, f) = filters(SsmConfig::default().squash, SsmConfig::default().smooth_window);
        f.kernel(32).square().sum(Kind::Float).backward();
        let g = vs.variables()["taps"].grad();
        let alive = g.ne(0.0).to_kind(Kind::Float).mean(Kind::Float).double_value(&[]);
        assert!(alive > 0.5, "only {alive} of the taps get a gradient");
    }
}
