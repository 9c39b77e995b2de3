//! Plots of a sweep, each written as PNG and SVG: a final test metric of every variant (bits per
//! byte; accuracy for tasks with answers or labels) against a grid axis, and the training-loss
//! curves of every run.

use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;

use bst_model::EvalMetrics;

use crate::error::SweepError;
use crate::run::RunRecord;

/// One line of a chart: a legend label and its (x, y) points.
pub struct Series {
    pub label: String,
    pub points: Vec<(f64, f64)>,
}

/// What a chart shows; `x_labels` names category positions 0, 1, … when the x axis is categorical.
pub struct Chart {
    pub title: String,
    pub x_desc: String,
    pub y_desc: String,
    pub series: Vec<Series>,
    pub x_labels: Option<Vec<String>>,
}

/// A drawing error, as text (plotters' errors are generic over the backend).
fn failed<E: std::fmt::Debug>(e: E) -> String {
    format!("{e:?}")
}

fn draw<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, chart: &Chart) -> Result<(), String>
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(failed)?;
    let points = chart.series.iter().flat_map(|s| s.points.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in points {
        (x0, x1, y0, y1) = (x0.min(x), x1.max(x), y0.min(y), y1.max(y));
    }
    if x0 > x1 {
        return Err(format!("nothing to plot for `{}`", chart.title));
    }
    let pad_x = ((x1 - x0) * 0.08).max(0.5);
    let pad_y = ((y1 - y0) * 0.1).max(0.02);
    let mut ctx = ChartBuilder::on(&root)
        .caption(&chart.title, ("sans-serif", 24))
        .margin(18)
        .x_label_area_size(48)
        .y_label_area_size(70)
        .build_cartesian_2d((x0 - pad_x)..(x1 + pad_x), (y0 - pad_y)..(y1 + pad_y))
        .map_err(failed)?;
    let x_labels = chart.x_labels.clone();
    let format_x = move |x: &f64| match &x_labels {
        Some(labels) if (x - x.round()).abs() < 1e-9 && *x >= 0.0 => labels.get(x.round() as usize).cloned().unwrap_or_default(),
        Some(_) => String::new(),
        None => format!("{x}"),
    };
    let n_x_labels = chart.x_labels.as_ref().map_or(8, |l| 2 * l.len() + 3);
    ctx.configure_mesh()
        .x_desc(&chart.x_desc)
        .y_desc(&chart.y_desc)
        .x_labels(n_x_labels)
        .x_label_formatter(&format_x)
        .axis_desc_style(("sans-serif", 18))
        .label_style(("sans-serif", 15))
        .draw()
        .map_err(failed)?;
    for (i, s) in chart.series.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        let mut pts = s.points.clone();
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        let markers = pts.len() <= 32;
        ctx.draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
            .map_err(failed)?
            .label(&s.label)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(3)));
        if markers {
            ctx.draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled()))).map_err(failed)?;
        }
    }
    ctx.configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 15))
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(failed)?;
    root.present().map_err(failed)?;
    Ok(())
}

/// Renders `chart` to `<stem>.png` and `<stem>.svg` (each written to a temp file, then renamed).
/// Many categories widen the canvas so that their labels do not collide.
pub fn render(chart: &Chart, stem: &Path) -> Result<Vec<PathBuf>, SweepError> {
    let (png, svg) = (stem.with_extension("png"), stem.with_extension("svg"));
    let (png_tmp, svg_tmp) = (stem.with_extension("tmp.png"), stem.with_extension("tmp.svg"));
    let longest = chart.x_labels.iter().flatten().map(|l| l.len()).max().unwrap_or(0) as u32;
    let categories = chart.x_labels.as_ref().map_or(0, |l| l.len()) as u32;
    let size = ((categories * (longest * 9 + 20) + 200).max(1000), 640);
    draw(BitMapBackend::new(&png_tmp, size).into_drawing_area(), chart).map_err(SweepError::file(&png))?;
    draw(SVGBackend::new(&svg_tmp, size).into_drawing_area(), chart).map_err(SweepError::file(&svg))?;
    for (tmp, file) in [(&png_tmp, &png), (&svg_tmp, &svg)] {
        std::fs::File::open(tmp).and_then(|f| f.sync_all()).map_err(SweepError::io(tmp))?;
        std::fs::rename(tmp, file).map_err(SweepError::io(file))?;
    }
    Ok(vec![png, svg])
}

