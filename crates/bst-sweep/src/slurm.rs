//! A sweep on a Slurm cluster: an sbatch job array with one array task per run not yet ended.
//!
//! `bst-sweep slurm <file> [--profile P] [flags] [overrides]` writes, under the results folder,
//! ```text
//! slurm/array-<n>.sbatch   the job-array script (resources from [slurm] and the flags)
//! slurm/array-<n>.runs     line i+1: the run id (and its label) of array task i
//! slurm/array-<n>.toml     the sweep file as it was (tasks read this copy: run ids stay valid
//!                          if the file is edited while tasks wait in the queue)
//! slurm/logs/array-<n>_<job id>_<task>.{out,err}
//! ```
//! and prints the `sbatch` command (`--submit` runs it). It loads the runs' data first (a missing
//! corpus fails before anything is queued; tokenised shards are built here once, not by several
//! tasks at a time). Each task `exec`s `bst-sweep run-one <copy> --run <id>` with the binary's
//! absolute path (or `$BST_SWEEP_BIN`) in the working directory of the submission (relative
//! `data.dir`s resolve as they do locally), with `--threads` = `--cpus-per-task`. A run writes
//! only its own folder under a lock of its own, so concurrent tasks never write one file, and its
//! files are those of a local launch. A `[speed]` table adds one task: the layer-speed study.
//!
//! Preemption and time limits: Slurm sends SIGINT `stop_before_limit_s` before the limit
//! (`--signal=B:INT@..`; the task's shell *is* bst-sweep after `exec`) and SIGTERM on `scancel`
//! or preemption; either stops the run after the current step with its checkpoint saved. Running
//! the same command again writes a new array of what is still unfinished (a run with a checkpoint
//! resumes from it exactly; a finished one is left out, as is one whose lock a task holds now).
//! `bst-sweep collect <results dir>` (= `report`) merges the run folders into runs.csv, the
//! charts and report.md at any time, naming the runs missing or failed.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};
use toml::Table;

use crate::error::{write_atomically, SweepError};
use crate::{lock, run, Sweep, SweepOptions};

type Result<T, E = SweepError> = std::result::Result<T, E>;

/// Resources of each array task: the `[slurm]` table of a sweep file (and
/// `[profiles.<p>.slurm]`, whose keys replace these for that profile). Every field is optional.
/// ```toml
/// [profiles.gpu.slurm]
/// partition = "gpu"
/// gpus_per_task = 1
/// cpus_per_task = 8
/// mem = "64G"
/// time = "1-00:00:00"
/// max_running = 8
/// sbatch = ["--qos=normal"]
/// setup = ["module load cuda/12.4"]
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SlurmConfig {
    /// `--job-name` (default: `bst-` and the results folder's name, e.g. `bst-ablation-gpu`).
    pub job_name: Option<String>,
    /// `--partition` (default: the cluster's default partition).
    pub partition: Option<String>,
    /// `--account` (default: the user's default account).
    pub account: Option<String>,
    /// GPUs per task, requested as `--gres=gpu:N` (0: none).
    pub gpus_per_task: u32,
    /// A GPU type for `--gres=gpu:<type>:N` (e.g. `a100`; default: any).
    pub gpu_type: Option<String>,
    /// `--cpus-per-task`; also each run's libtorch threads (`run-one --threads`).
    pub cpus_per_task: u32,
    /// `--mem` per task, a Slurm size (`500M`, `64G`; default: the partition's).
    pub mem: Option<String>,
    /// `--time` limit per task (`MM`, `HH:MM:SS`, `D-HH:MM:SS`; default: the partition's).
    pub time: Option<String>,
    /// Array tasks running at once (`--array=0-N%max_running`; 0: no limit).
    pub max_running: u32,
    /// Seconds before the time limit at which a run is asked to stop and save its checkpoint
    /// (`--signal=B:INT@N`; 0: no signal, the run resumes from its last periodic checkpoint).
    pub stop_before_limit_s: u32,
    /// More `#SBATCH` options, each as on the sbatch command line (`--qos=high`, `--constraint=a100`).
    pub sbatch: Vec<String>,
    /// Shell lines each task runs before training (`module load cuda/12.4`, `source env.sh`).
    pub setup: Vec<String>,
}

