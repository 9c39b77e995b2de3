//! `bst-sweep <sweep.toml> [key=value|key=v1,v2 ...]`: train every run of a grid, write
//! results/<name>/{runs.csv, test_bpb.png/.svg, loss_curves.png/.svg, report.md}.

use std::path::PathBuf;
use std::sync::atomic::Ordering;

use anyhow::{Context, Result};
use bst_model::DeviceChoice;
use bst_sweep::{run_sweep, Override, SweepOptions};
use clap::Parser;

#[derive(Debug, Parser)]
#[command(version, about = "Train and evaluate every run of a TOML sweep grid; write runs.csv, plots and a report")]
struct Args {
    /// Sweep file, e.g. experiments/ablation.toml.
    file: PathBuf,
    /// Hydra-style overrides: `key=value` sets a base value, `key=v1,v2` makes `key` a grid axis.
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
    /// List the runs (with their ids) and exit.
    #[arg(long)]
    dry_run: bool,
    /// Hide progress bars.
    #[arg(long)]
    quiet: bool,
}

fn main() -> Result<()> {
    let args = Args::parse();
    let mut opts = SweepOptions::new(&args.file);
    opts.profile = args.profile;
    opts.overrides = args.overrides;
    opts.results_root = args.results;
    opts.device = args.device;
    opts.dry_run = args.dry_run;
    opts.progress = !args.quiet;
    opts.command = std::env::args().collect::<Vec<_>>().join(" ");
    let stop = opts.stop.clone();
    ctrlc::set_handler(move || {
        if stop.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        eprintln!("\nstopping after this step (Ctrl-C again to quit now); finished runs are kept");
    })
    .context("installing the Ctrl-C handler")?;
    let outcome = run_sweep(&opts)?;
    if !opts.dry_run {
        println!("{}", outcome.summary);
        println!("{} runs trained now, {} reused from earlier launches.", outcome.trained, outcome.reused);
    }
    Ok(())
}
