//! Optimiser parameter groups, decided where each parameter is created.
//!
//! The rule (nanoGPT's, min-gpt's `set_group`): decoupled weight decay on the weights of matrix
//! products only; none on biases, norms, embeddings, learned states and IDs, or SSM filter
//! parameters; the SSM's dynamics (A, dt, and S4's P and B) also train at a reduced learning
//! rate (`ssm.lr_scale`). A layer says which group each of its parameters belongs to through the
//! constructors below, so the optimiser never guesses from a name. Group 0, tch's default, is
//! left unassigned on purpose: the optimiser refuses a parameter created without a group.

use tch::nn;

/// The optimiser treatment of a parameter (stored as the var store's group index).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ParamGroup {
    /// Weights of matrix products: weight decay, base learning rate.
    Decay = 1,
    /// Biases, norms, embeddings, learned states and IDs, filter taps: no decay, base learning rate.
    NoDecay = 2,
    /// SSM dynamics (A, dt, S4's P and B): no decay, learning rate scaled by `ssm.lr_scale`.
    Ssm = 3,
}

impl ParamGroup {
    /// The group of a var-store group index; `None` for tch's default group 0 (unassigned).
    pub fn from_index(index: usize) -> Option<Self> {
        match index {
            1 => Some(ParamGroup::Decay),
            2 => Some(ParamGroup::NoDecay),
            3 => Some(ParamGroup::Ssm),
            _ => None,
        }
    }

    /// `vs` with new variables going to this group (sub-paths inherit it).
    pub fn path<'a>(self, vs: &nn::Path<'a>) -> nn::Path<'a> {
        vs.set_group(self as usize)
    }
}

/// A linear layer `y = x W^T + b` with tch's default initialisation; W decays, b does not.
pub fn linear(vs: &nn::Path, in_dim: i64, out_dim: i64) -> nn::Linear {
    let bound = 1.0 / (in_dim as f64).sqrt();
    // bias before weight, as tch's own `nn::linear` draws them
    let bs = ParamGroup::NoDecay.path(vs).var("bias", &[out_dim], nn::Init::Uniform { lo: -bound, up: bound });
    let ws = ParamGroup::Decay.path(vs).var("weight", &[out_dim, in_dim], nn::LinearConfig::default().ws_init);
    nn::Linear { ws, bs: Some(bs) }
}

/// Layer normalisation over the last dimension `d`; its scale and shift do not decay.
pub fn layer_norm(vs: &nn::Path, d: i64) -> nn::LayerNorm {
    nn::layer_norm(ParamGroup::NoDecay.path(vs), vec![d], Default::default())
}

/// A token embedding `[n, d]` drawn from N(0, 0.02^2) (GPT-2's); it does not decay.
pub fn embedding(vs: &nn::Path, n: i64, d: i64) -> nn::Embedding {
    let cfg = nn::EmbeddingConfig { ws_init: nn::Init::Randn { mean: 0.0, stdev: 0.02 }, ..Default::default() };
    nn::embedding(ParamGroup::NoDecay.path(vs), n, d, cfg)
}

/// Any other parameter, in the group given.
pub fn var(vs: &nn::Path, name: &str, shape: &[i64], init: nn::Init, group: ParamGroup) -> tch::Tensor {
    group.path(vs).var(name, shape, init)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Device;

    fn groups(vs: &nn::VarStore) -> Vec<(Vec<i64>, Option<ParamGroup>)> {
        let vars = vs.variables_.lock().unwrap();
        vars.trainable_variables.iter().map(|v| (v.tensor.size(), ParamGroup::from_index(v.group))).collect()
    }

    #[test]
    fn constructors_put_each_parameter_in_its_group() {
        let vs = nn::VarStore::new(Device::Cpu);
        let root = vs.root();
        let _ = linear(&(&root / "lin"), 3, 5);
        let _ = layer_norm(&(&root / "norm"), 5);
        let _ = embedding(&(&root / "embed"), 7, 5);
        let _ = var(&root, "a", &[4], nn::Init::Const(0.0), ParamGroup::Ssm);
        let _ = root.var("forgotten", &[1], nn::Init::Const(0.0));
        let expected = vec![
            (vec![5], Some(ParamGroup::NoDecay)),    // lin.bias
            (vec![5, 3], Some(ParamGroup::Decay)),   // lin.weight
            (vec![5], Some(ParamGroup::NoDecay)),    // norm.weight
            (vec![5], Some(ParamGroup::NoDecay)),    // norm.bias
            (vec![7, 5], Some(ParamGroup::NoDecay)), // embed.weight
            (vec![4], Some(ParamGroup::Ssm)),
            (vec![1], None), // tch's default group is unassigned
        ];
        assert_eq!(groups(&vs), expected);
        assert!(vs.variables().contains_key("lin.weight") && vs.variables().contains_key("embed.weight"), "names are tch's");
    }
}
