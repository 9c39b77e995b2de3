//! Model architecture and sizes: the `[model]` table of a run.

use std::{fmt, str::FromStr};

use bst_attn::ContextVariant;
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
    /// Transformer-XL: segments of `attn.window` tokens, each attending to itself and to a
    /// stop-gradient memory of `model.memory_len` previous positions.
    TransformerXl,
    /// GSS-HYBRID (Mehta et al.): Gated State Space layers at `model.ssm_layers`, SLIDE block
    /// attention in the others.
    GssHybrid,
    /// Plain decoder Transformer: full causal attention over the whole input.
    Transformer,
}

impl Architecture {
    /// Every architecture this build can train, by name.
    pub const ALL: [Architecture; 14] = [
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
    ];

    fn allowed() -> String {
        Self::ALL.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(", ")
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
    /// Indices of the SSM layers: BST layers for BST, GSS layers for GSS-HYBRID; empty otherwise.
    pub ssm_layers: Vec<usize>,
    /// Context states S: the SSM filters of BST:MF, the recurrent states of BRECT (paper: 512);
    /// SH and MH use S = W.
    pub context_states: usize,
    /// Index of BRECT's recurrent layer; negative counts from the end (meliad: -3).
    pub recurrent_layer: i64,
    /// Transformer-XL memory length M (paper: 2048).
    pub memory_len: usize,
}

impl ModelConfig {
    /// `recurrent_layer` as a layer index, if it names one.
    pub fn recurrent_index(&self) -> Option<usize> {
        let n = self.n_layers as i64;
        let i = if self.recurrent_layer < 0 { n + self.recurrent_layer } else { self.recurrent_layer };
        (0..n).contains(&i).then_some(i as usize)
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
            memory_len: 2048,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_list_the_choices() {
        for a in Architecture::ALL {
            assert_eq!(a.to_string().parse::<Architecture>(), Ok(a));
        }
        assert_eq!("bst:sh:s4d".parse::<Architecture>().unwrap().to_string(), "BST:SH:S4D");
        let err = "BST:XX".parse::<Architecture>().unwrap_err();
        assert!(err.contains("BST:SH:S4D, BST:MH:S4D, BST:MF:S4D, BST:SH:S4,") && err.contains("SLIDE, BRECT:FIXED:SKIP, TRSF-XL, GSS-HYBRID, TRANSFORMER"), "{err}");
    }
}
