//! The decoder language model: embedding -> layers -> norm -> head, every layer pre-norm:
//! `x = x + mixer(norm1(x)); x = x + mlp(norm2(x))` (nanoGPT's Block; GSS blocks have no MLP).
//!
//! The mixer of a layer is chosen by the architecture: SLIDE block attention, a BST layer, the
//! BRECT recurrent cell, Transformer-XL attention, full causal attention, or a GSS layer. BRECT
//! and Transformer-XL carry state across windows: [`LmState`] holds it, explicitly.

use bst_attn::{AttnConfig, BlockScope, BlockSelfAttention, BrectCell, BrectState, BstAttention, BstSpec, HeadDims, XlAttention};
use bst_ssm::{GssLayer, SsmConfig, SsmKind};
use tch::{nn, nn::Module, nn::ModuleT, Kind, Tensor};

use crate::{Architecture, Autocast, ModelConfig, ModelError, Precision};

/// The sequence-mixing sublayer of one residual layer.
#[derive(Debug)]
enum Mixer {
    Slide(BlockSelfAttention),
    Bst(Box<BstAttention>),
    Brect(Box<BrectCell>),
    /// Transformer-XL: segments of `segment` tokens with a memory (TRANSFORMER: one segment, no memory).
    Xl { attn: XlAttention, segment: Option<i64> },
    Gss(GssLayer),
}

/// What one layer carries from one window to the next.
#[derive(Debug)]
enum LayerState {
    Brect(BrectState),
    Xl(Tensor),
}

/// The state of every stateful layer; empty (fresh) at the start of a text.
#[derive(Debug, Default)]
pub struct LmState {
    layers: Vec<Option<LayerState>>,
}

impl LmState {
    /// A copy without gradient history, to carry into the next window.
    pub fn detach(&mut self) {
        for s in self.layers.iter_mut().flatten() {
            match s {
                LayerState::Brect(b) => *b = b.detached(),
                LayerState::Xl(m) => *m = m.detach(),
            }
        }
    }
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
    /// None for GSS blocks, whose gated branch replaces the MLP.
    mlp: Option<(nn::LayerNorm, Mlp)>,
}

impl Layer {
    fn forward(&self, xs: &Tensor, state: &mut Option<LayerState>, train: bool) -> Tensor {
        let h = self.norm1.forward(xs);
        let h = match &self.mixer {
            Mixer::Slide(attn) => attn.forward_t(&h, train),
            Mixer::Bst(bst) => bst.forward_t(&h, train),
            Mixer::Gss(gss) => gss.forward_t(&h, train),
            Mixer::Brect(cell) => {
                let mut carry = match state.take() {
                    Some(LayerState::Brect(b)) => b,
                    _ => cell.initial_state(h.size()[0]),
                };
                let y = cell.forward_t(&h, &mut carry, train);
                *state = Some(LayerState::Brect(carry));
                y
            }
            Mixer::Xl { attn, segment } => {
                let mut memory = match state.take() {
                    Some(LayerState::Xl(m)) => Some(m),
                    _ => None,
                };
                let seq = h.size()[1];
                let len = segment.unwrap_or(seq).min(seq);
                let mut outputs = Vec::new();
                for start in (0..seq).step_by(len as usize) {
                    let (y, m) = attn.forward_t(&h.narrow(1, start, len.min(seq - start)), memory.as_ref(), train);
                    outputs.push(y);
                    memory = Some(m);
                }
                if segment.is_some() {
                    *state = memory.map(LayerState::Xl);
                }
                Tensor::cat(&outputs, 1)
            }
        };
        let xs = xs + h;
        match &self.mlp {
            Some((norm2, mlp)) => &xs + mlp.forward_t(&norm2.forward(&xs), train),
            None => xs,
        }
    }
}

