//! Executing one run: data (loaded once per data configuration), model, training, evaluation,
//! and the files of its run folder.
//!
//! `runs/<run_id>/` holds `config.toml` (the resolved configuration), `tokenizer.json` (with a BPE
//! tokenizer), `metrics.csv` (one row per optimiser step, written as training goes),
//! `checkpoint/` (see `bst_model::checkpoint`; kept at the end for `bst-score`), `launches.jsonl`
//! (every launch that worked on the run, from which step: see [`RunLaunch`]) and, once the
//! run has finished, `result.json`. `result.json` is written atomically and is the only mark of a
//! finished run. An interrupted run (Ctrl-C, or a crash after a periodic checkpoint) resumes from
//! its last checkpoint on the next launch, and continues exactly as if it had not stopped.

use std::io::Write;
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use bst_data::lra::{LraConfig, LraDataset};
use bst_data::{Corpus, DataConfig, PreparedData, Sampling, SplitName};
use bst_model::{checkpoint, evaluate_classifier, evaluate_with_precision, AnswerMetrics, Classifier, ClassifierTrainer, EvalMetrics, ModelError, RunConfig, StepMetrics, TrainOutcome, Trainer};
use serde::{Deserialize, Serialize};
use tch::{nn, Device};

use crate::error::{write_atomically, SweepError};
use crate::grid::{display_value, RunSpec};
use crate::provenance::Provenance;

type Result<T, E = SweepError> = std::result::Result<T, E>;

/// Tokenised splits of one data configuration (shared by every run that uses it): the
/// tokenizer, memory-mapped shards and the corpus statistics.
pub type LoadedData = PreparedData;

/// The data one run trains on.
#[derive(Clone)]
pub enum RunData {
    /// A language-modelling corpus.
    Lm(Rc<LoadedData>),
    /// A Long Range Arena-style classification task.
    Lra(Rc<LraDataset>),
}

/// Loads each distinct data configuration once.
#[derive(Default)]
pub struct DataCache {
    /// In the order first asked for, keyed by the configuration's JSON.
    loaded: Vec<(String, Rc<LoadedData>)>,
    lra: Vec<(String, Rc<LraDataset>)>,
}

impl DataCache {
    pub fn get(&mut self, cfg: &DataConfig) -> Result<Rc<LoadedData>> {
        // how windows are sampled does not change the data
        let key = serde_json::to_string(&DataConfig { sampling: Sampling::Auto, ..cfg.clone() }).expect("a data configuration serialises");
        if let Some((_, data)) = self.loaded.iter().find(|(k, _)| *k == key) {
            return Ok(data.clone());
        }
        let data = LoadedData::load(cfg)?;
        for why in &data.rebuilt {
            eprintln!("[data] {} / {}: rebuilt {why}", cfg.corpus, cfg.tokenizer_name());
        }
        let data = Rc::new(data);
        self.loaded.push((key, data.clone()));
        Ok(data)
    }

    /// The LRA task of a classification run (Retrieval pairs documents of `[data]`'s corpus).
    fn get_lra(&mut self, lra: &LraConfig, corpus: &DataConfig) -> Result<Rc<LraDataset>> {
        let key = serde_json::to_string(&(lra, corpus)).expect("task configurations serialise");
        if let Some((_, data)) = self.lra.iter().find(|(k, _)| *k == key) {
            return Ok(data.clone());
        }
        let data = if lra.task.is_pair() {
            let c = Corpus::load(corpus)?;
            let docs: Vec<_> = [c.train, c.valid, c.test].into_iter().flat_map(|s| s.documents).collect();
            LraDataset::retrieval(lra, &docs)?
        } else {
            LraDataset::load(lra)?
        };
        let data = Rc::new(data);
        self.lra.push((key, data.clone()));
        Ok(data)
    }

    /// What `cfg` trains on.
    pub fn for_run(&mut self, cfg: &RunConfig) -> Result<RunData> {
        Ok(match &cfg.lra {
            Some(lra) => RunData::Lra(self.get_lra(lra, &cfg.data)?),
            None => RunData::Lm(self.get(&cfg.data)?),
        })
    }

    /// Every language-modelling corpus loaded so far.
    pub fn all(&self) -> Vec<Rc<LoadedData>> {
        self.loaded.iter().map(|(_, d)| d.clone()).collect()
    }

