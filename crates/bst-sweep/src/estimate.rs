//! Time estimates for `--dry-run`: the training throughput of each distinct model, measured on
//! random tokens with a few optimiser steps here and now, turned into an estimated time per run.

use std::collections::BTreeMap;
use std::time::Instant;

use bst_model::optimizer::AdamW;
use bst_model::RunConfig;
use tch::{nn, Device, Kind, Tensor};

use crate::grid::RunSpec;

/// Steps timed per model (after one untimed warm-up step).
const TIMED_STEPS: usize = 2;

/// Activation memory a timing step may take here before it is skipped: a GPU profile's model
/// dry-run on a CPU would otherwise train a 200M-parameter model at 4k tokens for minutes and
/// run out of memory.
const MAX_STEP_BYTES: f64 = 4e9;

/// A rough upper bound of a training step's activation memory (about 32 f32 values per token,
/// channel and layer).
fn step_bytes(cfg: &RunConfig) -> f64 {
    let m = &cfg.model;
    (cfg.train.batch_size * cfg.train.seq_len * m.d_model * m.n_layers) as f64 * 32.0 * 4.0
}

/// Training tokens per second of `cfg`'s model on `device` (random tokens, one micro-batch of
/// the run's batch size and length per step); `None` for a model too large to time on the CPU.
fn throughput(cfg: &RunConfig, device: Device) -> Option<f64> {
    if device == Device::Cpu && step_bytes(cfg) > MAX_STEP_BYTES {
        return None;
    }
    let vs = nn::VarStore::new(device);
    let vocab = cfg.lra.as_ref().map_or(cfg.data.vocab(), |_| 256);
    let model = cfg.build_model(&vs.root(), vocab).ok()?;
    let mut opt = AdamW::new(&vs, cfg.train.beta1, cfg.train.beta2, cfg.ssm.lr_scale);
    let (b, l) = (cfg.train.batch_size as i64, cfg.train.seq_len as i64);
    let tokens = Tensor::randint(vocab as i64, [b, l + 1], (Kind::Int64, device));
    let (x, y) = (tokens.narrow(1, 0, l), tokens.narrow(1, 1, l));
    let mut step = || {
        opt.zero_grad();
        model.loss(&x, &y, true).backward();
        opt.step(1e-4, 0.0);
    };
    step();
    bst_core::sync(device);
    let start = Instant::now();
    (0..TIMED_STEPS).for_each(|_| step());
    bst_core::sync(device);
    Some((TIMED_STEPS as i64 * b * l) as f64 / start.elapsed().as_secs_f64())
}

/// The shape of a run for throughput: the configuration without what does not change it.
fn shape_key(cfg: &RunConfig) -> String {
    let mut c = cfg.clone();
    c.seed = 0;
    c.train.steps = 1;
    c.train.warmup_steps = 0;
    serde_json::to_string(&(&c.model, &c.attn, &c.ssm, c.train.batch_size, c.train.seq_len, c.train.precision, c.data.vocab())).expect("configurations serialise")
}

/// Estimated seconds of each run (training plus evaluation), measuring each distinct model once;
/// `None` where the model could not be measured.
pub fn estimate(runs: &[&RunSpec], device: Device) -> Vec<Option<f64>> {
    let mut measured: BTreeMap<String, Option<f64>> = BTreeMap::new();
    runs.iter()
        .map(|r| {
            let c = &r.config;
            let tok_s = *measured.entry(shape_key(c)).or_insert_with(|| throughput(c, device));
            tok_s.map(|t| {
                let train = (c.train.steps * c.train.grad_accum * c.train.batch_size * c.train.seq_len) as f64 / t;
                // evaluation is forward-only (about a third of a training step) on valid, test and
                // the test split again at each longer length
                let eval_tokens = match &c.lra {
                    // a classification run scores its validation and test examples
                    Some(l) => (l.n_valid.unwrap_or(1000) + l.n_test.unwrap_or(1000)) * l.seq_len.unwrap_or(c.train.seq_len),
                    None if c.train.eval_tokens == 0 => 1_000_000,
                    None => c.train.eval_tokens,
                } as f64;
                train + eval_tokens * (1 + c.train.eval_length_factors.len()) as f64 / (3.0 * t)
            })
        })
        .collect()
}
