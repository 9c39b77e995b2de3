//! Executing one run: data (loaded once per data configuration), model, training, evaluation,
//! and the files of its run folder.
//!
//! `runs/<run_id>/` holds `config.toml` (the resolved configuration), `metrics.csv` (one row per
//! optimiser step, written as training goes), `checkpoint/` (see `bst_model::checkpoint`; kept
//! at the end for `bst-score`) and, once the run has finished, `result.json`. `result.json` is
//! written atomically and is the only mark of a finished run. An interrupted run (Ctrl-C, or a
//! crash after a periodic checkpoint) resumes from its last checkpoint on the next launch, and
//! continues exactly as if it had not stopped.

use std::io::Write;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use anyhow::{Context, Result};
use bst_data::{DataConfig, PreparedData};
use bst_model::{checkpoint, evaluate_with_precision, EvalMetrics, RunConfig, StepMetrics, Trainer};
use serde::{Deserialize, Serialize};
use tch::{nn, Device};

use crate::grid::{point_map, RunSpec};
use crate::provenance::Provenance;

/// Tokenised splits of one data configuration (shared by every run that uses it): the
/// tokenizer, memory-mapped shards and the corpus statistics.
pub type LoadedData = PreparedData;

/// Loads each distinct data configuration once.
#[derive(Default)]
pub struct DataCache {
    /// In the order first asked for, keyed by the configuration's JSON.
    loaded: Vec<(String, Rc<LoadedData>)>,
}

impl DataCache {
    pub fn get(&mut self, cfg: &DataConfig) -> Result<Rc<LoadedData>> {
        let key = serde_json::to_string(cfg)?;
        if let Some((_, data)) = self.loaded.iter().find(|(k, _)| *k == key) {
            return Ok(data.clone());
        }
        let data = LoadedData::load(cfg).with_context(|| format!("preparing the {} corpus from {}", cfg.corpus, cfg.dir.display()))?;
        for why in &data.rebuilt {
            eprintln!("[data] {} / {}: rebuilt {why}", cfg.corpus, cfg.tokenizer_name());
        }
        let data = Rc::new(data);
        self.loaded.push((key, data.clone()));
        Ok(data)
    }

    /// Every data configuration loaded so far.
    pub fn all(&self) -> Vec<Rc<LoadedData>> {
        self.loaded.iter().map(|(_, d)| d.clone()).collect()
    }
}

/// Everything known about a finished run: one row of runs.csv.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    pub run_id: String,
    pub variant: String,
    /// Grid values of this run, by dotted key.
    pub point: std::collections::BTreeMap<String, String>,
    pub seed: u64,
    pub arch: String,
    pub params: usize,
    pub steps: usize,
    pub tokens_seen: usize,
    pub wall_s: f64,
    pub tokens_per_s: f64,
    pub final_train_loss: f64,
    pub valid: EvalMetrics,
    pub test: EvalMetrics,
    /// Test scores at the longer evaluation lengths (`train.eval_length_factors` after 1).
    pub longer: Vec<LengthEval>,
    /// The run continued from a checkpoint of an earlier launch.
    pub resumed_from_step: Option<usize>,
    pub unigram_test_bpb: f64,
    pub provenance: Provenance,
    pub config: RunConfig,
}

/// Test scores at `factor` times the training length.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LengthEval {
    pub factor: usize,
    pub seq_len: usize,
    pub test: EvalMetrics,
}

/// The folder of one run.
pub fn run_dir(results_dir: &Path, run_id: &str) -> PathBuf {
    results_dir.join("runs").join(run_id)
}

/// The record of a finished run, if its folder has a readable one for this configuration.
pub fn finished(results_dir: &Path, spec: &RunSpec) -> Option<RunRecord> {
    let text = std::fs::read_to_string(run_dir(results_dir, &spec.run_id).join("result.json")).ok()?;
    let record: RunRecord = serde_json::from_str(&text).ok()?;
    (record.config == spec.config).then_some(record)
}

/// Writes `path` atomically: a crash leaves either the old file or the new one, never half.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension(format!("{}.tmp", path.extension().and_then(|e| e.to_str()).unwrap_or("")));
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming {} to {}", tmp.display(), path.display()))
}

