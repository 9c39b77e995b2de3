//! The lab's own TRANSFORMER (bst-model, trained by bst-sweep) as a multi-state RNN: the same
//! weights decoded one token at a time through a bounded [`KvCache`] under any [`Policy`](crate::Policy),
//! next to the pretrained llama.
//!
//! The layer is bst-model's pre-norm block with full causal attention (`XlAttention::full`):
//! `x += out(attention(rope(q), rope(k), v))` over `norm1(x)`, then `x += proj(gelu(fc(norm2(x))))`,
//! LayerNorm, a fused bias-carrying q/k/v projection laid out `[3, heads, head_dim]`, and
//! bst-attn's [`Rope`] at absolute positions. Weights are read from the model's var store by
//! name, so a checkpoint loads exactly as bst-sweep saved it; a test holds the full-cache decode to
//! `LanguageModel::score` on the same text.

use bst_attn::Rope;
use bst_model::{LayerKind, LayerPlan, RunConfig};
use tch::{nn, Device, Kind, Tensor};

use crate::decode::StepModel;
use crate::error::{MsrnnError, Result};
use crate::kv_cache::{attend_step, KvCache, LayerCache};

/// `y = x W^T + b`.
struct Affine {
    w: Tensor,
    b: Tensor,
}

impl Affine {
    fn apply(&self, x: &Tensor) -> Tensor {
        x.linear(&self.w, Some(&self.b))
    }
}

struct Block {
    norm1: Affine,
    qkv: Affine,
    out: Affine,
    norm2: Affine,
    fc: Affine,
    proj: Affine,
}

/// A trained TRANSFORMER run, ready to step.
pub struct LabTransformer {
    embed: Tensor,
    blocks: Vec<Block>,
    norm: Affine,
    head: Affine,
    rope: Rope,
    n_heads: i64,
    d_model: i64,
}

impl LabTransformer {
    /// Reads the weights of a model that `run.build_model` built into `vs` (and a checkpoint
    /// filled). Only TRANSFORMER runs qualify: every other architecture's attention is windowed
    /// or recurrent, its state bounded by construction.
    pub fn from_vars(vs: &nn::VarStore, run: &RunConfig) -> Result<Self> {
        let plan = run.validate().map_err(|e| MsrnnError::Config(e.to_string()))?;
        if !Self::accepts(&plan) {
            return Err(MsrnnError::Config(format!("model.arch = \"{}\": only TRANSFORMER (full causal attention in every layer) decodes through a bounded KV cache", run.model.arch)));
        }
        let vars = vs.variables();
        let affine = |name: String| -> Result<Affine> {
            let get = |p: &str| vars.get(&format!("{name}.{p}")).map(Tensor::detach).ok_or_else(|| MsrnnError::Config(format!("the model has no `{name}.{p}`")));
            Ok(Affine { w: get("weight")?, b: get("bias")? })
        };
        let blocks = (0..plan.0.len())
            .map(|i| {
                let l = |s: &str| affine(format!("layers.{i}.{s}"));
                Ok(Block { norm1: l("norm1")?, qkv: l("mixer.qkv")?, out: l("mixer.out")?, norm2: l("norm2")?, fc: l("mlp.fc")?, proj: l("mlp.proj")? })
            })
            .collect::<Result<_>>()?;
        let embed = vars.get("embed.weight").map(Tensor::detach).ok_or_else(|| MsrnnError::Config("the model has no `embed.weight`".into()))?;
        let cfg = run.layer_config();
        Ok(Self {
            embed,
            blocks,
            norm: affine("norm".into())?,
            head: affine("head".into())?,
            rope: Rope::new(cfg.dims.head_dim(), cfg.attn.rope_base, vs.device()),
            n_heads: cfg.dims.n_heads as i64,
            d_model: cfg.dims.d_model as i64,
        })
    }

    /// Whether a model of this plan can be stepped: full causal attention in every layer.
    pub fn accepts(plan: &LayerPlan) -> bool {
        plan.0.iter().all(|k| *k == LayerKind::Attention)
    }

    fn layer_norm(&self, x: &Tensor, n: &Affine) -> Tensor {
        x.layer_norm([self.d_model], Some(&n.w), Some(&n.b), 1e-5, false)
    }

    /// # Shapes
    /// - `x`: `[batch, d_model]` -> `[batch, d_model]`
    fn step_block(&self, b: &Block, x: &Tensor, caches: &mut [&mut LayerCache], position: i64) -> Tensor {
        let (batch, h) = (x.size()[0], self.n_heads);
        let hd = self.d_model / h;
        let qkv = b.qkv.apply(&self.layer_norm(x, &b.norm1)).view([batch, 1, 3, h, hd]);
        let rotate = |t: Tensor| self.rope.apply_at(&t, position).squeeze_dim(1); // [batch, h, hd]
        let q = rotate(qkv.select(2, 0)) / (hd as f64).sqrt();
        let k = rotate(qkv.select(2, 1));
        let attn = attend_step(&q, &k, &qkv.select(2, 2).squeeze_dim(1), caches, position);
        let x = x + b.out.apply(&attn);
        let mlp = b.proj.apply(&b.fc.apply(&self.layer_norm(&x, &b.norm2)).gelu("none"));
        x + mlp
    }
}

