//! `bst-perf`: bst's layers and training step against the obvious alternative, the same models in
//! PyTorch (`scripts/reference/`, eager and torch.compile), in one invocation on the same machine
//! and threads.
//!
//! 1. Parity: our weights and inputs go to the reference; outputs and gradients must agree within
//!    1e-4 (f32) for SLIDE, BST:SH:S4D, BRECT:FIXED:SKIP and the CPU-profile language model, or
//!    nothing is timed (exit status 1). `--tiny` stops here at a tiny size (the test suite runs it).
//! 2. The machine's peak: one large f32 GEMM, ours and PyTorch's.
//! 3. One layer against L, forward and forward+backward, ours / eager / compiled interleaved call
//!    by call (layers without a reference, and the SSM sublayer alone, are ours only).
//! 4. Whole training steps of the CPU-profile model (tokens/s), interleaved in rounds.
//! 5. Peak memory of a training step against L, each measured in a fresh process.
//!
//! Writes `<out>/{parity,layers,gemm,training,memory}.csv`, `summary.md`, `layers.png/.svg` and
//! prints the summary. Default: the CPU profile (d 128, 4 heads, W 32, S 16, batch 1; training
//! batch 16 x L 256), L in {1k, 4k, 16k}:
//!
//! ```text
//! cargo run --release -p bst-sweep --bin bst-perf
//! ```

mod parity;
mod report;
mod study;
mod worker;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use bst_attn::LayerConfig;
use bst_model::speed::{Direction, LayerSpeed};
use bst_model::{DeviceChoice, LayerKind, Precision, RunConfig};
use bst_ssm::SsmKind;
use clap::Parser;
use serde_json::json;
use tch::Device;

use report::{Context, Measurements, TrainingResult};
use study::{Impl, Plan, Subject, REFERENCE_LAYERS};
use worker::Worker;

#[derive(Debug, Parser)]
#[command(version, about = "bst's layers and training step against PyTorch eager and torch.compile, parity first")]
struct Args {
    /// Output folder.
    #[arg(long, default_value = "results/perf")]
    out: PathBuf,
    /// Parity only, at a tiny size (d 32, 2 heads, W 8): what the test suite runs.
    #[arg(long)]
    tiny: bool,
    /// Parity only, at the study's size.
    #[arg(long)]
    parity_only: bool,
    /// Sequence lengths of the layer study.
    #[arg(long, value_delimiter = ',', default_value = "1024,4096,16384")]
    lengths: Vec<i64>,
    /// Layers to time (those without a PyTorch reference are timed for ours only).
    #[arg(long, value_delimiter = ',', default_value = "SLIDE,BST:SH:S4D,BRECT:FIXED:SKIP,BST:MH:S4D,BST:MF:S4D")]
    layers: Vec<String>,
    #[arg(long, default_value_t = 128)]
    d_model: usize,
    #[arg(long, default_value_t = 4)]
    heads: usize,
    /// Window W.
    #[arg(long, default_value_t = 32)]
    window: usize,
    /// S: MF's filters and BRECT's recurrent states.
    #[arg(long, default_value_t = 16)]
    states: usize,
    /// Sequences per layer call.
    #[arg(long, default_value_t = 1)]
    batch: i64,
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// Timed calls per point (and rounds of training steps).
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// Seconds one point may take; points estimated to take longer are skipped.
    #[arg(long, default_value_t = 120.0)]
    cap_s: f64,
    /// Threads of both sides (default: every core).
    #[arg(long)]
    threads: Option<usize>,
    /// auto, cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    device: DeviceChoice,
    /// f32, or bf16 (autocast on both sides; parity and the GEMM peak are always f32).
    #[arg(long, default_value = "f32", value_parser = ["f32", "bf16"])]
    precision: String,
    /// Leave out the torch.compile rows (compiling takes minutes per shape on a small CPU).
    #[arg(long)]
    no_compile: bool,
    /// The Python with torch (default: .venv/bin/python, else python3).
    #[arg(long)]
    python: Option<PathBuf>,
    /// Training steps per implementation and round.
    #[arg(long, default_value_t = 3)]
    train_steps: usize,
    /// Training batch and length (default: the CPU profile's 16 x 256).
    #[arg(long, default_value_t = 16)]
    train_batch: usize,
    #[arg(long, default_value_t = 256)]
    train_seq: usize,
    /// Lengths of the peak-memory probe (batch 1); empty to skip.
    #[arg(long, value_delimiter = ',', default_value = "1024,4096,16384")]
    memory_lengths: Vec<i64>,
    /// Side of the square GEMM that measures the peak.
    #[arg(long, default_value_t = 2048)]
    gemm: i64,
    /// Internal: print the peak memory of two training steps at this length and exit.
    #[arg(long, hide = true)]
    memory_probe: Option<usize>,
}

