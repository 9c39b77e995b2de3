//! The training loop shared by every architecture: seeded batches, AdamW with decoupled weight
//! decay on matmul weights only, linear warmup + cosine decay, global gradient-norm clipping, and
//! a stop with the step and the tensor named when anything becomes non-finite.

use std::ops::ControlFlow;
use std::time::Instant;

use bst_data::{Batcher, TokenStream};
use serde::{Deserialize, Serialize};
use tch::{nn, nn::OptimizerConfig, Device, Tensor};

use crate::{lr_at, LanguageModel, ModelError};

/// The `[train]` table of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TrainConfig {
    /// Optimiser steps.
    pub steps: usize,
    /// Sequences per step.
    pub batch_size: usize,
    /// Training sequence length L (a multiple of attn.window).
    pub seq_len: usize,
    /// Peak learning rate.
    pub lr: f64,
    /// Final learning rate as a fraction of the peak.
    pub min_lr_ratio: f64,
    /// Linear warmup steps.
    pub warmup_steps: usize,
    /// Decoupled weight decay on matmul weights (not on norms, biases, embeddings, SSM parameters).
    pub weight_decay: f64,
    /// Global gradient-norm clip (0 = off).
    pub grad_clip: f64,
    /// Adam beta1.
    pub beta1: f64,
    /// Adam beta2.
    pub beta2: f64,
    /// Tokens evaluated per split, in whole sequences (0 = the whole split).
    pub eval_tokens: usize,
    /// Sequences per evaluation batch.
    pub eval_batch_size: usize,
}

/// Defaults follow the paper where it is known (batch 32, L = 4096, warmup then cosine); the
/// peak learning rate, step count and warmup length were not retrieved and are our choices.
impl Default for TrainConfig {
    fn default() -> Self {
        Self {
            steps: 10_000,
            batch_size: 32,
            seq_len: 4096,
            lr: 1e-3,
            min_lr_ratio: 0.1,
            warmup_steps: 1000,
            weight_decay: 0.1,
            grad_clip: 1.0,
            beta1: 0.9,
            beta2: 0.95,
            eval_tokens: 0,
            eval_batch_size: 16,
        }
    }
}

/// What one optimiser step reports.
#[derive(Debug, Clone, Serialize)]
pub struct StepMetrics {
    pub step: usize,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    pub tokens_seen: usize,
    pub elapsed_s: f64,
    pub tokens_per_s: f64,
}

/// Summary of a finished training loop.
#[derive(Debug, Clone, Serialize)]
pub struct TrainOutcome {
    pub steps: usize,
    pub tokens_seen: usize,
    pub wall_s: f64,
    pub final_loss: f64,
}

/// Variables that get weight decay: matmul weights (`*.weight` outside norms and embeddings).
fn decays(name: &str) -> bool {
    name.ends_with(".weight") && !name.contains("norm") && !name.starts_with("embed.")
}

/// Global L2 norm of all gradients; names the first non-finite gradient if there is one.
fn grad_norm(vs: &nn::VarStore, step: usize) -> Result<f64, ModelError> {
    let norm = tch::no_grad(|| {
        let squares: Vec<Tensor> = vs.trainable_variables().iter().map(|v| v.grad()).filter(|g| g.defined()).map(|g| g.square().sum(tch::Kind::Float)).collect();
        Tensor::stack(&squares, 0).sum(tch::Kind::Float).sqrt().double_value(&[])
    });
    if !norm.is_finite() {
        let mut vars: Vec<_> = vs.variables().into_iter().collect();
        vars.sort_by(|a, b| a.0.cmp(&b.0));
        let bad = vars.into_iter().find(|(_, v)| v.grad().defined() && v.grad().isfinite().all().int64_value(&[]) == 0);
        let what = bad.map_or("the gradient norm".to_string(), |(name, _)| format!("the gradient of {name}"));
        return Err(ModelError::NonFinite { step, what, value: norm });
    }
    Ok(norm)
}

