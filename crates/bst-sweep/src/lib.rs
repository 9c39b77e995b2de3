//! bst-sweep: from a TOML file of studies to trained runs, `runs.csv`, plots and a report.
//!
//! [`run_sweep`] loads and validates every run of every profile before anything starts, takes the
//! results folder's lock, runs the layer-speed study, trains the runs that have not ended yet (one
//! after another, or `--jobs N` at once in child processes), and publishes runs.csv, the charts
//! and report.md from the run folders. Every finished run is on disk before the next starts, so a
//! crash, `kill -9` or Ctrl-C loses no finished result, and a rerun resumes where it stopped.
//! [`report`] rebuilds everything a launch publishes without training; [`run_one`] trains one run
//! (what `--jobs` children and cluster job arrays execute); [`slurm::write_array`] writes (and
//! submits) a Slurm job array of the runs not yet ended.

pub mod error; // SweepError: what a sweep can fail on (Interrupted is a variant)
pub mod estimate; // --dry-run time estimates from throughput measured on random tokens
pub mod git; // the commit rule (HEAD, -dirty for code changes) shared with the build script
pub mod grid; // sweep TOML: [sweep], [base], [[study]] (grid, zip, exclude, variants), [speed], [profiles.*] -> validated RunSpecs
pub mod lock; // one launch per results folder (an OS file lock released when the process ends)
pub mod msrnn; // [msrnn]: trained runs as multi-state RNNs: bounded KV caches vs state bounded by construction
pub mod plot; // PNG + SVG charts: lines with sd bands, dots with error bars, baseline bands, log-log
pub mod progress; // bars on a terminal, plain lines with ETAs in logs
pub mod provenance; // git commit, device and date of a result
pub mod publish; // runs.csv, charts and report.md from the run folders, without training
pub mod report; // report.md's frame: provenance, data, failures
pub mod results; // runs.csv: one row per run that ended
pub mod run; // one run: data cache, training, evaluation, its folder, result.json / failure.json
pub mod slurm; // [slurm] resources and the sbatch job-array script: one array task per unfinished run
pub mod speed; // the layer-speed study: one layer per architecture against L, forward and backward
pub mod stats; // mean, sd, and paired or Welch t-tests over seeds
pub mod study; // one study read back: configurations over seeds, comparisons, chart, report section

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::ops::ControlFlow;
use std::time::{Duration, Instant};

use bst_model::DeviceChoice;
use serde::{Deserialize, Serialize};

pub use error::SweepError;
pub use grid::{GridError, Override, RunSpec, Sweep};
pub use run::{Outcome, RunRecord};

use crate::error::write_atomically;
use crate::progress::Progress;

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
    /// Only list the runs, with estimated times.
    pub dry_run: bool,
    /// Set (e.g. by a Ctrl-C handler) to stop after the current step.
    pub stop: Arc<AtomicBool>,
    /// Show progress bars on a terminal (plain lines otherwise).
    pub progress: bool,
    /// Seconds between plain progress lines when stderr is not a terminal (0: none).
    pub log_every: Duration,
    /// The command line, recorded in the report.
    pub command: String,
    /// Run only these studies, variants or run ids (`speed` for the speed study); all when empty.
    pub only: Vec<String>,
    /// Stop the sweep at the first failed run instead of recording it and going on.
    pub fail_fast: bool,
    /// Train again the runs that failed in an earlier launch.
    pub retry_failed: bool,
    /// Runs trained at once (child processes); 1 trains in this process.
    pub jobs: usize,
    /// libtorch threads per run (default: all cores, divided among the jobs).
    pub threads: Option<usize>,
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
            log_every: Duration::from_secs(30),
            command: String::from("bst-sweep"),
            only: Vec::new(),
            fail_fast: false,
            retry_failed: false,
            jobs: 1,
            threads: None,
        }
    }
}

/// What a launch found and did.
#[derive(Debug)]
pub struct SweepOutcome {
    pub sweep: Sweep,
    pub results_dir: PathBuf,
    /// Runs that ended in an earlier launch.
    pub reused: usize,
    /// Runs trained to the end in this launch.
    pub trained: usize,
    /// Runs that failed or diverged in this launch.
    pub failed: usize,
    pub published: publish::Published,
    /// The console summary (also printed by the binary).
    pub summary: String,
}

