//! Model architecture and sizes: the `[model]` table of a run.

use std::{fmt, str::FromStr};

use bst_attn::ContextVariant;
use bst_core::InvalidConfig;
use bst_ssm::SsmKind;
use serde::{Deserialize, Serialize};

/// A model family, named as in the paper's tables; the name is what users write in TOML
/// (`model.arch = "BST:SH:S4D"`) and what tables and plots print.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Architecture {
    /// Block-State Transformer: SLIDE layers, with BST layers at `model.ssm_layers`.
    Bst { context: ContextVariant, ssm: SsmKind },
    /// Sliding-window Block Transformer: every layer attends to its block and the previous one.
    Slide,
    /// Block-Recurrent Transformer: SLIDE layers plus one BRECT:FIXED:SKIP recurrent layer at
    /// `model.recurrent_layer`, blocks processed in sequence.
    Brect,
    /// Transformer-XL: segments of `model.segment_len` tokens, each attending to itself and to a
    /// stop-gradient memory of `model.memory_len` previous positions.
    TransformerXl,
    /// GSS-HYBRID (Mehta et al.): Gated State Space layers at `model.ssm_layers`, SLIDE block
    /// attention in the others.
    GssHybrid,
    /// Plain decoder Transformer: full causal attention over the whole input.
    Transformer,
    /// An S4D model alone (the LRA tables' "S4D" row): every layer an SSM sublayer (d -> d/4, S4D
    /// convolution over the whole input, GELU, d/4 -> d) and an MLP, no attention.
    S4d,
}

impl Architecture {
    /// Every architecture this build can train, by name.
    pub const ALL: [Architecture; 15] = [
        Architecture::Bst { context: ContextVariant::Sh, ssm: SsmKind::S4d },
        Architecture::Bst { context: ContextVariant::Mh, ssm: SsmKind::S4d },
        Architecture::Bst { context: ContextVariant::Mf, ssm: SsmKind::S4d },
        Architecture::Bst { context: ContextVariant::Sh, ssm: SsmKind::S4 },
        Architecture::Bst { context: ContextVariant::Mh, ssm: SsmKind::S4 },
        Architecture::Bst { context: ContextVariant::Mf, ssm: SsmKind::S4 },
        Architecture::Bst { context: ContextVariant::Sh, ssm: SsmKind::Unstructured },
        Architecture::Bst { context: ContextVariant::Mh, ssm: SsmKind::Unstructured },
        Architecture::Bst { context: ContextVariant::Mf, ssm: SsmKind::Unstructured },
        Architecture::Slide,
        Architecture::Brect,
        Architecture::TransformerXl,
        Architecture::GssHybrid,
        Architecture::Transformer,
        Architecture::S4d,
    ];

    fn allowed() -> String {
        Self::ALL.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", ")
    }

    /// Whether `model.ssm_layers` names this architecture's SSM layers (BST, GSS-HYBRID).
    pub fn has_ssm_layers(self) -> bool {
        matches!(self, Architecture::Bst { .. } | Architecture::GssHybrid)
    }

    /// Whether the architecture has SSM layers at all (reads the `[ssm]` table).
    pub fn uses_ssm(self) -> bool {
        self.has_ssm_layers() || self == Architecture::S4d
    }
}

impl fmt::Display for Architecture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Architecture::Bst { context, ssm } => {
                let ssm = match ssm {
                    SsmKind::S4d => "S4D",
                    SsmKind::S4 => "S4",
                    SsmKind::Unstructured => "UNSTRUCT",
                };
                write!(f, "BST:{context}:{ssm}")
            }
            Architecture::Slide => f.write_str("SLIDE"),
            Architecture::Brect => f.write_str("BRECT:FIXED:SKIP"),
            Architecture::TransformerXl => f.write_str("TRSF-XL"),
            Architecture::GssHybrid => f.write_str("GSS-HYBRID"),
            Architecture::Transformer => f.write_str("TRANSFORMER"),
            Architecture::S4d => f.write_str("S4D"),
        }
    }
}

impl FromStr for Architecture {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|a| a.to_string().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown architecture `{s}`, expected one of: {}", Self::allowed()))
    }
}

