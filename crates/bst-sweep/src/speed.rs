//! The layer-speed study (`[speed]` in a sweep file), the paper's layer-speed figure: one layer of
//! each architecture at the file's widths and window, forward and forward+backward, over lengths
//! L, with warm-up, repeated measurement and the device synchronised before every clock read.
//! A point whose estimated time exceeds `cap_s` is skipped (and recorded as skipped) instead of
//! hanging the sweep. Results: `speed.csv`, a log-log plot, and ratio tables in the report.

use std::time::Instant;

use bst_attn::{LayerConfig, Mixer, MixerState};
pub use bst_model::speed::Direction;
use bst_model::speed::{build_mixer, loglog_slope, Timing};
use bst_model::{Architecture, Autocast, LayerKind, Precision, RunConfig};
use serde::{Deserialize, Serialize};
use tch::{nn, Device, Kind, Tensor};
use toml::Table;

use crate::grid::deserialize_at;

use crate::stats::Summary;

/// The `[speed]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SpeedConfig {
    /// Layers to time, by architecture: the layer that makes it what it is
    /// ([`LayerKind::of`], built as the language model builds it): a BST layer for `BST:*`,
    /// SLIDE's layer, BRECT's recurrent cell, the GSS layer for GSS-HYBRID, full causal attention
    /// for TRANSFORMER, Transformer-XL attention for TRSF-XL, the S4D sublayer for S4D.
    pub archs: Vec<Architecture>,
    /// Sequence lengths L (multiples of `attn.window`, and of `model.segment_len` for TRSF-XL).
    pub lengths: Vec<usize>,
    pub directions: Vec<Direction>,
    /// Sequences per call.
    pub batch: usize,
    /// Untimed calls before measuring (allocator, kernel caches, CUDA context).
    pub warmup: usize,
    /// Timed calls per point: the median and the spread over them are reported.
    pub repeats: usize,
    /// A point whose estimated time (warm-up plus repeats) exceeds this many seconds is skipped.
    pub cap_s: f64,
    /// Forward passes in f32 or under bf16 autocast.
    pub precision: Precision,
    /// The widths, window and SSM settings come from the sweep's `[base]` (set when loading).
    #[serde(skip)]
    pub layer: Option<LayerConfig>,
}

impl Default for SpeedConfig {
    fn default() -> Self {
        let archs = ["SLIDE", "BST:SH:S4D", "BST:MH:S4D", "BST:MF:S4D", "BST:SH:S4", "BRECT:FIXED:SKIP"].map(|a| a.parse().expect("known architecture")).to_vec();
        Self {
            archs,
            lengths: vec![1024, 2048, 4096, 8192, 16384],
            directions: vec![Direction::Forward, Direction::ForwardBackward],
            batch: 1,
            warmup: 1,
            repeats: 5,
            cap_s: 120.0,
            precision: Precision::F32,
            layer: None,
        }
    }
}

impl SpeedConfig {
    /// Reads `[speed]` and takes the layer's widths from the sweep's `[base]`.
    pub fn from_table(table: Table, base: &Table) -> Result<Self, String> {
        let mut cfg: SpeedConfig = deserialize_at(table, "speed")?;
        let run: RunConfig = deserialize_at(base.clone(), "base")?;
        let layer = run.layer_config();
        layer.dims.validate().map_err(|e| e.to_string())?;
        for (key, v) in [("speed.batch", cfg.batch), ("speed.repeats", cfg.repeats)] {
            if v == 0 {
                return Err(format!("{key} = 0: must be >= 1"));
            }
        }
        if cfg.archs.is_empty() || cfg.lengths.is_empty() || cfg.directions.is_empty() {
            return Err("speed: archs, lengths and directions must each list at least one value".into());
        }
        for &l in &cfg.lengths {
            if l == 0 || l % layer.attn.window != 0 {
                return Err(format!("speed.lengths: {l} is not a positive multiple of attn.window = {}", layer.attn.window));
            }
            if cfg.archs.contains(&Architecture::TransformerXl) && l % layer.segment_len != 0 {
                return Err(format!("speed.lengths: {l} is not a multiple of model.segment_len = {} (TRSF-XL is timed)", layer.segment_len));
            }
        }
        cfg.lengths.sort_unstable();
        cfg.layer = Some(layer);
        Ok(cfg)
    }
}