/// What a launch recorded, so that `report` can rebuild its outputs later.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Launch {
    file: PathBuf,
    profile: String,
    overrides: Vec<String>,
    command: String,
}

/// The runs `only` selects (all when empty); an entry matches a study, a variant or a run id
/// (prefix).
pub(crate) fn select<'a>(sweep: &'a Sweep, only: &[String]) -> Result<Vec<&'a RunSpec>> {
    if only.is_empty() {
        return Ok(sweep.runs.iter().collect());
    }
    let matches = |r: &RunSpec, pat: &str| r.run_id.starts_with(pat) || r.memberships.iter().any(|m| m.study == pat || m.variant == pat);
    for pat in only.iter().filter(|p| !["speed", "msrnn"].contains(&p.as_str())) {
        if !sweep.runs.iter().any(|r| matches(r, pat)) {
            return Err(SweepError::NoSuchRun { what: format!("--only {pat}"), studies: sweep.studies.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ") });
        }
    }
    Ok(sweep.runs.iter().filter(|r| only.iter().any(|p| matches(r, p))).collect())
}

/// One line per run for `--dry-run`: study, variant, what differs from the base, id, layer plan,
/// the other studies sharing it, and the estimated time.
fn dry_run(sweep: &Sweep, runs: &[&RunSpec], device: tch::Device, results_dir: &Path) -> String {
    let estimates = estimate::estimate(runs, device);
    let mut lines = Vec::new();
    let mut total = 0.0;
    for (r, est) in runs.iter().zip(&estimates) {
        let also: Vec<&str> = r.studies().into_iter().skip(1).collect();
        let done = if run::outcome(results_dir, r).is_some() { "  [ended earlier]" } else { "" };
        let time = est.map_or_else(|| "?".into(), |s| format!("~{}", progress::duration(s)));
        if done.is_empty() {
            total += est.unwrap_or(0.0);
        }
        lines.push(format!(
            "{r}  [{}]  layers: {}{}  {time}{done}",
            r.run_id,
            r.plan.placement(),
            if also.is_empty() { String::new() } else { format!("  (also in: {})", also.join(", ")) }
        ));
    }
    let speed = sweep.speed.as_ref().map_or(String::new(), |s| format!(" + the speed study ({} layers x {} lengths x {} directions, capped at {:.0} s per point)", s.archs.len(), s.lengths.len(), s.directions.len(), s.cap_s));
    let unknown = estimates.iter().filter(|e| e.is_none()).count();
    let unknown = if unknown > 0 { format!(" ({unknown} runs without an estimate: too large to time on this device, or their model failed to build)") } else { String::new() };
    lines.push(format!("{} runs in {} studies; estimated training and evaluation time of those not ended: ~{} on {}{unknown}{speed}", runs.len(), sweep.studies.len(), progress::duration(total), bst_model::device::describe(device)));
    lines.join("\n")
}

/// Loads, validates and runs a sweep; see the crate docs.
pub fn run_sweep(opts: &SweepOptions) -> Result<SweepOutcome> {
    let sweep = Sweep::load(&opts.file, opts.profile.as_deref(), &opts.overrides)?;
    let selected = select(&sweep, &opts.only)?;
    let results_dir = sweep.results_dir(&opts.results_root);
    if let Some(t) = opts.threads {
        tch::set_num_threads(t as i32);
    }
    let device = opts.device.resolve()?;
    if opts.dry_run {
        let summary = dry_run(&sweep, &selected, device, &results_dir);
        println!("{summary}");
        return Ok(SweepOutcome { sweep, results_dir, reused: 0, trained: 0, failed: 0, published: Default::default(), summary });
    }
    let _lock = lock::ResultsLock::acquire(&results_dir, &opts.command)?;
    record_launch(&sweep, opts, &results_dir)?;
    // every data configuration up front: a missing corpus fails before any training
    let mut data = run::DataCache::default();
    for spec in &selected {
        data.for_run(&spec.config)?;
    }
    let progress = Progress::new(&sweep.meta.name, selected.len(), opts.progress, opts.log_every);
    if sweep.speed.is_some() && (opts.only.is_empty() || opts.only.iter().any(|o| o == "speed")) {
        speed_study(&sweep, &results_dir, device, opts.only.iter().any(|o| o == "speed"), &progress)?;
    }
    let trained = if opts.jobs > 1 { train_in_children(&sweep, &selected, opts, &results_dir, &progress)? } else { train_here(&selected, opts, &results_dir, device, &mut data, &progress)? };
    if let (Some(cfg), None) = (&sweep.msrnn, &trained.interrupted) {
        msrnn::run(&sweep, cfg, &results_dir, device, &mut data, &|line| progress.log(&line))?;
    }
    progress.finish();
    let data_text = report::data_summary(&data.all(), &data.all_lra());
    let published = publish::publish(&sweep, &results_dir, &data_text, &opts.command)?;
    let summary = format!("{}\n{}\nWrote: {}", published.summary, data_text, published.files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", "));
    let csv = results_dir.join("runs.csv");
    if let Some(run) = trained.interrupted {
        return Err(SweepError::Interrupted { run, finished: trained.reused + trained.finished, csv });
    }
    if let (true, Some((run, error))) = (opts.fail_fast, trained.first_failure) {
        return Err(SweepError::RunFailed { run, csv, source: Box::new(SweepError::File { path: results_dir, reason: error }) });
    }
    Ok(SweepOutcome { sweep, results_dir, reused: trained.reused, trained: trained.finished, failed: trained.failed, published, summary })
}

