//! The training loop shared by every architecture: seeded batches (random windows, or consecutive
//! windows of whole documents with the model's state carried from step to step, `data.sampling`),
//! AdamW with decoupled weight decay on matmul weights only, linear warmup + cosine decay, global
//! gradient-norm clipping, gradient accumulation, a stop with the step and the tensor named when
//! anything becomes non-finite, and checkpoints from which a run continues exactly as if never
//! interrupted (dropout is seeded from (seed, step); the sampler's position, the carried state
//! and AdamW's moments are saved).
//! Forward passes run in f32 or under bf16 autocast (`train.precision`, [`crate::autocast`]).

use std::ops::ControlFlow;
use std::path::Path;
use std::time::Instant;

use bst_data::{Sampler, Sampling, TokenStream};
use serde::{Deserialize, Serialize};
use tch::{nn, Device};

use crate::checkpoint::{self, Progress, SamplerState};
use crate::optimizer::AdamW;
use crate::{lr_at, Autocast, LanguageModel, LmState, ModelError, Precision, RunConfig};

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
    /// Sequences per evaluation batch (contiguous rows walked in step).
    pub eval_batch_size: usize,
    /// Evaluation lengths as multiples of seq_len (paper: 1/8, 4 and 16 times 4k); 1 must be first.
    pub eval_length_factors: Vec<usize>,
    /// Micro-batches accumulated per optimiser step.
    pub grad_accum: usize,
    /// Save a checkpoint every this many steps (0 = only at the end and on interruption).
    pub checkpoint_every: usize,
    /// Length generalisation on the same targets at several lengths (see
    /// [`crate::length_eval`]); absent: not run.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub length_eval: Option<crate::LengthEvalConfig>,
    /// Precision of forward passes in training and evaluation: `"f32"`, or `"bf16"` = autocast to
    /// bfloat16 on the run's device (CUDA; CPU autocast works too but is slow without native
    /// bf16). FFT convolutions, SSM kernels and the loss stay f32; weights, gradients and
    /// optimiser state are f32 either way, and bf16 needs no loss scaling (see [`crate::autocast`]).
    /// Left out of the serialised config when f32, so that run ids of older sweeps still match.
    #[serde(skip_serializing_if = "Precision::is_f32")]
    pub precision: Precision,
    /// Stop training after this many seconds of training time (0 = no limit), wherever the
    /// schedule is, then evaluate as usual: runs compared at the same wall-clock budget (e.g.
    /// scripts/gpu_compare.sh). Left out of the serialised config when 0.
    #[serde(skip_serializing_if = "is_zero")]
    pub time_limit_s: f64,
}

fn is_zero(x: &f64) -> bool {
    *x == 0.0
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
            eval_length_factors: vec![1],
            grad_accum: 1,
            checkpoint_every: 0,
            length_eval: None,
            precision: Precision::F32,
            time_limit_s: 0.0,
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
    /// Training wall time, including time before a resume.
    pub wall_s: f64,
    pub final_loss: f64,
}

/// The seed of libtorch's RNG (dropout) for one micro-batch: a function of the run seed and the
/// position in training only, so that a resumed run draws the same masks.
fn step_seed(seed: u64, step: usize, micro: usize) -> i64 {
    (seed.wrapping_mul(1_000_003).wrapping_add((step * 64 + micro) as u64) & 0x7fff_ffff_ffff) as i64
}

/// What one optimiser step did.
#[derive(Debug, Clone)]
pub struct StepDone {
    /// Mean training loss over the step's micro-batches.
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    /// Tokens the micro-batches processed.
    pub tokens: usize,
}