/// One measured (or skipped) point.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpeedPoint {
    pub arch: String,
    pub direction: String,
    pub seq_len: usize,
    /// Median seconds per call (NaN when skipped).
    pub median_s: f64,
    /// Fastest and slowest timed call.
    pub min_s: f64,
    pub max_s: f64,
    pub repeats: usize,
    /// `ok`, or why it was skipped.
    pub status: String,
}

/// Seconds of one call, the device synchronised before the clock is read; every call starts from
/// a fresh state (BRECT from its initial state).
fn time_call(layer: &dyn Mixer, xs: &Tensor, direction: Direction, device: Device, precision: Precision) -> Result<f64, String> {
    bst_core::sync(device);
    let start = Instant::now();
    let _autocast = Autocast::enter(device, precision).map_err(|e| e.to_string())?;
    match direction {
        Direction::Forward => drop(tch::no_grad(|| layer.forward(xs, &mut MixerState::Fresh, false))),
        Direction::ForwardBackward => {
            let xs = xs.detach().set_requires_grad(true);
            let y = layer.forward(&xs, &mut MixerState::Fresh, true);
            drop(_autocast);
            y.to_kind(Kind::Float).sum(Kind::Float).backward();
        }
    }
    bst_core::sync(device);
    Ok(start.elapsed().as_secs_f64())
}

/// Times every architecture, direction and length of `cfg` on `device`, reporting each point to
/// `log` as it is measured.
pub fn run(cfg: &SpeedConfig, device: Device, log: &dyn Fn(String)) -> Result<Vec<SpeedPoint>, String> {
    let layer_cfg = cfg.layer.as_ref().ok_or("the speed study has no layer configuration")?;
    let mut points = Vec::new();
    for &arch in &cfg.archs {
        let vs = nn::VarStore::new(device);
        let longest = *cfg.lengths.last().expect("validated: at least one length");
        let layer = build_mixer(&vs.root(), LayerKind::of(arch), &LayerConfig { max_len: longest, ..layer_cfg.clone() });
        for &direction in &cfg.directions {
            let mut previous: Option<(usize, f64)> = None;
            for &l in &cfg.lengths {
                let point = measure(layer.as_ref(), arch, direction, l, previous, cfg, layer_cfg.dims.d_model, device)?;
                log(format!("speed {arch} {direction} L={l}: {}", if point.status == "ok" { format!("{:.1} ms (median of {})", point.median_s * 1e3, point.repeats) } else { point.status.clone() }));
                if point.status == "ok" {
                    previous = Some((l, point.median_s));
                }
                points.push(point);
            }
        }
    }
    Ok(points)
}

/// One point: skipped when the estimate from the previous length (time growing like L^2, the
/// worst case of full attention) says it would take longer than the cap.
#[allow(clippy::too_many_arguments)]
fn measure(layer: &dyn Mixer, arch: Architecture, direction: Direction, l: usize, previous: Option<(usize, f64)>, cfg: &SpeedConfig, d: usize, device: Device) -> Result<SpeedPoint, String> {
    let base = SpeedPoint { arch: arch.to_string(), direction: direction.to_string(), seq_len: l, median_s: f64::NAN, min_s: f64::NAN, max_s: f64::NAN, repeats: 0, status: String::new() };
    let calls = (cfg.warmup + cfg.repeats) as f64;
    if let Some((pl, pt)) = previous {
        let estimate = pt * (l as f64 / pl as f64).powi(2) * calls;
        if estimate > cfg.cap_s {
            return Ok(SpeedPoint { status: format!("skipped: estimated {estimate:.0} s > cap {:.0} s", cfg.cap_s), ..base });
        }
    }
    let xs = Tensor::randn([cfg.batch as i64, l as i64, d as i64], (Kind::Float, device));
    let start = Instant::now();
    for _ in 0..cfg.warmup {
        time_call(layer, &xs, direction, device, cfg.precision)?;
        if start.elapsed().as_secs_f64() * calls / cfg.warmup.max(1) as f64 > cfg.cap_s {
            return Ok(SpeedPoint { status: format!("skipped: warm-up alone took {:.0} s of a {:.0} s cap", start.elapsed().as_secs_f64(), cfg.cap_s), ..base });
        }
    }
    let times = (0..cfg.repeats.max(1)).map(|_| time_call(layer, &xs, direction, device, cfg.precision)).collect::<Result<Vec<f64>, String>>()?;
    let t = Timing::from_samples(times);
    Ok(SpeedPoint { median_s: t.median_s, min_s: t.min_s, max_s: t.max_s, repeats: t.samples.len(), status: "ok".into(), ..base })
}