impl TryFrom<String> for Architecture {
    type Error = String;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Architecture> for String {
    fn from(a: Architecture) -> String {
        a.to_string()
    }
}

/// Sizes and layout of the LM. Defaults are the paper's ~200M backbone (meliad `medium_150M`:
/// 12 layers, d_model 1024, 8 heads, MLP 4096, dropout 0.05); CPU experiments set small sizes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelConfig {
    /// Architecture, by its paper name.
    pub arch: Architecture,
    /// Number of residual layers.
    pub n_layers: usize,
    /// Embedding width.
    pub d_model: usize,
    /// Attention heads (d_model / n_heads must be even).
    pub n_heads: usize,
    /// MLP hidden width as a multiple of d_model.
    pub mlp_ratio: usize,
    /// Dropout on embeddings, attention and residual branches during training.
    pub dropout: f64,
    /// Indices of the SSM layers (BST layers for BST, GSS layers for GSS-HYBRID; empty
    /// otherwise), **0-based**: 0 is the first layer. The paper counts layers from 1 ("a BST
    /// layer at 3, 6, 9 or 12" of 12), so its layer k is index k - 1 here; every report and
    /// `--dry-run` prints the placement both ways.
    pub ssm_layers: Vec<usize>,
    /// Context states S: the SSM filters of BST:MF, the recurrent states of BRECT (paper: 512);
    /// SH and MH use S = W.
    pub context_states: usize,
    /// Index of BRECT's recurrent layer, 0-based; negative counts from the end (meliad: -3,
    /// layer 10 of 12 in the paper's 1-based count).
    pub recurrent_layer: i64,
    /// Transformer-XL: tokens per segment (the paper's TRSF-XL:2048 has segment = window = 2048).
    /// `train.seq_len` must be a multiple of it; each segment attends to itself and the memory.
    pub segment_len: usize,
    /// Transformer-XL: memory length M, the earlier positions each segment sees without gradient
    /// (paper: 2048).
    pub memory_len: usize,
}

impl ModelConfig {
    /// `recurrent_layer` as a layer index, if it names one.
    pub fn recurrent_index(&self) -> Option<usize> {
        let n = self.n_layers as i64;
        let i = if self.recurrent_layer < 0 { n + self.recurrent_layer } else { self.recurrent_layer };
        (0..n).contains(&i).then_some(i as usize)
    }

    /// The layer plan: which mixer each layer has, checked once against the architecture's rules.
    pub fn plan(&self) -> Result<LayerPlan, InvalidConfig> {
        let arch = self.arch;
        if self.n_layers == 0 {
            return Err(InvalidConfig::new("model.n_layers", self.n_layers, "must be >= 1"));
        }
        if arch.has_ssm_layers() && self.ssm_layers.is_empty() {
            return Err(InvalidConfig::new("model.ssm_layers", &self.ssm_layers, format!("{arch} needs at least one SSM layer index (0-based)")));
        }
        if !arch.has_ssm_layers() && !self.ssm_layers.is_empty() {
            return Err(InvalidConfig::new("model.ssm_layers", &self.ssm_layers, format!("{arch} has no SSM layers: leave it empty")));
        }
        if let Some(bad) = self.ssm_layers.iter().find(|&&i| i >= self.n_layers) {
            let reason = format!("index {bad} is not a layer: indices are 0-based, 0..={} for model.n_layers = {}", self.n_layers - 1, self.n_layers);
            return Err(InvalidConfig::new("model.ssm_layers", &self.ssm_layers, reason));
        }
        let needs_states = matches!(arch, Architecture::Brect | Architecture::Bst { context: ContextVariant::Mf, .. });
        if needs_states && self.context_states == 0 {
            return Err(InvalidConfig::new("model.context_states", self.context_states, format!("{arch} needs at least one context state")));
        }
        let recurrent = match arch {
            Architecture::Brect => Some(self.recurrent_index().ok_or_else(|| {
                InvalidConfig::new("model.recurrent_layer", self.recurrent_layer, format!("not a layer of model.n_layers = {} (0-based, negative from the end)", self.n_layers))
            })?),
            _ => None,
        };
        if arch == Architecture::TransformerXl && self.segment_len == 0 {
            return Err(InvalidConfig::new("model.segment_len", self.segment_len, "TRSF-XL needs segments of at least one token"));
        }
        let kinds = (0..self.n_layers)
            .map(|i| match arch {
                Architecture::Bst { context, ssm } if self.ssm_layers.contains(&i) => LayerKind::Bst { context, ssm },
                Architecture::GssHybrid if self.ssm_layers.contains(&i) => LayerKind::Gss,
                Architecture::Brect if recurrent == Some(i) => LayerKind::Brect,
                Architecture::TransformerXl => LayerKind::Xl,
                Architecture::Transformer => LayerKind::Attention,
                Architecture::S4d => LayerKind::Ssm,
                _ => LayerKind::Slide,
            })
            .collect();
        Ok(LayerPlan(kinds))
    }
}

