//! The decoder language model: embedding -> layers -> norm -> head, every layer pre-norm:
//! `x = x + mixer(norm1(x)); x = x + mlp(norm2(x))` (nanoGPT's Block; GSS blocks have no MLP).
//!
//! Which mixer each layer has is the run's [`LayerPlan`], computed and checked once by
//! `RunConfig::validate`. Every mixer has the one signature of [`bst_attn::Mixer`] and owns its
//! state; [`LmState`] carries the states of all layers from one window to the next (BRECT,
//! Transformer-XL) and is empty for the others.

use bst_attn::{LayerConfig, Mixer, MixerState};
use bst_core::params::{embedding, layer_norm, linear};
use tch::{nn, nn::Module, nn::ModuleT, Kind, Tensor};

use crate::config::{LayerKind, LayerPlan};
use crate::speed::build_mixer;
use crate::{Autocast, ModelConfig, ModelError, Precision};

/// The state every layer carries between calls; fresh at the start of a text.
#[derive(Debug, Default)]
pub struct LmState {
    layers: Vec<MixerState>,
}

impl LmState {
    /// Cuts the gradient history, to carry the state into the next window.
    pub fn detach(&mut self) {
        self.layers.iter_mut().for_each(MixerState::detach);
    }

    /// Marks `rows` (`[batch]` bool) as starting a new text in every layer.
    pub fn reset_rows(&mut self, rows: &Tensor) {
        self.layers.iter_mut().for_each(|s| s.reset_rows(rows));
    }

    /// The carried tensors, named `layers.<i>.<name>`, contiguous (for checkpoints).
    pub fn tensors(&self) -> Vec<(String, Tensor)> {
        self.layers.iter().enumerate().flat_map(|(i, s)| s.tensors().into_iter().map(move |(n, t)| (format!("layers.{i}.{n}"), t.contiguous()))).collect()
    }

    /// Rebuilds the state of `n_layers` layers from [`Self::tensors`]' output.
    pub fn from_tensors(n_layers: usize, tensors: &[(String, Tensor)]) -> Result<Self, String> {
        let layers = (0..n_layers)
            .map(|i| {
                let prefix = format!("layers.{i}.");
                let mine: Vec<(String, Tensor)> = tensors.iter().filter_map(|(n, t)| n.strip_prefix(&prefix).map(|rest| (rest.to_owned(), t.shallow_clone()))).collect();
                MixerState::from_tensors(&mine)
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { layers })
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
        Self { fc: linear(&(vs / "fc"), d_model, hidden), proj: linear(&(vs / "proj"), hidden, d_model), dropout }
    }
}

impl ModuleT for Mlp {
    fn forward_t(&self, xs: &Tensor, train: bool) -> Tensor {
        self.proj.forward(&self.fc.forward(xs).gelu("none")).dropout(self.dropout, train)
    }
}

/// One residual layer.
#[derive(Debug)]
struct Layer {
    norm1: nn::LayerNorm,
    mixer: Box<dyn Mixer>,
    /// None for GSS blocks, whose gated branch replaces the MLP.
    mlp: Option<(nn::LayerNorm, Mlp)>,
}

impl Layer {
    fn new(vs: &nn::Path, kind: LayerKind, cfg: &LayerConfig, mlp_ratio: usize) -> Self {
        let d = cfg.dims.d_model as i64;
        let mixer = build_mixer(&(vs / "mixer"), kind, cfg);
        let mlp = (kind != LayerKind::Gss).then(|| (layer_norm(&(vs / "norm2"), d), Mlp::new(&(vs / "mlp"), d, d * mlp_ratio as i64, cfg.dims.dropout)));
        Self { norm1: layer_norm(&(vs / "norm1"), d), mixer, mlp }
    }

    /// # Shapes
    /// - `xs`: `[batch, seq, d_model]` -> `[batch, seq, d_model]`
    fn forward(&self, xs: &Tensor, state: &mut MixerState, train: bool) -> Tensor {
        let xs = xs + self.mixer.forward(&self.norm1.forward(xs), state, train);
        match &self.mlp {
            Some((norm2, mlp)) => &xs + mlp.forward_t(&norm2.forward(&xs), train),
            None => xs,
        }
    }
}

/// A decoder LM over the layers of a plan.
#[derive(Debug)]
pub struct LanguageModel {
    embed: nn::Embedding,
    layers: Vec<Layer>,
    norm: nn::LayerNorm,
    head: nn::Linear,
    plan: LayerPlan,
    dropout: f64,
    /// Window length used by [`Self::score`] (the training length).
    max_len: i64,
    /// Inputs must be a whole number of these (the window, the XL segment, or 1).
    block: i64,
}

impl LanguageModel {
    /// Builds the layers of `plan`; variable names follow the module tree
    /// (`layers.3.mixer.ssm.conv.s4d.log_dt`). Use `RunConfig::build_model`, which validates.
    pub fn new(vs: &nn::Path, plan: LayerPlan, cfg: &LayerConfig, model: &ModelConfig, vocab_size: usize) -> Self {
        let d = cfg.dims.d_model as i64;
        let layers = plan.0.iter().enumerate().map(|(i, &kind)| Layer::new(&(vs / "layers" / i), kind, cfg, model.mlp_ratio)).collect();
        let window = if plan.is_blocked() { cfg.attn.window } else { 1 };
        let segment = if plan.0.contains(&LayerKind::Xl) { cfg.segment_len } else { 1 };
        Self {
            embed: embedding(&(vs / "embed"), vocab_size as i64, d),
            layers,
            norm: layer_norm(&(vs / "norm"), d),
            head: linear(&(vs / "head"), d, vocab_size as i64),
            plan,
            dropout: cfg.dims.dropout,
            max_len: cfg.max_len as i64,
            block: lcm(window, segment) as i64,
        }
    }