/// The median time of `arch` at `l` in `direction`, if measured.
pub fn time_of(points: &[SpeedPoint], arch: &str, direction: &str, l: usize) -> Option<f64> {
    points.iter().find(|p| p.arch == arch && p.direction == direction && p.seq_len == l && p.status == "ok").map(|p| p.median_s)
}

/// The slope of log(time) against log(L) over the measured points of `arch` (least squares):
/// about 1 for linear cost, 2 for quadratic.
pub fn log_log_slope(points: &[SpeedPoint], arch: &str, direction: &str) -> Option<f64> {
    let measured: Vec<(i64, f64)> = points.iter().filter(|p| p.arch == arch && p.direction == direction && p.status == "ok").map(|p| (p.seq_len as i64, p.median_s)).collect();
    loglog_slope(&measured)
}

/// The spread of a point's repeats, as a summary for tables.
pub fn spread(p: &SpeedPoint) -> Option<Summary> {
    (p.status == "ok").then_some(Summary { n: p.repeats, mean: p.median_s, sd: (p.max_s - p.min_s) / 2.0 })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Table {
        toml::from_str("model.d_model = 32\nmodel.n_heads = 2\nattn.window = 16\nmodel.segment_len = 32\nmodel.context_states = 4\n").unwrap()
    }

    #[test]
    fn config_reads_names_and_checks_lengths() {
        let cfg = SpeedConfig::from_table(toml::from_str("archs = [\"SLIDE\", \"BST:SH:S4D\"]\nlengths = [64, 32]\nrepeats = 2").unwrap(), &base()).unwrap();
        assert_eq!(cfg.lengths, vec![32, 64], "sorted");
        assert_eq!(cfg.layer.as_ref().unwrap().dims.d_model, 32);
        let err = SpeedConfig::from_table(toml::from_str("lengths = [40]").unwrap(), &base()).unwrap_err();
        assert!(err.contains("speed.lengths") && err.contains("attn.window = 16"), "{err}");
        let err = SpeedConfig::from_table(toml::from_str("archs = [\"SLIDER\"]").unwrap(), &base()).unwrap_err();
        assert!(err.contains("speed.archs") && err.contains("BST:SH:S4D"), "{err}");
        let err = SpeedConfig::from_table(toml::from_str("repeat = 3").unwrap(), &base()).unwrap_err();
        assert!(err.contains("repeat") && err.contains("repeats"), "{err}");
    }

    /// Every layer kind runs both directions; a cap far below the measured time skips the next
    /// length instead of running it.
    #[test]
    fn measures_every_layer_and_skips_past_the_cap() {
        let text = "archs = [\"SLIDE\", \"BST:MF:S4D\", \"BRECT:FIXED:SKIP\", \"TRANSFORMER\", \"TRSF-XL\"]\nlengths = [32, 64]\nrepeats = 3\nwarmup = 1";
        let cfg = SpeedConfig::from_table(toml::from_str(text).unwrap(), &base()).unwrap();
        let points = run(&cfg, Device::Cpu, &|_| {}).unwrap();
        assert_eq!(points.len(), 5 * 2 * 2);
        assert!(points.iter().all(|p| p.status == "ok" && p.min_s <= p.median_s && p.median_s <= p.max_s && p.repeats == 3), "{points:?}");
        let capped = SpeedConfig { cap_s: 1e-9, archs: vec!["SLIDE".parse().unwrap()], directions: vec![Direction::Forward], ..cfg };
        let points = run(&capped, Device::Cpu, &|_| {}).unwrap();
        assert!(points[0].status.starts_with("skipped: warm-up"), "{:?}", points[0]);
    }

    #[test]
    fn slope_of_a_power_law() {
        let point = |l: usize, t: f64| SpeedPoint { arch: "X".into(), direction: "forward".into(), seq_len: l, median_s: t, min_s: t, max_s: t, repeats: 1, status: "ok".into() };
        let points = [point(1024, 1.0), point(2048, 4.0), point(4096, 16.0)];
        assert!((log_log_slope(&points, "X", "forward").unwrap() - 2.0).abs() < 1e-9);
        assert_eq!(time_of(&points, "X", "forward", 2048), Some(4.0));
    }
}
