//! Everything one training run needs, composed from each crate's own table and validated as a
//! whole before anything starts.

use bst_attn::{AttnConfig, HeadDims};
use bst_data::lra::LraConfig;
use bst_data::DataConfig;
use bst_ssm::SsmConfig;
use serde::{Deserialize, Serialize};
use tch::nn;

use crate::{Architecture, LanguageModel, ModelConfig, ModelError, TrainConfig};

/// One run: `[model]`, `[attn]`, `[ssm]`, `[data]`, `[train]`, the seed, and for a Long Range
/// Arena classification run, `[lra]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct RunConfig {
    pub model: ModelConfig,
    pub attn: AttnConfig,
    pub ssm: SsmConfig,
    pub data: DataConfig,
    pub train: TrainConfig,
    /// Seeds parameter initialisation, dropout and batch sampling.
    pub seed: u64,
    /// When present, the run trains a classifier on this LRA-style task instead of a language
    /// model on `[data]` (which Retrieval still reads for its documents).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lra: Option<LraConfig>,
}

impl RunConfig {
    /// Checks every cross-field constraint; the error names the key to fix.
    pub fn validate(&self) -> Result<(), ModelError> {
        let (m, t) = (&self.model, &self.train);
        HeadDims { d_model: m.d_model, n_heads: m.n_heads, dropout: m.dropout }.validate()?;
        self.attn.validate()?;
        self.data.validate()?;
        if m.n_layers == 0 {
            return Err(ModelError::invalid("model.n_layers", m.n_layers, "must be >= 1"));
        }
        if m.mlp_ratio == 0 {
            return Err(ModelError::invalid("model.mlp_ratio", m.mlp_ratio, "must be >= 1"));
        }
        match m.arch {
            Architecture::Bst { context, .. } => {
                self.ssm.validate(m.d_model)?;
                if context == bst_attn::ContextVariant::Mf && m.context_states == 0 {
                    return Err(ModelError::invalid("model.context_states", m.context_states, format!("{} needs at least one context state", m.arch)));
                }
                if m.ssm_layers.is_empty() {
                    return Err(ModelError::invalid("model.ssm_layers", &m.ssm_layers, format!("{} needs at least one BST layer index", m.arch)));
                }
            }
            Architecture::GssHybrid => {
                self.ssm.validate(m.d_model)?;
                if m.ssm_layers.is_empty() {
                    return Err(ModelError::invalid("model.ssm_layers", &m.ssm_layers, "GSS-HYBRID needs the indices of its GSS layers"));
                }
            }
            _ if !m.ssm_layers.is_empty() => {
                return Err(ModelError::invalid("model.ssm_layers", &m.ssm_layers, format!("{} has no SSM layers: leave it empty", m.arch)));
            }
            Architecture::Brect if m.recurrent_index().is_none() => {
                return Err(ModelError::invalid("model.recurrent_layer", m.recurrent_layer, format!("not a layer of model.n_layers = {}", m.n_layers)));
            }
            Architecture::Brect if m.context_states == 0 => {
                return Err(ModelError::invalid("model.context_states", m.context_states, "BRECT needs at least one recurrent state"));
            }
            _ => {}
        }
        if let Some(bad) = m.ssm_layers.iter().find(|&&i| i >= m.n_layers) {
            return Err(ModelError::invalid("model.ssm_layers", &m.ssm_layers, format!("index {bad} is not a layer (model.n_layers = {}, indices 0..={})", m.n_layers, m.n_layers - 1)));
        }
        let blocks = !matches!(m.arch, Architecture::Transformer);
        if t.seq_len == 0 || (blocks && t.seq_len % self.attn.window != 0) {
            return Err(ModelError::invalid("train.seq_len", t.seq_len, format!("must be a positive multiple of attn.window = {}", self.attn.window)));
        }
        if t.eval_length_factors.first() != Some(&1) || t.eval_length_factors.contains(&0) {
            return Err(ModelError::invalid("train.eval_length_factors", &t.eval_length_factors, "must start with 1 (the training length) and hold positive factors"));
        }
        for (key, v) in [("train.steps", t.steps), ("train.batch_size", t.batch_size), ("train.eval_batch_size", t.eval_batch_size), ("train.grad_accum", t.grad_accum)] {
            if v == 0 {
                return Err(ModelError::invalid(key, v, "must be >= 1"));
            }
        }
        if t.warmup_steps > t.steps {
            return Err(ModelError::invalid("train.warmup_steps", t.warmup_steps, format!("must be <= train.steps = {}", t.steps)));
        }
        if !(t.lr > 0.0) || !(0.0..=1.0).contains(&t.min_lr_ratio) {
            return Err(ModelError::invalid("train.lr", t.lr, "need lr > 0 and 0 <= min_lr_ratio <= 1"));
        }
        if let Some(lra) = &self.lra {
            lra.validate()?;
            if lra.seq_len() > t.seq_len {
                return Err(ModelError::invalid("train.seq_len", t.seq_len, format!("must hold the {} inputs of lra.seq_len = {} (round up to a multiple of attn.window)", lra.task, lra.seq_len())));
            }
            if t.eval_length_factors != [1] {
                return Err(ModelError::invalid("train.eval_length_factors", &t.eval_length_factors, "a classification run is evaluated at its own length only: use [1]"));
            }
        }
        Ok(())
    }