    /// Every LRA task loaded so far.
    pub fn all_lra(&self) -> Vec<Rc<LraDataset>> {
        self.lra.iter().map(|(_, d)| d.clone()).collect()
    }
}

/// Everything known about a finished run: one row of runs.csv.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRecord {
    pub run_id: String,
    /// The variant (in the first study that has this run).
    pub variant: String,
    /// Every study that has this run.
    #[serde(default)]
    pub studies: Vec<String>,
    /// Grid values of this run, by dotted key.
    pub point: std::collections::BTreeMap<String, String>,
    pub seed: u64,
    pub arch: String,
    /// The layers that are not SLIDE, numbered from 1 as in the paper (`"2 BST:SH:S4D"`).
    #[serde(default)]
    pub placement: String,
    /// How training windows were drawn (`random` or `sequential`).
    #[serde(default)]
    pub sampling: String,
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
    /// Length generalisation on the same targets (`train.length_eval`).
    #[serde(default)]
    pub length_eval: Vec<bst_model::LengthResult>,
    /// The run continued from a checkpoint of an earlier launch.
    pub resumed_from_step: Option<usize>,
    /// Every launch that worked on the run, in order (empty in records from before they were
    /// kept): which code trained which steps, and which only evaluated.
    #[serde(default)]
    pub launches: Vec<RunLaunch>,
    #[serde(deserialize_with = "bst_model::eval::f64_or_nan")]
    pub unigram_test_bpb: f64,
    /// The launch that finished the run: its last evaluation.
    pub provenance: Provenance,
    pub config: RunConfig,
}

/// One launch that worked on a run: the step it started from and where it ran. A launch that
/// starts at the final step trains nothing and only evaluates (after `result.json` was removed
/// to score a finished run again, e.g. after a fix to evaluation).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunLaunch {
    pub from_step: usize,
    pub provenance: Provenance,
}

impl RunRecord {
    /// The launches that trained steps of this run; the finishing launch's for records from
    /// before launches were kept.
    pub fn training_provenance(&self) -> Vec<&Provenance> {
        let trained: Vec<&Provenance> = self.launches.iter().filter(|l| l.from_step < self.steps).map(|l| &l.provenance).collect();
        if trained.is_empty() { vec![&self.provenance] } else { trained }
    }

    /// Whether the launch that finished the run trained nothing: it evaluated a run whose
    /// training an earlier launch had finished.
    pub fn evaluated_again(&self) -> bool {
        self.launches.len() > 1 && self.launches.last().is_some_and(|l| l.from_step >= self.steps)
    }
}

/// Test scores at `factor` times the training length.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LengthEval {
    pub factor: usize,
    pub seq_len: usize,
    pub test: EvalMetrics,
}

/// The evaluations of a finished run.
struct Scores {
    valid: EvalMetrics,
    test: EvalMetrics,
    longer: Vec<LengthEval>,
    length_eval: Vec<bst_model::LengthResult>,
    unigram_test_bpb: f64,
}

impl RunRecord {
    fn new(spec: &RunSpec, params: usize, outcome: &TrainOutcome, scores: Scores, launches: Vec<RunLaunch>, device: Device) -> Self {
        let cfg = &spec.config;
        Self {
            run_id: spec.run_id.clone(),
            variant: spec.variant().to_owned(),
            studies: spec.studies().iter().map(|s| s.to_string()).collect(),
            point: spec.point().iter().map(|(k, v)| (k.clone(), display_value(v))).collect(),
            seed: cfg.seed,
            arch: cfg.model.arch.to_string(),
            placement: spec.plan.placement(),
            sampling: if cfg.lra.is_some() { "random".into() } else { cfg.sampling(&spec.plan).to_string() },
            params,
            steps: outcome.steps,
            tokens_seen: outcome.tokens_seen,
            wall_s: outcome.wall_s,
            tokens_per_s: outcome.tokens_seen as f64 / outcome.wall_s,
            final_train_loss: outcome.final_loss,
            valid: scores.valid,
            test: scores.test,
            longer: scores.longer,
            length_eval: scores.length_eval,
            resumed_from_step: launches.last().map(|l| l.from_step).filter(|&s| s > 0),
            launches,
            unigram_test_bpb: scores.unigram_test_bpb,
            provenance: Provenance::now(device),
            config: cfg.clone(),
        }
    }
}