/// The CPU profile's model (4 layers, d 128, W 32: the CPU `[base]` of experiments/unstructured.toml, BST:SH:S4D with
/// the BST layer at index 1), at `args`' sizes.
fn profile_run(args: &Args, batch: usize, seq: usize) -> RunConfig {
    let mut run = RunConfig::default();
    run.model.arch = "BST:SH:S4D".parse().expect("a known architecture");
    (run.model.n_layers, run.model.d_model, run.model.n_heads, run.model.dropout) = (4, args.d_model, args.heads, 0.0);
    (run.model.ssm_layers, run.model.context_states) = (vec![1], args.states);
    run.attn.window = args.window;
    (run.train.batch_size, run.train.seq_len, run.train.lr, run.train.warmup_steps) = (batch, seq, 2e-3, 0);
    run.train.precision = precision(args);
    run
}

fn precision(args: &Args) -> Precision {
    if args.precision == "bf16" { Precision::Bf16 } else { Precision::F32 }
}

fn layer_config(args: &Args, max_len: usize) -> LayerConfig {
    let mut cfg = profile_run(args, 1, max_len).layer_config();
    cfg.max_len = max_len;
    cfg
}

/// Shrinks the sizes to the suite's tiny parity check.
fn tiny(args: &mut Args) {
    (args.d_model, args.heads, args.window, args.states) = (32, 2, 8, 4);
    (args.train_batch, args.train_seq) = (2, 32);
}

fn threads(args: &Args) -> usize {
    args.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

fn device_name(device: Device) -> &'static str {
    match device {
        Device::Cuda(_) => "cuda",
        _ => "cpu",
    }
}

/// Parity of every reference layer at L = 4W (batch 2) and of the language model.
fn run_parity(worker: &mut Worker, args: &Args, device: Device, dir: &Path) -> Result<Vec<parity::ParityRow>> {
    let seq = 4 * args.window as i64;
    let cfg = layer_config(args, seq as usize);
    let mut rows = Vec::new();
    for arch in REFERENCE_LAYERS {
        tch::manual_seed(1);
        let layer = LayerSpeed::new(LayerKind::of(arch.parse().expect("known")), &cfg, device);
        rows.extend(parity::layer_parity(worker, dir, &format!("parity_{}", arch.to_lowercase().replace(':', "_")), &layer, arch, &cfg, 2, seq)?);
    }
    let run = profile_run(args, 2, args.train_seq);
    let vs = tch::nn::VarStore::new(device);
    let lm = run.build_model(&vs.root(), 256)?;
    rows.extend(parity::lm_parity(worker, dir, &lm, &vs, &run, 2)?);
    Ok(rows)
}

/// The study's layers: ours for every requested architecture, the reference's twin (same
/// weights) where it has one, and the SSM sublayer alone.
fn subjects(worker: &mut Worker, args: &Args, device: Device, dir: &Path) -> Result<Vec<Subject>> {
    let max_len = *args.lengths.iter().max().context("no --lengths")? as usize;
    let cfg = layer_config(args, max_len);
    let mut out = Vec::new();
    for arch in &args.layers {
        let kind = LayerKind::of(arch.parse().map_err(anyhow::Error::msg)?);
        tch::manual_seed(2);
        let mut subject = Subject::new(arch, kind, &cfg, device);
        if REFERENCE_LAYERS.contains(&arch.as_str()) {
            let weights = dir.join(format!("{}.weights.safetensors", subject.name.to_lowercase().replace(':', "_")));
            subject.speed.var_store().save(&weights)?;
            let key = subject.name.to_lowercase().replace(':', "_");
            worker.ask(parity::layer_request(&key, arch, &cfg, &weights))?;
            subject.reference.insert(Impl::Eager, Ok(()));
            subject.reference.insert(Impl::Compile, Ok(()));
        }
        out.push(subject);
    }
    out.push(Subject::from_speed("SSM sublayer (S4D)", LayerSpeed::ssm_sublayer(SsmKind::S4d, &cfg, device)));
    Ok(out)
}

fn layer_study(worker: &mut Worker, args: &Args, device: Device, dir: &Path) -> Result<Vec<study::LayerRow>> {
    let plan = Plan { warmup: args.warmup, repeats: args.repeats, batch: args.batch, cap_s: args.cap_s, compile: !args.no_compile };
    let mut subjects = subjects(worker, args, device, dir)?;
    let mut rows = Vec::new();
    let mut lengths = args.lengths.clone();
    lengths.sort();
    for seq in lengths {
        for subject in &mut subjects {
            for direction in [Direction::Forward, Direction::ForwardBackward] {
                let point = study::measure_point(worker, subject, seq, direction, &plan);
                for r in &point {
                    if let study::Outcome::Timed(t) = &r.outcome {
                        eprintln!("[bst-perf] {} L={seq} {direction} {}: {:.2} ms", r.layer, r.who.name(), t.median_s * 1e3);
                    }
                }
                rows.extend(point);
            }
        }
    }
    Ok(rows)
}

fn training(worker: &mut Worker, args: &Args, device: Device, dir: &Path) -> Result<TrainingResult> {
    let run = profile_run(args, args.train_batch, args.train_seq);
    let steps = study::training(worker, &run, device, dir, args.repeats, args.train_steps, !args.no_compile)?;
    let tokens = (args.train_batch * args.train_seq) as f64;
    Ok(TrainingResult { batch: args.train_batch, seq: args.train_seq, steps, step_flops: 3.0 * study::forward_matmul_flops(&run, tokens)? })
}

