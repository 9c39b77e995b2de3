//! Sequence classification for the Long Range Arena-style tasks of `bst_data::lra`, on the
//! backbone of any architecture, trained and evaluated by the same optimiser, schedule and
//! precision settings as the language models.
//!
//! The backbone reads the tokens right-padded to `train.seq_len`; its final (normalised) hidden
//! states are averaged over the real positions and a linear head gives class logits. The backbone
//! is causal, so the padding cannot change the states of the real positions. Retrieval encodes both
//! documents with the same backbone and classifies `[a, b, a * b, a - b]` through a small MLP (the
//! LRA dual encoder). The backbone keeps its (unused) next-token head, so parameter counts include it.

use std::ops::ControlFlow;
use std::path::Path;

use bst_data::lra::{LraBatch, LraDataset, LraSampler, Padded};
use bst_data::SplitName;
use bst_core::params::linear;
use serde::{Deserialize, Serialize};
use tch::nn::{self, Module};
use tch::{Device, Kind, Reduction, Tensor};

use crate::checkpoint::{self, Progress, SamplerState};
use crate::optimizer::AdamW;
use crate::train::{optimizer_step, run_steps, Position, StepDone, Steps};
use crate::{Autocast, LanguageModel, ModelError, RunConfig, StepMetrics, TrainOutcome};

/// A backbone with a classification head.
#[derive(Debug)]
pub struct Classifier {
    backbone: LanguageModel,
    head: nn::Sequential,
    seq_len: i64,
}

impl Classifier {
    /// A classifier for `data` with the architecture of `run`; `train.seq_len` must hold the
    /// task's longest input.
    pub fn new(vs: &nn::Path, run: &RunConfig, data: &LraDataset) -> Result<Self, ModelError> {
        if data.seq_len > run.train.seq_len {
            return Err(ModelError::invalid("train.seq_len", run.train.seq_len, format!("must be at least the task's input length {} ({})", data.seq_len, data.task)));
        }
        Self::with_head(vs, run, data.vocab_size, data.num_classes, data.task.is_pair())
    }

    /// The backbone of `run` over `vocab_size` tokens and a head for `classes` classes: linear,
    /// or for a pair task (`pair`) the dual encoder's two-layer MLP.
    pub fn with_head(vs: &nn::Path, run: &RunConfig, vocab_size: usize, classes: usize, pair: bool) -> Result<Self, ModelError> {
        let backbone = run.build_model(&(vs / "backbone"), vocab_size)?;
        let (d, classes) = (run.model.d_model as i64, classes as i64);
        let head = match pair {
            false => nn::seq().add(linear(&(vs / "head" / 0), d, classes)),
            true => nn::seq().add(linear(&(vs / "head" / 0), 4 * d, d)).add_fn(|x| x.relu()).add(linear(&(vs / "head" / 2), d, classes)),
        };
        Ok(Self { backbone, head, seq_len: run.train.seq_len as i64 })
    }

    /// Mean of the final hidden states over the real tokens.
    ///
    /// # Shapes
    /// - `input.tokens`: `[batch, len]` (len <= seq_len), `input.lengths`: `[batch]` -> `[batch, d_model]`
    pub fn encode(&self, input: &Padded, device: Device, train: bool) -> Tensor {
        let tokens = input.tokens.to_device(device);
        let len = tokens.size()[1];
        let tokens = tokens.constant_pad_nd([0, self.seq_len - len]);
        let hidden = self.backbone.hidden(&tokens, train); // [b, seq_len, d]
        let lengths = input.lengths.to_device(device);
        let real = Tensor::arange(self.seq_len, (Kind::Int64, device)).unsqueeze(0).lt_tensor(&lengths.unsqueeze(1)); // [b, seq_len]
        let summed = (hidden.to_kind(Kind::Float) * real.unsqueeze(-1).to_kind(Kind::Float)).sum_dim_intlist(1, false, Kind::Float);
        summed / lengths.clamp_min(1).unsqueeze(1).to_kind(Kind::Float)
    }

    /// Class logits `[batch, classes]` (f32).
    pub fn logits(&self, batch: &LraBatch, device: Device, train: bool) -> Tensor {
        let a = self.encode(&batch.input, device, train);
        let features = match &batch.pair {
            None => a,
            Some(pair) => {
                let b = self.encode(pair, device, train);
                Tensor::cat(&[&a, &b, &(&a * &b), &(&a - &b)], 1)
            }
        };
        self.head.forward(&features).to_kind(Kind::Float)
    }

