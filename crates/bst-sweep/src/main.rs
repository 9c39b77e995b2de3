//! `bst-sweep <sweep.toml> [key=value|key=v1,v2 ...]`: train every run of a sweep's studies and
//! write results/<name>/{runs.csv, study_*.png/.svg, loss_*.png/.svg, speed.*, report.md}.
//! `bst-sweep report <results dir>` rebuilds those from the run folders without training;
//! `bst-sweep run-one <sweep.toml> --run <id>` trains one run (what `--jobs` children run);
//! `bst-sweep slurm <sweep.toml> [--submit]` writes a Slurm job array of the runs not yet ended
//! (`collect` is `report`, for its results).

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::{Context, Result};
use bst_model::DeviceChoice;
use bst_sweep::slurm::SlurmFlags;
use bst_sweep::{Override, SweepOptions};
use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(version, about = "Train and evaluate every run of a TOML sweep's studies; write runs.csv, plots and a report", args_conflicts_with_subcommands = true)]
struct Cli {
    #[command(subcommand)]
    command: Option<Cmd>,
    #[command(flatten)]
    sweep: SweepArgs,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Rebuild runs.csv, the plots and report.md of a results folder from its run folders, without
    /// training (safe while runs are still going on; says which runs are missing or failed).
    #[command(visible_alias = "collect")]
    Report {
        /// A results folder, e.g. results/ablation.
        dir: PathBuf,
    },
    /// Train one run of a sweep (by run id or a unique prefix) into its results folder.
    RunOne {
        #[command(flatten)]
        sweep: SweepArgs,
        /// The run id (see --dry-run).
        #[arg(long)]
        run: String,
    },
    /// Write an sbatch job array under the results folder, one task per run not yet ended (each
    /// runs run-one), with resources from the file's [slurm] table and these flags; print the
    /// sbatch command, or submit it with --submit. Run it again after a preemption or time limit:
    /// the new array holds what is still unfinished. --dry-run prints the script.
    Slurm {
        #[command(flatten)]
        sweep: SweepArgs,
        #[command(flatten)]
        slurm: SlurmFlags,
    },
}

#[derive(Debug, Args)]
struct SweepArgs {
    /// Sweep file, e.g. experiments/ablation.toml.
    file: Option<PathBuf>,
    /// Hydra-style overrides: `key=value` sets a base value, `key=v1,v2` makes `key` an axis of every study.
    overrides: Vec<Override>,
    /// Profile of the sweep file to apply (default: its [sweep].default_profile).
    #[arg(long)]
    profile: Option<String>,
    /// Device: auto (CUDA when available), cpu, cuda or cuda:N.
    #[arg(long, default_value = "auto")]
    device: DeviceChoice,
    /// Folder that holds <sweep name>/.
    #[arg(long, default_value = "results")]
    results: PathBuf,
    /// List the runs (study, variant, id, layers, estimated time) and exit.
    #[arg(long)]
    dry_run: bool,
    /// Run only these studies, variants or run ids (comma-separated; `speed` for the speed study).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Stop at the first failed run instead of recording it and going on.
    #[arg(long)]
    fail_fast: bool,
    /// Train again the runs that failed in an earlier launch.
    #[arg(long)]
    retry_failed: bool,
    /// Train this many runs at once, each in its own process with its share of the threads.
    #[arg(long, default_value_t = 1)]
    jobs: usize,
    /// libtorch threads per run (default: all cores, divided among --jobs).
    #[arg(long)]
    threads: Option<usize>,
    /// Seconds between progress lines when stderr is not a terminal (0: none).
    #[arg(long, default_value_t = 30)]
    log_every: u64,
    /// No progress bars (progress lines still go to a non-terminal stderr).
    #[arg(long)]
    quiet: bool,
}

impl SweepArgs {
    fn options(self) -> Result<SweepOptions> {
        let file = self.file.context("give a sweep file, e.g. experiments/ablation.toml (or a subcommand: report, collect, run-one, slurm)")?;
        let mut opts = SweepOptions::new(file);
        opts.profile = self.profile;
        opts.overrides = self.overrides;
        opts.results_root = self.results;
        opts.device = self.device;
        opts.dry_run = self.dry_run;
        opts.progress = !self.quiet;
        opts.log_every = Duration::from_secs(self.log_every);
        opts.only = self.only;
        opts.fail_fast = self.fail_fast;
        opts.retry_failed = self.retry_failed;
        opts.jobs = self.jobs.max(1);
        opts.threads = self.threads;
        opts.command = std::env::args().collect::<Vec<_>>().join(" ");
        Ok(opts)
    }
}

/// Ctrl-C (or SIGTERM: `scancel`, a preemption) once: stop after the current step (checkpoint
/// saved); twice: quit now.
fn on_ctrl_c(opts: &SweepOptions) -> Result<()> {
    let stop = opts.stop.clone();
    ctrlc::set_handler(move || {
        if stop.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("\nstopping after this step (Ctrl-C again to quit now); finished runs are kept");
    })
    .context("installing the Ctrl-C handler")
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Some(Cmd::Report { dir }) => {
            let (sweep, published) = bst_sweep::report(&dir)?;
            println!("{}", published.summary);
            println!("Wrote: {}", published.files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>().join(", "));
            println!("{} of {} runs ended; {} failed; {} missing{}", sweep.runs.len() - published.missing.len(), sweep.runs.len(), published.failed.len(), published.missing.len(), if published.missing.is_empty() { String::new() } else { format!(":\n  {}", published.missing.join("\n  ")) });
            Ok(())
        }
        Some(Cmd::RunOne { sweep, run }) => {
            let opts = sweep.options()?;
            on_ctrl_c(&opts)?;
            match bst_sweep::run_one(&opts, &run) {
                Err(e) if e.is_interrupt() => {
                    eprintln!("{e}");
                    std::process::exit(130)
                }
                other => {
                    other?;
                    Ok(())
                }
            }
        }
        Some(Cmd::Slurm { sweep, slurm }) => {
            let opts = sweep.options()?;
            let bin = match std::env::var_os("BST_SWEEP_BIN") {
                Some(bin) => PathBuf::from(bin),
                None => std::env::current_exe().context("locating this bst-sweep binary for the job script")?,
            };
            let job = bst_sweep::slurm::write_array(&opts, &slurm, &bin)?;
            if opts.dry_run {
                print!("{}", job.text);
                eprintln!("{}", job.summary());
            } else {
                println!("{}", job.summary());
            }
            Ok(())
        }
        None => {
            let opts = cli.sweep.options()?;
            on_ctrl_c(&opts)?;
            let outcome = bst_sweep::run_sweep(&opts)?;
            if !opts.dry_run {
                println!("{}", outcome.summary);
                println!("{} runs trained now, {} reused from earlier launches, {} failed.", outcome.trained, outcome.reused, outcome.failed);
            }
            Ok(())
        }
    }
}