impl Default for SlurmConfig {
    fn default() -> Self {
        Self {
            job_name: None,
            partition: None,
            account: None,
            gpus_per_task: 0,
            gpu_type: None,
            cpus_per_task: 4,
            mem: None,
            time: None,
            max_running: 0,
            stop_before_limit_s: 300,
            sbatch: Vec::new(),
            setup: Vec::new(),
        }
    }
}

impl SlurmConfig {
    /// Reads and validates a `[slurm]` table; errors name the key under `at` (`slurm`,
    /// `profiles.gpu.slurm`).
    pub fn from_table(table: Table, at: &str) -> Result<Self, String> {
        let cfg: SlurmConfig = crate::grid::deserialize_at(table, at)?;
        cfg.validate().map_err(|e| format!("{at}.{e}"))?;
        Ok(cfg)
    }

    /// Checks every value as sbatch would read it; the error starts with the key.
    pub fn validate(&self) -> Result<(), String> {
        for (key, value) in [("job_name", &self.job_name), ("partition", &self.partition), ("account", &self.account), ("gpu_type", &self.gpu_type)] {
            let Some(v) = value else { continue };
            let gres = key == "gpu_type"; // a part of --gres=gpu:<type>:N
            if v.is_empty() || v.contains(|c: char| c.is_whitespace() || "#'\"".contains(c) || (gres && ",:".contains(c))) {
                return Err(format!("{key} = {v:?}: must be a non-empty name without spaces, quotes or #{}", if gres { ", commas or colons" } else { "" }));
            }
        }
        if self.cpus_per_task == 0 {
            return Err("cpus_per_task = 0: must be >= 1".into());
        }
        if self.gpu_type.is_some() && self.gpus_per_task == 0 {
            return Err("gpu_type: set gpus_per_task too (gpu_type alone requests no GPU)".into());
        }
        if let Some(mem) = &self.mem {
            let digits = mem.trim_end_matches(['K', 'M', 'G', 'T', 'k', 'm', 'g', 't']);
            if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || mem.len() - digits.len() > 1 {
                return Err(format!("mem = {mem:?}: must be a Slurm size, a number with an optional K, M, G or T (e.g. \"64G\")"));
            }
        }
        let limit = self.time.as_deref().map(|t| time_limit_s(t).map_err(|e| format!("time = {t:?}: {e}"))).transpose()?.flatten();
        if let Some(limit) = limit {
            if u64::from(self.stop_before_limit_s) >= limit {
                return Err(format!("stop_before_limit_s = {}: must be shorter than the time limit ({limit} s)", self.stop_before_limit_s));
            }
        }
        if self.stop_before_limit_s > 65535 {
            return Err(format!("stop_before_limit_s = {}: Slurm's --signal allows at most 65535 s", self.stop_before_limit_s));
        }
        if let Some(bad) = self.sbatch.iter().find(|o| !o.starts_with('-') || o.contains('\n')) {
            return Err(format!("sbatch: {bad:?} is not an sbatch option (one line starting with `-`, e.g. \"--qos=high\")"));
        }
        if let Some(bad) = self.setup.iter().find(|l| l.contains('\n')) {
            return Err(format!("setup: {bad:?}: one shell line per entry"));
        }
        Ok(())
    }

    /// `#SBATCH` lines for the resources (without the array, logs and signal).
    fn resource_lines(&self) -> Vec<String> {
        let mut lines = vec!["--ntasks=1".to_string(), format!("--cpus-per-task={}", self.cpus_per_task)];
        if self.gpus_per_task > 0 {
            lines.push(match &self.gpu_type {
                Some(t) => format!("--gres=gpu:{t}:{}", self.gpus_per_task),
                None => format!("--gres=gpu:{}", self.gpus_per_task),
            });
        }
        let named = [("mem", &self.mem), ("time", &self.time), ("partition", &self.partition), ("account", &self.account)];
        lines.extend(named.into_iter().filter_map(|(flag, v)| v.as_ref().map(|v| format!("--{flag}={v}"))));
        lines
    }
}