/// The folder of one run.
pub fn run_dir(results_dir: &Path, run_id: &str) -> PathBuf {
    results_dir.join("runs").join(run_id)
}

/// A run that failed: the error, where training stopped, and the configuration.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunFailure {
    pub run_id: String,
    pub variant: String,
    pub seed: u64,
    pub arch: String,
    /// `diverged` (a non-finite loss or gradient stopped training) or `failed` (any other error).
    pub status: String,
    pub error: String,
    pub provenance: Provenance,
    pub config: RunConfig,
}

impl RunFailure {
    fn new(spec: &RunSpec, error: &SweepError, device: Device) -> Self {
        let diverged = matches!(error, SweepError::Model(ModelError::NonFinite { .. }));
        Self {
            run_id: spec.run_id.clone(),
            variant: spec.variant().to_owned(),
            seed: spec.config.seed,
            arch: spec.config.model.arch.to_string(),
            status: if diverged { "diverged" } else { "failed" }.into(),
            error: error.to_string(),
            provenance: Provenance::now(device),
            config: spec.config.clone(),
        }
    }
}

/// How a run ended, as its folder records it.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// `result.json`: trained and evaluated.
    Finished(Box<RunRecord>),
    /// `failure.json`: stopped by an error (kept, so that a rerun does not repeat it unless asked).
    Failed(Box<RunFailure>),
}

impl Outcome {
    pub fn record(&self) -> Option<&RunRecord> {
        match self {
            Outcome::Finished(r) => Some(r),
            Outcome::Failed(_) => None,
        }
    }
}

/// How `spec` ended in an earlier launch, if its folder says so for this very configuration.
pub fn outcome(results_dir: &Path, spec: &RunSpec) -> Option<Outcome> {
    let dir = run_dir(results_dir, &spec.run_id);
    let read = |name: &str| std::fs::read_to_string(dir.join(name)).ok();
    if let Some(record) = read("result.json").and_then(|t| serde_json::from_str::<RunRecord>(&t).ok()) {
        return (record.config == spec.config).then(|| Outcome::Finished(Box::new(record)));
    }
    let failure = read("failure.json").and_then(|t| serde_json::from_str::<RunFailure>(&t).ok())?;
    (failure.config == spec.config).then(|| Outcome::Failed(Box::new(failure)))
}

/// metrics.csv of a run, keeping the complete rows of steps before `step` (a resumed run rewrites
/// the rest; a row cut short by a kill is dropped), opened for appending one row per step.
fn open_metrics(path: &Path, step: usize) -> Result<std::fs::File> {
    const HEADER: &str = "step,loss,lr,grad_norm,tokens_seen,elapsed_s,tokens_per_s";
    let complete = |l: &&str| {
        let cells: Vec<&str> = l.split(',').collect();
        cells.len() == 7 && cells[0].parse::<usize>().is_ok_and(|s| s < step) && cells[1..].iter().all(|c| c.parse::<f64>().is_ok())
    };
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let kept: String = text.lines().skip(1).filter(complete).map(|l| format!("{l}\n")).collect();
    write_atomically(path, format!("{HEADER}\n{kept}").as_bytes())?;
    std::fs::OpenOptions::new().append(true).open(path).map_err(SweepError::io(path))
}

