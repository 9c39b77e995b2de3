//! bst-sweep: from a TOML grid to trained runs, `runs.csv`, plots and a report.
//!
//! `Sweep::load` expands and validates every run before anything starts; `run_sweep` then trains
//! the runs that have no finished record yet, rewriting runs.csv after each one, so a crash or
//! Ctrl-C loses no finished result and a rerun resumes where it stopped.

pub mod error; // SweepError: what a sweep can fail on (Interrupted is a variant)
pub mod grid; // sweep TOML: [sweep], [base], [grid], [[variant]], [profiles.*] -> validated RunSpecs
pub mod plot; // PNG + SVG charts: test bits/byte per variant, training-loss curves
pub mod provenance; // git commit, device and date of a result
pub mod report; // report.md and the console summary table
pub mod results; // runs.csv: one row per finished run
pub mod run; // one run: data cache, training, evaluation, its folder and result.json

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::ops::ControlFlow;

use bst_model::DeviceChoice;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

pub use error::SweepError;
pub use grid::{GridError, Override, RunSpec, Sweep};
pub use run::RunRecord;

use crate::error::write_atomically;

type Result<T, E = SweepError> = std::result::Result<T, E>;

/// How to run a sweep (the command line, as a struct).
#[derive(Debug, Clone)]
pub struct SweepOptions {
    pub file: PathBuf,
    pub profile: Option<String>,
    pub overrides: Vec<Override>,
    /// Parent of `<sweep name>/`.
    pub results_root: PathBuf,
    pub device: DeviceChoice,
    /// Only list the runs.
    pub dry_run: bool,
    /// Set (e.g. by a Ctrl-C handler) to stop after the current step.
    pub stop: Arc<AtomicBool>,
    /// Show progress bars (they are hidden anyway when stderr is not a terminal).
    pub progress: bool,
    /// The command line, recorded in the report.
    pub command: String,
}

impl SweepOptions {
    pub fn new(file: impl Into<PathBuf>) -> Self {
        Self {
            file: file.into(),
            profile: None,
            overrides: Vec::new(),
            results_root: PathBuf::from("results"),
            device: DeviceChoice::Auto,
            dry_run: false,
            stop: Arc::new(AtomicBool::new(false)),
            progress: true,
            command: String::from("bst-sweep"),
        }
    }
}

/// What a sweep produced.
#[derive(Debug)]
pub struct SweepOutcome {
    pub sweep: Sweep,
    pub results_dir: PathBuf,
    pub records: Vec<RunRecord>,
    /// Runs found finished from an earlier launch.
    pub reused: usize,
    pub trained: usize,
    pub files: Vec<PathBuf>,
    /// The console summary (also printed).
    pub summary: String,
}

fn step_style() -> ProgressStyle {
    ProgressStyle::with_template("{prefix:>12} [{bar:30}] {pos}/{len} steps  {msg}  eta {eta}").expect("valid template").progress_chars("=> ")
}

