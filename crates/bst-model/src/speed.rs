//! Layer speed: one sequence mixer of any architecture, timed forward and forward+backward at a
//! length, as in the paper's layer-speed figure (Fathi et al. 2023, §4: one layer, L up to 65k).
//!
//! ```no_run
//! use bst_model::speed::{Direction, LayerSpeed, SpeedConfig};
//! let cfg = bst_attn::LayerConfig::small(128, 4, 32);
//! let mut layer = LayerSpeed::new(bst_model::LayerKind::of("BST:SH:S4D".parse().unwrap()), &cfg, tch::Device::Cpu);
//! for seq in [1024, 4096, 16384] {
//!     let point = layer.measure(seq, Direction::ForwardBackward, &SpeedConfig::default());
//!     println!("{seq}: {point:?}");
//! }
//! ```
//!
//! Every call starts from a fresh [`MixerState`] (BRECT from its initial state), so a point
//! measures one window of L tokens. Forward runs in evaluation mode under `no_grad` (SSM kernels
//! come from the evaluation cache after the first call, as they would when evaluating a trained
//! model); forward+backward runs in training mode and backpropagates the sum of the outputs.
//! Each point is `warmup` untimed calls, then `repeats` timed ones, the device synchronised
//! before each clock read; the median and the range are reported, never a single call. A point
//! whose estimate (a power law through the two previous points of the same layer and direction)
//! exceeds the time cap is skipped, so a sweep over L stops growing where a layer gets too slow.

use std::time::Instant;

use bst_attn::{BlockSelfAttention, BrectCell, BstAttention, LayerConfig, Mixer, MixerState, XlAttention};
use bst_ssm::{GssLayer, SsmKind, SsmLayerConfig, SsmSublayer};
use tch::{nn, Device, Kind, Tensor};

use crate::{Architecture, LayerKind};

/// The mixer of one layer of `kind`, built from `cfg` under `vs` (the language model's layers
/// are built by this too, so a timed layer is the trained one).
pub fn build_mixer(vs: &nn::Path, kind: LayerKind, cfg: &LayerConfig) -> Box<dyn Mixer> {
    match kind {
        LayerKind::Slide => Box::new(BlockSelfAttention::new(vs, cfg)),
        LayerKind::Bst { context, ssm } => Box::new(BstAttention::new(vs, cfg, context, ssm)),
        LayerKind::Brect => Box::new(BrectCell::new(vs, cfg)),
        LayerKind::Xl => Box::new(XlAttention::transformer_xl(vs, cfg)),
        LayerKind::Attention => Box::new(XlAttention::full(vs, cfg)),
        // GSS uses DSS, a diagonal SSM; S4D is that family's standard form
        LayerKind::Gss => Box::new(GssLayer::new(vs, &SsmLayerConfig::new(&cfg.ssm, SsmKind::S4d, cfg.dims.d_model, cfg.max_len))),
        LayerKind::Ssm => Box::new(SsmSublayer::new(&(vs / "ssm"), &SsmLayerConfig::new(&cfg.ssm, SsmKind::S4d, cfg.dims.d_model, cfg.max_len))),
    }
}

impl LayerKind {
    /// The layer that makes an architecture what it is: its BST, BRECT, XL or GSS layer
    /// (SLIDE for SLIDE, the S4D sublayer for S4D).
    pub fn of(arch: Architecture) -> LayerKind {
        match arch {
            Architecture::Bst { context, ssm } => LayerKind::Bst { context, ssm },
            Architecture::Slide => LayerKind::Slide,
            Architecture::Brect => LayerKind::Brect,
            Architecture::TransformerXl => LayerKind::Xl,
            Architecture::GssHybrid => LayerKind::Gss,
            Architecture::Transformer => LayerKind::Attention,
            Architecture::S4d => LayerKind::Ssm,
        }
    }
}

/// What a timed call does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// Evaluation-mode forward under `no_grad`.
    Forward,
    /// Training-mode forward, then backward of the outputs' sum into the input and the weights.
    ForwardBackward,
}