/// Keeps a copy of the sweep file and how it was launched, for `report` and for the record.
pub(crate) fn record_launch(sweep: &Sweep, opts: &SweepOptions, results_dir: &Path) -> Result<()> {
    write_atomically(&results_dir.join("sweep.toml"), &std::fs::read(&opts.file).map_err(SweepError::io(&opts.file))?)?;
    let launch = Launch { file: opts.file.clone(), profile: sweep.profile.clone(), overrides: opts.overrides.iter().map(|o| o.to_string()).collect(), command: opts.command.clone() };
    write_atomically(&results_dir.join("launch.json"), serde_json::to_string_pretty(&launch).expect("launch serialises").as_bytes())
}

/// Times the layers of `[speed]` unless speed.csv exists (or `again`).
fn speed_study(sweep: &Sweep, results_dir: &Path, device: tch::Device, again: bool, progress: &Progress) -> Result<()> {
    let Some(cfg) = &sweep.speed else { return Ok(()) };
    if results_dir.join("speed.csv").exists() && !again {
        progress.log(&format!("[{}] speed study: speed.csv exists (rerun it with --only speed)", sweep.meta.name));
        return Ok(());
    }
    let log = |line: String| progress.log(&format!("[{}] {line}", sweep.meta.name));
    let points = speed::run(cfg, device, &log).map_err(|reason| SweepError::File { path: results_dir.join("speed.csv"), reason })?;
    publish::write_speed(results_dir, &points)?;
    Ok(())
}

/// What the training loop did.
#[derive(Debug, Default)]
struct Trained {
    reused: usize,
    finished: usize,
    failed: usize,
    interrupted: Option<String>,
    first_failure: Option<(String, String)>,
}

/// Whether `spec` still has to be trained, given how it ended before.
pub(crate) fn pending(spec: &RunSpec, results_dir: &Path, retry_failed: bool) -> bool {
    match run::outcome(results_dir, spec) {
        Some(Outcome::Finished(_)) => false,
        Some(Outcome::Failed(_)) => retry_failed,
        None => true,
    }
}