/// One optimiser step at `step`, shared by every kind of training: `train.grad_accum`
/// micro-batches, each seeded by the position in training, its forward (`forward`, returning the
/// mean loss and the tokens processed) under autocast and its backward outside it, in the dtypes
/// the forward recorded, into f32 gradients of the f32 weights. A non-finite loss stops the run,
/// naming `what`. Then gradient clipping and AdamW at the scheduled learning rate.
pub(crate) fn optimizer_step(
    opt: &mut AdamW,
    run: &RunConfig,
    device: Device,
    step: usize,
    what: &str,
    mut forward: impl FnMut() -> Result<(tch::Tensor, usize), ModelError>,
) -> Result<StepDone, ModelError> {
    let t = &run.train;
    let lr = lr_at(step, t);
    opt.zero_grad();
    let (mut loss_sum, mut tokens) = (0.0, 0);
    for micro in 0..t.grad_accum {
        tch::manual_seed(step_seed(run.seed, step, micro));
        let (loss, n) = {
            let _autocast = Autocast::enter(device, t.precision)?;
            forward()?
        };
        let value = loss.double_value(&[]);
        if !value.is_finite() {
            return Err(ModelError::NonFinite { step, what: what.into(), value });
        }
        (loss / t.grad_accum as f64).backward();
        loss_sum += value / t.grad_accum as f64;
        tokens += n;
    }
    let grad_norm = opt.grad_norm(step)?;
    if t.grad_clip > 0.0 && grad_norm > t.grad_clip {
        opt.scale_grads(t.grad_clip / (grad_norm + 1e-6));
    }
    opt.step(lr, t.weight_decay);
    Ok(StepDone { loss: loss_sum, lr, grad_norm, tokens })
}

/// Where a training loop stands: steps done, tokens seen, time spent before this launch.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Position {
    pub step: usize,
    pub tokens_seen: usize,
    pub elapsed_before: f64,
    /// The last step's training loss (None before the first step).
    pub last_loss: Option<f64>,
}

/// What a kind of training supplies to the shared loop.
pub(crate) trait Steps {
    fn position(&mut self) -> &mut Position;
    /// One optimiser step at `step`.
    fn step(&mut self, step: usize) -> Result<StepDone, ModelError>;
    /// A checkpoint of the current position, `elapsed_s` of training done in all.
    fn save(&self, dir: &Path, elapsed_s: f64) -> Result<(), ModelError>;
}

/// The loop every kind of training shares: steps until `train.steps` (or `train.time_limit_s`
/// of training time), each reported to `on_step`, which may stop the run
/// (`ModelError::Interrupted`); with `checkpoint_dir`, a checkpoint every
/// `train.checkpoint_every` steps, at the end and when stopped.
pub(crate) fn run_steps(steps: &mut dyn Steps, train: &TrainConfig, device: Device, checkpoint_dir: Option<&Path>, on_step: &mut dyn FnMut(&StepMetrics) -> ControlFlow<()>) -> Result<TrainOutcome, ModelError> {
    let start = Instant::now();
    let before = steps.position().elapsed_before;
    let elapsed = || before + start.elapsed().as_secs_f64();
    let out_of_time = |now: f64| train.time_limit_s > 0.0 && now >= train.time_limit_s;
    while steps.position().step < train.steps && !out_of_time(elapsed()) {
        let step = steps.position().step;
        let done = steps.step(step)?;
        let loss_value = done.loss;
        let pos = steps.position();
        pos.step += 1;
        pos.tokens_seen += done.tokens;
        pos.last_loss = Some(loss_value);
        let (now, pos) = (elapsed(), *pos);
        let metrics = StepMetrics { step, loss: loss_value, lr: done.lr, grad_norm: done.grad_norm, tokens_seen: pos.tokens_seen, elapsed_s: now, tokens_per_s: pos.tokens_seen as f64 / now };
        let stop = on_step(&metrics).is_break();
        if let Some(dir) = checkpoint_dir {
            let periodic = train.checkpoint_every > 0 && pos.step % train.checkpoint_every == 0;
            if stop || periodic || pos.step == train.steps || out_of_time(now) {
                steps.save(dir, now)?;
            }
        }
        if stop {
            return Err(ModelError::Interrupted { step });
        }
    }
    bst_core::sync(device);
    let pos = *steps.position();
    Ok(TrainOutcome { steps: pos.step, tokens_seen: pos.tokens_seen, wall_s: elapsed(), final_loss: pos.last_loss.unwrap_or(f64::NAN) })
}