/// A Slurm time limit in seconds (None: unlimited).
pub fn time_limit_s(t: &str) -> Result<Option<u64>, String> {
    if ["UNLIMITED", "INFINITE"].contains(&t.to_ascii_uppercase().as_str()) {
        return Ok(None);
    }
    let bad = || "not a Slurm time: minutes, MM:SS, HH:MM:SS, D-HH, D-HH:MM or D-HH:MM:SS".to_string();
    let num = |s: &str| if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) { s.parse::<u64>().map_err(|_| bad()) } else { Err(bad()) };
    let (days, rest) = match t.split_once('-') {
        Some((d, rest)) => (Some(num(d)?), rest),
        None => (None, t),
    };
    let parts = rest.split(':').map(num).collect::<Result<Vec<u64>, String>>()?;
    let s = match (days, parts.as_slice()) {
        (None, [m]) => m * 60,
        (None, [m, s]) => m * 60 + s,
        (None, [h, m, s]) => h * 3600 + m * 60 + s,
        (Some(d), [h]) => d * 86400 + h * 3600,
        (Some(d), [h, m]) => d * 86400 + h * 3600 + m * 60,
        (Some(d), [h, m, s]) => d * 86400 + h * 3600 + m * 60 + s,
        _ => return Err(bad()),
    };
    if s == 0 {
        return Err("must be longer than 0".into());
    }
    Ok(Some(s))
}

/// Command-line flags over the sweep file's `[slurm]` (`bst-sweep slurm --gpus 1 --time 4:00:00`).
#[derive(Debug, Clone, Default, clap::Args)]
pub struct SlurmFlags {
    /// Partition (`[slurm] partition`).
    #[arg(long)]
    pub partition: Option<String>,
    /// Account to charge (`[slurm] account`).
    #[arg(long)]
    pub account: Option<String>,
    /// GPUs per task (`[slurm] gpus_per_task`; default 0).
    #[arg(long)]
    pub gpus: Option<u32>,
    /// GPU type, e.g. a100 (`[slurm] gpu_type`).
    #[arg(long)]
    pub gpu_type: Option<String>,
    /// CPUs per task, also each run's threads (`[slurm] cpus_per_task`; default 4).
    #[arg(long)]
    pub cpus: Option<u32>,
    /// Memory per task, e.g. 64G (`[slurm] mem`).
    #[arg(long)]
    pub mem: Option<String>,
    /// Time limit per task, e.g. 12:00:00 or 1-00:00:00 (`[slurm] time`).
    #[arg(long)]
    pub time: Option<String>,
    /// Array tasks running at once (`--array=..%N`; `[slurm] max_running`; 0: no limit).
    #[arg(long)]
    pub max_running: Option<u32>,
    /// Job name (`[slurm] job_name`; default bst-<results folder name>).
    #[arg(long)]
    pub job_name: Option<String>,
    /// One more #SBATCH option, e.g. --sbatch=--qos=high (repeatable; added to `[slurm] sbatch`).
    #[arg(long = "sbatch", allow_hyphen_values = true)]
    pub sbatch: Vec<String>,
    /// Submit the script with sbatch (otherwise print the command).
    #[arg(long)]
    pub submit: bool,
}

impl SlurmFlags {
    /// `cfg` with the flags that are given over it, validated.
    pub fn apply(&self, mut cfg: SlurmConfig) -> Result<SlurmConfig, String> {
        let text = [(&self.partition, &mut cfg.partition), (&self.account, &mut cfg.account), (&self.gpu_type, &mut cfg.gpu_type), (&self.mem, &mut cfg.mem), (&self.time, &mut cfg.time), (&self.job_name, &mut cfg.job_name)];
        for (flag, field) in text {
            if flag.is_some() {
                field.clone_from(flag);
            }
        }
        cfg.gpus_per_task = self.gpus.unwrap_or(cfg.gpus_per_task);
        cfg.cpus_per_task = self.cpus.unwrap_or(cfg.cpus_per_task);
        cfg.max_running = self.max_running.unwrap_or(cfg.max_running);
        cfg.sbatch.extend(self.sbatch.iter().cloned());
        cfg.validate().map_err(|e| format!("[slurm] with the command-line flags: {e}"))?;
        Ok(cfg)
    }
}

/// Everything a job-array script says, in absolute paths.
#[derive(Debug, Clone)]
pub struct ArrayScript {
    pub cfg: SlurmConfig,
    /// Default `--job-name`: `bst-<results folder name>`.
    pub default_name: String,
    /// What the header says (sweep, profile, date, command).
    pub header: String,
    pub tasks: usize,
    /// The run list (line i+1: task i's run id) and the sweep file copy the tasks read.
    pub runs_file: PathBuf,
    pub sweep_file: PathBuf,
    pub log_stem: PathBuf,
    /// The tasks `cd` here (where the command was given; relative data.dir resolve from it).
    pub workdir: PathBuf,
    /// The bst-sweep binary (`$BST_SWEEP_BIN` replaces it when set in the task's environment).
    pub bin: PathBuf,
    /// run-one's settings: profile, results root, device, fixed threads, overrides.
    pub profile: String,
    pub results_root: PathBuf,
    pub device: String,
    pub threads: Option<usize>,
    pub retry_failed: bool,
    pub overrides: Vec<String>,
    /// The last task runs the layer-speed study.
    pub speed: bool,
}