impl std::fmt::Display for Direction {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Direction::Forward => "forward",
            Direction::ForwardBackward => "forward+backward",
        })
    }
}

/// How a point is measured.
#[derive(Debug, Clone, PartialEq)]
pub struct SpeedConfig {
    /// Untimed calls before the timed ones (allocator, kernel cache, first-touch effects).
    pub warmup: usize,
    /// Timed calls; the median is reported.
    pub repeats: usize,
    /// Sequences per call.
    pub batch: i64,
    /// The most seconds one point may take, warm-up included: a point estimated to take longer
    /// is skipped.
    pub cap_s: f64,
}

impl Default for SpeedConfig {
    fn default() -> Self {
        Self { warmup: 1, repeats: 5, batch: 1, cap_s: 120.0 }
    }
}

/// Seconds per call of one point.
#[derive(Debug, Clone, PartialEq)]
pub struct Timing {
    pub median_s: f64,
    pub min_s: f64,
    pub max_s: f64,
    /// Every timed call, in order.
    pub samples: Vec<f64>,
}

impl Timing {
    /// Summary of a non-empty list of timed calls.
    pub fn from_samples(samples: Vec<f64>) -> Self {
        assert!(!samples.is_empty(), "a timing needs at least one sample");
        let mut sorted = samples.clone();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let median_s = if n % 2 == 1 { sorted[n / 2] } else { 0.5 * (sorted[n / 2 - 1] + sorted[n / 2]) };
        Self { median_s, min_s: sorted[0], max_s: sorted[n - 1], samples }
    }

    /// The range of the calls relative to the median, `(max - min) / median`.
    pub fn spread(&self) -> f64 {
        (self.max_s - self.min_s) / self.median_s
    }
}

/// One measured (or skipped) point.
#[derive(Debug, Clone, PartialEq)]
pub enum Point {
    Timed(Timing),
    /// Not run: the estimate of one call, in seconds, times the calls of a point exceeded the cap.
    Skipped { estimate_s: f64 },
}

impl Point {
    pub fn timing(&self) -> Option<&Timing> {
        match self {
            Point::Timed(t) => Some(t),
            Point::Skipped { .. } => None,
        }
    }
}

/// Seconds of one call at `seq` extrapolated from earlier `(seq, seconds)` points by a power law
/// through the two longest (at least linear: no layer gets cheaper per token), or linearly from
/// one; `None` without points.
pub fn estimate_seconds(history: &[(i64, f64)], seq: i64) -> Option<f64> {
    let mut points = history.to_vec();
    points.sort_by_key(|p| p.0);
    let &(l1, t1) = points.last()?;
    let exponent = match points.len() {
        1 => 1.0,
        n => {
            let (l0, t0) = points[n - 2];
            if l0 == l1 { 1.0 } else { ((t1 / t0).ln() / (l1 as f64 / l0 as f64).ln()).max(1.0) }
        }
    };
    Some(t1 * (seq as f64 / l1 as f64).powf(exponent))
}

/// Least-squares slope of `ln seconds` against `ln seq`: 1 for linear cost, 2 for quadratic
/// (O(L log L) shows as slightly above 1). `None` with fewer than two distinct lengths.
pub fn loglog_slope(points: &[(i64, f64)]) -> Option<f64> {
    let xy: Vec<(f64, f64)> = points.iter().map(|&(l, t)| ((l as f64).ln(), t.ln())).collect();
    let n = xy.len() as f64;
    let (mx, my) = (xy.iter().map(|p| p.0).sum::<f64>() / n, xy.iter().map(|p| p.1).sum::<f64>() / n);
    let sxx: f64 = xy.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = xy.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    (xy.len() >= 2 && sxx > 0.0).then(|| sxy / sxx)
}

/// This process's resident memory in bytes from `/proc/self/status` (`VmRSS` now, `VmHWM` the
/// peak); `None` where that file does not exist (not Linux).
pub fn resident_bytes(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))?;
    let kb: u64 = line[field.len() + 1..].trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb * 1024)
}

