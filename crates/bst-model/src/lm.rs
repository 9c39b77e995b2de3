//! The decoder language model: embedding -> layers -> norm -> head, every layer pre-norm:
//! `x = x + mixer(norm1(x)); x = x + mlp(norm2(x))` (nanoGPT's Block).

use bst_attn::{AttnConfig, BlockScope, BlockSelfAttention, BstAttention, BstSpec, HeadDims};
use bst_ssm::SsmConfig;
use tch::{nn, nn::Module, nn::ModuleT, Tensor};

use crate::{Architecture, ModelConfig, ModelError};

/// The attention-side sublayer of one residual layer.
#[derive(Debug)]
enum Mixer {
    Slide(BlockSelfAttention),
    Bst(Box<BstAttention>),
}

/// Position-wise feed-forward network: Linear -> GELU -> Linear.
#[derive(Debug)]
struct Mlp {
    fc: nn::Linear,
    proj: nn::Linear,
    dropout: f64,
}

impl Mlp {
    fn new(vs: &nn::Path, d_model: i64, hidden: i64, dropout: f64) -> Self {
        Self {
            fc: nn::linear(vs / "fc", d_model, hidden, Default::default()),
            proj: nn::linear(vs / "proj", hidden, d_model, Default::default()),
            dropout,
        }
    }
}

impl ModuleT for Mlp {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        self.proj.forward(&self.fc.forward(xs).gelu("none")).dropout(self.dropout, train)
    }
}

#[derive(Debug)]
struct Layer {
    norm1: nn::LayerNorm,
    mixer: Mixer,
    norm2: nn::LayerNorm,
    mlp: Mlp,
}

impl ModuleT for Layer {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        let h = self.norm1.forward(xs);
        let h = match &self.mixer {
            Mixer::Slide(attn) => attn.forward_t(&h, train),
            Mixer::Bst(bst) => bst.forward_t(&h, train),
        };
        let xs = xs + h;
        &xs + self.mlp.forward_t(&self.norm2.forward(&xs), train)
    }
}

/// A decoder LM whose layers are SLIDE or BST layers.
#[derive(Debug)]
pub struct LanguageModel {
    embed: nn::Embedding,
    layers: Vec<Layer>,
    norm: nn::LayerNorm,
    head: nn::Linear,
    dropout: f64,
}

