//! Everything a sweep writes from its run folders, without training: runs.csv, one chart per study
//! and metric, loss curves, the speed study's CSV, chart and ratio tables, and report.md. Run at
//! the end of every launch and by `bst-sweep report <results dir>`; safe while runs are going on
//! (it reads only finished records).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use crate::error::{write_atomically, SweepError};
use crate::grid::Sweep;
use crate::plot::{self, arch_color, Chart, Series, Style, XAxis};
use crate::run::{self, Outcome, RunFailure, RunRecord};
use crate::speed::{self, SpeedPoint};
use crate::study::{self, Metric};

/// How every run of `sweep` ended so far, by run id (runs that have not ended are absent).
pub fn outcomes(sweep: &Sweep, results_dir: &Path) -> BTreeMap<String, Outcome> {
    sweep.runs.iter().filter_map(|spec| run::outcome(results_dir, spec).map(|o| (spec.run_id.clone(), o))).collect()
}

/// What `publish` wrote, and what is missing.
#[derive(Debug, Default)]
pub struct Published {
    pub files: Vec<PathBuf>,
    /// Runs of the sweep that have not ended (not started, running, interrupted).
    pub missing: Vec<String>,
    /// Runs that failed or diverged.
    pub failed: Vec<String>,
    /// The console summary: one table per study.
    pub summary: String,
}

/// Writes runs.csv, the charts and report.md of `sweep` into `results_dir` from its run folders
/// and `speed.csv`; `data_text` describes the data, `command` is recorded in the report.
pub fn publish(sweep: &Sweep, results_dir: &Path, data_text: &str, command: &str) -> Result<Published, SweepError> {
    let outcomes = outcomes(sweep, results_dir);
    let mut out = Published::default();
    let csv = results_dir.join("runs.csv");
    let rows: Vec<(&Outcome, String)> = sweep.runs.iter().filter_map(|s| outcomes.get(&s.run_id).map(|o| (o, s.studies().join(" ")))).collect();
    crate::results::write_csv(&csv, &sweep.keys, &rows)?;
    out.files.push(csv);
    for spec in &sweep.runs {
        match outcomes.get(&spec.run_id) {
            None => out.missing.push(spec.to_string()),
            Some(Outcome::Failed(f)) => out.failed.push(format!("{spec}: {}", f.status)),
            Some(Outcome::Finished(_)) => {}
        }
    }
    let mut sections = Vec::new();
    for s in &sweep.studies {
        let cells = study::cells(sweep, s, &outcomes);
        let mut loss_plot = loss_chart(sweep, s, &cells, results_dir)?.map(|files| {
            let name = files[0].file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
            out.files.extend(files);
            name
        });
        // a model trained on the answers alone is not a language model of the other bytes: its
        // bits per byte say nothing, accuracy is the study's metric
        let answers_only = cells.iter().flat_map(|c| &c.records).all(|r| r.config.answers_only());
        let shown = |m: &Metric| !(answers_only && *m == Metric::TestBpb) && cells.iter().any(|c| c.summary(*m).is_some());
        for metric in Metric::ALL.into_iter().filter(shown) {
            let mut plots = Vec::new();
            if let Some(chart) = study::chart(s, &cells, metric, &title_prefix(sweep, s)) {
                let stem = format!("study_{}_{}", file_safe(&s.name), metric.file_suffix());
                out.files.extend(plot::render(&[chart], &results_dir.join(&stem))?);
                plots.push(format!("{stem}.png"));
            }
            plots.extend(loss_plot.take());
            sections.push(study::section(s, &cells, metric, &plots));
            let _ = writeln!(out.summary, "{}", console_table(s, &cells, metric));
        }
    }
    if let Some(points) = read_speed(results_dir)? {
        let (files, text) = speed_outputs(&points, results_dir)?;
        out.files.extend(files);
        sections.push(text);
    }
    if let Some(rows) = crate::msrnn::read(results_dir)? {
        let (files, text) = crate::msrnn::outputs(&rows, results_dir, &sweep.meta.name)?;
        out.files.extend(files);
        sections.push(text);
    }
    let records: Vec<&RunRecord> = sweep.runs.iter().filter_map(|s| outcomes.get(&s.run_id).and_then(Outcome::record)).collect();
    let failures: Vec<&RunFailure> = sweep
        .runs
        .iter()
        .filter_map(|s| match outcomes.get(&s.run_id) {
            Some(Outcome::Failed(f)) => Some(f.as_ref()),
            _ => None,
        })
        .collect();
    let report = crate::report::markdown(sweep, &records, &failures, data_text, &sections, command);
    let report_path = results_dir.join("report.md");
    write_atomically(&report_path, report.as_bytes())?;
    out.files.push(report_path);
    Ok(out)
}