impl ArrayScript {
    /// The sbatch script.
    pub fn render(&self) -> String {
        let cfg = &self.cfg;
        let mut out = String::from("#!/bin/bash\n");
        for line in self.header.lines() {
            let _ = writeln!(out, "# {line}");
        }
        let limit = if cfg.max_running > 0 { format!("%{}", cfg.max_running) } else { String::new() };
        let mut opts = vec![format!("--job-name={}", cfg.job_name.as_deref().unwrap_or(&self.default_name)), format!("--array=0-{}{limit}", self.tasks.saturating_sub(1))];
        opts.extend(cfg.resource_lines());
        if cfg.stop_before_limit_s > 0 {
            opts.push(format!("--signal=B:INT@{}", cfg.stop_before_limit_s));
        }
        let log = self.log_stem.display();
        opts.extend([format!("--output={log}_%A_%a.out"), format!("--error={log}_%A_%a.err"), "--open-mode=append".into()]);
        opts.extend(cfg.sbatch.iter().cloned());
        for o in opts {
            let _ = writeln!(out, "#SBATCH {o}");
        }
        out.push_str("set -eo pipefail\n");
        let _ = writeln!(out, "cd {}", quote(&self.workdir.display().to_string()));
        for line in &cfg.setup {
            let _ = writeln!(out, "{line}");
        }
        out.push_str("set -u\n"); // after the setup lines: some environment scripts read unset variables
        let runs = quote(&self.runs_file.display().to_string());
        let _ = writeln!(out, "read -r RUN LABEL < <(sed -n \"$((SLURM_ARRAY_TASK_ID + 1))p\" {runs}) || {{ echo \"no run for array task $SLURM_ARRAY_TASK_ID in {}\" >&2; exit 1; }}", self.runs_file.display());
        let _ = writeln!(out, "BIN=${{BST_SWEEP_BIN:-{}}}", quote(&self.bin.display().to_string()));
        out.push_str("echo \"[bst-sweep] array task $SLURM_ARRAY_TASK_ID of job $SLURM_ARRAY_JOB_ID on $(hostname): run $RUN ($LABEL)\" >&2\n");
        let threads = self.threads.map_or_else(|| format!("\"${{SLURM_CPUS_PER_TASK:-{}}}\"", cfg.cpus_per_task), |t| t.to_string());
        let mut common = vec!["--profile".into(), quote(&self.profile), "--results".into(), quote(&self.results_root.display().to_string())];
        common.extend(["--device".into(), quote(&self.device), "--threads".into(), threads, "--log-every 60".into()]);
        let sweep_file = quote(&self.sweep_file.display().to_string());
        let overrides: Vec<String> = self.overrides.iter().map(|o| quote(o)).collect();
        if self.speed {
            // a launch of the speed study alone (it takes the results folder's lock, then publishes)
            let launch = [vec![format!("exec \"$BIN\" {sweep_file} --only speed")], common.clone(), vec!["--quiet".into()], overrides.clone()].concat();
            let _ = writeln!(out, "if [ \"$RUN\" = {SPEED_TASK} ]; then\n  {}\nfi", launch.join(" "));
        }
        let retry = if self.retry_failed { vec!["--retry-failed".to_string()] } else { Vec::new() };
        let run_one = [vec![format!("exec \"$BIN\" run-one {sweep_file} --run \"$RUN\"")], common, retry, overrides].concat();
        let _ = writeln!(out, "{}", run_one.join(" "));
        out
    }
}

/// The array task that runs the layer-speed study (`[speed]`) instead of a run.
pub const SPEED_TASK: &str = "speed";