/// Trains (or resumes) and evaluates one run, and records how it ended in its folder:
/// `result.json` when it finished, `failure.json` when an error (a divergence included) stopped
/// it. An interruption records nothing (the checkpoint is the record) and is returned as the
/// error. `on_step` sees every step and may stop the run; `log` reports a resume.
pub fn execute(
    spec: &RunSpec,
    data: &RunData,
    results_dir: &Path,
    device: Device,
    log: &dyn Fn(String),
    on_step: impl FnMut(&StepMetrics) -> ControlFlow<()>,
) -> Result<Outcome> {
    let dir = run_dir(results_dir, &spec.run_id);
    write_atomically(&dir.join("config.toml"), config_file(spec).as_bytes())?;
    let _ = std::fs::remove_file(dir.join("failure.json")); // retried: the old failure no longer holds
    let trained = match data {
        RunData::Lm(data) => execute_lm(spec, data, &dir, device, log, on_step),
        RunData::Lra(data) => execute_lra(spec, data, &dir, device, log, on_step),
    };
    match trained {
        Ok(record) => {
            write_atomically(&dir.join("result.json"), serde_json::to_string_pretty(&record).expect("a run record serialises").as_bytes())?;
            Ok(Outcome::Finished(Box::new(record)))
        }
        Err(e) if e.is_interrupt() => Err(e),
        Err(e) => {
            let failure = RunFailure::new(spec, &e, device);
            write_atomically(&dir.join("failure.json"), serde_json::to_string_pretty(&failure).expect("a failure serialises").as_bytes())?;
            Ok(Outcome::Failed(Box::new(failure)))
        }
    }
}

/// A run's `config.toml`: its layer plan (1-based, as the paper counts layers), then the resolved
/// configuration, which is all a reader needs (`bst-score` rebuilds the model from it).
pub fn config_file(spec: &RunSpec) -> String {
    let body = toml::to_string_pretty(&spec.config).expect("a run configuration serialises");
    format!("# run {} ({spec})\n# layers, numbered from 1 as in the paper: {}\n\n{body}", spec.run_id, spec.plan)
}

/// Runs `train` with a step callback that appends each step to metrics.csv (keeping the rows of
/// steps before `from_step`) and then passes it to `on_step`. A write error stops training and is
/// what is returned.
fn train_logging_steps(
    path: &Path,
    from_step: usize,
    mut on_step: impl FnMut(&StepMetrics) -> ControlFlow<()>,
    train: impl FnOnce(&mut dyn FnMut(&StepMetrics) -> ControlFlow<()>) -> Result<TrainOutcome, bst_model::ModelError>,
) -> Result<TrainOutcome> {
    let mut metrics = open_metrics(path, from_step)?;
    let mut io_error = None;
    let outcome = train(&mut |m: &StepMetrics| {
        let line = format!("{},{},{},{},{},{:.3},{:.1}\n", m.step, m.loss, m.lr, m.grad_norm, m.tokens_seen, m.elapsed_s, m.tokens_per_s);
        if let Err(e) = metrics.write_all(line.as_bytes()) {
            io_error = Some(e);
            return ControlFlow::Break(());
        }
        on_step(m)
    });
    if let Some(e) = io_error {
        return Err(SweepError::io(path)(e));
    }
    Ok(outcome?)
}

/// A language model: train (or resume) on the corpus, evaluate at every evaluation length.
fn execute_lm(
    spec: &RunSpec,
    data: &LoadedData,
    dir: &Path,
    device: Device,
    log: &dyn Fn(String),
    on_step: impl FnMut(&StepMetrics) -> ControlFlow<()>,
) -> Result<RunRecord> {
    let cfg = &spec.config;
    // A trained BPE belongs with the run, so that bst-score works even after data/ is refetched.
    let bpe = data.cache_dir.join("tokenizer.json");
    if bpe.exists() {
        write_atomically(&dir.join("tokenizer.json"), &std::fs::read(&bpe).map_err(SweepError::io(&bpe))?)?;
    }
    let vs = nn::VarStore::new(device);
    let model = cfg.build_model(&vs.root(), data.tokenizer.vocab_size())?;
    let params = bst_model::lm::parameter_count(&vs);
    let mut trainer = Trainer::new(&model, &vs, cfg, &data.train)?;
    let ckpt = dir.join("checkpoint");
    let from_step = resume(spec, &ckpt, log, |c| trainer.resume(c).map(|()| trainer.step()))?;
    let launches = record_launch(dir, from_step, device)?;
    let outcome = train_logging_steps(&dir.join("metrics.csv"), trainer.step(), on_step, |steps| trainer.run(&data.train, Some(&ckpt), steps))?;
    let t = &cfg.train;
    let eval = |stream, factor: usize| evaluate_with_precision(&model, stream, t.seq_len * factor, t.eval_batch_size, t.eval_tokens, device, t.precision);
    let longer = t.eval_length_factors.iter().skip(1).map(|&factor| Ok(LengthEval { factor, seq_len: t.seq_len * factor, test: eval(&data.test, factor)? })).collect::<Result<Vec<_>, ModelError>>()?;
    let length_eval = match &t.length_eval {
        Some(le) => bst_model::evaluate_lengths(&model, &data.test, t.seq_len, le, device, t.precision)?,
        None => Vec::new(),
    };
    let scores = Scores { valid: eval(&data.valid, 1)?, test: eval(&data.test, 1)?, longer, length_eval, unigram_test_bpb: data.stats.unigram_test_bpb };
    Ok(RunRecord::new(spec, params, &outcome, scores, launches, device))
}