/// Peak memory against L: our side in a fresh process of this binary, the reference's in a
/// fresh worker.
fn memory(args: &Args, python: &Path, root: &Path, device: Device) -> Result<Vec<(i64, Impl, Result<u64, String>)>> {
    let mut out = Vec::new();
    let exe = std::env::current_exe()?;
    for &seq in &args.memory_lengths {
        let probe = std::process::Command::new(&exe)
            .args(["--memory-probe", &seq.to_string(), "--threads", &threads(args).to_string(), "--device", device_name(device)])
            .args(["--d-model", &args.d_model.to_string(), "--heads", &args.heads.to_string(), "--window", &args.window.to_string(), "--states", &args.states.to_string()])
            .output()?;
        let ours = String::from_utf8_lossy(&probe.stdout).trim().parse::<u64>().map_err(|_| format!("probe failed: {}", String::from_utf8_lossy(&probe.stderr).trim()));
        out.push((seq, Impl::Ours, ours));
        let run = profile_run(args, 1, seq as usize);
        let mut request = parity::lm_fields("probe", &run)?;
        let fields = request.as_object_mut().context("an object")?;
        fields.insert("op".into(), json!("memory_probe"));
        fields.insert("batch".into(), json!(1));
        fields.insert("seq".into(), json!(seq));
        let theirs = Worker::start(python, root, threads(args), device_name(device), &args.precision).and_then(|mut w| w.ask(request.clone())).map(|a| a["bytes"].as_u64().unwrap_or(0)).map_err(|e| format!("{e}"));
        out.push((seq, Impl::Eager, theirs));
    }
    Ok(out)
}

fn memory_probe(args: &Args, seq: usize, device: Device) -> Result<()> {
    let run = profile_run(args, 1, seq);
    match study::memory_probe_ours(&run, device)? {
        Some(bytes) => println!("{bytes}"),
        None => bail!("peak resident memory is not readable here (needs Linux /proc/self/clear_refs)"),
    }
    Ok(())
}

fn main() -> Result<()> {
    let mut args = Args::parse();
    let device = args.device.resolve()?;
    let n_threads = threads(&args);
    tch::set_num_threads(n_threads as i32);
    if let Some(seq) = args.memory_probe {
        return memory_probe(&args, seq, device);
    }
    if args.tiny {
        tiny(&mut args);
    }
    let root = std::env::current_dir()?;
    let python = args.python.clone().unwrap_or_else(|| worker::default_python(&root));
    std::fs::create_dir_all(&args.out)?;
    let scratch = std::env::temp_dir().join(format!("bst-perf-{}", std::process::id()));
    std::fs::create_dir_all(&scratch)?;
    let result = run_all(&mut args, device, &root, &python, &scratch);
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

fn run_all(args: &mut Args, device: Device, root: &Path, python: &Path, scratch: &Path) -> Result<()> {
    let n_threads = threads(args);
    let precision_name = args.precision.clone();
    let mut worker = Worker::start(python, root, n_threads, device_name(device), "f32")?;
    let ctx = Context {
        commit: bst_sweep::provenance::git_commit(),
        device: worker.device.clone(),
        threads: n_threads,
        precision: precision_name.clone(),
        torch: worker.torch.clone(),
        command: std::env::args().collect::<Vec<_>>().join(" "),
        date: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
    };
    let parity_rows = run_parity(&mut worker, args, device, scratch)?;
    let mut m = Measurements { parity: parity_rows, gemm: Vec::new(), gemm_n: args.gemm, layers: Vec::new(), training: None, memory: Vec::new(), batch: args.batch };
    let failed: Vec<String> = m.parity.iter().filter(|r| !r.passed()).map(|r| format!("{} {}: {:.2e}", r.subject, r.tensor, r.relative())).collect();
    if !failed.is_empty() || args.tiny || args.parity_only {
        report::write_csvs(&args.out, &m, &ctx)?;
        println!("{}", report::summary(&m, &ctx));
        if !failed.is_empty() {
            bail!("parity failed (tolerance {:.0e}):\n{}", parity::TOLERANCE, failed.join("\n"));
        }
        return Ok(());
    }
    drop(worker);
    let mut worker = Worker::start(python, root, n_threads, device_name(device), &precision_name)?;
    m.gemm = study::gemm(&mut worker, args.gemm, 5, device)?;
    m.layers = {
        let _autocast = bst_model::Autocast::enter(device, precision(args))?;
        layer_study(&mut worker, args, device, scratch)?
    };
    m.training = Some(training(&mut worker, args, device, scratch)?);
    drop(worker);
    if device.is_cuda() {
        eprintln!("[bst-perf] peak memory is probed on CPU only (ours reads the process's resident memory)");
    } else {
        m.memory = memory(args, python, root, device)?;
    }
    report::write_csvs(&args.out, &m, &ctx)?;
    std::fs::write(args.out.join("summary.md"), report::summary(&m, &ctx))?;
    report::plot(&args.out, &m.layers)?;
    println!("{}", report::summary(&m, &ctx));
    Ok(())
}