    /// Mean cross-entropy (nats) and the number of correct predictions of `batch`.
    fn loss_and_correct(&self, batch: &LraBatch, device: Device, train: bool) -> (Tensor, i64) {
        let logits = self.logits(batch, device, train);
        let labels = batch.labels.to_device(device);
        let correct = logits.argmax(-1, false).eq_tensor(&labels).sum(Kind::Int64).int64_value(&[]);
        (logits.cross_entropy_loss::<Tensor>(&labels, None, Reduction::Mean, -100, 0.0), correct)
    }
}

/// Scores of a classifier on one split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ClassifyMetrics {
    pub examples: usize,
    /// Mean cross-entropy, nats.
    pub loss: f64,
    pub accuracy: f64,
}

/// A classification training run in progress, resumable from checkpoints like a language
/// model's: the same optimiser, schedule, clipping, accumulation and precision; tokens count padded
/// positions (the work done).
pub struct ClassifierTrainer<'a> {
    model: &'a Classifier,
    vs: &'a nn::VarStore,
    run: &'a RunConfig,
    data: &'a LraDataset,
    opt: AdamW,
    sampler: LraSampler,
    pos: Position,
}

impl<'a> ClassifierTrainer<'a> {
    pub fn new(model: &'a Classifier, vs: &'a nn::VarStore, run: &'a RunConfig, data: &'a LraDataset) -> Self {
        let t = &run.train;
        Self { model, vs, run, data, opt: AdamW::new(vs, t.beta1, t.beta2, run.ssm.lr_scale), sampler: LraSampler::new(run.seed, t.batch_size), pos: Position::default() }
    }

    /// Steps completed.
    pub fn step(&self) -> usize {
        self.pos.step
    }

    /// Continues from the checkpoint in `dir` (weights, optimiser, sampler, step).
    pub fn resume(&mut self, dir: &Path) -> Result<(), ModelError> {
        let loaded = checkpoint::load(dir, self.vs, &mut self.opt)?;
        let Progress { step, tokens_seen, elapsed_s, sampler, last_loss } = loaded.state.progress;
        let SamplerState::Lra(sampler) = sampler else {
            return Err(ModelError::Checkpoint { path: dir.to_owned(), reason: "a language model's checkpoint, not a classifier's".into() });
        };
        (self.pos, self.sampler) = (Position { step, tokens_seen, elapsed_before: elapsed_s, last_loss }, sampler);
        Ok(())
    }

    /// Writes a checkpoint of the current position to `dir`.
    pub fn save(&self, dir: &Path, elapsed_s: f64) -> Result<(), ModelError> {
        let progress = Progress { step: self.pos.step, tokens_seen: self.pos.tokens_seen, elapsed_s, sampler: SamplerState::Lra(self.sampler.clone()), last_loss: self.pos.last_loss };
        checkpoint::save(dir, self.vs, &self.opt, &[], self.run, progress)
    }

    /// Trains until `train.steps`, checkpointing into `checkpoint_dir` as a language model's
    /// trainer does; `on_step` sees each step and may stop the run (`Interrupted`).
    pub fn run(&mut self, checkpoint_dir: Option<&Path>, mut on_step: impl FnMut(&StepMetrics) -> ControlFlow<()>) -> Result<TrainOutcome, ModelError> {
        let (train, device) = (&self.run.train, self.vs.device());
        run_steps(self, train, device, checkpoint_dir, &mut on_step)
    }
}

impl Steps for ClassifierTrainer<'_> {
    fn position(&mut self) -> &mut Position {
        &mut self.pos
    }

    fn step(&mut self, step: usize) -> Result<StepDone, ModelError> {
        let (model, data, device, seq_len) = (self.model, self.data, self.vs.device(), self.run.train.seq_len);
        let sampler = &mut self.sampler;
        optimizer_step(&mut self.opt, self.run, device, step, "the classification loss", || {
            let batch = sampler.next_batch(data)?;
            let tokens = batch.size() * seq_len * if batch.pair.is_some() { 2 } else { 1 };
            Ok((model.loss_and_correct(&batch, device, true).0, tokens))
        })
    }

    fn save(&self, dir: &Path, elapsed_s: f64) -> Result<(), ModelError> {
        ClassifierTrainer::save(self, dir, elapsed_s)
    }
}

