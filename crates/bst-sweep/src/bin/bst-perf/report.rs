//! What a `bst-perf` run writes: CSV files (the record), `summary.md` and a console table with the
//! same numbers, and a log-log plot of time against L.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;
use bst_model::speed::{loglog_slope, Direction, Timing};
use bst_sweep::plot::{render, Chart, Palette, Series, Style, XAxis};

use crate::parity::ParityRow;
use crate::study::{Impl, LayerRow, Outcome};

/// Where and how the numbers were taken.
#[derive(Debug, Clone)]
pub struct Context {
    pub commit: String,
    pub device: String,
    pub threads: usize,
    pub precision: String,
    pub torch: String,
    pub command: String,
    pub date: String,
}

/// Training-step results.
#[derive(Debug, Clone)]
pub struct TrainingResult {
    pub batch: usize,
    pub seq: usize,
    pub steps: Vec<(Impl, Result<Timing, String>)>,
    /// Matmul FLOPs of one training step (3x the forward's).
    pub step_flops: f64,
}

/// Everything one run measured.
pub struct Measurements {
    pub parity: Vec<ParityRow>,
    pub gemm: Vec<(Impl, f64)>,
    pub gemm_n: i64,
    pub layers: Vec<LayerRow>,
    pub training: Option<TrainingResult>,
    /// (L, implementation, peak bytes or the reason there is none)
    pub memory: Vec<(i64, Impl, Result<u64, String>)>,
    pub batch: i64,
}

fn ms(t: f64) -> String {
    if t >= 100.0e-3 { format!("{:.0}", t * 1e3) } else if t >= 1e-3 { format!("{:.2}", t * 1e3) } else { format!("{:.3}", t * 1e3) }
}

fn median(rows: &[LayerRow], layer: &str, seq: i64, direction: Direction, who: Impl) -> Option<f64> {
    rows.iter().find(|r| r.layer == layer && r.seq == seq && r.direction == direction && r.who == who).and_then(|r| match &r.outcome {
        Outcome::Timed(t) => Some(t.median_s),
        _ => None,
    })
}