/// Trains the runs one after another in this process.
fn train_here(runs: &[&RunSpec], opts: &SweepOptions, results_dir: &Path, device: tch::Device, data: &mut run::DataCache, progress: &Progress) -> Result<Trained> {
    let mut t = Trained::default();
    // runs that ended in an earlier launch first, so that the sweep's ETA counts only what is left to train
    let (todo, reused): (Vec<&RunSpec>, Vec<&RunSpec>) = runs.iter().copied().partition(|spec| pending(spec, results_dir, opts.retry_failed));
    for _ in reused {
        t.reused += 1;
        progress.skip();
    }
    for spec in todo {
        if t.interrupted.is_some() || (opts.fail_fast && t.first_failure.is_some()) {
            progress.skip();
            continue;
        }
        let started = Instant::now();
        let outcome = train_one(spec, results_dir, device, data, progress, &opts.stop);
        progress.end_run(started.elapsed().as_secs_f64(), outcome.as_ref().is_ok_and(|o| matches!(o, Outcome::Finished(_))));
        match outcome {
            Ok(Outcome::Finished(r)) => {
                progress.log(&format!("{spec}: done in {}, {:.0} tok/s, {}", progress::duration(r.wall_s), r.tokens_per_s, report::headline(&r)));
                t.finished += 1;
            }
            Ok(Outcome::Failed(f)) => {
                progress.log(&format!("{spec}: {} ({}); recorded in runs.csv, the sweep goes on", f.status, f.error));
                t.failed += 1;
                t.first_failure.get_or_insert((spec.to_string(), f.error.clone()));
            }
            Err(e) if e.is_interrupt() => t.interrupted = Some(spec.to_string()),
            Err(e) => return Err(e),
        }
    }
    Ok(t)
}

/// Trains one run with progress reporting.
fn train_one(spec: &RunSpec, results_dir: &Path, device: tch::Device, data: &mut run::DataCache, progress: &Progress, stop: &AtomicBool) -> Result<Outcome> {
    let cfg = &spec.config;
    progress.log(&format!("{spec}: training {} ({} steps of {}x{} tokens) [{}]", cfg.model.arch, cfg.train.steps, cfg.train.batch_size, cfg.train.seq_len, spec.run_id));
    progress.start_run(&spec.to_string(), cfg.train.steps);
    let loaded = data.for_run(cfg)?;
    let (started, mut first_step) = (Instant::now(), None);
    let log = |line: String| progress.log(&line);
    run::execute(spec, &loaded, results_dir, device, &log, |m| {
        let first = *first_step.get_or_insert(m.step);
        progress.step(m, started.elapsed().as_secs_f64(), m.step + 1 - first);
        if stop.load(Ordering::SeqCst) { ControlFlow::Break(()) } else { ControlFlow::Continue(()) }
    })
}

/// Trains the runs `opts.jobs` at a time, each in a child process (`run-one`) with its share of
/// the threads, and reads how each ended from its folder.
fn train_in_children(sweep: &Sweep, runs: &[&RunSpec], opts: &SweepOptions, results_dir: &Path, progress: &Progress) -> Result<Trained> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let threads = opts.threads.unwrap_or((cores / opts.jobs).max(1));
    let exe = std::env::current_exe().map_err(SweepError::io(Path::new("current executable")))?;
    let mut t = Trained::default();
    let mut queue: Vec<&RunSpec> = Vec::new();
    for spec in runs {
        if pending(spec, results_dir, opts.retry_failed) {
            queue.push(spec);
        } else {
            t.reused += 1;
            progress.skip();
        }
    }
    queue.reverse();
    let mut running: Vec<(&RunSpec, Child, Instant)> = Vec::new();
    while !queue.is_empty() || !running.is_empty() {
        let stopping = opts.stop.load(Ordering::SeqCst) || (opts.fail_fast && t.first_failure.is_some());
        while running.len() < opts.jobs && !stopping {
            let Some(spec) = queue.pop() else { break };
            progress.log(&format!("{spec}: training in a child process ({threads} threads) [{}]", spec.run_id));
            let child = child_command(&exe, sweep, spec, opts, threads).spawn().map_err(SweepError::io(&exe))?;
            running.push((spec, child, Instant::now()));
        }
        if stopping && running.is_empty() {
            t.interrupted = t.interrupted.or(queue.last().map(|s| s.to_string()));
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
        let mut still = Vec::new();
        for (spec, mut child, started) in running {
            match child.try_wait().map_err(SweepError::io(&exe))? {
                None => still.push((spec, child, started)),
                Some(status) => {
                    let outcome = run::outcome(results_dir, spec);
                    progress.end_run(started.elapsed().as_secs_f64(), matches!(outcome, Some(Outcome::Finished(_))));
                    match outcome {
                        Some(Outcome::Finished(r)) => {
                            progress.log(&format!("{spec}: done, {} ({})", report::headline(&r), progress.tally(opts.jobs)));
                            t.finished += 1;
                        }
                        Some(Outcome::Failed(f)) => {
                            progress.log(&format!("{spec}: {} ({}); recorded in runs.csv, the sweep goes on ({})", f.status, f.error, progress.tally(opts.jobs)));
                            t.failed += 1;
                            t.first_failure.get_or_insert((spec.to_string(), f.error.clone()));
                        }
                        None if status.code() == Some(130) || opts.stop.load(Ordering::SeqCst) => t.interrupted = Some(spec.to_string()),
                        None => return Err(SweepError::Child { run: spec.to_string(), status: status.to_string() }),
                    }
                }
            }
        }
        running = still;
    }
    Ok(t)
}

