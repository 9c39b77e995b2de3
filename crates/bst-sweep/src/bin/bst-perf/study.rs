//! The measurements: one large GEMM (this machine's peak), each layer against L in both
//! directions, a whole training step of the CPU-profile model, and its peak memory against L;
//! ours and the PyTorch reference interleaved call by call, so that load from elsewhere on the
//! machine falls on both alike.

use std::collections::HashMap;
use std::time::Instant;

use anyhow::Result;
use bst_attn::LayerConfig;
use bst_data::TokenStream;
use bst_model::speed::{estimate_seconds, Direction, LayerSpeed, Timing};
use bst_model::{LayerKind, RunConfig, Trainer};
use serde_json::json;
use tch::{nn, Device, Kind, Tensor};

use crate::worker::Worker;

/// Who computed a row: us, PyTorch eager, or PyTorch under torch.compile (Inductor).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Impl {
    Ours,
    Eager,
    Compile,
}

impl Impl {
    pub fn name(self) -> &'static str {
        match self {
            Impl::Ours => "ours",
            Impl::Eager => "pytorch-eager",
            Impl::Compile => "pytorch-compile",
        }
    }

    fn request(self) -> &'static str {
        match self {
            Impl::Ours => unreachable!("ours is not asked of the reference"),
            Impl::Eager => "eager",
            Impl::Compile => "compile",
        }
    }
}

/// The outcome of one (layer, L, direction, implementation) point.
#[derive(Debug, Clone)]
pub enum Outcome {
    Timed(Timing),
    /// Estimated past the time cap (seconds per call).
    Skipped(f64),
    /// The implementation does not exist for this layer, or failed (the reason).
    Missing(String),
}

#[derive(Debug, Clone)]
pub struct LayerRow {
    pub layer: String,
    pub seq: i64,
    pub direction: Direction,
    pub who: Impl,
    pub outcome: Outcome,
}

/// How points are measured.
#[derive(Debug, Clone)]
pub struct Plan {
    pub warmup: usize,
    pub repeats: usize,
    pub batch: i64,
    pub cap_s: f64,
    pub compile: bool,
}

/// The layers the reference implements (scripts/reference/bst_reference.py).
pub const REFERENCE_LAYERS: [&str; 3] = ["SLIDE", "BST:SH:S4D", "BRECT:FIXED:SKIP"];

/// One layer of ours, and whether (and under which name) the reference has loaded its twin.
pub struct Subject {
    pub name: String,
    pub speed: LayerSpeed,
    /// Reference implementations still in the race (a failed one drops out with its reason).
    pub reference: HashMap<Impl, Result<(), String>>,
    history: HashMap<(Impl, Direction), Vec<(i64, f64)>>,
}

impl Subject {
    pub fn new(name: &str, kind: LayerKind, cfg: &LayerConfig, device: Device) -> Self {
        Self { name: name.to_owned(), speed: LayerSpeed::new(kind, cfg, device), reference: HashMap::new(), history: HashMap::new() }
    }

    /// A subject that only we implement (e.g. the SSM sublayer alone).
    pub fn from_speed(name: &str, speed: LayerSpeed) -> Self {
        Self { name: name.to_owned(), speed, reference: HashMap::new(), history: HashMap::new() }
    }

    fn estimate(&self, who: Impl, seq: i64, direction: Direction) -> Option<f64> {
        self.history.get(&(who, direction)).and_then(|h| estimate_seconds(h, seq))
    }

    fn key(&self) -> String {
        self.name.to_lowercase().replace(':', "_")
    }
}

/// The implementations of one point that will run, and the rows of those that will not.
fn contenders(subject: &Subject, seq: i64, direction: Direction, plan: &Plan) -> (Vec<Impl>, Vec<LayerRow>) {
    let (mut run, mut rows) = (Vec::new(), Vec::new());
    let row = |who, outcome| LayerRow { layer: subject.name.clone(), seq, direction, who, outcome };
    for who in [Impl::Ours, Impl::Eager, Impl::Compile] {
        let available = match who {
            Impl::Ours => Ok(()),
            Impl::Compile if !plan.compile => Err("not requested (--no-compile)".to_owned()),
            _ => subject.reference.get(&who).cloned().unwrap_or(Err("no reference implementation".into())),
        };
        let estimate = subject.estimate(who, seq, direction).filter(|e| e * (plan.warmup + plan.repeats) as f64 > plan.cap_s);
        match (available, estimate) {
            (Err(why), _) => rows.push(row(who, Outcome::Missing(why))),
            (Ok(()), Some(e)) => rows.push(row(who, Outcome::Skipped(e))),
            (Ok(()), None) => run.push(who),
        }
    }
    (run, rows)
}