    /// Builds the configured model (after `tch::manual_seed(seed)`, so initialisation is seeded).
    pub fn build_model(&self, vs: &nn::Path, vocab_size: usize) -> Result<LanguageModel, ModelError> {
        self.validate()?;
        tch::manual_seed(self.seed as i64);
        LanguageModel::new(vs, &self.model, &self.attn, &self.ssm, vocab_size, self.train.seq_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bst() -> RunConfig {
        let mut cfg = RunConfig::default();
        cfg.model.arch = "BST:SH:S4D".parse().unwrap();
        cfg.model.ssm_layers = vec![1];
        cfg.attn.window = 64;
        cfg
    }

    fn error_of(cfg: &RunConfig) -> String {
        cfg.validate().unwrap_err().to_string()
    }

    #[test]
    fn defaults_and_a_bst_run_are_valid() {
        RunConfig::default().validate().unwrap();
        bst().validate().unwrap();
    }

    #[test]
    fn invalid_combinations_name_the_key() {
        let mut c = bst();
        c.model.ssm_layers = vec![1, 12];
        assert!(error_of(&c).contains("model.ssm_layers") && error_of(&c).contains("index 12"), "{}", error_of(&c));
        let mut c = bst();
        c.model.ssm_layers = vec![];
        assert!(error_of(&c).contains("model.ssm_layers"));
        let mut c = bst();
        c.train.seq_len = 100;
        assert!(error_of(&c).contains("train.seq_len") && error_of(&c).contains("attn.window = 64"));
        let mut c = RunConfig::default();
        c.model.ssm_layers = vec![0];
        assert!(error_of(&c).contains("SLIDE has no SSM layers"));
        let mut c = RunConfig::default();
        c.model.arch = "BRECT:FIXED:SKIP".parse().unwrap();
        c.model.recurrent_layer = -13;
        assert!(error_of(&c).contains("model.recurrent_layer"));
        c.model.recurrent_layer = -3;
        c.validate().unwrap();
        let mut c = RunConfig::default();
        c.train.eval_length_factors = vec![2, 4];
        assert!(error_of(&c).contains("train.eval_length_factors"));
        let mut c = bst();
        c.ssm.state_size = 3;
        assert!(error_of(&c).contains("ssm.state_size"));
        let mut c = RunConfig::default();
        c.model.n_heads = 5;
        assert!(error_of(&c).contains("model.n_heads"));
    }

    #[test]
    fn unknown_keys_are_rejected_by_serde() {
        let err = toml::from_str::<RunConfig>("[model]\nwidth = 3\n").unwrap_err().to_string();
        assert!(err.contains("unknown field `width`") && err.contains("d_model"), "{err}");
    }
}
