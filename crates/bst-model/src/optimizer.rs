//! AdamW (Loshchilov & Hutter 2019) written over tensors, so that its moments can be saved in a
//! checkpoint and a resumed run continues exactly (libtorch's optimiser state is not reachable
//! through tch). Each parameter's treatment is its [`ParamGroup`], chosen where the layer created
//! it: decoupled weight decay for `Decay` (matmul weights) only, `lr * ssm.lr_scale` for `Ssm`
//! (SSM dynamics).

use bst_core::ParamGroup;
use tch::{nn, Kind, Tensor};

use crate::ModelError;

#[derive(Debug)]
struct Param {
    name: String,
    tensor: Tensor,
    m: Tensor,
    v: Tensor,
    group: ParamGroup,
}

/// AdamW over every trainable variable of a var store.
#[derive(Debug)]
pub struct AdamW {
    params: Vec<Param>,
    beta1: f64,
    beta2: f64,
    eps: f64,
    ssm_lr_scale: f64,
    /// Optimiser steps taken (for bias correction).
    pub steps: i64,
}

/// Every trainable variable of `vs` with its name and group, sorted by name (a fixed order for
/// reproducible checkpoints). tch keeps names and groups in separate tables, linked only by the
/// tensor itself, so the two are joined by identity (same storage, offset, size and stride).
///
/// Panics if a parameter was created without a group: that is a bug in the layer that made it.
fn named_groups(vs: &nn::VarStore) -> Vec<(String, Tensor, ParamGroup)> {
    let vars = vs.variables_.lock().expect("var store lock");
    let mut out: Vec<(String, Tensor, ParamGroup)> = vars
        .named_variables
        .iter()
        .filter_map(|(name, tensor)| {
            let var = vars.trainable_variables.iter().find(|v| v.tensor.is_set_to(tensor))?;
            let group = ParamGroup::from_index(var.group).unwrap_or_else(|| panic!("parameter `{name}` was created without an optimiser group (bst_core::params)"));
            Some((name.clone(), tensor.shallow_clone(), group))
        })
        .collect();
    assert_eq!(out.len(), vars.trainable_variables.len(), "every trainable variable has exactly one name");
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

impl AdamW {
    pub fn new(vs: &nn::VarStore, beta1: f64, beta2: f64, ssm_lr_scale: f64) -> Self {
        let params = named_groups(vs).into_iter().map(|(name, tensor, group)| Param { m: tensor.zeros_like(), v: tensor.zeros_like(), name, tensor, group }).collect();
        Self { params, beta1, beta2, eps: 1e-8, ssm_lr_scale, steps: 0 }
    }

    /// Each parameter's name and group, in the optimiser's (name) order.
    pub fn groups(&self) -> Vec<(&str, ParamGroup)> {
        self.params.iter().map(|p| (p.name.as_str(), p.group)).collect()
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

    /// One update at learning rate `lr` with weight decay `wd` (applied to the `Decay` group).
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
                let lr = if p.group == ParamGroup::Ssm { lr * self.ssm_lr_scale } else { lr };
                let mut w = p.tensor.shallow_clone();
                if p.group == ParamGroup::Decay && wd > 0.0 {
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
        let w = ParamGroup::Decay.path(&(vs.root() / "lin")).var_copy("weight", &Tensor::from_slice(&[1.0f32, -2.0]));
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
    fn groups_set_decay_and_learning_rate() {
        let vs = nn::VarStore::new(Device::Cpu);
        let init = Tensor::from_slice(&[1.0f32]);
        let root = vs.root();
        let (d, n, s) = (ParamGroup::Decay.path(&root).var_copy("d", &init), ParamGroup::NoDecay.path(&root).var_copy("n", &init), ParamGroup::Ssm.path(&root).var_copy("s", &init));
        let mut opt = AdamW::new(&vs, 0.9, 0.999, 0.25);
        (&d + &n + &s).sum(Kind::Float).backward();
        opt.step(0.1, 0.5);
        let value = |t: &Tensor| t.double_value(&[0]);
        assert!((value(&d) - (0.95 - 0.1)).abs() < 1e-5, "decayed, full step");
        assert!((value(&n) - 0.9).abs() < 1e-5, "no decay, full step");
        assert!((value(&s) - (1.0 - 0.025)).abs() < 1e-5, "no decay, a quarter step");
    }

    #[test]
    #[should_panic(expected = "`orphan` was created without an optimiser group")]
    fn a_parameter_without_a_group_is_refused() {
        let vs = nn::VarStore::new(Device::Cpu);
        let _ = vs.root().var("orphan", &[2], nn::Init::Const(0.0));
        let _ = AdamW::new(&vs, 0.9, 0.999, 1.0);
    }

    /// The documented rule, written out per parameter: only matmul weights decay; SSM dynamics
    /// get their own learning rate; embeddings, norms, biases, learned states and IDs and filter
    /// parameters neither. Checked for every parameter of every architecture, and of the
    /// classifier built on one (whose `backbone.embed.weight` once decayed by mistake).
    fn expected(name: &str) -> ParamGroup {
        let last = name.rsplit('.').next().unwrap();
        let parent = name.rsplit('.').nth(1).unwrap_or("");
        match (parent, last) {
            ("s4d", "log_dt" | "log_a_real" | "a_imag") | ("s4", "log_dt" | "log_lambda_real" | "lambda_imag" | "p" | "b") => ParamGroup::Ssm,
            ("s4d" | "s4", "c") | ("conv", "d") | ("long_conv", "taps") | ("dense", "weight" | "bias") => ParamGroup::NoDecay,
            ("embed", "weight") => ParamGroup::NoDecay,
            (_, "state_ids" | "initial_state" | "gate_bias" | "context_ids" | "initial_context") => ParamGroup::NoDecay,
            (_, "cross_kv_heads") => ParamGroup::Decay,
            (p, "weight" | "bias") if p.contains("norm") => ParamGroup::NoDecay,
            (_, "bias") => ParamGroup::NoDecay,
            (_, "weight") => ParamGroup::Decay,
            _ => panic!("{name}: not covered by the rule; add it here"),
        }
    }

    #[test]
    fn every_parameter_of_every_architecture_is_in_its_group() {
        use bst_ssm::{SsmConfig, UnstructuredFilter};
        let implicit = SsmConfig { unstructured_filter: UnstructuredFilter::Implicit, ..SsmConfig::default() };
        let archs: [(&str, &[usize], SsmConfig); 13] = [
            ("SLIDE", &[], SsmConfig::default()),
            ("BST:SH:S4D", &[1], SsmConfig::default()),
            ("BST:MH:S4", &[1], SsmConfig::default()),
            ("BST:MF:S4D", &[0], SsmConfig::default()),
            ("BST:SH:UNSTRUCT", &[1], SsmConfig::default()),
            ("BST:MF:UNSTRUCT", &[1], implicit.clone()),
            ("BST:MH:UNSTRUCT", &[0], implicit),
            ("BRECT:FIXED:SKIP", &[], SsmConfig::default()),
            ("TRSF-XL", &[], SsmConfig::default()),
            ("GSS-HYBRID", &[0], SsmConfig::default()),
            ("TRANSFORMER", &[], SsmConfig::default()),
            ("BST:SH:S4D", &[0, 1], SsmConfig::default()),
            ("S4D", &[], SsmConfig::default()),
        ];
        for (arch, layers, ssm) in archs {
            let run = crate::lm::tests::tiny_run(arch, layers, &ssm);
            let vs = nn::VarStore::new(Device::Cpu);
            let _ = run.build_model(&vs.root(), 256).unwrap();
            let opt = AdamW::new(&vs, 0.9, 0.95, 0.25);
            assert_eq!(opt.groups().len(), vs.trainable_variables().len());
            for (name, group) in opt.groups() {
                assert_eq!(group, expected(name), "{arch}: {name}");
            }
        }
        let run = crate::lm::tests::tiny_run("BST:SH:S4D", &[1], &SsmConfig::default());
        let vs = nn::VarStore::new(Device::Cpu);
        let _ = crate::Classifier::with_head(&vs.root(), &run, 256, 3, true).unwrap();
        let opt = AdamW::new(&vs, 0.9, 0.95, 0.25);
        let groups = opt.groups();
        assert!(groups.contains(&("backbone.embed.weight", ParamGroup::NoDecay)));
        assert!(groups.contains(&("head.0.weight", ParamGroup::Decay)) && groups.contains(&("head.2.bias", ParamGroup::NoDecay)));
        for (name, group) in groups {
            assert_eq!(group, expected(name), "classifier: {name}");
        }
    }
}