fn file_safe(name: &str) -> String {
    name.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect()
}

/// A study's table for the console: configuration and `mean ± sd (n)`.
fn console_table(s: &crate::grid::Study, cells: &[study::Cell], metric: Metric) -> String {
    let mut out = format!("{} ({}):\n", s.name, metric.name());
    for c in cells {
        let point: Vec<String> = c.point.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let value = c.summary(metric).map_or_else(|| "not run yet".into(), |v| v.display(3));
        let _ = writeln!(out, "  {:<28} {:<40} {value}", c.variant, point.join(" "));
    }
    out
}

/// `"<sweep>: "` before a study's chart title, unless the study is named like its sweep (table1
/// in table1.toml), which would name it twice.
fn title_prefix(sweep: &Sweep, study: &crate::grid::Study) -> String {
    if study.name == sweep.meta.name { String::new() } else { format!("{}: ", sweep.meta.name) }
}

/// The training-loss curves of a study, one line per configuration (the mean over its seeds, step
/// by step), from 10% of training on.
fn loss_chart(sweep: &Sweep, s: &crate::grid::Study, cells: &[study::Cell], results_dir: &Path) -> Result<Option<Vec<PathBuf>>, SweepError> {
    let mut series = Vec::new();
    let mut palette = plot::Palette::default();
    for c in cells.iter().filter(|c| !c.records.is_empty()) {
        let curves = c.records.iter().map(|r| plot::read_loss_curve(&run::run_dir(results_dir, &r.run_id).join("metrics.csv"))).collect::<Result<Vec<_>, _>>()?;
        let n = curves.iter().map(Vec::len).min().unwrap_or(0);
        let mean: Vec<(f64, f64)> = (0..n).map(|i| (curves[0][i].0 / 1e6, curves.iter().map(|cv| cv[i].1).sum::<f64>() / curves.len() as f64)).collect();
        let points = plot::smoothed_tail(&mean, 20).into_iter().map(|(x, y)| (x, y, 0.0)).collect();
        let label = format!("{} ({} seeds)", c.point.iter().fold(c.variant.clone(), |l, (k, v)| format!("{l} {k}={v}")), curves.len());
        series.push(Series { label, color: palette.color(&c.records[0].arch), points, style: Style::Line });
    }
    if series.is_empty() {
        return Ok(None);
    }
    let chart = Chart {
        title: format!("{}{}: training loss (mean over seeds, from 10% of training on)", title_prefix(sweep, s), s.name),
        x_desc: "training tokens (millions)".into(),
        y_desc: "train loss, nats per token (20-step mean)".into(),
        x: XAxis::Linear,
        log_y: false,
        series,
        bands: Vec::new(),
    };
    plot::render(&[chart], &results_dir.join(format!("loss_{}", file_safe(&s.name)))).map(Some)
}

/// speed.csv, if the speed study has run.
fn read_speed(results_dir: &Path) -> Result<Option<Vec<SpeedPoint>>, SweepError> {
    let path = results_dir.join("speed.csv");
    if !path.exists() {
        return Ok(None);
    }
    let mut reader = csv::Reader::from_path(&path).map_err(SweepError::file(&path))?;
    let points = reader.deserialize().collect::<Result<Vec<SpeedPoint>, _>>().map_err(SweepError::file(&path))?;
    Ok(Some(points))
}

/// Writes speed.csv from measured points.
pub fn write_speed(results_dir: &Path, points: &[SpeedPoint]) -> Result<PathBuf, SweepError> {
    let path = results_dir.join("speed.csv");
    let mut w = csv::Writer::from_writer(Vec::new());
    for p in points {
        w.serialize(p).map_err(SweepError::file(&path))?;
    }
    write_atomically(&path, &w.into_inner().map_err(SweepError::file(&path))?)?;
    Ok(path)
}