/// A per-run test score to plot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// Test bits per byte (language models).
    TestBpb,
    /// Test accuracy on the answers of a synthetic task, or on the labels of a classification task.
    AnswerAccuracy,
}

impl Metric {
    pub const ALL: [Metric; 2] = [Metric::TestBpb, Metric::AnswerAccuracy];

    /// The value for one evaluation, if the metric applies to it.
    pub fn of(self, m: &EvalMetrics) -> Option<f64> {
        match self {
            Metric::TestBpb => Some(m.bits_per_byte).filter(|v| v.is_finite()),
            Metric::AnswerAccuracy => m.answers.as_ref().map(|a| a.accuracy),
        }
    }

    /// File name of the chart, without extension.
    pub fn file_stem(self) -> &'static str {
        match self {
            Metric::TestBpb => "test_bpb",
            Metric::AnswerAccuracy => "test_accuracy",
        }
    }

    fn describe(self) -> (&'static str, &'static str) {
        match self {
            Metric::TestBpb => ("test bits per byte (lower is better)", "test bits per byte"),
            Metric::AnswerAccuracy => ("test accuracy on answers / labels (higher is better)", "test accuracy (fraction correct)"),
        }
    }
}

/// A test metric of each variant (mean over seeds) against the values of grid key `x_key`
/// (categorical positions), or against the variants when there is no such key. Runs the metric
/// does not apply to are left out.
pub fn metric_chart(sweep_name: &str, records: &[RunRecord], x_key: Option<&str>, metric: Metric) -> Chart {
    let x_of = |r: &RunRecord| x_key.and_then(|k| r.point.get(k)).cloned().unwrap_or_else(|| r.variant.clone());
    let mut xs: Vec<String> = Vec::new();
    for r in records {
        let x = x_of(r);
        if !xs.contains(&x) {
            xs.push(x);
        }
    }
    // numeric axis values sort numerically, others keep grid order
    if xs.iter().all(|x| x.parse::<f64>().is_ok()) {
        xs.sort_by(|a, b| a.parse::<f64>().unwrap().total_cmp(&b.parse::<f64>().unwrap()));
    }
    let series_of = |r: &RunRecord| {
        let others: Vec<String> = r.point.iter().filter(|(k, _)| Some(k.as_str()) != x_key).map(|(k, v)| format!("{k}={v}")).collect();
        let name = if x_key.is_some() { r.variant.clone() } else { String::from("all variants") };
        [vec![name], others].concat().into_iter().filter(|s| !s.is_empty()).collect::<Vec<_>>().join(" ")
    };
    let mut series: Vec<Series> = Vec::new();
    for r in records {
        let label = series_of(r);
        let x = xs.iter().position(|v| *v == x_of(r)).unwrap() as f64;
        let Some(y) = metric.of(&r.test) else { continue };
        match series.iter_mut().find(|s| s.label == label) {
            Some(s) => s.points.push((x, y)),
            None => series.push(Series { label, points: vec![(x, y)] }),
        }
    }
    // the same runs evaluated at longer lengths, one more line per series and length
    let mut longer: Vec<Series> = Vec::new();
    for r in records {
        let x = xs.iter().position(|v| *v == x_of(r)).unwrap() as f64;
        for l in &r.longer {
            let label = format!("{} @ {}x length", series_of(r), l.factor);
            let Some(y) = metric.of(&l.test) else { continue };
            match longer.iter_mut().find(|s| s.label == label) {
                Some(s) => s.points.push((x, y)),
                None => longer.push(Series { label, points: vec![(x, y)] }),
            }
        }
    }
    if !longer.is_empty() {
        for s in &mut series {
            s.label = format!("{} @ training length", s.label);
        }
    }
    series.extend(longer);
    for s in &mut series {
        s.points = mean_by_x(&s.points);
    }
    let (title, y_desc) = metric.describe();
    Chart {
        title: format!("{sweep_name}: {title}"),
        x_desc: x_key.unwrap_or("variant").to_string(),
        y_desc: y_desc.into(),
        series,
        x_labels: Some(xs),
    }
}

/// Mean of y over equal x (seeds of one grid point).
fn mean_by_x(points: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut out: Vec<(f64, f64, usize)> = Vec::new();
    for &(x, y) in points {
        match out.iter_mut().find(|p| p.0 == x) {
            Some(p) => (p.1, p.2) = (p.1 + y, p.2 + 1),
            None => out.push((x, y, 1)),
        }
    }
    out.into_iter().map(|(x, s, n)| (x, s / n as f64)).collect()
}