/// Runs `f` and returns its result with the peak resident memory while it ran, above what was
/// resident before (Linux: the peak is reset through `/proc/self/clear_refs`; `None`
/// elsewhere). Memory that the allocator keeps from earlier work is reused without showing up,
/// so measure a fresh process.
pub fn peak_resident_during<T>(f: impl FnOnce() -> T) -> (T, Option<u64>) {
    let before = resident_bytes("VmRSS");
    let reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    let out = f();
    let peak = resident_bytes("VmHWM");
    let grown = match (reset, before, peak) {
        (true, Some(b), Some(p)) => Some(p.saturating_sub(b)),
        _ => None,
    };
    (out, grown)
}

/// One layer with its own weights, ready to be timed.
pub struct LayerSpeed {
    vs: nn::VarStore,
    mixer: Box<dyn Mixer>,
    d_model: i64,
    /// Earlier points' medians per direction, for the estimate that skips slow points.
    history: Vec<(Direction, i64, f64)>,
}

impl LayerSpeed {
    /// One layer of `kind`, freshly initialised (seeded by the caller's `tch::manual_seed`).
    pub fn new(kind: LayerKind, cfg: &LayerConfig, device: Device) -> Self {
        let vs = nn::VarStore::new(device);
        let mixer = build_mixer(&vs.root(), kind, cfg);
        Self { vs, mixer, d_model: cfg.dims.d_model as i64, history: Vec::new() }
    }

    /// The SSM sublayer of a BST layer with kernels of `kind` alone (d -> d/4 -> SSM -> d).
    pub fn ssm_sublayer(kind: SsmKind, cfg: &LayerConfig, device: Device) -> Self {
        let vs = nn::VarStore::new(device);
        let sublayer = SsmSublayer::new(&vs.root(), &SsmLayerConfig::new(&cfg.ssm, kind, cfg.dims.d_model, cfg.max_len));
        Self { vs, mixer: Box::new(sublayer), d_model: cfg.dims.d_model as i64, history: Vec::new() }
    }

    /// The layer's weights (to save them, e.g. for a reference implementation to load).
    pub fn var_store(&self) -> &nn::VarStore {
        &self.vs
    }

    pub fn mixer(&self) -> &dyn Mixer {
        self.mixer.as_ref()
    }

    /// A fixed input `[batch, seq, d_model]` on the layer's device, values in [-1, 1]
    /// (deterministic without touching the global random generator).
    pub fn input(&self, batch: i64, seq: i64) -> Tensor {
        let n = batch * seq * self.d_model;
        (Tensor::arange(n, (Kind::Float, self.vs.device())) * 0.618_034).sin().view([batch, seq, self.d_model])
    }

    /// One call on `xs`, in seconds, the device synchronised before and after.
    pub fn call(&self, xs: &Tensor, direction: Direction) -> f64 {
        let device = self.vs.device();
        bst_core::sync(device);
        let start = Instant::now();
        match direction {
            Direction::Forward => drop(tch::no_grad(|| self.mixer.forward(xs, &mut MixerState::Fresh, false))),
            Direction::ForwardBackward => {
                let xs = xs.detach().set_requires_grad(true);
                self.mixer.forward(&xs, &mut MixerState::Fresh, true).sum(Kind::Float).backward();
            }
        }
        bst_core::sync(device);
        start.elapsed().as_secs_f64()
    }

    /// The estimated seconds of one call at `seq` from this layer's earlier points.
    pub fn estimate(&self, seq: i64, direction: Direction) -> Option<f64> {
        let history: Vec<(i64, f64)> = self.history.iter().filter(|h| h.0 == direction).map(|h| (h.1, h.2)).collect();
        estimate_seconds(&history, seq)
    }