/// Loss and accuracy on a whole split, in fixed order, at `precision`.
pub fn evaluate_classifier(model: &Classifier, data: &LraDataset, split: SplitName, run: &RunConfig, device: Device) -> Result<ClassifyMetrics, ModelError> {
    let _autocast = Autocast::enter(device, run.train.precision)?;
    let (mut nll, mut correct, mut examples) = (0.0, 0, 0);
    tch::no_grad(|| {
        for batch in data.eval_batches(split, run.train.eval_batch_size) {
            let (loss, c) = model.loss_and_correct(&batch, device, false);
            nll += loss.double_value(&[]) * batch.size() as f64;
            correct += c;
            examples += batch.size();
        }
    });
    if examples == 0 {
        return Err(ModelError::invalid("lra", split, "the split has no examples"));
    }
    Ok(ClassifyMetrics { examples, loss: nll / examples as f64, accuracy: correct as f64 / examples as f64 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bst_data::lra::{Example, LraTask};

    /// "Does the sequence contain token 7 anywhere?": position-independent, so it needs a state
    /// that spans the sequence, and easy enough for a few dozen steps.
    fn contains_seven(n: usize, seed: u64) -> Vec<Example> {
        let mut x = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        let mut next = || {
            x = x.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (x >> 33) as u32
        };
        (0..n)
            .map(|i| {
                let len = 20 + (next() % 40) as usize;
                let mut tokens: Vec<u32> = (0..len).map(|_| next() % 7).collect();
                let label = (i % 2) as u32;
                if label == 1 {
                    let at = next() as usize % len;
                    tokens[at] = 7;
                }
                Example { tokens, pair: None, label }
            })
            .collect()
    }

    fn dataset() -> LraDataset {
        LraDataset {
            task: LraTask::ListOps,
            vocab_size: 9,
            pad_id: 8,
            num_classes: 2,
            seq_len: 64,
            train: contains_seven(256, 1),
            valid: contains_seven(64, 2),
            test: contains_seven(64, 3),
            description: "test task".into(),
        }
    }

    fn run(arch: &str) -> RunConfig {
        let mut run: RunConfig = toml::from_str(&format!(
            "[model]\narch = \"{arch}\"\nn_layers = 2\nd_model = 32\nn_heads = 2\nssm_layers = [{}]\n[attn]\nwindow = 16\n[train]\nsteps = 60\nbatch_size = 16\nseq_len = 64\nlr = 3e-3\nwarmup_steps = 5\neval_batch_size = 32",
            if arch.starts_with("BST") { "0" } else { "" }
        ))
        .unwrap();
        run.seed = 3;
        run
    }

    #[test]
    fn padding_does_not_change_the_encoding() {
        let data = dataset();
        let cfg = run("BST:SH:S4D");
        let vs = nn::VarStore::new(Device::Cpu);
        let model = Classifier::new(&vs.root(), &cfg, &data).unwrap();
        let ex = &data.train[0];
        let short = data.collate(&[ex]);
        let noisy = short.input.tokens.copy();
        let len = ex.tokens.len() as i64;
        let _ = noisy.narrow(1, len, 64 - len).fill_(3); // garbage after the real tokens
        let a = model.encode(&short.input, Device::Cpu, false);
        let b = model.encode(&Padded { tokens: noisy, lengths: short.input.lengths.copy() }, Device::Cpu, false);
        assert!(a.allclose(&b, 1e-6, 1e-6, false), "causal backbone + masked mean: padding content must not matter");
    }

    #[test]
    fn bst_learns_a_sequence_level_label() {
        let data = dataset();
        let cfg = run("BST:SH:S4D");
        let vs = nn::VarStore::new(Device::Cpu);
        let model = Classifier::new(&vs.root(), &cfg, &data).unwrap();
        let before = evaluate_classifier(&model, &data, SplitName::Valid, &cfg, Device::Cpu).unwrap();
        let outcome = ClassifierTrainer::new(&model, &vs, &cfg, &data).run(None, |_| ControlFlow::Continue(())).unwrap();
        let after = evaluate_classifier(&model, &data, SplitName::Valid, &cfg, Device::Cpu).unwrap();
        assert_eq!(outcome.steps, 60);
        assert!(after.loss < before.loss, "valid loss {} -> {}", before.loss, after.loss);
        assert!(after.accuracy >= 0.75, "valid accuracy {} (chance 0.5)", after.accuracy);
    }

    #[test]
    fn too_short_a_training_length_is_rejected() {
        let data = dataset();
        let mut cfg = run("SLIDE");
        cfg.train.seq_len = 32;
        let vs = nn::VarStore::new(Device::Cpu);
        let err = Classifier::new(&vs.root(), &cfg, &data).unwrap_err().to_string();
        assert!(err.contains("train.seq_len"), "{err}");
    }
}