/// A decoder LM over the layers of one architecture.
#[derive(Debug)]
pub struct LanguageModel {
    embed: nn::Embedding,
    layers: Vec<Layer>,
    norm: nn::LayerNorm,
    head: nn::Linear,
    dropout: f64,
    /// Window length used by [`Self::score`] (the training length).
    max_len: i64,
    /// Inputs must be a whole number of these (the attention block W; 1 for TRANSFORMER).
    block: i64,
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
                let mp = &p / "mixer";
                let slide = || BlockSelfAttention::new(&mp, dims, attn, BlockScope::OwnAndPrevious).map(Mixer::Slide);
                let is_ssm_layer = model.ssm_layers.contains(&i);
                let mixer = match model.arch {
                    Architecture::Bst { context, ssm: ssm_kind } if is_ssm_layer => {
                        let spec = BstSpec { variant: context, ssm_kind, context_states: model.context_states, max_len };
                        Mixer::Bst(Box::new(BstAttention::new(&mp, dims, attn, ssm, spec)?))
                    }
                    Architecture::Brect if model.recurrent_index() == Some(i) => Mixer::Brect(Box::new(BrectCell::new(&mp, dims, attn, model.context_states)?)),
                    Architecture::GssHybrid if is_ssm_layer => Mixer::Gss(GssLayer::new(&mp, model.d_model, SsmKind::S4d, ssm, max_len)?),
                    Architecture::TransformerXl => Mixer::Xl { attn: XlAttention::new(&mp, dims, attn, model.memory_len)?, segment: Some(attn.window as i64) },
                    Architecture::Transformer => Mixer::Xl { attn: XlAttention::new(&mp, dims, attn, 0)?, segment: None },
                    _ => slide()?,
                };
                let mlp = (!matches!(mixer, Mixer::Gss(_))).then(|| {
                    (nn::layer_norm(&p / "norm2", vec![d], Default::default()), Mlp::new(&(&p / "mlp"), d, d * model.mlp_ratio as i64, model.dropout))
                });
                Ok(Layer { norm1: nn::layer_norm(&p / "norm1", vec![d], Default::default()), mixer, mlp })
            })
            .collect::<Result<Vec<_>, ModelError>>()?;
        let embed_cfg = nn::EmbeddingConfig { ws_init: nn::Init::Randn { mean: 0.0, stdev: 0.02 }, ..Default::default() };
        Ok(Self {
            embed: nn::embedding(vs / "embed", vocab_size as i64, d, embed_cfg),
            layers,
            norm: nn::layer_norm(vs / "norm", vec![d], Default::default()),
            head: nn::linear(vs / "head", d, vocab_size as i64, Default::default()),
            dropout: model.dropout,
            max_len: max_len as i64,
            block: if model.arch == Architecture::Transformer { 1 } else { attn.window as i64 },
        })
    }

    /// Next-token logits from a fresh state.
    ///
    /// # Shapes
    /// - `tokens`: `[batch, seq]` int64 -> `[batch, seq, vocab]`
    pub fn logits(&self, tokens: &Tensor, train: bool) -> Tensor {
        self.logits_with_state(tokens, &mut LmState::default(), train)
    }

    /// Next-token logits, starting from `state` and leaving the state after `tokens` in it.
    ///
    /// # Shapes
    /// - `tokens`: `[batch, seq]` int64 -> `[batch, seq, vocab]`
    pub fn logits_with_state(&self, tokens: &Tensor, state: &mut LmState, train: bool) -> Tensor {
        self.head.forward(&self.hidden_with_state(tokens, state, train))
    }

    /// Final (normalised) hidden states from a fresh state: what the next-token head reads, and
    /// what a classifier pools.
    ///
    /// # Shapes
    /// - `tokens`: `[batch, seq]` int64 -> `[batch, seq, d_model]`
    pub fn hidden(&self, tokens: &Tensor, train: bool) -> Tensor {
        self.hidden_with_state(tokens, &mut LmState::default(), train)
    }

    fn hidden_with_state(&self, tokens: &Tensor, state: &mut LmState, train: bool) -> Tensor {
        state.layers.resize_with(self.layers.len(), || None);
        let mut xs = self.embed.forward(tokens).dropout(self.dropout, train); // [b, seq, d]
        for (layer, s) in self.layers.iter().zip(state.layers.iter_mut()) {
            xs = layer.forward(&xs, s, train);
        }
        self.norm.forward(&xs)
    }

    /// Mean next-token cross-entropy in nats (f32), from a fresh state.
    ///
    /// Logits are cast to f32 before the softmax: under bf16 autocast they arrive in bf16, whose
    /// 8-bit significand would round the log-probabilities of a 32k vocabulary badly (and CPU
    /// autocast would run log_softmax in bf16).
    ///
    /// # Shapes
    /// - `tokens`, `targets`: `[batch, seq]` -> scalar
    pub fn loss(&self, tokens: &Tensor, targets: &Tensor, train: bool) -> Tensor {
        let logits = self.logits(tokens, train).flatten(0, 1).to_kind(Kind::Float); // [batch * seq, vocab]
        logits.cross_entropy_for_logits(&targets.flatten(0, 1))
    }

    /// `log p(token_i | tokens_<i)` in nats for i = 1.. (the first token has no prediction),
    /// reading the text in windows of the training length and carrying state between them. A
    /// short last window is padded to whole blocks; being causal, the padding changes nothing
    /// before it, and its outputs are dropped.
    pub fn score(&self, tokens: &[i64], device: tch::Device) -> Vec<f64> {
        self.score_with_precision(tokens, device, Precision::F32).expect("f32 needs no autocast support")
    }

    /// [`Self::score`] with the forward passes at `precision` (the run's `train.precision`);
    /// log-probabilities are computed in f32 either way. Errors only for bf16 on a device
    /// without autocast.
    pub fn score_with_precision(&self, tokens: &[i64], device: tch::Device, precision: Precision) -> Result<Vec<f64>, ModelError> {
        let _guard = tch::no_grad_guard();
        let _autocast = Autocast::enter(device, precision)?;
        let mut state = LmState::default();
        let mut out = Vec::with_capacity(tokens.len().saturating_sub(1));
        let all = Tensor::from_slice(tokens).to_device(device);
        let n = tokens.len() as i64 - 1;
        let mut start = 0;
        while start < n {
            let len = self.max_len.min(n - start);
            let padded = (len + self.block - 1) / self.block * self.block;
            let inputs = all.narrow(0, start, len).constant_pad_nd([0, padded - len]).unsqueeze(0);
            let targets = all.narrow(0, start + 1, len);
            let logits = self.logits_with_state(&inputs, &mut state, false).squeeze_dim(0).narrow(0, 0, len);
            let logp = logits.to_kind(Kind::Float).log_softmax(-1, Kind::Float);
            let picked = logp.gather(1, &targets.unsqueeze(1), false).squeeze_dim(1);
            out.extend(Vec::<f64>::try_from(picked.to_kind(Kind::Double).to_device(tch::Device::Cpu)).expect("f64 scores"));
            state.detach();
            start += len;
        }
        Ok(out)
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

    /// Every architecture, with SSM layers where it has them.
    const ARCHS: [(&str, &[usize]); 11] = [
        ("SLIDE", &[]),
        ("BST:SH:S4D", &[1]),
        ("BST:SH:S4D", &[0, 1]),
        ("BST:SH:S4", &[0]),
        ("BST:SH:UNSTRUCT", &[1]),
        ("BST:MH:S4D", &[1]),
        ("BST:MF:S4", &[0, 1]),
        ("BRECT:FIXED:SKIP", &[]),
        ("TRSF-XL", &[]),
        ("GSS-HYBRID", &[0]),
        ("TRANSFORMER", &[]),
    ];

    fn model(arch: &str, ssm_layers: &[usize]) -> (nn::VarStore, LanguageModel) {
        model_with(arch, ssm_layers, &SsmConfig::default())
    }

    fn model_with(arch: &str, ssm_layers: &[usize], ssm: &SsmConfig) -> (nn::VarStore, LanguageModel) {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let cfg = ModelConfig { arch: arch.parse().unwrap(), n_layers: 2, d_model: 32, n_heads: 2, ssm_layers: ssm_layers.to_vec(), context_states: 4, recurrent_layer: -1, memory_len: 32, ..ModelConfig::default() };
        let attn = AttnConfig { window: 8, ..AttnConfig::default() };
        let lm = LanguageModel::new(&vs.root(), &cfg, &attn, ssm, 256, 32).unwrap();
        (vs, lm)
    }

    /// End-to-end causality: changing token t changes no logit before t, for every architecture.
    /// The tolerance is relative to the logits: the SSM's FFT convolution spans the whole
    /// sequence, so changing any input changes the f32 rounding at every output (measured: about
    /// 1e-5 with logits of 5, against changes of 3-6 at t itself); a real leak is of order 1.
    #[test]
    fn every_architecture_is_causal_end_to_end() {
        let implicit = SsmConfig { unstructured_filter: bst_ssm::UnstructuredFilter::Implicit, ..SsmConfig::default() };
        let models = ARCHS.iter().map(|&(arch, layers)| (arch, layers, SsmConfig::default())).chain([("BST:MF:UNSTRUCT", &[1][..], implicit)]);
        for (arch, layers, ssm) in models {
            let (_vs, lm) = model_with(arch, layers, &ssm);
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
        let (vs_slide, _) = model("SLIDE", &[]);
        let (vs_bst, _) = model("BST:SH:S4D", &[1]);
        let names = vs_bst.variables();
        assert!(names.keys().any(|k| k.starts_with("layers.1.mixer.ssm.conv.s4d.")));
        assert!(!names.keys().any(|k| k.starts_with("layers.0.mixer.ssm")));
        assert!(parameter_count(&vs_bst) > parameter_count(&vs_slide));
        let (vs_brect, _) = model("BRECT:FIXED:SKIP", &[]);
        assert!(vs_brect.variables().keys().any(|k| k.starts_with("layers.1.mixer.state_ids")), "recurrent_layer = -1 is the last layer");
    }

    /// Scoring a text window by window with carried state equals scoring it in one pass for the
    /// stateless models, and is causal for all.
    #[test]
    fn score_gives_one_log_probability_per_predicted_token() {
        for (arch, layers) in ARCHS {
            let (_vs, lm) = model(arch, layers);
            let text: Vec<i64> = (0..70).map(|i| (i * 37 % 256) as i64).collect();
            let scores = lm.score(&text, Device::Cpu);
            assert_eq!(scores.len(), 69, "{arch}");
            assert!(scores.iter().all(|s| s.is_finite() && *s <= 0.0), "{arch}: {scores:?}");
            let mut changed = text.clone();
            changed[50] = (changed[50] + 1) % 256;
            let rescored = lm.score(&changed, Device::Cpu);
            let before = scores[..49].iter().zip(&rescored[..49]).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
            assert!(before < 1e-4, "{arch}: token 50 changed the scores of earlier tokens by {before}");
        }
    }

    /// Carried state is used: for BRECT and XL the second window's scores depend on the first.
    #[test]
    fn stateful_models_carry_information_across_windows() {
        for arch in ["BRECT:FIXED:SKIP", "TRSF-XL"] {
            let (_vs, lm) = model(arch, &[]);
            let text: Vec<i64> = (0..64).map(|i| (i * 11 % 256) as i64).collect();
            let mut changed = text.clone();
            changed[5] = (changed[5] + 3) % 256; // in the first window of 32
            let (a, b) = (lm.score(&text, Device::Cpu), lm.score(&changed, Device::Cpu));
            let second_window = a[33..].iter().zip(&b[33..]).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
            assert!(second_window > 1e-6, "{arch}: the first window should influence the second through the state");
        }
    }
}