impl LanguageModel {
    /// Builds the model; variable names follow the module tree (`layers.3.mixer.ssm.conv.s4d.log_dt`).
    /// `max_len` is the training sequence length (the number of taps of unstructured filters).
    pub fn new(
        vs: &nn::Path,
        model: &ModelConfig,
        attn: &AttnConfig,
        ssm: &SsmConfig,
        vocab_size: usize,
        max_len: usize,
    ) -> Result<Self, ModelError> {
        let d = model.d_model as i64;
        let dims = HeadDims { d_model: model.d_model, n_heads: model.n_heads, dropout: model.dropout };
        let layers = (0..model.n_layers)
            .map(|i| {
                let p = vs / "layers" / i;
                let mixer = match model.arch {
                    Architecture::Bst { context, ssm: ssm_kind } if model.ssm_layers.contains(&i) => {
                        let spec = BstSpec { variant: context, ssm_kind, context_states: model.context_states, max_len };
                        Mixer::Bst(Box::new(BstAttention::new(&(&p / "mixer"), dims, attn, ssm, spec)?))
                    }
                    _ => Mixer::Slide(BlockSelfAttention::new(&(&p / "mixer"), dims, attn, BlockScope::OwnAndPrevious)?),
                };
                Ok(Layer {
                    norm1: nn::layer_norm(&p / "norm1", vec![d], Default::default()),
                    mixer,
                    norm2: nn::layer_norm(&p / "norm2", vec![d], Default::default()),
                    mlp: Mlp::new(&(&p / "mlp"), d, d * model.mlp_ratio as i64, model.dropout),
                })
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        let embed_cfg = nn::EmbeddingConfig { ws_init: nn::Init::Randn { mean: 0.0, stdev: 0.02 }, ..Default::default() };
        Ok(Self {
            embed: nn::embedding(vs / "embed", vocab_size as i64, d, embed_cfg),
            layers,
            norm: nn::layer_norm(vs / "norm", vec![d], Default::default()),
            head: nn::linear(vs / "head", d, vocab_size as i64, Default::default()),
            dropout: model.dropout,
        })
    }

    /// Next-token logits.
    ///
    /// # Shapes
    /// - `tokens`: `[batch, seq]` int64 -> `[batch, seq, vocab]`
    pub fn logits(&self, tokens: &Tensor, train: bool) -> Tensor {
        let mut xs = self.embed.forward(tokens).dropout(self.dropout, train); // [b, seq, d]
        for layer in &self.layers {
            xs = layer.forward_t(&xs, train);
        }
        self.head.forward(&self.norm.forward(&xs))
    }

    /// Mean next-token cross-entropy in nats (f32).
    ///
    /// # Shapes
    /// - `tokens`, `targets`: `[batch, seq]` -> scalar
    pub fn loss(&self, tokens: &Tensor, targets: &Tensor, train: bool) -> Tensor {
        let logits = self.logits(tokens, train);
        logits.flatten(0, 1).cross_entropy_for_logits(&targets.flatten(0, 1))
    }
}

/// Number of scalar parameters in a var store.
pub fn parameter_count(vs: &nn::VarStore) -> usize {
    vs.trainable_variables().iter().map(|t| t.numel()).sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    fn model(arch: &str, ssm_layers: Vec<usize>) -> (nn::VarStore, LanguageModel) {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = ModelConfig { arch: arch.parse().unwrap(), n_layers: 2, d_model: 32, n_heads: 2, ssm_layers, context_states: 4, ..ModelConfig::default() };
        let attn = AttnConfig { window: 8, ..AttnConfig::default() };
        let lm = LanguageModel::new(&vs.root(), &cfg, &attn, &SsmConfig::default(), 256, 32).unwrap();
        (vs, lm)
    }

    /// End-to-end causality: changing token t changes no logit before t, for every architecture.
    /// The tolerance is relative to the logits: the SSM's FFT convolution spans the whole
    /// sequence, so changing any input changes the f32 rounding at every output (measured: about
    /// 1e-5 with logits of 5, against changes of 3-6 at t itself); a real leak is of order 1.
    #[test]
    fn every_architecture_is_causal_end_to_end() {
        for (arch, layers) in [("SLIDE", vec![]), ("BST:SH:S4D", vec![1]), ("BST:SH:S4D", vec![0, 1]), ("BST:SH:S4", vec![0]), ("BST:SH:UNSTRUCT", vec![1]), ("BST:MH:S4D", vec![1]), ("BST:MF:S4", vec![0, 1])] {
            let (_vs, lm) = model(arch, layers.clone());
            let tokens = Tensor::randint(256, [2, 32], (Kind::Int64, Device::Cpu));
            let logits = lm.logits(&tokens, false);
            assert_eq!(logits.size(), vec![2, 32, 256]);
            let tolerance = 1e-5 * logits.abs().max().double_value(&[]).max(1.0);
            for t in [1, 7, 8, 20, 31] {
                let changed = tokens.copy();
                let mut column = changed.narrow(1, t, 1);
                column.copy_(&(&column + 1).remainder(256));
                let new = lm.logits(&changed, false);
                let before = (logits.narrow(1, 0, t) - new.narrow(1, 0, t)).abs().max().double_value(&[]);
                assert!(before < tolerance, "{arch} {layers:?}: token {t} changed earlier logits by {before} (tolerance {tolerance})");
                let at = (logits.narrow(1, t, 1) - new.narrow(1, t, 1)).abs().max().double_value(&[]);
                assert!(at > 1e3 * tolerance, "{arch} {layers:?}: token {t} barely changed its own logits ({at})");
            }
        }
    }

    #[test]
    fn bst_layers_sit_where_configured() {
        let (vs_slide, _) = model("SLIDE", vec![]);
        let (vs_bst, _) = model("BST:SH:S4D", vec![1]);
        let names = vs_bst.variables();
        assert!(names.keys().any(|k| k.starts_with("layers.1.mixer.ssm.conv.s4d.")));
        assert!(!names.keys().any(|k| k.starts_with("layers.0.mixer.ssm")));
        assert!(parameter_count(&vs_bst) > parameter_count(&vs_slide));
    }
}