fn cell(rows: &[LayerRow], layer: &str, seq: i64, direction: Direction, who: Impl) -> String {
    match rows.iter().find(|r| r.layer == layer && r.seq == seq && r.direction == direction && r.who == who).map(|r| &r.outcome) {
        Some(Outcome::Timed(t)) => format!("{} ±{:.0}%", ms(t.median_s), 50.0 * t.spread()),
        Some(Outcome::Skipped(e)) => format!("skip (~{}s)", e.round()),
        Some(Outcome::Missing(_)) | None => "n/a".into(),
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> String {
    match (a, b) {
        (Some(a), Some(b)) => format!("{:.2}", a / b),
        _ => "n/a".into(),
    }
}

/// Layers in order of first appearance.
fn layer_names(rows: &[LayerRow]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for r in rows {
        if !names.contains(&r.layer) {
            names.push(r.layer.clone());
        }
    }
    names
}

fn lengths(rows: &[LayerRow]) -> Vec<i64> {
    let mut l: Vec<i64> = rows.iter().map(|r| r.seq).collect();
    l.sort();
    l.dedup();
    l
}

/// The layer table as markdown: one line per layer, L and direction.
pub fn layer_table(rows: &[LayerRow]) -> String {
    let mut out = String::from("| layer | L | direction | ours ms | PyTorch eager ms | torch.compile ms | ours / eager | ours / compile |\n|---|---:|---|---:|---:|---:|---:|---:|\n");
    for layer in layer_names(rows) {
        for seq in lengths(rows) {
            for direction in [Direction::Forward, Direction::ForwardBackward] {
                let m = |w| median(rows, &layer, seq, direction, w);
                let c = |w| cell(rows, &layer, seq, direction, w);
                let _ = writeln!(out, "| {layer} | {seq} | {direction} | {} | {} | {} | {} | {} |", c(Impl::Ours), c(Impl::Eager), c(Impl::Compile), ratio(m(Impl::Ours), m(Impl::Eager)), ratio(m(Impl::Ours), m(Impl::Compile)));
            }
        }
    }
    out
}

/// Log-log slopes of time against L per layer, implementation and direction.
pub fn slope_table(rows: &[LayerRow]) -> String {
    let mut out = String::from("| layer | direction | ours | PyTorch eager | torch.compile |\n|---|---|---:|---:|---:|\n");
    for layer in layer_names(rows) {
        for direction in [Direction::Forward, Direction::ForwardBackward] {
            let slope = |w| {
                let points: Vec<(i64, f64)> = lengths(rows).into_iter().filter_map(|l| median(rows, &layer, l, direction, w).map(|t| (l, t))).collect();
                loglog_slope(&points).map_or("n/a".into(), |s| format!("{s:.2}"))
            };
            let _ = writeln!(out, "| {layer} | {direction} | {} | {} | {} |", slope(Impl::Ours), slope(Impl::Eager), slope(Impl::Compile));
        }
    }
    out
}

/// The targets, each with the measured value.
fn targets(m: &Measurements) -> String {
    let rows = &m.layers;
    let mut out = String::new();
    let ratios: Vec<(String, i64, Direction, f64)> = layer_names(rows)
        .into_iter()
        .flat_map(|layer| lengths(rows).into_iter().flat_map(move |l| [Direction::Forward, Direction::ForwardBackward].map(|d| (layer.clone(), l, d))))
        .filter_map(|(layer, l, d)| Some((layer.clone(), l, d, median(rows, &layer, l, d, Impl::Ours)? / median(rows, &layer, l, d, Impl::Eager)?)))
        .collect();
    if let Some(worst) = ratios.iter().max_by(|a, b| a.3.total_cmp(&b.3)) {
        let _ = writeln!(out, "- ours / PyTorch eager, every layer, L and direction with a reference: at most {:.2} ({} L={} {}); target <= 1.0, aim 0.9", worst.3, worst.0, worst.1, worst.2);
    }
    for seq in lengths(rows) {
        for (d, target) in [(Direction::Forward, 1.3), (Direction::ForwardBackward, 1.5)] {
            let r = ratio(median(rows, "BST:SH:S4D", seq, d, Impl::Ours), median(rows, "SLIDE", seq, d, Impl::Ours));
            let _ = writeln!(out, "- BST:SH:S4D / SLIDE (ours), L={seq} {d}: {r} (target <= {target})");
        }
    }
    if let Some(&longest) = lengths(rows).last() {
        let r = ratio(median(rows, "BRECT:FIXED:SKIP", longest, Direction::ForwardBackward, Impl::Ours), median(rows, "BST:SH:S4D", longest, Direction::ForwardBackward, Impl::Ours));
        let _ = writeln!(out, "- BRECT / BST:SH:S4D (ours), L={longest} forward+backward: {r} (target >= 1.5)");
    }
    if let Some(t) = &m.training {
        let med = |w| t.steps.iter().find(|s| s.0 == w).and_then(|s| s.1.as_ref().ok()).map(|x| x.median_s);
        let _ = writeln!(out, "- training step, PyTorch eager / ours: {} (target >= 1.5)", ratio(med(Impl::Eager), med(Impl::Ours)));
        if let (Some(ours), Some(peak)) = (med(Impl::Ours), peak(m)) {
            let rate = t.step_flops / ours / 1e9;
            let _ = writeln!(out, "- matmul FLOPs of a training step at {rate:.1} GFLOP/s = {:.0}% of the GEMM peak ({peak:.1} GFLOP/s)", 100.0 * rate / peak);
        }
    }
    out
}

fn peak(m: &Measurements) -> Option<f64> {
    m.gemm.iter().map(|g| g.1).fold(None, |a: Option<f64>, g| Some(a.map_or(g, |a| a.max(g))))
}

fn training_table(t: &TrainingResult) -> String {
    let tokens = (t.batch * t.seq) as f64;
    let mut out = format!("Training step of the CPU-profile model (batch {}, L {}):\n\n| implementation | step ms (median, min-max) | tokens/s |\n|---|---:|---:|\n", t.batch, t.seq);
    for (w, s) in &t.steps {
        match s {
            Ok(x) => {
                let _ = writeln!(out, "| {} | {} ({}-{}) | {:.0} |", w.name(), ms(x.median_s), ms(x.min_s), ms(x.max_s), tokens / x.median_s);
            }
            Err(e) => {
                let _ = writeln!(out, "| {} | n/a ({}) | n/a |", w.name(), e.chars().take(80).collect::<String>());
            }
        }
    }
    out
}

fn memory_table(m: &Measurements) -> String {
    let mut by_len: BTreeMap<i64, BTreeMap<Impl, String>> = BTreeMap::new();
    for (l, w, b) in &m.memory {
        let v = match b {
            Ok(b) => format!("{:.0}", *b as f64 / (1 << 20) as f64),
            Err(_) => "n/a".into(),
        };
        by_len.entry(*l).or_default().insert(*w, v);
    }
    let mut out = String::from("| L (batch 1) | ours MiB | PyTorch eager MiB |\n|---:|---:|---:|\n");
    for (l, v) in by_len {
        let get = |w| v.get(&w).cloned().unwrap_or("n/a".into());
        let _ = writeln!(out, "| {l} | {} | {} |", get(Impl::Ours), get(Impl::Eager));
    }
    out
}

fn parity_summary(rows: &[ParityRow]) -> String {
    let mut by_subject: BTreeMap<&str, (usize, f64)> = BTreeMap::new();
    for r in rows {
        let e = by_subject.entry(&r.subject).or_insert((0, 0.0));
        e.0 += 1;
        e.1 = e.1.max(r.relative());
    }
    let mut out = String::from("| compared | tensors | worst relative error |\n|---|---:|---:|\n");
    for (s, (n, worst)) in by_subject {
        let _ = writeln!(out, "| {s} | {n} | {worst:.1e} |");
    }
    out
}

/// `summary.md`: context, parity, GEMM, layers, slopes, training, memory, targets.
pub fn summary(m: &Measurements, ctx: &Context) -> String {
    let mut out = format!(
        "# bst-perf\n\nCommand: `{}`  \nCommit: {}  \nDevice: {} ({} threads), precision {}, torch {}  \nDate: {}\n\n",
        ctx.command, ctx.commit, ctx.device, ctx.threads, ctx.precision, ctx.torch, ctx.date
    );
    let _ = write!(out, "## Parity (same weights and inputs, tolerance {:.0e} relative)\n\n{}\n", crate::parity::TOLERANCE, parity_summary(&m.parity));
    if m.layers.is_empty() {
        return out;
    }
    let _ = write!(out, "## Peak\n\nf32 GEMM {n}x{n}x{n}: ", n = m.gemm_n);
    let g: Vec<String> = m.gemm.iter().map(|(w, r)| format!("{} {r:.1} GFLOP/s", w.name())).collect();
    let _ = write!(out, "{}\n\n", g.join(", "));
    let _ = write!(out, "## Layers (batch {}; median of the repeats, ± half the range)\n\n{}\n", m.batch, layer_table(&m.layers));
    let _ = write!(out, "### Slopes of log time against log L\n\n{}\n", slope_table(&m.layers));
    if let Some(t) = &m.training {
        let _ = write!(out, "## Training\n\n{}\n", training_table(t));
    }
    if !m.memory.is_empty() {
        let _ = write!(out, "## Peak memory of a training step (two steps of the CPU-profile model, fresh process)\n\n{}\n", memory_table(m));
    }
    let _ = write!(out, "## Targets\n\n{}", targets(m));
    out
}

/// Writes `parity.csv`, `layers.csv`, `training.csv`, `memory.csv` and `gemm.csv` into `dir`.
pub fn write_csvs(dir: &Path, m: &Measurements, ctx: &Context) -> Result<()> {
    let tail = [ctx.commit.as_str(), ctx.device.as_str(), &ctx.threads.to_string(), ctx.precision.as_str(), ctx.torch.as_str()].map(String::from);
    let head_tail = ["commit", "device", "threads", "precision", "torch"];
    let mut w = csv::Writer::from_path(dir.join("parity.csv"))?;
    w.write_record(["compared", "tensor", "max_abs_err", "scale", "relative", "passed"].iter().chain(&head_tail))?;
    for r in &m.parity {
        w.write_record([r.subject.clone(), r.tensor.clone(), format!("{:e}", r.max_abs_err), format!("{}", r.scale), format!("{:e}", r.relative()), r.passed().to_string()].iter().chain(&tail))?;
    }
    w.flush()?;
    if m.layers.is_empty() {
        return Ok(());
    }
    let mut w = csv::Writer::from_path(dir.join("layers.csv"))?;
    w.write_record(["layer", "seq", "batch", "direction", "impl", "status", "median_s", "min_s", "max_s", "repeats", "tokens_per_s", "ratio_to_eager", "note"].iter().chain(&head_tail))?;
    for r in &m.layers {
        let eager = median(&m.layers, &r.layer, r.seq, r.direction, Impl::Eager);
        let (status, timing, note) = match &r.outcome {
            Outcome::Timed(t) => ("timed", Some(t), String::new()),
            Outcome::Skipped(e) => ("skipped", None, format!("estimated {e:.1} s per call")),
            Outcome::Missing(why) => ("missing", None, why.clone()),
        };
        let f = |x: Option<f64>| x.map_or(String::new(), |x| format!("{x:.6}"));
        let record = [
            r.layer.clone(),
            r.seq.to_string(),
            m.batch.to_string(),
            r.direction.to_string(),
            r.who.name().into(),
            status.into(),
            f(timing.map(|t| t.median_s)),
            f(timing.map(|t| t.min_s)),
            f(timing.map(|t| t.max_s)),
            timing.map_or(String::new(), |t| t.samples.len().to_string()),
            timing.map_or(String::new(), |t| format!("{:.0}", (r.seq * m.batch) as f64 / t.median_s)),
            match (timing, eager) {
                (Some(t), Some(e)) => format!("{:.4}", t.median_s / e),
                _ => String::new(),
            },
            note,
        ];
        w.write_record(record.iter().chain(&tail))?;
    }
    w.flush()?;
    let mut w = csv::Writer::from_path(dir.join("gemm.csv"))?;
    w.write_record(["impl", "n", "gflops"].iter().chain(&head_tail))?;
    for (who, rate) in &m.gemm {
        w.write_record([who.name().to_string(), m.gemm_n.to_string(), format!("{rate:.2}")].iter().chain(&tail))?;
    }
    w.flush()?;
    if let Some(t) = &m.training {
        let mut w = csv::Writer::from_path(dir.join("training.csv"))?;
        w.write_record(["impl", "batch", "seq", "status", "median_step_s", "min_step_s", "max_step_s", "steps", "tokens_per_s", "matmul_gflops_per_step", "note"].iter().chain(&head_tail))?;
        for (who, s) in &t.steps {
            let tokens = (t.batch * t.seq) as f64;
            let record = match s {
                Ok(x) => [who.name().into(), t.batch.to_string(), t.seq.to_string(), "timed".into(), format!("{:.6}", x.median_s), format!("{:.6}", x.min_s), format!("{:.6}", x.max_s), x.samples.len().to_string(), format!("{:.0}", tokens / x.median_s), format!("{:.3}", t.step_flops / 1e9), String::new()],
                Err(e) => [who.name().into(), t.batch.to_string(), t.seq.to_string(), "missing".into(), String::new(), String::new(), String::new(), String::new(), String::new(), format!("{:.3}", t.step_flops / 1e9), e.clone()],
            };
            w.write_record(record.iter().chain(&tail))?;
        }
        w.flush()?;
    }
    if !m.memory.is_empty() {
        let mut w = csv::Writer::from_path(dir.join("memory.csv"))?;
        w.write_record(["seq", "batch", "impl", "peak_bytes", "note"].iter().chain(&head_tail))?;
        for (l, who, b) in &m.memory {
            let (bytes, note) = match b {
                Ok(b) => (b.to_string(), String::new()),
                Err(e) => (String::new(), e.clone()),
            };
            w.write_record([l.to_string(), "1".into(), who.name().into(), bytes, note].iter().chain(&tail))?;
        }
        w.flush()?;
    }
    Ok(())
}

/// `layers.png`/`.svg`: median time against L on log-log axes, one line per layer and
/// implementation (shades of the layer's colour), forward+backward.
pub fn plot(dir: &Path, rows: &[LayerRow]) -> Result<()> {
    let (mut series, mut palette) = (Vec::new(), Palette::default());
    for layer in layer_names(rows) {
        for who in [Impl::Ours, Impl::Eager, Impl::Compile] {
            let points: Vec<(f64, f64, f64)> = lengths(rows).into_iter().filter_map(|l| median(rows, &layer, l, Direction::ForwardBackward, who).map(|t| (l as f64, t * 1e3, 0.0))).collect();
            if !points.is_empty() {
                series.push(Series { label: format!("{layer} {}", who.name()), color: palette.color(&layer), points, style: Style::Line });
            }
        }
    }
    if series.is_empty() {
        return Ok(());
    }
    let chart = Chart { title: "one layer, forward+backward".into(), x_desc: "L".into(), y_desc: "ms".into(), x: XAxis::Log, log_y: true, series, bands: Vec::new() };
    render(&[chart], &dir.join("layers"))?;
    Ok(())
}