    /// Which mixer each layer has.
    pub fn plan(&self) -> &LayerPlan {
        &self.plan
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
        state.layers.resize_with(self.layers.len(), MixerState::default);
        let mut xs = self.embed.forward(tokens).dropout(self.dropout, train); // [b, seq, d]
        for (layer, s) in self.layers.iter().zip(state.layers.iter_mut()) {
            xs = layer.forward(&xs, s, train);
        }
        self.norm.forward(&xs)
    }

    /// Mean next-token cross-entropy in nats (f32) over the targets that are not
    /// `bst_data::IGNORE` (padding), starting from `state` and leaving the state after `tokens`
    /// in it.
    ///
    /// Logits are cast to f32 before the softmax: under bf16 autocast they arrive in bf16, whose
    /// 8-bit significand would round the log-probabilities of a 32k vocabulary badly (and CPU
    /// autocast would run log_softmax in bf16).
    ///
    /// # Shapes
    /// - `tokens`, `targets`: `[batch, seq]` -> scalar
    pub fn loss_with_state(&self, tokens: &Tensor, targets: &Tensor, state: &mut LmState, train: bool) -> Tensor {
        let logits = self.logits_with_state(tokens, state, train).flatten(0, 1).to_kind(Kind::Float); // [batch * seq, vocab]
        logits.cross_entropy_loss::<Tensor>(&targets.flatten(0, 1), None, tch::Reduction::Mean, bst_data::IGNORE, 0.0)
    }

    /// [`Self::loss_with_state`] from a fresh state.
    pub fn loss(&self, tokens: &Tensor, targets: &Tensor, train: bool) -> Tensor {
        self.loss_with_state(tokens, targets, &mut LmState::default(), train)
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

fn lcm(a: usize, b: usize) -> usize {
    fn gcd(a: usize, b: usize) -> usize {
        if b == 0 { a } else { gcd(b, a % b) }
    }
    a / gcd(a, b) * b
}

/// Number of scalar parameters in a var store.
pub fn parameter_count(vs: &nn::VarStore) -> usize {
    vs.trainable_variables().iter().map(|t| t.numel()).sum()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::RunConfig;
    use bst_ssm::SsmConfig;
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

    /// A two-layer model of `arch`: d 32, W 8, training length 32, XL segments of 16 with memory 32.
    pub(crate) fn tiny_run(arch: &str, ssm_layers: &[usize], ssm: &SsmConfig) -> RunConfig {
        let mut run = RunConfig::default();
        run.model = ModelConfig { arch: arch.parse().unwrap(), n_layers: 2, d_model: 32, n_heads: 2, ssm_layers: ssm_layers.to_vec(), context_states: 4, recurrent_layer: -1, segment_len: 16, memory_len: 32, ..ModelConfig::default() };
        run.attn.window = 8;
        run.ssm = ssm.clone();
        run.train.seq_len = 32;
        run
    }

    fn model_with(arch: &str, ssm_layers: &[usize], ssm: &SsmConfig) -> (nn::VarStore, LanguageModel) {
        let vs = nn::VarStore::new(Device::Cpu);
        let lm = tiny_run(arch, ssm_layers, ssm).build_model(&vs.root(), 256).unwrap();
        (vs, lm)
    }

    fn model(arch: &str, ssm_layers: &[usize]) -> (nn::VarStore, LanguageModel) {
        model_with(arch, ssm_layers, &SsmConfig::default())
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
                // the window excludes the query itself, so at initialisation token t reaches its own
                // logits through the residual stream only (embeddings ~0.02): smaller, but far above rounding
                assert!(at > 1e2 * tolerance, "{arch} {layers:?}: token {t} barely changed its own logits ({at})");
            }
        }
    }