/// The sequence mixer of one layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayerKind {
    /// SLIDE windowed self-attention.
    Slide,
    /// A BST layer: SLIDE self-attention plus cross-attention to SSM context states.
    Bst { context: ContextVariant, ssm: SsmKind },
    /// BRECT:FIXED:SKIP's recurrent cell.
    Brect,
    /// Transformer-XL attention with memory.
    Xl,
    /// Full causal self-attention (TRANSFORMER).
    Attention,
    /// A Gated State Space layer (no MLP after it).
    Gss,
    /// An S4D sublayer alone (no attention).
    Ssm,
}

impl fmt::Display for LayerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LayerKind::Slide => f.write_str("SLIDE"),
            LayerKind::Bst { context, ssm } => write!(f, "{}", Architecture::Bst { context: *context, ssm: *ssm }),
            LayerKind::Brect => f.write_str("BRECT"),
            LayerKind::Xl => f.write_str("XL"),
            LayerKind::Attention => f.write_str("ATTN"),
            LayerKind::Gss => f.write_str("GSS"),
            LayerKind::Ssm => f.write_str("S4D"),
        }
    }
}

/// The model's structure as data: one mixer per layer, in order (candle's `block_types`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerPlan(pub Vec<LayerKind>);

impl LayerPlan {
    /// Whether some layer always carries state from one window to the next (BRECT's recurrent
    /// state, Transformer-XL's memory). Windowed self-attention carries its last block too when
    /// `attn.cache_across_windows` is on: see `RunConfig::carries_state`.
    pub fn has_recurrent_layers(&self) -> bool {
        self.0.iter().any(|k| matches!(k, LayerKind::Brect | LayerKind::Xl))
    }

    /// Whether some layer works on blocks of `attn.window` tokens.
    pub fn is_blocked(&self) -> bool {
        self.0.iter().any(|k| matches!(k, LayerKind::Slide | LayerKind::Bst { .. } | LayerKind::Brect))
    }

    /// Floats a token-by-token decoder of this plan holds per sequence between tokens once the
    /// text is longer than every window: its state as a multi-state RNN (Oren et al. 2024), bounded
    /// by construction (x4 for f32 bytes). `None` when some layer's state grows with the text (full
    /// attention: there a KV-cache policy sets the bound) or is not counted (XL, GSS, SSM-only).
    ///
    /// Per layer, what a streaming implementation must keep:
    /// - SLIDE: keys and values of the window, 2 W d (meliad's W previous tokens; the `block`
    ///   window mask reaches 2W - 1 back).
    /// - BST: its SLIDE part; the SSM's recurrent state per bank (d / ssm.proj_factor channels; S4D
    ///   N/2 complex modes = N floats per channel, S4 N complex = 2N, UNSTRUCT no finite recurrence:
    ///   the last L inputs, since its filters have L taps and restart every window); the context
    ///   keys and values (SH, MH: the current block's up to W states, 2 W d; MF: the S states read
    ///   at the previous block's end, 2 S d). Banks: SH 1, MH one per head, MF S.
    /// - BRECT: its SLIDE part, the S recurrent states (S d) and the current block's W inputs,
    ///   which the state update at the block's end reads (W d).
    pub fn stream_state_floats(&self, cfg: &bst_attn::LayerConfig) -> Option<usize> {
        let (d, w, s) = (cfg.dims.d_model, cfg.attn.window, cfg.context_states);
        let reach = match cfg.attn.window_mask {
            bst_attn::WindowMask::Sliding => w,
            bst_attn::WindowMask::Block => 2 * w - 1,
        };
        let slide = 2 * reach * d;
        let per_channel = |kind: SsmKind| match kind {
            SsmKind::S4d => cfg.ssm.state_size,
            SsmKind::S4 => 2 * cfg.ssm.state_size,
            SsmKind::Unstructured => cfg.max_len,
        };
        self.0
            .iter()
            .map(|kind| match *kind {
                LayerKind::Slide => Some(slide),
                LayerKind::Brect => Some(slide + s * d + w * d),
                LayerKind::Bst { context, ssm } => {
                    let (banks, context_kv) = match context {
                        ContextVariant::Sh => (1, 2 * w * d),
                        ContextVariant::Mh => (cfg.dims.n_heads, 2 * w * d),
                        ContextVariant::Mf => (s, 2 * s * d),
                    };
                    Some(slide + banks * (d / cfg.ssm.proj_factor) * per_channel(ssm) + context_kv)
                }
                LayerKind::Attention | LayerKind::Xl | LayerKind::Gss | LayerKind::Ssm => None,
            })
            .sum()
    }