    /// Times `seq` tokens per sequence in `direction`: warm-up, then the timed repeats; skipped
    /// when the estimate says the point would exceed `cfg.cap_s`.
    pub fn measure(&mut self, seq: i64, direction: Direction, cfg: &SpeedConfig) -> Point {
        let calls = (cfg.warmup + cfg.repeats) as f64;
        if let Some(estimate_s) = self.estimate(seq, direction) {
            if estimate_s * calls > cfg.cap_s {
                return Point::Skipped { estimate_s };
            }
        }
        let xs = self.input(cfg.batch, seq);
        for _ in 0..cfg.warmup {
            self.call(&xs, direction);
        }
        let timing = Timing::from_samples((0..cfg.repeats.max(1)).map(|_| self.call(&xs, direction)).collect());
        self.record(seq, direction, timing.median_s);
        Point::Timed(timing)
    }

    /// Adds an externally timed median (e.g. interleaved calls of [`Self::call`]) to the history
    /// the estimate reads.
    pub fn record(&mut self, seq: i64, direction: Direction, median_s: f64) {
        self.history.push((direction, seq, median_s));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_estimates_and_slopes() {
        let t = Timing::from_samples(vec![3.0, 1.0, 2.0, 10.0]);
        assert_eq!((t.median_s, t.min_s, t.max_s), (2.5, 1.0, 10.0));
        assert!((t.spread() - 3.6).abs() < 1e-12);
        assert_eq!(estimate_seconds(&[], 10), None);
        assert_eq!(estimate_seconds(&[(100, 2.0)], 400), Some(8.0));
        // quadratic growth between the last two points is extrapolated as quadratic
        let q = estimate_seconds(&[(10, 9.0), (100, 1.0), (200, 4.0)], 400).unwrap();
        assert!((q - 16.0).abs() < 1e-9, "{q}");
        // a layer never gets cheaper per token: sublinear growth is extrapolated linearly
        assert!((estimate_seconds(&[(100, 1.0), (200, 1.1)], 400).unwrap() - 2.2).abs() < 1e-9);
        let s = loglog_slope(&[(1024, 1.0), (4096, 4.0), (16384, 16.0)]).unwrap();
        assert!((s - 1.0).abs() < 1e-12);
        assert_eq!(loglog_slope(&[(1024, 1.0)]), None);
    }

    /// Every layer kind builds and runs both directions; a point past the cap is skipped.
    #[test]
    fn every_kind_is_timed_and_slow_points_are_skipped() {
        let mut cfg = LayerConfig::small(16, 2, 8);
        cfg.max_len = 32;
        let kinds = ["SLIDE", "BST:SH:S4D", "BST:MH:S4", "BST:MF:UNSTRUCT", "BRECT:FIXED:SKIP", "TRSF-XL", "TRANSFORMER", "GSS-HYBRID"];
        let quick = SpeedConfig { warmup: 0, repeats: 1, ..SpeedConfig::default() };
        for arch in kinds {
            let mut layer = LayerSpeed::new(LayerKind::of(arch.parse().unwrap()), &cfg, Device::Cpu);
            for direction in [Direction::Forward, Direction::ForwardBackward] {
                let point = layer.measure(32, direction, &quick);
                assert!(point.timing().is_some_and(|t| t.median_s > 0.0), "{arch} {direction}");
            }
        }
        let mut ssm = LayerSpeed::ssm_sublayer(SsmKind::S4d, &cfg, Device::Cpu);
        assert!(ssm.measure(32, Direction::ForwardBackward, &quick).timing().is_some());
        ssm.record(64, Direction::ForwardBackward, 10.0);
        let capped = SpeedConfig { cap_s: 30.0, ..quick };
        assert!(matches!(ssm.measure(256, Direction::ForwardBackward, &capped), Point::Skipped { estimate_s } if estimate_s >= 40.0));
    }

    #[test]
    fn peak_memory_sees_a_large_allocation() {
        let (_, grown) = peak_resident_during(|| {
            let t = Tensor::ones([64 << 20], (Kind::Uint8, Device::Cpu)); // 64 MiB, touched
            t.sum(Kind::Int64).int64_value(&[])
        });
        let Some(grown) = grown else {
            return; // /proc/self/clear_refs not writable here (some sandboxes)
        };
        assert!(grown >= 60 << 20, "peak grew by {grown} bytes");
    }
}