/// The speed chart (log-log, a panel per direction) and the report section with ratio tables.
fn speed_outputs(points: &[SpeedPoint], results_dir: &Path) -> Result<(Vec<PathBuf>, String), SweepError> {
    let mut archs: Vec<&str> = Vec::new();
    let mut directions: Vec<&str> = Vec::new();
    for p in points {
        if !archs.contains(&p.arch.as_str()) {
            archs.push(&p.arch);
        }
        if !directions.contains(&p.direction.as_str()) {
            directions.push(&p.direction);
        }
    }
    let charts: Vec<Chart> = directions
        .iter()
        .map(|&d| Chart {
            title: format!("one layer, {d}"),
            x_desc: "sequence length L (tokens)".into(),
            y_desc: "seconds per call (median)".into(),
            x: XAxis::Log,
            log_y: true,
            series: archs
                .iter()
                .map(|&a| Series {
                    label: a.to_string(),
                    color: arch_color(a),
                    points: points.iter().filter(|p| p.arch == a && p.direction == d && p.status == "ok").map(|p| (p.seq_len as f64, p.median_s, 0.0)).collect(),
                    style: Style::Line,
                })
                .filter(|s| !s.points.is_empty())
                .collect(),
            bands: Vec::new(),
        })
        .filter(|c| !c.series.is_empty())
        .collect();
    let mut files = vec![results_dir.join("speed.csv")];
    if !charts.is_empty() {
        files.extend(plot::render(&charts, &results_dir.join("speed"))?);
    }
    Ok((files, speed_section(points, &archs, &directions)))
}

/// The speed study's section: times, log-log slopes, and the paper's ratios per length.
fn speed_section(points: &[SpeedPoint], archs: &[&str], directions: &[&str]) -> String {
    let mut out = String::from("## Layer speed\n\nOne layer at the sweep's widths and window, median of the timed calls (device synchronised before each clock read), per call of a batch; `speed.csv` has every point with its spread. Slope: of log time against log L over the measured lengths (1 = linear cost, 2 = quadratic).\n\n");
    let mut lengths: Vec<usize> = points.iter().map(|p| p.seq_len).collect();
    lengths.sort_unstable();
    lengths.dedup();
    for &d in directions {
        let _ = writeln!(out, "**{d}** (milliseconds):\n\n| layer | {} | slope |\n|---|{}---|", lengths.iter().map(|l| format!("L={l}")).collect::<Vec<_>>().join(" | "), "---|".repeat(lengths.len()));
        for &a in archs {
            let cells: Vec<String> = lengths.iter().map(|&l| speed::time_of(points, a, d, l).map_or_else(|| "skipped".into(), |t| format!("{:.1}", t * 1e3))).collect();
            let slope = speed::log_log_slope(points, a, d).map_or_else(String::new, |s| format!("{s:.2}"));
            let _ = writeln!(out, "| {a} | {} | {slope} |", cells.join(" | "));
        }
        let ratio = |num: &str, den: &str| -> Vec<String> {
            lengths.iter().map(|&l| match (speed::time_of(points, num, d, l), speed::time_of(points, den, d, l)) {
                (Some(n), Some(dd)) => format!("{:.2}", n / dd),
                _ => "—".into(),
            }).collect()
        };
        for (num, den) in [("BRECT:FIXED:SKIP", "BST:SH:S4D"), ("BST:SH:S4D", "SLIDE"), ("BST:MH:S4D", "SLIDE"), ("BST:MF:S4D", "SLIDE")] {
            if archs.contains(&num) && archs.contains(&den) {
                let _ = writeln!(out, "| ratio {num} / {den} | {} | |", ratio(num, den).join(" | "));
            }
        }
        out.push('\n');
    }
    let skipped: Vec<String> = points.iter().filter(|p| p.status != "ok").map(|p| format!("{} {} L={}: {}", p.arch, p.direction, p.seq_len, p.status)).collect();
    if !skipped.is_empty() {
        let _ = writeln!(out, "Skipped: {}.\n", skipped.join("; "));
    }
    out.push_str("The paper (bst-paper-notes.md §1f, [C, JP]): on GPU at W 128, N 16, 16 heads, d 512, BST:SH is 6-11x faster than BRECT and BST:MH 3-4x; near 4k BRECT is about 15x slower than SLIDE while BST stays within 2x of SLIDE. On a CPU the blocks' parallelism is mostly lost, so these ratios are expected to be smaller here.\n\n![speed](speed.png)\n\n");
    out
}
