//! The SSM sublayer of a BST layer (paper §3): project the embeddings down (d -> d/4, which makes
//! the FFTs 4x cheaper), run the SSM over the whole sequence, and lift the result back up.

use tch::{nn, nn::Module, Tensor};

use crate::{S4d, SsmConfig, SsmError, SsmKind};

/// `xs: [batch, seq, d_in] -> [batch, seq, d_out]`: Linear(d_in -> d_in/f), SSM, GELU, Linear(-> d_out).
#[derive(Debug)]
pub struct SsmSublayer {
    down: nn::Linear,
    ssm: S4d,
    up: nn::Linear,
}

impl SsmSublayer {
    pub fn new(vs: &nn::Path, d_in: usize, d_out: usize, kind: SsmKind, cfg: &SsmConfig) -> Result<Self, SsmError> {
        cfg.validate(d_in)?;
        let channels = cfg.channels(d_in);
        let down = nn::linear(vs / "down", d_in as i64, channels as i64, Default::default());
        let ssm = match kind {
            SsmKind::S4d => S4d::new(&(vs / "s4d"), channels, cfg)?,
        };
        let up = nn::linear(vs / "up", channels as i64, d_out as i64, Default::default());
        Ok(Self { down, ssm, up })
    }
}

impl Module for SsmSublayer {
    /// # Shapes
    /// - `xs`: `[batch, seq, d_in]` -> `[batch, seq, d_out]`
    fn forward(&self, xs: &Tensor) -> Tensor {
        let u = self.down.forward(xs).transpose(1, 2); // [b, channels, seq]
        let y = self.ssm.forward(&u).gelu("none").transpose(1, 2); // [b, seq, channels]
        self.up.forward(&y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn shapes_and_causality() {
        tch::manual_seed(5);
        let vs = nn::VarStore::new(Device::Cpu);
        let layer = SsmSublayer::new(&vs.root(), 16, 24, SsmKind::S4d, &SsmConfig::default()).unwrap();
        let xs = Tensor::randn([1, 21, 16], (Kind::Float, Device::Cpu));
        let ys = layer.forward(&xs);
        assert_eq!(ys.size(), vec![1, 21, 24]);
        let xs2 = xs.copy();
        let _ = xs2.narrow(1, 13, 1).fill_(5.0);
        let ys2 = layer.forward(&xs2);
        let before = (ys.narrow(1, 0, 13) - ys2.narrow(1, 0, 13)).abs().max().double_value(&[]);
        assert!(before < 1e-5, "outputs before the perturbed token changed by {before}");
    }

    #[test]
    fn rejects_projection_that_does_not_divide() {
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = SsmConfig { proj_factor: 3, ..SsmConfig::default() };
        let err = SsmSublayer::new(&vs.root(), 16, 16, SsmKind::S4d, &cfg).unwrap_err().to_string();
        assert!(err.contains("proj_factor"), "{err}");
    }
}