/// Training loss (moving average over `smooth` steps) against tokens seen, one line per run,
/// from 10% of training on: the initial drop would squash the differences between runs.
pub fn loss_chart(sweep_name: &str, curves: Vec<(String, Vec<(f64, f64)>)>, smooth: usize) -> Chart {
    let x_max = curves.iter().flat_map(|(_, pts)| pts.iter().map(|p| p.0)).fold(0.0, f64::max);
    let series: Vec<Series> = curves
        .into_iter()
        .map(|(label, pts)| {
            let points = pts
                .iter()
                .enumerate()
                .map(|(i, &(x, _))| {
                    let window = &pts[i.saturating_sub(smooth - 1)..=i];
                    (x, window.iter().map(|p| p.1).sum::<f64>() / window.len() as f64)
                })
                .filter(|&(x, _)| x >= 0.1 * x_max)
                .map(|(x, y)| (x / 1e6, y))
                .collect();
            Series { label, points }
        })
        .collect();
    Chart {
        title: format!("{sweep_name}: training loss (from 10% of training on)"),
        x_desc: "training tokens (millions)".into(),
        y_desc: format!("train loss, nats/token ({smooth}-step mean)"),
        series,
        x_labels: None,
    }
}

/// (tokens_seen, loss) from a run's metrics.csv.
pub fn read_loss_curve(metrics_csv: &Path) -> Result<Vec<(f64, f64)>, SweepError> {
    let bad = |reason: String| SweepError::File { path: metrics_csv.to_owned(), reason };
    let mut reader = csv::Reader::from_path(metrics_csv).map_err(|e| bad(e.to_string()))?;
    let headers = reader.headers().map_err(|e| bad(e.to_string()))?.clone();
    let col = |name: &str| headers.iter().position(|h| h == name).ok_or_else(|| bad(format!("no `{name}` column")));
    let (tok, loss) = (col("tokens_seen")?, col("loss")?);
    let number = |cell: &str| cell.parse::<f64>().map_err(|e| bad(format!("`{cell}`: {e}")));
    reader
        .records()
        .map(|r| {
            let r = r.map_err(|e| bad(e.to_string()))?;
            Ok((number(&r[tok])?, number(&r[loss])?))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_png_and_svg_with_title_axes_and_legend() {
        let dir = tempfile::tempdir().unwrap();
        let chart = Chart {
            title: "demo: test bits per byte".into(),
            x_desc: "attn.window".into(),
            y_desc: "test bits per byte".into(),
            series: vec![Series { label: "BST:SH:S4D".into(), points: vec![(0.0, 2.5), (1.0, 2.4)] }, Series { label: "SLIDE".into(), points: vec![(0.0, 2.6), (1.0, 2.55)] }],
            x_labels: Some(vec!["32".into(), "64".into()]),
            };
        let files = render(&chart, &dir.path().join("demo")).unwrap();
        let png = std::fs::read(&files[0]).unwrap();
        assert_eq!(&png[1..4], b"PNG");
        let svg = std::fs::read_to_string(&files[1]).unwrap();
        let texts: Vec<&str> = svg.split("</text>").filter_map(|t| t.rsplit_once('>')).map(|(_, text)| text.trim()).collect();
        for text in ["demo: test bits per byte", "attn.window", "test bits per byte", "BST:SH:S4D", "SLIDE", "32", "64"] {
            assert!(texts.contains(&text), "svg has no text `{text}`: {texts:?}");
        }
    }

    #[test]
    fn loss_chart_zooms_past_the_initial_drop() {
        let curve: Vec<(f64, f64)> = (0..100).map(|i| (i as f64 * 1e4, if i < 5 { 7.0 } else { 2.0 + 1.0 / (i as f64) })).collect();
        let chart = loss_chart("x", vec![("run".into(), curve)], 1);
        let ys: Vec<f64> = chart.series[0].points.iter().map(|p| p.1).collect();
        assert_eq!(ys.len(), 90, "the first 10% of the points are left out");
        assert!(ys.iter().all(|&y| y > 2.0 && y < 2.2), "no point of the initial drop remains: {ys:?}");
    }

    #[test]
    fn mean_over_seeds() {
        assert_eq!(mean_by_x(&[(0.0, 1.0), (1.0, 5.0), (0.0, 3.0)]), vec![(0.0, 2.0), (1.0, 5.0)]);
    }
}