    /// The layers that are not SLIDE, numbered from 1 as in the paper: `"2 BST:SH:S4D, 4 BST:SH:S4D"`
    /// (every layer, when all are of one other kind: `"1-4 XL"`).
    pub fn placement(&self) -> String {
        let special: Vec<String> = self.0.iter().enumerate().filter(|(_, k)| **k != LayerKind::Slide).map(|(i, k)| format!("{} {k}", i + 1)).collect();
        match self.0.first() {
            Some(first) if *first != LayerKind::Slide && self.0.iter().all(|k| k == first) => format!("1-{} {first}", self.0.len()),
            _ if special.is_empty() => format!("1-{} SLIDE", self.0.len()),
            _ => special.join(", "),
        }
    }
}

impl fmt::Display for LayerPlan {
    /// Every layer, 1-based: `1 SLIDE | 2 BST:SH:S4D | 3 SLIDE`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let layers: Vec<String> = self.0.iter().enumerate().map(|(i, k)| format!("{} {k}", i + 1)).collect();
        f.write_str(&layers.join(" | "))
    }
}

impl Default for ModelConfig {
    fn default() -> Self {
        Self {
            arch: Architecture::Slide,
            n_layers: 12,
            d_model: 1024,
            n_heads: 8,
            mlp_ratio: 4,
            dropout: 0.05,
            ssm_layers: Vec::new(),
            context_states: 64,
            recurrent_layer: -3,
            segment_len: 2048,
            memory_len: 2048,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(arch: &str, n_layers: usize, ssm_layers: &[usize]) -> ModelConfig {
        ModelConfig { arch: arch.parse().unwrap(), n_layers, ssm_layers: ssm_layers.to_vec(), ..ModelConfig::default() }
    }

    #[test]
    fn the_plan_places_each_mixer_and_prints_the_paper_numbering() {
        let plan = model("BST:SH:S4D", 4, &[1, 3]).plan().unwrap();
        let sh = LayerKind::Bst { context: ContextVariant::Sh, ssm: SsmKind::S4d };
        assert_eq!(plan.0, vec![LayerKind::Slide, sh, LayerKind::Slide, sh]);
        assert_eq!(plan.placement(), "2 BST:SH:S4D, 4 BST:SH:S4D", "index 1 is the paper's layer 2");
        assert_eq!(plan.to_string(), "1 SLIDE | 2 BST:SH:S4D | 3 SLIDE | 4 BST:SH:S4D");
        let brect = ModelConfig { recurrent_layer: -3, ..model("BRECT:FIXED:SKIP", 12, &[]) }.plan().unwrap();
        assert_eq!(brect.placement(), "10 BRECT", "meliad's -3 is layer 10 of 12");
        assert!(brect.has_recurrent_layers() && brect.is_blocked());
        assert_eq!(model("TRSF-XL", 3, &[]).plan().unwrap().placement(), "1-3 XL");
        assert_eq!(model("SLIDE", 3, &[]).plan().unwrap().placement(), "1-3 SLIDE");
        let full = model("TRANSFORMER", 2, &[]).plan().unwrap();
        assert!(!full.has_recurrent_layers() && !full.is_blocked());
        assert_eq!(model("GSS-HYBRID", 3, &[0]).plan().unwrap().0[0], LayerKind::Gss);
    }

    /// The streamed state, counted by hand for d 64, W 32, S 16, N 16, d/4 SSM channels, L 256.
    #[test]
    fn stream_state_counts_each_layer_kind() {
        let mut cfg = bst_attn::LayerConfig::small(64, 4, 32);
        (cfg.context_states, cfg.max_len) = (16, 256);
        let counted = |arch: &str, ssm_layers: &[usize], cfg: &bst_attn::LayerConfig| model(arch, 4, ssm_layers).plan().unwrap().stream_state_floats(cfg);
        let floats = |arch: &str, ssm_layers: &[usize]| counted(arch, ssm_layers, &cfg);
        let slide = 2 * 32 * 64;
        assert_eq!(floats("SLIDE", &[]), Some(4 * slide));
        assert_eq!(floats("BST:SH:S4D", &[1]), Some(4 * slide + 16 * 16 + slide), "SH context: the block's W states");
        assert_eq!(floats("BST:SH:S4", &[1]), Some(4 * slide + 16 * 32 + slide), "S4: N complex per channel");
        assert_eq!(floats("BST:MH:S4D", &[1]), Some(4 * slide + 4 * 16 * 16 + slide), "MH: one bank per head");
        assert_eq!(floats("BST:MF:S4", &[1]), Some(4 * slide + 16 * 16 * 32 + 2 * 16 * 64), "MF: S banks, S context states");
        assert_eq!(floats("BST:SH:UNSTRUCT", &[1]), Some(4 * slide + 16 * 256 + slide), "UNSTRUCT: the last L inputs");
        assert_eq!(floats("BRECT:FIXED:SKIP", &[]), Some(4 * slide + 16 * 64 + 32 * 64));
        assert_eq!(floats("TRANSFORMER", &[]), None, "full attention grows with the text");
        let mut block = cfg.clone();
        block.attn.window_mask = bst_attn::WindowMask::Block;
        assert_eq!(counted("SLIDE", &[], &block), Some(4 * 2 * 63 * 64), "the block window reaches 2W - 1 back");
    }

    #[test]
    fn invalid_plans_name_the_key() {
        let err = |m: ModelConfig| m.plan().unwrap_err().to_string();
        assert!(err(model("BST:SH:S4D", 4, &[4])).starts_with("model.ssm_layers = [4]: index 4 is not a layer: indices are 0-based, 0..=3"), "{}", err(model("BST:SH:S4D", 4, &[4])));
        assert!(err(model("BST:SH:S4D", 4, &[])).contains("needs at least one SSM layer"));
        assert!(err(model("SLIDE", 4, &[0])).contains("SLIDE has no SSM layers"));
        assert!(err(ModelConfig { recurrent_layer: -5, ..model("BRECT:FIXED:SKIP", 4, &[]) }).starts_with("model.recurrent_layer = -5"));
        assert!(err(ModelConfig { context_states: 0, ..model("BST:MF:S4", 4, &[1]) }).starts_with("model.context_states = 0"));
        assert!(err(ModelConfig { segment_len: 0, ..model("TRSF-XL", 2, &[]) }).starts_with("model.segment_len = 0"));
        assert!(err(model("SLIDE", 0, &[])).starts_with("model.n_layers = 0"));
    }

    #[test]
    fn names_round_trip_and_unknown_names_list_the_choices() {
        for a in Architecture::ALL {
            assert_eq!(a.to_string().parse::<Architecture>(), Ok(a));
        }
        assert_eq!("bst:sh:s4d".parse::<Architecture>().unwrap().to_string(), "BST:SH:S4D");
        let err = "BST:XX".parse::<Architecture>().unwrap_err();
        assert!(err.contains("BST:SH:S4D, BST:MH:S4D, BST:MF:S4D, BST:SH:S4,") && err.contains("SLIDE, BRECT:FIXED:SKIP, TRSF-XL, GSS-HYBRID, TRANSFORMER, S4D"), "{err}");
    }
}