/// metrics.csv of a run, keeping the rows of steps before `step` (a resumed run rewrites the rest).
fn open_metrics(path: &Path, step: usize) -> Result<std::io::BufWriter<std::fs::File>> {
    const HEADER: &str = "step,loss,lr,grad_norm,tokens_seen,elapsed_s,tokens_per_s";
    let kept: Vec<String> = std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .skip(1)
        .filter(|l| l.split(',').next().and_then(|s| s.parse::<usize>().ok()).is_some_and(|s| s < step))
        .map(String::from)
        .collect();
    let mut file = std::io::BufWriter::new(std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?);
    writeln!(file, "{HEADER}")?;
    for line in kept {
        writeln!(file, "{line}")?;
    }
    Ok(file)
}

/// Trains (or resumes) and evaluates one run. `on_step` sees every step and may stop the run;
/// `log` reports a resume.
pub fn execute(
    spec: &RunSpec,
    data: &LoadedData,
    results_dir: &Path,
    device: Device,
    log: &dyn Fn(String),
    mut on_step: impl FnMut(&StepMetrics) -> ControlFlow<()>,
) -> Result<RunRecord> {
    let cfg = &spec.config;
    let dir = run_dir(results_dir, &spec.run_id);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    write_atomic(&dir.join("config.toml"), toml::to_string_pretty(cfg)?.as_bytes())?;

    let vs = nn::VarStore::new(device);
    let model = cfg.build_model(&vs.root(), data.tokenizer.vocab_size())?;
    let params = bst_model::lm::parameter_count(&vs);
    let mut trainer = Trainer::new(&model, &vs, cfg);
    let ckpt = dir.join("checkpoint");
    let resumed_from_step = if checkpoint::exists(&ckpt) {
        trainer.resume(&ckpt).with_context(|| format!("resuming {spec} (delete {} to restart it from scratch)", ckpt.display()))?;
        log(format!("{spec}: resuming from the checkpoint at step {}", trainer.step()));
        Some(trainer.step())
    } else {
        None
    };
    let mut metrics = open_metrics(&dir.join("metrics.csv"), trainer.step())?;
    let mut io_error = None;
    let outcome = trainer.run(&data.train, Some(&ckpt), |m| {
        if let Err(e) = writeln!(metrics, "{},{},{},{},{},{:.3},{:.1}", m.step, m.loss, m.lr, m.grad_norm, m.tokens_seen, m.elapsed_s, m.tokens_per_s) {
            io_error = Some(e);
            return ControlFlow::Break(());
        }
        on_step(m)
    });
    metrics.flush()?;
    if let Some(e) = io_error {
        return Err(e).context("writing metrics.csv");
    }
    let outcome = outcome?;
    let t = &cfg.train;
    let eval = |stream, factor: usize| evaluate_with_precision(&model, stream, t.seq_len * factor, t.eval_batch_size, t.eval_tokens, device, t.precision);
    let longer = t.eval_length_factors.iter().skip(1).map(|&factor| Ok(LengthEval { factor, seq_len: t.seq_len * factor, test: eval(&data.test, factor)? })).collect::<Result<Vec<_>>>()?;
    let record = RunRecord {
        run_id: spec.run_id.clone(),
        variant: spec.variant.clone(),
        point: point_map(spec),
        seed: cfg.seed,
        arch: cfg.model.arch.to_string(),
        params,
        steps: outcome.steps,
        tokens_seen: outcome.tokens_seen,
        wall_s: outcome.wall_s,
        tokens_per_s: outcome.tokens_seen as f64 / outcome.wall_s,
        final_train_loss: outcome.final_loss,
        valid: eval(&data.valid, 1)?,
        test: eval(&data.test, 1)?,
        longer,
        resumed_from_step,
        unigram_test_bpb: data.stats.unigram_test_bpb,
        provenance: Provenance::now(device),
        config: cfg.clone(),
    };
    write_atomic(&dir.join("result.json"), serde_json::to_string_pretty(&record)?.as_bytes())?;
    Ok(record)
}
