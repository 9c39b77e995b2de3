//! The SSM sublayer of a BST layer (paper §3): project the embeddings down (d -> d/4, which makes
//! the FFTs 4x cheaper), run the SSM over the whole sequence, and lift the result back up.

use bst_core::params::linear;
use tch::{nn, nn::Module, nn::ModuleT, Tensor};

use crate::{Recurrence, SsmConv, SsmLayerConfig, SsmState};

/// `xs: [batch, seq, d_in] -> [batch, seq, banks, d_out]`:
/// Linear(d_in -> d_in/f), SSM (per bank), GELU, Linear(-> d_out).
#[derive(Debug)]
pub struct SsmSublayer {
    down: nn::Linear,
    conv: SsmConv,
    up: nn::Linear,
}

impl SsmSublayer {
    /// `cfg.width -> cfg.channels() -> cfg.out`; the `cfg.banks` filter banks share the projections.
    pub fn new(vs: &nn::Path, cfg: &SsmLayerConfig) -> Self {
        let channels = cfg.channels() as i64;
        Self {
            down: linear(&(vs / "down"), cfg.width as i64, channels),
            conv: SsmConv::new(&(vs / "conv"), cfg),
            up: linear(&(vs / "up"), channels, cfg.out as i64),
        }
    }

    /// The convolution layer (for its kernels and recurrence).
    pub fn conv(&self) -> &SsmConv {
        &self.conv
    }

    /// The sublayer's outputs at the given positions only (BST:MF reads each filter at block
    /// ends): the convolution runs over the whole sequence, the nonlinearity and the up-projection
    /// only where needed.
    ///
    /// # Shapes
    /// - `xs`: `[batch, seq, d_in]`, `positions`: `[p]` int64 -> `[batch, p, banks, d_out]`
    pub fn forward_at(&self, xs: &Tensor, positions: &Tensor, train: bool) -> Tensor {
        let u = self.down.forward(xs).transpose(1, 2); // [b, channels, seq]
        let y = self.conv.forward_t(&u, train).index_select(3, positions).gelu("none"); // [b, banks, channels, p]
        self.up.forward(&y.permute([0, 3, 1, 2]))
    }

    /// Recurrent mode, one token.
    ///
    /// # Shapes
    /// - `x`: `[batch, d_in]` -> `[batch, banks, d_out]`
    pub fn step(&self, recurrence: &Recurrence, x: &Tensor, state: &mut SsmState) -> Tensor {
        let u = self.down.forward(x); // [b, channels]
        let y = self.conv.step(recurrence, &u, state).gelu("none"); // [b, banks, channels]
        self.up.forward(&y)
    }
}

impl ModuleT for SsmSublayer {
    /// # Shapes
    /// - `xs`: `[batch, seq, d_in]` -> `[batch, seq, banks, d_out]`
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let u = self.down.forward(xs).transpose(1, 2); // [b, channels, seq]
        let y = self.conv.forward_t(&u, train).gelu("none"); // [b, banks, channels, seq]
        self.up.forward(&y.permute([0, 3, 1, 2])) // [b, seq, banks, d_out]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{SsmConfig, SsmKind};
    use tch::{Device, Kind};

    #[test]
    fn shapes_causality_and_streaming() {
        tch::manual_seed(5);
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = SsmLayerConfig { out: 24, banks: 2, ..SsmLayerConfig::new(&SsmConfig::default(), SsmKind::S4d, 16, 64) };
        let layer = SsmSublayer::new(&vs.root(), &cfg);
        let xs = Tensor::randn([1, 21, 16], (Kind::Float, Device::Cpu));
        let ys = layer.forward_t(&xs, false);
        assert_eq!(ys.size(), vec![1, 21, 2, 24]);
        let xs2 = xs.copy();
        let _ = xs2.narrow(1, 13, 1).fill_(5.0);
        let ys2 = layer.forward_t(&xs2, false);
        let before = (ys.narrow(1, 0, 13) - ys2.narrow(1, 0, 13)).abs().max().double_value(&[]);
        assert!(before < 1e-5, "outputs before the perturbed token changed by {before}");

        let at = Tensor::from_slice(&[0i64, 7, 20]);
        let picked = layer.forward_at(&xs, &at, false);
        assert!((picked - ys.index_select(1, &at)).abs().max().double_value(&[]) < 1e-6);

        let rec = layer.conv().recurrence().unwrap();
        let mut state = rec.zero_state(1);
        let streamed: Vec<Tensor> = (0..21).map(|t| layer.step(&rec, &xs.select(1, t), &mut state)).collect();
        let err = (Tensor::stack(&streamed, 1) - &ys).abs().max().double_value(&[]);
        assert!(err < 1e-4, "streaming differs from the parallel pass by {err}");
    }
}