    #[test]
    fn layers_sit_where_the_plan_says() {
        let (vs_slide, slide) = model("SLIDE", &[]);
        let (vs_bst, bst) = model("BST:SH:S4D", &[1]);
        assert_eq!(bst.plan().to_string(), "1 SLIDE | 2 BST:SH:S4D");
        assert_eq!(slide.plan().to_string(), "1 SLIDE | 2 SLIDE");
        let names = vs_bst.variables();
        assert!(names.keys().any(|k| k.starts_with("layers.1.mixer.ssm.conv.s4d.")));
        assert!(!names.keys().any(|k| k.starts_with("layers.0.mixer.ssm")));
        assert!(parameter_count(&vs_bst) > parameter_count(&vs_slide));
        let (vs_brect, brect) = model("BRECT:FIXED:SKIP", &[]);
        assert_eq!(brect.plan().placement(), "2 BRECT", "recurrent_layer = -1 is the last layer");
        assert!(vs_brect.variables().keys().any(|k| k.starts_with("layers.1.mixer.state_ids")));
        let (vs_gss, _) = model("GSS-HYBRID", &[0]);
        assert!(!vs_gss.variables().keys().any(|k| k.starts_with("layers.0.mlp")), "a GSS block has no MLP");
    }

    /// Log-probabilities of `text[1..]` from one forward pass over `text[..n-1]`.
    fn one_pass(lm: &LanguageModel, text: &[i64]) -> Vec<f64> {
        let t = Tensor::from_slice(text);
        let n = text.len() as i64 - 1;
        let logp = tch::no_grad(|| lm.logits(&t.narrow(0, 0, n).unsqueeze(0), false)).squeeze_dim(0).log_softmax(-1, Kind::Float);
        Vec::try_from(logp.gather(1, &t.narrow(0, 1, n).unsqueeze(1), false).squeeze_dim(1).to_kind(Kind::Double)).unwrap()
    }

    fn max_gap(a: &[f64], b: &[f64]) -> f64 {
        assert_eq!(a.len(), b.len());
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max)
    }

    /// What `score` must equal: one forward pass when the text fits in one window (every
    /// model); for models whose every layer carries what the next window needs (SLIDE's last
    /// block, BRECT's state, XL's memory) one pass over the whole text, since carrying the state
    /// across windows is exactly what one longer pass does; for the stateless TRANSFORMER the
    /// windows scored independently. (BST and GSS layers restart their SSM at each window, so
    /// they equal neither: the paper's BST has no state across segments.)
    #[test]
    fn score_equals_the_passes_it_stands_for() {
        let text: Vec<i64> = (0..65).map(|i| (i * 37 % 256) as i64).collect();
        for (arch, layers) in ARCHS {
            let (_vs, lm) = model(arch, layers);
            let scores = lm.score(&text, Device::Cpu);
            assert_eq!(scores.len(), 64, "{arch}");
            let gap = max_gap(&scores[..32], &one_pass(&lm, &text[..33]));
            assert!(gap < 1e-4, "{arch}: the first window differs from one pass by {gap}");
            let second_window = match arch {
                "SLIDE" | "BRECT:FIXED:SKIP" | "TRSF-XL" => one_pass(&lm, &text)[32..].to_vec(),
                "TRANSFORMER" => one_pass(&lm, &text[32..]),
                _ => continue,
            };
            let gap = max_gap(&scores[32..], &second_window);
            assert!(gap < 1e-4, "{arch}: the second window differs from its reference by {gap}");
        }
    }

    /// Carried state is used: the second window's scores depend on the first.
    #[test]
    fn stateful_models_carry_information_across_windows() {
        for arch in ["BRECT:FIXED:SKIP", "TRSF-XL", "SLIDE"] {
            let (_vs, lm) = model(arch, &[]);
            let text: Vec<i64> = (0..64).map(|i| (i * 11 % 256) as i64).collect();
            let mut changed = text.clone();
            changed[28] = (changed[28] + 3) % 256; // in the last block of the first window of 32
            let (a, b) = (lm.score(&text, Device::Cpu), lm.score(&changed, Device::Cpu));
            let second_window = a[33..].iter().zip(&b[33..]).map(|(x, y)| (x - y).abs()).fold(0.0, f64::max);
            assert!(second_window > 1e-6, "{arch}: the first window should influence the second through the state");
        }
    }

    /// Padding targets (`bst_data::IGNORE`) do not count in the loss.
    #[test]
    fn loss_skips_padding_targets() {
        let (_vs, lm) = model("SLIDE", &[]);
        let tokens = Tensor::randint(256, [1, 16], (Kind::Int64, Device::Cpu));
        let targets = Tensor::randint(256, [1, 16], (Kind::Int64, Device::Cpu));
        let padded = targets.copy();
        let _ = padded.narrow(1, 10, 6).fill_(bst_data::IGNORE);
        let logits = lm.logits(&tokens, false).squeeze_dim(0);
        let expected = logits.narrow(0, 0, 10).cross_entropy_for_logits(&targets.squeeze_dim(0).narrow(0, 0, 10)).double_value(&[]);
        let got = lm.loss(&tokens, &padded, false).double_value(&[]);
        assert!((got - expected).abs() < 1e-5, "{got} vs {expected}");
    }
}