/// One call of `who`, in seconds.
fn call(worker: &mut Worker, subject: &Subject, xs: &Tensor, who: Impl, seq: i64, direction: Direction, batch: i64, runs: usize) -> Result<Vec<f64>> {
    if who == Impl::Ours {
        return Ok((0..runs).map(|_| subject.speed.call(xs, direction)).collect());
    }
    let request = json!({"op": "time", "name": subject.key(), "impl": who.request(), "seq": seq, "batch": batch, "direction": direction.to_string(), "runs": runs});
    worker.seconds(request)
}

/// Every implementation of one point, interleaved: all warm up, then each repeat runs ours,
/// eager and compiled in turn.
pub fn measure_point(worker: &mut Worker, subject: &mut Subject, seq: i64, direction: Direction, plan: &Plan) -> Vec<LayerRow> {
    let (mut running, mut rows) = contenders(subject, seq, direction, plan);
    let xs = subject.speed.input(plan.batch, seq);
    let mut samples: HashMap<Impl, Vec<f64>> = HashMap::new();
    for round in 0..=plan.repeats {
        let runs = if round == 0 { plan.warmup } else { 1 };
        if runs == 0 {
            continue;
        }
        for who in running.clone() {
            match call(worker, subject, &xs, who, seq, direction, plan.batch, runs) {
                Ok(s) if round > 0 => samples.entry(who).or_default().extend(s),
                Ok(_) => {}
                Err(e) => {
                    eprintln!("[bst-perf] {} {} L={seq} {direction}: {e}", subject.name, who.name());
                    subject.reference.insert(who, Err(format!("{e}")));
                    running.retain(|w| *w != who);
                    rows.push(LayerRow { layer: subject.name.clone(), seq, direction, who, outcome: Outcome::Missing(format!("{e}")) });
                }
            }
        }
    }
    for (who, s) in samples {
        let timing = Timing::from_samples(s);
        subject.history.entry((who, direction)).or_default().push((seq, timing.median_s));
        if who == Impl::Ours {
            subject.speed.record(seq, direction, timing.median_s);
        }
        rows.push(LayerRow { layer: subject.name.clone(), seq, direction, who, outcome: Outcome::Timed(timing) });
    }
    rows.sort_by_key(|r| r.who);
    rows
}

/// GEMM throughput in GFLOP/s (best of `runs` calls of an n x n x n f32 product).
pub fn gemm(worker: &mut Worker, n: i64, runs: usize, device: Device) -> Result<Vec<(Impl, f64)>> {
    let a = Tensor::randn([n, n], (Kind::Float, device));
    let b = Tensor::randn([n, n], (Kind::Float, device));
    let flops = 2.0 * (n as f64).powi(3);
    let ours = (0..runs)
        .map(|_| {
            bst_core::sync(device);
            let start = Instant::now();
            let _ = a.mm(&b);
            bst_core::sync(device);
            start.elapsed().as_secs_f64()
        })
        .fold(f64::MAX, f64::min);
    let theirs = worker.seconds(json!({"op": "gemm", "n": n, "runs": runs, "precision": "f32"}))?.into_iter().fold(f64::MAX, f64::min);
    Ok(vec![(Impl::Ours, flops / ours / 1e9), (Impl::Eager, flops / theirs / 1e9)])
}

/// A token stream of random bytes in 32 documents, long enough for `steps` sequential batches.
pub fn random_stream(batch: usize, seq: usize, steps: usize) -> TokenStream {
    let docs = 32.max(batch);
    let doc_len = (steps + 2) * (seq + 1) * batch.div_ceil(docs).max(1) + seq + 1;
    tch::manual_seed(13);
    let bytes: Vec<u8> = Vec::try_from(Tensor::randint(256, [(docs * doc_len) as i64], (Kind::Uint8, Device::Cpu))).expect("bytes");
    TokenStream::from_bytes(&bytes).with_doc_starts((0..docs).map(|i| i * doc_len).collect())
}