/// A classifier on an LRA task: train (or resume from its checkpoint), evaluate accuracy. Its
/// valid/test metrics hold the cross-entropy per example and, as `answers`, the accuracy; bits
/// per byte do not apply (NaN).
fn execute_lra(spec: &RunSpec, data: &LraDataset, dir: &Path, device: Device, log: &dyn Fn(String), on_step: impl FnMut(&StepMetrics) -> ControlFlow<()>) -> Result<RunRecord> {
    let cfg = &spec.config;
    let vs = nn::VarStore::new(device);
    let model = Classifier::new(&vs.root(), cfg, data)?;
    let params = bst_model::lm::parameter_count(&vs);
    let mut trainer = ClassifierTrainer::new(&model, &vs, cfg, data);
    let ckpt = dir.join("checkpoint");
    let from_step = resume(spec, &ckpt, log, |c| trainer.resume(c).map(|()| trainer.step()))?;
    let launches = record_launch(dir, from_step, device)?;
    let outcome = train_logging_steps(&dir.join("metrics.csv"), trainer.step(), on_step, |steps| trainer.run(Some(&ckpt), steps))?;
    let eval = |split| -> Result<EvalMetrics> {
        let c = evaluate_classifier(&model, data, split, cfg, device)?;
        let bits = c.loss / std::f64::consts::LN_2;
        let answers = Some(AnswerMetrics { count: c.examples, accuracy: c.accuracy, bits, by_distance: Vec::new() });
        Ok(EvalMetrics { tokens: c.examples, bytes: f64::NAN, loss: c.loss, ppl: c.loss.exp(), bits_per_token: bits, bits_per_byte: f64::NAN, answers })
    };
    let scores = Scores { valid: eval(SplitName::Valid)?, test: eval(SplitName::Test)?, longer: Vec::new(), length_eval: Vec::new(), unigram_test_bpb: f64::NAN };
    Ok(RunRecord::new(spec, params, &outcome, scores, launches, device))
}

/// Resumes from the checkpoint in `ckpt` if there is one (`load` restores it and returns the step
/// reached); the step training starts from (0 without a checkpoint).
fn resume(spec: &RunSpec, ckpt: &Path, log: &dyn Fn(String), load: impl FnOnce(&Path) -> Result<usize, ModelError>) -> Result<usize> {
    if !checkpoint::exists(ckpt) {
        return Ok(0);
    }
    let step = load(ckpt).map_err(|source| SweepError::Resume { run: spec.to_string(), checkpoint: ckpt.to_owned(), source })?;
    log(format!("{spec}: resuming from the checkpoint at step {step}"));
    Ok(step)
}

/// Adds this launch to the run's `launches.jsonl` before it trains (so that a launch killed
/// mid-run is recorded too) and returns every launch so far. A launch from step 0 starts the
/// list afresh: what earlier launches trained is gone with their checkpoint. A line torn by a
/// kill is skipped.
fn record_launch(dir: &Path, from_step: usize, device: Device) -> Result<Vec<RunLaunch>> {
    let path = dir.join("launches.jsonl");
    let line = serde_json::to_string(&RunLaunch { from_step, provenance: Provenance::now(device) }).expect("a launch serialises");
    let mut file = std::fs::OpenOptions::new().create(true).append(from_step > 0).write(true).truncate(from_step == 0).open(&path).map_err(SweepError::io(&path))?;
    file.write_all(format!("{line}\n").as_bytes()).and_then(|()| file.sync_all()).map_err(SweepError::io(&path))?;
    let text = std::fs::read_to_string(&path).map_err(SweepError::io(&path))?;
    Ok(text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect())
}