/// `bst-sweep run-one <file> --run <id> ...` for one child.
fn child_command(exe: &Path, sweep: &Sweep, spec: &RunSpec, opts: &SweepOptions, threads: usize) -> Command {
    let mut cmd = Command::new(exe);
    cmd.arg("run-one").arg(&opts.file).arg("--run").arg(&spec.run_id).arg("--profile").arg(&sweep.profile);
    cmd.arg("--results").arg(&opts.results_root).arg("--threads").arg(threads.to_string()).arg("--device").arg(opts.device.to_string());
    cmd.arg("--log-every").arg(opts.log_every.as_secs().to_string());
    cmd.args(opts.overrides.iter().map(|o| o.to_string()));
    cmd
}

/// Trains exactly one run of the sweep (by run id, or a unique prefix of it) into the results
/// folder; what `--jobs` children and cluster job arrays execute. Writes only that run's folder,
/// under a lock of its own, so that concurrent processes never write one file.
pub fn run_one(opts: &SweepOptions, run: &str) -> Result<Outcome> {
    let sweep = Sweep::load(&opts.file, opts.profile.as_deref(), &opts.overrides)?;
    let candidates: Vec<&RunSpec> = sweep.runs.iter().filter(|r| r.run_id.starts_with(run)).collect();
    let [spec] = candidates.as_slice() else {
        return Err(SweepError::NoSuchRun { what: format!("--run {run} ({} runs match)", candidates.len()), studies: sweep.studies.iter().map(|s| s.name.as_str()).collect::<Vec<_>>().join(", ") });
    };
    if let Some(t) = opts.threads {
        tch::set_num_threads(t as i32);
    }
    let results_dir = sweep.results_dir(&opts.results_root);
    let _lock = lock::ResultsLock::acquire(&run::run_dir(&results_dir, &spec.run_id), &opts.command)?;
    if let Some(done) = run::outcome(&results_dir, spec).filter(|o| matches!(o, Outcome::Finished(_)) || !opts.retry_failed) {
        return Ok(done);
    }
    let device = opts.device.resolve()?;
    let progress = Progress::new(&sweep.meta.name, 1, false, opts.log_every);
    train_one(spec, &results_dir, device, &mut run::DataCache::default(), &progress, &opts.stop)
}

/// Rebuilds runs.csv, the charts and report.md of a results folder from its run folders, without
/// training (safe while runs are still going on); reads the sweep file copy and the launch
/// settings the folder keeps.
pub fn report(results_dir: &Path) -> Result<(Sweep, publish::Published)> {
    let launch_path = results_dir.join("launch.json");
    let text = std::fs::read_to_string(&launch_path).map_err(SweepError::io(&launch_path))?;
    let launch: Launch = serde_json::from_str(&text).map_err(SweepError::file(&launch_path))?;
    let overrides: Vec<Override> = launch.overrides.iter().map(|o| o.parse().map_err(|e: String| SweepError::File { path: launch_path.clone(), reason: e })).collect::<Result<_>>()?;
    let mut sweep = Sweep::load(&results_dir.join("sweep.toml"), Some(&launch.profile), &overrides)?;
    sweep.file = launch.file;
    let mut data = run::DataCache::default();
    let loaded: Result<()> = sweep.runs.iter().try_for_each(|r| data.for_run(&r.config).map(drop));
    let data_text = match loaded {
        Ok(()) => report::data_summary(&data.all(), &data.all_lra()),
        Err(e) => format!("(the data could not be read to describe it here: {e})"),
    };
    let published = publish::publish(&sweep, results_dir, &data_text, &launch.command)?;
    Ok((sweep, published))
}