/// Seconds of each of our training steps and of the reference's (eager, compiled), interleaved
/// in rounds of `steps_per_round` after two warm-up steps each; the reference starts from our
/// initial weights.
pub fn training(worker: &mut Worker, run: &RunConfig, device: Device, dir: &std::path::Path, rounds: usize, steps_per_round: usize, compile: bool) -> Result<Vec<(Impl, Result<Timing, String>)>> {
    let vs = nn::VarStore::new(device);
    let lm = run.build_model(&vs.root(), 256)?;
    let stream = random_stream(run.train.batch_size, run.train.seq_len, 2 + rounds * steps_per_round);
    let mut trainer = Trainer::new(&lm, &vs, run, &stream)?;
    worker.ask(crate::parity::lm_request("lm_train", dir, &vs, run, run.carries_state(lm.plan()))?)?;
    let (batch, seq) = (run.train.batch_size, run.train.seq_len);
    let mut who: Vec<Impl> = vec![Impl::Ours, Impl::Eager];
    if compile {
        who.push(Impl::Compile);
    }
    let mut samples: HashMap<Impl, Result<Vec<f64>, String>> = who.iter().map(|w| (*w, Ok(Vec::new()))).collect();
    for round in 0..=rounds {
        let steps = if round == 0 { 2 } else { steps_per_round };
        for &w in &who {
            let Some(Ok(list)) = samples.get_mut(&w) else { continue };
            let got = match w {
                Impl::Ours => (0..steps).map(|_| our_step(&mut trainer, &stream, device)).collect::<Result<Vec<f64>>>(),
                _ => worker.seconds(json!({"op": "train", "name": "lm_train", "impl": w.request(), "batch": batch, "seq": seq, "steps": steps})),
            };
            match got {
                Ok(s) if round > 0 => list.extend(s),
                Ok(_) => {}
                Err(e) => {
                    eprintln!("[bst-perf] training step, {}: {e}", w.name());
                    samples.insert(w, Err(format!("{e}")));
                }
            }
        }
    }
    Ok(who.into_iter().map(|w| (w, samples.remove(&w).expect("every impl has samples").map(Timing::from_samples))).collect())
}

fn our_step(trainer: &mut Trainer, stream: &TokenStream, device: Device) -> Result<f64> {
    bst_core::sync(device);
    let start = Instant::now();
    trainer.train_step(stream)?;
    bst_core::sync(device);
    Ok(start.elapsed().as_secs_f64())
}

/// FLOPs of the matrix products (projections, MLP, head, attention scores and values as
/// computed: 2W keys per query in windowed self-attention, W in the BST cross-attention) of one
/// forward pass of `run`'s model over `tokens` tokens; a training step is about 3x that.
pub fn forward_matmul_flops(run: &RunConfig, tokens: f64) -> Result<f64> {
    let plan = run.validate()?;
    let (d, w) = (run.model.d_model as f64, run.attn.window as f64);
    let mlp = 2.0 * 2.0 * d * d * run.model.mlp_ratio as f64;
    let per_token: f64 = plan
        .0
        .iter()
        .map(|kind| {
            let slide = 2.0 * 4.0 * d * d + 2.0 * 2.0 * (2.0 * w) * d;
            let mixer = match kind {
                LayerKind::Slide => slide,
                // + cross q (d^2), cross k/v (2 d^2), the wider output (one more d^2), SSM down and up (d^2/4 each), cross-attention over W
                LayerKind::Bst { .. } => slide + 2.0 * (4.0 * d * d + 0.5 * d * d) + 2.0 * 2.0 * w * d,
                _ => f64::NAN,
            };
            mixer + mlp
        })
        .sum::<f64>()
        + 2.0 * d * 256.0;
    Ok(per_token * tokens)
}

/// Peak resident memory of two training steps of `run` in a fresh process of ours (this binary
/// with `--memory-probe`) and of the reference (a fresh worker), above what each process held
/// before building the model.
pub fn memory_probe_ours(run: &RunConfig, device: Device) -> Result<Option<u64>> {
    let _ = Tensor::ones([16], (Kind::Float, device)).sum(Kind::Float).double_value(&[]); // runtime up
    let (result, grown) = bst_model::speed::peak_resident_during(|| -> Result<()> {
        let vs = nn::VarStore::new(device);
        let lm = run.build_model(&vs.root(), 256)?;
        let stream = random_stream(run.train.batch_size, run.train.seq_len, 3);
        let mut trainer = Trainer::new(&lm, &vs, run, &stream)?;
        for _ in 0..2 {
            trainer.train_step(&stream)?;
        }
        Ok(())
    });
    result?;
    Ok(grown)
}
