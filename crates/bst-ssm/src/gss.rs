//! The Gated State Space layer (GSS; Mehta, Gupta, Cutkosky, Neyshabur 2022), used by the
//! GSS-HYBRID baseline:
//! `u = gelu(W_u x)` (width 3d), `v = gelu(W_v x)` (reduced width d/f), `y = SSM(v)`,
//! `out = W_o ((W_y y) ⊙ u)`. The gate lets a cheap, narrow SSM modulate a wide branch. GSS uses
//! DSS, a diagonal SSM; S4D is that family's standard form and stands in for it here.

use bst_core::params::linear;
use tch::{nn, nn::Module, nn::ModuleT, Tensor};

use crate::{SsmConv, SsmLayerConfig};

/// `xs: [batch, seq, d_model] -> [batch, seq, d_model]`.
#[derive(Debug)]
pub struct GssLayer {
    wide: nn::Linear,
    narrow: nn::Linear,
    conv: SsmConv,
    lift: nn::Linear,
    out: nn::Linear,
}

impl GssLayer {
    /// Width of the gated branch, as a multiple of d_model (GSS: 3).
    pub const EXPANSION: usize = 3;

    /// A GSS layer `cfg.width` wide, its SSM one bank of `cfg.channels()` kernels of `cfg.kind`.
    pub fn new(vs: &nn::Path, cfg: &SsmLayerConfig) -> Self {
        let (d, e, r) = (cfg.width as i64, (Self::EXPANSION * cfg.width) as i64, cfg.channels() as i64);
        let lin = |name: &str, i: i64, o: i64| linear(&(vs / name), i, o);
        Self {
            wide: lin("wide", d, e),
            narrow: lin("narrow", d, r),
            conv: SsmConv::new(&(vs / "conv"), &SsmLayerConfig { banks: 1, ..cfg.clone() }),
            lift: lin("lift", r, e),
            out: lin("out", e, d),
        }
    }

}

impl ModuleT for GssLayer {
    /// # Shapes
    /// - `xs`: `[batch, seq, d_model]` -> `[batch, seq, d_model]`
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let u = self.wide.forward(xs).gelu("none"); // [b, seq, 3d]
        let v = self.narrow.forward(xs).gelu("none").transpose(1, 2); // [b, r, seq]
        let y = self.conv.forward_t(&v, train).squeeze_dim(1).transpose(1, 2); // [b, seq, r]
        self.out.forward(&(self.lift.forward(&y) * u))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{SsmConfig, SsmKind};
    use tch::{Device, Kind};

    #[test]
    fn shapes_causality_and_gradients() {
        tch::manual_seed(1);
        let vs = nn::VarStore::new(Device::Cpu);
        let gss = GssLayer::new(&vs.root(), &SsmLayerConfig::new(&SsmConfig::default(), SsmKind::S4d, 16, 32));
        let xs = Tensor::randn([2, 19, 16], (Kind::Float, Device::Cpu));
        let ys = gss.forward_t(&xs, true);
        assert_eq!(ys.size(), vec![2, 19, 16]);
        let xs2 = xs.copy();
        let _ = xs2.narrow(1, 11, 1).fill_(2.0);
        let before = (ys.narrow(1, 0, 11) - gss.forward_t(&xs2, true).narrow(1, 0, 11)).abs().max().double_value(&[]);
        assert!(before < 1e-5, "token 11 changed earlier outputs by {before}");
        ys.square().sum(Kind::Float).backward();
        for (name, var) in vs.variables() {
            let g = var.grad();
            assert!(g.defined() && g.isfinite().all().int64_value(&[]) == 1 && g.abs().sum(Kind::Float).double_value(&[]) > 0.0, "{name}: bad gradient");
        }
    }
}