/// Loads, validates and runs a sweep; see the crate docs.
pub fn run_sweep(opts: &SweepOptions) -> Result<SweepOutcome> {
    let sweep = Sweep::load(&opts.file, opts.profile.as_deref(), &opts.overrides)?;
    let plot_x = match &sweep.meta.plot_x {
        Some(k) if !sweep.grid_keys.contains(k) => {
            let message = format!("sweep.plot_x = `{k}` is not a grid key (grid keys: {})", sweep.grid_keys.join(", "));
            return Err(GridError { file: opts.file.clone(), message }.into());
        }
        Some(k) => Some(k.clone()),
        None => sweep.grid_keys.first().cloned(),
    };
    if opts.dry_run {
        let summary = sweep.runs.iter().map(|r| format!("{r}  [{}]  layers: {}", r.run_id, r.plan)).collect::<Vec<_>>().join("\n");
        println!("{summary}\n{} runs", sweep.runs.len());
        let results_dir = sweep.results_dir(&opts.results_root);
        return Ok(SweepOutcome { sweep, results_dir, records: vec![], reused: 0, trained: 0, files: vec![], summary });
    }
    let device = opts.device.resolve()?;
    // Load every data configuration up front: a missing corpus fails before any training.
    let mut data = run::DataCache::default();
    for spec in &sweep.runs {
        data.for_run(&spec.config)?;
    }
    let results_dir = sweep.results_dir(&opts.results_root);
    std::fs::create_dir_all(results_dir.join("runs")).map_err(SweepError::io(&results_dir))?;
    write_atomically(&results_dir.join("sweep.toml"), &std::fs::read(&opts.file).map_err(SweepError::io(&opts.file))?)?;
    let csv_path = results_dir.join("runs.csv");

    let bars = MultiProgress::with_draw_target(if opts.progress { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() });
    let overall = bars.add(ProgressBar::new(sweep.runs.len() as u64));
    overall.set_style(ProgressStyle::with_template("{prefix:>12} [{bar:30}] {pos}/{len} runs  elapsed {elapsed}  eta {eta}").expect("valid template").progress_chars("=> "));
    overall.set_prefix(sweep.meta.name.clone());
    let log = |line: String| bars.suspend(|| eprintln!("{line}"));
    let log: &dyn Fn(String) = &log;

    let (mut records, mut reused, mut trained) = (Vec::new(), 0, 0);
    let mut interrupted = None;
    for spec in &sweep.runs {
        if let Some(record) = run::finished(&results_dir, spec) {
            log(format!("{spec}: finished earlier, {} (reused)", report::headline(&record)));
            records.push(record);
            reused += 1;
            overall.inc(1);
            continue;
        }
        if interrupted.is_some() {
            continue; // after an interrupt, only collect what finished earlier
        }
        let bar = bars.add(ProgressBar::new(spec.config.train.steps as u64));
        bar.set_style(step_style());
        bar.set_prefix(format!("run {}/{}", spec.index + 1, sweep.runs.len()));
        log(format!("{spec}: training {} ({} steps of {}x{} tokens)", spec.config.model.arch, spec.config.train.steps, spec.config.train.batch_size, spec.config.train.seq_len));
        let loaded = data.for_run(&spec.config)?;
        let result = run::execute(spec, &loaded, &results_dir, device, &log, |m| {
            bar.set_position(m.step as u64 + 1);
            if m.step % 5 == 0 {
                bar.set_message(format!("loss {:.3}  {:.0} tok/s", m.loss, m.tokens_per_s));
            }
            if opts.stop.load(Ordering::SeqCst) { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
        });
        bar.finish_and_clear();
        match result {
            Ok(record) => {
                log(format!("{spec}: done in {:.0} s, {:.0} tok/s, {}", record.wall_s, record.tokens_per_s, report::headline(&record)));
                records.push(record);
                trained += 1;
                overall.inc(1);
                results::write_csv(&csv_path, &sweep.grid_keys, &records)?;
            }
            Err(e) if e.is_interrupt() => {
                interrupted = Some(spec.to_string());
            }
            Err(e) => {
                results::write_csv(&csv_path, &sweep.grid_keys, &records)?;
                return Err(SweepError::RunFailed { run: spec.to_string(), csv: csv_path, source: Box::new(e) });
            }
        }
    }
    overall.finish_and_clear();
    results::write_csv(&csv_path, &sweep.grid_keys, &records)?;
    let mut files = vec![csv_path];
    if let Some(run) = interrupted {
        return Err(SweepError::Interrupted { run, finished: records.len(), csv: files.remove(0) });
    }
    let mut plots = Vec::new();
    for metric in plot::Metric::ALL.into_iter().filter(|m| records.iter().any(|r| m.of(&r.test).is_some())) {
        files.extend(plot::render(&plot::metric_chart(&sweep.meta.name, &records, plot_x.as_deref(), metric), &results_dir.join(metric.file_stem()))?);
        plots.push(format!("{}.png", metric.file_stem()));
    }
    let curves = records
        .iter()
        .map(|r| {
            let label = [r.variant.clone()].into_iter().chain(r.point.iter().map(|(k, v)| format!("{k}={v}"))).chain([format!("seed={}", r.seed)]).collect::<Vec<_>>().join(" ");
            Ok((label, plot::read_loss_curve(&run::run_dir(&results_dir, &r.run_id).join("metrics.csv"))?))
        })
        .collect::<Result<Vec<_>>>()?;
    files.extend(plot::render(&plot::loss_chart(&sweep.meta.name, curves, 20), &results_dir.join("loss_curves"))?);
    plots.push("loss_curves.png".into());
    let data_text = report::data_summary(&data.all(), &data.all_lra());
    let report = report::markdown(&sweep, &records, &data_text, &plots, &opts.command);
    let report_path = results_dir.join("report.md");
    write_atomically(&report_path, report.as_bytes())?;
    files.push(report_path);
    let summary = format!("{}\n{}\nWrote: {}", report::table(&sweep, &records), data_text, files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", "));
    Ok(SweepOutcome { sweep, results_dir, records, reused, trained, files, summary })
}