/// A word for the shell: as is when it is plain, otherwise in single quotes.
fn quote(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// What `bst-sweep slurm` found and wrote.
#[derive(Debug)]
pub struct ArrayJob {
    pub results_dir: PathBuf,
    /// The script (None when no run is left to train; with `--dry-run`, not written).
    pub script: Option<PathBuf>,
    /// The script's text (empty when no run is left).
    pub text: String,
    /// The runs of the array, in task order.
    pub runs: Vec<String>,
    /// Runs that have ended (finished, or failed and not retried).
    pub ended: usize,
    /// Runs whose lock a process holds now (being trained): left out.
    pub running: Vec<String>,
    /// The job id, when submitted.
    pub job_id: Option<String>,
}

impl ArrayJob {
    /// What to print.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        let _ = write!(out, "{} ended", self.ended);
        if !self.running.is_empty() {
            let _ = write!(out, ", {} being trained now (left out: {})", self.running.len(), self.running.join("; "));
        }
        let _ = writeln!(out, ", {} to train.", self.runs.len());
        if self.runs.is_empty() {
            let _ = write!(out, "Nothing to submit. Collect the results with: bst-sweep collect {}", self.results_dir.display());
            return out;
        }
        for (i, r) in self.runs.iter().enumerate() {
            let _ = writeln!(out, "  task {i}: {r}");
        }
        let Some(script) = &self.script else {
            out.push_str("Dry run: the script was printed, nothing was written.");
            return out;
        };
        match &self.job_id {
            Some(id) => {
                let _ = write!(out, "Submitted job array {id} ({} tasks): {}\nWatch it with `squeue -j {id}`; collect the results (also while it runs) with: bst-sweep collect {}", self.runs.len(), script.display(), self.results_dir.display());
            }
            None => {
                let _ = write!(out, "Wrote {}\nSubmit it with:\n  sbatch {}\nthen collect the results (also while it runs) with: bst-sweep collect {}", script.display(), script.display(), self.results_dir.display());
            }
        }
        out
    }
}

/// What goes into an array: (task id, label) per task, and what is left out.
struct Plan {
    tasks: Vec<(String, String)>,
    runs: usize,
    ended: usize,
    running: Vec<String>,
}

/// The runs `opts` selects that have not ended and whose lock no process holds, then the speed
/// study if the file has one, it is selected and speed.csv does not exist yet.
fn plan(sweep: &Sweep, opts: &SweepOptions, results_dir: &Path) -> Result<Plan> {
    let mut p = Plan { tasks: Vec::new(), runs: 0, ended: 0, running: Vec::new() };
    for spec in crate::select(sweep, &opts.only)? {
        if !crate::pending(spec, results_dir, opts.retry_failed) {
            p.ended += 1;
        } else if lock::is_held(&run::run_dir(results_dir, &spec.run_id)) {
            p.running.push(spec.to_string());
        } else {
            p.tasks.push((spec.run_id.clone(), spec.to_string()));
        }
    }
    p.runs = p.tasks.len();
    if sweep.speed.is_some() && (opts.only.is_empty() || opts.only.iter().any(|o| o == SPEED_TASK)) {
        if results_dir.join("speed.csv").exists() {
            p.ended += 1;
        } else if lock::is_held(results_dir) {
            p.running.push("the layer-speed study (or a local launch)".into());
        } else {
            p.tasks.push((SPEED_TASK.into(), "the layer-speed study".into()));
        }
    }
    Ok(p)
}

/// The first `n` whose `array-<n>.runs` does not exist; unless `dry_run`, creates it exclusively
/// with `runs_text` (two submissions never share a number).
fn claim_number(slurm_dir: &Path, runs_text: &str, dry_run: bool) -> Result<usize> {
    if !dry_run {
        std::fs::create_dir_all(slurm_dir.join("logs")).map_err(SweepError::io(slurm_dir))?;
    }
    for n in 1.. {
        let path = slurm_dir.join(format!("array-{n}.runs"));
        if dry_run {
            if !path.exists() {
                return Ok(n);
            }
            continue;
        }
        match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
            Ok(mut f) => {
                f.write_all(runs_text.as_bytes()).and_then(|()| f.sync_all()).map_err(SweepError::io(&path))?;
                return Ok(n);
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(SweepError::io(&path)(e)),
        }
    }
    unreachable!("an unbounded range")
}

/// `sbatch --parsable <script>`; the job id.
fn submit(script: &Path) -> Result<String> {
    let out = Command::new("sbatch").arg("--parsable").arg(script).output().map_err(|e| SweepError::Slurm(format!("running sbatch {}: {e} (is Slurm installed here?)", script.display())))?;
    if !out.status.success() {
        return Err(SweepError::Slurm(format!("sbatch {} {}: {}", script.display(), out.status, String::from_utf8_lossy(&out.stderr).trim())));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().split(';').next().unwrap_or_default().to_string())
}