/// Trains `model` (whose variables live in `vs`) on `stream`. `on_step` is called after every
/// step and may stop the run (`ControlFlow::Break`), which returns `ModelError::Interrupted`.
/// `ssm_lr_scale` scales the learning rate of the SSM kernel parameters (optimiser group
/// [`bst_ssm::SSM_PARAM_GROUP`]).
pub fn train(
    model: &LanguageModel,
    vs: &nn::VarStore,
    cfg: &TrainConfig,
    ssm_lr_scale: f64,
    stream: &TokenStream,
    seed: u64,
    mut on_step: impl FnMut(&StepMetrics) -> ControlFlow<()>,
) -> Result<TrainOutcome, ModelError> {
    let device = vs.device();
    let adamw = nn::AdamW { beta1: cfg.beta1, beta2: cfg.beta2, wd: 0.0, eps: 1e-8, amsgrad: false };
    let mut opt = adamw.build(vs, cfg.lr)?;
    let groups = vs.variables_.lock().unwrap().trainable_variables.iter().map(|v| v.group + 1).max().unwrap_or(1);
    let decayed: Vec<Tensor> = vs.variables().into_iter().filter(|(name, _)| decays(name)).map(|(_, t)| t).collect();
    let mut batcher = Batcher::new(seed, cfg.batch_size, cfg.seq_len);
    let start = Instant::now();
    let mut loss_value = f64::NAN;
    for step in 0..cfg.steps {
        let lr = lr_at(step, cfg);
        opt.set_lr_group(0, lr);
        if groups > bst_ssm::SSM_PARAM_GROUP {
            opt.set_lr_group(bst_ssm::SSM_PARAM_GROUP, lr * ssm_lr_scale);
        }
        let (inputs, targets) = batcher.next_batch(stream)?;
        let loss = model.loss(&inputs.to_device(device), &targets.to_device(device), true);
        loss_value = loss.double_value(&[]);
        if !loss_value.is_finite() {
            return Err(ModelError::NonFinite { step, what: "the training loss".into(), value: loss_value });
        }
        opt.zero_grad();
        loss.backward();
        let norm = grad_norm(vs, step)?;
        if cfg.grad_clip > 0.0 && norm > cfg.grad_clip {
            let scale = cfg.grad_clip / (norm + 1e-6);
            tch::no_grad(|| vs.trainable_variables().iter().for_each(|v| {
                let mut g = v.grad();
                if g.defined() {
                    let _ = g.g_mul_scalar_(scale);
                }
            }));
        }
        tch::no_grad(|| decayed.iter().for_each(|w| {
            let _ = w.shallow_clone().g_mul_scalar_(1.0 - lr * cfg.weight_decay);
        }));
        opt.step();
        let elapsed_s = start.elapsed().as_secs_f64();
        let tokens_seen = (step + 1) * cfg.batch_size * cfg.seq_len;
        let metrics = StepMetrics { step, loss: loss_value, lr, grad_norm: norm, tokens_seen, elapsed_s, tokens_per_s: tokens_seen as f64 / elapsed_s };
        if on_step(&metrics).is_break() {
            return Err(ModelError::Interrupted { step });
        }
    }
    if let Device::Cuda(_) = device {
        tch::Cuda::synchronize(0);
    }
    Ok(TrainOutcome {
        steps: cfg.steps,
        tokens_seen: cfg.steps * cfg.batch_size * cfg.seq_len,
        wall_s: start.elapsed().as_secs_f64(),
        final_loss: loss_value,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ModelConfig;
    use bst_attn::AttnConfig;
    use bst_ssm::SsmConfig;

    fn repeating_text_stream() -> TokenStream {
        let text = b"the quick brown fox jumps over the lazy dog. ".repeat(200);
        let ids: Vec<i64> = text.iter().map(|&b| b as i64).collect();
        TokenStream { tokens: Tensor::from_slice(&ids), bytes: ids.len() }
    }

    fn run(arch: &str, seed: u64) -> Vec<f64> {
        let mut cfg = crate::RunConfig::default();
        cfg.model = ModelConfig { arch: arch.parse().unwrap(), n_layers: 2, d_model: 32, n_heads: 2, context_states: 4, ..Default::default() };
        if arch != "SLIDE" {
            cfg.model.ssm_layers = vec![1];
        }
        cfg.attn = AttnConfig { window: 16, ..Default::default() };
        cfg.train = TrainConfig { steps: 30, batch_size: 4, seq_len: 32, lr: 3e-3, warmup_steps: 3, ..Default::default() };
        cfg.seed = seed;
        let vs = nn::VarStore::new(Device::Cpu);
        let lm = cfg.build_model(&vs.root(), 256).unwrap();
        let mut losses = Vec::new();
        train(&lm, &vs, &cfg.train, 1.0, &repeating_text_stream(), seed, |m| {
            losses.push(m.loss);
            ControlFlow::Continue(())
        })
        .unwrap();
        losses
    }

    #[test]
    fn loss_decreases_for_every_architecture() {
        for arch in ["SLIDE", "BST:SH:S4D", "BST:SH:S4", "BST:SH:UNSTRUCT", "BST:MH:S4D", "BST:MF:S4D"] {
            let losses = run(arch, 0);
            let (first, last) = (losses[..3].iter().sum::<f64>() / 3.0, losses[27..].iter().sum::<f64>() / 3.0);
            assert!(last < first * 0.7, "{arch}: loss {first:.3} -> {last:.3} did not drop");
        }
    }

    #[test]
    fn weight_decay_spares_norms_embeddings_and_ssm() {
        assert!(decays("layers.0.mixer.qkv.weight"));
        assert!(!decays("layers.0.mixer.qkv.bias"));
        assert!(!decays("layers.0.norm1.weight"));
        assert!(!decays("embed.weight"));
        assert!(!decays("layers.1.mixer.ssm.conv.s4d.log_dt"));
        assert!(!decays("layers.1.mixer.ssm.conv.long_conv.taps"));
    }

    #[test]
    fn stopping_from_the_callback_interrupts() {
        tch::manual_seed(0);
        let vs = nn::VarStore::new(Device::Cpu);
        let lm = LanguageModel::new(&vs.root(), &ModelConfig { n_layers: 1, d_model: 16, n_heads: 2, ..Default::default() }, &AttnConfig { window: 8, ..Default::default() }, &SsmConfig::default(), 256, 16).unwrap();
        let cfg = TrainConfig { steps: 10, batch_size: 2, seq_len: 16, warmup_steps: 2, ..Default::default() };
        let err = train(&lm, &vs, &cfg, 1.0, &repeating_text_stream(), 0, |m| if m.step == 2 { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }).unwrap_err();
        assert!(matches!(err, ModelError::Interrupted { step: 2 }), "{err}");
    }
}
