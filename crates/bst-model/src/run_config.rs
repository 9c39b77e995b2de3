//! Everything one training run needs, composed from each crate's own table and validated as a
//! whole before anything starts.

use bst_attn::{AttnConfig, HeadDims, LayerConfig};
use bst_data::lra::LraConfig;
use bst_data::{DataConfig, Sampling};
use bst_ssm::SsmConfig;
use serde::{Deserialize, Serialize};
use tch::nn;

use crate::config::{LayerKind, LayerPlan};
use crate::{LanguageModel, ModelConfig, ModelError, TrainConfig};

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
    /// Checks every cross-field constraint and returns the layer plan; the error names the key
    /// to fix. Everything downstream (model, sampler, layers) trusts a validated configuration.
    pub fn validate(&self) -> Result<LayerPlan, ModelError> {
        let (m, t) = (&self.model, &self.train);
        HeadDims { d_model: m.d_model, n_heads: m.n_heads, dropout: m.dropout }.validate()?;
        self.attn.validate()?;
        self.data.validate()?;
        let plan = m.plan()?;
        if m.mlp_ratio == 0 {
            return Err(ModelError::invalid("model.mlp_ratio", m.mlp_ratio, "must be >= 1"));
        }
        if m.arch.uses_ssm() {
            self.ssm.validate(m.d_model)?;
        }
        if t.seq_len == 0 {
            return Err(ModelError::invalid("train.seq_len", t.seq_len, "must be >= 1"));
        }
        for (multiple, key) in self.length_multiples(&plan) {
            if t.seq_len % multiple != 0 {
                return Err(ModelError::invalid("train.seq_len", t.seq_len, format!("must be a multiple of {key} = {multiple}")));
            }
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
            self.validate_lra(lra)?;
        }
        self.validate_episodes()?;
        if let Some(le) = &t.length_eval {
            let lengths = le.lengths(t.seq_len).map_err(|f| ModelError::invalid("train.length_eval.factors", f, format!("factor x train.seq_len = {} must be a whole number of tokens", t.seq_len)))?;
            for (e, (multiple, key)) in lengths.iter().flat_map(|&e| self.length_multiples(&plan).into_iter().map(move |m| (e, m))) {
                if e % multiple != 0 {
                    return Err(ModelError::invalid("train.length_eval.factors", &le.factors, format!("the length {e} is not a multiple of {key} = {multiple}")));
                }
            }
            if le.factors.is_empty() || le.stretches == 0 || le.batch == 0 {
                return Err(ModelError::invalid("train.length_eval", &le.factors, "needs at least one factor, stretches >= 1 and batch >= 1"));
            }
        }
        Ok(plan)
    }

    /// The generated task's examples when they are episodic (MQAR).
    fn episodes(&self) -> Option<bst_data::synthetic::SyntheticConfig> {
        let s = self.data.synthetic.clone().unwrap_or_default();
        (self.data.corpus == bst_data::CorpusKind::Synthetic && s.is_episodic()).then_some(s)
    }

    /// An episodic task has one example per training window, read in order: its examples must be
    /// `train.seq_len` long and its windows sequential.
    fn validate_episodes(&self) -> Result<(), ModelError> {
        if self.answers_only() && self.data.sampling == Sampling::Random {
            return Err(ModelError::invalid("data.sampling", "random", "data.synthetic.answers_only needs sequential windows (\"sequential\" or \"auto\")"));
        }
        let Some(s) = self.episodes() else { return Ok(()) };
        if s.example_len != self.train.seq_len {
            return Err(ModelError::invalid("data.synthetic.example_len", s.example_len, format!("must equal train.seq_len = {} (one example per window)", self.train.seq_len)));
        }
        if self.data.sampling == Sampling::Random {
            return Err(ModelError::invalid("data.sampling", "random", "an episodic task (mqar) is read one example per window: use \"sequential\" or \"auto\""));
        }
        if self.train.eval_length_factors != [1] {
            return Err(ModelError::invalid("train.eval_length_factors", &self.train.eval_length_factors, "an episodic task (mqar) is evaluated one example per window: use [1]"));
        }
        Ok(())
    }

    /// Whether training scores only the answers of a synthetic task (`data.synthetic.answers_only`).
    pub fn answers_only(&self) -> bool {
        self.data.corpus == bst_data::CorpusKind::Synthetic && self.data.synthetic.as_ref().is_some_and(|s| s.answers_only)
    }

    /// What the sequence length must be a multiple of: the window for blocked layers, the segment
    /// for Transformer-XL.
    fn length_multiples(&self, plan: &LayerPlan) -> Vec<(usize, &'static str)> {
        let mut out = Vec::new();
        if plan.is_blocked() {
            out.push((self.attn.window, "attn.window"));
        }
        if plan.0.contains(&LayerKind::Xl) {
            out.push((self.model.segment_len, "model.segment_len"));
        }
        out
    }

    fn validate_lra(&self, lra: &LraConfig) -> Result<(), ModelError> {
        let t = &self.train;
        lra.validate()?;
        if lra.seq_len() > t.seq_len {
            return Err(ModelError::invalid("train.seq_len", t.seq_len, format!("must hold the {} inputs of lra.seq_len = {} (round up to a multiple of attn.window)", lra.task, lra.seq_len())));
        }
        if t.eval_length_factors != [1] {
            return Err(ModelError::invalid("train.eval_length_factors", &t.eval_length_factors, "a classification run is evaluated at its own length only: use [1]"));
        }
        Ok(())
    }

    /// Whether the model carries state from one window to the next: BRECT's recurrent state,
    /// Transformer-XL's memory, or windowed self-attention's last block
    /// (`attn.cache_across_windows`).
    pub fn carries_state(&self, plan: &LayerPlan) -> bool {
        plan.has_recurrent_layers() || (self.attn.cache_across_windows && plan.is_blocked())
    }

    /// How training windows are drawn: `data.sampling`, with `"auto"` resolved against the model
    /// (sequential when it carries state across windows, as meliad trains SLIDE, BRECT and XL;
    /// random otherwise).
    pub fn sampling(&self, plan: &LayerPlan) -> Sampling {
        match self.data.sampling {
            Sampling::Auto if self.carries_state(plan) || self.episodes().is_some() || self.answers_only() => Sampling::Sequential,
            Sampling::Auto => Sampling::Random,
            chosen => chosen,
        }
    }

    /// What every mixer of this run is built from.
    pub fn layer_config(&self) -> LayerConfig {
        let m = &self.model;
        LayerConfig {
            dims: HeadDims { d_model: m.d_model, n_heads: m.n_heads, dropout: m.dropout },
            attn: self.attn.clone(),
            ssm: self.ssm.clone(),
            max_len: self.train.seq_len,
            context_states: m.context_states,
            segment_len: m.segment_len,
            memory_len: m.memory_len,
        }
    }

    /// Validates and builds the configured model (after `tch::manual_seed(seed)`, so
    /// initialisation is seeded).
    pub fn build_model(&self, vs: &nn::Path, vocab_size: usize) -> Result<LanguageModel, ModelError> {
        let plan = self.validate()?;
        tch::manual_seed(self.seed as i64);
        Ok(LanguageModel::new(vs, plan, &self.layer_config(), &self.model, vocab_size))
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
        c.model.arch = "TRSF-XL".parse().unwrap();
        (c.model.segment_len, c.train.seq_len) = (48, 96);
        c.validate().unwrap();
        c.model.segment_len = 64;
        assert!(error_of(&c).contains("must be a multiple of model.segment_len = 64"), "{}", error_of(&c));
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
    fn auto_sampling_is_sequential_for_stateful_models_only() {
        for (arch, cache, expected) in [
            ("BRECT:FIXED:SKIP", false, Sampling::Sequential),
            ("TRSF-XL", false, Sampling::Sequential),
            ("SLIDE", true, Sampling::Sequential),
            ("SLIDE", false, Sampling::Random),
            ("TRANSFORMER", true, Sampling::Random),
        ] {
            let mut c = RunConfig::default();
            c.model.arch = arch.parse().unwrap();
            c.attn.cache_across_windows = cache;
            let plan = c.validate().unwrap();
            assert_eq!(c.sampling(&plan), expected, "{arch} cache_across_windows = {cache}");
            c.data.sampling = Sampling::Random;
            assert_eq!(c.sampling(&plan), Sampling::Random, "{arch}: an explicit choice wins");
        }
    }

    #[test]
    fn unknown_keys_are_rejected_by_serde() {
        let err = toml::from_str::<RunConfig>("[model]\nwidth = 3\n").unwrap_err().to_string();
        assert!(err.contains("unknown field `width`") && err.contains("d_model"), "{err}");
    }
}