/// Writes (and with `flags.submit`, submits) the job array of the runs of `opts` that have not
/// ended and are not being trained now; records the launch so that `collect` can publish. `bin`
/// is the bst-sweep binary the tasks run. `opts.dry_run` writes nothing (the text is returned).
pub fn write_array(opts: &SweepOptions, flags: &SlurmFlags, bin: &Path) -> Result<ArrayJob> {
    let sweep = Sweep::load(&opts.file, opts.profile.as_deref(), &opts.overrides)?;
    let cfg = flags.apply(sweep.slurm.clone()).map_err(SweepError::Slurm)?;
    let results_root = std::path::absolute(&opts.results_root).map_err(SweepError::io(&opts.results_root))?;
    let results_dir = sweep.results_dir(&results_root);
    let plan = plan(&sweep, opts, &results_dir)?;
    let speed = plan.tasks.last().is_some_and(|(id, _)| id == SPEED_TASK);
    let mut job = ArrayJob { results_dir: results_dir.clone(), script: None, text: String::new(), runs: plan.tasks.iter().map(|(_, label)| label.clone()).collect(), ended: plan.ended, running: plan.running, job_id: None };
    if plan.tasks.is_empty() {
        return Ok(job);
    }
    if results_dir.display().to_string().contains(char::is_whitespace) {
        return Err(SweepError::Slurm(format!("the results folder {} has a space in its path, which #SBATCH --output cannot hold; use --results with a path without spaces", results_dir.display())));
    }
    let _lock = if opts.dry_run { None } else { Some(lock::ResultsLock::acquire(&results_dir, &opts.command)?) };
    if !opts.dry_run {
        // every data configuration here first: a missing corpus fails before anything is queued,
        // and tokenised shards (a BPE) are built once rather than by several tasks at a time
        let mut data = run::DataCache::default();
        for spec in sweep.runs.iter().filter(|r| plan.tasks.iter().any(|(id, _)| *id == r.run_id)) {
            data.for_run(&spec.config)?;
        }
    }
    let slurm_dir = results_dir.join("slurm");
    let runs_text: String = plan.tasks.iter().map(|(id, label)| format!("{id}\t{label}\n")).collect();
    let n = claim_number(&slurm_dir, &runs_text, opts.dry_run)?;
    let header = format!(
        "bst-sweep job array {n} of {}: profile {}, {} runs not yet ended{} (written {} by `{}`).\n\
         Array task i trains the run on line i+1 of array-{n}.runs into the shared results folder with\n\
         run-one: a run that has ended returns at once, an interrupted one resumes from its checkpoint.\n\
         After a preemption or time limit, run the same bst-sweep slurm command again: it writes a new\n\
         array of what is still unfinished. Collect: bst-sweep collect {}",
        sweep.meta.name,
        sweep.profile,
        plan.runs,
        if speed { " and the layer-speed study" } else { "" },
        chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        opts.command,
        results_dir.display()
    );
    let folder = results_dir.file_name().map_or_else(|| sweep.meta.name.clone(), |n| n.to_string_lossy().into_owned());
    let script = ArrayScript {
        cfg,
        default_name: format!("bst-{folder}"),
        header,
        tasks: plan.tasks.len(),
        runs_file: slurm_dir.join(format!("array-{n}.runs")),
        sweep_file: slurm_dir.join(format!("array-{n}.toml")),
        log_stem: slurm_dir.join("logs").join(format!("array-{n}")),
        workdir: std::env::current_dir().map_err(SweepError::io(Path::new(".")))?,
        bin: bin.to_owned(),
        profile: sweep.profile.clone(),
        results_root,
        device: opts.device.to_string(),
        threads: opts.threads,
        retry_failed: opts.retry_failed,
        overrides: opts.overrides.iter().map(|o| o.to_string()).collect(),
        speed,
    };
    job.text = script.render();
    if opts.dry_run {
        return Ok(job);
    }
    let path = slurm_dir.join(format!("array-{n}.sbatch"));
    write_atomically(&script.sweep_file, &std::fs::read(&opts.file).map_err(SweepError::io(&opts.file))?)?;
    write_atomically(&path, job.text.as_bytes())?;
    crate::record_launch(&sweep, opts, &results_dir)?;
    if flags.submit {
        let id = submit(&path)?;
        write_atomically(&slurm_dir.join(format!("array-{n}.job")), format!("{id}\n").as_bytes())?;
        job.job_id = Some(id);
    }
    job.script = Some(path);
    Ok(job)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script(cfg: SlurmConfig) -> ArrayScript {
        ArrayScript {
            cfg,
            default_name: "bst-ablation-gpu".into(),
            header: "a header".into(),
            tasks: 12,
            runs_file: "/r/ablation-gpu/slurm/array-1.runs".into(),
            sweep_file: "/r/ablation-gpu/slurm/array-1.toml".into(),
            log_stem: "/r/ablation-gpu/slurm/logs/array-1".into(),
            workdir: "/home/me/bst".into(),
            bin: "/home/me/bst/target/release/bst-sweep".into(),
            profile: "gpu".into(),
            results_root: "/r".into(),
            device: "auto".into(),
            threads: None,
            retry_failed: false,
            overrides: vec!["train.steps=100".into(), "model.arch=\"SLIDE\"".into()],
            speed: false,
        }
    }

    #[test]
    fn the_script_has_the_array_resources_and_one_run_one_per_task() {
        let cfg = SlurmConfig { partition: Some("gpu".into()), gpus_per_task: 1, gpu_type: Some("a100".into()), cpus_per_task: 8, mem: Some("64G".into()), time: Some("1-00:00:00".into()), max_running: 4, sbatch: vec!["--qos=high".into()], setup: vec!["module load cuda".into()], ..Default::default() };
        let text = script(cfg).render();
        for line in [
            "#!/bin/bash\n# a header\n#SBATCH --job-name=bst-ablation-gpu\n#SBATCH --array=0-11%4\n#SBATCH --ntasks=1\n#SBATCH --cpus-per-task=8\n#SBATCH --gres=gpu:a100:1\n#SBATCH --mem=64G\n#SBATCH --time=1-00:00:00\n#SBATCH --partition=gpu\n#SBATCH --signal=B:INT@300\n",
            "#SBATCH --output=/r/ablation-gpu/slurm/logs/array-1_%A_%a.out\n#SBATCH --error=/r/ablation-gpu/slurm/logs/array-1_%A_%a.err\n#SBATCH --open-mode=append\n#SBATCH --qos=high\nset -eo pipefail\ncd /home/me/bst\nmodule load cuda\nset -u\n",
            "sed -n \"$((SLURM_ARRAY_TASK_ID + 1))p\" /r/ablation-gpu/slurm/array-1.runs",
            "BIN=${BST_SWEEP_BIN:-/home/me/bst/target/release/bst-sweep}\n",
            "exec \"$BIN\" run-one /r/ablation-gpu/slurm/array-1.toml --run \"$RUN\" --profile gpu --results /r --device auto --threads \"${SLURM_CPUS_PER_TASK:-8}\" --log-every 60 train.steps=100 'model.arch=\"SLIDE\"'\n",
        ] {
            assert!(text.contains(line), "lacks {line:?}:\n{text}");
        }
        assert!(!text.contains("--account") && !text.contains("--retry-failed") && !text.contains("--only speed"));
        let status = Command::new("bash").arg("-n").arg("-c").arg(&text).status().unwrap();
        assert!(status.success(), "bash -n rejects:\n{text}");
    }

    /// The layer-speed study is one more task: a launch with `--only speed`.
    #[test]
    fn the_speed_study_is_a_task_of_its_own() {
        let text = ArrayScript { speed: true, retry_failed: true, ..script(SlurmConfig::default()) }.render();
        let speed = "if [ \"$RUN\" = speed ]; then\n  exec \"$BIN\" /r/ablation-gpu/slurm/array-1.toml --only speed --profile gpu --results /r --device auto --threads \"${SLURM_CPUS_PER_TASK:-4}\" --log-every 60 --quiet train.steps=100 'model.arch=\"SLIDE\"'\nfi\n";
        assert!(text.contains(speed), "{text}");
        assert!(text.contains("--log-every 60 --retry-failed train.steps=100"), "{text}");
        assert!(Command::new("bash").arg("-n").arg("-c").arg(&text).status().unwrap().success(), "{text}");
    }

    #[test]
    fn defaults_request_no_gpu_and_no_limit_and_flags_win() {
        let text = script(SlurmConfig::default()).render();
        assert!(text.contains("#SBATCH --array=0-11\n#SBATCH --ntasks=1\n#SBATCH --cpus-per-task=4\n#SBATCH --signal=B:INT@300\n"), "{text}");
        assert!(!text.contains("--gres") && !text.contains("--time") && !text.contains("--partition"));
        let flags = SlurmFlags { gpus: Some(2), time: Some("30".into()), max_running: Some(3), sbatch: vec!["--exclusive".into()], ..Default::default() };
        let cfg = flags.apply(SlurmConfig { partition: Some("p".into()), ..Default::default() }).unwrap();
        assert_eq!((cfg.gpus_per_task, cfg.time.as_deref(), cfg.max_running, cfg.partition.as_deref(), cfg.sbatch.len()), (2, Some("30"), 3, Some("p"), 1));
        let bad = SlurmFlags { time: Some("3:00".into()), ..Default::default() }.apply(SlurmConfig::default()).unwrap_err();
        assert!(bad.contains("stop_before_limit_s = 300") && bad.contains("180 s"), "{bad}");
    }

    #[test]
    fn slurm_times_and_sizes() {
        for (t, s) in [("30", 1800), ("5:30", 330), ("12:00:00", 43200), ("2-0", 172800), ("1-12:30", 131400), ("1-00:00:01", 86401)] {
            assert_eq!(time_limit_s(t), Ok(Some(s)), "{t}");
        }
        assert_eq!(time_limit_s("UNLIMITED"), Ok(None));
        for bad in ["", "1h", "1:2:3:4", "-1", "0", "1-", "a-1"] {
            assert!(time_limit_s(bad).is_err(), "{bad}");
        }
        for (mem, ok) in [("64G", true), ("500", true), ("0", true), ("1.5G", false), ("G", false), ("64GB", false)] {
            assert_eq!(SlurmConfig { mem: Some(mem.into()), ..Default::default() }.validate().is_ok(), ok, "{mem}");
        }
    }

    #[test]
    fn quoting_keeps_words_whole() {
        assert_eq!(quote("train.steps=100"), "train.steps=100");
        assert_eq!(quote("a b"), "'a b'");
        assert_eq!(quote("it's"), r"'it'\''s'");
        assert_eq!(quote(""), "''");
    }

    /// `[slurm]` and `[profiles.<p>.slurm]` are read and checked when the file loads; errors
    /// name the file and the key.
    #[test]
    fn the_slurm_table_of_a_sweep_file() {
        let dir = tempfile::tempdir().unwrap();
        let load = |extra: &str, profile: Option<&str>| {
            let path = dir.path().join("s.toml");
            let text = format!("[sweep]\nname = \"s\"\n[base]\nmodel.arch = \"SLIDE\"\nmodel.n_layers = 2\nmodel.d_model = 32\nmodel.n_heads = 2\nattn.window = 16\ntrain.seq_len = 64\n[grid]\ntrain.lr = [1e-3]\n{extra}");
            std::fs::write(&path, text).unwrap();
            Sweep::load(&path, profile, &[]).map_err(|e| e.to_string())
        };
        assert_eq!(load("", None).unwrap().slurm, SlurmConfig::default());
        let both = "[slurm]\ncpus_per_task = 2\ntime = \"01:00:00\"\n[profiles.gpu.slurm]\ngpus_per_task = 1\ncpus_per_task = 8\n";
        let cpu = load(both, None).unwrap().slurm;
        assert_eq!((cpu.cpus_per_task, cpu.gpus_per_task, cpu.time.as_deref()), (2, 0, Some("01:00:00")));
        let gpu = load(both, Some("gpu")).unwrap().slurm;
        assert_eq!((gpu.cpus_per_task, gpu.gpus_per_task, gpu.time.as_deref()), (8, 1, Some("01:00:00")));
        let err = load("[slurm]\ngpus = 1\n", None).unwrap_err();
        assert!(err.contains("s.toml") && err.contains("slurm") && err.contains("unknown field `gpus`"), "{err}");
        let err = load("[profiles.gpu.slurm]\ntime = \"1 day\"\n", None).unwrap_err();
        assert!(err.contains("profiles.gpu.slurm.time") && err.contains("not a Slurm time"), "{err}");
        let err = load("[slurm]\ncpus_per_task = \"8\"\n", None).unwrap_err();
        assert!(err.contains("slurm.cpus_per_task") && err.contains("invalid type"), "{err}");
    }
}