impl StepModel for LabTransformer {
    fn device(&self) -> Device {
        self.embed.device()
    }

    fn n_layers(&self) -> usize {
        self.blocks.len()
    }

    fn step_groups(&self, tokens: &Tensor, position: i64, caches: &mut [KvCache]) -> Tensor {
        let batch = tokens.size()[0];
        assert!(!caches.is_empty() && batch % caches.len() as i64 == 0, "{batch} rows cannot be split into {} groups", caches.len());
        let mut x = self.embed.index_select(0, tokens).to_kind(Kind::Float); // [batch, d]
        for (l, block) in self.blocks.iter().enumerate() {
            let mut layers: Vec<&mut LayerCache> = caches.iter_mut().map(|c| &mut c.layers[l]).collect();
            x = self.step_block(block, &x, &mut layers, position);
        }
        self.head.apply(&self.layer_norm(&x, &self.norm))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{decode, Policy};
    use bst_model::ModelConfig;

    fn trained_like(arch: &str) -> (nn::VarStore, bst_model::LanguageModel, RunConfig) {
        let mut run = RunConfig::default();
        run.model = ModelConfig { arch: arch.parse().unwrap(), n_layers: 2, d_model: 32, n_heads: 4, ..ModelConfig::default() };
        run.attn.window = 8;
        run.train.seq_len = 48;
        let vs = nn::VarStore::new(Device::Cpu);
        let lm = run.build_model(&vs.root(), 64).unwrap();
        // random weights are too tame to tell the policies apart: sharpen the attention
        tch::no_grad(|| {
            for (name, mut v) in vs.variables() {
                if name.ends_with("mixer.qkv.weight") {
                    v *= 6.0;
                }
            }
        });
        (vs, lm, run)
    }

    /// The full cache decodes exactly what bst-model's own forward pass scores.
    #[test]
    fn full_cache_decoding_equals_the_models_own_scores() {
        let (vs, lm, run) = trained_like("TRANSFORMER");
        let text: Vec<i64> = (0..48).map(|i| (i * 29 % 64) as i64).collect();
        let reference = lm.score(&text, Device::Cpu);
        let model = LabTransformer::from_vars(&vs, &run).unwrap();
        let tokens = Tensor::from_slice(&text).unsqueeze(0);
        for (policy, k) in [(Policy::Full, None), (Policy::Tova { head_wise: false, keep_newest: false }, Some(48)), (Policy::H2o, Some(48))] {
            let got: Vec<f64> = Vec::try_from(decode(&model, &tokens, policy, k, |_, _| {}).unwrap().logprobs.squeeze_dim(0).to_kind(Kind::Double)).unwrap();
            let gap = got.iter().zip(&reference).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
            assert!(gap < 1e-4, "{policy} k = {k:?}: decoding differs from LanguageModel::score by {gap}");
        }
    }

    /// A bounded cache changes the predictions once it evicts, and holds at most k entries.
    #[test]
    fn a_bounded_cache_evicts_and_changes_the_predictions() {
        let (vs, _lm, run) = trained_like("TRANSFORMER");
        let model = LabTransformer::from_vars(&vs, &run).unwrap();
        let tokens = Tensor::randint(64, [2, 40], (Kind::Int64, Device::Cpu));
        let full = decode(&model, &tokens, Policy::Full, None, |_, _| {}).unwrap();
        for policy in [Policy::Window, Policy::Tova { head_wise: false, keep_newest: false }] {
            let out = decode(&model, &tokens, policy, Some(8), |_, c| assert!(c.max_live() <= 8)).unwrap();
            let early = (out.logprobs.narrow(1, 0, 8) - full.logprobs.narrow(1, 0, 8)).abs().max().double_value(&[]);
            let late = (out.logprobs.narrow(1, 8, 31) - full.logprobs.narrow(1, 8, 31)).abs().max().double_value(&[]);
            assert!(early < 1e-4, "{policy}: nothing is evicted before token 9 ({early})");
            assert!(late > 1e-3, "{policy}: evictions should change later predictions ({late})");
        }
    }

    #[test]
    fn windowed_architectures_are_refused_by_name() {
        let (vs, _lm, run) = trained_like("SLIDE");
        let err = LabTransformer::from_vars(&vs, &run).err().expect("SLIDE is not a full-attention model").to_string();
        assert!(err.contains("model.arch = \"SLIDE\"") && err.contains("TRANSFORMER"), "{err}");
    }
}
