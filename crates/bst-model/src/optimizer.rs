//! AdamW (Loshchilov & Hutter 2019) written over tensors, so that its moments can be saved in a
//! checkpoint and a resumed run continues exactly (libtorch's optimiser state is not reachable
//! through tch). Decoupled weight decay on matmul weights only; the SSM kernel parameters
//! (var-store group [`bst_ssm::SSM_PARAM_GROUP`]) train at `lr * ssm_lr_scale`.

use tch::{nn, Kind, Tensor};

use crate::ModelError;

/// Variables that get weight decay: matmul weights (`*.weight` outside norms and embeddings).
pub fn decays(name: &str) -> bool {
    name.ends_with(".weight") && !name.contains("norm") && !name.starts_with("embed.")
}

#[derive(Debug)]
struct Param {
    name: String,
    tensor: Tensor,
    m: Tensor,
    v: Tensor,
    decay: bool,
    lr_scale: f64,
}

/// AdamW over every trainable variable of a var store.
#[derive(Debug)]
pub struct AdamW {
    params: Vec<Param>,
    beta1: f64,
    beta2: f64,
    eps: f64,
    /// Optimiser steps taken (for bias correction).
    pub steps: i64,
}

impl AdamW {
    pub fn new(vs: &nn::VarStore, beta1: f64, beta2: f64, ssm_lr_scale: f64) -> Self {
        let groups: Vec<(Tensor, usize)> = vs.variables_.lock().unwrap().trainable_variables.iter().map(|v| (v.tensor.shallow_clone(), v.group)).collect();
        let mut named: Vec<(String, Tensor)> = vs.variables().into_iter().collect();
        named.sort_by(|a, b| a.0.cmp(&b.0)); // a fixed order for reproducible checkpoints
        let params = named
            .into_iter()
            .filter_map(|(name, tensor)| {
                let group = groups.iter().find(|(t, _)| t.data_ptr() == tensor.data_ptr())?.1;
                let lr_scale = if group == bst_ssm::SSM_PARAM_GROUP { ssm_lr_scale } else { 1.0 };
                Some(Param { m: tensor.zeros_like(), v: tensor.zeros_like(), decay: decays(&name), lr_scale, name, tensor })
            })
            .collect();
        Self { params, beta1, beta2, eps: 1e-8, steps: 0 }
    }

    pub fn zero_grad(&self) {
        for p in &self.params {
            let mut g = p.tensor.grad();
            if g.defined() {
                let _ = g.zero_();
            }
        }
    }

    /// Global L2 norm of the gradients; names the first non-finite one if there is one.
    pub fn grad_norm(&self, step: usize) -> Result<f64, ModelError> {
        let norm = tch::no_grad(|| {
            let squares: Vec<Tensor> = self.params.iter().map(|p| p.tensor.grad()).filter(|g| g.defined()).map(|g| g.square().sum(Kind::Float)).collect();
            Tensor::stack(&squares, 0).sum(Kind::Float).sqrt().double_value(&[])
        });
        if !norm.is_finite() {
            let bad = self.params.iter().find(|p| p.tensor.grad().defined() && p.tensor.grad().isfinite().all().int64_value(&[]) == 0);
            let what = bad.map_or("the gradient norm".to_string(), |p| format!("the gradient of {}", p.name));
            return Err(ModelError::NonFinite { step, what, value: norm });
        }
        Ok(norm)
    }

    /// Multiplies every gradient by `factor` (clipping, gradient accumulation).
    pub fn scale_grads(&self, factor: f64) {
        tch::no_grad(|| {
            for p in &self.params {
                let mut g = p.tensor.grad();
                if g.defined() {
                    let _ = g.g_mul_scalar_(factor);
                }
            }
        });
    }

    /// One update at learning rate `lr` with weight decay `wd`.
    pub fn step(&mut self, lr: f64, wd: f64) {
        self.steps += 1;
        let (b1, b2) = (self.beta1, self.beta2);
        let bias1 = 1.0 - b1.powi(self.steps as i32);
        let bias2 = 1.0 - b2.powi(self.steps as i32);
        tch::no_grad(|| {
            for p in &mut self.params {
                let g = p.tensor.grad();
                if !g.defined() {
                    continue;
                }
                let lr = lr * p.lr_scale;
                let mut w = p.tensor.shallow_clone();
                if p.decay && wd > 0.0 {
                    let _ = w.g_mul_scalar_(1.0 - lr * wd);
                }
                let _ = p.m.g_mul_scalar_(b1).g_add_(&(&g * (1.0 - b1)));
                let _ = p.v.g_mul_scalar_(b2).g_add_(&(g.square() * (1.0 - b2)));
                let update = (&p.m / bias1) / ((&p.v / bias2).sqrt() + self.eps);
                let _ = w.g_sub_(&(update * lr));
            }
        });
    }

    /// The moments as named tensors (`m.<var>`, `v.<var>`), for a checkpoint.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        self.params.iter().flat_map(|p| [(format!("m.{}", p.name), p.m.shallow_clone()), (format!("v.{}", p.name), p.v.shallow_clone())]).collect()
    }

    /// Restores moments saved by [`Self::state`]; every variable must be present.
    pub fn load_state(&mut self, tensors: &[(String, Tensor)], steps: i64) -> Result<(), String> {
        let find = |key: String| tensors.iter().find(|(k, _)| *k == key).map(|(_, t)| t).ok_or(key);
        tch::no_grad(|| {
            for p in &mut self.params {
                p.m.copy_(find(format!("m.{}", p.name))?);
                p.v.copy_(find(format!("v.{}", p.name))?);
            }
            Ok::<(), String>(())
        })
        .map_err(|key| format!("optimiser state has no `{key}`"))?;
        self.steps = steps;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    #[test]
    fn matches_the_adamw_formula_on_one_parameter() {
        let vs = nn::VarStore::new(Device::Cpu);
        let w = (vs.root() / "lin").var_copy("weight", &Tensor::from_slice(&[1.0f32, -2.0]));
        let mut opt = AdamW::new(&vs, 0.9, 0.999, 1.0);
        (&w * &w).sum(Kind::Float).backward(); // grad = 2w
        opt.step(0.1, 0.5);
        // decay first: w * (1 - 0.05); m = 0.1 g, v = 0.001 g^2; update = g/|g| (1 - tiny eps)
        let expected = [1.0 * 0.95 - 0.1, -2.0 * 0.95 + 0.1];
        let got: Vec<f64> = Vec::try_from(w.to_kind(Kind::Double)).unwrap();
        for (g, e) in got.iter().zip(expected) {
            assert!((g - e).abs() < 1e-5, "{got:?} vs {expected:?}");
        }
        assert_eq!(opt.steps, 1);
        assert_eq!(opt.state().len(), 2);
    }

    #[test]
    fn weight_decay_spares_norms_embeddings_and_ssm() {
        assert!(decays("layers.0.mixer.qkv.weight"));
        assert!(!decays("layers.0.mixer.qkv.bias"));
        assert!(!decays("layers.0.norm1.weight"));
        assert!(!decays("embed.weight"));
        assert!(!decays("layers.1.mixer.ssm.conv.s4d.log_dt"));
        assert!(!decays("layers.1.mixer.ssm.conv.long_conv.taps"));
    }
}