/// A language-model training run in progress: model, optimiser, sampler, carried state and
/// position.
pub struct Trainer<'a> {
    model: &'a LanguageModel,
    vs: &'a nn::VarStore,
    run: &'a RunConfig,
    opt: AdamW,
    sampler: Sampler,
    /// The state carried from one step to the next (sequential sampling; fresh otherwise).
    carry: LmState,
    pos: Position,
}

impl<'a> Trainer<'a> {
    /// A run at step 0; `model` must own the variables of `vs`; `stream` is the training split
    /// (a sequential sampler deals its documents to the batch rows).
    pub fn new(model: &'a LanguageModel, vs: &'a nn::VarStore, run: &'a RunConfig, stream: &TokenStream) -> Result<Self, ModelError> {
        let t = &run.train;
        let sampling = run.sampling(model.plan());
        Ok(Self {
            model,
            vs,
            run,
            opt: AdamW::new(vs, t.beta1, t.beta2, run.ssm.lr_scale),
            sampler: Sampler::new(sampling, run.seed, t.batch_size, t.seq_len, stream, run.answers_only())?,
            carry: LmState::default(),
            pos: Position::default(),
        })
    }

    /// Steps completed.
    pub fn step(&self) -> usize {
        self.pos.step
    }

    /// How this run draws its windows.
    pub fn sampling(&self) -> Sampling {
        match self.sampler {
            Sampler::Random(_) => Sampling::Random,
            Sampler::Sequential(_) => Sampling::Sequential,
        }
    }

    /// Continues from the checkpoint in `dir` (weights, optimiser, sampler, carried state, step).
    pub fn resume(&mut self, dir: &Path) -> Result<(), ModelError> {
        let loaded = checkpoint::load(dir, self.vs, &mut self.opt)?;
        let Progress { step, tokens_seen, elapsed_s, sampler, last_loss } = loaded.state.progress;
        let sampler = match sampler {
            SamplerState::Lm(s) if std::mem::discriminant(&s) == std::mem::discriminant(&self.sampler) => s,
            _ => return Err(ModelError::Checkpoint { path: dir.to_owned(), reason: format!("saved with another sampler than data.sampling resolves to ({})", self.sampling()) }),
        };
        let carry = LmState::from_tensors(self.model.plan().0.len(), &loaded.carry).map_err(|reason| ModelError::Checkpoint { path: dir.to_owned(), reason })?;
        (self.pos, self.sampler, self.carry) = (Position { step, tokens_seen, elapsed_before: elapsed_s, last_loss }, sampler, carry);
        Ok(())
    }

    /// Writes a checkpoint of the current position to `dir`.
    pub fn save(&self, dir: &Path, elapsed_s: f64) -> Result<(), ModelError> {
        let progress = Progress { step: self.pos.step, tokens_seen: self.pos.tokens_seen, elapsed_s, sampler: SamplerState::Lm(self.sampler.clone()), last_loss: self.pos.last_loss };
        checkpoint::save(dir, self.vs, &self.opt, &self.carry.tensors(), self.run, progress)
    }

    /// One optimiser step on the next batch of `stream` (the body of [`Self::run`], which adds
    /// checkpoints and metrics): sampling, forward, backward, clipping, AdamW, the carried state
    /// detached for the next step.
    pub fn train_step(&mut self, stream: &TokenStream) -> Result<StepDone, ModelError> {
        let step = self.pos.step;
        let done = LmSteps { trainer: self, stream }.step(step)?;
        self.pos.step += 1;
        self.pos.tokens_seen += done.tokens;
        Ok(done)
    }

    /// Trains until `train.steps`. With `checkpoint_dir`, saves every `train.checkpoint_every`
    /// steps, at the end, and when `on_step` stops the run (`ControlFlow::Break`), which returns
    /// `ModelError::Interrupted`.
    pub fn run(&mut self, stream: &TokenStream, checkpoint_dir: Option<&Path>, mut on_step: impl FnMut(&StepMetrics) -> ControlFlow<()>) -> Result<TrainOutcome, ModelError> {
        let (train, device) = (&self.run.train, self.vs.device());
        run_steps(&mut LmSteps { trainer: self, stream }, train, device, checkpoint_dir, &mut on_step)
    }
}

/// A language model's steps for the shared loop.
struct LmSteps<'t, 'a> {
    trainer: &'t mut Trainer<'a>,
    stream: &'t TokenStream,
}

impl Steps for LmSteps<'_, '_> {
    fn position(&mut self) -> &mut Position {
        &mut self.trainer.pos
    }

    fn step(&mut self, step: usize) -> Result<StepDone, ModelError> {
        let t = &mut *self.trainer;
        let (model, device, stream) = (t.model, t.vs.device(), self.stream);
        let (sampler, carry) = (&mut t.sampler, &mut t.carry);
        optimizer_step(&mut t.opt, t.run, device, step, "the training loss", || {
            let batch = sampler.next_batch(stream)?;
            let mut fresh = LmState::default();
            let state = match &batch.reset {
                Some(reset) => {
                    carry.reset_rows(&reset.to_device(device));
                    &mut *carry
                }
                None => &mut fresh,
            };
            let loss = model.loss_with_state(&batch.inputs.to_device(device), &batch.targets.to_device(device), state, true);
            state.detach(); // truncated backpropagation: the next window starts from a constant
            Ok((loss, batch.tokens))
        })
    }

    fn save(&self, dir: &Path, elapsed_s: f64) -> Result<(), ModelError> {
        self.trainer.save(dir, elapsed_s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ModelConfig;
    use bst_attn::AttnConfig;

    /// 9000 bytes of repeated text in 6 documents (so that sequential sampling has rows to fill).
    fn repeating_text_stream() -> TokenStream {
        let text = b"the quick brown fox jumps over the lazy dog. ".repeat(200);
        TokenStream::from_bytes(&text).with_doc_starts((0..6).map(|i| i * 1500).collect())
    }

    const ARCHS: [&str; 11] = ["SLIDE", "BST:SH:S4D", "BST:SH:S4", "BST:SH:UNSTRUCT", "BST:MH:S4D", "BST:MF:S4D", "BRECT:FIXED:SKIP", "TRSF-XL", "GSS-HYBRID", "TRANSFORMER", "S4D"];

    fn run(arch: &str, seed: u64) -> Vec<f64> {
        train_tiny(arch, seed, Precision::F32).0
    }

    /// Trains a tiny `arch` for 30 steps; returns the losses, the model and its variables.
    fn train_tiny(arch: &str, seed: u64, precision: Precision) -> (Vec<f64>, LanguageModel, nn::VarStore) {
        let mut cfg = crate::RunConfig::default();
        cfg.model = ModelConfig { arch: arch.parse().unwrap(), n_layers: 2, d_model: 32, n_heads: 2, context_states: 4, ..Default::default() };
        if arch.starts_with("BST") || arch == "GSS-HYBRID" {
            cfg.model.ssm_layers = vec![1];
        }
        (cfg.model.segment_len, cfg.model.memory_len) = (16, 16);
        cfg.model.recurrent_layer = -1;
        cfg.attn = AttnConfig { window: 16, ..Default::default() };
        cfg.train = TrainConfig { steps: 30, batch_size: 4, seq_len: 32, lr: 3e-3, warmup_steps: 3, precision, ..Default::default() };
        cfg.seed = seed;
        let vs = nn::VarStore::new(Device::Cpu);
        let lm = cfg.build_model(&vs.root(), 256).unwrap();
        let mut losses = Vec::new();
        let stream = repeating_text_stream();
        Trainer::new(&lm, &vs, &cfg, &stream)
            .unwrap()
            .run(&stream, None, |m| {
                losses.push(m.loss);
                ControlFlow::Continue(())
            })
            .unwrap();
        (losses, lm, vs)
    }

    fn assert_loss_drops(arch: &str, losses: &[f64]) {
        let (first, last) = (losses[..3].iter().sum::<f64>() / 3.0, losses[27..].iter().sum::<f64>() / 3.0);
        assert!(last < first * 0.7, "{arch}: loss {first:.3} -> {last:.3} did not drop");
    }

    #[test]
    fn loss_decreases_for_every_architecture() {
        for arch in ARCHS {
            assert_loss_drops(arch, &run(arch, 0));
        }
    }

    /// `train.precision = "bf16"` on CPU (libtorch's CPU autocast; CUDA takes the same path):
    /// every architecture trains, with finite falling losses; weights and gradients stay f32 and
    /// autocast is off again after the run; the trained model evaluates in bf16 within 2% of its
    /// f32 evaluation, but not identically (so the evaluation really ran under autocast).
    #[test]
    fn bf16_autocast_trains_every_architecture_with_f32_weights() {
        let stream = repeating_text_stream();
        for arch in ARCHS {
            let (losses, lm, vs) = train_tiny(arch, 0, Precision::Bf16);
            assert!(losses.iter().all(|l| l.is_finite()), "{arch}: {losses:?}");
            assert_loss_drops(arch, &losses);
            for (name, var) in vs.variables() {
                assert_eq!(var.kind(), tch::Kind::Float, "{arch}: {name} is no longer f32");
                let grad = var.grad();
                assert!(!grad.defined() || grad.kind() == tch::Kind::Float, "{arch}: gradient of {name} is {:?}", grad.kind());
            }
            assert_eq!(crate::autocast::active_kind(Device::Cpu).unwrap(), None, "{arch}: autocast left on");
            let eval = |p| crate::evaluate_with_precision(&lm, &stream, 32, 4, 2048, Device::Cpu, p).unwrap().loss;
            let (f32_loss, bf16_loss) = (eval(Precision::F32), eval(Precision::Bf16));
            let gap = (bf16_loss - f32_loss).abs() / f32_loss;
            assert!(gap < 0.02 && gap > 0.0, "{arch}: evaluation loss f32 {f32_loss:.4} vs bf16 {bf16_loss:.4}");
        }
    }

    #[test]
    fn precision_is_an_enum_named_in_errors_and_left_out_when_f32() {
        let cfg: RunConfig = toml::from_str("[train]\nprecision = \"bf16\"\n").unwrap();
        assert_eq!(cfg.train.precision, Precision::Bf16);
        assert!(toml::to_string(&cfg).unwrap().contains("precision = \"bf16\""));
        let err = toml::from_str::<RunConfig>("train.precision = \"fp16\"\n").unwrap_err().to_string();
        assert!(err.contains("train.precision") && err.contains("unknown variant `fp16`, expected `f32` or `bf16`"), "{err}");
        // an f32 run serialises exactly as before the option existed: run ids stay stable
        assert!(!toml::to_string(&RunConfig::default()).unwrap().contains("precision"));
        assert!(!serde_json::to_string(&RunConfig::default()).unwrap().contains("precision"));
    }

    #[test]
    fn stopping_from_the_callback_interrupts() {
        let mut cfg = RunConfig::default();
        cfg.model = ModelConfig { n_layers: 1, d_model: 16, n_heads: 2, ..Default::default() };
        cfg.attn = AttnConfig { window: 8, ..Default::default() };
        cfg.train = TrainConfig { steps: 10, batch_size: 2, seq_len: 16, warmup_steps: 2, ..Default::default() };
        let vs = nn::VarStore::new(Device::Cpu);
        let lm = cfg.build_model(&vs.root(), 256).unwrap();
        let stream = repeating_text_stream();
        let mut trainer = Trainer::new(&lm, &vs, &cfg, &stream).unwrap();
        let err = trainer.run(&stream, None, |m| if m.step == 2 { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }).unwrap_err();
        assert!(matches!(err, ModelError::Interrupted { step: 2 }), "{err}");
        assert_eq!(trainer.step(), 3, "the step that asked to stop has completed");
    }
}
